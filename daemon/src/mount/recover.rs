//! Recovery of one database before the primary filesystem is mounted, on
//! the backing files (no application can reach them yet):
//!
//! 1. a hot rollback journal is rolled back (SQLite does it on first read);
//! 2. the newest durable history is found: the position hint, the staged
//!    files, and deferred files that survived (verified, then promoted);
//! 3. the database is read as of that position — the main file plus the WAL
//!    frames up to the position's offset when the WAL is still that
//!    generation — and its checksum compared with the position's;
//! 4. then every commit in the WAL past the position becomes an L0 file
//!    (a writer may have been told its commit succeeded when this daemon
//!    died inside the unlock: SQLite ignores unlock errors), and the WAL's
//!    uncommitted tail is cut off;
//! 5. where they disagree, a full-page file re-establishes the chain, and the
//!    reason is logged. Sluice never refuses to start and never asks for the
//!    volume to be wiped.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use ltx_format::wal::{WalCursor, WalHeader, WalReader};
use ltx_format::{
    checksum_page, lock_pgno, Checksum, Encoder, Header, PageSize, Txid, HEADER_FLAG_NO_CHECKSUM,
};
use tracing::{info, warn};

use super::capture::DbCapture;
use crate::pipeline::{Handoff, StagedL0};
use crate::staging::{StagingDir, StagingError};
use crate::state::read_json;
use crate::wal::engine::table_sum;
use crate::wal::error::{CaptureError, Result};
use crate::wal::position::Position;
use crate::wal::recover::{newest_position, read_wal_header};
use crate::wal::source::{now_ms, wal_path, DbSource};

/// The `-journal` path of a database.
pub fn journal_path(db: &Path) -> std::path::PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-journal");
    s.into()
}

/// Rolls back a hot journal: SQLite does so when it first reads the
/// database. Our connection never checkpoints a WAL on close. Returns
/// whether there was one.
fn roll_back_hot_journal(db: &Path) -> Result<bool> {
    let j = journal_path(db);
    let mut first = [0u8; 1];
    let hot = File::open(&j)
        .and_then(|f| f.read_exact_at(&mut first, 0))
        .is_ok_and(|()| first[0] != 0);
    if !hot {
        return Ok(false);
    }
    let err = CaptureError::sqlite(db);
    let c = rusqlite::Connection::open(db).map_err(err)?;
    let _ = c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    );
    let _: i64 = c
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(CaptureError::sqlite(db))?;
    warn!(db = %db.display(), "rolled back a hot journal left by a writer that stopped mid-transaction");
    Ok(true)
}

/// Deferred files that survived a crash become staged files if they are
/// whole and continue the chain: the next TXID, and the checksum the file
/// before ends at (unless either has none; a staged file whose trailer
/// cannot be read continues nothing). The chain stops before a TXID that
/// two files claim: one of them never committed, and which cannot be told.
/// The rest are removed (and recovery's check of the position against the
/// database then writes a full file if the database is ahead). `rolled_back`: the
/// database, when a hot journal was just rolled back; then the last file,
/// if it captured that very transaction at the database's fsync (its
/// application died before the commit point), is no transaction.
fn promote_survivors(staging: &StagingDir, rolled_back: Option<&Path>) -> Result<()> {
    let deferred = staging.list_deferred()?;
    if deferred.is_empty() {
        staging.spares_recovered();
        return Ok(());
    }
    // The files the chain may take: those before a TXID claimed twice.
    let mut candidates = deferred.len();
    if let Some(i) = deferred.windows(2).position(|w| w[0].max == w[1].max) {
        warn!(txid = %deferred[i].max, "two deferred files hold the same TXID; the chain stops before it");
        candidates = i;
    }
    let newest = staging.newest()?;
    let first = newest.as_ref().map_or(0, |f| f.max.0) + 1;
    // Where the chain ends: None for a file without a checksum.
    let mut post = match &newest {
        Some(f) => match post_apply_of(&f.path) {
            Some(p) => p,
            None => {
                warn!(file = %f.path.display(), "cannot read the newest staged file's trailer; no deferred file is taken");
                candidates = 0;
                None
            }
        },
        None => None,
    };
    let mut keep = Vec::new();
    for (next, f) in (first..).zip(&deferred[..candidates]) {
        let summary = File::open(&f.path)
            .ok()
            .and_then(|r| ltx_format::verify(std::io::BufReader::new(r)).ok())
            .filter(|s| {
                let h = &s.header;
                let chains = h.no_checksum() || post.is_none_or(|p| p == h.pre_apply_checksum);
                h.min_txid.0 == next && chains
            });
        let Some(s) = summary else { break };
        post = (!s.header.no_checksum()).then_some(s.trailer.post_apply_checksum);
        keep.push((f.max, f.path.as_path()));
    }
    if let (Some(db), Some(last)) = (rolled_back, deferred.get(keep.len().wrapping_sub(1))) {
        if never_committed(db, &last.path)? {
            warn!(file = %last.path.display(), "discarding the capture of a transaction that was rolled back (its application stopped after syncing the database, before the commit)");
            keep.pop();
        }
    }
    staging.promote_deferred(&keep, false)?;
    for f in &deferred[keep.len()..] {
        warn!(file = %f.path.display(), "discarding a deferred file that does not continue the chain");
        std::fs::remove_file(&f.path)
            .map_err(|e| CaptureError::Staging(StagingError::io("remove", &f.path, e)))?;
    }
    staging.spares_recovered();
    Ok(())
}

/// The post-apply checksum in the trailer of the LTX file at `path`:
/// `Some(None)` if the file has none, None if it cannot be read.
fn post_apply_of(path: &Path) -> Option<Option<Checksum>> {
    let (h, t) = crate::staging::read_ends(path)?;
    Some((!h.no_checksum()).then_some(t.post_apply_checksum))
}

/// Whether the rollback-journal capture at `file` holds a transaction that
/// the database, just rolled back, does not: its pre-apply checksum is the
/// database's and its post-apply checksum is not.
fn never_committed(db: &Path, file: &Path) -> Result<bool> {
    let read = |e: ltx_format::Error| CaptureError::read(file, std::io::Error::other(e));
    let f = File::open(file).map_err(|e| CaptureError::read(file, e))?;
    let s = ltx_format::verify(std::io::BufReader::new(f)).map_err(read)?;
    if s.header.wal_offset != 0 {
        return Ok(false);
    }
    let db_file = File::open(db).map_err(|e| CaptureError::read(db, e))?;
    let (table, _) = read_state(&db_file, db, s.header.page_size, None)?;
    let now = table_sum(&table);
    Ok(now == s.header.pre_apply_checksum && now != s.trailer.post_apply_checksum)
}

/// Page checksums of the database: the main file, then the WAL frames up to
/// `upto` (committed ones only). Returns the table and the WAL cursor
/// reached.
fn read_state(
    db_file: &File,
    db: &Path,
    page_size: PageSize,
    upto: Option<u64>,
) -> Result<(Vec<u64>, Option<WalCursor>)> {
    let ps = u64::from(page_size.get());
    let len = db_file
        .metadata()
        .map_err(|e| CaptureError::read(db, e))?
        .len();
    let mut commit = (len / ps) as u32;
    let mut table = vec![0u64; commit as usize];
    let mut buf = vec![0u8; page_size.as_usize()];
    let lock = lock_pgno(page_size);
    for pgno in (1..=commit).filter(|&p| p != lock) {
        db_file
            .read_exact_at(&mut buf, u64::from(pgno - 1) * ps)
            .map_err(|e| CaptureError::read(db, e))?;
        table[pgno as usize - 1] = checksum_page(pgno, &buf);
    }
    let Some(upto) = upto else {
        return Ok((table, None));
    };
    let wp = wal_path(db);
    let f = File::open(&wp).map_err(|e| CaptureError::read(&wp, e))?;
    let mut r =
        WalReader::new(std::io::BufReader::new(&f)).map_err(|e| CaptureError::read(&wp, e))?;
    let mut end = r.cursor();
    let mut pending: Vec<(u32, u64)> = Vec::new();
    while r.cursor().offset < upto {
        let Some(fh) = r
            .next_frame(&mut buf)
            .map_err(|e| CaptureError::read(&wp, e))?
        else {
            break;
        };
        pending.push((fh.pgno, checksum_page(fh.pgno, &buf)));
        if fh.commit != 0 {
            commit = fh.commit;
            table.resize(commit as usize, 0);
            for (p, c) in pending.drain(..) {
                if p <= commit && p != lock {
                    table[p as usize - 1] = c;
                }
            }
            end = r.cursor();
        }
    }
    Ok((table, Some(end)))
}

/// Opens the capture of `db`: continuous with its history (or re-established
/// by a full-page file), and caught up with every commit in its WAL.
/// `at_mount`: before the filesystem is mounted, with no application
/// around: roll back a hot journal, promote deferred files that survived,
/// and cut the WAL's uncommitted tail. Otherwise (a database seen for the
/// first time at its first commit point) the files are live: none of that.
pub fn open_capture(
    db: &Path,
    staging: &StagingDir,
    handoff: Handoff,
    at_mount: bool,
) -> Result<DbCapture> {
    staging.create()?;
    if at_mount {
        let rolled_back = roll_back_hot_journal(db)?;
        promote_survivors(staging, rolled_back.then_some(db))?;
    }
    let saved: Option<Position> = read_json(&staging.position_path()).unwrap_or_else(|e| {
        warn!("{e}; recovering the position from the staged files");
        None
    });
    let pos = newest_position(saved, staging)?;
    let db_file = File::open(db)
        .map_err(|e| CaptureError::Database(format!("cannot open {}: {e}", db.display())))?;
    let page_size = DbSource::open(&db_file, db)?.page_size;
    let resumed = match &pos {
        Some(p) => resume(&db_file, db, page_size, p)?,
        None => None,
    };
    let mut cap = match resumed {
        Some((table, wal)) => {
            let p = pos.as_ref().map_or(0, |p| p.txid);
            info!(db = %db.display(), txid = p, "resumed from the persisted position");
            let post = table_sum(&table);
            DbCapture::new(
                db,
                db_file,
                staging.clone(),
                handoff.clone(),
                page_size,
                table,
                Txid(p),
                post,
                wal,
            )
        }
        None => {
            if let Some(p) = &pos {
                warn!(db = %db.display(), txid = p.txid, "the database does not match the persisted position (it changed while sluice was not mounted, or a power failure lost transactions); writing a full-page file");
            }
            let next = Txid(pos.as_ref().map_or(0, |p| p.txid) + 1);
            let pre = pos
                .as_ref()
                .and_then(|p| u64::from_str_radix(&p.checksum, 16).ok())
                .map(Checksum);
            let (table, post, wal) = write_full(&db_file, db, staging, next, pre, &handoff)?;
            DbCapture::new(
                db,
                db_file,
                staging.clone(),
                handoff.clone(),
                page_size,
                table,
                next,
                post,
                wal,
            )
        }
    };
    let caught_up = cap.wal_committed(true)?;
    if caught_up > 0 {
        warn!(db = %db.display(), transactions = caught_up, "captured commits found in the WAL (the last run ended before capturing them)");
    }
    if at_mount {
        cut_uncommitted_tail(db, &cap)?;
    }
    handoff.opened(cap.txid());
    Ok(cap)
}

/// The page table and WAL position at `pos`, if the database as it is now
/// continues it: the main file plus the WAL frames up to the position's
/// offset when the WAL is still that generation, or the main file alone
/// (then every frame of the current generation follows).
#[allow(clippy::type_complexity)]
fn resume(
    db_file: &File,
    db: &Path,
    page_size: PageSize,
    pos: &Position,
) -> Result<Option<(Vec<u64>, Option<(WalHeader, WalCursor)>)>> {
    if pos.page_size != page_size.get() {
        return Ok(None);
    }
    let wal = read_wal_header(&wal_path(db))?;
    let same = wal
        .filter(|h| (h.salt1, h.salt2) == (pos.wal_salt1, pos.wal_salt2) && pos.wal_offset >= 32);
    let (table, end) = read_state(db_file, db, page_size, same.map(|_| pos.wal_offset))?;
    if table_sum(&table).to_string() != pos.checksum {
        return Ok(None);
    }
    let cursor = match (same, end) {
        (Some(h), Some(c)) => Some((h, c)),
        _ => wal.map(|h| {
            (
                h,
                WalCursor {
                    offset: 32,
                    checksum: h.checksum,
                },
            )
        }),
    };
    Ok(Some((table, cursor)))
}

/// Writes a full-page L0 file of the database as of its last commit (main
/// file plus committed WAL frames). Returns the page table, the checksum and
/// the WAL position after it.
#[allow(clippy::type_complexity)]
fn write_full(
    db_file: &File,
    db: &Path,
    staging: &StagingDir,
    txid: Txid,
    pre: Option<Checksum>,
    handoff: &Handoff,
) -> Result<(Vec<u64>, Checksum, Option<(WalHeader, WalCursor)>)> {
    let mut src = DbSource::open(db_file, db)?;
    let commit = src.commit;
    let mut h = Header::new(src.page_size, commit, txid, txid);
    h.timestamp_ms = now_ms();
    match pre {
        Some(p) if txid.0 > 1 && p.is_well_formed() => h.pre_apply_checksum = p,
        _ if txid.0 > 1 => h.flags = HEADER_FLAG_NO_CHECKSUM,
        _ => {}
    }
    let wal = src.wal_position().or_else(|| {
        read_wal_header(&wal_path(db)).ok().flatten().map(|w| {
            (
                w,
                WalCursor {
                    offset: 32,
                    checksum: w.checksum,
                },
            )
        })
    });
    if let Some((wh, c)) = src.wal_position() {
        h.wal_offset = 32;
        h.wal_size = (c.offset - 32) as i64;
        h.wal_salt1 = wh.salt1;
        h.wal_salt2 = wh.salt2;
    }
    let mut table = vec![0u64; commit as usize];
    let path = staging.write_ltx(0, txid, txid, |w| {
        let mut enc = Encoder::new(w, h)?;
        src.encode_all(&mut enc, |pgno, page| {
            table[pgno as usize - 1] = checksum_page(pgno, page);
        })?;
        let post = if h.no_checksum() {
            Checksum::ZERO
        } else {
            enc.pages_checksum()
        };
        enc.finish(post)?;
        Ok(())
    })?;
    let post = table_sum(&table);
    if txid.0 == 1 {
        info!(db = %db.display(), pages = commit, "wrote the initial snapshot");
    } else {
        warn!(db = %db.display(), txid = %txid, pages = commit, "wrote a full-page file");
    }
    handoff.staged(&StagedL0 {
        txid,
        post_apply: post,
        path,
        full: true,
    });
    Ok((table, post, wal))
}

/// Cuts the WAL after its last commit frame: frames past it belong to a
/// transaction that never committed (SQLite would ignore them).
fn cut_uncommitted_tail(db: &Path, cap: &DbCapture) -> Result<()> {
    let wp = wal_path(db);
    let Some(end) = cap.wal_end() else {
        return Ok(());
    };
    let f = match OpenOptions::new().write(true).open(&wp) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CaptureError::read(&wp, e)),
    };
    let len = f.metadata().map_err(|e| CaptureError::read(&wp, e))?.len();
    if len > end {
        f.set_len(end).map_err(|e| CaptureError::read(&wp, e))?;
        f.sync_all().map_err(|e| CaptureError::read(&wp, e))?;
        info!(db = %db.display(), bytes = len - end, "cut the WAL's uncommitted tail");
    }
    Ok(())
}
