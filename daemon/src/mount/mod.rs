//! `sluice mount`: a FUSE primary over a data directory; every SQLite
//! transaction of every database in it becomes one L0 file, staged before
//! the commit completes and shipped through the same pipeline as
//! `sluice replicate`.
//!
//! Start: every database already in the data directory is recovered (hot
//! journals rolled back, commits left in a WAL captured, the position
//! verified) before the filesystem is mounted; databases created later are
//! picked up at their first commit. SIGTERM/SIGINT: unmount (lazily if files
//! are still open), make the deferred files durable, a final upload round,
//! exit. A mount left by a killed daemon is cleared at the next start.

pub mod capture;
pub mod recover;
pub mod sink;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fuse_fs::primary::{PrimaryHooks, TxSink};
use s3_backend::ReplicaUrl;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, MountConfig, ReplicaConfig};
use crate::pipeline::metrics::Metrics;
use crate::pipeline::{PipelineSpec, ReplicaSpec, Stops};
use crate::staging::{self, StagingDir};
use sink::MountSink;

/// `url` with `name` appended to its path (a directory of a `file://`
/// replica, a key prefix of an S3 one).
fn child_url(url: ReplicaUrl, name: &str) -> ReplicaUrl {
    match url {
        ReplicaUrl::File { root } => ReplicaUrl::File {
            root: root.join(name),
        },
        ReplicaUrl::S3 { config, prefix } => ReplicaUrl::S3 {
            config,
            prefix: if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            },
        },
    }
}

fn replica_specs(
    m: &MountConfig,
    rs: &[ReplicaConfig],
    name: Option<&str>,
) -> Result<Vec<ReplicaSpec>> {
    let mut out = Vec::new();
    for (i, r) in rs.iter().enumerate() {
        let url = r.resolve()?;
        out.push(ReplicaSpec {
            name: r.name.clone().unwrap_or_else(|| format!("replica{i}")),
            url: match name {
                Some(n) => child_url(url, n),
                None => url,
            },
            litestream_compatible: r.litestream_compatible,
            sync_interval: r.sync_interval.map_or(m.sync_interval.0, |d| d.0),
            batch: !r.litestream_compatible,
        });
    }
    Ok(out)
}

/// The staging root of a mount: `staging-dir`, or `<data-dir>.sluice`.
fn staging_root(m: &MountConfig) -> PathBuf {
    m.staging_dir.clone().unwrap_or_else(|| {
        let mut s = m.data_dir.as_os_str().to_owned();
        s.push(".sluice");
        PathBuf::from(s)
    })
}

/// The staging directory of the database `name`, its spare pool drawing
/// from the mount's reserve (see [`staging::refill_reserve`]).
fn staging_dir(m: &MountConfig, name: &str) -> StagingDir {
    let root = staging_root(m);
    StagingDir::new(root.join(name)).with_reserve(root.join(staging::RESERVE_DIR))
}

/// The name of the database at `db` (a backing path): its path relative to
/// the data directory, so that databases of the same file name in different
/// subdirectories get their own staging and replica (`a/app.db`, `b/app.db`);
/// for a database directly in the data directory, its file name.
fn db_name(m: &MountConfig, db: &Path) -> Result<String> {
    let rel = db
        .strip_prefix(&m.data_dir)
        .ok()
        .map(Path::to_path_buf)
        .or_else(|| {
            let canon = std::fs::canonicalize(&m.data_dir).ok()?;
            db.strip_prefix(canon).ok().map(Path::to_path_buf)
        })
        .filter(|r| !r.as_os_str().is_empty());
    let name = match &rel {
        Some(r) => r.to_str(),
        None => db.file_name().and_then(|n| n.to_str()),
    };
    let name = name.context("a database without a UTF-8 file name")?;
    if name == staging::RESERVE_DIR {
        anyhow::bail!(
            "a database named {name} would share its staging directory with the mount's spare files; rename it"
        );
    }
    Ok(name.to_string())
}

/// How the database at `db` (in the mount's data directory) is replicated.
pub fn spec_for(m: &MountConfig, db: &Path) -> Result<PipelineSpec> {
    let name = db_name(m, db)?;
    let name = name.as_str();
    let replicas = match m.databases.get(name) {
        Some(d) => replica_specs(m, &d.replicas, None)?,
        None => replica_specs(m, &m.replicas, Some(name))?,
    };
    Ok(PipelineSpec {
        staging: staging_dir(m, name),
        replicas,
        levels: m.levels.iter().map(|d| d.0).collect(),
        snapshot_interval: m.snapshot_interval.0,
        retention: m.retention.0,
    })
}

/// The sink as the filesystem sees it.
#[derive(Debug, Clone)]
struct Sink(Arc<MountSink>);

impl TxSink for Sink {
    fn wal_committed(&self, db: &Path, durable: bool) -> Result<(), String> {
        self.0.wal_committed(db, durable).map_err(|e| e.to_string())
    }

    fn may_write(&self, db: &Path) -> bool {
        self.0.may_write(db)
    }

    fn journal_committing(
        &self,
        db: &Path,
        journal: &Path,
        durable: bool,
        writes: u64,
    ) -> Result<(), String> {
        self.0
            .journal_committing(db, journal, durable, writes)
            .map_err(|e| e.to_string())
    }

    fn journal_invalidated(&self, db: &Path) {
        self.0.journal_invalidated(db)
    }

    fn database_syncing(&self, db: &Path, journal: &Path, writes: u64) -> Result<bool, String> {
        Ok(self.0.database_syncing(db, journal, writes))
    }

    fn refused(&self, db: &Path, why: &str) {
        error!(db = %db.display(), "refused: {why}");
    }
}

pub fn run(cfg: Config) -> Result<ExitCode> {
    if cfg.mounts.is_empty() {
        anyhow::bail!(
            "mounts: none configured (`sluice mount --config` serves the config's mounts)"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(cfg))
}

/// One mounted data directory.
struct Served {
    sink: Arc<MountSink>,
    mounted: fuse_fs::Mounted,
    flusher: std::thread::JoinHandle<()>,
}

async fn run_async(cfg: Config) -> Result<ExitCode> {
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = cfg.metrics_addr.clone() {
        tokio::spawn(crate::pipeline::metrics::serve(addr, metrics.clone()));
    }
    let stops = Stops::default();
    let requests = crate::replicate::snapshot_on_usr1();
    let notices = crate::replicate::notifier();
    let timeout = cfg
        .mounts
        .iter()
        .map(|m| m.shutdown_timeout.0)
        .max()
        .unwrap_or(Duration::from_secs(10));
    // Listening before the first mount: a SIGTERM while a mount starts
    // (its reserve can take seconds to fill) still unmounts it cleanly.
    let drain = stops.drain.clone();
    tokio::spawn(crate::replicate::stop_on_signal(
        stops.clone(),
        None,
        timeout,
        notices.clone(),
    ));
    let mut served = Vec::new();
    for m in cfg.mounts {
        if drain.is_cancelled() {
            break;
        }
        let m = Arc::new(m);
        let spec = {
            let m = m.clone();
            Box::new(move |db: &Path| {
                spec_for(&m, db).unwrap_or_else(|e| {
                    warn!(db = %db.display(), "{e:#}");
                    PipelineSpec {
                        staging: staging_dir(&m, "unnamed"),
                        replicas: Vec::new(),
                        levels: Vec::new(),
                        snapshot_interval: m.snapshot_interval.0,
                        retention: m.retention.0,
                    }
                })
            })
        };
        let sink = Arc::new(MountSink::new(
            &m.data_dir,
            spec,
            stops.child(),
            metrics.clone(),
            tokio::runtime::Handle::current(),
            requests.clone(),
        ));
        served.push(serve(&m, sink, &drain).await?);
    }
    if !drain.is_cancelled() {
        let _ = notices.try_send(crate::replicate::Notice::Ready);
    }
    if let Some(period) = sd_notify::watchdog_enabled() {
        let notices = notices.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period / 2).await;
                let _ = notices.try_send(crate::replicate::Notice::Watchdog);
            }
        });
    }
    drain.cancelled().await;
    let mut failed = false;
    for s in served {
        failed |= !finish(s).await;
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

/// Recovers the data directory's databases, mounts, and starts the flusher.
async fn serve(m: &MountConfig, sink: Arc<MountSink>, stop: &CancellationToken) -> Result<Served> {
    fuse_fs::check_fuse()?;
    let recovered = {
        let sink = sink.clone();
        tokio::task::spawn_blocking(move || sink.recover_all()).await??
    };
    info!(data_dir = %m.data_dir.display(), databases = recovered, "recovered");
    let hooks = PrimaryHooks::new(Sink(sink.clone()));
    let slot = hooks.fs_slot();
    let (mounted, fs) = fuse_fs::mount_passthrough(
        &m.data_dir,
        &m.mountpoint,
        fuse_fs::PassthroughOptions::default(),
        &fuse_fs::MountConfig::default(),
        hooks,
    )?;
    let _ = slot.set(fs);
    // After the mount, so that a bad mountpoint is said at once; before
    // the mount is said ready (the log line, systemd's READY=1).
    let reserve = staging_root(m).join(staging::RESERVE_DIR);
    fill_reserve(&reserve, stop).await;
    info!(data_dir = %m.data_dir.display(), mountpoint = %mounted.mountpoint().display(), "mounted");
    let flusher = {
        let (sink, stop) = (sink.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sluice-flush".into())
            .spawn(move || {
                // Deferred files (transactions SQLite did not sync) become
                // durable and ship within this.
                let (mut taken, mut idle) = (staging::spares_taken(), 0);
                while !stop.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(50));
                    sink.flush_all(false);
                    // The reserve is topped up once the mount is idle: under
                    // load its files come back from the local clean-up (see
                    // `staging::IDLE_ROUNDS`), and files made meanwhile
                    // would only take CPU from the commits.
                    let now = staging::spares_taken();
                    idle = if now == taken { idle + 1 } else { 0 };
                    taken = now;
                    if idle < staging::IDLE_ROUNDS {
                        continue;
                    }
                    if let Err(e) = staging::refill_reserve(
                        &reserve,
                        SPARES_PER_ROUND,
                        staging::SPARE_MAKING_TIME,
                    ) {
                        debug!(dir = %reserve.display(), "making spare files: {e}");
                    }
                }
            })?
    };
    Ok(Served {
        sink,
        mounted,
        flusher,
    })
}

/// The most time a mount's start spends filling its reserve: about 8,000
/// files at the worst cost seen (see [`staging::refill_reserve`]).
const RESERVE_FILL_TIME: Duration = Duration::from_secs(8);

/// Spare files a mount's start makes between two looks for a stop.
const RESERVE_FILL_STEP: usize = 512;

/// Spare files the flusher makes for the reserve in one round.
const SPARES_PER_ROUND: usize = 32;

/// Fills the mount's reserve of spare files before the mount serves (see
/// [`staging::refill_reserve`]); a failure only costs speed, so it is said
/// and the mount goes on.
async fn fill_reserve(dir: &Path, stop: &CancellationToken) {
    let started = std::time::Instant::now();
    let mut made = 0;
    // In steps, so that a stop need not wait for the whole fill.
    while !stop.is_cancelled() {
        let Some(left) = RESERVE_FILL_TIME.checked_sub(started.elapsed()) else {
            break;
        };
        let d = dir.to_path_buf();
        let step = tokio::task::spawn_blocking(move || {
            staging::refill_reserve(&d, RESERVE_FILL_STEP, left)
        })
        .await;
        match step {
            Ok(Ok(n)) => {
                made += n;
                if n < RESERVE_FILL_STEP {
                    break;
                }
            }
            Ok(Err(e)) => {
                warn!(dir = %dir.display(), "making spare files: {e}; new databases' first commits will be slower");
                break;
            }
            Err(e) => {
                warn!(dir = %dir.display(), "making spare files: {e}");
                break;
            }
        }
    }
    if made > 0 {
        info!(dir = %dir.display(), files = made, took_ms = started.elapsed().as_millis() as u64, "made spare files for new databases' first commits");
    }
}

/// Unmounts (lazily if busy), makes everything durable, drains uploads.
/// False if something failed.
async fn finish(mut s: Served) -> bool {
    let mut ok = true;
    if let Err(e) = s.mounted.unmount() {
        warn!("{e}; unmounting lazily (the mount goes once its files are closed)");
        if let Err(e) = fuse_fs::unmount_path(s.mounted.mountpoint(), true) {
            error!("{e}");
            ok = false;
        }
    }
    let _ = tokio::task::spawn_blocking(move || s.flusher.join()).await;
    let sink = s.sink.clone();
    let tasks = tokio::task::spawn_blocking(move || sink.finish())
        .await
        .unwrap_or_default();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(r)) => {
                error!("{r}");
                ok = false;
            }
            Err(e) => {
                error!("pipeline task: {e}");
                ok = false;
            }
        }
    }
    ok
}
