//! A second capture source, for tests only, built on nothing but the
//! pipeline's interface (`Handoff`, `StagingDir::write_ltx`, `StagedL0`): it
//! stages the whole database as one full-page L0 file per call, as
//! `sluice ltx encode-db` encodes it. The database is in rollback-journal
//! mode, which the WAL watcher refuses: the pipeline does not care.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use ltx_format::{Checksum, Encoder, Header, Txid};
use rusqlite::Connection;
use s3_backend::retry::{RetryPolicy, Shutdown};
use s3_backend::ReplicaUrl;

use super::metrics::DbMetrics;
use super::{Handoff, Pipeline, PipelineSpec, ReplicaSpec, StagedL0, Stops};
use crate::staging::StagingDir;
use crate::wal::source::{now_ms, DbSource};

/// Stages full-page L0 files of a database.
struct SnapshotSource {
    handoff: Handoff,
    txid: Txid,
    last: Checksum,
}

impl SnapshotSource {
    fn capture(&mut self, db: &Path) -> StagedL0 {
        let main = std::fs::File::open(db).unwrap();
        let mut src = DbSource::open(&main, db).unwrap();
        let txid = Txid(self.txid.0 + 1);
        let mut h = Header::new(src.page_size, src.commit, txid, txid);
        h.timestamp_ms = now_ms();
        if txid.0 > 1 {
            h.pre_apply_checksum = self.last;
        }
        let mut post = Checksum::ZERO;
        let path = self
            .handoff
            .staging()
            .write_ltx(0, txid, txid, |w| {
                let mut enc = Encoder::new(w, h)?;
                src.encode_all(&mut enc, |_, _| {})?;
                post = enc.pages_checksum();
                enc.finish(post)?;
                Ok(())
            })
            .unwrap();
        let staged = StagedL0 {
            txid,
            post_apply: post,
            path,
            full: true,
        };
        self.handoff.staged(&staged);
        (self.txid, self.last) = (txid, post);
        staged
    }
}

fn spec(dir: &Path) -> PipelineSpec {
    PipelineSpec {
        staging: StagingDir::new(dir.join("staging")),
        replicas: vec![ReplicaSpec {
            name: "local".into(),
            url: ReplicaUrl::parse(&format!("file://{}", dir.join("replica").display())).unwrap(),
            litestream_compatible: false,
            sync_interval: Duration::from_millis(50),
            batch: false,
        }],
        levels: vec![Duration::from_millis(200)],
        snapshot_interval: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
    }
}

/// Opens and runs the pipeline of `spec`; returns a source feeding it and
/// the running pipeline.
async fn start(
    spec: PipelineSpec,
) -> (SnapshotSource, tokio::task::JoinHandle<Result<(), String>>) {
    let metrics = Arc::new(DbMetrics::default());
    let (handoff, rx) = Pipeline::handoff(&spec.staging, metrics, Stops::default());
    let p = Pipeline::open(spec, handoff.clone(), rx, true)
        .await
        .unwrap()
        .expect("not stopped");
    let source = SnapshotSource {
        handoff,
        txid: Txid(0),
        last: Checksum::ZERO,
    };
    (source, tokio::spawn(p.run(Arc::new(AtomicU64::new(0)))))
}

async fn restore_at(url: &ReplicaUrl, txid: Txid, out: &Path) -> Checksum {
    let store = url
        .open(RetryPolicy::default(), Shutdown::never())
        .await
        .unwrap();
    let files = restore::list_files(&store, &url.layout()).await.unwrap();
    let plan = restore::plan(&files, restore::Target::Txid(txid)).unwrap();
    let opts = restore::Options::default();
    let r = restore::restore(store, &plan, out, &opts, Arc::new(restore::NoProgress))
        .await
        .unwrap();
    r.checksum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_capture_source_replicates_through_the_same_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let app = Connection::open(&db).unwrap();
    app.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(v TEXT);")
        .unwrap();
    let spec = spec(dir.path());
    let url = spec.replicas[0].url.clone();
    let (mut source, run) = start(spec).await;
    // Three versions of the database, each staged, each kept to compare.
    let mut versions = Vec::new();
    for i in 0..3 {
        app.execute(
            "INSERT INTO t(v) SELECT hex(randomblob(300)) FROM (SELECT 1 UNION SELECT 2)",
            [],
        )
        .unwrap();
        let s = source.capture(&db);
        assert_eq!(s.txid, Txid(i + 1));
        versions.push((s.txid, s.post_apply, std::fs::read(&db).unwrap()));
    }
    source.handoff.finished();
    run.await.unwrap().unwrap();
    for (txid, sum, bytes) in versions {
        let out = dir.path().join(format!("restored-{txid}.db"));
        assert_eq!(restore_at(&url, txid, &out).await, sum, "TXID {txid}");
        assert_eq!(std::fs::read(&out).unwrap(), bytes, "TXID {txid}");
    }
}

/// A capture source that stages a file per transaction, faster than the
/// replica's interval: the uploader ships them as bundles, far fewer objects
/// than transactions, and every transaction still restores on its own, even
/// where a retried upload left two bundles that overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_uploads_keep_every_transaction_restorable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let app = Connection::open(&db).unwrap();
    app.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(v TEXT);")
        .unwrap();
    let mut spec = spec(dir.path());
    spec.replicas[0].batch = true;
    spec.replicas[0].sync_interval = Duration::from_millis(300);
    let url = spec.replicas[0].url.clone();
    let (mut source, run) = start(spec).await;
    let mut versions = Vec::new();
    let mut staged = Vec::new();
    for _ in 0..40 {
        app.execute("INSERT INTO t(v) VALUES (hex(randomblob(50)))", [])
            .unwrap();
        let s = source.capture(&db);
        staged.push(std::fs::read(&s.path).unwrap());
        versions.push((s.txid, s.post_apply, std::fs::read(&db).unwrap()));
    }
    source.handoff.finished();
    run.await.unwrap().unwrap();

    let store = url
        .open(RetryPolicy::default(), Shutdown::never())
        .await
        .unwrap();
    let layout = url.layout();
    let objects = store.list(&layout.level_dir(0), None).await.unwrap();
    assert!(
        (2..=5).contains(&objects.len()),
        "40 transactions in a few intervals: {} L0 objects",
        objects.len()
    );
    let listed = restore::list_files(&store, &layout).await.unwrap();
    let l0: Vec<u64> = listed
        .iter()
        .filter(|f| f.level == 0)
        .map(|f| f.min.0)
        .collect();
    assert_eq!(
        l0,
        (1..=40).collect::<Vec<_>>(),
        "one listed file per transaction"
    );

    // A second bundle over TXIDs 10..=20, as an upload retried after a lost
    // progress record could leave: same files, another grouping.
    let mut extra = Vec::new();
    let parts = (10..=20u64).map(|t| (Txid(t), Txid(t), &staged[t as usize - 1][..]));
    ltx_format::bundle::write_bundle(&mut extra, parts).unwrap();
    let key = layout.ltx_key(0, Txid(10), Txid(20));
    let body = s3_backend::PutSource::Bytes(extra);
    store
        .put(&key, &body, s3_backend::PutMode::Create)
        .await
        .unwrap();

    for (txid, sum, bytes) in versions {
        let out = dir.path().join(format!("restored-{txid}.db"));
        assert_eq!(restore_at(&url, txid, &out).await, sum, "TXID {txid}");
        assert_eq!(std::fs::read(&out).unwrap(), bytes, "TXID {txid}");
    }
}

/// Files staged while the uploader lists the staging directory: a listing
/// (`readdir`) may miss a file renamed in during the scan and yet see a
/// later one. The uploader must never upload past a file it did not see:
/// the replica's level-0 chain has no gap, whatever the timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_staged_during_a_listing_are_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let app = Connection::open(&db).unwrap();
    app.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(v TEXT);")
        .unwrap();
    for batch in [false, true] {
        let sub = dir.path().join(format!("batch-{batch}"));
        let mut spec = spec(&sub);
        spec.replicas[0].batch = batch;
        spec.replicas[0].sync_interval = Duration::from_millis(5);
        let url = spec.replicas[0].url.clone();
        let (mut source, run) = start(spec).await;
        let db2 = db.clone();
        let n = 3000u64;
        tokio::task::spawn_blocking(move || {
            for _ in 0..n {
                source.capture(&db2);
            }
            source.handoff.finished();
        })
        .await
        .unwrap();
        run.await.unwrap().unwrap();
        let store = url
            .open(RetryPolicy::default(), Shutdown::never())
            .await
            .unwrap();
        let listed = restore::list_files(&store, &url.layout()).await.unwrap();
        let l0: Vec<u64> = listed
            .iter()
            .filter(|f| f.level == 0)
            .map(|f| f.min.0)
            .collect();
        let missing: Vec<u64> = (1..=n).filter(|t| l0.binary_search(t).is_err()).collect();
        assert!(
            missing.is_empty(),
            "batch={batch}: TXIDs staged but never uploaded: {missing:?}"
        );
    }
}
