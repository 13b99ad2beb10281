//! The WAL capture path's error: what failed, and whether the database can
//! go on ([`CaptureError::is_fatal`]).

use std::path::PathBuf;

use crate::staging::StagingError;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Writing to the staging directory (fatal when an fsync failed).
    #[error(transparent)]
    Staging(#[from] StagingError),
    /// A SQLite call on our own connections (a busy database, typically).
    #[error("{}: {source}", db.display())]
    Sqlite {
        db: PathBuf,
        source: rusqlite::Error,
    },
    /// Reading the database or its WAL.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: ltx_format::Error,
    },
    /// The database is not one we can capture (not a SQLite file, an
    /// unreadable file). The message names the fix.
    #[error("{0}")]
    Database(String),
    /// The database is not there to capture yet: missing, still being
    /// created, or not yet in WAL mode. Waited for, never fatal.
    #[error("{0}")]
    NotReady(String),
    /// The database file was deleted or replaced while captured: capture of
    /// that file ends, and the path is waited for again.
    #[error("{0}")]
    Gone(String),
}

impl CaptureError {
    /// The database must stop: retrying cannot help, or could acknowledge
    /// data that is gone.
    pub fn is_fatal(&self) -> bool {
        match self {
            CaptureError::Staging(e) => e.is_fatal(),
            CaptureError::Database(_) => true,
            CaptureError::NotReady(_)
            | CaptureError::Gone(_)
            | CaptureError::Sqlite { .. }
            | CaptureError::Read { .. } => false,
        }
    }

    pub fn read(path: &std::path::Path, source: impl Into<ltx_format::Error>) -> Self {
        CaptureError::Read {
            path: path.to_path_buf(),
            source: source.into(),
        }
    }

    pub fn sqlite(db: &std::path::Path) -> impl FnOnce(rusqlite::Error) -> Self + '_ {
        move |source| CaptureError::Sqlite {
            db: db.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = CaptureError> = std::result::Result<T, E>;
