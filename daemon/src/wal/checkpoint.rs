//! Sluice owns checkpoints: seal (take the write lock, so nothing new
//! commits), ship to the WAL end, PASSIVE checkpoint, release. Nothing
//! unshipped is ever checkpointed by us.

use std::time::{Duration, Instant};

use super::engine::{Engine, Synced};
use super::error::Result;

/// Flush the WAL before sealing once this much was shipped since the last
/// flush.
const SEAL_FLUSH_BYTES: u64 = 1 << 20;

/// Unshipped frames a checkpoint that is due ships under its seal.
const SEAL_INLINE_FRAMES: u32 = 1024;

/// How long a seal waits for the application's own checkpoint to finish.
const SEAL_CHECKPOINT_WAIT: Duration = Duration::from_millis(100);

/// What a sealed checkpoint did, for the debug log.
#[derive(Debug, Default)]
struct SealStats {
    result: (i64, i64, i64),
    attempts: u32,
    sync_ms: u64,
    total_ms: u64,
}

impl Engine {
    /// One sync, and the checkpoint when one is due. When the checkpoint is
    /// due and little is unshipped, the sync happens under the seal: one L0
    /// file instead of two. `last`: the final sync before stopping (nothing
    /// is left pending).
    pub fn sync_and_checkpoint(&mut self, last: bool) -> Result<(Option<Synced>, Option<Synced>)> {
        if let Some(unshipped) = self.unshipped_frames() {
            let due = self.wal_frames() + u64::from(unshipped) >= u64::from(self.checkpoint_pages);
            if due && unshipped <= SEAL_INLINE_FRAMES {
                if let Some(sealed) = self.checkpoint(false)? {
                    return Ok((None, sealed));
                }
                // The write lock was not available: ship without it.
            }
        }
        let a = self.sync()?;
        let b = if self.wal_frames() >= u64::from(self.checkpoint_pages) {
            self.checkpoint(!last)?.flatten()
        } else {
            None
        };
        Ok((a, b))
    }

    /// Moves the read pin: captures what was committed since into the
    /// pending file (no L0 file, no upload until the interval's sync).
    pub fn repin(&mut self) -> Result<()> {
        self.capture_pending = true;
        let r = self.sync();
        self.capture_pending = false;
        r.map(|_| ())
    }

    /// Seals and checkpoints. `None` if there was no seal: the WAL is
    /// already fully copied (the next writer restarts it), or a long write
    /// transaction holds the write lock (try again at the next sync).
    /// Otherwise the file shipped under the seal, if any. `tail_pending`:
    /// ship the seal's few frames into the pending file.
    pub fn checkpoint(&mut self, tail_pending: bool) -> Result<Option<Option<Synced>>> {
        if self.fully_checkpointed() {
            return Ok(None);
        }
        // First, without blocking writers: copy what is shipped.
        let t0 = Instant::now();
        let unlocked_busy = self.pins.checkpoint_unlocked();
        let unlocked_ms = t0.elapsed().as_millis() as u64;
        // Flush the WAL's dirty pages before sealing: the fsyncs made under
        // the write lock (the L0 file, the checkpoint's) would otherwise force
        // the filesystem to write out the whole grown WAL first.
        self.flush_wal(SEAL_FLUSH_BYTES);
        // Then seal briefly: nothing new commits while we ship the few frames
        // written since and copy them.
        if !self.pins.seal() {
            return Ok(None);
        }
        let mut stats = SealStats::default();
        let result = self.sealed(tail_pending, &mut stats);
        self.pins.unseal();
        // The position of a file shipped under the seal, now the lock is free.
        let result = result.and_then(|s| {
            if s.is_some() {
                self.persist()?;
            }
            Ok(s)
        });
        tracing::debug!(
            unlocked_busy,
            sealed_busy = stats.result.0,
            sealed_log_frames = stats.result.1,
            sealed_copied_frames = stats.result.2,
            sealed_attempts = stats.attempts,
            unlocked_ms,
            sealed_sync_ms = stats.sync_ms,
            sealed_total_ms = stats.total_ms,
            "checkpoint"
        );
        result.map(Some)
    }

    /// Under the seal: ship, then checkpoint everything.
    fn sealed(&mut self, tail_pending: bool, stats: &mut SealStats) -> Result<Option<Synced>> {
        let t1 = Instant::now();
        self.defer_persist = true;
        // After an interval's sync, the few frames written since go into the
        // pending file (durable, folded into the next L0): one L0 upload per
        // interval even under a maximal load.
        self.capture_pending = tail_pending;
        let shipped = self.sync();
        self.capture_pending = false;
        self.defer_persist = false;
        stats.sync_ms = t1.elapsed().as_millis() as u64;
        let shipped = shipped?;
        // The application's own autocheckpoint may hold the checkpoint lock
        // (PASSIVE never waits for it). It cannot start another one while we
        // hold the write lock, so retry briefly: a checkpoint that copies
        // everything lets the next writer restart the WAL, which keeps the
        // WAL bounded.
        let deadline = Instant::now() + SEAL_CHECKPOINT_WAIT;
        let (result, attempts) = self
            .pins
            .checkpoint_sealed(&self.db, |r| r.0 != 0 && Instant::now() < deadline)?;
        let (busy, log, done) = result;
        let full = busy == 0 && log == done;
        if full {
            // Fully copied: the next writer restarts the WAL.
            self.expect_restart = self.wal.map(|(h, _)| h);
        }
        self.checkpoints += 1;
        // Our new pin was begun on a fully copied WAL: read mark 0.
        self.zero_pin = full;
        stats.result = result;
        stats.attempts = attempts;
        stats.total_ms = t1.elapsed().as_millis() as u64;
        Ok(shipped)
    }
}
