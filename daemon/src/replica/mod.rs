//! `sluice replica`: read-only replicas that follow a bucket.
//!
//! The daemon owns the store and everything LTX; the FUSE filesystem
//! (`fuse_fs::replica`) only serves bytes, `-pos` and `-lag` through a trait
//! implemented by [`served::Served`], and keeps readers out while a step is
//! applied (the [`apply::Gate`]).
//!
//! - [`follow`]: start (resume or restore), poll with start-after listings,
//!   plan the chain, recover from gaps and corrupt files;
//! - [`step`]: one fast-forward — page indexes from file tails, their
//!   union (newest TXID wins), only those frames, verified;
//! - [`cache`]: the local database and its page checksums;
//! - [`apply`], [`redo`]: applying a step all at once and crash-safely;
//! - [`position`]: the cache directory and the persisted position;
//! - [`served`]: what readers see (patched header), position and lag;
//! - [`store`]: GET/LIST counting; [`metrics`]: Prometheus, status line;
//! - [`mount`]: the command: followers served through FUSE mounts.

pub mod apply;
pub mod cache;
pub mod follow;
pub mod metrics;
pub mod mount;
pub mod position;
pub mod redo;
pub mod served;
pub mod step;
pub mod store;

#[cfg(test)]
mod tests;

use s3_backend::ReplicaUrl;

/// The replica of database `name` under `url`: `<url>/<name>`.
pub fn db_url(url: &ReplicaUrl, name: &str) -> ReplicaUrl {
    match url {
        ReplicaUrl::File { root } => ReplicaUrl::File {
            root: root.join(name),
        },
        ReplicaUrl::S3 { config, prefix } => ReplicaUrl::S3 {
            config: config.clone(),
            prefix: if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            },
        },
    }
}

/// The file name a replica is served under when no name is given: the last
/// component of its path or prefix.
pub fn default_name(url: &ReplicaUrl) -> String {
    let last = match url {
        ReplicaUrl::File { root } => root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ReplicaUrl::S3 { prefix, .. } => prefix.rsplit('/').next().unwrap_or("").to_string(),
    };
    if last.is_empty() {
        "db".to_string()
    } else {
        last
    }
}
