//! Replica stores and the replica key layout.
//!
//! - [`store::ReplicaStore`]: put (overwrite or put-if-absent), get, ranged
//!   get, one-level listing after a key, delete, capability probe;
//! - [`s3::S3Store`], [`local::LocalStore`], [`memory::MemoryStore`];
//! - [`retry::RetryingStore`]: timeouts, backoff with jitter, cancellation;
//! - [`fault::FaultStore`]: injected latency, errors and dropped connections;
//! - [`layout`]: every object key, built in one place;
//! - [`url::ReplicaUrl`]: Litestream-compatible replica URLs;
//! - `conformance`: the suite every store passes (feature `test-util`).

#[cfg(feature = "test-util")]
pub mod conformance;
pub mod error;
pub mod fault;
pub mod layout;
pub mod local;
pub mod memory;
pub mod retry;
pub mod s3;
pub mod store;
pub mod url;

pub use error::{Result, StoreError};
pub use layout::{Layout, LayoutKind};
pub use store::{Capabilities, ObjectMeta, ObjectReader, PutMode, PutSource, ReplicaStore};
pub use url::ReplicaUrl;
