//! Executing a plan: ranged parallel downloads with bounded memory, page
//! merge on all cores, verification, and an atomic rename into place.
//!
//! 1. Metadata: the header, page index and trailer of every planned file
//!    (small files are fetched whole and kept, within a memory budget).
//! 2. Page ownership: the final database takes page `p` from the last file
//!    that holds it, unless a later file's Commit drops it (a later
//!    truncation); pages nobody owns are zeros. This is exactly what applying
//!    the files one after another does, but lets every file write its pages
//!    at once, in any order, each page once.
//! 3. Chunks of frames (a few MiB each) are fetched with ranged reads,
//!    `parallelism` at a time, and decoded on the blocking pool, writing
//!    owned pages into a temporary file beside the output.
//!    - If every file carries database checksums, only owned frames are
//!      fetched, and the database checksum of the result must equal the last
//!      file's post-apply checksum.
//!    - Otherwise (Litestream files are NoChecksum) every frame of every file
//!      is fetched and hashed, and each file's checksum and layout rules are
//!      checked as the streaming decoder does.
//! 4. Optional `PRAGMA quick_check`/`integrity_check`, fsync, rename (no
//!    clobbering unless asked), fsync of the directory.
//!
//! Any failure leaves the output path untouched: the temporary file is
//! removed, and nothing is ever written under the output's own name.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ltx_format::checksum::CHECKSUM_FLAG;
use ltx_format::{lock_pgno, Checksum, Error as LtxError, Header, Rule, Txid, HEADER_SIZE};
use s3_backend::{ReplicaStore, StoreError};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::RestoreError;
use crate::plan::{FileInfo, Plan, PlanError, TimeSearch};
use crate::progress::Progress;
/// Lists a replica: [`s3_backend::catalogue::list`], under its old name.
pub use s3_backend::catalogue::list as list_files;

use crate::verify::{
    self, chunk_entries, decode_chunk, invalid, ChunkCtx, ChunkError, ChunkOut, FileMeta, Shifts,
};

/// `PRAGMA` run on the restored database before it is put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IntegrityCheck {
    #[default]
    None,
    Quick,
    Full,
}

impl IntegrityCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            IntegrityCheck::None => "none",
            IntegrityCheck::Quick => "quick",
            IntegrityCheck::Full => "full",
        }
    }
}

/// How much of each file is read and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Checksum-carrying chains: fetch only the pages that end up in the
    /// database and check the final database checksum. Otherwise `All`.
    #[default]
    Auto,
    /// Fetch and verify every byte of every file.
    All,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Ranged reads in flight (each holds at most `chunk_bytes`).
    pub parallelism: usize,
    pub chunk_bytes: u64,
    /// Files up to this size are fetched whole with their metadata.
    pub small_file_bytes: u64,
    /// Memory for keeping small files between metadata and pages.
    pub cache_bytes: u64,
    pub integrity_check: IntegrityCheck,
    pub verify: Verify,
    /// Replace an existing output (and remove its `-wal`, `-shm`, `-journal`).
    pub overwrite: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            parallelism: default_parallelism(),
            chunk_bytes: 4 << 20,
            small_file_bytes: 256 << 10,
            cache_bytes: 64 << 20,
            integrity_check: IntegrityCheck::None,
            verify: Verify::Auto,
            overwrite: false,
        }
    }
}

/// Twice the cores, at least 4, at most 32.
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (n.get() * 2).clamp(4, 32))
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub output: PathBuf,
    pub txid: Txid,
    /// Commit time of `txid` (LTX header time), when known.
    pub timestamp_ms: Option<i64>,
    pub page_size: u32,
    /// Database size in pages.
    pub pages: u32,
    pub checksum: Checksum,
    /// The checksum was compared with the last file's post-apply checksum.
    pub checksum_matched_post_apply: bool,
    /// Every byte of every file was verified (file checksums).
    pub files_verified: bool,
    pub files: Vec<FileInfo>,
    pub bytes_fetched: u64,
    pub requests: u64,
    pub integrity_check: IntegrityCheck,
    pub elapsed: Duration,
}

fn name_of(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

fn corrupt(f: &FileInfo, e: LtxError) -> RestoreError {
    match e {
        LtxError::Io(e) => RestoreError::Io(format!("reading {}", f.key), e),
        e => RestoreError::Corrupt {
            key: f.key.clone(),
            error: e,
        },
    }
}

/// Reads and validates the header of one file (a 100-byte ranged read).
pub async fn read_header(
    store: &Arc<dyn ReplicaStore>,
    f: &FileInfo,
) -> Result<Header, RestoreError> {
    let b = store.get_range(&f.key, 0, HEADER_SIZE as u64).await?;
    let raw: [u8; HEADER_SIZE] = b.as_slice().try_into().map_err(|_| {
        corrupt(
            f,
            invalid(
                Rule::Truncated,
                format!("truncated header: object is {} bytes", b.len()),
                Some(0),
                None,
            ),
        )
    })?;
    let h = Header::decode(&raw).map_err(|e| corrupt(f, e))?;
    ltx_format::apply::check_name(name_of(&f.key), &h).map_err(|e| corrupt(f, e))?;
    Ok(h)
}

/// The last commit at or before `time_ms` (header times, binary search).
pub async fn resolve_timestamp(
    store: &Arc<dyn ReplicaStore>,
    files: &[FileInfo],
    time_ms: i64,
) -> Result<(Txid, i64), RestoreError> {
    let mut search = TimeSearch::new(files, time_ms)?;
    for _ in 0..128 {
        let Some(f) = search.probe().cloned() else {
            return Ok(search.finish()?);
        };
        let h = read_header(store, &f).await?;
        search.record(h.timestamp_ms);
    }
    Err(RestoreError::Internal(
        "timestamp search did not converge".into(),
    ))
}

/// A store read from a blocking thread, as `std::io::Read` (for the
/// streaming decoder when diagnosing a file).
struct RangeReader {
    store: Arc<dyn ReplicaStore>,
    rt: tokio::runtime::Handle,
    key: String,
    pos: u64,
    size: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Read for RangeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos >= self.size {
                return Ok(0);
            }
            let n = (self.size - self.pos).min(1 << 20);
            let fut = self.store.get_range(&self.key, self.pos, n);
            self.buf = self.rt.block_on(fut).map_err(std::io::Error::other)?;
            if self.buf.is_empty() {
                return Ok(0);
            }
            self.pos += self.buf.len() as u64;
            self.at = 0;
        }
        let k = out.len().min(self.buf.len() - self.at);
        out[..k].copy_from_slice(&self.buf[self.at..self.at + k]);
        self.at += k;
        Ok(k)
    }
}

/// Verifies one file completely with the streaming decoder; returns its
/// format error, if it has one. Used to name the broken rule precisely once
/// something failed.
pub async fn diagnose(store: &Arc<dyn ReplicaStore>, f: &FileInfo) -> Option<LtxError> {
    let r = RangeReader {
        store: store.clone(),
        rt: tokio::runtime::Handle::current(),
        key: f.key.clone(),
        pos: 0,
        size: f.size,
        buf: Vec::new(),
        at: 0,
    };
    let name = name_of(&f.key).to_string();
    let res = tokio::task::spawn_blocking(move || {
        let s = ltx_format::verify(BufReader::with_capacity(1 << 20, r))?;
        ltx_format::apply::check_name(&name, &s.header)?;
        Ok::<_, LtxError>(())
    })
    .await;
    match res {
        Ok(Err(e)) if e.is_invalid() => Some(e),
        _ => None,
    }
}

/// Reports a format error of `f`, preferring the streaming decoder's verdict.
async fn corrupt_diagnosed(
    store: &Arc<dyn ReplicaStore>,
    f: &FileInfo,
    mine: LtxError,
) -> RestoreError {
    match diagnose(store, f).await {
        Some(e) => corrupt(f, e),
        None => corrupt(f, mine),
    }
}

/// A whole file kept in memory, if it was small enough.
type Body = Option<Arc<Vec<u8>>>;
type Loaded = (FileMeta, Body);

struct Fetched {
    meta: FileMeta,
    /// The whole file, when small enough to keep.
    body: Option<Arc<Vec<u8>>>,
    fetched: u64,
    requests: u64,
}

async fn fetch_meta(
    store: &Arc<dyn ReplicaStore>,
    f: &FileInfo,
    small: u64,
) -> Result<Result<Fetched, LtxError>, StoreError> {
    let size = f.size;
    if size < verify::MIN_FILE {
        return Ok(Err(invalid(
            Rule::Truncated,
            format!(
                "file is {size} bytes, shorter than the smallest LTX file ({})",
                verify::MIN_FILE
            ),
            None,
            None,
        )));
    }
    if size <= small {
        let b = store.get_range(&f.key, 0, size).await?;
        let n = b.len() as u64;
        return Ok(verify::parse_meta(size, &b, &b, 0).map(|meta| Fetched {
            meta,
            body: Some(Arc::new(b)),
            fetched: n,
            requests: 1,
        }));
    }
    let head = store.get_range(&f.key, 0, HEADER_SIZE as u64).await?;
    // The index takes about 8 bytes per page frame: an eighth of the file
    // (at most 64 KiB) nearly always holds it; otherwise a second read does.
    let guess = (size / 8).clamp(256, 64 << 10).min(size);
    let mut tail_off = size - guess;
    let mut tail = store.get_range(&f.key, tail_off, guess).await?;
    let mut fetched = (head.len() + tail.len()) as u64;
    let mut requests = 2;
    if tail.len() as u64 != guess {
        return Ok(Err(invalid(
            Rule::Truncated,
            format!("object is not {size} bytes long"),
            None,
            None,
        )));
    }
    let start = match verify::tail_start(size, &tail[tail.len() - 24..]) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    if start < tail_off {
        let more = store.get_range(&f.key, start, tail_off - start).await?;
        fetched += more.len() as u64;
        requests += 1;
        let mut t = more;
        t.extend_from_slice(&tail);
        tail = t;
        tail_off = start;
    }
    Ok(
        verify::parse_meta(size, &head, &tail, tail_off).map(|meta| Fetched {
            meta,
            body: None,
            fetched,
            requests,
        }),
    )
}

/// One ranged read and its frames.
#[derive(Debug, Clone)]
struct Chunk {
    file: usize,
    entries: std::ops::Range<usize>,
    start: u64,
    len: u64,
}

fn chunk_span(meta: &FileMeta, r: &std::ops::Range<usize>) -> (u64, u64) {
    let es = &meta.index.entries;
    let first = &es[r.start];
    let last = &es[r.end - 1];
    (first.offset, last.offset + last.size - first.offset)
}

/// Groups of owned frames: adjacent ones join, as do ones separated by less
/// than `gap` bytes, up to `max` bytes a group.
fn owned_chunks(
    meta: &FileMeta,
    owned: &[bool],
    max: u64,
    gap: u64,
) -> Vec<std::ops::Range<usize>> {
    let es = &meta.index.entries;
    let mut out = Vec::new();
    let mut cur: Option<(usize, usize)> = None; // [start, end) entries
    for (i, e) in es.iter().enumerate() {
        if !owned[i] {
            continue;
        }
        cur = match cur {
            Some((s, end)) => {
                let prev = &es[end - 1];
                let hole = e.offset - (prev.offset + prev.size);
                let span = e.offset + e.size - es[s].offset;
                if hole <= gap && span <= max {
                    Some((s, i + 1))
                } else {
                    out.push(s..end);
                    Some((i, i + 1))
                }
            }
            None => Some((i, i + 1)),
        };
    }
    if let Some((s, e)) = cur {
        out.push(s..e);
    }
    out
}

enum TaskError {
    Store(StoreError),
    Format(usize, LtxError),
    Write(std::io::Error),
    Join(String),
}

/// Restores `plan` into `output`.
pub async fn restore(
    store: Arc<dyn ReplicaStore>,
    plan: &Plan,
    output: &Path,
    opts: &Options,
    progress: Arc<dyn Progress>,
) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    let files = &plan.files;
    let Some(last_info) = files.last() else {
        return Err(PlanError::Empty.into());
    };
    let (dir, out_name) = split_output(output)?;
    if !opts.overwrite && exists(output)? {
        return Err(RestoreError::OutputExists(output.to_path_buf()));
    }
    let parallelism = opts.parallelism.max(1);
    let net = Arc::new(Semaphore::new(parallelism));
    let fetched = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    progress.begin(plan.total_bytes(), files.len());

    // 1. Metadata.
    let mut metas: Vec<Option<Loaded>> = vec![None; files.len()];
    {
        let cache_left = Arc::new(AtomicU64::new(opts.cache_bytes));
        let mut set = JoinSet::new();
        for (i, f) in files.iter().enumerate() {
            let (store, f, net) = (store.clone(), f.clone(), net.clone());
            let (cache_left, progress) = (cache_left.clone(), progress.clone());
            let (fetched, requests) = (fetched.clone(), requests.clone());
            let small = opts.small_file_bytes;
            set.spawn(async move {
                let _permit = net
                    .acquire_owned()
                    .await
                    .map_err(|e| TaskError::Join(e.to_string()))?;
                let got = fetch_meta(&store, &f, small)
                    .await
                    .map_err(TaskError::Store)?;
                let mut got = got.map_err(|e| TaskError::Format(i, e))?;
                fetched.fetch_add(got.fetched, Ordering::Relaxed);
                requests.fetch_add(got.requests, Ordering::Relaxed);
                progress.advance(got.fetched);
                if let Some(b) = &got.body {
                    let n = b.len() as u64;
                    let kept = cache_left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                            left.checked_sub(n)
                        })
                        .is_ok();
                    if !kept {
                        got.body = None;
                    }
                }
                ltx_format::apply::check_name(name_of(&f.key), &got.meta.header)
                    .map_err(|e| TaskError::Format(i, e))?;
                Ok::<_, TaskError>((i, got))
            });
        }
        while let Some(r) = set.join_next().await {
            let r = r
                .map_err(|e| TaskError::Join(e.to_string()))
                .and_then(|x| x);
            match r {
                Ok((i, got)) => metas[i] = Some((got.meta, got.body)),
                Err(e) => {
                    set.abort_all();
                    return Err(task_error(&store, files, e).await);
                }
            }
        }
    }
    let (metas, bodies): (Vec<FileMeta>, Vec<Body>) = metas
        .into_iter()
        .map(|m| m.ok_or_else(|| RestoreError::Internal("metadata missing".into())))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();

    // 2. The chain: one page size, contiguous, checksums that agree.
    let ps = metas[0].header.page_size;
    for (i, m) in metas.iter().enumerate() {
        let h = &m.header;
        if h.page_size != ps {
            return Err(corrupt(
                &files[i],
                invalid(
                    Rule::PageSizeMismatch,
                    format!(
                        "file has page size {}, {} has {ps}",
                        h.page_size, files[0].key
                    ),
                    Some(8),
                    None,
                ),
            ));
        }
        if i == 0 {
            if !h.is_snapshot() {
                return Err(RestoreError::Internal(format!(
                    "plan starts with {}, not a snapshot",
                    files[0]
                )));
            }
            continue;
        }
        let prev = &metas[i - 1];
        if !ltx_format::is_contiguous(prev.header.max_txid, h.min_txid, h.max_txid) {
            return Err(corrupt(
                &files[i],
                invalid(
                    Rule::TxidContinuity,
                    format!(
                        "file {}-{} does not continue TXID {}",
                        h.min_txid, h.max_txid, prev.header.max_txid
                    ),
                    None,
                    None,
                ),
            ));
        }
        let chained = h.min_txid.0 == prev.header.max_txid.0 + 1;
        if chained
            && !h.no_checksum()
            && !prev.header.no_checksum()
            && h.pre_apply_checksum != prev.trailer.post_apply_checksum
        {
            return Err(corrupt(
                &files[i],
                invalid(
                    Rule::PreApplyChecksum,
                    format!(
                        "pre-apply checksum mismatch: file expects database {}, {} leaves {}",
                        h.pre_apply_checksum,
                        files[i - 1].key,
                        prev.trailer.post_apply_checksum
                    ),
                    Some(40),
                    None,
                ),
            ));
        }
    }
    let last_header = metas[metas.len() - 1].header;
    let last_post = metas[metas.len() - 1].trailer.post_apply_checksum;
    let commit = last_header.commit;
    let tracked_end = !last_header.no_checksum();
    let full = opts.verify == Verify::All || metas.iter().any(|m| m.header.no_checksum());

    // 3. Page ownership (later files win; later truncations drop pages).
    // Owners are kept for the pages some file holds (bounded by the indexes
    // fetched, never by a header field); pages beyond are zeros.
    let lock = lock_pgno(ps);
    let max_held = metas
        .iter()
        .flat_map(|m| m.index.entries.iter().map(|e| e.pgno))
        .max()
        .unwrap_or(0);
    let mut owners = vec![0u32; commit.min(max_held) as usize];
    let mut suffix_min = vec![u32::MAX; metas.len() + 1];
    for i in (0..metas.len()).rev() {
        suffix_min[i] = suffix_min[i + 1].min(metas[i].header.commit);
    }
    for (i, m) in metas.iter().enumerate() {
        let keep = suffix_min[i];
        for e in &m.index.entries {
            if e.pgno >= 1 && e.pgno <= keep && e.pgno != lock && e.pgno as usize <= owners.len() {
                owners[e.pgno as usize - 1] = i as u32 + 1;
            }
        }
    }

    // 4. Chunks.
    let mut chunks = Vec::new();
    for (i, m) in metas.iter().enumerate() {
        let groups = if full {
            chunk_entries(&m.index.entries, opts.chunk_bytes)
        } else {
            let ord = i as u32 + 1;
            let owned: Vec<bool> = m
                .index
                .entries
                .iter()
                .map(|e| e.pgno >= 1 && owners.get(e.pgno as usize - 1) == Some(&ord))
                .collect();
            owned_chunks(m, &owned, opts.chunk_bytes, 64 << 10)
        };
        for g in groups {
            let (start, len) = chunk_span(m, &g);
            chunks.push(Chunk {
                file: i,
                entries: g,
                start,
                len,
            });
        }
    }
    let to_fetch: u64 = chunks
        .iter()
        .filter(|c| bodies[c.file].is_none())
        .map(|c| c.len)
        .sum();
    progress.set_total(fetched.load(Ordering::Relaxed) + to_fetch);
    let per_file: Vec<AtomicUsize> = (0..metas.len())
        .map(|i| AtomicUsize::new(chunks.iter().filter(|c| c.file == i).count()))
        .collect();
    for c in &per_file {
        if c.load(Ordering::Relaxed) == 0 {
            progress.file_done();
        }
    }

    // 5. The temporary file, then the pages.
    // A new database gets 0666 less the umask, as any created file; a
    // replaced one keeps its mode.
    let mode = match std::fs::metadata(output) {
        Ok(m) if opts.overwrite => m.permissions().mode() & 0o7777,
        _ => 0o666,
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{out_name}."))
        .suffix(".sluice-restore.tmp")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(&dir)
        .map_err(|e| {
            RestoreError::Io(format!("creating a temporary file in {}", dir.display()), e)
        })?;
    let tmp_path = tmp.path().to_path_buf();
    let io_err = |what: &str, e: std::io::Error| {
        RestoreError::Io(
            format!("{what} {} (for {})", tmp_path.display(), output.display()),
            e,
        )
    };
    let out_file = Arc::new(
        tmp.as_file()
            .try_clone()
            .map_err(|e| io_err("opening", e))?,
    );
    let metas = Arc::new(metas);
    let owners = Arc::new(owners);
    let shifts = Arc::new(Shifts::new(ps));
    let per_file = Arc::new(per_file);
    let cancelled = Arc::new(AtomicBool::new(false));
    let mut outs: Vec<Option<ChunkOut>> = vec![None; chunks.len()];
    {
        let mut set = JoinSet::new();
        for (ci, c) in chunks.iter().enumerate() {
            let c = c.clone();
            let key = files[c.file].key.clone();
            let body = bodies[c.file].clone();
            let (store, net, progress) = (store.clone(), net.clone(), progress.clone());
            let (metas, owners, shifts, out_file) = (
                metas.clone(),
                owners.clone(),
                shifts.clone(),
                out_file.clone(),
            );
            let (fetched, requests, per_file, cancelled) = (
                fetched.clone(),
                requests.clone(),
                per_file.clone(),
                cancelled.clone(),
            );
            set.spawn(async move {
                let _permit = net
                    .acquire_owned()
                    .await
                    .map_err(|e| TaskError::Join(e.to_string()))?;
                if cancelled.load(Ordering::Relaxed) {
                    return Err(TaskError::Join("cancelled".into()));
                }
                let (data, base) = match body {
                    Some(b) => (b, 0u64),
                    None => {
                        let d = store
                            .get_range(&key, c.start, c.len)
                            .await
                            .map_err(TaskError::Store)?;
                        fetched.fetch_add(d.len() as u64, Ordering::Relaxed);
                        requests.fetch_add(1, Ordering::Relaxed);
                        progress.advance(d.len() as u64);
                        if d.len() as u64 != c.len {
                            return Err(TaskError::Format(
                                c.file,
                                invalid(
                                    Rule::Truncated,
                                    format!(
                                        "ranged read at {} returned {} of {} bytes",
                                        c.start,
                                        d.len(),
                                        c.len
                                    ),
                                    Some(c.start),
                                    None,
                                ),
                            ));
                        }
                        (Arc::new(d), c.start)
                    }
                };
                let file = c.file;
                let out = tokio::task::spawn_blocking(move || {
                    let meta = &metas[file];
                    let ctx = ChunkCtx {
                        meta,
                        ordinal: file as u32 + 1,
                        owners: &owners,
                        full,
                        shifts: &shifts,
                        out: &out_file,
                    };
                    decode_chunk(&ctx, &meta.index.entries[c.entries.clone()], base, &data)
                })
                .await
                .map_err(|e| TaskError::Join(e.to_string()))?
                .map_err(|e| match e {
                    ChunkError::Format(e) => TaskError::Format(file, e),
                    ChunkError::Write(e) => TaskError::Write(e),
                })?;
                if per_file[file].fetch_sub(1, Ordering::AcqRel) == 1 {
                    progress.file_done();
                }
                Ok::<_, TaskError>((ci, out))
            });
        }
        while let Some(r) = set.join_next().await {
            let r = r
                .map_err(|e| TaskError::Join(e.to_string()))
                .and_then(|x| x);
            match r {
                Ok((ci, o)) => outs[ci] = Some(o),
                Err(e) => {
                    cancelled.store(true, Ordering::Relaxed);
                    set.abort_all();
                    return Err(match e {
                        TaskError::Write(e) => io_err("writing", e),
                        e => task_error(&store, files, e).await,
                    });
                }
            }
        }
    }
    let outs: Vec<ChunkOut> = outs
        .into_iter()
        .map(|o| o.ok_or_else(|| RestoreError::Internal("chunk result missing".into())))
        .collect::<Result<_, _>>()?;

    // 6. Per-file verification.
    let mut db_sum = 0u64;
    for (i, m) in metas.iter().enumerate() {
        let mine: Vec<ChunkOut> = chunks
            .iter()
            .zip(&outs)
            .filter(|(c, _)| c.file == i)
            .map(|(_, o)| *o)
            .collect();
        db_sum ^= mine.iter().fold(0, |a, o| a ^ o.db_sum);
        let name = Some(name_of(&files[i].key));
        let checked = if full {
            verify::finish_full(m, name, &mine)
        } else {
            verify::check_layout(m, name, None)
        };
        if let Err(e) = checked {
            return Err(corrupt_diagnosed(&store, &files[i], e).await);
        }
    }
    for (p, o) in owners.iter().enumerate() {
        let pgno = p as u32 + 1;
        if *o == 0 && pgno != lock {
            db_sum ^= shifts.page_checksum(pgno, shifts.zero_page_crc) & !CHECKSUM_FLAG;
        }
    }
    let tail_from = owners.len() as u32 + 1;
    if tail_from <= commit {
        db_sum ^= shifts.zero_pages_sum(tail_from, commit);
        if (tail_from..=commit).contains(&lock) {
            db_sum ^= shifts.zero_pages_sum(lock, lock);
        }
    }
    let checksum = Checksum(CHECKSUM_FLAG | db_sum);
    let post = last_post;
    if tracked_end && checksum != post {
        // Find the file to blame: verify each one completely.
        for f in files {
            if let Some(e) = diagnose(&store, f).await {
                return Err(corrupt(f, e));
            }
        }
        return Err(RestoreError::ChecksumMismatch {
            key: last_info.key.clone(),
            expected: post,
            actual: checksum,
        });
    }
    // Only now, every file verified, is the size (a header field) applied.
    let db_len = u64::from(commit) * u64::from(ps.get());
    out_file.set_len(db_len).map_err(|e| io_err("sizing", e))?;
    drop(out_file);

    // 7. Integrity check, fsync, rename.
    if opts.integrity_check != IntegrityCheck::None {
        let (path, mode) = (tmp_path.clone(), opts.integrity_check);
        tokio::task::spawn_blocking(move || integrity_check(&path, mode))
            .await
            .map_err(|e| RestoreError::Internal(e.to_string()))??;
    }
    tmp.as_file().sync_all().map_err(|e| io_err("fsync", e))?;
    if opts.overwrite {
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut p = output.as_os_str().to_owned();
            p.push(suffix);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(RestoreError::Io(
                        format!("removing {}", Path::new(&p).display()),
                        e,
                    ))
                }
            }
        }
        tmp.persist(output).map_err(|e| {
            RestoreError::Io(
                format!("renaming {} to {}", tmp_path.display(), output.display()),
                e.error,
            )
        })?;
    } else {
        tmp.persist_noclobber(output).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                RestoreError::OutputExists(output.to_path_buf())
            } else {
                RestoreError::Io(
                    format!("renaming {} to {}", tmp_path.display(), output.display()),
                    e.error,
                )
            }
        })?;
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RestoreError::Io(format!("fsync {}", dir.display()), e))?;
    progress.finish();

    // The commit time: the header of the lowest-level file ending at the target.
    let timestamp_ms = match &plan.time_file {
        Some(tf) => match files.iter().position(|f| f == tf) {
            Some(i) => Some(metas[i].header.timestamp_ms),
            None => read_header(&store, tf).await.ok().map(|h| h.timestamp_ms),
        },
        None => Some(last_header.timestamp_ms),
    };
    Ok(Restored {
        output: output.to_path_buf(),
        txid: last_header.max_txid,
        timestamp_ms,
        page_size: ps.get(),
        pages: commit,
        checksum,
        checksum_matched_post_apply: tracked_end,
        files_verified: full,
        files: files.clone(),
        bytes_fetched: fetched.load(Ordering::Relaxed),
        requests: requests.load(Ordering::Relaxed),
        integrity_check: opts.integrity_check,
        elapsed: started.elapsed(),
    })
}

async fn task_error(
    store: &Arc<dyn ReplicaStore>,
    files: &[FileInfo],
    e: TaskError,
) -> RestoreError {
    match e {
        TaskError::Store(e) => RestoreError::Store(e),
        TaskError::Format(i, e) => corrupt_diagnosed(store, &files[i], e).await,
        TaskError::Write(e) => RestoreError::Io("writing the restored database".into(), e),
        TaskError::Join(e) => RestoreError::Internal(e),
    }
}

fn exists(p: &Path) -> Result<bool, RestoreError> {
    match std::fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(RestoreError::Io(format!("checking {}", p.display()), e)),
    }
}

fn split_output(output: &Path) -> Result<(PathBuf, String), RestoreError> {
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            RestoreError::Usage(format!("output {} has no file name", output.display()))
        })?
        .to_string();
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(RestoreError::Usage(format!(
            "the output's directory {} does not exist",
            dir.display()
        )));
    }
    Ok((dir, name))
}

fn sqlite_uri(path: &Path) -> String {
    let mut s = String::from("file:");
    for b in path.to_string_lossy().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                s.push(b as char)
            }
            _ => s.push_str(&format!("%{b:02X}")),
        }
    }
    s.push_str("?immutable=1");
    s
}

/// Runs `PRAGMA quick_check` or `integrity_check` on a database without
/// changing it (opened immutable: no locks, no `-wal`/`-shm`).
pub fn integrity_check(path: &Path, mode: IntegrityCheck) -> Result<(), RestoreError> {
    use rusqlite::OpenFlags;
    let pragma = match mode {
        IntegrityCheck::None => return Ok(()),
        IntegrityCheck::Quick => "PRAGMA quick_check",
        IntegrityCheck::Full => "PRAGMA integrity_check",
    };
    let fail = |detail: String| RestoreError::Integrity {
        mode: mode.as_str(),
        detail,
    };
    let c = rusqlite::Connection::open_with_flags(
        sqlite_uri(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut st = c.prepare(pragma).map_err(|e| fail(e.to_string()))?;
    let rows: Vec<String> = st
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| fail(e.to_string()))?
        .take(20)
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(fail(rows.join("; ")))
    }
}
