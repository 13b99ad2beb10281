//! Capture of one database under the FUSE primary: one L0 file per SQLite
//! transaction, written when the filesystem sees the commit point and
//! before that operation completes.
//!
//! - WAL mode: the commit point is the release of the WAL write lock. The
//!   WAL is read from the last captured commit, checking salts and the
//!   checksum chain, one L0 file per commit frame.
//! - Rollback-journal modes: the commit point is the journal's invalidation
//!   (unlink, truncate to 0, zeroed header). The journal lists the page
//!   numbers the transaction changed (plus every page past the original
//!   size); their new content is already in the database file.
//!
//! Durability follows what the application asked of SQLite: when it synced
//! the transaction (`synchronous=FULL` syncs the WAL at every commit; the
//! rollback-journal modes sync the database file unless `synchronous=OFF`),
//! the L0 file is fsynced and renamed into place before the commit point
//! completes. Otherwise it is written without an fsync as a deferred file
//! (into a spare file of the staging directory's pool, see
//! `StagingDir::write_deferred`), and a flusher makes a batch durable (one
//! `syncfs`, then the renames into `ltx/0` and one directory fsync) before
//! handing it to the pipeline, so nothing that is not durable is ever
//! uploaded.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use ltx_format::journal::read_journal;
use ltx_format::wal::{next_transaction, WalCursor, WalHeader, WalReader};
use ltx_format::{checksum_page, lock_pgno, Checksum, Encoder, Header, PageSize, Txid};
use tracing::{debug, warn};

use crate::pipeline::{Handoff, StagedL0};
use crate::staging::StagingDir;
use crate::state::write_json;
use crate::wal::engine::{apply_step, TableStep};
use crate::wal::error::{CaptureError, Result};
use crate::wal::position::Position;
use crate::wal::source::{now_ms, wal_path};

/// Where a transaction's pages are read from.
enum Pages<'a> {
    /// WAL frames: page number → offset of its data in the WAL file.
    Wal(&'a WalWindow<'a>, &'a std::collections::BTreeMap<u32, u64>),
    /// The database file (rollback-journal modes): these page numbers.
    Db(&'a BTreeSet<u32>),
}

/// The capture state of one database.
pub struct DbCapture {
    db: PathBuf,
    db_file: File,
    /// The device and inode of `db_file`, to see a replaced database with
    /// one `stat` (None if they could not be read: then asked each time).
    db_id: Option<(u64, u64)>,
    /// The WAL, kept open between commit points, with its device and inode
    /// (reopened when the name leads to another file; dropped by the
    /// flusher once unlinked, so it does not hold a deleted WAL's space).
    wal_file: Option<(File, (u64, u64))>,
    /// The buffer WAL bytes are read into at a commit point (see
    /// [`WalWindow`]); kept to spare an allocation per commit.
    wal_buf: Vec<u8>,
    staging: StagingDir,
    handoff: Handoff,
    page_size: PageSize,
    /// Page checksums at `txid` (0 for the lock page and unwritten pages).
    pages: Vec<u64>,
    commit: u32,
    txid: Txid,
    last_post: Checksum,
    /// The WAL generation and the cursor after the last captured commit.
    wal: Option<(WalHeader, WalCursor)>,
    /// Deferred L0 files, not yet handed over; the flag
    /// says whether the file is already durable (written at the database's
    /// fsync, see [`DbCapture::database_syncing`]).
    deferred: Vec<(StagedL0, bool)>,
    /// A rollback-journal transaction captured at the database's fsync,
    /// waiting for its commit point.
    early: Option<Early>,
    /// A rollback-journal transaction captured at its commit point whose
    /// journal invalidation is not known to be done
    /// ([`DbCapture::journal_invalidated`]): until then its file stays a
    /// deferred file, which recovery drops if the journal is still hot (the
    /// transaction never committed), and no position hint names it.
    committing: Option<Txid>,
    /// The position hint is behind: written by the flusher, not at every
    /// commit (recovery takes the newest staged file over an older hint).
    position_behind: bool,
    /// Where capture stood after each deferred file, oldest first: a
    /// hint may name only a published file, never one that a power loss
    /// could still take (recovery would continue the chain past a gap).
    hints: std::collections::VecDeque<Mark>,
    /// Whether the staging directory is on the database's filesystem
    /// (asked once, at the first capture at a database fsync).
    staging_on_db_fs: Option<bool>,
    /// The flusher's hand-over of deferred files, run outside the capture's
    /// lock (see [`DbCapture::take_synced`]).
    promoting: Arc<Promoting>,
}

/// Whether a [`SyncedBatch`] is being handed over, and the files of one
/// that failed, to be retried first.
#[derive(Debug, Default)]
struct Promoting {
    state: Mutex<PromoteState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct PromoteState {
    busy: bool,
    returned: Vec<StagedL0>,
    /// The failed batch's position hint is still to be recorded.
    position_behind: bool,
    /// A failed batch's error was fatal: the capture stops at its next
    /// flush, before anything newer is handed over.
    fatal: Option<String>,
}

impl Promoting {
    fn state(&self) -> MutexGuard<'_, PromoteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Durable deferred files, taken from a capture to be moved into `ltx/0` and
/// handed over by the flusher without the capture's lock (see
/// [`DbCapture::take_synced`]), and the position hint to record after them.
#[derive(Debug)]
pub struct SyncedBatch {
    files: Vec<StagedL0>,
    position: Option<Position>,
    staging: StagingDir,
    handoff: Handoff,
    promoting: Arc<Promoting>,
    db: PathBuf,
    fatal: Option<String>,
}

/// Whether the deferred file at `path` is gone (moved by a batch that then
/// failed); a file that cannot be looked at is kept, not lost.
fn moved(path: &Path) -> bool {
    matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

impl SyncedBatch {
    /// Moves the files into `ltx/0` and hands them over, in order, then
    /// records the position. On failure, those not moved go back to the
    /// capture, which retries them before anything newer (a later
    /// hand-over covers those moved).
    pub fn run(mut self) -> Result<()> {
        if !self.files.is_empty() {
            let files: Vec<(Txid, &Path)> = self
                .files
                .iter()
                .map(|s| (s.txid, s.path.as_path()))
                .collect();
            let paths = match self.staging.promote_deferred(&files, true) {
                Ok(p) => p,
                Err(e) => {
                    if e.is_fatal() {
                        self.fatal = Some(e.to_string());
                    }
                    return Err(e.into());
                }
            };
            for (mut s, p) in std::mem::take(&mut self.files).into_iter().zip(paths) {
                s.path = p;
                self.handoff.staged(&s);
            }
        }
        if let Some(pos) = self.position.take() {
            write_position(&self.db, &self.staging, &pos);
        }
        Ok(())
    }
}

impl Drop for SyncedBatch {
    /// Ends the batch, run or not: a flush waiting for it goes on.
    fn drop(&mut self) {
        let mut st = self.promoting.state();
        st.returned = std::mem::take(&mut self.files)
            .into_iter()
            .filter(|s| !moved(&s.path))
            .collect();
        st.position_behind |= self.position.is_some();
        if let Some(f) = self.fatal.take() {
            st.fatal = Some(f);
        }
        st.busy = false;
        drop(st);
        self.promoting.done.notify_all();
    }
}

/// A transaction built, not yet written.
struct Built {
    txid: Txid,
    commit: u32,
    pgnos: BTreeSet<u32>,
    /// The new checksums of the pages in `pgnos`, in the same order.
    checksums: Vec<u64>,
    post: Checksum,
    header: Header,
}

/// A transaction captured at the database's fsync before its commit point:
/// its L0 file is durable, a deferred file.
struct Early {
    /// The database's write count when it was captured.
    writes: u64,
    built: Built,
    path: PathBuf,
}

impl std::fmt::Debug for DbCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCapture")
            .field("db", &self.db)
            .field("txid", &self.txid)
            .finish_non_exhaustive()
    }
}

/// A journal up to this size is read into memory in one call.
const JOURNAL_READ_WHOLE: u64 = 1 << 20;

/// The database size in pages from its header (bytes 28..32), when the
/// header's "version valid for" (92..96) equals its change counter
/// (24..28); otherwise from the file size.
fn db_pages(f: &File, page_size: PageSize) -> std::io::Result<u32> {
    let mut h = [0u8; 100];
    let len = f.metadata()?.len();
    if len < 100 {
        return Ok(0);
    }
    f.read_exact_at(&mut h, 0)?;
    Ok(ltx_format::checksum::sqlite_header_pages(&h)
        .unwrap_or((len / u64::from(page_size.get())) as u32))
}

impl DbCapture {
    /// A capture continuing from a known state (see `mount::recover`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: &Path,
        db_file: File,
        staging: StagingDir,
        handoff: Handoff,
        page_size: PageSize,
        pages: Vec<u64>,
        txid: Txid,
        last_post: Checksum,
        wal: Option<(WalHeader, WalCursor)>,
    ) -> Self {
        DbCapture {
            db: db.to_path_buf(),
            db_id: db_file.metadata().ok().map(|m| (m.dev(), m.ino())),
            db_file,
            wal_file: None,
            wal_buf: Vec::new(),
            staging,
            handoff,
            page_size,
            commit: pages.len() as u32,
            pages,
            txid,
            last_post,
            wal,
            deferred: Vec::new(),
            early: None,
            committing: None,
            position_behind: true,
            hints: Default::default(),
            staging_on_db_fs: None,
            promoting: Arc::default(),
        }
    }

    pub fn txid(&self) -> Txid {
        self.txid
    }

    pub fn checksum(&self) -> Checksum {
        self.last_post
    }

    /// Whether the database's name still leads to the file this capture
    /// reads (not replaced by another file; a file unlinked while open is
    /// still the one its writers use).
    pub fn same_file(&self) -> bool {
        let held = match self.db_id {
            Some(id) => Ok(id),
            None => self.db_file.metadata().map(|m| (m.dev(), m.ino())),
        };
        match (std::fs::metadata(&self.db), held) {
            (Ok(now), Ok(held)) => (now.dev(), now.ino()) == held,
            _ => true,
        }
    }

    /// Whether the database file's header gives another page size than the
    /// one captured so far: a rollback-journal transaction changed it
    /// (`PRAGMA page_size` then `VACUUM`, or a backup from a database of
    /// another page size). Its pages cannot be read at the old size.
    pub fn page_size_changed(&self) -> bool {
        let mut b = [0u8; 2];
        if self.db_file.read_exact_at(&mut b, 16).is_err() {
            return false;
        }
        let ps = match u16::from_be_bytes(b) {
            1 => 65536,
            n => u32::from(n),
        };
        PageSize::new(ps).is_ok_and(|ps| ps != self.page_size)
    }

    /// The capture of the file now at this database's path, continuing this
    /// history (a full-page file if it does not continue it).
    pub fn reopen(mut self) -> Result<DbCapture> {
        self.flush()?;
        // What the flush could not hand over belongs to the file that was
        // replaced (a transaction whose journal invalidation never came).
        if let Some(e) = self.early.take() {
            remove_early(&e);
        }
        for (s, _) in self.deferred.drain(..) {
            remove_unused(&s.path);
        }
        warn!(db = %self.db.display(), "the database file was replaced; re-reading it");
        super::recover::open_capture(&self.db, &self.staging, self.handoff.clone(), false)
    }

    /// The WAL offset after the last captured commit.
    pub fn wal_end(&self) -> Option<u64> {
        self.wal.map(|(_, c)| c.offset)
    }

    /// The WAL write lock was released: capture every commit since the last
    /// one, one L0 file each. Returns how many.
    ///
    /// This runs inside the unlock, so it keeps to few system calls: one
    /// `stat` of the WAL's name (the file stays open), a read of its header,
    /// and one read of the frames since the last commit (see [`WalWindow`]),
    /// whose pages are then taken from memory.
    pub fn wal_committed(&mut self, durable: bool) -> Result<usize> {
        let wp = wal_path(&self.db);
        let Some(header) = self.open_wal(&wp)? else {
            return Ok(0);
        };
        // Out of `self` while `capture_frames` borrows it mutably.
        let Some((f, id)) = self.wal_file.take() else {
            return Ok(0);
        };
        let mut buf = std::mem::take(&mut self.wal_buf);
        let r = self.capture_frames(&wp, &f, header, &mut buf, durable);
        self.wal_buf = buf;
        self.wal_file = Some((f, id));
        r
    }

    /// The WAL at `wp`, opened or kept open, and its header; None when
    /// there is no WAL or its header is not valid (see [`live_wal_header`]).
    fn open_wal(&mut self, wp: &Path) -> Result<Option<WalHeader>> {
        let id = match std::fs::metadata(wp) {
            Ok(m) => (m.dev(), m.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.wal_file = None;
                return Ok(None);
            }
            Err(e) => return Err(CaptureError::read(wp, e)),
        };
        if self.wal_file.as_ref().is_none_or(|(_, held)| *held != id) {
            self.wal_file = match File::open(wp) {
                Ok(f) => {
                    let m = f.metadata().map_err(|e| CaptureError::read(wp, e))?;
                    Some((f, (m.dev(), m.ino())))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(CaptureError::read(wp, e)),
            };
        }
        let Some((f, _)) = &self.wal_file else {
            return Ok(None);
        };
        wal_header_of(f).map_err(|e| CaptureError::read(wp, e))
    }

    /// Drops the WAL kept open if it was unlinked (SQLite deletes it when
    /// the last connection closes), so its space is freed.
    fn forget_unlinked_wal(&mut self) {
        if self
            .wal_file
            .as_ref()
            .is_some_and(|(f, _)| f.metadata().map_or(true, |m| m.nlink() == 0))
        {
            self.wal_file = None;
        }
    }

    /// Stages every commit in the WAL `f` (generation `header`) past the
    /// last captured one.
    fn capture_frames(
        &mut self,
        wp: &Path,
        f: &File,
        header: WalHeader,
        buf: &mut Vec<u8>,
        durable: bool,
    ) -> Result<usize> {
        let start = match &self.wal {
            Some((h, c)) if (h.salt1, h.salt2) == (header.salt1, header.salt2) => *c,
            // A new generation: SQLite restarts the WAL only once every frame
            // is copied into the database, and every commit before it was
            // captured at its own commit point.
            _ => WalCursor {
                offset: 32,
                checksum: header.checksum,
            },
        };
        let window =
            WalWindow::read(f, start.offset, buf).map_err(|e| CaptureError::read(wp, e))?;
        let mut reader = WalReader::resume(window.reader(), header, start);
        let mut n = 0;
        while let Some(tx) = next_transaction(&mut reader).map_err(|e| CaptureError::read(wp, e))? {
            if header.page_size != self.page_size {
                return Err(CaptureError::Database(format!(
                    "{}: the WAL's page size {} differs from the database's {}",
                    wp.display(),
                    header.page_size,
                    self.page_size
                )));
            }
            self.stage(
                tx.commit,
                &Pages::Wal(&window, &tx.pages),
                durable,
                Some((header, tx.end)),
            )?;
            n += 1;
        }
        if n == 0 {
            self.wal = Some((header, start));
        }
        Ok(n)
    }

    /// The rollback journal at `journal` is about to be invalidated: the
    /// transaction it protected is committing (or was rolled back, which
    /// leaves the pages as they were: no file). `writes` is the database's
    /// write count (see [`DbCapture::database_syncing`]). Returns whether a
    /// file was written.
    pub fn journal_committing(
        &mut self,
        journal: &Path,
        durable: bool,
        writes: u64,
    ) -> Result<bool> {
        if let Some(e) = self.early.take() {
            if e.writes == writes && durable {
                self.commit_early(e);
                self.committing = Some(self.txid);
                return Ok(true);
            }
            debug!(db = %self.db.display(), "the database changed after its fsync: capturing again");
            remove_early(&e);
        }
        let Some((commit, changed)) = self.journal_pages(journal)? else {
            return Ok(false);
        };
        let staged = self.stage(commit, &Pages::Db(&changed), durable, None)?;
        if staged {
            self.committing = Some(self.txid);
        }
        Ok(staged)
    }

    /// Makes the deferred files not durable yet durable (one `syncfs`)
    /// before a durable one is written: recovery keeps a deferred file only
    /// if every older one survived.
    fn sync_older(&mut self) -> Result<()> {
        if let Some(t) = self.unsynced() {
            self.staging.sync_deferred_dir()?;
            self.synced_up_to(t);
        }
        Ok(())
    }

    /// The journal invalidation of the transaction captured last was done:
    /// it committed, and its file may be handed over.
    pub fn journal_invalidated(&mut self) {
        self.committing = None;
    }

    /// How many deferred files, oldest first, may be handed over: not the
    /// one of a transaction still committing, nor any newer.
    fn publishable(&self) -> usize {
        match self.committing {
            Some(t) => self.deferred.iter().take_while(|(s, _)| s.txid < t).count(),
            None => self.deferred.len(),
        }
    }

    /// The database is about to be fsynced while its journal `journal`
    /// exists: SQLite has written the transaction's pages and invalidates
    /// the journal next. The transaction is captured now, into the deferred
    /// directory, and made durable together with the database by one
    /// `syncfs` when the staging directory is on the database's filesystem
    /// (returns true: the database is synced). Its commit point then only
    /// checks that the database was not written since (`writes`, the
    /// database's write count, is unchanged) and hands the file on, with no
    /// sync of its own. Where anything differs, the commit point captures
    /// afresh.
    pub fn database_syncing(&mut self, journal: &Path, writes: u64) -> Result<bool> {
        if let Some(e) = self.early.take() {
            remove_early(&e);
        }
        // A new transaction: the last one's journal invalidation is done.
        self.committing = None;
        if self.page_size_changed() {
            return Ok(false);
        }
        let Some((commit, changed)) = self.journal_pages(journal)? else {
            return Ok(false);
        };
        let pages = Pages::Db(&changed);
        let Some(b) = self.build(commit, &pages, None)? else {
            return Ok(false);
        };
        self.sync_older()?;
        let path = self
            .staging
            .write_deferred(b.txid, |w| self.encode(&b, &pages, w))?;
        let same_fs = *self
            .staging_on_db_fs
            .get_or_insert_with(|| self.staging.on_fs_of(&self.db_file));
        let synced = self
            .staging
            .sync_deferred(&path, &self.db_file, same_fs)
            .inspect_err(|_| remove_unused(&path))?;
        self.early = Some(Early {
            writes,
            built: b,
            path,
        });
        Ok(synced)
    }

    /// The transaction captured at the database's fsync committed.
    fn commit_early(&mut self, e: Early) {
        let staged = self.advance(e.built, e.path);
        self.hints.push_back(self.mark());
        self.deferred.push((staged, true));
        self.position_behind = true;
    }

    /// Moves the state on to a transaction written at `path`.
    fn advance(&mut self, b: Built, path: PathBuf) -> StagedL0 {
        apply_step(&mut self.pages, b.commit, &b.pgnos, &b.checksums);
        self.commit = b.commit;
        self.txid = b.txid;
        self.last_post = b.post;
        StagedL0 {
            txid: b.txid,
            post_apply: b.post,
            path,
            full: false,
        }
    }

    /// The database size and the pages the transaction of the journal at
    /// `journal` changed; None when it has no valid header (no transaction).
    fn journal_pages(&self, journal: &Path) -> Result<Option<(u32, BTreeSet<u32>)>> {
        let mut jf = match File::open(journal) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CaptureError::read(journal, e)),
        };
        let len = jf
            .metadata()
            .map_err(|e| CaptureError::read(journal, e))?
            .len();
        // A small journal (a short transaction's) is read in one call, not
        // a seek and a read per record.
        let summary = if len <= JOURNAL_READ_WHOLE {
            let mut buf = Vec::with_capacity(len as usize);
            std::io::Read::read_to_end(&mut std::io::Read::take(&mut jf, len), &mut buf)
                .map_err(|e| CaptureError::read(journal, e))?;
            let n = buf.len() as u64;
            read_journal(&mut std::io::Cursor::new(buf), n)
        } else {
            read_journal(&mut jf, len)
        };
        let Some(summary) = summary.map_err(|e| CaptureError::read(journal, e))? else {
            debug!(journal = %journal.display(), "no valid journal header: no transaction");
            return Ok(None);
        };
        let commit =
            db_pages(&self.db_file, self.page_size).map_err(|e| CaptureError::read(&self.db, e))?;
        Ok(Some((commit, summary.changed(commit))))
    }

    /// The next transaction's page set, page table, checksum and header.
    /// None for a rollback-journal "transaction" that left every page as it
    /// was (a rollback rewrites the original pages).
    fn build(
        &self,
        commit: u32,
        pages: &Pages<'_>,
        wal: Option<(WalHeader, WalCursor)>,
    ) -> Result<Option<Built>> {
        let txid = Txid(self.txid.0 + 1);
        let pgnos = self.page_set(commit, pages);
        let mut step = TableStep::new(&self.pages, self.last_post, commit);
        let mut buf = vec![0u8; self.page_size.as_usize()];
        for &pgno in &pgnos {
            read_page(pages, &self.db_file, pgno, &mut buf)
                .map_err(|e| CaptureError::read(&self.db, e))?;
            step.page(pgno, checksum_page(pgno, &buf));
        }
        let post = step.sum();
        if matches!(pages, Pages::Db(_)) && post == self.last_post && commit == self.commit {
            debug!(db = %self.db.display(), "the journal's transaction changed nothing (rolled back): no file");
            return Ok(None);
        }
        let header = self.header(txid, commit, wal);
        Ok(Some(Built {
            txid,
            commit,
            pgnos,
            checksums: step.checksums,
            post,
            header,
        }))
    }

    /// Encodes a built transaction.
    fn encode(
        &self,
        b: &Built,
        pages: &Pages<'_>,
        w: &mut std::io::BufWriter<crate::staging::SyncEvery<'_>>,
    ) -> ltx_format::Result<()> {
        let mut enc = Encoder::new(w, b.header)?;
        let mut buf = vec![0u8; self.page_size.as_usize()];
        for &pgno in &b.pgnos {
            read_page(pages, &self.db_file, pgno, &mut buf)?;
            enc.encode_page(pgno, &buf)?;
        }
        enc.finish(b.post)?;
        Ok(())
    }

    /// Encodes the transaction as the next L0 file and moves the state on.
    /// A rollback-journal "transaction" that left every page as it was
    /// writes no file.
    fn stage(
        &mut self,
        commit: u32,
        pages: &Pages<'_>,
        durable: bool,
        wal: Option<(WalHeader, WalCursor)>,
    ) -> Result<bool> {
        if let Some(e) = self.early.take() {
            remove_early(&e);
        }
        // A new transaction: the last one's journal invalidation is done.
        self.committing = None;
        let Some(b) = self.build(commit, pages, wal)? else {
            return Ok(false);
        };
        // A WAL commit is done once its frame is in the WAL: a durable one
        // goes straight into place, after the deferred files (made durable
        // first, so it overtakes none). A rollback-journal transaction
        // commits only when its journal is invalidated, after this: its
        // file is deferred, and made durable here if it must be.
        let direct = durable && wal.is_some();
        if direct {
            self.flush()?;
        } else if durable {
            self.sync_older()?;
        }
        let encode =
            |w: &mut std::io::BufWriter<crate::staging::SyncEvery<'_>>| self.encode(&b, pages, w);
        let path = if direct {
            self.staging.write_ltx(0, b.txid, b.txid, encode)?
        } else {
            self.staging.write_deferred(b.txid, encode)?
        };
        if durable && !direct {
            self.staging
                .sync_deferred(&path, &self.db_file, false)
                .inspect_err(|_| remove_unused(&path))?;
        }
        let staged = self.advance(b, path);
        if wal.is_some() {
            self.wal = wal;
        }
        if direct {
            self.handoff.staged(&staged);
        } else {
            self.hints.push_back(self.mark());
            self.deferred.push((staged, durable));
        }
        self.position_behind = true;
        Ok(true)
    }

    /// Every page the file holds: those the transaction wrote, and those new
    /// since the last file (zeros unless written).
    fn page_set(&self, commit: u32, pages: &Pages<'_>) -> BTreeSet<u32> {
        let mut pgnos: BTreeSet<u32> = match pages {
            Pages::Wal(_, m) => m.keys().copied().collect(),
            Pages::Db(s) => (*s).clone(),
        };
        pgnos.extend((self.pages.len() as u32).saturating_add(1)..=commit);
        let lock = lock_pgno(self.page_size);
        pgnos.retain(|&p| p <= commit && p != lock);
        pgnos
    }

    /// The L0 header for `txid`, with the WAL range it covers.
    fn header(&self, txid: Txid, commit: u32, wal: Option<(WalHeader, WalCursor)>) -> Header {
        let mut h = Header::new(self.page_size, commit, txid, txid);
        h.timestamp_ms = now_ms();
        h.pre_apply_checksum = self.last_post;
        if let Some((wh, end)) = wal {
            let from = self
                .wal
                .filter(|(w, _)| (w.salt1, w.salt2) == (wh.salt1, wh.salt2))
                .map_or(32, |(_, c)| c.offset);
            h.wal_offset = from as i64;
            h.wal_size = (end.offset - from) as i64;
            h.wal_salt1 = wh.salt1;
            h.wal_salt2 = wh.salt2;
        }
        h
    }

    /// The newest deferred file not yet durable, if any: a `syncfs` of the
    /// staging directory made after this call makes it and every older one
    /// durable ([`DbCapture::synced_up_to`]).
    pub fn unsynced(&self) -> Option<Txid> {
        self.deferred
            .iter()
            .rev()
            .find(|(_, synced)| !synced)
            .map(|(s, _)| s.txid)
    }

    /// The deferred files up to `txid` were made durable.
    pub fn synced_up_to(&mut self, txid: Txid) {
        for (s, synced) in &mut self.deferred {
            if s.txid <= txid {
                *synced = true;
            }
        }
    }

    pub fn staging(&self) -> &StagingDir {
        &self.staging
    }

    /// Makes the deferred files durable and hands them over.
    pub fn flush(&mut self) -> Result<()> {
        self.wait_promoting()?;
        let n = self.publishable();
        let upto = n.checked_sub(1).map(|i| self.deferred[i].0.txid);
        if n > 0 {
            let synced = self.deferred[..n].iter().all(|&(_, synced)| synced);
            let files: Vec<(Txid, &Path)> = self.deferred[..n]
                .iter()
                .map(|(s, _)| (s.txid, s.path.as_path()))
                .collect();
            let paths = match self.staging.promote_deferred(&files, synced) {
                Ok(p) => p,
                Err(e) => {
                    // Those moved before the failure are handed over with
                    // the next file; the rest are retried.
                    self.deferred.retain(|(s, _)| !moved(&s.path));
                    return Err(e.into());
                }
            };
            for ((mut s, _), p) in self.deferred.drain(..n).zip(paths) {
                s.path = p;
                self.handoff.staged(&s);
            }
        }
        if let Some(hint) = self.hint_after(upto, self.deferred.len()) {
            write_position(&self.db, &self.staging, &hint);
        }
        self.forget_unlinked_wal();
        Ok(())
    }

    /// The position hint to record once the deferred files up to `upto`
    /// are published, `left` deferred files staying behind: the capture's
    /// own position when none stays, else the position recorded with the
    /// file at `upto`; None when there is nothing new to record.
    fn hint_after(&mut self, upto: Option<Txid>, left: usize) -> Option<Position> {
        let mut hint = None;
        while let Some(m) = self
            .hints
            .front()
            .filter(|m| upto.is_some_and(|t| m.txid <= t))
        {
            hint = (Some(m.txid) == upto).then_some(*m);
            self.hints.pop_front();
        }
        if left == 0 && self.committing.is_none() {
            self.hints.clear();
            return std::mem::take(&mut self.position_behind).then(|| self.position());
        }
        hint.map(|m| m.position(self.page_size))
    }

    /// Takes the deferred files that are durable already, up to the first
    /// that is not, for the flusher to move into place and hand over
    /// without this capture's lock ([`SyncedBatch::run`]): about a
    /// hundred renames and a directory fsync every interval under load,
    /// which commits would otherwise wait for. Until the batch is done, a
    /// [`DbCapture::flush`] (a durable commit's) waits for it, so no file
    /// overtakes another.
    pub fn take_synced(&mut self) -> Result<Option<SyncedBatch>> {
        self.wait_promoting()?;
        self.forget_unlinked_wal();
        let n = self.deferred[..self.publishable()]
            .iter()
            .take_while(|(_, s)| *s)
            .count();
        let upto = n.checked_sub(1).map(|i| self.deferred[i].0.txid);
        let position = self.hint_after(upto, self.deferred.len() - n);
        if n == 0 && position.is_none() {
            return Ok(None);
        }
        self.promoting.state().busy = true;
        Ok(Some(SyncedBatch {
            files: self.deferred.drain(..n).map(|(s, _)| s).collect(),
            position,
            staging: self.staging.clone(),
            handoff: self.handoff.clone(),
            promoting: self.promoting.clone(),
            db: self.db.clone(),
            fatal: None,
        }))
    }

    /// Waits for the flusher's batch, if one runs, and takes back the files
    /// of one that failed, ahead of the rest; fails if that failure was
    /// fatal (the capture then stops before anything newer is handed over).
    fn wait_promoting(&mut self) -> Result<()> {
        let mut st = self.promoting.state();
        while st.busy {
            st = self
                .promoting
                .done
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        let back = std::mem::take(&mut st.returned);
        self.position_behind |= std::mem::take(&mut st.position_behind);
        let fatal = st.fatal.clone();
        drop(st);
        if !back.is_empty() {
            let rest = std::mem::take(&mut self.deferred);
            self.deferred = back.into_iter().map(|s| (s, true)).chain(rest).collect();
        }
        match fatal {
            Some(e) => Err(CaptureError::Database(format!(
                "{}: handing deferred files over failed: {e}",
                self.db.display()
            ))),
            None => Ok(()),
        }
    }

    /// The position hint (the staged files are the truth). Recorded by
    /// the flusher every interval rather than at every commit: four system
    /// calls and a dirty page less per transaction, which the next
    /// `syncfs` would otherwise write out.
    fn position(&self) -> Position {
        self.mark().position(self.page_size)
    }

    /// Where capture stands now, to make a [`Position`] of later.
    fn mark(&self) -> Mark {
        Mark {
            txid: self.txid,
            post: self.last_post,
            commit: self.commit,
            wal: self.wal,
        }
    }
}

/// Where capture stood after one file: what its [`Position`] is made of,
/// kept without allocating at every commit.
#[derive(Debug, Clone, Copy)]
struct Mark {
    txid: Txid,
    post: Checksum,
    commit: u32,
    wal: Option<(WalHeader, WalCursor)>,
}

impl Mark {
    fn position(&self, page_size: PageSize) -> Position {
        let (salt1, salt2, seq, offset, chk) = match &self.wal {
            Some((h, c)) => (h.salt1, h.salt2, h.checkpoint_seq, c.offset, c.checksum),
            None => (0, 0, 0, 0, (0, 0)),
        };
        Position {
            version: 1,
            txid: self.txid.0,
            checksum: self.post.to_string(),
            page_size: page_size.get(),
            commit: self.commit,
            wal_salt1: salt1,
            wal_salt2: salt2,
            wal_checkpoint_seq: seq,
            wal_offset: offset,
            wal_checksum1: chk.0,
            wal_checksum2: chk.1,
        }
    }
}

/// Records the position hint of `db`; a failure only warns (recovery reads
/// the staged files).
fn write_position(db: &Path, staging: &StagingDir, pos: &Position) {
    if let Err(e) = write_json(&staging.position_path(), pos) {
        warn!(db = %db.display(), "cannot record the position: {e}");
    }
}

/// Removes the file of a transaction captured early that did not commit as
/// captured.
fn remove_early(e: &Early) {
    remove_unused(&e.path);
}

/// Removes a deferred file that will never be handed over. Left in the
/// spare pool's directory, it would hold its TXID after another file took
/// that TXID, and a recovery could not tell the two apart.
fn remove_unused(path: &Path) {
    if let Err(err) = std::fs::remove_file(path) {
        if err.kind() != std::io::ErrorKind::NotFound {
            warn!(file = %path.display(), "cannot remove an unused capture: {err}");
        }
    }
}

/// The header of the WAL at `wp`, or None when there is no WAL or its
/// header is not valid. SQLite ignores such a WAL (a crash before its header
/// was synced, or a file written over): recovery finds no frames, and the
/// next commit starts the WAL again with a new header. So the write lock is
/// released over it with nothing committed, which must not be an error (it
/// would hold off every later writer).
pub(crate) fn live_wal_header(wp: &Path) -> Result<Option<WalHeader>> {
    let f = match File::open(wp) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CaptureError::read(wp, e)),
    };
    wal_header_of(&f).map_err(|e| CaptureError::read(wp, e))
}

/// The header of the open WAL `f`, as [`live_wal_header`].
fn wal_header_of(f: &File) -> std::io::Result<Option<WalHeader>> {
    let mut hb = [0u8; 32];
    match f.read_exact_at(&mut hb, 0) {
        Ok(()) => Ok(WalHeader::parse(&hb).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// How many WAL bytes a commit point reads in one call: the frames of a
/// transaction of up to seven pages of 4 KiB. (Measured: a 256 KiB read
/// of the same few frames took 13–26 µs here, a 32 KiB one 4–6 µs.)
const WAL_WINDOW: usize = 32 << 10;

/// The WAL bytes from the last captured commit, read in one call into a
/// buffer: a short transaction's frames are then parsed and encoded from
/// memory, not read frame by frame and page by page. Bytes past the window
/// are read from the file (a big transaction's).
struct WalWindow<'a> {
    f: &'a File,
    /// The WAL offset of `data[0]`.
    base: u64,
    data: &'a [u8],
    /// The read came back short: the window reaches the end of the file.
    /// (A regular file reads short only at its end. The WAL cannot grow
    /// meanwhile: this runs while its write lock is still held, and a
    /// commit written later is captured at its own commit point.)
    eof: bool,
}

impl<'a> WalWindow<'a> {
    /// Reads from `base` into `buf` (grown to [`WAL_WINDOW`] once).
    fn read(f: &'a File, base: u64, buf: &'a mut Vec<u8>) -> std::io::Result<Self> {
        if buf.len() < WAL_WINDOW {
            buf.resize(WAL_WINDOW, 0);
        }
        let n = loop {
            match f.read_at(buf, base) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        Ok(WalWindow {
            f,
            base,
            data: &buf[..n],
            eof: n < buf.len(),
        })
    }

    /// Reads at WAL offset `off`: from the window where it holds `off`.
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        let end = self.base + self.data.len() as u64;
        if off >= self.base && off < end {
            let from = &self.data[(off - self.base) as usize..];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            return Ok(n);
        }
        if off >= end && self.eof {
            return Ok(0);
        }
        self.f.read_at(buf, off)
    }

    /// Reads all of `buf` at `off`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut off: u64) -> std::io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, off) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    off += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A sequential reader from the window's start; past the window it
    /// reads the file through a buffer.
    fn reader(&'a self) -> WindowReader<'a> {
        WindowReader {
            w: self,
            pos: self.base,
            spill: None,
        }
    }
}

/// See [`WalWindow::reader`].
struct WindowReader<'a> {
    w: &'a WalWindow<'a>,
    pos: u64,
    spill: Option<std::io::BufReader<FileFrom<'a>>>,
}

impl Read for WindowReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let end = self.w.base + self.w.data.len() as u64;
        if self.pos < end || self.w.eof {
            let n = self.w.read_at(buf, self.pos)?;
            self.pos += n as u64;
            return Ok(n);
        }
        let (f, pos) = (self.w.f, self.pos);
        let spill = self.spill.get_or_insert_with(|| {
            std::io::BufReader::with_capacity(64 << 10, FileFrom { f, pos })
        });
        let n = spill.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A file read sequentially from an offset, with positional reads.
struct FileFrom<'a> {
    f: &'a File,
    pos: u64,
}

impl Read for FileFrom<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.f.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads page `pgno` of the transaction into `buf`: from its WAL frame, or
/// from the database file; zeros where neither holds it.
fn read_page(pages: &Pages<'_>, db: &File, pgno: u32, buf: &mut [u8]) -> std::io::Result<()> {
    let found = match pages {
        Pages::Wal(w, m) => match m.get(&pgno) {
            Some(&off) => w.read_exact_at(buf, off).map(|()| true)?,
            None => false,
        },
        Pages::Db(_) => {
            let off = u64::from(pgno - 1) * buf.len() as u64;
            match db.read_exact_at(buf, off) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
                Err(e) => return Err(e),
            }
        }
    };
    if !found {
        buf.fill(0);
    }
    Ok(())
}
