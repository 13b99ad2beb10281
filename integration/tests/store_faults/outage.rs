//! The S3 server stopped under load, then started again on the same data
//! directory and ports: nothing is lost, the WAL stays bounded while the
//! staging directory holds what cannot be shipped, and the time to catch up
//! is printed.

use std::time::{Duration, Instant};

use integration::env::{
    checkpointed_checksum, ltx_checksum, position_txid, settle_s3_as, staging_dir,
};
use integration::faults::{
    env_number, gap_free_rows, sluice_restore, wal_bytes, NumberedWriter, ScriptServer,
};
use integration::unique;

use crate::{dir_bytes, env_on, mib};

/// `SLUICE_OUTAGE_SECS` (default 15) of Garage down while the application
/// commits a row every 5 ms; `integration/scripts/fault-outage.sh SECONDS`
/// runs it with any length.
#[test]
fn an_s3_outage_loses_nothing_and_the_wal_stays_bounded() {
    let outage = Duration::from_secs(env_number("SLUICE_OUTAGE_SECS", 15));
    let Some(garage) = ScriptServer::start("garage.sh") else {
        return;
    };
    let g = &garage.server;
    let url = g.url(&unique("outage"));
    let env = env_on(g, &url);
    let staging = staging_dir(&env.db);
    let d = env.start_ready();
    let app = NumberedWriter::start(
        &env.db,
        500,
        Duration::from_millis(5),
        outage + Duration::from_secs(300),
    );
    // Replicating before the outage.
    let before = settle_until_shipped(&url, g, Duration::from_secs(3));
    eprintln!(
        "outage: replicating to Garage at {} ({} rows committed, L0 up to TXID {before:x}); stopping Garage for {} s",
        g.endpoint,
        app.committed(),
        outage.as_secs()
    );
    garage.command(&["stop"]);
    let down = Instant::now();
    let every = (outage / 20).max(Duration::from_secs(1));
    let (mut max_wal, mut max_staging, mut samples) = (0, 0, 0);
    while down.elapsed() < outage {
        std::thread::sleep(every.min(outage.saturating_sub(down.elapsed())));
        let wal = wal_bytes(&env.db);
        let staged_bytes = dir_bytes(&staging);
        max_wal = max_wal.max(wal);
        max_staging = max_staging.max(staged_bytes);
        samples += 1;
        eprintln!(
            "outage: +{:>4} s  committed {:>7} rows  staged TXID {:>6x}  WAL {:>9}  staging {:>9}",
            down.elapsed().as_secs(),
            app.committed(),
            position_txid(&env.db),
            mib(wal),
            mib(staged_bytes)
        );
    }
    assert!(
        d.log_text().contains("upload failed, will retry"),
        "the daemon did not notice the outage:\n{}",
        d.log_text()
    );
    // Everything staged during the outage must reach the replica; the
    // catch-up is timed from the moment Garage is started again, so it
    // includes Garage's own start.
    let staged = position_txid(&env.db);
    let restart = Instant::now();
    garage.command(&["restart"]);
    let garage_start = restart.elapsed();
    let shipped = wait_shipped(&url, g, staged, Duration::from_secs(120) + outage / 2);
    let catch_up = restart.elapsed();
    eprintln!(
        "outage: Garage restarted after {:.0} s down (it answered {:.1} s later); the TXIDs up to {staged:x} \
         staged during the outage were all shipped {:.1} s after the restart began (replica at {shipped:x})",
        (down.elapsed() - catch_up).as_secs_f64(),
        garage_start.as_secs_f64(),
        catch_up.as_secs_f64()
    );
    // A little more load after the outage, then a clean stop.
    std::thread::sleep(Duration::from_secs(2));
    let committed = app.stop();
    settle_s3_as(&env.db, &url, &g.env(), Duration::from_secs(120));
    let staging_after = dir_bytes(&staging);
    d.stop_ok();
    let out = env.path("restored.db");
    let took = sluice_restore(&url, &out, &g.env()).unwrap_or_else(|e| panic!("restore: {e}"));
    let count = gap_free_rows(&out, "the restore after the outage");
    assert_eq!(count, committed, "rows lost");
    assert_eq!(ltx_checksum(&out), checkpointed_checksum(&env.db));
    // The sealed checkpoints went on: only staging grew while Garage was down.
    assert!(
        max_wal < 64 << 20,
        "the WAL reached {} during the outage",
        mib(max_wal)
    );
    eprintln!(
        "outage summary: {} s down, {committed} rows committed, none lost (restore in {} ms equals the source); \
         WAL at most {} over {samples} samples; catch-up {:.1} s",
        outage.as_secs(),
        took.as_millis(),
        mib(max_wal),
        catch_up.as_secs_f64()
    );
    eprintln!(
        "outage: checkpoints do not wait for shipping: they wait only for the local staging \
         directory (fsynced LTX files), which held up to {} during the outage and {} after catch-up",
        mib(max_staging),
        mib(staging_after)
    );
}

/// Waits `settle` and then until the replica lists something; returns the
/// highest L0 TXID there.
fn settle_until_shipped(url: &str, g: &integration::S3Server, settle: Duration) -> u64 {
    std::thread::sleep(settle);
    wait_shipped(url, g, 1, Duration::from_secs(60))
}

/// Waits (bounded) until the replica lists L0 `txid` or later; returns the
/// highest it lists.
fn wait_shipped(url: &str, g: &integration::S3Server, txid: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let listed = integration::env::max_l0_txid(url, &g.env());
        if let Some(t) = listed.filter(|&t| t >= txid) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not reach TXID {txid:x} within {timeout:?} (it lists {listed:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
