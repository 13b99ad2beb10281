//! Compaction, snapshots and local clean-up of one database's staging files.
//!
//! Level k (1..=n) merges the files of level k-1 not yet covered, on its
//! interval. Snapshots (level 9) are compactions of the newest snapshot (or
//! the first full file) with every later L0 file: they never read the
//! database, so they never hold a lock on it. Local files are removed once
//! uploaded everywhere and covered by a newer snapshot.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ltx_format::{compact, format_filename, CompactOptions, Txid};
use tracing::{debug, info};

use super::files::{level_dir, list_level, LocalFile};
use crate::capture::write_ltx;

#[derive(Debug)]
pub struct Maintainer {
    ltx: PathBuf,
    levels: Vec<Duration>,
    snapshot_interval: Duration,
    last_level_run: Vec<Instant>,
    last_snapshot: Instant,
    /// Highest TXID each level (index) has covered: kept in memory because
    /// local clean-up removes the files it was read from.
    covered: Vec<u64>,
}

const SNAPSHOT_LEVEL: u8 = 9;

impl Maintainer {
    pub fn new(staging: &Path, levels: Vec<Duration>, snapshot_interval: Duration) -> Self {
        let now = Instant::now();
        Maintainer {
            ltx: staging.join("ltx"),
            last_level_run: vec![now; levels.len()],
            covered: (0..=SNAPSHOT_LEVEL)
                .map(|l| {
                    list_level(&staging.join("ltx"), l)
                        .ok()
                        .and_then(|f| f.last().map(|f| f.max.0))
                        .unwrap_or(0)
                })
                .collect(),
            levels,
            snapshot_interval,
            last_snapshot: now,
        }
    }

    /// Runs whatever is due. Returns the files written.
    pub fn tick(&mut self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for i in 0..self.levels.len() {
            if self.last_level_run[i].elapsed() >= self.levels[i] {
                self.last_level_run[i] = Instant::now();
                if let Some(p) = self.compact_level(i as u8 + 1)? {
                    out.push(p);
                }
            }
        }
        if self.last_snapshot.elapsed() >= self.snapshot_interval {
            self.last_snapshot = Instant::now();
            if let Some(p) = self.snapshot()? {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn covered(&self, level: u8) -> Result<u64> {
        Ok(self.covered[usize::from(level)])
    }

    /// The contiguous run of `files` after TXID `after` (from the first file
    /// when `after` is 0: nothing covered yet).
    fn chain_after(files: Vec<LocalFile>, after: u64) -> Vec<LocalFile> {
        let mut chain: Vec<LocalFile> = Vec::new();
        let mut prev = after;
        for f in files.into_iter().filter(|f| f.max.0 > after) {
            if f.min.0 > prev + 1 && !(prev == 0 && chain.is_empty()) {
                break;
            }
            prev = f.max.0;
            chain.push(f);
        }
        chain
    }

    fn merge(&self, inputs: &[LocalFile], level: u8, snapshot: bool) -> Result<Option<PathBuf>> {
        if inputs.is_empty() {
            return Ok(None);
        }
        let min = if snapshot { Txid(1) } else { inputs[0].min };
        let max = inputs[inputs.len() - 1].max;
        let name = format_filename(min, max);
        let dir = level_dir(&self.ltx, level);
        if dir.join(&name).exists() {
            return Ok(None);
        }
        let open = || -> Result<Vec<BufReader<File>>> {
            inputs
                .iter()
                .map(|f| Ok(BufReader::new(File::open(&f.path)?)))
                .collect()
        };
        let started = Instant::now();
        let attempt = |no_checksum: bool| {
            write_ltx(&dir, &name, |w| {
                let opts = CompactOptions {
                    no_checksum,
                    allow_non_contiguous: false,
                    snapshot,
                };
                compact(open()?, &mut *w, opts)?;
                Ok(())
            })
        };
        // A NoChecksum input (written when the chain's checksum was unknown)
        // makes the output NoChecksum too.
        let path = match attempt(false) {
            Ok(p) => p,
            Err(e) if format!("{e:#}").contains("NoChecksum") => attempt(true)?,
            Err(e) => return Err(e).with_context(|| format!("compacting into level {level}")),
        };
        info!(level, file = %name, inputs = inputs.len(), elapsed_ms = started.elapsed().as_millis() as u64, "compacted");
        Ok(Some(path))
    }

    pub fn compact_level(&self, level: u8) -> Result<Option<PathBuf>> {
        let covered = self.covered(level)?;
        let chain = Self::chain_after(list_level(&self.ltx, level - 1)?, covered);
        // A level's first file may start the history; otherwise it must
        // continue what the level already covers.
        if chain
            .first()
            .is_some_and(|f| covered > 0 && f.min.0 > covered + 1)
        {
            return Ok(None);
        }
        self.merge(&chain, level, false)
    }

    /// A new snapshot: the newest snapshot (or the first snapshot file of
    /// L0) merged with every later L0 file.
    pub fn snapshot(&mut self) -> Result<Option<PathBuf>> {
        let base = list_level(&self.ltx, SNAPSHOT_LEVEL)?
            .into_iter()
            .rfind(|f| f.min.0 == 1)
            .or_else(|| {
                list_level(&self.ltx, 0)
                    .ok()?
                    .into_iter()
                    .find(|f| f.min.0 == 1)
            });
        let Some(base) = base else {
            debug!("no snapshot base yet");
            return Ok(None);
        };
        let mut inputs = vec![base.clone()];
        inputs.extend(Self::chain_after(list_level(&self.ltx, 0)?, base.max.0));
        if inputs.len() == 1 && base.level == SNAPSHOT_LEVEL {
            return Ok(None);
        }
        let out = self.merge(&inputs, SNAPSHOT_LEVEL, true)?;
        if let Some(last) = inputs.last() {
            self.covered[usize::from(SNAPSHOT_LEVEL)] = last.max.0;
        }
        Ok(out)
    }

    /// Removes local files at levels 0..=8 covered by the newest local
    /// snapshot, by every higher level, and uploaded to every replica (per
    /// `uploaded(level, max)`); keeps the two newest snapshots.
    pub fn clean_local(&self, uploaded: impl Fn(u8, u64) -> bool) -> Result<usize> {
        let snaps = list_level(&self.ltx, SNAPSHOT_LEVEL)?;
        let Some(newest) = snaps.last() else {
            return Ok(0);
        };
        let floor = newest.max.0;
        let mut removed = 0;
        let top = self.levels.len() as u8;
        for level in 0..=top {
            let next_cover = if level < top {
                self.covered(level + 1)?
            } else {
                u64::MAX
            };
            for f in list_level(&self.ltx, level)? {
                if f.max.0 <= floor && f.max.0 <= next_cover && uploaded(level, f.max.0) {
                    std::fs::remove_file(&f.path)?;
                    removed += 1;
                }
            }
        }
        for f in snaps.iter().rev().skip(2) {
            if uploaded(SNAPSHOT_LEVEL, f.max.0) {
                std::fs::remove_file(&f.path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
