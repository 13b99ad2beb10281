//! What goes wrong around the daemon: a second writer on the same replica,
//! bad databases and configs, an unreachable replica, a full staging disk
//! (a database deleted while replicated: `waiting.rs`). Each is reported clearly and
//! loses nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::env::{checkpointed_checksum, settle, settle_with};
use integration::{run, s, sluice, stderr, Daemon, Setup, TestEnv};
use rusqlite::Connection;

#[test]
fn a_second_writer_on_the_same_replica_is_stopped() {
    let a_env = TestEnv::new();
    let b_env = Setup::new().file_replica(&a_env.replica).build();
    let replica = &a_env.replica;
    let envs = [&a_env, &b_env];
    for (env, name) in envs.iter().zip(["a", "b"]) {
        env.app()
            .execute("INSERT INTO t(v) VALUES (?1)", [format!("from {name}")])
            .unwrap();
    }
    // Started together: both find an empty replica; put-if-absent decides.
    let mut a = a_env.start();
    let mut b = b_env.start();
    std::thread::sleep(Duration::from_secs(2));
    for env in envs {
        env.app()
            .execute("INSERT INTO t(v) VALUES ('more')", [])
            .unwrap();
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
        (a, &mut b, &a_env.db)
    } else {
        (b, &mut a, &b_env.db)
    };
    loser.expect_failure("another writer owns this replica", Duration::from_secs(60));
    settle(wdb, replica);
    winner.stop_ok();
    // Nothing interleaved: the replica restores to the winner's database.
    let out = a_env.path("restored.db");
    let got = a_env.restore_l0(u64::MAX, &out);
    assert_eq!(got, checkpointed_checksum(wdb));
    // Started later, a second writer is refused at once.
    let mut late = Daemon::start(
        &envs[if a_alive { 1 } else { 0 }].config,
        &a_env.path("late.log"),
    );
    late.expect_failure("another writer owns this replica", Duration::from_secs(60));
}

#[test]
fn bad_databases_get_clear_errors_and_stay_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("replica").display());
    // A missing database is waited for (see waiting.rs), never created.
    let missing = dir.path().join("missing.db");
    let log = dir.path().join("missing.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(integration::sluice_bin())
        .args(["replicate", s(&missing), &url])
        .env("NO_COLOR", "1")
        .stderr(f)
        .spawn()
        .unwrap();
    let d = Daemon { child, log };
    assert!(
        d.wait_for_log("does not exist yet", Duration::from_secs(30)),
        "{}",
        d.log_text()
    );
    assert!(!missing.exists(), "sluice created the database");
    d.stop_ok();
    assert!(!missing.exists(), "sluice created the database");

    // A file that is not a SQLite database is refused at once, untouched.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let o = sluice(&["replicate", s(&junk), &url]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is not a SQLite database"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&junk).unwrap(), vec![b'x'; 4096]);

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
fn an_unreachable_replica_is_retried_and_nothing_is_lost() {
    let env = TestEnv::new();
    let replica = &env.replica;
    let aside = env.path("replica.aside");
    // A file where the replica directory should be: every call fails.
    std::fs::write(replica, b"in the way").unwrap();
    // First run: the store is down at start-up; sluice keeps trying.
    let d = env.start();
    assert!(
        d.wait_for_log("cannot list the replica yet", Duration::from_secs(60)),
        "{}",
        d.log_text()
    );
    env.app()
        .execute("INSERT INTO t(v) VALUES ('before the store came up')", [])
        .unwrap();
    std::fs::remove_file(replica).unwrap();
    env.settle();
    d.stop_ok();
    // Second run: the store goes away while running, and comes back.
    std::fs::rename(replica, &aside).unwrap();
    std::fs::write(replica, b"in the way").unwrap();
    let d = env.start_ready();
    env.app()
        .execute("INSERT INTO t(v) VALUES ('while the store was down')", [])
        .unwrap();
    assert!(
        d.wait_for_log("upload failed, will retry", Duration::from_secs(60)),
        "{}",
        d.log_text()
    );
    std::fs::remove_file(replica).unwrap();
    std::fs::rename(&aside, replica).unwrap();
    env.settle();
    d.stop_ok();
    let out = env.path("restored.db");
    env.restore_l0(u64::MAX, &out);
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

/// A tmpfs of a given size mounted for the test, unmounted on drop.
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
    // The staging directory, a 1 MiB tmpfs, lives beside the environment:
    // its path goes into the config the environment writes.
    let base = tempfile::tempdir().unwrap();
    let staging = base.path().join("staging");
    let fs = Tmpfs::mount(&staging, "1m");
    let env = Setup::new()
        .extra_db(&format!("    staging-dir: {}\n", staging.display()))
        .build();
    let d = env.start_ready();
    // Fill the staging disk, then commit more than it can hold.
    let filler = staging.join("filler");
    let _ = std::fs::write(&filler, vec![1u8; 900 * 1024]);
    let c = env.app();
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
    settle_with(&env.db, &staging, &env.replica);
    d.stop_ok();
    drop(fs);
    let out = env.path("restored.db");
    let got = env.restore_l0(u64::MAX, &out);
    assert_eq!(got, env.checkpointed_checksum());
}

/// Fills `dir`'s filesystem with one file (chunks until `ENOSPC`, bounded by
/// `max`); returns its size.
fn fill_disk(file: &Path, max: usize) -> usize {
    use std::io::Write;
    let mut f = std::fs::File::create(file).unwrap();
    let chunk = vec![7u8; 4096];
    let mut written = 0;
    while written < max {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", file.display()),
        }
    }
    written
}

/// Fault harness, item 5: the staging directory on a 4 MiB tmpfs that fills
/// up (another file takes all its space) under an application that commits
/// numbered rows, for `SLUICE_FULL_DISK_SECS` (default 8). The daemon says
/// why in one clear line and keeps running, the application is never
/// blocked, the replica stays a gap-free prefix, and once the space returns
/// the daemon catches up by itself and the restore equals the source.
#[test]
fn a_full_staging_disk_under_load_recovers_when_space_returns() {
    use integration::env::restore_l0;
    use integration::faults::{env_number, gap_free_rows, wal_bytes, NumberedWriter, NUMBERED};
    let full_for = Duration::from_secs(env_number("SLUICE_FULL_DISK_SECS", 8));
    let base = tempfile::tempdir().unwrap();
    let staging = base.path().join("staging");
    let fs = Tmpfs::mount(&staging, "4m");
    let env = Setup::new()
        .schema(NUMBERED)
        .extra_db(&format!("    staging-dir: {}\n", staging.display()))
        .build();
    // Alive throughout: it catches up by itself when the space returns, and
    // stops cleanly at the end.
    let d = env.start_ready();
    let app = NumberedWriter::start(
        &env.db,
        500,
        Duration::from_millis(5),
        full_for + Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_secs(2));
    let filler = staging.join("filler");
    let filled = fill_disk(&filler, 8 << 20);
    let full = Instant::now();
    let at_full = position_txid_in(&staging);
    eprintln!(
        "full disk: staging on a 4 MiB tmpfs; {} rows committed, staged TXID {at_full:x}; \
         filled the last {} KiB",
        app.committed(),
        filled / 1024
    );
    let out = env.path("during.db");
    let mut samples = 0;
    while full.elapsed() < full_for {
        std::thread::sleep(Duration::from_secs(1).min(full_for.saturating_sub(full.elapsed())));
        // The replica stays a gap-free prefix meanwhile.
        restore_l0(&env.l0(), u64::MAX, &out);
        let rows = gap_free_rows(&out, "a restore while the staging disk is full");
        let begun = app.begun();
        assert!(rows <= begun, "{rows} rows restored, {begun} begun");
        samples += 1;
        eprintln!(
            "full disk: +{:>3} s  begun {begun:>6} rows  staged TXID {:>4x}  replica restores {rows} rows (gap-free)  WAL {} KiB",
            full.elapsed().as_secs(),
            position_txid_in(&staging),
            wal_bytes(&env.db) / 1024
        );
    }
    let log = d.log_text();
    let reason = "free space on its filesystem (sluice keeps retrying)";
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(reason)).collect();
    assert!(
        !lines.is_empty() && log.contains("No space left on device"),
        "no clear error for the full disk:\n{log}"
    );
    eprintln!(
        "full disk: the daemon said, {} times in {} s: {}",
        lines.len(),
        full_for.as_secs(),
        lines[0]
    );
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let stuck = position_txid_in(&staging);
    let deadline = freed + Duration::from_secs(60);
    while position_txid_in(&staging) <= stuck {
        assert!(
            Instant::now() < deadline,
            "no progress 60 s after the space returned"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "full disk: space returned; staging moved on from TXID {stuck:x} after {} ms",
        freed.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_secs(1));
    let committed = app.stop();
    settle_with(&env.db, &staging, &env.replica);
    d.stop_ok();
    drop(fs);
    let got = env.restore_l0(u64::MAX, &out);
    assert_eq!(gap_free_rows(&out, "the restore after recovery"), committed);
    assert_eq!(got, env.checkpointed_checksum());
    eprintln!(
        "full disk summary: {} s full ({samples} restores meanwhile, all gap-free prefixes); \
         recovered without a restart; {committed} rows committed, the final restore equals the source",
        full_for.as_secs()
    );
}

/// The TXID of the position in a staging directory (0 without one).
fn position_txid_in(staging: &Path) -> u64 {
    integration::env::position(staging)
        .and_then(|p| p["txid"].as_u64())
        .unwrap_or(0)
}
