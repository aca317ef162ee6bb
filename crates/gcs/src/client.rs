//! The GCS as a raylet reaches it. On the head the GCS runs in the same process and is
//! called directly; on every other node GCS requests travel to the head over the node
//! link. Either way a client of the node daemon never needs to know which node hosts
//! the GCS: the daemon hands its GCS requests to this client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use rtd_common::proto::gcs_request::Request as GcsRequest;
use rtd_common::proto::{AddJob, ErrorCode};
use rtd_common::rpc::{error_body, Reply, RpcClient, RpcError};

use crate::server::{ConnId, GcsServer};

pub enum GcsClient {
    /// This is the head: the GCS runs here.
    Local(Arc<GcsServer>),
    /// Another node: GCS requests go to the head.
    Remote(RpcClient),
}

impl GcsClient {
    /// A GCS request from the daemon's connection `conn`: served here on the head,
    /// passed on whole to the head elsewhere, its reply (or error) back as it comes.
    pub fn request(&self, conn: ConnId, request: GcsRequest) -> Reply {
        match self {
            GcsClient::Local(gcs) => gcs.handle(conn, request),
            GcsClient::Remote(head) => {
                let call = head.start_call(request.into());
                Reply::Later(Box::pin(async move {
                    call.await.unwrap_or_else(|e| {
                        error_body(ErrorCode::Internal, format!("the head node is unreachable: {e}"))
                    })
                }))
            }
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
            GcsClient::Remote(head) => {
                let reply = head.start_request(job);
                Box::pin(async move { Ok(reply.await?.job_id) })
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
