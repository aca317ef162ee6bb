//! What a core worker call can fail with. The bindings turn each variant into the
//! Ray-named Python exception a user expects (`GetTimeoutError`, `ObjectLostError`...).

use std::time::Duration;

use rtd_common::rpc::RpcError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("timed out after {0:?} waiting for objects")]
    Timeout(Duration),
    /// The caller's interrupt check fired while the call blocked (Ctrl-C in Python).
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    StoreFull(String),
    #[error("{0}")]
    ObjectLost(String),
    #[error("cannot reach the rtd node: {0}")]
    Rpc(#[from] RpcError),
    #[error("{0}")]
    Invalid(String),
    #[error("internal error: {0}")]
    Internal(String),
}
