//! The WAL watcher's persisted position: a hint, rewritten in place on every
//! sync (see `crate::state`); the newest staged file is the durable truth.

use serde::{Deserialize, Serialize};

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
