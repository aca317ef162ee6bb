//! The GCS as a raylet reaches it. On the head the GCS runs in the same process and is
//! called directly; on every other node GCS requests travel to the head over the node
//! link ([`HeadLink`]), which survives a restart of the head: while the link is down a
//! request waits (up to the reconnect timeout) and then goes to the new head. Either
//! way a client of the node daemon never needs to know which node hosts the GCS: the
//! daemon hands its GCS requests to this client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rtd_common::proto::gcs_request::Request as GcsRequest;
use rtd_common::proto::{frame::Body, AddJob, ErrorCode};
use rtd_common::rpc::{error_body, Reply, RpcClient, RpcError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::server::{ConnId, GcsServer};

pub enum GcsClient {
    /// This is the head: the GCS runs here.
    Local(Arc<GcsServer>),
    /// Another node: GCS requests go to the head.
    Remote(HeadLink),
}

/// Where a worker node's link to the head stands.
#[derive(Clone)]
enum LinkState {
    /// Connected and registered: requests go over this client.
    Up(RpcClient),
    /// The head is gone; the node is reconnecting.
    Down,
    /// The node gave up on the head (or is stopping): requests fail at once.
    Closed,
}

/// A worker node's connection to the head as its GCS requests see it. The node's link
/// task (the raylet's `gcs_link`) marks it down when the head goes away and up again
/// with the new connection once the node has registered again; requests made in
/// between wait for that, bounded by `reconnect_timeout`.
#[derive(Clone)]
pub struct HeadLink {
    state: Arc<watch::Sender<LinkState>>,
    address: Arc<str>,
    reconnect_timeout: Duration,
}

impl HeadLink {
    /// A link that is up over `client`, the head at `address`.
    pub fn new(client: RpcClient, address: &str, reconnect_timeout: Duration) -> Self {
        Self { state: Arc::new(watch::Sender::new(LinkState::Up(client))), address: address.into(), reconnect_timeout }
    }

    /// The head's address (`host:port`).
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn reconnect_timeout(&self) -> Duration {
        self.reconnect_timeout
    }

    /// Connected again (and registered) over `client`: waiting requests go on.
    pub fn set_up(&self, client: RpcClient) {
        self.state.send_replace(LinkState::Up(client));
    }

    /// The head is gone: requests wait from now on.
    pub fn set_down(&self) {
        self.state.send_if_modified(|state| {
            let was_up = matches!(state, LinkState::Up(_));
            if was_up {
                *state = LinkState::Down;
            }
            was_up
        });
    }

    /// The node gave up on the head: waiting and later requests fail.
    pub fn close(&self) {
        self.state.send_replace(LinkState::Closed);
    }

    /// The client while the link is up.
    pub fn client_now(&self) -> Option<RpcClient> {
        match &*self.state.borrow() {
            LinkState::Up(client) if !client.is_closed() => Some(client.clone()),
            _ => None,
        }
    }

    /// The client once the link is up, waiting for it until `deadline`.
    pub async fn connected_by(&self, deadline: Instant) -> Result<RpcClient, RpcError> {
        let unreachable = |why: &str| RpcError::Remote {
            code: ErrorCode::Internal,
            message: format!("the GCS on the head node at {} is unreachable: {why}", self.address),
        };
        let mut state = self.state.subscribe();
        loop {
            match &*state.borrow_and_update() {
                LinkState::Up(client) if !client.is_closed() => return Ok(client.clone()),
                LinkState::Closed => return Err(unreachable("this node lost it and gave up")),
                _ => {}
            }
            match tokio::time::timeout_at(deadline, state.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(unreachable("this node is stopping")),
                Err(_) => {
                    let waited = self.reconnect_timeout.as_secs_f64();
                    return Err(unreachable(&format!(
                        "it did not come back within {waited} s (RTD_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S)"
                    )));
                }
            }
        }
    }

    /// The client once the link is up, waiting for it up to the reconnect timeout.
    pub async fn connected(&self) -> Result<RpcClient, RpcError> {
        self.connected_by(Instant::now() + self.reconnect_timeout).await
    }

    /// Passes a GCS request on to the head and resolves to its reply. A request that
    /// was cut off by the loss of the head is sent again to the new one when that is
    /// safe ([`resendable`]); otherwise it fails, saying it may have taken effect.
    fn forward(&self, request: GcsRequest) -> Pin<Box<dyn Future<Output = Body> + Send>> {
        // Queued now while the link is up, so requests made in order are sent in order;
        // `pending` is the request still to send (again, if that is safe).
        let (first, mut pending) = match self.client_now() {
            Some(client) => {
                let again = resendable(&request).then(|| request.clone());
                (Some(client.start_call(request.into())), again)
            }
            None => (None, Some(request)),
        };
        let link = self.clone();
        Box::pin(async move {
            let deadline = Instant::now() + link.reconnect_timeout;
            if let Some(call) = first {
                match call.await {
                    Err(RpcError::Disconnected(_)) if pending.is_some() => {}
                    Err(RpcError::Disconnected(_)) => return cut_off(),
                    result => return reply_of(result),
                }
            }
            loop {
                let client = match link.connected_by(deadline).await {
                    Ok(client) => client,
                    Err(e) => return error_body(e.code(), e.to_string()),
                };
                let Some(next) = pending.take() else { return cut_off() };
                pending = resendable(&next).then(|| next.clone());
                match client.start_call(next.into()).await {
                    Err(RpcError::Disconnected(_)) if pending.is_some() => {}
                    Err(RpcError::Disconnected(_)) => return cut_off(),
                    result => return reply_of(result),
                }
            }
        })
    }
}

/// The reply a forwarded request's client gets: the head's answer, its error as the
/// head gave it, or why the head could not be asked.
fn reply_of(result: Result<Body, RpcError>) -> Body {
    match result {
        Ok(body) => body,
        Err(RpcError::Remote { code, message }) => error_body(code, message),
        Err(e) => error_body(ErrorCode::Internal, format!("the head node is unreachable: {e}")),
    }
}

fn cut_off() -> Body {
    error_body(
        ErrorCode::Internal,
        "the head node went away while handling this request, which may or may not have taken effect; \
         it is not sent again because doing it twice is not safe",
    )
}

/// Whether a request that may have reached a head that died before answering can be
/// sent again to the new head: reads, and writes that the GCS applies once however
/// often they come (actors and placement groups are created under the id their
/// creator chose; a kill, a removal or a KV put sets a final state). A new job would be
/// counted twice and task events recorded twice, so those are not.
pub fn resendable(request: &GcsRequest) -> bool {
    use GcsRequest::*;
    match request {
        GetNodes(_)
        | KvGet(_)
        | KvPut(_)
        | GetNamedActor(_)
        | ListActors(_)
        | GetPlacementGroup(_)
        | ListPlacementGroups(_)
        | GetTimeline(_)
        | WaitActor(_)
        | WaitPlacementGroup(_)
        | ReportWorker(_)
        | MarkJobFinished(_)
        | KillActor(_)
        | CreateActor(_)
        | ActorArgsReady(_)
        | CreatePlacementGroup(_)
        | RemovePlacementGroup(_) => true,
        AddJob(_) | AddTaskEvents(_) | LeaseLost(_) | RegisterNode(_) | ReportResources(_) => false,
    }
}

impl GcsClient {
    /// A GCS request from the daemon's connection `conn`: served here on the head,
    /// passed on whole to the head elsewhere, its reply (or error) back as it comes.
    pub fn request(&self, conn: ConnId, request: GcsRequest) -> Reply {
        match self {
            GcsClient::Local(gcs) => gcs.handle(conn, request),
            GcsClient::Remote(link) => Reply::Later(link.forward(request)),
        }
    }

    /// Records the job of a driver registering with the daemon over `conn`; resolves
    /// to the job's id.
    pub fn add_job(&self, conn: ConnId, job: AddJob) -> Pin<Box<dyn Future<Output = Result<Bytes, RpcError>> + Send>> {
        match self {
            GcsClient::Local(gcs) => {
                let job_id = gcs.add_job(conn, job);
                let durable = gcs.durable();
                Box::pin(async move {
                    durable.await;
                    Ok(job_id)
                })
            }
            GcsClient::Remote(link) => {
                // Sent once: a second try could count the job twice.
                match link.client_now() {
                    Some(client) => {
                        let reply = client.start_request(job);
                        Box::pin(async move { Ok(reply.await?.job_id) })
                    }
                    None => {
                        let link = link.clone();
                        Box::pin(async move { Ok(link.connected().await?.request(job).await?.job_id) })
                    }
                }
            }
        }
    }

    /// The daemon's connection `conn` closed: on the head, what it owned in the GCS
    /// goes with it (the head sees other nodes' clients leave through their daemons).
    pub fn disconnected(&self, conn: ConnId) {
        if let GcsClient::Local(gcs) = self {
            gcs.disconnected(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtd_common::proto::{gcs_reply, Ack, AddTaskEvents, KvGet, KvGetReply};
    use rtd_common::rpc::{serve_connection, Service};
    use tokio::net::UnixListener;

    /// A head's GCS that answers a KV read with its own name, or (`hangs`) answers
    /// nothing, as a head that dies while handling it.
    struct FakeHead {
        name: &'static str,
        hangs: bool,
    }

    impl Service for FakeHead {
        const NAME: &'static str = "a fake head";
        type Request = GcsRequest;
        type State = ();
        fn connected(&self) {}
        fn handle(&self, _: &mut (), request: GcsRequest) -> Reply {
            if self.hangs {
                return Reply::None;
            }
            match request {
                GcsRequest::KvGet(_) => {
                    Reply::Now(gcs_reply::Reply::KvGetReply(KvGetReply { found: true, value: self.name.into() }).into())
                }
                _ => Reply::Now(gcs_reply::Reply::Ack(Ack {}).into()),
            }
        }
        fn disconnected(&self, _: ()) {}
    }

    /// A client connected to `head` served on a socket at `path`, and the task serving
    /// it (aborting it closes the connection).
    async fn serve_one(path: &std::path::Path, head: FakeHead) -> (RpcClient, tokio::task::JoinHandle<()>) {
        let listener = UnixListener::bind(path).expect("bind a test socket");
        let address = path.display().to_string();
        let (client, accepted) = tokio::join!(RpcClient::connect(&address), listener.accept());
        let (stream, _) = accepted.expect("accept");
        let server = tokio::spawn(serve_connection(stream, Arc::new(head)));
        (client.expect("connect"), server)
    }

    async fn answer(reply: Reply) -> Body {
        match reply {
            Reply::Later(fut) => fut.await,
            Reply::Now(body) => body,
            Reply::None => panic!("no answer"),
        }
    }

    fn error_message(body: &Body) -> String {
        match body {
            Body::Error(e) => e.message.clone(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn kv_get() -> GcsRequest {
        GcsRequest::KvGet(KvGet { key: "k".into(), exists_only: false })
    }

    #[tokio::test]
    async fn a_request_cut_off_by_the_heads_death_goes_to_the_new_head_when_resending_is_safe() {
        let dir = std::env::temp_dir().join(format!("rtd-head-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (old, old_server) = serve_one(&dir.join("old.sock"), FakeHead { name: "old", hangs: true }).await;
        let link = HeadLink::new(old, "127.0.0.1:6379", Duration::from_secs(10));
        let gcs = GcsClient::Remote(link.clone());
        // Both reach the old head, which dies before answering.
        let read = tokio::spawn(answer(gcs.request(1, kv_get())));
        let events = tokio::spawn(answer(gcs.request(1, GcsRequest::AddTaskEvents(AddTaskEvents::default()))));
        link.set_down();
        old_server.abort();
        // Sent while the head is away: waits for the new one.
        let later = tokio::spawn(answer(gcs.request(1, kv_get())));
        let (new, _new_server) = serve_one(&dir.join("new.sock"), FakeHead { name: "new", hangs: false }).await;
        link.set_up(new);
        let found = |body: Body| matches!(body, Body::GcsReply(r) if r.reply == Some(gcs_reply::Reply::KvGetReply(KvGetReply { found: true, value: "new".into() })));
        assert!(found(read.await.expect("answered")), "the read is sent again to the new head");
        assert!(found(later.await.expect("answered")), "the request made meanwhile went to the new head");
        let cut_off = error_message(&events.await.expect("answered"));
        assert!(cut_off.contains("may or may not have taken effect"), "{cut_off}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_the_head_up_to_the_reconnect_timeout_and_fails_at_once_once_given_up() {
        let dir = std::env::temp_dir().join(format!("rtd-head-link-wait-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (old, old_server) = serve_one(&dir.join("old.sock"), FakeHead { name: "old", hangs: false }).await;
        let link = HeadLink::new(old, "10.0.0.1:6379", Duration::from_secs(60));
        link.set_down();
        old_server.abort();
        let start = Instant::now();
        let waited = error_message(&answer(GcsClient::Remote(link.clone()).request(1, kv_get())).await);
        assert_eq!(Instant::now() - start, Duration::from_secs(60));
        assert!(
            waited.contains("10.0.0.1:6379") && waited.contains("RTD_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S"),
            "{waited}"
        );
        link.close();
        let start = Instant::now();
        let closed = error_message(&answer(GcsClient::Remote(link).request(1, kv_get())).await);
        assert_eq!(Instant::now() - start, Duration::ZERO);
        assert!(closed.contains("gave up"), "{closed}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn reads_and_id_keyed_writes_are_resent_new_jobs_and_events_are_not() {
        assert!(resendable(&kv_get()));
        assert!(resendable(&GcsRequest::CreateActor(Default::default())));
        assert!(resendable(&GcsRequest::CreatePlacementGroup(Default::default())));
        assert!(!resendable(&GcsRequest::AddJob(Default::default())));
        assert!(!resendable(&GcsRequest::AddTaskEvents(AddTaskEvents::default())));
    }
}
