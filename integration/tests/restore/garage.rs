//! Restores from Garage (S3): a replica Litestream 0.5.17 writes during the
//! test, at every TXID it shipped and latest (equal to Litestream's own
//! restore), and a Sluice-written replica fetched with ranged reads.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::env::{checkpoint, state_checksum};
use integration::{garage, litestream_bin, run, s, stderr, terminate, unique, Setup};

use crate::sluice_written::sluice_replica;
use crate::{checksum_of, json_of, restore, TapMkdir};

/// The L0 TXIDs under an S3 replica.
fn l0_max(rt: &tokio::runtime::Runtime, u: &str) -> Option<u64> {
    let url = s3_backend::ReplicaUrl::parse(u).unwrap();
    rt.block_on(async {
        let store = url
            .open(
                s3_backend::retry::RetryPolicy::default(),
                s3_backend::retry::Shutdown::never(),
            )
            .await
            .unwrap();
        let files = store.list(&url.layout().level_dir(0), None).await.unwrap();
        files
            .iter()
            .filter_map(|o| url.layout().parse_ltx_key(&o.key))
            .map(|(_, _, max)| max.0)
            .max()
    })
}

fn levels_present(rt: &tokio::runtime::Runtime, u: &str) -> Vec<u8> {
    let url = s3_backend::ReplicaUrl::parse(u).unwrap();
    rt.block_on(async {
        let store = url
            .open(
                s3_backend::retry::RetryPolicy::default(),
                s3_backend::retry::Shutdown::never(),
            )
            .await
            .unwrap();
        let mut v = Vec::new();
        for l in 0..=9u8 {
            if !store
                .list(&url.layout().level_dir(l), None)
                .await
                .unwrap()
                .is_empty()
            {
                v.push(l);
            }
        }
        v
    })
}

#[test]
fn restores_a_replica_litestream_writes_to_garage() {
    let Some(g) = garage() else { return };
    let ls = litestream_bin();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let env = Setup::new()
        .schema("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .build();
    let db = &env.db;
    let prefix = unique("restore-litestream");
    let mut child = integration::litestream_replicate_to_garage(
        &g,
        db,
        &prefix,
        "4s",
        "    checkpoint-interval: 1h\n",
        env.dir(),
        Stdio::null(),
    );
    let u = g.url(&prefix);
    // Wait until the replica's L0 stops moving; returns its last TXID.
    let settle = |after: Option<u64>| -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        let mut stable_since = Instant::now();
        loop {
            assert!(
                Instant::now() < deadline,
                "Litestream did not ship within 60 s (L0 at {last:?})"
            );
            let now = l0_max(&rt, &u);
            if now != last {
                last = now;
                stable_since = Instant::now();
            } else if now.is_some()
                && now > after
                && stable_since.elapsed() > Duration::from_millis(1200)
            {
                return now.unwrap_or_default();
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    };
    let mut expected: Vec<(u64, String)> = Vec::new();
    let mut txid = settle(None);
    expected.push((txid, state_checksum(db)));
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let steps = [
        "INSERT INTO t(v) VALUES ('a'), ('b'), ('c');",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 300) INSERT INTO t(v) SELECT printf('bulk %d %s', i, hex(randomblob(300))) FROM n;",
        "UPDATE t SET v = v || '!' WHERE id % 5 = 0;",
        "DELETE FROM t WHERE id % 2 = 0;",
        "INSERT INTO t(v) VALUES ('d');",
        "UPDATE t SET v = 'z' WHERE id = 1;",
    ];
    for sql in steps {
        c.execute_batch(sql).unwrap();
        txid = settle(Some(txid));
        expected.push((txid, state_checksum(db)));
    }
    // Let an L1 compaction appear, then stop Litestream cleanly.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !levels_present(&rt, &u).contains(&1) {
        assert!(Instant::now() < deadline, "no L1 compaction within 60 s");
        std::thread::sleep(Duration::from_millis(300));
    }
    terminate(&mut child, Duration::from_secs(20));
    drop(c);

    let out = env.path("out.db");
    for (t, sum) in &expected {
        let j = json_of(&restore(&[
            "--json",
            "--txid",
            &format!("{t:x}"),
            "-o",
            s(&out),
            &u,
        ]));
        assert_eq!(&checksum_of(&out), sum, "TXID {t:x}");
        assert_eq!(j["files_verified"], true);
        std::fs::remove_file(&out).unwrap();
    }
    // Latest: as Litestream restores it, and as the source is once checkpointed.
    let j = json_of(&restore(&["--json", "-o", s(&out), &u]));
    assert_eq!(j["txid"], format!("{:016x}", expected.last().unwrap().0));
    let levels: Vec<u64> = j["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["level"].as_u64().unwrap())
        .collect();
    eprintln!(
        "{} TXIDs restored; latest from levels {levels:?}",
        expected.len()
    );
    assert!(
        levels.iter().any(|&l| l >= 1),
        "the latest plan uses no compaction: {levels:?}"
    );
    let theirs = env.path("litestream.db");
    let o = run(Command::new(&ls).args(["restore", "-o", s(&theirs), &u]));
    assert!(o.status.success(), "litestream restore: {}", stderr(&o));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&theirs).unwrap()
    );
    checkpoint(db);
    assert_eq!(checksum_of(&out), checksum_of(db));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(db).unwrap());
    std::fs::remove_file(&out).unwrap();

    // A Sluice-written (checksum-carrying) replica on Garage too: only the
    // pages that end up in the database are fetched, with ranged reads.
    let r = sluice_replica(&env.path("sluice").tap_mkdir());
    let sprefix = unique("restore-sluice");
    let surl = s3_backend::ReplicaUrl::parse(&g.url(&sprefix)).unwrap();
    rt.block_on(async {
        let store = surl
            .open(
                s3_backend::retry::RetryPolicy::default(),
                s3_backend::retry::Shutdown::never(),
            )
            .await
            .unwrap();
        for level in [0u8, 1] {
            for e in std::fs::read_dir(r.root.join("ltx").join(level.to_string())).unwrap() {
                let p = e.unwrap().path();
                let (min, max) =
                    ltx_format::parse_filename(p.file_name().unwrap().to_str().unwrap()).unwrap();
                let key = surl.layout().ltx_key(level, min, max);
                store
                    .put(
                        &key,
                        &s3_backend::PutSource::File(p),
                        s3_backend::PutMode::Overwrite,
                    )
                    .await
                    .unwrap();
            }
        }
    });
    for t in 1..r.states.len() as u64 {
        let j = json_of(&restore(&[
            "--json",
            "--txid",
            &format!("{t:x}"),
            "-o",
            s(&out),
            &g.url(&sprefix),
        ]));
        assert_eq!(
            std::fs::read(&out).unwrap(),
            r.states[t as usize],
            "TXID {t}"
        );
        assert_eq!(j["checksum_matched_post_apply"], true);
        std::fs::remove_file(&out).unwrap();
    }
}
