//! Replica stores and the replica key layout.
//!
//! - [`store::ReplicaStore`]: put (overwrite or put-if-absent), get, ranged
//!   get, one-level listing after a key, delete, capability probe;
//! - [`s3::S3Store`], [`local::LocalStore`], [`memory::MemoryStore`];
//! - [`retry::RetryingStore`]: timeouts, backoff with jitter, cancellation;
//! - `fault::FaultStore`: injected latency, errors and dropped connections
//!   (feature `test-util`);
//! - [`layout`]: every object key, built in one place;
//! - [`catalogue`]: every LTX file of a replica, parsed back from a listing;
//! - [`url::ReplicaUrl`]: Litestream-compatible replica URLs;
//! - `conformance`: the suite every store passes (feature `test-util`).

pub mod catalogue;
#[cfg(feature = "test-util")]
pub mod conformance;
pub mod error;
#[cfg(feature = "test-util")]
pub mod fault;
pub mod layout;
pub mod local;
pub mod memory;
pub mod retry;
pub mod s3;
pub mod store;
pub mod url;

pub use catalogue::FileInfo;
pub use error::{Result, StoreError};
pub use layout::{Layout, LayoutKind};
pub use store::{Capabilities, ObjectMeta, ObjectReader, PutMode, PutSource, ReplicaStore};
pub use url::ReplicaUrl;
