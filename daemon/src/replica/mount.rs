//! `sluice replica`: each configured replica is followed ([`Follower`]) and
//! served read-only through a FUSE mount (`fuse_fs::replica`), all in one
//! process. Owns the glue between the two: the served database as a
//! [`ReplicaSource`], the mount's step lock as the follower's [`Gate`],
//! signals (SIGUSR1 status lines, SIGTERM/SIGINT clean unmount) and the
//! metrics listener.
//!
//! Start-up is all or nothing: a replica that cannot start (unknown
//! database, empty replica, unreachable store, full cache disk) stops the
//! ones already mounted and the process exits non-zero with the reason.
//! Once serving, failures are reported (log, `-lag`, metrics, `/healthz`)
//! and the last good state keeps being served.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use fuse_fs::replica::{ExclusiveError, Invalidate as FsInvalidate, StepLock};
use fuse_fs::{mount_replica, MountConfig, Mounted, ReplicaSource};
use s3_backend::retry::{shutdown_channel, ShutdownTrigger};
use s3_backend::ReplicaUrl;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::apply::{Gate, GateError, Invalidate};
use super::follow::{Follower, Options, Spec};
use super::metrics::Metrics;
use super::served::Served;
use super::store::{self, Counters};

/// One replica to mount, as the command line or the config gives it.
#[derive(Debug, Clone)]
pub struct MountSpec {
    /// The database's replica, or (with `db`) the replica holding databases
    /// by name (`sluice mount` writes `<url>/<name>`).
    pub url: ReplicaUrl,
    pub db: Option<String>,
    pub mountpoint: PathBuf,
    pub poll_interval: Duration,
    /// Default: `.<mountpoint name>.sluice-replica` beside the mountpoint.
    pub cache_dir: Option<PathBuf>,
}

impl MountSpec {
    /// The file name served, the URL followed and the cache directory.
    fn resolve(&self) -> Result<Spec> {
        let (name, url) = match &self.db {
            Some(n) => (n.clone(), super::db_url(&self.url, n)),
            None => (super::default_name(&self.url), self.url.clone()),
        };
        let mnt = std::path::absolute(&self.mountpoint)
            .with_context(|| format!("mountpoint {}", self.mountpoint.display()))?;
        let cache = match &self.cache_dir {
            Some(d) => d.clone(),
            None => {
                let (Some(parent), Some(base)) = (mnt.parent(), mnt.file_name()) else {
                    anyhow::bail!(
                        "mountpoint {}: give --cache-dir (no directory beside it for the cache)",
                        mnt.display()
                    );
                };
                parent.join(format!(".{}.sluice-replica", base.to_string_lossy()))
            }
        };
        Ok(Spec {
            name,
            url,
            cache,
            opts: Options {
                poll_interval: self.poll_interval,
                ..Options::default()
            },
        })
    }
}

impl ReplicaSource for Served {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        Served::size(self)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        Served::read_at(self, offset, buf)
    }
    fn pos(&self) -> String {
        self.pos_text()
    }
    fn lag(&self) -> String {
        self.lag_text()
    }
    fn modified(&self) -> SystemTime {
        let ms = self.status().timestamp_ms.max(0) as u64;
        UNIX_EPOCH + Duration::from_millis(ms)
    }
}

/// The mount's step lock keeps SQLite readers out while a step is applied.
#[derive(Debug)]
struct MountGate(StepLock);

impl Gate for MountGate {
    fn exclusive(
        &self,
        wait: Duration,
        write: &mut dyn FnMut() -> std::io::Result<Invalidate>,
    ) -> Result<(), GateError> {
        let mut w = || {
            write().map(|i| match i {
                Invalidate::Ranges(r) => FsInvalidate::Ranges(r),
                Invalidate::All => FsInvalidate::All,
            })
        };
        self.0.exclusive(wait, &mut w).map_err(|e| match e {
            ExclusiveError::Busy(d) => GateError::Busy(d),
            ExclusiveError::Io(e) => GateError::Io(e),
        })
    }
}

/// A replica being served.
struct Running {
    name: String,
    mounted: Mounted,
    task: JoinHandle<Result<()>>,
    /// Ends the store's retries at shutdown.
    _store_stop: ShutdownTrigger,
}

/// Mounts `served` at `mnt` and opens the step lock through it (blocking:
/// the mount's INIT handshake and the open go through the kernel).
fn mount_one(served: Arc<Served>, mnt: &Path) -> Result<(Mounted, StepLock)> {
    let mut cfg = MountConfig::default();
    cfg.fsname = format!("sluice-replica:{}", served.name);
    let (mounted, handle) = mount_replica(vec![served as Arc<dyn ReplicaSource>], mnt, &cfg)
        .with_context(|| format!("cannot mount the replica at {}", mnt.display()))?;
    let lock = handle
        .step_lock(&mounted, 0)
        .context("cannot open the replica's step lock through the mount")?;
    Ok((mounted, lock))
}

/// Starts following `spec` (resume or restore), then mounts it.
async fn start(spec: &MountSpec, metrics: &Metrics, stop: &CancellationToken) -> Result<Running> {
    let follow = spec.resolve()?;
    let what = format!("replica {} at {}", follow.url, spec.mountpoint.display());
    let counters = Arc::new(Counters::default());
    let (trigger, shutdown) = shutdown_channel();
    let store = store::open(&follow.url, counters.clone(), store::policy(), shutdown)
        .await
        .with_context(|| format!("{what}: cannot reach the store"))?;
    let mut follower = Follower::start(follow, counters, store)
        .await
        .with_context(|| match &spec.db {
            Some(n) => format!(
                "{what}: cannot start (is {n:?} a database under {}? check --db / db:)",
                spec.url
            ),
            None => format!("{what}: cannot start"),
        })?;
    let served = follower.served.clone();
    let mnt = spec.mountpoint.clone();
    let (mounted, lock) = tokio::task::spawn_blocking(move || mount_one(served, &mnt)).await??;
    follower.set_gate(Arc::new(MountGate(lock)));
    let _ = follower
        .metrics
        .mountpoint
        .set(mounted.mountpoint().display().to_string());
    metrics.add(follower.metrics.clone());
    info!(
        "{what}: serving {} (txid {})",
        mounted.mountpoint().join(&follower.served.name).display(),
        follower.txid()
    );
    Ok(Running {
        name: follower.served.name.clone(),
        mounted,
        task: tokio::spawn(follower.run(stop.child_token())),
        _store_stop: trigger,
    })
}

/// Waits for the follower to stop (its step lock closes with it), then
/// unmounts; lazily if readers still hold files open.
async fn stop_one(r: Running) -> bool {
    let mut ok = match r.task.await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            error!("replica {}: {e:#}", r.name);
            false
        }
        Err(e) => {
            error!("replica {}: the follower panicked: {e}", r.name);
            false
        }
    };
    let mut mounted = r.mounted;
    let unmounted = tokio::task::spawn_blocking(move || {
        let r = mounted.unmount();
        // A busy mount is detached (lazy unmount) when `mounted` drops.
        drop(mounted);
        r
    })
    .await;
    match unmounted {
        Ok(Ok(())) => info!("replica {}: unmounted", r.name),
        Ok(Err(e)) => warn!("replica {}: {e}; unmounted lazily", r.name),
        Err(e) => {
            error!("replica {}: unmounting panicked: {e}", r.name);
            ok = false;
        }
    }
    ok
}

/// Logs every replica's status line on each SIGUSR1.
fn status_on_usr1(metrics: Arc<Metrics>) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::user_defined1()) {
        Ok(mut usr1) => {
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    for line in metrics.status_lines() {
                        info!("{line}");
                    }
                }
            });
        }
        Err(e) => warn!("cannot handle SIGUSR1 (status lines): {e}"),
    }
}

/// Cancels `stop` on SIGTERM or SIGINT.
async fn stop_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot handle SIGTERM: {e}");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: unmounting"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: unmounting"),
        _ = stop.cancelled() => {}
    }
    stop.cancel();
}

/// Serves every replica of `specs` until SIGTERM/SIGINT.
pub fn run(specs: Vec<MountSpec>, metrics_addr: Option<String>) -> Result<ExitCode> {
    fuse_fs::check_fuse().context("sluice replica needs FUSE")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(specs, metrics_addr))
}

async fn run_async(specs: Vec<MountSpec>, metrics_addr: Option<String>) -> Result<ExitCode> {
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = metrics_addr {
        tokio::spawn(crate::pipeline::metrics::serve(addr, metrics.clone()));
    }
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    status_on_usr1(metrics.clone());
    let mut running = Vec::new();
    let mut failed = None;
    for spec in &specs {
        let started = tokio::select! {
            r = start(spec, &metrics, &stop) => r,
            _ = stop.cancelled() => Err(anyhow::anyhow!("stopped before every replica was mounted")),
        };
        match started {
            Ok(r) => running.push(r),
            Err(e) => {
                failed = Some(e);
                stop.cancel();
                break;
            }
        }
    }
    stop.cancelled().await;
    let mut ok = true;
    for r in running {
        ok &= stop_one(r).await;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if let Err(reasons) = metrics.health() {
        for r in reasons {
            error!("{r}");
        }
        ok = false;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
