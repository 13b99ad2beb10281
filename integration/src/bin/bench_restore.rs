//! Restore benchmark: `sluice restore` against `litestream restore` (0.5.17)
//! on the same replica, in the same run.
//!
//! 1. Builds a SQLite database of `--size-mib` MiB (WAL mode, 4 KiB pages,
//!    rows of random bytes, so LZ4 cannot shrink the replica below it).
//! 2. Runs `litestream replicate` to the S3 server in `SLUICE_S3_*` (Garage,
//!    started by `integration/scripts/bench-restore.sh`): the initial
//!    snapshot, then `--transactions` update transactions shipped as L0
//!    files and compacted into L1 every few seconds.
//! 3. Stops Litestream, lists the replica, then times each restore
//!    (alternating, `--rounds` times each) under `/usr/bin/time -v` for wall
//!    time and peak RSS, checks that both restored databases are identical,
//!    and prints the figures, the speed-up and the RSS ratio.
//!
//! Every wait is bounded in time. Run it with
//! `integration/scripts/bench-restore.sh`, or directly:
//! `bench_restore --sluice BIN --litestream BIN [--size-mib 512]
//!  [--transactions 300] [--rounds 2] [--work-dir DIR]`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::{terminate, XorShift64};
use s3_backend::retry::{RetryPolicy, Shutdown};
use s3_backend::ReplicaUrl;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    sluice: PathBuf,
    litestream: PathBuf,
    size_mib: u64,
    transactions: u32,
    rounds: u32,
    work: PathBuf,
}

fn args() -> Res<Args> {
    let mut a = Args {
        sluice: PathBuf::from("target/release/sluice"),
        litestream: PathBuf::from(".tools/litestream-venv/bin/litestream"),
        size_mib: 512,
        transactions: 300,
        rounds: 2,
        work: std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id())),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--sluice" => a.sluice = PathBuf::from(v()?),
            "--litestream" => a.litestream = PathBuf::from(v()?),
            "--size-mib" => a.size_mib = v()?.parse()?,
            "--transactions" => a.transactions = v()?.parse()?,
            "--rounds" => a.rounds = v()?.parse()?,
            "--work-dir" => a.work = PathBuf::from(v()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(a)
}

fn env(k: &str) -> Res<String> {
    std::env::var(k).map_err(|_| {
        format!(
            "{k} is not set: start Garage with integration/scripts/garage.sh and source its env.sh"
        )
        .into()
    })
}

fn log(msg: &str) {
    eprintln!("[bench] {msg}");
}

/// Builds the database: `size_mib` MiB of 3000-byte random rows.
fn build_db(db: &Path, size_mib: u64) -> Res<()> {
    let c = rusqlite::Connection::open(db)?;
    c.execute_batch("PRAGMA page_size=4096;")?;
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    c.execute_batch("CREATE TABLE blobs(id INTEGER PRIMARY KEY, v BLOB);")?;
    let rows = size_mib * 1024 * 1024 / 4096;
    let batch = 10_000u64;
    let mut done = 0;
    while done < rows {
        let n = batch.min(rows - done);
        c.execute_batch(&format!(
            "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {n})
             INSERT INTO blobs(v) SELECT randomblob(3000) FROM n; COMMIT;"
        ))?;
        done += n;
    }
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

struct Listing {
    files: usize,
    bytes: u64,
    per_level: Vec<(u8, usize, u64)>,
    max_l0: Option<u64>,
}

fn list(rt: &tokio::runtime::Runtime, url: &str) -> Res<Listing> {
    let url = ReplicaUrl::parse(url)?;
    rt.block_on(async {
        let store = url.open(RetryPolicy::default(), Shutdown::never()).await?;
        let files = restore::list_files(&store, &url.layout()).await?;
        let mut per_level = Vec::new();
        for l in 0..=9u8 {
            let fs: Vec<_> = files.iter().filter(|f| f.level == l).collect();
            if !fs.is_empty() {
                per_level.push((l, fs.len(), fs.iter().map(|f| f.size).sum()));
            }
        }
        Ok(Listing {
            files: files.len(),
            bytes: files.iter().map(|f| f.size).sum(),
            per_level,
            max_l0: files.iter().filter(|f| f.level == 0).map(|f| f.max.0).max(),
        })
    })
}

struct Timed {
    wall: f64,
    rss_kib: u64,
}

/// Runs a command under `/usr/bin/time -v`; wall time and peak RSS.
fn timed(cmd: &[&str]) -> Res<Timed> {
    let o = Command::new("/usr/bin/time")
        .arg("-v")
        .args(cmd)
        .env_remove("AWS_CA_BUNDLE")
        .stdout(Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        return Err(format!("{cmd:?} failed: {err}").into());
    }
    let field = |name: &str| {
        err.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .ok_or_else(|| format!("no {name:?} in /usr/bin/time output: {err}"))
    };
    let rss_kib: u64 = field("Maximum resident set size (kbytes):")?.parse()?;
    let wall_s = field("Elapsed (wall clock) time (h:mm:ss or m:ss):")?;
    let mut wall = 0.0;
    for part in wall_s.split(':') {
        wall = wall * 60.0 + part.parse::<f64>()?;
    }
    Ok(Timed { wall, rss_kib })
}

fn main() -> Res<()> {
    let a = args()?;
    let s3 = S3Env {
        endpoint: env("SLUICE_S3_ENDPOINT")?,
        region: env("SLUICE_S3_REGION")?,
        bucket: env("SLUICE_S3_BUCKET")?,
        key_id: env("AWS_ACCESS_KEY_ID")?,
        secret: env("AWS_SECRET_ACCESS_KEY")?,
    };
    std::fs::create_dir_all(&a.work)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let db = a.work.join("bench.db");
    if db.exists() {
        return Err(format!("{} exists: give an empty --work-dir", db.display()).into());
    }
    let t = Instant::now();
    build_db(&db, a.size_mib)?;
    log(&format!(
        "built {} ({} MiB) in {:.1}s",
        db.display(),
        std::fs::metadata(&db)?.len() >> 20,
        t.elapsed().as_secs_f64()
    ));

    let prefix = format!(
        "bench-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let url = format!(
        "s3://{}/{prefix}?endpoint={}&region={}&force-path-style=true",
        s3.bucket, s3.endpoint, s3.region
    );
    replicate_with_litestream(&a, &rt, &s3, &db, &prefix, &url)?;
    let l = list(&rt, &url)?;
    log(&format!(
        "replica: {} files, {:.1} MiB; per level (level, files, MiB): {:?}",
        l.files,
        l.bytes as f64 / 1048576.0,
        l.per_level
            .iter()
            .map(|(lv, n, b)| (*lv, *n, (*b as f64 / 1048576.0 * 10.0).round() / 10.0))
            .collect::<Vec<_>>()
    ));
    if l.bytes < 512 << 20 && a.size_mib >= 512 {
        return Err(format!("replica is only {} bytes", l.bytes).into());
    }
    let (plan_head, levels) = sluice_plan(&a, &url)?;
    log(&format!("sluice {plan_head}; files per level {levels:?}"));
    let runs = time_restores(&a, &url)?;
    // Both restores must agree, byte for byte.
    if !files_equal(&runs.litestream_out, &runs.sluice_out)? {
        return Err("litestream and sluice restored different databases".into());
    }
    let best = |v: &[Timed]| v.iter().map(|t| t.wall).fold(f64::INFINITY, f64::min);
    let peak = |v: &[Timed]| v.iter().map(|t| t.rss_kib).max().unwrap_or(0);
    let (lw, sw) = (best(&runs.litestream), best(&runs.sluice));
    let (lr, sr) = (peak(&runs.litestream), peak(&runs.sluice));
    let db_bytes = std::fs::metadata(&runs.sluice_out)?.len();
    println!(
        "replica: {} files, {:.1} MiB ({}); restored database {:.1} MiB, identical from both tools",
        l.files,
        l.bytes as f64 / 1048576.0,
        url.split('?').next().unwrap_or_default(),
        db_bytes as f64 / 1048576.0
    );
    println!(
        "litestream restore: {lw:.2} s (best of {}), peak RSS {:.1} MiB",
        a.rounds,
        lr as f64 / 1024.0
    );
    println!(
        "sluice restore:     {sw:.2} s (best of {}), peak RSS {:.1} MiB",
        a.rounds,
        sr as f64 / 1024.0
    );
    println!("sluice {plan_head}; files per level {levels:?}");
    println!(
        "speed-up: {:.2}x ({:.0} MB/s vs {:.0} MB/s of restored database); peak RSS sluice/litestream: {:.2}",
        lw / sw,
        db_bytes as f64 / sw / 1e6,
        db_bytes as f64 / lw / 1e6,
        sr as f64 / lr as f64
    );
    Ok(())
}

/// The S3 server and credentials, from `garage.sh`'s env.sh.
struct S3Env {
    endpoint: String,
    region: String,
    bucket: String,
    key_id: String,
    secret: String,
}

/// Runs `litestream replicate` for `db` to `prefix`: the initial snapshot,
/// then `--transactions` update transactions; stops it once the last one is
/// shipped (before the next L1 pass, so the newest TXIDs are in L0 only).
fn replicate_with_litestream(
    a: &Args,
    rt: &tokio::runtime::Runtime,
    s3: &S3Env,
    db: &Path,
    prefix: &str,
    url: &str,
) -> Res<()> {
    let cfg = a.work.join("litestream.yml");
    let S3Env {
        endpoint,
        region,
        bucket,
        key_id,
        secret,
    } = s3;
    std::fs::write(
        &cfg,
        format!(
            "levels:\n  - interval: 5s\nsnapshot:\n  interval: 24h\n\
             dbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      type: s3\n      bucket: {bucket}\n      path: {prefix}\n      endpoint: {endpoint}\n      region: {region}\n      force-path-style: true\n      access-key-id: {key_id}\n      secret-access-key: {secret}\n      sync-interval: 200ms\n",
            db.display()
        ),
    )?;
    let t = Instant::now();
    let mut child = Command::new(&a.litestream)
        .args(["replicate", "-config"])
        .arg(&cfg)
        .env_remove("AWS_CA_BUNDLE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(a.work.join("litestream.log"))?)
        .spawn()?;
    let result = (|| -> Res<()> {
        // The initial snapshot (TXID 1).
        let deadline = Instant::now() + Duration::from_secs(900);
        while list(rt, url)?.max_l0.is_none() {
            if Instant::now() > deadline {
                return Err("Litestream shipped no snapshot within 15 minutes".into());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        log(&format!(
            "initial snapshot shipped after {:.1}s",
            t.elapsed().as_secs_f64()
        ));
        update_rows(db, a.size_mib, a.transactions)?;
        wait_l0_stable(rt, url)
    })();
    terminate(&mut child, Duration::from_secs(30));
    result
}

/// Update transactions, each shipped as its own L0 file: 40 random rows
/// rewritten and one added per transaction.
fn update_rows(db: &Path, size_mib: u64, transactions: u32) -> Res<()> {
    let c = rusqlite::Connection::open(db)?;
    c.busy_timeout(Duration::from_secs(10))?;
    let rows = size_mib * 1024 * 1024 / 4096;
    let mut rng = XorShift64::new(0x2545_f491_4f6c_dd1d);
    for i in 0..transactions {
        let mut ids = Vec::new();
        for _ in 0..40 {
            ids.push((1 + rng.below(rows)).to_string());
        }
        c.execute_batch(&format!(
            "UPDATE blobs SET v = randomblob(3000) WHERE id IN ({}); INSERT INTO blobs(v) VALUES (randomblob(3000));",
            ids.join(",")
        ))?;
        std::thread::sleep(Duration::from_millis(if i % 10 == 9 { 400 } else { 150 }));
    }
    Ok(())
}

/// Waits (bounded) until the replica's newest L0 TXID has not moved for 1.5 s.
fn wait_l0_stable(rt: &tokio::runtime::Runtime, url: &str) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = None;
    let mut since = Instant::now();
    loop {
        if Instant::now() > deadline {
            return Err("Litestream did not catch up within 5 minutes".into());
        }
        let now = list(rt, url)?.max_l0;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() > Duration::from_millis(1500) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Sluice's plan, for the record: its first line and files per level.
fn sluice_plan(a: &Args, url: &str) -> Res<(String, BTreeMap<String, usize>)> {
    let o = Command::new(&a.sluice)
        .args(["restore", "--dry-run", "-o"])
        .arg(a.work.join("plan.db"))
        .arg(url)
        .output()?;
    let plan = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut levels = BTreeMap::<String, usize>::new();
    for line in plan.lines().skip(2) {
        if let Some(l) = line.split_whitespace().next() {
            *levels.entry(format!("L{l}")).or_default() += 1;
        }
    }
    let plan_head = plan.lines().next().unwrap_or_default().to_string();
    Ok((plan_head, levels))
}

struct Runs {
    litestream: Vec<Timed>,
    sluice: Vec<Timed>,
    litestream_out: PathBuf,
    sluice_out: PathBuf,
}

/// Both restores, alternating, `--rounds` times each.
fn time_restores(a: &Args, url: &str) -> Res<Runs> {
    let mut runs = Runs {
        litestream: Vec::new(),
        sluice: Vec::new(),
        litestream_out: a.work.join("litestream-restored.db"),
        sluice_out: a.work.join("sluice-restored.db"),
    };
    for round in 0..a.rounds {
        for p in [&runs.litestream_out, &runs.sluice_out] {
            let _ = std::fs::remove_file(p);
        }
        let ls = timed(&[
            a.litestream.to_str().ok_or("path")?,
            "restore",
            "-o",
            runs.litestream_out.to_str().ok_or("path")?,
            url,
        ])?;
        let sl = timed(&[
            a.sluice.to_str().ok_or("path")?,
            "restore",
            "-o",
            runs.sluice_out.to_str().ok_or("path")?,
            url,
        ])?;
        log(&format!(
            "round {}: litestream {:.2}s {} MiB RSS; sluice {:.2}s {} MiB RSS",
            round + 1,
            ls.wall,
            ls.rss_kib / 1024,
            sl.wall,
            sl.rss_kib / 1024
        ));
        runs.litestream.push(ls);
        runs.sluice.push(sl);
    }
    Ok(runs)
}

fn files_equal(a: &Path, b: &Path) -> Res<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}
