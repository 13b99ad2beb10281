//! Step 2: which planned file supplies each page of the restored database.
//!
//! Page `p` comes from the last file that holds it, unless a later file's
//! Commit is below `p` (the database was truncated after that file); such
//! pages, and pages no file holds, are zeros. The lock page is never owned.
//! This gives the same bytes as applying the files one after another.

use ltx_format::checksum::CHECKSUM_FLAG;
use ltx_format::lock_pgno;

use crate::verify::{FileMeta, Shifts};

#[derive(Debug)]
pub(super) struct Owners {
    /// For page `p` at `[p - 1]`: the owning file's number in the plan, from
    /// 1; 0 for none (zeros). Only as long as the highest page some index
    /// holds (bounded by the indexes fetched, never by a header field).
    pub by_page: Vec<u32>,
    lock: u32,
    /// Database size in pages after the last file.
    commit: u32,
}

impl Owners {
    /// Ownership for the chain `metas` (at least one file) ending with
    /// database size `commit` pages.
    pub fn new(metas: &[FileMeta], commit: u32) -> Self {
        let lock = metas.first().map_or(0, |m| lock_pgno(m.header.page_size));
        let max_held = metas
            .iter()
            .flat_map(|m| m.index.entries.iter().map(|e| e.pgno))
            .max()
            .unwrap_or(0);
        let mut by_page = vec![0u32; commit.min(max_held) as usize];
        // A file's page survives only up to the smallest Commit from that
        // file on.
        let mut suffix_min = vec![u32::MAX; metas.len() + 1];
        for i in (0..metas.len()).rev() {
            suffix_min[i] = suffix_min[i + 1].min(metas[i].header.commit);
        }
        for (i, m) in metas.iter().enumerate() {
            let keep = suffix_min[i];
            for e in &m.index.entries {
                if e.pgno >= 1
                    && e.pgno <= keep
                    && e.pgno != lock
                    && e.pgno as usize <= by_page.len()
                {
                    by_page[e.pgno as usize - 1] = i as u32 + 1;
                }
            }
        }
        Owners {
            by_page,
            lock,
            commit,
        }
    }

    /// For each index entry of file `file` (0-based), whether the restored
    /// database takes that page from it.
    pub fn owned_entries(&self, file: usize, meta: &FileMeta) -> Vec<bool> {
        let ord = file as u32 + 1;
        meta.index
            .entries
            .iter()
            .map(|e| e.pgno >= 1 && self.by_page.get(e.pgno as usize - 1) == Some(&ord))
            .collect()
    }

    /// The XOR of the page checksums (bit 63 clear) of every zero page of the
    /// result: unowned pages, and the pages past the last one held, up to
    /// Commit; the lock page is not part of the database checksum.
    pub fn zero_pages_sum(&self, shifts: &Shifts) -> u64 {
        let mut sum = 0u64;
        for (p, o) in self.by_page.iter().enumerate() {
            let pgno = p as u32 + 1;
            if *o == 0 && pgno != self.lock {
                sum ^= shifts.page_checksum(pgno, shifts.zero_page_crc) & !CHECKSUM_FLAG;
            }
        }
        let tail_from = self.by_page.len() as u32 + 1;
        if tail_from <= self.commit {
            sum ^= shifts.zero_pages_sum(tail_from, self.commit);
            if (tail_from..=self.commit).contains(&self.lock) {
                sum ^= shifts.zero_pages_sum(self.lock, self.lock);
            }
        }
        sum
    }
}
