//! FUSE filesystems for Sluice: the primary passthrough that captures
//! transactions, and the read-only replica mount.
//!
//! Not built yet: this crate holds no code until the FUSE issues are taken.
//! It is kept in the workspace so the dependency direction
//! (`fuse-fs ← daemon`, and no S3 or shipping knowledge here) is fixed early.
