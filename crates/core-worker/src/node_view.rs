//! The cluster's nodes as this process sees them: the list `rtd.nodes()` shows, and,
//! in a multi-node cluster, which nodes died. A node that froze or was cut off never
//! closes its connections, so work stuck on it would wait forever; learning of its
//! death from the GCS lets that work be retried elsewhere.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rtd_common::proto::{GetNodes, NodeInfo, PrepareRuntimeEnv};

use crate::actor_submitter::ActorSubmitter;
use crate::context::Context;
use crate::error::CoreError;
use crate::submitter::TaskSubmitter;

/// How often the GCS's node list is read for deaths.
const DEATH_POLL: Duration = Duration::from_millis(500);

pub(crate) fn nodes(ctx: &Context, interrupted: &mut dyn FnMut() -> bool) -> Result<Vec<NodeInfo>, CoreError> {
    Ok(ctx.node_call(GetNodes {}, interrupted)?.nodes)
}

/// `eager_install`: asks every live node to set `runtime_env` (canonical JSON) up now,
/// without waiting for them (a node that cannot is noticed by the first lease there).
pub(crate) fn prepare_runtime_env(
    ctx: &Arc<Context>,
    runtime_env: String,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<(), CoreError> {
    let _ = ctx.raylet.send(PrepareRuntimeEnv { runtime_env: runtime_env.clone() });
    let own = ctx.node_id.to_vec();
    let others: Vec<String> = nodes(ctx, interrupted)?
        .into_iter()
        .filter(|n| n.alive && n.node_id.as_ref() != own.as_slice() && !n.raylet_address.is_empty())
        .map(|n| n.raylet_address)
        .collect();
    for address in others {
        let (ctx, runtime_env) = (ctx.clone(), runtime_env.clone());
        ctx.rt.clone().spawn(async move {
            match ctx.peers.get(&address).await {
                Ok(raylet) => {
                    let _ = raylet.send(PrepareRuntimeEnv { runtime_env });
                }
                Err(e) => tracing::debug!("eager runtime_env setup: node {address} not reached: {e}"),
            }
        });
    }
    Ok(())
}

/// Tells the submitters of each node that died (runs for the life of the process).
pub(crate) async fn watch_node_deaths(ctx: Arc<Context>, tasks: TaskSubmitter, actors: ActorSubmitter) {
    let mut known_dead: HashSet<String> = Default::default();
    loop {
        tokio::time::sleep(DEATH_POLL).await;
        let Ok(r) = ctx.raylet.request(GetNodes {}).await else { continue };
        let newly_dead: Vec<String> = r
            .nodes
            .into_iter()
            .filter(|n| !n.alive && !n.raylet_address.is_empty())
            .map(|n| n.raylet_address)
            .filter(|a| known_dead.insert(a.clone()))
            .collect();
        if !newly_dead.is_empty() {
            tasks.nodes_dead(newly_dead);
            actors.nodes_died();
        }
    }
}
