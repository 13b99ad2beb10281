//! Replica stores and the replica key layout.
//!
//! [`layout`] builds every object key Sluice reads or writes, for both store
//! kinds, compatible with Litestream 0.5. The store trait and its S3, local
//! directory and in-memory implementations arrive with the replica-store issue.

pub mod layout;
