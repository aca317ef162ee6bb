//! Test support for the submitters' event loops: a fake cluster that records every
//! call a submitter makes and lets the test answer it, and a `Context` whose object
//! table is real but whose raylet and plasma store answer nothing.
//!
//! Tests run on tokio's paused clock (`#[tokio::test(start_paused = true)]`): the clock
//! only moves when every task is idle, so [`settle`] returns once the submitter has
//! done all it can, and timers (lease idle time, retry pauses) fire in order without
//! real waiting.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rtd_common::config::RuntimeConfig;
use rtd_common::proto::frame::Body;
use rtd_common::proto::{
    object_value::Kind, Ack, ActorInfo, InlineObject, KillActor, ObjectValue, PushTask, PushTaskReply, RequestLease,
    RequestLeaseReply, WaitActor,
};
use rtd_common::rpc::{Reply, RpcClient, RpcError, Service};
use rtd_common::{JobId, NodeId, ObjectId, TaskId, WorkerId};
use rtd_plasma::{PlasmaClient, ShmRegion};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::{ActorCluster, LeaseCluster, Peers};
use crate::context::{Context, Identity};

/// The address of this node's raylet in the fake cluster.
pub(crate) const LOCAL_RAYLET: &str = "raylet-local";

/// Where a test answers a call: send the reply (or the error) the call should get.
pub(crate) type Answer<T> = oneshot::Sender<Result<T, RpcError>>;

/// One call a submitter made, with the means to answer it if it expects a reply.
pub(crate) enum ClusterCall {
    RequestLease {
        raylet: String,
        request: RequestLease,
        answer: Answer<RequestLeaseReply>,
    },
    /// Boxed: a task spec is large, and most calls are not pushes.
    PushTask {
        worker: String,
        task: Box<PushTask>,
        answer: Answer<PushTaskReply>,
    },
    ReturnLease {
        raylet: String,
        lease_id: u64,
    },
    KillLeasedWorker {
        raylet: String,
        lease_id: u64,
    },
    CancelTask {
        worker: String,
        task_id: TaskId,
    },
    WaitActor {
        request: WaitActor,
        answer: Answer<ActorInfo>,
    },
    KillActor {
        request: KillActor,
    },
}

/// A cluster of processes known by their addresses; each call goes to the test's
/// [`CallLog`]. Connecting succeeds except to addresses in `unreachable`.
pub(crate) struct FakeCluster {
    calls: mpsc::UnboundedSender<ClusterCall>,
    pub(crate) unreachable: Mutex<HashSet<String>>,
    pub(crate) local_raylet_gone: AtomicBool,
}

impl FakeCluster {
    pub(crate) fn new() -> (Arc<Self>, CallLog) {
        let (calls, rx) = mpsc::unbounded_channel();
        let cluster = Self { calls, unreachable: Default::default(), local_raylet_gone: AtomicBool::new(false) };
        (Arc::new(cluster), CallLog { rx, unread: VecDeque::new() })
    }

    fn record(&self, call: ClusterCall) {
        let _ = self.calls.send(call);
    }

    /// Records a call that expects a reply; the future gets what the test answers, or
    /// a disconnect if the test drops the answer.
    fn ask<T: Send + 'static>(
        &self,
        address: &str,
        call: impl FnOnce(Answer<T>) -> ClusterCall,
    ) -> impl Future<Output = Result<T, RpcError>> + Send + 'static {
        let (answer, reply) = oneshot::channel();
        self.record(call(answer));
        let address = address.to_string();
        async move { reply.await.unwrap_or(Err(RpcError::Disconnected(address))) }
    }
}

impl Peers for FakeCluster {
    /// The peer's address.
    type Peer = String;

    fn address(peer: &String) -> &str {
        peer
    }

    fn connect(&self, address: &str) -> impl Future<Output = Result<String, RpcError>> + Send {
        let result = if self.unreachable.lock().contains(address) {
            Err(RpcError::Disconnected(address.to_string()))
        } else {
            Ok(address.to_string())
        };
        std::future::ready(result)
    }

    fn push_task(
        &self,
        worker: &String,
        task: PushTask,
    ) -> impl Future<Output = Result<PushTaskReply, RpcError>> + Send + 'static {
        self.ask(worker, |answer| ClusterCall::PushTask { worker: worker.clone(), task: Box::new(task), answer })
    }
}

impl LeaseCluster for FakeCluster {
    fn local_raylet(&self) -> String {
        LOCAL_RAYLET.to_string()
    }

    fn local_raylet_gone(&self) -> bool {
        self.local_raylet_gone.load(Ordering::Relaxed)
    }

    fn request_lease(
        &self,
        raylet: &String,
        request: RequestLease,
    ) -> impl Future<Output = Result<RequestLeaseReply, RpcError>> + Send {
        self.ask(raylet, |answer| ClusterCall::RequestLease { raylet: raylet.clone(), request, answer })
    }

    fn return_lease(&self, raylet: &String, lease_id: u64) {
        self.record(ClusterCall::ReturnLease { raylet: raylet.clone(), lease_id });
    }

    fn kill_leased_worker(&self, raylet: &String, lease_id: u64) {
        self.record(ClusterCall::KillLeasedWorker { raylet: raylet.clone(), lease_id });
    }

    fn cancel_task(&self, worker: &String, task_id: TaskId) {
        self.record(ClusterCall::CancelTask { worker: worker.clone(), task_id });
    }
}

impl ActorCluster for FakeCluster {
    fn wait_actor(&self, request: WaitActor) -> impl Future<Output = Result<ActorInfo, RpcError>> + Send + 'static {
        self.ask("gcs", |answer| ClusterCall::WaitActor { request, answer })
    }

    fn kill_actor(&self, request: KillActor) -> impl Future<Output = Result<Ack, RpcError>> + Send + 'static {
        self.record(ClusterCall::KillActor { request });
        std::future::ready(Ok(Ack {}))
    }
}

/// The calls a submitter made, in order, for the test to take and answer.
pub(crate) struct CallLog {
    rx: mpsc::UnboundedReceiver<ClusterCall>,
    /// Calls received while looking for another kind, oldest first.
    unread: VecDeque<ClusterCall>,
}

impl CallLog {
    /// The oldest unread call that `pick` accepts, waited for while the submitter has
    /// work left (and its timers up to a minute of paused time).
    pub(crate) async fn next(&mut self, what: &str, pick: impl Fn(&ClusterCall) -> bool) -> ClusterCall {
        if let Some(i) = self.unread.iter().position(&pick) {
            return self.unread.remove(i).expect("a position inside the queue");
        }
        loop {
            let call = tokio::time::timeout(Duration::from_secs(60), self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} call came"))
                .expect("the fake cluster is alive");
            if pick(&call) {
                return call;
            }
            self.unread.push_back(call);
        }
    }

    /// Asserts that, once the submitter has settled, it made no call `pick` accepts.
    pub(crate) async fn assert_none(&mut self, what: &str, pick: impl Fn(&ClusterCall) -> bool) {
        settle().await;
        while let Ok(call) = self.rx.try_recv() {
            self.unread.push_back(call);
        }
        assert!(!self.unread.iter().any(pick), "unexpected {what} call");
    }

    pub(crate) async fn lease_request(&mut self) -> (String, RequestLease, Answer<RequestLeaseReply>) {
        match self.next("RequestLease", |call| matches!(call, ClusterCall::RequestLease { .. })).await {
            ClusterCall::RequestLease { raylet, request, answer } => (raylet, request, answer),
            _ => unreachable!("picked a RequestLease"),
        }
    }

    pub(crate) async fn push(&mut self) -> (String, PushTask, Answer<PushTaskReply>) {
        match self.next("PushTask", |call| matches!(call, ClusterCall::PushTask { .. })).await {
            ClusterCall::PushTask { worker, task, answer } => (worker, *task, answer),
            _ => unreachable!("picked a PushTask"),
        }
    }

    pub(crate) async fn wait_actor(&mut self) -> (WaitActor, Answer<ActorInfo>) {
        match self.next("WaitActor", |call| matches!(call, ClusterCall::WaitActor { .. })).await {
            ClusterCall::WaitActor { request, answer } => (request, answer),
            _ => unreachable!("picked a WaitActor"),
        }
    }
}

/// Returns once every task is idle (the paused clock moves only then).
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// The submitters' tunables, with the given pipeline depth and lease idle time.
pub(crate) fn test_config(pipeline_depth: usize, lease_idle: Duration) -> &'static RuntimeConfig {
    let config = RuntimeConfig { pipeline_depth, lease_idle, ..RuntimeConfig::get().clone() };
    Box::leak(Box::new(config))
}

/// A raylet and plasma store that never answer: the submitters under test reach the
/// cluster through the fake, and inline values never touch the store.
struct SilentNode;

impl Service for SilentNode {
    const NAME: &'static str = "silent node";
    type Request = Body;
    type State = ();
    fn connected(&self) {}
    fn handle(&self, _: &mut (), _: Body) -> Reply {
        Reply::None
    }
    fn disconnected(&self, _: ()) {}
}

/// A driver's `Context` with a real object table, connected to a [`SilentNode`].
pub(crate) async fn test_context() -> Arc<Context> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rtd-cw-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a test directory");
    let socket = dir.join("node.sock");
    let listener = rtd_common::rpc::bind(&socket).expect("bind the silent node's socket");
    tokio::spawn(rtd_common::rpc::serve(listener, Arc::new(SilentNode)));
    let socket = socket.to_str().expect("a UTF-8 temp path");
    let raylet = RpcClient::connect(socket).await.expect("connect to the silent node");
    let shm = dir.join("plasma");
    let region = ShmRegion::create(&shm, 1 << 16).expect("create a plasma region");
    let plasma = PlasmaClient::connect(socket, &shm).await.expect("connect to the silent store");
    drop(region);
    // Connected and mapped: the files are no longer needed.
    let _ = std::fs::remove_dir_all(&dir);
    let identity = Identity {
        address: "driver".into(),
        worker_id: WorkerId::random(),
        node_id: NodeId::random(),
        job_id: JobId::nil(),
        session_dir: String::new(),
        is_worker: false,
    };
    Arc::new(Context::new(identity, raylet, plasma))
}

/// An inline value holding `data`.
pub(crate) fn inline(data: &[u8]) -> ObjectValue {
    ObjectValue { kind: Some(Kind::Inline(InlineObject { metadata: 0, data: data.to_vec().into() })) }
}

/// What is stored for `id`: its metadata (an `object_kind` for errors) and its data as
/// text; None while it is pending.
pub(crate) fn stored(ctx: &Context, id: &ObjectId) -> Option<(u32, String)> {
    match ctx.table.get_value(id)?.kind? {
        Kind::Inline(InlineObject { metadata, data }) => Some((metadata, String::from_utf8_lossy(&data).into_owned())),
        Kind::Plasma(_) => panic!("tests store inline values only"),
    }
}
