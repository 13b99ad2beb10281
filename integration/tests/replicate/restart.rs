//! Restarts: after a clean stop, a crash, an application checkpoint or lost
//! state files the daemon resumes without a new snapshot, and twenty
//! `kill -9`s leave a replica that restores to a gap-free prefix.

use std::path::Path;
use std::time::{Duration, Instant};

use integration::env::integrity;
use integration::{ltx_files, Setup, TestEnv, XorShift64};
use rusqlite::Connection;

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
    let env = TestEnv::new();
    {
        let c = env.app();
        // About 2 MB, so a new snapshot would be far above 64 KiB.
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000)
             INSERT INTO t(v, b) SELECT 'x' || i, randomblob(1000) FROM n;",
        )
        .unwrap();
    }
    let small_write = |n: i32| {
        let c = env.app();
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("restart {n}")])
            .unwrap();
    };
    let d = env.start();
    env.settle();
    small_write(0);
    env.settle();
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
        let before = replica_bytes(&env.replica);
        if *how == "lost state files" {
            // What a power failure can leave of the unsynced state files: an
            // empty position and torn replica progress. The staged files are
            // the truth; a repeated upload meets its own objects.
            let staging = env.path(".app.db-sluice");
            std::fs::write(staging.join("position.json"), b"").unwrap();
            std::fs::write(staging.join("replica-0.json"), b"{\"url\": \"fi").unwrap();
        }
        if *how == "app TRUNCATE checkpoint" {
            let c = env.app();
            let (busy, _, _): (i64, i64, i64) = c
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!(busy, 0);
            assert_eq!(
                std::fs::metadata(env.path("app.db-wal")).map_or(0, |m| m.len()),
                0
            );
        }
        let d = env.start_ready();
        small_write(n as i32 + 1);
        env.settle();
        let uploaded = replica_bytes(&env.replica) - before;
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
        !std::fs::read_to_string(&env.log)
            .unwrap()
            .contains("full-page file"),
        "{}",
        std::fs::read_to_string(&env.log).unwrap()
    );
    eprintln!("bytes uploaded after restart: {kinds:?}");
    // And the chain still restores to the source.
    let out = env.path("restored.db");
    let got = env.restore_l0(u64::MAX, &out);
    assert_eq!(got, env.checkpointed_checksum());
}

#[test]
fn survives_twenty_kill9s_with_gap_free_restores() {
    let env = Setup::new()
        .schema("CREATE TABLE n(id INTEGER PRIMARY KEY, pad BLOB);")
        .extra_db("    checkpoint-pages: 200\n")
        .build();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The application: one numbered row per transaction, SQLite's default
    // autocheckpoint on its own connection.
    let app = {
        let db = env.db.clone();
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
    let mut rng = XorShift64::new(0x1234_5678_9abc_def1);
    let out = env.path("restored.db");
    let mut max_rows = 0;
    for round in 0..20 {
        let d = env.start();
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        d.kill9();
        // The replica restores to a gap-free prefix of the committed rows.
        let files = ltx_files(&env.l0());
        if files.is_empty() {
            continue;
        }
        let _ = env.restore_l0(u64::MAX, &out);
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
    let d = env.start();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let committed = app.join().unwrap();
    env.settle();
    d.stop_ok();
    let got = env.restore_l0(u64::MAX, &out);
    let c = Connection::open(&out).unwrap();
    let count: i64 = c
        .query_row("SELECT count(*) FROM n", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, committed);
    assert_eq!(got, env.checkpointed_checksum());
    eprintln!("crash test: {committed} rows committed, max restored after a kill {max_rows}");
}
