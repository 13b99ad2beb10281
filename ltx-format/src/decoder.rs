//! Streaming, strict LTX reader.
//!
//! Structural damage (truncation, bad header, undecodable LZ4, a payload of the
//! wrong length, stray bytes) is reported where it is found. Layout rules that a
//! writer could break while hashing consistently (page order, commit bounds,
//! snapshot completeness, the page index, trailer rules) are checked as pages
//! pass but reported only after the file checksum has matched, so a corrupted
//! file reads as corrupted and a mis-laid one as mis-laid.
//!
//! Pages handed out before [`Decoder::next_page`] returns `None` are not yet
//! verified: apply them somewhere disposable, or verify first.

use std::io::Read;

use crc::{Digest, Table};

use crate::checksum::{lock_pgno, read_full, Checksum, DbChecksum, CHECKSUM_FLAG, CRC64};
use crate::encoder::{PAGE_FLAG_SIZE, PAGE_HEADER_SIZE};
use crate::error::{Error, Result, Rule, Violation};
use crate::header::{Header, Trailer, HEADER_SIZE, TRAILER_SIZE};
use crate::index::{IndexEntry, PageIndex};
use crate::PageSize;

/// What a fully decoded file looked like.
#[derive(Debug, Clone)]
pub struct FileSummary {
    pub header: Header,
    pub trailer: Trailer,
    pub index: PageIndex,
    /// Total bytes read, trailer included.
    pub size: u64,
    /// Frames written as legacy LZ4 frames (Litestream 0.5.0–0.5.15).
    pub legacy_frames: usize,
}

/// The largest frame a page of this size can take: header, size prefix and
/// the worst-case LZ4 block.
pub fn max_frame_size(ps: PageSize) -> usize {
    PAGE_HEADER_SIZE + 4 + lz4_flex::block::get_maximum_output_size(ps.as_usize())
}

pub struct Decoder<R: Read> {
    r: R,
    header: Header,
    digest: Digest<'static, u64, Table<16>>,
    offset: u64,
    frames: Vec<IndexEntry>,
    last_pgno: u32,
    lock: u32,
    pages_sum: DbChecksum,
    deferred: Option<Violation>,
    cbuf: Vec<u8>,
    legacy_frames: usize,
    done: Option<Trailer>,
}

impl<R: Read> std::fmt::Debug for Decoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("header", &self.header)
            .field("offset", &self.offset)
            .field("frames", &self.frames.len())
            .finish()
    }
}

fn truncated(what: String, offset: u64) -> Error {
    Error::invalid(Rule::Truncated, what).at(offset)
}

impl<R: Read> Decoder<R> {
    /// Reads and validates the header.
    pub fn new(mut r: R) -> Result<Self> {
        let mut hb = [0u8; HEADER_SIZE];
        let n = read_full(&mut r, &mut hb)?;
        if n < HEADER_SIZE {
            return Err(truncated(
                format!("truncated header: file is {n} bytes, the header alone is {HEADER_SIZE}"),
                0,
            ));
        }
        let header = Header::decode(&hb)?;
        let mut digest = CRC64.digest();
        digest.update(&hb);
        let deferred = if Header::reserved_is_zero(&hb) {
            None
        } else {
            Some(Violation {
                rule: Rule::ReservedBytes,
                detail: "reserved header bytes 80..100 must be zero".into(),
                offset: Some(80),
                pgno: None,
            })
        };
        Ok(Decoder {
            r,
            header,
            digest,
            offset: HEADER_SIZE as u64,
            frames: Vec::new(),
            last_pgno: 0,
            lock: lock_pgno(header.page_size),
            pages_sum: DbChecksum::new(),
            deferred,
            cbuf: Vec::new(),
            legacy_frames: 0,
            done: None,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The trailer, once `next_page` has returned `None`.
    pub fn trailer(&self) -> Option<Trailer> {
        self.done
    }

    fn defer(&mut self, rule: Rule, detail: String, offset: u64, pgno: u32) {
        if self.deferred.is_none() {
            self.deferred = Some(Violation {
                rule,
                detail,
                offset: Some(offset),
                pgno: Some(pgno),
            });
        }
    }

    fn read_exact_at(&mut self, buf: &mut [u8], what: impl FnOnce() -> String) -> Result<()> {
        let n = read_full(&mut self.r, buf)?;
        if n < buf.len() {
            return Err(truncated(what(), self.offset));
        }
        Ok(())
    }

    /// Decodes the next page into `out` (PageSize bytes) and returns its page
    /// number, or `None` after the end marker, once the index, the trailer, the
    /// file checksum and every deferred rule have been checked.
    pub fn next_page(&mut self, out: &mut [u8]) -> Result<Option<u32>> {
        if self.done.is_some() {
            return Ok(None);
        }
        let ps = self.header.page_size.as_usize();
        if out.len() != ps {
            return Err(Error::Usage(format!(
                "page buffer is {} bytes, page size is {ps}",
                out.len()
            )));
        }
        let frame_no = self.frames.len();
        let start = self.offset;
        let mut ph = [0u8; PAGE_HEADER_SIZE];
        self.read_exact_at(&mut ph, || {
            format!("truncated page header in frame {frame_no}")
        })?;
        let pgno = u32::from_be_bytes([ph[0], ph[1], ph[2], ph[3]]);
        let flags = u16::from_be_bytes([ph[4], ph[5]]);
        if pgno == 0 {
            if flags != 0 {
                return Err(Error::invalid(
                    Rule::PageHeader,
                    format!("page number required (end marker with flags 0x{flags:04x})"),
                )
                .at(start));
            }
            self.digest.update(&ph);
            self.offset += PAGE_HEADER_SIZE as u64;
            self.finish_tail()?;
            return Ok(None);
        }
        if flags & !PAGE_FLAG_SIZE != 0 {
            return Err(Error::invalid(
                Rule::PageHeader,
                format!("invalid page header flags 0x{flags:04x}"),
            )
            .at(start)
            .page(pgno));
        }
        self.offset += PAGE_HEADER_SIZE as u64;
        self.digest.update(&ph);
        let size = if flags & PAGE_FLAG_SIZE != 0 {
            let mut sb = [0u8; 4];
            self.read_exact_at(&mut sb, || {
                format!("truncated size prefix in frame {frame_no} (page {pgno})")
            })?;
            self.digest.update(&sb);
            self.offset += 4;
            let csize = u32::from_be_bytes(sb) as usize;
            let max = lz4_flex::block::get_maximum_output_size(ps);
            if csize > max {
                return Err(Error::invalid(
                    Rule::Lz4Block,
                    format!("compressed size {csize} exceeds the largest LZ4 block for a {ps}-byte page ({max})"),
                )
                .at(start)
                .page(pgno));
            }
            self.cbuf.resize(csize, 0);
            let got = read_full(&mut self.r, &mut self.cbuf)?;
            if got < csize {
                return Err(truncated(
                    format!("truncated size-prefixed LZ4 block in frame {frame_no} (page {pgno}): {got} of {csize} bytes present"),
                    self.offset,
                ));
            }
            self.offset += csize as u64;
            decode_block(&self.cbuf, out).map_err(|e| e.at(start).page(pgno))?;
            (PAGE_HEADER_SIZE + 4 + csize) as u64
        } else {
            let before = self.offset;
            let mut counted = CountingReader {
                r: &mut self.r,
                n: 0,
            };
            let res = read_lz4_frame(&mut counted, out);
            let n = counted.n;
            self.offset += n;
            res.map_err(|e| e.at(before).page(pgno))?;
            self.legacy_frames += 1;
            PAGE_HEADER_SIZE as u64 + n
        };
        self.digest.update(out);
        self.check_page(pgno, start);
        if self.header.is_snapshot() && !self.header.no_checksum() {
            self.pages_sum.toggle_page(pgno, out);
        }
        self.frames.push(IndexEntry {
            pgno,
            offset: start,
            size,
        });
        self.last_pgno = self.last_pgno.max(pgno);
        Ok(Some(pgno))
    }

    fn check_page(&mut self, pgno: u32, offset: u64) {
        let h = self.header;
        if pgno > h.commit {
            self.defer(
                Rule::PageBeyondCommit,
                format!("page {pgno} is beyond commit {}", h.commit),
                offset,
                pgno,
            );
        }
        if pgno == self.lock {
            self.defer(
                Rule::LockPage,
                format!("page {pgno} is the lock page, which is never stored"),
                offset,
                pgno,
            );
        }
        let prev = self.frames.last().map_or(0, |e| e.pgno);
        if pgno <= prev {
            self.defer(
                Rule::PageOrder,
                format!("page numbers must ascend: page {pgno} after page {prev}"),
                offset,
                pgno,
            );
        } else if h.is_snapshot() {
            let mut want = prev + 1;
            if want == self.lock {
                want += 1;
            }
            if pgno != want {
                self.defer(
                    Rule::SnapshotIncomplete,
                    format!("snapshot incomplete: page {pgno} follows page {prev}, page {want} is missing"),
                    offset,
                    pgno,
                );
            }
        }
    }

    /// Everything after the end marker: index, trailer, checksums, deferred rules.
    fn finish_tail(&mut self) -> Result<()> {
        let tail_start = self.offset;
        // A canonical index takes at most 20 bytes a frame; allow slack, but no
        // more than the file's own bytes ever drive the allocation.
        let limit = self.frames.len() as u64 * 24 + 64 + TRAILER_SIZE as u64;
        let mut tail = Vec::new();
        (&mut self.r).take(limit + 1).read_to_end(&mut tail)?;
        if tail.len() as u64 > limit {
            return Err(Error::invalid(
                Rule::UnexpectedBytes,
                format!("more than {limit} bytes after the page block; the page index and trailer of {} frames cannot be that long", self.frames.len()),
            )
            .at(tail_start));
        }
        self.offset += tail.len() as u64;
        if tail.len() < TRAILER_SIZE + 9 {
            return Err(truncated(
                format!(
                    "truncated page index: {} bytes after the end marker, need at least {}",
                    tail.len(),
                    TRAILER_SIZE + 9
                ),
                tail_start,
            ));
        }
        let (idx_bytes, trailer_bytes) = tail.split_at(tail.len() - TRAILER_SIZE);
        let (index, used) = PageIndex::parse(idx_bytes).map_err(|e| e.at(tail_start))?;
        if used < idx_bytes.len() {
            return Err(Error::invalid(
                Rule::UnexpectedBytes,
                format!(
                    "{} unexpected bytes before the trailer",
                    idx_bytes.len() - used
                ),
            )
            .at(tail_start + used as u64));
        }
        let trailer = Trailer::decode(trailer_bytes);
        self.digest.update(&tail[..tail.len() - 8]);
        let computed = Checksum(CHECKSUM_FLAG | self.digest.clone().finalize());
        if computed != trailer.file_checksum {
            return Err(Error::invalid(
                Rule::FileChecksum,
                format!(
                    "file checksum mismatch: trailer says {}, content hashes to {computed}",
                    trailer.file_checksum
                ),
            )
            .at(self.offset - 8));
        }
        // The bytes are what the writer hashed; now the layout rules.
        if let Some(v) = self.deferred.take() {
            return Err(Error::Invalid(Box::new(v)));
        }
        if index.entries != self.frames {
            let i = index
                .entries
                .iter()
                .zip(&self.frames)
                .position(|(a, b)| a != b)
                .unwrap_or(index.entries.len().min(self.frames.len()));
            let detail = match (index.entries.get(i), self.frames.get(i)) {
                (Some(a), Some(b)) => format!(
                    "page index entry {i} differs from frame: index says page {} at offset {} size {}, frame is page {} at offset {} size {}",
                    a.pgno, a.offset, a.size, b.pgno, b.offset, b.size
                ),
                _ => format!(
                    "page index entry count {} differs from frame count {}",
                    index.entries.len(),
                    self.frames.len()
                ),
            };
            return Err(Error::invalid(Rule::PageIndex, detail).at(tail_start));
        }
        let canonical = index.encode();
        if canonical[..] != idx_bytes[..used] {
            return Err(Error::invalid(
                Rule::PageIndex,
                "page index entries differ from frame: varints are not minimally encoded",
            )
            .at(tail_start));
        }
        let h = self.header;
        let post = trailer.post_apply_checksum;
        let post_off = self.offset - TRAILER_SIZE as u64;
        if h.no_checksum() {
            if !post.is_zero() {
                return Err(Error::invalid(
                    Rule::PostApplyChecksum,
                    format!("post-apply checksum must be 0 under NoChecksum, is {post}"),
                )
                .at(post_off));
            }
        } else {
            if !post.is_well_formed() {
                return Err(Error::invalid(
                    Rule::PostApplyChecksum,
                    format!("post-apply checksum {post} must be non-zero with bit 63 set"),
                )
                .at(post_off));
            }
            if h.commit == 0 && post != Checksum::EMPTY {
                return Err(Error::invalid(
                    Rule::PostApplyChecksum,
                    format!(
                        "post-apply checksum mismatch: commit 0 (empty database) needs {}, trailer says {post}",
                        Checksum::EMPTY
                    ),
                )
                .at(post_off));
            }
        }
        if h.is_snapshot() {
            let mut have = self.last_pgno;
            if have + 1 == self.lock && h.commit >= self.lock {
                have += 1;
            }
            if have != h.commit {
                return Err(Error::invalid(
                    Rule::SnapshotIncomplete,
                    format!(
                        "snapshot incomplete: pages end at {}, commit is {}",
                        self.last_pgno, h.commit
                    ),
                )
                .at(tail_start));
            }
            if !h.no_checksum() && self.pages_sum.value() != post {
                return Err(Error::invalid(
                    Rule::PostApplyChecksum,
                    format!(
                        "post-apply checksum mismatch: trailer says {post}, snapshot pages sum to {}",
                        self.pages_sum.value()
                    ),
                )
                .at(post_off));
            }
        }
        self.done = Some(trailer);
        Ok(())
    }

    /// Consumes the decoder after `next_page` returned `None`.
    pub fn into_summary(self) -> Result<FileSummary> {
        let trailer = self
            .done
            .ok_or_else(|| Error::Usage("decoder has not reached the end of the file".into()))?;
        Ok(FileSummary {
            header: self.header,
            trailer,
            index: PageIndex {
                entries: self.frames,
            },
            size: self.offset,
            legacy_frames: self.legacy_frames,
        })
    }
}

/// Decodes and verifies a whole file.
pub fn verify<R: Read>(r: R) -> Result<FileSummary> {
    let mut d = Decoder::new(r)?;
    let mut page = vec![0u8; d.header().page_size.as_usize()];
    while d.next_page(&mut page)?.is_some() {}
    d.into_summary()
}

fn decode_block(block: &[u8], out: &mut [u8]) -> Result<()> {
    match lz4_flex::block::decompress_into(block, out) {
        Ok(n) if n == out.len() => Ok(()),
        Ok(n) => Err(Error::invalid(
            Rule::PayloadSize,
            format!(
                "payload decompresses to {n} bytes, page size is {}",
                out.len()
            ),
        )),
        Err(e) => Err(Error::invalid(
            Rule::Lz4Block,
            format!("LZ4 block does not decode: {e}"),
        )),
    }
}

/// Decodes one whole frame held in memory (as fetched by a ranged read through
/// the page index) into `out`; returns its page number. No checksum covers a
/// single frame, so this checks structure only.
pub fn decode_frame(frame: &[u8], page_size: PageSize, out: &mut [u8]) -> Result<u32> {
    if out.len() != page_size.as_usize() {
        return Err(Error::Usage("page buffer has the wrong size".into()));
    }
    if frame.len() < PAGE_HEADER_SIZE {
        return Err(Error::invalid(Rule::Truncated, "truncated page header"));
    }
    let pgno = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let flags = u16::from_be_bytes([frame[4], frame[5]]);
    if pgno == 0 {
        return Err(Error::invalid(Rule::PageHeader, "page number required"));
    }
    match flags {
        PAGE_FLAG_SIZE => {
            let sb = frame
                .get(6..10)
                .ok_or_else(|| Error::invalid(Rule::Truncated, "truncated size prefix"))?;
            let csize = u32::from_be_bytes([sb[0], sb[1], sb[2], sb[3]]) as usize;
            if frame.len() != 10 + csize {
                return Err(Error::invalid(
                    Rule::PageIndex,
                    format!(
                        "frame is {} bytes, its size prefix says {}",
                        frame.len(),
                        10 + csize
                    ),
                )
                .page(pgno));
            }
            decode_block(&frame[10..], out).map_err(|e| e.page(pgno))?;
        }
        0 => {
            let mut r = &frame[6..];
            read_lz4_frame(&mut r, out).map_err(|e| e.page(pgno))?;
            if !r.is_empty() {
                return Err(Error::invalid(
                    Rule::UnexpectedBytes,
                    format!("{} bytes after the LZ4 frame", r.len()),
                )
                .page(pgno));
            }
        }
        f => {
            return Err(Error::invalid(
                Rule::PageHeader,
                format!("invalid page header flags 0x{f:04x}"),
            )
            .page(pgno))
        }
    }
    Ok(pgno)
}

struct CountingReader<'a, R: Read> {
    r: &'a mut R,
    n: u64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.r.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

const LZ4_FRAME_MAGIC: u32 = 0x184D_2204;

/// Reads one complete LZ4 frame (the legacy page payload) that must decompress
/// to exactly `out.len()` bytes, and consumes nothing past its end.
fn read_lz4_frame<R: Read>(r: &mut R, out: &mut [u8]) -> Result<()> {
    let lz = |d: String| Error::invalid(Rule::Lz4Block, d);
    let trunc =
        |what: &str| Error::invalid(Rule::Truncated, format!("truncated LZ4 frame ({what})"));
    let mut fixed = [0u8; 6];
    if read_full(r, &mut fixed)? < 6 {
        return Err(trunc("header"));
    }
    let magic = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
    if magic != LZ4_FRAME_MAGIC {
        return Err(lz(format!(
            "LZ4 frame magic is {magic:08x}, want {LZ4_FRAME_MAGIC:08x}"
        )));
    }
    let flg = fixed[4];
    let bd = fixed[5];
    if flg >> 6 != 1 {
        return Err(lz(format!(
            "unsupported LZ4 frame version in FLG 0x{flg:02x}"
        )));
    }
    if flg & 0x02 != 0 || bd & 0x8f != 0 {
        return Err(lz(format!(
            "reserved bits set in LZ4 frame descriptor (FLG 0x{flg:02x}, BD 0x{bd:02x})"
        )));
    }
    let block_checksums = flg & 0x10 != 0;
    let has_content_size = flg & 0x08 != 0;
    let content_checksum = flg & 0x04 != 0;
    let has_dict = flg & 0x01 != 0;
    let block_max = match (bd >> 4) & 0x7 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        x => return Err(lz(format!("invalid LZ4 block size id {x}"))),
    };
    let mut desc = vec![flg, bd];
    let extra = if has_content_size { 8 } else { 0 } + if has_dict { 4 } else { 0 };
    let mut opt = vec![0u8; extra + 1];
    if read_full(r, &mut opt)? < opt.len() {
        return Err(trunc("descriptor"));
    }
    desc.extend_from_slice(&opt[..extra]);
    let hc = opt[extra];
    let want_hc = ((xxh32(&desc, 0) >> 8) & 0xff) as u8;
    if hc != want_hc {
        return Err(lz(format!(
            "LZ4 frame header checksum is {hc:02x}, want {want_hc:02x}"
        )));
    }
    if has_dict {
        return Err(lz("LZ4 frames with a dictionary are not used by LTX".into()));
    }
    if has_content_size {
        let mut a = [0u8; 8];
        a.copy_from_slice(&opt[..8]);
        let cs = u64::from_le_bytes(a);
        if cs != out.len() as u64 {
            return Err(Error::invalid(
                Rule::PayloadSize,
                format!("LZ4 frame content size {cs}, page size is {}", out.len()),
            ));
        }
    }
    let mut filled = 0usize;
    let mut block = Vec::new();
    loop {
        let mut sb = [0u8; 4];
        if read_full(r, &mut sb)? < 4 {
            return Err(trunc("block size"));
        }
        let raw = u32::from_le_bytes(sb);
        if raw == 0 {
            break;
        }
        let uncompressed = raw & 0x8000_0000 != 0;
        let len = (raw & 0x7fff_ffff) as usize;
        if len > block_max {
            return Err(lz(format!(
                "LZ4 frame block of {len} bytes exceeds the {block_max}-byte maximum"
            )));
        }
        block.resize(len, 0);
        if read_full(r, &mut block)? < len {
            return Err(trunc("block"));
        }
        if block_checksums {
            let mut cb = [0u8; 4];
            if read_full(r, &mut cb)? < 4 {
                return Err(trunc("block checksum"));
            }
            if u32::from_le_bytes(cb) != xxh32(&block, 0) {
                return Err(lz("LZ4 frame block checksum mismatch".into()));
            }
        }
        let room = &mut out[filled..];
        let n = if uncompressed {
            if len > room.len() {
                return Err(Error::invalid(
                    Rule::PayloadSize,
                    "payload decompresses to more than the page size",
                ));
            }
            room[..len].copy_from_slice(&block);
            len
        } else {
            lz4_flex::block::decompress_into(&block, room)
                .map_err(|e| lz(format!("LZ4 block does not decode: {e}")))?
        };
        filled += n;
    }
    if content_checksum {
        let mut cb = [0u8; 4];
        if read_full(r, &mut cb)? < 4 {
            return Err(trunc("content checksum"));
        }
        if u32::from_le_bytes(cb) != xxh32(&out[..filled], 0) {
            return Err(lz("LZ4 frame content checksum mismatch".into()));
        }
    }
    if filled != out.len() {
        return Err(Error::invalid(
            Rule::PayloadSize,
            format!(
                "payload decompresses to {filled} bytes, page size is {}",
                out.len()
            ),
        ));
    }
    Ok(())
}

/// xxHash32, for the LZ4 frame header and content checksums.
fn xxh32(data: &[u8], seed: u32) -> u32 {
    const P1: u32 = 0x9E37_79B1;
    const P2: u32 = 0x85EB_CA77;
    const P3: u32 = 0xC2B2_AE3D;
    const P4: u32 = 0x27D4_EB2F;
    const P5: u32 = 0x1656_67B1;
    let rd = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let round = |acc: u32, x: u32| {
        acc.wrapping_add(x.wrapping_mul(P2))
            .rotate_left(13)
            .wrapping_mul(P1)
    };
    let mut rest = data;
    let mut h = if data.len() >= 16 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 16 {
            for (i, lane) in v.iter_mut().enumerate() {
                *lane = round(*lane, rd(&rest[i * 4..]));
            }
            rest = &rest[16..];
        }
        v[0].rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18))
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(data.len() as u32);
    while rest.len() >= 4 {
        h = h
            .wrapping_add(rd(rest).wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
        rest = &rest[4..];
    }
    for &b in rest {
        h = h
            .wrapping_add(u32::from(b).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh32_known_values() {
        assert_eq!(xxh32(b"", 0), 0x02CC_5D05);
        assert_eq!(xxh32(b"a", 0), 0x550D_7456);
        assert_eq!(xxh32(b"abc", 0), 0x32D1_53FF);
        assert_eq!(
            xxh32(b"Nobody inspects the spammish repetition", 0),
            0xE229_3B2F
        );
    }
}
