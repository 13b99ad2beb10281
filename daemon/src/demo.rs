//! `sluice demo`: the README's first command, on an embedded default.
//!
//! A WAL-mode database is replicated by the real `replicate` machinery to a
//! local `file://` replica while an application writes to it (inserts,
//! updates, deletes, a `VACUUM`, and its own TRUNCATE checkpoint), with short
//! compaction and snapshot intervals so every level appears. After a clean
//! stop the replica is restored from its newest snapshot plus later L0 files
//! and checked against the source: same LTX checksum, byte-identical file,
//! `PRAGMA integrity_check` = ok.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ltx_format::{checksum_database, parse_filename, Applier};
use rusqlite::Connection;

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

    let app = Connection::open(&db_path)?;
    app.busy_timeout(Duration::from_secs(10))?;
    let mode: String = app.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        bail!("could not switch {} to WAL mode", db_path.display());
    }
    app.execute_batch(
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, amount INTEGER, note TEXT);
         CREATE INDEX orders_customer ON orders(customer);",
    )?;

    let cfg = embedded_config(&db_path, &replica)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let daemon = std::thread::spawn(move || crate::replicate::run_until(cfg, Some(stop_rx)));
    // Let the initial snapshot land before the application starts.
    let pos = crate::staging::StagingDir::for_db(&db_path, None).position_path();
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

    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
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
                for _ in 0..(1 + next() % 20) {
                    let n = next();
                    tx.execute(
                        "INSERT INTO orders(customer, amount, note) VALUES (?1, ?2, ?3)",
                        rusqlite::params![
                            format!("customer-{}", n % 97),
                            (n % 10_000) as i64,
                            "x".repeat((n % 300) as usize)
                        ],
                    )?;
                }
            }
        }
        tx.commit()?;
        if i == transactions / 2 {
            app.execute_batch("DELETE FROM orders WHERE id % 3 = 0; VACUUM;")?;
        }
        std::thread::sleep(Duration::from_millis(15));
    }
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

    let mut summary = Vec::new();
    for level in [0u8, 1, 2, 9] {
        let files = ltx_files(&replica.join(format!("ltx/{level}")))?;
        let bytes: u64 = files
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        summary.push(format!("L{level}: {} files, {bytes} bytes", files.len()));
    }
    println!(
        "replica after {transactions} transactions ({rows} rows): {}",
        summary.join("; ")
    );

    // Restore: the newest snapshot, then every later L0 file.
    let snaps = ltx_files(&replica.join("ltx/9"))?;
    let l0 = ltx_files(&replica.join("ltx/0"))?;
    let mut chain: Vec<PathBuf> = Vec::new();
    let mut after = 0u64;
    if let Some(s) = snaps.last() {
        after = txids(s)?.1;
        chain.push(s.clone());
    }
    chain.extend(
        l0.into_iter()
            .filter(|p| txids(p).is_ok_and(|(_, max)| max > after)),
    );
    let restored = dir.join("restored.db");
    restore_chain(&restored, &chain)?;
    let src_sum = file_checksum(&db_path)?;
    let out_sum = file_checksum(&restored)?;
    let same_bytes = std::fs::read(&db_path)? == std::fs::read(&restored)?;
    let check: String =
        Connection::open(&restored)?.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    println!(
        "restored from:     {} files ({})",
        chain.len(),
        chain
            .first()
            .map_or(String::new(), |p| p.display().to_string())
    );
    println!("source checksum:   {src_sum}");
    println!("restored checksum: {out_sum}");
    println!("integrity_check:   {check}");
    println!("byte-identical:    {same_bytes}");
    println!("elapsed:           {:.2?}", started.elapsed());
    if src_sum != out_sum || !same_bytes || check != "ok" {
        bail!("the restored database differs from the source");
    }
    println!("demo ok: the replica restores to the source database");
    Ok(ExitCode::SUCCESS)
}

fn txids(p: &Path) -> Result<(u64, u64)> {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let (a, b) = parse_filename(name).with_context(|| format!("not an LTX file name: {name}"))?;
    Ok((a.0, b.0))
}

fn ltx_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| txids(p).is_ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    v.sort();
    Ok(v)
}

fn restore_chain(out: &Path, files: &[PathBuf]) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let mut a = Applier::new(f, None);
    for p in files {
        a.apply_path(p).with_context(|| p.display().to_string())?;
    }
    a.finish()?;
    Ok(())
}

fn file_checksum(p: &Path) -> Result<ltx_format::Checksum> {
    let f = std::fs::File::open(p)?;
    Ok(checksum_database(std::io::BufReader::new(f))?.0)
}
