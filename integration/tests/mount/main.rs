#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! `sluice mount` end to end: real FUSE mounts, real SQLite (the `sqlite3`
//! shell, Python's `sqlite3` and rusqlite, in several processes), the four
//! journal modes, crashes of the daemon and of applications, and bad input.
//! Every mount is unmounted by `MountEnv`'s drop, even when a test fails.

mod bad_input;
mod crash;
mod modes;

use std::path::Path;
use std::time::Duration;

use integration::{run, s, sluice, stderr, stdout};
use rusqlite::Connection;

/// A connection through the mount, in `mode`, with a busy timeout.
fn open(db: &Path, mode: &str) -> Connection {
    let c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let got: String = c
        .query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0))
        .unwrap();
    assert_eq!(got, mode.to_lowercase());
    c
}

/// One transaction by the `sqlite3` shell (its own process).
fn shell(db: &Path, mode: &str, sql: &str) {
    let o = run(std::process::Command::new("sqlite3")
        .args(["-bail", "-cmd", ".timeout 10000"])
        .arg(db)
        .arg(format!("PRAGMA journal_mode={mode}; {sql}")));
    assert!(o.status.success(), "sqlite3: {}", stderr(&o));
}

/// The LTX checksum of the database as SQLite sees it (main file plus
/// committed WAL frames), read from its backing file.
fn state(backing: &Path) -> String {
    integration::env::state_checksum(backing)
}

/// Restores `url` at `txid` and returns the result's checksum.
fn restore_at(url: &str, txid: u64, out: &Path) -> String {
    let _ = std::fs::remove_file(out);
    let o = sluice(&["restore", "-o", s(out), "--txid", &format!("{txid:x}"), url]);
    assert!(
        o.status.success(),
        "restore --txid {txid:x}: {}",
        stderr(&o)
    );
    let o = sluice(&["ltx", "checksum", s(out)]);
    stdout(&o).trim().to_string()
}
