//! Restore: planning a chain of LTX files for a target (pure) and applying it.
//!
//! Not built yet beyond what `ltx-format` offers (`ltx_format::apply`); the
//! planner and the parallel executor arrive with the restore issue.
