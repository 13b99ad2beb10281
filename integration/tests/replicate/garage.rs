//! Replication to Garage (S3): the workload for both page sizes, and a
//! Litestream-compatible replica that Litestream 0.5.17 restores.

use std::process::Command;
use std::time::Duration;

use integration::env::{
    checkpointed_checksum, download_l0, integrity, quick_check, restore_l0, settle_s3,
};
use integration::{garage, litestream_bin, run, s, stderr, stdout, unique, Setup};

use crate::{workload, PAST_THE_LOCK_PAGE};

/// The workload of the file test, against Garage, for both page sizes; with
/// page size 65536 also a transaction past the 1 GiB lock page.
#[test]
fn replicates_a_workload_to_garage_for_both_page_sizes() {
    let Some(g) = garage() else { return };
    for ps in [4096u32, 65536] {
        let url = g.url(&unique(&format!("workload-{ps}")));
        let env = Setup::new().page_size(ps).url(&url).build();
        let d = env.start_ready();
        let mut marks = workload(&env.db, ps, &|| env.settle_s3());
        if ps == 65536 {
            let c = env.app();
            c.execute_batch(PAST_THE_LOCK_PAGE).unwrap();
            drop(c);
            let t = env.settle_s3();
            marks.push((t, env.state_checksum()));
        }
        d.stop_ok();
        let l0 = env.path("l0");
        download_l0(&url, &l0);
        let out = env.path("restored.db");
        for (txid, want) in &marks {
            assert_eq!(
                &restore_l0(&l0, *txid, &out),
                want,
                "page size {ps}, TXID {txid:x}"
            );
            assert_eq!(quick_check(&out), "ok");
        }
    }
}

#[test]
fn replicates_to_garage_and_litestream_restores_a_compatible_replica() {
    let Some(g) = garage() else { return };
    let prefix = unique("replicate");
    let url = format!(
        "s3://{}/{prefix}?endpoint={}&region={}",
        g.bucket, g.endpoint, g.region
    );
    let compat_prefix = format!("{prefix}-ls");
    let compat_url = format!(
        "s3://{}/{compat_prefix}?endpoint={}&region={}",
        g.bucket, g.endpoint, g.region
    );
    let env = Setup::new()
        .url(&url)
        .extra_replica(&format!(
            "      - url: {compat_url}\n        litestream-compatible: true\n"
        ))
        .build();
    let d = env.start_ready();
    let c = env.app();
    for i in 0..10 {
        c.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 100)
             INSERT INTO t(v, b) SELECT 'batch {i} ' || i, randomblob(100) FROM n;"
        ))
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    c.execute_batch("DELETE FROM t WHERE id % 4 = 0; VACUUM;")
        .unwrap();
    drop(c);
    env.settle_s3();
    settle_s3(&env.db, &compat_url);
    d.stop_ok();
    let want = checkpointed_checksum(&env.db);

    // Sluice's own replica, with database checksums, applies to the source.
    let l0 = env.path("l0");
    download_l0(&url, &l0);
    let out = env.path("restored.db");
    assert_eq!(restore_l0(&l0, u64::MAX, &out), want);
    assert_eq!(integrity(&out), "ok");

    // The Litestream-compatible replica restores with litestream 0.5.17.
    let ls_out = env.path("litestream-restored.db");
    let ls_url = format!(
        "s3://{}/{compat_prefix}?endpoint={}&region={}&force-path-style=true",
        g.bucket, g.endpoint, g.region
    );
    let o = run(Command::new(litestream_bin()).args(["restore", "-o", s(&ls_out), &ls_url]));
    assert!(
        o.status.success(),
        "litestream restore: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(&ls_out).unwrap(),
        std::fs::read(&env.db).unwrap()
    );
}
