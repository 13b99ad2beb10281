//! The FUSE foundation both Sluice filesystems share: the primary passthrough
//! that captures transactions and the read-only replica mount.
//!
//! - [`locks`]: the POSIX byte-range lock table and the queue of blocking
//!   requests (pure logic, no FUSE types).
//!
//! This crate knows nothing of S3, LTX shipping or the daemon.

pub mod locks;
