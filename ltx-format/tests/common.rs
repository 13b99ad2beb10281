#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use ltx_format::test_vectors;

pub fn vectors() -> PathBuf {
    test_vectors::dir()
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

/// Expected database checksum after each L0 TXID 1..=0x14, as the raw values
/// the tests compare (the one copy is `ltx_format::test_vectors`).
pub const L0_CHECKSUMS: [u64; 20] = {
    let mut raw = [0u64; 20];
    let mut i = 0;
    while i < raw.len() {
        raw[i] = test_vectors::L0_CHECKSUMS[i].0;
        i += 1;
    }
    raw
};
