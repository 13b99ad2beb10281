//! The shipping pipeline's hardening: a config value that cannot panic, a
//! failed staging fsync that stops one database (and only that one), and an
//! executor that keeps serving `/metrics` and the watchdog while a gigabyte
//! is re-encoded for a Litestream-compatible replica.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration::env::{checkpointed_checksum, db_yaml, settle};
use integration::http::{free_port, http_get};
use integration::{s, sluice, stderr, Daemon, Setup, TestEnv};

#[test]
fn a_huge_duration_is_refused_in_one_line_naming_key_and_line() {
    let env = TestEnv::new();
    let cfg = env.path("huge.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    sync-interval: 99999999999999999999999h\n    replicas:\n      - url: {}\n",
            env.db.display(),
            env.url
        ),
    )
    .unwrap();
    let o = sluice(&["replicate", "--config", s(&cfg)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("sync-interval") && err.contains("line 3") && err.contains("too long"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// The number of times `needle` appears in the daemon's log.
fn count(d: &Daemon, needle: &str) -> usize {
    d.log_text().matches(needle).count()
}

#[test]
fn a_failed_staging_fsync_stops_that_database_and_the_other_replicates() {
    let addr = format!("127.0.0.1:{}", free_port());
    let good = TestEnv::new();
    let bad = TestEnv::new();
    let broken = bad.path("broken-disk");
    let cfg = good.path("two.yml");
    std::fs::write(
        &cfg,
        format!(
            "metrics-addr: {addr}\ndbs:\n{}{}",
            db_yaml(&good.db, &good.url, "", ""),
            db_yaml(
                &bad.db,
                &bad.url,
                &format!("    staging-dir: {}\n", broken.display()),
                ""
            ),
        ),
    )
    .unwrap();
    let fail = [("SLUICE_FAILPOINTS", "staging-fsync=broken-disk")];
    let mut d = Daemon::start_with_env(&cfg, &good.path("sluice.log"), &fail);
    assert!(
        d.wait_for_log("this database's replication stops", Duration::from_secs(60)),
        "{}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(
        log.contains("fsync of") && log.contains("broken-disk") && log.contains("os error 5"),
        "{log}"
    );
    // The other database replicates all along.
    let c = good.app();
    for i in 0..20 {
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("good {i}")])
            .unwrap();
    }
    settle(&good.db, &good.replica);
    let health = http_get(&addr, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 503") && health.contains(s(&bad.db)),
        "{health}"
    );
    assert!(!health.contains(&format!("{}:", s(&good.db))), "{health}");
    // No retry loop: the failure was met once and the database stopped.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&d, "fsync of"), 1, "{}", d.log_text());
    assert_eq!(count(&d, "sync failed"), 0, "{}", d.log_text());
    // A clean stop still reports the failed database.
    d.signal("-TERM");
    assert_ne!(d.wait(Duration::from_secs(60)), Some(0));
    let out = good.path("restored.db");
    assert_eq!(
        good.restore_l0(u64::MAX, &out),
        checkpointed_checksum(&good.db)
    );
    // Alone, the broken database stops the whole process, non-zero.
    let only = bad.path("only.yml");
    std::fs::write(
        &only,
        format!(
            "dbs:\n{}",
            db_yaml(
                &bad.db,
                &bad.url,
                &format!("    staging-dir: {}\n", broken.display()),
                ""
            )
        ),
    )
    .unwrap();
    let mut alone = Daemon::start_with_env(&only, &bad.path("alone.log"), &fail);
    let code = alone.wait(Duration::from_secs(60));
    assert!(
        matches!(code, Some(c) if c != 0),
        "{code:?}: {}",
        alone.log_text()
    );
}

/// A database of about `mib` MiB of incompressible rows.
fn big_database(env: &TestEnv, mib: u32) {
    env.app()
        .execute_batch(&format!(
            "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {})
             INSERT INTO t(v, b) SELECT 'big', randomblob(1000000) FROM n; COMMIT;
             PRAGMA wal_checkpoint(TRUNCATE);",
            mib
        ))
        .unwrap();
}

#[test]
fn metrics_and_the_watchdog_answer_while_a_gigabyte_is_reencoded() {
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Setup::new()
        .top_level(&format!("metrics-addr: {addr}\n"))
        .extra_replica("        litestream-compatible: true\n")
        .build();
    big_database(&env, 1024);
    let sock_path = env.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // systemd, played by a thread: it drains the socket and notes when each
    // WATCHDOG=1 arrived.
    let done = Arc::new(AtomicBool::new(false));
    let pings = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let listener = {
        let (done, pings) = (done.clone(), pings.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !done.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                        pings.lock().unwrap().push(Instant::now());
                    }
                }
            }
        })
    };
    // A 1 s watchdog: the daemon pings every 0.5 s.
    let d = env.start_with_env(&[
        ("NOTIFY_SOCKET", s(&sock_path)),
        ("WATCHDOG_USEC", "1000000"),
    ]);
    // Start-up writes the 1 GiB initial snapshot, then the uploader
    // re-encodes it (NoChecksum) and uploads it. Poll throughout.
    let started = Instant::now();
    let (mut slowest, mut polls) = (Duration::ZERO, 0u32);
    let deadline = Instant::now() + Duration::from_secs(600);
    let uploaded = env
        .replica
        .join("ltx/0/0000000000000001-0000000000000001.ltx");
    while !uploaded.exists() || polls < 20 {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        let t = Instant::now();
        let m = http_get(&addr, "/metrics");
        if m.starts_with("HTTP/1.1 200") {
            slowest = slowest.max(t.elapsed());
            polls += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = Instant::now();
    let mut times = vec![started];
    times.extend(pings.lock().unwrap().iter().filter(|t| **t <= ended));
    times.push(ended);
    let longest_gap = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    let took = started.elapsed();
    assert!(polls >= 20, "{polls} answered polls in {took:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "/metrics took {slowest:?} during the snapshot"
    );
    assert!(
        longest_gap < Duration::from_secs(1),
        "WATCHDOG=1 was {longest_gap:?} late during the snapshot"
    );
    env.settle();
    d.stop_ok();
    done.store(true, Ordering::Relaxed);
    listener.join().unwrap();
}
