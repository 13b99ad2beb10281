//! Streaming LTX writer.
//!
//! Pages go in ascending order, each compressed as a size-prefixed LZ4 block
//! (flag 0x0001), as ltx v0.5.2+ and Litestream 0.5.16+ write them. The file
//! checksum and the page checksums are computed while writing; `finish` refuses
//! to write a file that breaks a rule a strict reader would reject.

use std::io::Write;

use crate::checksum::{lock_pgno, Checksum, Crc64Digest, DbChecksum, CHECKSUM_FLAG, CRC64};
use crate::error::{Error, Result};
use crate::frame::{frame_prefix, FRAME_PREFIX_SIZE, PAGE_HEADER_SIZE};
use crate::header::{Header, Trailer, HEADER_SIZE};
use crate::index::{IndexEntry, PageIndex};

// Kept at its old path for callers of `ltx_format::encoder::PAGE_FLAG_SIZE`.
pub use crate::frame::PAGE_FLAG_SIZE;

pub struct Encoder<W: Write> {
    w: W,
    header: Header,
    digest: Crc64Digest,
    offset: u64,
    index: PageIndex,
    last_pgno: u32,
    lock: u32,
    pages_sum: DbChecksum,
    frame: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for Encoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("header", &self.header)
            .field("offset", &self.offset)
            .field("pages", &self.index.entries.len())
            .finish()
    }
}

impl<W: Write> Encoder<W> {
    /// Validates and writes the header.
    pub fn new(mut w: W, header: Header) -> Result<Self> {
        header.validate().map_err(|e| Error::Usage(e.to_string()))?;
        let hb = header.encode();
        w.write_all(&hb)?;
        let mut digest = CRC64.digest();
        digest.update(&hb);
        let ps = header.page_size.as_usize();
        Ok(Encoder {
            w,
            header,
            digest,
            offset: HEADER_SIZE as u64,
            index: PageIndex::default(),
            last_pgno: 0,
            lock: lock_pgno(header.page_size),
            pages_sum: DbChecksum::new(),
            frame: vec![0u8; FRAME_PREFIX_SIZE + lz4_flex::block::get_maximum_output_size(ps)],
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The database checksum of the pages written so far (a snapshot's
    /// post-apply checksum once every page is in).
    pub fn pages_checksum(&self) -> Checksum {
        self.pages_sum.value()
    }

    /// Appends one page. `data` must be exactly PageSize bytes.
    pub fn encode_page(&mut self, pgno: u32, data: &[u8]) -> Result<()> {
        let ps = self.header.page_size.as_usize();
        if data.len() != ps {
            return Err(Error::Usage(format!(
                "page {pgno} is {} bytes, page size is {ps}",
                data.len()
            )));
        }
        if pgno == 0 {
            return Err(Error::Usage("page number 0 is not allowed".into()));
        }
        if pgno > self.header.commit {
            return Err(Error::Usage(format!(
                "page {pgno} is beyond commit {}",
                self.header.commit
            )));
        }
        if pgno == self.lock {
            return Err(Error::Usage(format!(
                "page {pgno} is the lock page and is never stored"
            )));
        }
        if pgno <= self.last_pgno {
            return Err(Error::Usage(format!(
                "pages must ascend: page {pgno} after page {}",
                self.last_pgno
            )));
        }
        if self.header.is_snapshot() {
            let mut want = self.last_pgno + 1;
            if want == self.lock {
                want += 1;
            }
            if pgno != want {
                return Err(Error::Usage(format!(
                    "snapshot pages must be contiguous: page {pgno} where page {want} is due"
                )));
            }
        }
        let n = lz4_flex::block::compress_into(data, &mut self.frame[FRAME_PREFIX_SIZE..])
            .map_err(|e| Error::Usage(format!("LZ4 compression failed: {e}")))?;
        let prefix = frame_prefix(pgno, n as u32);
        self.frame[..FRAME_PREFIX_SIZE].copy_from_slice(&prefix);
        let size = FRAME_PREFIX_SIZE + n;
        self.w.write_all(&self.frame[..size])?;
        self.digest.update(&prefix);
        self.digest.update(data);
        self.pages_sum.toggle_page(pgno, data);
        let size = size as u64;
        self.index.entries.push(IndexEntry {
            pgno,
            offset: self.offset,
            size,
        });
        self.offset += size;
        self.last_pgno = pgno;
        Ok(())
    }

    /// Writes the end marker, page index and trailer; returns the writer and
    /// the trailer. `post_apply` must be 0 for NoChecksum files.
    pub fn finish(mut self, post_apply: Checksum) -> Result<(W, Trailer)> {
        let h = self.header;
        if h.is_snapshot() {
            let mut want = self.last_pgno;
            if want + 1 == self.lock && h.commit >= self.lock {
                want += 1;
            }
            if want != h.commit {
                return Err(Error::Usage(format!(
                    "snapshot is incomplete: pages end at {}, commit is {}",
                    self.last_pgno, h.commit
                )));
            }
        }
        if h.no_checksum() {
            if !post_apply.is_zero() {
                return Err(Error::Usage(format!(
                    "post-apply checksum must be 0 under NoChecksum, got {post_apply}"
                )));
            }
        } else {
            if !post_apply.is_well_formed() {
                return Err(Error::Usage(format!(
                    "post-apply checksum {post_apply} must be non-zero with bit 63 set"
                )));
            }
            if h.commit == 0 && post_apply != Checksum::EMPTY {
                return Err(Error::Usage(format!(
                    "an empty database (commit 0) has checksum {}, got {post_apply}",
                    Checksum::EMPTY
                )));
            }
            if h.is_snapshot() && post_apply != self.pages_sum.value() {
                return Err(Error::Usage(format!(
                    "snapshot post-apply checksum {post_apply} differs from its pages' {}",
                    self.pages_sum.value()
                )));
            }
        }
        let mut tail = Vec::with_capacity(6 + self.index.entries.len() * 8 + 9 + 16);
        tail.extend_from_slice(&[0u8; PAGE_HEADER_SIZE]);
        tail.extend_from_slice(&self.index.encode());
        tail.extend_from_slice(&post_apply.0.to_be_bytes());
        self.digest.update(&tail);
        let file_checksum = Checksum(CHECKSUM_FLAG | self.digest.finalize());
        tail.extend_from_slice(&file_checksum.0.to_be_bytes());
        self.w.write_all(&tail)?;
        self.w.flush()?;
        Ok((
            self.w,
            Trailer {
                post_apply_checksum: post_apply,
                file_checksum,
            },
        ))
    }
}
