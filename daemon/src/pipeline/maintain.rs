//! Compaction, snapshots and local clean-up of one database's staging files.
//!
//! Level k (1..=n) merges the files of level k-1 not yet covered, on its
//! interval. Snapshots (level 9) are compactions of the newest snapshot (or
//! the first full file) with every later L0 file: they never read the
//! database, so they never hold a lock on it. Local files are removed once
//! uploaded everywhere and covered by a newer snapshot.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ltx_format::{compact, CompactOptions, Header, Txid, HEADER_SIZE};
use s3_backend::layout::SNAPSHOT_LEVEL;
use tracing::{debug, info};

use super::uploader::UploadMarks;
use crate::staging::{LocalFile, StagingDir, StagingError};

#[derive(Debug)]
pub struct Maintainer {
    staging: StagingDir,
    levels: Vec<Duration>,
    snapshot_interval: Duration,
    last_level_run: Vec<Instant>,
    last_snapshot: Instant,
    /// Highest TXID each level (index) has covered: kept in memory because
    /// local clean-up removes the files it was read from.
    covered: Vec<u64>,
}

impl Maintainer {
    pub fn new(staging: &StagingDir, levels: Vec<Duration>, snapshot_interval: Duration) -> Self {
        let now = Instant::now();
        Maintainer {
            last_level_run: vec![now; levels.len()],
            covered: (0..=SNAPSHOT_LEVEL)
                .map(|l| {
                    staging
                        .list_level(l)
                        .ok()
                        .and_then(|f| f.last().map(|f| f.max.0))
                        .unwrap_or(0)
                })
                .collect(),
            staging: staging.clone(),
            levels,
            snapshot_interval,
            last_snapshot: now,
        }
    }

    /// Runs whatever is due. Returns the files written.
    pub fn tick(&mut self) -> Result<Vec<PathBuf>, StagingError> {
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

    fn covered(&self, level: u8) -> u64 {
        self.covered[usize::from(level)]
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

    fn merge(
        &self,
        inputs: &[LocalFile],
        level: u8,
        snapshot: bool,
    ) -> Result<Option<PathBuf>, StagingError> {
        let (Some(first), Some(last)) = (inputs.first(), inputs.last()) else {
            return Ok(None);
        };
        let min = if snapshot { Txid(1) } else { first.min };
        let max = last.max;
        if self.staging.ltx_path(level, min, max).exists() {
            return Ok(None);
        }
        // A NoChecksum input (written when the chain's checksum was unknown)
        // makes the output NoChecksum too.
        let mut no_checksum = false;
        for f in inputs {
            no_checksum |= read_header(f)?.no_checksum();
        }
        let started = Instant::now();
        let path = self.staging.write_ltx(level, min, max, |w| {
            let readers = inputs
                .iter()
                .map(|f| Ok(BufReader::new(File::open(&f.path)?)))
                .collect::<std::io::Result<Vec<_>>>()?;
            let opts = CompactOptions {
                no_checksum,
                allow_non_contiguous: false,
                snapshot,
            };
            compact(readers, &mut *w, opts)?;
            Ok(())
        })?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        info!(level, file = %name, inputs = inputs.len(), elapsed_ms = started.elapsed().as_millis() as u64, "compacted");
        Ok(Some(path))
    }

    pub fn compact_level(&self, level: u8) -> Result<Option<PathBuf>, StagingError> {
        let covered = self.covered(level);
        let chain = Self::chain_after(self.staging.list_level(level - 1)?, covered);
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
    pub fn snapshot(&mut self) -> Result<Option<PathBuf>, StagingError> {
        let l0 = self.staging.list_level(0)?;
        let base = self
            .staging
            .list_level(SNAPSHOT_LEVEL)?
            .into_iter()
            .rfind(|f| f.min.0 == 1)
            .or_else(|| l0.iter().find(|f| f.min.0 == 1).cloned());
        let Some(base) = base else {
            debug!("no snapshot base yet");
            return Ok(None);
        };
        let mut inputs = vec![base.clone()];
        inputs.extend(Self::chain_after(l0, base.max.0));
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
    /// snapshot, by every higher level, and uploaded to every replica; keeps
    /// the two newest snapshots.
    pub fn clean_local(&self, replicas: &[Arc<UploadMarks>]) -> Result<usize, StagingError> {
        let uploaded = |level: u8, max: u64| replicas.iter().all(|m| m.get(level) >= max);
        let snaps = self.staging.list_level(SNAPSHOT_LEVEL)?;
        let Some(newest) = snaps.last() else {
            return Ok(0);
        };
        let floor = newest.max.0;
        let mut removed = 0;
        let top = self.levels.len() as u8;
        for level in 0..=top {
            let next_cover = if level < top {
                self.covered(level + 1)
            } else {
                u64::MAX
            };
            for f in self.staging.list_level(level)? {
                if f.max.0 <= floor && f.max.0 <= next_cover && uploaded(level, f.max.0) {
                    self.staging.remove(&f)?;
                    removed += 1;
                }
            }
        }
        for f in snaps.iter().rev().skip(2) {
            if uploaded(SNAPSHOT_LEVEL, f.max.0) {
                self.staging.remove(f)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The header of a staged file.
fn read_header(f: &LocalFile) -> Result<Header, StagingError> {
    let mut b = [0u8; HEADER_SIZE];
    File::open(&f.path)
        .and_then(|mut r| r.read_exact(&mut b))
        .map_err(|e| StagingError::io("read", &f.path, e))?;
    Header::decode(&b).map_err(|source| StagingError::Encode {
        path: f.path.clone(),
        source,
    })
}
