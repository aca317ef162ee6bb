//! Fixed-size binary ids, shown as lowercase hex like Ray's.
//!
//! An object created by a task is named after the task: `ObjectId = TaskId ++ index`
//! (4 bytes, little endian), so every return value has a stable id that the submitter
//! knows before the task runs. `put` objects set the top bit of the index.

use std::fmt::{self, Write as _};

/// Bytes as lowercase hex, as ids show (also for ids that arrive as raw bytes).
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[derive(Debug, thiserror::Error)]
#[error("{kind} must be {expected} bytes, got {got}")]
pub struct IdError {
    pub kind: &'static str,
    pub expected: usize,
    pub got: usize,
}

macro_rules! define_id {
    ($name:ident, $len:expr) => {
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub fn random() -> Self {
                let mut b = [0u8; $len];
                rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
                Self(b)
            }

            pub fn nil() -> Self {
                Self([0u8; $len])
            }

            pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| IdError {
                    kind: stringify!($name),
                    expected: $len,
                    got: bytes.len(),
                })?;
                Ok(Self(arr))
            }

            /// Parses the lowercase (or uppercase) hex form `hex()` prints.
            pub fn from_hex(hex: &str) -> Option<Self> {
                let bytes: Option<Vec<u8>> = (0..hex.len())
                    .step_by(2)
                    .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                    .collect();
                Self::from_bytes(&bytes?).ok()
            }

            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            pub fn to_vec(&self) -> Vec<u8> {
                self.0.to_vec()
            }

            pub fn hex(&self) -> String {
                hex(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.hex())
            }
        }
    };
}

define_id!(JobId, 4);
define_id!(ActorId, 16);
define_id!(TaskId, 24);
define_id!(ObjectId, 28);
define_id!(NodeId, 28);
define_id!(WorkerId, 28);
define_id!(PlacementGroupId, 18);

const PUT_BIT: u32 = 1 << 31;

impl ObjectId {
    /// The `index`-th return value (0-based) of `task`.
    pub fn for_return(task: &TaskId, index: u32) -> Self {
        Self::compose(task, index)
    }

    /// The `index`-th object `put` while `task` ran (or by the driver).
    pub fn for_put(task: &TaskId, index: u32) -> Self {
        Self::compose(task, index | PUT_BIT)
    }

    fn compose(task: &TaskId, index: u32) -> Self {
        let mut b = [0u8; 28];
        b[..24].copy_from_slice(&task.0);
        b[24..].copy_from_slice(&index.to_le_bytes());
        Self(b)
    }

    pub fn task_id(&self) -> TaskId {
        let mut t = [0u8; 24];
        t.copy_from_slice(&self.0[..24]);
        TaskId(t)
    }

    pub fn is_put(&self) -> bool {
        let idx = u32::from_le_bytes([self.0[24], self.0[25], self.0[26], self.0[27]]);
        idx & PUT_BIT != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_ids_name_their_task() {
        let t = TaskId::random();
        let o = ObjectId::for_return(&t, 3);
        assert_eq!(o.task_id(), t);
        assert!(!o.is_put());
        assert!(ObjectId::for_put(&t, 3).is_put());
        assert_ne!(ObjectId::for_put(&t, 3), o);
    }

    #[test]
    fn wrong_length_is_an_error() {
        let err = ObjectId::from_bytes(&[1, 2, 3]).unwrap_err();
        assert_eq!(err.got, 3);
        assert_eq!(ObjectId::random().hex().len(), 56);
        let id = NodeId::random();
        assert_eq!(NodeId::from_hex(&id.hex()), Some(id));
        assert_eq!(NodeId::from_hex("zz"), None);
    }
}
