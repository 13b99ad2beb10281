//! Workloads to a file replica: every intermediate state restores from the
//! L0 chain, for both page sizes and past the lock page.

use integration::env::{checkpointed_checksum, integrity, quick_check};
use integration::{ltx_files, Setup};
use rusqlite::Connection;

use crate::{workload, PAST_THE_LOCK_PAGE};

#[test]
fn replicates_a_workload_to_a_file_replica_for_both_page_sizes() {
    for ps in [4096u32, 65536] {
        let env = Setup::new().page_size(ps).build();
        let d = env.start();
        let marks = workload(&env.db, ps, &|| env.settle());
        d.stop_ok();
        let out = env.path("restored.db");
        for (txid, want) in &marks {
            assert_eq!(
                &env.restore_l0(*txid, &out),
                want,
                "page size {ps}, TXID {txid:x}"
            );
            assert_eq!(integrity(&out), "ok");
        }
        // After the clean stop, the whole replica equals the source.
        let last = ltx_files(&env.l0()).len() as u64;
        let got = env.restore_l0(last, &out);
        assert_eq!(got, checkpointed_checksum(&env.db));
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&env.db).unwrap()
        );
    }
}

/// A transaction that grows the database past the 1 GiB lock page (page
/// size 65536: the lock page is 16385), then a write after it.
#[test]
fn a_transaction_past_the_lock_page_replicates_and_restores() {
    let env = Setup::new().page_size(65536).build();
    let d = env.start_ready();
    let c = env.app();
    c.execute_batch(PAST_THE_LOCK_PAGE).unwrap();
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    assert!(pages > 16385, "database has only {pages} pages");
    let t1 = env.settle();
    let at_t1 = env.state_checksum();
    c.execute("INSERT INTO t(v, b) VALUES ('after', randomblob(1000))", [])
        .unwrap();
    drop(c);
    let t2 = env.settle();
    assert!(t2 > t1);
    d.stop_ok();
    let out = env.path("restored.db");
    assert_eq!(env.restore_l0(t1, &out), at_t1);
    let got = env.restore_l0(t2, &out);
    assert_eq!(got, env.checkpointed_checksum());
    assert_eq!(quick_check(&out), "ok");
    let n: i64 = Connection::open(&out)
        .unwrap()
        .query_row("SELECT count(*) FROM t WHERE v = 'after'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}
