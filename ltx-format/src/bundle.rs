//! Bundles: several consecutive L0 files in one object, so that a load of
//! many small transactions uploads one object per interval, not one per
//! transaction, while every transaction stays restorable on its own.
//!
//! ```text
//! +----------------------+
//! | LTX file min..=min   |  each a complete, independently valid LTX file,
//! | LTX file min+1       |  in TXID order, back to back
//! | ...                  |
//! +----------------------+
//! | entry × n            |  min TXID u64 | max TXID u64 | offset u64 | length u64
//! | n            u32     |
//! | magic "SLTXBND1"     |  8 bytes
//! +----------------------+
//! ```
//!
//! All integers big-endian. A bundle lives at level 0 under the name of the
//! TXID range it covers (`<min>-<max>.ltx` with min < max): Litestream and
//! Sluice write level-0 files of one TXID each, so a level-0 name with a
//! range is always a bundle. Reading one takes a ranged read of its last 12
//! bytes, then of its entries, then of the files wanted.

use std::io::{Read, Write};

use crate::error::{Error, Result, Rule};
use crate::Txid;

/// The bundle magic, the last 8 bytes.
pub const BUNDLE_MAGIC: &[u8; 8] = b"SLTXBND1";

/// The bytes at the end that give the entry count: count u32 + magic.
pub const BUNDLE_TAIL: usize = 12;

/// The size of one entry.
pub const BUNDLE_ENTRY: usize = 32;

/// One file of a bundle: its TXIDs and where its bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleEntry {
    pub min: Txid,
    pub max: Txid,
    pub offset: u64,
    pub len: u64,
}

/// Writes `files` (each a whole LTX file, in TXID order) as a bundle.
/// Returns the entries.
pub fn write_bundle<W: Write, R: Read>(
    out: &mut W,
    files: impl IntoIterator<Item = (Txid, Txid, R)>,
) -> Result<Vec<BundleEntry>> {
    let mut entries = Vec::new();
    let mut offset = 0u64;
    for (min, max, mut r) in files {
        let len = std::io::copy(&mut r, out)?;
        entries.push(BundleEntry {
            min,
            max,
            offset,
            len,
        });
        offset += len;
    }
    let mut tail = Vec::with_capacity(entries.len() * BUNDLE_ENTRY + BUNDLE_TAIL);
    for e in &entries {
        for v in [e.min.0, e.max.0, e.offset, e.len] {
            tail.extend_from_slice(&v.to_be_bytes());
        }
    }
    let n = u32::try_from(entries.len())
        .map_err(|_| Error::Usage("too many files for one bundle".into()))?;
    tail.extend_from_slice(&n.to_be_bytes());
    tail.extend_from_slice(BUNDLE_MAGIC);
    out.write_all(&tail)?;
    Ok(entries)
}

fn invalid(detail: impl Into<String>) -> Error {
    Error::invalid(Rule::FileName, detail)
}

/// The entry count from a bundle's last [`BUNDLE_TAIL`] bytes.
pub fn bundle_count(tail: &[u8]) -> Result<u32> {
    if tail.len() != BUNDLE_TAIL || &tail[4..] != BUNDLE_MAGIC {
        return Err(invalid("not a bundle: no bundle magic at its end"));
    }
    Ok(u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]))
}

/// Parses the entries of a bundle of `size` bytes from its last
/// `count * BUNDLE_ENTRY` bytes before the tail, checking that they tile
/// the bundle's data in TXID order.
pub fn parse_entries(bytes: &[u8], size: u64) -> Result<Vec<BundleEntry>> {
    if !bytes.len().is_multiple_of(BUNDLE_ENTRY) {
        return Err(invalid(
            "bundle entries: length is not a whole number of entries",
        ));
    }
    let be = |b: &[u8]| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let data_end = size
        .checked_sub((bytes.len() + BUNDLE_TAIL) as u64)
        .ok_or_else(|| invalid("bundle shorter than its entries"))?;
    let mut out = Vec::new();
    let mut next_offset = 0u64;
    let mut next_txid: Option<u64> = None;
    for c in bytes.chunks_exact(BUNDLE_ENTRY) {
        let e = BundleEntry {
            min: Txid(be(&c[0..8])),
            max: Txid(be(&c[8..16])),
            offset: be(&c[16..24]),
            len: be(&c[24..32]),
        };
        let continues = next_txid.is_none_or(|t| e.min.0 == t);
        if e.offset != next_offset || e.min > e.max || e.len == 0 || !continues {
            return Err(invalid(format!(
                "bundle entry {} is out of order or overlaps",
                out.len()
            )));
        }
        next_offset = e.offset + e.len;
        next_txid = Some(e.max.0 + 1);
        out.push(e);
    }
    if next_offset != data_end {
        return Err(invalid("bundle entries do not cover its data"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let files = [
            (1u64, b"aaaa".to_vec()),
            (2, b"bb".to_vec()),
            (3, b"ccc".to_vec()),
        ];
        let mut out = Vec::new();
        let entries = write_bundle(
            &mut out,
            files.iter().map(|(t, b)| (Txid(*t), Txid(*t), &b[..])),
        )
        .unwrap();
        assert_eq!(
            entries[1],
            BundleEntry {
                min: Txid(2),
                max: Txid(2),
                offset: 4,
                len: 2
            }
        );
        let n = bundle_count(&out[out.len() - BUNDLE_TAIL..]).unwrap() as usize;
        assert_eq!(n, 3);
        let start = out.len() - BUNDLE_TAIL - n * BUNDLE_ENTRY;
        let parsed = parse_entries(&out[start..out.len() - BUNDLE_TAIL], out.len() as u64).unwrap();
        assert_eq!(parsed, entries);
        assert_eq!(&out[4..6], b"bb");
        // A gap in the TXIDs, or a torn tail, is refused.
        let mut bad = out.clone();
        bad[start + 32 + 7] = 5;
        assert!(parse_entries(&bad[start..bad.len() - BUNDLE_TAIL], bad.len() as u64).is_err());
        assert!(bundle_count(&out[..BUNDLE_TAIL]).is_err());
    }
}
