//! One page frame: its header layout, its payload encodings, and decoding a
//! frame held in memory. The encoder, the streaming decoder and the page index
//! all build on this module and on nothing of each other's frame handling.
//!
//! ```text
//! 0  pgno   u32 BE     0 marks the end of the page block (flags 0 too)
//! 4  flags  u16 BE     0x0001: size-prefixed LZ4 block; 0: legacy LZ4 frame
//! 6  size   u32 BE     compressed length (flag 0x0001 only)
//! 10 LZ4 block         decompresses to exactly PageSize bytes
//! ```
//! Legacy frames (flags 0, Litestream 0.5.0–0.5.15) hold a complete LZ4 frame
//! instead of the size prefix and block; they are read, never written.

use std::io::Read;

use crate::checksum::read_full;
use crate::error::{Error, Result, Rule};
use crate::PageSize;

/// Page frame flag: a 4-byte compressed size follows the page header.
pub const PAGE_FLAG_SIZE: u16 = 0x0001;
/// The page header: page number and flags.
pub(crate) const PAGE_HEADER_SIZE: usize = 6;
/// Page header plus the size prefix of a flag-0x0001 frame.
pub(crate) const FRAME_PREFIX_SIZE: usize = PAGE_HEADER_SIZE + 4;

/// The largest frame a page of this size can take: header, size prefix and
/// the worst-case LZ4 block.
pub fn max_frame_size(ps: PageSize) -> usize {
    FRAME_PREFIX_SIZE + lz4_flex::block::get_maximum_output_size(ps.as_usize())
}

/// Splits a page header into page number and flags.
pub(crate) fn parse_page_header(h: &[u8; PAGE_HEADER_SIZE]) -> (u32, u16) {
    (
        u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
        u16::from_be_bytes([h[4], h[5]]),
    )
}

/// The page header and size prefix of a flag-0x0001 frame.
pub(crate) fn frame_prefix(pgno: u32, compressed_size: u32) -> [u8; FRAME_PREFIX_SIZE] {
    let mut p = [0u8; FRAME_PREFIX_SIZE];
    p[0..4].copy_from_slice(&pgno.to_be_bytes());
    p[4..6].copy_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
    p[6..10].copy_from_slice(&compressed_size.to_be_bytes());
    p
}

/// Decompresses a size-prefixed frame's LZ4 block, which must fill `out` exactly.
pub(crate) fn decode_block(block: &[u8], out: &mut [u8]) -> Result<()> {
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
    let Some(ph) = frame.first_chunk::<PAGE_HEADER_SIZE>() else {
        return Err(Error::invalid(Rule::Truncated, "truncated page header"));
    };
    let (pgno, flags) = parse_page_header(ph);
    if pgno == 0 {
        return Err(Error::invalid(Rule::PageHeader, "page number required"));
    }
    match flags {
        PAGE_FLAG_SIZE => {
            let sb = frame
                .get(6..10)
                .ok_or_else(|| Error::invalid(Rule::Truncated, "truncated size prefix"))?;
            let csize = u32::from_be_bytes([sb[0], sb[1], sb[2], sb[3]]) as usize;
            if frame.len() != FRAME_PREFIX_SIZE + csize {
                return Err(Error::invalid(
                    Rule::PageIndex,
                    format!(
                        "frame is {} bytes, its size prefix says {}",
                        frame.len(),
                        FRAME_PREFIX_SIZE + csize
                    ),
                )
                .page(pgno));
            }
            decode_block(&frame[FRAME_PREFIX_SIZE..], out).map_err(|e| e.page(pgno))?;
        }
        0 => {
            let mut r = &frame[PAGE_HEADER_SIZE..];
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

const LZ4_FRAME_MAGIC: u32 = 0x184D_2204;

fn lz4_error(detail: String) -> Error {
    Error::invalid(Rule::Lz4Block, detail)
}

fn lz4_truncated(what: &str) -> Error {
    Error::invalid(Rule::Truncated, format!("truncated LZ4 frame ({what})"))
}

/// What an LZ4 frame descriptor says about the blocks that follow it.
struct Lz4Descriptor {
    block_checksums: bool,
    content_checksum: bool,
    block_max: usize,
}

/// Reads one complete LZ4 frame (the legacy page payload) that must decompress
/// to exactly `out.len()` bytes, and consumes nothing past its end.
pub(crate) fn read_lz4_frame<R: Read>(r: &mut R, out: &mut [u8]) -> Result<()> {
    let desc = read_lz4_descriptor(r, out.len())?;
    let filled = read_lz4_blocks(r, &desc, out)?;
    if desc.content_checksum {
        let mut cb = [0u8; 4];
        if read_full(r, &mut cb)? < 4 {
            return Err(lz4_truncated("content checksum"));
        }
        if u32::from_le_bytes(cb) != xxh32(&out[..filled], 0) {
            return Err(lz4_error("LZ4 frame content checksum mismatch".into()));
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

/// Reads and checks the frame header (magic, descriptor, header checksum); a
/// stated content size must equal `page_len`.
fn read_lz4_descriptor<R: Read>(r: &mut R, page_len: usize) -> Result<Lz4Descriptor> {
    let mut fixed = [0u8; 6];
    if read_full(r, &mut fixed)? < 6 {
        return Err(lz4_truncated("header"));
    }
    let magic = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
    if magic != LZ4_FRAME_MAGIC {
        return Err(lz4_error(format!(
            "LZ4 frame magic is {magic:08x}, want {LZ4_FRAME_MAGIC:08x}"
        )));
    }
    let flg = fixed[4];
    let bd = fixed[5];
    if flg >> 6 != 1 {
        return Err(lz4_error(format!(
            "unsupported LZ4 frame version in FLG 0x{flg:02x}"
        )));
    }
    if flg & 0x02 != 0 || bd & 0x8f != 0 {
        return Err(lz4_error(format!(
            "reserved bits set in LZ4 frame descriptor (FLG 0x{flg:02x}, BD 0x{bd:02x})"
        )));
    }
    let has_content_size = flg & 0x08 != 0;
    let has_dict = flg & 0x01 != 0;
    let block_max = match (bd >> 4) & 0x7 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        x => return Err(lz4_error(format!("invalid LZ4 block size id {x}"))),
    };
    let mut desc = vec![flg, bd];
    let extra = if has_content_size { 8 } else { 0 } + if has_dict { 4 } else { 0 };
    let mut opt = vec![0u8; extra + 1];
    if read_full(r, &mut opt)? < opt.len() {
        return Err(lz4_truncated("descriptor"));
    }
    desc.extend_from_slice(&opt[..extra]);
    let hc = opt[extra];
    let want_hc = ((xxh32(&desc, 0) >> 8) & 0xff) as u8;
    if hc != want_hc {
        return Err(lz4_error(format!(
            "LZ4 frame header checksum is {hc:02x}, want {want_hc:02x}"
        )));
    }
    if has_dict {
        return Err(lz4_error(
            "LZ4 frames with a dictionary are not used by LTX".into(),
        ));
    }
    if has_content_size {
        let mut a = [0u8; 8];
        a.copy_from_slice(&opt[..8]);
        let cs = u64::from_le_bytes(a);
        if cs != page_len as u64 {
            return Err(Error::invalid(
                Rule::PayloadSize,
                format!("LZ4 frame content size {cs}, page size is {page_len}"),
            ));
        }
    }
    Ok(Lz4Descriptor {
        block_checksums: flg & 0x10 != 0,
        content_checksum: flg & 0x04 != 0,
        block_max,
    })
}

/// Reads blocks up to the end mark into `out`; returns the bytes filled.
fn read_lz4_blocks<R: Read>(r: &mut R, desc: &Lz4Descriptor, out: &mut [u8]) -> Result<usize> {
    let mut filled = 0usize;
    let mut block = Vec::new();
    loop {
        let mut sb = [0u8; 4];
        if read_full(r, &mut sb)? < 4 {
            return Err(lz4_truncated("block size"));
        }
        let raw = u32::from_le_bytes(sb);
        if raw == 0 {
            return Ok(filled);
        }
        let uncompressed = raw & 0x8000_0000 != 0;
        let len = (raw & 0x7fff_ffff) as usize;
        if len > desc.block_max {
            return Err(lz4_error(format!(
                "LZ4 frame block of {len} bytes exceeds the {}-byte maximum",
                desc.block_max
            )));
        }
        block.resize(len, 0);
        if read_full(r, &mut block)? < len {
            return Err(lz4_truncated("block"));
        }
        if desc.block_checksums {
            let mut cb = [0u8; 4];
            if read_full(r, &mut cb)? < 4 {
                return Err(lz4_truncated("block checksum"));
            }
            if u32::from_le_bytes(cb) != xxh32(&block, 0) {
                return Err(lz4_error("LZ4 frame block checksum mismatch".into()));
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
                .map_err(|e| lz4_error(format!("LZ4 block does not decode: {e}")))?
        };
        filled += n;
    }
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

    #[test]
    fn frame_prefix_round_trips() {
        let p = frame_prefix(0x0102_0304, 77);
        assert_eq!(p, [1, 2, 3, 4, 0, 1, 0, 0, 0, 77]);
        let mut h = [0u8; PAGE_HEADER_SIZE];
        h.copy_from_slice(&p[..PAGE_HEADER_SIZE]);
        assert_eq!(parse_page_header(&h), (0x0102_0304, PAGE_FLAG_SIZE));
    }
}
