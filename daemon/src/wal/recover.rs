//! Start-up: where the history stands (the persisted position, or the newest
//! staged file when that is newer), and whether the database as it is now
//! provably continues it. If it does not, a full-page L0 file re-establishes
//! the chain, and the reason is logged.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ltx_format::wal::{WalCursor, WalHeader, WalReader};
use ltx_format::{Checksum, Txid};
use tracing::{info, warn};

use super::engine::{Engine, Synced};
use super::error::{CaptureError, Result};
use super::position::Position;
use super::source::wal_path;
use crate::staging::StagingDir;
use crate::state::read_json;

fn parse_checksum(s: &str) -> Result<Checksum> {
    u64::from_str_radix(s, 16)
        .map(Checksum)
        .map_err(|_| CaptureError::Database(format!("bad checksum {s:?} in the position file")))
}

impl Engine {
    /// Opens the database, proves continuity with the persisted position (or
    /// not), and returns the engine plus the file written to re-establish it,
    /// if one was needed.
    pub fn open(
        db: &Path,
        staging: &StagingDir,
        checkpoint_pages: u32,
    ) -> Result<(Self, Option<Synced>)> {
        Self::open_with(db, staging, checkpoint_pages, false)
    }

    /// [`Engine::open`] for a database that was deleted or replaced while
    /// captured (`replaced`): the file now at the path continues the
    /// history only if its committed state (database file plus WAL) is
    /// exactly the last shipped state. The WAL generation is not trusted
    /// then: an old `-wal` left beside a new file would pass for the same
    /// generation. Anything else gets a full-page L0 file.
    pub fn open_with(
        db: &Path,
        staging: &StagingDir,
        checkpoint_pages: u32,
        replaced: bool,
    ) -> Result<(Self, Option<Synced>)> {
        let mut engine = Engine::load(db, staging, checkpoint_pages)?;
        // A position file a power failure left corrupt is recovered from the
        // staged files (see `crate::state`).
        let saved: Option<Position> = read_json(&staging.position_path()).unwrap_or_else(|e| {
            warn!("{e}; recovering the position from the staged files");
            None
        });
        recover_pending(staging, saved.as_ref().map_or(0, |p| p.txid))?;
        let Some(pos) = newest_position(saved, staging)? else {
            let s = engine.write_full(Txid(1), None, "first run: initial snapshot")?;
            return Ok((engine, Some(s)));
        };
        engine.txid = Txid(pos.txid);
        let pos_sum = parse_checksum(&pos.checksum)?;
        let next = Txid(pos.txid + 1);
        if pos.page_size != engine.page_size.get() {
            let s = engine.write_full(next, Some(pos_sum), "page size changed")?;
            return Ok((engine, Some(s)));
        }
        if replaced {
            return engine.continue_replaced(next, pos_sum);
        }
        match engine.resume_point(&pos)? {
            Some(cursor) => {
                // Continuity proven: the next sync ships what follows `cursor`
                // on top of the position's checksum.
                engine.restore_position(pos_sum, cursor)?;
                info!(db = %db.display(), txid = %engine.txid, "resumed from the persisted position");
                Ok((engine, None))
            }
            None => {
                let s = engine.write_full(
                    next,
                    Some(pos_sum),
                    "cannot prove continuity with the persisted position (the WAL was checkpointed or the database changed while sluice was stopped)",
                )?;
                Ok((engine, Some(s)))
            }
        }
    }

    /// A new file at the database's path: it continues the history when its
    /// whole committed state is the position's (then capture goes on from
    /// the WAL's end); otherwise a full-page L0 file re-establishes the
    /// chain on top of the old history, and says so.
    fn continue_replaced(
        mut self,
        next: Txid,
        pos_sum: Checksum,
    ) -> Result<(Self, Option<Synced>)> {
        if self.table_checksum() == pos_sum {
            self.last_post = pos_sum;
            info!(db = %self.db.display(), txid = %self.txid, "the new database file holds exactly the replicated state: capture continues");
            return Ok((self, None));
        }
        let s = self.write_full(
            next,
            Some(pos_sum),
            "the database was replaced (or deleted and created again) while replicated, and its state does not continue the replica's history",
        )?;
        Ok((self, Some(s)))
    }

    /// Where to resume reading the WAL, if the position is provably continuous
    /// with the database as it is now.
    fn resume_point(&self, pos: &Position) -> Result<Option<Option<(WalHeader, WalCursor)>>> {
        let wp = wal_path(&self.db);
        if let Some(h) = read_wal_header(&wp)? {
            if h.salt1 == pos.wal_salt1 && h.salt2 == pos.wal_salt2 && pos.wal_offset >= 32 {
                // Same generation: the checksum chain up to the position must
                // be the one we saw.
                return Ok(same_generation(&wp, h, pos)?.map(Some));
            }
        }
        // Another generation (or no WAL): the database file alone must be the
        // state at the position.
        if self.file_checksum()?.to_string() == pos.checksum {
            Ok(Some(None))
        } else {
            Ok(None)
        }
    }

    /// The WAL generation and cursor to continue from, with the table already
    /// at the WAL end (read at open) and the pre-apply checksum the position's.
    fn restore_position(
        &mut self,
        pos_sum: Checksum,
        cursor: Option<(WalHeader, WalCursor)>,
    ) -> Result<()> {
        self.last_post = pos_sum;
        self.wal = match cursor {
            Some(hc) => Some(hc),
            // The database file alone was the position's state: ship the
            // current generation from its first frame.
            None => read_wal_header(&wal_path(&self.db))?.map(|h| {
                (
                    h,
                    WalCursor {
                        offset: 32,
                        checksum: h.checksum,
                    },
                )
            }),
        };
        Ok(())
    }
}

/// The cursor at the position in the WAL generation it names, if the WAL
/// still holds those frames with the checksum chain we saw.
fn same_generation(
    wp: &Path,
    h: WalHeader,
    pos: &Position,
) -> Result<Option<(WalHeader, WalCursor)>> {
    let read = |e: ltx_format::Error| CaptureError::read(wp, e);
    let f = File::open(wp).map_err(|e| CaptureError::read(wp, e))?;
    let mut r = WalReader::new(std::io::BufReader::new(&f)).map_err(read)?;
    let mut page = vec![0u8; h.page_size.as_usize()];
    while r.cursor().offset < pos.wal_offset {
        if r.next_frame(&mut page).map_err(read)?.is_none() {
            return Ok(None);
        }
    }
    let c = r.cursor();
    // A position rebuilt from a staged file has no checksum to compare.
    let known = (pos.wal_checksum1, pos.wal_checksum2) != (0, 0);
    let same = c.offset == pos.wal_offset
        && (!known || c.checksum == (pos.wal_checksum1, pos.wal_checksum2));
    Ok(same.then_some((h, c)))
}

/// The persisted position, or a newer one read from the newest staged file:
/// a crash between renaming a file into place and recording the position (or
/// a power failure that lost the unsynced position file) leaves the file
/// ahead, and the file is the truth (it may already be uploaded, so its TXID
/// must never be written again). An L0 file also gives the WAL position; a
/// newer compacted file (its L0 files already cleaned up) gives only the
/// TXID and checksum, so continuity is then proven against the database
/// file alone.
pub fn newest_position(pos: Option<Position>, staging: &StagingDir) -> Result<Option<Position>> {
    let Some(newest) = staging.newest()? else {
        return Ok(pos);
    };
    if pos.as_ref().is_some_and(|p| p.txid >= newest.max.0) {
        return Ok(pos);
    }
    let file = File::open(&newest.path).map_err(|e| CaptureError::read(&newest.path, e))?;
    let s = ltx_format::verify(std::io::BufReader::new(file))
        .map_err(|e| CaptureError::read(&newest.path, e))?;
    let h = s.header;
    warn!(file = %newest.path.display(), "position taken from the newest staged file (the last run stopped before recording it)");
    let l0 = newest.level == 0;
    Ok(Some(Position {
        version: 1,
        txid: h.max_txid.0,
        checksum: s.trailer.post_apply_checksum.to_string(),
        page_size: h.page_size.get(),
        commit: h.commit,
        wal_salt1: if l0 { h.wal_salt1 } else { 0 },
        wal_salt2: if l0 { h.wal_salt2 } else { 0 },
        wal_checkpoint_seq: 0,
        wal_offset: if l0 {
            (h.wal_offset + h.wal_size) as u64
        } else {
            0
        },
        wal_checksum1: 0,
        wal_checksum2: 0,
    }))
}

/// A pending file left by the last run (it stopped between capturing a
/// seal's tail and folding it into an L0 file) becomes the next L0 file; one
/// already folded is removed.
fn recover_pending(staging: &StagingDir, saved_txid: u64) -> Result<()> {
    let path = staging.pending_path();
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CaptureError::read(&path, e)),
    };
    let newest = staging.newest()?.map_or(0, |f| f.max.0).max(saved_txid);
    match ltx_format::verify(std::io::BufReader::new(file)) {
        Ok(s) if s.header.min_txid.0 == newest + 1 => {
            let t = s.header.max_txid;
            staging.promote_pending(t)?;
            warn!(txid = %t, "recovered frames captured before the last run stopped (pending file)");
        }
        Ok(s) if s.header.max_txid.0 <= newest => staging.remove_pending()?,
        other => {
            let why = match other {
                Ok(s) => format!("TXID {} does not follow {newest:016x}", s.header.max_txid),
                Err(e) => e.to_string(),
            };
            warn!(file = %path.display(), "discarding the pending file: {why}");
            staging.remove_pending()?;
        }
    }
    Ok(())
}

pub(crate) fn read_wal_header(wp: &Path) -> Result<Option<WalHeader>> {
    let f = match File::open(wp) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CaptureError::read(wp, e)),
    };
    let len = f.metadata().map_err(|e| CaptureError::read(wp, e))?.len();
    if len < 32 {
        return Ok(None);
    }
    let mut hb = [0u8; 32];
    f.read_exact_at(&mut hb, 0)
        .map_err(|e| CaptureError::read(wp, e))?;
    WalHeader::parse(&hb)
        .map(Some)
        .map_err(|e| CaptureError::read(wp, e))
}
