#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! The replica stores against a real S3 server: Garage 2.5 on loopback,
//! started by `integration/scripts/garage.sh` (the test command does it and
//! exports `SLUICE_S3_*`). Also Litestream 0.5.17 replicating to Garage, and
//! `sluice ls` of its replica compared with `litestream ltx`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::{
    garage, litestream_bin, run, sluice, stderr, stdout, terminate, unique, Garage, Setup,
};
use s3_backend::conformance::{run_all, Expect};
use s3_backend::retry::{RetryPolicy, RetryingStore, Shutdown};
use s3_backend::s3::{S3Config, S3Store, MIN_PART_SIZE};
use s3_backend::{PutMode, PutSource, ReplicaStore, StoreError};

fn s3_config(g: &Garage) -> S3Config {
    let mut c = S3Config::new(&g.bucket);
    c.endpoint = Some(g.endpoint.clone());
    c.region = Some(g.region.clone());
    c.force_path_style = true;
    c.access_key_id = Some(g.key_id.clone());
    c.secret_access_key = Some(g.secret.clone());
    c.part_size = MIN_PART_SIZE;
    c.attempt_timeout = Duration::from_secs(60);
    c
}

fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        attempt_timeout: Duration::from_secs(10),
        total_timeout: Duration::from_secs(20),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_garage() {
    let Some(g) = garage() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let store = S3Store::connect(s3_config(&g)).await.unwrap();
    let expect = Expect {
        // Garage ignores If-None-Match on PUT: the probe must see that.
        conditional_put: false,
        large_object_bytes: 64 * 1024 * 1024,
    };
    run_all(
        &store,
        &format!("{}/", unique("conformance")),
        scratch.path(),
        &expect,
    )
    .await
    .unwrap();
    // And through the retry wrapper, as Sluice uses it.
    let wrapped = RetryingStore::new(store, quick_policy(), Shutdown::never());
    let expect = Expect {
        large_object_bytes: 6 * 1024 * 1024,
        ..expect
    };
    run_all(
        &wrapped,
        &format!("{}/", unique("conformance-retry")),
        scratch.path(),
        &expect,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_multipart_upload_is_aborted_and_invisible() {
    let Some(g) = garage() else { return };
    let mut store = S3Store::connect(s3_config(&g)).await.unwrap();
    store.fail_multipart_after(2);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    std::fs::write(&file, vec![5u8; (3 * MIN_PART_SIZE) as usize]).unwrap();
    let key = format!("{}/big.ltx", unique("abort"));
    let e = store
        .put(&key, &PutSource::File(file), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("injected failure"), "{e}");
    assert_eq!(store.pending_multipart_uploads(&key).await.unwrap(), 0);
    assert!(store.get(&key).await.is_err_and(|e| e.is_not_found()));
}

async fn expect_error_within(cfg: S3Config, bound: Duration) -> StoreError {
    let started = Instant::now();
    let store = RetryingStore::new(
        S3Store::connect(cfg).await.unwrap(),
        quick_policy(),
        Shutdown::never(),
    );
    let e = store.list("ltx/0/", None).await.unwrap_err();
    assert!(
        started.elapsed() < bound,
        "took {:?}: {e}",
        started.elapsed()
    );
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_fail_fast_and_clearly() {
    let Some(g) = garage() else { return };
    let mut wrong = s3_config(&g);
    wrong.secret_access_key = Some("0".repeat(64));
    let e = expect_error_within(wrong, Duration::from_secs(15)).await;
    assert!(matches!(e, StoreError::Auth { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&g.bucket) && msg.contains(&g.endpoint) && msg.contains("access key"),
        "{msg}"
    );

    let mut missing = s3_config(&g);
    missing.bucket = "no-such-bucket-here".into();
    let e = expect_error_within(missing, Duration::from_secs(15)).await;
    assert!(matches!(e, StoreError::NoSuchBucket { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("\"no-such-bucket-here\" does not exist"),
        "{e}"
    );

    // A closed loopback port: retried a bounded number of times, then reported.
    let mut unreachable = s3_config(&g);
    unreachable.endpoint = Some("http://127.0.0.1:9".into());
    unreachable.connect_timeout = Duration::from_secs(2);
    let e = expect_error_within(unreachable, Duration::from_secs(30)).await;
    let msg = e.to_string();
    assert!(
        msg.contains("gave up after 3 attempts") && msg.contains("http://127.0.0.1:9"),
        "{msg}"
    );

    // The CLI reports the same, naming the bucket and endpoint.
    let o = sluice(&["ls", &g.url("x").replace(&g.bucket, "no-such-bucket-here")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no-such-bucket-here"), "{}", stderr(&o));
    let o = sluice(&["ls", "s3://b/x?endpoint=127.0.0.1:3900"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs a scheme"), "{}", stderr(&o));
}

fn write_rows(db: &Path, from: u32, to: u32) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    for i in from..to {
        c.execute(
            "INSERT INTO t(v) VALUES (?1)",
            [format!("row {i} {}", "y".repeat(200))],
        )
        .unwrap();
    }
}

#[test]
fn sluice_ls_matches_litestream_ltx_for_a_litestream_replica_on_garage() {
    let Some(g) = garage() else { return };
    let ls = litestream_bin();
    let env = Setup::new()
        .schema("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .build();
    let db = &env.db;
    let prefix = unique("litestream");
    let mut child = integration::litestream_replicate_to_garage(
        &g,
        db,
        &prefix,
        "2s",
        "",
        env.dir(),
        Stdio::null(),
    );
    let url = g.url(&prefix);
    let litestream_ltx = || run(Command::new(&ls).args(["ltx", "-level", "all", "-json", &url]));
    for round in 0..6 {
        write_rows(db, round * 10, round * 10 + 10);
        std::thread::sleep(Duration::from_millis(700));
    }
    // Wait (bounded) until Litestream has shipped several files and an L1
    // compaction, rather than for a fixed time.
    let shipped = || {
        let o = litestream_ltx();
        let files: Vec<serde_json::Value> = if o.status.success() {
            serde_json::from_slice(&o.stdout).unwrap_or_default()
        } else {
            Vec::new()
        };
        files.len() >= 5 && files.iter().any(|e| e["level"].as_u64() == Some(1))
    };
    // The assertions below report what is there if the deadline passes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !shipped() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    // SIGTERM for a clean stop.
    terminate(&mut child, Duration::from_secs(20));

    let o = litestream_ltx();
    assert!(o.status.success(), "litestream ltx: {}", stderr(&o));
    let theirs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = sluice(&["ls", "--json", &url]);
    assert!(o.status.success(), "sluice ls: {}", stderr(&o));
    let ours: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let key = |v: &serde_json::Value| -> Vec<(u64, String, String, u64)> {
        let mut k: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["level"].as_u64().unwrap(),
                    e["min_txid"].as_str().unwrap().to_string(),
                    e["max_txid"].as_str().unwrap().to_string(),
                    e["size"].as_u64().unwrap(),
                )
            })
            .collect();
        k.sort();
        k
    };
    let (t, o) = (key(&theirs), key(&ours));
    assert!(
        t.len() >= 5,
        "litestream wrote only {} files: {t:?}",
        t.len()
    );
    assert!(
        t.iter().any(|e| e.0 == 1),
        "no L1 compaction appeared: {t:?}"
    );
    assert_eq!(o, t);
    // Text output too: one line per file plus the header.
    let o = sluice(&["ls", &url]);
    assert_eq!(stdout(&o).lines().count(), t.len() + 1);
}
