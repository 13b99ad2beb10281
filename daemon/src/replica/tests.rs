//! The follower against a synthetic primary: LTX files written with the
//! encoder into a `file://` replica, a cache that follows them, and the
//! cached database compared page by page with the primary's.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ltx_format::{lock_pgno, Checksum, DbChecksum, Encoder, Header, PageSize, Txid};
use s3_backend::retry::Shutdown;
use s3_backend::{Layout, ReplicaStore, ReplicaUrl};
use tokio_util::sync::CancellationToken;

use super::follow::{Follower, Options, Spec};
use super::store::{self, Counters};

/// A primary that writes LTX files straight into a file replica.
struct Primary {
    root: std::path::PathBuf,
    layout: Layout,
    ps: PageSize,
    pages: Vec<Vec<u8>>,
    txid: u64,
    no_checksum: bool,
}

fn page(ps: PageSize, pgno: u32, txid: u64, fill: u8) -> Vec<u8> {
    let mut p = vec![fill; ps.as_usize()];
    p[..4].copy_from_slice(&pgno.to_be_bytes());
    p[4..12].copy_from_slice(&txid.to_be_bytes());
    p
}

impl Primary {
    /// A snapshot at TXID 1 of `n` pages.
    fn new(root: &Path, ps: u32, n: u32) -> Primary {
        let ps = PageSize::new(ps).unwrap();
        let lock = lock_pgno(ps);
        let pages = (1..=n)
            .map(|p| {
                if p == lock {
                    vec![0; ps.as_usize()]
                } else {
                    page(ps, p, 1, p as u8)
                }
            })
            .collect();
        let pr = Primary {
            root: root.to_path_buf(),
            layout: Layout::new(s3_backend::LayoutKind::File, ""),
            ps,
            pages,
            txid: 1,
            no_checksum: false,
        };
        let all: Vec<u32> = (1..=n).filter(|&p| p != lock).collect();
        let bytes = pr.encode(1, 1, &all, Checksum::ZERO);
        pr.put(9, 1, 1, &bytes);
        pr.put(0, 1, 1, &bytes);
        pr
    }

    fn url(&self) -> ReplicaUrl {
        ReplicaUrl::File {
            root: self.root.clone(),
        }
    }

    fn checksum(&self) -> Checksum {
        let lock = lock_pgno(self.ps);
        let mut c = DbChecksum::new();
        for (i, p) in self.pages.iter().enumerate() {
            if i as u32 + 1 != lock {
                c.toggle_page(i as u32 + 1, p);
            }
        }
        c.value()
    }

    fn encode(&self, min: u64, max: u64, pgnos: &[u32], pre: Checksum) -> Vec<u8> {
        let mut h = Header::new(self.ps, self.pages.len() as u32, Txid(min), Txid(max));
        h.timestamp_ms = 1_700_000_000_000 + max as i64;
        if self.no_checksum {
            h.flags = ltx_format::HEADER_FLAG_NO_CHECKSUM;
        } else if min > 1 {
            h.pre_apply_checksum = pre;
        }
        let mut enc = Encoder::new(Vec::new(), h).unwrap();
        for &p in pgnos {
            enc.encode_page(p, &self.pages[p as usize - 1]).unwrap();
        }
        let post = if self.no_checksum {
            Checksum::ZERO
        } else {
            self.checksum()
        };
        enc.finish(post).unwrap().0
    }

    fn path(&self, level: u8, min: u64, max: u64) -> std::path::PathBuf {
        self.root
            .join(self.layout.ltx_key(level, Txid(min), Txid(max)))
    }

    fn put(&self, level: u8, min: u64, max: u64, bytes: &[u8]) {
        let p = self.path(level, min, max);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    /// One transaction: pages set to a new fill, the database resized.
    fn commit(&mut self, changes: &[u32], commit: Option<u32>) {
        let pre = self.checksum();
        self.txid += 1;
        if let Some(c) = commit {
            self.pages.resize(c as usize, vec![0; self.ps.as_usize()]);
        }
        let lock = lock_pgno(self.ps);
        let mut pgnos: Vec<u32> = changes.iter().copied().filter(|&p| p != lock).collect();
        pgnos.sort_unstable();
        pgnos.dedup();
        for &p in &pgnos {
            if p as usize > self.pages.len() {
                self.pages.resize(p as usize, vec![0; self.ps.as_usize()]);
            }
            self.pages[p as usize - 1] = page(self.ps, p, self.txid, (self.txid % 251) as u8);
        }
        let bytes = self.encode(self.txid, self.txid, &pgnos, pre);
        self.put(0, self.txid, self.txid, &bytes);
    }

    /// Compacts L0 files `min..=max` into one file at `level`.
    fn compact(&self, level: u8, min: u64, max: u64) {
        let inputs: Vec<std::fs::File> = (min..=max)
            .map(|t| std::fs::File::open(self.path(0, t, t)).unwrap())
            .collect();
        let opts = ltx_format::CompactOptions {
            no_checksum: self.no_checksum,
            ..Default::default()
        };
        let (out, _, _) = ltx_format::compact(inputs, Vec::new(), opts).unwrap();
        self.put(level, min, max, &out);
    }

    fn remove_l0(&self, min: u64, max: u64) {
        for t in min..=max {
            std::fs::remove_file(self.path(0, t, t)).unwrap();
        }
    }
}

struct Replica {
    f: Follower,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

async fn follow(pr: &Primary, cache: &Path) -> Replica {
    let counters = Arc::new(Counters::default());
    let store: Arc<dyn ReplicaStore> = store::open(
        &pr.url(),
        counters.clone(),
        store::policy(),
        Shutdown::never(),
    )
    .await
    .unwrap();
    let spec = Spec {
        name: "app.db".into(),
        url: pr.url(),
        cache: cache.to_path_buf(),
        opts: Options {
            poll_interval: Duration::from_millis(50),
            ..Options::default()
        },
    };
    let f = Follower::start(spec, counters.clone(), store)
        .await
        .unwrap();
    Replica {
        f,
        counters,
        stop: CancellationToken::new(),
    }
}

impl Replica {
    async fn poll(&mut self) {
        self.f.poll(&self.stop).await.unwrap();
    }

    /// The served bytes equal the primary's pages (header patch aside).
    fn assert_matches(&self, pr: &Primary) {
        assert_eq!(self.f.txid(), Txid(pr.txid), "position");
        let s = self.f.served.status().checksum;
        assert_eq!(s, pr.checksum(), "checksum at txid {}", pr.txid);
        let ps = pr.ps.as_usize();
        assert_eq!(self.f.served.size(), (pr.pages.len() * ps) as u64);
        for (i, want) in pr.pages.iter().enumerate() {
            let mut got = vec![0u8; ps];
            self.f.served.read_at((i * ps) as u64, &mut got).unwrap();
            if i == 0 {
                got[18..32].copy_from_slice(&want[18..32]);
                got[92..96].copy_from_slice(&want[92..96]);
            }
            assert!(got == *want, "page {} differs at txid {}", i + 1, pr.txid);
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn follows_commits_growth_and_truncation() {
    let t = tempfile::tempdir().unwrap();
    let mut pr = Primary::new(&t.path().join("replica"), 512, 20);
    let mut r = follow(&pr, &t.path().join("cache")).await;
    r.assert_matches(&pr);
    pr.commit(&[2, 3], None);
    pr.commit(&[3, 25], Some(25));
    r.poll().await;
    r.assert_matches(&pr);
    pr.commit(&[1], Some(10));
    r.poll().await;
    r.assert_matches(&pr);
    let (gets, lists, _) = r.counters.snapshot();
    r.poll().await;
    let (gets2, lists2, _) = r.counters.snapshot();
    // An idle poll: one LIST of level 0 after the last key, no GET.
    assert_eq!((gets2 - gets, lists2 - lists), (0, 1));
    assert_eq!(r.f.metrics.steps.load(Relaxed), 2);
}

/// 200 transactions over 10 pages, one step: only the newest version of each
/// page is fetched.
#[tokio::test(flavor = "current_thread")]
async fn one_step_fetches_each_page_once() {
    let t = tempfile::tempdir().unwrap();
    let mut pr = Primary::new(&t.path().join("replica"), 4096, 40);
    let mut r = follow(&pr, &t.path().join("cache")).await;
    for i in 0..200u32 {
        pr.commit(&[1 + i % 10], None);
    }
    let (_, _, before) = r.counters.snapshot();
    r.poll().await;
    r.assert_matches(&pr);
    assert_eq!(r.f.metrics.pages_applied.load(Relaxed), 10);
    let (_, _, after) = r.counters.snapshot();
    let fetched = after - before;
    // Each file's index is about 15 bytes and each fetched page compresses
    // to about 60; 200 files: well under 8 KiB in all.
    assert!(fetched < 8 << 10, "fetched {fetched} bytes");
}

#[tokio::test(flavor = "current_thread")]
async fn survives_compaction_and_removal_of_the_files_it_wanted() {
    let t = tempfile::tempdir().unwrap();
    let mut pr = Primary::new(&t.path().join("replica"), 512, 20);
    let mut r = follow(&pr, &t.path().join("cache")).await;
    for i in 0..10 {
        pr.commit(&[1 + i % 5], None);
    }
    // L0 2..=11 compacted into L1 and removed before the replica looks.
    pr.compact(1, 2, 11);
    pr.remove_l0(2, 11);
    pr.commit(&[7], None);
    r.poll().await;
    r.assert_matches(&pr);
    // A gap no level covers: restored from a newer snapshot instead.
    for _ in 0..5 {
        pr.commit(&[3], None);
    }
    pr.remove_l0(13, 14);
    let n = pr.pages.len() as u32;
    let bytes = pr.encode(1, pr.txid, &(1..=n).collect::<Vec<_>>(), Checksum::ZERO);
    pr.put(9, 1, pr.txid, &bytes);
    r.poll().await;
    r.assert_matches(&pr);
    assert_eq!(r.f.metrics.restores.load(Relaxed), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_corrupt_file_is_never_applied_and_is_routed_around() {
    let t = tempfile::tempdir().unwrap();
    let mut pr = Primary::new(&t.path().join("replica"), 512, 20);
    let mut r = follow(&pr, &t.path().join("cache")).await;
    pr.commit(&[4], None);
    let at2 = pr.checksum();
    pr.commit(&[5], None);
    // Flip a byte inside page 5's compressed data in TXID 3's file.
    let p = pr.path(0, 3, 3);
    let good = std::fs::read(&p).unwrap();
    let mut bad = good.clone();
    bad[100 + 10 + 20] ^= 0x40;
    std::fs::write(&p, &bad).unwrap();
    r.poll().await;
    // TXID 2 applies; TXID 3 does not, and nothing of it is served.
    assert_eq!(r.f.txid(), Txid(2));
    assert_eq!(r.f.served.status().checksum, at2);
    assert!(r.f.metrics.verify_failures.load(Relaxed) >= 1);
    let stalled = r.f.served.status().stalled.clone().unwrap_or_default();
    assert!(
        stalled.contains("0000000000000003-0000000000000003.ltx"),
        "{stalled}"
    );
    // Still stalled on the next poll, without fetching the bad file again.
    r.poll().await;
    assert_eq!(r.f.txid(), Txid(2));
    // A compaction covering TXID 3 arrives: the replica moves past it.
    pr.commit(&[6], None);
    std::fs::write(&p, &good).unwrap();
    pr.compact(1, 2, 4);
    std::fs::write(&p, &bad).unwrap();
    r.poll().await;
    r.assert_matches(&pr);
    assert!(r.f.served.status().stalled.is_none());
}

/// A restart resumes from the position: no restore, a few hundred bytes.
#[tokio::test(flavor = "current_thread")]
async fn a_restart_resumes_without_a_download() {
    let t = tempfile::tempdir().unwrap();
    let mut pr = Primary::new(&t.path().join("replica"), 4096, 300);
    let cache = t.path().join("cache");
    let r = follow(&pr, &cache).await;
    let (_, _, first) = r.counters.snapshot();
    assert!(first > 300 * 20, "the first start restores ({first} bytes)");
    r.f.close().unwrap();
    drop(r);
    pr.commit(&[9], None);
    let mut r = follow(&pr, &cache).await;
    assert_eq!(r.counters.snapshot(), (0, 0, 0));
    r.poll().await;
    r.assert_matches(&pr);
    let (_, _, bytes) = r.counters.snapshot();
    assert!(bytes < 400, "{bytes} bytes for one page");
    assert_eq!(r.f.metrics.restores.load(Relaxed), 0);
}

/// A crash between writing half a step and recording it: the redo record
/// completes the step at start-up.
#[tokio::test(flavor = "current_thread")]
async fn an_interrupted_step_is_completed_or_restored_never_served_torn() {
    let t = tempfile::tempdir().unwrap();
    let mut pr = Primary::new(&t.path().join("replica"), 512, 20);
    let cache = t.path().join("cache");
    let r = follow(&pr, &cache).await;
    r.f.close().unwrap();
    drop(r);
    let dir = super::position::CacheDir::new(cache.clone());
    // A record of the next step, and half its pages written.
    pr.commit(&[2, 9], None);
    let ck = |p: u32| {
        ltx_format::checksum_page(p, &pr.pages[p as usize - 1])
            & !ltx_format::checksum::CHECKSUM_FLAG
    };
    let step = super::cache::Step {
        from: Txid(1),
        to: Txid(2),
        commit: 20,
        timestamp_ms: 5,
        pages: vec![
            (2, pr.pages[1].clone(), ck(2)),
            (9, pr.pages[8].clone(), ck(9)),
        ],
        checksum: pr.checksum(),
    };
    let pos = dir.load().unwrap().unwrap();
    super::redo::write(&dir.redo(), &step, pr.ps, pos.checksum().unwrap()).unwrap();
    let db = std::fs::File::options().write(true).open(dir.db()).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&db, &pr.pages[1], 512).unwrap();
    let r = follow(&pr, &cache).await;
    r.assert_matches(&pr);
    assert_eq!(r.counters.snapshot().0, 0, "no download");
    r.f.close().unwrap();
    drop(r);
    // Torn with no record: restored again.
    std::os::unix::fs::FileExt::write_all_at(&db, &[7u8; 512], 1024).unwrap();
    let r = follow(&pr, &cache).await;
    r.assert_matches(&pr);
    assert_eq!(r.f.metrics.restores.load(Relaxed), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn files_without_checksums_are_verified_whole() {
    let t = tempfile::tempdir().unwrap();
    let mut pr = Primary::new(&t.path().join("replica"), 512, 20);
    pr.no_checksum = true;
    let mut r = follow(&pr, &t.path().join("cache")).await;
    pr.commit(&[3], None);
    pr.commit(&[4, 22], Some(22));
    r.poll().await;
    assert_eq!(r.f.txid(), Txid(3));
    assert_eq!(r.f.served.status().checksum, pr.checksum());
}

#[tokio::test(flavor = "current_thread")]
async fn bad_input_gets_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("empty");
    std::fs::create_dir_all(&root).unwrap();
    let counters = Arc::new(Counters::default());
    let url = ReplicaUrl::File { root };
    let store = store::open(&url, counters.clone(), store::policy(), Shutdown::never())
        .await
        .unwrap();
    let spec = Spec {
        name: "app.db".into(),
        url,
        cache: t.path().join("cache"),
        opts: Options::default(),
    };
    let e = Follower::start(spec, counters, store)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("holds no LTX files: nothing to serve yet"),
        "{e}"
    );
}
