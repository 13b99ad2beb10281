//! Shared helpers: replicas in memory built with the real encoder, stores
//! loaded from directories, and running a restore in one call.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ltx_format::{
    compact, lock_pgno, CompactOptions, DbChecksum, Encoder, Header, PageSize, Txid,
    HEADER_FLAG_NO_CHECKSUM,
};
use restore::{FileInfo, NoProgress, Options, Plan, RestoreError, Restored, Target};
use s3_backend::memory::MemoryStore;
use s3_backend::{Layout, LayoutKind, PutMode, PutSource, ReplicaStore};

pub fn vectors() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_VECTORS") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/ltx-vectors")
}

/// SplitMix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn file_layout() -> Layout {
    Layout::new(LayoutKind::File, "")
}

/// A replica in memory plus the database state at every TXID.
pub struct Chain {
    pub store: Arc<dyn ReplicaStore>,
    pub memory: Arc<MemoryStore>,
    /// `states[t]` = database bytes at TXID t (index 0 unused).
    pub states: Vec<Vec<u8>>,
    pub page_size: PageSize,
}

pub fn encode(header: Header, pages: &[(u32, Vec<u8>)], post: ltx_format::Checksum) -> Vec<u8> {
    let mut enc = Encoder::new(Vec::new(), header).unwrap();
    for (p, d) in pages {
        enc.encode_page(*p, d).unwrap();
    }
    enc.finish(post).unwrap().0
}

fn db_bytes(pages: &[Vec<u8>]) -> Vec<u8> {
    pages.concat()
}

fn db_checksum(pages: &[Vec<u8>], ps: PageSize) -> ltx_format::Checksum {
    let lock = lock_pgno(ps);
    let mut s = DbChecksum::new();
    for (i, p) in pages.iter().enumerate() {
        if i as u32 + 1 != lock {
            s.toggle_page(i as u32 + 1, p);
        }
    }
    s.value()
}

async fn put(store: &MemoryStore, key: &str, bytes: Vec<u8>) {
    store
        .put(key, &PutSource::Bytes(bytes), PutMode::Overwrite)
        .await
        .unwrap();
}

/// A random chain of `n` TXIDs with page size 512: a snapshot, then files
/// that change random pages and move Commit up and down (pages past a shrink
/// come back as zeros unless rewritten), plus compactions of random ranges
/// into levels 1..3 and a few snapshots at level 9.
pub async fn random_chain(seed: u64, n: u64, tracked: bool) -> Chain {
    let ps = PageSize::new(512).unwrap();
    let mut rng = Rng(seed);
    let mem = Arc::new(MemoryStore::new());
    let layout = file_layout();
    let mut state: Vec<Vec<u8>> = Vec::new();
    let mut states = vec![Vec::new()];
    let mut l0: Vec<Vec<u8>> = vec![Vec::new()];
    let flags = if tracked { 0 } else { HEADER_FLAG_NO_CHECKSUM };
    for t in 1..=n {
        let commit = if t == 1 {
            1 + rng.below(12) as u32
        } else {
            match rng.below(10) {
                0 => (state.len() as u32)
                    .saturating_sub(1 + rng.below(4) as u32)
                    .max(1),
                1 => state.len() as u32 + 1 + rng.below(4) as u32,
                _ => state.len() as u32,
            }
        };
        let mut pages = Vec::new();
        for p in 1..=commit {
            // New pages are always written (as SQLite does when a database grows).
            let write = t == 1 || p > state.len() as u32 || rng.below(3) == 0;
            if write {
                let mut d = vec![0u8; 512];
                let fill = rng.next();
                for (i, b) in d.iter_mut().enumerate() {
                    *b = (fill >> ((i % 8) * 8)) as u8 ^ (i / 64) as u8;
                }
                d[0] = t as u8;
                d[1] = p as u8;
                pages.push((p, d));
            }
        }
        let pre = if t == 1 || !tracked {
            ltx_format::Checksum::ZERO
        } else {
            db_checksum(&state, ps)
        };
        state.resize(commit as usize, vec![0u8; 512]);
        for (p, d) in &pages {
            state[*p as usize - 1] = d.clone();
        }
        let mut h = Header::new(ps, commit, Txid(t), Txid(t));
        h.flags = flags;
        h.pre_apply_checksum = pre;
        h.timestamp_ms = 1_000_000 + t as i64 * 1000;
        let post = if tracked {
            db_checksum(&state, ps)
        } else {
            ltx_format::Checksum::ZERO
        };
        let bytes = encode(h, &pages, post);
        put(&mem, &layout.ltx_key(0, Txid(t), Txid(t)), bytes.clone()).await;
        l0.push(bytes);
        states.push(db_bytes(&state));
    }
    // Compactions of random contiguous ranges.
    for level in 1..=3u8 {
        let mut a = 1 + rng.below(3);
        while a <= n {
            let b = (a + rng.below(6)).min(n);
            if rng.below(4) != 0 {
                let inputs: Vec<&[u8]> = (a..=b).map(|t| l0[t as usize].as_slice()).collect();
                let (out, _, _) = compact(
                    inputs,
                    Vec::new(),
                    CompactOptions {
                        no_checksum: !tracked,
                        ..CompactOptions::default()
                    },
                )
                .unwrap();
                put(&mem, &layout.ltx_key(level, Txid(a), Txid(b)), out).await;
            }
            a = b + 1;
        }
    }
    // Snapshots at a few TXIDs.
    for _ in 0..2 {
        let t = 1 + rng.below(n);
        let inputs: Vec<&[u8]> = (1..=t).map(|x| l0[x as usize].as_slice()).collect();
        let (out, _, _) = compact(
            inputs,
            Vec::new(),
            CompactOptions {
                no_checksum: !tracked,
                ..CompactOptions::default()
            },
        )
        .unwrap();
        put(&mem, &layout.ltx_key(9, Txid(1), Txid(t)), out).await;
    }
    Chain {
        store: mem.clone(),
        memory: mem,
        states,
        page_size: ps,
    }
}

/// Loads `dir/ltx/<level>/*.ltx` into a memory store.
pub async fn load_dir(root: &Path) -> Arc<MemoryStore> {
    let mem = Arc::new(MemoryStore::new());
    for level in 0..=9u8 {
        let d = root.join("ltx").join(level.to_string());
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let key = format!("{}{name}", file_layout().level_dir(level));
            put(&mem, &key, std::fs::read(&p).unwrap()).await;
        }
    }
    mem
}

/// The key of an L0 file named like `p` (a local LTX file).
pub fn l0_key(p: &Path) -> String {
    let name = p.file_name().unwrap().to_str().unwrap();
    let (min, max) = ltx_format::parse_filename(name).unwrap();
    file_layout().ltx_key(0, min, max)
}

pub async fn listing(store: &Arc<dyn ReplicaStore>) -> Vec<FileInfo> {
    restore::list_files(store, &file_layout()).await.unwrap()
}

pub async fn plan_for(store: &Arc<dyn ReplicaStore>, target: Target) -> Result<Plan, RestoreError> {
    let files = listing(store).await;
    Ok(restore::plan(&files, target)?)
}

/// Plans and restores `target` into `out`.
pub async fn restore_to(
    store: &Arc<dyn ReplicaStore>,
    target: Target,
    out: &Path,
    opts: &Options,
) -> Result<Restored, RestoreError> {
    let plan = plan_for(store, target).await?;
    restore::restore(store.clone(), &plan, out, opts, Arc::new(NoProgress)).await
}

/// Options that exercise every path: tiny chunks (one frame each), no
/// whole-file fetches, no cache.
pub fn tiny_opts() -> Options {
    Options {
        parallelism: 3,
        chunk_bytes: 1,
        small_file_bytes: 0,
        cache_bytes: 0,
        ..Options::default()
    }
}

/// Names of the entries in a directory (to show nothing was left behind).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
