//! Calling actors.
//!
//! Method calls go straight to the actor's worker, in submission order: each caller
//! keeps one queue per actor and pushes a call only after every earlier call has been
//! pushed, so a call waiting for an argument holds back the calls behind it (a sync
//! actor then runs them in the order they were made). Calls are pipelined: the caller
//! does not wait for one reply before pushing the next.
//!
//! Where the actor lives comes from the GCS (`WaitActor`, a long poll on the actor's
//! state epoch). When the connection to the actor breaks, the caller waits for the next
//! state: calls that were in flight are pushed again to the restarted actor while they
//! have retries left (`max_task_retries`), otherwise they fail with `ActorDiedError`,
//! as does every call once the actor is dead.
//!
//! The process that created an actor also counts its handles; when the last one is
//! dropped (and no handle left the process), the actor is killed once its queued calls
//! are done.
//!
//! As in `submitter`, one tokio task (`State::run`) holds all state and is fed events;
//! the GCS and the actors' workers are reached through [`ActorCluster`], which tests
//! implement with a scripted fake.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use rtd_common::proto::{ActorInfo, ActorState, KillActor, PushTask, PushTaskReply, TaskSpec, TaskStatus, WaitActor};
use rtd_common::rpc::{RpcClient, RpcError};
use rtd_common::task_events::error_type_of_kind;
use rtd_common::{object_kind, ActorId, ObjectId, TaskId};
use tokio::sync::mpsc;

use crate::cluster::ActorCluster;
use crate::context::{self, system_error, Context};
use crate::submitter::resolve_args;

/// `P` is the connection to an actor's worker (`Peers::Peer`).
enum ActorEvent<P> {
    Submit {
        actor_id: ActorId,
        spec: TaskSpec,
    },
    Resolved {
        actor_id: ActorId,
        spec: TaskSpec,
    },
    Info {
        actor_id: ActorId,
        info: ActorInfo,
        conn: Option<P>,
    },
    InfoFailed {
        actor_id: ActorId,
        error: RpcError,
    },
    Finished {
        actor_id: ActorId,
        task_id: TaskId,
        result: Result<PushTaskReply, RpcError>,
    },
    /// The owner's last handle is gone.
    HandlesGone {
        actor_id: ActorId,
    },
    /// Some node died: actors with calls in flight may have moved.
    NodesDied,
}

struct ActorCall {
    /// Submission order, kept when calls are pushed again after a restart.
    seq: u64,
    spec: TaskSpec,
    resolved: bool,
    /// Epoch of the incarnation it was pushed to.
    pushed_in: Option<u64>,
    retries_left: i32,
}

struct ActorQueue<P> {
    epoch: u64,
    alive: bool,
    dead: Option<String>,
    conn: Option<P>,
    waiting_for_info: bool,
    max_task_retries: i32,
    /// Calls not pushed yet, in submission order.
    unpushed: VecDeque<TaskId>,
    calls: HashMap<TaskId, ActorCall>,
    next_seq: u64,
    kill_when_idle: bool,
}

// Derived, it would ask `P: Default`.
impl<P> Default for ActorQueue<P> {
    fn default() -> Self {
        Self {
            epoch: 0,
            alive: false,
            dead: None,
            conn: None,
            waiting_for_info: false,
            max_task_retries: 0,
            unpushed: VecDeque::new(),
            calls: HashMap::new(),
            next_seq: 0,
            kill_when_idle: false,
        }
    }
}

/// Handle used by the API to hand actor calls to the submitter task; `P` is the
/// cluster's connection type (`RpcClient` but in tests).
#[derive(Clone)]
pub struct ActorSubmitter<P = RpcClient> {
    tx: mpsc::UnboundedSender<ActorEvent<P>>,
}

impl ActorSubmitter {
    pub fn start(ctx: Arc<Context>) -> Self {
        Self::start_with(ctx.clone(), ctx)
    }
}

impl<P: Clone + Send + Sync + 'static> ActorSubmitter<P> {
    /// Starts the submitter task, which finds actors and pushes calls through `cluster`.
    fn start_with<C: ActorCluster<Peer = P>>(ctx: Arc<Context>, cluster: Arc<C>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = State { ctx: ctx.clone(), cluster, tx: tx.clone(), actors: HashMap::new() };
        ctx.rt.spawn(state.run(rx));
        Self { tx }
    }

    pub fn submit(&self, actor_id: ActorId, spec: TaskSpec) {
        let _ = self.tx.send(ActorEvent::Submit { actor_id, spec });
    }

    pub fn handles_gone(&self, actor_id: ActorId) {
        let _ = self.tx.send(ActorEvent::HandlesGone { actor_id });
    }

    pub fn nodes_died(&self) {
        let _ = self.tx.send(ActorEvent::NodesDied);
    }
}

struct State<C: ActorCluster> {
    ctx: Arc<Context>,
    cluster: Arc<C>,
    tx: mpsc::UnboundedSender<ActorEvent<C::Peer>>,
    actors: HashMap<ActorId, ActorQueue<C::Peer>>,
}

fn task_id_of(spec: &TaskSpec) -> TaskId {
    TaskId::from_bytes(&spec.task_id).unwrap_or_else(|_| TaskId::nil())
}

impl<C: ActorCluster> State<C> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ActorEvent<C::Peer>>) {
        while let Some(event) = rx.recv().await {
            match event {
                ActorEvent::Submit { actor_id, spec } => self.on_submit(actor_id, spec),
                ActorEvent::Resolved { actor_id, spec } => {
                    let task_id = task_id_of(&spec);
                    if let Some(call) = self.actors.get_mut(&actor_id).and_then(|q| q.calls.get_mut(&task_id)) {
                        call.spec = spec;
                        call.resolved = true;
                    }
                    self.flush(actor_id);
                }
                ActorEvent::Info { actor_id, info, conn } => self.on_info(actor_id, info, conn),
                ActorEvent::InfoFailed { actor_id, error } => {
                    let message = format!("cannot reach the GCS for actor {actor_id}: {error}");
                    self.on_dead(actor_id, message);
                }
                ActorEvent::Finished { actor_id, task_id, result } => self.on_finished(actor_id, task_id, result),
                ActorEvent::NodesDied => {
                    // A frozen or cut-off node never closes our connection: ask the GCS,
                    // which has moved such actors to a new epoch, where they are now
                    // (the answer waits until an actor's state changes).
                    let live: Vec<ActorId> =
                        self.actors.iter().filter(|(_, q)| q.dead.is_none()).map(|(id, _)| *id).collect();
                    for actor_id in live {
                        self.request_info(actor_id);
                    }
                }
                ActorEvent::HandlesGone { actor_id } => {
                    if let Some(q) = self.actors.get_mut(&actor_id) {
                        q.kill_when_idle = true;
                    } else {
                        self.actors.insert(actor_id, ActorQueue { kill_when_idle: true, ..Default::default() });
                    }
                    self.kill_if_idle(actor_id);
                }
            }
        }
    }

    fn on_submit(&mut self, actor_id: ActorId, spec: TaskSpec) {
        let task_id = task_id_of(&spec);
        let q = self.actors.entry(actor_id).or_default();
        if let Some(cause) = &q.dead {
            let cause = cause.clone();
            fail_call(&self.ctx, &spec, &cause);
            return;
        }
        let resolved = spec.arg_refs.iter().all(|a| a.value.is_some());
        if !resolved {
            let ctx = self.ctx.clone();
            let tx = self.tx.clone();
            let pending = spec.clone();
            self.ctx.rt.spawn(async move {
                let spec = resolve_args(ctx, pending).await;
                let _ = tx.send(ActorEvent::Resolved { actor_id, spec });
            });
        }
        q.unpushed.push_back(task_id);
        let seq = q.next_seq;
        q.next_seq += 1;
        let retries_left = q.max_task_retries;
        q.calls.insert(task_id, ActorCall { seq, spec, resolved, pushed_in: None, retries_left });
        self.flush(actor_id);
    }

    /// Pushes ready calls in order, or asks where the actor is.
    fn flush(&mut self, actor_id: ActorId) {
        let Some(q) = self.actors.get_mut(&actor_id) else { return };
        if q.dead.is_some() {
            return;
        }
        let conn = match (&q.conn, q.alive) {
            (Some(conn), true) => conn.clone(),
            _ => {
                self.request_info(actor_id);
                return;
            }
        };
        while let Some(task_id) = q.unpushed.front().copied() {
            let Some(call) = q.calls.get_mut(&task_id) else {
                q.unpushed.pop_front();
                continue;
            };
            if !call.resolved {
                break;
            }
            q.unpushed.pop_front();
            call.pushed_in = Some(q.epoch);
            self.ctx.task_events.state(&call.spec, TaskStatus::TaskSubmittedToWorker);
            let reply = self.cluster.push_task(&conn, PushTask { spec: Some(call.spec.clone()), gpu_ids: Vec::new() });
            let tx = self.tx.clone();
            self.ctx.rt.spawn(async move {
                let result = reply.await;
                let _ = tx.send(ActorEvent::Finished { actor_id, task_id, result });
            });
        }
    }

    fn request_info(&mut self, actor_id: ActorId) {
        let Some(q) = self.actors.get_mut(&actor_id) else { return };
        if q.waiting_for_info {
            return;
        }
        q.waiting_for_info = true;
        let after_epoch = q.epoch;
        let cluster = self.cluster.clone();
        let tx = self.tx.clone();
        self.ctx.rt.spawn(async move {
            let reply = cluster.wait_actor(WaitActor { actor_id: actor_id.to_vec().into(), after_epoch }).await;
            let event = match reply {
                Ok(info) => {
                    let conn = if info.state == ActorState::Alive as i32 {
                        cluster.connect(&info.address).await.ok()
                    } else {
                        None
                    };
                    ActorEvent::Info { actor_id, info, conn }
                }
                Err(error) => ActorEvent::InfoFailed { actor_id, error },
            };
            let _ = tx.send(event);
        });
    }

    fn on_info(&mut self, actor_id: ActorId, info: ActorInfo, conn: Option<C::Peer>) {
        let Some(q) = self.actors.get_mut(&actor_id) else { return };
        q.waiting_for_info = false;
        if info.epoch <= q.epoch {
            self.flush(actor_id);
            return;
        }
        let first_info = q.epoch == 0;
        q.epoch = info.epoch;
        q.max_task_retries = info.options.as_ref().map(|o| o.max_task_retries).unwrap_or(0);
        if first_info {
            for call in q.calls.values_mut() {
                call.retries_left = q.max_task_retries;
            }
        }
        if info.state == ActorState::Dead as i32 {
            self.on_dead(actor_id, format!("The actor {actor_id} is dead: {}", info.death_cause));
            return;
        }
        q.alive = info.state == ActorState::Alive as i32 && conn.is_some();
        q.conn = conn;
        // Calls pushed to an earlier incarnation died with it: retry or fail them.
        let lost: Vec<TaskId> =
            q.calls.iter().filter(|(_, c)| c.pushed_in.is_some_and(|e| e < q.epoch)).map(|(id, _)| *id).collect();
        let mut retry = Vec::new();
        let mut failed = Vec::new();
        for task_id in lost {
            let Some(call) = q.calls.get_mut(&task_id) else { continue };
            if call.retries_left != 0 {
                call.retries_left -= 1;
                call.pushed_in = None;
                retry.push((call.seq, task_id));
            } else if let Some(call) = q.calls.remove(&task_id) {
                failed.push(call.spec);
            }
        }
        // Retried calls go first, in their original order.
        retry.sort();
        for (_, task_id) in retry.into_iter().rev() {
            q.unpushed.push_front(task_id);
        }
        for spec in failed {
            fail_call(
                &self.ctx,
                &spec,
                &format!(
                    "The actor {actor_id} died while running {}; no retries left (max_task_retries)",
                    spec.method_name
                ),
            );
        }
        self.flush(actor_id);
    }

    fn on_dead(&mut self, actor_id: ActorId, cause: String) {
        let Some(q) = self.actors.get_mut(&actor_id) else { return };
        q.waiting_for_info = false;
        q.alive = false;
        q.conn = None;
        q.dead = Some(cause.clone());
        q.unpushed.clear();
        for (_, call) in q.calls.drain() {
            fail_call(&self.ctx, &call.spec, &cause);
        }
    }

    fn on_finished(&mut self, actor_id: ActorId, task_id: TaskId, result: Result<PushTaskReply, RpcError>) {
        let Some(q) = self.actors.get_mut(&actor_id) else {
            if let Ok(reply) = result {
                self.ctx.drop_reply(reply);
            }
            return;
        };
        match result {
            Ok(reply) => {
                match q.calls.remove(&task_id) {
                    Some(call) => {
                        for ret in reply.returns {
                            let (Ok(id), Some(value)) = (ObjectId::from_bytes(&ret.id), ret.value) else { continue };
                            self.ctx.store_result(id, value, context::ref_list(&ret.contained));
                        }
                        self.ctx.release_task_args(&call.spec);
                    }
                    // The call was already failed (its actor was reported dead).
                    None => self.ctx.drop_reply(reply),
                }
                self.kill_if_idle(actor_id);
            }
            Err(_) => {
                // The actor's process is gone; the next state decides the call's fate.
                q.alive = false;
                q.conn = None;
                self.request_info(actor_id);
            }
        }
    }

    fn kill_if_idle(&mut self, actor_id: ActorId) {
        let Some(q) = self.actors.get(&actor_id) else { return };
        if !q.kill_when_idle || !q.calls.is_empty() || q.dead.is_some() {
            return;
        }
        let cause = format!("The actor {actor_id} was destroyed: every handle to it was dropped");
        let kill = KillActor { actor_id: actor_id.to_vec().into(), no_restart: true, cause: cause.clone() };
        let killed = self.cluster.kill_actor(kill);
        self.ctx.rt.spawn(async move {
            let _ = killed.await;
        });
        self.on_dead(actor_id, cause);
    }
}

fn fail_call(ctx: &Context, spec: &TaskSpec, cause: &str) {
    ctx.task_events.failed(spec, error_type_of_kind(object_kind::ACTOR_DIED), cause.to_string());
    for id in &spec.return_ids {
        if let Ok(id) = ObjectId::from_bytes(id) {
            ctx.store_result(id, system_error(object_kind::ACTOR_DIED, cause.to_string()), Vec::new());
        }
    }
    ctx.release_task_args(spec);
}

#[cfg(test)]
mod tests {
    use rtd_common::proto::{ActorOptions, ObjectRefProto, ReturnObject, TaskArg};

    use super::*;
    use crate::fake_cluster::{inline, settle, stored, test_context, Answer, CallLog, ClusterCall, FakeCluster};

    struct Harness {
        ctx: Arc<Context>,
        calls: CallLog,
        submitter: ActorSubmitter<String>,
        actor_id: ActorId,
    }

    async fn harness() -> Harness {
        let ctx = test_context().await;
        let (cluster, calls) = FakeCluster::new();
        let submitter = ActorSubmitter::start_with(ctx.clone(), cluster);
        Harness { ctx, calls, submitter, actor_id: ActorId::random() }
    }

    impl Harness {
        /// Submits a call to the actor's method `method` with one return, which the
        /// table expects as a submitted call's.
        fn call(&self, method: &str, arg_refs: Vec<TaskArg>) -> ObjectId {
            let task_id = TaskId::random();
            let ret = ObjectId::for_return(&task_id, 1);
            self.ctx.table.add_owned_pending(ret, &self.ctx.address);
            let spec = TaskSpec {
                task_id: task_id.to_vec().into(),
                actor_id: self.actor_id.to_vec().into(),
                method_name: method.into(),
                return_ids: vec![ret.to_vec().into()],
                arg_refs,
                ..Default::default()
            };
            self.submitter.submit(self.actor_id, spec);
            ret
        }

        /// Answers the next `WaitActor` with the actor in `state` at `epoch`.
        async fn actor_is(&mut self, state: ActorState, epoch: u64, address: &str, max_task_retries: i32) {
            let (request, waiter) = self.calls.wait_actor().await;
            assert_eq!(request.actor_id.as_ref(), self.actor_id.as_bytes());
            let info = ActorInfo {
                actor_id: self.actor_id.to_vec().into(),
                state: state as i32,
                address: address.into(),
                epoch,
                death_cause: if state == ActorState::Dead { "it ran out of memory".into() } else { String::new() },
                options: Some(ActorOptions { max_task_retries, ..Default::default() }),
                ..Default::default()
            };
            answer(waiter, Ok(info));
        }

        /// The next call pushed: the actor's address and the method called.
        async fn pushed(&mut self) -> (String, String, Answer<PushTaskReply>, PushTask) {
            let (worker, task, push) = self.calls.push().await;
            let method = task.spec.as_ref().map(|s| s.method_name.clone()).unwrap_or_default();
            (worker, method, push, task)
        }
    }

    fn answer<T>(answer: Answer<T>, result: Result<T, RpcError>) {
        assert!(answer.send(result).is_ok(), "the submitter stopped waiting for the answer");
    }

    fn done(task: &PushTask) -> Result<PushTaskReply, RpcError> {
        let returns = task
            .spec
            .iter()
            .flat_map(|spec| &spec.return_ids)
            .map(|id| ReturnObject { id: id.clone(), value: Some(inline(b"done")), contained: Vec::new() })
            .collect();
        Ok(PushTaskReply { returns, ..Default::default() })
    }

    fn is_push(call: &ClusterCall) -> bool {
        matches!(call, ClusterCall::PushTask { .. })
    }

    #[tokio::test(start_paused = true)]
    async fn calls_wait_for_the_actors_address_then_go_there_in_order() {
        let mut h = harness().await;
        for method in ["a", "b", "c"] {
            h.call(method, Vec::new());
        }
        h.calls.assert_none("PushTask", is_push).await;
        h.actor_is(ActorState::Alive, 1, "actor-1", 0).await;
        for method in ["a", "b", "c"] {
            let (worker, pushed, ..) = h.pushed().await;
            assert_eq!((worker.as_str(), pushed.as_str()), ("actor-1", method));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_lost_in_a_restart_are_pushed_again_in_order_before_later_calls() {
        let mut h = harness().await;
        let rets: Vec<ObjectId> = ["a", "b", "c"].iter().map(|m| h.call(m, Vec::new())).collect();
        h.actor_is(ActorState::Alive, 1, "actor-1", 1).await;
        let mut in_flight = Vec::new();
        for _ in 0..3 {
            in_flight.push(h.pushed().await.2);
        }
        // The actor's process dies with every call in flight, the last reply first.
        for push in in_flight.into_iter().rev() {
            answer(push, Err(RpcError::Disconnected("actor-1".into())));
        }
        h.actor_is(ActorState::Restarting, 2, "", 1).await;
        let later = h.call("d", Vec::new());
        h.calls.assert_none("PushTask", is_push).await;
        h.actor_is(ActorState::Alive, 3, "actor-2", 1).await;
        for method in ["a", "b", "c", "d"] {
            let (worker, pushed, push, task) = h.pushed().await;
            assert_eq!((worker.as_str(), pushed.as_str()), ("actor-2", method));
            answer(push, done(&task));
        }
        settle().await;
        for ret in rets.iter().chain([&later]) {
            assert_eq!(stored(&h.ctx, ret), Some((object_kind::VALUE, "done".into())));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_flight_without_task_retries_fail_when_the_actor_restarts() {
        let mut h = harness().await;
        let ret = h.call("a", Vec::new());
        h.actor_is(ActorState::Alive, 1, "actor-1", 0).await;
        let (.., push, _) = h.pushed().await;
        answer(push, Err(RpcError::Disconnected("actor-1".into())));
        h.actor_is(ActorState::Restarting, 2, "", 0).await;
        settle().await;
        let (kind, message) = stored(&h.ctx, &ret).expect("the call has failed");
        assert_eq!(kind, object_kind::ACTOR_DIED);
        assert!(message.contains("no retries left"), "{message}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_actor_fails_queued_and_later_calls_with_its_death_cause() {
        let mut h = harness().await;
        let queued = h.call("a", Vec::new());
        h.actor_is(ActorState::Dead, 1, "", 0).await;
        let later = h.call("b", Vec::new());
        h.calls
            .assert_none("PushTask or WaitActor", |c| is_push(c) || matches!(c, ClusterCall::WaitActor { .. }))
            .await;
        for ret in [queued, later] {
            let (kind, message) = stored(&h.ctx, &ret).expect("the call has failed");
            assert_eq!(kind, object_kind::ACTOR_DIED);
            assert!(message.contains("it ran out of memory"), "{message}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waiting_for_its_argument_holds_back_the_calls_behind_it() {
        let mut h = harness().await;
        let arg = ObjectId::random();
        h.ctx.table.add_owned_pending(arg, &h.ctx.address);
        let arg_ref = TaskArg {
            r#ref: Some(ObjectRefProto { id: arg.to_vec().into(), owner: h.ctx.address.clone() }),
            value: None,
        };
        h.call("waits", vec![arg_ref]);
        h.call("ready", Vec::new());
        h.actor_is(ActorState::Alive, 1, "actor-1", 0).await;
        h.calls.assert_none("PushTask", is_push).await;
        h.ctx.table.set_value(arg, inline(b"argument"));
        let (_, first, _, task) = h.pushed().await;
        assert_eq!(first, "waits");
        let value = task.spec.and_then(|s| s.arg_refs.into_iter().next()).and_then(|a| a.value);
        assert_eq!(value, Some(inline(b"argument")));
        assert_eq!(h.pushed().await.1, "ready");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_last_handle_kills_the_actor_once_its_calls_are_done() {
        let mut h = harness().await;
        let ret = h.call("a", Vec::new());
        h.actor_is(ActorState::Alive, 1, "actor-1", 0).await;
        let (.., push, task) = h.pushed().await;
        h.submitter.handles_gone(h.actor_id);
        h.calls.assert_none("KillActor", |c| matches!(c, ClusterCall::KillActor { .. })).await;
        answer(push, done(&task));
        let kill = h.calls.next("KillActor", |call| matches!(call, ClusterCall::KillActor { .. })).await;
        let ClusterCall::KillActor { request: kill } = kill else { unreachable!("picked a KillActor") };
        assert_eq!((kill.actor_id.as_ref(), kill.no_restart), (h.actor_id.as_bytes(), true));
        assert_eq!(stored(&h.ctx, &ret), Some((object_kind::VALUE, "done".into())));
    }
}
