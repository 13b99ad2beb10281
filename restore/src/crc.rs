//! Combining CRC-64/GO-ISO values of concatenated pieces, so that pieces of
//! one LTX file can be hashed on different cores and joined afterwards.
//!
//! For a CRC whose initial value equals its final XOR (all ones here),
//! `crc(A ‖ B) = Z(len B) · crc(A) ⊕ crc(B)`, where `Z(n)` is the linear map
//! of feeding `n` zero bytes through the raw CRC register. `Z(n)` is a 64×64
//! matrix over GF(2), built by repeated squaring (as zlib's `crc32_combine`).

use ltx_format::checksum::CRC64;

/// The reflected CRC-64/GO-ISO polynomial (Go's `crc64.ISO`).
const POLY: u64 = 0xD800_0000_0000_0000;

type Matrix = [u64; 64];

/// `m · v`: XOR of the columns of `m` selected by the bits of `v`.
fn times(m: &Matrix, mut v: u64) -> u64 {
    let mut sum = 0;
    let mut i = 0;
    while v != 0 {
        if v & 1 != 0 {
            sum ^= m[i];
        }
        v >>= 1;
        i += 1;
    }
    sum
}

/// `a · b`.
fn compose(a: &Matrix, b: &Matrix) -> Matrix {
    let mut out = [0u64; 64];
    for (o, col) in out.iter_mut().zip(b.iter()) {
        *o = times(a, *col);
    }
    out
}

fn identity() -> Matrix {
    let mut m = [0u64; 64];
    for (i, c) in m.iter_mut().enumerate() {
        *c = 1 << i;
    }
    m
}

/// The operator for one zero byte (eight zero bits).
fn one_byte() -> Matrix {
    let mut bit = [0u64; 64];
    bit[0] = POLY;
    for (n, c) in bit.iter_mut().enumerate().skip(1) {
        *c = 1 << (n - 1);
    }
    let two = compose(&bit, &bit);
    let four = compose(&two, &two);
    compose(&four, &four)
}

/// `Z(n)` for a fixed `n`, with byte tables so that applying it costs eight
/// lookups: worth building for lengths used once per page.
#[derive(Clone)]
pub struct Shift {
    tables: Box<[[u64; 256]; 8]>,
}

impl std::fmt::Debug for Shift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shift")
    }
}

/// The matrix of `Z(n)`.
fn zeros_matrix(mut n: u64) -> Matrix {
    let mut result = identity();
    let mut base = one_byte();
    while n != 0 {
        if n & 1 != 0 {
            result = compose(&base, &result);
        }
        n >>= 1;
        if n != 0 {
            base = compose(&base, &base);
        }
    }
    result
}

impl Shift {
    pub fn new(n: u64) -> Self {
        let m = zeros_matrix(n);
        let mut tables = Box::new([[0u64; 256]; 8]);
        for (k, table) in tables.iter_mut().enumerate() {
            for (b, slot) in table.iter_mut().enumerate() {
                *slot = times(&m, (b as u64) << (8 * k));
            }
        }
        Shift { tables }
    }

    /// `Z(n) · crc`.
    #[inline]
    pub fn apply(&self, crc: u64) -> u64 {
        let t = &self.tables;
        t[0][(crc & 0xff) as usize]
            ^ t[1][((crc >> 8) & 0xff) as usize]
            ^ t[2][((crc >> 16) & 0xff) as usize]
            ^ t[3][((crc >> 24) & 0xff) as usize]
            ^ t[4][((crc >> 32) & 0xff) as usize]
            ^ t[5][((crc >> 40) & 0xff) as usize]
            ^ t[6][((crc >> 48) & 0xff) as usize]
            ^ t[7][(crc >> 56) as usize]
    }

    /// `crc(A ‖ B)` from `crc(A)` and `crc(B)`, `B` being `n` bytes long.
    #[inline]
    pub fn combine(&self, crc_a: u64, crc_b: u64) -> u64 {
        self.apply(crc_a) ^ crc_b
    }
}

/// `crc(A ‖ B)` for any length of `B` (builds the operator each call).
pub fn combine(crc_a: u64, crc_b: u64, len_b: u64) -> u64 {
    if len_b == 0 {
        return crc_a;
    }
    times(&zeros_matrix(len_b), crc_a) ^ crc_b
}

/// Plain CRC-64/GO-ISO of `data` (the empty string hashes to 0).
#[inline]
pub fn crc64(data: &[u8]) -> u64 {
    CRC64.checksum(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_matches_one_pass() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let whole = crc64(&data);
        for split in [0usize, 1, 5, 6, 10, 100, 4096, 9999, 10_000] {
            let (a, b) = data.split_at(split);
            assert_eq!(
                combine(crc64(a), crc64(b), b.len() as u64),
                whole,
                "{split}"
            );
            assert_eq!(
                Shift::new(b.len() as u64).combine(crc64(a), crc64(b)),
                whole,
                "{split}"
            );
        }
        // Three pieces, folded left to right.
        let (a, rest) = data.split_at(1234);
        let (b, c) = rest.split_at(4321);
        let ab = combine(crc64(a), crc64(b), b.len() as u64);
        assert_eq!(combine(ab, crc64(c), c.len() as u64), whole);
        assert_eq!(crc64(b""), 0);
    }

    #[test]
    fn page_checksum_through_shift() {
        let page = vec![0x9au8; 512];
        let s = Shift::new(512);
        let c = s.combine(crc64(&1u32.to_be_bytes()), crc64(&page));
        assert_eq!(c | (1 << 63), ltx_format::checksum_page(1, &page));
    }
}
