//! `sluice demo`: the README's first command, on an embedded default.
//!
//! A WAL-mode database is replicated by the real `replicate` machinery to a
//! local `file://` replica while an application writes to it (inserts,
//! updates, deletes, a `VACUUM`, and its own TRUNCATE checkpoint), with short
//! compaction and snapshot intervals so every level appears. After a clean
//! stop the replica is restored to its latest TXID by the `restore` library
//! (the same path as `sluice restore`, with `PRAGMA integrity_check`) and
//! checked against the source: same LTX checksum, byte-identical file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ltx_format::checksum_database;
use restore::{catalogue, FileInfo, IntegrityCheck, NoProgress, Options, Restored, Target};
use rusqlite::Connection;
use s3_backend::retry::{RetryPolicy, Shutdown};
use s3_backend::ReplicaUrl;

use crate::config::Config;

/// The embedded configuration: one database, one local replica.
fn embedded_config(db: &Path, replica: &Path) -> Result<Config> {
    Config::parse(&format!(
        "log-level: warn
dbs:
  - path: {}
    sync-interval: 100ms
    levels: [1s, 3s]
    snapshot-interval: 2s
    replicas:
      - url: file://{}
",
        db.display(),
        replica.display()
    ))
}

pub fn run(dir: Option<PathBuf>, transactions: u32) -> Result<ExitCode> {
    let tmp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            std::path::absolute(&d)?
        }
        None => {
            tmp = tempfile::Builder::new().prefix("sluice-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let db_path = dir.join("app.db");
    let replica = dir.join("replica");
    if db_path.exists() || replica.exists() {
        bail!(
            "{} already holds a demo; pass an empty --dir",
            dir.display()
        );
    }
    let started = Instant::now();
    println!("database: {}", db_path.display());
    println!("replica:  file://{}", replica.display());

    let app = create_app_db(&db_path)?;
    let cfg = embedded_config(&db_path, &replica)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let daemon = std::thread::spawn(move || crate::replicate::run_until(cfg, Some(stop_rx)));
    let daemon = wait_for_first_snapshot(&db_path, daemon)?;
    run_workload(&app, transactions)?;
    // Give compaction and a snapshot time to run, then stop cleanly.
    std::thread::sleep(Duration::from_millis(2500));
    let _ = stop_tx.send(true);
    let code = daemon
        .join()
        .map_err(|_| anyhow::anyhow!("replication thread panicked"))??;
    if code != ExitCode::SUCCESS {
        bail!("replication ended with an error");
    }
    let rows: i64 = app.query_row("SELECT count(*) FROM orders", [], |r| r.get(0))?;
    app.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    drop(app);

    let url = ReplicaUrl::File { root: replica };
    let restored = dir.join("restored.db");
    let (files, r) = list_and_restore(&url, &restored, |files| {
        println!(
            "replica after {transactions} transactions ({rows} rows): {}",
            level_summary(files)
        );
    })?;
    compare(&db_path, &files, &r)?;
    println!();
    crate::demo_mount::run(&dir, 100)?;
    println!("elapsed:           {:.2?}", started.elapsed());
    println!("demo ok: the replicas restore to the source databases");
    Ok(ExitCode::SUCCESS)
}

/// The application's database, in WAL mode, with its schema.
fn create_app_db(db_path: &Path) -> Result<Connection> {
    let app = Connection::open(db_path)?;
    app.busy_timeout(Duration::from_secs(10))?;
    let mode: String = app.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        bail!("could not switch {} to WAL mode", db_path.display());
    }
    app.execute_batch(
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, amount INTEGER, note TEXT);
         CREATE INDEX orders_customer ON orders(customer);",
    )?;
    Ok(app)
}

type Daemon = JoinHandle<Result<ExitCode>>;

/// Waits until replication has taken its initial snapshot, so the
/// application starts writing after it.
fn wait_for_first_snapshot(db_path: &Path, daemon: Daemon) -> Result<Daemon> {
    let pos = crate::staging::StagingDir::for_db(db_path, None).position_path();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pos.exists() {
        if daemon.is_finished() || Instant::now() > deadline {
            let r = daemon
                .join()
                .map_err(|_| anyhow::anyhow!("replication thread panicked"))?;
            bail!("replication did not start: {:?}", r.map(|_| ()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(daemon)
}

/// 1 to 20 orders with random customers, amounts and notes, drawn by
/// SQLite's `random()` (`LIMIT` is evaluated once, so it picks the count).
const INSERT_ORDERS: &str = "
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
    INSERT INTO orders(customer, amount, note)
    SELECT 'customer-' || abs(random() % 97),
           abs(random() % 10000),
           substr(hex(randomblob(150)), 1, abs(random() % 300))
    FROM n LIMIT 1 + abs(random() % 20)";

/// The application: `transactions` transactions, mostly inserts, some
/// updates and deletes, and a `VACUUM` halfway.
fn run_workload(app: &Connection, transactions: u32) -> Result<()> {
    for i in 0..transactions {
        let tx = app.unchecked_transaction()?;
        match i % 10 {
            7 => {
                tx.execute(
                    "UPDATE orders SET amount = amount + 1, note = note || '!' WHERE id % 7 = ?1",
                    [i64::from(i % 7)],
                )?;
            }
            9 => {
                tx.execute("DELETE FROM orders WHERE id % 5 = ?1", [i64::from(i % 5)])?;
            }
            _ => {
                tx.execute(INSERT_ORDERS, [])?;
            }
        }
        tx.commit()?;
        if i == transactions / 2 {
            app.execute_batch("DELETE FROM orders WHERE id % 3 = 0; VACUUM;")?;
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    Ok(())
}

/// Lists the replica (showing the listing to `show`), then restores its
/// latest TXID into `out` with a full integrity check.
fn list_and_restore(
    url: &ReplicaUrl,
    out: &Path,
    show: impl FnOnce(&[FileInfo]),
) -> Result<(Vec<FileInfo>, Restored)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = url.open(RetryPolicy::default(), Shutdown::never()).await?;
        let files = catalogue::list(&store, &url.layout())
            .await
            .with_context(|| format!("listing {url}"))?;
        show(&files);
        let plan = restore::plan(&files, Target::Latest)?;
        let opts = Options {
            integrity_check: IntegrityCheck::Full,
            ..Options::default()
        };
        let r = restore::restore(store, &plan, out, &opts, Arc::new(NoProgress))
            .await
            .with_context(|| format!("restoring {url} to {}", out.display()))?;
        Ok((files, r))
    })
}

/// Files and bytes at the levels the demo's configuration uses.
fn level_summary(files: &[FileInfo]) -> String {
    let mut summary = Vec::new();
    for level in [0u8, 1, 2, 9] {
        let (n, bytes) = files
            .iter()
            .filter(|f| f.level == level)
            .fold((0, 0u64), |(n, b), f| (n + 1, b + f.size));
        summary.push(format!("L{level}: {n} files, {bytes} bytes"));
    }
    summary.join("; ")
}

/// Prints and checks the restore against the source database.
fn compare(db_path: &Path, files: &[FileInfo], r: &Restored) -> Result<()> {
    let src_sum = file_checksum(db_path)?;
    let out_sum = file_checksum(&r.output)?;
    let same_bytes = std::fs::read(db_path)? == std::fs::read(&r.output)?;
    let chain = match (r.files.first(), r.files.last()) {
        (Some(a), Some(b)) if r.files.len() > 1 => format!("{a} ... {b}"),
        (Some(a), _) => a.to_string(),
        _ => String::new(),
    };
    println!(
        "restored from:     {} of {} files ({chain})",
        r.files.len(),
        files.len()
    );
    println!("source checksum:   {src_sum}");
    println!("restored checksum: {out_sum}");
    // `restore` fails unless the check says "ok".
    println!("integrity_check:   ok");
    println!("byte-identical:    {same_bytes}");
    if src_sum != out_sum || out_sum != r.checksum || !same_bytes {
        bail!("the restored database differs from the source");
    }
    Ok(())
}

fn file_checksum(p: &Path) -> Result<ltx_format::Checksum> {
    let f = std::fs::File::open(p)?;
    Ok(checksum_database(std::io::BufReader::new(f))?.0)
}
