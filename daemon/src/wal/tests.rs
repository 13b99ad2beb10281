//! Engine tests that build exact interleavings with real SQLite connections.

use std::fs::File;
use std::path::Path;

use ltx_format::{checksum_page, lock_pgno, Checksum, DbChecksum, Txid};
use rusqlite::Connection;

use super::engine::Engine;
use super::source::DbSource;
use crate::staging::StagingDir;

fn app(db: &Path) -> Connection {
    let c = Connection::open(db).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c
}

fn insert(c: &Connection, from: i64, n: i64) {
    for i in from..from + n {
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i:06}")])
            .unwrap();
    }
}

fn wal_db(db: &Path) -> Connection {
    let c = app(db);
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    c
}

/// The database checksum of the committed state (main file plus WAL).
fn db_checksum(db: &Path) -> Checksum {
    let f = File::open(db).unwrap();
    let mut src = DbSource::open(&f, db).unwrap();
    let lock = lock_pgno(src.page_size);
    let mut buf = vec![0u8; src.page_size.as_usize()];
    let mut sum = DbChecksum::new();
    for pgno in 1..=src.commit {
        if pgno != lock {
            src.read_page(pgno, &mut buf).unwrap();
            sum.toggle(checksum_page(pgno, &buf));
        }
    }
    sum.value()
}

fn verify(path: &Path) -> ltx_format::FileSummary {
    ltx_format::verify(std::io::BufReader::new(File::open(path).unwrap())).unwrap()
}

#[test]
fn a_pending_tail_left_by_a_crash_becomes_the_next_l0_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let staging = StagingDir::new(dir.path().join("staging"));
    let c = wal_db(&db);
    insert(&c, 0, 50);
    let (mut e, first) = Engine::open(&db, &staging, 1000).unwrap();
    assert_eq!(first.unwrap().txid, Txid(1));
    insert(&c, 50, 50);
    assert_eq!(e.sync().unwrap().unwrap().txid, Txid(2));
    // A pin move captures into the pending file, not an L0 file.
    insert(&c, 100, 50);
    e.repin().unwrap();
    assert!(staging.pending_path().exists());
    assert!(!staging.ltx_path(0, Txid(3), Txid(3)).exists());
    let want = e.checksum();
    // A crash: the engine goes away without folding the pending file.
    drop(e);
    let (mut e, full) = Engine::open(&db, &staging, 1000).unwrap();
    assert!(full.is_none(), "no full-page file after a pending tail");
    assert!(!staging.pending_path().exists());
    let s = verify(&staging.ltx_path(0, Txid(3), Txid(3)));
    assert_eq!(s.trailer.post_apply_checksum, want);
    assert_eq!((e.txid(), e.checksum()), (Txid(3), want));
    // And the chain continues on top of it, equal to the database.
    insert(&c, 150, 50);
    let s4 = e.sync().unwrap().unwrap();
    assert_eq!(s4.txid, Txid(4));
    let f4 = verify(&s4.path);
    assert_eq!(f4.header.pre_apply_checksum, want);
    assert_eq!(f4.trailer.post_apply_checksum, db_checksum(&db));
}

/// The WAL header's salts.
fn salts(db: &Path) -> (u32, u32) {
    let h = super::recover::read_wal_header(&super::source::wal_path(db))
        .unwrap()
        .unwrap();
    (h.salt1, h.salt2)
}

/// What the interleaving the README once called a residual window leaves:
/// (the WAL was restarted, the sync wrote a full-page file, checksum
/// shipped, checksum of the database).
///
/// 1. An application reader takes a read mark above 0.
/// 2. Sluice ships everything and checkpoints the whole WAL; its new pin
///    begins on the fully copied WAL, so it sits on read mark 0 and does not
///    block a restart.
/// 3. The next application writer cannot restart the WAL (the reader holds
///    its mark) and appends T1 to the old generation.
/// 4. The reader ends; the application runs a TRUNCATE checkpoint, which
///    would copy T1, restart the WAL and truncate it.
/// 5. Another writer commits T2; then Sluice syncs.
///
/// With `pinned`, Sluice's pin is held throughout, as the engine always
/// holds it. Without, it is dropped before step 4 (the control).
fn residual_window(pinned: bool) -> (bool, bool, Checksum, Checksum) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let staging = StagingDir::new(dir.path().join("staging"));
    let w = wal_db(&db);
    // T1 writes table u, T2 table t: pages only T1 changed show its loss.
    w.execute_batch("PRAGMA wal_autocheckpoint=0; CREATE TABLE u(v TEXT);")
        .unwrap();
    insert(&w, 0, 100);
    let (mut e, _) = Engine::open(&db, &staging, 1000).unwrap();
    // 1.
    let reader = app(&db);
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    // 2.
    assert!(e.checkpoint(false).unwrap().is_some(), "sealed");
    assert!(e.fully_checkpointed(), "the whole WAL was copied");
    assert!(e.zero_pinned(), "the new pin is on read mark 0");
    let generation = salts(&db);
    // 3.
    w.execute("INSERT INTO u(v) VALUES ('T1')", []).unwrap();
    assert_eq!(salts(&db), generation, "the reader blocked the restart");
    // 4.
    reader.execute_batch("COMMIT").unwrap();
    if !pinned {
        e.pins.release();
    }
    let ckpt = app(&db);
    ckpt.busy_timeout(std::time::Duration::from_millis(100))
        .unwrap();
    let (busy, log, copied): (i64, i64, i64) = ckpt
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    if pinned {
        // Backfill needs WAL_READ_LOCK(0) exclusively; the pin holds it.
        assert_eq!(busy, 1, "the application's checkpoint is blocked");
        assert!(copied < log, "T1 was not copied ({copied} of {log})");
    }
    // 5.
    insert(&w, 110, 10);
    let restarted = salts(&db) != generation;
    if !pinned {
        e.pins.begin_next(&db).unwrap();
        e.pins.release_old();
    }
    let s = e.sync().unwrap().expect("T1 and T2 are new");
    (restarted, s.full, s.post_apply, db_checksum(&db))
}

#[test]
fn the_residual_window_cannot_open_while_the_pin_is_held() {
    let (restarted, full, shipped, db) = residual_window(true);
    assert!(!restarted, "no restart can overwrite unshipped frames");
    assert!(!full, "T1 and T2 were read from the WAL");
    assert_eq!(shipped, db, "T1 and T2 were both shipped");
    // The control: the same interleaving without the pin lets the
    // application copy T1 and restart the WAL over it, so the test above
    // does exercise the window. T1 is then gone from the WAL: the engine can
    // only notice (the database file no longer matches) and fall back to a
    // full-page file, or miss it.
    let (restarted, full, shipped, db) = residual_window(false);
    assert!(restarted, "without the pin the WAL restarts over T1");
    assert!(full || shipped != db, "T1 was not captured from the WAL");
}
