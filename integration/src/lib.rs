//! Helpers for the end-to-end tests in `tests/`: where the `sluice` binary,
//! the Litestream peer and the shared test vectors are. Scripts that install
//! and start real servers live in `scripts/`.

use std::path::PathBuf;
use std::process::{Command, Output};

/// `shared/ltx-vectors`, beside the project root (override with `SLUICE_VECTORS`).
pub fn vectors_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_VECTORS") {
        return PathBuf::from(p);
    }
    project_root().join("../shared/ltx-vectors")
}

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `sluice` binary built alongside the tests (override with `SLUICE_BIN`).
pub fn sluice_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> -> target/<profile>/sluice
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("sluice"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p sluice` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// The Litestream 0.5.17 binary installed by `integration/scripts/install-deps.sh`
/// (override with `SLUICE_LITESTREAM`). Panics with the fix if it is missing:
/// an interoperability test must not pass by skipping.
pub fn litestream_bin() -> PathBuf {
    let p = std::env::var_os("SLUICE_LITESTREAM").map_or_else(
        || project_root().join(".tools/litestream-venv/bin/litestream"),
        PathBuf::from,
    );
    assert!(
        p.exists(),
        "Litestream 0.5.17 not found at {}: run integration/scripts/install-deps.sh",
        p.display()
    );
    p
}

/// Runs a command to completion and returns its output.
pub fn run(cmd: &mut Command) -> Output {
    // Litestream refuses to start with a custom CA bundle set for plain HTTP.
    cmd.env_remove("AWS_CA_BUNDLE");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `sluice ARGS...`.
pub fn sluice(args: &[&str]) -> Output {
    run(Command::new(sluice_bin()).args(args))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
