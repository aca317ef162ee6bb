//! How the GCS's tables are written as rows, and read back whole: [`Restored`] is
//! every row decoded and checked before any of it is put in the tables, so a store
//! with one bad row is refused at start instead of half loaded.
//!
//! Keys are ids as bytes (job, node, actor, placement group) or the KV key; values are
//! protobuf messages: the wire types themselves, and [`StoredActor`] for what the
//! actor manager knows beyond an actor's published info.

use bytes::Bytes;
use prost::Message;
use rtd_common::proto::{ActorInfo, JobInfo, NodeInfo, PlacementGroupInfo, TaskSpec};
use rtd_common::scheduling::Strategy;
use rtd_common::{ActorId, NodeId, PlacementGroupId};

use super::{Snapshot, StoreError, Table};
use crate::bundle_policy::BundleStrategy;

/// The meta row holding the next job number.
pub const NEXT_JOB_KEY: &[u8] = b"next_job";

/// An actor as the actor manager stores it: enough to resume managing it.
#[derive(Clone, PartialEq, Message)]
pub struct StoredActor {
    /// State, name, namespace, detached flag, lifetime options, restart count, address.
    #[prost(message, optional, tag = "1")]
    pub info: Option<ActorInfo>,
    /// Its creation task, re-run on a restart.
    #[prost(message, optional, tag = "2")]
    pub spec: Option<TaskSpec>,
    #[prost(bool, tag = "3")]
    pub args_pending: bool,
    /// The node of the worker lease it holds; empty without one.
    #[prost(bytes = "vec", tag = "4")]
    pub lease_node: Vec<u8>,
    #[prost(uint64, tag = "5")]
    pub lease_id: u64,
    /// The node it last ran on; empty before it was first placed.
    #[prost(bytes = "vec", tag = "6")]
    pub node: Vec<u8>,
}

/// A stored actor, checked.
pub struct RestoredActor {
    pub id: ActorId,
    pub info: ActorInfo,
    pub spec: TaskSpec,
    pub strategy: Strategy,
    pub args_pending: bool,
    pub lease: Option<(NodeId, u64)>,
    pub node: Option<NodeId>,
}

/// A stored placement group, checked.
pub struct RestoredGroup {
    pub id: PlacementGroupId,
    pub info: PlacementGroupInfo,
    pub strategy: BundleStrategy,
}

/// Everything a store held, decoded.
#[derive(Default)]
pub struct Restored {
    /// None in a fresh store.
    pub next_job: Option<u32>,
    pub kv: Vec<(String, Bytes)>,
    /// In the order they started (job ids count up).
    pub jobs: Vec<JobInfo>,
    pub nodes: Vec<NodeInfo>,
    pub actors: Vec<RestoredActor>,
    pub groups: Vec<RestoredGroup>,
}

fn bad_row(describe: &str, table: Table, key: &[u8], why: impl std::fmt::Display) -> StoreError {
    StoreError(format!(
        "{describe} holds a damaged row (table {}, key {}): {why}; the cluster was not loaded",
        table.name(),
        rtd_common::ids::hex(key)
    ))
}

fn decode_rows<T: Message + Default>(snapshot: &Snapshot, table: Table, describe: &str) -> Result<Vec<T>, StoreError> {
    snapshot
        .rows(table)
        .map(|(key, value)| T::decode(value.as_slice()).map_err(|e| bad_row(describe, table, key, e)))
        .collect()
}

fn optional_node(bytes: &[u8]) -> Result<Option<NodeId>, rtd_common::ids::IdError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    NodeId::from_bytes(bytes).map(Some)
}

impl Restored {
    /// Decodes and checks every row of `snapshot` (read from the store `describe`).
    pub fn decode(snapshot: &Snapshot, describe: &str) -> Result<Self, StoreError> {
        let next_job = match snapshot.get(Table::Meta, NEXT_JOB_KEY) {
            None => None,
            Some(bytes) => {
                let bytes: [u8; 4] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad_row(describe, Table::Meta, NEXT_JOB_KEY, "not 4 bytes"))?;
                Some(u32::from_be_bytes(bytes))
            }
        };
        let kv = snapshot
            .rows(Table::Kv)
            .map(|(key, value)| {
                let key = String::from_utf8(key.clone()).map_err(|e| bad_row(describe, Table::Kv, key, e))?;
                Ok((key, Bytes::from(value.clone())))
            })
            .collect::<Result<_, StoreError>>()?;
        let mut actors = Vec::new();
        for (key, value) in snapshot.rows(Table::Actors) {
            let bad = |why: &dyn std::fmt::Display| bad_row(describe, Table::Actors, key, why);
            let stored = StoredActor::decode(value.as_slice()).map_err(|e| bad(&e))?;
            let (Some(info), Some(spec)) = (stored.info, stored.spec) else {
                return Err(bad(&"no actor info or creation task"));
            };
            let id = ActorId::from_bytes(&info.actor_id).map_err(|e| bad(&e))?;
            let options = info.options.clone().unwrap_or_default();
            let strategy = Strategy::from_wire(&options.strategy, &options.affinity_node, options.affinity_soft)
                .map_err(|e| bad(&e))?;
            let lease = optional_node(&stored.lease_node).map_err(|e| bad(&e))?.map(|node| (node, stored.lease_id));
            let node = optional_node(&stored.node).map_err(|e| bad(&e))?;
            actors.push(RestoredActor { id, info, spec, strategy, args_pending: stored.args_pending, lease, node });
        }
        let mut groups = Vec::new();
        for (key, value) in snapshot.rows(Table::PlacementGroups) {
            let bad = |why: &dyn std::fmt::Display| bad_row(describe, Table::PlacementGroups, key, why);
            let info = PlacementGroupInfo::decode(value.as_slice()).map_err(|e| bad(&e))?;
            let id = PlacementGroupId::from_bytes(&info.pg_id).map_err(|e| bad(&e))?;
            let strategy = info.strategy.parse().map_err(|e: String| bad(&e))?;
            groups.push(RestoredGroup { id, info, strategy });
        }
        Ok(Self {
            next_job,
            kv,
            jobs: decode_rows(snapshot, Table::Jobs, describe)?,
            nodes: decode_rows(snapshot, Table::Nodes, describe)?,
            actors,
            groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStorage, OpenedStore, Storage, Write};

    #[test]
    fn a_damaged_row_refuses_the_whole_store_naming_the_table() {
        let mut memory = MemoryStorage::default();
        let rows = [
            Write { table: Table::Kv, key: b"fn:1".to_vec(), value: Some(b"code".to_vec()) },
            Write { table: Table::Actors, key: vec![1; 16], value: Some(vec![0xFF; 7]) },
        ];
        memory.commit(&rows).expect("commits");
        let Err(error) = OpenedStore::open(Box::new(memory)) else { panic!("a damaged store was opened") };
        assert!(error.to_string().contains("table actors"), "{error}");
        assert!(error.to_string().contains("the in-memory store"), "{error}");
    }

    #[test]
    fn a_job_counter_of_the_wrong_size_is_damage() {
        let mut memory = MemoryStorage::default();
        memory.commit(&[Write { table: Table::Meta, key: NEXT_JOB_KEY.to_vec(), value: Some(vec![1]) }]).expect("ok");
        assert!(OpenedStore::open(Box::new(memory)).is_err());
    }
}
