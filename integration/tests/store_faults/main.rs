#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! The fault harness against real storage failing under a live application:
//! the S3 server down for a while (`outage`), and one node of a 3-node Garage
//! cluster killed and restarted (`cluster`). Each test starts its own servers
//! with the project's scripts (never the shared Garage of the test command,
//! which other tests use meanwhile), prints what it did and what it found,
//! and takes its size from the environment: CI runs it small,
//! `integration/scripts/fault-*.sh` at any size.

mod cluster;
mod outage;

use std::path::Path;

use integration::{S3Server, Setup, TestEnv};

/// The numbered-rows application's database replicated to `url` on
/// `server`, with its credentials and a 1 s sync interval (the default of a
/// real deployment: a long outage stages one file per second).
fn env_on(server: &S3Server, url: &str) -> TestEnv {
    Setup::new()
        .schema(integration::faults::NUMBERED)
        .url(url)
        .extra_replica(&format!(
            "        access-key-id: {}\n        secret-access-key: {}\n        sync-interval: 1s\n",
            server.key_id, server.secret
        ))
        .build()
}

/// Bytes of the regular files under `dir` (the staging directory).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
