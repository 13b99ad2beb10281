#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! `sluice replicate` end to end: a real SQLite application, the real daemon
//! (stopped, killed, restarted), `file://` replicas and Garage, and restores
//! compared with the source by LTX checksum and `integrity_check`. One test
//! binary; a module per theme.

mod faults;
mod garage;
mod levels;
mod pipeline;
mod restart;
mod waiting;
mod workload;

use std::path::Path;

use integration::env::{open_app, state_checksum};

/// An application workload in phases; after each, `settle_fn`'s TXID (the
/// replica holds it) and the source's checksum at that TXID.
fn workload(db: &Path, page_size: u32, settle_fn: &dyn Fn() -> u64) -> Vec<(u64, String)> {
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

/// Two values of 560 MB in one transaction: with page size 65536 the
/// database grows past the 1 GiB lock page (page 16385). SQLite caps one
/// value at 1e9 bytes.
const PAST_THE_LOCK_PAGE: &str = "BEGIN; INSERT INTO t(v, b) VALUES ('big1', zeroblob(560000000));
         INSERT INTO t(v, b) VALUES ('big2', zeroblob(560000000)); COMMIT;";
