//! Every committed transaction is one TXID, in the four journal modes, with
//! several processes writing through the mount; a restore at each TXID
//! equals the database as it was after that transaction.

use std::time::{Duration, Instant};

use integration::mount::MountEnv;
use rusqlite::Connection;

use super::{open, restore_at, shell, state};

/// Transactions by the shell and by a Rust connection, alternating; after
/// each, the TXID (exactly one more) and the checksum. Returns them.
fn workload(env: &MountEnv, name: &str, mode: &str) -> Vec<(u64, String)> {
    let db = env.db(name);
    let c = open(&db, mode);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, v BLOB)")
        .unwrap();
    let mut marks = vec![(env.txid(name), state(&env.backing(name)))];
    let step = |marks: &mut Vec<(u64, String)>, what: &str| {
        let prev = marks.last().map_or(0, |m| m.0);
        // A transaction SQLite did not sync is staged within the flusher's
        // interval; a synced one before the commit returned.
        let deadline = Instant::now() + Duration::from_secs(10);
        while env.txid(name) <= prev && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = env.txid(name);
        assert_eq!(t, prev + 1, "{mode}: {what} must be exactly one TXID");
        marks.push((t, state(&env.backing(name))));
    };
    for i in 0..6 {
        shell(
            &db,
            mode,
            &format!(
                "INSERT INTO t(who, v) VALUES ('shell', randomblob({}))",
                100 + i * 700
            ),
        );
        step(&mut marks, "a shell insert");
        c.execute(
            "INSERT INTO t(who, v) VALUES ('rust', randomblob(?1))",
            [3000 + i * 500],
        )
        .unwrap();
        step(&mut marks, "a rust insert");
    }
    c.execute_batch(
        "BEGIN; UPDATE t SET v = randomblob(50) WHERE id % 2 = 0; DELETE FROM t WHERE id = 3;
         INSERT INTO t(who, v) SELECT 'bulk', randomblob(2000) FROM t; COMMIT;",
    )
    .unwrap();
    step(&mut marks, "a multi-statement transaction");
    shell(&db, mode, "DELETE FROM t WHERE who = 'bulk'");
    step(&mut marks, "a shell delete");
    // The file shrinks: the pages cut off leave the database checksum.
    let pages =
        |c: &Connection| -> i64 { c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap() };
    let before = pages(&c);
    c.execute_batch("VACUUM").unwrap();
    step(&mut marks, "a VACUUM");
    assert!(
        pages(&c) < before,
        "{mode}: VACUUM must shrink the database"
    );
    marks
}

#[test]
fn every_transaction_is_one_txid_in_the_four_journal_modes() {
    let mut env = MountEnv::new();
    env.start();
    let modes = ["WAL", "DELETE", "TRUNCATE", "PERSIST"];
    let mut all = Vec::new();
    for mode in modes {
        let name = format!("{}.db", mode.to_lowercase());
        all.push((name.clone(), workload(&env, &name, mode)));
    }
    assert_eq!(env.stop(), Some(0), "{}", env.log_text());
    let out = env.dir().join("restored.db");
    for (name, marks) in &all {
        for (txid, sum) in marks {
            assert_eq!(
                &restore_at(&env.url(name), *txid, &out),
                sum,
                "{name} at TXID {txid:x}"
            );
        }
    }
}

#[test]
fn concurrent_writers_each_transaction_one_txid() {
    let mut env = MountEnv::new();
    env.start();
    for mode in ["WAL", "DELETE"] {
        let name = format!("c-{}.db", mode.to_lowercase());
        let db = env.db(&name);
        open(&db, mode)
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, w INTEGER, n INTEGER)")
            .unwrap();
        let before = env.txid(&name);
        // Three shell processes at once, 20 one-row transactions each.
        let kids: Vec<_> = (0..3)
            .map(|w| {
                let sql: String = (0..20)
                    .map(|n| format!("INSERT INTO t(w, n) VALUES ({w}, {n});"))
                    .collect();
                std::process::Command::new("sqlite3")
                    .args(["-bail", "-cmd", ".timeout 20000"])
                    .arg(&db)
                    .arg(format!("PRAGMA journal_mode={mode}; {sql}"))
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut k in kids {
            assert!(k.wait().unwrap().success());
        }
        let rows: i64 = open(&db, mode)
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 60);
        let deadline = Instant::now() + Duration::from_secs(30);
        while env.txid(&name) < before + 60 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            env.txid(&name),
            before + 60,
            "{mode}: one TXID per transaction"
        );
        let check: String = open(&db, mode)
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
    assert_eq!(env.stop(), Some(0), "{}", env.log_text());
}

/// A bulk load of many small transactions becomes a few objects (bundles,
/// one per upload interval under load), and a restore at a TXID inside a
/// bundle holds exactly the rows committed up to that transaction. The
/// daemon may open only 128 files: a bundle holds more (it used to open
/// them all at once, fail with EMFILE on every retry, and starve the
/// capture of descriptors).
#[test]
fn a_bulk_load_is_few_objects_and_every_transaction_restores() {
    let mut env = MountEnv::new();
    env.nofile = Some(128);
    env.start();
    let name = "bulk.db";
    let c = open(&env.db(name), "WAL");
    c.execute_batch("PRAGMA synchronous=NORMAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    let first = env.txid(name);
    // Over twice the L0 backlog (4,096 TXIDs) that makes level 1 compact
    // ahead of its 30 s interval: the L0 files it covers go back to the
    // spare pool, and later transactions are written over them.
    let n = 9000u64;
    for i in 1..=n {
        c.execute("INSERT INTO t(id, v) VALUES (?1, randomblob(100))", [i])
            .unwrap();
    }
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.log_text().contains("ahead of its interval") {
        assert!(
            Instant::now() < deadline,
            "no level-1 compaction ahead of its interval; log:\n{}",
            env.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(env.stop(), Some(0), "{}", env.log_text());
    assert!(
        !env.log_text().contains("Too many open files"),
        "{}",
        env.log_text()
    );
    let staged = env.txid(name);
    assert_eq!(staged, first + n, "one TXID per transaction");
    let objects = integration::ltx_files(&env.dir().join("replica").join(name).join("ltx/0"));
    assert!(
        !objects.is_empty() && objects.len() as u64 <= n / 20,
        "{n} transactions: {} level-0 objects",
        objects.len()
    );
    let out = env.dir().join("restored.db");
    for k in [1, n / 3, n / 2 + 7, 4096, 4097, n - 1, n] {
        let o = integration::sluice(&[
            "restore",
            "-o",
            integration::s(&out),
            "--txid",
            &format!("{:x}", first + k),
            &env.url(name),
        ]);
        assert!(o.status.success(), "restore: {}", integration::stderr(&o));
        let r = Connection::open(&out).unwrap();
        let (count, max): (u64, u64) = r
            .query_row("SELECT count(*), max(id) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((count, max), (k, k), "restore at TXID {:x}", first + k);
        drop(r);
        std::fs::remove_file(&out).unwrap();
    }
}

/// VACUUM of a database with a large WAL (LiteFS issue 445 panicked there):
/// the VACUUM is one transaction, and restores before and after it match.
#[test]
fn vacuum_with_a_large_wal_is_one_transaction() {
    let mut env = MountEnv::new();
    env.start();
    let name = "vacuum.db";
    let c = open(&env.db(name), "WAL");
    c.execute_batch(
        "PRAGMA wal_autocheckpoint=0; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 8000)
         INSERT INTO t(v) SELECT randomblob(2000) FROM n; COMMIT;
         DELETE FROM t WHERE id % 3 <> 0;",
    )
    .unwrap();
    let wal = std::fs::metadata(env.backing("vacuum.db-wal"))
        .unwrap()
        .len();
    assert!(wal > 16 << 20, "a large WAL: {wal} bytes");
    let before = (env.txid(name), state(&env.backing(name)));
    c.execute_batch("VACUUM").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while env.txid(name) == before.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = (env.txid(name), state(&env.backing(name)));
    assert_eq!(after.0, before.0 + 1, "VACUUM is one transaction");
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    drop(c);
    assert_eq!(env.stop(), Some(0), "{}", env.log_text());
    let out = env.dir().join("restored.db");
    for (txid, sum) in [before, after] {
        assert_eq!(restore_at(&env.url(name), txid, &out), sum, "TXID {txid:x}");
    }
}

/// Found by SQLite's test suite over the mount (every test file uses
/// `test.db` in its own directory; walbak-3.4 backs up into a database of
/// another page size): databases of the same name in different
/// subdirectories are replicated apart, and a transaction that changes the
/// page size is refused (LTX files of one database share one page size) and
/// rolled back, leaving every TXID restorable.
#[test]
fn same_names_in_subdirectories_apart_and_a_page_size_change_refused() {
    let mut env = MountEnv::new();
    env.start();
    let mut all = Vec::new();
    for (name, rows) in [("a/app.db", 3), ("b/app.db", 5)] {
        std::fs::create_dir_all(env.db(name).parent().unwrap()).unwrap();
        let c = open(&env.db(name), "DELETE");
        c.execute_batch("PRAGMA page_size=1024; CREATE TABLE t(v BLOB)")
            .unwrap();
        for _ in 0..rows {
            c.execute("INSERT INTO t(v) VALUES (randomblob(3000))", [])
                .unwrap();
            all.push((name, env.txid(name), state(&env.backing(name))));
        }
        let e = c
            .execute_batch("PRAGMA page_size=4096; VACUUM")
            .expect_err("a page size change is refused");
        assert!(e.to_string().contains("disk I/O error"), "{e}");
        drop(c);
        let c = open(&env.db(name), "DELETE");
        let ps: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!((ps, n), (1024, rows), "rolled back");
        c.execute("INSERT INTO t(v) VALUES (randomblob(100))", [])
            .unwrap();
        all.push((name, env.txid(name), state(&env.backing(name))));
    }
    assert_eq!(env.stop(), Some(0), "{}", env.log_text());
    assert!(env.log_text().contains("changes the page size"));
    let out = env.dir().join("restored.db");
    for (name, txid, sum) in &all {
        assert_eq!(
            &restore_at(&env.url(name), *txid, &out),
            sum,
            "{name} at TXID {txid:x}"
        );
    }
}

/// Inode numbers of the files directly in `dir`.
fn inodes(dir: &std::path::Path) -> std::collections::HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.metadata().ok().map(|m| m.ino()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_new_database_writes_its_ltx_files_into_the_mounts_reserve_of_spare_files() {
    let mut env = MountEnv::new();
    env.start();
    let reserve = env.dir().join("data.sluice/.sluice-spares");
    let made = inodes(&reserve);
    // 8,192 on a quiet filesystem; the fill stops after 8 s (inodes cost
    // about a millisecond each on ext4 without a journal after mass
    // deletions), and its first step is 512 files.
    assert!(made.len() >= 512, "{} spare files", made.len());
    let db = env.db("new.db");
    let c = open(&db, "WAL");
    // Transactions SQLite does not sync are the ones written into spares
    // (a synced one's L0 file is made and synced at once).
    c.execute_batch("PRAGMA synchronous=NORMAL; CREATE TABLE t(v BLOB)")
        .unwrap();
    // The flusher moves files into the database's pool every 50 ms; the
    // commits before its first round make their own.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut from_reserve = 0;
    for i in 0..5_000 {
        c.execute("INSERT INTO t(v) VALUES (randomblob(100))", [])
            .unwrap();
        if i % 100 == 99 {
            // Staged L0 files (a spare drawn but not yet written lies in
            // `spare/` too, so only `ltx/0` counts).
            from_reserve = inodes(&env.staging("new.db").join("ltx/0"))
                .iter()
                .filter(|i| made.contains(i))
                .count();
            if from_reserve > 0 || Instant::now() > deadline {
                break;
            }
        }
    }
    assert!(from_reserve > 0, "no L0 file took a spare of the reserve");
    drop(c);
    assert_eq!(env.stop(), Some(0), "{}", env.log_text());
    assert!(
        env.log_text()
            .contains("made spare files for new databases' first commits"),
        "{}",
        env.log_text()
    );
}
