//! The shared test vectors (`shared/ltx-vectors`, beside the project root):
//! where they are, and the checksums their README documents. One copy for
//! this crate's tests and the end-to-end suite; compiled only with the
//! `test-util` feature.

use std::path::PathBuf;

use crate::Checksum;

/// `shared/ltx-vectors` beside the project root (override with `SLUICE_VECTORS`).
pub fn dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_VECTORS") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/ltx-vectors")
}

/// The database checksum after each L0 TXID 1..=0x14 of the Litestream
/// vector replica (`litestream/replica/ltx/0`).
pub const L0_CHECKSUMS: [Checksum; 20] = [
    Checksum(0x9803c2bdb5bb35fc),
    Checksum(0xd619d3355c133625),
    Checksum(0xc4a7931480503295),
    Checksum(0xd07d8c0639a0d4ec),
    Checksum(0xfae4a7ff7c3f2fa2),
    Checksum(0xd17de21d786b8f7a),
    Checksum(0xd4b69f054bde4d82),
    Checksum(0xc4761307155edea3),
    Checksum(0xd5107cfe876248a5),
    Checksum(0xb1d39c37bac43d57),
    Checksum(0xe6a5fdfd81264fd9),
    Checksum(0xcde6468369b05a9f),
    Checksum(0xdba004b3ae7b8d5b),
    Checksum(0xfbc8833f5cc76614),
    Checksum(0xb4832159c9ed526b),
    Checksum(0xdcce1424f29054c0),
    Checksum(0x9824554a3c09c390),
    Checksum(0xf6c22240ca2083f9),
    Checksum(0xd9d15be1cd81bb12),
    Checksum(0xec7d0b4286c9da50),
];

/// The database checksum after L0 TXID `txid` (1..=0x14) of the Litestream
/// vector replica. Panics outside that range: a test asked for a state the
/// vectors do not have.
pub fn l0_checksum(txid: u64) -> Checksum {
    match usize::try_from(txid) {
        Ok(t @ 1..=20) => L0_CHECKSUMS[t - 1],
        _ => panic!("the vector replica has TXIDs 1..=0x14, not {txid:#x}"),
    }
}
