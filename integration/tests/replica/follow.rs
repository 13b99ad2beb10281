//! A replica mounted from the Garage bucket `sluice replicate` writes:
//! freshness, whole transactions for concurrent reader processes,
//! read-only errors, resuming, two replicas, compaction and retention.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::{garage, s, sluice, unique, Setup};
use rusqlite::{Connection, OpenFlags};

use crate::{dump, fuse_available, sqlite3, Replica};

/// A bank: 1000 accounts of 1000, a transfer log whose length `meta.n`
/// repeats, and 4 MB of incompressible filler (so that a full download and
/// a resume differ plainly in bytes fetched).
const BANK: &str = "
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);
CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL);
CREATE TABLE xfer(id INTEGER PRIMARY KEY, amt INTEGER NOT NULL);
CREATE TABLE meta(n INTEGER NOT NULL);
INSERT INTO meta VALUES (0);
WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM r WHERE i < 1000)
  INSERT INTO acct SELECT i, 1000 FROM r;
CREATE TABLE filler(b BLOB);
WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM r WHERE i < 1000)
  INSERT INTO filler SELECT randomblob(4000) FROM r;
";
const TOTAL: i64 = 1000 * 1000;
const FILLER: u64 = 4_000_000;

/// A reader process: read transactions until the stop file exists (and at
/// least `min` were made), each checking the total balance and that the
/// transfer count equals `meta.n`; prints its tally as JSON.
const READER: &str = r#"
import json, os, sqlite3, sys, time
db, total, stop, least = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30, isolation_level=None)
reads = bad = 0
seen = set()
t0 = time.time()
while reads < 100000 and time.time() - t0 < 150:
    if reads >= least and os.path.exists(stop):
        break
    c.execute("BEGIN")
    s = c.execute("SELECT sum(bal) FROM acct").fetchone()[0]
    n = c.execute("SELECT n FROM meta").fetchone()[0]
    k = c.execute("SELECT count(*) FROM xfer").fetchone()[0]
    c.execute("COMMIT")
    reads += 1
    if s != total or n != k:
        bad += 1
    seen.add(n)
print(json.dumps({"reads": reads, "bad": bad, "versions": len(seen)}))
"#;

fn transfer(c: &Connection, rng: &mut integration::XorShift64) {
    let from = 1 + rng.below(1000);
    let to = 1 + rng.below(1000);
    let amt = rng.below(50);
    c.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         UPDATE acct SET bal = bal - {amt} WHERE id = {from};
         UPDATE acct SET bal = bal + {amt} WHERE id = {to};
         INSERT INTO xfer(amt) VALUES ({amt});
         UPDATE meta SET n = n + 1;
         COMMIT;"
    ))
    .unwrap();
}

fn replica_args<'a>(cache: &'a Path, poll: &'a str) -> Vec<&'a str> {
    vec![
        "--db",
        "app.db",
        "--poll-interval",
        poll,
        "--cache-dir",
        s(cache),
    ]
}

/// New rows reach a reader of the replica within two poll intervals of
/// their commit on the primary.
fn check_freshness(env: &integration::TestEnv, r: &Replica) {
    let app = env.app();
    let ro = Connection::open_with_flags(r.db(), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    ro.busy_timeout(Duration::from_secs(10)).unwrap();
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let v = format!("fresh {i}");
        app.execute("INSERT INTO t(v) VALUES (?1)", [&v]).unwrap();
        let t0 = Instant::now();
        loop {
            let n: i64 = ro
                .query_row("SELECT count(*) FROM t WHERE v = ?1", [&v], |r| r.get(0))
                .unwrap();
            if n == 1 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{v} never arrived");
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = t0.elapsed();
        eprintln!("freshness: {v} visible after {took:?} (poll interval 1s)");
        assert!(took <= Duration::from_secs(2), "{v} took {took:?}");
        let (ok, out, err) = sqlite3(&r.db(), &format!("SELECT count(*) FROM t WHERE v = '{v}'"));
        assert!(ok && out.trim() == "1", "sqlite3: {out}{err}");
    }
}

/// Writes through the mount fail: SQLite says read-only, the file system
/// says EROFS, and no journal, WAL or shm file can appear.
fn check_read_only(r: &Replica) {
    let (ok, _, err) = sqlite3(&r.db(), "INSERT INTO t(v) VALUES ('no')");
    assert!(!ok, "a write through sqlite3 succeeded");
    assert!(
        err.contains("attempt to write a readonly database"),
        "sqlite3 said: {err}"
    );
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(r.db())
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(EROFS), "open(O_WRONLY): {e}");
    for side in ["-journal", "-wal", "-shm"] {
        let p = r.mnt.join(format!("app.db{side}"));
        let e = std::fs::File::create(&p).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(EROFS), "{}: {e}", p.display());
    }
    let e = std::fs::write(r.mnt.join("app.db-pos"), "0").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(EROFS), "-pos: {e}");
}

/// `libc::EROFS` (the test crate does not depend on libc).
const EROFS: i32 = 30;

/// Three reader processes check the bank's invariant in every read
/// transaction while transfers stream in; returns each one's tally.
fn bank_with_readers(env: &integration::TestEnv, r: &Replica) -> Vec<serde_json::Value> {
    let script = env.path("reader.py");
    std::fs::write(&script, READER).unwrap();
    let stop = env.path("stop-readers");
    let readers: Vec<_> = (0..3)
        .map(|_| {
            Command::new("python3")
                .arg(&script)
                .arg(r.db())
                .arg(TOTAL.to_string())
                .arg(&stop)
                .arg("2000")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let app = env.app();
    let mut rng = integration::XorShift64::new(13);
    let t0 = Instant::now();
    let mut n = 0;
    while n < 3000 && t0.elapsed() < Duration::from_secs(20) {
        transfer(&app, &mut rng);
        n += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!("bank: {n} transfers in {:?}", t0.elapsed());
    // Let the replica take in the last steps while the readers still read.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(&stop, "").unwrap();
    readers
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            assert!(
                o.status.success(),
                "reader: {out}{}",
                String::from_utf8_lossy(&o.stderr)
            );
            serde_json::from_str(out.trim()).unwrap()
        })
        .collect()
}

#[test]
fn a_replica_follows_garage_consistently_and_read_only() {
    let Some(g) = garage() else { return };
    if !fuse_available() {
        return;
    }
    let prefix = unique("replica");
    let url = g.url(&format!("{prefix}/app.db"));
    let base = g.url(&prefix);
    let env = Setup::new().url(&url).schema(BANK).build();
    let d = env.start_ready();
    let t0 = env.settle_s3();
    let cache_a = env.path("cache-a");
    let args_a = replica_args(&cache_a, "1s");
    let a = Replica::start(&base, &env.path("mnt-a"), "app.db", &args_a);
    a.wait_txid(t0, Duration::from_secs(30));
    assert_eq!(dump(&a.db()), dump(&env.db));
    let first = a.bytes_fetched();
    assert!(first >= FILLER, "a first start fetched {first} bytes");

    check_freshness(&env, &a);
    check_read_only(&a);

    let tallies = bank_with_readers(&env, &a);
    for t in &tallies {
        eprintln!("reader: {t}");
        assert_eq!(t["bad"], 0, "a reader saw a torn state: {t}");
        assert!(t["reads"].as_u64().unwrap() >= 2000, "{t}");
        assert!(t["versions"].as_u64().unwrap() >= 5, "{t}");
    }
    let t1 = env.settle_s3();
    a.wait_txid(t1, Duration::from_secs(30));
    assert_eq!(dump(&a.db()), dump(&env.db));
    eprintln!("{}", a.status_line());

    // A second replica of the same bucket agrees byte for byte.
    let cache_b = env.path("cache-b");
    let b = Replica::start(
        &base,
        &env.path("mnt-b"),
        "app.db",
        &replica_args(&cache_b, "250ms"),
    );
    b.wait_txid(t1, Duration::from_secs(30));
    assert_eq!(b.pos(), a.pos());
    assert!(std::fs::read(a.db()).unwrap() == std::fs::read(b.db()).unwrap());
    b.stop();

    // A remount resumes from its cache: far fewer bytes than a download.
    a.stop();
    let app = env.app();
    for i in 0..20 {
        app.execute("INSERT INTO t(v) VALUES (?1)", [format!("while away {i}")])
            .unwrap();
    }
    let t2 = env.settle_s3();
    let a = Replica::start(&base, &env.path("mnt-a"), "app.db", &args_a);
    a.wait_txid(t2, Duration::from_secs(30));
    let resumed = a.bytes_fetched();
    eprintln!("bytes fetched: first start {first}, resume {resumed}");
    assert!(resumed * 20 < first, "resume fetched {resumed} of {first}");
    assert_eq!(dump(&a.db()), dump(&env.db));
    a.stop();
    d.stop_ok();
}

/// The level-0 file starting at `min` is listed.
fn has_l0_from(url: &str, min: u64) -> bool {
    let o = sluice(&["ls", "--json", url]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    listed.as_array().is_some_and(|a| {
        a.iter()
            .any(|e| e["level"] == 0 && e["min_txid"].as_str() == Some(&format!("{min:016x}")))
    })
}

#[test]
fn a_replica_survives_compaction_and_retention() {
    let Some(g) = garage() else { return };
    if !fuse_available() {
        return;
    }
    let prefix = unique("replica-gc");
    let url = g.url(&format!("{prefix}/app.db"));
    let env = Setup::new()
        .url(&url)
        .extra_db("    levels: [1s, 2s]\n    snapshot-interval: 2s\n    retention: 3s\n")
        .build();
    let d = env.start_ready();
    let app = env.app();
    env.settle_s3();
    let cache = env.path("cache");
    let args = ["--poll-interval", "200ms", "--cache-dir", s(&cache)];
    let r = Replica::start(&url, &env.path("mnt"), "app.db", &args);
    // Files are compacted and removed while the replica follows.
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed() < Duration::from_secs(6) {
        app.execute(
            "INSERT INTO t(v, b) VALUES (?1, randomblob(500))",
            [format!("r{i}")],
        )
        .unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let t1 = env.settle_s3();
    r.wait_txid(t1, Duration::from_secs(30));
    assert_eq!(dump(&r.db()), dump(&env.db));
    // Stopped, the replica misses files that retention then removes.
    r.stop();
    app.execute("INSERT INTO t(v) VALUES ('gone')", []).unwrap();
    let t2 = env.settle_s3();
    assert_eq!(t2, t1 + 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while has_l0_from(&url, t2) {
        assert!(
            Instant::now() < deadline,
            "retention never removed L0 {t2:x}"
        );
        app.execute("INSERT INTO t(v) VALUES ('later')", [])
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    let t3 = env.settle_s3();
    let r = Replica::start(&url, &env.path("mnt"), "app.db", &args);
    r.wait_txid(t3, Duration::from_secs(30));
    assert_eq!(dump(&r.db()), dump(&env.db));
    r.stop();
    d.stop_ok();
}
