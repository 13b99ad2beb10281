//! Capture and recovery on real SQLite files, with the commit points called
//! directly (the filesystem that calls them is tested end to end with real
//! mounts in `integration/tests/mount/`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ltx_format::{Applier, Checksum, Txid};
use rusqlite::Connection;

use super::capture::DbCapture;
use super::recover::{journal_path, open_capture};
use crate::pipeline::metrics::DbMetrics;
use crate::pipeline::{Pipeline, Stops};
use crate::staging::StagingDir;

struct Env {
    _dir: tempfile::TempDir,
    db: PathBuf,
    staging: StagingDir,
}

fn env(mode: &str) -> (Env, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let c = Connection::open(&db).unwrap();
    c.query_row(&format!("PRAGMA journal_mode={mode}"), [], |_| Ok(()))
        .unwrap();
    c.execute_batch(
        "PRAGMA wal_autocheckpoint=0; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t(v) VALUES ('seed');",
    )
    .unwrap();
    let staging = StagingDir::new(dir.path().join("staging"));
    (
        Env {
            db,
            staging,
            _dir: dir,
        },
        c,
    )
}

fn open(e: &Env) -> DbCapture {
    let (handoff, _rx) =
        Pipeline::handoff(&e.staging, Arc::new(DbMetrics::default()), Stops::default());
    open_capture(&e.db, &e.staging, handoff, true).unwrap()
}

/// The database checksum of what SQLite sees now.
fn state(db: &Path) -> Checksum {
    let f = File::open(db).unwrap();
    let mut src = crate::wal::source::DbSource::open(&f, db).unwrap();
    let mut enc_sum = ltx_format::DbChecksum::new();
    let lock = ltx_format::lock_pgno(src.page_size);
    let mut buf = vec![0u8; src.page_size.as_usize()];
    for pgno in (1..=src.commit).filter(|&p| p != lock) {
        src.read_page(pgno, &mut buf).unwrap();
        enc_sum.toggle(ltx_format::checksum_page(pgno, &buf));
    }
    enc_sum.value()
}

/// Applies every staged L0 file up to `upto` and returns the result's
/// checksum (each file's checksums are verified on the way).
fn restored(staging: &StagingDir, upto: u64, out: &Path) -> Checksum {
    let _ = std::fs::remove_file(out);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .unwrap();
    let mut a = Applier::new(f, None);
    for l in staging.list_level(0).unwrap() {
        if l.max.0 <= upto {
            a.apply_path(&l.path).unwrap();
        }
    }
    a.finish().unwrap();
    ltx_format::checksum_database(std::io::BufReader::new(File::open(out).unwrap()))
        .unwrap()
        .0
}

/// A restore of the staged L0 files up to TXID i + 1 gives `want[i]`, for
/// every i.
fn restores_each(e: &Env, want: &[Checksum]) {
    let out = e.staging.root().join("out.db");
    for (i, sum) in want.iter().enumerate() {
        assert_eq!(
            restored(&e.staging, i as u64 + 1, &out),
            *sum,
            "TXID {}",
            i + 1
        );
    }
}

#[test]
fn every_wal_commit_is_one_txid() {
    let (e, c) = env("WAL");
    let mut cap = open(&e);
    assert_eq!(cap.txid(), Txid(1), "the initial snapshot");
    let mut want = vec![state(&e.db)];
    // Two commits before one unlock (a missed one): two files.
    for v in ["a", "b"] {
        c.execute("INSERT INTO t(v) VALUES (?1)", [v]).unwrap();
        want.push(state(&e.db));
    }
    assert_eq!(cap.wal_committed(true).unwrap(), 2);
    c.execute("UPDATE t SET v = v || '!'", []).unwrap();
    want.push(state(&e.db));
    assert_eq!(cap.wal_committed(true).unwrap(), 1);
    assert_eq!(cap.wal_committed(true).unwrap(), 0, "nothing new");
    assert_eq!(cap.txid(), Txid(4));
    restores_each(&e, &want);
}

#[test]
fn commits_past_the_wal_read_window_and_a_wal_made_anew_are_captured() {
    let (e, c) = env("WAL");
    let mut cap = open(&e);
    let mut want = vec![state(&e.db)];
    // Three commits before one unlock: a small one, one of about 1.3 MiB
    // (past the window read in one call), and a small one after it.
    c.execute("INSERT INTO t(v) VALUES ('small')", []).unwrap();
    want.push(state(&e.db));
    let big = "x".repeat(3000);
    c.execute_batch("BEGIN").unwrap();
    for _ in 0..400 {
        c.execute("INSERT INTO t(v) VALUES (?1)", [&big]).unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
    want.push(state(&e.db));
    c.execute("INSERT INTO t(v) VALUES ('after')", []).unwrap();
    want.push(state(&e.db));
    let wal = crate::wal::source::wal_path(&e.db);
    assert!(std::fs::metadata(&wal).unwrap().len() > 1 << 20);
    assert_eq!(cap.wal_committed(false).unwrap(), 3);
    cap.flush().unwrap();
    // The last connection closes: SQLite checkpoints and deletes the WAL,
    // and the flusher's round lets the capture's open WAL file go. The
    // next connection makes a new WAL file, which the capture reads.
    let held_deleted = || {
        std::fs::read_dir("/proc/self/fd").unwrap().any(|e| {
            std::fs::read_link(e.unwrap().path())
                .is_ok_and(|l| l.to_string_lossy() == format!("{} (deleted)", wal.display()))
        })
    };
    drop(c);
    assert!(!wal.exists());
    assert!(held_deleted());
    cap.flush().unwrap();
    assert!(!held_deleted(), "the deleted WAL's space is freed");
    let c = Connection::open(&e.db).unwrap();
    c.execute("INSERT INTO t(v) VALUES ('new wal')", [])
        .unwrap();
    want.push(state(&e.db));
    assert_eq!(cap.wal_committed(false).unwrap(), 1);
    // The same with the deleted WAL still held at the next commit point.
    drop(c);
    let c = Connection::open(&e.db).unwrap();
    c.execute("INSERT INTO t(v) VALUES ('newer wal')", [])
        .unwrap();
    want.push(state(&e.db));
    assert_eq!(cap.wal_committed(false).unwrap(), 1);
    cap.flush().unwrap();
    assert_eq!(cap.txid(), Txid(6));
    restores_each(&e, &want);
}

#[test]
fn the_flusher_hands_durable_files_over_outside_the_lock_in_order_and_retries_a_failure() {
    let (e, c) = env("WAL");
    let mut cap = open(&e);
    let l0 = |e: &Env| -> Vec<u64> {
        let files = e.staging.list_level(0).unwrap();
        files.iter().map(|f| f.max.0).collect()
    };
    for v in ["a", "b"] {
        c.execute("INSERT INTO t(v) VALUES (?1)", [v]).unwrap();
        assert_eq!(cap.wal_committed(false).unwrap(), 1);
    }
    // Nothing synced yet: nothing to do (not even the position hint, which
    // may name only published files).
    assert!(cap.take_synced().unwrap().is_none(), "nothing to do");
    assert_eq!(l0(&e), [1]);
    // Synced: the batch fails (`ltx/0` is a file for a moment), and the
    // files come back ahead of a newer commit.
    e.staging.sync_deferred_dir().unwrap();
    cap.synced_up_to(Txid(3));
    let b = cap.take_synced().unwrap().unwrap();
    let l0_dir = e.staging.level_dir(0);
    let aside = e.staging.root().join("aside");
    std::fs::rename(&l0_dir, &aside).unwrap();
    std::fs::write(&l0_dir, b"in the way").unwrap();
    assert!(b.run().is_err());
    std::fs::remove_file(&l0_dir).unwrap();
    std::fs::rename(&aside, &l0_dir).unwrap();
    c.execute("INSERT INTO t(v) VALUES ('c')", []).unwrap();
    assert_eq!(cap.wal_committed(false).unwrap(), 1);
    e.staging.sync_deferred_dir().unwrap();
    cap.synced_up_to(Txid(4));
    let b = cap.take_synced().unwrap().unwrap();
    // A flush (a durable commit's) waits for the batch in flight.
    let runner = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        b.run()
    });
    c.execute("INSERT INTO t(v) VALUES ('d')", []).unwrap();
    assert_eq!(cap.wal_committed(true).unwrap(), 1);
    assert_eq!(l0(&e), [1, 2, 3, 4, 5], "the batch went first");
    runner.join().unwrap().unwrap();
    assert!(e.staging.list_deferred().unwrap().is_empty());
}

#[test]
fn the_position_hint_names_only_published_files() {
    let (e, c) = env("WAL");
    let mut cap = open(&e);
    let at = cap.txid();
    let hint = |e: &Env| -> u64 {
        let p: Option<crate::wal::position::Position> =
            crate::state::read_json(&e.staging.position_path()).unwrap();
        p.map_or(0, |p| p.txid)
    };
    let before = hint(&e);
    for v in ["a", "b"] {
        c.execute("INSERT INTO t(v) VALUES (?1)", [v]).unwrap();
        assert_eq!(cap.wal_committed(false).unwrap(), 1);
    }
    // The first file is durable, the second not yet: the hint moves to the
    // first only (a power loss could take the second).
    e.staging.sync_deferred_dir().unwrap();
    cap.synced_up_to(Txid(at.0 + 1));
    cap.take_synced().unwrap().unwrap().run().unwrap();
    assert_eq!(hint(&e), at.0 + 1, "was {before}");
    e.staging.sync_deferred_dir().unwrap();
    cap.synced_up_to(Txid(at.0 + 2));
    cap.take_synced().unwrap().unwrap().run().unwrap();
    assert_eq!(hint(&e), at.0 + 2);
    assert!(cap.take_synced().unwrap().is_none(), "nothing left to do");
    // What the hint says is where capture resumes.
    drop(cap);
    assert_eq!(open(&e).txid(), Txid(at.0 + 2));
}

#[test]
fn a_fatal_hand_over_failure_stops_the_capture_before_anything_newer() {
    let (e, c) = env("WAL");
    let mut cap = open(&e);
    c.execute("INSERT INTO t(v) VALUES ('a')", []).unwrap();
    assert_eq!(cap.wal_committed(false).unwrap(), 1);
    e.staging.sync_deferred_dir().unwrap();
    cap.synced_up_to(Txid(2));
    let b = cap.take_synced().unwrap().unwrap();
    // Another file of that name in `ltx/0` already: never overwritten.
    std::fs::write(e.staging.ltx_path(0, Txid(2), Txid(2)), b"other").unwrap();
    let err = b.run().unwrap_err();
    assert!(err.is_fatal(), "{err}");
    c.execute("INSERT INTO t(v) VALUES ('b')", []).unwrap();
    let err = cap.wal_committed(true).unwrap_err();
    assert!(err.is_fatal(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("handing deferred files over failed: ")
            && msg.ends_with("already exists; shipped LTX files are never overwritten"),
        "{msg}"
    );
    assert_eq!(e.staging.list_level(0).unwrap().len(), 2, "nothing newer");
}

#[test]
fn deferred_files_are_uploaded_only_once_flushed() {
    let (e, c) = env("WAL");
    let mut cap = open(&e);
    c.execute("INSERT INTO t(v) VALUES ('x')", []).unwrap();
    assert_eq!(cap.wal_committed(false).unwrap(), 1);
    assert_eq!(
        e.staging.list_level(0).unwrap().len(),
        1,
        "not in ltx/0 yet"
    );
    assert_eq!(e.staging.list_deferred().unwrap().len(), 1);
    // A durable commit flushes the deferred ones first: no gap in ltx/0.
    c.execute("INSERT INTO t(v) VALUES ('y')", []).unwrap();
    assert_eq!(cap.wal_committed(true).unwrap(), 1);
    let l0: Vec<u64> = e
        .staging
        .list_level(0)
        .unwrap()
        .iter()
        .map(|f| f.max.0)
        .collect();
    assert_eq!(l0, [1, 2, 3]);
    assert!(e.staging.list_deferred().unwrap().is_empty());
}

/// How many L0 files past `at` are staged (published).
fn staged_after(e: &Env, at: Txid) -> usize {
    e.staging
        .list_level(0)
        .unwrap()
        .iter()
        .filter(|f| f.max.0 > at.0)
        .count()
}

/// Runs `sql` then `end` (COMMIT or ROLLBACK) and calls `capture` with the
/// journal as it was mid-transaction put back: together with the database as
/// it is after the end, that is what the filesystem sees at the journal's
/// invalidation. Then the journal is invalidated as SQLite left it (a valid
/// journal left in place would be hot: SQLite would roll it back).
fn at_invalidation<T>(
    e: &Env,
    c: &Connection,
    sql: &str,
    end: &str,
    capture: impl FnOnce() -> T,
) -> T {
    let j = journal_path(&e.db);
    c.execute_batch("BEGIN").unwrap();
    c.execute_batch(sql).unwrap();
    // SQLite journals page 1 at commit (its change counter) unless the
    // transaction wrote it before: write it now, so that this copy of the
    // journal is the one the commit point sees.
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    c.execute_batch(&format!("PRAGMA user_version = {}", v + 1))
        .unwrap();
    let mid = std::fs::read(&j).unwrap();
    c.execute_batch(end).unwrap();
    let after = std::fs::read(&j).unwrap();
    std::fs::write(&j, &mid).unwrap();
    let r = capture();
    std::fs::write(&j, &after).unwrap();
    r
}

#[test]
fn a_journal_commit_is_one_txid_and_a_rollback_none() {
    let (e, c) = env("PERSIST");
    // With synchronous=OFF SQLite writes the journal's magic at once.
    c.execute_batch("PRAGMA synchronous=OFF").unwrap();
    let mut cap = open(&e);
    let j = journal_path(&e.db);
    let insert = "INSERT INTO t(v) SELECT hex(randomblob(900)) FROM t, t AS b, t AS c LIMIT 40";
    for _ in 0..3 {
        c.execute_batch(&insert.replace("LIMIT 40", "LIMIT 2"))
            .unwrap();
    }
    cap = {
        drop(cap);
        open(&e)
    };
    let at = cap.txid();
    assert!(at_invalidation(&e, &c, insert, "COMMIT", || cap
        .journal_committing(&j, true, 0)
        .unwrap()));
    // Durable, but published only once the invalidation is done.
    cap.flush().unwrap();
    assert_eq!(e.staging.list_deferred().unwrap().len(), 1);
    assert_eq!(staged_after(&e, at), 0);
    cap.journal_invalidated();
    cap.flush().unwrap();
    assert_eq!(staged_after(&e, at), 1);
    let after = state(&e.db);
    let rolled_back = at_invalidation(&e, &c, "DELETE FROM t WHERE id % 2 = 0", "ROLLBACK", || {
        cap.journal_committing(&j, true, 0).unwrap()
    });
    assert!(!rolled_back, "a rollback is no transaction");
    assert_eq!(state(&e.db), after);
    assert!(at_invalidation(
        &e,
        &c,
        "DELETE FROM t WHERE id > 3",
        "COMMIT",
        || cap.journal_committing(&j, true, 0).unwrap()
    ));
    cap.journal_invalidated();
    cap.flush().unwrap();
    let out = e.staging.root().join("out.db");
    assert_eq!(cap.txid(), Txid(at.0 + 2));
    assert_eq!(restored(&e.staging, at.0 + 1, &out), after);
    assert_eq!(restored(&e.staging, at.0 + 2, &out), state(&e.db));
}

#[test]
fn a_capture_at_the_database_fsync_commits_as_is_or_is_redone() {
    let (e, c) = env("PERSIST");
    c.execute_batch("PRAGMA synchronous=OFF").unwrap();
    let mut cap = open(&e);
    let j = journal_path(&e.db);
    let at = cap.txid();
    let insert = "INSERT INTO t(v) SELECT hex(randomblob(900)) FROM t, t AS b LIMIT 20";
    // Captured at the fsync and synced with the database (one syncfs: the
    // staging directory is on its filesystem); the commit point, with the
    // database unwritten since, only hands the file on.
    assert!(at_invalidation(&e, &c, insert, "COMMIT", || {
        assert!(
            cap.database_syncing(&j, 7).unwrap(),
            "synced with the database"
        );
        assert_eq!(e.staging.list_deferred().unwrap().len(), 1);
        cap.journal_committing(&j, true, 7).unwrap()
    }));
    let first = state(&e.db);
    assert_eq!(cap.txid(), Txid(at.0 + 1));
    assert_eq!(staged_after(&e, at), 0, "handed on by the next flush");
    cap.flush().unwrap();
    assert_eq!(
        staged_after(&e, at),
        0,
        "not before the invalidation is done"
    );
    cap.journal_invalidated();
    cap.flush().unwrap();
    assert!(e.staging.list_deferred().unwrap().is_empty());
    assert_eq!(staged_after(&e, at), 1);
    // The database written after its fsync: captured again at the commit
    // point, and the early file removed.
    assert!(at_invalidation(
        &e,
        &c,
        "DELETE FROM t WHERE id % 3 = 0",
        "COMMIT",
        || {
            assert!(cap.database_syncing(&j, 8).unwrap());
            cap.journal_committing(&j, true, 9).unwrap()
        }
    ));
    assert_eq!(
        e.staging.list_deferred().unwrap().len(),
        1,
        "the new capture only"
    );
    cap.journal_invalidated();
    cap.flush().unwrap();
    assert!(e.staging.list_deferred().unwrap().is_empty());
    assert_eq!(staged_after(&e, at), 2);
    // A transaction rolled back after the fsync: nothing.
    let rolled_back = at_invalidation(&e, &c, "DELETE FROM t WHERE id > 2", "ROLLBACK", || {
        cap.database_syncing(&j, 10).unwrap();
        cap.journal_committing(&j, true, 11).unwrap()
    });
    assert!(!rolled_back);
    assert!(e.staging.list_deferred().unwrap().is_empty());
    let out = e.staging.root().join("out.db");
    assert_eq!(cap.txid(), Txid(at.0 + 2));
    assert_eq!(restored(&e.staging, at.0 + 1, &out), first);
    assert_eq!(restored(&e.staging, at.0 + 2, &out), state(&e.db));
}

/// A transaction that `capture` captures (given the capture and the
/// journal) dies with its application before the commit point; `meanwhile`
/// runs before the daemon dies too. The next start rolls its hot journal
/// back, drops the capture, and gives it no TXID.
fn dropped_at_recovery(
    capture: impl FnOnce(&mut DbCapture, &Path),
    meanwhile: impl FnOnce(&Env, &mut DbCapture, Txid),
) {
    let (e, c) = env("PERSIST");
    c.execute_batch("PRAGMA synchronous=OFF").unwrap();
    let mut cap = open(&e);
    let j = journal_path(&e.db);
    let at = cap.txid();
    let before = state(&e.db);
    let mut hot = Vec::new();
    at_invalidation(&e, &c, "DELETE FROM t WHERE id > 1", "COMMIT", || {
        capture(&mut cap, &j);
        hot = std::fs::read(&j).unwrap();
    });
    meanwhile(&e, &mut cap, at);
    drop(cap);
    drop(c);
    std::fs::write(&j, &hot).unwrap();
    assert_eq!(e.staging.list_deferred().unwrap().len(), 1);
    let cap = open(&e);
    assert_eq!(state(&e.db), before, "the hot journal was rolled back");
    assert_eq!(
        cap.txid(),
        at,
        "no TXID for the transaction that never committed"
    );
    assert_eq!(staged_after(&e, at), 0);
    assert!(e.staging.list_deferred().unwrap().is_empty());
}

#[test]
fn a_capture_at_the_fsync_of_a_transaction_that_never_committed_is_dropped_at_recovery() {
    // Captured and synced with the database.
    dropped_at_recovery(
        |cap, j| assert!(cap.database_syncing(j, 1).unwrap()),
        |_, _, _| {},
    );
}

#[test]
fn a_durable_journal_capture_makes_older_deferred_files_durable_first() {
    let (e, c) = env("PERSIST");
    c.execute_batch("PRAGMA synchronous=OFF").unwrap();
    let mut cap = open(&e);
    let j = journal_path(&e.db);
    let at = cap.txid();
    // Not synced by the application: deferred, not durable.
    assert!(at_invalidation(
        &e,
        &c,
        "DELETE FROM t WHERE id = 2",
        "COMMIT",
        || { cap.journal_committing(&j, false, 0).unwrap() }
    ));
    cap.journal_invalidated();
    assert_eq!(cap.unsynced(), Some(Txid(at.0 + 1)));
    // Synced: recovery keeps it only if the older file survives too.
    assert!(at_invalidation(
        &e,
        &c,
        "DELETE FROM t WHERE id = 3",
        "COMMIT",
        || { cap.journal_committing(&j, true, 0).unwrap() }
    ));
    assert_eq!(cap.unsynced(), None, "both durable");
    cap.journal_invalidated();
    cap.flush().unwrap();
    assert_eq!(staged_after(&e, at), 2);
    let out = e.staging.root().join("out.db");
    assert_eq!(restored(&e.staging, at.0 + 2, &out), state(&e.db));
}

#[test]
fn a_capture_at_the_commit_point_of_a_transaction_that_never_committed_is_dropped_at_recovery() {
    // Captured at the commit point (no capture at the fsync), durable; the
    // journal's invalidation is never done.
    dropped_at_recovery(
        |cap, j| assert!(cap.journal_committing(j, true, 0).unwrap()),
        |e, cap, at| {
            // The flusher runs meanwhile: it publishes neither the file nor
            // a position hint that names it.
            let hint = std::fs::read(e.staging.position_path()).ok();
            if let Some(b) = cap.take_synced().unwrap() {
                b.run().unwrap();
            }
            assert_eq!(staged_after(e, at), 0);
            cap.flush().unwrap();
            assert_eq!(staged_after(e, at), 0);
            assert_eq!(std::fs::read(e.staging.position_path()).ok(), hint);
        },
    );
}

#[test]
fn recovery_captures_commits_left_in_the_wal_and_cuts_the_uncommitted_tail() {
    let (e, c) = env("WAL");
    let cap = open(&e);
    let at = cap.txid();
    drop(cap);
    // Commits the last mount never captured (it died inside the unlock).
    for v in ["lost-1", "lost-2"] {
        c.execute("INSERT INTO t(v) VALUES (?1)", [v]).unwrap();
    }
    let want = state(&e.db);
    let wal = crate::wal::source::wal_path(&e.db);
    let len = std::fs::metadata(&wal).unwrap().len();
    // And an uncommitted frame after them.
    let mut tail = std::fs::read(&wal).unwrap();
    tail.truncate(len as usize);
    tail.extend(vec![7u8; 24 + 4096]);
    std::fs::write(&wal, &tail).unwrap();
    let cap = open(&e);
    assert_eq!(cap.txid(), Txid(at.0 + 2), "one file per commit");
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), len, "tail cut");
    let out = e.staging.root().join("out.db");
    assert_eq!(restored(&e.staging, u64::MAX, &out), want);
}

#[test]
fn a_database_changed_behind_the_mount_gets_a_full_page_file() {
    let (e, c) = env("DELETE");
    let cap = open(&e);
    drop(cap);
    c.execute("INSERT INTO t(v) VALUES ('behind our back')", [])
        .unwrap();
    let cap = open(&e);
    assert_eq!(cap.txid(), Txid(2));
    let f2 = e.staging.ltx_path(0, Txid(2), Txid(2));
    let s = ltx_format::verify(std::io::BufReader::new(File::open(f2).unwrap())).unwrap();
    assert_eq!(s.trailer.post_apply_checksum, state(&e.db));
}

#[test]
fn databases_of_the_same_name_in_different_subdirectories_get_their_own_staging_and_replica() {
    let m: crate::config::MountConfig = serde_yaml_ng::from_str(
        "data-dir: /srv/data\nmountpoint: /srv/mnt\nreplicas:\n  - url: file:///backup\n",
    )
    .unwrap();
    let a = super::spec_for(&m, Path::new("/srv/data/a/app.db")).unwrap();
    let b = super::spec_for(&m, Path::new("/srv/data/b/app.db")).unwrap();
    let top = super::spec_for(&m, Path::new("/srv/data/app.db")).unwrap();
    assert_eq!(a.staging.root(), Path::new("/srv/data.sluice/a/app.db"));
    assert_eq!(b.staging.root(), Path::new("/srv/data.sluice/b/app.db"));
    assert_eq!(top.staging.root(), Path::new("/srv/data.sluice/app.db"));
    let url = |s: &crate::pipeline::PipelineSpec| match &s.replicas[0].url {
        s3_backend::ReplicaUrl::File { root } => root.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(url(&a), Path::new("/backup/a/app.db"));
    assert_eq!(url(&top), Path::new("/backup/app.db"));
    // The mount's reserve of spare files has its own name there.
    let e = super::spec_for(&m, Path::new("/srv/data/.sluice-spares")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "a database named .sluice-spares would share its staging directory with the mount's spare files; rename it"
    );
}

#[test]
fn a_wal_with_an_invalid_header_holds_no_commit_and_the_next_one_is_captured() {
    let (e, c) = env("WAL");
    let mut cap = open(&e);
    drop(c);
    // What a writer that crashed before syncing its WAL header can leave:
    // SQLite ignores the whole file, and recovery releases the write lock.
    let wal = crate::wal::source::wal_path(&e.db);
    std::fs::write(&wal, [0x9f_u8; 4096]).unwrap();
    assert_eq!(cap.wal_committed(true).unwrap(), 0);
    let c = Connection::open(&e.db).unwrap();
    c.execute("INSERT INTO t(v) VALUES ('after')", []).unwrap();
    let want = state(&e.db);
    assert_eq!(cap.wal_committed(true).unwrap(), 1);
    assert_eq!(cap.txid(), Txid(2));
    let out = e.staging.root().join("out.db");
    assert_eq!(restored(&e.staging, 2, &out), want);
}

#[test]
fn a_spare_file_holding_another_chains_transaction_is_not_taken_for_a_deferred_file() {
    let (e, _c) = env("WAL");
    let cap = open(&e);
    let at = cap.txid();
    // Another database whose history starts at the same TXID, from other
    // content.
    let (e2, c2) = env("WAL");
    c2.execute("INSERT INTO t(v) VALUES ('elsewhere')", [])
        .unwrap();
    let mut cap2 = open(&e2);
    assert_eq!(cap2.txid(), at, "both chains start at the same TXID");
    c2.execute("INSERT INTO t(v) VALUES ('x')", []).unwrap();
    assert_eq!(cap2.wal_committed(false).unwrap(), 1);
    let foreign = e2.staging.list_deferred().unwrap();
    assert_eq!(foreign.len(), 1);
    assert_eq!(foreign[0].max, Txid(at.0 + 1));
    // Its bytes in this database's spare pool, under a spare's number: by
    // its header, the next transaction.
    let spare = e.staging.root().join("spare");
    std::fs::create_dir_all(&spare).unwrap();
    std::fs::copy(&foreign[0].path, spare.join("77")).unwrap();
    assert_eq!(e.staging.list_deferred().unwrap().len(), 1);
    // A restart does not take it: its pre-apply checksum is not where this
    // chain ends.
    drop(cap);
    let cap = open(&e);
    assert_eq!(cap.txid(), at, "the chain did not move");
    assert!(e.staging.list_deferred().unwrap().is_empty());
    assert!(!spare.join("77").exists(), "discarded");
}

#[test]
fn two_deferred_files_of_one_txid_are_both_dropped_at_recovery() {
    let (e, c) = env("WAL");
    let mut cap = open(&e);
    let at = cap.txid();
    c.execute("INSERT INTO t(v) VALUES ('a')", []).unwrap();
    assert_eq!(cap.wal_committed(false).unwrap(), 1);
    let d = e.staging.list_deferred().unwrap();
    assert_eq!(d.len(), 1);
    let bytes = std::fs::read(&d[0].path).unwrap();
    // A second file claiming the same TXID (a capture left behind by a
    // failure): which one committed cannot be told.
    let twin = e.staging.root().join("spare").join("99999");
    std::fs::write(&twin, &bytes).unwrap();
    drop(cap);
    let cap = open(&e);
    assert!(e.staging.list_deferred().unwrap().is_empty());
    assert!(!twin.exists() && !d[0].path.exists(), "both removed");
    // The database is ahead of the chain: recovery wrote a full file for
    // it, not either capture.
    let next = e.staging.ltx_path(0, Txid(at.0 + 1), Txid(at.0 + 1));
    assert_eq!(cap.txid(), Txid(at.0 + 1));
    assert_ne!(std::fs::read(&next).unwrap(), bytes);
    assert_eq!(
        restored(&e.staging, at.0 + 1, &e.db.with_extension("out")),
        state(&e.db)
    );
}
