//! What the fault harness (`tests/store_faults/`, the kill -9 test in `tests/replicate/`,
//! `scripts/fault-*.sh`) shares:
//! an application that commits numbered rows and remembers how far it got,
//! the gap-free-prefix check of a restored database, `sluice restore` of a
//! replica URL, the size of the WAL, and sizes read from the environment so
//! that CI runs each fault small and the scripts run it at any size.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::{run, s, sluice_bin, stderr};

/// The schema of the numbered-rows application.
pub const NUMBERED: &str = "CREATE TABLE IF NOT EXISTS n(id INTEGER PRIMARY KEY, pad BLOB);";

/// A number from the environment (`name`), or `default` when unset; a bad
/// value is a failure, not a silent default.
pub fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        _ => default,
    }
}

/// An application thread: one transaction per row, rows numbered 1, 2, …,
/// SQLite's default autocheckpoint on its own connection. It stops when
/// asked or at its deadline, whichever comes first.
#[derive(Debug)]
pub struct NumberedWriter {
    stop: Arc<AtomicBool>,
    begun: Arc<AtomicI64>,
    committed: Arc<AtomicI64>,
    thread: Option<std::thread::JoinHandle<i64>>,
}

impl NumberedWriter {
    /// Starts committing a row with `pad_bytes` of random padding every
    /// `pause`, for at most `limit`.
    pub fn start(db: &Path, pad_bytes: usize, pause: Duration, limit: Duration) -> NumberedWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let begun = Arc::new(AtomicI64::new(0));
        let committed = Arc::new(AtomicI64::new(0));
        let thread = {
            let (db, stop) = (db.to_path_buf(), stop.clone());
            let (begun, committed) = (begun.clone(), committed.clone());
            std::thread::spawn(move || {
                let c = Connection::open(&db).expect("open the application database");
                c.busy_timeout(Duration::from_secs(10))
                    .expect("busy timeout");
                c.execute_batch(NUMBERED).expect("schema");
                let deadline = Instant::now() + limit;
                let mut i: i64 = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    i += 1;
                    begun.store(i, Ordering::Release);
                    c.execute(
                        "INSERT INTO n(id, pad) VALUES (?1, randomblob(?2))",
                        rusqlite::params![i, pad_bytes as i64],
                    )
                    .unwrap_or_else(|e| panic!("the application's commit {i} failed: {e}"));
                    committed.store(i, Ordering::Release);
                    std::thread::sleep(pause);
                }
                i
            })
        };
        NumberedWriter {
            stop,
            begun,
            committed,
            thread: Some(thread),
        }
    }

    /// The highest row the application has begun to commit: no replica can
    /// hold a row above it. (`committed` is set only once the commit has
    /// returned, so a row shipped and restored in between can exceed it.)
    pub fn begun(&self) -> i64 {
        self.begun.load(Ordering::Acquire)
    }

    /// The highest row the application has committed so far.
    pub fn committed(&self) -> i64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Stops the application; returns the number of rows it committed.
    pub fn stop(mut self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("the application thread panicked"))
            .unwrap_or(0)
    }
}

impl Drop for NumberedWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The rows of a restored numbered-rows database: panics with `what` unless
/// they are exactly 1..=count (a gap-free prefix) and `integrity_check` is
/// ok. Returns the count.
pub fn gap_free_rows(db: &Path, what: &str) -> i64 {
    let c = Connection::open(db).unwrap_or_else(|e| panic!("{what}: open {}: {e}", db.display()));
    let (count, min, max): (i64, Option<i64>, Option<i64>) = c
        .query_row("SELECT count(*), min(id), max(id) FROM n", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap_or_else(|e| panic!("{what}: query {}: {e}", db.display()));
    assert!(
        count == 0 || (min == Some(1) && max == Some(count)),
        "{what}: not a gap-free prefix: {count} rows, ids {min:?}..={max:?}"
    );
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{what}: integrity_check: {e}"));
    assert_eq!(ok, "ok", "{what}: integrity_check");
    count
}

/// `sluice restore --force -o OUT URL` with the credentials in `env`;
/// returns the time it took, or the command's error output.
pub fn sluice_restore(url: &str, out: &Path, env: &[(&str, &str)]) -> Result<Duration, String> {
    let started = Instant::now();
    let o = run(std::process::Command::new(sluice_bin())
        .args(["restore", "--force", "-o", s(out), url])
        .envs(env.iter().copied()));
    if o.status.success() {
        Ok(started.elapsed())
    } else {
        Err(stderr(&o))
    }
}

/// The size of the database's WAL in bytes (0 without one).
pub fn wal_bytes(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(PathBuf::from(wal)).map_or(0, |m| m.len())
}

/// A server started by one of the project's scripts (`garage.sh`,
/// `garage-cluster.sh`) in its own temporary directory, stopped on drop.
#[derive(Debug)]
pub struct ScriptServer {
    script: PathBuf,
    dir: tempfile::TempDir,
    /// What the script's `env.sh` describes.
    pub server: crate::S3Server,
}

impl ScriptServer {
    /// `SCRIPT start DIR` (`script` is a file name in `integration/scripts`),
    /// or `None` (the caller's test then returns early) when the run is not
    /// one with Garage (neither `SLUICE_REQUIRE_GARAGE` nor a Garage in
    /// `SLUICE_S3_ENDPOINT`, like the other S3 tests), or the Garage binary
    /// is missing and the test command did not require Garage.
    pub fn start(script: &str) -> Option<ScriptServer> {
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if !set("SLUICE_REQUIRE_GARAGE") && !set("SLUICE_S3_ENDPOINT") {
            eprintln!("skipped: not a run with Garage (run integration/scripts/test-all.sh)");
            return None;
        }
        let script = crate::project_root()
            .join("integration/scripts")
            .join(script);
        let have_garage = run(std::process::Command::new(
            crate::project_root().join("integration/scripts/garage.sh"),
        )
        .arg("install")
        .env("GARAGE_NO_BUILD", "1"))
        .status
        .success();
        if !have_garage {
            assert!(
                std::env::var_os("SLUICE_REQUIRE_GARAGE").is_none(),
                "SLUICE_REQUIRE_GARAGE is set but garage 2.5 is not installed: run integration/scripts/garage.sh install"
            );
            eprintln!("skipped: no garage binary (run integration/scripts/garage.sh install)");
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let o = run(std::process::Command::new(&script)
            .arg("start")
            .arg(dir.path()));
        assert!(
            o.status.success(),
            "{} start: {}",
            script.display(),
            stderr(&o)
        );
        let server = crate::s3_server_from_env_file(&dir.path().join("env.sh"));
        Some(ScriptServer {
            script,
            dir,
            server,
        })
    }

    /// Runs `SCRIPT ARGS... DIR`; panics with its output if it fails.
    pub fn command(&self, args: &[&str]) {
        let o = run(std::process::Command::new(&self.script)
            .args(args)
            .arg(self.dir.path()));
        assert!(
            o.status.success(),
            "{} {args:?}: {}",
            self.script.display(),
            stderr(&o)
        );
    }

    /// The S3 endpoints of a cluster (`SLUICE_CLUSTER_ENDPOINTS`), node 1 first.
    pub fn cluster_endpoints(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("env.sh")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("export SLUICE_CLUSTER_ENDPOINTS="))
            .map(|v| v.trim_matches('"').split(' ').map(str::to_string).collect())
            .unwrap_or_default()
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}
