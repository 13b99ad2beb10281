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

use std::collections::{BTreeMap, BTreeSet};
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
use s3_backend::layout::SNAPSHOT_LEVEL;
use tracing::{info, warn};

use super::position::{read_json, write_json, write_json_durable, Position};
use crate::capture::{now_ms, shm_path, wal_path, write_ltx, write_ltx_replacing, DbSource};

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
    /// WAL bytes the file covers.
    pub wal_bytes: u64,
}

/// Captured changes not yet in an L0 file: the L0 file for `txid` as it would
/// be written now is also on disk as `pending.ltx`.
#[derive(Debug)]
struct Pending {
    txid: Txid,
    /// Pre-apply checksum of that L0 file (the state after the last L0).
    pre: Checksum,
    /// Database size in pages at the last L0 file: pages past it that no
    /// frame wrote are zero.
    base_commit: u32,
    pages: BTreeMap<u32, Vec<u8>>,
    transactions: u64,
    wal_bytes: u64,
    /// WAL salts and offset where the pending frames began.
    wal_start: (u32, u32, u64),
}

const PENDING_FILE: &str = "pending.ltx";

/// Flush the WAL before sealing once this much was shipped since the last
/// flush.
const SEAL_FLUSH_BYTES: u64 = 1 << 20;

/// Unshipped frames a checkpoint that is due ships under its seal.
const SEAL_INLINE_FRAMES: u32 = 1024;

/// WAL frames after which a pin on read mark 0 is moved at once: well below
/// SQLite's default autocheckpoint threshold (1000 frames).
const EARLY_REPIN_FRAMES: u32 = 256;

/// The read buffer of WAL scans.
const WAL_READ_BUFFER: usize = 256 << 10;

/// How long a seal waits for the application's own checkpoint to finish.
const SEAL_CHECKPOINT_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

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
    /// WAL bytes shipped since the WAL was last flushed to disk: an estimate
    /// of its dirty pages (the application writes what we then ship).
    unflushed: u64,
    /// The `-shm` file, open for the engine's whole life (closing a
    /// descriptor of it would drop SQLite's locks on it: our read pins).
    /// Read only for scheduling hints, never for correctness.
    shm: Option<File>,
    /// Our pin is probably on read mark 0 (begun on a fully checkpointed
    /// WAL). Such a reader blocks every backfill, and an application whose
    /// WAL is past its autocheckpoint threshold then retries a futile
    /// checkpoint over the whole WAL after each commit: move the pin (by a
    /// sync) soon after the application writes.
    zero_pin: bool,
    /// Whether the last `maybe_checkpoint` took the write lock (and so
    /// synced under it).
    sealed: bool,
    /// Frames captured (durably, in `pending.ltx`) but not yet in an L0
    /// file: a seal's tail and pin moves under a heavy load, folded into the
    /// next interval's L0 so each interval uploads one file.
    pending: Option<Pending>,
    /// Capture into `pending` instead of writing an L0 file.
    capture_pending: bool,
    staging: PathBuf,
    /// Skip persisting the position in `sync_pinned` (the seal persists it
    /// after releasing the write lock; the staged file is the truth meanwhile).
    defer_persist: bool,
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
    // Cached statements: a sync begins and ends a read transaction each time.
    c.prepare_cached("BEGIN")?.execute([])?;
    // A read transaction starts at the first read.
    c.prepare_cached("SELECT 1 FROM sqlite_schema LIMIT 1")?
        .query([])?
        .next()?;
    Ok(())
}

fn end_read(c: &Connection) {
    if let Ok(mut st) = c.prepare_cached("ROLLBACK") {
        let _ = st.execute([]);
    }
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
        // A position file a power failure left corrupt is recovered from the
        // staged files (see `position`).
        let saved: Option<Position> = read_json(&position_path).unwrap_or_else(|e| {
            warn!("{e:#}; recovering the position from the staged files");
            None
        });
        recover_pending(staging, &l0_dir, saved.as_ref().map_or(0, |p| p.txid))?;
        let pos = newest_position(saved, &l0_dir)?;
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
            unflushed: 0,
            shm: None,
            zero_pin: false,
            sealed: false,
            pending: None,
            capture_pending: false,
            staging: staging.to_path_buf(),
            defer_persist: false,
        };
        engine.shm = open_shm(db);
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
        // A full file replaces what is pending (same TXID, same predecessor).
        let pre = match self.pending.take() {
            Some(p) => {
                let _ = std::fs::remove_file(self.staging.join(PENDING_FILE));
                Some(p.pre)
            }
            None => pre,
        };
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
            wal_bytes: 0,
        })
    }

    fn persist(&self) -> Result<()> {
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
        if durable {
            write_json_durable(&self.position_path, &pos)
        } else {
            write_json(&self.position_path, &pos)
        }
    }

    /// Ships every frame committed since the last sync as the next L0 file.
    pub fn sync(&mut self) -> Result<Option<Synced>> {
        // Pin the WAL as it is now before reading it; release the old pin
        // only after shipping.
        let next = 1 - self.held;
        // A reader begun on a fully checkpointed WAL takes read mark 0.
        self.zero_pin = self
            .shm_state()
            .is_some_and(|s| s.max_frame == s.backfilled);
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
        // Large reads: under a heavy load a sync scans hundreds of megabytes.
        let mut reader = WalReader::resume(
            std::io::BufReader::with_capacity(WAL_READ_BUFFER, rf),
            header,
            start,
        );
        let frames = scan_committed(&mut reader)?;
        if frames.is_none() && (self.capture_pending || self.pending.is_none()) {
            self.wal = Some((header, start));
            return Ok(None);
        }
        // The file for the next TXID: what is pending plus the new frames.
        let (txid, pre, base_len) = match &self.pending {
            Some(p) => (p.txid, p.pre, p.base_commit as usize),
            None => (Txid(self.txid.0 + 1), self.last_post, self.pages.len()),
        };
        let end = frames.as_ref().map_or(start, |fr| fr.end);
        let new_commit = frames.as_ref().map_or(self.commit, |fr| fr.commit);
        let wal_from = match &self.pending {
            Some(p) if (p.wal_start.0, p.wal_start.1) == (header.salt1, header.salt2) => {
                p.wal_start.2
            }
            Some(_) => 32,
            None => start.offset,
        };
        let mut h = Header::new(self.page_size, new_commit, txid, txid);
        h.timestamp_ms = now_ms();
        h.pre_apply_checksum = pre;
        if !pre.is_well_formed() {
            h.flags = HEADER_FLAG_NO_CHECKSUM;
            h.pre_apply_checksum = Checksum::ZERO;
        }
        h.wal_offset = wal_from as i64;
        h.wal_size = (end.offset - wal_from) as i64;
        h.wal_salt1 = header.salt1;
        h.wal_salt2 = header.salt2;
        let lock = lock_pgno(self.page_size);
        let ps = self.page_size.as_usize();
        let mut table = self.pages.clone();
        table.resize(new_commit as usize, 0);
        // Every page the file holds: written by a new frame, pending, or new
        // since the last L0 file (zero unless written).
        let mut pgnos: BTreeSet<u32> = BTreeSet::new();
        if let Some(fr) = &frames {
            pgnos.extend(fr.pages.keys().copied());
        }
        if let Some(p) = &self.pending {
            pgnos.extend(p.pages.keys().copied());
        }
        pgnos.extend((base_len as u32 + 1)..=new_commit);
        pgnos.retain(|&p| p <= new_commit && p != lock);
        let mut buf = vec![0u8; ps];
        let zero = vec![0u8; ps];
        let no_checksum = h.no_checksum();
        let pending_mode = self.capture_pending;
        let mut captured: Vec<(u32, Vec<u8>)> = Vec::new();
        let pending_pages = self.pending.as_ref().map(|p| &p.pages);
        let encode = |w: &mut std::io::BufWriter<crate::capture::SyncEvery<'_>>| -> Result<()> {
            let mut enc = Encoder::new(w, h)?;
            for &pgno in &pgnos {
                let idx = pgno as usize - 1;
                let data: &[u8] =
                    if let Some(&off) = frames.as_ref().and_then(|fr| fr.pages.get(&pgno)) {
                        f.read_exact_at(&mut buf, off)?;
                        if pending_mode {
                            captured.push((pgno, buf.clone()));
                        }
                        &buf
                    } else if let Some(d) = pending_pages.and_then(|m| m.get(&pgno)) {
                        d
                    } else {
                        &zero
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
        };
        let path = if pending_mode {
            write_ltx_replacing(&self.staging, PENDING_FILE, encode)?
        } else {
            write_ltx(&self.l0_dir, &format_filename(txid, txid), encode)?
        };
        let (transactions, wal_bytes) = frames
            .as_ref()
            .map_or((0, 0), |fr| (fr.transactions, fr.end.offset - start.offset));
        self.pages = table;
        self.commit = new_commit;
        self.last_post = self.table_checksum();
        self.wal = Some((header, end));
        self.unflushed += wal_bytes;
        if pending_mode {
            let p = self.pending.get_or_insert_with(|| Pending {
                txid,
                pre,
                base_commit: base_len as u32,
                pages: BTreeMap::new(),
                transactions: 0,
                wal_bytes: 0,
                wal_start: (header.salt1, header.salt2, start.offset),
            });
            p.pages.extend(captured);
            p.pages.retain(|&pg, _| pg <= new_commit);
            p.transactions += transactions;
            p.wal_bytes += wal_bytes;
            return Ok(None);
        }
        let (transactions, wal_bytes) = match self.pending.take() {
            Some(p) => {
                // Folded into the L0 file; a leftover is recognised at start-up.
                let _ = std::fs::remove_file(self.staging.join(PENDING_FILE));
                (transactions + p.transactions, wal_bytes + p.wal_bytes)
            }
            None => (transactions, wal_bytes),
        };
        self.txid = txid;
        if !self.defer_persist {
            self.persist()?;
        }
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        Ok(Some(Synced {
            txid,
            path,
            pages: pgnos.len(),
            bytes,
            full: false,
            transactions,
            wal_bytes,
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

    /// Writes the WAL's dirty pages to disk once at least `min_bytes` were
    /// shipped since the last flush. Under a heavy load this keeps the
    /// application's own checkpoints (and our sealed fsyncs) from having to
    /// flush hundreds of megabytes inside a commit; under a light one it
    /// costs nothing.
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

    /// One sync, and the checkpoint when one is due. When the checkpoint is
    /// due and little is unshipped, the sync happens under the seal: one L0
    /// file instead of two.
    /// `last`: the final sync before stopping (nothing is left pending).
    pub fn sync_and_checkpoint(&mut self, last: bool) -> Result<(Option<Synced>, Option<Synced>)> {
        if let Some(unshipped) = self.unshipped_frames() {
            let due = self.wal_frames() + u64::from(unshipped) >= u64::from(self.checkpoint_pages);
            if due && unshipped <= SEAL_INLINE_FRAMES {
                let sealed = self.maybe_checkpoint(true, false)?;
                if self.sealed {
                    return Ok((None, sealed));
                }
                // The write lock was not available: ship without it.
            }
        }
        let a = self.sync()?;
        let b = self.maybe_checkpoint(false, !last)?;
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

    /// Frames committed in the WAL generation we are reading and not shipped
    /// yet, by the WAL-index (a scheduling hint only).
    fn unshipped_frames(&self) -> Option<u32> {
        let s = self.shm_state()?;
        let shipped = u32::try_from(self.wal_frames()).ok()?;
        s.max_frame.checked_sub(shipped)
    }

    /// Checkpoints if the WAL has grown past the threshold: seal (take the
    /// write lock so nothing new commits), ship to the WAL end, PASSIVE
    /// checkpoint, release. Returns the file shipped while sealed, if any.
    pub fn maybe_checkpoint(&mut self, force: bool, tail_pending: bool) -> Result<Option<Synced>> {
        self.sealed = false;
        if !force && self.wal_frames() < u64::from(self.checkpoint_pages) {
            return Ok(None);
        }
        if self.fully_checkpointed() {
            // Everything is copied; the next writer restarts the WAL.
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
        // the write lock (the L0 file, the checkpoint's) would otherwise force
        // the filesystem to write out the whole grown WAL first. (SQLite
        // takes no locks on the -wal file, so this descriptor is harmless.)
        self.flush_wal(SEAL_FLUSH_BYTES);
        // Then seal briefly: take the write lock so nothing new commits, ship
        // the few frames written since, copy them, release.
        if self.writer.execute_batch("BEGIN IMMEDIATE").is_err() {
            // A long write transaction: try again at the next sync.
            return Ok(None);
        }
        self.sealed = true;
        let t1 = Instant::now();
        let mut sealed_result = (0, 0, 0);
        let mut attempts = 0u32;
        self.defer_persist = true;
        // After an interval's sync, the few frames written since go into the
        // pending file (durable, folded into the next L0): one L0 upload per
        // interval even under a maximal load.
        self.capture_pending = tail_pending;
        let shipped = self.sync();
        self.capture_pending = false;
        self.defer_persist = false;
        let sealed_sync = t1.elapsed();
        let result = shipped.and_then(|s| {
            // Our own read pin would stop the checkpoint from finishing.
            end_read(&self.conns[self.held]);
            // The application's own autocheckpoint may hold the checkpoint
            // lock (PASSIVE never waits for it). It cannot start another one
            // while we hold the write lock, so retry briefly: a checkpoint
            // that copies everything lets the next writer restart the WAL,
            // which keeps the WAL bounded.
            let deadline = Instant::now() + SEAL_CHECKPOINT_WAIT;
            loop {
                attempts += 1;
                let r: rusqlite::Result<(i64, i64, i64)> =
                    self.conns[self.held].query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    });
                sealed_result = r?;
                if sealed_result.0 == 0 || Instant::now() >= deadline || attempts >= 1000 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
            let (busy, log, done) = sealed_result;
            if busy == 0 && log == done {
                // Fully copied: the next writer restarts the WAL.
                self.expect_restart = self.wal.map(|(h, _)| h);
            }
            self.checkpoints += 1;
            self.zero_pin = busy == 0 && log == done;
            begin_read(&self.conns[self.held])?;
            Ok(s)
        });
        let _ = self.writer.execute_batch("ROLLBACK");
        let sealed_total = t1.elapsed();
        // The position of a file shipped under the seal, now the lock is free.
        let result = result.and_then(|s| {
            if s.is_some() {
                self.persist()?;
            }
            Ok(s)
        });
        tracing::debug!(
            unlocked_busy,
            sealed_busy = sealed_result.0,
            sealed_log_frames = sealed_result.1,
            sealed_copied_frames = sealed_result.2,
            sealed_attempts = attempts,
            unlocked_ms = unlocked.as_millis() as u64,
            sealed_sync_ms = sealed_sync.as_millis() as u64,
            sealed_total_ms = sealed_total.as_millis() as u64,
            "checkpoint"
        );
        result
    }

    /// The WAL-index header and checkpoint counters, when readable.
    fn shm_state(&self) -> Option<ShmState> {
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
    fn fully_checkpointed(&self) -> bool {
        self.shm_state()
            .is_some_and(|s| s.max_frame > 0 && s.backfilled >= s.max_frame)
    }

    /// Whether the pin may be on read mark 0.
    pub fn zero_pinned(&self) -> bool {
        self.zero_pin
    }

    /// Stops pinning the WAL and makes the position durable (for shutdown).
    pub fn close(self) {
        end_read(&self.conns[self.held]);
        if let Err(e) = self.write_position(true) {
            warn!(db = %self.db.display(), "cannot record the position: {e:#}");
        }
    }
}

/// The persisted position, or a newer one read from the newest staged file:
/// a crash between renaming a file into place and recording the position (or
/// a power failure that lost the unsynced position file) leaves the file
/// ahead, and the file is the truth (it may already be uploaded, so its TXID
/// must never be written again). An L0 file also gives the WAL position; a
/// newer compacted file (its L0 files already cleaned up) gives only the
/// TXID and checksum, so continuity is then proven against the database
/// file alone.
fn newest_position(pos: Option<Position>, l0_dir: &Path) -> Result<Option<Position>> {
    let Some(newest) = newest_staged(l0_dir.parent().unwrap_or(l0_dir))? else {
        return Ok(pos);
    };
    if pos.as_ref().is_some_and(|p| p.txid >= newest.max.0) {
        return Ok(pos);
    }
    let s = ltx_format::verify(std::io::BufReader::new(File::open(&newest.path)?))
        .with_context(|| format!("staged file {}", newest.path.display()))?;
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

/// The staged file with the highest TXID, over every level (an L0 file on
/// a tie: it also carries the WAL position).
fn newest_staged(ltx: &Path) -> Result<Option<super::files::LocalFile>> {
    let mut newest: Option<super::files::LocalFile> = None;
    for level in 0..=SNAPSHOT_LEVEL {
        if let Some(f) = super::files::list_level(ltx, level)?.pop() {
            if newest.as_ref().is_none_or(|n| f.max > n.max) {
                newest = Some(f);
            }
        }
    }
    Ok(newest)
}

/// A pending file left by the last run (it stopped between capturing a
/// seal's tail and folding it into an L0 file) becomes the next L0 file; one
/// already folded is removed.
fn recover_pending(staging: &Path, l0_dir: &Path, saved_txid: u64) -> Result<()> {
    let path = staging.join(PENDING_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let newest = newest_staged(l0_dir.parent().unwrap_or(l0_dir))?
        .map_or(0, |f| f.max.0)
        .max(saved_txid);
    match ltx_format::verify(std::io::BufReader::new(file)) {
        Ok(s) if s.header.min_txid.0 == newest + 1 => {
            let t = s.header.max_txid;
            std::fs::create_dir_all(l0_dir)?;
            std::fs::rename(&path, l0_dir.join(format_filename(t, t)))?;
            File::open(l0_dir)?.sync_all()?;
            warn!(txid = %t, "recovered frames captured before the last run stopped (pending file)");
        }
        Ok(s) if s.header.max_txid.0 <= newest => {
            std::fs::remove_file(&path)?;
        }
        other => {
            let why = match other {
                Ok(s) => format!("TXID {} does not follow {newest:016x}", s.header.max_txid),
                Err(e) => e.to_string(),
            };
            warn!(file = %path.display(), "discarding the pending file: {why}");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// What the WAL-index says (see <https://www.sqlite.org/walformat.html>):
/// `mxFrame` of its header and `nBackfill` of its checkpoint info.
#[derive(Debug, Clone, Copy)]
struct ShmState {
    max_frame: u32,
    backfilled: u32,
}

fn open_shm(db: &Path) -> Option<File> {
    File::open(shm_path(db)).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn app(db: &Path) -> Connection {
        let c = Connection::open(db).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        c
    }

    fn insert(c: &Connection, from: i64, n: i64) {
        for i in from..from + n {
            c.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i:06}")])
                .unwrap();
        }
    }

    /// The database checksum of the committed state (main file plus WAL).
    fn db_checksum(db: &Path) -> Checksum {
        let f = File::open(db).unwrap();
        let mut src = DbSource::open(&f, db).unwrap();
        let lock = lock_pgno(src.page_size);
        let mut buf = vec![0u8; src.page_size.as_usize()];
        let mut sum = DbChecksum::new();
        for pgno in 1..=src.commit {
            if pgno != lock {
                src.read_page(pgno, &mut buf).unwrap();
                sum.toggle(checksum_page(pgno, &buf));
            }
        }
        sum.value()
    }

    #[test]
    fn a_pending_tail_left_by_a_crash_becomes_the_next_l0_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let staging = dir.path().join("staging");
        let c = app(&db);
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
        insert(&c, 0, 50);
        let (mut e, first) = Engine::open(&db, &staging, 1000, false).unwrap();
        assert_eq!(first.unwrap().txid, Txid(1));
        insert(&c, 50, 50);
        assert_eq!(e.sync().unwrap().unwrap().txid, Txid(2));
        // A pin move captures into the pending file, not an L0 file.
        insert(&c, 100, 50);
        e.repin().unwrap();
        let l0 = staging.join("ltx").join("0");
        assert!(staging.join(PENDING_FILE).exists());
        assert!(!l0.join(format_filename(Txid(3), Txid(3))).exists());
        let want = e.checksum();
        // A crash: the engine goes away without folding the pending file.
        drop(e);
        let (mut e, full) = Engine::open(&db, &staging, 1000, false).unwrap();
        assert!(full.is_none(), "no full-page file after a pending tail");
        assert!(!staging.join(PENDING_FILE).exists());
        let promoted = l0.join(format_filename(Txid(3), Txid(3)));
        let s =
            ltx_format::verify(std::io::BufReader::new(File::open(&promoted).unwrap())).unwrap();
        assert_eq!(s.trailer.post_apply_checksum, want);
        assert_eq!((e.txid(), e.checksum()), (Txid(3), want));
        // And the chain continues on top of it, equal to the database.
        insert(&c, 150, 50);
        let s4 = e.sync().unwrap().unwrap();
        assert_eq!(s4.txid, Txid(4));
        let f4 =
            ltx_format::verify(std::io::BufReader::new(File::open(&s4.path).unwrap())).unwrap();
        assert_eq!(f4.header.pre_apply_checksum, want);
        assert_eq!(f4.trailer.post_apply_checksum, db_checksum(&db));
    }
}
