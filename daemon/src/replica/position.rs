//! The cache directory of one replicated database, and the position
//! persisted in it.
//!
//! ```text
//! <cache>/db             the database, pages exactly as the LTX files hold them
//! <cache>/position.json  TXID, checksum, size, the last key seen per level
//! <cache>/step.ltx       the step being applied (a redo record; see `redo`)
//! <cache>/restore/       a full restore in progress
//! <cache>/lock           held (flock) while a process serves this cache
//! ```
//!
//! The position is rewritten by rename after every applied step, without an
//! fsync: a process crash keeps it (the page cache survives), and after a
//! power failure a stale position no longer matches the database's checksum,
//! which start-up recomputes, so the database is restored again rather than
//! served torn. A clean stop fsyncs the database and the position.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ltx_format::{Checksum, Txid};
use serde::{Deserialize, Serialize};

/// What the cache directory holds, as last recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// The replica this cache follows (its URL, without credentials).
    pub replica: String,
    pub txid: u64,
    /// LTX database checksum of `db` at `txid` (16 hex digits).
    pub checksum: String,
    pub page_size: u32,
    /// Database size in pages.
    pub commit: u32,
    /// Commit time of `txid` (LTX header time, ms since the epoch).
    pub timestamp_ms: i64,
    /// The last key listed, per level: listings start after it.
    pub after: BTreeMap<u8, String>,
}

impl Position {
    pub fn txid(&self) -> Txid {
        Txid(self.txid)
    }

    pub fn checksum(&self) -> Result<Checksum> {
        u64::from_str_radix(&self.checksum, 16)
            .map(Checksum)
            .with_context(|| format!("position checksum {:?} is not hex", self.checksum))
    }
}

/// The paths of one database's cache directory.
#[derive(Debug, Clone)]
pub struct CacheDir {
    pub dir: PathBuf,
}

impl CacheDir {
    pub fn new(dir: PathBuf) -> CacheDir {
        CacheDir { dir }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("db")
    }

    pub fn position(&self) -> PathBuf {
        self.dir.join("position.json")
    }

    pub fn redo(&self) -> PathBuf {
        self.dir.join("step.ltx")
    }

    pub fn restore_dir(&self) -> PathBuf {
        self.dir.join("restore")
    }

    /// Creates the directory and takes its lock: two processes serving one
    /// cache would write the same database.
    pub fn create_and_lock(&self) -> Result<File> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create cache directory {}", self.dir.display()))?;
        let path = self.dir.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "cache directory {} is in use by another sluice process",
                self.dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }

    /// The recorded position; `None` when there is none (a new cache).
    pub fn load(&self) -> Result<Option<Position>> {
        let path = self.position();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        match serde_json::from_str(&text) {
            Ok(p) => Ok(Some(p)),
            // A torn or foreign file is no position: the cache restores again.
            Err(e) => {
                tracing::warn!(
                    "{}: unreadable position ({e}); restoring again",
                    path.display()
                );
                Ok(None)
            }
        }
    }

    /// Writes the position by rename; `durable` adds the fsyncs.
    pub fn save(&self, pos: &Position, durable: bool) -> Result<()> {
        let path = self.position();
        let tmp = self.dir.join(".position.json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(serde_json::to_string_pretty(pos)?.as_bytes())?;
            f.write_all(b"\n")?;
            if durable {
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            if durable {
                sync_dir(&self.dir)?;
            }
            Ok(())
        };
        write().with_context(|| format!("cannot write {}", path.display()))
    }

    /// Removes the position (before the database is replaced).
    pub fn forget(&self) -> Result<()> {
        match std::fs::remove_file(self.position()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("cannot remove the old position"),
        }
    }
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_locks() {
        let t = tempfile::tempdir().unwrap();
        let c = CacheDir::new(t.path().join("app.db"));
        let _lock = c.create_and_lock().unwrap();
        let e = c.create_and_lock().unwrap_err().to_string();
        assert!(e.contains("in use by another sluice process"), "{e}");
        assert_eq!(c.load().unwrap(), None);
        let p = Position {
            replica: "file:///r".into(),
            txid: 7,
            checksum: "8000000000000001".into(),
            page_size: 4096,
            commit: 3,
            timestamp_ms: 1,
            after: [(0u8, "ltx/0/x".to_string())].into(),
        };
        c.save(&p, true).unwrap();
        assert_eq!(c.load().unwrap(), Some(p.clone()));
        assert_eq!(p.checksum().unwrap(), Checksum(0x8000000000000001));
        std::fs::write(c.position(), "{torn").unwrap();
        assert_eq!(c.load().unwrap(), None);
    }
}
