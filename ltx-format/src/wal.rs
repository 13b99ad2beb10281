//! SQLite WAL parsing: the 32-byte header, 24-byte frame headers, salts, and the
//! cumulative checksum in both byte orders.
//!
//! ```text
//! WAL header (big-endian fields)        frame header (big-endian fields)
//!  0 magic 0x377f0682 (LE sums) | 0x377f0683 (BE sums)    0 page number
//!  4 format version 3007000                                4 commit: db size in pages, 0 if not a commit
//!  8 page size                                             8 salt 1 (= header's)
//! 12 checkpoint sequence                                  12 salt 2 (= header's)
//! 16 salt 1, 20 salt 2                                     16 checksum 1, 20 checksum 2
//! 24 checksum 1, 28 checksum 2 (over bytes 0..24)
//! ```
//! Frame checksums chain: each covers the frame header's first 8 bytes and the
//! page, starting from the previous frame's (the header's for the first). The
//! valid WAL ends at the first frame whose salts or checksum do not match; only
//! frames up to the last commit frame before that are committed.

use std::collections::BTreeMap;
use std::io::Read;

use crate::checksum::read_full;
use crate::error::{Error, Result, Rule};
use crate::PageSize;

pub const WAL_HEADER_SIZE: usize = 32;
pub const WAL_FRAME_HEADER_SIZE: usize = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
const WAL_VERSION: u32 = 3_007_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    pub magic: u32,
    pub version: u32,
    pub page_size: PageSize,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: (u32, u32),
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl WalHeader {
    /// Parses and verifies a WAL header (magic, version, page size, checksum).
    pub fn parse(b: &[u8; WAL_HEADER_SIZE]) -> Result<Self> {
        let bad = |d: String| Error::invalid(Rule::Wal, d);
        let magic = be32(b, 0);
        if magic != MAGIC_LE && magic != MAGIC_BE {
            return Err(bad(format!(
                "WAL magic is {magic:08x}, want 377f0682 or 377f0683"
            )));
        }
        let version = be32(b, 4);
        if version != WAL_VERSION {
            return Err(bad(format!(
                "WAL format version {version}, want {WAL_VERSION}"
            )));
        }
        let page_size = PageSize::new(be32(b, 8))
            .map_err(|_| bad(format!("WAL page size {} is invalid", be32(b, 8))))?;
        let h = WalHeader {
            magic,
            version,
            page_size,
            checkpoint_seq: be32(b, 12),
            salt1: be32(b, 16),
            salt2: be32(b, 20),
            checksum: (be32(b, 24), be32(b, 28)),
        };
        let want = wal_checksum(h.big_endian(), (0, 0), &b[..24]);
        if want != h.checksum {
            return Err(bad(format!(
                "WAL header checksum is {:08x}{:08x}, content gives {:08x}{:08x}",
                h.checksum.0, h.checksum.1, want.0, want.1
            )));
        }
        Ok(h)
    }

    /// Whether checksums read words big-endian (magic 0x377f0683).
    pub fn big_endian(&self) -> bool {
        self.magic & 1 == 1
    }

    pub fn encode(&self) -> [u8; WAL_HEADER_SIZE] {
        let mut b = [0u8; WAL_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.magic.to_be_bytes());
        b[4..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.get().to_be_bytes());
        b[12..16].copy_from_slice(&self.checkpoint_seq.to_be_bytes());
        b[16..20].copy_from_slice(&self.salt1.to_be_bytes());
        b[20..24].copy_from_slice(&self.salt2.to_be_bytes());
        b[24..28].copy_from_slice(&self.checksum.0.to_be_bytes());
        b[28..32].copy_from_slice(&self.checksum.1.to_be_bytes());
        b
    }

    /// Size of one frame: header plus page.
    pub fn frame_size(&self) -> u64 {
        WAL_FRAME_HEADER_SIZE as u64 + u64::from(self.page_size.get())
    }
}

/// SQLite's `walChecksumBytes`: `s1 += x0 + s2; s2 += x1 + s1` over pairs of
/// 32-bit words, read big-endian if `big_endian` and little-endian otherwise.
/// `data.len()` must be a multiple of 8 (a trailing partial pair is ignored).
pub fn wal_checksum(big_endian: bool, start: (u32, u32), data: &[u8]) -> (u32, u32) {
    if big_endian {
        split_checksum::<true>(start, data)
    } else {
        split_checksum::<false>(start, data)
    }
}

// Speed. The daemon verifies every WAL frame it ships, and the sum is one long
// dependency chain, so the loop is bound by add latency, not by loads (SQLite's
// order compiles to three dependent adds per pair). Two rearrangements, both
// exact in wrapping u32 arithmetic, shorten the chain:
//
// * A step is linear: (s1, s2) <- M (s1, s2) + (x0, x0 + x1), M = [[1, 1],
//   [1, 2]]. Computing both new values from the old pair, instead of s2 from
//   the new s1, leaves two dependent adds per pair.
// * Hence the sum over A ‖ B is M^|B| · sum(A from start) + sum(B from 0), with
//   |B| in pairs: the two halves of a buffer run as independent chains, which
//   the CPU overlaps, and are joined with one matrix power.
// Four chains, or 8-byte loads, measured no better than two.

/// Below this many pairs (512 bytes) the join's multiplications cost about
/// what the second chain saves.
const SPLIT_MIN_PAIRS: usize = 64;

#[inline(always)]
fn word<const BE: bool>(b: &[u8]) -> u32 {
    let w = [b[0], b[1], b[2], b[3]];
    if BE {
        u32::from_be_bytes(w)
    } else {
        u32::from_le_bytes(w)
    }
}

/// One step of the sum on a pair of words.
#[inline(always)]
fn step<const BE: bool>((s1, s2): (u32, u32), pair: &[u8]) -> (u32, u32) {
    let x0 = word::<BE>(&pair[0..4]);
    let x01 = x0.wrapping_add(word::<BE>(&pair[4..8]));
    (
        s1.wrapping_add(s2).wrapping_add(x0),
        s1.wrapping_add(s2.wrapping_mul(2)).wrapping_add(x01),
    )
}

#[inline(always)]
fn chain<const BE: bool>(start: (u32, u32), data: &[u8]) -> (u32, u32) {
    data.chunks_exact(8).fold(start, step::<BE>)
}

#[inline(always)]
fn split_checksum<const BE: bool>(start: (u32, u32), data: &[u8]) -> (u32, u32) {
    let half = data.len() / 16;
    if half < SPLIT_MIN_PAIRS / 2 {
        return chain::<BE>(start, data);
    }
    let (a, rest) = data.split_at(half * 8);
    let (b, tail) = rest.split_at(half * 8);
    let (mut sa, mut sb) = (start, (0, 0));
    for (pa, pb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        sa = step::<BE>(sa, pa);
        sb = step::<BE>(sb, pb);
    }
    let (m1, m2) = step_power(half).apply(sa);
    chain::<BE>((m1.wrapping_add(sb.0), m2.wrapping_add(sb.1)), tail)
}

/// A 2×2 matrix over wrapping u32, row-major.
#[derive(Clone, Copy)]
struct Mat([u32; 4]);

impl Mat {
    const IDENTITY: Mat = Mat([1, 0, 0, 1]);

    const fn mul(self, o: Mat) -> Mat {
        let (a, b) = (self.0, o.0);
        Mat([
            a[0].wrapping_mul(b[0])
                .wrapping_add(a[1].wrapping_mul(b[2])),
            a[0].wrapping_mul(b[1])
                .wrapping_add(a[1].wrapping_mul(b[3])),
            a[2].wrapping_mul(b[0])
                .wrapping_add(a[3].wrapping_mul(b[2])),
            a[2].wrapping_mul(b[1])
                .wrapping_add(a[3].wrapping_mul(b[3])),
        ])
    }

    fn apply(self, (s1, s2): (u32, u32)) -> (u32, u32) {
        let m = self.0;
        (
            m[0].wrapping_mul(s1).wrapping_add(m[1].wrapping_mul(s2)),
            m[2].wrapping_mul(s1).wrapping_add(m[3].wrapping_mul(s2)),
        )
    }
}

/// `M^(2^k)` for each k, so that a power costs one product per set bit (one
/// in all for a power-of-two page size).
const STEP_SQUARES: [Mat; usize::BITS as usize] = {
    let mut t = [Mat::IDENTITY; usize::BITS as usize];
    let mut m = Mat([1, 1, 1, 2]);
    let mut k = 0;
    while k < t.len() {
        t[k] = m;
        m = m.mul(m);
        k += 1;
    }
    t
};

/// `M^n`: the effect of `n` pairs on the running sum.
fn step_power(mut n: usize) -> Mat {
    let mut r = Mat::IDENTITY;
    while n != 0 {
        r = r.mul(STEP_SQUARES[n.trailing_zeros() as usize]);
        n &= n - 1;
    }
    r
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalFrameHeader {
    pub pgno: u32,
    /// Database size in pages after this commit; 0 for a non-commit frame.
    pub commit: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: (u32, u32),
}

impl WalFrameHeader {
    pub fn parse(b: &[u8; WAL_FRAME_HEADER_SIZE]) -> Self {
        WalFrameHeader {
            pgno: be32(b, 0),
            commit: be32(b, 4),
            salt1: be32(b, 8),
            salt2: be32(b, 12),
            checksum: (be32(b, 16), be32(b, 20)),
        }
    }

    pub fn encode(&self) -> [u8; WAL_FRAME_HEADER_SIZE] {
        let mut b = [0u8; WAL_FRAME_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.pgno.to_be_bytes());
        b[4..8].copy_from_slice(&self.commit.to_be_bytes());
        b[8..12].copy_from_slice(&self.salt1.to_be_bytes());
        b[12..16].copy_from_slice(&self.salt2.to_be_bytes());
        b[16..20].copy_from_slice(&self.checksum.0.to_be_bytes());
        b[20..24].copy_from_slice(&self.checksum.1.to_be_bytes());
        b
    }
}

/// Where a WAL reader stands: the byte offset of the next frame and the running
/// checksum after the frame before it. Persisting this lets a reader resume
/// without re-reading the WAL from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalCursor {
    pub offset: u64,
    pub checksum: (u32, u32),
}

/// Iterates the valid frames of a WAL, verifying salts and the checksum chain.
#[derive(Debug)]
pub struct WalReader<R: Read> {
    r: R,
    header: WalHeader,
    cursor: WalCursor,
}

impl<R: Read> WalReader<R> {
    /// Reads the header from the start of `r`.
    pub fn new(mut r: R) -> Result<Self> {
        let mut hb = [0u8; WAL_HEADER_SIZE];
        if read_full(&mut r, &mut hb)? < WAL_HEADER_SIZE {
            return Err(Error::invalid(
                Rule::Wal,
                "WAL is shorter than its 32-byte header",
            ));
        }
        let header = WalHeader::parse(&hb)?;
        Ok(WalReader {
            r,
            header,
            cursor: WalCursor {
                offset: WAL_HEADER_SIZE as u64,
                checksum: header.checksum,
            },
        })
    }

    /// Continues from a cursor; `r` must be positioned at `cursor.offset`.
    pub fn resume(r: R, header: WalHeader, cursor: WalCursor) -> Self {
        WalReader { r, header, cursor }
    }

    pub fn header(&self) -> &WalHeader {
        &self.header
    }

    pub fn cursor(&self) -> WalCursor {
        self.cursor
    }

    /// Reads the next valid frame into `page`; `None` at the end of the valid
    /// WAL (end of file, a partial frame, other salts, or a checksum break).
    pub fn next_frame(&mut self, page: &mut [u8]) -> Result<Option<WalFrameHeader>> {
        let ps = self.header.page_size.as_usize();
        if page.len() != ps {
            return Err(Error::Usage(format!(
                "page buffer is {} bytes, WAL page size is {ps}",
                page.len()
            )));
        }
        let mut fb = [0u8; WAL_FRAME_HEADER_SIZE];
        if read_full(&mut self.r, &mut fb)? < WAL_FRAME_HEADER_SIZE {
            return Ok(None);
        }
        if read_full(&mut self.r, page)? < ps {
            return Ok(None);
        }
        let fh = WalFrameHeader::parse(&fb);
        if fh.salt1 != self.header.salt1 || fh.salt2 != self.header.salt2 || fh.pgno == 0 {
            return Ok(None);
        }
        let be = self.header.big_endian();
        let sum = wal_checksum(be, wal_checksum(be, self.cursor.checksum, &fb[..8]), page);
        if sum != fh.checksum {
            return Ok(None);
        }
        self.cursor = WalCursor {
            offset: self.cursor.offset + self.header.frame_size(),
            checksum: sum,
        };
        Ok(Some(fh))
    }
}

/// The committed frames found by [`scan_committed`].
#[derive(Debug, Clone, Default)]
pub struct CommittedFrames {
    /// For each page, the byte offset (in the WAL) of its newest committed frame's page data.
    pub pages: BTreeMap<u32, u64>,
    /// Database size in pages after the last commit.
    pub commit: u32,
    /// Number of commit frames seen.
    pub transactions: u64,
    /// Cursor just after the last commit frame.
    pub end: WalCursor,
}

/// Reads frames from the reader's cursor to the end of the valid WAL and keeps
/// those up to the last commit frame. Returns `None` if there is no new commit.
pub fn scan_committed<R: Read>(wal: &mut WalReader<R>) -> Result<Option<CommittedFrames>> {
    let mut page = vec![0u8; wal.header().page_size.as_usize()];
    let mut pending: Vec<(u32, u64)> = Vec::new();
    let mut out = CommittedFrames::default();
    loop {
        let data_offset = wal.cursor().offset + WAL_FRAME_HEADER_SIZE as u64;
        let Some(fh) = wal.next_frame(&mut page)? else {
            break;
        };
        pending.push((fh.pgno, data_offset));
        if fh.commit != 0 {
            for (p, o) in pending.drain(..) {
                out.pages.insert(p, o);
            }
            out.commit = fh.commit;
            out.transactions += 1;
            out.end = wal.cursor();
        }
    }
    if out.transactions == 0 {
        return Ok(None);
    }
    // Pages past the final database size were freed by a shrinking commit.
    let commit = out.commit;
    out.pages.retain(|&p, _| p <= commit);
    Ok(Some(out))
}

/// Reads frames from the reader's cursor up to and including the next commit
/// frame: one transaction. Returns `None` (the reader consumed, the cursor
/// to be ignored) if the valid WAL ends before a commit frame.
pub fn next_transaction<R: Read>(wal: &mut WalReader<R>) -> Result<Option<CommittedFrames>> {
    let mut page = vec![0u8; wal.header().page_size.as_usize()];
    let mut out = CommittedFrames::default();
    loop {
        let data_offset = wal.cursor().offset + WAL_FRAME_HEADER_SIZE as u64;
        let Some(fh) = wal.next_frame(&mut page)? else {
            return Ok(None);
        };
        out.pages.insert(fh.pgno, data_offset);
        if fh.commit != 0 {
            out.commit = fh.commit;
            out.transactions = 1;
            out.end = wal.cursor();
            let commit = out.commit;
            out.pages.retain(|&p, _| p <= commit);
            return Ok(Some(out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `walChecksumBytes` as SQLite writes it.
    fn straightforward(big_endian: bool, start: (u32, u32), data: &[u8]) -> (u32, u32) {
        let (mut s1, mut s2) = start;
        for c in data.chunks_exact(8) {
            let rd = |b: &[u8]| {
                let w = [b[0], b[1], b[2], b[3]];
                if big_endian {
                    u32::from_be_bytes(w)
                } else {
                    u32::from_le_bytes(w)
                }
            };
            s1 = s1.wrapping_add(rd(&c[0..4])).wrapping_add(s2);
            s2 = s2.wrapping_add(rd(&c[4..8])).wrapping_add(s1);
        }
        (s1, s2)
    }

    #[test]
    fn checksum_matches_sqlite_loop_on_random_data() {
        use proptest::prelude::RngExt;
        use proptest::test_runner::{RngAlgorithm, TestRng};
        let mut rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let mut next = move || rng.random::<u64>();
        let data: Vec<u8> = (0..65536 + 64).map(|_| next() as u8).collect();
        let lens = (0..=1100).chain([4096, 4096 + 8, 4096 + 24, 8192, 32768, 65536, 65536 + 56]);
        let mut checked = 0;
        for len in lens {
            for be in [false, true] {
                let start = (next() as u32, next() as u32);
                let off = (next() % 8) as usize;
                let d = &data[off..off + len];
                assert_eq!(
                    wal_checksum(be, start, d),
                    straightforward(be, start, d),
                    "len {len} big_endian {be} offset {off}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 2 * 1108);
    }

    #[test]
    fn step_power_composes() {
        let mut m = Mat::IDENTITY;
        for n in 0..200 {
            assert_eq!(step_power(n).0, m.0, "M^{n}");
            m = m.mul(Mat([1, 1, 1, 2]));
        }
    }

    fn build_wal(big_endian: bool, frames: &[(u32, u32, u8)]) -> Vec<u8> {
        let ps = PageSize::new(512).unwrap();
        let mut h = WalHeader {
            magic: if big_endian { MAGIC_BE } else { MAGIC_LE },
            version: WAL_VERSION,
            page_size: ps,
            checkpoint_seq: 0,
            salt1: 0x1111,
            salt2: 0x2222,
            checksum: (0, 0),
        };
        h.checksum = wal_checksum(big_endian, (0, 0), &h.encode()[..24]);
        let mut out = h.encode().to_vec();
        let mut sum = h.checksum;
        for &(pgno, commit, fill) in frames {
            let page = vec![fill; 512];
            let mut fh = WalFrameHeader {
                pgno,
                commit,
                salt1: h.salt1,
                salt2: h.salt2,
                checksum: (0, 0),
            };
            sum = wal_checksum(big_endian, sum, &fh.encode()[..8]);
            sum = wal_checksum(big_endian, sum, &page);
            fh.checksum = sum;
            out.extend_from_slice(&fh.encode());
            out.extend_from_slice(&page);
        }
        out
    }

    #[test]
    fn committed_frames_both_byte_orders() {
        for be in [false, true] {
            let wal = build_wal(be, &[(1, 0, 1), (2, 2, 2), (2, 0, 3), (3, 3, 4), (1, 0, 5)]);
            let mut r = WalReader::new(&wal[..]).unwrap();
            let c = scan_committed(&mut r).unwrap().unwrap();
            assert_eq!(c.transactions, 2);
            assert_eq!(c.commit, 3);
            assert_eq!(c.pages.len(), 3);
            // Page 2's newest committed frame is the third (index 2).
            assert_eq!(c.pages[&2], 32 + 2 * 536 + 24);
            assert_eq!(c.end.offset, 32 + 4 * 536);
        }
    }

    #[test]
    fn transactions_one_at_a_time() {
        let wal = build_wal(
            false,
            &[(1, 0, 1), (2, 2, 2), (2, 0, 3), (3, 3, 4), (1, 0, 5)],
        );
        let mut r = WalReader::new(&wal[..]).unwrap();
        let a = next_transaction(&mut r).unwrap().unwrap();
        assert_eq!((a.commit, a.transactions), (2, 1));
        assert_eq!(a.pages.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(a.end.offset, 32 + 2 * 536);
        let b = next_transaction(&mut r).unwrap().unwrap();
        assert_eq!(b.commit, 3);
        assert_eq!(b.pages.keys().copied().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(b.pages[&2], 32 + 2 * 536 + 24);
        // The last frame has no commit: no third transaction.
        assert!(next_transaction(&mut r).unwrap().is_none());
    }

    #[test]
    fn checksum_break_ends_the_wal() {
        let mut wal = build_wal(false, &[(1, 1, 1), (2, 2, 2)]);
        let last = wal.len() - 1;
        wal[last] ^= 1;
        let mut r = WalReader::new(&wal[..]).unwrap();
        let c = scan_committed(&mut r).unwrap().unwrap();
        assert_eq!(c.transactions, 1);
        assert_eq!(c.commit, 1);
    }

    #[test]
    fn bad_header_is_an_error() {
        let mut wal = build_wal(true, &[]);
        wal[10] ^= 1;
        let e = WalReader::new(&wal[..]).unwrap_err();
        assert_eq!(e.rule(), Some(Rule::Wal));
    }
}
