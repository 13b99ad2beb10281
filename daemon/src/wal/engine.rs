//! The capture engine of one database: turns committed WAL frames into L0
//! files in the staging directory, and owns checkpoints.
//!
//! Invariants:
//! - One of our connections always holds a read pin, begun *before* the
//!   frames it protects are read (see `pin`).
//! - An L0 file is fsynced and renamed into place before the position moves.
//! - Checkpoints: seal (take the write lock), ship to the WAL end, PASSIVE
//!   checkpoint, release. Nothing unshipped is ever checkpointed by us.
//! - A restart resumes from the persisted position when continuity is proven
//!   (same WAL generation and checksum chain, or a database file whose
//!   checksum equals the position's); otherwise it writes a full-page L0 file
//!   and logs why (see `recover`).
//!
//! The engine is split by seam: `pin` (connections), `recover` (start-up),
//! `sync` (collect, encode, commit a file), `pending` (a seal's tail),
//! `checkpoint`, and `shm` (scheduling hints).

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ltx_format::wal::{WalCursor, WalHeader};
use ltx_format::{checksum_page, lock_pgno, Checksum, DbChecksum, PageSize, Txid};
use tracing::{info, warn};

use super::error::{CaptureError, Result};
use super::pending::Pending;
use super::pin::Pins;
use super::position::Position;
use super::shm::open_shm;
use super::source::{wal_path, DbSource};
use crate::staging::StagingDir;
use crate::state::{write_json, write_json_durable};

/// What one sync wrote.
#[derive(Debug, Clone)]
pub struct Synced {
    pub txid: Txid,
    pub path: PathBuf,
    /// Database checksum after this TXID.
    pub post_apply: Checksum,
    pub pages: usize,
    pub bytes: u64,
    /// A full-page file written because continuity could not be proven.
    pub full: bool,
    /// Application transactions (commit frames) in the file.
    pub transactions: u64,
    /// WAL bytes the file covers.
    pub wal_bytes: u64,
}

pub struct Engine {
    pub(super) db: PathBuf,
    /// The database file, open for the engine's whole life: closing any
    /// descriptor of it would drop SQLite's POSIX locks (our read pins).
    pub(super) db_file: File,
    pub(super) staging: StagingDir,
    pub(super) pins: Pins,
    pub(super) page_size: PageSize,
    /// Page checksums of the database at `txid` (0 for the lock page).
    pub(super) pages: Vec<u64>,
    /// `table_sum(&pages)`, kept in step with `pages`: a shipped file moves
    /// it on by its pages rather than summing the whole table again.
    pub(super) pages_sum: Checksum,
    pub(super) commit: u32,
    pub(super) txid: Txid,
    pub(super) wal: Option<(WalHeader, WalCursor)>,
    /// Set after our own full checkpoint: the WAL generation that may be
    /// restarted next (its salts and checkpoint sequence).
    pub(super) expect_restart: Option<WalHeader>,
    pub(super) checkpoint_pages: u32,
    /// Database checksum after the last shipped TXID.
    pub(super) last_post: Checksum,
    pub checkpoints: u64,
    /// WAL bytes shipped since the WAL was last flushed to disk: an estimate
    /// of its dirty pages (the application writes what we then ship).
    pub(super) unflushed: u64,
    /// The `-shm` file (see `shm`).
    pub(super) shm: Option<File>,
    /// Our pin is probably on read mark 0 (begun on a fully checkpointed
    /// WAL). Such a reader blocks every backfill, and an application whose
    /// WAL is past its autocheckpoint threshold then retries a futile
    /// checkpoint over the whole WAL after each commit: move the pin (by a
    /// sync) soon after the application writes.
    pub(super) zero_pin: bool,
    /// Frames captured (durably, in the pending file) but not yet in an L0
    /// file (see `pending`).
    pub(super) pending: Option<Pending>,
    /// Capture into `pending` instead of writing an L0 file.
    pub(super) capture_pending: bool,
    /// Skip persisting the position in a sync (the seal persists it after
    /// releasing the write lock; the staged file is the truth meanwhile).
    pub(super) defer_persist: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("db", &self.db)
            .field("txid", &self.txid)
            .finish_non_exhaustive()
    }
}

/// Refuses anything that is not an existing WAL-mode SQLite database, naming
/// the fix. A database that may yet become one (missing, empty or still
/// being written, not yet in WAL mode) is [`CaptureError::NotReady`]: the
/// capture thread waits for it.
pub fn check_database(db: &Path) -> Result<()> {
    let f = File::open(db).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CaptureError::NotReady(format!("database {} does not exist yet; waiting for the application to create it (sluice never creates or modifies an application database)", db.display()))
        } else {
            CaptureError::Database(format!("cannot open database {}: {e}", db.display()))
        }
    })?;
    let mut h = [0u8; 100];
    f.read_exact_at(&mut h, 0).map_err(|_| {
        CaptureError::NotReady(format!(
            "database {} is empty or shorter than a SQLite header; waiting for the application to create it",
            db.display()
        ))
    })?;
    if &h[..16] != b"SQLite format 3\0" {
        return Err(CaptureError::Database(format!(
            "{} is not a SQLite database",
            db.display()
        )));
    }
    if h[18] != 2 || h[19] != 2 {
        return Err(CaptureError::NotReady(format!(
            "database {} is not in WAL mode; waiting for it (switch it with: sqlite3 {} 'PRAGMA journal_mode=WAL')",
            db.display(),
            db.display()
        )));
    }
    Ok(())
}

/// The database checksum of a page-checksum table (XOR, bit 63 forced).
pub(crate) fn table_sum(table: &[u64]) -> Checksum {
    let mut s = DbChecksum::new();
    for &c in table {
        s.toggle(c);
    }
    s.value()
}

/// A page-checksum table moving on by one file's pages: the pages cut off
/// and the pages written change its sum, so nothing copies or sums the
/// whole table again, and a file costs the same in a large database as in
/// a small one.
pub(crate) struct TableStep<'a> {
    table: &'a [u64],
    sum: DbChecksum,
    /// The new checksums of the pages written, in the order given.
    pub(crate) checksums: Vec<u64>,
}

impl<'a> TableStep<'a> {
    /// From `table`, whose sum is `sum`, cut (or grown) to `commit` pages.
    pub(crate) fn new(table: &'a [u64], sum: Checksum, commit: u32) -> Self {
        let mut s = DbChecksum::from_checksum(sum);
        for &c in table.get(commit as usize..).unwrap_or_default() {
            s.toggle(c);
        }
        TableStep {
            table,
            sum: s,
            checksums: Vec::new(),
        }
    }

    /// Page `pgno` (at most `commit`, each page once) now has checksum `c`.
    pub(crate) fn page(&mut self, pgno: u32, c: u64) {
        let old = self.table.get(pgno as usize - 1).copied().unwrap_or(0);
        self.sum.toggle(old);
        self.sum.toggle(c);
        self.checksums.push(c);
    }

    /// The table's sum after the pages given so far.
    pub(crate) fn sum(&self) -> Checksum {
        self.sum.value()
    }
}

/// Moves `table` on as a [`TableStep`] did: cut or grown to `commit` pages,
/// with `checksums` for `pgnos` (the pages given to it, in order).
pub(crate) fn apply_step(
    table: &mut Vec<u64>,
    commit: u32,
    pgnos: &BTreeSet<u32>,
    checksums: &[u64],
) {
    table.resize(commit as usize, 0);
    for (&pgno, &c) in pgnos.iter().zip(checksums) {
        table[pgno as usize - 1] = c;
    }
}

impl Engine {
    /// Opens the database and reads its state (page checksums as of its last
    /// commit), without a position yet: see `recover::open`.
    pub(super) fn load(db: &Path, staging: &StagingDir, checkpoint_pages: u32) -> Result<Self> {
        check_database(db)?;
        let db_file = File::open(db).map_err(|e| {
            let msg = format!("cannot open database {}: {e}", db.display());
            if e.kind() == std::io::ErrorKind::NotFound {
                CaptureError::NotReady(msg)
            } else {
                CaptureError::Database(msg)
            }
        })?;
        let pins = Pins::open(db)?;
        let started = Instant::now();
        let mut src = DbSource::open(&db_file, db)?;
        let ps = src.page_size;
        let lock = lock_pgno(ps);
        let mut pages = vec![0u64; src.commit as usize];
        let mut buf = vec![0u8; ps.as_usize()];
        for pgno in 1..=src.commit {
            if pgno == lock {
                continue;
            }
            src.read_page(pgno, &mut buf)
                .map_err(|e| CaptureError::read(db, e))?;
            pages[pgno as usize - 1] = checksum_page(pgno, &buf);
        }
        let wal = src.wal_position();
        let commit = src.commit;
        drop(src);
        info!(db = %db.display(), pages = commit, elapsed_ms = started.elapsed().as_millis() as u64, "read database state");
        Ok(Engine {
            db: db.to_path_buf(),
            db_file,
            staging: staging.clone(),
            pins,
            page_size: ps,
            pages_sum: table_sum(&pages),
            pages,
            commit,
            txid: Txid(0),
            wal,
            expect_restart: None,
            checkpoint_pages,
            last_post: Checksum::ZERO,
            checkpoints: 0,
            unflushed: 0,
            shm: open_shm(db),
            zero_pin: false,
            pending: None,
            capture_pending: false,
            defer_persist: false,
        })
    }

    pub fn db(&self) -> &Path {
        &self.db
    }

    pub fn txid(&self) -> Txid {
        self.txid
    }

    pub fn checksum(&self) -> Checksum {
        self.last_post
    }

    pub(super) fn table_checksum(&self) -> Checksum {
        self.pages_sum
    }

    /// The database checksum of the database file alone (no WAL).
    pub(super) fn file_checksum(&self) -> Result<Checksum> {
        let mut r = &self.db_file;
        let read = |e| CaptureError::read(&self.db, e);
        std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(0)).map_err(read)?;
        Ok(ltx_format::checksum_database(std::io::BufReader::new(r))
            .map_err(|e| CaptureError::read(&self.db, e))?
            .0)
    }

    /// The database file alone has the checksum of the last shipped state.
    pub(super) fn database_file_matches(&self) -> Result<bool> {
        Ok(self.file_checksum()? == self.last_post)
    }

    pub(super) fn persist(&self) -> Result<()> {
        self.write_position(false)
    }

    fn write_position(&self, durable: bool) -> Result<()> {
        if self.pending.is_some() {
            // The cursor is past frames no L0 file holds yet: the staged
            // files and the pending file are the truth until they are folded.
            return Ok(());
        }
        let (salt1, salt2, seq, offset, chk) = match &self.wal {
            Some((h, c)) => (h.salt1, h.salt2, h.checkpoint_seq, c.offset, c.checksum),
            None => (0, 0, 0, 0, (0, 0)),
        };
        let pos = Position {
            version: 1,
            txid: self.txid.0,
            checksum: self.last_post.to_string(),
            page_size: self.page_size.get(),
            commit: self.commit,
            wal_salt1: salt1,
            wal_salt2: salt2,
            wal_checkpoint_seq: seq,
            wal_offset: offset,
            wal_checksum1: chk.0,
            wal_checksum2: chk.1,
        };
        let path = self.staging.position_path();
        if durable {
            write_json_durable(&path, &pos)?;
        } else {
            write_json(&path, &pos)?;
        }
        Ok(())
    }

    /// [`CaptureError::Gone`] if the database file was deleted or replaced
    /// by another file since it was opened: what is captured would no
    /// longer be that file.
    pub fn check_identity(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let held = self
            .db_file
            .metadata()
            .map_err(|e| CaptureError::read(&self.db, e))?;
        match std::fs::metadata(&self.db) {
            Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => Ok(()),
            Ok(_) => Err(CaptureError::Gone(format!(
                "database {} was replaced by another file while replicated",
                self.db.display()
            ))),
            Err(_) => Err(CaptureError::Gone(format!(
                "database {} was deleted while replicated",
                self.db.display()
            ))),
        }
    }

    /// Writes the WAL's dirty pages to disk once at least `min_bytes` were
    /// shipped since the last flush. Under a heavy load this keeps the
    /// application's own checkpoints (and our sealed fsyncs) from having to
    /// flush hundreds of megabytes inside a commit; under a light one it
    /// costs nothing. (SQLite takes no locks on the `-wal` file, so this
    /// descriptor is harmless.)
    pub fn flush_wal(&mut self, min_bytes: u64) {
        if self.unflushed < min_bytes {
            return;
        }
        if let Ok(w) = File::open(wal_path(&self.db)) {
            let _ = w.sync_data();
        }
        self.unflushed = 0;
    }

    /// WAL frames after the header.
    pub fn wal_frames(&self) -> u64 {
        self.wal
            .map_or(0, |(h, c)| (c.offset.saturating_sub(32)) / h.frame_size())
    }

    pub fn wal_bytes(&self) -> u64 {
        std::fs::metadata(wal_path(&self.db)).map_or(0, |m| m.len())
    }

    /// Stops pinning the WAL and makes the position durable (for shutdown).
    pub fn close(self) {
        self.pins.release();
        if let Err(e) = self.write_position(true) {
            warn!(db = %self.db.display(), "cannot record the position: {e}");
        }
    }
}
