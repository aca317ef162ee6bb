//! Bundle resources: how work finds the resources a placement group reserved.
//!
//! A placement group reserves *bundles* (say `{"CPU": 1}` twice) on chosen nodes. Once a
//! bundle is committed, its node does not keep the reservation aside in a separate
//! ledger: it turns the reserved amounts into node resources of their own, named after
//! the group. Bundle 0 of group `pg` holding one CPU adds
//!
//! - `CPU_group_0_<pg hex>`: this bundle's CPU, for work pinned to bundle 0;
//! - `CPU_group_<pg hex>`: the same CPU counted for "any bundle of the group";
//! - `bundle_group_0_<pg hex>` and `bundle_group_<pg hex>`: a marker of 1000 units.
//!
//! Work in a group then asks for those names instead of plain `CPU` (see
//! [`request_in_group`]), so the ordinary scheduler places it: only a node holding one
//! of the group's bundles has such resources, and the bundle's amounts bound what runs
//! in it. Work that asks for no resources at all still asks for a sliver (0.001) of the
//! marker, or it would be free to run anywhere. When the group is removed the resources
//! vanish, and work that asks for them can never run.
//!
//! This module is the only place that spells or reads these names, as Ray's
//! `FormatPlacementGroupResource` and `ParsePgFormattedResource` (`bundle_spec.h`) are.
//! A user's own resource that merely contains `_group_` (`my_group_x`) is not a bundle
//! resource: a name is one only if it ends in `_group_[<index>_]` and a full group id.

use std::fmt;

use crate::ids::PlacementGroupId;
use crate::resources::{ResourceSet, UNIT};

/// The marker resource of a committed bundle (`bundle_group_*`).
pub const MARKER: &str = "bundle";

/// How much marker a committed bundle has (as in Ray: 1000 units).
pub const MARKER_CAPACITY: i64 = 1000 * UNIT;

/// How much marker work in a group asks for: a sliver, so a bundle fits many such tasks.
pub const MARKER_REQUEST: i64 = UNIT / 1000;

/// A resource name that belongs to a placement group: `resource` of bundle `index` of
/// `group`, or of any of its bundles when `index` is None.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BundleResource {
    pub resource: String,
    pub group: PlacementGroupId,
    pub index: Option<u32>,
}

impl BundleResource {
    /// `<resource>_group_<pg hex>` or `<resource>_group_<index>_<pg hex>`.
    pub fn format(&self) -> String {
        match self.index {
            Some(index) => format!("{}_group_{index}_{}", self.resource, self.group.hex()),
            None => format!("{}_group_{}", self.resource, self.group.hex()),
        }
    }

    /// The bundle resource `name` spells, or None for any other name. Only the exact
    /// spelling `format` writes is accepted (lowercase hex, no leading zeros in the
    /// index), so a name parses to at most one `BundleResource`.
    pub fn parse(name: &str) -> Option<Self> {
        let (head, hex) = name.rsplit_once('_')?;
        if hex.len() != 2 * PlacementGroupId::LEN || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let group = PlacementGroupId::from_hex(hex)?;
        // `<resource>_group_<index>` or `<resource>_group`: the word before the id is
        // either `group` or a bundle index, never both.
        let (head, index) = match head.rsplit_once('_') {
            Some((before, index)) if is_canonical_index(index) => (before, Some(index.parse().ok()?)),
            _ => (head, None),
        };
        let resource = head.strip_suffix("_group").filter(|r| !r.is_empty())?;
        Some(Self { resource: resource.to_string(), group, index })
    }
}

impl fmt::Display for BundleResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format())
    }
}

/// Decimal digits as `u32::to_string` writes them: no sign, no leading zero.
fn is_canonical_index(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

fn named(resource: &str, group: PlacementGroupId, index: Option<u32>) -> String {
    BundleResource { resource: resource.to_string(), group, index }.format()
}

/// The node resources bundle `index` of `group` adds once committed: each reserved
/// resource for this bundle and for any bundle, and the marker for both.
pub fn committed_resources(reserved: &ResourceSet, group: PlacementGroupId, index: u32) -> ResourceSet {
    let mut added = ResourceSet::new();
    for (name, amount) in reserved.iter() {
        added.set(&named(name, group, Some(index)), amount);
        added.set(&named(name, group, None), amount);
    }
    added.set(&named(MARKER, group, Some(index)), MARKER_CAPACITY);
    added.set(&named(MARKER, group, None), MARKER_CAPACITY);
    added
}

/// What work asking for `resources` asks for when it runs in bundle `index` of `group`
/// (None: any bundle). Pinned to a bundle, it also takes the same amounts of the
/// group-wide resources, which count every bundle's; and a sliver of the marker always.
pub fn request_in_group(resources: &ResourceSet, group: PlacementGroupId, index: Option<u32>) -> ResourceSet {
    let mut request = ResourceSet::new();
    for (name, amount) in resources.iter() {
        request.set(&named(name, group, None), amount);
        if index.is_some() {
            request.set(&named(name, group, index), amount);
        }
    }
    request.set(&named(MARKER, group, index), MARKER_REQUEST);
    request
}

/// The placement group of the first bundle resource among `names`, if any.
pub fn group_of_any<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<PlacementGroupId> {
    names.into_iter().find_map(|name| BundleResource::parse(name).map(|b| b.group))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PG: &str = "8a1f00000000000000000000000000000000";

    fn pg() -> PlacementGroupId {
        PlacementGroupId::from_hex(PG).expect("valid test id")
    }

    fn group_of(name: &str) -> Option<PlacementGroupId> {
        BundleResource::parse(name).map(|b| b.group)
    }

    #[test]
    fn only_placement_group_resource_names_belong_to_a_group() {
        assert_eq!(group_of(&format!("CPU_group_{PG}")), Some(pg()));
        assert_eq!(group_of(&format!("CPU_group_12_{PG}")), Some(pg()));
        assert_eq!(group_of(&format!("bundle_group_0_{PG}")), Some(pg()));
        assert_eq!(group_of(&format!("my_group_x_group_1_{PG}")), Some(pg()));
        for name in
            ["my_group_x", "team_group_1", "a_group_b_c", "_group_", &format!("_group_{PG}"), &format!("CPU_grp_{PG}")]
        {
            assert_eq!(group_of(name), None, "{name}");
        }
        assert_eq!(group_of(&format!("CPU_group_{}", &PG[1..])), None);
    }

    #[test]
    fn names_split_into_resource_group_and_bundle() {
        let parsed = BundleResource::parse(&format!("my_group_x_group_1_{PG}")).expect("a bundle resource");
        assert_eq!(parsed, BundleResource { resource: "my_group_x".into(), group: pg(), index: Some(1) });
        let parsed = BundleResource::parse(&format!("GPU_group_{PG}")).expect("a bundle resource");
        assert_eq!(parsed, BundleResource { resource: "GPU".into(), group: pg(), index: None });
        // Spellings `format` never writes are not bundle resources.
        for name in
            [format!("CPU_group_01_{PG}"), format!("CPU_group_+1_{PG}"), format!("CPU_group_{}", PG.to_uppercase())]
        {
            assert_eq!(BundleResource::parse(&name), None, "{name}");
        }
    }

    #[test]
    fn a_committed_bundle_adds_its_resources_twice_and_a_marker() {
        let reserved = ResourceSet::from_floats([("CPU", 2.0), ("GPU", 0.5)]).expect("valid");
        let added = committed_resources(&reserved, pg(), 3);
        let expected = ResourceSet::from_floats([
            (format!("CPU_group_3_{PG}").as_str(), 2.0),
            (format!("CPU_group_{PG}").as_str(), 2.0),
            (format!("GPU_group_3_{PG}").as_str(), 0.5),
            (format!("GPU_group_{PG}").as_str(), 0.5),
            (format!("bundle_group_3_{PG}").as_str(), 1000.0),
            (format!("bundle_group_{PG}").as_str(), 1000.0),
        ])
        .expect("valid");
        assert_eq!(added, expected);
    }

    #[test]
    fn work_in_a_group_asks_for_its_bundle_resources_and_a_sliver_of_the_marker() {
        let cpu = ResourceSet::from_floats([("CPU", 1.0)]).expect("valid");
        let pinned = request_in_group(&cpu, pg(), Some(0));
        let expected = ResourceSet::from_floats([
            (format!("CPU_group_0_{PG}").as_str(), 1.0),
            (format!("CPU_group_{PG}").as_str(), 1.0),
            (format!("bundle_group_0_{PG}").as_str(), 0.001),
        ])
        .expect("valid");
        assert_eq!(pinned, expected);
        let anywhere = request_in_group(&ResourceSet::new(), pg(), None);
        let expected = ResourceSet::from_floats([(format!("bundle_group_{PG}").as_str(), 0.001)]).expect("valid");
        assert_eq!(anywhere, expected);
        // Everything asked for is a resource a committed bundle adds.
        let committed = committed_resources(&cpu, pg(), 0);
        assert!(pinned.fits_in(&committed));
        assert_eq!(group_of_any(pinned.iter().map(|(name, _)| name)), Some(pg()));
        assert_eq!(group_of_any(["CPU", "my_group_x"]), None);
    }

    fn resource_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z0-9_]{1,12}",
            "[a-z0-9_]{0,6}_group_[a-z0-9_]{0,6}",
            "[a-z]{1,4}_group_[0-9]{1,3}(_[0-9a-f]{36})?",
            ".{1,12}",
        ]
    }

    proptest! {
        #[test]
        fn parse_reads_back_what_format_writes(
            resource in resource_name(),
            group in any::<[u8; 18]>().prop_map(PlacementGroupId),
            index in proptest::option::of(any::<u32>()),
        ) {
            let bundle = BundleResource { resource, group, index };
            prop_assert_eq!(BundleResource::parse(&bundle.format()), Some(bundle));
        }

        #[test]
        fn parse_never_panics_and_accepts_only_what_format_writes(name in ".{0,64}|[a-z_0-9]{0,8}_group_[0-9]{0,3}_?[0-9a-f]{30,40}") {
            if let Some(bundle) = BundleResource::parse(&name) {
                prop_assert_eq!(bundle.format(), name);
            }
        }
    }
}
