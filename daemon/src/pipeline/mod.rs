//! The shipping pipeline of one database, shared by every capture source:
//!
//! ```text
//! capture source ──► staging directory ──► uploader (one per replica) ──► store
//!   (Handoff)         (StagingDir)          maintainer: compaction, snapshots,
//!                                           retention, local clean-up
//! ```
//!
//! A capture source writes each L0 file through [`StagingDir::write_ltx`]
//! (fsynced and renamed) and then hands it over with [`Handoff::staged`];
//! when it ends it calls [`Handoff::finished`], or [`Handoff::fail`] if the
//! database cannot go on. The pipeline never calls back into the source.
//!
//! Stops form one tree ([`Stops`]): the process's `drain` (SIGTERM: a final
//! capture, then upload what is staged) and `halt` (the shutdown timeout, or
//! a failed database: stop at once, cancel store calls) have one child pair
//! per database.

pub mod maintain;
pub mod metrics;
#[cfg(test)]
mod tests;
pub mod uploader;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ltx_format::{Checksum, Txid};
use s3_backend::retry::RetryPolicy;
use s3_backend::ReplicaUrl;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::staging::StagingDir;
use maintain::Maintainer;
use metrics::{DbMetrics, ReplicaMetrics};
use uploader::{UploadMarks, Uploader};

/// Where capture stands, as the pipeline sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Captured {
    /// The source has not opened the database yet.
    Opening,
    /// The source waits for its database to appear (it never opened it in
    /// this run); files staged by an earlier run are uploaded meanwhile.
    Waiting,
    /// The newest L0 file staged.
    Staged(Txid),
    /// Capture has ended: nothing more will be staged.
    Finished,
}

/// An L0 file a capture source has staged: complete, fsynced, and renamed
/// into `ltx/0` of the staging directory.
#[derive(Debug, Clone)]
pub struct StagedL0 {
    pub txid: Txid,
    /// The database checksum after this TXID (the file's post-apply
    /// checksum, or what it would be for a NoChecksum file).
    pub post_apply: Checksum,
    pub path: PathBuf,
    /// Written because continuity could not be proven (every page).
    pub full: bool,
}

/// The cancellation tree (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Stops {
    /// Finish: a final capture, upload what is staged, end.
    pub drain: CancellationToken,
    /// Stop now; store calls are cancelled.
    pub halt: CancellationToken,
}

impl Stops {
    pub fn child(&self) -> Stops {
        Stops {
            drain: self.drain.child_token(),
            halt: self.halt.child_token(),
        }
    }

    pub fn stopping(&self) -> bool {
        self.drain.is_cancelled() || self.halt.is_cancelled()
    }
}

/// What a capture source is given: where to stage, and whom to tell.
#[derive(Debug, Clone)]
pub struct Handoff {
    staging: StagingDir,
    tx: Arc<watch::Sender<Captured>>,
    metrics: Arc<DbMetrics>,
    stops: Stops,
}

impl Handoff {
    pub fn staging(&self) -> &StagingDir {
        &self.staging
    }

    pub fn stops(&self) -> &Stops {
        &self.stops
    }

    pub fn metrics(&self) -> &DbMetrics {
        &self.metrics
    }

    /// The source has opened the database; `txid` is where its history
    /// stands (files already staged are uploaded in any case).
    pub fn opened(&self, txid: Txid) {
        if self.metrics.set_waiting(None).is_some() {
            info!(db = %self.metrics.db, "database ready after waiting");
        }
        self.metrics.txid.store(txid.0, Ordering::Relaxed);
        self.tx.send_replace(Captured::Staged(txid));
    }

    /// The source waits for its database (missing, being created, not in
    /// WAL mode, or deleted or replaced while captured): logged when the
    /// reason changes, and shown in `/healthz` and the metrics. The other
    /// databases are not affected, and readiness does not wait for it.
    pub fn waiting(&self, reason: &str) {
        let previous = self.metrics.set_waiting(Some(reason.to_string()));
        if previous.as_deref() != Some(reason) {
            warn!(db = %self.metrics.db, "{reason}");
        }
        self.tx.send_if_modified(|c| {
            let first = *c == Captured::Opening;
            if first {
                *c = Captured::Waiting;
            }
            first
        });
    }

    /// Hands over a staged L0 file.
    pub fn staged(&self, f: &StagedL0) {
        debug_assert_eq!(f.path, self.staging.ltx_path(0, f.txid, f.txid));
        tracing::trace!(txid = %f.txid, checksum = %f.post_apply, full = f.full, "staged");
        if f.full {
            self.metrics.full_files.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.txid.store(f.txid.0, Ordering::Relaxed);
        self.tx.send_replace(Captured::Staged(f.txid));
    }

    /// Capture has ended; uploads drain what is staged, then end.
    pub fn finished(&self) {
        self.tx.send_replace(Captured::Finished);
    }

    /// This database cannot go on: records why (for `/healthz` and the exit
    /// status) and halts its pipeline.
    pub fn fail(&self, reason: String) {
        error!(db = %self.metrics.db, "{reason}; this database's replication stops");
        self.metrics.set_failed(reason);
        self.stops.halt.cancel();
        self.stops.drain.cancel();
    }
}

/// One replica of a database.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    pub name: String,
    pub url: ReplicaUrl,
    pub litestream_compatible: bool,
    pub sync_interval: Duration,
    /// Ship the L0 files staged in one interval as one bundle object, at
    /// most one upload round per `sync_interval`: for capture that stages a
    /// file per transaction (the FUSE primary). Never for a
    /// Litestream-compatible replica, which Litestream must read.
    pub batch: bool,
}

/// Everything the pipeline of one database needs to know.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub staging: StagingDir,
    pub replicas: Vec<ReplicaSpec>,
    /// Compaction intervals of levels 1, 2, ….
    pub levels: Vec<Duration>,
    pub snapshot_interval: Duration,
    pub retention: Duration,
}

impl PipelineSpec {
    /// The interval at which capture cuts L0 files: the shortest replica's.
    pub fn capture_interval(&self) -> Duration {
        self.replicas
            .iter()
            .map(|r| r.sync_interval)
            .min()
            .unwrap_or(Duration::from_secs(1))
    }
}

fn store_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(60),
        total_timeout: Duration::from_secs(120),
    }
}

/// The pipeline of one database, opened and ready for a capture source.
#[derive(Debug)]
pub struct Pipeline {
    spec: PipelineSpec,
    uploaders: Vec<Uploader>,
    handoff: Handoff,
    rx: watch::Receiver<Captured>,
}

impl Pipeline {
    /// The handoff of a capture source, ready before the stores are open: a
    /// source may stage files at once; [`Pipeline::open`] uploads them.
    pub fn handoff(
        staging: &StagingDir,
        metrics: Arc<DbMetrics>,
        stops: Stops,
    ) -> (Handoff, watch::Receiver<Captured>) {
        let (tx, rx) = watch::channel(Captured::Opening);
        let handoff = Handoff {
            staging: staging.clone(),
            tx: Arc::new(tx),
            metrics,
            stops,
        };
        (handoff, rx)
    }

    /// Opens every replica store. `fresh`: the staging directory held no
    /// history when capture began; then a replica that already holds files
    /// is refused: it belongs to another writer (or this machine lost its
    /// staging files). Returns `None` if a stop came first.
    pub async fn open(
        spec: PipelineSpec,
        handoff: Handoff,
        rx: watch::Receiver<Captured>,
        fresh: bool,
    ) -> Result<Option<Pipeline>> {
        spec.staging.create()?;
        tracing::debug!(staging = %spec.staging.root().display(), "opening the pipeline");
        let (metrics, stops) = (&handoff.metrics, &handoff.stops);
        let mut uploaders = Vec::new();
        for (i, r) in spec.replicas.iter().enumerate() {
            let store = r
                .url
                .open(store_policy(), stops.halt.clone().into())
                .await?;
            let rm = Arc::new(ReplicaMetrics {
                name: r.name.clone(),
                ..ReplicaMetrics::default()
            });
            metrics
                .replicas
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(rm.clone());
            uploaders.push(Uploader::new(r, store, &spec.staging, i, rm));
        }
        if fresh {
            for up in &uploaders {
                let Some(has) = replica_has_files(up, stops).await else {
                    return Ok(None);
                };
                if has {
                    bail!(
                        "the replica {} already holds LTX files but {} has no position for them: another writer owns this replica, or this machine's staging directory was lost; use an empty replica path (or remove the old files)",
                        up.url,
                        spec.staging.position_path().display()
                    );
                }
            }
        }
        Ok(Some(Pipeline {
            spec,
            uploaders,
            handoff,
            rx,
        }))
    }

    /// Waits until the capture source has opened the database or waits for
    /// it to appear (true), or failed or was stopped first (false).
    pub async fn wait_opened(&mut self) -> bool {
        let halt = self.handoff.stops.halt.clone();
        tokio::select! {
            r = self.rx.wait_for(|c| *c != Captured::Opening) => r.is_ok(),
            _ = halt.cancelled() => false,
        }
    }

    /// Runs maintenance and uploads until capture has finished and what it
    /// staged is uploaded (or the final round failed), or until halted.
    pub async fn run(self, snapshot_requests: Arc<AtomicU64>) -> Result<(), String> {
        let Pipeline {
            spec,
            uploaders,
            handoff,
            rx,
        } = self;
        let marks: Vec<Arc<UploadMarks>> = uploaders.iter().map(|u| u.marks.clone()).collect();
        let maint = spawn_maintainer(&spec, handoff.clone(), marks, snapshot_requests);
        let capture_interval = spec.capture_interval();
        let mut tasks = Vec::new();
        for (up, r) in uploaders.into_iter().zip(&spec.replicas) {
            let pace = (r.batch || r.sync_interval > capture_interval).then_some(r.sync_interval);
            tasks.push(tokio::spawn(upload_loop(
                up,
                pace,
                spec.retention,
                rx.clone(),
                handoff.clone(),
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
        // Uploads are done: maintenance ends with them.
        handoff.stops.drain.cancel();
        if let Ok(m) = maint {
            let _ = tokio::task::spawn_blocking(move || m.join()).await;
        }
        match handoff.metrics.failure() {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }
}

/// Whether the replica holds any LTX file, retried until the store answers;
/// `None` if a stop came first.
async fn replica_has_files(up: &Uploader, stops: &Stops) -> Option<bool> {
    let mut attempt = 0u32;
    loop {
        match s3_backend::catalogue::list(&up.store, &up.layout).await {
            Ok(files) => return Some(!files.is_empty()),
            Err(e) => {
                attempt += 1;
                warn!(replica = %up.name, attempt, "cannot list the replica yet: {e}");
                let wait = (Duration::from_millis(250) * 2u32.pow(attempt.min(5)))
                    .min(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stops.drain.cancelled() => return None,
                    _ = stops.halt.cancelled() => return None,
                }
            }
        }
    }
}

/// The maintenance thread: compaction and snapshots on their intervals,
/// snapshots on request (SIGUSR1), local clean-up.
fn spawn_maintainer(
    spec: &PipelineSpec,
    handoff: Handoff,
    marks: Vec<Arc<UploadMarks>>,
    requests: Arc<AtomicU64>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // A quarter of the shortest level interval, within 50 ms..1 s.
    let tick = spec
        .levels
        .iter()
        .copied()
        .min()
        .map_or(Duration::from_secs(1), |d| d / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut mt = Maintainer::new(&spec.staging, spec.levels.clone(), spec.snapshot_interval);
    std::thread::Builder::new()
        .name("sluice-maintain".into())
        .spawn(move || {
            let mut served = requests.load(Ordering::Relaxed);
            while !handoff.stops.stopping() {
                std::thread::sleep(tick);
                let newest = handoff.metrics.txid.load(Ordering::Relaxed);
                let r = mt.tick(newest).map(|_| ()).and_then(|()| {
                    let asked = requests.load(Ordering::Relaxed);
                    if asked != served {
                        served = asked;
                        match mt.snapshot()? {
                            Some(p) => info!(file = %p.display(), "on-demand snapshot written"),
                            None => {
                                info!("on-demand snapshot: nothing new since the newest snapshot")
                            }
                        }
                    }
                    Ok(())
                });
                // Clean-up runs even when a compaction failed: on a full
                // disk it is what frees space.
                let r = r.and(mt.clean_local(&marks).map(|_| ()));
                match r {
                    Err(e) if e.is_fatal() => handoff.fail(format!("maintenance: {e}")),
                    Err(e) => warn!("maintenance: {e}"),
                    Ok(()) => {}
                }
            }
        })
}

/// One replica's uploads: a round whenever a file is staged (at most one a
/// `pace` for a slower replica), retention now and then, until capture has
/// finished and its files are uploaded.
struct UploadTask {
    up: Uploader,
    pace: Option<Duration>,
    retention: Duration,
    rx: watch::Receiver<Captured>,
    handoff: Handoff,
    last_upload: Option<Instant>,
    last_retention: Instant,
    backoff: Duration,
}

/// What an upload round leads to.
enum Flow {
    /// Wait for the next file.
    Wait,
    /// The round failed: it was retried after a pause; go again.
    Again,
    /// The task is done.
    End,
}

async fn upload_loop(
    up: Uploader,
    pace: Option<Duration>,
    retention: Duration,
    rx: watch::Receiver<Captured>,
    handoff: Handoff,
) {
    let mut t = UploadTask {
        up,
        pace,
        retention,
        rx,
        handoff,
        last_upload: None,
        last_retention: Instant::now(),
        backoff: Duration::from_millis(200),
    };
    while !t.handoff.stops.halt.is_cancelled() {
        match t.round().await {
            Flow::End => return,
            Flow::Again => continue,
            Flow::Wait => {}
        }
        t.retain().await;
        if !t.wait().await {
            return;
        }
    }
}

impl UploadTask {
    /// Uploads what is staged; records when the replica falls behind and
    /// catches up (for the lag metric).
    async fn round(&mut self) -> Flow {
        let captured = *self.rx.borrow_and_update();
        let finished = captured == Captured::Finished;
        let latest = match captured {
            Captured::Staged(t) => t.0,
            _ => 0,
        };
        let metrics = self.up.metrics.clone();
        let pending_since = &metrics.pending_since;
        if self.up.uploaded(0) < latest {
            let mut p = pending_since.lock().unwrap_or_else(|p| p.into_inner());
            p.get_or_insert_with(Instant::now);
        }
        if let Err(e) = self.up.probe().await {
            warn!(replica = %self.up.name, "store not reachable yet: {e}");
        }
        match self.up.upload_pending().await {
            Ok(n) => {
                self.backoff = Duration::from_millis(200);
                if n > 0 {
                    self.last_upload = Some(Instant::now());
                }
                // Everything captured when the round began is uploaded.
                let caught_up = if finished {
                    self.up.caught_up().await.unwrap_or(false)
                } else {
                    self.up.uploaded(0) >= latest
                };
                if caught_up {
                    *pending_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                if finished {
                    if let Err(e) = self.up.save_progress(true).await {
                        warn!(replica = %self.up.name, "cannot record upload progress: {e}");
                    }
                    return Flow::End;
                }
                Flow::Wait
            }
            Err(e) if e.is_fatal() => {
                self.handoff.fail(e.to_string());
                Flow::End
            }
            Err(e) => {
                self.up.metrics.errors.fetch_add(1, Ordering::Relaxed);
                warn!(replica = %self.up.name, "upload failed, will retry: {e}");
                if finished {
                    // Final round failed: what is staged stays for next start.
                    return Flow::End;
                }
                let halt = self.handoff.stops.halt.clone();
                tokio::select! {
                    _ = tokio::time::sleep(self.backoff) => {}
                    _ = halt.cancelled() => return Flow::End,
                }
                self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
                Flow::Again
            }
        }
    }

    /// Retention, a few times per retention window.
    async fn retain(&mut self) {
        let every = (self.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        if self.last_retention.elapsed() >= every {
            self.last_retention = Instant::now();
            if let Err(e) = self.up.apply_retention(self.retention).await {
                warn!(replica = %self.up.name, "retention: {e}");
            }
        }
    }

    /// Waits for a new file (or a stop; once draining, for the final file).
    /// False if the task must end.
    async fn wait(&mut self) -> bool {
        let stops = self.handoff.stops.clone();
        let draining = stops.drain.is_cancelled();
        tokio::select! {
            r = self.rx.changed() => { if r.is_err() { return false; } }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stops.drain.cancelled(), if !draining => {}
            _ = stops.halt.cancelled() => return false,
        }
        // Capture already paces L0 files at the shortest interval; a replica
        // with a longer one batches its uploads to that.
        if let (Some(t), Some(pace)) = (self.last_upload, self.pace) {
            let since = t.elapsed();
            if since < pace && !stops.drain.is_cancelled() {
                tokio::select! {
                    _ = tokio::time::sleep(pace - since) => {}
                    _ = stops.drain.cancelled() => {}
                }
            }
        }
        true
    }
}
