//! An in-memory store: a real implementation for fast tests, with the same
//! guarantees as the others. Put-if-absent can be switched off to behave like
//! a store that ignores conditional headers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::error::{Result, StoreError};
use crate::store::{BoxFut, ObjectMeta, ObjectReader, PutMode, PutSource, ReplicaStore};

#[derive(Debug, Clone)]
struct Object {
    data: Arc<Vec<u8>>,
    modified: SystemTime,
}

#[derive(Debug)]
pub struct MemoryStore {
    name: String,
    objects: Mutex<BTreeMap<String, Object>>,
    conditional_put: bool,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_conditional_put(true)
    }

    /// `false` makes `PutMode::Create` overwrite, like Garage.
    pub fn with_conditional_put(conditional_put: bool) -> Self {
        MemoryStore {
            name: "memory://".into(),
            objects: Mutex::new(BTreeMap::new()),
            conditional_put,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Object>> {
        // A panic while holding the lock cannot leave a half-written object:
        // every mutation is a single insert or remove.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn not_found(&self, key: &str) -> StoreError {
        StoreError::NotFound {
            store: self.name.clone(),
            key: key.to_string(),
        }
    }

    fn object(&self, key: &str) -> Result<Arc<Vec<u8>>> {
        self.lock()
            .get(key)
            .map(|o| o.data.clone())
            .ok_or_else(|| self.not_found(key))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplicaStore for MemoryStore {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn put<'a>(&'a self, key: &'a str, src: &'a PutSource, mode: PutMode) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let data = match src {
                PutSource::Bytes(b) => b.clone(),
                PutSource::File(p) => tokio::fs::read(p).await.map_err(|e| StoreError::Io {
                    store: self.name.clone(),
                    op: "put",
                    key: key.to_string(),
                    source: e,
                })?,
            };
            let mut map = self.lock();
            if mode == PutMode::Create && self.conditional_put && map.contains_key(key) {
                return Err(StoreError::AlreadyExists {
                    store: self.name.clone(),
                    key: key.to_string(),
                });
            }
            map.insert(
                key.to_string(),
                Object {
                    data: Arc::new(data),
                    modified: SystemTime::now(),
                },
            );
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, ObjectReader> {
        Box::pin(async move {
            let data = self.object(key)?;
            let r: ObjectReader = Box::pin(std::io::Cursor::new(ArcBytes(data)));
            Ok(r)
        })
    }

    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFut<'a, Vec<u8>> {
        Box::pin(async move {
            let data = self.object(key)?;
            range_of(&self.name, key, &data, offset, len)
        })
    }

    fn list<'a>(
        &'a self,
        dir: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxFut<'a, Vec<ObjectMeta>> {
        Box::pin(async move {
            let map = self.lock();
            Ok(map
                .range(dir.to_string()..)
                .take_while(|(k, _)| k.starts_with(dir))
                .filter(|(k, _)| {
                    let rest = &k[dir.len()..];
                    !rest.contains('/') && !rest.starts_with('.')
                })
                .filter(|(k, _)| start_after.is_none_or(|s| k.as_str() > s))
                .map(|(k, o)| ObjectMeta {
                    key: k.clone(),
                    size: o.data.len() as u64,
                    last_modified: Some(o.modified),
                })
                .collect())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.lock().remove(key);
            Ok(())
        })
    }
}

/// Shared bytes usable as a `Cursor` source.
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The `[offset, offset+len)` slice of an object, with the trait's rules.
pub(crate) fn range_of(
    store: &str,
    key: &str,
    data: &[u8],
    offset: u64,
    len: u64,
) -> Result<Vec<u8>> {
    let size = data.len() as u64;
    if offset >= size {
        return Err(past_end(store, key, offset, size));
    }
    let end = offset.saturating_add(len).min(size);
    Ok(data[offset as usize..end as usize].to_vec())
}

/// The error for a ranged read starting at or past the end of an object.
pub(crate) fn past_end(store: &str, key: &str, offset: u64, size: u64) -> StoreError {
    StoreError::Other {
        store: store.to_string(),
        op: "get range",
        key: key.to_string(),
        detail: format!("offset {offset} is at or past the end of the {size}-byte object"),
        retryable: false,
    }
}
