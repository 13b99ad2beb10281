//! Crash-safe local state: the capture position of a database and the upload
//! high-water marks of each replica, as small JSON files written to a
//! temporary name, fsynced, renamed, with the directory fsynced.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Where capture stands: the last TXID written to the staging directory, the
/// database checksum after it, and the WAL position it corresponds to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub version: u32,
    pub txid: u64,
    /// Database checksum at `txid`, hex.
    pub checksum: String,
    pub page_size: u32,
    pub commit: u32,
    /// The WAL generation and the offset just after the last shipped commit.
    pub wal_salt1: u32,
    pub wal_salt2: u32,
    pub wal_checkpoint_seq: u32,
    pub wal_offset: u64,
    pub wal_checksum1: u32,
    pub wal_checksum2: u32,
}

/// Upload progress of one replica: the highest TXID uploaded per level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaProgress {
    pub url: String,
    /// `max_txid` of the newest file uploaded at each level 0..=9.
    pub uploaded: [u64; 10],
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path.parent().context("state file has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(value)?)?;
    f.sync_all()
        .with_context(|| format!("fsync {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is corrupt; remove it to start over with a snapshot",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
