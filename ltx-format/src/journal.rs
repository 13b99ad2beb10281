//! SQLite rollback journals (`-journal`), read to learn which pages a
//! transaction changed. Before a rollback-journal transaction modifies a
//! page that existed when it began, SQLite copies the page, with its number,
//! into the journal; pages past the database's original size are new and are
//! not journaled. So at commit the changed pages are the journaled page
//! numbers plus every page past the original size.
//!
//! ```text
//! segment header (sector-sized, at a multiple of the sector size):
//!   0   magic d9 d5 05 f9 20 a1 63 d7
//!   8   record count (u32 BE; 0xffffffff: as many as the file holds)
//!   12  checksum seed
//!   16  database size in pages when the transaction began
//!   20  sector size
//!   24  page size
//! records: page number (u32 BE) | original page | checksum (u32 BE)
//!   checksum = seed + page[ps-200] + page[ps-400] + … (every 200th byte)
//! ```
//!
//! A cache spill starts a new segment (a new header after the records,
//! rounded up to the sector size). A journal whose first header has no magic
//! holds no transaction (SQLite zeroes it to commit in PERSIST mode, and
//! writes it last under `synchronous=NORMAL`/`FULL`).

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};

use crate::error::{Error, Result, Rule};

/// The journal magic.
pub const JOURNAL_MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];

/// The bytes of a segment header that carry meaning.
const HEADER_FIELDS: usize = 28;

/// What a journal says about its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSummary {
    /// Database size in pages when the transaction began.
    pub original_pages: u32,
    pub page_size: u32,
    /// Page numbers with a valid record (their original content is in the
    /// journal), over every segment.
    pub pages: BTreeSet<u32>,
    pub segments: u32,
}

impl JournalSummary {
    /// The pages the transaction changed, for a database now `commit` pages
    /// long: journaled pages still in the database, and every page past the
    /// original size.
    pub fn changed(&self, commit: u32) -> BTreeSet<u32> {
        let mut out: BTreeSet<u32> = self.pages.range(..=commit).copied().collect();
        out.extend(self.original_pages.saturating_add(1)..=commit);
        out
    }
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// A segment header: (record count, checksum seed, original pages, sector
/// size, page size), or `None` without the magic.
fn parse_header(h: &[u8; HEADER_FIELDS]) -> Option<(u32, u32, u32, u32, u32)> {
    (h[..8] == JOURNAL_MAGIC).then(|| {
        (
            be32(h, 8),
            be32(h, 12),
            be32(h, 16),
            be32(h, 20),
            be32(h, 24),
        )
    })
}

fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> Result<bool> {
    r.seek(SeekFrom::Start(offset))?;
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => return Ok(false),
            k => n += k,
        }
    }
    Ok(true)
}

/// SQLite's record checksum.
fn record_checksum(seed: u32, page: &[u8]) -> u32 {
    let mut sum = seed;
    let mut i = page.len() as isize - 200;
    while i > 0 {
        sum = sum.wrapping_add(u32::from(page[i as usize]));
        i -= 200;
    }
    sum
}

/// Reads a journal of `len` bytes. `None` if its first header has no magic
/// (no transaction). Records end at the first one whose checksum fails or
/// that runs past the end of the file.
pub fn read_journal<R: Read + Seek>(r: &mut R, len: u64) -> Result<Option<JournalSummary>> {
    let mut hb = [0u8; HEADER_FIELDS];
    if !read_at(r, 0, &mut hb)? {
        return Ok(None);
    }
    let Some((_, _, original_pages, sector, page_size)) = parse_header(&hb) else {
        return Ok(None);
    };
    if !(512..=65536).contains(&page_size)
        || !page_size.is_power_of_two()
        || !(32..=65536).contains(&sector)
        || !sector.is_power_of_two()
    {
        return Err(Error::invalid(
            Rule::Database,
            format!("journal header: page size {page_size}, sector size {sector}"),
        ));
    }
    let mut out = JournalSummary {
        original_pages,
        page_size,
        pages: BTreeSet::new(),
        segments: 0,
    };
    let (ps, sector) = (u64::from(page_size), u64::from(sector));
    let record = ps + 8;
    let mut page = vec![0u8; page_size as usize];
    let mut hdr = 0u64;
    // Bounded by the file: every segment moves forward by at least a sector.
    while hdr + sector <= len {
        if !read_at(r, hdr, &mut hb)? {
            break;
        }
        let Some((count, seed, ..)) = parse_header(&hb) else {
            break;
        };
        out.segments += 1;
        let first = hdr + sector;
        let fits = len.saturating_sub(first) / record;
        // 0xffffffff (synchronous=OFF): as many records as the file holds.
        let count = if count == u32::MAX {
            fits
        } else {
            u64::from(count).min(fits)
        };
        let mut off = first;
        for _ in 0..count {
            let mut pg = [0u8; 4];
            let mut ck = [0u8; 4];
            if !read_at(r, off, &mut pg)?
                || !read_at(r, off + 4, &mut page)?
                || !read_at(r, off + 4 + ps, &mut ck)?
            {
                return Ok(Some(out));
            }
            let pgno = u32::from_be_bytes(pg);
            if pgno == 0 || u32::from_be_bytes(ck) != record_checksum(seed, &page) {
                return Ok(Some(out));
            }
            out.pages.insert(pgno);
            off += record;
        }
        // The next segment starts at the next multiple of the sector size.
        hdr = off.div_ceil(sector).max(hdr / sector + 1) * sector;
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(count: u32, seed: u32, orig: u32, sector: u32, ps: u32) -> Vec<u8> {
        let mut h = vec![0u8; sector as usize];
        h[..8].copy_from_slice(&JOURNAL_MAGIC);
        for (o, v) in [(8, count), (12, seed), (16, orig), (20, sector), (24, ps)] {
            h[o..o + 4].copy_from_slice(&v.to_be_bytes());
        }
        h
    }

    fn record(pgno: u32, fill: u8, seed: u32, ps: usize) -> Vec<u8> {
        let page = vec![fill; ps];
        let mut r = pgno.to_be_bytes().to_vec();
        r.extend_from_slice(&page);
        r.extend_from_slice(&record_checksum(seed, &page).to_be_bytes());
        r
    }

    fn summary(j: &[u8]) -> Option<JournalSummary> {
        read_journal(&mut std::io::Cursor::new(j), j.len() as u64).unwrap()
    }

    #[test]
    fn segments_and_the_changed_pages() {
        let ps = 1024;
        let mut j = header(2, 7, 10, 512, ps as u32);
        j.extend(record(3, 1, 7, ps));
        j.extend(record(1, 2, 7, ps));
        // A second segment (after a spill) at the next sector boundary.
        j.resize(j.len().div_ceil(512) * 512, 0);
        j.extend(header(1, 9, 10, 512, ps as u32));
        j.extend(record(8, 3, 9, ps));
        let s = summary(&j).unwrap();
        assert_eq!(s.segments, 2);
        assert_eq!(s.pages.iter().copied().collect::<Vec<_>>(), [1, 3, 8]);
        // The database grew to 12 pages: 11 and 12 are new; it could also
        // have shrunk to 5, dropping page 8.
        assert_eq!(
            s.changed(12).into_iter().collect::<Vec<_>>(),
            [1, 3, 8, 11, 12]
        );
        assert_eq!(s.changed(5).into_iter().collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn no_magic_is_no_transaction_and_bad_records_end_it() {
        let ps = 512;
        let mut j = header(0xffff_ffff, 5, 4, 512, ps as u32);
        j.extend(record(2, 1, 5, ps));
        let mut bad = record(3, 1, 5, ps);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        j.extend(bad);
        j.extend(record(4, 1, 5, ps));
        let s = summary(&j).unwrap();
        assert_eq!(s.pages.iter().copied().collect::<Vec<_>>(), [2]);
        j[0] = 0;
        assert!(summary(&j).is_none());
        assert!(summary(&[]).is_none());
    }
}
