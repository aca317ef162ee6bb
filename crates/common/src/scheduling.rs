//! The vocabulary of scheduling that the GCS and the raylets share: what a node looks
//! like to a policy ([`NodeView`]) and how a request says where it may run
//! ([`Strategy`]). The policies themselves live with whoever decides: node choice for
//! leases in the raylet (`rtd_raylet::policy`), bundle placement in the GCS.

use crate::{NodeId, ResourceSet};

/// What the policy knows about one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub node_id: NodeId,
    pub total: ResourceSet,
    pub available: ResourceSet,
    pub alive: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    Default,
    Spread,
    NodeAffinity { node_id: NodeId, soft: bool },
}

#[derive(Debug, thiserror::Error)]
#[error("invalid node id {0:?} in a NodeAffinitySchedulingStrategy: expected {len} hex digits", len = 2 * NodeId::LEN)]
pub struct InvalidStrategy(pub String);

impl Strategy {
    /// The strategy a lease request or an actor's options carry: node affinity when
    /// `affinity_node` (a hex node id) is set, else SPREAD or DEFAULT by name.
    pub fn from_wire(name: &str, affinity_node: &str, soft: bool) -> Result<Self, InvalidStrategy> {
        if !affinity_node.is_empty() {
            let node_id = NodeId::from_hex(affinity_node).ok_or_else(|| InvalidStrategy(affinity_node.to_string()))?;
            return Ok(Strategy::NodeAffinity { node_id, soft });
        }
        Ok(match name {
            "SPREAD" => Strategy::Spread,
            _ => Strategy::Default,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strategies_parse_and_a_malformed_affinity_node_is_an_error() {
        let node = NodeId::random();
        assert_eq!(Strategy::from_wire("", "", false).ok(), Some(Strategy::Default));
        assert_eq!(Strategy::from_wire("SPREAD", "", false).ok(), Some(Strategy::Spread));
        assert_eq!(
            Strategy::from_wire("SPREAD", &node.hex(), true).ok(),
            Some(Strategy::NodeAffinity { node_id: node, soft: true })
        );
        for bad in ["zz", "abc", &node.hex()[2..], &format!("{}00", node.hex())] {
            let err = Strategy::from_wire("", bad, false).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("invalid node id"), "{bad}: {err}");
        }
    }
}
