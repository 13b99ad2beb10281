//! `sluice ls URL`: the LTX files of a replica by level, with TXID ranges,
//! sizes and creation times, in Litestream's `ltx -level all` format.

use std::process::ExitCode;

use anyhow::{Context, Result};
use s3_backend::retry::{RetryPolicy, Shutdown};
use s3_backend::{catalogue, ReplicaUrl};
use serde::Serialize;

use restore::time::format_system_time;

#[derive(Debug, Serialize)]
pub struct Entry {
    pub level: u8,
    pub min_txid: String,
    pub max_txid: String,
    pub size: u64,
    pub timestamp: String,
}

/// Lists levels 0..=9 of a replica.
pub async fn list_replica(url: &ReplicaUrl, policy: RetryPolicy) -> Result<Vec<Entry>> {
    let store = url.open(policy, Shutdown::never()).await?;
    let files = catalogue::list(&store, &url.layout())
        .await
        .with_context(|| format!("listing {url}"))?;
    Ok(files
        .into_iter()
        .map(|f| Entry {
            level: f.level,
            min_txid: f.min.to_string(),
            max_txid: f.max.to_string(),
            size: f.size,
            timestamp: f.last_modified.map(format_system_time).unwrap_or_default(),
        })
        .collect())
}

pub fn run(url: &str, json: bool) -> Result<ExitCode> {
    let url = ReplicaUrl::parse(url)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let policy = RetryPolicy {
        attempt_timeout: std::time::Duration::from_secs(30),
        total_timeout: std::time::Duration::from_secs(60),
        ..RetryPolicy::default()
    };
    let entries = rt.block_on(list_replica(&url, policy))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("level  min_txid          max_txid          size       created");
    for e in &entries {
        outln!(
            "{:<6} {}  {}  {:<10} {}",
            e.level,
            e.min_txid,
            e.max_txid,
            e.size,
            e.timestamp
        );
    }
    if entries.is_empty() {
        eprintln!("no LTX files under {url}");
    }
    Ok(ExitCode::SUCCESS)
}
