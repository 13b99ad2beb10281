//! The local copy of one replicated database: the file, its position, and
//! the checksum of every page, so a step is verified without reading the
//! pages it replaces.
//!
//! Pages are stored exactly as the LTX files hold them (page 1 keeps the
//! primary's WAL-mode header): every checksum is computed on the pages as
//! stored. Readers see a patched header (see `served`); nothing here knows
//! of them.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use ltx_format::checksum::CHECKSUM_FLAG;
use ltx_format::{checksum_page, lock_pgno, Checksum, PageSize, Txid};
use restore::verify::Shifts;

/// A step's new pages, ready to write: what the fast-forward fetched and
/// verified (see `step`).
#[derive(Debug)]
pub struct Step {
    pub from: Txid,
    pub to: Txid,
    /// Database size in pages after the step.
    pub commit: u32,
    /// Commit time of `to`.
    pub timestamp_ms: i64,
    /// Changed pages in ascending order, each with its page checksum (bit 63
    /// clear); never the lock page, never past `commit`.
    pub pages: Vec<(u32, Vec<u8>, u64)>,
    /// The database checksum after the step.
    pub checksum: Checksum,
}

/// Byte ranges of the file a step changed (for the kernel's page cache).
pub type Changed = Vec<Range<u64>>;

#[derive(Debug)]
pub struct CacheDb {
    file: Arc<File>,
    pub page_size: PageSize,
    pub commit: u32,
    pub txid: Txid,
    pub checksum: Checksum,
    pub timestamp_ms: i64,
    /// Page checksums (bit 63 clear) of pages `1..=commit` at `[p - 1]`; 0
    /// for the lock page, which no database checksum includes.
    page_cks: Vec<u64>,
    shifts: Shifts,
}

impl CacheDb {
    /// Reads the whole file once for its page checksums. The file must hold
    /// exactly whole pages.
    pub fn load(
        file: File,
        page_size: PageSize,
        txid: Txid,
        timestamp_ms: i64,
    ) -> std::io::Result<CacheDb> {
        let ps = page_size.as_usize();
        let len = file.metadata()?.len();
        if len % ps as u64 != 0 {
            return Err(std::io::Error::other(format!(
                "the cached database is {len} bytes, not a whole number of {ps}-byte pages"
            )));
        }
        let commit = u32::try_from(len / ps as u64)
            .map_err(|_| std::io::Error::other("the cached database has too many pages"))?;
        let lock = lock_pgno(page_size);
        let mut page_cks = Vec::with_capacity(commit as usize);
        let mut sum = 0u64;
        let per_read = ((4 << 20) / ps).max(1);
        let mut buf = vec![0u8; per_read * ps];
        let mut pgno = 1u32;
        while pgno <= commit {
            let n = per_read.min((commit - pgno + 1) as usize);
            let chunk = &mut buf[..n * ps];
            file.read_exact_at(chunk, u64::from(pgno - 1) * ps as u64)?;
            for page in chunk.chunks_exact(ps) {
                let ck = if pgno == lock {
                    0
                } else {
                    checksum_page(pgno, page) & !CHECKSUM_FLAG
                };
                sum ^= ck;
                page_cks.push(ck);
                pgno += 1;
            }
        }
        Ok(CacheDb {
            file: Arc::new(file),
            page_size,
            commit,
            txid,
            checksum: Checksum(CHECKSUM_FLAG | sum),
            timestamp_ms,
            page_cks,
            shifts: Shifts::new(page_size),
        })
    }

    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub fn len(&self) -> u64 {
        u64::from(self.commit) * u64::from(self.page_size.get())
    }

    /// The checksum (bit 63 clear) of page `pgno` as stored now; a page past
    /// the end counts as zeros (what extending the file gives).
    fn current(&self, pgno: u32) -> u64 {
        match self.page_cks.get(pgno as usize - 1) {
            Some(&ck) => ck,
            None if pgno == lock_pgno(self.page_size) => 0,
            None => self.shifts.page_checksum(pgno, self.shifts.zero_page_crc) & !CHECKSUM_FLAG,
        }
    }

    /// The database checksum once `pages` (number, page checksum with bit
    /// 63 clear) are written and the database is resized to `commit` pages.
    pub fn checksum_after(&self, pages: &[(u32, u64)], commit: u32) -> Checksum {
        let mut sum = self.checksum.0 & !CHECKSUM_FLAG;
        // Pages past the new end leave; pages past the old end arrive as zeros.
        for p in commit.saturating_add(1)..=self.commit {
            sum ^= self.page_cks[p as usize - 1];
        }
        if commit > self.commit {
            let lock = lock_pgno(self.page_size);
            sum ^= self.shifts.zero_pages_sum(self.commit + 1, commit);
            if (self.commit + 1..=commit).contains(&lock) {
                sum ^= self.shifts.zero_pages_sum(lock, lock);
            }
        }
        for &(p, ck) in pages {
            sum ^= self.current(p) ^ ck;
        }
        Checksum(CHECKSUM_FLAG | sum)
    }

    /// Writes a verified step (consecutive pages in one write each), resizes
    /// the file, and moves the position. Returns the byte ranges changed.
    pub fn write_step(&mut self, step: &Step) -> std::io::Result<Changed> {
        let ps = u64::from(self.page_size.get());
        let mut changed: Changed = Vec::new();
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u32;
        let mut run_len = 0u32;
        for (pgno, data, _) in &step.pages {
            if run_len > 0 && (*pgno != run_start + run_len || run.len() >= 1 << 20) {
                self.file
                    .write_all_at(&run, u64::from(run_start - 1) * ps)?;
                push_range(&mut changed, run_start, run_len, ps);
                run.clear();
                run_len = 0;
            }
            if run_len == 0 {
                run_start = *pgno;
            }
            run.extend_from_slice(data);
            run_len += 1;
        }
        if run_len > 0 {
            self.file
                .write_all_at(&run, u64::from(run_start - 1) * ps)?;
            push_range(&mut changed, run_start, run_len, ps);
        }
        if step.commit != self.commit {
            self.file.set_len(u64::from(step.commit) * ps)?;
            let from = u64::from(step.commit.min(self.commit)) * ps;
            changed.push(from..u64::from(step.commit.max(self.commit)) * ps);
        }
        self.resize_checksums(step.commit);
        for (pgno, _, ck) in &step.pages {
            self.page_cks[*pgno as usize - 1] = *ck;
        }
        self.commit = step.commit;
        self.txid = step.to;
        self.checksum = step.checksum;
        self.timestamp_ms = step.timestamp_ms;
        Ok(changed)
    }

    fn resize_checksums(&mut self, commit: u32) {
        let lock = lock_pgno(self.page_size);
        self.page_cks.truncate(commit as usize);
        for p in self.page_cks.len() as u32 + 1..=commit {
            let ck = if p == lock {
                0
            } else {
                self.shifts.page_checksum(p, self.shifts.zero_page_crc) & !CHECKSUM_FLAG
            };
            self.page_cks.push(ck);
        }
    }

    /// fsync.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

fn push_range(changed: &mut Changed, first: u32, n: u32, ps: u64) {
    let r = u64::from(first - 1) * ps..u64::from(first - 1 + n) * ps;
    match changed.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => changed.push(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(ps: usize, b: u8) -> Vec<u8> {
        vec![b; ps]
    }

    fn db_of(pages: &[Vec<u8>]) -> File {
        let f = tempfile::tempfile().unwrap();
        for (i, p) in pages.iter().enumerate() {
            f.write_all_at(p, (i * p.len()) as u64).unwrap();
        }
        f
    }

    /// The checksum a step computes equals a fresh read of the result, for
    /// growth, shrinkage and plain rewrites.
    #[test]
    fn step_checksums_match_a_fresh_read() {
        let ps = PageSize::new(512).unwrap();
        let n = 512;
        let file = db_of(&[page(n, 1), page(n, 2), page(n, 3)]);
        let mut db = CacheDb::load(file, ps, Txid(5), 0).unwrap();
        let mut want = ltx_format::DbChecksum::new();
        for p in 1..=3u8 {
            want.toggle_page(u32::from(p), &page(n, p));
        }
        assert_eq!(db.checksum, want.value());
        for (commit, changes) in [
            (5u32, vec![(2u32, 9u8), (5, 7)]),
            (2, vec![(1, 4)]),
            (2, vec![]),
            (6, vec![(6, 1)]),
        ] {
            let pages: Vec<(u32, Vec<u8>, u64)> = changes
                .iter()
                .map(|&(p, b)| {
                    let d = page(n, b);
                    let ck = checksum_page(p, &d) & !CHECKSUM_FLAG;
                    (p, d, ck)
                })
                .collect();
            let cks: Vec<(u32, u64)> = pages.iter().map(|(p, _, c)| (*p, *c)).collect();
            let checksum = db.checksum_after(&cks, commit);
            let step = Step {
                from: db.txid,
                to: Txid(db.txid.0 + 1),
                commit,
                timestamp_ms: 0,
                pages,
                checksum,
            };
            db.write_step(&step).unwrap();
            let fresh = CacheDb::load(db.file().try_clone().unwrap(), ps, step.to, 0).unwrap();
            assert_eq!(fresh.commit, commit);
            assert_eq!(fresh.checksum, checksum, "commit {commit} {changes:?}");
            assert_eq!(fresh.page_cks, db.page_cks);
        }
    }
}
