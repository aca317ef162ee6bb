//! The GCS as a raylet reaches it. On the head the GCS runs in the same process and is
//! called directly; on every other node GCS requests travel to the head over the node
//! link. Either way a client of the node daemon never needs to know which node hosts
//! the GCS: the daemon hands its GCS requests to this client.

use std::sync::Arc;

use rtd_common::proto::{frame::Body, ErrorCode};
use rtd_common::rpc::{error_body, Reply, RpcClient};

use crate::server::{ConnId, GcsServer};

pub enum GcsClient {
    /// This is the head: the GCS runs here.
    Local(Arc<GcsServer>),
    /// Another node: GCS requests go to the head.
    Remote(RpcClient),
}

impl GcsClient {
    /// A GCS request from the daemon's connection `conn`: served here on the head,
    /// forwarded elsewhere.
    pub fn request(&self, conn: ConnId, body: Body) -> Reply {
        match self {
            GcsClient::Local(gcs) => gcs.handle(conn, body).unwrap_or_else(|_| {
                Reply::Now(error_body(ErrorCode::Invalid, "unsupported request for the node daemon"))
            }),
            GcsClient::Remote(head) => {
                let call = head.start_call(body);
                Reply::Later(Box::pin(async move {
                    call.await.unwrap_or_else(|e| {
                        error_body(ErrorCode::Internal, format!("the head node is unreachable: {e}"))
                    })
                }))
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
