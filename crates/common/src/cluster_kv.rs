//! Entries of the GCS's KV store that name the cluster and where it serves things, and
//! how a process that only knows the cluster's address reads them.

use std::time::Duration;

use crate::proto::KvGet;
use crate::rpc::{RpcClient, RpcError};

/// The cluster's id, Ray's `session_name`: the head's session directory name at the
/// cluster's first start, kept across restarts of the head. It labels every node's
/// metrics (`SessionName`).
pub const SESSION_NAME_KEY: &str = "session_name";

/// The dashboard's `host:port`, published by the head: every driver and the CLI find it
/// there from the cluster's address, whichever node they reach.
pub const DASHBOARD_URL_KEY: &str = "dashboard_url";

/// The dashboard of the cluster whose head or node serves at `address` (`host:port`,
/// or a node's socket): `Ok(None)` when it serves none. `Err` when nothing at `address`
/// answers as an rtd node within `timeout` (it may be a dashboard's own address).
pub async fn dashboard_of(address: &str, timeout: Duration) -> Result<Option<String>, RpcError> {
    let asked = async {
        let client = RpcClient::connect(address).await?;
        client.request(KvGet { key: DASHBOARD_URL_KEY.into(), exists_only: false }).await
    };
    let reply = tokio::time::timeout(timeout, asked).await.map_err(|_| RpcError::Disconnected(address.into()))??;
    Ok(reply.found.then(|| String::from_utf8_lossy(&reply.value).into_owned()))
}
