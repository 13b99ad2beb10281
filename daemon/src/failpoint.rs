//! Fail points armed by name, for tests that run the real binary.
//!
//! `SLUICE_FAILPOINTS=staging-fsync=SUBSTRING[,…]` makes every staging fsync
//! of a path containing SUBSTRING fail with EIO, as a dying disk would. The
//! variable is read once; unset (as in production), a check is one load of
//! an empty list.

use std::io;
use std::path::Path;
use std::sync::OnceLock;

fn armed() -> &'static [(String, String)] {
    static ARMED: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("SLUICE_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(n, v)| (n.trim().to_string(), v.to_string()))
            .collect()
    })
}

/// Fails like a broken disk if `staging-fsync` is armed for `path`.
pub fn fsync(path: &Path) -> io::Result<()> {
    let p = path.to_string_lossy();
    if armed()
        .iter()
        .any(|(n, v)| n == "staging-fsync" && !v.is_empty() && p.contains(v.as_str()))
    {
        return Err(io::Error::from_raw_os_error(5));
    }
    Ok(())
}
