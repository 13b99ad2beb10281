//! Compaction levels, snapshots (periodic and on SIGUSR1), retention, the
//! metrics endpoint and systemd's readiness notification.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use integration::env::{checkpoint, ltx_checksum};
use integration::http::{free_port, http_get, metric};
use integration::{ltx_files, s, sluice, stderr, stdout, Setup};

#[test]
fn levels_snapshots_retention_metrics_and_systemd_notify() {
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Setup::new()
        .top_level(&format!("metrics-addr: {addr}\n"))
        .extra_db("    levels: [1s, 2s]\n    snapshot-interval: 2s\n    retention: 3s\n")
        .build();
    let (db, replica) = (&env.db, &env.replica);
    // systemd's notify socket, played by the test.
    let sock_path = env.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let d = env.start_with_env(&[("NOTIFY_SOCKET", s(&sock_path))]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    let c = env.app();
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
    env.settle();
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
    let log = env.log_text();
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
    let out = env.path("restored.db");
    let mut args = vec!["ltx", "apply", "--db", s(&out), s(&snaps[0])];
    args.extend(l0.iter().map(|p| s(p)));
    let o = sluice(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    checkpoint(db);
    assert_eq!(ltx_checksum(&out), ltx_checksum(db));
    // The newest snapshot alone plus later L0 files too.
    let newest = snaps.last().unwrap();
    let out2 = env.path("restored2.db");
    let mut args = vec!["ltx", "apply", "--db", s(&out2), s(newest)];
    let later: Vec<PathBuf> = l0
        .iter()
        .filter(|p| max_of(p) > max_of(newest))
        .cloned()
        .collect();
    args.extend(later.iter().map(|p| s(p)));
    let o = sluice(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out2).unwrap(), std::fs::read(db).unwrap());
}

#[test]
fn sigusr1_writes_a_snapshot_on_demand() {
    let env = Setup::new()
        .extra_db("    snapshot-interval: 24h\n")
        .build();
    let d = env.start_ready();
    {
        let c = env.app();
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 500)
             INSERT INTO t(v) SELECT 'row ' || i FROM n;",
        )
        .unwrap();
    }
    let txid = env.settle();
    let snaps = env.replica.join("ltx/9");
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
    let out = env.path("restored.db");
    let o = sluice(&["restore", "-o", s(&out), &env.url]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&sluice(&["ltx", "checksum", s(&out)])).trim(),
        env.state_checksum()
    );
    assert!(d.log_text().contains("on-demand snapshot written"));
    d.stop_ok();
}
