//! Local state as small JSON files: a capture source's position and the
//! upload high-water marks of each replica.
//!
//! Each update rewrites its file in place with one `pwrite` of whole JSON
//! padded with spaces (no temporary file, no rename, no fsync): the cheapest
//! update there is, as a sync updates the position every time. Neither file
//! is the durable truth:
//! - The position is also in the newest staged LTX file, which is fsynced
//!   before the position moves; at start-up the newer of the two wins
//!   (`wal::recover::newest_position`), and a position file that a power failure
//!   left stale, torn or empty is recovered from the staged files.
//! - A replica's progress only saves work: an upload repeated after a lost
//!   update meets its own earlier object, which has the same bytes and is
//!   accepted (`s3_backend::retry`).
//!
//! [`write_json_durable`] adds an fsync, for a clean shutdown.

use std::fs;
use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::staging::{fsync, fsync_dir, StagingError};

/// Upload progress of one replica: the highest TXID uploaded per level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaProgress {
    pub url: String,
    /// `max_txid` of the newest file uploaded at each level 0..=9.
    pub uploaded: [u64; 10],
}

/// Rewrites `path` in place, without fsyncs.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StagingError> {
    write_state(path, value, false)
}

/// Rewrites `path` in place and durably: the file and its directory are
/// fsynced.
pub fn write_json_durable<T: Serialize>(path: &Path, value: &T) -> Result<(), StagingError> {
    write_state(path, value, true)
}

fn write_state<T: Serialize>(path: &Path, value: &T, durable: bool) -> Result<(), StagingError> {
    use std::os::unix::fs::FileExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
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
            fs::create_dir_all(dir).map_err(|e| StagingError::io("cannot create", dir, e))?;
            open().map_err(|e| StagingError::io("cannot create", path, e))?
        }
        Err(e) => return Err(StagingError::io("cannot open", path, e)),
    };
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| StagingError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    text.push(b'\n');
    // Pad to the file's length (JSON allows trailing whitespace), so no byte
    // of an older, longer text survives; round up so lengths rarely change.
    let old = f
        .metadata()
        .map_err(|e| StagingError::io("stat", path, e))?
        .len() as usize;
    let len = old.max(text.len().next_multiple_of(STATE_PAD));
    text.resize(len, b' ');
    f.write_all_at(&text, 0)
        .map_err(|e| StagingError::io("cannot write", path, e))?;
    if durable {
        fsync(&f, path)?;
        fsync_dir(dir)?;
    }
    Ok(())
}

/// State files are padded to a multiple of this.
const STATE_PAD: usize = 1024;

/// The state in `path`: `None` if there is none, an error naming the file if
/// it is unreadable or corrupt.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StagingError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StagingError::Corrupt {
                path: path.to_path_buf(),
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StagingError::io("cannot read", path, e)),
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
        let e = read_json::<ReplicaProgress>(&p).unwrap_err();
        assert!(
            format!("{e:#}").contains("position.json is corrupt"),
            "{e:#}"
        );
        assert_eq!(
            read_json::<ReplicaProgress>(&dir.path().join("none.json")).unwrap(),
            None
        );
    }
}
