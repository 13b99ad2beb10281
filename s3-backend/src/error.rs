//! The store error: what went wrong, where (store, key), and whether retrying
//! can help. Backend types never leak out.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store}: {key} not found")]
    NotFound { store: String, key: String },

    /// A put-if-absent found the key taken.
    #[error("{store}: {key} already exists: another writer owns this replica")]
    AlreadyExists { store: String, key: String },

    #[error("{store}: access denied ({detail}); check the access key ID and secret access key")]
    Auth { store: String, detail: String },

    #[error("{store}: bucket {bucket:?} does not exist; create it or fix the replica URL")]
    NoSuchBucket { store: String, bucket: String },

    #[error("{store}: cannot reach endpoint {endpoint}: {detail}")]
    Unreachable {
        store: String,
        endpoint: String,
        detail: String,
    },

    #[error("{store}: {op} {key} timed out after {millis} ms")]
    Timeout {
        store: String,
        op: &'static str,
        key: String,
        millis: u64,
    },

    #[error("{store}: {op} {key}: {source}")]
    Io {
        store: String,
        op: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },

    #[error("{store}: {op} {key}: {detail}")]
    Other {
        store: String,
        op: &'static str,
        key: String,
        detail: String,
        retryable: bool,
    },

    #[error("{store}: {op} {key}: cancelled by shutdown")]
    Cancelled {
        store: String,
        op: &'static str,
        key: String,
    },

    #[error("invalid replica URL {url:?}: {detail}")]
    InvalidUrl { url: String, detail: String },

    #[error("{0}")]
    Config(String),
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, StoreError::AlreadyExists { .. })
    }

    /// Transient failures that a later attempt may not meet.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } | StoreError::Timeout { .. } => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            StoreError::Other { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
