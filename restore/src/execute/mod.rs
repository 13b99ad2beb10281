//! Executing a plan: ranged parallel downloads with bounded memory, page
//! merge on all cores, verification, and an atomic rename into place.
//!
//! 1. [`meta`]: the header, page index and trailer of every planned file
//!    (small files are fetched whole and kept, within a memory budget), and
//!    the chain rules between files (one page size, contiguous TXIDs,
//!    pre-apply checksums that match).
//! 2. [`owners`]: the final database takes page `p` from the last file that
//!    holds it, unless a later file's Commit drops it (a later truncation);
//!    pages nobody owns are zeros. This is exactly what applying the files
//!    one after another does, but lets every file write its pages at once,
//!    in any order, each page once.
//! 3. [`fetch`]: chunks of frames (a few MiB each) are fetched with ranged
//!    reads, `parallelism` at a time, and decoded on the blocking pool,
//!    writing owned pages into a temporary file beside the output.
//!    - If every file carries database checksums, only owned frames are
//!      fetched, and the database checksum of the result must equal the last
//!      file's post-apply checksum.
//!    - Otherwise (Litestream files are NoChecksum) every frame of every file
//!      is fetched and hashed, and each file's checksum and layout rules are
//!      checked as the streaming decoder does.
//! 4. [`finalize`]: those checksums, then optional `PRAGMA
//!    quick_check`/`integrity_check`, fsync, rename (no clobbering unless
//!    asked), fsync of the directory.
//!
//! Any failure leaves the output path untouched: the temporary file is
//! removed, and nothing is ever written under the output's own name. File
//! system work runs on the blocking pool, so a restore can share a
//! single-threaded runtime with latency-sensitive tasks.

mod fetch;
mod finalize;
mod inspect;
mod meta;
mod owners;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ltx_format::{Checksum, Error as LtxError, Txid};
use s3_backend::{ReplicaStore, StoreError};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinSet;

use crate::error::RestoreError;
use crate::plan::{FileInfo, Plan, PlanError};
use crate::progress::Progress;

pub use finalize::integrity_check;
pub use inspect::{diagnose, read_header, resolve_timestamp};
/// Lists a replica: [`s3_backend::catalogue::list`], under its old name.
pub use s3_backend::catalogue::list as list_files;

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

/// What every task of one restore shares: the store, the limit on reads in
/// flight, the counters and the progress hooks.
struct Shared {
    store: Arc<dyn ReplicaStore>,
    net: Semaphore,
    progress: Arc<dyn Progress>,
    fetched: AtomicU64,
    requests: AtomicU64,
    /// Set on the first failure, so queued reads are not started.
    cancelled: AtomicBool,
}

impl Shared {
    /// A slot for one read, unless the restore already failed.
    async fn permit(&self) -> Result<SemaphorePermit<'_>, TaskError> {
        let p = self
            .net
            .acquire()
            .await
            .map_err(|e| TaskError::Join(e.to_string()))?;
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(TaskError::Join("cancelled".into()));
        }
        Ok(p)
    }

    fn count(&self, bytes: u64, requests: u64) {
        self.fetched.fetch_add(bytes, Ordering::Relaxed);
        self.requests.fetch_add(requests, Ordering::Relaxed);
        self.progress.advance(bytes);
    }
}

/// Why a download or decode task failed.
enum TaskError {
    Store(StoreError),
    /// A format error in the plan's file number `.0`.
    Format(usize, LtxError),
    Write(std::io::Error),
    Join(String),
}

/// Waits for tasks returning `(slot, value)`; the first error cancels the
/// rest. Every one of `n` slots must be filled.
async fn join_all<T: 'static>(
    shared: &Shared,
    mut set: JoinSet<Result<(usize, T), TaskError>>,
    n: usize,
    what: &str,
) -> Result<Vec<T>, TaskError> {
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        match r
            .map_err(|e| TaskError::Join(e.to_string()))
            .and_then(|x| x)
        {
            Ok((i, v)) => out[i] = Some(v),
            Err(e) => {
                shared.cancelled.store(true, Ordering::Relaxed);
                set.abort_all();
                return Err(e);
            }
        }
    }
    out.into_iter()
        .map(|o| o.ok_or_else(|| TaskError::Join(format!("{what} missing"))))
        .collect()
}

async fn task_error(
    store: &Arc<dyn ReplicaStore>,
    files: &[FileInfo],
    e: TaskError,
) -> RestoreError {
    match e {
        TaskError::Store(e) => RestoreError::Store(e),
        TaskError::Format(i, e) => inspect::corrupt_diagnosed(store, &files[i], e).await,
        TaskError::Write(e) => RestoreError::Io("writing the restored database".into(), e),
        TaskError::Join(e) => RestoreError::Internal(e),
    }
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
    if files.is_empty() {
        return Err(PlanError::Empty.into());
    }
    let dest = finalize::Dest::check(output, opts.overwrite).await?;
    let shared = Arc::new(Shared {
        store: store.clone(),
        net: Semaphore::new(opts.parallelism.max(1)),
        progress: progress.clone(),
        fetched: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        cancelled: AtomicBool::new(false),
    });
    progress.begin(plan.total_bytes(), files.len());

    let (metas, bodies) = meta::fetch_all(&shared, files, opts).await?;
    let chain = meta::check_chain(files, &metas)?;
    let full = opts.verify == Verify::All || metas.iter().any(|m| m.header.no_checksum());
    let owners = owners::Owners::new(&metas, chain.commit);
    let chunks = fetch::plan_chunks(&metas, &owners, full, opts.chunk_bytes);
    let tmp = dest.create_temp().await?;
    let written = async {
        let job = Arc::new(fetch::Job::new(metas, owners, full, &tmp)?);
        let outs = fetch::fetch_chunks(&shared, files, &job, bodies, &chunks, &tmp).await?;
        let checksum =
            finalize::verify_result(&store, files, &job, &chunks, &outs, &chain, tmp.file())
                .await?;
        Ok::<_, RestoreError>((job, checksum))
    }
    .await;
    let (job, checksum) = match written {
        Ok(w) => w,
        Err(e) => {
            tmp.discard().await;
            return Err(e);
        }
    };
    let db_len = u64::from(chain.commit) * u64::from(chain.page_size.get());
    dest.put_in_place(tmp, db_len, opts.integrity_check).await?;
    progress.finish();

    // The commit time: the header of the lowest-level file ending at the target.
    let timestamp_ms = match &plan.time_file {
        Some(tf) => match files.iter().position(|f| f == tf) {
            Some(i) => Some(job.metas[i].header.timestamp_ms),
            None => read_header(&store, tf).await.ok().map(|h| h.timestamp_ms),
        },
        None => Some(chain.last.timestamp_ms),
    };
    Ok(Restored {
        output: output.to_path_buf(),
        txid: chain.last.max_txid,
        timestamp_ms,
        page_size: chain.page_size.get(),
        pages: chain.commit,
        checksum,
        checksum_matched_post_apply: chain.tracked_end,
        files_verified: full,
        files: files.clone(),
        bytes_fetched: shared.fetched.load(Ordering::Relaxed),
        requests: shared.requests.load(Ordering::Relaxed),
        integrity_check: opts.integrity_check,
        elapsed: started.elapsed(),
    })
}
