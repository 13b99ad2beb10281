//! The page index, and random access to one page through it.
//!
//! ```text
//! repeat: uvarint(pgno) uvarint(offset) uvarint(size)   one per frame, ascending pgno
//! uvarint(0)                                            terminator
//! u64 BE                                                byte length of the above
//! ```
//! `offset` is the absolute offset of the frame's page header, `size` the whole
//! frame (see [`crate::frame`]).

use std::io::{Read, Seek, SeekFrom};

use crate::checksum::read_full;
use crate::error::{Error, Result, Rule};
use crate::frame::{decode_frame, max_frame_size, PAGE_HEADER_SIZE};
use crate::header::{Header, HEADER_SIZE, TRAILER_SIZE};

/// One page index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub pgno: u32,
    pub offset: u64,
    pub size: u64,
}

/// A file's page index, in ascending page order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageIndex {
    pub entries: Vec<IndexEntry>,
}

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a Go `binary.Uvarint`; `None` if the bytes run out or it overflows.
pub(crate) fn get_uvarint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let byte = *b.get(*pos + i)?;
        if i == 9 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            *pos += i + 1;
            return Some(v);
        }
    }
    None
}

impl PageIndex {
    /// The canonical encoding: entries, terminator, and the u64 length.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 8 + 9);
        for e in &self.entries {
            put_uvarint(&mut out, u64::from(e.pgno));
            put_uvarint(&mut out, e.offset);
            put_uvarint(&mut out, e.size);
        }
        put_uvarint(&mut out, 0);
        let len = out.len() as u64;
        out.extend_from_slice(&len.to_be_bytes());
        out
    }

    /// Parses index entries and the terminator from the start of `b`; returns the
    /// index and the number of bytes consumed, the u64 length included.
    pub fn parse(b: &[u8]) -> Result<(PageIndex, usize)> {
        let trunc = || Error::invalid(Rule::Truncated, "truncated page index");
        let mut pos = 0;
        let mut entries = Vec::new();
        loop {
            let pgno = get_uvarint(b, &mut pos).ok_or_else(trunc)?;
            if pgno == 0 {
                break;
            }
            let offset = get_uvarint(b, &mut pos).ok_or_else(trunc)?;
            let size = get_uvarint(b, &mut pos).ok_or_else(trunc)?;
            let pgno = u32::try_from(pgno).map_err(|_| {
                Error::invalid(Rule::PageIndex, format!("page number {pgno} out of range"))
            })?;
            entries.push(IndexEntry { pgno, offset, size });
        }
        let entries_len = pos as u64;
        let lb = b.get(pos..pos + 8).ok_or_else(trunc)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(lb);
        let stated = u64::from_be_bytes(a);
        if stated != entries_len {
            return Err(Error::invalid(
                Rule::PageIndex,
                format!("page index length field says {stated} bytes, entries take {entries_len}"),
            ));
        }
        Ok((PageIndex { entries }, pos + 8))
    }

    pub fn get(&self, pgno: u32) -> Option<&IndexEntry> {
        self.entries
            .binary_search_by_key(&pgno, |e| e.pgno)
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// Reads the header and page index of a file without reading its pages: the
/// trailer is the last 16 bytes and the index length sits just before it.
/// No allocation exceeds the file's own length.
pub fn read_page_index<R: Read + Seek>(r: &mut R) -> Result<(Header, PageIndex)> {
    let len = r.seek(SeekFrom::End(0))?;
    let min = (HEADER_SIZE + PAGE_HEADER_SIZE + 1 + 8 + TRAILER_SIZE) as u64;
    if len < min {
        return Err(Error::invalid(
            Rule::Truncated,
            format!("file is {len} bytes, shorter than the smallest LTX file ({min})"),
        ));
    }
    r.seek(SeekFrom::Start(0))?;
    let mut hb = [0u8; HEADER_SIZE];
    r.read_exact(&mut hb)?;
    let header = Header::decode(&hb)?;
    r.seek(SeekFrom::Start(len - TRAILER_SIZE as u64 - 8))?;
    let mut lb = [0u8; 8];
    r.read_exact(&mut lb)?;
    let entries_len = u64::from_be_bytes(lb);
    let room = len - min + 1;
    if entries_len == 0 || entries_len > room {
        return Err(Error::invalid(
            Rule::PageIndex,
            format!("page index length {entries_len} does not fit in a {len}-byte file"),
        )
        .at(len - TRAILER_SIZE as u64 - 8));
    }
    let start = len - TRAILER_SIZE as u64 - 8 - entries_len;
    r.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; entries_len as usize + 8];
    let n = read_full(r, &mut buf)?;
    if n != buf.len() {
        return Err(Error::invalid(Rule::Truncated, "truncated page index").at(start));
    }
    let (index, used) = PageIndex::parse(&buf).map_err(|e| e.at(start))?;
    if used != buf.len() {
        return Err(Error::invalid(Rule::PageIndex, "page index length field is wrong").at(start));
    }
    for e in &index.entries {
        if e.offset < HEADER_SIZE as u64
            || e.offset.saturating_add(e.size) > start
            || e.size < PAGE_HEADER_SIZE as u64
        {
            return Err(Error::invalid(
                Rule::PageIndex,
                format!(
                    "index entry for page {} (offset {}, size {}) lies outside the page block",
                    e.pgno, e.offset, e.size
                ),
            )
            .page(e.pgno));
        }
    }
    Ok((header, index))
}

/// Reads and decodes one page through its index entry into `out` (PageSize bytes).
pub fn read_page<R: Read + Seek>(
    r: &mut R,
    header: &Header,
    entry: &IndexEntry,
    out: &mut [u8],
) -> Result<()> {
    let max = max_frame_size(header.page_size) as u64;
    if entry.size > max {
        return Err(Error::invalid(
            Rule::PageIndex,
            format!(
                "index entry size {} exceeds the largest frame {max}",
                entry.size
            ),
        )
        .page(entry.pgno));
    }
    r.seek(SeekFrom::Start(entry.offset))?;
    let mut buf = vec![0u8; entry.size as usize];
    r.read_exact(&mut buf)?;
    let pgno = decode_frame(&buf, header.page_size, out).map_err(|e| e.at(entry.offset))?;
    if pgno != entry.pgno {
        return Err(Error::invalid(
            Rule::PageIndex,
            format!(
                "index says page {} but the frame holds page {pgno}",
                entry.pgno
            ),
        )
        .at(entry.offset));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvarint_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut b = Vec::new();
            put_uvarint(&mut b, v);
            let mut p = 0;
            assert_eq!(get_uvarint(&b, &mut p), Some(v));
            assert_eq!(p, b.len());
        }
        let mut p = 0;
        assert_eq!(get_uvarint(&[0x80, 0x80], &mut p), None);
    }

    #[test]
    fn empty_index_bytes() {
        let idx = PageIndex::default();
        assert_eq!(idx.encode(), vec![0, 0, 0, 0, 0, 0, 0, 0, 1]);
    }
}
