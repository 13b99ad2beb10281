#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
#![allow(dead_code)]
use std::path::{Path, PathBuf};

pub fn vectors() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_VECTORS") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/ltx-vectors")
}

pub fn ltx_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ltx"))
        .collect();
    v.sort();
    v
}

/// Expected database checksum after each L0 TXID 1..=0x14 (vectors README).
pub const L0_CHECKSUMS: [u64; 20] = [
    0x9803c2bdb5bb35fc,
    0xd619d3355c133625,
    0xc4a7931480503295,
    0xd07d8c0639a0d4ec,
    0xfae4a7ff7c3f2fa2,
    0xd17de21d786b8f7a,
    0xd4b69f054bde4d82,
    0xc4761307155edea3,
    0xd5107cfe876248a5,
    0xb1d39c37bac43d57,
    0xe6a5fdfd81264fd9,
    0xcde6468369b05a9f,
    0xdba004b3ae7b8d5b,
    0xfbc8833f5cc76614,
    0xb4832159c9ed526b,
    0xdcce1424f29054c0,
    0x9824554a3c09c390,
    0xf6c22240ca2083f9,
    0xd9d15be1cd81bb12,
    0xec7d0b4286c9da50,
];
