//! Tunables shared by the daemon and the core workers. Each has a default and can be
//! overridden by an `RTD_*` environment variable (read once per process).

use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Values up to this many bytes travel inline; larger ones go to plasma.
    pub max_inline_bytes: usize,
    /// How long a submitter keeps an idle worker lease before returning it, so that a
    /// loop of `f.remote(); get()` does not ask the raylet for every task.
    pub lease_idle: Duration,
    /// Tasks pushed to one leased worker before its replies come back.
    pub pipeline_depth: usize,
    /// Workers the raylet may be starting at once.
    pub max_starting_workers: usize,
    /// How often an infeasible lease request is retried.
    pub infeasible_retry: Duration,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl RuntimeConfig {
    fn from_env() -> Self {
        Self {
            max_inline_bytes: env_or("RTD_MAX_INLINE_BYTES", 100 * 1024),
            lease_idle: Duration::from_millis(env_or("RTD_LEASE_IDLE_MS", 5)),
            pipeline_depth: env_or("RTD_PIPELINE_DEPTH", 1usize).max(1),
            max_starting_workers: env_or("RTD_MAX_STARTING_WORKERS", 4usize).max(1),
            infeasible_retry: Duration::from_millis(env_or("RTD_INFEASIBLE_RETRY_MS", 500)),
        }
    }

    pub fn get() -> &'static RuntimeConfig {
        static CONFIG: OnceLock<RuntimeConfig> = OnceLock::new();
        CONFIG.get_or_init(Self::from_env)
    }
}
