//! The pending tail: frames captured but not yet in an L0 file.
//!
//! Under a heavy load, a seal's tail (frames committed between the
//! interval's sync and the seal) and pin moves are captured into
//! `pending.ltx` in the staging directory: an LTX file for the next TXID,
//! fsynced and renamed like any other, never uploaded. The next interval's
//! sync folds it into its L0 file, so each interval uploads one file even
//! under a maximal load. A pending file left by a crash becomes the next L0
//! file at start-up (`recover`).

use std::collections::BTreeMap;

use ltx_format::{Checksum, Txid};

/// What the pending file holds.
#[derive(Debug)]
pub struct Pending {
    pub txid: Txid,
    /// Pre-apply checksum of that L0 file (the state after the last L0).
    pub pre: Checksum,
    /// Database size in pages at the last L0 file: pages past it that no
    /// frame wrote are zero.
    pub base_commit: u32,
    pub pages: BTreeMap<u32, Vec<u8>>,
    pub transactions: u64,
    pub wal_bytes: u64,
    /// WAL salts and offset where the pending frames began.
    pub wal_start: (u32, u32, u64),
}

impl Pending {
    /// Where the file for `txid` begins in the WAL generation `salts`: where
    /// the pending frames began, if they are of that generation.
    pub fn wal_from(&self, salts: (u32, u32)) -> u64 {
        if (self.wal_start.0, self.wal_start.1) == salts {
            self.wal_start.2
        } else {
            32
        }
    }

    /// Adds what one more capture brought, for a database now `commit`
    /// pages long.
    pub fn extend(
        &mut self,
        pages: Vec<(u32, Vec<u8>)>,
        commit: u32,
        transactions: u64,
        wal_bytes: u64,
    ) {
        self.pages.extend(pages);
        self.pages.retain(|&pg, _| pg <= commit);
        self.transactions += transactions;
        self.wal_bytes += wal_bytes;
    }
}
