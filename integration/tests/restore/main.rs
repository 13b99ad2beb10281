#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! `sluice restore` end to end: the real binary restores the Litestream
//! vector replica at every TXID (checksums from the vectors README, bytes of
//! `source.db`), legacy LZ4 frames, Sluice-written replicas (real SQLite
//! histories encoded with checksums, and the demo's), a replica Litestream
//! 0.5.17 writes to Garage during the test; `--timestamp` picks the last
//! commit at or before the time; 240 single-byte corruptions are each
//! detected or harmless; bad input leaves nothing at the output path. One
//! test binary; a module per theme.

mod errors;
mod garage;
mod sluice_written;
mod vectors;

use std::path::{Path, PathBuf};
use std::process::Output;

use integration::{sluice, stderr, stdout};
use ltx_format::checksum_database;
use ltx_format::test_vectors::{self, l0_checksum};

/// Expected database checksum at TXID 1..=0x14 (vectors README).
fn sum(txid: u64) -> String {
    l0_checksum(txid).to_string()
}

/// L0 header times (ms) of the vector replica, TXID 1..=0x14.
const TIMES: [i64; 20] = [
    1795355573434,
    1795355576420,
    1795355577920,
    1795355579420,
    1795355580920,
    1795355582420,
    1795355583920,
    1795355585420,
    1795355586920,
    1795355588420,
    1795355589920,
    1795355591420,
    1795355592920,
    1795355594421,
    1795355595922,
    1795355597421,
    1795355598920,
    1795355600420,
    1795355601920,
    1795355603419,
];

/// `2026-11-22T13:53:23.419Z` (RFC 3339, UTC, milliseconds).
fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3600,
        (t / 60) % 60,
        t % 60,
        ms.rem_euclid(1000)
    )
}

fn url(root: &Path) -> String {
    format!("file://{}", root.display())
}

fn vector_replica() -> PathBuf {
    // A file URL takes an absolute path without '..'.
    test_vectors::dir()
        .join("litestream/replica")
        .canonicalize()
        .unwrap()
}

fn source_db() -> Vec<u8> {
    std::fs::read(test_vectors::dir().join("litestream/source.db")).unwrap()
}

fn checksum_of(p: &Path) -> String {
    checksum_database(std::fs::File::open(p).unwrap())
        .unwrap()
        .0
        .to_string()
}

fn restore(args: &[&str]) -> Output {
    let mut a = vec!["restore"];
    a.extend_from_slice(args);
    sluice(&a)
}

fn json_of(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Copies the chosen levels of a file replica.
fn copy_levels(src: &Path, dst: &Path, levels: &[u8]) {
    for l in levels {
        let from = src.join("ltx").join(l.to_string());
        let to = dst.join("ltx").join(l.to_string());
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&from).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
