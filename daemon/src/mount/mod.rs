//! `sluice mount`: a FUSE primary over a data directory; every SQLite
//! transaction of every database in it becomes one L0 file, staged before
//! the commit completes and shipped through the same pipeline as
//! `sluice replicate`.

pub mod capture;
pub mod recover;
pub mod sink;
#[cfg(test)]
mod tests;
