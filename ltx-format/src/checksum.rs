//! CRC-64/GO-ISO and the LTX database checksum.
//!
//! `ChecksumPage(pgno, data) = 1<<63 | CRC64(u32_be(pgno) || data)`; the database
//! checksum is `1<<63 | XOR` of the page checksums of pages `1..=commit`, the
//! SQLite lock page (the page holding byte 0x40000000) excluded. An empty
//! database has checksum `0x8000000000000000`.

use std::fmt;
use std::io::Read;

use crc_fast::CrcAlgorithm::Crc64GoIso;

use crate::error::{Error, Result, Rule};
use crate::PageSize;

/// CRC-64/GO-ISO (Go's `crc64.MakeTable(crc64.ISO)`), with the `crc` crate's
/// `checksum`/`digest` calls. Every page is hashed twice (file checksum and
/// page checksum), so this was half the codec's time with a slice-by-16 table
/// (~2 GB/s); `crc-fast` folds with carry-less multiplication (PCLMULQDQ,
/// PMULL) when the CPU has it, chosen at run time, and falls back to tables.
pub static CRC64: Crc64 = Crc64 { _private: () };

/// The CRC-64/GO-ISO algorithm; see [`CRC64`].
#[derive(Debug, Clone, Copy)]
pub struct Crc64 {
    _private: (),
}

impl Crc64 {
    /// The CRC of `data` in one call.
    pub fn checksum(&self, data: &[u8]) -> u64 {
        crc_fast::checksum(Crc64GoIso, data)
    }

    /// A streaming CRC, fed with [`Crc64Digest::update`].
    pub fn digest(&self) -> Crc64Digest {
        Crc64Digest(crc_fast::Digest::new(Crc64GoIso))
    }
}

/// A CRC-64/GO-ISO in progress.
#[derive(Clone, Copy)]
pub struct Crc64Digest(crc_fast::Digest);

impl Crc64Digest {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The CRC of everything fed so far; the digest can go on being fed.
    pub fn finalize(&self) -> u64 {
        self.0.finalize()
    }
}

impl fmt::Debug for Crc64Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Crc64Digest({:016x})", self.finalize())
    }
}

/// Bit 63, set on every non-zero LTX checksum.
pub const CHECKSUM_FLAG: u64 = 1 << 63;

/// An LTX checksum (database, page, or file). Printed as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Checksum(pub u64);

impl Checksum {
    /// The checksum of a database with no pages.
    pub const EMPTY: Checksum = Checksum(CHECKSUM_FLAG);
    pub const ZERO: Checksum = Checksum(0);

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Non-zero with bit 63 set: the shape of every tracked checksum.
    pub fn is_well_formed(self) -> bool {
        self.0 & CHECKSUM_FLAG != 0
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({:016x})", self.0)
    }
}

/// The page number of SQLite's lock page (PENDING_BYTE page) for a page size.
pub fn lock_pgno(page_size: PageSize) -> u32 {
    (0x4000_0000 / page_size.get()) + 1
}

/// `ChecksumPage(pgno, data)`.
pub fn checksum_page(pgno: u32, data: &[u8]) -> u64 {
    let mut d = CRC64.digest();
    d.update(&pgno.to_be_bytes());
    d.update(data);
    CHECKSUM_FLAG | d.finalize()
}

/// A rolling database checksum: XOR of page checksums, kept incrementally.
///
/// Add a page when it appears, remove it (XOR again) when it is replaced or
/// dropped; [`DbChecksum::value`] forces bit 63.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbChecksum(u64);

impl DbChecksum {
    pub fn new() -> Self {
        DbChecksum(0)
    }

    /// Starts from a known database checksum.
    pub fn from_checksum(c: Checksum) -> Self {
        DbChecksum(c.0 & !CHECKSUM_FLAG)
    }

    /// XORs a page checksum in (or out: XOR is its own inverse).
    pub fn toggle(&mut self, page_checksum: u64) {
        self.0 ^= page_checksum & !CHECKSUM_FLAG;
    }

    /// XORs the checksum of `data` as page `pgno` in or out.
    pub fn toggle_page(&mut self, pgno: u32, data: &[u8]) {
        self.toggle(checksum_page(pgno, data));
    }

    pub fn value(self) -> Checksum {
        Checksum(CHECKSUM_FLAG | self.0)
    }
}

/// The database size in pages a SQLite header (its first 100 bytes) gives,
/// when the header marks it valid: non-zero, and the "version valid for"
/// number (offset 92) equal to the change counter (offset 24), as every
/// SQLite since 3.7.0 keeps them. `None` otherwise (an older writer).
pub fn sqlite_header_pages(header: &[u8; 100]) -> Option<u32> {
    let be =
        |o: usize| u32::from_be_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
    (be(92) == be(24) && be(28) > 0).then(|| be(28))
}

/// Reads the page size from a SQLite database header (offset 16, u16 BE, 1 = 65536).
pub fn sqlite_page_size(header: &[u8]) -> Result<PageSize> {
    if header.len() < 100 || &header[..16] != b"SQLite format 3\0" {
        return Err(Error::invalid(
            Rule::Database,
            "not a SQLite database (missing \"SQLite format 3\" header)",
        ));
    }
    let raw = u16::from_be_bytes([header[16], header[17]]);
    let size = if raw == 1 { 65536 } else { u32::from(raw) };
    PageSize::new(size).map_err(|_| {
        Error::invalid(
            Rule::Database,
            format!("SQLite header has invalid page size {raw}"),
        )
    })
}

/// The database checksum of a SQLite file read from `r`: the page size comes
/// from the header, every full page is summed (lock page skipped), and a partial
/// trailing page is an error. An empty input has checksum `8000000000000000`.
pub fn checksum_database<R: Read>(mut r: R) -> Result<(Checksum, u32)> {
    let mut first = vec![0u8; 512];
    let n = read_full(&mut r, &mut first)?;
    if n == 0 {
        return Ok((Checksum::EMPTY, 0));
    }
    if n < 100 {
        return Err(Error::invalid(
            Rule::Database,
            format!("database is {n} bytes, shorter than the 100-byte SQLite header"),
        ));
    }
    let page_size = sqlite_page_size(&first[..n])?;
    checksum_pages(&first[..n], r, page_size)
}

/// The database checksum of a file of `page_size` pages, whatever its content
/// (the page size is known, e.g. from an LTX header). `head` holds bytes
/// already read from the start of the file; `r` yields the rest.
pub fn checksum_pages<R: Read>(
    head: &[u8],
    mut r: R,
    page_size: PageSize,
) -> Result<(Checksum, u32)> {
    let first = head;
    let n = head.len();
    let ps = page_size.as_usize();
    let mut page = vec![0u8; ps];
    let head = n.min(ps);
    page[..head].copy_from_slice(&first[..head]);
    let mut filled = head;
    let mut sum = DbChecksum::new();
    let lock = lock_pgno(page_size);
    let mut pgno: u32 = 1;
    loop {
        filled += read_full(&mut r, &mut page[filled..])?;
        if filled == 0 {
            break;
        }
        if filled < ps {
            return Err(Error::invalid(
                Rule::Database,
                format!("database ends with a partial page: {filled} of {ps} bytes of page {pgno}"),
            ));
        }
        if pgno != lock {
            sum.toggle_page(pgno, &page);
        }
        pgno = pgno
            .checked_add(1)
            .ok_or_else(|| Error::invalid(Rule::Database, "database has more than 2^32-1 pages"))?;
        filled = 0;
    }
    Ok((sum.value(), pgno - 1))
}

/// Reads until `buf` is full or EOF; returns the bytes read.
pub(crate) fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(pages: &[Vec<u8>]) -> u64 {
        let mut s = DbChecksum::new();
        for (i, p) in pages.iter().enumerate() {
            s.toggle_page(i as u32 + 1, p);
        }
        s.value().0
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(CRC64.checksum(b"123456789"), 0xb90956c775a41001);
        let mut d = CRC64.digest();
        d.update(b"1234");
        d.update(b"56789");
        assert_eq!(d.finalize(), 0xb90956c775a41001);
    }

    /// The SIMD path against the `crc` crate's table-driven CRC-64/GO-ISO, on
    /// every length and alignment the folding code distinguishes, split into
    /// streamed pieces at awkward places.
    #[test]
    fn crc_matches_table_implementation() {
        let table = crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_GO_ISO);
        let mut x = 0x5eed_u64;
        let data: Vec<u8> = (0..70_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let lens = (0..=300).chain([511, 512, 513, 4095, 4096, 4100, 65536, 65537]);
        for len in lens {
            for start in [0, 1, 7, 15] {
                let d = &data[start..start + len];
                let want = table.checksum(d);
                assert_eq!(CRC64.checksum(d), want, "len {len} start {start}");
                let mut dig = CRC64.digest();
                let cut = len / 3;
                dig.update(&d[..cut]);
                dig.update(&d[cut..cut + 1.min(len - cut)]);
                dig.update(&d[cut + 1.min(len - cut)..]);
                assert_eq!(dig.finalize(), want, "streamed len {len} start {start}");
            }
        }
    }

    #[test]
    fn format_doc_vectors() {
        assert_eq!(
            db(&[vec![1; 512], vec![2; 512], vec![3; 512]]),
            0xefffffffecd99000
        );
        assert_eq!(
            db(&[vec![b'2'; 1024], vec![b'3'; 1024]]),
            0xe1899b6d587aaaaa
        );
        assert_eq!(db(&[vec![b'2'; 512], vec![b'3'; 512]]), 0x8b87423eeeeeeeee);
        assert_eq!(db(&[vec![b'1'; 512]]), 0xeb1a999231044ddd);
        assert_eq!(
            db(&[vec![0x81; 1024], vec![0x82; 1024], vec![0x83; 1024]]),
            0x8a249272ad9f7dea
        );
        assert_eq!(
            db(&[vec![0x91; 1024], vec![0x82; 1024], vec![0x93; 1024]]),
            0x8a249272ad9f7dea
        );
        assert_eq!(db(&[vec![0x81; 1024]]), 0xeb953fc47685d740);
        assert_eq!(checksum_page(1, &[0x9a; 512]), 0xac4b277cdfeaa333);
        assert_eq!(db(&[]), 0x8000000000000000);
    }

    #[test]
    fn lock_page_numbers() {
        assert_eq!(lock_pgno(PageSize::new(4096).unwrap()), 262145);
        assert_eq!(lock_pgno(PageSize::new(65536).unwrap()), 16385);
        assert_eq!(lock_pgno(PageSize::new(512).unwrap()), 2097153);
    }

    #[test]
    fn lock_page_vector() {
        // 262155 pages of 'x'*4096 with the lock page zero and skipped.
        let ps = PageSize::new(4096).unwrap();
        let lock = lock_pgno(ps);
        let page = vec![b'x'; 4096];
        let mut s = DbChecksum::new();
        for pgno in 1..=262155u32 {
            if pgno != lock {
                s.toggle_page(pgno, &page);
            }
        }
        assert_eq!(s.value().0, 0xc19b668c376662c7);
        s.toggle_page(lock, &[0u8; 4096]);
        assert_eq!(s.value().0, 0xacacffacd92fc33c);
    }

    #[test]
    fn partial_page_is_an_error() {
        let mut data = vec![0u8; 1024 + 10];
        data[..16].copy_from_slice(b"SQLite format 3\0");
        data[16..18].copy_from_slice(&512u16.to_be_bytes());
        let err = checksum_database(&data[..]).unwrap_err();
        assert!(err.to_string().contains("partial page"), "{err}");
        assert_eq!(checksum_database(&[][..]).unwrap().0, Checksum::EMPTY);
    }
}
