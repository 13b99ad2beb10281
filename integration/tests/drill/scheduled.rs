//! Scheduled drills in the daemon (`drill-interval:`): the result and its
//! time as metrics, a failure when the replica is damaged, and no scratch
//! copy left in the staging directory.

use std::time::{Duration, Instant, SystemTime};

use integration::env::staging_dir;
use integration::http::{free_port, http_get};
use integration::Setup;

/// The value of a metric line starting with `prefix`, if present.
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits (bounded) until the drill timestamp passes `after`; returns the
/// metrics then.
fn next_drill(addr: &str, labels: &str, after: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = http_get(addr, "/metrics");
        let at = value(&m, &format!("sluice_drill_timestamp_seconds{{{labels}}}"));
        if at.is_some_and(|t| t > after) {
            return m;
        }
        assert!(Instant::now() < deadline, "no drill after {after}:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scheduled_drills_export_their_result_and_catch_a_damaged_replica() {
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Setup::new()
        .top_level(&format!("metrics-addr: {addr}\n"))
        .extra_db("    levels: [1h]\n    drill-interval: 1s\n")
        .build();
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let d = env.start_ready();
    let c = env.app();
    for i in 0..30 {
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
    }
    let txid = env.settle();
    let labels = format!("db=\"{}\",replica=\"replica0\"", env.db.display());
    let m = next_drill(&addr, &labels, started);
    // A drill after the settle: it saw everything.
    let m = next_drill(
        &addr,
        &labels,
        value(&m, &format!("sluice_drill_timestamp_seconds{{{labels}}}")).unwrap(),
    );
    assert_eq!(
        value(&m, &format!("sluice_drill_ok{{{labels}}}")),
        Some(1.0),
        "{m}\n{}",
        d.log_text()
    );
    let rto = value(&m, &format!("sluice_drill_rto_seconds{{{labels}}}")).unwrap();
    assert!(rto > 0.0 && rto < 30.0, "{m}");
    let rpo = value(&m, &format!("sluice_drill_rpo_seconds{{{labels}}}")).unwrap();
    assert!((0.0..5.0).contains(&rpo), "{m}");
    assert!(
        d.log_text().contains("scheduled drill ok"),
        "{}",
        d.log_text()
    );
    // Damage the newest file of the replica: the next drill fails.
    let newest = env.l0().join(format!("{txid:016x}-{txid:016x}.ltx"));
    let mut b = std::fs::read(&newest).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&newest, &b).unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The drill that ends first may have read the file before the damage;
    // the one after it cannot have.
    let m = next_drill(&addr, &labels, now);
    let at = value(&m, &format!("sluice_drill_timestamp_seconds{{{labels}}}")).unwrap();
    let m = next_drill(&addr, &labels, at);
    assert_eq!(
        value(&m, &format!("sluice_drill_ok{{{labels}}}")),
        Some(0.0),
        "{m}"
    );
    assert!(
        d.wait_for_log("scheduled drill failed: restore: ", Duration::from_secs(10)),
        "{}",
        d.log_text()
    );
    // The daemon itself keeps replicating, and leaves no scratch copy.
    assert!(http_get(&addr, "/healthz").starts_with("HTTP/1.1 200"));
    d.stop_ok();
    let scratch = staging_dir(&env.db).join("drill");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
