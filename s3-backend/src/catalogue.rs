//! The catalogue: every LTX file of one replica, read back from a listing.
//!
//! [`Layout`] turns `(level, min, max)` into keys; [`list`] turns a replica's
//! keys back into [`FileInfo`]s. It is the one place that lists a replica, so
//! restore, `sluice ls`, retention and the "is the replica empty" check all
//! agree on what counts as a file: a key under a level directory whose name
//! is a well-formed LTX file name with MinTXID <= MaxTXID. Anything else
//! (Sluice's own `.sluice/` objects, stray uploads) is not in the catalogue.
//!
//! A level-0 object whose name is a TXID range is a bundle (see
//! [`ltx_format::bundle`]): the catalogue lists each LTX file inside it as a
//! file of its own, at `base` within the object, so that every reader (the
//! restore planner first) sees one file per transaction and never needs to
//! know that uploads were batched.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use ltx_format::{bundle, Txid};
use tokio::task::JoinSet;

use crate::error::{Result, StoreError};
use crate::layout::{Layout, SNAPSHOT_LEVEL};
use crate::store::ReplicaStore;

/// One LTX file of a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub level: u8,
    pub min: Txid,
    pub max: Txid,
    /// The file's size in bytes.
    pub size: u64,
    /// Store key, as passed to `get`.
    pub key: String,
    /// For a file inside a bundle, where it starts in the bundle object.
    /// Every ranged read of a file goes through [`FileInfo::at`].
    pub in_bundle: Option<u64>,
    /// When the store last wrote the object, if it says.
    pub last_modified: Option<SystemTime>,
}

impl FileInfo {
    /// A file starting at TXID 1 holds the whole database.
    pub fn is_snapshot(&self) -> bool {
        self.min.0 == 1
    }

    /// The file name, as the LTX header names it: the last key component,
    /// or for a file inside a bundle, the name of its own TXID range.
    pub fn name(&self) -> std::borrow::Cow<'_, str> {
        if self.in_bundle.is_some() {
            return ltx_format::format_filename(self.min, self.max).into();
        }
        self.key.rsplit('/').next().unwrap_or(&self.key).into()
    }

    /// The object offset of the file's byte `offset`.
    pub fn at(&self, offset: u64) -> u64 {
        self.in_bundle.unwrap_or(0) + offset
    }
}

impl fmt::Display for FileInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{} {}-{}", self.level, self.min, self.max)
    }
}

/// Lists levels 0..=9 of the replica under `layout`, the levels in parallel,
/// sorted by `(level, min, max)`. A missing replica directory lists as empty;
/// a missing bucket is the store's `NoSuchBucket`.
pub async fn list(store: &Arc<dyn ReplicaStore>, layout: &Layout) -> Result<Vec<FileInfo>> {
    let mut set = JoinSet::new();
    for level in 0..=SNAPSHOT_LEVEL {
        let store = store.clone();
        let layout = layout.clone();
        set.spawn(async move {
            let objects = store.list(&layout.level_dir(level), None).await?;
            Ok::<_, StoreError>(
                objects
                    .into_iter()
                    .filter_map(|o| {
                        let (lvl, min, max) = layout.parse_ltx_key(&o.key)?;
                        (lvl == level && min <= max).then_some(FileInfo {
                            level,
                            min,
                            max,
                            size: o.size,
                            key: o.key,
                            in_bundle: None,
                            last_modified: o.last_modified,
                        })
                    })
                    .collect::<Vec<_>>(),
            )
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.extend(r.map_err(|e| join_error(&**store, e))??);
    }
    let mut out = expand_bundles(store, out).await?;
    out.sort_by_key(|f| (f.level, f.min, f.max));
    Ok(out)
}

/// Replaces every bundle (a level-0 object named by a TXID range) with the
/// files inside it, reading the bundles' indexes concurrently. An object
/// that is not a well-formed bundle stays listed as it is: whoever reads it
/// then reports it as the corrupt LTX file it is.
pub async fn expand_bundles(
    store: &Arc<dyn ReplicaStore>,
    files: Vec<FileInfo>,
) -> Result<Vec<FileInfo>> {
    let (maybe, mut out): (Vec<FileInfo>, Vec<FileInfo>) = files
        .into_iter()
        .partition(|f| f.level == 0 && f.min < f.max);
    let mut set = JoinSet::new();
    let mut queue = maybe.into_iter();
    loop {
        while set.len() < BUNDLE_READS {
            let Some(f) = queue.next() else { break };
            let store = store.clone();
            set.spawn(async move {
                let entries = bundle_entries(&*store, &f).await?;
                Ok::<_, StoreError>((f, entries))
            });
        }
        let Some(r) = set.join_next().await else {
            break;
        };
        let (f, entries) = r.map_err(|e| join_error(&**store, e))??;
        match entries {
            None => out.push(f),
            Some(entries) => out.extend(entries.into_iter().map(|e| FileInfo {
                level: 0,
                min: e.min,
                max: e.max,
                size: e.len,
                key: f.key.clone(),
                in_bundle: Some(e.offset),
                last_modified: f.last_modified,
            })),
        }
    }
    Ok(out)
}

/// Bundle indexes read at once.
const BUNDLE_READS: usize = 16;

/// The entries of the bundle `f`, or `None` if it is not a bundle. One
/// ranged read of its tail holds the index of a bundle of up to about 2,000
/// files; a bigger one takes a second.
async fn bundle_entries(
    store: &dyn ReplicaStore,
    f: &FileInfo,
) -> Result<Option<Vec<bundle::BundleEntry>>> {
    let tail_len = f.size.min(64 << 10);
    if (tail_len as usize) < bundle::BUNDLE_TAIL {
        return Ok(None);
    }
    let mut tail = store.get_range(&f.key, f.size - tail_len, tail_len).await?;
    if tail.len() as u64 != tail_len {
        return Ok(None);
    }
    let Ok(n) = bundle::bundle_count(&tail[tail.len() - bundle::BUNDLE_TAIL..]) else {
        return Ok(None);
    };
    let need = n as u64 * bundle::BUNDLE_ENTRY as u64 + bundle::BUNDLE_TAIL as u64;
    if need > f.size {
        return Ok(None);
    }
    if need > tail_len {
        tail = store.get_range(&f.key, f.size - need, need).await?;
        if tail.len() as u64 != need {
            return Ok(None);
        }
    }
    let index = &tail[tail.len() - need as usize..tail.len() - bundle::BUNDLE_TAIL];
    let Ok(entries) = bundle::parse_entries(index, f.size) else {
        return Ok(None);
    };
    let covers = entries.first().is_some_and(|e| e.min == f.min)
        && entries.last().is_some_and(|e| e.max == f.max);
    Ok(covers.then_some(entries))
}

fn join_error(store: &dyn ReplicaStore, e: tokio::task::JoinError) -> StoreError {
    StoreError::Other {
        store: store.describe(),
        op: "list",
        key: String::new(),
        detail: format!("listing task failed: {e}"),
        retryable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::{LayoutKind, PutMode, PutSource};

    #[tokio::test]
    async fn lists_every_level_and_only_ltx_files() {
        let mem: Arc<dyn ReplicaStore> = Arc::new(MemoryStore::new());
        let layout = Layout::new(LayoutKind::S3, "db/app");
        let keys = [
            layout.ltx_key(9, Txid(1), Txid(8)),
            layout.ltx_key(0, Txid(9), Txid(9)),
            layout.ltx_key(0, Txid(2), Txid(2)),
            layout.ltx_key(1, Txid(2), Txid(8)),
            // Not in the catalogue: MinTXID > MaxTXID, a foreign name, Sluice's own.
            layout.ltx_key(0, Txid(5), Txid(4)),
            format!("{}notes.txt", layout.level_dir(0)),
            layout.sluice_key("lease"),
            // Another replica's file.
            Layout::new(LayoutKind::S3, "db/other").ltx_key(0, Txid(1), Txid(1)),
        ];
        for (i, k) in keys.iter().enumerate() {
            let body = PutSource::Bytes(vec![0; i + 1]);
            mem.put(k, &body, PutMode::Overwrite).await.unwrap();
        }
        let files = list(&mem, &layout).await.unwrap();
        let got: Vec<(String, u64, bool)> = files
            .iter()
            .map(|f| (f.to_string(), f.size, f.last_modified.is_some()))
            .collect();
        let want = [
            ("L0 0000000000000002-0000000000000002", 3),
            ("L0 0000000000000009-0000000000000009", 2),
            ("L1 0000000000000002-0000000000000008", 4),
            ("L9 0000000000000001-0000000000000008", 1),
        ];
        let want: Vec<(String, u64, bool)> = want
            .iter()
            .map(|(s, n)| (s.to_string(), *n, true))
            .collect();
        assert_eq!(got, want);
        assert_eq!(files[3].key, keys[0]);
        assert_eq!(files[3].name(), "0000000000000001-0000000000000008.ltx");
        assert!(files[3].is_snapshot() && !files[0].is_snapshot());

        let empty = Layout::new(LayoutKind::File, "nothing/here");
        assert_eq!(list(&mem, &empty).await.unwrap(), Vec::new());
    }
}
