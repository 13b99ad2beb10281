//! The capture engine of one database: turns committed WAL frames into L0 files
//! in the staging directory, and owns checkpoints.
//!
//! Invariants:
//! - One of our connections always holds a read transaction, begun *before*
//!   the frames it protects are read. A reader pins the WAL: no checkpoint
//!   copies frames past its snapshot and no writer restarts the WAL under it,
//!   so frames we have not shipped stay in the WAL until we have read them.
//! - An L0 file is fsynced and renamed into place before the position moves.
//! - Checkpoints: seal (take the write lock), ship to the WAL end, PASSIVE
//!   checkpoint, release. Nothing unshipped is ever checkpointed by us.
//! - A restart resumes from the persisted position when continuity is proven
//!   (same WAL generation and checksum chain, or a database file whose
//!   checksum equals the position's); otherwise it writes a full-page L0 file
//!   and logs why.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ltx_format::wal::{scan_committed, WalCursor, WalHeader, WalReader};
use ltx_format::{
    checksum_page, format_filename, lock_pgno, Checksum, DbChecksum, Encoder, Header, PageSize,
    Txid, HEADER_FLAG_NO_CHECKSUM,
};
use rusqlite::{Connection, OpenFlags};
use tracing::{info, warn};

use super::position::{read_json, write_json, Position};
use crate::capture::{now_ms, wal_path, write_ltx, DbSource};

/// What one sync wrote.
#[derive(Debug, Clone)]
pub struct Synced {
    pub txid: Txid,
    pub path: PathBuf,
    pub pages: usize,
    pub bytes: u64,
    /// A full-page file written because continuity could not be proven.
    pub full: bool,
    /// Application transactions (commit frames) in the file.
    pub transactions: u64,
}

pub struct Engine {
    db: PathBuf,
    /// The database file, open for the engine's whole life: closing any
    /// descriptor of it would drop SQLite's POSIX locks (our read pins).
    db_file: File,
    l0_dir: PathBuf,
    position_path: PathBuf,
    conns: [Connection; 2],
    /// Index of the connection holding the read transaction.
    held: usize,
    writer: Connection,
    page_size: PageSize,
    pages: Vec<u64>,
    commit: u32,
    txid: Txid,
    wal: Option<(WalHeader, WalCursor)>,
    /// Set after our own full checkpoint: the WAL generation that may be
    /// restarted next (its salts and checkpoint sequence).
    expect_restart: Option<WalHeader>,
    checkpoint_pages: u32,
    /// Database checksum after the last shipped TXID.
    last_post: Checksum,
    pub checkpoints: u64,
}

/// Refuses anything that is not an existing WAL-mode SQLite database, naming
/// the fix.
pub fn check_database(db: &Path) -> Result<()> {
    let f = File::open(db).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("database {} does not exist; create it first (sluice never creates or modifies an application database)", db.display())
        } else {
            anyhow::anyhow!("cannot open database {}: {e}", db.display())
        }
    })?;
    let mut h = [0u8; 100];
    f.read_exact_at(&mut h, 0)
        .with_context(|| format!("{} is too short to be a SQLite database", db.display()))?;
    if &h[..16] != b"SQLite format 3\0" {
        bail!("{} is not a SQLite database", db.display());
    }
    if h[18] != 2 || h[19] != 2 {
        bail!(
            "database {} is not in WAL mode; switch it with: sqlite3 {} 'PRAGMA journal_mode=WAL'",
            db.display(),
            db.display()
        );
    }
    Ok(())
}

fn open_conn(db: &Path) -> Result<Connection> {
    let c = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", db.display()))?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    // Our connections never checkpoint on their own, even when closing last.
    c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    c.execute_batch("PRAGMA wal_autocheckpoint=0;")?;
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if mode != "wal" {
        bail!(
            "database {} is in journal mode {mode}, not WAL; switch it with: sqlite3 {} 'PRAGMA journal_mode=WAL'",
            db.display(),
            db.display()
        );
    }
    Ok(c)
}

fn begin_read(c: &Connection) -> Result<()> {
    c.execute_batch("BEGIN")?;
    // A read transaction starts at the first read.
    c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    Ok(())
}

fn end_read(c: &Connection) {
    let _ = c.execute_batch("ROLLBACK");
}

fn parse_checksum(s: &str) -> Result<Checksum> {
    Ok(Checksum(
        u64::from_str_radix(s, 16).with_context(|| format!("bad checksum {s:?}"))?,
    ))
}

impl Engine {
    /// Opens the database, proves continuity with the persisted position (or
    /// not), and returns the engine plus the file written to re-establish it,
    /// if one was needed.
    pub fn open(
        db: &Path,
        staging: &Path,
        checkpoint_pages: u32,
        replica_has_files: bool,
    ) -> Result<(Self, Option<Synced>)> {
        check_database(db)?;
        let db_file =
            File::open(db).with_context(|| format!("cannot open database {}", db.display()))?;
        let conns = [open_conn(db)?, open_conn(db)?];
        let writer = open_conn(db)?;
        begin_read(&conns[0])?;
        let position_path = staging.join("position.json");
        let l0_dir = staging.join("ltx").join("0");
        let pos = newest_position(read_json(&position_path)?, &l0_dir)?;
        if pos.is_none() && replica_has_files {
            bail!(
                "the replica already holds LTX files but {} has no position for them: another writer owns this replica, or this machine's staging directory was lost; use an empty replica path (or remove the old files)",
                position_path.display()
            );
        }
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
            src.read_page(pgno, &mut buf)?;
            let c = checksum_page(pgno, &buf);
            pages[pgno as usize - 1] = c;
        }
        let current_wal = src.wal_position();
        let commit = src.commit;
        drop(src);
        info!(db = %db.display(), pages = commit, elapsed_ms = started.elapsed().as_millis() as u64, "read database state");
        let mut engine = Engine {
            db: db.to_path_buf(),
            db_file,
            l0_dir: staging.join("ltx").join("0"),
            position_path,
            conns,
            held: 0,
            writer,
            page_size: ps,
            pages,
            commit,
            txid: Txid(0),
            wal: current_wal,
            expect_restart: None,
            checkpoint_pages,
            last_post: Checksum::ZERO,
            checkpoints: 0,
        };
        let Some(pos) = pos else {
            let s = engine.write_full(Txid(1), None, "first run: initial snapshot")?;
            return Ok((engine, Some(s)));
        };
        engine.txid = Txid(pos.txid);
        let pos_sum = parse_checksum(&pos.checksum)?;
        if pos.page_size != ps.get() {
            let s = engine.write_full(Txid(pos.txid + 1), Some(pos_sum), "page size changed")?;
            return Ok((engine, Some(s)));
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
                    Txid(pos.txid + 1),
                    Some(pos_sum),
                    "cannot prove continuity with the persisted position (the WAL was checkpointed or the database changed while sluice was stopped)",
                )?;
                Ok((engine, Some(s)))
            }
        }
    }

    /// Where to resume reading the WAL, if the position is provably continuous
    /// with the database as it is now.
    fn resume_point(&self, pos: &Position) -> Result<Option<Option<(WalHeader, WalCursor)>>> {
        let wp = wal_path(&self.db);
        let header = read_wal_header(&wp)?;
        if let Some(h) = header {
            if h.salt1 == pos.wal_salt1 && h.salt2 == pos.wal_salt2 && pos.wal_offset >= 32 {
                // Same generation: the checksum chain up to the position must
                // be the one we saw.
                let f = File::open(&wp)?;
                let mut r = WalReader::new(std::io::BufReader::new(&f))?;
                let mut page = vec![0u8; h.page_size.as_usize()];
                while r.cursor().offset < pos.wal_offset {
                    if r.next_frame(&mut page)?.is_none() {
                        return Ok(None);
                    }
                }
                let c = r.cursor();
                // A position rebuilt from a staged file has no checksum to compare.
                let known = (pos.wal_checksum1, pos.wal_checksum2) != (0, 0);
                if c.offset == pos.wal_offset
                    && (!known || c.checksum == (pos.wal_checksum1, pos.wal_checksum2))
                {
                    return Ok(Some(Some((h, c))));
                }
                return Ok(None);
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

    pub fn txid(&self) -> Txid {
        self.txid
    }

    pub fn checksum(&self) -> Checksum {
        self.last_post
    }

    fn table_checksum(&self) -> Checksum {
        table_sum(&self.pages)
    }

    /// Writes an L0 file holding every page (a snapshot when `txid` is 1).
    /// The database checksum of the database file alone (no WAL).
    fn file_checksum(&self) -> Result<Checksum> {
        let mut r = &self.db_file;
        std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(0))?;
        Ok(ltx_format::checksum_database(std::io::BufReader::new(r))?.0)
    }

    fn write_full(&mut self, txid: Txid, pre: Option<Checksum>, why: &str) -> Result<Synced> {
        let db_file = &self.db_file;
        let mut src = DbSource::open(db_file, &self.db)?;
        let ps = src.page_size;
        let lock = lock_pgno(ps);
        let mut h = Header::new(ps, src.commit, txid, txid);
        h.timestamp_ms = now_ms();
        match pre {
            Some(p) if txid.0 > 1 && p.is_well_formed() => h.pre_apply_checksum = p,
            Some(_) if txid.0 > 1 => h.flags = HEADER_FLAG_NO_CHECKSUM,
            _ => {}
        }
        if let Some((wh, c)) = src.wal_position() {
            h.wal_offset = 32;
            h.wal_size = (c.offset - 32) as i64;
            h.wal_salt1 = wh.salt1;
            h.wal_salt2 = wh.salt2;
        }
        let mut pages = vec![0u64; src.commit as usize];
        let mut buf = vec![0u8; ps.as_usize()];
        let commit = src.commit;
        let no_checksum = h.no_checksum();
        let path = write_ltx(&self.l0_dir, &format_filename(txid, txid), |w| {
            let mut enc = Encoder::new(w, h)?;
            for pgno in 1..=commit {
                if pgno == lock {
                    continue;
                }
                src.read_page(pgno, &mut buf)?;
                enc.encode_page(pgno, &buf)?;
                pages[pgno as usize - 1] = checksum_page(pgno, &buf);
            }
            let post = if no_checksum {
                Checksum::ZERO
            } else {
                enc.pages_checksum()
            };
            enc.finish(post)?;
            Ok(())
        })?;
        self.pages = pages;
        self.commit = commit;
        self.page_size = ps;
        self.wal = src.wal_position();
        self.txid = txid;
        self.last_post = self.table_checksum();
        self.persist()?;
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        if txid.0 == 1 {
            info!(db = %self.db.display(), pages = commit, bytes, "wrote the initial snapshot");
        } else {
            warn!(db = %self.db.display(), txid = %txid, pages = commit, bytes, "wrote a full-page file: {why}");
        }
        Ok(Synced {
            txid,
            path,
            pages: commit as usize,
            bytes,
            full: true,
            transactions: 0,
        })
    }

    fn persist(&self) -> Result<()> {
        let (salt1, salt2, seq, offset, chk) = match &self.wal {
            Some((h, c)) => (h.salt1, h.salt2, h.checkpoint_seq, c.offset, c.checksum),
            None => (0, 0, 0, 0, (0, 0)),
        };
        write_json(
            &self.position_path,
            &Position {
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
            },
        )
    }

    /// Ships every frame committed since the last sync as the next L0 file.
    pub fn sync(&mut self) -> Result<Option<Synced>> {
        // Pin the WAL as it is now before reading it; release the old pin
        // only after shipping.
        let next = 1 - self.held;
        begin_read(&self.conns[next])?;
        let result = self.sync_pinned();
        end_read(&self.conns[self.held]);
        self.held = next;
        result
    }

    fn sync_pinned(&mut self) -> Result<Option<Synced>> {
        let wp = wal_path(&self.db);
        let Some(header) = read_wal_header(&wp)? else {
            return Ok(None);
        };
        let start = match &self.wal {
            Some((h, c)) if h.salt1 == header.salt1 && h.salt2 == header.salt2 => *c,
            prev => {
                // A new WAL generation. Continuous if we caused the restart by
                // a full checkpoint, or if it directly follows the one we
                // know; otherwise prove it against the database file.
                let expected = match (self.expect_restart, prev) {
                    (Some(e), Some((h, _))) => {
                        e.salt1 == h.salt1
                            && e.salt2 == h.salt2
                            && header.checkpoint_seq == e.checkpoint_seq.wrapping_add(1)
                    }
                    _ => false,
                };
                if !expected && !self.database_file_matches()? {
                    let txid = Txid(self.txid.0 + 1);
                    let pre = self.last_post;
                    return self
                        .write_full(
                            txid,
                            Some(pre),
                            "the WAL was restarted past frames sluice had not read",
                        )
                        .map(Some);
                }
                WalCursor {
                    offset: 32,
                    checksum: header.checksum,
                }
            }
        };
        self.expect_restart = None;
        let f = File::open(&wp)?;
        let mut rf = &f;
        std::io::Seek::seek(&mut rf, std::io::SeekFrom::Start(start.offset))?;
        let mut reader = WalReader::resume(std::io::BufReader::new(rf), header, start);
        let Some(frames) = scan_committed(&mut reader)? else {
            self.wal = Some((header, start));
            return Ok(None);
        };
        let txid = Txid(self.txid.0 + 1);
        let mut h = Header::new(self.page_size, frames.commit, txid, txid);
        h.timestamp_ms = now_ms();
        h.pre_apply_checksum = self.last_post;
        if !self.last_post.is_well_formed() {
            h.flags = HEADER_FLAG_NO_CHECKSUM;
            h.pre_apply_checksum = Checksum::ZERO;
        }
        h.wal_offset = start.offset as i64;
        h.wal_size = (frames.end.offset - start.offset) as i64;
        h.wal_salt1 = header.salt1;
        h.wal_salt2 = header.salt2;
        let lock = lock_pgno(self.page_size);
        let ps = self.page_size.as_usize();
        let commit = frames.commit as usize;
        let mut table = self.pages.clone();
        let old_len = table.len();
        table.resize(commit, 0);
        let mut buf = vec![0u8; ps];
        let zero = vec![0u8; ps];
        let no_checksum = h.no_checksum();
        let path = write_ltx(&self.l0_dir, &format_filename(txid, txid), |w| {
            let mut enc = Encoder::new(w, h)?;
            for pgno in 1..=frames.commit {
                if pgno == lock {
                    continue;
                }
                let idx = pgno as usize - 1;
                let data: &[u8] = if let Some(&off) = frames.pages.get(&pgno) {
                    f.read_exact_at(&mut buf, off)?;
                    &buf
                } else if idx >= old_len {
                    &zero
                } else {
                    continue;
                };
                enc.encode_page(pgno, data)?;
                table[idx] = checksum_page(pgno, data);
            }
            let post = if no_checksum {
                Checksum::ZERO
            } else {
                table_sum(&table)
            };
            enc.finish(post)?;
            Ok(())
        })?;
        self.pages = table;
        self.commit = frames.commit;
        self.txid = txid;
        self.last_post = self.table_checksum();
        self.wal = Some((header, frames.end));
        self.persist()?;
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        Ok(Some(Synced {
            txid,
            path,
            pages: frames.pages.len(),
            bytes,
            full: false,
            transactions: frames.transactions,
        }))
    }

    /// The database file alone has the checksum of the last shipped state.
    fn database_file_matches(&self) -> Result<bool> {
        Ok(self.file_checksum()? == self.last_post)
    }

    /// Fails if the database file was deleted or replaced by another file
    /// since it was opened: what is captured would no longer be that file.
    pub fn check_identity(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let held = self.db_file.metadata()?;
        match std::fs::metadata(&self.db) {
            Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => Ok(()),
            Ok(_) => bail!(
                "database {} was replaced by another file while replicated; restart sluice to replicate the new file (it will write a full-page file)",
                self.db.display()
            ),
            Err(_) => bail!(
                "database {} was deleted while replicated; restore it or remove it from the config",
                self.db.display()
            ),
        }
    }

    /// Writes the WAL's dirty pages to disk. Under a heavy load this keeps
    /// the application's own checkpoints (and our sealed fsyncs) from having
    /// to flush hundreds of megabytes inside a commit.
    pub fn flush_wal(&self) {
        if let Ok(w) = File::open(wal_path(&self.db)) {
            let _ = w.sync_data();
        }
    }

    /// WAL frames after the header.
    pub fn wal_frames(&self) -> u64 {
        self.wal
            .map_or(0, |(h, c)| (c.offset.saturating_sub(32)) / h.frame_size())
    }

    pub fn wal_bytes(&self) -> u64 {
        std::fs::metadata(wal_path(&self.db)).map_or(0, |m| m.len())
    }

    /// Checkpoints if the WAL has grown past the threshold: seal (take the
    /// write lock so nothing new commits), ship to the WAL end, PASSIVE
    /// checkpoint, release. Returns the file shipped while sealed, if any.
    pub fn maybe_checkpoint(&mut self, force: bool) -> Result<Option<Synced>> {
        if !force && self.wal_frames() < u64::from(self.checkpoint_pages) {
            return Ok(None);
        }
        // First, without blocking writers: copy what is shipped. Our pin (begun
        // before the last sync read the WAL) stops the copy at shipped frames.
        let t0 = Instant::now();
        let idle = 1 - self.held;
        let unlocked_busy: i64 = self.conns[idle]
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(0))
            .unwrap_or(1);
        let unlocked = t0.elapsed();
        // Flush the WAL's dirty pages before sealing: the fsyncs made under
        // the write lock (the L0 file, the position) would otherwise force
        // the filesystem to write out the whole grown WAL first. (SQLite
        // takes no locks on the -wal file, so this descriptor is harmless.)
        self.flush_wal();
        // Then seal briefly: take the write lock so nothing new commits, ship
        // the few frames written since, copy them, release.
        if self.writer.execute_batch("BEGIN IMMEDIATE").is_err() {
            // A long write transaction: try again at the next sync.
            return Ok(None);
        }
        let t1 = Instant::now();
        let mut sealed_result = (0, 0, 0);
        let shipped = self.sync();
        let sealed_sync = t1.elapsed();
        let result = shipped.and_then(|s| {
            // Our own read pin would stop the checkpoint from finishing.
            end_read(&self.conns[self.held]);
            let r: rusqlite::Result<(i64, i64, i64)> =
                self.conns[self.held].query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                });
            let (busy, log, done) = r?;
            sealed_result = (busy, log, done);
            if busy == 0 && log == done {
                // Fully copied: the next writer restarts the WAL.
                self.expect_restart = self.wal.map(|(h, _)| h);
            }
            self.checkpoints += 1;
            begin_read(&self.conns[self.held])?;
            Ok(s)
        });
        let _ = self.writer.execute_batch("ROLLBACK");
        // Under a heavy write load the application's own autocheckpoint often
        // holds the checkpoint lock: then ours report busy and copy nothing.
        tracing::debug!(
            unlocked_busy,
            sealed_busy = sealed_result.0,
            sealed_log_frames = sealed_result.1,
            sealed_copied_frames = sealed_result.2,
            unlocked_ms = unlocked.as_millis() as u64,
            sealed_sync_ms = sealed_sync.as_millis() as u64,
            sealed_total_ms = t1.elapsed().as_millis() as u64,
            "checkpoint"
        );
        result
    }

    /// Stops pinning the WAL (for shutdown).
    pub fn close(self) {
        end_read(&self.conns[self.held]);
    }
}

/// The persisted position, or a newer one read from the newest staged L0
/// file: a crash between renaming a file into place and persisting the
/// position leaves the file ahead, and the file is the truth (it may already
/// be uploaded, so its TXID must never be written again).
fn newest_position(pos: Option<Position>, l0_dir: &Path) -> Result<Option<Position>> {
    let Some(newest) = super::files::list_level(l0_dir.parent().unwrap_or(l0_dir), 0)?.pop() else {
        return Ok(pos);
    };
    if pos.as_ref().is_some_and(|p| p.txid >= newest.max.0) {
        return Ok(pos);
    }
    let s = ltx_format::verify(std::io::BufReader::new(File::open(&newest.path)?))
        .with_context(|| format!("staged file {}", newest.path.display()))?;
    let h = s.header;
    warn!(file = %newest.path.display(), "position taken from the newest staged file (the last run stopped before recording it)");
    Ok(Some(Position {
        version: 1,
        txid: h.max_txid.0,
        checksum: s.trailer.post_apply_checksum.to_string(),
        page_size: h.page_size.get(),
        commit: h.commit,
        wal_salt1: h.wal_salt1,
        wal_salt2: h.wal_salt2,
        wal_checkpoint_seq: 0,
        wal_offset: (h.wal_offset + h.wal_size) as u64,
        wal_checksum1: 0,
        wal_checksum2: 0,
    }))
}

/// The database checksum of a page-checksum table (XOR, bit 63 forced).
fn table_sum(table: &[u64]) -> Checksum {
    let mut s = DbChecksum::new();
    for &c in table {
        s.toggle(c);
    }
    s.value()
}

fn read_wal_header(wp: &Path) -> Result<Option<WalHeader>> {
    let f = match File::open(wp) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", wp.display())),
    };
    if f.metadata()?.len() < 32 {
        return Ok(None);
    }
    let mut hb = [0u8; 32];
    f.read_exact_at(&mut hb, 0)?;
    Ok(Some(
        WalHeader::parse(&hb).with_context(|| wp.display().to_string())?,
    ))
}
