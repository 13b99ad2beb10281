//! One fast-forward step: from the cached database at TXID `T`, along a
//! chain of files that continues `T`, to the chain's last TXID.
//!
//! Fast path (the files carry database checksums):
//! 1. the page index of every file, with one ranged GET of its tail sized by
//!    what earlier indexes looked like ([`TailGuess`]; a second GET fetches
//!    the rest when the guess fell short); the last file's header and
//!    trailer, and the first file's header (its pre-apply checksum must be
//!    the cache's);
//! 2. the union of the indexes: each page comes from the newest file that
//!    holds it (chain order is TXID order, never level order), pages past
//!    the last Commit and the lock page never;
//! 3. only those frames, with ranged GETs that coalesce adjacent frames of
//!    a file, decoded and checksummed page by page;
//! 4. the database checksum after the step, from the cache's page checksums
//!    and the new pages' checksums, must equal the last file's post-apply
//!    checksum.
//!
//! Full path (files without checksums, or a fast path that did not add up):
//! every file whole, each verified (file checksum, every layout rule), so a
//! corrupt file is named; then the same union and checksum.
//!
//! Nothing here writes: the result is a [`Step`] for the applier.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use ltx_format::checksum::CHECKSUM_FLAG;
use ltx_format::decoder::decode_frame;
use ltx_format::{
    checksum_page, lock_pgno, Checksum, Header, IndexEntry, PageIndex, PageSize, HEADER_SIZE,
    TRAILER_SIZE,
};
use restore::verify::{owned_chunks, parse_meta, tail_start};
use s3_backend::{FileInfo, ReplicaStore, StoreError};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::cache::{CacheDb, Step};

/// Why a step could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file disappeared (compaction or retention) after it was listed.
    #[error("{key} is gone from the store (compacted or removed since it was listed)")]
    Gone { key: String },
    /// A file's bytes break the format, or its file checksum.
    #[error("{key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    /// The pages do not add up to the checksum the last file promises.
    #[error(
        "the pages of {files} sum to database checksum {computed}, the last file says {expected}"
    )]
    Mismatch {
        files: String,
        expected: Checksum,
        computed: Checksum,
    },
    /// The chain starts from another database than the one cached.
    #[error("{key} expects database checksum {expected} before it, the cache holds {have}")]
    Diverged {
        key: String,
        expected: Checksum,
        have: Checksum,
    },
    #[error("a step of {bytes} bytes is more than a step may hold ({max})")]
    TooLarge { bytes: u64, max: u64 },
    #[error("internal: {0}")]
    Internal(String),
}

impl StepError {
    fn at(key: &str, e: impl std::fmt::Display) -> StepError {
        StepError::Corrupt {
            key: key.to_string(),
            detail: e.to_string(),
        }
    }

    fn store(key: &str, e: StoreError) -> StepError {
        if e.is_not_found() {
            StepError::Gone {
                key: key.to_string(),
            }
        } else {
            StepError::Store(e)
        }
    }
}

/// How a step fetches.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub store: Arc<dyn ReplicaStore>,
    /// Ranged reads in flight.
    pub parallelism: usize,
    /// Bound on a step's pages (fast path) or files (full path) in memory.
    pub max_step_bytes: u64,
}

/// Sizes the first tail read of a file from the indexes seen so far: how
/// big a frame is, and how many index bytes a frame takes.
#[derive(Debug, Clone, Copy)]
pub struct TailGuess {
    frame: f64,
    entry: f64,
}

impl Default for TailGuess {
    fn default() -> Self {
        TailGuess {
            frame: 1500.0,
            entry: 6.0,
        }
    }
}

/// Bytes of a file outside its frames and index entries: header, end
/// marker, index terminator and length, trailer.
const FIXED: u64 = (HEADER_SIZE + 6 + 1 + 8 + TRAILER_SIZE) as u64;

impl TailGuess {
    /// Index bytes (entries, terminator, length) expected in a file of `size`.
    fn index_bytes(&self, size: u64) -> u64 {
        let payload = size.saturating_sub(FIXED) as f64;
        let frames = (payload / (self.frame + self.entry)).round().max(1.0);
        // Two bytes of slack: varints grow by one byte at a time.
        (frames * self.entry).ceil() as u64 + 9 + 2
    }

    fn learn(&mut self, idx: &PageIndex, index_len: u64) {
        let n = idx.entries.len();
        if n == 0 {
            return;
        }
        let frames: u64 = idx.entries.iter().map(|e| e.size).sum();
        let (f, e) = (frames as f64 / n as f64, (index_len - 1) as f64 / n as f64);
        self.frame = 0.8 * self.frame + 0.2 * f;
        // The entry size follows a larger value at once: a short guess costs
        // a request, a long one only bytes.
        self.entry = if e > self.entry {
            e
        } else {
            0.8 * self.entry + 0.2 * e
        };
    }
}

/// One file's index, with what is known of its header.
#[derive(Debug, Clone)]
struct Indexed {
    info: FileInfo,
    index: PageIndex,
    /// Database size after this file, when its header was read.
    commit: Option<u32>,
    /// Whole file, when fetched whole (full path).
    body: Option<Arc<Vec<u8>>>,
}

/// The last file of a chain: header, index, trailer.
struct Last {
    header: Header,
    post: Checksum,
    indexed: Indexed,
}

/// `len` bytes at `off` in the file `f` (a file inside a bundle starts at
/// its offset in the bundle object: [`FileInfo::at`]).
async fn get(
    store: &dyn ReplicaStore,
    f: &FileInfo,
    off: u64,
    len: u64,
) -> Result<Vec<u8>, StepError> {
    get_key(store, &f.key, f.at(off), len).await
}

async fn get_key(
    store: &dyn ReplicaStore,
    key: &str,
    off: u64,
    len: u64,
) -> Result<Vec<u8>, StepError> {
    let b = store
        .get_range(key, off, len)
        .await
        .map_err(|e| StepError::store(key, e))?;
    if b.len() as u64 != len {
        return Err(StepError::at(
            key,
            format!("ranged read at {off} returned {} of {len} bytes", b.len()),
        ));
    }
    Ok(b)
}

/// The page index of `f` from its tail, ending before the trailer.
async fn fetch_index(
    store: &dyn ReplicaStore,
    f: &FileInfo,
    guess: u64,
) -> Result<(PageIndex, u64), StepError> {
    let end = f
        .size
        .checked_sub(TRAILER_SIZE as u64)
        .filter(|&e| e >= FIXED - 16)
        .ok_or_else(|| {
            StepError::at(
                &f.key,
                format!("{} bytes is too short for an LTX file", f.size),
            )
        })?;
    let room = end - (HEADER_SIZE as u64 + 6);
    let first = guess.clamp(9, room);
    let mut tail = get(store, f, end - first, first).await?;
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&tail[tail.len() - 8..]);
    let len = u64::from_be_bytes(len_bytes);
    if len == 0 || len + 8 > room {
        return Err(StepError::at(
            &f.key,
            format!("page index length {len} does not fit"),
        ));
    }
    if len + 8 > first {
        let mut more = get(store, f, end - 8 - len, len + 8 - first).await?;
        more.extend_from_slice(&tail);
        tail = more;
    }
    let raw = &tail[tail.len() - 8 - len as usize..];
    let (index, used) = PageIndex::parse(raw).map_err(|e| StepError::at(&f.key, e))?;
    if used != raw.len() {
        return Err(StepError::at(&f.key, "page index length field is wrong"));
    }
    let block_end = end - 8 - len - 6;
    check_frames(&f.key, &index, block_end)?;
    Ok((index, len))
}

/// Frames must lie in the page block: a wrong index must not turn into an
/// absurd read.
fn check_frames(key: &str, index: &PageIndex, block_end: u64) -> Result<(), StepError> {
    for e in &index.entries {
        if e.offset < HEADER_SIZE as u64 || e.size < 6 || e.offset + e.size > block_end {
            return Err(StepError::at(
                key,
                format!(
                    "page index entry for page {} lies outside the page block",
                    e.pgno
                ),
            ));
        }
    }
    Ok(())
}

/// The last file: header, then tail from the end marker, checked together.
async fn fetch_last(store: &dyn ReplicaStore, f: &FileInfo, guess: u64) -> Result<Last, StepError> {
    let size = f.size;
    let head = get(store, f, 0, HEADER_SIZE as u64).await?;
    let want = (guess + 6 + TRAILER_SIZE as u64).min(size - HEADER_SIZE as u64);
    let mut off = size - want;
    let mut tail = get(store, f, off, want).await?;
    let start = tail_start(size, &tail[tail.len() - 24..]).map_err(|e| StepError::at(&f.key, e))?;
    if start < off {
        let mut more = get(store, f, start, off - start).await?;
        more.extend_from_slice(&tail);
        tail = more;
        off = start;
    }
    let meta = parse_meta(size, &head, &tail, off).map_err(|e| StepError::at(&f.key, e))?;
    ltx_format::apply::check_name(&f.name(), &meta.header).map_err(|e| StepError::at(&f.key, e))?;
    Ok(Last {
        header: meta.header,
        post: meta.trailer.post_apply_checksum,
        indexed: Indexed {
            info: f.clone(),
            index: meta.index,
            commit: Some(meta.header.commit),
            body: None,
        },
    })
}

/// For each page the union takes: (file, entry) of the newest file holding
/// it that no later Commit dropped; pages past `commit` and the lock page
/// never.
fn union(files: &[Indexed], commit: u32, lock: u32) -> BTreeMap<u32, (usize, usize)> {
    let mut keep = vec![u32::MAX; files.len()];
    let mut min = u32::MAX;
    for i in (0..files.len()).rev() {
        min = min.min(files[i].commit.unwrap_or(u32::MAX));
        keep[i] = min;
    }
    let mut owner = BTreeMap::new();
    for (fi, f) in files.iter().enumerate() {
        for (ei, e) in f.index.entries.iter().enumerate() {
            if e.pgno >= 1 && e.pgno <= commit.min(keep[fi]) && e.pgno != lock {
                owner.insert(e.pgno, (fi, ei));
            }
        }
    }
    owner
}

/// One ranged read of consecutive owned frames of one file.
struct Chunk {
    file: usize,
    entries: Vec<IndexEntry>,
}

fn plan_chunks(files: &[Indexed], owner: &BTreeMap<u32, (usize, usize)>) -> Vec<Chunk> {
    let mut owned: Vec<Vec<bool>> = files
        .iter()
        .map(|f| vec![false; f.index.entries.len()])
        .collect();
    for &(fi, ei) in owner.values() {
        owned[fi][ei] = true;
    }
    let mut out = Vec::new();
    for (fi, f) in files.iter().enumerate() {
        for r in owned_chunks(&f.index.entries, &owned[fi], 4 << 20, 0) {
            out.push(Chunk {
                file: fi,
                entries: f.index.entries[r].to_vec(),
            });
        }
    }
    out
}

/// Decodes the frames of `c` from `data` (which starts at file offset
/// `base`): (pgno, page, page checksum with bit 63 clear).
fn decode(
    key: &str,
    c: &Chunk,
    base: u64,
    data: &[u8],
    ps: PageSize,
) -> Result<Vec<(u32, Vec<u8>, u64)>, StepError> {
    let mut out = Vec::with_capacity(c.entries.len());
    for e in &c.entries {
        let r: Range<usize> = (e.offset - base) as usize..(e.offset - base + e.size) as usize;
        let frame = data
            .get(r)
            .ok_or_else(|| StepError::at(key, "frame outside the bytes read"))?;
        let mut page = vec![0u8; ps.as_usize()];
        let pgno = decode_frame(frame, ps, &mut page).map_err(|err| StepError::at(key, err))?;
        if pgno != e.pgno {
            return Err(StepError::at(
                key,
                format!("index says page {}, frame holds page {pgno}", e.pgno),
            ));
        }
        let ck = checksum_page(pgno, &page) & !CHECKSUM_FLAG;
        out.push((pgno, page, ck));
    }
    Ok(out)
}

/// Fetches (unless the file is held whole) and decodes every chunk.
async fn fetch_pages(
    fetch: &Fetch,
    files: &[Indexed],
    chunks: Vec<Chunk>,
    ps: PageSize,
) -> Result<Vec<(u32, Vec<u8>, u64)>, StepError> {
    let net = Arc::new(Semaphore::new(fetch.parallelism.max(1)));
    let mut set = JoinSet::new();
    for c in chunks {
        let f = &files[c.file];
        let (key, at, body, store, net) = (
            f.info.key.clone(),
            f.info.at(0),
            f.body.clone(),
            fetch.store.clone(),
            net.clone(),
        );
        set.spawn(async move {
            let (data, base) = match body {
                Some(b) => (b, 0),
                None => {
                    let _permit = net
                        .acquire()
                        .await
                        .map_err(|e| StepError::Internal(e.to_string()))?;
                    let (first, last) = (&c.entries[0], &c.entries[c.entries.len() - 1]);
                    let len = last.offset + last.size - first.offset;
                    (
                        Arc::new(get_key(&*store, &key, at + first.offset, len).await?),
                        first.offset,
                    )
                }
            };
            tokio::task::spawn_blocking(move || decode(&key, &c, base, &data, ps))
                .await
                .map_err(|e| StepError::Internal(e.to_string()))?
        });
    }
    let mut pages = Vec::new();
    while let Some(r) = set.join_next().await {
        match r
            .map_err(|e| StepError::Internal(e.to_string()))
            .and_then(|x| x)
        {
            Ok(p) => pages.extend(p),
            Err(e) => {
                set.abort_all();
                return Err(e);
            }
        }
    }
    pages.sort_unstable_by_key(|p| p.0);
    Ok(pages)
}

/// Unions, fetches and checks the pages of `files` (chain order) on top of
/// `base`; `commit`, `post` and `timestamp_ms` come from the last file.
async fn build(
    fetch: &Fetch,
    base: &CacheDb,
    files: &[Indexed],
    last: &Header,
    post: Checksum,
) -> Result<Step, StepError> {
    let ps = base.page_size;
    let owner = union(files, last.commit, lock_pgno(ps));
    let bytes = owner.len() as u64 * u64::from(ps.get());
    if bytes > fetch.max_step_bytes {
        return Err(StepError::TooLarge {
            bytes,
            max: fetch.max_step_bytes,
        });
    }
    let mut pages = fetch_pages(fetch, files, plan_chunks(files, &owner), ps).await?;
    add_zeroed(files, base, last.commit, &owner, &mut pages);
    let cks: Vec<(u32, u64)> = pages.iter().map(|(p, _, c)| (*p, *c)).collect();
    let checksum = base.checksum_after(&cks, last.commit);
    if !last.no_checksum() && checksum != post {
        let names: Vec<String> = files.iter().map(|f| f.info.to_string()).collect();
        return Err(StepError::Mismatch {
            files: chain_name(&names),
            expected: post,
            computed: checksum,
        });
    }
    Ok(Step {
        from: base.txid,
        to: last.max_txid,
        commit: last.commit,
        timestamp_ms: last.timestamp_ms,
        pages,
        checksum,
    })
}

/// Pages a known Commit dropped and a later file grew back without writing
/// them are zeros, as applying the files one by one leaves them.
fn add_zeroed(
    files: &[Indexed],
    base: &CacheDb,
    commit: u32,
    owner: &BTreeMap<u32, (usize, usize)>,
    pages: &mut Vec<(u32, Vec<u8>, u64)>,
) {
    let low = files
        .iter()
        .filter_map(|f| f.commit)
        .min()
        .unwrap_or(u32::MAX);
    let lock = lock_pgno(base.page_size);
    let hi = commit.min(base.commit);
    if low >= hi {
        return;
    }
    let zero = vec![0u8; base.page_size.as_usize()];
    for p in low + 1..=hi {
        if p != lock && !owner.contains_key(&p) {
            pages.push((p, zero.clone(), checksum_page(p, &zero) & !CHECKSUM_FLAG));
        }
    }
    pages.sort_unstable_by_key(|p| p.0);
}

fn chain_name(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [first, .., last] => format!("{} files {first} .. {last}", names.len()),
    }
}

/// The fast path (see the module docs).
pub async fn fast(
    fetch: &Fetch,
    base: &CacheDb,
    chain: &[FileInfo],
    guess: &mut TailGuess,
) -> Result<Step, StepError> {
    let (last_info, rest) = chain
        .split_last()
        .ok_or_else(|| StepError::Internal("empty chain".into()))?;
    let store = &*fetch.store;
    let last = fetch_last(store, last_info, guess.index_bytes(last_info.size)).await?;
    if last.header.page_size != base.page_size {
        return Err(StepError::at(
            &last_info.key,
            format!(
                "page size {} differs from the cache's {}",
                last.header.page_size, base.page_size
            ),
        ));
    }
    let first_head = match chain.first() {
        Some(f) if f.min.0 == base.txid.0 + 1 && !rest.is_empty() => {
            let b = get(store, f, 0, HEADER_SIZE as u64).await?;
            let mut raw = [0u8; HEADER_SIZE];
            raw.copy_from_slice(&b);
            Some(Header::decode(&raw).map_err(|e| StepError::at(&f.key, e))?)
        }
        Some(_) if rest.is_empty() => Some(last.header),
        _ => None,
    };
    if let (Some(h), Some(f)) = (first_head, chain.first()) {
        if f.min.0 == base.txid.0 + 1 && !h.no_checksum() && h.pre_apply_checksum != base.checksum {
            return Err(StepError::Diverged {
                key: f.key.clone(),
                expected: h.pre_apply_checksum,
                have: base.checksum,
            });
        }
    }
    let mut files = fetch_indexes(fetch, rest, guess).await?;
    if let (Some(h), Some(first)) = (first_head, files.first_mut()) {
        first.commit = Some(h.commit);
    }
    guess.learn(
        &last.indexed.index,
        last.indexed.index.encode().len() as u64 - 8,
    );
    files.push(last.indexed);
    build(fetch, base, &files, &last.header, last.post).await
}

/// The indexes of `files`, `parallelism` at a time; teaches `guess`.
async fn fetch_indexes(
    fetch: &Fetch,
    files: &[FileInfo],
    guess: &mut TailGuess,
) -> Result<Vec<Indexed>, StepError> {
    let net = Arc::new(Semaphore::new(fetch.parallelism.max(1)));
    let mut set = JoinSet::new();
    for (i, f) in files.iter().enumerate() {
        let (f, store, net) = (f.clone(), fetch.store.clone(), net.clone());
        let g = guess.index_bytes(f.size);
        set.spawn(async move {
            let _permit = net
                .acquire()
                .await
                .map_err(|e| StepError::Internal(e.to_string()))?;
            let (index, len) = fetch_index(&*store, &f, g).await?;
            Ok::<_, StepError>((
                i,
                Indexed {
                    info: f,
                    index,
                    commit: None,
                    body: None,
                },
                len,
            ))
        });
    }
    let mut out: Vec<Option<Indexed>> = vec![None; files.len()];
    while let Some(r) = set.join_next().await {
        match r
            .map_err(|e| StepError::Internal(e.to_string()))
            .and_then(|x| x)
        {
            Ok((i, ix, len)) => {
                guess.learn(&ix.index, len);
                out[i] = Some(ix);
            }
            Err(e) => {
                set.abort_all();
                return Err(e);
            }
        }
    }
    out.into_iter()
        .map(|o| o.ok_or_else(|| StepError::Internal("index missing".into())))
        .collect()
}

/// The full path (see the module docs).
pub async fn full(fetch: &Fetch, base: &CacheDb, chain: &[FileInfo]) -> Result<Step, StepError> {
    let total: u64 = chain.iter().map(|f| f.size).sum();
    if total > fetch.max_step_bytes {
        return Err(StepError::TooLarge {
            bytes: total,
            max: fetch.max_step_bytes,
        });
    }
    let net = Arc::new(Semaphore::new(fetch.parallelism.max(1)));
    let mut set = JoinSet::new();
    for (i, f) in chain.iter().enumerate() {
        let (f, store, net) = (f.clone(), fetch.store.clone(), net.clone());
        set.spawn(async move {
            let _permit = net
                .acquire()
                .await
                .map_err(|e| StepError::Internal(e.to_string()))?;
            let body = get(&*store, &f, 0, f.size).await?;
            tokio::task::spawn_blocking(move || verify_whole(f, body).map(|x| (i, x)))
                .await
                .map_err(|e| StepError::Internal(e.to_string()))?
        });
    }
    let mut got: Vec<Option<(Indexed, Header, Checksum)>> = vec![None; chain.len()];
    while let Some(r) = set.join_next().await {
        match r
            .map_err(|e| StepError::Internal(e.to_string()))
            .and_then(|x| x)
        {
            Ok((i, x)) => got[i] = Some(x),
            Err(e) => {
                set.abort_all();
                return Err(e);
            }
        }
    }
    let got: Vec<(Indexed, Header, Checksum)> = got.into_iter().flatten().collect();
    let (_, last, post) = got
        .last()
        .cloned()
        .ok_or_else(|| StepError::Internal("empty chain".into()))?;
    if let Some((ix, h, _)) = got.first() {
        if ix.info.min.0 == base.txid.0 + 1
            && !h.no_checksum()
            && h.pre_apply_checksum != base.checksum
        {
            return Err(StepError::Diverged {
                key: ix.info.key.clone(),
                expected: h.pre_apply_checksum,
                have: base.checksum,
            });
        }
    }
    if got.iter().any(|(_, h, _)| h.page_size != base.page_size) {
        return Err(StepError::at(
            &chain[0].key,
            "page size differs from the cache's",
        ));
    }
    let files: Vec<Indexed> = got.into_iter().map(|(ix, _, _)| ix).collect();
    build(fetch, base, &files, &last, post).await
}

/// Verifies a whole file (file checksum, every rule of the strict decoder).
fn verify_whole(f: FileInfo, body: Vec<u8>) -> Result<(Indexed, Header, Checksum), StepError> {
    let summary = ltx_format::verify(&body[..]).map_err(|e| StepError::at(&f.key, e))?;
    ltx_format::apply::check_name(&f.name(), &summary.header)
        .map_err(|e| StepError::at(&f.key, e))?;
    let h = summary.header;
    Ok((
        Indexed {
            info: f,
            index: summary.index,
            commit: Some(h.commit),
            body: Some(Arc::new(body)),
        },
        h,
        summary.trailer.post_apply_checksum,
    ))
}
