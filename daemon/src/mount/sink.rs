//! The daemon's side of the primary filesystem: it receives each commit
//! point from `fuse-fs` and captures the transaction of that database,
//! creating the database's capture (and its pipeline) the first time one
//! commits. Callbacks run on FUSE worker threads: nothing here waits on the
//! network (pipelines open on the runtime, and staged files wait for them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tracing::{debug, error, info, warn};

use super::capture::DbCapture;
use super::recover::open_capture;
use crate::pipeline::metrics::{DbMetrics, Metrics};
use crate::pipeline::{Handoff, Pipeline, PipelineSpec, Stops};
use crate::staging::StagingError;
use crate::wal::error::CaptureError;

/// How each database of a mount is replicated.
pub type SpecFor = dyn Fn(&Path) -> PipelineSpec + Send + Sync;

/// One database's capture, shared by the commit points that reach it.
#[derive(Debug)]
struct Db {
    capture: Mutex<Option<DbCapture>>,
    handoff: Handoff,
    /// A capture failed and left commits in the WAL uncaptured: the next
    /// writer must not take the write lock (it could restart the WAL over
    /// them) until a capture succeeds.
    behind: std::sync::atomic::AtomicBool,
}

/// Every database of one mount.
pub struct MountSink {
    data_dir: PathBuf,
    spec_for: Box<SpecFor>,
    stops: Stops,
    metrics: Arc<Metrics>,
    rt: tokio::runtime::Handle,
    snapshot_requests: Arc<AtomicU64>,
    dbs: Mutex<HashMap<PathBuf, Arc<Db>>>,
    pipelines: Mutex<Vec<tokio::task::JoinHandle<Result<(), String>>>>,
}

impl std::fmt::Debug for MountSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountSink")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl MountSink {
    pub fn new(
        data_dir: &Path,
        spec_for: Box<SpecFor>,
        stops: Stops,
        metrics: Arc<Metrics>,
        rt: tokio::runtime::Handle,
        snapshot_requests: Arc<AtomicU64>,
    ) -> Self {
        MountSink {
            data_dir: data_dir.to_path_buf(),
            spec_for,
            stops,
            metrics,
            rt,
            snapshot_requests,
            dbs: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(Vec::new()),
        }
    }

    /// Recovers and opens the capture of every database already in the data
    /// directory (before the mount), and starts their pipelines.
    pub fn recover_all(&self) -> Result<usize, CaptureError> {
        let mut n = 0;
        for db in databases_in(&self.data_dir)? {
            self.db(&db, true)?;
            n += 1;
        }
        Ok(n)
    }

    /// The database at `db` (a backing path), created on first use.
    fn db(&self, db: &Path, at_mount: bool) -> Result<Arc<Db>, CaptureError> {
        let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dbs.get(db) {
            return Ok(d.clone());
        }
        let spec = (self.spec_for)(db);
        let m = Arc::new(DbMetrics {
            db: db.display().to_string(),
            ..DbMetrics::default()
        });
        self.metrics
            .dbs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(m.clone());
        let fresh = !spec.staging.has_history()?;
        let stops = self.stops.child();
        let (handoff, rx) = Pipeline::handoff(&spec.staging, m, stops);
        let capture = open_capture(db, &spec.staging, handoff.clone(), at_mount)?;
        info!(db = %db.display(), txid = %capture.txid(), checksum = %capture.checksum(), "capturing");
        let requests = self.snapshot_requests.clone();
        let h = handoff.clone();
        let task = self.rt.spawn(async move {
            match Pipeline::open(spec, h.clone(), rx, fresh).await {
                Ok(Some(p)) => p.run(requests).await,
                Ok(None) => Ok(()),
                Err(e) => {
                    h.fail(format!("{e:#}"));
                    Err(format!("{e:#}"))
                }
            }
        });
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
        let d = Arc::new(Db {
            capture: Mutex::new(Some(capture)),
            handoff,
            behind: Default::default(),
        });
        dbs.insert(db.to_path_buf(), d.clone());
        Ok(d)
    }

    /// Runs `f` on the capture of `db`; a fatal error stops that database.
    fn with_capture<T>(
        &self,
        db: &Path,
        f: impl FnOnce(&mut DbCapture) -> Result<T, CaptureError>,
    ) -> Result<T, CaptureError> {
        let d = self.db(db, false)?;
        let mut guard = d.capture.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|c| !c.same_file()) {
            if let Some(old) = guard.take() {
                match old.reopen() {
                    Ok(c) => *guard = Some(c),
                    Err(e) => {
                        d.handoff.fail(e.to_string());
                        return Err(e);
                    }
                }
            }
        }
        let Some(cap) = guard.as_mut() else {
            return Err(CaptureError::Database(format!(
                "{}: capture stopped after an earlier failure; see the log",
                db.display()
            )));
        };
        match f(cap) {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_fatal() {
                    d.handoff.fail(e.to_string());
                    *guard = None;
                } else {
                    error!(db = %db.display(), "capture failed: {e}");
                }
                Err(e)
            }
        }
    }

    /// The WAL write lock of `db` was released by its holder.
    pub fn wal_committed(&self, db: &Path, durable: bool) -> Result<(), CaptureError> {
        if no_database_yet(db) {
            return Ok(());
        }
        let r = self.with_capture(db, |c| c.wal_committed(durable).map(|_| ()));
        if let Ok(d) = self.db(db, false) {
            d.behind
                .store(r.is_err(), std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    /// Whether a writer may take the WAL write lock of `db` now: not while
    /// commits it left in the WAL are uncaptured (a retry captures them).
    pub fn may_write(&self, db: &Path) -> bool {
        let Ok(d) = self.db(db, false) else {
            return false;
        };
        if !d.behind.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        self.wal_committed(db, true).is_ok()
    }

    /// `db` is about to be fsynced while its rollback journal exists: the
    /// transaction may be captured now and synced with it (returns true when
    /// the database was synced). A failure here only logs: the commit point
    /// captures afresh, and fails the commit if it cannot.
    pub fn database_syncing(&self, db: &Path, journal: &Path, writes: u64) -> bool {
        if no_database_yet(db) {
            return false;
        }
        self.with_capture(db, |c| c.database_syncing(journal, writes))
            .unwrap_or_else(|e| {
                warn!(db = %db.display(), "capture at the database's fsync failed: {e}; capturing at the commit point");
                false
            })
    }

    /// The rollback journal of `db` is about to be invalidated.
    pub fn journal_committing(
        &self,
        db: &Path,
        journal: &Path,
        durable: bool,
        writes: u64,
    ) -> Result<(), CaptureError> {
        if no_database_yet(db) {
            return Ok(());
        }
        self.with_capture(db, |c| {
            if c.page_size_changed() {
                // LTX files of one database share one page size: refusing
                // the journal's invalidation leaves it hot, and the next
                // connection rolls the transaction back.
                return Err(CaptureError::read(
                    db,
                    std::io::Error::other(
                        "refused: the transaction changes the page size (PRAGMA page_size with VACUUM, or a backup from a database of another page size), which a replicated database cannot do; its journal stays hot and the transaction is rolled back",
                    ),
                ));
            }
            c.journal_committing(journal, durable, writes).map(|_| ())
        })
    }

    /// The invalidation of `db`'s journal captured last was done: its file
    /// may be handed over.
    pub fn journal_invalidated(&self, db: &Path) {
        // Only a database whose capture is open has anything to publish.
        let d = self
            .dbs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(db)
            .cloned();
        if let Some(d) = d {
            if let Some(c) = d.capture.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                c.journal_invalidated();
            }
        }
    }

    /// Makes the deferred files durable and hands them over: every one
    /// (`all`, at unmount), or (the flusher, every interval) those staged
    /// before one `syncfs` that runs without holding up capture.
    pub fn flush_all(&self, all: bool) {
        let dbs: Vec<(PathBuf, Arc<Db>)> = self
            .dbs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (path, d) in dbs {
            // The sync runs without the capture's lock, so commits go on
            // meanwhile; files staged after it wait for the next round.
            let unsynced = {
                let guard = d.capture.lock().unwrap_or_else(|p| p.into_inner());
                guard
                    .as_ref()
                    .and_then(|c| c.unsynced().map(|t| (t, c.staging().clone())))
            };
            let synced = match unsynced {
                Some((txid, staging)) => match staging.sync_deferred_dir() {
                    Ok(()) => Some(txid),
                    Err(e) => {
                        warn!(db = %path.display(), "syncing deferred files: {e}");
                        None
                    }
                },
                None => None,
            };
            let mut guard = d.capture.lock().unwrap_or_else(|p| p.into_inner());
            let staging = guard.as_ref().map(|c| c.staging().clone());
            let mut batch = None;
            if let Some(cap) = guard.as_mut() {
                if let Some(txid) = synced {
                    cap.synced_up_to(txid);
                }
                let r = if all {
                    cap.flush()
                } else {
                    cap.take_synced().map(|b| batch = b)
                };
                if let Err(e) = r {
                    Self::flush_failed(&path, &d, &mut guard, e);
                }
            }
            drop(guard);
            // Commits go on while the batch is moved into place.
            if let Some(Err(e)) = batch.map(|b| b.run()) {
                let mut guard = d.capture.lock().unwrap_or_else(|p| p.into_inner());
                Self::flush_failed(&path, &d, &mut guard, e);
            }
            if let (false, Some(s)) = (all, staging) {
                match s.refill_spares() {
                    // A full disk is said by the captures that fail; the
                    // pool only saves time.
                    Err(e @ StagingError::NoSpace { .. }) => {
                        debug!(db = %path.display(), "making spare files: {e}")
                    }
                    Err(e) => warn!(db = %path.display(), "making spare files: {e}"),
                    Ok(_) => {}
                }
            }
        }
    }

    /// A flush of `db` failed: said, and fatal errors stop its capture.
    fn flush_failed(
        db: &Path,
        d: &Db,
        guard: &mut std::sync::MutexGuard<'_, Option<DbCapture>>,
        e: CaptureError,
    ) {
        warn!(db = %db.display(), "flushing deferred files: {e}");
        if e.is_fatal() {
            d.handoff.fail(e.to_string());
            **guard = None;
        }
    }

    /// Ends capture: flushes, then tells every pipeline capture finished.
    /// Returns the pipeline tasks to await.
    pub fn finish(&self) -> Vec<tokio::task::JoinHandle<Result<(), String>>> {
        self.flush_all(true);
        for d in self.dbs.lock().unwrap_or_else(|p| p.into_inner()).values() {
            d.handoff.finished();
        }
        std::mem::take(&mut *self.pipelines.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Whether `db` holds no database yet: an empty file and no WAL with a valid
/// header. A commit point then carries nothing (the first transaction of a
/// new database rolled back, or wrote nothing), and there is nothing to
/// capture from: SQLite sees an empty database.
fn no_database_yet(db: &Path) -> bool {
    let empty = std::fs::metadata(db).is_ok_and(|m| m.len() == 0);
    empty
        && super::capture::live_wal_header(&crate::wal::source::wal_path(db))
            .is_ok_and(|h| h.is_none())
}

/// SQLite databases directly in `dir`: regular files starting with the
/// SQLite header, other than `-journal`, `-wal` and `-shm` files.
pub fn databases_in(dir: &Path) -> Result<Vec<PathBuf>, CaptureError> {
    let read = |e| CaptureError::read(dir, e);
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(read)? {
        let e = e.map_err(read)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if ["-journal", "-wal", "-shm"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            continue;
        }
        if !e.file_type().map_err(read)?.is_file() {
            continue;
        }
        let mut head = [0u8; 16];
        let is_db = std::fs::File::open(e.path())
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0))
            .is_ok_and(|()| &head == b"SQLite format 3\0");
        if is_db {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}
