//! LTX version 3: the file format Litestream 0.5 and `superfly/ltx` write, read
//! strictly and written byte-compatibly.
//!
//! ```text
//! +----------------------+ offset 0
//! | header, 100 bytes    |  see [`header`]
//! +----------------------+ offset 100
//! | page frames          |  pgno u32 | flags u16 (0x0001) | size u32 | LZ4 block
//! | 6 zero bytes         |  end of page block
//! +----------------------+
//! | page index           |  uvarint (pgno, offset, size)*, uvarint 0, u64 length
//! +----------------------+ file size - 16
//! | trailer, 16 bytes    |  post-apply checksum u64 | file checksum u64
//! +----------------------+
//! ```
//!
//! All integers are big-endian. The codec is synchronous and streaming: the
//! [`Encoder`] and [`Decoder`] compute every checksum as bytes pass through and
//! never hold more than a page (plus the page index) in memory.

pub mod apply;
pub mod bundle;
pub mod checksum;
pub mod compactor;
pub mod decoder;
pub mod encoder;
pub mod error;
pub mod frame;
pub mod header;
pub mod index;
pub mod journal;
pub mod name;
#[cfg(feature = "test-util")]
pub mod test_vectors;
pub mod wal;

use std::fmt;

pub use apply::{apply_file, Applier};
pub use checksum::{checksum_database, checksum_page, lock_pgno, Checksum, DbChecksum};
pub use compactor::{compact, CompactOptions};
pub use decoder::{verify, Decoder, FileSummary};
pub use encoder::Encoder;
pub use error::{Error, Result, Rule, Violation};
pub use header::{Header, Trailer, HEADER_FLAG_NO_CHECKSUM, HEADER_SIZE, TRAILER_SIZE};
pub use index::{read_page_index, IndexEntry, PageIndex};
pub use name::{format_filename, parse_filename};

/// A database page size: a power of two in 512..=65536.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageSize(u32);

impl PageSize {
    pub fn new(size: u32) -> Result<Self> {
        if (512..=65536).contains(&size) && size.is_power_of_two() {
            Ok(PageSize(size))
        } else {
            Err(Error::invalid(
                Rule::PageSize,
                format!("invalid page size {size}: must be a power of two from 512 to 65536"),
            ))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageSize({})", self.0)
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A transaction ID: a position in one database's history, from 1. Printed as
/// 16 lowercase hex digits, as in file names.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Txid(pub u64);

impl Txid {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Txid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Txid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Txid({:x})", self.0)
    }
}

/// `min <= prev_max + 1 && max > prev_max`: overlap allowed, gaps refused.
pub fn is_contiguous(prev_max: Txid, min: Txid, max: Txid) -> bool {
    min.0 <= prev_max.0.saturating_add(1) && max.0 > prev_max.0
}
