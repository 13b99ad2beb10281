//! Progress reporting hooks, so the binary can draw a bar without the
//! library knowing about terminals.

/// Called from any thread while a restore runs.
pub trait Progress: Send + Sync {
    /// Before anything is fetched: an estimate of the bytes and the files.
    fn begin(&self, _total_bytes: u64, _files: usize) {}
    /// The bytes to fetch in all, once known.
    fn set_total(&self, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    /// One file is fully decoded.
    fn file_done(&self) {}
    /// The database is in place.
    fn finish(&self) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
