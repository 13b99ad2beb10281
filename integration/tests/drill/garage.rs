//! `sluice drill` against Garage (S3): a report for a good replica, and each
//! failure caught: a corrupted object, an object missing from the chain, a
//! replica behind the primary, a wrong key, a missing bucket, an empty
//! prefix.

use std::time::Duration;

use integration::env::settle_s3;
use integration::{garage, s, unique, Setup};
use s3_backend::{PutMode, PutSource, ReplicaStore, ReplicaUrl};
use tokio::io::AsyncReadExt;

use crate::{drill_in, leftovers};

/// The replica's store, for damaging it.
struct Bucket {
    rt: tokio::runtime::Runtime,
    store: std::sync::Arc<dyn ReplicaStore>,
    url: ReplicaUrl,
}

impl Bucket {
    fn open(url: &str) -> Bucket {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = ReplicaUrl::parse(url).unwrap();
        let store = rt
            .block_on(url.open(
                s3_backend::retry::RetryPolicy::default(),
                s3_backend::retry::Shutdown::never(),
            ))
            .unwrap();
        Bucket { rt, store, url }
    }

    fn l0_key(&self, t: u64) -> String {
        self.url
            .layout()
            .ltx_key(0, ltx_format::Txid(t), ltx_format::Txid(t))
    }

    fn get(&self, key: &str) -> Vec<u8> {
        self.rt.block_on(async {
            let mut r = self.store.get(key).await.unwrap();
            let mut v = Vec::new();
            r.read_to_end(&mut v).await.unwrap();
            v
        })
    }

    fn put(&self, key: &str, bytes: Vec<u8>) {
        self.rt
            .block_on(
                self.store
                    .put(key, &PutSource::Bytes(bytes), PutMode::Overwrite),
            )
            .unwrap();
    }

    fn delete(&self, key: &str) {
        self.rt.block_on(self.store.delete(key)).unwrap();
    }
}

#[test]
fn a_garage_replica_drills_ok_and_every_failure_is_caught() {
    let Some(g) = garage() else { return };
    let url = g.url(&unique("drill"));
    let env = Setup::new()
        .url(&url)
        .extra_db("    levels: [1h]\n")
        .build();
    let d = env.start_ready();
    let c = env.app();
    let mut txid = 0;
    for b in 0..5 {
        c.execute_batch(&format!(
            "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 50)
             INSERT INTO t(v, b) SELECT 'batch {b} ' || i, randomblob(500) FROM n; COMMIT;"
        ))
        .unwrap();
        txid = settle_s3(&env.db, &url);
    }
    d.stop_ok();
    let want = env.checkpointed_checksum();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = s(&env.config);

    let ok = drill_in(tmp.path(), &["--config", cfg]);
    eprintln!("{}", ok.stdout);
    assert_eq!(ok.code, Some(0), "{}\n{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains(&format!("checksum {want}")),
        "{}",
        ok.stdout
    );
    // Garage 2.5 ignores If-None-Match: the report says so.
    assert!(
        ok.stdout
            .contains("conditional writes (If-None-Match): NOT honoured"),
        "{}",
        ok.stdout
    );
    let v = drill_in(tmp.path(), &[&url, "--json"]).json();
    assert_eq!(
        (v["ok"].clone(), v["store"]["conditional_writes"].clone()),
        (true.into(), false.into()),
        "{v}"
    );

    let b = Bucket::open(&url);
    // A corrupted object.
    let key = b.l0_key(txid);
    let good = b.get(&key);
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    b.put(&key, bad);
    let d = drill_in(tmp.path(), &["--config", cfg]);
    assert_eq!(d.code, Some(1), "{}\n{}", d.stdout, d.stderr);
    assert!(
        d.reason().contains("restore: ") && d.reason().contains(&format!("{txid:016x}")),
        "{}",
        d.stderr
    );
    b.put(&key, good);
    // An object missing from the chain.
    let gap = b.l0_key(txid - 2);
    let kept = b.get(&gap);
    b.delete(&gap);
    let d = drill_in(tmp.path(), &["--config", cfg]);
    assert_eq!(d.code, Some(1), "{}\n{}", d.stdout, d.stderr);
    assert!(
        d.reason().contains("plan: gap in the replica"),
        "{}",
        d.stderr
    );
    b.put(&gap, kept);
    // The replica behind the primary (its newest object gone).
    let newest = b.get(&key);
    b.delete(&key);
    std::thread::sleep(Duration::from_millis(1200));
    let d = drill_in(tmp.path(), &["--config", cfg, "--max-rpo", "1s"]);
    assert_eq!(d.code, Some(1), "{}\n{}", d.stdout, d.stderr);
    assert!(
        d.reason().contains("rpo: RPO ") && d.reason().contains("1 behind"),
        "{}",
        d.stderr
    );
    b.put(&key, newest);
    assert_eq!(drill_in(tmp.path(), &["--config", cfg]).code, Some(0));
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}

#[test]
fn garage_bad_input_fails_within_30s_with_status_2() {
    let Some(g) = garage() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let empty = g.url(&unique("drill-empty"));
    let no_bucket = format!(
        "s3://no-such-bucket-{}/app?endpoint={}&region={}",
        unique("b").to_lowercase(),
        g.endpoint,
        g.region
    );
    for (url, key, want) in [
        (empty.as_str(), g.key_id.as_str(), "holds no LTX files"),
        (no_bucket.as_str(), g.key_id.as_str(), "does not exist"),
        (
            empty.as_str(),
            "GKwrongwrongwrongwrongwrong0",
            "access denied",
        ),
    ] {
        let mut cmd = std::process::Command::new(integration::sluice_bin());
        cmd.args(["drill", url])
            .env("TMPDIR", tmp.path())
            .env("AWS_ACCESS_KEY_ID", key);
        let t = std::time::Instant::now();
        let o = integration::run(&mut cmd);
        let err = integration::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{url}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{url}: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{url}: {:?}",
            t.elapsed()
        );
        assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
    }
}
