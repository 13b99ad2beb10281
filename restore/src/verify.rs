//! Verifying one LTX file in pieces, so its pages can be fetched with ranged
//! reads and decoded on several cores.
//!
//! [`parse_meta`] reads the header, page index and trailer (fetched without
//! the pages) and checks that the index tiles the page block exactly. Each
//! chunk of frames is then decoded on its own ([`decode_chunk`]): every frame
//! must be the one the index names, and the chunk's share of the file
//! checksum stream (frame headers and decompressed pages) is hashed. Joining
//! the chunk hashes ([`crate::crc`]) gives the file checksum, checked by
//! [`finish_full`] together with every layout rule of the streaming decoder.
//! Tests hold this verifier to the same verdict as `ltx_format::verify`.

use std::fs::File;
use std::os::unix::fs::FileExt;

use ltx_format::checksum::CHECKSUM_FLAG;
use ltx_format::decoder::{decode_frame, max_frame_size};
use ltx_format::{
    lock_pgno, Checksum, Error as LtxError, Header, IndexEntry, PageIndex, PageSize, Rule, Trailer,
    Violation, HEADER_SIZE, TRAILER_SIZE,
};

use crate::crc::{combine, crc64, Shift};

/// The smallest LTX file: header, end marker, empty index, trailer.
pub const MIN_FILE: u64 = (HEADER_SIZE + 6 + 9 + TRAILER_SIZE) as u64;

pub(crate) fn invalid(
    rule: Rule,
    detail: impl Into<String>,
    offset: Option<u64>,
    pgno: Option<u32>,
) -> LtxError {
    LtxError::Invalid(Box::new(Violation {
        rule,
        detail: detail.into(),
        offset,
        pgno,
    }))
}

/// A file's header, page index and trailer, read without its pages.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub raw_header: [u8; HEADER_SIZE],
    pub header: Header,
    pub index: PageIndex,
    /// `[block_end, size - 8)`: end marker, page index with its terminator
    /// and length, post-apply checksum. Hashed as the last piece.
    pub tail: Vec<u8>,
    pub trailer: Trailer,
    /// Offset of the end marker.
    pub block_end: u64,
    pub size: u64,
}

/// Where the end marker starts, given the file size and its last 24 bytes
/// (index length and trailer). Fetch from there to the end for [`parse_meta`].
pub fn tail_start(size: u64, last24: &[u8]) -> Result<u64, LtxError> {
    if size < MIN_FILE {
        return Err(invalid(
            Rule::Truncated,
            format!("file is {size} bytes, shorter than the smallest LTX file ({MIN_FILE})"),
            None,
            None,
        ));
    }
    if last24.len() != 24 {
        return Err(invalid(
            Rule::Truncated,
            "truncated trailer",
            Some(size - 24),
            None,
        ));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&last24[..8]);
    let len = u64::from_be_bytes(a);
    let room = size - MIN_FILE + 1;
    if len == 0 || len > room {
        return Err(invalid(
            Rule::PageIndex,
            format!("page index length {len} does not fit in a {size}-byte file"),
            Some(size - 24),
            None,
        ));
    }
    Ok(size - 24 - len - 6)
}

/// Parses what [`tail_start`] pointed at. `head` holds at least the first
/// 100 bytes; `tail` holds the file from `tail_offset` (at or before the end
/// marker) to its end.
pub fn parse_meta(
    size: u64,
    head: &[u8],
    tail: &[u8],
    tail_offset: u64,
) -> Result<FileMeta, LtxError> {
    let mut raw_header = [0u8; HEADER_SIZE];
    let hb = head.get(..HEADER_SIZE).ok_or_else(|| {
        invalid(
            Rule::Truncated,
            format!(
                "truncated header: {} bytes, the header alone is {HEADER_SIZE}",
                head.len()
            ),
            Some(0),
            None,
        )
    })?;
    raw_header.copy_from_slice(hb);
    let header = Header::decode(&raw_header)?;
    if tail_offset + tail.len() as u64 != size || tail.len() < 24 {
        return Err(invalid(
            Rule::Truncated,
            format!("object is not {size} bytes long"),
            None,
            None,
        ));
    }
    let block_end = tail_start(size, &tail[tail.len() - 24..])?;
    if block_end < HEADER_SIZE as u64 || block_end < tail_offset {
        return Err(invalid(
            Rule::PageIndex,
            "page index overlaps the header",
            Some(block_end),
            None,
        ));
    }
    let t = &tail[(block_end - tail_offset) as usize..];
    if t[..6] != [0u8; 6] {
        return Err(invalid(
            Rule::PageHeader,
            "no end marker (6 zero bytes) before the page index",
            Some(block_end),
            None,
        ));
    }
    let idx = &t[6..t.len() - TRAILER_SIZE];
    let (index, used) = PageIndex::parse(idx).map_err(|e| at(e, block_end + 6))?;
    if used != idx.len() {
        return Err(invalid(
            Rule::PageIndex,
            "page index length field is wrong",
            Some(block_end + 6),
            None,
        ));
    }
    let trailer = Trailer::decode(&t[t.len() - TRAILER_SIZE..]);
    let max = max_frame_size(header.page_size) as u64;
    let mut pos = HEADER_SIZE as u64;
    for e in &index.entries {
        if e.offset != pos || e.size < 6 || e.size > max {
            return Err(invalid(
                Rule::PageIndex,
                format!(
                    "page index entry for page {} (offset {}, size {}) does not follow the previous frame, which ends at {pos}",
                    e.pgno, e.offset, e.size
                ),
                Some(block_end + 6),
                Some(e.pgno),
            ));
        }
        pos += e.size;
    }
    if pos != block_end {
        return Err(invalid(
            Rule::PageIndex,
            format!("the page index's frames end at {pos}, the end marker is at {block_end}"),
            Some(block_end),
            None,
        ));
    }
    Ok(FileMeta {
        raw_header,
        header,
        index,
        tail: t[..t.len() - 8].to_vec(),
        trailer,
        block_end,
        size,
    })
}

fn at(e: LtxError, offset: u64) -> LtxError {
    match e {
        LtxError::Invalid(mut v) => {
            v.offset = Some(v.offset.map_or(offset, |o| o + offset));
            LtxError::Invalid(v)
        }
        other => other,
    }
}

/// CRC shift operators for one page size.
#[derive(Debug)]
pub struct Shifts {
    pub page: Shift,
    pub h6: Shift,
    pub h10: Shift,
    pub page_size: PageSize,
    /// CRC of an all-zero page.
    pub zero_page_crc: u64,
}

impl Shifts {
    pub fn new(page_size: PageSize) -> Self {
        Shifts {
            page: Shift::new(u64::from(page_size.get())),
            h6: Shift::new(6),
            h10: Shift::new(10),
            page_size,
            zero_page_crc: crc64(&vec![0u8; page_size.as_usize()]),
        }
    }

    /// `ChecksumPage(pgno, data)` from the CRC of `data`.
    #[inline]
    pub fn page_checksum(&self, pgno: u32, data_crc: u64) -> u64 {
        CHECKSUM_FLAG | self.page.combine(crc64(&pgno.to_be_bytes()), data_crc)
    }

    /// XOR of the page checksums (bit 63 clear) of all-zero pages `a..=b`,
    /// in constant time. The CRC of a fixed-length input is affine in its
    /// bits, so the XOR of `crc(p)` over a range is `crc(XOR of p)`, plus
    /// `crc(0)` when the range has an even number of pages.
    pub fn zero_pages_sum(&self, a: u32, b: u32) -> u64 {
        if a > b {
            return 0;
        }
        fn xor_upto(n: u64) -> u64 {
            match n % 4 {
                0 => n,
                1 => 1,
                2 => n + 1,
                _ => 0,
            }
        }
        let x = xor_upto(u64::from(b))
            ^ if a == 0 {
                0
            } else {
                xor_upto(u64::from(a) - 1)
            };
        let n = u64::from(b) - u64::from(a) + 1;
        let mut pg = crc64(&(x as u32).to_be_bytes());
        if n % 2 == 0 {
            pg ^= crc64(&0u32.to_be_bytes());
        }
        let mut sum = self.page.apply(pg);
        if n % 2 == 1 {
            sum ^= self.zero_page_crc;
        }
        sum & !CHECKSUM_FLAG
    }
}

/// What one chunk contributed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkOut {
    /// CRC of the chunk's share of the file checksum stream (full mode).
    pub crc: u64,
    pub len: u64,
    /// XOR of the page checksums of the pages written.
    pub db_sum: u64,
    /// XOR of the page checksums of every page (tracked snapshots, full mode).
    pub snap_sum: u64,
    pub pages_written: u64,
}

#[derive(Debug)]
pub enum ChunkError {
    Format(LtxError),
    Write(std::io::Error),
}

/// How one chunk is decoded.
#[derive(Debug)]
pub struct ChunkCtx<'a> {
    pub meta: &'a FileMeta,
    /// This file's number in the plan, from 1.
    pub ordinal: u32,
    /// The file owning each page of the result (0: none, zeros).
    pub owners: &'a [u32],
    /// Decode and hash every frame (otherwise only the owned ones).
    pub full: bool,
    pub shifts: &'a Shifts,
    pub out: &'a File,
}

/// Collects consecutive pages into one positioned write.
struct RunWriter<'a> {
    out: &'a File,
    ps: usize,
    buf: Vec<u8>,
    first: u32,
    count: u32,
    cap: u32,
}

impl RunWriter<'_> {
    fn push(&mut self, pgno: u32, page: &[u8]) -> std::io::Result<()> {
        if self.count > 0 && (pgno != self.first + self.count || self.count == self.cap) {
            self.flush()?;
        }
        if self.count == 0 {
            self.first = pgno;
            self.buf.clear();
        }
        self.buf.extend_from_slice(page);
        self.count += 1;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.count > 0 {
            let off = u64::from(self.first - 1) * self.ps as u64;
            self.out.write_all_at(&self.buf, off)?;
            self.count = 0;
        }
        Ok(())
    }
}

/// Decodes the frames of `entries` (consecutive index entries) held in
/// `data`, which starts at file offset `base`; writes the pages this file
/// owns into the output at their offsets.
pub fn decode_chunk(
    ctx: &ChunkCtx<'_>,
    entries: &[IndexEntry],
    base: u64,
    data: &[u8],
) -> Result<ChunkOut, ChunkError> {
    let h = &ctx.meta.header;
    let ps = h.page_size.as_usize();
    let tracked_snapshot = ctx.full && h.is_snapshot() && !h.no_checksum();
    let mut page = vec![0u8; ps];
    let mut w = RunWriter {
        out: ctx.out,
        ps,
        buf: Vec::new(),
        first: 0,
        count: 0,
        cap: ((1 << 20) / ps).max(1) as u32,
    };
    let mut o = ChunkOut::default();
    for e in entries {
        let owned = e.pgno >= 1 && ctx.owners.get(e.pgno as usize - 1) == Some(&ctx.ordinal);
        if !ctx.full && !owned {
            continue;
        }
        let start = e.offset.checked_sub(base).map(|s| s as usize);
        let frame = start
            .and_then(|s| data.get(s..s + e.size as usize))
            .ok_or_else(|| {
                ChunkError::Format(invalid(
                    Rule::Truncated,
                    format!("frame of page {} is outside the bytes fetched", e.pgno),
                    Some(e.offset),
                    Some(e.pgno),
                ))
            })?;
        let pgno = decode_frame(frame, h.page_size, &mut page)
            .map_err(|err| ChunkError::Format(at(err, e.offset)))?;
        if pgno != e.pgno {
            return Err(ChunkError::Format(invalid(
                Rule::PageIndex,
                format!(
                    "page index entry says page {}, the frame holds page {pgno}",
                    e.pgno
                ),
                Some(e.offset),
                Some(pgno),
            )));
        }
        let page_crc = crc64(&page);
        if ctx.full {
            // Frame header (and size prefix, if flagged), then the page.
            let hl = if frame[5] & 1 != 0 { 10 } else { 6 };
            let sh = if hl == 10 {
                &ctx.shifts.h10
            } else {
                &ctx.shifts.h6
            };
            o.crc = sh.combine(o.crc, crc64(&frame[..hl]));
            o.crc = ctx.shifts.page.combine(o.crc, page_crc);
            o.len += (hl + ps) as u64;
        }
        if owned || tracked_snapshot {
            let ck = ctx.shifts.page_checksum(pgno, page_crc) & !CHECKSUM_FLAG;
            if tracked_snapshot {
                o.snap_sum ^= ck;
            }
            if owned {
                o.db_sum ^= ck;
                w.push(pgno, &page).map_err(ChunkError::Write)?;
                o.pages_written += 1;
            }
        }
    }
    w.flush().map_err(ChunkError::Write)?;
    Ok(o)
}

/// Checks the file checksum from the chunk hashes (in file order), then the
/// layout rules.
pub fn finish_full(
    meta: &FileMeta,
    name: Option<&str>,
    chunks: &[ChunkOut],
) -> Result<(), LtxError> {
    let mut acc = crc64(&meta.raw_header);
    let mut snap = 0u64;
    for c in chunks {
        acc = combine(acc, c.crc, c.len);
        snap ^= c.snap_sum;
    }
    acc = combine(acc, crc64(&meta.tail), meta.tail.len() as u64);
    let computed = Checksum(CHECKSUM_FLAG | acc);
    if computed != meta.trailer.file_checksum {
        return Err(invalid(
            Rule::FileChecksum,
            format!(
                "file checksum mismatch: trailer says {}, content hashes to {computed}",
                meta.trailer.file_checksum
            ),
            Some(meta.size - 8),
            None,
        ));
    }
    check_layout(meta, name, Some(Checksum(CHECKSUM_FLAG | snap)))
}

/// The layout rules a writer could break while hashing consistently, as the
/// streaming decoder checks them (in its order: the first broken rule is the
/// one reported); `snapshot_sum` is the database checksum of a tracked
/// snapshot's pages, when they were all decoded.
pub fn check_layout(
    meta: &FileMeta,
    name: Option<&str>,
    snapshot_sum: Option<Checksum>,
) -> Result<(), LtxError> {
    if !Header::reserved_is_zero(&meta.raw_header) {
        return Err(invalid(
            Rule::ReservedBytes,
            "reserved header bytes 80..100 must be zero",
            Some(80),
            None,
        ));
    }
    let last = check_page_numbers(meta)?;
    let raw_index = &meta.tail[6..meta.tail.len() - 8];
    if meta.index.encode() != raw_index {
        return Err(invalid(
            Rule::PageIndex,
            "page index entries differ from frame: varints are not minimally encoded",
            Some(meta.block_end + 6),
            None,
        ));
    }
    check_post_apply(meta)?;
    let h = &meta.header;
    if h.is_snapshot() {
        check_snapshot_end(meta, last, snapshot_sum)?;
    }
    if let Some(name) = name {
        ltx_format::apply::check_name(name, h)?;
    }
    Ok(())
}

/// The index's page numbers: ascending, within Commit, never the lock page,
/// and every page for a snapshot. Returns the last page number (0 if none).
fn check_page_numbers(meta: &FileMeta) -> Result<u32, LtxError> {
    let h = &meta.header;
    let lock = lock_pgno(h.page_size);
    let mut prev = 0u32;
    for e in &meta.index.entries {
        let (pgno, off) = (e.pgno, Some(e.offset));
        if pgno > h.commit {
            return Err(invalid(
                Rule::PageBeyondCommit,
                format!("page {pgno} is beyond commit {}", h.commit),
                off,
                Some(pgno),
            ));
        }
        if pgno == lock {
            return Err(invalid(
                Rule::LockPage,
                format!("page {pgno} is the lock page, which is never stored"),
                off,
                Some(pgno),
            ));
        }
        if pgno <= prev {
            return Err(invalid(
                Rule::PageOrder,
                format!("page numbers must ascend: page {pgno} after page {prev}"),
                off,
                Some(pgno),
            ));
        }
        if h.is_snapshot() {
            let mut want = prev + 1;
            if want == lock {
                want += 1;
            }
            if pgno != want {
                return Err(invalid(
                    Rule::SnapshotIncomplete,
                    format!("snapshot incomplete: page {pgno} follows page {prev}, page {want} is missing"),
                    off,
                    Some(pgno),
                ));
            }
        }
        prev = pgno;
    }
    Ok(prev)
}

/// The trailer's post-apply checksum: zero under NoChecksum, otherwise well
/// formed, and the empty database's for Commit 0.
fn check_post_apply(meta: &FileMeta) -> Result<(), LtxError> {
    let h = &meta.header;
    let post = meta.trailer.post_apply_checksum;
    let post_off = Some(meta.size - TRAILER_SIZE as u64);
    if h.no_checksum() {
        if !post.is_zero() {
            return Err(invalid(
                Rule::PostApplyChecksum,
                format!("post-apply checksum must be 0 under NoChecksum, is {post}"),
                post_off,
                None,
            ));
        }
    } else {
        if !post.is_well_formed() {
            return Err(invalid(
                Rule::PostApplyChecksum,
                format!("post-apply checksum {post} must be non-zero with bit 63 set"),
                post_off,
                None,
            ));
        }
        if h.commit == 0 && post != Checksum::EMPTY {
            return Err(invalid(
                Rule::PostApplyChecksum,
                format!("post-apply checksum mismatch: commit 0 (empty database) needs {}, trailer says {post}", Checksum::EMPTY),
                post_off,
                None,
            ));
        }
    }
    Ok(())
}

/// A snapshot's pages end at Commit (the lock page aside), and sum to its
/// post-apply checksum when `snapshot_sum` is known. `prev` is its last page.
fn check_snapshot_end(
    meta: &FileMeta,
    prev: u32,
    snapshot_sum: Option<Checksum>,
) -> Result<(), LtxError> {
    let h = &meta.header;
    let lock = lock_pgno(h.page_size);
    let post = meta.trailer.post_apply_checksum;
    let post_off = Some(meta.size - TRAILER_SIZE as u64);
    let mut have = prev;
    if have + 1 == lock && h.commit >= lock {
        have += 1;
    }
    if have != h.commit {
        return Err(invalid(
            Rule::SnapshotIncomplete,
            format!(
                "snapshot incomplete: pages end at {prev}, commit is {}",
                h.commit
            ),
            Some(meta.block_end),
            None,
        ));
    }
    if let Some(sum) = snapshot_sum {
        if !h.no_checksum() && sum != post {
            return Err(invalid(
                Rule::PostApplyChecksum,
                format!("post-apply checksum mismatch: trailer says {post}, snapshot pages sum to {sum}"),
                post_off,
                None,
            ));
        }
    }
    Ok(())
}

/// Verifies a whole file held in memory with this module's pieces, splitting
/// it into chunks of about `chunk` bytes (for tests against the streaming
/// decoder). Pages are written nowhere.
pub fn verify_in_pieces(bytes: &[u8], chunk: u64) -> Result<FileMeta, LtxError> {
    let size = bytes.len() as u64;
    let meta = parse_meta(size, bytes, bytes, 0)?;
    let shifts = Shifts::new(meta.header.page_size);
    let sink = tempfile::tempfile()?;
    let ctx = ChunkCtx {
        meta: &meta,
        ordinal: u32::MAX,
        owners: &[],
        full: true,
        shifts: &shifts,
        out: &sink,
    };
    let mut outs = Vec::new();
    for group in chunk_entries(&meta.index.entries, chunk) {
        let es = &meta.index.entries[group];
        let (start, end) = (
            es[0].offset,
            es[es.len() - 1].offset + es[es.len() - 1].size,
        );
        let out = decode_chunk(&ctx, es, start, &bytes[start as usize..end as usize]).map_err(
            |e| match e {
                ChunkError::Format(e) => e,
                ChunkError::Write(e) => LtxError::Io(e),
            },
        )?;
        outs.push(out);
    }
    finish_full(&meta, None, &outs)?;
    Ok(meta)
}

/// Splits consecutive entries into groups of about `chunk` bytes (at least
/// one entry each).
pub fn chunk_entries(entries: &[IndexEntry], chunk: u64) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, e) in entries.iter().enumerate() {
        if i > start && bytes + e.size > chunk {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += e.size;
    }
    if start < entries.len() {
        out.push(start..entries.len());
    }
    out
}

/// Groups of the index entries `es` marked `owned` (frames to fetch):
/// adjacent ones join, as do ones separated by at most `gap` bytes, up to
/// `max` bytes a group (at least one entry each).
pub fn owned_chunks(
    es: &[IndexEntry],
    owned: &[bool],
    max: u64,
    gap: u64,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, usize)> = None; // [start, end) entries
    for (i, e) in es.iter().enumerate() {
        if owned.get(i) != Some(&true) {
            continue;
        }
        cur = match cur {
            Some((s, end)) => {
                // Saturating: an index that was not checked to tile the page
                // block must not underflow here (its frames fail to decode).
                let prev = &es[end - 1];
                let hole = e.offset.saturating_sub(prev.offset + prev.size);
                let span = (e.offset + e.size).saturating_sub(es[s].offset);
                if hole <= gap && span <= max {
                    Some((s, i + 1))
                } else {
                    out.push(s..end);
                    Some((i, i + 1))
                }
            }
            None => Some((i, i + 1)),
        };
    }
    if let Some((s, e)) = cur {
        out.push(s..e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_ranges_sum_like_one_by_one() {
        let sh = Shifts::new(PageSize::new(512).unwrap());
        let zero = vec![0u8; 512];
        for (a, b) in [
            (1u32, 1u32),
            (1, 2),
            (3, 10),
            (5, 4),
            (7, 1000),
            (1_000_000, 1_000_003),
            (u32::MAX - 3, u32::MAX),
        ] {
            let mut want = 0u64;
            for p in a..=b {
                want ^= ltx_format::checksum_page(p, &zero) & !CHECKSUM_FLAG;
            }
            assert_eq!(sh.zero_pages_sum(a, b), want, "{a}..={b}");
        }
    }
}
