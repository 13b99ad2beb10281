//! Arbitrary bytes split into up to five inputs for the compactor: errors are
//! fine, panics are not, and whatever it writes must verify.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use ltx_format::{compact, CompactOptions};

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // Inputs are separated by the 4-byte marker "LTX1" (each keeps it).
    let mut starts: Vec<usize> = rest
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"LTX1")
        .map(|(i, _)| i)
        .take(4)
        .collect();
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    // Each input gets its right file checksum, so that compaction gets past
    // decoding into merging.
    let mut files = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let e = starts.get(k + 1).copied().unwrap_or(rest.len());
        let raw = &rest[s..e];
        files.push(common::with_fixed_checksum(raw).unwrap_or_else(|| raw.to_vec()));
    }
    let inputs: Vec<_> = files.iter().map(|f| Cursor::new(&f[..])).collect();
    let opts = CompactOptions {
        no_checksum: sel & 1 != 0,
        allow_non_contiguous: sel & 2 != 0,
        snapshot: sel & 4 != 0,
    };
    if let Ok((out, header, _)) = compact(inputs, Vec::new(), opts) {
        // The compactor's output must itself verify.
        let s = ltx_format::verify(Cursor::new(&out)).expect("compacted output verifies");
        assert_eq!(s.header, header);
    }
});
