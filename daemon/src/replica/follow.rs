//! Following one replica: start (resume the cache, or restore it), then poll
//! the store and fast-forward.
//!
//! Polling lists level 0 only, starting after the last key seen there, so an
//! idle replica costs one LIST a poll. Higher levels are listed (again from
//! their last keys) only when level 0 alone does not continue the position:
//! files were compacted or removed before this replica saw them. The chain
//! is planned over every file known past the position (`restore::chain_from`:
//! fewest files, any levels). When no chain continues the position at all,
//! the database is restored again from the newest snapshot and the files
//! after it, and swapped in: a gap never stops the replica.
//!
//! A step that does not verify is fetched again; then every file of it is
//! fetched whole and verified, which names the corrupt file. Corrupt files
//! are avoided (another level may cover their TXIDs); while none can be,
//! applying stops, the last good state is served, and the replica reports
//! itself stalled (status line, `/healthz`), retrying each poll.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use ltx_format::{PageSize, Txid};
use s3_backend::layout::SNAPSHOT_LEVEL;
use s3_backend::{catalogue, FileInfo, Layout, ReplicaStore, ReplicaUrl};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::apply::{self, Applied, Gate, OpenGate};
use super::cache::{CacheDb, Step};
use super::metrics::DbMetrics;
use super::position::{sync_dir, CacheDir, Position};
use super::redo::{self, Replayed};
use super::served::Served;
use super::step::{self, Fetch, StepError, TailGuess};
use super::store::Counters;

/// How a database is followed.
#[derive(Debug, Clone)]
pub struct Options {
    pub poll_interval: Duration,
    /// Ranged reads in flight.
    pub parallelism: usize,
    /// Bound on the pages one step holds in memory; larger steps are split,
    /// a single file larger than this is restored instead.
    pub max_step_bytes: u64,
    /// How long an apply waits for readers to leave before it is put off.
    pub lock_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            poll_interval: Duration::from_secs(1),
            parallelism: 32,
            max_step_bytes: 256 << 20,
            lock_wait: Duration::from_secs(1),
        }
    }
}

/// One database to follow.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The file name readers open.
    pub name: String,
    /// The database's replica.
    pub url: ReplicaUrl,
    /// This database's cache directory.
    pub cache: std::path::PathBuf,
    pub opts: Options,
}

/// Corrupt files are retried after this long (the object may be replaced).
const BAD_FOR: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Follower {
    spec: Spec,
    replica: String,
    layout: Layout,
    store: Arc<dyn ReplicaStore>,
    dir: CacheDir,
    _lock: File,
    cache: Option<CacheDb>,
    after: BTreeMap<u8, String>,
    /// Files listed whose MaxTXID is past the position.
    known: Vec<FileInfo>,
    /// Keys that failed verification, and since when.
    bad: HashMap<String, Instant>,
    guess: TailGuess,
    pub served: Arc<Served>,
    gate: Arc<dyn Gate>,
    pub metrics: Arc<DbMetrics>,
}

impl Follower {
    /// Opens the cache: resumes from the recorded position, or restores.
    /// Readers are not served yet (no gate): see [`Follower::set_gate`].
    pub async fn start(
        spec: Spec,
        counters: Arc<Counters>,
        store: Arc<dyn ReplicaStore>,
    ) -> Result<Follower> {
        let dir = CacheDir::new(spec.cache.clone());
        let lock = dir.create_and_lock()?;
        let served = Arc::new(Served::new(&spec.name, spec.opts.poll_interval));
        let mut f = Follower {
            replica: spec.url.to_string(),
            layout: spec.url.layout(),
            store,
            dir,
            _lock: lock,
            cache: None,
            after: BTreeMap::new(),
            known: Vec::new(),
            bad: HashMap::new(),
            guess: TailGuess::default(),
            metrics: Arc::new(DbMetrics::new(served.clone(), counters)),
            served,
            gate: Arc::new(OpenGate),
            spec,
        };
        if !f.resume().await? {
            let never = CancellationToken::new();
            f.restore_latest("a new cache", &never).await?;
        }
        let cache = f.cache()?;
        info!(
            db = %f.spec.name,
            "serving txid {} ({} pages, checksum {})",
            cache.txid, cache.commit, cache.checksum
        );
        f.served.publish_db(cache);
        f.served.status().last_poll_ok = Some(Instant::now());
        Ok(f)
    }

    /// The mount's gate, once readers can reach the database.
    pub fn set_gate(&mut self, gate: Arc<dyn Gate>) {
        self.gate = gate;
    }

    fn cache(&self) -> Result<&CacheDb> {
        self.cache
            .as_ref()
            .ok_or_else(|| anyhow!("no cached database"))
    }

    pub fn txid(&self) -> Txid {
        self.cache.as_ref().map_or(Txid(0), |c| c.txid)
    }

    /// Resumes from the recorded position; false when the cache must be
    /// restored (none, another replica's, or a database that does not match).
    async fn resume(&mut self) -> Result<bool> {
        let Some(pos) = self.dir.load()? else {
            return Ok(false);
        };
        if pos.replica != self.replica {
            warn!(db = %self.spec.name, "the cache followed {}, not {}: restoring", pos.replica, self.replica);
            return Ok(false);
        }
        let dir = self.dir.clone();
        let p = pos.clone();
        let loaded = tokio::task::spawn_blocking(move || open_recorded(&dir, &p)).await??;
        match loaded {
            Some(cache) => {
                info!(db = %self.spec.name, "resuming at txid {} from {}", cache.txid, self.dir.dir.display());
                self.after = pos.after;
                self.cache = Some(cache);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Lists `levels` after their last keys; new files join `known`.
    async fn list_new(&mut self, levels: impl Iterator<Item = u8>) -> Result<()> {
        let txid = self.txid();
        let mut new = Vec::new();
        for level in levels {
            let dir = self.layout.level_dir(level);
            let after = self.after.get(&level).cloned();
            let objects = self.store.list(&dir, after.as_deref()).await?;
            if let Some(last) = objects.last() {
                self.after.insert(level, last.key.clone());
            }
            for o in objects {
                let Some((lvl, min, max)) = self.layout.parse_ltx_key(&o.key) else {
                    continue;
                };
                if lvl == level && min <= max && max > txid && level != SNAPSHOT_LEVEL {
                    new.push(FileInfo {
                        level,
                        min,
                        max,
                        size: o.size,
                        key: o.key,
                        in_bundle: None,
                        last_modified: o.last_modified,
                    });
                }
            }
        }
        // Bundles (`sluice mount`'s batched uploads) list as their files.
        let files = catalogue::expand_bundles(&self.store, new).await?;
        self.known
            .extend(files.into_iter().filter(|f| f.max > txid));
        Ok(())
    }

    /// The chain from the position over the known files that did not fail.
    fn chain(&self) -> Vec<FileInfo> {
        let usable: Vec<FileInfo> = self
            .known
            .iter()
            .filter(|f| !self.bad.contains_key(&f.key))
            .cloned()
            .collect();
        restore::chain_from(&usable, self.txid())
    }

    fn newest_known(&self) -> Txid {
        self.known.iter().map(|f| f.max).max().unwrap_or(Txid(0))
    }

    /// One poll: list, plan, fast-forward (several rounds when files turn
    /// out to be gone or corrupt), then the lag.
    pub async fn poll(&mut self, stop: &CancellationToken) -> Result<()> {
        let now = Instant::now();
        self.bad
            .retain(|_, since| now.duration_since(*since) < BAD_FOR);
        self.list_new(std::iter::once(0)).await?;
        let mut listed_higher = false;
        for _round in 0..4 {
            let txid = self.txid();
            self.known.retain(|f| f.max > txid);
            let chain = self.chain();
            let reach = chain.last().map_or(txid, |f| f.max);
            if reach < self.newest_known() && !listed_higher {
                self.list_new(1..SNAPSHOT_LEVEL).await?;
                listed_higher = true;
                continue;
            }
            if chain.is_empty() {
                if self.newest_known() > txid {
                    self.no_chain(stop).await?;
                }
                break;
            }
            if !self.advance(chain, stop).await? {
                break;
            }
        }
        self.note_poll();
        Ok(())
    }

    /// Nothing continues the position although newer files exist.
    async fn no_chain(&mut self, stop: &CancellationToken) -> Result<()> {
        let txid = self.txid();
        let blocked: Vec<String> = self.bad.keys().cloned().collect();
        let why = format!(
            "no file continues txid {txid}; newest known txid {}",
            self.newest_known()
        );
        if !self.restore_latest(&why, stop).await? && !blocked.is_empty() {
            let reason = format!(
                "{} failed verification and nothing else covers its TXIDs; serving txid {txid}",
                blocked.join(", ")
            );
            warn!(db = %self.spec.name, "{reason}");
            self.served.status().stalled = Some(reason);
        }
        Ok(())
    }

    fn note_poll(&self) {
        let txid = self.txid();
        let behind = self
            .known
            .iter()
            .filter(|f| f.max > txid)
            .map(|f| f.last_modified.unwrap_or_else(SystemTime::now))
            .min();
        let mut s = self.served.status();
        s.last_poll_ok = Some(Instant::now());
        s.behind_since = behind;
    }

    /// Fetches, verifies and applies `chain` (split while too large).
    /// Returns whether another round may make progress.
    async fn advance(
        &mut self,
        mut chain: Vec<FileInfo>,
        stop: &CancellationToken,
    ) -> Result<bool> {
        let fetch = Fetch {
            store: self.store.clone(),
            parallelism: self.spec.opts.parallelism,
            max_step_bytes: self.spec.opts.max_step_bytes,
        };
        let mut mismatches = 0;
        loop {
            let cache = self.cache.as_ref().context("no cached database")?;
            let r = if mismatches < 2 {
                step::fast(&fetch, cache, &chain, &mut self.guess).await
            } else {
                step::full(&fetch, cache, &chain).await
            };
            match r {
                Ok(step) => return self.apply(step, stop).await,
                Err(StepError::Gone { key }) => {
                    info!(db = %self.spec.name, "{key} is gone; planning again");
                    self.known.retain(|f| f.key != key);
                    return Ok(true);
                }
                Err(e @ StepError::Mismatch { .. }) if mismatches < 2 => {
                    self.metrics.verify_failures.fetch_add(1, Relaxed);
                    warn!(db = %self.spec.name, "step not applied: {e}; fetching again");
                    mismatches += 1;
                }
                Err(StepError::Corrupt { key, detail }) => {
                    self.metrics.verify_failures.fetch_add(1, Relaxed);
                    warn!(db = %self.spec.name, "{key} failed verification ({detail}); not applied, routing around it");
                    self.bad.insert(key, Instant::now());
                    return Ok(true);
                }
                Err(StepError::TooLarge { .. }) if chain.len() > 1 => {
                    chain.truncate(chain.len() / 2);
                }
                Err(
                    e @ (StepError::Mismatch { .. }
                    | StepError::Diverged { .. }
                    | StepError::TooLarge { .. }),
                ) => {
                    self.metrics
                        .verify_failures
                        .fetch_add(u64::from(!matches!(e, StepError::TooLarge { .. })), Relaxed);
                    self.restore_latest(&e.to_string(), stop).await?;
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Applies a verified step through the gate; records the position.
    async fn apply(&mut self, step: Step, stop: &CancellationToken) -> Result<bool> {
        let mut cache = self.cache.take().context("no cached database")?;
        let (served, gate, dir) = (self.served.clone(), self.gate.clone(), self.dir.clone());
        let (replica, after, wait) = (
            self.replica.clone(),
            self.after.clone(),
            self.spec.opts.lock_wait,
        );
        let pages = step.pages.len() as u64;
        let (cache, r) = tokio::task::spawn_blocking(move || {
            let r =
                apply::apply_step(&mut cache, &step, &served, &*gate, &dir, wait).and_then(|a| {
                    if a == Applied::Done {
                        apply::record(&cache, &dir, &replica, &after)?;
                    }
                    Ok(a)
                });
            (cache, r)
        })
        .await?;
        self.cache = Some(cache);
        match r {
            Ok(Applied::Done) => {
                self.metrics.steps.fetch_add(1, Relaxed);
                self.metrics.pages_applied.fetch_add(pages, Relaxed);
                self.served.status().stalled = None;
                Ok(true)
            }
            Ok(Applied::Delayed) => {
                self.metrics.delayed.fetch_add(1, Relaxed);
                info!(db = %self.spec.name, "step delayed: a reader held the database past {:?}", self.spec.opts.lock_wait);
                Ok(false)
            }
            Err(e) if self.served.is_withdrawn() => {
                warn!(db = %self.spec.name, "{e:#}; restoring the cache");
                self.restore_latest("a failed write to the cache", stop)
                    .await?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Restores the newest restorable state past the position (all of it
    /// when there is no cache yet) and swaps it in. False when nothing newer
    /// can be restored.
    pub async fn restore_latest(&mut self, why: &str, stop: &CancellationToken) -> Result<bool> {
        let listing = catalogue::list(&self.store, &self.layout).await?;
        if listing.is_empty() {
            if self.cache.is_some() {
                warn!(db = %self.spec.name, "the replica holds no LTX files; serving txid {}", self.txid());
                return Ok(false);
            }
            bail!("replica {} holds no LTX files: nothing to serve yet (is `sluice replicate` writing to it?)", self.replica);
        }
        let usable: Vec<FileInfo> = listing
            .iter()
            .filter(|f| !self.bad.contains_key(&f.key))
            .cloned()
            .collect();
        let Some(plan) = best_plan(&usable, self.txid()) else {
            if self.cache.is_none() {
                let e = restore::plan(&usable, restore::Target::Latest)
                    .err()
                    .map_or_else(String::new, |e| e.to_string());
                bail!("replica {} cannot be restored: {e}", self.replica);
            }
            warn!(db = %self.spec.name, "{why}; nothing newer than txid {} can be restored yet", self.txid());
            return Ok(false);
        };
        info!(db = %self.spec.name, "restoring txid {} ({why})", plan.target);
        let restored = self.restore_plan(&plan).await?;
        if !self.swap_in(restored, stop).await? {
            return Ok(false);
        }
        self.metrics.restores.fetch_add(1, Relaxed);
        for f in &listing {
            let e = self.after.entry(f.level).or_default();
            if f.key > *e {
                *e = f.key.clone();
            }
        }
        let txid = self.txid();
        self.known = listing
            .into_iter()
            .filter(|f| f.max > txid && f.level != SNAPSHOT_LEVEL)
            .collect();
        let (cache, dir) = (self.cache()?, self.dir.clone());
        dir.save(&apply::position_of(cache, &self.replica, &self.after), true)?;
        Ok(true)
    }

    /// Runs the restore library into `restore/db` and loads the result.
    async fn restore_plan(&self, plan: &restore::Plan) -> Result<CacheDb> {
        let rdir = self.dir.restore_dir();
        std::fs::create_dir_all(&rdir)
            .with_context(|| format!("cannot create {}", rdir.display()))?;
        let out = rdir.join("db");
        let opts = restore::Options {
            parallelism: self.spec.opts.parallelism.min(32),
            overwrite: true,
            ..restore::Options::default()
        };
        let r = restore::restore(
            self.store.clone(),
            plan,
            &out,
            &opts,
            Arc::new(restore::NoProgress),
        )
        .await
        .with_context(|| format!("restoring {} into {}", self.replica, rdir.display()))?;
        let ps = PageSize::new(r.page_size)?;
        let (txid, ts, want) = (r.txid, r.timestamp_ms.unwrap_or(0), r.checksum);
        tokio::task::spawn_blocking(move || -> Result<CacheDb> {
            let file = File::options().read(true).write(true).open(&out)?;
            allocate_all(&file).with_context(|| {
                format!(
                    "cannot allocate {} (is the cache disk full?)",
                    out.display()
                )
            })?;
            let cache = CacheDb::load(file, ps, txid, ts)?;
            if cache.checksum != want {
                bail!(
                    "restored database sums to {}, the restore reported {want}",
                    cache.checksum
                );
            }
            Ok(cache)
        })
        .await?
    }

    /// Readers move to the restored database; it takes the cache's name.
    async fn swap_in(&mut self, new: CacheDb, stop: &CancellationToken) -> Result<bool> {
        let (served, gate, wait, stop2) = (
            self.served.clone(),
            self.gate.clone(),
            self.spec.opts.lock_wait,
            stop.clone(),
        );
        let first = self.cache.is_none();
        let (new, swapped) = tokio::task::spawn_blocking(move || {
            let r = if first {
                Ok(true)
            } else {
                apply::swap(&new, &served, &*gate, wait, &|| stop2.is_cancelled())
            };
            (new, r)
        })
        .await?;
        if !swapped? {
            return Ok(false);
        }
        self.dir.forget()?;
        let from = self.dir.restore_dir().join("db");
        std::fs::rename(&from, self.dir.db())
            .with_context(|| format!("cannot rename {}", from.display()))?;
        sync_dir(&self.dir.dir)?;
        self.cache = Some(new);
        Ok(true)
    }

    /// Every poll interval until `stop`; then the cache is made durable.
    pub async fn run(mut self, stop: CancellationToken) -> Result<()> {
        let mut tick = tokio::time::interval(self.spec.opts.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let r = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.poll(&stop) => r,
            };
            if let Err(e) = r {
                self.metrics.errors.fetch_add(1, Relaxed);
                warn!(db = %self.spec.name, "poll failed: {e:#}; serving txid {}", self.txid());
            }
        }
        self.close()
    }

    /// fsync of the database, then the position, durably.
    pub fn close(&self) -> Result<()> {
        if let Some(c) = &self.cache {
            c.sync().context("fsync of the cached database")?;
            self.dir
                .save(&apply::position_of(c, &self.replica, &self.after), true)?;
        }
        Ok(())
    }
}

/// The plan that restores the newest TXID past `txid` (any TXID when
/// `txid` is 0): the latest, or else the newest restorable one.
fn best_plan(files: &[FileInfo], txid: Txid) -> Option<restore::Plan> {
    if let Ok(p) = restore::plan(files, restore::Target::Latest) {
        return (p.target > txid).then_some(p);
    }
    let best = restore::plan::restorable_txids(files)
        .into_iter()
        .next_back()?;
    (best > txid.0)
        .then(|| restore::plan(files, restore::Target::Txid(Txid(best))).ok())
        .flatten()
}

/// Allocates every block of the file (a restore leaves zero pages as
/// holes): steps overwrite in place and must not find the disk full.
fn allocate_all(file: &File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    match nix::fcntl::fallocate(
        file,
        nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        len as i64,
    ) {
        Ok(()) | Err(nix::errno::Errno::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The cache database at its recorded position, a step record replayed;
/// `None` when it is missing or does not match (it is then restored).
fn open_recorded(dir: &CacheDir, pos: &Position) -> Result<Option<CacheDb>> {
    let path = dir.db();
    let file = match File::options().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let (txid, checksum, ts) = match redo::replay(&dir.redo(), &file, pos.txid())? {
        Replayed::Applied {
            txid,
            checksum,
            timestamp_ms,
        } => {
            info!(
                "{}: an interrupted step to txid {txid} was completed",
                path.display()
            );
            (txid, checksum, timestamp_ms)
        }
        Replayed::Nothing => (pos.txid(), pos.checksum()?, pos.timestamp_ms),
    };
    let ps = PageSize::new(pos.page_size)?;
    let cache = CacheDb::load(file, ps, txid, ts)?;
    if cache.checksum != checksum {
        warn!(
            "{}: the cached database sums to {}, its position (txid {txid}) says {checksum}; restoring it again",
            path.display(),
            cache.checksum
        );
        return Ok(None);
    }
    Ok(Some(cache))
}
