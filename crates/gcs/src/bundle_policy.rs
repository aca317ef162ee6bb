//! Where the bundles of a placement group go.
//!
//! A placement group reserves a list of resource bundles all at once. Its strategy
//! says how they may share nodes, as in Ray:
//! - **STRICT_PACK**: every bundle on one node (or nothing).
//! - **PACK**: as few nodes as possible; one node if it fits, else fill node by node.
//! - **STRICT_SPREAD**: every bundle on a different node (or nothing).
//! - **SPREAD**: different nodes where possible, sharing only when it must.
//!
//! The answer is computed against a copy of the nodes' *available* resources, bundle by
//! bundle, so a placement never over-commits a node; reserving it is the GCS's
//! two-phase commit. `None` means "not now": the group stays pending.

use std::collections::HashSet;
use std::str::FromStr;

use rtd_common::scheduling::NodeView;
use rtd_common::{NodeId, ResourceSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleStrategy {
    Pack,
    Spread,
    StrictPack,
    StrictSpread,
}

impl FromStr for BundleStrategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "PACK" => Ok(Self::Pack),
            "SPREAD" => Ok(Self::Spread),
            "STRICT_PACK" => Ok(Self::StrictPack),
            "STRICT_SPREAD" => Ok(Self::StrictSpread),
            other => {
                Err(format!("invalid placement strategy {other:?}: use PACK, SPREAD, STRICT_PACK or STRICT_SPREAD"))
            }
        }
    }
}

/// A node for each bundle, or `None` if the group cannot be placed now.
pub fn place_bundles(nodes: &[NodeView], bundles: &[ResourceSet], strategy: BundleStrategy) -> Option<Vec<NodeId>> {
    let mut free: Vec<(NodeId, ResourceSet)> =
        nodes.iter().filter(|n| n.alive).map(|n| (n.node_id, n.available.clone())).collect();
    // Roomiest nodes first, so greedy choices leave the most slack.
    free.sort_by_key(|(_, avail)| std::cmp::Reverse(avail.iter().map(|(_, v)| v).sum::<i64>()));
    match strategy {
        BundleStrategy::StrictPack => {
            let mut sum = ResourceSet::new();
            for b in bundles {
                sum.add(b);
            }
            let (node, _) = free.iter().find(|(_, avail)| sum.fits_in(avail))?;
            Some(vec![*node; bundles.len()])
        }
        BundleStrategy::Pack => {
            if let Some(one) = place_bundles(nodes, bundles, BundleStrategy::StrictPack) {
                return Some(one);
            }
            let mut used: Vec<usize> = Vec::new();
            let mut out = Vec::with_capacity(bundles.len());
            for b in bundles {
                // Nodes already in use first, then new ones.
                let pick = used
                    .iter()
                    .copied()
                    .find(|i| b.fits_in(&free[*i].1))
                    .or_else(|| (0..free.len()).find(|i| !used.contains(i) && b.fits_in(&free[*i].1)))?;
                if !used.contains(&pick) {
                    used.push(pick);
                }
                free[pick].1.subtract(b);
                out.push(free[pick].0);
            }
            Some(out)
        }
        BundleStrategy::StrictSpread | BundleStrategy::Spread => {
            let strict = strategy == BundleStrategy::StrictSpread;
            let mut used: HashSet<usize> = HashSet::new();
            let mut out = Vec::with_capacity(bundles.len());
            for b in bundles {
                let fresh = (0..free.len()).find(|i| !used.contains(i) && b.fits_in(&free[*i].1));
                let pick = match fresh {
                    Some(i) => i,
                    None if strict => return None,
                    None => (0..free.len()).find(|i| b.fits_in(&free[*i].1))?,
                };
                used.insert(pick);
                free[pick].1.subtract(b);
                out.push(free[pick].0);
            }
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(cpus: f64) -> NodeView {
        let total = ResourceSet::from_floats([("CPU", cpus)]).expect("valid");
        NodeView { node_id: NodeId::random(), available: total.clone(), total, alive: true }
    }

    fn cpu(n: f64) -> ResourceSet {
        ResourceSet::from_floats([("CPU", n)]).expect("valid")
    }

    #[test]
    fn strategies_on_three_nodes() {
        let nodes = vec![node(2.0), node(2.0), node(2.0)];
        let two = vec![cpu(1.0), cpu(1.0)];
        let packed = place_bundles(&nodes, &two, BundleStrategy::StrictPack).expect("fits one node");
        assert_eq!(packed[0], packed[1]);
        let spread = place_bundles(&nodes, &two, BundleStrategy::StrictSpread).expect("two nodes");
        assert_ne!(spread[0], spread[1]);
        let four = vec![cpu(1.0); 4];
        assert!(place_bundles(&nodes, &four, BundleStrategy::StrictSpread).is_none());
        assert!(place_bundles(&nodes, &four, BundleStrategy::StrictPack).is_none());
        let pack = place_bundles(&nodes, &four, BundleStrategy::Pack).expect("two nodes suffice");
        assert_eq!(pack.iter().collect::<HashSet<_>>().len(), 2);
        let soft = place_bundles(&nodes, &four, BundleStrategy::Spread).expect("shares when it must");
        assert_eq!(soft.iter().collect::<HashSet<_>>().len(), 3);
    }

    #[test]
    fn too_big_a_bundle_is_not_placed() {
        assert!(place_bundles(&[node(2.0)], &[cpu(3.0)], BundleStrategy::Pack).is_none());
        assert!("NOPE".parse::<BundleStrategy>().is_err());
    }

    proptest! {
        #[test]
        fn placements_never_over_commit_and_strict_spread_never_shares(
            caps in proptest::collection::vec(1u8..5, 1..6),
            sizes in proptest::collection::vec(1u8..4, 1..6),
            which in 0usize..4,
        ) {
            let nodes: Vec<NodeView> = caps.iter().map(|c| node(f64::from(*c))).collect();
            let bundles: Vec<ResourceSet> = sizes.iter().map(|s| cpu(f64::from(*s))).collect();
            let strategy = [BundleStrategy::Pack, BundleStrategy::Spread, BundleStrategy::StrictPack, BundleStrategy::StrictSpread][which];
            if let Some(placement) = place_bundles(&nodes, &bundles, strategy) {
                prop_assert_eq!(placement.len(), bundles.len());
                for n in &nodes {
                    let mut used = ResourceSet::new();
                    for (b, at) in bundles.iter().zip(&placement) {
                        if *at == n.node_id {
                            used.add(b);
                        }
                    }
                    prop_assert!(used.fits_in(&n.available));
                }
                match strategy {
                    BundleStrategy::StrictSpread => {
                        prop_assert_eq!(placement.iter().collect::<HashSet<_>>().len(), placement.len());
                    }
                    BundleStrategy::StrictPack => {
                        prop_assert!(placement.iter().all(|n| *n == placement[0]));
                    }
                    _ => {}
                }
            }
        }
    }
}
