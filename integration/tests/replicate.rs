#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! `sluice replicate` end to end: a real SQLite application, the real daemon
//! (stopped, killed, restarted), `file://` replicas and Garage, and restores
//! compared with the source by LTX checksum and `integrity_check`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::{garage, litestream_bin, ltx_files, run, sluice, stderr, stdout, unique, Daemon};
use rusqlite::Connection;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write_config(dir: &Path, db: &Path, url: &str, extra_db: &str, extra_replica: &str) -> PathBuf {
    let cfg = dir.join("sluice.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    sync-interval: 100ms\n{extra_db}    replicas:\n      - url: {url}\n{extra_replica}",
            db.display()
        ),
    )
    .unwrap();
    cfg
}

/// A temporary directory with `app.db` (table `t`, page size 4096) and a
/// config replicating it to `file://<dir>/replica`: (dir, db, replica, config).
fn file_replica(extra_db: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_table(&db, 4096);
    let cfg = write_config(
        dir.path(),
        &db,
        &format!("file://{}", replica.display()),
        extra_db,
        "",
    );
    (dir, db, replica, cfg)
}

fn open_app(db: &Path, page_size: u32) -> Connection {
    let c = Connection::open(db).unwrap();
    c.execute_batch(&format!("PRAGMA page_size={page_size};"))
        .unwrap();
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// The staging position's TXID.
fn position_txid(db: &Path) -> u64 {
    let p = db.parent().unwrap().join(format!(
        ".{}-sluice/position.json",
        db.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::read(&p)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["txid"].as_u64())
        .unwrap_or(0)
}

/// Waits (bounded) until the file replica holds L0 `txid`.
fn wait_replica(replica: &Path, txid: u64) {
    let name = format!("{txid:016x}-{txid:016x}.ltx");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if replica.join("ltx/0").join(&name).exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("replica never received TXID {txid:x}");
}

/// The staging position's checksum.
fn position_checksum(db: &Path) -> String {
    let p = db.parent().unwrap().join(format!(
        ".{}-sluice/position.json",
        db.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::read(&p)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["checksum"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Waits until the daemon has captured everything committed so far (its
/// position's checksum equals the source's committed state; the application
/// must be quiet) and the replica holds it; returns the TXID.
fn settle(db: &Path, replica: &Path) -> u64 {
    let want = state_checksum(db);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if position_checksum(db) == want {
            let t = position_txid(db);
            wait_replica(replica, t);
            return t;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("daemon never reached the source's state {want}");
}

/// The LTX checksum of the database's committed state (main file + WAL).
fn state_checksum(db: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.ltx");
    let o = sluice(&["ltx", "encode-db", s(db), "-o", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    text.trim().rsplit(' ').next().unwrap().to_string()
}

/// Applies L0 files 1..=upto from `l0_dir` into `out`; returns its checksum.
fn restore_l0(l0_dir: &Path, upto: u64, out: &Path) -> String {
    let _ = std::fs::remove_file(out);
    let files: Vec<PathBuf> = ltx_files(l0_dir)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            u64::from_str_radix(&n[17..33], 16).unwrap() <= upto
        })
        .collect();
    assert!(!files.is_empty());
    let mut args = vec!["ltx", "apply", "--db", s(out)];
    args.extend(files.iter().map(|p| s(p)));
    let o = sluice(&args);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    let o = sluice(&["ltx", "checksum", s(out)]);
    stdout(&o).trim().to_string()
}

fn integrity(db: &Path) -> String {
    Connection::open(db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// An application workload in phases; after each, the replica's TXID and the
/// source's checksum at that TXID.
fn workload(
    db: &Path,
    replica_l0: &Path,
    page_size: u32,
    settle_fn: &dyn Fn() -> u64,
) -> Vec<(u64, String)> {
    let _ = replica_l0;
    let c = open_app(db, page_size);
    let mut marks = Vec::new();
    let mark = |marks: &mut Vec<(u64, String)>| {
        let t = settle_fn();
        marks.push((t, state_checksum(db)));
    };
    for i in 0..30 {
        c.execute(
            "INSERT INTO t(v, b) VALUES (?1, randomblob(?2))",
            rusqlite::params![format!("row {i}"), 200 + i * 50],
        )
        .unwrap();
    }
    mark(&mut marks);
    c.execute_batch(
        "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000)
         INSERT INTO t(v, b) SELECT 'bulk ' || i, randomblob(300) FROM n; COMMIT;",
    )
    .unwrap();
    mark(&mut marks);
    c.execute_batch("UPDATE t SET v = v || ' updated' WHERE id % 3 = 0;")
        .unwrap();
    c.execute_batch("DELETE FROM t WHERE id % 2 = 0;").unwrap();
    mark(&mut marks);
    c.execute_batch("DELETE FROM t WHERE id > 100; VACUUM;")
        .unwrap();
    mark(&mut marks);
    for i in 0..5 {
        c.execute(
            "INSERT INTO t(v, b) VALUES (?1, zeroblob(10))",
            [format!("after vacuum {i}")],
        )
        .unwrap();
    }
    mark(&mut marks);
    marks
}

fn create_table(db: &Path, page_size: u32) {
    let c = open_app(db, page_size);
    c.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);")
        .unwrap();
}

#[test]
fn replicates_a_workload_to_a_file_replica_for_both_page_sizes() {
    for ps in [4096u32, 65536] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let replica = dir.path().join("replica");
        create_table(&db, ps);
        let cfg = write_config(
            dir.path(),
            &db,
            &format!("file://{}", replica.display()),
            "",
            "",
        );
        let d = Daemon::start(&cfg, &dir.path().join("sluice.log"));
        let marks = workload(&db, &replica.join("ltx/0"), ps, &|| settle(&db, &replica));
        d.stop_ok();
        let out = dir.path().join("restored.db");
        for (txid, want) in &marks {
            assert_eq!(
                &restore_l0(&replica.join("ltx/0"), *txid, &out),
                want,
                "page size {ps}, TXID {txid:x}"
            );
            assert_eq!(integrity(&out), "ok");
        }
        // After the clean stop, the whole replica equals the source.
        let last = ltx_files(&replica.join("ltx/0")).len() as u64;
        let got = restore_l0(&replica.join("ltx/0"), last, &out);
        Connection::open(&db)
            .unwrap()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        let o = sluice(&["ltx", "checksum", s(&db)]);
        assert_eq!(got, stdout(&o).trim());
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&db).unwrap());
    }
}

/// Bytes in the replica.
fn replica_bytes(replica: &Path) -> u64 {
    let mut total = 0;
    for level in 0..=9 {
        for f in ltx_files(&replica.join(format!("ltx/{level}"))) {
            total += std::fs::metadata(f).unwrap().len();
        }
    }
    total
}

#[test]
fn restarts_resume_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_table(&db, 4096);
    {
        let c = open_app(&db, 4096);
        // About 2 MB, so a new snapshot would be far above 64 KiB.
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000)
             INSERT INTO t(v, b) SELECT 'x' || i, randomblob(1000) FROM n;",
        )
        .unwrap();
    }
    let cfg = write_config(
        dir.path(),
        &db,
        &format!("file://{}", replica.display()),
        "",
        "",
    );
    let log = dir.path().join("sluice.log");
    let small_write = |n: i32| {
        let c = open_app(&db, 4096);
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("restart {n}")])
            .unwrap();
    };
    let d = Daemon::start(&cfg, &log);
    settle(&db, &replica);
    small_write(0);
    settle(&db, &replica);
    d.stop_ok();
    let mut kinds = Vec::new();
    for (n, how) in [
        "clean stop",
        "kill -9",
        "app TRUNCATE checkpoint",
        "lost state files",
    ]
    .iter()
    .enumerate()
    {
        let before = replica_bytes(&replica);
        if *how == "lost state files" {
            // What a power failure can leave of the unsynced state files: an
            // empty position and torn replica progress. The staged files are
            // the truth; a repeated upload meets its own objects.
            let staging = dir.path().join(".app.db-sluice");
            std::fs::write(staging.join("position.json"), b"").unwrap();
            std::fs::write(staging.join("replica-0.json"), b"{\"url\": \"fi").unwrap();
        }
        if *how == "app TRUNCATE checkpoint" {
            let c = open_app(&db, 4096);
            let (busy, _, _): (i64, i64, i64) = c
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!(busy, 0);
            assert_eq!(
                std::fs::metadata(dir.path().join("app.db-wal")).map_or(0, |m| m.len()),
                0
            );
        }
        let d = Daemon::start_ready(&cfg, &log);
        small_write(n as i32 + 1);
        settle(&db, &replica);
        let uploaded = replica_bytes(&replica) - before;
        assert!(
            uploaded < 64 * 1024,
            "after {how}: restart uploaded {uploaded} bytes\n{}",
            d.log_text()
        );
        kinds.push((*how, uploaded));
        if *how == "lost state files" {
            assert!(
                d.log_text()
                    .contains("recovering the position from the staged files"),
                "{}",
                d.log_text()
            );
        }
        if *how == "clean stop" {
            // Next round starts from a crash.
            d.kill9();
        } else {
            d.stop_ok();
        }
    }
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("full-page file"),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    eprintln!("bytes uploaded after restart: {kinds:?}");
    // And the chain still restores to the source.
    let out = dir.path().join("restored.db");
    let got = restore_l0(&replica.join("ltx/0"), u64::MAX, &out);
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    assert_eq!(got, stdout(&sluice(&["ltx", "checksum", s(&db)])).trim());
}

#[test]
fn survives_twenty_kill9s_with_gap_free_restores() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    {
        let c = open_app(&db, 4096);
        c.execute_batch("CREATE TABLE n(id INTEGER PRIMARY KEY, pad BLOB);")
            .unwrap();
    }
    let cfg = write_config(
        dir.path(),
        &db,
        &format!("file://{}", replica.display()),
        "    checkpoint-pages: 200\n",
        "",
    );
    let log = dir.path().join("sluice.log");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The application: one numbered row per transaction, SQLite's default
    // autocheckpoint on its own connection.
    let app = {
        let db = db.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut i: i64 = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                i += 1;
                c.execute("INSERT INTO n(id, pad) VALUES (?1, randomblob(500))", [i])
                    .unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            i
        })
    };
    let mut rng = 0x1234_5678_9abc_def1_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let out = dir.path().join("restored.db");
    let mut max_rows = 0;
    for round in 0..20 {
        let d = Daemon::start(&cfg, &log);
        std::thread::sleep(Duration::from_millis(150 + next() % 600));
        d.kill9();
        // The replica restores to a gap-free prefix of the committed rows.
        let files = ltx_files(&replica.join("ltx/0"));
        if files.is_empty() {
            continue;
        }
        let _ = restore_l0(&replica.join("ltx/0"), u64::MAX, &out);
        let c = Connection::open(&out).unwrap();
        let (count, max): (i64, Option<i64>) = c
            .query_row("SELECT count(*), max(id) FROM n", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(
            Some(count),
            max.or(Some(0)),
            "round {round}: rows missing: {count} rows but max id {max:?}"
        );
        assert_eq!(integrity(&out), "ok");
        assert!(
            count >= max_rows,
            "round {round}: the replica went back from {max_rows} to {count} rows"
        );
        max_rows = count;
    }
    // Final: a clean run to the end, then the replica equals the source.
    let d = Daemon::start(&cfg, &log);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let committed = app.join().unwrap();
    settle(&db, &replica);
    d.stop_ok();
    let got = restore_l0(&replica.join("ltx/0"), u64::MAX, &out);
    let c = Connection::open(&out).unwrap();
    let count: i64 = c
        .query_row("SELECT count(*) FROM n", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, committed);
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    assert_eq!(got, stdout(&sluice(&["ltx", "checksum", s(&db)])).trim());
    eprintln!("crash test: {committed} rows committed, max restored after a kill {max_rows}");
}

#[test]
fn a_second_writer_on_the_same_replica_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let replica = dir.path().join("replica");
    let url = format!("file://{}", replica.display());
    let mut daemons = Vec::new();
    let mut dbs = Vec::new();
    for name in ["a", "b"] {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let db = sub.join("app.db");
        create_table(&db, 4096);
        open_app(&db, 4096)
            .execute("INSERT INTO t(v) VALUES (?1)", [format!("from {name}")])
            .unwrap();
        let cfg = write_config(&sub, &db, &url, "", "");
        dbs.push(db);
        daemons.push((cfg, sub.join("sluice.log")));
    }
    // Started together: both find an empty replica; put-if-absent decides.
    let mut a = Daemon::start(&daemons[0].0, &daemons[0].1);
    let mut b = Daemon::start(&daemons[1].0, &daemons[1].1);
    std::thread::sleep(Duration::from_secs(2));
    for (i, db) in dbs.iter().enumerate() {
        open_app(db, 4096)
            .execute("INSERT INTO t(v) VALUES ('more')", [])
            .unwrap();
        let _ = i;
    }
    // Wait (bounded) for one of them to stop, then check the other still runs.
    let running = |d: &mut Daemon| d.child.try_wait().unwrap().is_none();
    let deadline = Instant::now() + Duration::from_secs(60);
    while running(&mut a) && running(&mut b) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (a_alive, b_alive) = (running(&mut a), running(&mut b));
    assert!(
        a_alive != b_alive,
        "exactly one writer must stop (a alive {a_alive}, b alive {b_alive})\nA:\n{}\nB:\n{}",
        a.log_text(),
        b.log_text()
    );
    let (winner, loser, wdb) = if a_alive {
        (a, &mut b, &dbs[0])
    } else {
        (b, &mut a, &dbs[1])
    };
    loser.expect_failure("another writer owns this replica", Duration::from_secs(60));
    settle(wdb, &replica);
    winner.stop_ok();
    // Nothing interleaved: the replica restores to the winner's database.
    let out = dir.path().join("restored.db");
    let got = restore_l0(&replica.join("ltx/0"), u64::MAX, &out);
    Connection::open(wdb)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    assert_eq!(got, stdout(&sluice(&["ltx", "checksum", s(wdb)])).trim());
    // Started later, a second writer is refused at once.
    let mut late = Daemon::start(
        &daemons[if a_alive { 1 } else { 0 }].0,
        &dir.path().join("late.log"),
    );
    late.expect_failure("another writer owns this replica", Duration::from_secs(60));
}

#[test]
fn bad_databases_get_clear_errors_and_stay_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("replica").display());
    let missing = dir.path().join("missing.db");
    let o = sluice(&["replicate", s(&missing), &url]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(!missing.exists(), "sluice created the database");

    let rollback = dir.path().join("rollback.db");
    Connection::open(&rollback)
        .unwrap()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let before = std::fs::read(&rollback).unwrap();
    let o = sluice(&["replicate", s(&rollback), &url]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not in WAL mode") && stderr(&o).contains("PRAGMA journal_mode=WAL"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&rollback).unwrap(), before);

    let o = sluice(&["replicate", "--config", s(&dir.path().join("nope.yml"))]);
    assert!(
        !o.status.success() && stderr(&o).contains("nope.yml"),
        "{}",
        stderr(&o)
    );
    let cfg = dir.path().join("bad.yml");
    std::fs::write(&cfg, "dbs:\n  - path: /x.db\n    replicas:\n      - url: file:///r\n        sync-intervall: 1s\n").unwrap();
    let o = sluice(&["replicate", "--config", s(&cfg)]);
    assert!(
        !o.status.success()
            && stderr(&o).contains("sync-intervall")
            && stderr(&o).contains("line 5"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_database_deleted_while_replicated_stops_with_an_error() {
    let (dir, db, replica, cfg) = file_replica("");
    let mut d = Daemon::start(&cfg, &dir.path().join("sluice.log"));
    settle(&db, &replica);
    std::fs::remove_file(&db).unwrap();
    let _ = std::fs::remove_file(dir.path().join("app.db-wal"));
    d.expect_failure("was deleted while replicated", Duration::from_secs(60));
}

#[test]
fn an_unreachable_replica_is_retried_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let aside = dir.path().join("replica.aside");
    // A file where the replica directory should be: every call fails.
    std::fs::write(&replica, b"in the way").unwrap();
    create_table(&db, 4096);
    let cfg = write_config(
        dir.path(),
        &db,
        &format!("file://{}", replica.display()),
        "",
        "",
    );
    let log = dir.path().join("sluice.log");
    // First run: the store is down at start-up; sluice keeps trying.
    let d = Daemon::start(&cfg, &log);
    assert!(
        d.wait_for_log("cannot list the replica yet", Duration::from_secs(60)),
        "{}",
        d.log_text()
    );
    open_app(&db, 4096)
        .execute("INSERT INTO t(v) VALUES ('before the store came up')", [])
        .unwrap();
    std::fs::remove_file(&replica).unwrap();
    settle(&db, &replica);
    d.stop_ok();
    // Second run: the store goes away while running, and comes back.
    std::fs::rename(&replica, &aside).unwrap();
    std::fs::write(&replica, b"in the way").unwrap();
    let d = Daemon::start_ready(&cfg, &log);
    open_app(&db, 4096)
        .execute("INSERT INTO t(v) VALUES ('while the store was down')", [])
        .unwrap();
    assert!(
        d.wait_for_log("upload failed, will retry", Duration::from_secs(60)),
        "{}",
        d.log_text()
    );
    std::fs::remove_file(&replica).unwrap();
    std::fs::rename(&aside, &replica).unwrap();
    settle(&db, &replica);
    d.stop_ok();
    let out = dir.path().join("restored.db");
    restore_l0(&replica.join("ltx/0"), u64::MAX, &out);
    let rows: Vec<String> = Connection::open(&out)
        .unwrap()
        .prepare("SELECT v FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        rows,
        ["before the store came up", "while the store was down"]
    );
}

/// Downloads a Garage replica's L0 files into `dir` (through the real store).
fn download_l0(url: &str, dir: &Path) {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let u = s3_backend::ReplicaUrl::parse(url).unwrap();
        let store = u
            .open(
                s3_backend::retry::RetryPolicy::default(),
                s3_backend::retry::Shutdown::never(),
            )
            .await
            .unwrap();
        let layout = u.layout();
        std::fs::create_dir_all(dir).unwrap();
        for o in store.list(&layout.level_dir(0), None).await.unwrap() {
            let mut r = store.get(&o.key).await.unwrap();
            let mut v = Vec::new();
            r.read_to_end(&mut v).await.unwrap();
            std::fs::write(dir.join(o.name()), v).unwrap();
        }
    });
}

#[test]
fn replicates_to_garage_and_litestream_restores_a_compatible_replica() {
    let Some(g) = garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create_table(&db, 4096);
    let prefix = unique("replicate");
    let url = format!(
        "s3://{}/{prefix}?endpoint={}&region={}",
        g.bucket, g.endpoint, g.region
    );
    let compat_prefix = format!("{prefix}-ls");
    let compat_url = format!(
        "s3://{}/{compat_prefix}?endpoint={}&region={}",
        g.bucket, g.endpoint, g.region
    );
    let cfg = dir.path().join("sluice.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    sync-interval: 100ms\n    replicas:\n      - url: {url}\n      - url: {compat_url}\n        litestream-compatible: true\n",
            db.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_ready(&cfg, &dir.path().join("sluice.log"));
    let c = open_app(&db, 4096);
    for i in 0..10 {
        c.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 100)
             INSERT INTO t(v, b) SELECT 'batch {i} ' || i, randomblob(100) FROM n;"
        ))
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    c.execute_batch("DELETE FROM t WHERE id % 4 = 0; VACUUM;")
        .unwrap();
    drop(c);
    settle_s3(&db, &url);
    settle_s3(&db, &compat_url);
    d.stop_ok();
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let want = stdout(&sluice(&["ltx", "checksum", s(&db)]))
        .trim()
        .to_string();

    // Sluice's own replica, with database checksums, applies to the source.
    let l0 = dir.path().join("l0");
    download_l0(&url, &l0);
    let out = dir.path().join("restored.db");
    assert_eq!(restore_l0(&l0, u64::MAX, &out), want);
    assert_eq!(integrity(&out), "ok");

    // The Litestream-compatible replica restores with litestream 0.5.17.
    let ls_out = dir.path().join("litestream-restored.db");
    let ls_url = format!(
        "s3://{}/{compat_prefix}?endpoint={}&region={}&force-path-style=true",
        g.bucket, g.endpoint, g.region
    );
    let o = run(Command::new(litestream_bin()).args(["restore", "-o", s(&ls_out), &ls_url]));
    assert!(
        o.status.success(),
        "litestream restore: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert_eq!(std::fs::read(&ls_out).unwrap(), std::fs::read(&db).unwrap());
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    // A few bounded attempts: a connection can be reset under load.
    let mut last = String::new();
    for _ in 0..5 {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // One write, as an HTTP client sends it; the server must also cope
        // with a split request line (a unit test in metrics.rs covers that).
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        if s.write_all(req.as_bytes()).is_ok() {
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1") {
                return out;
            }
            last = out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

#[test]
fn levels_snapshots_retention_metrics_and_systemd_notify() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_table(&db, 4096);
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = dir.path().join("sluice.yml");
    std::fs::write(
        &cfg,
        format!(
            "metrics-addr: {addr}\ndbs:\n  - path: {}\n    sync-interval: 100ms\n    levels: [1s, 2s]\n    snapshot-interval: 2s\n    retention: 3s\n    replicas:\n      - url: file://{}\n",
            db.display(),
            replica.display()
        ),
    )
    .unwrap();
    // systemd's notify socket, played by the test.
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let d = Daemon::start_with_env(
        &cfg,
        &dir.path().join("sluice.log"),
        &[("NOTIFY_SOCKET", s(&sock_path))],
    );
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    let c = open_app(&db, 4096);
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(9) {
        i += 1;
        c.execute(
            "INSERT INTO t(v, b) VALUES (?1, randomblob(200))",
            [format!("r{i}")],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    settle(&db, &replica);
    // The replica file appears a moment before the upload is recorded:
    // poll (bounded) until the metrics have caught up.
    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = http_get(&addr, "/metrics");
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        if metric(&m, "sluice_replication_lag_seconds{") == 0.0 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(metric(&m, "sluice_txid{") >= 10.0);
    assert!(metric(&m, "sluice_bytes_shipped_total{") > 0.0);
    assert!(metric(&m, "sluice_objects_shipped_total{") >= 10.0);
    assert_eq!(metric(&m, "sluice_replication_lag_seconds{"), 0.0);
    assert!(m.contains("sluice_checkpoints_total{"), "{m}");
    let h = http_get(&addr, "/healthz");
    assert!(h.starts_with("HTTP/1.1 200") && h.ends_with("ok\n"), "{h}");
    d.stop_ok();

    let l = |n: u8| ltx_files(&replica.join(format!("ltx/{n}")));
    let log = std::fs::read_to_string(dir.path().join("sluice.log")).unwrap();
    // Compactions into L1 and L2 happened. Their files may already be gone:
    // once writes stop, retention's floor moves to the newest snapshot.
    let compactions = |level: u8| {
        log.lines()
            .filter(|line| line.contains("compacted") && line.contains(&format!("level={level} ")))
            .count()
    };
    assert!(
        compactions(1) > 0 && compactions(2) > 0,
        "no compactions: L1 {:?} L2 {:?}\n{log}",
        l(1),
        l(2)
    );
    assert!(
        log.contains("retention removed replica files"),
        "retention never ran:\n{log}"
    );
    // Snapshots were written every 2 s; retention keeps the newest one
    // older than the window (the floor) and every later one.
    let snaps = l(9);
    assert!(!snaps.is_empty(), "no snapshot kept");
    let snapshots_written = compactions(9);
    assert!(
        snapshots_written >= 2,
        "one snapshot every 2 s, but {snapshots_written} written:\n{log}"
    );
    // Retention removed what the oldest kept snapshot covers...
    let name = |p: &PathBuf| p.file_name().unwrap().to_str().unwrap().to_string();
    let max_of = |p: &PathBuf| u64::from_str_radix(&name(p)[17..33], 16).unwrap();
    let min_of = |p: &PathBuf| u64::from_str_radix(&name(p)[..16], 16).unwrap();
    let oldest = max_of(&snaps[0]);
    assert!(
        l(0).iter().all(|p| max_of(p) > oldest),
        "L0 files at or below the oldest snapshot {oldest:x} remain"
    );
    assert!(!replica
        .join("ltx/0/0000000000000001-0000000000000001.ltx")
        .exists());
    // ...and kept a contiguous L0 chain after it, so every TXID in the window restores.
    let l0 = l(0);
    if let Some(first) = l0.first() {
        assert_eq!(min_of(first), oldest + 1, "gap after the oldest snapshot");
    }
    for w in l0.windows(2) {
        assert_eq!(min_of(&w[1]), max_of(&w[0]) + 1);
    }
    // Restore from the oldest snapshot and the L0 chain equals the source.
    let out = dir.path().join("restored.db");
    let mut args = vec!["ltx", "apply", "--db", s(&out), s(&snaps[0])];
    args.extend(l0.iter().map(|p| s(p)));
    let o = sluice(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    assert_eq!(
        stdout(&sluice(&["ltx", "checksum", s(&out)])),
        stdout(&sluice(&["ltx", "checksum", s(&db)]))
    );
    // The newest snapshot alone plus later L0 files too.
    let newest = snaps.last().unwrap();
    let out2 = dir.path().join("restored2.db");
    let mut args = vec!["ltx", "apply", "--db", s(&out2), s(newest)];
    let later: Vec<PathBuf> = l0
        .iter()
        .filter(|p| max_of(p) > max_of(newest))
        .cloned()
        .collect();
    args.extend(later.iter().map(|p| s(p)));
    let o = sluice(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out2).unwrap(), std::fs::read(&db).unwrap());
}

/// A transaction that grows the database past the 1 GiB lock page (page
/// size 65536: the lock page is 16385), then a write after it.
#[test]
fn a_transaction_past_the_lock_page_replicates_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_table(&db, 65536);
    let cfg = write_config(
        dir.path(),
        &db,
        &format!("file://{}", replica.display()),
        "",
        "",
    );
    let d = Daemon::start_ready(&cfg, &dir.path().join("sluice.log"));
    let c = open_app(&db, 65536);
    // SQLite caps one value at 1e9 bytes: two values in one transaction.
    c.execute_batch(
        "BEGIN; INSERT INTO t(v, b) VALUES ('big1', zeroblob(560000000));
         INSERT INTO t(v, b) VALUES ('big2', zeroblob(560000000)); COMMIT;",
    )
    .unwrap();
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    assert!(pages > 16385, "database has only {pages} pages");
    let t1 = settle(&db, &replica);
    let at_t1 = state_checksum(&db);
    c.execute("INSERT INTO t(v, b) VALUES ('after', randomblob(1000))", [])
        .unwrap();
    drop(c);
    let t2 = settle(&db, &replica);
    assert!(t2 > t1);
    d.stop_ok();
    let out = dir.path().join("restored.db");
    assert_eq!(restore_l0(&replica.join("ltx/0"), t1, &out), at_t1);
    let got = restore_l0(&replica.join("ltx/0"), t2, &out);
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    assert_eq!(got, stdout(&sluice(&["ltx", "checksum", s(&db)])).trim());
    let ok: String = Connection::open(&out)
        .unwrap()
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let n: i64 = Connection::open(&out)
        .unwrap()
        .query_row("SELECT count(*) FROM t WHERE v = 'after'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

/// A 1 MiB tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let o = run(Command::new("mount").args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            s(path),
        ]));
        assert!(
            o.status.success(),
            "mount tmpfs (the suite runs as root): {}",
            stderr(&o)
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_staging_disk_is_reported_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let staging = dir.path().join("staging");
    let fs = Tmpfs::mount(&staging, "1m");
    create_table(&db, 4096);
    let cfg = write_config(
        dir.path(),
        &db,
        &format!("file://{}", replica.display()),
        &format!("    staging-dir: {}\n", staging.display()),
        "",
    );
    let d = Daemon::start_ready(&cfg, &dir.path().join("sluice.log"));
    // Fill the staging disk, then commit more than it can hold.
    let filler = staging.join("filler");
    let _ = std::fs::write(&filler, vec![1u8; 900 * 1024]);
    let c = open_app(&db, 4096);
    c.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 300)
         INSERT INTO t(v, b) SELECT 'big ' || i, randomblob(1000) FROM n;",
    )
    .unwrap();
    assert!(
        d.wait_for_log("No space left on device", Duration::from_secs(60)),
        "{}",
        d.log_text()
    );
    // The application keeps working meanwhile.
    c.execute("INSERT INTO t(v) VALUES ('during the outage')", [])
        .unwrap();
    std::fs::remove_file(&filler).unwrap();
    drop(c);
    settle_with(&db, &staging, &replica);
    d.stop_ok();
    drop(fs);
    let out = dir.path().join("restored.db");
    let got = restore_l0(&replica.join("ltx/0"), u64::MAX, &out);
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    assert_eq!(got, stdout(&sluice(&["ltx", "checksum", s(&db)])).trim());
}

/// `settle` for a database with its own staging directory.
fn settle_with(db: &Path, staging: &Path, replica: &Path) -> u64 {
    let want = state_checksum(db);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let pos: Option<serde_json::Value> = std::fs::read(staging.join("position.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(p) = pos {
            if p["checksum"].as_str() == Some(want.as_str()) {
                let t = p["txid"].as_u64().unwrap();
                wait_replica(replica, t);
                return t;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("daemon never reached the source's state {want}");
}

/// Waits until the daemon has captured the source's committed state and the
/// S3 replica lists that TXID at level 0; returns the TXID.
fn settle_s3(db: &Path, url: &str) -> u64 {
    let want = state_checksum(db);
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if position_checksum(db) == want {
            let t = position_txid(db);
            while Instant::now() < deadline {
                let o = sluice(&["ls", "--json", url]);
                let listed: serde_json::Value =
                    serde_json::from_slice(&o.stdout).unwrap_or_default();
                let has = listed.as_array().is_some_and(|a| {
                    a.iter().any(|e| {
                        e["level"] == 0 && e["max_txid"].as_str() == Some(&format!("{t:016x}"))
                    })
                });
                if has {
                    return t;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the S3 replica never reached the source's state {want}");
}

/// The workload of the file test, against Garage, for both page sizes; with
/// page size 65536 also a transaction past the 1 GiB lock page.
#[test]
fn replicates_a_workload_to_garage_for_both_page_sizes() {
    let Some(g) = garage() else { return };
    for ps in [4096u32, 65536] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        create_table(&db, ps);
        let url = g.url(&unique(&format!("workload-{ps}")));
        let cfg = write_config(dir.path(), &db, &url, "", "");
        let d = Daemon::start_ready(&cfg, &dir.path().join("sluice.log"));
        let mut marks = workload(&db, dir.path(), ps, &|| settle_s3(&db, &url));
        if ps == 65536 {
            let c = open_app(&db, ps);
            c.execute_batch(
                "BEGIN; INSERT INTO t(v, b) VALUES ('big1', zeroblob(560000000));
                 INSERT INTO t(v, b) VALUES ('big2', zeroblob(560000000)); COMMIT;",
            )
            .unwrap();
            drop(c);
            let t = settle_s3(&db, &url);
            marks.push((t, state_checksum(&db)));
        }
        d.stop_ok();
        let l0 = dir.path().join("l0");
        download_l0(&url, &l0);
        let out = dir.path().join("restored.db");
        for (txid, want) in &marks {
            assert_eq!(
                &restore_l0(&l0, *txid, &out),
                want,
                "page size {ps}, TXID {txid:x}"
            );
            let ok: String = Connection::open(&out)
                .unwrap()
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok");
        }
    }
}

#[test]
fn sigusr1_writes_a_snapshot_on_demand() {
    let (dir, db, replica, cfg) = file_replica("    snapshot-interval: 24h\n");
    let log = dir.path().join("sluice.log");
    let d = Daemon::start_ready(&cfg, &log);
    {
        let c = open_app(&db, 4096);
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 500)
             INSERT INTO t(v) SELECT 'row ' || i FROM n;",
        )
        .unwrap();
    }
    let txid = settle(&db, &replica);
    let snaps = replica.join("ltx/9");
    assert!(!snaps.exists() || std::fs::read_dir(&snaps).unwrap().next().is_none());
    d.signal("-USR1");
    // The snapshot covers everything shipped when it was asked for.
    let want = format!("{:016x}-{txid:016x}.ltx", 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !snaps.join(&want).exists() {
        assert!(
            Instant::now() < deadline,
            "no snapshot {want} after SIGUSR1; log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = dir.path().join("restored.db");
    let o = sluice(&[
        "restore",
        "-o",
        s(&out),
        &format!("file://{}", replica.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&sluice(&["ltx", "checksum", s(&out)])).trim(),
        state_checksum(&db)
    );
    assert!(d.log_text().contains("on-demand snapshot written"));
    d.stop_ok();
}
