//! A 3-node Garage cluster (replication factor 3) losing a node: Sluice
//! replicates through node 1 while node 3 is killed with SIGKILL and later
//! started again. Replication goes on, every restore taken during the outage
//! is a correct prefix, and after the node is back nothing is lost, read
//! through any node.

use std::time::{Duration, Instant};

use integration::env::{checkpointed_checksum, ltx_checksum, max_l0_txid, settle_s3_as};
use integration::faults::{
    env_number, gap_free_rows, sluice_restore, NumberedWriter, ScriptServer,
};
use integration::unique;

use crate::env_on;

/// `SLUICE_NODE_DOWN_SECS` (default 20) with node 3 down;
/// `integration/scripts/fault-cluster.sh SECONDS` runs it with any length.
#[test]
fn a_cluster_losing_a_node_loses_nothing() {
    let down_for = Duration::from_secs(env_number("SLUICE_NODE_DOWN_SECS", 20));
    let Some(cluster) = ScriptServer::start("garage-cluster.sh") else {
        return;
    };
    let g = &cluster.server;
    let endpoints = cluster.cluster_endpoints();
    assert_eq!(endpoints.len(), 3, "{endpoints:?}");
    let url = g.url(&unique("cluster"));
    let env = env_on(g, &url);
    let d = env.start_ready();
    let app = NumberedWriter::start(
        &env.db,
        500,
        Duration::from_millis(5),
        down_for + Duration::from_secs(300),
    );
    std::thread::sleep(Duration::from_secs(3));
    eprintln!(
        "cluster: replicating through node 1 ({}); {} rows committed; killing node 3 for {} s",
        endpoints[0],
        app.committed(),
        down_for.as_secs()
    );
    let at_kill = max_l0_txid(&url, &g.env()).unwrap_or(0);
    cluster.command(&["kill-node", "3"]);
    let down = Instant::now();
    let out = env.path("during.db");
    let every = (down_for / 10).max(Duration::from_secs(3));
    let (mut restores, mut last_rows, mut last_txid) = (0, 0, 0);
    while down.elapsed() < down_for {
        std::thread::sleep(every.min(down_for.saturating_sub(down.elapsed())));
        let txid = max_l0_txid(&url, &g.env()).unwrap_or(0);
        // Read through node 2 as well as node 1: both must serve the data.
        let via = &endpoints[restores % 2];
        let via_url = url.replace(&endpoints[0], via);
        let took = sluice_restore(&via_url, &out, &g.env())
            .unwrap_or_else(|e| panic!("restore through {via} with node 3 down: {e}"));
        let rows = gap_free_rows(&out, &format!("the restore through {via} with node 3 down"));
        // Read after the restore: rows committed while it ran may be in it.
        let begun = app.begun();
        assert!(
            rows <= begun && rows >= last_rows,
            "{rows} rows restored after {last_rows}, {begun} begun"
        );
        restores += 1;
        eprintln!(
            "cluster: +{:>4} s node 3 down: replica at TXID {txid:x}; restore through {via} in {} ms: {rows} rows, gap-free, integrity ok ({begun} rows begun)",
            down.elapsed().as_secs(),
            took.as_millis()
        );
        (last_rows, last_txid) = (rows, txid.max(last_txid));
    }
    assert!(restores > 0);
    assert!(
        last_txid > at_kill,
        "replication did not go on with node 3 down (TXID {at_kill:x} at the kill, {last_txid:x} after)"
    );
    cluster.command(&["start-node", "3"]);
    // Including the wait for the restarted node to see its peers again.
    let was_down = down.elapsed();
    eprintln!(
        "cluster: node 3 started again and healthy after {:.0} s down",
        was_down.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    let committed = app.stop();
    settle_s3_as(&env.db, &url, &g.env(), Duration::from_secs(120));
    let log = d.log_text();
    d.stop_ok();
    assert!(!log.contains("ERROR"), "the daemon logged errors:\n{log}");
    let want = checkpointed_checksum(&env.db);
    // Through every node, the restarted one included.
    for via in &endpoints {
        let via_url = url.replace(&endpoints[0], via);
        let took = sluice_restore(&via_url, &out, &g.env())
            .unwrap_or_else(|e| panic!("restore through {via}: {e}"));
        assert_eq!(
            gap_free_rows(&out, via),
            committed,
            "rows lost (through {via})"
        );
        assert_eq!(ltx_checksum(&out), want, "through {via}");
        eprintln!(
            "cluster: restore through {via} in {} ms equals the source",
            took.as_millis()
        );
    }
    eprintln!(
        "cluster summary: node 3 down {:.0} s, {restores} restores during the outage all correct; \
         {committed} rows committed, none lost",
        was_down.as_secs_f64()
    );
}
