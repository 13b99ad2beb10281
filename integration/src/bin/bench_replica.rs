//! Replica benchmark (issue 13): what `sluice replica` costs and delivers,
//! in one run. Three phases, each against a primary database that `sluice
//! replicate` ships to Garage (when `SLUICE_S3_*` and the AWS credential
//! variables are set, as `integration/scripts/garage.sh start` writes them)
//! or else to a `file://` replica:
//!
//! - `ff`, fast-forward cost: a replica is mounted, catches up and is stopped
//!   (SIGTERM); the primary then commits N transactions (default 10,000)
//!   that each rewrite one of 100 rows of ~3000 bytes (one row a leaf page,
//!   round robin, so exactly 100 distinct pages), 2 ms apart (`sluice
//!   replicate` ships what it finds in the WAL at each look as one TXID, so
//!   an unpaced loop would make a handful of files); once everything is
//!   uploaded the replica is started again on the same cache directory and
//!   resumes with one fast-forward. Its metrics (bytes fetched, GETs, LISTs,
//!   steps) are compared with the ideal: the newest stored frame of each
//!   changed page (page header, size prefix and LZ4 block, exactly as the
//!   LTX files hold them) plus the page index (entries, terminator, length)
//!   of every file after the replica's position. The files are read back
//!   from the bucket after the replica is done to compute this, which also
//!   counts the distinct pages. Target: bytes fetched <= 1.2x the ideal.
//! - `fresh`, freshness: a writer commits one row with its commit time every
//!   150-300 ms (random); a reader thread on the replica runs `SELECT
//!   max(id)` every 5 ms (each its own read transaction) and records when
//!   each id first shows. Latency = first seen - commit returned, p50 and
//!   p99 (nearest rank), at `--poll-interval 1s` and `100ms`; the primary
//!   ships with `sync-interval: 100ms`. Target: p99 <= poll + 150 ms.
//! - `read`, read speed: a table of 1000-byte random blobs (`--scan-mib`,
//!   default 256) is built on a second primary before `sluice replicate`
//!   starts (which ships it); a fresh replica restores it; the replica's file
//!   is copied to a local directory. Point lookups by random primary key
//!   (one connection, prepared statement, after a warm-up scan) and full
//!   scans (`SELECT count(*), sum(length(v))`, cold after drop_caches when
//!   root, and warm) run in the order local, replica, replica, local. Target:
//!   point lookups >= 0.7x local once warm.
//!
//! Run it with `integration/scripts/bench-replica.sh`, which builds the
//! release binaries and calls this program. Needs FUSE (root or
//! `fusermount3`).
//!
//! Options: `--quick` (small sizes: a smoke run), `--phases ff,fresh,read`,
//! `--ff-tx N` (default 10000), `--ff-pace-us N` (default 2000), `--fresh-count N` (commits per poll
//! interval, default 100), `--lookups N` (default 100000), `--scan-mib N`
//! (default 256), `--work-dir DIR`, `--keep`, `--sluice-log-level LEVEL`.
//!
//! Every mount is a guard that unmounts on drop (error and panic too); every
//! wait is bounded.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use integration::http::{free_port, http_get};
use integration::mount::{is_mounted, signal, unmount};
use integration::XorShift64;
use rusqlite::{Connection, OpenFlags};
use s3_backend::retry::{RetryPolicy, Shutdown};
use s3_backend::{ReplicaStore, ReplicaUrl};

const MIB: f64 = 1024.0 * 1024.0;
/// Rows of the fast-forward table: one a leaf page.
const FF_ROWS: u64 = 100;
const FF_ROW_BYTES: u64 = 3000;
const SCAN_ROW_BYTES: u64 = 1000;
/// 1000-byte rows fit four to a 4096-byte page.
const SCAN_ROWS_PER_MIB: u64 = 256 * 4;
const DB: &str = "app.db";
const READ_DB: &str = "read.db";
const PRIMARY_SYNC: &str = "100ms";

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    phases: Vec<String>,
    ff_tx: u64,
    /// Pause between the fast-forward transactions.
    ff_pace: Duration,
    fresh_count: u64,
    lookups: u64,
    scan_mib: u64,
    work_dir: Option<PathBuf>,
    keep: bool,
    log_level: String,
}

const PHASES: [&str; 3] = ["ff", "fresh", "read"];
const USAGE: &str = "usage: bench_replica [--quick] [--phases ff,fresh,read] [--ff-tx N] [--ff-pace-us N] [--fresh-count N] [--lookups N] [--scan-mib N] [--work-dir DIR] [--keep] [--sluice-log-level LEVEL]";

impl Opts {
    fn parse() -> Result<Opts> {
        let mut o = Opts {
            quick: false,
            phases: PHASES.iter().map(|s| s.to_string()).collect(),
            ff_tx: 10_000,
            ff_pace: Duration::from_millis(2),
            fresh_count: 100,
            lookups: 100_000,
            scan_mib: 256,
            work_dir: None,
            keep: false,
            log_level: "info".into(),
        };
        let (mut ff_tx, mut fresh, mut lookups, mut scan) = (None, None, None, None);
        let mut args = std::env::args().skip(1);
        let num = |a: Option<String>, name: &str| -> Result<u64> {
            let v = a.with_context(|| format!("{name} needs a number"))?;
            v.parse().with_context(|| format!("{name} {v}"))
        };
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--keep" => o.keep = true,
                "--phases" => {
                    let v = args.next().context("--phases needs a list")?;
                    o.phases = v.split(',').map(|s| s.trim().to_string()).collect();
                    if let Some(p) = o.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
                        bail!("unknown phase {p:?}: use ff, fresh, read");
                    }
                }
                "--ff-tx" => ff_tx = Some(num(args.next(), "--ff-tx")?),
                "--ff-pace-us" => {
                    o.ff_pace = Duration::from_micros(num(args.next(), "--ff-pace-us")?)
                }
                "--fresh-count" => fresh = Some(num(args.next(), "--fresh-count")?),
                "--lookups" => lookups = Some(num(args.next(), "--lookups")?),
                "--scan-mib" => scan = Some(num(args.next(), "--scan-mib")?),
                "--work-dir" => {
                    o.work_dir = Some(PathBuf::from(
                        args.next().context("--work-dir needs a directory")?,
                    ))
                }
                "--sluice-log-level" => {
                    o.log_level = args.next().context("--sluice-log-level needs a level")?
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} ({USAGE})"),
            }
        }
        if o.quick {
            o.ff_tx = 1_000;
            o.fresh_count = 15;
            o.lookups = 10_000;
            o.scan_mib = 16;
        }
        o.ff_tx = ff_tx.unwrap_or(o.ff_tx);
        o.fresh_count = fresh.unwrap_or(o.fresh_count);
        o.lookups = lookups.unwrap_or(o.lookups);
        o.scan_mib = scan.unwrap_or(o.scan_mib);
        if o.ff_tx < FF_ROWS || o.fresh_count == 0 || o.lookups == 0 || o.scan_mib == 0 {
            bail!(
                "--ff-tx must be at least {FF_ROWS}; --fresh-count, --lookups, --scan-mib positive"
            );
        }
        Ok(o)
    }

    fn has(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

fn sluice_bin() -> Result<PathBuf> {
    let p = match std::env::var_os("SLUICE_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for the current executable")?
            .join("sluice"),
    };
    if !p.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p sluice` (or set SLUICE_BIN)",
            p.display()
        );
    }
    Ok(p)
}

// ---------------------------------------------------------------- the bucket

/// Where the primaries ship: Garage (from `SLUICE_S3_*`) or a directory.
#[derive(Debug, Clone)]
struct Target {
    /// The base URL: a database `NAME` lives at `<base>/NAME`.
    base: String,
    what: String,
}

fn target(work: &Path) -> Target {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let s3 = (|| {
        Some((
            get("SLUICE_S3_ENDPOINT")?,
            get("SLUICE_S3_REGION")?,
            get("SLUICE_S3_BUCKET")?,
            get("AWS_ACCESS_KEY_ID")?,
            get("AWS_SECRET_ACCESS_KEY")?,
        ))
    })();
    match s3 {
        Some((endpoint, region, bucket, _, _)) => {
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let prefix = format!("bench-replica-{n:x}");
            Target {
                base: format!(
                    "s3://{bucket}/{prefix}?endpoint={endpoint}&region={region}&force-path-style=true"
                ),
                what: format!("Garage/S3 at {endpoint}, bucket {bucket}, prefix {prefix}"),
            }
        }
        None => {
            let dir = work.join("bucket");
            Target {
                base: format!("file://{}", dir.display()),
                what: format!(
                    "file:// replica {} (no SLUICE_S3_* in the environment)",
                    dir.display()
                ),
            }
        }
    }
}

impl Target {
    /// The URL of database `name` (query parameters stay at the end).
    fn db_url(&self, name: &str) -> String {
        match self.base.split_once('?') {
            Some((path, q)) => format!("{path}/{name}?{q}"),
            None => format!("{}/{name}", self.base),
        }
    }
}

/// A client of one database's replica, for listing and reading it back.
struct Bucket {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ReplicaStore>,
    layout: s3_backend::Layout,
}

impl Bucket {
    fn open(url: &str) -> Result<Bucket> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let u = ReplicaUrl::parse(url).with_context(|| format!("replica URL {url}"))?;
        let store = rt
            .block_on(u.open(RetryPolicy::default(), Shutdown::never()))
            .context("opening the replica")?;
        Ok(Bucket {
            rt,
            store,
            layout: u.layout(),
        })
    }

    /// The newest TXID at level 0, from the object names.
    fn max_l0(&self) -> Result<u64> {
        let dir = self.layout.level_dir(0);
        let listed = self.rt.block_on(self.store.list(&dir, None))?;
        Ok(listed
            .iter()
            .filter_map(|o| self.layout.parse_ltx_key(&o.key))
            .map(|(_, _, max)| max.0)
            .max()
            .unwrap_or(0))
    }

    /// Every level-0 file with a first TXID above `after` (bundles
    /// expanded), with its page index, read whole from the store.
    fn l0_indexes_after(&self, after: u64) -> Result<Vec<L0File>> {
        let files = self
            .rt
            .block_on(s3_backend::catalogue::list(&self.store, &self.layout))?;
        let mut objects: HashMap<String, Vec<u8>> = HashMap::new();
        let mut bundles: HashMap<String, u64> = HashMap::new();
        let mut out = Vec::new();
        for f in files
            .into_iter()
            .filter(|f| f.level == 0 && f.min.0 > after)
        {
            if !objects.contains_key(&f.key) {
                let body = self.rt.block_on(async {
                    let mut r = self.store.get(&f.key).await?;
                    let mut v = Vec::new();
                    tokio::io::AsyncReadExt::read_to_end(&mut r, &mut v).await?;
                    anyhow::Ok(v)
                })?;
                objects.insert(f.key.clone(), body);
            }
            let body = &objects[&f.key];
            let start = f.at(0) as usize;
            let end = start + f.size as usize;
            let bytes = body
                .get(start..end)
                .with_context(|| format!("{} ends before {}..{end}", f.key, start))?;
            let (_, index) = ltx_format::read_page_index(&mut Cursor::new(bytes))
                .with_context(|| format!("page index of {f}"))?;
            if f.in_bundle.is_some() {
                // Bundle directory: tail (count + magic) and one entry a file.
                *bundles.entry(f.key.clone()).or_insert(12) += 32;
            }
            out.push(L0File {
                max: f.max.0,
                index_bytes: index.encode().len() as u64,
                entries: index.entries.iter().map(|e| (e.pgno, e.size)).collect(),
                file_bytes: f.size,
                bundle_dir_bytes: 0,
            });
        }
        let dir_bytes = bundles.values().sum();
        if let Some(first) = out.first_mut() {
            first.bundle_dir_bytes = dir_bytes;
        }
        Ok(out)
    }
}

#[derive(Debug, Default)]
struct L0File {
    max: u64,
    index_bytes: u64,
    /// (page number, stored frame size).
    entries: Vec<(u32, u64)>,
    file_bytes: u64,
    /// Only on the first file: the bundle directories of all of them.
    bundle_dir_bytes: u64,
}

// ---------------------------------------------------------------- processes

/// SIGTERM, then a bounded wait; SIGKILL if it does not exit. The exit
/// code, `None` when killed.
fn terminate(c: &mut Child, limit: Duration) -> Option<i32> {
    signal(c, "-TERM");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = c.try_wait() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
    None
}

fn read_log(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn log_tail(p: &Path) -> String {
    let t = read_log(p);
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `sluice replicate --config` for one database, stopped on drop.
struct Primary {
    child: Option<Child>,
    db: PathBuf,
    log: PathBuf,
    bucket: Bucket,
}

impl Primary {
    fn start(bin: &Path, db: &Path, url: &str, level: &str) -> Result<Primary> {
        let config = db.with_extension("yml");
        std::fs::write(
            &config,
            format!(
                "dbs:\n  - path: {}\n    sync-interval: {PRIMARY_SYNC}\n    replicas:\n      - url: {url}\n",
                db.display()
            ),
        )?;
        let log = db.with_extension("replicate.log");
        let f = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args(["replicate", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut p = Primary {
            child: Some(child),
            db: db.to_path_buf(),
            log,
            bucket: Bucket::open(url)?,
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        while !read_log(&p.log).contains("capturing") {
            if let Some(Ok(Some(s))) = p.child.as_mut().map(|c| c.try_wait()) {
                bail!("sluice replicate exited ({s}); log:\n{}", log_tail(&p.log));
            }
            if Instant::now() > deadline {
                bail!("sluice replicate not capturing after 600 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }

    /// The staged position: (TXID, checksum).
    fn position(&self) -> (u64, String) {
        let name = self
            .db
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let staging = self
            .db
            .with_file_name(format!(".{}-sluice", name.unwrap_or_default()));
        std::fs::read(staging.join("position.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| {
                (
                    v["txid"].as_u64().unwrap_or(0),
                    v["checksum"].as_str().unwrap_or_default().to_string(),
                )
            })
            .unwrap_or_default()
    }

    /// Waits (bounded) until the last commit is staged and its TXID is
    /// listed at level 0; returns the TXID.
    fn settle(&self, limit: Duration) -> Result<u64> {
        let deadline = Instant::now() + limit;
        let mut last = (0, Instant::now());
        loop {
            // The staged TXID stops moving once every commit is captured
            // (the writers are done when this is called).
            let t = self.position().0;
            if t != last.0 {
                last = (t, Instant::now());
            } else if t > 0
                && last.1.elapsed() > Duration::from_millis(500)
                && self.bucket.max_l0()? >= t
            {
                return Ok(t);
            }
            if Instant::now() > deadline {
                bail!(
                    "the primary did not settle within {limit:?} (staged {t}); log:\n{}",
                    log_tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = terminate(&mut c, Duration::from_secs(60));
        }
    }
}

/// A `sluice replica` process and its mount, taken down on drop.
struct Replica {
    child: Option<Child>,
    mnt: PathBuf,
    name: String,
    log: PathBuf,
    metrics_addr: String,
    started: Instant,
}

impl Replica {
    #[allow(clippy::too_many_arguments)]
    fn start(
        bin: &Path,
        base: &str,
        mnt: &Path,
        name: &str,
        poll: &str,
        cache: &Path,
        level: &str,
        limit: Duration,
    ) -> Result<Replica> {
        std::fs::create_dir_all(mnt)?;
        let mnt = mnt.canonicalize()?;
        let log = mnt.with_extension("log");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let started = Instant::now();
        let child = Command::new(bin)
            .arg("replica")
            .arg(base)
            .arg(&mnt)
            .args(["--db", name, "--poll-interval", poll, "--cache-dir"])
            .arg(cache)
            .args(["--metrics-addr", &metrics_addr])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut r = Replica {
            child: Some(child),
            mnt,
            name: name.into(),
            log,
            metrics_addr,
            started,
        };
        let deadline = Instant::now() + limit;
        while !(is_mounted(&r.mnt) && r.db().exists()) {
            if let Some(Ok(Some(s))) = r.child.as_mut().map(|c| c.try_wait()) {
                bail!("sluice replica exited ({s}); log:\n{}", log_tail(&r.log));
            }
            if Instant::now() > deadline {
                bail!(
                    "replica not served after {limit:?}; log:\n{}",
                    log_tail(&r.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(r)
    }

    fn db(&self) -> PathBuf {
        self.mnt.join(&self.name)
    }

    /// `NAME-pos`: (TXID, checksum).
    fn pos(&self) -> Result<(u64, String)> {
        let t = std::fs::read_to_string(self.mnt.join(format!("{}-pos", self.name)))?;
        let (txid, sum) = t.trim().split_once('/').context("malformed -pos")?;
        Ok((u64::from_str_radix(txid, 16)?, sum.to_string()))
    }

    /// Waits (bounded) until the replica serves `txid`; time since start.
    fn wait_txid(&self, txid: u64, limit: Duration) -> Result<Duration> {
        let deadline = Instant::now() + limit;
        loop {
            let p = self.pos()?.0;
            if p == txid {
                return Ok(self.started.elapsed());
            }
            if Instant::now() > deadline {
                bail!(
                    "the replica serves {p:x}, not {txid:x}, after {limit:?}; log:\n{}",
                    log_tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn metrics(&self) -> Result<Metrics> {
        let text = http_get(&self.metrics_addr, "/metrics");
        if !text.starts_with("HTTP/1.1 200") {
            bail!("GET /metrics: {text}");
        }
        let m = |name: &str| -> Result<u64> {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .map(|v| v as u64)
                .with_context(|| format!("no metric {name}"))
        };
        Ok(Metrics {
            gets: m("sluice_replica_get_requests_total")?,
            lists: m("sluice_replica_list_requests_total")?,
            bytes: m("sluice_replica_bytes_fetched_total")?,
            steps: m("sluice_replica_steps_total")?,
            pages: m("sluice_replica_pages_applied_total")?,
            restores: m("sluice_replica_restores_total")?,
        })
    }

    /// SIGTERM: must exit 0 and leave no mount.
    fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let code = terminate(&mut c, Duration::from_secs(60));
            if code != Some(0) {
                bail!(
                    "sluice replica exited {code:?}; log:\n{}",
                    log_tail(&self.log)
                );
            }
        }
        unmount(&self.mnt);
        if is_mounted(&self.mnt) {
            bail!("{} still mounted", self.mnt.display());
        }
        Ok(())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = terminate(&mut c, Duration::from_secs(30));
        }
        unmount(&self.mnt);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Metrics {
    gets: u64,
    lists: u64,
    bytes: u64,
    steps: u64,
    pages: u64,
    restores: u64,
}

fn open_primary(db: &Path) -> Result<Connection> {
    let c = Connection::open(db)?;
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    c.execute_batch("PRAGMA synchronous=NORMAL;")?;
    c.busy_timeout(Duration::from_secs(10))?;
    Ok(c)
}

fn open_ro(db: &Path) -> Result<Connection> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", db.display()))?;
    c.busy_timeout(Duration::from_secs(10))?;
    Ok(c)
}

/// Every row of `sql` (one text column per row), for comparing databases.
fn rows(db: &Path, sql: &str) -> Result<Vec<String>> {
    let c = open_ro(db)?;
    let mut st = c.prepare(sql)?;
    let v = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(v)
}

// ---------------------------------------------------------------- ff + fresh

#[derive(Debug, Default)]
struct FfResult {
    db_bytes: u64,
    first_start: Metrics,
    stopped_at: u64,
    tx: u64,
    tx_secs: f64,
    txids: u64,
    settle_secs: f64,
    catch_up_secs: f64,
    m: Metrics,
    files: u64,
    file_bytes: u64,
    distinct_pages: usize,
    pages_newest: u64,
    index_bytes: u64,
    bundle_dir_bytes: u64,
    same: bool,
    pos_match: String,
}

impl FfResult {
    fn ideal(&self) -> u64 {
        self.pages_newest + self.index_bytes
    }
}

#[derive(Debug, Default, Clone)]
struct FreshResult {
    poll: String,
    poll_ms: f64,
    n: usize,
    /// Rows later than the target.
    over: usize,
    missing: usize,
    p50: f64,
    p99: f64,
    max: f64,
    delayed: u64,
}

struct FfEnv {
    primary: Primary,
    replica: Option<Replica>,
    cache: PathBuf,
    mnt: PathBuf,
}

impl FfEnv {
    /// Starts (or resumes, from its cache) the replica of the primary's
    /// database, polling every `poll`.
    fn start_replica(&self, o: &Opts, bin: &Path, t: &Target, poll: &str) -> Result<Replica> {
        Replica::start(
            bin,
            &t.base,
            &self.mnt,
            DB,
            poll,
            &self.cache,
            &o.log_level,
            Duration::from_secs(300),
        )
    }
}

fn ff_setup(o: &Opts, bin: &Path, work: &Path, t: &Target) -> Result<FfEnv> {
    let dir = work.join("ff");
    std::fs::create_dir_all(&dir)?;
    let db = dir.join(DB);
    {
        let c = open_primary(&db)?;
        c.execute_batch(&format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
             CREATE TABLE fresh(id INTEGER PRIMARY KEY, t INTEGER NOT NULL);
             CREATE TABLE filler(b BLOB);
             BEGIN;
             WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM r WHERE i < {FF_ROWS})
               INSERT INTO t SELECT i, randomblob({FF_ROW_BYTES}) FROM r;
             WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM r WHERE i < 1000)
               INSERT INTO filler SELECT randomblob(4000) FROM r;
             COMMIT;
             PRAGMA wal_checkpoint(TRUNCATE);"
        ))?;
    }
    let primary = Primary::start(bin, &db, &t.db_url(DB), &o.log_level)?;
    Ok(FfEnv {
        primary,
        replica: None,
        cache: dir.join("cache"),
        mnt: dir.join("mnt"),
    })
}

fn ff_phase(o: &Opts, bin: &Path, t: &Target, e: &mut FfEnv) -> Result<FfResult> {
    let mut r = FfResult::default();
    let t0 = e.primary.settle(Duration::from_secs(300))?;
    let rep = e.start_replica(o, bin, t, "1s")?;
    rep.wait_txid(t0, Duration::from_secs(300))?;
    r.first_start = rep.metrics()?;
    r.db_bytes = std::fs::metadata(rep.db())?.len();
    r.stopped_at = rep.pos()?.0;
    let mut rep = rep;
    rep.stop()?;
    eprintln!(
        "  replica caught up at {:x} ({:.1} MiB database, {} bytes fetched) and stopped",
        r.stopped_at,
        r.db_bytes as f64 / MIB,
        r.first_start.bytes
    );

    // N transactions, each rewriting one row (= one leaf page), round robin.
    let c = open_primary(&e.primary.db)?;
    let before = e.primary.position().0;
    let t1 = Instant::now();
    {
        let mut st = c.prepare("UPDATE t SET v = randomblob(?1) WHERE id = ?2")?;
        for i in 0..o.ff_tx {
            st.execute(rusqlite::params![
                FF_ROW_BYTES as i64,
                (i % FF_ROWS + 1) as i64
            ])?;
            std::thread::sleep(o.ff_pace);
            if t1.elapsed() > Duration::from_secs(600) {
                bail!("{i} transactions took more than 600 s");
            }
        }
    }
    r.tx = o.ff_tx;
    r.tx_secs = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let last = e.primary.settle(Duration::from_secs(600))?;
    r.settle_secs = t2.elapsed().as_secs_f64();
    r.txids = last - before;
    eprintln!(
        "  {} transactions in {:.1} s ({} TXIDs); uploaded {:.1} s later",
        r.tx, r.tx_secs, r.txids, r.settle_secs
    );

    // One fast-forward from the cache.
    let rep = e.start_replica(o, bin, t, "1s")?;
    r.catch_up_secs = rep.wait_txid(last, Duration::from_secs(600))?.as_secs_f64();
    r.m = rep.metrics()?;
    let (rep_txid, rep_sum) = rep.pos()?;
    let (pri_txid, pri_sum) = e.primary.position();
    r.pos_match = format!(
        "replica {rep_txid:x}/{rep_sum}, primary {pri_txid:x}/{pri_sum}{}",
        if rep_sum.trim_start_matches("0x") == pri_sum.trim_start_matches("0x") {
            " (same checksum)"
        } else {
            ""
        }
    );
    let q = "SELECT id || ':' || hex(v) FROM t ORDER BY id";
    r.same = rows(&rep.db(), q)? == rows(&e.primary.db, q)?;
    e.replica = Some(rep);

    // The ideal, from the files themselves.
    let files = e.primary.bucket.l0_indexes_after(r.stopped_at)?;
    r.files = files.len() as u64;
    r.file_bytes = files.iter().map(|f| f.file_bytes).sum();
    r.index_bytes = files.iter().map(|f| f.index_bytes).sum();
    r.bundle_dir_bytes = files.iter().map(|f| f.bundle_dir_bytes).sum();
    let mut newest: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for f in &files {
        for &(pgno, size) in &f.entries {
            let n = newest.entry(pgno).or_insert((0, 0));
            if f.max >= n.0 {
                *n = (f.max, size);
            }
        }
    }
    r.distinct_pages = newest.len();
    r.pages_newest = newest.values().map(|v| v.1).sum();
    Ok(r)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn parse_ms(poll: &str) -> f64 {
    if let Some(v) = poll.strip_suffix("ms") {
        v.parse().unwrap_or(0.0)
    } else if let Some(v) = poll.strip_suffix('s') {
        v.parse::<f64>().unwrap_or(0.0) * 1000.0
    } else {
        0.0
    }
}

/// The freshness phase's reader: polls `max(id)` on the replica every 5 ms
/// and records when each of the `n` rows from `first` became visible.
/// Bounded: the writer's longest time plus 30 s, and 15 s after `done`.
fn spawn_reader(
    db: PathBuf,
    first: i64,
    n: usize,
    seen: Arc<Mutex<Vec<Option<Instant>>>>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || -> Result<()> {
        let c = open_ro(&db)?;
        let mut st = c.prepare("SELECT coalesce(max(id), 0) FROM fresh")?;
        let (mut have, last) = (first - 1, first + n as i64 - 1);
        let deadline = Instant::now() + Duration::from_millis(300 * n as u64 + 30_000);
        let mut done_at: Option<Instant> = None;
        while have < last && Instant::now() < deadline {
            let max: i64 = st.query_row([], |r| r.get(0))?;
            let now = Instant::now();
            if max > have {
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                for id in have + 1..=max {
                    if let Some(slot) = s.get_mut((id - first) as usize) {
                        *slot = Some(now);
                    }
                }
                have = max;
            }
            if done.load(Ordering::Relaxed) {
                let at = *done_at.get_or_insert(now);
                if at.elapsed() > Duration::from_secs(15) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })
}

fn fresh_phase(
    o: &Opts,
    bin: &Path,
    t: &Target,
    e: &mut FfEnv,
    poll: &str,
    seed: u64,
) -> Result<FreshResult> {
    if let Some(mut r) = e.replica.take() {
        r.stop()?;
    }
    let settled = e.primary.settle(Duration::from_secs(300))?;
    let rep = e.start_replica(o, bin, t, poll)?;
    rep.wait_txid(settled, Duration::from_secs(300))?;
    let w = open_primary(&e.primary.db)?;
    let first: i64 = w.query_row("SELECT coalesce(max(id), 0) + 1 FROM fresh", [], |r| {
        r.get(0)
    })?;
    let n = o.fresh_count as usize;
    let commits: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let seen: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let done = Arc::new(AtomicBool::new(false));
    let reader = spawn_reader(rep.db(), first, n, seen.clone(), done.clone());
    let mut rng = XorShift64::new(seed);
    let t_start = Instant::now();
    eprintln!("  writer starts at {}", unix_now());
    let write = (|| -> Result<()> {
        let mut st = w.prepare("INSERT INTO fresh(id, t) VALUES (?1, ?2)")?;
        for i in 0..n {
            std::thread::sleep(Duration::from_millis(150 + rng.below(151)));
            let now_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64);
            st.execute(rusqlite::params![first + i as i64, now_ns])?;
            commits.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(Instant::now());
        }
        Ok(())
    })();
    done.store(true, Ordering::Relaxed);
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
    write?;
    read?;
    let commits = commits.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let limit = parse_ms(poll) + 150.0;
    let mut lat = Vec::new();
    let mut over = 0;
    for (i, (c, s)) in commits.iter().zip(&seen).enumerate() {
        let (Some(c), Some(s)) = (c, s) else { continue };
        let ms = s.saturating_duration_since(*c).as_secs_f64() * 1e3;
        if ms > limit {
            over += 1;
            eprintln!(
                "  row {} (commit {:.1} s into the run): visible after {ms:.0} ms",
                first + i as i64,
                c.saturating_duration_since(t_start).as_secs_f64()
            );
        }
        lat.push(ms);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let delayed = delayed_steps(&rep).unwrap_or(0);
    e.replica = Some(rep);
    Ok(FreshResult {
        poll: poll.into(),
        poll_ms: parse_ms(poll),
        n: lat.len(),
        over,
        missing: n - lat.len(),
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        max: lat.last().copied().unwrap_or(f64::NAN),
        delayed,
    })
}

/// Wall-clock time, to find a moment in the daemons' logs.
fn unix_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03} (unix)", d.as_secs(), d.subsec_millis())
}

fn delayed_steps(r: &Replica) -> Result<u64> {
    let text = http_get(&r.metrics_addr, "/metrics");
    text.lines()
        .find(|l| l.starts_with("sluice_replica_steps_delayed_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .context("no sluice_replica_steps_delayed_total")
}

// ---------------------------------------------------------------- read

#[derive(Debug, Default)]
struct ReadResult {
    db_bytes: u64,
    build_secs: f64,
    ship_secs: f64,
    restore_secs: f64,
    restore_bytes: u64,
    same: bool,
    dropped: bool,
    /// (replica?, queries/s) per lookup run.
    lookups: Vec<(bool, f64)>,
    /// (replica?, cold?, MiB/s) per scan.
    scans: Vec<(bool, bool, f64)>,
}

fn mean<I: Iterator<Item = f64>>(i: I) -> f64 {
    let v: Vec<f64> = i.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl ReadResult {
    fn lookup(&self, replica: bool) -> f64 {
        mean(self.lookups.iter().filter(|l| l.0 == replica).map(|l| l.1))
    }
    fn scan(&self, replica: bool, cold: bool) -> f64 {
        mean(
            self.scans
                .iter()
                .filter(|s| s.0 == replica && s.1 == cold)
                .map(|s| s.2),
        )
    }
}

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn scan(db: &Path, rows: u64, bytes: u64) -> Result<f64> {
    let t0 = Instant::now();
    let c = open_ro(db)?;
    let (n, sum): (u64, u64) = c.query_row("SELECT count(*), sum(length(v)) FROM t", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    let elapsed = t0.elapsed();
    if n != rows || sum != rows * SCAN_ROW_BYTES {
        bail!(
            "{}: scanned {n} rows, {sum} bytes; expected {rows}",
            db.display()
        );
    }
    Ok(bytes as f64 / MIB / elapsed.as_secs_f64().max(1e-9))
}

fn lookups(db: &Path, rows: u64, n: u64, seed: u64) -> Result<f64> {
    let c = open_ro(db)?;
    let mut st = c.prepare("SELECT length(v) FROM t WHERE id = ?1")?;
    let mut rng = XorShift64::new(seed);
    let t0 = Instant::now();
    for _ in 0..n {
        let id = 1 + rng.below(rows) as i64;
        let len: i64 = st.query_row([id], |r| r.get(0))?;
        if len != SCAN_ROW_BYTES as i64 {
            bail!("row {id}: length {len}");
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("lookups took more than 600 s");
        }
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64().max(1e-9))
}

/// Byte for byte, except the header fields a replica rewrites: file format
/// versions (18-19), change counter (24-27) and version-valid-for (92-95).
fn same_database(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0usize;
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
        if off == 0 {
            for i in [18, 19, 24, 25, 26, 27, 92, 93, 94, 95] {
                if i < n {
                    ba[i] = 0;
                    bb[i] = 0;
                }
            }
        }
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        off += n;
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

fn read_phase(o: &Opts, bin: &Path, work: &Path, t: &Target) -> Result<ReadResult> {
    let dir = work.join("read");
    std::fs::create_dir_all(&dir)?;
    let db = dir.join(READ_DB);
    let rows = o.scan_mib * SCAN_ROWS_PER_MIB;
    let mut r = ReadResult::default();
    let t0 = Instant::now();
    {
        let c = Connection::open(&db)?;
        c.execute_batch(&format!(
            "PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
             BEGIN;
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows})
             INSERT INTO t(v) SELECT randomblob({SCAN_ROW_BYTES}) FROM c;
             COMMIT;"
        ))?;
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    }
    r.build_secs = t0.elapsed().as_secs_f64();
    r.db_bytes = std::fs::metadata(&db)?.len();
    eprintln!(
        "  built {:.1} MiB in {:.1} s; shipping",
        r.db_bytes as f64 / MIB,
        r.build_secs
    );
    let t1 = Instant::now();
    let primary = Primary::start(bin, &db, &t.db_url(READ_DB), &o.log_level)?;
    let txid = primary.settle(Duration::from_secs(1200))?;
    r.ship_secs = t1.elapsed().as_secs_f64();
    let mut rep = Replica::start(
        bin,
        &t.base,
        &dir.join("mnt"),
        READ_DB,
        "1s",
        &dir.join("cache"),
        &o.log_level,
        Duration::from_secs(1200),
    )?;
    r.restore_secs = rep
        .wait_txid(txid, Duration::from_secs(1200))?
        .as_secs_f64();
    r.restore_bytes = rep.metrics()?.bytes;
    eprintln!(
        "  shipped in {:.1} s; a fresh replica restored it in {:.1} s",
        r.ship_secs, r.restore_secs
    );
    let local = dir.join("local").join(READ_DB);
    std::fs::create_dir_all(dir.join("local"))?;
    std::fs::copy(rep.db(), &local)?;
    r.same = same_database(&local, &db)?;
    let rdb = rep.db();
    r.dropped = true;
    for (i, on_replica) in [false, true, true, false].into_iter().enumerate() {
        let p = if on_replica { &rdb } else { &local };
        let cold = r.scans.last().is_none_or(|s| s.0 != on_replica);
        if cold {
            r.dropped &= drop_caches();
        }
        let c = scan(p, rows, r.db_bytes)?;
        let w = scan(p, rows, r.db_bytes)?;
        // Only the first scan of a pair on one target runs cold.
        r.scans.push((on_replica, cold, c));
        r.scans.push((on_replica, false, w));
        let q = lookups(p, rows, o.lookups, 0x100c + i as u64)?;
        r.lookups.push((on_replica, q));
        eprintln!(
            "  {:<7} scan {} {c:.0} MiB/s, warm {w:.0} MiB/s; {q:.0} lookups/s",
            if on_replica { "replica" } else { "local" },
            if cold { "cold" } else { "warm" }
        );
    }
    rep.stop()?;
    drop(primary);
    Ok(r)
}

// ---------------------------------------------------------------- report

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn met(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "NOT MET"
    }
}

fn print_ff(o: &Opts, r: &FfResult) {
    let ideal = r.ideal();
    let ratio = r.m.bytes as f64 / ideal.max(1) as f64;
    println!(
        "fast-forward: {} transactions (1 row of {FF_ROW_BYTES} B each, round robin over {FF_ROWS} rows, {} us apart) on a {:.1} MiB database while the replica was stopped; {} TXIDs ({:.1} s to commit, uploaded {:.1} s after)",
        r.tx,
        o.ff_pace.as_micros(),
        r.db_bytes as f64 / MIB,
        r.txids,
        r.tx_secs,
        r.settle_secs
    );
    println!(
        "  files after the replica's position {:x}: {} L0 files, {:.1} KiB; distinct pages changed: {}",
        r.stopped_at,
        r.files,
        r.file_bytes as f64 / 1024.0,
        r.distinct_pages
    );
    println!(
        "  ideal: newest stored frame of each page {} B (LZ4 blocks + 10-byte frame prefixes, as stored) + page indexes {} B = {} B",
        r.pages_newest, r.index_bytes, ideal
    );
    println!(
        "  (not in the ideal: bundle directories {} B, LTX headers and trailers)",
        r.bundle_dir_bytes
    );
    println!(
        "  replica restart (resume from cache, one fast-forward): fetched {} B in {} GETs and {} LISTs, {} steps, {} pages applied, {} restores; caught up {:.2} s after start",
        r.m.bytes, r.m.gets, r.m.lists, r.m.steps, r.m.pages, r.m.restores, r.catch_up_secs
    );
    println!(
        "  bytes fetched / ideal = {ratio:.2}  target <= 1.2: {}",
        met(ratio <= 1.2)
    );
    println!(
        "  first start (full restore of the database): {} B, {} GETs, {} LISTs",
        r.first_start.bytes, r.first_start.gets, r.first_start.lists
    );
    println!(
        "  replica = primary (rows of t): {}; positions: {}",
        if r.same { "yes" } else { "NO" },
        r.pos_match
    );
}

fn print_fresh(v: &[FreshResult]) {
    println!(
        "freshness: commit on the primary (sync-interval {PRIMARY_SYNC}, one row every 150-300 ms) -> visible to a reader of the replica (SELECT max(id) every 5 ms):"
    );
    println!(
        "  {:<6} {:>6} {:>9} {:>9} {:>9} {:>7}  target",
        "poll", "rows", "p50 ms", "p99 ms", "max ms", "late"
    );
    for f in v {
        let limit = f.poll_ms + 150.0;
        println!(
            "  {:<6} {:>6} {:>9.0} {:>9.0} {:>9.0} {:>7}  p99 <= {limit:.0} ms: {}{}{}",
            f.poll,
            f.n,
            f.p50,
            f.p99,
            f.max,
            f.over,
            met(f.p99 <= limit && f.missing == 0),
            if f.missing > 0 {
                format!(" ({} rows never seen)", f.missing)
            } else {
                String::new()
            },
            if f.delayed > 0 {
                format!(" ({} delayed steps)", f.delayed)
            } else {
                String::new()
            }
        );
    }
}

fn print_read(o: &Opts, r: &ReadResult) {
    println!(
        "read speed: {:.1} MiB table of {SCAN_ROW_BYTES}-byte rows (built in {:.1} s, shipped in {:.1} s, a fresh replica restored it in {:.1} s fetching {:.1} MiB); replica file = primary file (header fields aside): {}{}",
        r.db_bytes as f64 / MIB,
        r.build_secs,
        r.ship_secs,
        r.restore_secs,
        r.restore_bytes as f64 / MIB,
        if r.same { "yes" } else { "NO" },
        if r.dropped { "" } else { "; CACHES NOT DROPPED (not root?): cold = warm" }
    );
    let (ll, lr) = (r.lookup(false), r.lookup(true));
    println!(
        "  {:<28} {:>12} {:>12} {:>9}  target",
        "", "local", "replica", "ratio"
    );
    println!(
        "  {:<28} {:>8.0} q/s {:>8.0} q/s {:>9.2}  >= 0.7: {}",
        format!("point lookups ({} random)", o.lookups),
        ll,
        lr,
        lr / ll.max(1e-9),
        met(lr / ll.max(1e-9) >= 0.7)
    );
    for (name, cold) in [("scan, cold", true), ("scan, warm", false)] {
        let (a, b) = (r.scan(false, cold), r.scan(true, cold));
        println!(
            "  {:<28} {:>6.0} MiB/s {:>6.0} MiB/s {:>9.2}",
            name,
            a,
            b,
            b / a.max(1e-9)
        );
    }
    println!(
        "  (order local, replica, replica, local; each a cold and a warm scan, then the lookups)"
    );
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

#[derive(Default)]
struct Results {
    ff: Option<FfResult>,
    fresh: Vec<FreshResult>,
    read: Option<ReadResult>,
}

fn run_all(o: &Opts, bin: &Path, work: &Path, t: &Target) -> Result<Results> {
    let mut res = Results::default();
    let t0 = Instant::now();
    let say = |name: &str| {
        eprintln!(
            "== {name} (+{:.0} s, load {})",
            t0.elapsed().as_secs_f64(),
            loadavg()
        )
    };
    if o.has("ff") || o.has("fresh") {
        say("primary for ff/fresh");
        let mut e = ff_setup(o, bin, work, t)?;
        if o.has("ff") {
            say("fast-forward");
            res.ff = Some(ff_phase(o, bin, t, &mut e)?);
        }
        if o.has("fresh") {
            for (i, poll) in ["1s", "100ms"].into_iter().enumerate() {
                say(&format!("freshness, poll interval {poll}"));
                let f = fresh_phase(o, bin, t, &mut e, poll, 0xf7e5 + i as u64)?;
                eprintln!(
                    "  p50 {:.0} ms, p99 {:.0} ms over {} rows",
                    f.p50, f.p99, f.n
                );
                res.fresh.push(f);
            }
        }
        if let Some(mut r) = e.replica.take() {
            r.stop()?;
        }
    }
    if o.has("read") {
        say("read speed");
        res.read = Some(read_phase(o, bin, work, t)?);
    }
    say("done");
    Ok(res)
}

fn main() -> Result<()> {
    let started = Instant::now();
    let o = Opts::parse()?;
    let bin = sluice_bin()?;
    let (work, tmp) = integration::work_dir(o.work_dir.as_deref(), "sluice-bench-replica.")?;
    let load0 = loadavg();
    // The script passes the tree it built; run by hand, the current one.
    let tree = std::env::var("SLUICE_TREE")
        .unwrap_or_else(|_| cmd_out("git", &["describe", "--always", "--dirty"]));
    let machine = format!(
        "{} cores (nproc {}), kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cmd_out("nproc", &[]),
        cmd_out("uname", &["-r"])
    );
    let t = target(&work);
    println!("bench_replica: sluice tree {tree}; {machine}; load average {load0}");
    println!("  replica store: {}", t.what);
    println!("  sluice {}, work dir {}", bin.display(), work.display());
    let result = run_all(&o, &bin, &work, &t);
    if o.keep {
        if let Some(tmp) = tmp {
            eprintln!("kept {}", tmp.keep().display());
        }
    } else if o.work_dir.is_some() {
        for sub in ["ff", "read", "bucket"] {
            let _ = std::fs::remove_dir_all(work.join(sub));
        }
    }
    let r = result?;
    println!();
    println!(
        "sluice replica benchmark, one run{}; {machine}; load average {load0} at the start, {} at the end; total {:.0} s; store: {}",
        if o.quick { "; QUICK MODE (small sizes)" } else { "" },
        loadavg(),
        started.elapsed().as_secs_f64(),
        t.what
    );
    if let Some(f) = &r.ff {
        print_ff(&o, f);
    }
    if !r.fresh.is_empty() {
        print_fresh(&r.fresh);
    }
    if let Some(rd) = &r.read {
        print_read(&o, rd);
    }
    Ok(())
}
