//! What the jobs API needs of the cluster: the GCS's KV store, where job records and
//! uploaded packages live (so they are in the GCS's durable store and outlive a head
//! restart), and the drivers' jobs, to link a submission to the driver its entrypoint
//! started. The head passes its GCS (see `gcs_state`), unit tests a fake.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::state::JobState;

pub type Durable = Pin<Box<dyn Future<Output = ()> + Send>>;

pub trait JobsCluster: Send + Sync + 'static {
    fn kv_get(&self, key: &str) -> Option<Bytes>;
    fn kv_put(&self, key: &str, value: Bytes);
    /// Whether `key` was there.
    fn kv_delete(&self, key: &str) -> bool;
    /// Keys starting with `prefix`, sorted.
    fn kv_keys(&self, prefix: &str) -> Vec<String>;
    /// Resolves once every write made so far is durable in the GCS's store.
    fn durable(&self) -> Durable;
    /// Every driver's job (`DRIVER` rows), with `submission_id` set for a driver that
    /// said it runs for a submission.
    fn driver_jobs(&self) -> Vec<JobState>;
    /// The cluster's id, Ray's `session_name`.
    fn cluster_id(&self) -> String;
}
