//! The 100-byte header and 16-byte trailer.
//!
//! ```text
//! off size field              rules
//!   0   4  magic "LTX1"
//!   4   4  flags              only 0x00000002 (NoChecksum) may be set
//!   8   4  page size          power of two, 512..=65536
//!  12   4  commit             database size in pages after applying; 0 = deleted
//!  16   8  min TXID           != 0
//!  24   8  max TXID           != 0, >= min
//!  32   8  timestamp          ms since the Unix epoch
//!  40   8  pre-apply checksum 0 for snapshots and NoChecksum; else bit 63 set
//!  48   8  WAL offset         >= 0
//!  56   8  WAL size           >= 0; 0 when the offset is 0
//!  64   4  WAL salt 1         salts != 0 need a WAL offset
//!  68   4  WAL salt 2
//!  72   8  node ID
//!  80  20  reserved           zero
//! ```

use crate::checksum::Checksum;
use crate::error::{Error, Result, Rule};
use crate::{PageSize, Txid};

pub const HEADER_SIZE: usize = 100;
pub const TRAILER_SIZE: usize = 16;
pub const MAGIC: &[u8; 4] = b"LTX1";
/// The file carries no database checksums (pre/post-apply are 0).
pub const HEADER_FLAG_NO_CHECKSUM: u32 = 1 << 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    pub page_size: PageSize,
    pub commit: u32,
    pub min_txid: Txid,
    pub max_txid: Txid,
    pub timestamp_ms: i64,
    pub pre_apply_checksum: Checksum,
    pub wal_offset: i64,
    pub wal_size: i64,
    pub wal_salt1: u32,
    pub wal_salt2: u32,
    pub node_id: u64,
}

impl Header {
    /// A header with the given identity and every optional field zero.
    pub fn new(page_size: PageSize, commit: u32, min_txid: Txid, max_txid: Txid) -> Self {
        Header {
            flags: 0,
            page_size,
            commit,
            min_txid,
            max_txid,
            timestamp_ms: 0,
            pre_apply_checksum: Checksum::ZERO,
            wal_offset: 0,
            wal_size: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            node_id: 0,
        }
    }

    /// A snapshot holds every page: MinTXID == 1.
    pub fn is_snapshot(&self) -> bool {
        self.min_txid.0 == 1
    }

    pub fn no_checksum(&self) -> bool {
        self.flags & HEADER_FLAG_NO_CHECKSUM != 0
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.get().to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.0.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.0.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.0.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// Parses and validates a header (every rule of Go's `Header.Validate`).
    /// Reserved bytes are not checked here: see [`Header::reserved_is_zero`].
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Self> {
        if &b[0..4] != MAGIC {
            return Err(Error::invalid(
                Rule::Magic,
                format!(
                    "not an LTX file: magic is {:02x}{:02x}{:02x}{:02x}, want 4c545831 (\"LTX1\")",
                    b[0], b[1], b[2], b[3]
                ),
            )
            .at(0));
        }
        let u32_at = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_be_bytes(a)
        };
        let flags = u32_at(4);
        if flags & !HEADER_FLAG_NO_CHECKSUM != 0 {
            return Err(Error::invalid(
                Rule::HeaderFlags,
                format!("invalid header flags 0x{flags:08x}"),
            )
            .at(4));
        }
        let page_size = PageSize::new(u32_at(8)).map_err(|e| e.at(8))?;
        let h = Header {
            flags,
            page_size,
            commit: u32_at(12),
            min_txid: Txid(u64_at(16)),
            max_txid: Txid(u64_at(24)),
            timestamp_ms: u64_at(32) as i64,
            pre_apply_checksum: Checksum(u64_at(40)),
            wal_offset: u64_at(48) as i64,
            wal_size: u64_at(56) as i64,
            wal_salt1: u32_at(64),
            wal_salt2: u32_at(68),
            node_id: u64_at(72),
        };
        h.validate()?;
        Ok(h)
    }

    /// The rules a header must keep, whoever wrote it.
    pub fn validate(&self) -> Result<()> {
        if self.flags & !HEADER_FLAG_NO_CHECKSUM != 0 {
            return Err(Error::invalid(
                Rule::HeaderFlags,
                format!("invalid header flags 0x{:08x}", self.flags),
            )
            .at(4));
        }
        if self.min_txid.0 == 0 || self.max_txid.0 == 0 {
            return Err(Error::invalid(Rule::Txid, "TXIDs must be non-zero").at(16));
        }
        if self.min_txid > self.max_txid {
            return Err(Error::invalid(
                Rule::Txid,
                format!(
                    "min TXID {} is greater than max TXID {}",
                    self.min_txid, self.max_txid
                ),
            )
            .at(16));
        }
        if self.wal_offset < 0 {
            return Err(Error::invalid(Rule::WalFields, "negative WAL offset").at(48));
        }
        if self.wal_size < 0 {
            return Err(Error::invalid(Rule::WalFields, "negative WAL size").at(56));
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return Err(
                Error::invalid(Rule::WalFields, "WAL size set without a WAL offset").at(56),
            );
        }
        if self.wal_offset == 0 && (self.wal_salt1 != 0 || self.wal_salt2 != 0) {
            return Err(
                Error::invalid(Rule::WalFields, "WAL salts set without a WAL offset").at(64),
            );
        }
        let pre = self.pre_apply_checksum;
        if self.is_snapshot() && !pre.is_zero() {
            return Err(Error::invalid(
                Rule::PreApplyChecksum,
                format!("snapshot must have a zero pre-apply checksum, has {pre}"),
            )
            .at(40));
        }
        if !self.is_snapshot() {
            if self.no_checksum() && !pre.is_zero() {
                return Err(Error::invalid(
                    Rule::PreApplyChecksum,
                    format!("pre-apply checksum must be 0 under NoChecksum, is {pre}"),
                )
                .at(40));
            }
            if !self.no_checksum() && !pre.is_well_formed() {
                return Err(Error::invalid(
                    Rule::PreApplyChecksum,
                    format!("pre-apply checksum {pre} must be non-zero with bit 63 set"),
                )
                .at(40));
            }
        }
        Ok(())
    }

    /// The 20 reserved bytes (80..100) must be zero in a strict reading.
    pub fn reserved_is_zero(raw: &[u8; HEADER_SIZE]) -> bool {
        raw[80..].iter().all(|&b| b == 0)
    }
}

/// The last 16 bytes of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trailer {
    pub post_apply_checksum: Checksum,
    pub file_checksum: Checksum,
}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[..8].copy_from_slice(&self.post_apply_checksum.0.to_be_bytes());
        b[8..].copy_from_slice(&self.file_checksum.0.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Trailer {
        let mut p = [0u8; 8];
        let mut f = [0u8; 8];
        p.copy_from_slice(&b[..8]);
        f.copy_from_slice(&b[8..16]);
        Trailer {
            post_apply_checksum: Checksum(u64::from_be_bytes(p)),
            file_checksum: Checksum(u64::from_be_bytes(f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rules() {
        let ps = PageSize::new(4096).unwrap();
        let mut h = Header::new(ps, 3, Txid(2), Txid(2));
        h.pre_apply_checksum = Checksum(0x8000_0000_0000_0001);
        h.timestamp_ms = 1234;
        let b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), h);

        let mut bad = b;
        bad[7] = 3;
        let e = Header::decode(&bad).unwrap_err();
        assert!(
            e.to_string().contains("invalid header flags 0x00000003"),
            "{e}"
        );

        let mut snap = h;
        snap.min_txid = Txid(1);
        assert_eq!(
            snap.validate().unwrap_err().rule(),
            Some(Rule::PreApplyChecksum)
        );

        let mut wal = h;
        wal.wal_salt1 = 5;
        assert_eq!(wal.validate().unwrap_err().rule(), Some(Rule::WalFields));

        let mut txid = h;
        txid.min_txid = Txid(5);
        assert_eq!(txid.validate().unwrap_err().rule(), Some(Rule::Txid));
    }
}
