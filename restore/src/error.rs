//! The restore error: what failed, naming the file and the broken rule where
//! a replica file is at fault. Each message carries its cause in full (no
//! separate source chain), so it prints once whatever the printer.

use std::path::PathBuf;

use ltx_format::Checksum;
use s3_backend::StoreError;

use crate::plan::PlanError;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// No chain reaches the target (gap, out of range, no snapshot…).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The store failed (unreachable, denied, interrupted download…).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A replica file breaks a rule of the format: the file, then the rule.
    #[error("{key}: {error}")]
    Corrupt {
        key: String,
        error: ltx_format::Error,
    },
    /// Every file verified, but the result is not what the last file says.
    #[error("database checksum mismatch: the restored database is {actual}, but the last file ({key}) gives post-apply checksum {expected}")]
    ChecksumMismatch {
        key: String,
        expected: Checksum,
        actual: Checksum,
    },
    /// Every file verified, but the restored database's own header gives
    /// another size than the last file.
    #[error("database size mismatch: the restored database's header says {header} pages, but the last file ({key}) gives {commit}")]
    SizeMismatch {
        key: String,
        header: u32,
        commit: u32,
    },
    #[error("{} exists; refusing to overwrite it (pass --force to replace it)", .0.display())]
    OutputExists(PathBuf),
    #[error("integrity check ({mode}) of the restored database failed: {detail}")]
    Integrity { mode: &'static str, detail: String },
    /// Local file-system failure (full disk, permissions…), with what was being done.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Usage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RestoreError {
    /// The replica has nothing to restore (no files, or no such bucket).
    pub fn is_no_replica(&self) -> bool {
        matches!(
            self,
            RestoreError::Plan(PlanError::Empty)
                | RestoreError::Store(
                    StoreError::NoSuchBucket { .. } | StoreError::NotFound { .. }
                )
        )
    }
}
