//! Local state: the capture position of a database and the upload
//! high-water marks of each replica, as small JSON files.
//!
//! Each update rewrites its file in place with one `pwrite` of whole JSON
//! padded with spaces (no temporary file, no rename, no fsync): the cheapest
//! update there is, as a sync updates the position every time. Neither file
//! is the durable truth:
//! - The position is also in the newest staged LTX file, which is fsynced
//!   before the position moves; at start-up the newer of the two wins
//!   (`engine::newest_position`), and a position file that a power failure
//!   left stale, torn or empty is recovered from the staged files.
//! - A replica's progress only saves work: an upload repeated after a lost
//!   update meets its own earlier object, which has the same bytes and is
//!   accepted (`s3_backend::retry`).
//!
//! [`write_json_durable`] adds an fsync, for a clean shutdown.

use std::fs::{self, File};
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

/// Rewrites `path` in place, without fsyncs.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_state(path, value, false)
}

/// Rewrites `path` in place and durably: the file and its directory are
/// fsynced.
pub fn write_json_durable<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_state(path, value, true)
}

fn write_state<T: Serialize>(path: &Path, value: &T, durable: bool) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let dir = path.parent().context("state file has no directory")?;
    let open = || {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    let f = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            open().with_context(|| format!("cannot create {}", path.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    // Pad to the file's length (JSON allows trailing whitespace), so no byte
    // of an older, longer text survives; round up so lengths rarely change.
    let old = f.metadata()?.len() as usize;
    let len = old.max(text.len().next_multiple_of(STATE_PAD));
    text.resize(len, b' ');
    f.write_all_at(&text, 0)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if durable {
        f.sync_all()
            .with_context(|| format!("fsync {}", path.display()))?;
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// State files are padded to a multiple of this.
const STATE_PAD: usize = 1024;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shorter_state_overwrites_a_longer_one_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("replica-0.json");
        let long = ReplicaProgress {
            url: "x".repeat(3000),
            uploaded: [u64::MAX; 10],
        };
        write_json(&p, &long).unwrap();
        let len = fs::metadata(&p).unwrap().len();
        assert_eq!(len % STATE_PAD as u64, 0);
        let short = ReplicaProgress {
            url: "file:///r".into(),
            uploaded: [1; 10],
        };
        write_json_durable(&p, &short).unwrap();
        // Same file, same length, and only the new text.
        assert_eq!(fs::metadata(&p).unwrap().len(), len);
        assert_eq!(read_json::<ReplicaProgress>(&p).unwrap(), Some(short));
        assert!(!dir.path().join("replica-0.json.tmp").exists());
    }

    #[test]
    fn a_torn_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("position.json");
        fs::write(&p, b"{\"version\": 1, \"tx").unwrap();
        let e = read_json::<Position>(&p).unwrap_err();
        assert!(
            format!("{e:#}").contains("position.json is corrupt"),
            "{e:#}"
        );
        assert_eq!(
            read_json::<Position>(&dir.path().join("none.json")).unwrap(),
            None
        );
    }
}
