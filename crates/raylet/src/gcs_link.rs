//! How a raylet meets the GCS. Every raylet reports its resources (its heartbeat) and
//! learns the cluster from the GCS's node table in return; a worker node does this over
//! its link to the head ([`keep_link`]), which outlives a restart of the head: the node
//! reconnects with backoff and registers again under the same id, with what it holds.
//! The head's raylet shares a process with the GCS, which reports for it and calls it
//! directly through [`HeadRaylet`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rtd_common::proto::{ErrorCode, HeldBundle, KvGet, NodeInfo, RegisterNode, ReportResources, ResourceMap};
use rtd_common::rpc::{RpcClient, RpcError};
use rtd_common::scheduling::{NodeView, Strategy};
use rtd_common::{NodeId, PlacementGroupId, ResourceSet};
use rtd_gcs::client::HeadLink;
use rtd_gcs::server::LocalRaylet;
use rtd_gcs::NodeUsage;
use tokio::sync::{oneshot, Notify};

use crate::lease::{LeaseAnswer, LeaseRequest, Raylet, RemoteNode, RequestedEnv, GCS_CONN};
use crate::service::ProcessTable;

const HEARTBEAT: Duration = Duration::from_millis(100);

/// A raylet's heartbeat contents.
pub fn usage(raylet: &Raylet) -> NodeUsage {
    NodeUsage {
        total: ResourceMap { amounts: raylet.total().to_fixed_map() },
        available: ResourceMap { amounts: raylet.available().to_fixed_map() },
        pending_demands: raylet.pending_demands().iter().map(|d| ResourceMap { amounts: d.to_fixed_map() }).collect(),
    }
}

fn resources(map: &Option<ResourceMap>) -> ResourceSet {
    ResourceSet::from_fixed_map(&map.as_ref().map(|m| m.amounts.clone()).unwrap_or_default())
}

/// Every alive node but this one, as a raylet's view of the cluster.
pub fn remote_nodes(nodes: &[NodeInfo]) -> Vec<RemoteNode> {
    nodes
        .iter()
        .filter(|n| n.alive && !n.raylet_address.is_empty())
        .filter_map(|n| {
            Some(RemoteNode {
                view: NodeView {
                    node_id: NodeId::from_bytes(&n.node_id).ok()?,
                    total: resources(&n.total),
                    available: resources(&n.available),
                    alive: true,
                },
                raylet_address: n.raylet_address.clone(),
            })
        })
        .collect()
}

/// How long a worker node keeps trying to reach a lost head before it stops (Ray's
/// `gcs_rpc_server_reconnect_timeout_s`): `RTD_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S`,
/// 60 s unless set.
pub fn reconnect_timeout() -> Duration {
    reconnect_timeout_from(std::env::var("RTD_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S").ok().as_deref())
}

/// The reconnect timeout a setting gives: seconds (fractions allowed); unset or not a
/// non-negative number, the default.
fn reconnect_timeout_from(setting: Option<&str>) -> Duration {
    let seconds = setting.and_then(|v| v.trim().parse::<f64>().ok());
    Duration::from_secs_f64(seconds.filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9).unwrap_or(60.0))
}

/// A heartbeat that gets no answer for this long counts as a lost head.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect attempts start this far apart and back off (doubling) up to `MAX_BACKOFF`,
/// short enough that a restarted head is found within half a second of coming up.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What went wrong talking to the head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The connection is gone or unanswered: try again.
    #[error("{0}")]
    Lost(String),
    /// The head answered and will not have this node (it declared it dead): stop.
    #[error("{0}")]
    Refused(String),
}

impl From<RpcError> for LinkError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Remote { message, .. } => LinkError::Refused(message),
            // A wrong or missing token does not fix itself by trying again.
            refused @ RpcError::Unauthenticated { .. } => LinkError::Refused(refused.to_string()),
            other => LinkError::Lost(other.to_string()),
        }
    }
}

/// A node's conversation with the head, as its link task drives it. [`GrpcHead`] is the
/// daemon's; tests give a fake, to run the state machine on tokio's paused clock.
pub trait HeadSession: Send + Sync {
    /// Connects to the head and registers this node (again) over the new connection.
    fn join(&self) -> BoxFuture<'_, Result<(), LinkError>>;
    /// One heartbeat over the current connection.
    fn heartbeat(&self) -> BoxFuture<'_, Result<(), LinkError>>;
    /// The connection is gone: GCS requests wait from now on.
    fn lost(&self);
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Keeps a worker node in the cluster: heartbeats while the head answers; when it goes
/// away, reconnects with backoff for up to `reconnect_timeout` and registers again
/// under the same node id. Returns why the node must stop: the head refused it, or did
/// not come back in time.
pub async fn keep_link(head: &impl HeadSession, reconnect_timeout: Duration) -> String {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let beat = tokio::time::timeout(HEARTBEAT_TIMEOUT, head.heartbeat()).await;
        let why = match beat {
            Ok(Ok(())) => continue,
            Ok(Err(LinkError::Refused(why))) => return format!("the head node refused this node: {why}"),
            Ok(Err(LinkError::Lost(why))) => why,
            Err(_) => format!("no heartbeat answer within {HEARTBEAT_TIMEOUT:?}"),
        };
        tracing::warn!("lost the head node ({why}); reconnecting for up to {reconnect_timeout:?}");
        head.lost();
        if let Err(why) = rejoin(head, reconnect_timeout).await {
            return why;
        }
        tracing::info!("reconnected to the head node and registered again");
    }
}

/// Tries to join the head again until `timeout` passes, backing off between tries.
async fn rejoin(head: &impl HeadSession, timeout: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::from("no attempt finished");
    loop {
        match tokio::time::timeout_at(deadline, head.join()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(LinkError::Refused(why))) => return Err(format!("the head node refused this node: {why}")),
            Ok(Err(LinkError::Lost(why))) => last = why,
            Err(_) => break,
        }
        if tokio::time::Instant::now() + backoff >= deadline {
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    let waited = timeout.as_secs_f64();
    Err(format!(
        "could not reach the head node within {waited} s (RTD_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S); last error: {last}"
    ))
}

/// The daemon's conversation with the head: over gRPC to `link`'s address, through
/// `link`, which GCS requests from this node's clients share.
pub struct GrpcHead {
    pub link: HeadLink,
    pub raylet: Arc<Raylet>,
    /// How this node describes itself to the GCS.
    pub node: NodeInfo,
    /// Its connected workers and drivers.
    pub processes: Arc<ProcessTable>,
}

impl GrpcHead {
    /// This node's registration as of now; when `reconnecting` (the head was lost),
    /// with what it holds, which the (restarted) GCS's tables must match.
    pub fn registration(&self, reconnecting: bool) -> RegisterNode {
        let usage = usage(&self.raylet);
        let node = NodeInfo { total: Some(usage.total), available: Some(usage.available), ..self.node.clone() };
        if !reconnecting {
            return RegisterNode { node: Some(node), ..Default::default() };
        }
        let bundles = self.raylet.committed_bundles().into_iter();
        RegisterNode {
            node: Some(node),
            reconnecting: true,
            workers: self.processes.live(),
            actor_leases: self.raylet.actor_leases(),
            bundles: bundles.map(|(group, index)| HeldBundle { pg_id: group.to_vec().into(), index }).collect(),
        }
    }

    /// Registers this node over `client`; `reconnecting` after the head was lost.
    pub async fn register(&self, client: &RpcClient, reconnecting: bool) -> Result<(), LinkError> {
        let view = client.request(self.registration(reconnecting)).await?;
        self.raylet.set_cluster(remote_nodes(&view.nodes));
        Ok(())
    }
}

impl HeadSession for GrpcHead {
    fn join(&self) -> BoxFuture<'_, Result<(), LinkError>> {
        Box::pin(async move {
            let client = RpcClient::connect(self.link.address()).await.map_err(|e| LinkError::Lost(e.to_string()))?;
            self.register(&client, true).await?;
            self.link.set_up(client);
            Ok(())
        })
    }

    fn heartbeat(&self) -> BoxFuture<'_, Result<(), LinkError>> {
        Box::pin(async move {
            let client = self.link.client_now().ok_or_else(|| LinkError::Lost("the connection closed".into()))?;
            let usage = usage(&self.raylet);
            let report = ReportResources {
                node_id: self.raylet.node_id().to_vec().into(),
                total: Some(usage.total),
                available: Some(usage.available),
                pending_demands: usage.pending_demands,
            };
            let view = client.request(report).await?;
            self.raylet.set_cluster(remote_nodes(&view.nodes));
            Ok(())
        })
    }

    fn lost(&self) {
        self.link.set_down();
    }
}

/// A worker node's link task: keeps the node in the cluster, and stops the node (and
/// fails waiting GCS requests) once the head is lost for good.
pub async fn run_link(head: GrpcHead, shutdown: Arc<Notify>) {
    let why = keep_link(&head, head.link.reconnect_timeout()).await;
    tracing::warn!("{why}; stopping");
    head.link.close();
    shutdown.notify_one();
}

/// A worker node's source of runtime_env packages: the head's GCS KV over its link
/// (a request made while the head is away waits for the link, within its timeout).
pub struct HeadPackages(pub HeadLink);

impl rtd_runtime_env::PackageSource for HeadPackages {
    fn fetch<'a>(
        &'a self,
        uri: &'a str,
    ) -> rtd_runtime_env::setup::BoxFuture<'a, Result<Option<bytes::Bytes>, String>> {
        Box::pin(async move {
            let client = self.0.connected().await.map_err(|e| e.to_string())?;
            let reply =
                client.request(KvGet { key: uri.to_string(), exists_only: false }).await.map_err(|e| e.to_string())?;
            Ok(reply.found.then_some(reply.value))
        })
    }
}

/// The head's raylet as the GCS in its process calls it.
pub struct HeadRaylet(pub Arc<Raylet>);

impl LocalRaylet for HeadRaylet {
    fn node_id(&self) -> NodeId {
        self.0.node_id()
    }

    fn request_actor_lease(
        &self,
        resources: ResourceSet,
        strategy: Strategy,
        runtime_env: &str,
    ) -> oneshot::Receiver<LeaseAnswer> {
        let env = match RequestedEnv::parse(runtime_env) {
            Ok(env) => env,
            Err(why) => {
                let (reply, rx) = oneshot::channel();
                let _ = reply.send(Err(rtd_common::rpc::error_reply(ErrorCode::RuntimeEnvSetupFailed, why)));
                return rx;
            }
        };
        let request = LeaseRequest { resources, strategy, no_spillback: false, dedicated: true, preferred: None, env };
        self.0.request_lease(GCS_CONN, request)
    }

    fn shrink_lease(&self, lease_id: u64, keep: &ResourceSet) {
        self.0.shrink_lease(lease_id, keep);
    }

    fn kill_leased_worker(&self, lease_id: u64) {
        self.0.kill_leased_worker(lease_id);
    }

    fn set_lease_lost_hook(&self, hook: Box<dyn Fn(u64) + Send + Sync>) {
        self.0.set_lease_lost_hook(hook);
    }

    fn prepare_bundle(&self, group: PlacementGroupId, index: u32, resources: &ResourceSet) -> bool {
        self.0.prepare_bundle(group, index, resources)
    }

    fn commit_bundle(&self, group: PlacementGroupId, index: u32) {
        self.0.commit_bundle(group, index);
    }

    fn return_bundle(&self, group: PlacementGroupId, index: u32) {
        self.0.return_bundle(group, index);
    }

    fn group_removed(&self, group: PlacementGroupId) {
        self.0.group_removed(group);
    }

    fn view_of(&self, wanted: &ResourceSet) -> (ResourceSet, ResourceSet) {
        self.0.view_of(wanted)
    }

    fn usage(&self) -> NodeUsage {
        usage(&self.0)
    }

    fn set_cluster(&self, nodes: &[NodeInfo]) {
        self.0.set_cluster(remote_nodes(nodes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// A head that answers heartbeats until `down_at`, is unreachable until `up_at`
    /// (None: never again), then answers again; or refuses joins when `refuse` is set.
    /// Records every join attempt and loss.
    struct FakeHead {
        down_at: Instant,
        up_at: Option<Instant>,
        refuse: bool,
        joins: Mutex<Vec<Instant>>,
        losses: Mutex<u32>,
        beats_after_rejoin: Mutex<u32>,
    }

    impl FakeHead {
        fn new(down_after: Duration, up_after: Option<Duration>, refuse: bool) -> Self {
            let now = Instant::now();
            Self {
                down_at: now + down_after,
                up_at: up_after.map(|d| now + d),
                refuse,
                joins: Mutex::default(),
                losses: Mutex::default(),
                beats_after_rejoin: Mutex::default(),
            }
        }

        fn up(&self) -> bool {
            let now = Instant::now();
            now < self.down_at || self.up_at.is_some_and(|t| now >= t)
        }
    }

    impl HeadSession for FakeHead {
        fn join(&self) -> BoxFuture<'_, Result<(), LinkError>> {
            self.joins.lock().expect("fake lock").push(Instant::now());
            let answer = match (self.refuse, self.up()) {
                (true, _) => Err(LinkError::Refused("node x was declared dead".into())),
                (false, true) => Ok(()),
                (false, false) => Err(LinkError::Lost("connection refused".into())),
            };
            Box::pin(async move { answer })
        }

        fn heartbeat(&self) -> BoxFuture<'_, Result<(), LinkError>> {
            if !self.up() {
                return Box::pin(async { Err(LinkError::Lost("connection closed".into())) });
            }
            if !self.joins.lock().expect("fake lock").is_empty() {
                *self.beats_after_rejoin.lock().expect("fake lock") += 1;
            }
            Box::pin(async { Ok(()) })
        }

        fn lost(&self) {
            *self.losses.lock().expect("fake lock") += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_comes_back_in_time_is_rejoined_with_backoff_and_heartbeats_go_on() {
        let head = FakeHead::new(Duration::from_secs(1), Some(Duration::from_secs(4)), false);
        let link = keep_link(&head, Duration::from_secs(60));
        // The link runs for ever while the head answers: stop looking after 10 s.
        assert!(tokio::time::timeout(Duration::from_secs(10), link).await.is_err());
        let joins = head.joins.lock().expect("fake lock").clone();
        assert_eq!(*head.losses.lock().expect("fake lock"), 1);
        // Tries back off from 50 ms, doubling, to at most 500 ms apart...
        let gaps: Vec<Duration> = joins.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps[0], FIRST_BACKOFF);
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]) && gaps.iter().all(|g| *g <= MAX_BACKOFF), "{gaps:?}");
        // ...so the head is found within one backoff of coming back.
        let rejoined = *joins.last().expect("joined");
        assert!(rejoined >= head.up_at.expect("up again") && rejoined - head.up_at.expect("up") <= MAX_BACKOFF);
        assert!(*head.beats_after_rejoin.lock().expect("fake lock") > 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_stays_away_stops_the_node_after_the_reconnect_timeout() {
        let head = FakeHead::new(Duration::from_secs(1), None, false);
        let start = Instant::now();
        let why = keep_link(&head, Duration::from_secs(60)).await;
        let gave_up_after = Instant::now() - start;
        assert!(why.contains("within 60 s") && why.contains("connection refused"), "{why}");
        // Lost after ~1 s, then 60 s of tries.
        assert!(
            gave_up_after >= Duration::from_secs(60) && gave_up_after <= Duration::from_secs(62),
            "{gave_up_after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_refuses_the_node_stops_it_at_once() {
        let head = FakeHead::new(Duration::from_millis(500), Some(Duration::from_secs(1)), true);
        let why = keep_link(&head, Duration::from_secs(60)).await;
        assert!(why.contains("declared dead"), "{why}");
        assert_eq!(head.joins.lock().expect("fake lock").len(), 1);
    }

    #[test]
    fn the_reconnect_timeout_is_seconds_with_a_default_of_60() {
        assert_eq!(reconnect_timeout_from(None), Duration::from_secs(60));
        assert_eq!(reconnect_timeout_from(Some("2.5")), Duration::from_millis(2500));
        assert_eq!(reconnect_timeout_from(Some("0")), Duration::ZERO);
        for bad in ["-1", "soon", "inf", "NaN"] {
            assert_eq!(reconnect_timeout_from(Some(bad)), Duration::from_secs(60), "{bad}");
        }
    }
}
