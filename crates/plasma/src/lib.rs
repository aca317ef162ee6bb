//! The node's shared-memory object store ("plasma"): one mapped region, an allocator over
//! it, the table of objects with pinning, spilling to disk and restore, and the socket
//! protocol (server and client) through which workers on the node create and read objects.

pub mod allocator;
pub mod client;
pub mod server;
pub mod shm;
pub mod store;

pub use allocator::Allocator;
pub use client::{PlasmaClient, PlasmaError};
pub use server::PlasmaService;
pub use shm::ShmRegion;
pub use store::{ClientId, ObjectInfo, ObjectStore, StoreError, StoreStats, Transfers};
