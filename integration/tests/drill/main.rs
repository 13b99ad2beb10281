#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! `sluice drill` end to end: a good replica drills ok (file:// and Garage);
//! a corrupted file, a file missing from the chain and a replica behind the
//! primary by more than `--max-rpo` each fail with the reason on one line;
//! bad input (empty, missing, unreadable replica, wrong key, a silent
//! store) fails within 30 s with exit status 2 and leaves no scratch files;
//! random byte flips are detected or harmless and never pass a wrong
//! database; scheduled drills in the daemon export their metrics. One test
//! binary; a module per theme.

mod byteflip;
mod cli;
mod garage;
mod scheduled;

use std::path::Path;
use std::process::{Command, Output};

use integration::{run, sluice_bin, stderr, stdout, Setup, TestEnv};
use serde_json::Value;

/// What one `sluice drill` run gave.
#[derive(Debug)]
struct Drill {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Drill {
    /// stdout as JSON (a `--json` run).
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    /// The one stderr line a failed drill prints.
    fn reason(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "not one line: {:?}", self.stderr);
        lines[0]
    }
}

/// Runs `sluice drill ARGS` with `TMPDIR=tmp` (so its scratch files can be
/// looked for).
fn drill_in(tmp: &Path, args: &[&str]) -> Drill {
    let o: Output = run(Command::new(sluice_bin())
        .arg("drill")
        .args(args)
        .env("TMPDIR", tmp));
    Drill {
        code: o.status.code(),
        stdout: stdout(&o),
        stderr: stderr(&o),
    }
}

/// Entries left in a directory.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A database replicated in `batches` transactions of 20 rows (one L0 file
/// each, no compaction), the daemon stopped; returns the environment and
/// the newest TXID.
fn replicated(setup: Setup, batches: usize) -> (TestEnv, u64) {
    let env = setup.extra_db("    levels: [1h]\n").build();
    let d = env.start_ready();
    let c = env.app();
    let mut txid = 0;
    for b in 0..batches {
        c.execute_batch(&format!(
            "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 20)
             INSERT INTO t(v, b) SELECT 'batch {b} ' || i, randomblob(200) FROM n; COMMIT;"
        ))
        .unwrap();
        txid = env.settle();
    }
    d.stop_ok();
    (env, txid)
}
