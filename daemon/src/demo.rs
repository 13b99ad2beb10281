//! `sluice demo`: the README's first command. An application writes to a
//! WAL-mode SQLite database; Sluice ships each sync's committed frames as an
//! L0 file into a local `file://` replica (snapshot first); the replica is then
//! restored by applying the chain, and the restored database is checked
//! against the source (LTX checksum, bytes, `PRAGMA integrity_check`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ltx_format::{checksum_database, Applier};
use rusqlite::Connection;

use crate::capture::Shipper;

pub fn run(dir: Option<PathBuf>, transactions: u32) -> Result<ExitCode> {
    let tmp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
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
    let mode: String = app.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        bail!("could not switch {} to WAL mode", db_path.display());
    }
    // Sluice owns checkpoints; the app's automatic ones are off.
    app.execute_batch(
        "PRAGMA wal_autocheckpoint=0;
         CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, amount INTEGER, note TEXT);
         CREATE INDEX orders_customer ON orders(customer);",
    )?;
    let l0 = replica.join("ltx").join("0");
    let (mut shipper, first) = Shipper::start(&db_path, &l0, false)?;
    let mut shipped = vec![first];
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
        // One sync every few commits: a TXID is one sync.
        if i % 4 == 3 {
            if let Some(s) = shipper.sync()? {
                shipped.push(s);
            }
        }
        // Checkpoint only what has been shipped (right after a sync), and
        // vacuum once to shrink the file.
        if i % 50 == 49 {
            if let Some(s) = shipper.sync()? {
                shipped.push(s);
            }
            app.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        }
        if i == transactions / 2 {
            app.execute_batch("DELETE FROM orders WHERE id % 3 = 0; VACUUM;")?;
        }
    }
    if let Some(s) = shipper.sync()? {
        shipped.push(s);
    }
    app.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    let rows: i64 = app.query_row("SELECT count(*) FROM orders", [], |r| r.get(0))?;
    drop(app);

    let bytes: u64 = shipped
        .iter()
        .map(|s| std::fs::metadata(&s.path).map_or(0, |m| m.len()))
        .sum();
    let pages: usize = shipped.iter().map(|s| s.pages).sum();
    let max_commit = shipped.iter().map(|s| s.commit).max().unwrap_or(0);
    println!(
        "shipped {} LTX files ({bytes} bytes, {pages} pages, database up to {max_commit} pages) for {transactions} transactions; source has {rows} rows",
        shipped.len(),
    );
    for s in shipped.iter().rev().take(1) {
        println!(
            "last file:         {} (database checksum {})",
            s.path.display(),
            s.checksum
        );
    }

    let restored = dir.join("restored.db");
    restore_chain(&restored, shipped.iter().map(|s| s.path.as_path()))?;
    let src_sum = file_checksum(&db_path)?;
    let out_sum = file_checksum(&restored)?;
    let same_bytes = std::fs::read(&db_path)? == std::fs::read(&restored)?;
    let check: String =
        Connection::open(&restored)?.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    println!("source checksum:   {src_sum}");
    println!(
        "restored checksum: {out_sum}  (TXID {})",
        shipped
            .last()
            .map_or_else(String::new, |s| s.txid.to_string())
    );
    println!("shipper position:  {}", shipper.checksum());
    println!("integrity_check:   {check}");
    println!("byte-identical:    {same_bytes}");
    println!("elapsed:           {:.2?}", started.elapsed());
    println!("try: sluice ltx verify {}/*.ltx", l0.display());
    if src_sum != out_sum || !same_bytes || check != "ok" || shipper.checksum() != src_sum {
        bail!("the restored database differs from the source");
    }
    println!("demo ok: the replica restores to the source database");
    Ok(ExitCode::SUCCESS)
}

fn restore_chain<'a>(out: &Path, files: impl Iterator<Item = &'a Path>) -> Result<()> {
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
