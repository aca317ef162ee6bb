//! What the submitters ask of the rest of the cluster.
//!
//! The task submitter (`submitter`) asks raylets for worker leases, pushes tasks to the
//! leased workers, and gives leases back or has their workers killed: that is
//! [`LeaseCluster`]. The actor submitter (`actor_submitter`) asks the GCS where an actor
//! lives, pushes calls to the actor's worker, and kills an actor nobody holds any more:
//! that is [`ActorCluster`]. Both reach other processes through [`Peers`].
//!
//! `Context` implements the three over its RPC connections: this node's raylet (which
//! passes GCS requests on) and the cache of connections to other processes. The
//! submitters take the implementation as a type parameter, so a push costs what a call
//! on `RpcClient` costs (no boxing, no virtual call); tests drive the same event loops
//! with a fake that records each call and answers as the test scripts it.

use std::future::Future;

use rtd_common::proto::{
    Ack, ActorInfo, CancelTask, KillActor, KillLeasedWorker, PushTask, PushTaskReply, RequestLease, RequestLeaseReply,
    ReturnLease, WaitActor,
};
use rtd_common::rpc::{RpcClient, RpcError};
use rtd_common::TaskId;

use crate::context::Context;

/// Connections to other processes (raylets, workers), and tasks pushed over them.
pub(crate) trait Peers: Send + Sync + 'static {
    /// A connection to one process.
    type Peer: Clone + Send + Sync + 'static;

    /// The address `peer` was reached at.
    fn address(peer: &Self::Peer) -> &str;

    /// A connection to the process at `address` (reused while it stays open).
    fn connect(&self, address: &str) -> impl Future<Output = Result<Self::Peer, RpcError>> + Send;

    /// Pushes a task to the worker at `worker`. The push is queued before this returns,
    /// so pushes made in order reach the worker in order; the future is its reply, an
    /// error when the worker is gone.
    fn push_task(
        &self,
        worker: &Self::Peer,
        task: PushTask,
    ) -> impl Future<Output = Result<PushTaskReply, RpcError>> + Send + 'static;
}

/// Raylets that grant worker leases, as the task submitter talks to them.
pub(crate) trait LeaseCluster: Peers {
    /// This node's raylet, where every lease request starts.
    fn local_raylet(&self) -> Self::Peer;

    /// Whether this node's raylet has gone away (no task can run from here then).
    fn local_raylet_gone(&self) -> bool;

    /// Asks `raylet` for a lease: granted, spilled back to another raylet, or infeasible.
    fn request_lease(
        &self,
        raylet: &Self::Peer,
        request: RequestLease,
    ) -> impl Future<Output = Result<RequestLeaseReply, RpcError>> + Send;

    /// Gives lease `lease_id` back to the raylet that granted it.
    fn return_lease(&self, raylet: &Self::Peer, lease_id: u64);

    /// Has the raylet that granted lease `lease_id` kill its worker (force cancel).
    fn kill_leased_worker(&self, raylet: &Self::Peer, lease_id: u64);

    /// Asks a leased worker to interrupt `task_id` if it runs it.
    fn cancel_task(&self, worker: &Self::Peer, task_id: TaskId);
}

/// The GCS's view of actors, as the actor submitter asks it.
pub(crate) trait ActorCluster: Peers {
    /// The actor's state once its epoch passes `after_epoch` (a long poll).
    fn wait_actor(&self, request: WaitActor) -> impl Future<Output = Result<ActorInfo, RpcError>> + Send + 'static;

    /// Kills an actor; the future ends when the GCS has taken the request.
    fn kill_actor(&self, request: KillActor) -> impl Future<Output = Result<Ack, RpcError>> + Send + 'static;
}

impl Peers for Context {
    type Peer = RpcClient;

    fn address(peer: &RpcClient) -> &str {
        peer.addr()
    }

    fn connect(&self, address: &str) -> impl Future<Output = Result<RpcClient, RpcError>> + Send {
        self.peers.get(address)
    }

    fn push_task(
        &self,
        worker: &RpcClient,
        task: PushTask,
    ) -> impl Future<Output = Result<PushTaskReply, RpcError>> + Send + 'static {
        worker.start_request(task)
    }
}

impl LeaseCluster for Context {
    fn local_raylet(&self) -> RpcClient {
        self.raylet.clone()
    }

    fn local_raylet_gone(&self) -> bool {
        self.raylet.is_closed()
    }

    fn request_lease(
        &self,
        raylet: &RpcClient,
        request: RequestLease,
    ) -> impl Future<Output = Result<RequestLeaseReply, RpcError>> + Send {
        raylet.start_request(request)
    }

    fn return_lease(&self, raylet: &RpcClient, lease_id: u64) {
        let _ = raylet.send(ReturnLease { lease_id });
    }

    fn kill_leased_worker(&self, raylet: &RpcClient, lease_id: u64) {
        let _ = raylet.send(KillLeasedWorker { lease_id });
    }

    fn cancel_task(&self, worker: &RpcClient, task_id: TaskId) {
        let _ = worker.send(CancelTask { task_id: task_id.to_vec().into() });
    }
}

impl ActorCluster for Context {
    fn wait_actor(&self, request: WaitActor) -> impl Future<Output = Result<ActorInfo, RpcError>> + Send + 'static {
        self.raylet.start_request(request)
    }

    fn kill_actor(&self, request: KillActor) -> impl Future<Output = Result<Ack, RpcError>> + Send + 'static {
        self.raylet.start_request(request)
    }
}
