//! One sync: collect the frames committed since the last one (under a fresh
//! pin), encode them with whatever is pending as the next L0 file (or into
//! the pending file), and commit the new state. Also the full-page file that
//! re-establishes a chain.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use ltx_format::wal::{scan_committed, CommittedFrames, WalCursor, WalHeader, WalReader};
use ltx_format::{
    checksum_page, lock_pgno, Checksum, Encoder, Header, Txid, HEADER_FLAG_NO_CHECKSUM,
};
use tracing::{info, warn};

use super::engine::{apply_step, table_sum, Engine, Synced, TableStep};
use super::error::{CaptureError, Result};
use super::pending::Pending;
use super::recover::read_wal_header;
use super::source::{now_ms, wal_path, DbSource};

/// How a shipped file moves the page-checksum table on: the new checksums
/// of its pages (in page order) and the table's new sum.
struct TableChange {
    checksums: Vec<u64>,
    sum: Checksum,
}

/// The read buffer of WAL scans.
const WAL_READ_BUFFER: usize = 256 << 10;

/// The file one sync writes, before it is written.
struct FilePlan {
    txid: Txid,
    pre: Checksum,
    /// Database size (pages) at the last L0 file.
    base_len: usize,
    header: Header,
    frames: Option<CommittedFrames>,
    /// Every page the file holds, in order.
    pgnos: BTreeSet<u32>,
    commit: u32,
    wal: (WalHeader, WalCursor),
    transactions: u64,
    wal_bytes: u64,
}

impl Engine {
    /// Ships every frame committed since the last sync as the next L0 file.
    pub fn sync(&mut self) -> Result<Option<Synced>> {
        // A reader begun on a fully checkpointed WAL takes read mark 0.
        self.zero_pin = self.would_pin_mark_zero();
        // Pin the WAL as it is now before reading it; the old pin goes only
        // after shipping.
        self.pins.begin_next(&self.db)?;
        let r = self.sync_pinned();
        self.pins.release_old();
        r
    }

    fn sync_pinned(&mut self) -> Result<Option<Synced>> {
        let wp = wal_path(&self.db);
        let Some(header) = read_wal_header(&wp)? else {
            return Ok(None);
        };
        let start = match self.generation_start(header)? {
            Ok(c) => c,
            Err(full) => return Ok(Some(full)),
        };
        self.expect_restart = None;
        let f = File::open(&wp).map_err(|e| CaptureError::read(&wp, e))?;
        let frames = scan_from(&f, header, start).map_err(|e| CaptureError::read(&wp, e))?;
        if frames.is_none() && (self.capture_pending || self.pending.is_none()) {
            self.wal = Some((header, start));
            return Ok(None);
        }
        let plan = self.plan_file(header, start, frames);
        let (path, table, captured) = self.encode_file(&f, &plan)?;
        self.commit_file(plan, path, table, captured)
    }

    /// Where this sync starts reading the WAL generation `header`: the
    /// cursor, or (if the WAL was restarted past frames we never read) the
    /// full-page file written instead.
    fn generation_start(&mut self, header: WalHeader) -> Result<Result<WalCursor, Synced>> {
        match &self.wal {
            Some((h, c)) if h.salt1 == header.salt1 && h.salt2 == header.salt2 => {
                return Ok(Ok(*c))
            }
            _ => {}
        }
        // A new WAL generation. Continuous if we caused the restart by a full
        // checkpoint, or if it directly follows the one we know; otherwise
        // prove it against the database file.
        let expected = match (self.expect_restart, &self.wal) {
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
            let why = "the WAL was restarted past frames sluice had not read";
            return Ok(Err(self.write_full(txid, Some(pre), why)?));
        }
        Ok(Ok(WalCursor {
            offset: 32,
            checksum: header.checksum,
        }))
    }

    /// What the next file holds: what is pending plus the new frames.
    fn plan_file(
        &self,
        wal_header: WalHeader,
        start: WalCursor,
        frames: Option<CommittedFrames>,
    ) -> FilePlan {
        let (txid, pre, base_len) = match &self.pending {
            Some(p) => (p.txid, p.pre, p.base_commit as usize),
            None => (Txid(self.txid.0 + 1), self.last_post, self.pages.len()),
        };
        let end = frames.as_ref().map_or(start, |fr| fr.end);
        let commit = frames.as_ref().map_or(self.commit, |fr| fr.commit);
        let wal_from = self.pending.as_ref().map_or(start.offset, |p| {
            p.wal_from((wal_header.salt1, wal_header.salt2))
        });
        let mut h = Header::new(self.page_size, commit, txid, txid);
        h.timestamp_ms = now_ms();
        h.pre_apply_checksum = pre;
        if !pre.is_well_formed() {
            h.flags = HEADER_FLAG_NO_CHECKSUM;
            h.pre_apply_checksum = Checksum::ZERO;
        }
        h.wal_offset = wal_from as i64;
        h.wal_size = (end.offset - wal_from) as i64;
        h.wal_salt1 = wal_header.salt1;
        h.wal_salt2 = wal_header.salt2;
        // Every page the file holds: written by a new frame, pending, or new
        // since the last L0 file (zero unless written).
        let lock = lock_pgno(self.page_size);
        let mut pgnos: BTreeSet<u32> = BTreeSet::new();
        if let Some(fr) = &frames {
            pgnos.extend(fr.pages.keys().copied());
        }
        if let Some(p) = &self.pending {
            pgnos.extend(p.pages.keys().copied());
        }
        pgnos.extend((base_len as u32 + 1)..=commit);
        pgnos.retain(|&p| p <= commit && p != lock);
        let (transactions, wal_bytes) = frames
            .as_ref()
            .map_or((0, 0), |fr| (fr.transactions, fr.end.offset - start.offset));
        FilePlan {
            txid,
            pre,
            base_len,
            header: h,
            frames,
            pgnos,
            commit,
            wal: (wal_header, end),
            transactions,
            wal_bytes,
        }
    }

    /// Writes the planned file (an L0 file, or the pending file). Returns its
    /// path, the table's changes (see [`TableChange`]), and (pending mode)
    /// the new pages.
    #[allow(clippy::type_complexity)]
    fn encode_file(
        &self,
        wal: &File,
        plan: &FilePlan,
    ) -> Result<(PathBuf, TableChange, Vec<(u32, Vec<u8>)>)> {
        let ps = self.page_size.as_usize();
        let mut step = TableStep::new(&self.pages, self.pages_sum, plan.commit);
        let mut buf = vec![0u8; ps];
        let zero = vec![0u8; ps];
        let pending_mode = self.capture_pending;
        let mut captured: Vec<(u32, Vec<u8>)> = Vec::new();
        let pending_pages = self.pending.as_ref().map(|p| &p.pages);
        let frames = plan.frames.as_ref();
        let encode = |w: &mut std::io::BufWriter<crate::staging::SyncEvery<'_>>| {
            let mut enc = Encoder::new(w, plan.header)?;
            for &pgno in &plan.pgnos {
                let data: &[u8] = if let Some(&off) = frames.and_then(|fr| fr.pages.get(&pgno)) {
                    wal.read_exact_at(&mut buf, off)?;
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
                step.page(pgno, checksum_page(pgno, data));
            }
            let post = if plan.header.no_checksum() {
                Checksum::ZERO
            } else {
                step.sum()
            };
            enc.finish(post)?;
            Ok(())
        };
        let path = if pending_mode {
            self.staging.write_pending(encode)?
        } else {
            self.staging.write_ltx(0, plan.txid, plan.txid, encode)?
        };
        let change = TableChange {
            sum: step.sum(),
            checksums: step.checksums,
        };
        Ok((path, change, captured))
    }

    /// The file is durable: move the state on.
    fn commit_file(
        &mut self,
        plan: FilePlan,
        path: PathBuf,
        table: TableChange,
        captured: Vec<(u32, Vec<u8>)>,
    ) -> Result<Option<Synced>> {
        apply_step(&mut self.pages, plan.commit, &plan.pgnos, &table.checksums);
        self.pages_sum = table.sum;
        self.commit = plan.commit;
        self.last_post = self.table_checksum();
        self.wal = Some(plan.wal);
        self.unflushed += plan.wal_bytes;
        if self.capture_pending {
            let (h, _) = plan.wal;
            let start = (h.salt1, h.salt2, plan.header.wal_offset as u64);
            self.pending
                .get_or_insert_with(|| Pending {
                    txid: plan.txid,
                    pre: plan.pre,
                    base_commit: plan.base_len as u32,
                    pages: BTreeMap::new(),
                    transactions: 0,
                    wal_bytes: 0,
                    wal_start: start,
                })
                .extend(captured, plan.commit, plan.transactions, plan.wal_bytes);
            return Ok(None);
        }
        let (mut transactions, mut wal_bytes) = (plan.transactions, plan.wal_bytes);
        if let Some(p) = self.pending.take() {
            // Folded into the L0 file; a leftover is recognised at start-up.
            let _ = self.staging.remove_pending();
            transactions += p.transactions;
            wal_bytes += p.wal_bytes;
        }
        self.txid = plan.txid;
        if !self.defer_persist {
            self.persist()?;
        }
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        Ok(Some(Synced {
            txid: plan.txid,
            path,
            post_apply: self.last_post,
            pages: plan.pgnos.len(),
            bytes,
            full: false,
            transactions,
            wal_bytes,
        }))
    }

    /// Writes an L0 file holding every page (a snapshot when `txid` is 1).
    pub(super) fn write_full(
        &mut self,
        txid: Txid,
        pre: Option<Checksum>,
        why: &str,
    ) -> Result<Synced> {
        // A full file replaces what is pending (same TXID, same predecessor).
        let pre = match self.pending.take() {
            Some(p) => {
                let _ = self.staging.remove_pending();
                Some(p.pre)
            }
            None => pre,
        };
        let db_file = &self.db_file;
        let mut src = DbSource::open(db_file, &self.db)?;
        let ps = src.page_size;
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
        let commit = src.commit;
        let path = self.staging.write_ltx(0, txid, txid, |w| {
            let mut enc = Encoder::new(w, h)?;
            src.encode_all(&mut enc, |pgno, page| {
                pages[pgno as usize - 1] = checksum_page(pgno, page);
            })?;
            let post = if h.no_checksum() {
                Checksum::ZERO
            } else {
                enc.pages_checksum()
            };
            enc.finish(post)?;
            Ok(())
        })?;
        self.pages_sum = table_sum(&pages);
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
            post_apply: self.last_post,
            pages: commit as usize,
            bytes,
            full: true,
            transactions: 0,
            wal_bytes: 0,
        })
    }
}

/// The committed frames of `f` after `start`.
fn scan_from(
    f: &File,
    header: WalHeader,
    start: WalCursor,
) -> ltx_format::Result<Option<CommittedFrames>> {
    let mut rf = f;
    std::io::Seek::seek(&mut rf, std::io::SeekFrom::Start(start.offset))?;
    // Large reads: under a heavy load a sync scans hundreds of megabytes.
    let mut reader = WalReader::resume(
        std::io::BufReader::with_capacity(WAL_READ_BUFFER, rf),
        header,
        start,
    );
    scan_committed(&mut reader)
}
