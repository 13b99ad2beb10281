#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! SeaweedFS 4.48, the second S3 implementation, started by
//! `integration/scripts/seaweedfs.sh` (the test command does it and exports
//! `SLUICE_SEAWEEDFS_*`). Unlike Garage it honours `If-None-Match` on PUT and
//! on CompleteMultipartUpload, so here the store itself fences a second
//! writer: the conformance suite expects that, and two daemons started at the
//! same moment on one replica never interleave.

use std::time::{Duration, Instant};

use integration::env::{checkpointed_checksum, download_l0_as, restore_l0, settle_s3_as};
use integration::{seaweedfs, unique, Daemon, S3Server, Setup, TestEnv};
use s3_backend::conformance::{run_all, Expect};
use s3_backend::retry::{RetryPolicy, RetryingStore, Shutdown};
use s3_backend::s3::{S3Config, S3Store, MIN_PART_SIZE};

fn s3_config(w: &S3Server) -> S3Config {
    let mut c = S3Config::new(&w.bucket);
    c.endpoint = Some(w.endpoint.clone());
    c.region = Some(w.region.clone());
    c.force_path_style = true;
    c.access_key_id = Some(w.key_id.clone());
    c.secret_access_key = Some(w.secret.clone());
    c.part_size = MIN_PART_SIZE;
    c.attempt_timeout = Duration::from_secs(60);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_seaweedfs() {
    let Some(w) = seaweedfs() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let store = S3Store::connect(s3_config(&w)).await.unwrap();
    // The probe must find conditional writes honoured; the 64 MiB object and
    // the conditional large put go up in 5 MiB parts.
    let expect = Expect {
        conditional_put: true,
        large_object_bytes: 64 * 1024 * 1024,
    };
    let prefix = format!("{}/", unique("conformance"));
    run_all(&store, &prefix, scratch.path(), &expect)
        .await
        .unwrap();
    // And through the retry wrapper, as Sluice uses it: a refused put is
    // permanent, never retried into a success.
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        attempt_timeout: Duration::from_secs(20),
        total_timeout: Duration::from_secs(40),
    };
    let wrapped = RetryingStore::new(store, policy, Shutdown::never());
    let expect = Expect {
        large_object_bytes: 6 * 1024 * 1024,
        ..expect
    };
    let prefix = format!("{}/", unique("conformance-retry"));
    run_all(&wrapped, &prefix, scratch.path(), &expect)
        .await
        .unwrap();
}

/// A replica on SeaweedFS with the server's credentials in the config.
fn env_on(w: &S3Server, url: &str) -> TestEnv {
    Setup::new()
        .url(url)
        .extra_replica(&format!(
            "        access-key-id: {}\n        secret-access-key: {}\n",
            w.key_id, w.secret
        ))
        .build()
}

/// What the refused writer's log says when the store's `If-None-Match`
/// refused its put (the listing check at start-up says "already holds LTX
/// files" instead).
const REFUSED_BY_THE_STORE: &str = "already exists: another writer owns this replica";

/// Two daemons, each with its own database, started at the same moment on
/// one empty replica: both find it empty, so only the store can decide.
/// Exactly one keeps running, the other is refused by a conditional put,
/// and the replica restores to exactly the winner's database. A few rounds,
/// each on a new prefix; then a late third writer is refused at start-up.
#[test]
fn two_daemons_started_together_on_seaweedfs_never_interleave() {
    let Some(w) = seaweedfs() else { return };
    const ROUNDS: usize = 3;
    let mut refused_by_put = 0;
    for round in 0..ROUNDS {
        let url = w.url(&unique(&format!("two-writers-{round}")));
        let envs = [env_on(&w, &url), env_on(&w, &url)];
        for (i, env) in envs.iter().enumerate() {
            // Different histories: the writers' databases differ.
            let c = env.app();
            for n in 0..=(i + round) {
                c.execute(
                    "INSERT INTO t(v) VALUES (?1)",
                    [format!("writer {i} row {n}")],
                )
                .unwrap();
            }
        }
        let mut daemons = [envs[0].start(), envs[1].start()];
        // Both write at once while they start.
        for env in &envs {
            env.app()
                .execute("INSERT INTO t(v) VALUES ('more')", [])
                .unwrap();
        }
        let running = |d: &mut Daemon| d.child.try_wait().unwrap().is_none();
        let deadline = Instant::now() + Duration::from_secs(60);
        while daemons.iter_mut().all(running) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        let alive: Vec<bool> = daemons.iter_mut().map(running).collect();
        assert!(
            alive[0] != alive[1],
            "round {round}: exactly one writer must stop (alive {alive:?})\nA:\n{}\nB:\n{}",
            daemons[0].log_text(),
            daemons[1].log_text()
        );
        let (win, lose) = if alive[0] { (0, 1) } else { (1, 0) };
        let [a, b] = daemons;
        let (winner, mut loser) = if win == 0 { (a, b) } else { (b, a) };
        loser.expect_failure("another writer owns this replica", Duration::from_secs(60));
        let how = if loser.log_text().contains(REFUSED_BY_THE_STORE) {
            refused_by_put += 1;
            "by the store (If-None-Match on its put)"
        } else {
            "at start-up (the replica already held files)"
        };
        assert!(
            !winner
                .log_text()
                .contains("store ignores conditional writes"),
            "the probe found conditional writes ignored on SeaweedFS:\n{}",
            winner.log_text()
        );
        settle_s3_as(&envs[win].db, &url, &w.env(), Duration::from_secs(60));
        winner.stop_ok();
        let l0 = envs[win].path("l0");
        download_l0_as(&url, Some((&w.key_id, &w.secret)), &l0);
        let got = restore_l0(&l0, u64::MAX, &envs[win].path("restored.db"));
        assert_eq!(
            got,
            checkpointed_checksum(&envs[win].db),
            "round {round}: the replica is not the winner's database"
        );
        assert_ne!(got, checkpointed_checksum(&envs[lose].db));
        eprintln!("round {round}: writer {win} kept the replica; writer {lose} was refused {how}");
        if round == ROUNDS - 1 {
            // Restarted later, the loser is refused again: its staged
            // history is not the replica's.
            let mut late = Daemon::start(&envs[lose].config, &envs[lose].path("late.log"));
            late.expect_failure("another writer owns this replica", Duration::from_secs(60));
        }
    }
    eprintln!("{refused_by_put} of {ROUNDS} losers refused by the store's conditional put");
    assert!(
        refused_by_put > 0,
        "no round was decided by the store's If-None-Match"
    );
}
