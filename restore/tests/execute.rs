#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! The executor against in-memory and local replicas: random chains restored
//! at every TXID equal sequential application; the Litestream vectors give
//! the README's checksums; corruption, lies, faults and an existing output
//! leave nothing at the output path.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ltx_format::{checksum_database, Header, PageSize, Rule, Txid, HEADER_FLAG_NO_CHECKSUM};
use restore::{IntegrityCheck, NoProgress, Options, RestoreError, Target, Verify};
use s3_backend::fault::{Fault, FaultStore};
use s3_backend::local::LocalStore;
use s3_backend::memory::MemoryStore;
use s3_backend::retry::{RetryPolicy, RetryingStore, Shutdown};
use s3_backend::{PutMode, PutSource, ReplicaStore};

/// Expected database checksum after each L0 TXID 1..=0x14 (vectors README).
const SUMS: [&str; 20] = [
    "9803c2bdb5bb35fc",
    "d619d3355c133625",
    "c4a7931480503295",
    "d07d8c0639a0d4ec",
    "fae4a7ff7c3f2fa2",
    "d17de21d786b8f7a",
    "d4b69f054bde4d82",
    "c4761307155edea3",
    "d5107cfe876248a5",
    "b1d39c37bac43d57",
    "e6a5fdfd81264fd9",
    "cde6468369b05a9f",
    "dba004b3ae7b8d5b",
    "fbc8833f5cc76614",
    "b4832159c9ed526b",
    "dcce1424f29054c0",
    "9824554a3c09c390",
    "f6c22240ca2083f9",
    "d9d15be1cd81bb12",
    "ec7d0b4286c9da50",
];

fn checksum_of(p: &std::path::Path) -> String {
    checksum_database(std::fs::File::open(p).unwrap())
        .unwrap()
        .0
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_chains_restore_every_txid_like_sequential_apply() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..10u64 {
        for tracked in [false, true] {
            let n = 24;
            let chain = random_chain(seed * 31 + 7, n, tracked).await;
            for t in 1..=n {
                let out = dir.path().join(format!("s{seed}-{tracked}-{t}.db"));
                let opts = if t % 3 == 0 {
                    tiny_opts()
                } else {
                    Options::default()
                };
                let r = restore_to(&chain.store, Target::Txid(Txid(t)), &out, &opts)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed} tracked {tracked} t {t}: {e}"));
                assert_eq!(
                    std::fs::read(&out).unwrap(),
                    chain.states[t as usize],
                    "seed {seed} tracked {tracked} t {t}: {:?}",
                    r.files
                );
                assert_eq!(r.txid, Txid(t));
                assert_eq!(r.files_verified, !tracked);
                assert_eq!(r.checksum_matched_post_apply, tracked);
                let (sum, _) = ltx_format::checksum::checksum_pages(
                    &[],
                    std::fs::File::open(&out).unwrap(),
                    chain.page_size,
                )
                .unwrap();
                assert_eq!(r.checksum, sum);
                assert_eq!(r.timestamp_ms, Some(1_000_000 + t as i64 * 1000));
                std::fs::remove_file(&out).unwrap();
            }
        }
    }
    assert!(dir_names(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litestream_vectors_restore_at_every_txid() {
    let root = vectors().join("litestream/replica");
    let source = std::fs::read(vectors().join("litestream/source.db")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn ReplicaStore> = Arc::new(LocalStore::new(&root));
    let mem: Arc<dyn ReplicaStore> = load_dir(&root).await;
    for (store, opts) in [(&local, Options::default()), (&mem, tiny_opts())] {
        for t in 1..=0x14u64 {
            let out = dir.path().join(format!("r{t}.db"));
            let r = restore_to(store, Target::Txid(Txid(t)), &out, &opts)
                .await
                .unwrap();
            assert_eq!(checksum_of(&out), SUMS[t as usize - 1], "TXID {t:x}");
            assert_eq!(r.checksum.to_string(), SUMS[t as usize - 1]);
            assert!(r.files_verified && !r.checksum_matched_post_apply);
            std::fs::remove_file(&out).unwrap();
        }
        let out = dir.path().join("latest.db");
        let r = restore_to(store, Target::Latest, &out, &opts)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), source);
        assert_eq!(r.txid, Txid(0x14));
        // The commit time of TXID 0x14 (its L0 file), not the L9 snapshot's time.
        assert_eq!(r.timestamp_ms, Some(1_795_355_603_419));
        std::fs::remove_file(&out).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_resolve_to_the_last_commit_at_or_before() {
    let root = vectors().join("litestream/replica");
    let store: Arc<dyn ReplicaStore> = Arc::new(LocalStore::new(&root));
    let files = listing(&store).await;
    // L0 header times of TXIDs 9, a, 14.
    let (t9, ta, t14) = (
        1_795_355_586_920i64,
        1_795_355_588_420i64,
        1_795_355_603_419i64,
    );
    let r = |ms| {
        let (store, files) = (store.clone(), files.clone());
        async move { restore::resolve_timestamp(&store, &files, ms).await }
    };
    assert_eq!(r(ta).await.unwrap(), (Txid(0xa), ta));
    assert_eq!(r(ta + 1499).await.unwrap(), (Txid(0xa), ta));
    assert_eq!(r(ta - 1).await.unwrap(), (Txid(9), t9));
    assert_eq!(r(t14).await.unwrap(), (Txid(0x14), t14));
    assert_eq!(r(t14 + 86_400_000).await.unwrap(), (Txid(0x14), t14));
    let e = r(1_795_355_573_434 - 1).await.unwrap_err().to_string();
    assert!(e.contains("before the first restorable commit (TXID 0000000000000001 at 2026-11-22T13:52:53.434Z)"), "{e}");
}

/// Stamped (checksum-carrying) files: only needed frames are fetched and the
/// final database checksum is what proves the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_carrying_chains_fetch_only_needed_pages() {
    let v = vectors();
    let mem = Arc::new(MemoryStore::new());
    for e in std::fs::read_dir(v.join("go-reference/stamped")).unwrap() {
        let p = e.unwrap().path();
        let key = l0_key(&p);
        mem.put(&key, &PutSource::File(p), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let store: Arc<dyn ReplicaStore> = mem.clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.db");
    for opts in [Options::default(), tiny_opts()] {
        let r = restore_to(&store, Target::Latest, &out, &opts)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(v.join("litestream/source.db")).unwrap()
        );
        assert!(r.checksum_matched_post_apply && !r.files_verified);
        assert_eq!(r.checksum.to_string(), "ec7d0b4286c9da50");
        let total: u64 = r.files.iter().map(|f| f.size).sum();
        if opts.small_file_bytes == 0 {
            assert!(
                r.bytes_fetched < total,
                "fetched {} of {total}",
                r.bytes_fetched
            );
        }
        std::fs::remove_file(&out).unwrap();
        // Verify::All reads everything and still agrees.
        let all = Options {
            verify: Verify::All,
            ..opts.clone()
        };
        let r = restore_to(&store, Target::Latest, &out, &all)
            .await
            .unwrap();
        assert!(r.checksum_matched_post_apply && r.files_verified);
        std::fs::remove_file(&out).unwrap();
    }

    // A file lying about its post-apply checksum: every file verifies on its
    // own, the result does not match, nothing is written.
    mem.put(
        &file_layout().ltx_key(0, Txid(0x14), Txid(0x14)),
        &PutSource::File(v.join("invalid/post-apply-lie/0000000000000014-0000000000000014.ltx")),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    let e = restore_to(&store, Target::Latest, &out, &Options::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RestoreError::ChecksumMismatch { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("0000000000000014-0000000000000014.ltx"),
        "{e}"
    );
    assert!(
        dir_names(dir.path()).is_empty(),
        "{:?}",
        dir_names(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_file_is_named_with_its_rule_and_nothing_is_written() {
    let root = vectors().join("litestream/replica");
    let mem = load_dir(&root).await;
    let key = &file_layout().ltx_key(9, Txid(1), Txid(0x14));
    let mut bytes = std::fs::read(root.join(key)).unwrap();
    let store: Arc<dyn ReplicaStore> = mem.clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.db");
    let n = bytes.len();
    // A page byte, the header timestamp, the top byte of Commit (about two
    // billion pages: nothing may be sized by it before it is verified), the
    // file checksum.
    for (off, rule) in [
        (2000usize, None),
        (33, Some(Rule::FileChecksum)),
        (12, Some(Rule::FileChecksum)),
        (n - 3, Some(Rule::FileChecksum)),
    ] {
        bytes[off] ^= 0x40;
        mem.put(key, &PutSource::Bytes(bytes.clone()), PutMode::Overwrite)
            .await
            .unwrap();
        bytes[off] ^= 0x40;
        for opts in [Options::default(), tiny_opts()] {
            let e = restore_to(&store, Target::Latest, &out, &opts)
                .await
                .unwrap_err();
            let RestoreError::Corrupt {
                key: k,
                error: source,
            } = &e
            else {
                panic!("{e}")
            };
            assert_eq!(k, key);
            if let Some(r) = rule {
                assert_eq!(source.rule(), Some(r), "{e}");
            }
            assert!(e.to_string().starts_with(key), "{e}");
            assert!(dir_names(dir.path()).is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_downloads_leave_nothing_and_retries_recover() {
    let root = vectors().join("litestream/replica");
    let mem = load_dir(&root).await;
    let clean: Arc<dyn ReplicaStore> = mem.clone();
    let source = std::fs::read(vectors().join("litestream/source.db")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.db");
    let plan = plan_for(&clean, Target::Txid(Txid(0x10))).await.unwrap();
    assert!(plan.files.len() >= 5, "{:?}", plan.files);
    // Count the calls of a clean run.
    let fault = Arc::new(FaultStore::new(mem.clone()));
    let store: Arc<dyn ReplicaStore> = fault.clone();
    for opts in [Options::default(), tiny_opts()] {
        let before = fault.calls();
        restore::restore(store.clone(), &plan, &out, &opts, Arc::new(NoProgress))
            .await
            .unwrap();
        std::fs::remove_file(&out).unwrap();
        let calls = fault.calls() - before;
        assert!(calls >= plan.files.len() as u64);
        for k in 1..=calls {
            for f in [Fault::DropConnection, Fault::Permanent] {
                fault.clear();
                fault.fail_call(fault.calls() + k, f);
                let e = restore::restore(store.clone(), &plan, &out, &opts, Arc::new(NoProgress))
                    .await
                    .unwrap_err();
                assert!(matches!(e, RestoreError::Store(_)), "call {k} {f:?}: {e}");
                assert!(e.to_string().contains("injected"), "{e}");
                assert!(
                    dir_names(dir.path()).is_empty(),
                    "call {k}: {:?}",
                    dir_names(dir.path())
                );
            }
        }
        fault.clear();
    }
    // Behind the retry policy, dropped connections and 503s are retried.
    let policy = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        attempt_timeout: Duration::from_secs(5),
        total_timeout: Duration::from_secs(10),
    };
    let fault = Arc::new(FaultStore::new(mem.clone()));
    let retrying: Arc<dyn ReplicaStore> =
        Arc::new(RetryingStore::new(fault.clone(), policy, Shutdown::never()));
    let latest = plan_for(&clean, Target::Latest).await.unwrap();
    for k in 1..=4 {
        fault.fail_call(
            k * 2,
            if k % 2 == 0 {
                Fault::DropConnection
            } else {
                Fault::Transient
            },
        );
    }
    restore::restore(
        retrying.clone(),
        &latest,
        &out,
        &tiny_opts(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), source);
    std::fs::remove_file(&out).unwrap();
    // A store that keeps failing gives up, and still writes nothing.
    fault.fail_from(fault.calls() + 3, Fault::DropConnection);
    let e = restore::restore(retrying, &latest, &out, &tiny_opts(), Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("gave up after 4 attempts"), "{e}");
    assert!(dir_names(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_output_is_kept_unless_overwrite() {
    let root = vectors().join("litestream/replica");
    let store: Arc<dyn ReplicaStore> = Arc::new(LocalStore::new(&root));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("app.db");
    std::fs::write(&out, b"keep me").unwrap();
    let wal = dir.path().join("app.db-wal");
    std::fs::write(&wal, b"stale wal").unwrap();
    let e = restore_to(&store, Target::Latest, &out, &Options::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RestoreError::OutputExists(_)), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let opts = Options {
        overwrite: true,
        ..Options::default()
    };
    restore_to(&store, Target::Latest, &out, &opts)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(vectors().join("litestream/source.db")).unwrap()
    );
    assert!(
        !wal.exists(),
        "a stale -wal would be replayed onto the restored database"
    );
    assert_eq!(dir_names(dir.path()), vec!["app.db".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_dropped_by_a_shrink_come_back_as_zeros() {
    // 1: pages a b c; 2: commit 1; 3: commit 3 with only page 2 rewritten.
    let ps = PageSize::new(512).unwrap();
    let mem = Arc::new(MemoryStore::new());
    let mut paths = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    type Spec = (u64, u32, Vec<(u32, Vec<u8>)>);
    let specs: [Spec; 3] = [
        (
            1,
            3,
            vec![
                (1, vec![b'a'; 512]),
                (2, vec![b'b'; 512]),
                (3, vec![b'c'; 512]),
            ],
        ),
        (2, 1, vec![]),
        (3, 3, vec![(2, vec![b'B'; 512])]),
    ];
    for (t, commit, pages) in specs {
        let mut h = Header::new(ps, commit, Txid(t), Txid(t));
        h.flags = HEADER_FLAG_NO_CHECKSUM;
        let bytes = encode(h, &pages, ltx_format::Checksum::ZERO);
        let p = dir
            .path()
            .join(ltx_format::format_filename(Txid(t), Txid(t)));
        std::fs::write(&p, &bytes).unwrap();
        paths.push(p);
        mem.put(
            &file_layout().ltx_key(0, Txid(t), Txid(t)),
            &PutSource::Bytes(bytes),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    }
    let seq = dir.path().join("seq.db");
    let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
    ltx_format::apply_file(&seq, &refs).unwrap();
    let store: Arc<dyn ReplicaStore> = mem;
    let out = dir.path().join("out.db");
    restore_to(&store, Target::Latest, &out, &tiny_opts())
        .await
        .unwrap();
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got, std::fs::read(&seq).unwrap());
    assert_eq!(&got[1024..], &[0u8; 512][..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_check_passes_real_databases_and_stops_garbage() {
    let root = vectors().join("litestream/replica");
    let store: Arc<dyn ReplicaStore> = Arc::new(LocalStore::new(&root));
    let dir = tempfile::tempdir().unwrap();
    for mode in [IntegrityCheck::Quick, IntegrityCheck::Full] {
        let out = dir.path().join(format!("{}.db", mode.as_str()));
        let opts = Options {
            integrity_check: mode,
            ..Options::default()
        };
        restore_to(&store, Target::Latest, &out, &opts)
            .await
            .unwrap();
        // Checked without changing a byte, and without leaving -wal/-shm.
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(vectors().join("litestream/source.db")).unwrap()
        );
    }
    assert_eq!(
        dir_names(dir.path()),
        vec!["full.db".to_string(), "quick.db".to_string()]
    );
    // Random pages are not a SQLite database: refused, nothing written.
    let chain = random_chain(5, 4, true).await;
    let out = dir.path().join("garbage.db");
    let opts = Options {
        integrity_check: IntegrityCheck::Quick,
        ..Options::default()
    };
    let e = restore_to(&chain.store, Target::Latest, &out, &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, RestoreError::Integrity { .. }), "{e}");
    assert!(!out.exists());
    assert_eq!(dir_names(dir.path()).len(), 2);
}

/// The same for a checksum-carrying chain, where only needed pages are
/// fetched: a huge Commit in the last file is caught by the final database
/// checksum, and the file is then named by verifying each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_commit_in_a_checksum_carrying_chain_is_named() {
    let v = vectors();
    let mem = Arc::new(MemoryStore::new());
    for e in std::fs::read_dir(v.join("go-reference/stamped")).unwrap() {
        let p = e.unwrap().path();
        let key = l0_key(&p);
        let mut bytes = std::fs::read(&p).unwrap();
        if key.ends_with("0000000000000014-0000000000000014.ltx") {
            bytes[12] ^= 0x80;
        }
        mem.put(&key, &PutSource::Bytes(bytes), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let store: Arc<dyn ReplicaStore> = mem;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.db");
    let e = restore_to(&store, Target::Latest, &out, &Options::default())
        .await
        .unwrap_err();
    let RestoreError::Corrupt { key, error } = &e else {
        panic!("{e}")
    };
    assert_eq!(key, "ltx/0/0000000000000014-0000000000000014.ltx");
    assert_eq!(error.rule(), Some(Rule::FileChecksum), "{e}");
    assert!(dir_names(dir.path()).is_empty());
}
