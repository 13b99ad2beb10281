//! End-to-end tests live in `tests/`; scripts that install and start the real
//! servers live in `scripts/`. This library only locates shared test inputs.

use std::path::PathBuf;

/// `shared/ltx-vectors`, beside the project root (override with `SLUICE_VECTORS`).
pub fn vectors_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_VECTORS") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/ltx-vectors")
}
