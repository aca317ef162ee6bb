//! Printed output on its way from a worker to its job's driver.
//!
//! A worker forwards whole prefixed lines to the driver's core worker, which hands them
//! to the output sink the bindings set (it writes them to the driver's stdout or
//! stderr). Before a task's reply goes out, the worker waits until the driver has
//! written what the task printed, so output never arrives after the result.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rtd_common::proto::WorkerOutput;

use crate::context::Context;

/// How long a worker tries to reach its driver with output before writing it locally.
const OUTPUT_CONNECT_LIMIT: Duration = Duration::from_secs(2);

pub(crate) struct OutputForwarder {
    ctx: Arc<Context>,
    /// The driver this worker forwarded output to since its last task finished.
    forwarded_to: Mutex<Option<String>>,
}

impl OutputForwarder {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self { ctx, forwarded_to: Mutex::new(None) }
    }

    /// Sends printed text to the driver at `driver`. False if it cannot be reached;
    /// the caller then writes it locally.
    pub(crate) fn forward(&self, driver: &str, text: String, stderr: bool) -> bool {
        let connect = async { tokio::time::timeout(OUTPUT_CONNECT_LIMIT, self.ctx.peers.get(driver)).await.ok()?.ok() };
        let Some(client) = self.ctx.rt.block_on(connect) else { return false };
        if client.send(WorkerOutput { text, stderr }).is_err() {
            return false;
        }
        *self.forwarded_to.lock() = Some(driver.to_string());
        true
    }

    /// Waits (briefly) until the driver has written what this worker forwarded.
    pub(crate) fn sync(&self) {
        let Some(driver) = self.forwarded_to.lock().take() else { return };
        self.ctx.rt.block_on(async {
            let marker = async {
                let client = self.ctx.peers.get(&driver).await?;
                client.request(WorkerOutput::default()).await
            };
            let _ = tokio::time::timeout(OUTPUT_CONNECT_LIMIT, marker).await;
        });
    }
}
