//! The WAL watcher: the default capture source. One thread per database
//! opens the [`engine::Engine`], then syncs when the [`schedule::Scheduler`]
//! says so, and hands each L0 file to the shipping pipeline
//! ([`crate::pipeline::Handoff`]). It knows nothing of uploads.
//!
//! A database that is missing, still being created or not yet in WAL mode
//! is waited for (reported through [`Handoff::waiting`], checked every
//! interval); one deleted or replaced while captured ends its session, and
//! the path is waited for again: the next file continues the history only
//! if its state is exactly the replicated one, otherwise it starts with a
//! full-page L0 file (see [`engine::Engine::open_with`]).
//!
//! Errors: a fatal one ([`error::CaptureError::is_fatal`]: a failed fsync,
//! EIO, a file that is not a SQLite database) stops this database; any
//! other is retried with a growing pause and counted in the metrics.

pub mod checkpoint;
pub mod engine;
pub mod error;
pub mod pending;
pub mod pin;
pub mod position;
pub mod recover;
pub mod schedule;
pub mod shm;
pub mod source;
pub mod sync;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tracing::{debug, error, info, warn};

use crate::pipeline::{Handoff, StagedL0};
use engine::{Engine, Synced};
use error::CaptureError;
use schedule::{Scheduler, Wait};
use source::wal_path;

/// How the WAL watcher runs for one database.
#[derive(Debug, Clone)]
pub struct WalOptions {
    pub db: PathBuf,
    /// Sluice checkpoints once the WAL holds this many pages.
    pub checkpoint_pages: u32,
    /// L0 files are cut at most once an interval under steady load.
    pub interval: Duration,
}

/// Starts capturing on a thread of its own. It reports through `handoff`:
/// [`Handoff::opened`] (or [`Handoff::fail`]), each staged file, and
/// [`Handoff::finished`] when it ends.
pub fn spawn(opts: WalOptions, handoff: Handoff) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sluice-capture".into())
        .spawn(move || capture(opts, handoff))
}

/// One inotify watch, moved between the WAL and its directory.
struct WalWatch {
    watcher: Option<notify::RecommendedWatcher>,
    current: Option<PathBuf>,
    events: mpsc::Receiver<()>,
}

impl WalWatch {
    fn new(wal: &Path) -> Self {
        let (tx, events) = mpsc::channel();
        let watched = wal.to_path_buf();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                // Only writes matter. Opens and closes (our own reads of the
                // WAL among them) would wake capture in a loop.
                if matches!(ev.kind, notify::EventKind::Access(_)) {
                    return;
                }
                if ev.paths.iter().any(|p| p == &watched) {
                    let _ = tx.send(());
                }
            }
        })
        .map_err(|e| warn!("file-system events unavailable ({e}); polling the WAL instead"))
        .ok();
        WalWatch {
            watcher,
            current: None,
            events,
        }
    }

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

/// The capture thread's state for one database.
struct DbContext {
    engine: Engine,
    handoff: Handoff,
    sched: Scheduler,
    watch: WalWatch,
    wal: PathBuf,
    errors_in_row: u32,
}

/// How a capture session of one database file ended.
enum Ended {
    /// A stop (drain or halt), or a fatal error already reported.
    Stopped,
    /// The file was deleted or replaced: wait for the path again.
    Gone,
}

/// Captures sessions until stopped: each opens the file at the database's
/// path (waiting while there is none), and runs until a stop or until that
/// file is deleted or replaced. A later session never resumes the old
/// file's WAL position (see [`Engine::open_with`]).
fn capture(opts: WalOptions, handoff: Handoff) {
    let mut replaced = false;
    while let Some((engine, first)) = open_when_ready(&opts, &handoff, replaced) {
        if let Some(s) = &first {
            handoff.staged(&staged(s));
        }
        handoff.opened(engine.txid());
        info!(db = %opts.db.display(), txid = %engine.txid(), checksum = %engine.checksum(), "capturing");
        let wal = wal_path(&opts.db);
        let cx = DbContext {
            engine,
            watch: WalWatch::new(&wal),
            wal,
            handoff: handoff.clone(),
            sched: Scheduler::new(opts.interval, Instant::now()),
            errors_in_row: 0,
        };
        match cx.run() {
            Ended::Stopped => break,
            Ended::Gone => replaced = true,
        }
    }
    handoff.finished();
}

/// Opens the engine once the database is there. While it is missing, empty
/// or not in WAL mode it is waited for: reported once (and on each change
/// of reason), checked every interval. `None` on a stop or a fatal error
/// (already reported).
fn open_when_ready(
    opts: &WalOptions,
    handoff: &Handoff,
    replaced: bool,
) -> Option<(Engine, Option<Synced>)> {
    let every = opts
        .interval
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        if handoff.stops().stopping() {
            return None;
        }
        let (db, staging, pages) = (&opts.db, handoff.staging(), opts.checkpoint_pages);
        let opened = if replaced {
            Engine::open_with(db, staging, pages, true)
        } else {
            Engine::open(db, staging, pages)
        };
        match opened {
            Ok(x) => return Some(x),
            Err(CaptureError::NotReady(reason)) => handoff.waiting(&reason),
            Err(e) => {
                handoff.fail(e.to_string());
                return None;
            }
        }
        let until = Instant::now() + every;
        while Instant::now() < until && !handoff.stops().stopping() {
            std::thread::sleep(Duration::from_millis(50).min(every));
        }
    }
}

fn staged(s: &Synced) -> StagedL0 {
    StagedL0 {
        txid: s.txid,
        post_apply: s.post_apply,
        path: s.path.clone(),
        full: s.full,
    }
}

impl DbContext {
    /// Syncs until a stop, a fatal error, or the file is gone; then closes
    /// the engine (its position made durable).
    fn run(mut self) -> Ended {
        let mut ended = Ended::Stopped;
        loop {
            if self.handoff.stops().halt.is_cancelled() {
                break;
            }
            let stopping = self.handoff.stops().drain.is_cancelled();
            let repin = !stopping && self.wait();
            match self.step(stopping, repin) {
                Ok(()) => {}
                Err(CaptureError::Gone(reason)) => {
                    self.handoff.waiting(&format!(
                        "{reason}; waiting for a database at this path (a new file that does not continue the replicated state starts with a full-page file)"
                    ));
                    ended = Ended::Gone;
                    break;
                }
                Err(e) if e.is_fatal() => {
                    self.handoff.fail(e.to_string());
                    break;
                }
                Err(e) => self.transient(&e),
            }
            if stopping {
                break;
            }
        }
        self.engine.close();
        ended
    }

    /// Waits until the next sync is due. True if the pin must move first
    /// (it sits on read mark 0 and the application has written).
    fn wait(&mut self) -> bool {
        let load = self.sched.load(Instant::now());
        if self.engine.zero_pinned() && load.heavy {
            // Just after a full checkpoint under a heavy load: our pin is on
            // read mark 0, which blocks the application's checkpoints; move
            // it as soon as the application has written a little.
            let until = Instant::now() + Duration::from_millis(50);
            while Instant::now() < until && !self.engine.pin_blocks_checkpoints() {
                std::thread::sleep(Duration::from_millis(1));
            }
            if self.engine.pin_blocks_checkpoints() {
                return true;
            }
        }
        let repin = match self
            .sched
            .wait(Instant::now(), load, self.engine.zero_pinned())
        {
            Wait::Timer { until, step, flush } => self.wait_timer(until, step, flush),
            Wait::Event { poll } => {
                self.wait_event(poll);
                false
            }
        };
        while self.watch.events.try_recv().is_ok() {}
        repin
    }

    /// Steady load: file-system events are of no use (each write would wake
    /// the watcher); sleep to the interval's end. A heavy load grows the WAL
    /// fast: keep its dirty pages flowing to disk from this thread.
    fn wait_timer(&mut self, until: Instant, step: Duration, flush: bool) -> bool {
        self.watch.set(None);
        while Instant::now() < until && !self.handoff.stops().stopping() {
            std::thread::sleep(until.saturating_duration_since(Instant::now()).min(step));
            if flush {
                self.engine.flush_wal(0);
            }
            if self.engine.pin_blocks_checkpoints() {
                return true;
            }
        }
        false
    }

    /// Light load: wait for a write to the WAL itself (its directory until
    /// it exists), then debounce a burst of writes from one commit.
    fn wait_event(&mut self, poll: Duration) {
        let dir = self.wal.parent().unwrap_or(Path::new("/")).to_path_buf();
        let target = if self.wal.exists() {
            self.wal.clone()
        } else {
            dir
        };
        self.watch.set(Some(target));
        if self.watch.events.recv_timeout(poll).is_ok() {
            std::thread::sleep(self.sched.debounce(Instant::now()));
        }
    }

    /// One sync (or pin move), with the checkpoint when due.
    fn step(&mut self, stopping: bool, repin: bool) -> Result<(), CaptureError> {
        self.engine.check_identity()?;
        let synced = if repin && !stopping {
            self.engine.repin().map(|()| (None, None))
        } else {
            self.engine.sync_and_checkpoint(stopping)
        };
        let (a, b) = synced?;
        self.errors_in_row = 0;
        for s in [a, b].into_iter().flatten() {
            debug!(txid = %s.txid, pages = s.pages, bytes = s.bytes, transactions = s.transactions, file = %s.path.display(), "synced");
            self.sched
                .record(Instant::now(), s.transactions, s.wal_bytes);
            self.handoff.staged(&staged(&s));
        }
        let m = self.handoff.metrics();
        m.checkpoints
            .store(self.engine.checkpoints, Ordering::Relaxed);
        m.wal_bytes
            .store(self.engine.wal_bytes(), Ordering::Relaxed);
        Ok(())
    }

    /// A retryable failure (a full disk, a busy database): report it and
    /// pause, longer each time in a row (up to 5 s).
    fn transient(&mut self, e: &CaptureError) {
        self.errors_in_row += 1;
        self.handoff
            .metrics()
            .errors
            .fetch_add(1, Ordering::Relaxed);
        error!(db = %self.engine.db().display(), "sync failed: {e}");
        let pause = Duration::from_millis(200 * u64::from(self.errors_in_row.min(25)));
        let until = Instant::now() + pause;
        while Instant::now() < until && !self.handoff.stops().stopping() {
            std::thread::sleep(Duration::from_millis(50).min(pause));
        }
    }
}
