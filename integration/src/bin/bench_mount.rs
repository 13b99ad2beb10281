//! Mount benchmark (issue 12): one-row transactions through a `sluice mount`
//! (capture on, replicating to a `file://` replica), through bindfs (a plain
//! FUSE passthrough) and on the raw directory, in one run; the read speed of
//! a full table scan through the mount against the raw directory; and the
//! number of replica objects after a bulk load of one-row transactions.
//! Prints the figures and their ratios. A program, not a test: it asserts
//! nothing about speed.
//!
//! Run it with `integration/scripts/bench-mount.sh`, which builds the release
//! binaries and calls this program. Needs root-less FUSE or root,
//! `fusermount3` (Debian `fuse3`) and `bindfs` (Debian `bindfs`).
//!
//! Environment: `SLUICE_BIN` (default: `sluice` beside this program).
//!
//! Options: `--quick` (a short smoke run with small sizes), `--phases
//! tx,scan,bulk` (a subset), `--duration SECS` (time per target and journal
//! mode, default 10), `--count N` (instead: transactions per target and mode),
//! `--rounds N` (rounds the time or count is cut into, default 5),
//! `--scan-mib N` (default 256), `--bulk N` (default 100000), `--work-dir DIR`
//! (default: a temporary directory), `--catch-up-secs N` (how long to wait
//! for the replica, default 900), `--sluice-log-level LEVEL` (default
//! info), `--keep` (leave the work directory).
//!
//! How each figure is measured:
//! - transactions: per target a rusqlite connection to a new database
//!   inserts one 100-byte blob per transaction (autocommit) in a tight loop.
//!   The time (or count) is cut into rounds; each round runs the targets in
//!   the order raw, bindfs, Sluice, Sluice, bindfs, raw, each for a slice of
//!   a sixth of the round (the connections stay open between slices), so
//!   a linear drift of the machine within a round cancels and every target
//!   meets the disk in the same state: on this machine the latency of a
//!   flush moves several-fold within seconds, and one long run per target
//!   measured mostly when it ran. Each target's figure is its transactions
//!   over its time; the spread of the per-round ratios is printed too. WAL
//!   mode with `synchronous=NORMAL`, DELETE mode with `synchronous=FULL`.
//!   Before each raw or bindfs slice the program waits until Sluice has
//!   used no CPU for 200 ms (at most 5 s), so that Sluice's background
//!   work (flushing, uploads to the `file://` replica, compaction) does
//!   not run in another target's slice; on this VM a busy CPU makes
//!   bindfs faster. `--rounds 1` is the earlier order, each
//!   target's time in two halves. After the runs Sluice is stopped and the
//!   TXIDs it staged are counted: every transaction must be one TXID
//!   (capture really was on).
//! - scan: a table of 1000-byte random blobs (4 rows a page, no overflow
//!   pages) built on the raw directory before the mount starts; `SELECT
//!   sum(length(v)) FROM t` through a fresh connection reads every leaf page.
//!   Cold: after `sync; echo 3 > /proc/sys/vm/drop_caches` (root); warm: the
//!   same scan again at once. Raw then Sluice, then Sluice then raw; MiB/s is
//!   the database file's size over the scan's time, averaged.
//! - bulk load: N one-row transactions (WAL, `synchronous=NORMAL`) through
//!   the mount as fast as they go; then wait (bounded) until the replica's
//!   newest TXID reaches the newest staged one, stop Sluice with SIGTERM
//!   (which drains), and count the files under the replica directory.
//!
//! Every mount is a guard: dropping it (on error or panic too) stops its
//! daemon and unmounts (`fusermount3 -u`, lazily if busy).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use integration::mount::{is_mounted, signal, unmount};
use integration::XorShift64;
use rusqlite::{Connection, OpenFlags};

const ROW_BYTES: usize = 100;
const SCAN_ROW_BYTES: u64 = 1000;
/// 1000-byte rows fit four to a 4096-byte page.
const SCAN_ROWS_PER_MIB: u64 = 256 * 4;
const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    phases: Vec<String>,
    duration: Duration,
    count: Option<u64>,
    /// Rounds the transaction time (or count) is cut into.
    rounds: u32,
    scan_mib: u64,
    bulk: u64,
    work_dir: Option<PathBuf>,
    sluice_log_level: String,
    keep: bool,
    /// How long to wait for the replica to catch up before giving up.
    catch_up_limit: Duration,
}

const PHASES: [&str; 3] = ["tx", "scan", "bulk"];
const USAGE: &str = "usage: bench_mount [--quick] [--phases tx,scan,bulk] [--duration SECS] [--count N] [--rounds N] [--scan-mib N] [--bulk N] [--catch-up-secs N] [--work-dir DIR] [--sluice-log-level LEVEL] [--keep]";

impl Opts {
    fn parse() -> Result<Opts> {
        let mut o = Opts {
            quick: false,
            phases: PHASES.iter().map(|s| s.to_string()).collect(),
            duration: Duration::from_secs(10),
            count: None,
            rounds: 5,
            scan_mib: 256,
            bulk: 100_000,
            work_dir: None,
            sluice_log_level: "info".into(),
            keep: false,
            catch_up_limit: Duration::from_secs(900),
        };
        let (mut duration, mut scan_mib, mut bulk) = (None, None, None);
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
                        bail!("unknown phase {p:?}: use tx, scan, bulk");
                    }
                }
                "--duration" => duration = Some(num(args.next(), "--duration")?),
                "--count" => o.count = Some(num(args.next(), "--count")?),
                "--rounds" => {
                    o.rounds = u32::try_from(num(args.next(), "--rounds")?)
                        .context("--rounds is too large")?
                }
                "--scan-mib" => scan_mib = Some(num(args.next(), "--scan-mib")?),
                "--bulk" => bulk = Some(num(args.next(), "--bulk")?),
                "--catch-up-secs" => {
                    o.catch_up_limit = Duration::from_secs(num(args.next(), "--catch-up-secs")?)
                }
                "--work-dir" => {
                    o.work_dir = Some(PathBuf::from(
                        args.next().context("--work-dir needs a directory")?,
                    ))
                }
                "--sluice-log-level" => {
                    o.sluice_log_level = args.next().context("--sluice-log-level needs a level")?;
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} ({USAGE})"),
            }
        }
        if o.quick {
            o.duration = Duration::from_secs(1);
            o.scan_mib = 16;
            o.bulk = 2_000;
        }
        if let Some(d) = duration {
            o.duration = Duration::from_secs(d);
        }
        if let Some(m) = scan_mib {
            o.scan_mib = m;
        }
        if let Some(b) = bulk {
            o.bulk = b;
        }
        if o.count == Some(0)
            || o.duration.is_zero()
            || o.rounds == 0
            || o.scan_mib == 0
            || o.bulk == 0
        {
            bail!("--duration, --count, --rounds, --scan-mib and --bulk must be positive");
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

// ---------------------------------------------------------------- mounts

/// Waits (bounded) for `child` to exit: its exit code, `None` if it was
/// killed by a signal or did not exit in time.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<Option<i32>> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s.code());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A FUSE mount that is always taken down: `bindfs SRC MNT` or `sluice
/// mount DATA MNT file://REPLICA`.
#[derive(Debug)]
struct Mount {
    mnt: PathBuf,
    /// The `sluice mount` process (bindfs daemonizes itself).
    child: Option<Child>,
    log: Option<PathBuf>,
}

impl Mount {
    fn bindfs(src: &Path, mnt: &Path) -> Result<Mount> {
        std::fs::create_dir_all(src)?;
        std::fs::create_dir_all(mnt)?;
        let mnt = mnt.canonicalize()?;
        let out = Command::new("bindfs").arg(src).arg(&mnt).output().context(
            "running bindfs (Debian package bindfs; integration/scripts/install-deps.sh)",
        )?;
        let mut m = Mount {
            mnt,
            child: None,
            log: None,
        };
        if !out.status.success() {
            bail!(
                "bindfs {} {} failed: {}",
                src.display(),
                m.mnt.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        m.wait_mounted(None)?;
        Ok(m)
    }

    fn sluice(bin: &Path, data: &Path, mnt: &Path, replica: &Path, level: &str) -> Result<Mount> {
        std::fs::create_dir_all(data)?;
        std::fs::create_dir_all(mnt)?;
        let mnt = mnt.canonicalize()?;
        let log = mnt.with_extension("log");
        let f = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("mount")
            .arg(data)
            .arg(&mnt)
            .arg(format!("file://{}", replica.display()))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut m = Mount {
            mnt,
            child: Some(child),
            log: Some(log),
        };
        m.wait_mounted(Some("mounted"))?;
        Ok(m)
    }

    /// Waits (bounded) until the mount is in /proc/mounts and, for Sluice,
    /// the log says `needle`.
    fn wait_mounted(&mut self, needle: Option<&str>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let logged = needle.is_none_or(|n| self.log_text().contains(n));
            if logged && is_mounted(&self.mnt) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    bail!(
                        "sluice mount exited ({s}) before mounting; log:\n{}",
                        self.log_text()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not mounted after 120 s; log:\n{}",
                    self.mnt.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// SIGTERM and a bounded wait (Sluice unmounts, makes its deferred files
    /// durable and uploads them); then the mount must be gone. Returns
    /// Sluice's exit code (`Some(0)` for bindfs).
    fn stop(&mut self) -> Result<Option<i32>> {
        let code = match self.child.take() {
            Some(mut c) => {
                signal(&c, "-TERM");
                let code = wait_exit(&mut c, Duration::from_secs(120));
                if code.is_none() {
                    let _ = c.kill();
                    let _ = c.wait();
                    bail!(
                        "sluice did not exit within 120 s of SIGTERM; log:\n{}",
                        self.log_text()
                    );
                }
                code.flatten()
            }
            None => Some(0),
        };
        unmount(&self.mnt);
        if is_mounted(&self.mnt) {
            bail!("{} is still mounted", self.mnt.display());
        }
        Ok(code)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "-TERM");
            if wait_exit(&mut c, Duration::from_secs(30)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        unmount(&self.mnt);
    }
}

// ---------------------------------------------------------------- TXIDs

/// The newest TXID among the LTX files under `<root>/ltx/<level>/`
/// (`<min:016x>-<max:016x>.ltx`, staging and `file://` replicas alike).
fn max_txid(root: &Path) -> u64 {
    let mut max = 0;
    let Ok(levels) = std::fs::read_dir(root.join("ltx")) else {
        return 0;
    };
    for level in levels.flatten() {
        let Ok(files) = std::fs::read_dir(level.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name();
            let Some(n) = name.to_str() else { continue };
            if let Some(t) = n
                .strip_suffix(".ltx")
                .and_then(|n| n.get(17..33))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            {
                max = max.max(t);
            }
        }
    }
    max
}

/// Files and bytes under `dir` (recursively), and files per LTX level.
#[derive(Debug, Default, Clone)]
struct Objects {
    files: u64,
    bytes: u64,
    per_level: [u64; 10],
}

fn objects(dir: &Path) -> Result<Objects> {
    let mut o = Objects::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
                continue;
            }
            o.files += 1;
            o.bytes += e.metadata()?.len();
            let level = e
                .path()
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(l) = level.filter(|l| *l < 10) {
                o.per_level[l] += 1;
            }
        }
    }
    Ok(o)
}

/// Waits (bounded) until the replica's newest TXID reaches the newest staged
/// one and at least `want`; returns how long that took and the TXID.
fn catch_up(staging: &Path, replica: &Path, want: u64, limit: Duration) -> Result<(Duration, u64)> {
    let t0 = Instant::now();
    loop {
        let staged = max_txid(staging);
        let shipped = max_txid(replica);
        if staged >= want && shipped >= staged {
            return Ok((t0.elapsed(), shipped));
        }
        if t0.elapsed() > limit {
            bail!(
                "the replica did not catch up within {limit:?}: staged TXID {staged}, replica {shipped}, wanted {want}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- transactions

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// WAL, `synchronous=NORMAL`.
    Wal,
    /// DELETE, `synchronous=FULL`.
    Delete,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Wal => "WAL, synchronous=NORMAL",
            Mode::Delete => "DELETE, synchronous=FULL",
        }
    }

    fn open(self, path: &Path) -> Result<Connection> {
        let c = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        c.busy_timeout(Duration::from_secs(10))?;
        let (journal, sync) = match self {
            Mode::Wal => ("wal", "NORMAL"),
            Mode::Delete => ("delete", "FULL"),
        };
        let got: String =
            c.query_row(&format!("PRAGMA journal_mode={journal}"), [], |r| r.get(0))?;
        if got != journal {
            bail!("{}: journal_mode is {got}, not {journal}", path.display());
        }
        c.execute_batch(&format!("PRAGMA synchronous={sync}"))?;
        Ok(c)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Raw,
    Bindfs,
    Sluice,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Raw => "raw",
            Target::Bindfs => "bindfs",
            Target::Sluice => "sluice",
        }
    }
}

#[derive(Debug, Clone)]
struct TxRun {
    round: u32,
    target: Target,
    l: Loop,
}

/// A timed loop of one-row transactions.
#[derive(Debug, Clone, Copy)]
struct Loop {
    n: u64,
    elapsed: Duration,
    longest: Duration,
    /// The untimed warm-up commit before the loop.
    first: Duration,
}

impl Loop {
    fn tps(&self) -> f64 {
        self.n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A connection to a new database that inserts one-row transactions,
/// slice after slice.
struct Writer {
    c: Connection,
    rng: XorShift64,
    blob: Vec<u8>,
    /// The untimed warm-up commit (see [`Writer::open`]); taken by the
    /// first slice.
    first: Duration,
}

impl Writer {
    /// Creates the table in the new database `db` and commits one untimed
    /// warm-up row.
    fn open(db: &Path, mode: Mode, seed: u64) -> Result<Writer> {
        let c = mode.open(db)?;
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")?;
        let mut rng = XorShift64::new(seed);
        let mut blob = vec![0u8; ROW_BYTES];
        for b in blob.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        let mut w = Writer {
            c,
            rng,
            blob,
            first: Duration::ZERO,
        };
        // The first commit to a new database through `sluice mount` starts
        // its pipeline (about 2 s): not what a running application pays per
        // commit.
        w.first = w.slice(Duration::MAX, Some(1))?.elapsed;
        Ok(w)
    }

    /// One-row transactions until `count` or `limit`. The statement is
    /// prepared once, outside the timed loop.
    fn slice(&mut self, limit: Duration, count: Option<u64>) -> Result<Loop> {
        let Writer { c, rng, blob, .. } = self;
        let mut stmt = c.prepare_cached("INSERT INTO t(v) VALUES (?1)")?;
        let (mut n, mut longest) = (0u64, Duration::ZERO);
        let t0 = Instant::now();
        loop {
            blob[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            let t = Instant::now();
            stmt.execute([&*blob])?;
            longest = longest.max(t.elapsed());
            n += 1;
            let done = match count {
                Some(c) => n >= c,
                None => t0.elapsed() >= limit,
            };
            if done {
                break;
            }
        }
        Ok(Loop {
            n,
            elapsed: t0.elapsed(),
            longest,
            first: std::mem::take(&mut self.first),
        })
    }

    fn close(self) -> Result<()> {
        self.c.close().map_err(|(_, e)| e)?;
        Ok(())
    }
}

/// One-row transactions on a fresh database until `count` or `limit`, after
/// one untimed warm-up transaction.
fn tx_loop(db: &Path, mode: Mode, limit: Duration, count: Option<u64>, seed: u64) -> Result<Loop> {
    let mut w = Writer::open(db, mode, seed)?;
    let l = w.slice(limit, count)?;
    w.close()?;
    Ok(l)
}

#[derive(Debug, Clone)]
struct TxResult {
    mode: Mode,
    runs: Vec<TxRun>,
    /// The waits for an idle Sluice before each raw or bindfs slice.
    settled: Vec<Settled>,
    /// Transactions through Sluice, and the TXIDs it staged for them.
    sluice_tx: u64,
    sluice_txids: u64,
    sluice_exit: Option<i32>,
}

/// CPU time (clock ticks) that process `pid`, all its threads, has used.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the
    // first, utime and stime the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A wait for an idle Sluice (see [`settle`]).
#[derive(Debug, Clone, Copy)]
struct Settled {
    waited: Duration,
    /// False if Sluice was still busy when the wait gave up.
    idle: bool,
}

/// Waits until Sluice (`pid`) has used no CPU for [`SETTLE_IDLE`], at most
/// [`SETTLE_MAX`]: its background work after its slices (uploads, level-1
/// compaction every 4,096 transactions, spare files) then does not run in
/// another target's slice. Bindfs's transactions mostly wait for a halted
/// vCPU to wake, so on this VM a busy neighbour makes them up to a quarter
/// faster, a bias against Sluice as large as the targets' gap.
fn settle(pid: u32) -> Settled {
    let t0 = Instant::now();
    let mut last = cpu_ticks(pid);
    let mut since = Instant::now();
    while t0.elapsed() < SETTLE_MAX {
        std::thread::sleep(Duration::from_millis(20));
        let now = cpu_ticks(pid);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= SETTLE_IDLE {
            return Settled {
                waited: t0.elapsed(),
                idle: true,
            };
        }
    }
    Settled {
        waited: t0.elapsed(),
        idle: false,
    }
}

/// How long Sluice must use no CPU to count as idle (a clock tick is 10 ms).
const SETTLE_IDLE: Duration = Duration::from_millis(200);

/// The longest wait for an idle Sluice before a slice.
const SETTLE_MAX: Duration = Duration::from_secs(5);

/// Transactions over time of target `t` in `runs`, in every round or in
/// `round`.
fn tps_of(runs: &[TxRun], t: Target, round: Option<u32>) -> f64 {
    let (n, s) = runs
        .iter()
        .filter(|r| r.target == t && round.is_none_or(|k| r.round == k))
        .fold((0u64, 0f64), |(n, s), r| {
            (n + r.l.n, s + r.l.elapsed.as_secs_f64())
        });
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

impl TxResult {
    fn tps_in(&self, t: Target, round: Option<u32>) -> f64 {
        tps_of(&self.runs, t, round)
    }

    fn tps(&self, t: Target) -> f64 {
        self.tps_in(t, None)
    }

    /// Sluice over bindfs in each round, sorted.
    fn round_ratios(&self) -> Vec<f64> {
        let rounds = self.runs.iter().map(|r| r.round + 1).max().unwrap_or(0);
        let mut v: Vec<f64> = (0..rounds)
            .map(|k| {
                let b = self.tps_in(Target::Bindfs, Some(k));
                self.tps_in(Target::Sluice, Some(k)) / b.max(1e-9)
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }
}

/// The order of the targets within a round: a linear drift cancels.
const ROUND: [Target; 6] = [
    Target::Raw,
    Target::Bindfs,
    Target::Sluice,
    Target::Sluice,
    Target::Bindfs,
    Target::Raw,
];

fn tx_phase(o: &Opts, bin: &Path, work: &Path, mode: Mode) -> Result<TxResult> {
    let dir = work.join(match mode {
        Mode::Wal => "tx-wal",
        Mode::Delete => "tx-delete",
    });
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw)?;
    let bind = Mount::bindfs(&dir.join("bindfs-src"), &dir.join("bindfs-mnt"))?;
    let data = dir.join("sluice-data");
    let replica = dir.join("replica");
    let mut sl = Mount::sluice(
        bin,
        &data,
        &dir.join("sluice-mnt"),
        &replica,
        &o.sluice_log_level,
    )?;
    let name = "run.db";
    let mut writers = Vec::new();
    for (i, (target, db)) in [
        (Target::Raw, raw.join(name)),
        (Target::Bindfs, bind.mnt.join(name)),
        (Target::Sluice, sl.mnt.join(name)),
    ]
    .into_iter()
    .enumerate()
    {
        let w = Writer::open(&db, mode, 0x5eed + i as u64)
            .with_context(|| format!("{} ({})", target.name(), mode.name()))?;
        writers.push((target, w));
    }
    // Each target runs twice a round.
    let slices = 2 * o.rounds;
    let mut settled = Vec::new();
    let (limit, count) = (
        o.duration / slices,
        o.count.map(|c| c.div_ceil(u64::from(slices))),
    );
    let mut runs = Vec::new();
    let pid = sl.child.as_ref().map(Child::id);
    for round in 0..o.rounds {
        for target in ROUND {
            let Some((_, w)) = writers.iter_mut().find(|(t, _)| *t == target) else {
                bail!("no writer for {}", target.name());
            };
            if target != Target::Sluice {
                if let Some(pid) = pid {
                    settled.push(settle(pid));
                }
            }
            let l = w.slice(limit, count).with_context(|| {
                format!("{} round {} ({})", target.name(), round + 1, mode.name())
            })?;
            runs.push(TxRun { round, target, l });
        }
        eprintln!(
            "  round {:>2}: raw {:>7.0}, bindfs {:>6.0}, sluice {:>6.0} tx/s",
            round + 1,
            tps_of(&runs, Target::Raw, Some(round)),
            tps_of(&runs, Target::Bindfs, Some(round)),
            tps_of(&runs, Target::Sluice, Some(round)),
        );
    }
    for (_, w) in writers {
        w.close()?;
    }
    let sluice_exit = sl.stop()?;
    drop(bind);
    let staging = data.with_extension("sluice");
    let sluice_txids = max_txid(&staging.join(name));
    // Plus the warm-up row.
    let sluice_tx = 1 + runs
        .iter()
        .filter(|r| r.target == Target::Sluice)
        .map(|r| r.l.n)
        .sum::<u64>();
    Ok(TxResult {
        mode,
        runs,
        settled,
        sluice_tx,
        sluice_txids,
        sluice_exit,
    })
}

// ---------------------------------------------------------------- scan

#[derive(Debug, Clone, Default)]
struct ScanResult {
    db_bytes: u64,
    build: Duration,
    snapshot_wait: Duration,
    dropped: bool,
    /// MiB/s of each scan: (target, cold?, MiB/s).
    scans: Vec<(Target, bool, f64)>,
}

impl ScanResult {
    fn mean(&self, t: Target, cold: bool) -> f64 {
        let v: Vec<f64> = self
            .scans
            .iter()
            .filter(|s| s.0 == t && s.1 == cold)
            .map(|s| s.2)
            .collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`; false if not allowed.
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn build_scan_db(db: &Path, mib: u64) -> Result<()> {
    let c = Connection::open(db)?;
    let rows = mib * SCAN_ROWS_PER_MIB;
    c.execute_batch(&format!(
        "PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         BEGIN;
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows})
         INSERT INTO t(v) SELECT randomblob({SCAN_ROW_BYTES}) FROM c;
         COMMIT;"
    ))?;
    c.close().map_err(|(_, e)| e)?;
    Ok(())
}

/// A full scan through a fresh read-only connection: MiB/s of the file.
fn scan(db: &Path, rows: u64, bytes: u64) -> Result<f64> {
    let t0 = Instant::now();
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", db.display()))?;
    let (n, sum): (u64, u64) = c.query_row("SELECT count(*), sum(length(v)) FROM t", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    let elapsed = t0.elapsed();
    if n != rows || sum != rows * SCAN_ROW_BYTES {
        bail!(
            "{}: scanned {n} rows, {sum} bytes; expected {rows} rows",
            db.display()
        );
    }
    Ok(bytes as f64 / MIB / elapsed.as_secs_f64().max(1e-9))
}

fn scan_phase(o: &Opts, bin: &Path, work: &Path) -> Result<ScanResult> {
    let dir = work.join("scan");
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let raw_db = data.join("scan.db");
    let mut r = ScanResult::default();
    let t0 = Instant::now();
    build_scan_db(&raw_db, o.scan_mib)?;
    r.build = t0.elapsed();
    r.db_bytes = std::fs::metadata(&raw_db)?.len();
    let rows = o.scan_mib * SCAN_ROWS_PER_MIB;
    eprintln!(
        "  built {:.1} MiB in {:.1} s",
        r.db_bytes as f64 / MIB,
        r.build.as_secs_f64()
    );
    let replica = dir.join("replica");
    let mut sl = Mount::sluice(bin, &data, &dir.join("mnt"), &replica, &o.sluice_log_level)?;
    // The mount snapshots the existing database; let that finish so the
    // scans do not compete with it.
    let (w, _) = catch_up(
        &data.with_extension("sluice").join("scan.db"),
        &replica.join("scan.db"),
        1,
        o.catch_up_limit,
    )?;
    r.snapshot_wait = w;
    let mnt_db = sl.mnt.join("scan.db");
    r.dropped = true;
    for target in [Target::Raw, Target::Sluice, Target::Sluice, Target::Raw] {
        let db = if target == Target::Raw {
            &raw_db
        } else {
            &mnt_db
        };
        // A pair of the same target back to back: drop only before the first.
        let cold = r.scans.last().is_none_or(|s| s.0 != target);
        if cold {
            r.dropped &= drop_caches();
        }
        let cold_speed = scan(db, rows, r.db_bytes)?;
        let warm_speed = scan(db, rows, r.db_bytes)?;
        eprintln!(
            "  {:<6} cold {cold_speed:.0} MiB/s, warm {warm_speed:.0} MiB/s",
            target.name()
        );
        r.scans.push((target, true, cold_speed));
        r.scans.push((target, false, warm_speed));
    }
    sl.stop()?;
    Ok(r)
}

// ---------------------------------------------------------------- bulk load

#[derive(Debug, Clone)]
struct BulkResult {
    l: Loop,
    /// How long after the last commit the replica held every staged TXID,
    /// or why it did not within the limit.
    catch_up: Result<Duration, String>,
    staged_txid: u64,
    replica_txid: u64,
    exit: Option<i32>,
    replica: Objects,
    /// The staged LTX files left after the stop (`<staging>/ltx`).
    staged: Objects,
}

fn bulk_phase(o: &Opts, bin: &Path, work: &Path) -> Result<BulkResult> {
    let dir = work.join("bulk");
    let data = dir.join("data");
    let replica = dir.join("replica");
    let mut sl = Mount::sluice(bin, &data, &dir.join("mnt"), &replica, &o.sluice_log_level)?;
    let l = tx_loop(
        &sl.mnt.join("bulk.db"),
        Mode::Wal,
        Duration::MAX,
        Some(o.bulk - 1),
        0xb01c,
    )?;
    eprintln!(
        "  {} transactions in {:.1} s; waiting for the replica",
        l.n + 1,
        l.elapsed.as_secs_f64()
    );
    let staging = data.with_extension("sluice").join("bulk.db");
    let shipped = replica.join("bulk.db");
    // Not fatal: the objects in the replica are the figure either way.
    let catch_up = catch_up(&staging, &shipped, l.n + 2, o.catch_up_limit)
        .map(|(d, _)| d)
        .map_err(|e| format!("{e:#}"));
    let exit = sl.stop()?;
    Ok(BulkResult {
        l,
        catch_up,
        staged_txid: max_txid(&staging),
        replica_txid: max_txid(&shipped),
        exit,
        replica: objects(&replica)?,
        staged: objects(&staging.join("ltx"))?,
    })
}

// ---------------------------------------------------------------- report

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn print_tx(o: &Opts, txs: &[TxResult]) {
    let per = match o.count {
        Some(c) => format!("{c} transactions per target and mode"),
        None => format!("{:.0} s per target and mode", o.duration.as_secs_f64()),
    };
    println!(
        "one-row transactions ({ROW_BYTES}-byte blob), {per}, in {} rounds of raw, bindfs, sluice, sluice, bindfs, raw:",
        o.rounds
    );
    println!(
        "{:<26} {:>12} {:>12} {:>12} {:>14} {:>11}  target",
        "mode", "raw", "bindfs", "sluice", "sluice/bindfs", "sluice/raw"
    );
    for t in txs {
        let (raw, bind, sl) = (
            t.tps(Target::Raw),
            t.tps(Target::Bindfs),
            t.tps(Target::Sluice),
        );
        let target = match t.mode {
            Mode::Wal => 0.8,
            Mode::Delete => 0.6,
        };
        println!(
            "{:<26} {:>7.0} tx/s {:>7.0} tx/s {:>7.0} tx/s {:>14} {:>11}  >= {target}x bindfs ({})",
            t.mode.name(),
            raw,
            bind,
            sl,
            ratio(sl, bind),
            ratio(sl, raw),
            if bind > 0.0 && sl / bind >= target {
                "met"
            } else {
                "not met"
            }
        );
    }
    for t in txs {
        let r = t.round_ratios();
        println!(
            "  {}: sluice/bindfs per round: lowest {}, median {}, highest {}",
            t.mode.name(),
            r.first().map_or("-".into(), |v| format!("{v:.2}")),
            r.get(r.len() / 2).map_or("-".into(), |v| format!("{v:.2}")),
            r.last().map_or("-".into(), |v| format!("{v:.2}")),
        );
        let waited: Duration = t.settled.iter().map(|s| s.waited).sum();
        let busy = t.settled.iter().filter(|s| !s.idle).count();
        println!(
            "    waits for an idle sluice before raw and bindfs slices: {} in {:.1} s, {} gave up after {} s",
            t.settled.len(),
            waited.as_secs_f64(),
            busy,
            SETTLE_MAX.as_secs()
        );
        println!(
            "    sluice staged {} TXIDs for {} inserts (plus CREATE TABLE, and in WAL mode the switch to WAL); exit code {:?}",
            t.sluice_txids,
            t.sluice_tx,
            t.sluice_exit
        );
        for target in [Target::Raw, Target::Bindfs, Target::Sluice] {
            let runs = t.runs.iter().filter(|r| r.target == target);
            let (n, secs, longest, first) = runs.fold(
                (0u64, 0f64, Duration::ZERO, Duration::ZERO),
                |(n, s, l, f), r| {
                    (
                        n + r.l.n,
                        s + r.l.elapsed.as_secs_f64(),
                        l.max(r.l.longest),
                        f.max(r.l.first),
                    )
                },
            );
            println!(
                "    {:<6} {} tx in {:.2} s, longest commit {:.1} ms, untimed first commit {:.1} ms",
                target.name(),
                n,
                secs,
                longest.as_secs_f64() * 1e3,
                first.as_secs_f64() * 1e3
            );
        }
    }
}

fn print_scan(s: &ScanResult) {
    println!(
        "full scan of a {:.1} MiB table (built in {:.1} s; mount's snapshot shipped in {:.1} s){}:",
        s.db_bytes as f64 / MIB,
        s.build.as_secs_f64(),
        s.snapshot_wait.as_secs_f64(),
        if s.dropped {
            ""
        } else {
            "; CACHES NOT DROPPED (not root?): cold = warm"
        }
    );
    println!(
        "{:<6} {:>12} {:>12} {:>11}",
        "cache", "raw", "sluice", "sluice/raw"
    );
    for (name, cold) in [("cold", true), ("warm", false)] {
        let (raw, sl) = (s.mean(Target::Raw, cold), s.mean(Target::Sluice, cold));
        println!(
            "{name:<6} {raw:>6.0} MiB/s {sl:>6.0} MiB/s {:>11}",
            ratio(sl, raw)
        );
    }
}

fn print_bulk(b: &BulkResult) {
    println!(
        "bulk load through the mount: {} one-row transactions (WAL, synchronous=NORMAL; the first untimed) in {:.1} s = {:.0} tx/s, longest commit {:.1} ms, first {:.0} ms",
        b.l.n + 1,
        b.l.elapsed.as_secs_f64(),
        b.l.tps(),
        b.l.longest.as_secs_f64() * 1e3,
        b.l.first.as_secs_f64() * 1e3
    );
    let per_level = |o: &Objects| {
        let l: Vec<String> = o
            .per_level
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(l, n)| format!("L{l} {n}"))
            .collect();
        l.join(", ")
    };
    let caught = match &b.catch_up {
        Ok(d) => format!(
            "replica caught up {:.1} s after the last commit",
            d.as_secs_f64()
        ),
        Err(e) => format!("REPLICA DID NOT CATCH UP: {e}"),
    };
    println!(
        "  {caught}; staged TXID {}, replica TXID {} (setup: the switch to WAL, CREATE TABLE); after SIGTERM (exit {:?}): {} objects, {:.1} MiB ({})",
        b.staged_txid,
        b.replica_txid,
        b.exit,
        b.replica.files,
        b.replica.bytes as f64 / MIB,
        per_level(&b.replica)
    );
    println!(
        "  staging after the stop: {} LTX files, {:.1} MiB ({})",
        b.staged.files,
        b.staged.bytes as f64 / MIB,
        per_level(&b.staged)
    );
}

// ---------------------------------------------------------------- main

#[derive(Debug, Default)]
struct Results {
    tx: Vec<TxResult>,
    scan: Option<ScanResult>,
    bulk: Option<BulkResult>,
}

fn run_all(o: &Opts, bin: &Path, work: &Path) -> Result<Results> {
    let mut r = Results::default();
    let t0 = Instant::now();
    let say = |name: &str| {
        eprintln!(
            "== {name} (+{:.0} s, load {})",
            t0.elapsed().as_secs_f64(),
            loadavg()
        )
    };
    if o.has("tx") {
        for mode in [Mode::Wal, Mode::Delete] {
            say(&format!("one-row transactions, {}", mode.name()));
            r.tx.push(tx_phase(o, bin, work, mode)?);
        }
    }
    if o.has("scan") {
        say("table scan");
        r.scan = Some(scan_phase(o, bin, work)?);
    }
    if o.has("bulk") {
        say("bulk load");
        r.bulk = Some(bulk_phase(o, bin, work)?);
    }
    say("done");
    Ok(r)
}

fn main() -> Result<()> {
    let started = Instant::now();
    let o = Opts::parse()?;
    let bin = sluice_bin()?;
    let (work, tmp) = integration::work_dir(o.work_dir.as_deref(), "sluice-bench-mount.")?;
    let load0 = loadavg();
    eprintln!(
        "bench_mount: load average {load0}; sluice {}, work dir {}",
        bin.display(),
        work.display()
    );
    let result = run_all(&o, &bin, &work);
    // Every mount is down by now (the guards dropped in run_all).
    if o.keep {
        if let Some(t) = tmp {
            eprintln!("kept {}", t.keep().display());
        }
    } else if o.work_dir.is_some() {
        for sub in ["tx-wal", "tx-delete", "scan", "bulk"] {
            let _ = std::fs::remove_dir_all(work.join(sub));
        }
    }
    let r = result?;
    println!();
    println!(
        "sluice mount vs bindfs vs raw directory, one run{}; {} cores, load average {load0} at the start, {} at the end; total {:.0} s",
        if o.quick { "; QUICK MODE (small sizes)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    if !r.tx.is_empty() {
        print_tx(&o, &r.tx);
    }
    if let Some(s) = &r.scan {
        print_scan(s);
    }
    if let Some(b) = &r.bulk {
        print_bulk(b);
    }
    Ok(())
}
