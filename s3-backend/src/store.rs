//! The `ReplicaStore` trait: the few operations replication needs from an
//! object store, with the guarantees every implementation keeps.

use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::SystemTime;

use tokio::io::AsyncRead;

use crate::error::Result;

/// A boxed, sendable future: the trait is object-safe without extra crates.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A streaming object body.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The full key, as passed to `get`.
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
}

impl ObjectMeta {
    /// The last path component of the key.
    pub fn name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }
}

/// How a put treats an existing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Put-if-absent (`If-None-Match: *`): fail with `AlreadyExists` if the key
    /// exists, on stores whose [`Capabilities::conditional_put`] is true. On
    /// stores that ignore the condition this behaves as `Overwrite`.
    Create,
}

/// What to upload. Files are streamed, never read whole into memory.
#[derive(Debug, Clone)]
pub enum PutSource {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl PutSource {
    pub async fn len(&self) -> std::io::Result<u64> {
        match self {
            PutSource::File(p) => Ok(tokio::fs::metadata(p).await?.len()),
            PutSource::Bytes(b) => Ok(b.len() as u64),
        }
    }
}

/// What the store was found to support by [`ReplicaStore::probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// A second put-if-absent of a key is refused.
    pub conditional_put: bool,
}

/// An object store holding one or more replicas.
///
/// Keys are `/`-separated paths relative to the store's root (the bucket, or
/// the directory of a `file://` URL); [`crate::layout::Layout`] builds them.
///
/// Guarantees, for every implementation:
/// - a put is atomic: readers see the old object, or none, or the whole new
///   one; a failed or interrupted put leaves nothing under the key;
/// - a completed put is durable (fsynced, or acknowledged by the server);
/// - reads after a completed put see it (read-after-write);
/// - every call ends: backends bound each request in time (see `retry`).
pub trait ReplicaStore: Send + Sync + Debug {
    /// A human-readable name: `file:///path` or `s3://bucket (endpoint)`.
    fn describe(&self) -> String;

    /// Writes the object at `key` from `src`.
    fn put<'a>(&'a self, key: &'a str, src: &'a PutSource, mode: PutMode) -> BoxFut<'a, ()>;

    /// Streams the whole object. A missing key is `NotFound`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, ObjectReader>;

    /// Reads `len` bytes from `offset`; fewer if the object ends first. A
    /// missing key is `NotFound`; an offset at or past the end is an error.
    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFut<'a, Vec<u8>>;

    /// Objects directly under `dir` (a key prefix ending in `/`; not deeper
    /// levels), in ascending key order, with keys greater than `start_after`
    /// when given. A missing directory lists as empty. Names starting with `.`
    /// (temporary files) are not listed.
    fn list<'a>(
        &'a self,
        dir: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxFut<'a, Vec<ObjectMeta>>;

    /// Removes the object; removing a missing key succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, ()>;

    /// Finds out whether put-if-absent is honoured, by putting `key` twice
    /// with [`PutMode::Create`] and then deleting it.
    fn probe<'a>(&'a self, key: &'a str) -> BoxFut<'a, Capabilities> {
        Box::pin(async move {
            self.put(
                key,
                &PutSource::Bytes(b"sluice probe 1".to_vec()),
                PutMode::Create,
            )
            .await
            .or_else(|e| {
                if e.is_already_exists() {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            let second = self
                .put(
                    key,
                    &PutSource::Bytes(b"sluice probe 2".to_vec()),
                    PutMode::Create,
                )
                .await;
            let conditional_put = match second {
                Ok(()) => false,
                Err(e) if e.is_already_exists() => true,
                Err(e) => return Err(e),
            };
            self.delete(key).await?;
            Ok(Capabilities { conditional_put })
        })
    }
}
