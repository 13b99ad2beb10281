//! A sidecar that starts before its application: a database that does not
//! exist yet, or is not yet in WAL mode, is waited for while the others
//! replicate; a database deleted or replaced while replicated is waited for
//! again, and the new file never continues the old history silently.

use std::time::{Duration, Instant};

use integration::env::{checkpointed_checksum, db_yaml, open_app, settle, TABLE_T};
use integration::http::{free_port, http_get, metric};
use integration::{s, sluice, stderr, Daemon, TestEnv};

/// `sluice restore` of a file replica (latest, or `--txid`) into `out`;
/// returns the restored database's LTX checksum.
fn restore(replica: &std::path::Path, txid: Option<u64>, out: &std::path::Path) -> String {
    let _ = std::fs::remove_file(out);
    let url = format!("file://{}", replica.display());
    let hex = txid.map(|t| format!("{t:x}"));
    let mut args = vec!["restore", "-o", s(out)];
    if let Some(h) = &hex {
        args.extend(["--txid", h]);
    }
    args.push(&url);
    let o = sluice(&args);
    assert!(o.status.success(), "restore: {}", stderr(&o));
    integration::env::ltx_checksum(out)
}

fn insert(c: &rusqlite::Connection, what: &str, n: usize) {
    for i in 0..n {
        c.execute(
            "INSERT INTO t(v, b) VALUES (?1, randomblob(300))",
            [format!("{what} {i}")],
        )
        .unwrap();
    }
}

/// Waits (bounded) until `/healthz` satisfies `f`; returns the response.
fn wait_health(addr: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = http_get(addr, "/healthz");
        if f(&h) || Instant::now() > deadline {
            return h;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_database_created_5s_after_start_is_waited_for_and_both_restore() {
    let addr = format!("127.0.0.1:{}", free_port());
    let first = TestEnv::new();
    let second = first.path("second.db");
    let second_replica = first.path("second-replica");
    let cfg = first.path("two.yml");
    std::fs::write(
        &cfg,
        format!(
            "metrics-addr: {addr}\ndbs:\n{}{}",
            db_yaml(&first.db, &first.url, "", ""),
            db_yaml(
                &second,
                &format!("file://{}", second_replica.display()),
                "",
                ""
            ),
        ),
    )
    .unwrap();
    let started = Instant::now();
    let d = Daemon::start(&cfg, &first.log);
    // The first database replicates while the second does not exist.
    insert(&first.app(), "first", 50);
    settle(&first.db, &first.replica);
    let h = wait_health(&addr, |h| h.contains("waiting"));
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(
        h.contains(&format!("{}: waiting: database", second.display()))
            && h.contains("does not exist yet"),
        "{h}"
    );
    let m = http_get(&addr, "/metrics");
    let waiting = format!("sluice_db_waiting{{db=\"{}\"}}", second.display());
    assert_eq!(metric(&m, &waiting), 1.0, "{m}");
    assert!(!second.exists(), "sluice created the database");
    // The application creates it 5 s after start.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(started.elapsed()));
    let c2 = open_app(&second, 4096);
    c2.execute_batch(TABLE_T).unwrap();
    insert(&c2, "second", 40);
    settle(&second, &second_replica);
    let h = wait_health(&addr, |h| !h.contains("waiting"));
    assert_eq!(h.lines().last(), Some("ok"), "{h}");
    assert_eq!(metric(&http_get(&addr, "/metrics"), &waiting), 0.0);
    insert(&first.app(), "first again", 10);
    settle(&first.db, &first.replica);
    // Waiting was logged once, not on every check.
    let log = d.log_text();
    assert_eq!(log.matches("does not exist yet").count(), 1, "{log}");
    assert!(log.contains("database ready after waiting"), "{log}");
    d.stop_ok();
    for (db, replica, name) in [
        (&first.db, &first.replica, "r1.db"),
        (&second, &second_replica, "r2.db"),
    ] {
        let out = first.path(name);
        assert_eq!(restore(replica, None, &out), checkpointed_checksum(db));
        assert_eq!(integration::env::integrity(&out), "ok");
    }
}

#[test]
fn a_database_not_yet_in_wal_mode_is_waited_for_untouched() {
    let env = integration::Setup::new().without_database().build();
    let c = rusqlite::Connection::open(&env.db).unwrap();
    c.execute_batch(TABLE_T).unwrap();
    c.execute("INSERT INTO t(v) VALUES ('rollback')", [])
        .unwrap();
    let before = std::fs::read(&env.db).unwrap();
    let d = env.start();
    assert!(
        d.wait_for_log("not in WAL mode", Duration::from_secs(30)),
        "{}",
        d.log_text()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(std::fs::read(&env.db).unwrap(), before, "sluice wrote it");
    assert_eq!(d.log_text().matches("not in WAL mode").count(), 1);
    // The application switches to WAL mode: replication starts.
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    insert(&c, "wal", 20);
    env.settle();
    d.stop_ok();
    let out = env.path("restored.db");
    assert_eq!(
        restore(&env.replica, None, &out),
        env.checkpointed_checksum()
    );
}

/// Removes a database with its `-wal` and `-shm`, as an application
/// resetting its data does.
fn remove_db(db: &std::path::Path) {
    std::fs::remove_file(db).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

#[test]
fn a_database_deleted_and_created_again_is_waited_for_and_never_follows_the_old_history() {
    let addr = format!("127.0.0.1:{}", free_port());
    let env = integration::Setup::new()
        .top_level(&format!("metrics-addr: {addr}\n"))
        .build();
    let d = env.start_ready();
    let c = env.app();
    insert(&c, "old", 60);
    let old_txid = env.settle();
    let old_sum = env.state_checksum();
    drop(c);
    remove_db(&env.db);
    assert!(
        d.wait_for_log("was deleted while replicated", Duration::from_secs(30)),
        "{}",
        d.log_text()
    );
    let h = wait_health(&addr, |h| h.contains("waiting"));
    assert!(
        h.starts_with("HTTP/1.1 200") && h.contains("waiting"),
        "{h}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(!env.db.exists(), "sluice created the database");
    // A new database, other content, at the same path.
    let c = env.app();
    c.execute_batch(TABLE_T).unwrap();
    insert(&c, "new", 25);
    let new_txid = env.settle();
    assert!(new_txid > old_txid);
    let log = d.log_text();
    assert!(
        log.contains("wrote a full-page file")
            && log.contains("was replaced (or deleted and created again)"),
        "{log}"
    );
    // Replaced by a copy of exactly the replicated state: capture goes on
    // without a full-page file.
    drop(c);
    let copy = env.path("copy.db");
    integration::env::checkpoint(&env.db);
    std::fs::copy(&env.db, &copy).unwrap();
    std::fs::rename(&copy, &env.db).unwrap();
    assert!(
        d.wait_for_log("was replaced by another file", Duration::from_secs(30)),
        "{}",
        d.log_text()
    );
    assert!(
        d.wait_for_log(
            "holds exactly the replicated state",
            Duration::from_secs(30)
        ),
        "{}",
        d.log_text()
    );
    insert(&env.app(), "after copy", 5);
    env.settle();
    assert_eq!(d.log_text().matches("wrote a full-page file").count(), 1);
    d.stop_ok();
    let out = env.path("restored.db");
    assert_eq!(
        restore(&env.replica, None, &out),
        env.checkpointed_checksum()
    );
    assert_eq!(restore(&env.replica, Some(old_txid), &out), old_sum);
}
