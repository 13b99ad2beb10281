//! `sluice replicate`: for every configured database, a shipping pipeline
//! fed by the WAL watcher.
//!
//! A database that is missing, not yet in WAL mode, or deleted or replaced
//! while replicated is waited for (see `wal`); the others replicate
//! meanwhile, and readiness does not wait for it. A database that fails
//! (another writer owns its replica, a failed fsync) stops; the others keep
//! running, `/healthz` turns 503, and the exit status is non-zero. SIGTERM/SIGINT: a final sync, a final
//! upload round within the shutdown timeout, then exit.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Config, DbConfig};
use crate::pipeline::metrics::{DbMetrics, Metrics};
use crate::pipeline::{Pipeline, PipelineSpec, ReplicaSpec, Stops};
use crate::scheduled_drill;
use crate::staging::StagingDir;
use crate::wal::{self, WalOptions};

/// What the daemon tells systemd.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Notice {
    Ready,
    Watchdog,
    Stopping,
}

/// Sends notices to systemd from a thread of its own: a datagram to a
/// notify socket nobody drains blocks, and the executor must never block.
/// A notice that finds the queue full is dropped (a later one follows).
pub(crate) fn notifier() -> std::sync::mpsc::SyncSender<Notice> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Notice>(4);
    let spawned = std::thread::Builder::new()
        .name("sluice-notify".into())
        .spawn(move || {
            for n in rx {
                let _ = match n {
                    Notice::Ready => sd_notify::notify(&[
                        sd_notify::NotifyState::Ready,
                        sd_notify::NotifyState::Status("replicating"),
                    ]),
                    Notice::Watchdog => sd_notify::notify(&[sd_notify::NotifyState::Watchdog]),
                    Notice::Stopping => sd_notify::notify(&[sd_notify::NotifyState::Stopping]),
                };
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the systemd notifier: {e}");
    }
    tx
}

pub fn run(cfg: Config) -> Result<ExitCode> {
    run_until(cfg, None)
}

/// Runs until SIGTERM/SIGINT, or until `stop` turns true (for in-process use).
pub fn run_until(cfg: Config, stop: Option<watch::Receiver<bool>>) -> Result<ExitCode> {
    if cfg.dbs.is_empty() {
        anyhow::bail!("dbs: no databases configured for `sluice replicate` (the config's mounts are served by `sluice mount`)");
    }
    // One thread: uploads wait on the network, capture and maintenance have
    // their own threads, blocking file work goes to the blocking pool, and a
    // single runtime thread saves the cross-thread wake-ups of a
    // work-stealing pool (most of the daemon's idle CPU).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(cfg, stop))
}

/// The pipeline of a configured database.
pub fn pipeline_spec(db: &DbConfig) -> Result<PipelineSpec> {
    let mut replicas = Vec::new();
    for (i, r) in db.replicas.iter().enumerate() {
        replicas.push(ReplicaSpec {
            name: r.name.clone().unwrap_or_else(|| format!("replica{i}")),
            url: r.resolve()?,
            litestream_compatible: r.litestream_compatible,
            sync_interval: r.sync_interval.map_or(db.sync_interval.0, |d| d.0),
            batch: false,
        });
    }
    Ok(PipelineSpec {
        staging: StagingDir::for_db(&db.path, db.staging_dir.as_deref()),
        replicas,
        levels: db.levels.iter().map(|d| d.0).collect(),
        snapshot_interval: db.snapshot_interval.0,
        retention: db.retention.0,
    })
}

async fn run_async(cfg: Config, external_stop: Option<watch::Receiver<bool>>) -> Result<ExitCode> {
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = cfg.metrics_addr.clone() {
        tokio::spawn(crate::pipeline::metrics::serve(addr, metrics.clone()));
    }
    let stops = Stops::default();
    let shutdown_timeout = cfg
        .dbs
        .iter()
        .map(|d| d.shutdown_timeout.0)
        .max()
        .unwrap_or(Duration::from_secs(10));
    let snapshot_requests = snapshot_on_usr1();
    let mut tasks = Vec::new();
    let (ready_tx, ready_rx) = tokio::sync::mpsc::channel::<()>(cfg.dbs.len().max(1));
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
            stops.child(),
            ready_tx.clone(),
            snapshot_requests.clone(),
        )));
    }
    drop(ready_tx);
    let notices = notifier();
    tokio::spawn(notify_ready(ready_rx, tasks.len(), notices.clone()));
    if let Some(period) = sd_notify::watchdog_enabled() {
        let notices = notices.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period / 2).await;
                let _ = notices.try_send(Notice::Watchdog);
            }
        });
    }
    tokio::spawn(stop_on_signal(
        stops,
        external_stop,
        shutdown_timeout,
        notices,
    ));
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

/// SIGUSR1 asks every database for a snapshot now (a counter each
/// maintenance thread compares with the last request it served).
pub(crate) fn snapshot_on_usr1() -> Arc<AtomicU64> {
    let requests = Arc::new(AtomicU64::new(0));
    let req = requests.clone();
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
    requests
}

/// `READY=1` once every database has opened.
pub(crate) async fn notify_ready(
    mut rx: tokio::sync::mpsc::Receiver<()>,
    n: usize,
    notices: std::sync::mpsc::SyncSender<Notice>,
) {
    let mut ready = 0;
    while rx.recv().await.is_some() {
        ready += 1;
        if ready == n {
            let _ = notices.try_send(Notice::Ready);
        }
    }
}

/// SIGTERM, SIGINT or the external stop drains every database; the
/// shutdown timeout later halts what is still running.
pub(crate) async fn stop_on_signal(
    stops: Stops,
    external: Option<watch::Receiver<bool>>,
    timeout: Duration,
    notices: std::sync::mpsc::SyncSender<Notice>,
) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot handle SIGTERM: {e}");
            return;
        }
    };
    let external = async move {
        match external {
            Some(mut rx) => {
                if rx.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
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
    let _ = notices.try_send(Notice::Stopping);
    stops.drain.cancel();
    tokio::time::sleep(timeout).await;
    warn!("shutdown timeout: cancelling uploads still in flight");
    stops.halt.cancel();
}

/// One database: its pipeline, fed by the WAL watcher.
async fn run_db(
    db: DbConfig,
    m: Arc<DbMetrics>,
    stops: Stops,
    ready: tokio::sync::mpsc::Sender<()>,
    snapshot_requests: Arc<AtomicU64>,
) -> Result<()> {
    let spec = pipeline_spec(&db)?;
    let opts = WalOptions {
        db: db.path.clone(),
        checkpoint_pages: db.checkpoint_pages,
        interval: spec.capture_interval(),
    };
    let drill_spec = db.drill_interval.map(|every| (every.0, spec.clone()));
    let drill_stops = stops.clone();
    let fresh = !spec.staging.has_history()?;
    let (handoff, rx) = Pipeline::handoff(&spec.staging, m.clone(), stops);
    let pipeline = match Pipeline::open(spec, handoff.clone(), rx, fresh).await {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(()),
        Err(e) => {
            m.set_failed(format!("{e:#}"));
            return Err(e);
        }
    };
    let mut pipeline = pipeline;
    let drills = match drill_spec {
        Some((every, spec)) => Some(scheduled_drill::spawn(
            &db.path,
            &spec,
            every,
            m.clone(),
            drill_stops,
        )?),
        None => None,
    };
    let capture = wal::spawn(opts, handoff)?;
    if pipeline.wait_opened().await {
        let _ = ready.send(()).await;
    }
    let result = pipeline.run(snapshot_requests).await;
    let _ = tokio::task::spawn_blocking(move || {
        let _ = capture.join();
        drills.map(JoinHandle::join)
    })
    .await;
    result.map_err(|r| anyhow::anyhow!("{}: replication stopped: {r}", db.path.display()))
}
