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

use crate::checksum::{
    lock_pgno, read_full, Checksum, Crc64Digest, DbChecksum, CHECKSUM_FLAG, CRC64,
};
use crate::error::{Error, Result, Rule, Violation};
use crate::frame::{
    decode_block, parse_page_header, read_lz4_frame, PAGE_FLAG_SIZE, PAGE_HEADER_SIZE,
};
use crate::header::{Header, Trailer, HEADER_SIZE, TRAILER_SIZE};
use crate::index::{IndexEntry, PageIndex};

// Kept at their old paths for callers of `ltx_format::decoder::*`.
pub use crate::frame::{decode_frame, max_frame_size};

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

pub struct Decoder<R: Read> {
    r: R,
    header: Header,
    digest: Crc64Digest,
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
        let (pgno, flags) = parse_page_header(&ph);
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
        let computed = Checksum(CHECKSUM_FLAG | self.digest.finalize());
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
        self.check_index(&index, &idx_bytes[..used], tail_start)?;
        self.check_trailer(&trailer, tail_start)?;
        self.done = Some(trailer);
        Ok(())
    }

    /// The page index must list exactly the frames read, canonically encoded.
    fn check_index(&self, index: &PageIndex, idx_bytes: &[u8], tail_start: u64) -> Result<()> {
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
        if canonical[..] != idx_bytes[..] {
            return Err(Error::invalid(
                Rule::PageIndex,
                "page index entries differ from frame: varints are not minimally encoded",
            )
            .at(tail_start));
        }
        Ok(())
    }

    /// Trailer rules: the post-apply checksum's shape, and a snapshot's
    /// completeness and page sum.
    fn check_trailer(&self, trailer: &Trailer, tail_start: u64) -> Result<()> {
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
