//! Logical resources in fixed point.
//!
//! Ray treats resources as logical counters with 1/10000 precision, so `0.1 + 0.2`
//! GPUs must equal `0.3` exactly. Amounts are stored as integer ten-thousandths;
//! converting from user floats rounds to the nearest unit and rejects negatives.

use std::collections::BTreeMap;
use std::fmt;

/// 1 unit of a resource, in the fixed-point representation.
pub const UNIT: i64 = 10_000;

pub const CPU: &str = "CPU";
pub const GPU: &str = "GPU";
pub const MEMORY: &str = "memory";
pub const OBJECT_STORE_MEMORY: &str = "object_store_memory";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResourceError {
    #[error("resource {name:?} must be a non-negative number, got {value}")]
    Negative { name: String, value: f64 },
    #[error("resource {name:?} is not a finite number: {value}")]
    NotFinite { name: String, value: f64 },
    #[error("resource name must not be empty")]
    EmptyName,
}

/// A bag of named, non-negative fixed-point amounts. Zero amounts are not stored.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ResourceSet(BTreeMap<String, i64>);

pub fn to_fixed(value: f64) -> i64 {
    (value * UNIT as f64).round() as i64
}

pub fn to_float(amount: i64) -> f64 {
    amount as f64 / UNIT as f64
}

impl ResourceSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// From user-facing float amounts, validating each.
    pub fn from_floats<'a>(items: impl IntoIterator<Item = (&'a str, f64)>) -> Result<Self, ResourceError> {
        let mut set = Self::new();
        for (name, value) in items {
            if name.is_empty() {
                return Err(ResourceError::EmptyName);
            }
            if !value.is_finite() {
                return Err(ResourceError::NotFinite { name: name.into(), value });
            }
            if value < 0.0 {
                return Err(ResourceError::Negative { name: name.into(), value });
            }
            set.set(name, to_fixed(value));
        }
        Ok(set)
    }

    /// From the wire form (already fixed point); negative amounts are dropped.
    pub fn from_fixed_map(map: &std::collections::HashMap<String, i64>) -> Self {
        let mut set = Self::new();
        for (k, v) in map {
            set.set(k, *v);
        }
        set
    }

    pub fn to_fixed_map(&self) -> std::collections::HashMap<String, i64> {
        self.0.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn to_floats(&self) -> BTreeMap<String, f64> {
        self.0.iter().map(|(k, v)| (k.clone(), to_float(*v))).collect()
    }

    pub fn set(&mut self, name: &str, amount: i64) {
        if amount > 0 {
            self.0.insert(name.to_string(), amount);
        } else {
            self.0.remove(name);
        }
    }

    pub fn get(&self, name: &str) -> i64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// True when every amount of `self` is available in `other`.
    pub fn fits_in(&self, other: &ResourceSet) -> bool {
        self.0.iter().all(|(k, v)| other.get(k) >= *v)
    }

    /// Adds `other` to `self`, saturating (amounts from the wire may be anything).
    pub fn add(&mut self, other: &ResourceSet) {
        for (k, v) in other.iter() {
            let cur = self.get(k);
            self.set(k, cur.saturating_add(v));
        }
    }

    /// Subtracts `other`; amounts may go negative only through `subtract_allow_negative`.
    pub fn subtract(&mut self, other: &ResourceSet) {
        for (k, v) in other.iter() {
            let cur = self.get(k);
            self.set(k, (cur - v).max(0));
        }
    }

    /// Subtraction that keeps a deficit (Ray briefly over-commits CPU when a blocked
    /// worker resumes). Returned as a separate map because a set never holds negatives.
    pub fn subtract_with_deficit(&mut self, other: &ResourceSet) -> ResourceSet {
        let mut deficit = ResourceSet::new();
        for (k, v) in other.iter() {
            let cur = self.get(k);
            if cur >= v {
                self.set(k, cur - v);
            } else {
                self.set(k, 0);
                deficit.set(k, v - cur);
            }
        }
        deficit
    }
}

impl fmt::Debug for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.to_floats()).finish()
    }
}

impl fmt::Display for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.to_floats().iter().map(|(k, v)| format!("{k}: {v}")).collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fractions_add_exactly() {
        let a = ResourceSet::from_floats([("GPU", 0.1)]).unwrap();
        let b = ResourceSet::from_floats([("GPU", 0.2)]).unwrap();
        let mut sum = a.clone();
        sum.add(&b);
        assert_eq!(sum, ResourceSet::from_floats([("GPU", 0.3)]).unwrap());
    }

    /// Wire amounts come from peers: summing the largest ones must not wrap negative.
    #[test]
    fn adding_huge_wire_amounts_saturates() {
        let huge = ResourceSet::from_fixed_map(&[("CPU".to_string(), i64::MAX)].into());
        let mut sum = huge.clone();
        sum.add(&huge);
        assert_eq!(sum.get("CPU"), i64::MAX);
    }

    #[test]
    fn negative_and_nan_are_rejected() {
        assert!(matches!(ResourceSet::from_floats([("CPU", -1.0)]), Err(ResourceError::Negative { .. })));
        assert!(matches!(ResourceSet::from_floats([("CPU", f64::NAN)]), Err(ResourceError::NotFinite { .. })));
    }

    proptest! {
        #[test]
        fn add_then_subtract_is_identity(a in 0i64..1_000_000, b in 0i64..1_000_000) {
            let mut x = ResourceSet::new();
            x.set("CPU", a);
            let mut y = ResourceSet::new();
            y.set("CPU", b);
            let orig = x.clone();
            x.add(&y);
            prop_assert!(y.fits_in(&x));
            x.subtract(&y);
            prop_assert_eq!(x, orig);
        }
    }
}
