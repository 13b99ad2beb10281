//! Compaction, snapshots and local clean-up of one database's staging files.
//!
//! Level k (1..=n) merges the files of level k-1 not yet covered, on its
//! interval. Snapshots (level 9) are compactions of the newest snapshot (or
//! the oldest full file) with the files that follow it, the highest level
//! first: they never read the database, so they never hold a lock on it.
//!
//! Local files are removed once uploaded everywhere and covered: a file of
//! level k < n once level k+1 covers it, a file of level n once a snapshot
//! does. The newest L0 file stays (recovery reads its position). So staging
//! holds about one interval of each level, not everything since the last
//! snapshot: a mount stages one L0 file per transaction.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
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
    /// The highest level that holds files or is configured: a restart with
    /// fewer levels still chains snapshots through, and cleans up, the
    /// levels it no longer compacts into.
    top: u8,
    snapshot_interval: Duration,
    last_level_run: Vec<Instant>,
    last_snapshot: Instant,
    /// Highest TXID each level (index) has covered: kept in memory because
    /// local clean-up removes the files it was read from.
    covered: Vec<u64>,
    /// The bounds of the last local clean-up, per level (see `clean_local`).
    cleaned: Vec<u64>,
    /// The newest TXID before which level 1 does not run early again (see
    /// `tick`): set when an early run found nothing to merge.
    early_retry: u64,
}

impl Maintainer {
    pub fn new(staging: &StagingDir, levels: Vec<Duration>, snapshot_interval: Duration) -> Self {
        let now = Instant::now();
        // What a level covers, it covers through any higher level too: its
        // own files may be gone, removed once a higher level covered them.
        let mut covered: Vec<u64> = (0..=SNAPSHOT_LEVEL)
            .map(|l| {
                staging
                    .list_level(l)
                    .ok()
                    .and_then(|f| f.last().map(|f| f.max.0))
                    .unwrap_or(0)
            })
            .collect();
        let on_disk = (1..SNAPSHOT_LEVEL)
            .rev()
            .find(|&l| covered[usize::from(l)] > 0);
        let top = on_disk.unwrap_or(0).max(levels.len() as u8);
        for l in (1..usize::from(SNAPSHOT_LEVEL)).rev() {
            covered[l] = covered[l].max(covered[l + 1]);
        }
        Maintainer {
            last_level_run: vec![now; levels.len()],
            covered,
            cleaned: Vec::new(),
            early_retry: 0,
            staging: staging.clone(),
            levels,
            top,
            snapshot_interval,
            last_snapshot: now,
        }
    }

    /// Runs whatever is due: a level on its interval, level 1 also once
    /// [`L0_BACKLOG`] TXIDs wait for it (`newest` is the newest staged).
    /// Returns the files written.
    pub fn tick(&mut self, newest: u64) -> Result<Vec<PathBuf>, StagingError> {
        let mut out = Vec::new();
        let backlog = newest.saturating_sub(self.covered(1));
        for i in 0..self.levels.len() {
            let early = i == 0 && backlog >= L0_BACKLOG && newest >= self.early_retry;
            if early || self.last_level_run[i].elapsed() >= self.levels[i] {
                self.last_level_run[i] = Instant::now();
                let written = self.compact_level(i as u8 + 1)?;
                match (early, &written) {
                    (true, Some(_)) => {
                        info!(backlog, "level 1 compaction ran ahead of its interval")
                    }
                    // Nothing to merge (a gap in L0): tried again on the
                    // interval, or early once as many TXIDs more wait.
                    (true, None) => self.early_retry = newest + L0_BACKLOG,
                    _ => {}
                }
                out.extend(written);
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
    fn chain_after(files: &[LocalFile], after: u64) -> Vec<LocalFile> {
        let mut chain: Vec<LocalFile> = Vec::new();
        let mut prev = after;
        for f in files.iter().filter(|f| f.max.0 > after) {
            if f.min.0 > prev + 1 && !(prev == 0 && chain.is_empty()) {
                break;
            }
            prev = f.max.0;
            chain.push(f.clone());
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
        // One merge at a time in the process: each opens up to a quarter
        // of the open-file limit (see `fan_in`), and busy databases reach
        // their early level-1 runs together.
        let _one = MERGING.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let scratch = Scratch::new(self.staging.root().join("compact"));
        let path = self.staging.write_ltx(level, min, max, |w| {
            let mut paths: Vec<PathBuf> = inputs.iter().map(|f| f.path.clone()).collect();
            let opts = CompactOptions {
                no_checksum,
                allow_non_contiguous: false,
                snapshot: false,
            };
            let (mut round, fan_in) = (0, fan_in());
            while paths.len() > fan_in {
                paths = scratch.round(round, &paths, fan_in, opts)?;
                round += 1;
            }
            compact(
                open_all(&paths)?,
                &mut *w,
                CompactOptions { snapshot, ..opts },
            )?;
            Ok(())
        })?;
        drop(scratch);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        info!(level, file = %name, inputs = inputs.len(), elapsed_ms = started.elapsed().as_millis() as u64, "compacted");
        Ok(Some(path))
    }

    /// Merges the files of level `level - 1` that continue what `level`
    /// covers into one file of `level`, and moves the level's mark past them.
    pub fn compact_level(&mut self, level: u8) -> Result<Option<PathBuf>, StagingError> {
        let covered = self.covered(level);
        // A level's first file may start the history; otherwise it must
        // continue what the level already covers (`chain_after` stops at a
        // gap).
        let chain = Self::chain_after(&self.staging.list_level(level - 1)?, covered);
        let Some(last) = chain.last().map(|f| f.max.0) else {
            return Ok(None);
        };
        let out = self.merge(&chain, level, false)?;
        self.covered[usize::from(level)] = last;
        Ok(out)
    }

    /// A new snapshot: the newest snapshot (or, before the first, the full
    /// file reaching furthest: any file from TXID 1 holds every page) merged
    /// with the files that follow it. At each step the highest level that
    /// continues the chain is taken (its file may overlap the position: the
    /// page versions it holds are those of its last TXID), then the levels
    /// below it carry on from where it ends, down to L0.
    pub fn snapshot(&mut self) -> Result<Option<PathBuf>, StagingError> {
        let levels = (0..=self.top)
            .map(|l| self.staging.list_level(l))
            .collect::<Result<Vec<_>, _>>()?;
        let base = self
            .staging
            .list_level(SNAPSHOT_LEVEL)?
            .into_iter()
            .rfind(|f| f.min.0 == 1)
            .or_else(|| {
                let full = levels.iter().flatten().filter(|f| f.min.0 == 1);
                full.max_by_key(|f| (f.max, std::cmp::Reverse(f.level)))
                    .cloned()
            });
        let Some(base) = base else {
            debug!("no snapshot base yet");
            return Ok(None);
        };
        let mut inputs = vec![base.clone()];
        let mut pos = base.max.0;
        // Each pass that adds a file moves `pos` forward, so there are at
        // most as many passes as files.
        loop {
            let before = pos;
            for files in levels.iter().rev() {
                let chain = Self::chain_after(files, pos);
                if let Some(last) = chain.last() {
                    pos = last.max.0;
                    inputs.extend(chain);
                }
            }
            if pos == before {
                break;
            }
        }
        if inputs.len() == 1 && base.level == SNAPSHOT_LEVEL {
            return Ok(None);
        }
        let out = self.merge(&inputs, SNAPSHOT_LEVEL, true)?;
        if let Some(last) = inputs.last() {
            self.covered[usize::from(SNAPSHOT_LEVEL)] = last.max.0;
        }
        Ok(out)
    }

    /// Removes local files uploaded to every replica and covered: a file of
    /// a level below the highest once the next level covers it, a file of
    /// the highest level once the newest local snapshot does. Keeps the
    /// newest L0 file and the two newest snapshots. Lists a level again
    /// only once what may go from it has changed (a busy mount's L0
    /// directory holds a compaction interval of files): the L0 file kept as
    /// the newest goes at the next compaction, not when a newer one comes.
    ///
    /// A level above the configured ones (left by a run with more levels)
    /// is cleaned like the highest: once a snapshot covers it.
    pub fn clean_local(&mut self, replicas: &[Arc<UploadMarks>]) -> Result<usize, StagingError> {
        let shipped = |level: u8| replicas.iter().map(|m| m.get(level)).min();
        let snaps = self.staging.list_level(SNAPSHOT_LEVEL)?;
        let floor = snaps.last().map_or(0, |s| s.max.0);
        let (top, compacted) = (self.top, self.levels.len() as u8);
        // Each level's files up to this TXID may go.
        let bounds: Vec<u64> = (0..=top)
            .map(|level| {
                let cover = if level < compacted {
                    self.covered(level + 1)
                } else {
                    floor
                };
                cover.min(shipped(level).unwrap_or(u64::MAX))
            })
            .collect();
        let mut removed = 0;
        for (level, &bound) in (0..=top).zip(&bounds) {
            if self.cleaned.get(usize::from(level)) == Some(&bound) {
                continue;
            }
            let mut files = self.staging.list_level(level)?;
            if level == 0 {
                files.pop();
            }
            for f in files.iter().filter(|f| f.max.0 <= bound) {
                self.staging.remove(f)?;
                removed += 1;
            }
        }
        self.cleaned = bounds;
        let uploaded = |max: u64| shipped(SNAPSHOT_LEVEL).is_none_or(|m| m >= max);
        for f in snaps.iter().rev().skip(2) {
            if uploaded(f.max.0) {
                self.staging.remove(f)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The L0 TXIDs that make a level-1 compaction due before its interval.
/// A mount stages one L0 file per transaction, and an L0 file is removed
/// (given back to the spare pool, see [`StagingDir::remove`]) only once a
/// level-1 file covers it (and every replica has it): on the 30 s default
/// interval, a mount taking 4,000 commits a second would hold 120,000 L0
/// files, and need as many inodes; on ext4 right after mass deletions a
/// new inode costs a commit up to a millisecond. Compacting every 4,096
/// TXIDs gives the files back to the database's pool within seconds, while
/// the mount's reserve of spares ([`crate::staging::RESERVE_SIZE`], twice
/// this) covers the ones in flight, at the price of one
/// level-1 object per 4,096 transactions under such a load (the WAL
/// watcher, one TXID per sync, seldom gets there).
pub const L0_BACKLOG: u64 = 4096;

/// Held by the merge that runs: one at a time in the process.
static MERGING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The most files a merge reads at once. An L1 merge of a busy mount covers
/// one L0 file per transaction of its interval (thousands), far beyond the
/// usual limit of 1,024 open files: a larger merge goes in rounds through
/// scratch files, each merging groups of [`fan_in`] files. Pages only get
/// newer along a chain, so merging a merge gives the same file.
const FAN_IN: usize = 256;

/// Files a merge reads at once: [`FAN_IN`], or a quarter of the process's
/// limit on open files if that is lower (at least 8), leaving the rest to
/// capture, uploads and FUSE (merges run one at a time, see [`MERGING`]).
fn fan_in() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 4).unwrap_or(FAN_IN).clamp(8, FAN_IN)
}

/// The scratch files of a merge in rounds (`<staging>/compact`), removed
/// when it ends; a crash's leftovers are removed by the next merge.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(dir: PathBuf) -> Self {
        let _ = std::fs::remove_dir_all(&dir);
        Scratch { dir }
    }

    /// Merges `paths` in groups of `fan_in` into scratch files, which it
    /// returns in order; removes the scratch files among `paths`.
    fn round(
        &self,
        round: usize,
        paths: &[PathBuf],
        fan_in: usize,
        opts: CompactOptions,
    ) -> ltx_format::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(&self.dir)?;
        let mut out = Vec::with_capacity(paths.len().div_ceil(fan_in));
        for (i, group) in paths.chunks(fan_in).enumerate() {
            let path = self.dir.join(format!("{round}-{i}.ltx"));
            let w = BufWriter::new(File::create(&path)?);
            let (mut w, _, _) = compact(open_all(group)?, w, opts)?;
            w.flush()?;
            out.push(path);
        }
        for p in paths.iter().filter(|p| p.starts_with(&self.dir)) {
            let _ = std::fs::remove_file(p);
        }
        Ok(out)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn open_all(paths: &[PathBuf]) -> std::io::Result<Vec<BufReader<File>>> {
    paths
        .iter()
        .map(|p| Ok(BufReader::new(File::open(p)?)))
        .collect()
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

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::path::Path;

    use ltx_format::{Applier, Checksum, DbChecksum, Encoder, PageSize};

    use super::*;

    const PAGE: usize = 4096;

    /// A database made of pages, and its staged L0 files: TXID 1 holds every
    /// page; each later one rewrites two pages, and now and then grows or
    /// shrinks the database.
    struct History {
        staging: StagingDir,
        pages: Vec<Vec<u8>>,
        states: Vec<Vec<u8>>,
        last: Checksum,
    }

    impl History {
        fn new(staging: &StagingDir) -> Self {
            History {
                staging: staging.clone(),
                pages: (1..=8u8).map(|p| vec![p; PAGE]).collect(),
                states: vec![Vec::new()],
                last: Checksum::ZERO,
            }
        }

        fn commit(&mut self) -> Txid {
            let t = self.states.len() as u64;
            let mut changed: Vec<u32> = if t == 1 {
                (1..=self.pages.len() as u32).collect()
            } else {
                if t.is_multiple_of(7) {
                    self.pages.push(Vec::new());
                } else if t.is_multiple_of(11) && self.pages.len() > 4 {
                    self.pages.pop();
                }
                let n = self.pages.len() as u64;
                let mut c = vec![(t % n) as u32 + 1, ((t * 3) % n) as u32 + 1, n as u32];
                c.sort_unstable();
                c.dedup();
                c
            };
            for &p in &changed {
                self.pages[p as usize - 1] = vec![((t % 251) as u8).wrapping_add(p as u8); PAGE];
            }
            changed.retain(|&p| p as usize <= self.pages.len());
            let mut sum = DbChecksum::new();
            for (i, p) in self.pages.iter().enumerate() {
                sum.toggle_page(i as u32 + 1, p);
            }
            let post = sum.value();
            let txid = Txid(t);
            let mut h = Header::new(
                PageSize::new(PAGE as u32).unwrap(),
                self.pages.len() as u32,
                txid,
                txid,
            );
            if t > 1 {
                h.pre_apply_checksum = self.last;
            }
            let pages = &self.pages;
            self.staging
                .write_ltx(0, txid, txid, |w| {
                    let mut enc = Encoder::new(w, h)?;
                    for &p in &changed {
                        enc.encode_page(p, &pages[p as usize - 1])?;
                    }
                    enc.finish(post)?;
                    Ok(())
                })
                .unwrap();
            self.last = post;
            self.states.push(self.pages.concat());
            txid
        }

        /// Applies `file` (a snapshot) to an empty database and checks it
        /// equals the database after its last TXID.
        fn check_snapshot(&self, file: &Path) {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("db");
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&db)
                .unwrap();
            let mut a = Applier::new(f, None);
            let applied = a.apply_path(file).unwrap();
            a.finish().unwrap();
            let mut bytes = Vec::new();
            File::open(&db).unwrap().read_to_end(&mut bytes).unwrap();
            let t = applied.header.max_txid.0 as usize;
            assert_eq!(applied.header.min_txid, Txid(1), "{}", file.display());
            assert!(bytes == self.states[t], "snapshot at TXID {t} differs");
        }
    }

    fn uploaded_everywhere() -> Vec<Arc<UploadMarks>> {
        let m = UploadMarks::default();
        for l in 0..=SNAPSHOT_LEVEL {
            m.set(l, u64::MAX);
        }
        vec![Arc::new(m)]
    }

    fn ranges(s: &StagingDir, level: u8) -> Vec<(u64, u64)> {
        let files = s.list_level(level).unwrap();
        files.iter().map(|f| (f.min.0, f.max.0)).collect()
    }

    /// A staging directory with an empty history and a maintainer of
    /// `levels` levels (intervals that never come: the tests call it).
    fn fresh(levels: usize) -> (tempfile::TempDir, StagingDir, History, Maintainer) {
        let dir = tempfile::tempdir().unwrap();
        let s = StagingDir::new(dir.path());
        let h = History::new(&s);
        let mt = Maintainer::new(&s, vec![Duration::from_secs(3600); levels], Duration::MAX);
        (dir, s, h, mt)
    }

    #[test]
    fn levels_merge_only_what_they_have_not_covered() {
        let (_dir, s, mut h, mut mt) = fresh(2);
        for t in 1..=12u64 {
            h.commit();
            if t.is_multiple_of(4) {
                mt.compact_level(1).unwrap().unwrap();
            }
        }
        assert_eq!(ranges(&s, 1), [(1, 4), (5, 8), (9, 12)]);
        assert_eq!(mt.compact_level(1).unwrap(), None, "nothing new");
        mt.compact_level(2).unwrap().unwrap();
        h.commit();
        mt.compact_level(1).unwrap().unwrap();
        mt.compact_level(2).unwrap().unwrap();
        assert_eq!(ranges(&s, 2), [(1, 12), (13, 13)]);
        // A restart takes each level's mark from its files, or from a higher
        // level's once its own are gone.
        for f in s.list_level(1).unwrap() {
            s.remove(&f).unwrap();
        }
        h.commit();
        let mut mt = Maintainer::new(&s, vec![Duration::from_secs(3600); 2], Duration::MAX);
        mt.compact_level(1).unwrap().unwrap();
        assert_eq!(ranges(&s, 1), [(14, 14)]);
    }

    #[test]
    fn level_one_runs_ahead_of_its_interval_once_l0_backlog_transactions_wait() {
        let (_dir, s, mut h, mut mt) = fresh(2);
        for _ in 0..3 {
            h.commit();
        }
        assert!(mt.tick(3).unwrap().is_empty(), "an hour's interval");
        assert!(mt.tick(L0_BACKLOG - 1).unwrap().is_empty());
        // The backlog counts from what level 1 covers, by the newest TXID
        // staged: here only three files are, and they are merged.
        let out = mt.tick(L0_BACKLOG).unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(ranges(&s, 1), [(1, 3)]);
        assert_eq!(ranges(&s, 2), [], "level 2 waits for its interval");
        assert!(mt.tick(L0_BACKLOG + 2).unwrap().is_empty(), "covered to 3");
        h.commit();
        assert_eq!(mt.tick(3 + L0_BACKLOG).unwrap().len(), 1);
        assert_eq!(ranges(&s, 1), [(1, 3), (4, 4)]);
    }

    #[test]
    fn staging_keeps_about_one_interval_per_level_and_snapshots_stay_exact() {
        let (_dir, s, mut h, mut mt) = fresh(2);
        let marks = uploaded_everywhere();
        for t in 1..=100u64 {
            h.commit();
            if t.is_multiple_of(5) {
                mt.compact_level(1).unwrap();
            }
            if t % 20 == 3 {
                mt.compact_level(2).unwrap();
            }
            if t == 47 || t == 90 {
                let snap = mt.snapshot().unwrap().unwrap();
                h.check_snapshot(&snap);
            }
            mt.clean_local(&marks).unwrap();
            let l0 = s.list_level(0).unwrap();
            assert!(l0.len() <= 5, "TXID {t}: {} L0 files", l0.len());
            assert_eq!(
                l0.last().map(|f| f.max.0),
                Some(t),
                "the newest L0 file stays"
            );
            // Each level stays one chain, without overlaps or gaps.
            for level in 1..=2 {
                let r = ranges(&s, level);
                for w in r.windows(2) {
                    assert_eq!(w[1].0, w[0].1 + 1, "level {level}: {r:?}");
                }
            }
        }
        assert!(ranges(&s, 1).len() <= 4, "{:?}", ranges(&s, 1));
        assert_eq!(ranges(&s, SNAPSHOT_LEVEL), [(1, 47), (1, 90)]);
        // Every later snapshot still reaches the newest TXID from what is
        // left, through every level.
        h.commit();
        let snap = mt.snapshot().unwrap().unwrap();
        assert_eq!(snap, s.ltx_path(SNAPSHOT_LEVEL, Txid(1), Txid(101)));
        h.check_snapshot(&snap);
        mt.clean_local(&marks).unwrap();
        // L2 covers up to 80 and the snapshot up to 101: L2's files go, L1's
        // stay until L2 covers them (its next merge continues from them).
        assert!(ranges(&s, 2).is_empty(), "{:?}", ranges(&s, 2));
        assert_eq!(ranges(&s, 1), [(81, 85), (86, 90), (91, 95), (96, 100)]);
        // The L0 file kept as the newest at TXID 100 goes at the next
        // compaction.
        assert_eq!(ranges(&s, 0), [(100, 100), (101, 101)]);
    }

    #[test]
    fn nothing_is_removed_before_every_replica_has_it() {
        let (_dir, s, mut h, mut mt) = fresh(1);
        for _ in 0..6 {
            h.commit();
        }
        mt.compact_level(1).unwrap().unwrap();
        let lagging = Arc::new(UploadMarks::default());
        lagging.set(0, 3);
        lagging.set(1, u64::MAX);
        let marks = vec![uploaded_everywhere().remove(0), lagging.clone()];
        assert_eq!(mt.clean_local(&marks).unwrap(), 3);
        assert_eq!(ranges(&s, 0), [(4, 4), (5, 5), (6, 6)]);
        assert_eq!(
            ranges(&s, 1),
            [(1, 6)],
            "the highest level waits for a snapshot"
        );
        assert_eq!(mt.clean_local(&marks).unwrap(), 0, "nothing changed");
        lagging.set(0, 6);
        assert_eq!(mt.clean_local(&marks).unwrap(), 2, "it caught up");
        assert_eq!(ranges(&s, 0), [(6, 6)], "the newest L0 file stays");
        // The first snapshot starts from the full file that reaches furthest.
        h.commit();
        let snap = mt.snapshot().unwrap().unwrap();
        h.check_snapshot(&snap);
    }

    #[test]
    fn a_restart_with_fewer_levels_still_snapshots_and_cleans_through_the_old_ones() {
        let (_dir, s, mut h, mut mt) = fresh(2);
        let marks = uploaded_everywhere();
        for _ in 0..10 {
            h.commit();
        }
        mt.compact_level(1).unwrap().unwrap();
        mt.compact_level(2).unwrap().unwrap();
        mt.clean_local(&marks).unwrap();
        assert!(ranges(&s, 1).is_empty(), "{:?}", ranges(&s, 1));
        assert_eq!(ranges(&s, 2), [(1, 10)]);
        for _ in 0..3 {
            h.commit();
        }
        // Restarted with one level: L2 holds the only copy of TXIDs 1-9.
        let mut mt = Maintainer::new(&s, vec![Duration::from_secs(3600)], Duration::MAX);
        mt.compact_level(1).unwrap().unwrap();
        assert_eq!(ranges(&s, 1), [(11, 13)]);
        let snap = mt.snapshot().unwrap().unwrap();
        assert_eq!(snap, s.ltx_path(SNAPSHOT_LEVEL, Txid(1), Txid(13)));
        h.check_snapshot(&snap);
        mt.clean_local(&marks).unwrap();
        assert!(ranges(&s, 2).is_empty(), "{:?}", ranges(&s, 2));
        assert!(ranges(&s, 1).is_empty(), "{:?}", ranges(&s, 1));
        assert_eq!(ranges(&s, 0), [(13, 13)]);
    }

    #[test]
    fn a_merge_of_more_files_than_it_opens_at_once_goes_in_rounds() {
        let (dir, s, mut h, mut mt) = fresh(1);
        let n = 2 * FAN_IN as u64 + 50;
        for _ in 0..n {
            h.commit();
        }
        let l1 = mt.compact_level(1).unwrap().unwrap();
        assert_eq!(l1, s.ltx_path(1, Txid(1), Txid(n)));
        h.check_snapshot(&l1);
        assert!(!dir.path().join("compact").exists(), "scratch files left");
    }
}
