#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! The piecewise verifier (ranged chunks hashed apart and joined) reaches the
//! same verdict as the streaming decoder on every vector file, valid and
//! invalid, and on thousands of single-byte corruptions of them.

mod common;

use std::path::PathBuf;

use common::{vectors, Rng};
use restore::verify::verify_in_pieces;

fn all_vector_files() -> Vec<PathBuf> {
    fn walk(d: &std::path::Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "ltx") {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    walk(&vectors(), &mut v);
    v.sort();
    assert!(v.len() > 60, "{} files", v.len());
    v
}

fn verdicts(bytes: &[u8]) -> (bool, Vec<bool>) {
    let streaming = ltx_format::verify(bytes).is_ok();
    let pieces = [1u64, 700, 5000, 1 << 30]
        .iter()
        .map(|&c| verify_in_pieces(bytes, c).is_ok())
        .collect();
    (streaming, pieces)
}

#[test]
fn same_verdict_as_the_streaming_decoder_on_every_vector() {
    let mut rejected = 0;
    for p in all_vector_files() {
        let bytes = std::fs::read(&p).unwrap();
        let (s, pieces) = verdicts(&bytes);
        assert!(
            pieces.iter().all(|&x| x == s),
            "{}: decoder {s}, pieces {pieces:?}",
            p.display()
        );
        if !s {
            rejected += 1;
            // And the rule agrees where the streaming decoder names one.
            let want = ltx_format::verify(&bytes[..]).unwrap_err().rule();
            let got = verify_in_pieces(&bytes, 1 << 30).unwrap_err().rule();
            let structural = matches!(
                want,
                Some(ltx_format::Rule::Truncated | ltx_format::Rule::UnexpectedBytes)
            );
            if !structural {
                assert_eq!(got, want, "{}", p.display());
            }
        }
    }
    assert!(rejected >= 14, "{rejected} invalid files rejected");
}

#[test]
fn same_verdict_on_random_single_byte_corruptions() {
    let files: Vec<Vec<u8>> = all_vector_files()
        .iter()
        .filter(|p| !p.to_string_lossy().contains("/invalid/"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let mut rng = Rng(0x5eed);
    let mut accepted = 0;
    for trial in 0..3000 {
        let f = &files[rng.below(files.len() as u64) as usize];
        let mut b = f.clone();
        let at = rng.below(b.len() as u64) as usize;
        b[at] ^= 1 + rng.below(255) as u8;
        let (s, pieces) = verdicts(&b);
        assert!(
            pieces.iter().all(|&x| x == s),
            "trial {trial}: byte {at}: decoder {s}, pieces {pieces:?}"
        );
        if s {
            accepted += 1;
        }
    }
    // A flip that still verifies must be one that decodes to the same pages
    // (LZ4 blocks are not canonical); the CRC lets almost nothing through.
    assert!(accepted < 30, "{accepted} corrupted files accepted");
}
