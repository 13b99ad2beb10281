//! Replication benchmark: the same workloads with `sluice replicate` and with
//! Litestream 0.5.17, against the same Garage S3 server, in one run; prints
//! both figures, their ratio (Sluice / Litestream) and whether issue 4's
//! targets are met. A program, not a test: it asserts nothing.
//!
//! Run it with `integration/scripts/bench-replicate.sh`, which builds the
//! release binaries, starts Garage on loopback and calls this program.
//!
//! Environment (from `garage.sh start`): `SLUICE_S3_ENDPOINT`,
//! `SLUICE_S3_REGION`, `SLUICE_S3_BUCKET`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`. `SLUICE_BIN` (default: `sluice` beside this
//! program) and `SLUICE_LITESTREAM` (default: `.tools/litestream-venv/bin/litestream`).
//!
//! Options: `--quick` (a short smoke run with small sizes), `--phases
//! sparse,steady,throughput,python,snapshot` (a subset), `--work-dir DIR` (default: a
//! temporary directory), `--logs DIR` (keep every sidecar log there),
//! `--sluice-log-level LEVEL` (default info; `info,sluice=debug` logs every
//! sync), `--snapshot-mib N` (default 1024), `--keep-objects`.
//!
//! How each figure is measured:
//! - lag: the app commits one small row per transaction; right after each
//!   commit it reads the WAL index header (`-shm`: `mxFrame` and the WAL
//!   salts), which gives the WAL offset where that commit ends. A poller
//!   lists the replica's level-0 directory every 15 ms and records when each
//!   object first appears. Afterwards each object's LTX header is read (WAL
//!   offset, size and salts, written by both sidecars), and a commit is
//!   durable when the first object whose WAL range holds the commit's end
//!   appeared. Lag = first-seen time - commit return time.
//! - throughput: one-row transactions in a tight loop for a fixed time, in
//!   the order none, Sluice, Litestream, Litestream, Sluice, none (half the
//!   time each), so that a drift of the machine's load cancels out.
//! - Python throughput: the same, with the app a new user writes: Python's
//!   `sqlite3` module, `synchronous=NORMAL`, `BEGIN; INSERT` of a 200-byte
//!   blob; `COMMIT`, as fast as it can.
//! - restart: bytes under the replica prefix after a clean stop, a restart
//!   and one small write, minus bytes before the restart.
//! - snapshot stall: the longest write transaction of an app writing every
//!   5 ms from the sidecar's start until a periodic snapshot (level 9) taken
//!   after the start is in the bucket.
//! - CPU and RSS: utime+stime and VmHWM of the sidecar process at the end of
//!   the steady workload.
//!
//! All apps use WAL mode, `synchronous=NORMAL` and SQLite's default
//! autocheckpoint; every database uses page size 4096.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ltx_format::{Header, HEADER_SIZE};
use rusqlite::Connection;
use s3_backend::s3::{S3Config, S3Store};
use s3_backend::{Layout, LayoutKind, ReplicaStore};

const PAGE_SIZE: u64 = 4096;
const POLL_EVERY: Duration = Duration::from_millis(15);
const SNAPSHOT_LEVEL: u8 = 9;

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    phases: Vec<String>,
    work_dir: Option<PathBuf>,
    keep_objects: bool,
    logs: Option<PathBuf>,
    sluice_log_level: String,
    sparse_tx: usize,
    sparse_mean: Duration,
    steady_rate: u32,
    steady_secs: u64,
    throughput_secs: u64,
    snapshot_mib: u64,
    snapshot_cap: Duration,
    seed_rows: u32,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut o = Opts {
            quick: false,
            phases: ["sparse", "steady", "throughput", "python", "snapshot"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            work_dir: None,
            keep_objects: false,
            logs: None,
            sluice_log_level: "info".into(),
            sparse_tx: 60,
            sparse_mean: Duration::from_millis(500),
            steady_rate: 200,
            steady_secs: 20,
            throughput_secs: 10,
            snapshot_mib: 1024,
            snapshot_cap: Duration::from_secs(200),
            seed_rows: 4000,
        };
        let mut snapshot_mib = None;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--keep-objects" => o.keep_objects = true,
                "--phases" => {
                    let v = args.next().context("--phases needs a list")?;
                    o.phases = v.split(',').map(|s| s.trim().to_string()).collect();
                    for p in &o.phases {
                        if !["sparse", "steady", "throughput", "python", "snapshot"]
                            .contains(&p.as_str())
                        {
                            bail!("unknown phase {p:?}: use sparse, steady, throughput, python, snapshot");
                        }
                    }
                }
                "--sluice-log-level" => {
                    o.sluice_log_level = args.next().context("--sluice-log-level needs a level")?;
                }
                "--logs" => {
                    o.logs = Some(PathBuf::from(
                        args.next().context("--logs needs a directory")?,
                    ))
                }
                "--work-dir" => {
                    o.work_dir = Some(PathBuf::from(
                        args.next().context("--work-dir needs a directory")?,
                    ))
                }
                "--snapshot-mib" => {
                    let v = args.next().context("--snapshot-mib needs a number")?;
                    snapshot_mib = Some(v.parse().with_context(|| format!("--snapshot-mib {v}"))?);
                }
                "-h" | "--help" => {
                    println!(
                        "usage: bench_replicate [--quick] [--phases sparse,steady,throughput,python,snapshot] [--work-dir DIR] [--logs DIR] [--sluice-log-level LEVEL] [--snapshot-mib N] [--keep-objects]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (see --help)"),
            }
        }
        if o.quick {
            o.sparse_tx = 8;
            o.steady_secs = 3;
            o.throughput_secs = 2;
            o.snapshot_mib = 64;
            o.snapshot_cap = Duration::from_secs(60);
            o.seed_rows = 500;
        }
        if let Some(m) = snapshot_mib {
            o.snapshot_mib = m;
        }
        Ok(o)
    }

    fn has(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

// ---------------------------------------------------------------- the store

#[derive(Debug, Clone)]
struct Garage {
    endpoint: String,
    region: String,
    bucket: String,
    key_id: String,
    secret: String,
}

impl Garage {
    fn from_env() -> Result<Garage> {
        let get = |k: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .with_context(|| {
                    format!("{k} is not set: start Garage with integration/scripts/garage.sh start DIR and source DIR/env.sh (or run integration/scripts/bench-replicate.sh)")
                })
        };
        Ok(Garage {
            endpoint: get("SLUICE_S3_ENDPOINT")?,
            region: get("SLUICE_S3_REGION")?,
            bucket: get("SLUICE_S3_BUCKET")?,
            key_id: get("AWS_ACCESS_KEY_ID")?,
            secret: get("AWS_SECRET_ACCESS_KEY")?,
        })
    }

    fn s3_config(&self) -> S3Config {
        let mut c = S3Config::new(&self.bucket);
        c.endpoint = Some(self.endpoint.clone());
        c.region = Some(self.region.clone());
        c.force_path_style = true;
        c.access_key_id = Some(self.key_id.clone());
        c.secret_access_key = Some(self.secret.clone());
        c.attempt_timeout = Duration::from_secs(30);
        c
    }
}

/// A level's directory under a replica prefix (keys come from `Layout`).
fn level_dir(prefix: &str, level: u8) -> String {
    Layout::new(LayoutKind::S3, prefix).level_dir(level)
}

/// Blocking access to the bucket from the main thread.
#[derive(Debug)]
struct Bucket {
    rt: tokio::runtime::Runtime,
    store: S3Store,
}

impl Bucket {
    fn connect(g: &Garage) -> Result<Bucket> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let store = rt
            .block_on(S3Store::connect(g.s3_config()))
            .context("connecting to Garage")?;
        Ok(Bucket { rt, store })
    }

    fn list(&self, dir: &str) -> Result<Vec<s3_backend::ObjectMeta>> {
        Ok(self.rt.block_on(self.store.list(dir, None))?)
    }

    fn header(&self, key: &str) -> Result<Header> {
        let b = self
            .rt
            .block_on(self.store.get_range(key, 0, HEADER_SIZE as u64))?;
        let arr: [u8; HEADER_SIZE] = b
            .as_slice()
            .try_into()
            .map_err(|_| anyhow!("{key}: only {} bytes, not an LTX header", b.len()))?;
        Header::decode(&arr).with_context(|| format!("LTX header of {key}"))
    }

    /// (objects, bytes) per level 0..=9 under a replica prefix.
    fn usage(&self, prefix: &str) -> Result<[(u64, u64); 10]> {
        let mut out = [(0u64, 0u64); 10];
        for level in 0..=SNAPSHOT_LEVEL {
            for o in self.list(&level_dir(prefix, level))? {
                out[usize::from(level)].0 += 1;
                out[usize::from(level)].1 += o.size;
            }
        }
        Ok(out)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let mut n = 0;
        let mut dirs: Vec<String> = (0..=SNAPSHOT_LEVEL).map(|l| level_dir(prefix, l)).collect();
        dirs.push(Layout::new(LayoutKind::S3, prefix).sluice_key(""));
        for d in dirs {
            for o in self.list(&d)? {
                self.rt.block_on(self.store.delete(&o.key))?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// An object as the poller first saw it.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    at: Instant,
}

/// Lists some directories of the bucket at a fixed period on its own thread
/// and records when each object first appears.
#[derive(Debug)]
struct Poller {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    polls: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Poller {
    fn start(g: &Garage, dirs: Vec<String>, every: Duration, limit: Duration) -> Result<Poller> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let polls = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        let cfg = g.s3_config();
        let handle = {
            let (stop, seen, polls, errors) =
                (stop.clone(), seen.clone(), polls.clone(), errors.clone());
            std::thread::Builder::new()
                .name("bucket-poller".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let store = match rt.block_on(S3Store::connect(cfg)) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(()));
                    let started = Instant::now();
                    let mut known = HashSet::new();
                    // Keys appear in ascending order per directory: list only
                    // what follows the newest known key, so a poll costs the
                    // same however many objects there are.
                    let mut last: HashMap<String, String> = HashMap::new();
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                        for dir in &dirs {
                            let after = last.get(dir).cloned();
                            match rt.block_on(store.list(dir, after.as_deref())) {
                                Ok(objs) => {
                                    let now = Instant::now();
                                    for o in objs {
                                        if known.insert(o.key.clone()) {
                                            last.insert(dir.clone(), o.key.clone());
                                            seen.lock().unwrap_or_else(|p| p.into_inner()).push(
                                                Seen {
                                                    key: o.key,
                                                    at: now,
                                                },
                                            );
                                        }
                                    }
                                }
                                Err(_) => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        polls.fetch_add(1, Ordering::Relaxed);
                        next += every;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                })?
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("bucket poller: {e}"),
            Err(_) => bail!("bucket poller did not connect within 30 s"),
        }
        Ok(Poller {
            stop,
            seen,
            polls,
            errors,
            handle: Some(handle),
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (bounded) until some object is listed; returns when it was seen.
    fn wait_first(&self, sidecar: &mut Sidecar, limit: Duration) -> Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.seen().first() {
                return Ok(s.at);
            }
            sidecar.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{}: no replica object within {limit:?}; log tail:\n{}",
                    sidecar.kind.name(),
                    sidecar.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> (Vec<Seen>, u64, u64) {
        self.halt();
        (
            self.seen(),
            self.polls.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.halt();
    }
}

// ---------------------------------------------------------------- sidecars

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sluice,
    Litestream,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sluice => "sluice",
            Kind::Litestream => "litestream",
        }
    }

    /// A log line each start prints once it replicates.
    fn ready_line(self) -> &'static str {
        match self {
            Kind::Sluice => "capturing",
            Kind::Litestream => "replicating to",
        }
    }
}

#[derive(Debug)]
struct Bins {
    sluice: PathBuf,
    litestream: PathBuf,
}

impl Bins {
    fn find() -> Result<Bins> {
        let sluice = match std::env::var_os("SLUICE_BIN") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()?
                .parent()
                .context("no directory for the current executable")?
                .join("sluice"),
        };
        if !sluice.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p sluice` (or set SLUICE_BIN)",
                sluice.display()
            );
        }
        let litestream = std::env::var_os("SLUICE_LITESTREAM").map_or_else(
            || integration::project_root().join(".tools/litestream-venv/bin/litestream"),
            PathBuf::from,
        );
        if !litestream.exists() {
            bail!(
                "Litestream 0.5.17 not found at {}: run integration/scripts/install-deps.sh (or set SLUICE_LITESTREAM)",
                litestream.display()
            );
        }
        Ok(Bins { sluice, litestream })
    }
}

/// Where and how one sidecar replicates one database.
#[derive(Debug, Clone)]
struct SidecarSpec {
    kind: Kind,
    db: PathBuf,
    prefix: String,
    /// Directory for the config file and the log.
    dir: PathBuf,
    /// Periodic snapshot interval (`None`: the sidecar's default).
    snapshot_interval: Option<&'static str>,
}

impl SidecarSpec {
    fn config_text(&self, g: &Garage, sluice_log_level: &str) -> String {
        let db = self.db.display();
        match self.kind {
            // Defaults everywhere (sync-interval 1s) but the snapshot interval.
            Kind::Sluice => format!(
                "log-level: \"{sluice_log_level}\"\ndbs:\n  - path: \"{db}\"\n{snap}    replicas:\n      - type: s3\n        bucket: {b}\n        path: {p}\n        endpoint: {e}\n        region: {r}\n        force-path-style: true\n        access-key-id: {k}\n        secret-access-key: {s}\n",
                snap = self
                    .snapshot_interval
                    .map_or(String::new(), |i| format!("    snapshot-interval: {i}\n")),
                b = g.bucket,
                p = self.prefix,
                e = g.endpoint,
                r = g.region,
                k = g.key_id,
                s = g.secret,
            ),
            Kind::Litestream => format!(
                "{snap}dbs:\n  - path: \"{db}\"\n    replica:\n      type: s3\n      bucket: {b}\n      path: {p}\n      endpoint: {e}\n      region: {r}\n      force-path-style: true\n      access-key-id: {k}\n      secret-access-key: {s}\n",
                snap = self
                    .snapshot_interval
                    .map_or(String::new(), |i| format!("snapshot:\n  interval: {i}\n")),
                b = g.bucket,
                p = self.prefix,
                e = g.endpoint,
                r = g.region,
                k = g.key_id,
                s = g.secret,
            ),
        }
    }
}

#[derive(Debug)]
struct Sidecar {
    kind: Kind,
    child: Child,
    log: PathBuf,
    exited: Option<std::process::ExitStatus>,
    /// Copy the log here when the process ends.
    keep_log: Option<PathBuf>,
}

impl Sidecar {
    fn start(spec: &SidecarSpec, ctx: &Ctx) -> Result<Sidecar> {
        let (g, bins) = (&ctx.garage, &ctx.bins);
        let name = spec.kind.name();
        let cfg = spec.dir.join(format!("{name}.yml"));
        write_private(&cfg, &spec.config_text(g, &ctx.opts.sluice_log_level))?;
        let log = spec.dir.join(format!("{name}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("log file {}", log.display()))?;
        let mut cmd = match spec.kind {
            Kind::Sluice => {
                let mut c = Command::new(&bins.sluice);
                c.arg("replicate").arg("--config").arg(&cfg);
                c
            }
            Kind::Litestream => {
                let mut c = Command::new(&bins.litestream);
                c.arg("replicate").arg("-config").arg(&cfg);
                c
            }
        };
        let child = cmd
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            // Litestream logs to stdout, Sluice to stderr.
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let keep_log = ctx.opts.logs.as_ref().map(|d| {
            let slot = spec.prefix.rsplit('/').next().unwrap_or(name);
            d.join(format!("{slot}.log"))
        });
        Ok(Sidecar {
            kind: spec.kind,
            child,
            log,
            exited: None,
            keep_log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(s) = self.child.try_wait()? {
            self.exited = Some(s);
            bail!(
                "{} exited early ({s}); log tail:\n{}",
                self.kind.name(),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Waits (bounded) until the log holds more ready lines than `before`.
    fn wait_ready_line(&mut self, before: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.log_text().matches(self.kind.ready_line()).count() <= before {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not log {:?} within {limit:?}; log tail:\n{}",
                    self.kind.name(),
                    self.kind.ready_line(),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// utime + stime so far, in seconds.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("unexpected /proc/PID/stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of stat(5); `rest` starts at field 3.
        let ticks = |i: usize| -> Result<f64> {
            Ok(f.get(i).context("short /proc/PID/stat")?.parse::<u64>()? as f64)
        };
        Ok((ticks(11)? + ticks(12)?) / clock_ticks())
    }

    /// CPU seconds per thread name, largest first.
    fn thread_cpu(&self) -> Vec<(String, f64)> {
        let mut by_name: HashMap<String, f64> = HashMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return Vec::new();
        };
        for t in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = stat[open + 1..close].to_string();
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let ticks: f64 = [11, 12]
                .iter()
                .filter_map(|i| f.get(*i).and_then(|v| v.parse::<f64>().ok()))
                .sum();
            *by_name.entry(name).or_default() += ticks / clock_ticks();
        }
        let mut v: Vec<(String, f64)> = by_name.into_iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// VmHWM (peak resident set), in KiB.
    fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .context("no VmHWM in /proc/PID/status")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("bad VmHWM line")?
            .parse()?)
    }

    /// SIGTERM, then waits (bounded); SIGKILL if it does not exit in time.
    fn stop(mut self, limit: Duration) -> Result<String> {
        if let Some(s) = self.exited {
            return Ok(format!("had already exited ({s})"));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait()? {
                self.exited = Some(s);
                return Ok(match s.code() {
                    Some(0) => "exit 0".to_string(),
                    _ => format!("{s}; log tail:\n{}", self.log_tail(10)),
                });
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let s = self.child.wait()?;
                self.exited = Some(s);
                return Ok(format!("did not stop within {limit:?} of SIGTERM; killed"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(to) = &self.keep_log {
            let _ = std::fs::copy(&self.log, to);
        }
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------- the app

const PAD: &str =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A fresh WAL-mode database with table `t`, and `seed_rows` rows of 1000
/// random bytes.
fn create_db(path: &Path, seed_rows: u32) -> Result<()> {
    let c = Connection::open(path)?;
    c.execute_batch(&format!("PRAGMA page_size={PAGE_SIZE};"))?;
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        bail!("{}: journal_mode is {mode}, not wal", path.display());
    }
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);")?;
    if seed_rows > 0 {
        c.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < ?1)
             INSERT INTO t(v, b) SELECT 'seed ' || i, randomblob(1000) FROM n",
            [seed_rows],
        )?;
    }
    Ok(())
}

fn open_app(path: &Path) -> Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(60))?;
    c.execute_batch("PRAGMA synchronous=NORMAL;")?;
    // Opens the WAL index.
    c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })?;
    Ok(c)
}

/// Reads the WAL-index header (`-shm`) right after a commit: the WAL salts
/// and the end offset of the last committed frame.
#[derive(Debug)]
struct WalPos {
    shm: File,
}

impl WalPos {
    fn open(db: &Path) -> Result<WalPos> {
        let p = PathBuf::from(format!("{}-shm", db.display()));
        Ok(WalPos {
            shm: File::open(&p).with_context(|| format!("cannot open {}", p.display()))?,
        })
    }

    fn read(&self) -> Result<(u32, u32, u64)> {
        let mut b = [0u8; 96];
        for _ in 0..1000 {
            self.shm.read_exact_at(&mut b, 0)?;
            // SQLite keeps two copies; equal copies are a consistent read.
            if b[..48] == b[48..96] {
                let u32le = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
                let u32be = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
                if u32le(0) != 3_007_000 {
                    bail!("unexpected WAL-index version {}", u32le(0));
                }
                let mx = u64::from(u32le(16));
                return Ok((u32be(32), u32be(36), 32 + mx * (24 + PAGE_SIZE)));
            }
            std::thread::yield_now();
        }
        bail!("WAL-index header kept changing")
    }
}

/// One committed transaction: when the commit returned and where it ends in
/// the WAL.
#[derive(Debug, Clone, Copy)]
struct Commit {
    done: Instant,
    /// Wall clock of `done`, to find the commit in the sidecars' logs.
    wall: std::time::SystemTime,
    salt1: u32,
    salt2: u32,
    end: u64,
}

/// Commits one small row per transaction at `start + offsets[i]`.
fn run_schedule(db: &Path, offsets: &[Duration], tag: &str) -> Result<(Vec<Commit>, Duration)> {
    let c = open_app(db)?;
    let wal = WalPos::open(db)?;
    let mut stmt = c.prepare("INSERT INTO t(v) VALUES (?1)")?;
    let mut commits = Vec::with_capacity(offsets.len());
    let start = Instant::now();
    for (i, off) in offsets.iter().enumerate() {
        let at = start + *off;
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        stmt.execute([format!("{tag} {i} {PAD}")])?;
        let done = Instant::now();
        let wall = std::time::SystemTime::now();
        let (salt1, salt2, end) = wal.read()?;
        commits.push(Commit {
            done,
            wall,
            salt1,
            salt2,
            end,
        });
    }
    Ok((commits, start.elapsed()))
}

/// LTX headers of the objects seen, fetched once each.
#[derive(Debug, Default)]
struct Headers {
    by_key: HashMap<String, (Instant, Header)>,
}

impl Headers {
    fn fetch(&mut self, bucket: &Bucket, seen: &[Seen]) -> Result<()> {
        for s in seen {
            if !self.by_key.contains_key(&s.key) {
                let h = bucket.header(&s.key)?;
                self.by_key.insert(s.key.clone(), (s.at, h));
            }
        }
        Ok(())
    }

    /// When the first object holding the end of commit `c` appeared.
    fn durable_at(&self, c: &Commit) -> Option<Instant> {
        self.by_key
            .values()
            .filter(|(_, h)| {
                h.wal_salt1 == c.salt1
                    && h.wal_salt2 == c.salt2
                    && h.wal_offset > 0
                    && h.wal_size > 0
                    && (h.wal_offset as u64) < c.end
                    && c.end <= (h.wal_offset + h.wal_size) as u64
            })
            .map(|(at, _)| *at)
            .min()
    }
}

/// Waits (bounded) until `last` is durable.
fn wait_durable(
    poller: &Poller,
    bucket: &Bucket,
    headers: &mut Headers,
    last: &Commit,
    sidecar: &mut Sidecar,
    limit: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        headers.fetch(bucket, &poller.seen())?;
        if headers.durable_at(last).is_some() {
            return Ok(true);
        }
        sidecar.check_alive()?;
        if Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Debug, Clone, Default)]
struct LagStats {
    n: usize,
    unmatched: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// The three longest lags: (commit wall clock, lag).
    worst: Vec<(std::time::SystemTime, Duration)>,
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn lag_stats(commits: &[Commit], headers: &Headers) -> LagStats {
    let mut lags = Vec::new();
    let mut worst = Vec::new();
    let mut unmatched = 0;
    for c in commits {
        match headers.durable_at(c) {
            Some(at) => {
                let lag = at.saturating_duration_since(c.done);
                lags.push(lag);
                worst.push((c.wall, lag));
            }
            None => unmatched += 1,
        }
    }
    lags.sort();
    worst.sort_by_key(|w| std::cmp::Reverse(w.1));
    worst.truncate(3);
    LagStats {
        worst,
        n: commits.len(),
        unmatched,
        p50: percentile(&lags, 0.50),
        p99: percentile(&lags, 0.99),
        max: lags.last().copied().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------- phases

#[derive(Debug)]
struct Ctx {
    opts: Opts,
    garage: Garage,
    bins: Bins,
    bucket: Bucket,
    work: PathBuf,
    run_prefix: String,
    prefixes: RefCell<Vec<String>>,
}

impl Ctx {
    /// A fresh directory and replica prefix for one run.
    fn slot(&self, name: &str) -> Result<(PathBuf, String)> {
        let dir = self.work.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let prefix = format!("{}/{name}", self.run_prefix);
        self.prefixes.borrow_mut().push(prefix.clone());
        Ok((dir, prefix))
    }
}

#[derive(Debug, Default)]
struct RestartResult {
    bytes: u64,
    objects: u64,
    l0_bytes: u64,
    detail: String,
    stop_status: String,
}

#[derive(Debug, Default)]
struct SparseResult {
    lag: LagStats,
    objects: usize,
    restart: Option<RestartResult>,
}

/// Sparse writes (exponential gaps, same seed for both), then the restart
/// measurement on the same database.
/// A sidecar started on a new database, its level-0 directory polled, and
/// its first object seen.
struct Polled {
    dir: PathBuf,
    prefix: String,
    db: PathBuf,
    spec: SidecarSpec,
    poller: Poller,
    sc: Sidecar,
}

fn start_polled(ctx: &Ctx, kind: Kind, phase: &str, seed_rows: u32) -> Result<Polled> {
    let (dir, prefix) = ctx.slot(&format!("{phase}-{}", kind.name()))?;
    let db = dir.join("app.db");
    create_db(&db, seed_rows)?;
    let spec = SidecarSpec {
        kind,
        db: db.clone(),
        prefix: prefix.clone(),
        dir: dir.clone(),
        snapshot_interval: None,
    };
    let poller = Poller::start(
        &ctx.garage,
        vec![level_dir(&prefix, 0)],
        POLL_EVERY,
        Duration::from_secs(300),
    )?;
    let mut sc = Sidecar::start(&spec, ctx)?;
    poller.wait_first(&mut sc, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(1500));
    Ok(Polled {
        dir,
        prefix,
        db,
        spec,
        poller,
        sc,
    })
}

fn sparse_phase(ctx: &Ctx, kind: Kind) -> Result<SparseResult> {
    let Polled {
        dir,
        prefix,
        db,
        spec,
        poller,
        mut sc,
    } = start_polled(ctx, kind, "sparse", ctx.opts.seed_rows)?;
    let mut rng = integration::XorShift64::new(0x5eed_1234_abcd_0001);
    let mut offsets = Vec::with_capacity(ctx.opts.sparse_tx);
    let mut t = Duration::ZERO;
    for _ in 0..ctx.opts.sparse_tx {
        let u = rng.next_f64();
        let gap = (-(1.0 - u).ln() * ctx.opts.sparse_mean.as_secs_f64()).clamp(0.02, 2.5);
        t += Duration::from_secs_f64(gap);
        offsets.push(t);
    }
    eprintln!(
        "  {}: {} sparse transactions over {:.1} s",
        kind.name(),
        offsets.len(),
        t.as_secs_f64()
    );
    let (commits, _) = run_schedule(&db, &offsets, "sparse")?;
    let mut headers = Headers::default();
    let last = *commits.last().context("no commits")?;
    if !wait_durable(
        &poller,
        &ctx.bucket,
        &mut headers,
        &last,
        &mut sc,
        Duration::from_secs(20),
    )? {
        eprintln!(
            "  {}: the last sparse commit was not durable within 20 s",
            kind.name()
        );
    }
    let lag = lag_stats(&commits, &headers);
    let objects = headers.by_key.len();

    // Restart: clean stop, restart, one small write.
    let stop_status = sc.stop(Duration::from_secs(30))?;
    let before = ctx.bucket.usage(&prefix)?;
    let ready_before = std::fs::read_to_string(dir.join(format!("{}.log", kind.name())))
        .unwrap_or_default()
        .matches(kind.ready_line())
        .count();
    let mut sc = Sidecar::start(&spec, ctx)?;
    sc.wait_ready_line(ready_before, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(1000));
    let (c, _) = run_schedule(&db, &[Duration::ZERO], "after restart")?;
    let c = *c.last().context("no commit")?;
    let durable = wait_durable(
        &poller,
        &ctx.bucket,
        &mut headers,
        &c,
        &mut sc,
        Duration::from_secs(30),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let after = ctx.bucket.usage(&prefix)?;
    let stop2 = sc.stop(Duration::from_secs(30))?;
    drop(poller);
    let r = restart_result(
        &before,
        &after,
        durable,
        format!("first stop: {stop_status}; second stop: {stop2}"),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(SparseResult {
        lag,
        objects,
        restart: Some(r),
    })
}

/// What a restart added to the bucket, per level.
fn restart_result(
    before: &[(u64, u64); 10],
    after: &[(u64, u64); 10],
    durable: bool,
    stop_status: String,
) -> RestartResult {
    let mut r = RestartResult {
        stop_status,
        ..RestartResult::default()
    };
    let mut parts = Vec::new();
    for level in 0..10 {
        let objs = after[level].0.saturating_sub(before[level].0);
        let bytes = after[level].1.saturating_sub(before[level].1);
        r.objects += objs;
        r.bytes += bytes;
        if level == 0 {
            r.l0_bytes = bytes;
        }
        if objs > 0 || bytes > 0 {
            parts.push(format!("L{level}: +{objs} objects, +{bytes} B"));
        }
    }
    if !durable {
        parts.push("the write after the restart was not durable within 30 s".into());
    }
    r.detail = parts.join("; ");
    r
}

#[derive(Debug, Default)]
struct SteadyResult {
    lag: LagStats,
    cpu_ready_s: f64,
    threads: Vec<(String, f64)>,
    objects: usize,
    achieved_rate: f64,
    cpu_s: f64,
    rss_kib: u64,
    polls: u64,
    poll_errors: u64,
    stop_status: String,
}

fn steady_phase(ctx: &Ctx, kind: Kind) -> Result<SteadyResult> {
    let Polled {
        dir,
        db,
        poller,
        mut sc,
        ..
    } = start_polled(ctx, kind, "steady", 0)?;
    let cpu_ready_s = sc.cpu_seconds()?;
    let n = ctx.opts.steady_rate as u64 * ctx.opts.steady_secs;
    let period = Duration::from_secs(1) / ctx.opts.steady_rate;
    let offsets: Vec<Duration> = (0..n as u32).map(|i| period * i).collect();
    let (commits, took) = run_schedule(&db, &offsets, "steady")?;
    let mut headers = Headers::default();
    let last = *commits.last().context("no commits")?;
    if !wait_durable(
        &poller,
        &ctx.bucket,
        &mut headers,
        &last,
        &mut sc,
        Duration::from_secs(20),
    )? {
        eprintln!(
            "  {}: the last steady commit was not durable within 20 s",
            kind.name()
        );
    }
    let cpu_s = sc.cpu_seconds()?;
    let rss_kib = sc.peak_rss_kib()?;
    let threads = sc.thread_cpu();
    let stop_status = sc.stop(Duration::from_secs(30))?;
    let (_, polls, poll_errors) = poller.finish();
    let lag = lag_stats(&commits, &headers);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(SteadyResult {
        lag,
        objects: headers.by_key.len(),
        achieved_rate: commits.len() as f64 / took.as_secs_f64(),
        cpu_ready_s,
        threads,
        cpu_s,
        rss_kib,
        polls,
        poll_errors,
        stop_status,
    })
}

#[derive(Debug, Default, Clone)]
struct ThroughputResult {
    tps: f64,
    max_commit: Duration,
    over_10ms: u64,
    over_50ms: u64,
    /// The three longest commits: (wall clock at their start, latency).
    worst: Vec<(std::time::SystemTime, Duration)>,
    sidecar_cpu_s: f64,
}

/// The application of a throughput run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum App {
    /// A Rust loop of one-row autocommit inserts (rusqlite).
    Rust,
    /// Python's `sqlite3` module: `BEGIN; INSERT 200-byte blob; COMMIT`.
    Python,
}

fn throughput_phase(
    ctx: &Ctx,
    kind: Option<Kind>,
    slot: &str,
    app: App,
) -> Result<ThroughputResult> {
    let name = kind.map_or("none", Kind::name);
    let (dir, prefix) = ctx.slot(&format!("throughput-{slot}"))?;
    let db = dir.join("app.db");
    create_db(&db, 0)?;
    let mut sc = match kind {
        Some(kind) => {
            let spec = SidecarSpec {
                kind,
                db: db.clone(),
                prefix: prefix.clone(),
                dir: dir.clone(),
                snapshot_interval: None,
            };
            let mut sc = Sidecar::start(&spec, ctx)?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while ctx.bucket.list(&level_dir(&prefix, 0))?.is_empty() {
                sc.check_alive()?;
                if Instant::now() > deadline {
                    bail!(
                        "{name}: no replica object within 60 s; log:\n{}",
                        sc.log_tail(20)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_secs(1));
            Some(sc)
        }
        None => None,
    };
    let cpu_before = match &sc {
        Some(s) => s.cpu_seconds()?,
        None => 0.0,
    };
    let limit = Duration::from_millis(ctx.opts.throughput_secs * 500);
    let mut result = match app {
        App::Rust => rust_loop(&db, limit)?,
        App::Python => python_loop(&db, limit)?,
    };
    if let Some(s) = sc.take() {
        result.sidecar_cpu_s = s.cpu_seconds()? - cpu_before;
        let st = s.stop(Duration::from_secs(60))?;
        if st != "exit 0" {
            eprintln!("  {name}: stop: {st}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result)
}

/// One-row transactions in a tight loop for `limit`.
fn rust_loop(db: &Path, limit: Duration) -> Result<ThroughputResult> {
    let c = open_app(db)?;
    let mut stmt = c.prepare("INSERT INTO t(v) VALUES (?1)")?;
    let start = Instant::now();
    let mut n: u64 = 0;
    let mut r = ThroughputResult::default();
    let mut buf = String::with_capacity(128);
    // Bounded by time, and by count as a backstop.
    while n < 100_000_000 {
        let t = Instant::now();
        if t.duration_since(start) >= limit {
            break;
        }
        buf.clear();
        buf.push_str(PAD);
        buf.push_str(&n.to_string());
        stmt.execute([&buf])?;
        let took = t.elapsed();
        if took > Duration::from_millis(5) && r.worst.iter().filter(|w| w.1 >= took).count() < 3 {
            r.worst.push((std::time::SystemTime::now() - took, took));
            r.worst.sort_by_key(|w| std::cmp::Reverse(w.1));
            r.worst.truncate(3);
        }
        r.max_commit = r.max_commit.max(took);
        r.over_10ms += u64::from(took > Duration::from_millis(10));
        r.over_50ms += u64::from(took > Duration::from_millis(50));
        n += 1;
    }
    r.tps = n as f64 / start.elapsed().as_secs_f64();
    Ok(r)
}

/// The issue's new-user app: Python's `sqlite3` module, `synchronous=NORMAL`,
/// one transaction per 200-byte blob, as fast as it can, for `limit`.
const PYTHON_APP: &str = r#"
import os, sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA synchronous=NORMAL")
con.execute("CREATE TABLE IF NOT EXISTS py(id INTEGER PRIMARY KEY, b BLOB)")
blob, n = os.urandom(200), 0
start = time.monotonic()
end = start + float(sys.argv[2])
while time.monotonic() < end and n < 100000000:
    con.execute("BEGIN")
    con.execute("INSERT INTO py(b) VALUES (?)", (blob,))
    con.execute("COMMIT")
    n += 1
print(n / (time.monotonic() - start))
"#;

fn python_loop(db: &Path, limit: Duration) -> Result<ThroughputResult> {
    let out = Command::new("python3")
        .args(["-c", PYTHON_APP])
        .arg(db)
        .arg(limit.as_secs_f64().to_string())
        .stderr(Stdio::inherit())
        .output()
        .context("running python3 (the Python app shape)")?;
    if !out.status.success() {
        bail!("the Python app failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let tps: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("python printed {text:?}"))?;
    Ok(ThroughputResult {
        tps,
        ..ThroughputResult::default()
    })
}

/// A database of at least `mib` MiB: one random 3900-byte row per page.
fn build_big(path: &Path, mib: u64) -> Result<()> {
    let c = Connection::open(path)?;
    c.execute_batch(&format!("PRAGMA page_size={PAGE_SIZE};"))?;
    c.query_row("PRAGMA journal_mode=OFF", [], |_| Ok(()))?;
    c.execute_batch(
        "PRAGMA synchronous=OFF;
         CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB);
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);",
    )?;
    let target_pages = (mib * 1024 * 1024).div_ceil(PAGE_SIZE) + 64;
    for _ in 0..100_000 {
        let pages: u64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        if pages >= target_pages {
            break;
        }
        let batch = (target_pages - pages).clamp(1, 16_384);
        c.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < ?1)
             INSERT INTO big(b) SELECT randomblob(3900) FROM n",
            [batch],
        )?;
    }
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        bail!("{}: journal_mode is {mode}, not wal", path.display());
    }
    drop(c);
    // Written with synchronous=OFF: flush it now, or the first checkpoint's
    // fsync during the measurement would write the whole gigabyte.
    File::open(path)?.sync_all()?;
    Ok(())
}

#[derive(Debug, Default, Clone)]
struct StallResult {
    writes: usize,
    max: Duration,
    max_at: Duration,
    /// The three longest writes: (offset from the start, latency).
    top: Vec<(Duration, Duration)>,
    /// Wall clock at the start, to compare with the sidecar's log.
    t0_wall: Option<std::time::SystemTime>,
    p99: Duration,
    over_50ms: usize,
    window: Duration,
    l0_full_at: Option<Duration>,
    l9_at: Option<Duration>,
    note: String,
}

/// Small write transactions every 5 ms until `stop`; (start offset, latency).
fn stall_writer(
    db: PathBuf,
    t0: Instant,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> JoinHandle<Result<Vec<(Duration, Duration)>>> {
    std::thread::spawn(move || {
        let c = open_app(&db)?;
        let mut stmt = c.prepare("INSERT INTO t(v) VALUES (?1)")?;
        let mut out = Vec::new();
        let every = Duration::from_millis(5);
        let mut next = Instant::now();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) && t0.elapsed() < limit {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            let s = Instant::now();
            stmt.execute([format!("stall {i} {PAD}")])?;
            out.push((s.duration_since(t0), s.elapsed()));
            i += 1;
            next = (next + every).max(Instant::now());
        }
        Ok(out)
    })
}

fn stall_summary(samples: &[(Duration, Duration)]) -> StallResult {
    let mut lat: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    lat.sort();
    let (max_at, max) = samples
        .iter()
        .max_by_key(|s| s.1)
        .map_or((Duration::ZERO, Duration::ZERO), |s| (s.0, s.1));
    let mut top: Vec<(Duration, Duration)> = samples.to_vec();
    top.sort_by_key(|s| std::cmp::Reverse(s.1));
    top.truncate(3);
    StallResult {
        writes: samples.len(),
        max,
        max_at,
        top,
        p99: percentile(&lat, 0.99),
        over_50ms: lat
            .iter()
            .filter(|d| **d > Duration::from_millis(50))
            .count(),
        ..StallResult::default()
    }
}

fn stall_run(ctx: &Ctx, kind: Option<Kind>, db: &Path, db_bytes: u64) -> Result<StallResult> {
    let name = kind.map_or("none", Kind::name);
    let t0 = Instant::now();
    let t0_wall = std::time::SystemTime::now();
    let stop = Arc::new(AtomicBool::new(false));
    let Some(kind) = kind else {
        let w = stall_writer(db.to_path_buf(), t0, stop.clone(), Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(if ctx.opts.quick { 2 } else { 5 }));
        stop.store(true, Ordering::Relaxed);
        let samples = w.join().map_err(|_| anyhow!("writer panicked"))??;
        let mut r = stall_summary(&samples);
        r.window = t0.elapsed();
        r.t0_wall = Some(t0_wall);
        return Ok(r);
    };
    let dir = db.parent().context("db has no directory")?.to_path_buf();
    let prefix = format!("{}/snapshot-{name}", ctx.run_prefix);
    ctx.prefixes.borrow_mut().push(prefix.clone());
    let spec = SidecarSpec {
        kind,
        db: db.to_path_buf(),
        prefix: prefix.clone(),
        dir,
        snapshot_interval: Some("5s"),
    };
    let cap = ctx.opts.snapshot_cap;
    let mut sc = Sidecar::start(&spec, ctx)?;
    let w = stall_writer(
        db.to_path_buf(),
        t0,
        stop.clone(),
        cap + Duration::from_secs(30),
    );
    let mut r = StallResult::default();
    let mut notes = Vec::new();
    let mut end: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            break;
        }
        if now.duration_since(t0) > cap {
            notes.push(format!("no periodic snapshot within {cap:?}"));
            break;
        }
        if let Err(e) = sc.check_alive() {
            notes.push(format!("{e:#}"));
            break;
        }
        if r.l0_full_at.is_none() {
            if let Ok(objs) = ctx.bucket.list(&level_dir(&prefix, 0)) {
                if objs.iter().any(|o| o.size >= db_bytes / 2) {
                    r.l0_full_at = Some(t0.elapsed());
                }
            }
        }
        if r.l9_at.is_none() {
            if let Ok(objs) = ctx.bucket.list(&level_dir(&prefix, SNAPSHOT_LEVEL)) {
                // A snapshot taken after the start: MaxTXID above 1.
                let periodic = objs.iter().any(|o| {
                    o.key
                        .rsplit('/')
                        .next()
                        .and_then(ltx_format::parse_filename)
                        .is_some_and(|(_, max)| max.0 > 1)
                });
                if periodic {
                    r.l9_at = Some(t0.elapsed());
                    end = Some(Instant::now() + Duration::from_secs(2));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let samples = w.join().map_err(|_| anyhow!("writer panicked"))??;
    let window = t0.elapsed();
    let st = sc.stop(Duration::from_secs(60))?;
    if st != "exit 0" {
        notes.push(format!("stop: {st}"));
    }
    let mut s = stall_summary(&samples);
    s.window = window;
    s.t0_wall = Some(t0_wall);
    s.l0_full_at = r.l0_full_at;
    s.l9_at = r.l9_at;
    s.note = notes.join("; ");
    Ok(s)
}

#[derive(Debug, Default)]
struct SnapshotResult {
    db_bytes: u64,
    build: Duration,
    none: StallResult,
    sluice: StallResult,
    litestream: StallResult,
}

fn remove_db(db: &Path) {
    let d = db.display();
    for p in [
        db.to_path_buf(),
        PathBuf::from(format!("{d}-wal")),
        PathBuf::from(format!("{d}-shm")),
    ] {
        let _ = std::fs::remove_file(p);
    }
    if let (Some(dir), Some(name)) = (db.parent(), db.file_name()) {
        let name = name.to_string_lossy();
        let _ = std::fs::remove_dir_all(dir.join(format!(".{name}-sluice")));
        let _ = std::fs::remove_dir_all(dir.join(format!(".{name}-litestream")));
    }
}

fn snapshot_phase(ctx: &Ctx) -> Result<SnapshotResult> {
    let dir = ctx.work.join("snapshot");
    std::fs::create_dir_all(&dir)?;
    let base = dir.join("big.db");
    let started = Instant::now();
    eprintln!(
        "  building a {} MiB database (page size {PAGE_SIZE})",
        ctx.opts.snapshot_mib
    );
    build_big(&base, ctx.opts.snapshot_mib)?;
    let build = started.elapsed();
    let db_bytes = std::fs::metadata(&base)?.len();
    eprintln!("  built {} bytes in {:.1} s", db_bytes, build.as_secs_f64());
    let mut out = SnapshotResult {
        db_bytes,
        build,
        ..SnapshotResult::default()
    };
    // Baseline on the base copy (a few KB of writes; then copied for each
    // sidecar, so both start from the same file).
    out.none = stall_run(ctx, None, &base, db_bytes)?;
    for kind in [Kind::Sluice, Kind::Litestream] {
        let sub = dir.join(kind.name());
        std::fs::create_dir_all(&sub)?;
        let db = sub.join("big.db");
        if kind == Kind::Litestream {
            std::fs::rename(&base, &db)?;
        } else {
            std::fs::copy(&base, &db)?;
            File::open(&db)?.sync_all()?;
        }
        eprintln!("  {}: snapshot of the big database", kind.name());
        let r = stall_run(ctx, Some(kind), &db, db_bytes)?;
        remove_db(&db);
        let _ = std::fs::remove_dir_all(&sub);
        match kind {
            Kind::Sluice => out.sluice = r,
            Kind::Litestream => out.litestream = r,
        }
    }
    remove_db(&base);
    Ok(out)
}

// ---------------------------------------------------------------- report

/// The 1, 5 and 15 minute load averages (other work on the machine skews
/// every figure).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `HH:MM:SS.mmmZ`, to find a moment in the sidecars' logs.
fn utc_time_of_day(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// "LAG for the commit at TIME, ..."
fn worst(w: &[(std::time::SystemTime, Duration)]) -> String {
    w.iter()
        .map(|(t, d)| format!("{} at {}", ms(*d), utc_time_of_day(*t)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// Mean transactions per second of the loops of one kind.
fn mean_tps(runs: &[(Option<Kind>, ThroughputResult)], kind: Option<Kind>) -> f64 {
    let v: Vec<f64> = runs
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, r)| r.tps)
        .collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

#[derive(Debug, Default)]
struct Table {
    rows: Vec<[String; 6]>,
}

impl Table {
    fn row(&mut self, cells: [&str; 6]) {
        self.rows.push(cells.map(str::to_string));
    }

    fn print(&self) {
        let mut w = [0usize; 6];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        for (n, r) in self.rows.iter().enumerate() {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                .collect();
            println!("{}", line.join("  ").trim_end());
            if n == 0 {
                println!("{}", "-".repeat(w.iter().sum::<usize>() + 10));
            }
        }
    }
}

#[derive(Debug, Default)]
struct Results {
    sparse: Option<(SparseResult, SparseResult)>,
    steady: Option<(SteadyResult, SteadyResult)>,
    /// Each loop in the order run: none, Sluice, Litestream, Litestream,
    /// Sluice, none.
    throughput: Option<Vec<(Option<Kind>, ThroughputResult)>>,
    /// The same, with the Python app.
    python: Option<Vec<(Option<Kind>, ThroughputResult)>>,
    snapshot: Option<SnapshotResult>,
}

fn report(ctx: &Ctx, r: &Results, total: Duration) {
    let o = &ctx.opts;
    println!();
    println!(
        "Sluice vs Litestream 0.5.17, same Garage (loopback S3), one run; sync-interval 1s (both defaults){}",
        if o.quick { "; QUICK MODE (small sizes)" } else { "" }
    );
    println!(
        "machine: {} cores, load average at the end {}; app: WAL, synchronous=NORMAL, page size {PAGE_SIZE}; lag resolution: bucket listed every {} ms",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        POLL_EVERY.as_millis()
    );
    println!();
    let mut t = Table::default();
    t.row([
        "metric",
        "sluice",
        "litestream",
        "S/L",
        "target (sluice)",
        "met",
    ]);
    lag_rows(&mut t, o, r);
    if let Some(runs) = &r.throughput {
        let title = format!(
            "app throughput (2 x {} s loops)",
            o.throughput_secs as f64 / 2.0
        );
        throughput_rows(&mut t, &title, runs);
    }
    if let Some(runs) = &r.python {
        let title = format!(
            "Python app throughput (2 x {} s)",
            o.throughput_secs as f64 / 2.0
        );
        throughput_rows(&mut t, &title, runs);
    }
    other_rows(&mut t, r);
    t.print();
    println!();
    println!("details:");
    lag_details(r);
    if let Some(runs) = &r.throughput {
        throughput_details("throughput", runs);
    }
    if let Some(runs) = &r.python {
        throughput_details("python", runs);
    }
    snapshot_details(r);
    println!("  total run time {:.0} s", total.as_secs_f64());
}

/// Sparse and steady lag.
fn lag_rows(t: &mut Table, o: &Opts, r: &Results) {
    if let Some((s, l)) = &r.sparse {
        let title = format!("sparse lag p50 ({} tx, ~2/s)", o.sparse_tx);
        t.row([
            &title,
            &ms(s.lag.p50),
            &ms(l.lag.p50),
            &ratio(s.lag.p50.as_secs_f64(), l.lag.p50.as_secs_f64()),
            "",
            "",
        ]);
        t.row([
            "sparse lag p99",
            &ms(s.lag.p99),
            &ms(l.lag.p99),
            &ratio(s.lag.p99.as_secs_f64(), l.lag.p99.as_secs_f64()),
            "<= 100 ms",
            yes_no(s.lag.p99 <= Duration::from_millis(100) && s.lag.unmatched == 0),
        ]);
    }
    if let Some((s, l)) = &r.steady {
        let title = format!(
            "steady lag p50 ({} tx/s, {} s)",
            o.steady_rate, o.steady_secs
        );
        t.row([
            &title,
            &ms(s.lag.p50),
            &ms(l.lag.p50),
            &ratio(s.lag.p50.as_secs_f64(), l.lag.p50.as_secs_f64()),
            "",
            "",
        ]);
        t.row([
            "steady lag p99",
            &ms(s.lag.p99),
            &ms(l.lag.p99),
            &ratio(s.lag.p99.as_secs_f64(), l.lag.p99.as_secs_f64()),
            "<= 1200 ms",
            yes_no(s.lag.p99 <= Duration::from_millis(1200) && s.lag.unmatched == 0),
        ]);
    }
}

/// Mean throughput with each sidecar, and as a share of no sidecar.
fn throughput_rows(t: &mut Table, title: &str, runs: &[(Option<Kind>, ThroughputResult)]) {
    let none = mean_tps(runs, None);
    let s = ThroughputResult {
        tps: mean_tps(runs, Some(Kind::Sluice)),
        ..ThroughputResult::default()
    };
    let l = ThroughputResult {
        tps: mean_tps(runs, Some(Kind::Litestream)),
        ..ThroughputResult::default()
    };
    let pct = if none > 0.0 {
        s.tps / none * 100.0
    } else {
        0.0
    };
    let lpct = if none > 0.0 {
        l.tps / none * 100.0
    } else {
        0.0
    };
    t.row([
        title,
        &format!("{:.0} tx/s", s.tps),
        &format!("{:.0} tx/s", l.tps),
        &ratio(s.tps, l.tps),
        ">= 95% of none",
        "",
    ]);
    t.row([
        "  no sidecar / % of it",
        &format!("{pct:.1}%"),
        &format!("{lpct:.1}%"),
        "",
        &format!("none: {none:.0} tx/s"),
        yes_no(pct >= 95.0),
    ]);
}

/// Restart bytes, snapshot stall, CPU and RSS.
fn other_rows(t: &mut Table, r: &Results) {
    if let Some((s, l)) = &r.sparse {
        if let (Some(rs), Some(rl)) = (&s.restart, &l.restart) {
            t.row([
                "bytes uploaded after restart",
                &format!("{} B", rs.bytes),
                &format!("{} B", rl.bytes),
                &ratio(rs.bytes as f64, rl.bytes as f64),
                "< 64 KiB (issue)",
                yes_no(rs.bytes < 64 * 1024),
            ]);
        }
    }
    if let Some(sn) = &r.snapshot {
        let title = format!(
            "max write stall, snapshot of {:.2} GiB",
            sn.db_bytes as f64 / (1u64 << 30) as f64
        );
        t.row([
            &title,
            &ms(sn.sluice.max),
            &ms(sn.litestream.max),
            &ratio(sn.sluice.max.as_secs_f64(), sn.litestream.max.as_secs_f64()),
            "<= 50 ms",
            yes_no(sn.sluice.max <= Duration::from_millis(50) && sn.sluice.l9_at.is_some()),
        ]);
    }
    if let Some((s, l)) = &r.steady {
        t.row([
            "daemon CPU (steady run)",
            &format!("{:.2} s", s.cpu_s),
            &format!("{:.2} s", l.cpu_s),
            &ratio(s.cpu_s, l.cpu_s),
            "<= 0.5x litestream",
            yes_no(s.cpu_s <= 0.5 * l.cpu_s),
        ]);
        t.row([
            "daemon peak RSS (steady run)",
            &format!("{:.1} MiB", s.rss_kib as f64 / 1024.0),
            &format!("{:.1} MiB", l.rss_kib as f64 / 1024.0),
            &ratio(s.rss_kib as f64, l.rss_kib as f64),
            "<= 0.5x litestream",
            yes_no(s.rss_kib as f64 <= 0.5 * l.rss_kib as f64),
        ]);
    }
}

/// Per-phase lag details.
fn lag_details(r: &Results) {
    if let Some((s, l)) = &r.sparse {
        for (k, x) in [("sluice", s), ("litestream", l)] {
            println!(
                "  sparse {k}: n={} max={} unmatched={} L0 objects={}",
                x.lag.n,
                ms(x.lag.max),
                x.lag.unmatched,
                x.objects
            );
            println!("    longest lags {k}: {}", worst(&x.lag.worst));
            if let Some(rr) = &x.restart {
                println!(
                    "  restart {k}: +{} B in {} objects (L0 {} B): {}",
                    rr.bytes, rr.objects, rr.l0_bytes, rr.detail
                );
                println!("  restart {k}: {}", rr.stop_status);
            }
        }
    }
    if let Some((s, l)) = &r.steady {
        for (k, x) in [("sluice", s), ("litestream", l)] {
            println!(
                "  steady {k}: n={} achieved {:.0} tx/s, max={} unmatched={} L0 objects={} bucket polls={} poll errors={} stop: {}",
                x.lag.n,
                x.achieved_rate,
                ms(x.lag.max),
                x.lag.unmatched,
                x.objects,
                x.polls,
                x.poll_errors,
                x.stop_status.lines().next().unwrap_or("")
            );
            println!(
                "    {k}: CPU {:.2} s when ready (before the workload), {:.2} s at the end; longest lags {}",
                x.cpu_ready_s,
                x.cpu_s,
                worst(&x.lag.worst)
            );
            let threads: Vec<String> = x
                .threads
                .iter()
                .take(6)
                .map(|(n, c)| format!("{n} {c:.2} s"))
                .collect();
            println!("    {k}: CPU by thread: {}", threads.join(", "));
        }
    }
}

/// Per-run throughput details.
fn throughput_details(app: &str, runs: &[(Option<Kind>, ThroughputResult)]) {
    for (kind, x) in runs {
        let k = kind.map_or("none", Kind::name);
        println!(
            "  {app} {k}: {:.0} tx/s, longest commit {}, commits over 10 ms: {}, over 50 ms: {}, sidecar CPU during the loop {:.2} s",
            x.tps,
            ms(x.max_commit),
            x.over_10ms,
            x.over_50ms,
            x.sidecar_cpu_s
        );
        if !x.worst.is_empty() {
            println!("    longest commits: {}", worst(&x.worst));
        }
    }
}

/// The snapshot stall of each sidecar.
fn snapshot_details(r: &Results) {
    if let Some(sn) = &r.snapshot {
        println!(
            "  snapshot: database {} bytes built in {:.1} s",
            sn.db_bytes,
            sn.build.as_secs_f64()
        );
        for (k, x) in [
            ("none", &sn.none),
            ("sluice", &sn.sluice),
            ("litestream", &sn.litestream),
        ] {
            let at = |d: Option<Duration>| {
                d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
            };
            println!(
                "  stall {k}: {} writes over {:.1} s, max {} at +{:.1} s, p99 {}, {} over 50 ms; full L0 visible at {}, periodic L9 visible at {}{}",
                x.writes,
                x.window.as_secs_f64(),
                ms(x.max),
                x.max_at.as_secs_f64(),
                ms(x.p99),
                x.over_50ms,
                at(x.l0_full_at),
                at(x.l9_at),
                if x.note.is_empty() { String::new() } else { format!(" ({})", x.note) }
            );
            let top: Vec<String> = x
                .top
                .iter()
                .map(|(at, d)| {
                    let wall = x.t0_wall.map_or(String::new(), |w| {
                        format!(" = {}", utc_time_of_day(w + *at))
                    });
                    format!("{} at +{:.2} s{wall}", ms(*d), at.as_secs_f64())
                })
                .collect();
            println!("    longest writes {k}: {}", top.join(", "));
        }
    }
}

// ---------------------------------------------------------------- main

fn main() -> Result<()> {
    let started = Instant::now();
    let opts = Opts::parse()?;
    let garage = Garage::from_env()?;
    let bins = Bins::find()?;
    let bucket = Bucket::connect(&garage)?;
    if let Some(d) = &opts.logs {
        std::fs::create_dir_all(d)?;
    }
    // Fails early, naming the endpoint, if Garage is not there.
    bucket
        .list("bench-replicate-probe/")
        .with_context(|| format!("listing bucket {} at {}", garage.bucket, garage.endpoint))?;
    let (work, _tmp) = integration::work_dir(opts.work_dir.as_deref(), "sluice-bench-replicate.")?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let ctx = Ctx {
        opts,
        garage,
        bins,
        bucket,
        work,
        run_prefix: format!("bench-replicate-{nanos:x}"),
        prefixes: RefCell::new(Vec::new()),
    };
    eprintln!(
        "bench_replicate: load average {}; sluice {}, litestream {}, bucket {} at {}, prefix {}, work dir {}",
        loadavg(),
        ctx.bins.sluice.display(),
        ctx.bins.litestream.display(),
        ctx.garage.bucket,
        ctx.garage.endpoint,
        ctx.run_prefix,
        ctx.work.display()
    );
    let result = run_all(&ctx);
    if !ctx.opts.keep_objects {
        let mut n = 0;
        for p in ctx.prefixes.borrow().iter() {
            match ctx.bucket.delete_prefix(p) {
                Ok(k) => n += k,
                Err(e) => eprintln!("cleanup of {p}: {e:#}"),
            }
        }
        eprintln!("removed {n} objects under {}/", ctx.run_prefix);
    }
    let r = result?;
    report(&ctx, &r, started.elapsed());
    Ok(())
}

/// Throughput with no sidecar, Sluice and Litestream in the order A, B, C,
/// C, B, A: a linear drift of the machine's load cancels.
fn throughput_runs(ctx: &Ctx, app: App) -> Result<Vec<(Option<Kind>, ThroughputResult)>> {
    let order = [
        None,
        Some(Kind::Sluice),
        Some(Kind::Litestream),
        Some(Kind::Litestream),
        Some(Kind::Sluice),
        None,
    ];
    let mut runs = Vec::new();
    for (i, kind) in order.into_iter().enumerate() {
        let slot = format!("{:?}-{}-{}", app, kind.map_or("none", Kind::name), i + 1);
        runs.push((
            kind,
            throughput_phase(ctx, kind, &slot.to_lowercase(), app)?,
        ));
    }
    Ok(runs)
}

fn run_all(ctx: &Ctx) -> Result<Results> {
    let mut r = Results::default();
    let t0 = Instant::now();
    let say = |name: &str| eprintln!("== {name} (+{:.0} s)", t0.elapsed().as_secs_f64());
    if ctx.opts.has("sparse") {
        say("sparse writes and restart");
        let s = sparse_phase(ctx, Kind::Sluice)?;
        let l = sparse_phase(ctx, Kind::Litestream)?;
        r.sparse = Some((s, l));
    }
    if ctx.opts.has("steady") {
        say("steady writes (lag, CPU, RSS)");
        let s = steady_phase(ctx, Kind::Sluice)?;
        let l = steady_phase(ctx, Kind::Litestream)?;
        r.steady = Some((s, l));
    }
    if ctx.opts.has("throughput") {
        say("maximal insert loop");
        r.throughput = Some(throughput_runs(ctx, App::Rust)?);
    }
    if ctx.opts.has("python") {
        say("maximal Python app");
        r.python = Some(throughput_runs(ctx, App::Python)?);
    }
    if ctx.opts.has("snapshot") {
        say("snapshot write stall");
        r.snapshot = Some(snapshot_phase(ctx)?);
    }
    say("done");
    Ok(r)
}
