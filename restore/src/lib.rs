//! Restore: planning a chain of LTX files for a target (pure, [`plan`]) and
//! applying it fast and verified ([`execute`]).
//!
//! ```text
//! catalogue::list ─► plan(listing, target) ─► restore(store, plan, output)
//!                      ▲ TimeSearch (timestamps: header times, binary search)
//! ```
//!
//! - [`catalogue`]: the replica's LTX files (re-exported from `s3_backend`,
//!   where the key layout lives; [`list_files`] is the same function).
//! - [`plan::plan`]: newest snapshot at or before the target, then the
//!   contiguous chain with the fewest files (overlap allowed, gaps refused).
//! - [`execute::restore`]: ranged, parallel downloads with bounded memory;
//!   every page written once, by the last file that holds it; file checksums
//!   (or the final database checksum, for checksum-carrying chains) verified;
//!   temporary file, fsync, atomic rename.

pub use s3_backend::catalogue;

pub mod crc;
pub mod error;
pub mod execute;
pub mod plan;
pub mod progress;
pub mod time;
pub mod verify;

pub use error::RestoreError;
pub use execute::{
    list_files, resolve_timestamp, restore, IntegrityCheck, Options, Restored, Verify,
};
pub use plan::{chain_from, plan, FileInfo, Plan, PlanError, Target, TimeSearch};
pub use progress::{NoProgress, Progress};
