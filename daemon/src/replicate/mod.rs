//! `sluice replicate`: one capture thread, one maintenance thread and one
//! upload task per replica, for every configured database.
//!
//! A database whose replica reports "another writer owns this replica" stops
//! (capture and uploads); the others keep running, `/healthz` turns 503, and
//! the exit status is non-zero. SIGTERM/SIGINT: a final sync, a final upload
//! round within the shutdown timeout, then exit.

pub mod engine;
pub mod files;
pub mod maintain;
pub mod metrics;
pub mod position;
pub mod uploader;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use s3_backend::layout::SNAPSHOT_LEVEL;
use s3_backend::retry::{shutdown_channel, RetryPolicy, Shutdown};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::capture::wal_path;
use crate::config::{Config, DbConfig};
use engine::Engine;
use maintain::Maintainer;
use metrics::{DbMetrics, Metrics, ReplicaMetrics};
use uploader::{UploadError, Uploader};

/// The staging directory of a database: `<dir>/.<name>-sluice` by default.
pub fn staging_dir(db: &DbConfig) -> PathBuf {
    if let Some(d) = &db.staging_dir {
        return d.clone();
    }
    let name = db
        .path
        .file_name()
        .map_or_else(|| "db".into(), |n| n.to_string_lossy().into_owned());
    db.path
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!(".{name}-sluice"))
}

/// The default staging directory of a database path.
pub fn staging_dir_of(db: &Path) -> PathBuf {
    let name = db
        .file_name()
        .map_or_else(|| "db".into(), |n| n.to_string_lossy().into_owned());
    db.parent()
        .unwrap_or(Path::new("/"))
        .join(format!(".{name}-sluice"))
}

fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(state);
}

pub fn run(cfg: Config) -> Result<ExitCode> {
    run_until(cfg, None)
}

/// Runs until SIGTERM/SIGINT, or until `stop` turns true (for in-process use).
pub fn run_until(cfg: Config, stop: Option<watch::Receiver<bool>>) -> Result<ExitCode> {
    for db in &cfg.dbs {
        engine::check_database(&db.path)?;
    }
    // One thread: uploads wait on the network, capture and maintenance have
    // their own threads, and a single runtime thread saves the cross-thread
    // wake-ups of a work-stealing pool (most of the daemon's idle CPU).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(cfg, stop))
}

async fn run_async(cfg: Config, external_stop: Option<watch::Receiver<bool>>) -> Result<ExitCode> {
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = cfg.metrics_addr.clone() {
        tokio::spawn(metrics::serve(addr, metrics.clone()));
    }
    // `stop` asks for a graceful stop; `cancel` aborts store calls after the
    // shutdown timeout.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (cancel_trigger, cancel) = shutdown_channel();
    let shutdown_timeout = cfg
        .dbs
        .iter()
        .map(|d| d.shutdown_timeout.0)
        .max()
        .unwrap_or(Duration::from_secs(10));
    // SIGUSR1 asks every database for a snapshot now (a counter each
    // maintenance thread compares with the last request it served).
    let snapshot_requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let req = snapshot_requests.clone();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
            Ok(mut usr1) => {
                tokio::spawn(async move {
                    while usr1.recv().await.is_some() {
                        info!("SIGUSR1: snapshot requested");
                        req.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            Err(e) => warn!("cannot handle SIGUSR1 (on-demand snapshots): {e}"),
        }
    }
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(cfg.dbs.len());
    for db in cfg.dbs {
        let m = Arc::new(DbMetrics {
            db: db.path.display().to_string(),
            ..DbMetrics::default()
        });
        metrics
            .dbs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(m.clone());
        tasks.push(tokio::spawn(run_db(
            db,
            m,
            stop_rx.clone(),
            cancel.clone(),
            ready_tx.clone(),
            snapshot_requests.clone(),
        )));
    }
    drop(ready_tx);
    let n = tasks.len();
    tokio::spawn(async move {
        let mut ready = 0;
        while ready_rx.recv().await.is_some() {
            ready += 1;
            if ready == n {
                notify_systemd(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status("replicating"),
                ]);
            }
        }
    });
    if let Some(period) = sd_notify::watchdog_enabled() {
        let every = period / 2;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                notify_systemd(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
    let stop_tx = Arc::new(stop_tx);
    let s2 = stop_tx.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    error!("cannot handle SIGTERM: {e}");
                    return;
                }
            };
        let external = async move {
            match external_stop {
                Some(mut rx) => {
                    while !*rx.borrow() {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: final sync, then exit"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: final sync, then exit"),
            _ = external => info!("stop requested: final sync, then exit"),
        }
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        let _ = s2.send(true);
        tokio::time::sleep(shutdown_timeout).await;
        warn!("shutdown timeout: cancelling uploads still in flight");
        cancel_trigger.fire();
    });
    let mut failed = false;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!("{e:#}");
                failed = true;
            }
            Err(e) => {
                error!("database task panicked: {e}");
                failed = true;
            }
        }
    }
    if let Err(reasons) = metrics.health() {
        for r in reasons {
            error!("{r}");
        }
        failed = true;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(60),
        total_timeout: Duration::from_secs(120),
    }
}

async fn any_files(up: &Uploader) -> Result<bool, s3_backend::StoreError> {
    for level in 0..=SNAPSHOT_LEVEL {
        let objs = up.store.list(&up.layout.level_dir(level), None).await?;
        if objs
            .iter()
            .any(|o| up.layout.parse_ltx_key(&o.key).is_some())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn run_db(
    db: DbConfig,
    m: Arc<DbMetrics>,
    mut stop: watch::Receiver<bool>,
    cancel: Shutdown,
    ready: tokio::sync::mpsc::Sender<()>,
    snapshot_requests: Arc<std::sync::atomic::AtomicU64>,
) -> Result<()> {
    let staging = staging_dir(&db);
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create staging directory {}", staging.display()))?;
    let mut uploaders = Vec::new();
    let mut intervals = Vec::new();
    for (i, r) in db.replicas.iter().enumerate() {
        let url = r.resolve()?;
        let store = url.open(policy(), cancel.clone()).await?;
        let name = r.name.clone().unwrap_or_else(|| format!("replica{i}"));
        let rm = Arc::new(ReplicaMetrics {
            name: name.clone(),
            ..ReplicaMetrics::default()
        });
        m.replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rm.clone());
        let up = Uploader::new(
            name,
            url.to_string(),
            store,
            url.layout(),
            r.litestream_compatible,
            &staging,
            i,
            rm,
        )?;
        intervals.push(r.sync_interval.map_or(db.sync_interval.0, |d| d.0));
        uploaders.push(up);
    }
    // Without a local position, refuse replicas that already hold files:
    // they belong to another writer (or to lost local state).
    let has_position = staging.join("position.json").exists();
    let mut replica_has_files = false;
    if !has_position {
        for up in &uploaders {
            let mut attempt = 0u32;
            loop {
                match any_files(up).await {
                    Ok(b) => {
                        replica_has_files |= b;
                        break;
                    }
                    Err(e) => {
                        attempt += 1;
                        warn!(replica = %up.name, attempt, "cannot list the replica yet: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep((Duration::from_millis(250) * 2u32.pow(attempt.min(5))).min(Duration::from_secs(5))) => {}
                            _ = stop.changed() => return Ok(()),
                        }
                    }
                }
            }
        }
    }
    let sync_interval = intervals
        .iter()
        .copied()
        .min()
        .unwrap_or(db.sync_interval.0);
    let (txid_tx, txid_rx) = watch::channel(0u64);
    let db_stop = Arc::new(AtomicBool::new(false));
    let graceful = Arc::new(AtomicBool::new(false));
    // Capture thread.
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let cap = {
        let checkpoint_pages = db.checkpoint_pages;
        let db = db.path.clone();
        let staging = staging.clone();
        let m = m.clone();
        let db_stop = db_stop.clone();
        let graceful = graceful.clone();
        std::thread::Builder::new()
            .name("sluice-capture".into())
            .spawn(move || {
                capture_loop(
                    &db,
                    &staging,
                    checkpoint_pages,
                    replica_has_files,
                    sync_interval,
                    m,
                    txid_tx,
                    db_stop,
                    graceful,
                    opened_tx,
                )
            })?
    };
    match opened_rx.await {
        Ok(Ok(())) => {
            let _ = ready.send(()).await;
        }
        Ok(Err(e)) => {
            let _ = cap.join();
            *m.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
            return Err(e);
        }
        Err(_) => anyhow::bail!(
            "capture thread for {} ended before opening",
            db.path.display()
        ),
    }
    // Maintenance thread.
    let maint = {
        let staging = staging.clone();
        let levels: Vec<Duration> = db.levels.iter().map(|d| d.0).collect();
        let snap = db.snapshot_interval.0;
        let db_stop = db_stop.clone();
        let graceful = graceful.clone();
        let replicas: Vec<Arc<ReplicaMetrics>> =
            m.replicas.lock().unwrap_or_else(|p| p.into_inner()).clone();
        std::thread::Builder::new()
            .name("sluice-maintain".into())
            .spawn(move || {
                // A quarter of the shortest level interval, within 50 ms..1 s.
                let tick = levels
                    .iter()
                    .copied()
                    .min()
                    .map_or(Duration::from_secs(1), |d| d / 4)
                    .clamp(Duration::from_millis(50), Duration::from_secs(1));
                let mut mt = Maintainer::new(&staging, levels, snap);
                let mut served = snapshot_requests.load(Ordering::Relaxed);
                while !db_stop.load(Ordering::Relaxed) && !graceful.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    if let Err(e) = mt.tick() {
                        warn!("maintenance: {e:#}");
                    }
                    let asked = snapshot_requests.load(Ordering::Relaxed);
                    if asked != served {
                        served = asked;
                        match mt.snapshot() {
                            Ok(Some(p)) => info!(file = %p.display(), "on-demand snapshot written"),
                            Ok(None) => {
                                info!("on-demand snapshot: nothing new since the newest snapshot")
                            }
                            Err(e) => warn!("on-demand snapshot: {e:#}"),
                        }
                    }
                    let uploaded = |level: u8, max: u64| {
                        replicas
                            .iter()
                            .all(|r| r.uploaded[usize::from(level)].load(Ordering::Relaxed) >= max)
                    };
                    if let Err(e) = mt.clean_local(uploaded) {
                        warn!("local clean-up: {e:#}");
                    }
                }
            })?
    };
    // Upload tasks.
    let retention = db.retention.0;
    let mut up_tasks = Vec::new();
    for (up, interval) in uploaders.into_iter().zip(intervals) {
        let pace = (interval > sync_interval).then_some(interval);
        up_tasks.push(tokio::spawn(upload_loop(
            up,
            pace,
            retention,
            txid_rx.clone(),
            stop.clone(),
            db_stop.clone(),
            m.clone(),
        )));
    }

    // Wait for a stop request or a failed database.
    loop {
        if db_stop.load(Ordering::Relaxed) {
            break;
        }
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    graceful.store(true, Ordering::Relaxed);
                    break;
                }
            }
            // Only a failed database sets `db_stop` without a stop request.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        let _ = cap.join();
        let _ = maint.join();
    })
    .await;
    for t in up_tasks {
        let _ = t.await;
    }
    let failed = m.failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match failed {
        Some(r) => Err(anyhow::anyhow!(
            "{}: replication stopped: {r}",
            db.path.display()
        )),
        None => Ok(()),
    }
}

/// Transactions per sync interval above which the load counts as steady.
const STEADY_TRANSACTIONS: u64 = 8;

/// The debounce of a write after an idle period.
const DEBOUNCE: Duration = Duration::from_millis(3);

/// A write this soon after the last sync is debounced for `BUSY_DEBOUNCE`.
const BUSY_AFTER: Duration = Duration::from_millis(100);
const BUSY_DEBOUNCE: Duration = Duration::from_millis(25);

/// WAL bytes per sync interval above which the capture thread flushes the
/// WAL to disk while it waits.
const HEAVY_INTERVAL_BYTES: u64 = 8 << 20;

/// One inotify watch, moved between the WAL and its directory.
struct WalWatch {
    watcher: Option<notify::RecommendedWatcher>,
    current: Option<PathBuf>,
}

impl WalWatch {
    fn set(&mut self, target: Option<PathBuf>) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        if self.current == target {
            return;
        }
        if let Some(old) = self.current.take() {
            let _ = w.unwatch(&old);
        }
        if let Some(t) = target {
            if w.watch(&t, RecursiveMode::NonRecursive).is_ok() {
                self.current = Some(t);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn capture_loop(
    db: &Path,
    staging: &Path,
    checkpoint_pages: u32,
    replica_has_files: bool,
    sync_interval: Duration,
    m: Arc<DbMetrics>,
    txid_tx: watch::Sender<u64>,
    db_stop: Arc<AtomicBool>,
    graceful: Arc<AtomicBool>,
    opened: tokio::sync::oneshot::Sender<Result<()>>,
) {
    let (mut engine, first) = match Engine::open(db, staging, checkpoint_pages, replica_has_files) {
        Ok(x) => x,
        Err(e) => {
            let _ = opened.send(Err(e));
            return;
        }
    };
    if let Some(s) = &first {
        if s.full {
            m.full_files.fetch_add(1, Ordering::Relaxed);
        }
    }
    m.txid.store(engine.txid().0, Ordering::Relaxed);
    let _ = txid_tx.send(engine.txid().0);
    let _ = opened.send(Ok(()));
    info!(db = %db.display(), txid = %engine.txid(), checksum = %engine.checksum(), "capturing");

    let (ev_tx, ev_rx) = mpsc::channel();
    let wal = wal_path(db);
    let dir = db.parent().unwrap_or(Path::new("/")).to_path_buf();
    let watched = wal.clone();
    let mut watch = WalWatch {
        watcher: notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                // Only writes matter. Opens and closes (our own reads of the
                // WAL among them) would wake capture in a loop.
                if matches!(ev.kind, notify::EventKind::Access(_)) {
                    return;
                }
                if ev.paths.iter().any(|p| p == &watched) {
                    let _ = ev_tx.send(());
                }
            }
        })
        .map_err(|e| warn!("file-system events unavailable ({e}); polling the WAL instead"))
        .ok(),
        current: None,
    };
    let poll = sync_interval.min(Duration::from_secs(1));
    let mut last_sync = Instant::now() - sync_interval;
    // Transactions shipped recently: under steady load (many per interval)
    // at most one L0 per interval; otherwise each write ships at once.
    let mut recent: std::collections::VecDeque<(Instant, u64, u64)> = Default::default();
    let mut errors_in_row = 0u32;
    loop {
        if db_stop.load(Ordering::Relaxed) {
            break;
        }
        let stopping = graceful.load(Ordering::Relaxed);
        // What the last interval shipped: steady (enough transactions) and
        // heavy (megabytes of WAL) loads are handled on a timer.
        while recent
            .front()
            .is_some_and(|(t, _, _)| t.elapsed() > sync_interval)
        {
            recent.pop_front();
        }
        let steady = recent.iter().map(|r| r.1).sum::<u64>() >= STEADY_TRANSACTIONS;
        let heavy = recent.iter().map(|r| r.2).sum::<u64>() >= HEAVY_INTERVAL_BYTES;
        let mut repin = false;
        if !stopping && engine.zero_pinned() && heavy {
            // Just after a full checkpoint under a heavy load: our pin is on
            // read mark 0, which blocks the application's checkpoints; move
            // it as soon as the application has written a little.
            let until = Instant::now() + Duration::from_millis(50);
            while Instant::now() < until && !engine.pin_blocks_checkpoints() {
                std::thread::sleep(Duration::from_millis(1));
            }
            repin = engine.pin_blocks_checkpoints();
        }
        if !stopping && !repin {
            let since = last_sync.elapsed();
            if steady {
                // Steady load: one sync per interval, on a timer. File-system
                // events are of no use meanwhile (each write would wake the
                // watcher); the load counts as steady until an interval
                // ships too little.
                watch.set(None);
                let until = Instant::now() + sync_interval.saturating_sub(since);
                // A heavy load grows the WAL fast: keep its dirty pages
                // flowing to disk from this thread. A light one needs no
                // flushing.
                while Instant::now() < until
                    && !graceful.load(Ordering::Relaxed)
                    && !db_stop.load(Ordering::Relaxed)
                {
                    // Wake-ups cost CPU: sleep through the interval unless
                    // there is something to watch.
                    let step = if heavy {
                        Duration::from_millis(100)
                    } else if engine.zero_pinned() {
                        Duration::from_millis(250)
                    } else {
                        Duration::from_secs(1)
                    };
                    std::thread::sleep((until - Instant::now()).min(step));
                    if heavy {
                        engine.flush_wal(0);
                    }
                    if engine.pin_blocks_checkpoints() {
                        repin = true;
                        break;
                    }
                }
            } else {
                // Watch the WAL itself (its directory until it exists).
                watch.set(Some(if wal.exists() {
                    wal.clone()
                } else {
                    dir.clone()
                }));
                if ev_rx.recv_timeout(poll).is_ok() {
                    // Debounce a burst of writes from one commit; longer
                    // when the last sync was moments ago (a load starting:
                    // fewer, fuller files until it counts as steady).
                    let debounce = if last_sync.elapsed() < BUSY_AFTER {
                        BUSY_DEBOUNCE
                    } else {
                        DEBOUNCE
                    };
                    std::thread::sleep(debounce);
                }
            }
            while ev_rx.try_recv().is_ok() {}
        }
        if let Err(e) = engine.check_identity() {
            error!(db = %db.display(), "{e:#}");
            *m.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
            db_stop.store(true, Ordering::Relaxed);
            break;
        }
        let synced = if repin && !stopping {
            engine.repin().map(|()| (None, None))
        } else {
            engine.sync_and_checkpoint(stopping)
        };
        match synced {
            Ok((a, b)) => {
                errors_in_row = 0;
                for s in [a, b].into_iter().flatten() {
                    tracing::debug!(txid = %s.txid, pages = s.pages, bytes = s.bytes, transactions = s.transactions, file = %s.path.display(), "synced");
                    last_sync = Instant::now();
                    recent.push_back((last_sync, s.transactions, s.wal_bytes));
                    if s.full {
                        m.full_files.fetch_add(1, Ordering::Relaxed);
                    }
                    m.txid.store(s.txid.0, Ordering::Relaxed);
                    let _ = txid_tx.send(s.txid.0);
                }
                m.checkpoints.store(engine.checkpoints, Ordering::Relaxed);
                m.wal_bytes.store(engine.wal_bytes(), Ordering::Relaxed);
            }
            Err(e) => {
                errors_in_row += 1;
                m.errors.fetch_add(1, Ordering::Relaxed);
                error!(db = %db.display(), "sync failed: {e:#}");
                std::thread::sleep(Duration::from_millis(
                    200 * u64::from(errors_in_row.min(25)),
                ));
            }
        }
        if stopping {
            break;
        }
    }
    drop(watch);
    engine.close();
    // Uploaders drain what is staged, then end.
    let _ = txid_tx.send(u64::MAX);
}

async fn upload_loop(
    mut up: Uploader,
    pace: Option<Duration>,
    retention: Duration,
    mut txid_rx: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
    db_stop: Arc<AtomicBool>,
    m: Arc<DbMetrics>,
) {
    let mut last_upload: Option<Instant> = None;
    let mut last_retention = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        let latest = *txid_rx.borrow_and_update();
        let capture_done = latest == u64::MAX;
        let behind = up.progress.uploaded[0] < latest && !capture_done;
        if behind {
            let mut p = up
                .metrics
                .pending_since
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            p.get_or_insert_with(Instant::now);
        }
        if let Err(e) = up.probe().await {
            warn!(replica = %up.name, "store not reachable yet: {e}");
        }
        match up.upload_pending().await {
            Ok(n) => {
                backoff = Duration::from_millis(200);
                if n > 0 {
                    last_upload = Some(Instant::now());
                }
                // Everything captured when the round began is uploaded.
                let caught_up = if capture_done {
                    up.caught_up().unwrap_or(false)
                } else {
                    up.progress.uploaded[0] >= latest
                };
                if caught_up {
                    *up.metrics
                        .pending_since
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = None;
                }
            }
            Err(UploadError::Conflict { replica, source }) => {
                let msg = format!("another writer owns this replica {replica}: {source}");
                error!(db = %m.db, "{msg}; stopping this database's replication");
                *m.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
                db_stop.store(true, Ordering::Relaxed);
                return;
            }
            Err(UploadError::Other(e)) => {
                up.metrics.errors.fetch_add(1, Ordering::Relaxed);
                warn!(replica = %up.name, "upload failed, will retry: {e:#}");
                if capture_done || *stop.borrow() {
                    // Final round failed: what is staged stays for next start.
                    if capture_done {
                        return;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        }
        if capture_done || db_stop.load(Ordering::Relaxed) {
            return;
        }
        if last_retention.elapsed()
            >= (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
        {
            last_retention = Instant::now();
            if let Err(e) = up.apply_retention(retention).await {
                warn!(replica = %up.name, "retention: {e:#}");
            }
        }
        // Wait for a new file; under steady load, at most one upload round
        // per interval.
        tokio::select! {
            r = txid_rx.changed() => { if r.is_err() { return; } }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
        // Capture already paces L0 files at the shortest interval; a replica
        // with a longer one batches its uploads to that.
        if let (Some(t), Some(pace)) = (last_upload, pace) {
            let since = t.elapsed();
            if since < pace && !*stop.borrow() {
                tokio::time::sleep(pace - since).await;
            }
        }
    }
}
