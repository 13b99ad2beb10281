//! Scheduling hints from the WAL-index (`-shm`): how many frames the WAL
//! holds and how many a checkpoint has copied. Read only to decide *when* to
//! sync, move the pin or checkpoint, never for correctness: a different
//! layout would cost throughput, not data.
//! Layout: <https://www.sqlite.org/walformat.html>.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::engine::Engine;
use super::source::shm_path;

/// WAL frames after which a pin on read mark 0 is moved at once: well below
/// SQLite's default autocheckpoint threshold (1000 frames).
const EARLY_REPIN_FRAMES: u32 = 256;

/// `mxFrame` of the WAL-index header and `nBackfill` of its checkpoint info.
#[derive(Debug, Clone, Copy)]
pub struct ShmState {
    pub max_frame: u32,
    pub backfilled: u32,
}

/// The `-shm` file, held open for the engine's life: closing a descriptor
/// of it would drop SQLite's locks on it (our read pins).
pub fn open_shm(db: &Path) -> Option<File> {
    File::open(shm_path(db)).ok()
}

impl Engine {
    /// The WAL-index header and checkpoint counters, when readable.
    pub(super) fn shm_state(&self) -> Option<ShmState> {
        let f = self.shm.as_ref()?;
        let mut b = [0u8; 136];
        f.read_exact_at(&mut b, 0).ok()?;
        // Native byte order (the WAL-index is not portable).
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        Some(ShmState {
            max_frame: u32_at(16),
            backfilled: u32_at(96),
        })
    }

    /// Our pin is on read mark 0 and the application has committed enough
    /// since to near its autocheckpoint threshold: time to move the pin
    /// (see `zero_pin`).
    pub fn pin_blocks_checkpoints(&self) -> bool {
        self.zero_pin
            && self
                .shm_state()
                .is_some_and(|s| s.max_frame > s.backfilled && s.max_frame >= EARLY_REPIN_FRAMES)
    }

    /// The WAL-index says every frame is copied into the database.
    pub(super) fn fully_checkpointed(&self) -> bool {
        self.shm_state()
            .is_some_and(|s| s.max_frame > 0 && s.backfilled >= s.max_frame)
    }

    /// A reader begun now would take read mark 0.
    pub(super) fn would_pin_mark_zero(&self) -> bool {
        self.shm_state()
            .is_some_and(|s| s.max_frame == s.backfilled)
    }

    /// Whether the pin may be on read mark 0.
    pub fn zero_pinned(&self) -> bool {
        self.zero_pin
    }

    /// Frames committed in the WAL generation we are reading and not shipped
    /// yet, by the WAL-index.
    pub(super) fn unshipped_frames(&self) -> Option<u32> {
        let s = self.shm_state()?;
        let shipped = u32::try_from(self.wal_frames()).ok()?;
        s.max_frame.checked_sub(shipped)
    }
}
