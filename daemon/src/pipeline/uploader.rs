//! Uploads a database's staged LTX files to one replica, in TXID order per
//! level, with put-if-absent, and applies the replica's retention.
//!
//! Progress (the highest TXID uploaded per level) is persisted after each
//! object, so a restart re-uploads nothing that was acknowledged, and shared
//! with local clean-up through [`UploadMarks`]. A replica marked
//! `litestream-compatible` receives NoChecksum re-encodings of the same
//! files. Every file-system step (listing, re-encoding, progress writes)
//! runs on the blocking pool: the executor also serves metrics, signals and
//! the systemd watchdog.

use std::collections::BTreeSet;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ltx_format::bundle::write_bundle;
use ltx_format::{format_filename, Checksum, Decoder, Encoder, HEADER_FLAG_NO_CHECKSUM};
use s3_backend::layout::SNAPSHOT_LEVEL;
use s3_backend::{catalogue, Layout, PutMode, PutSource, ReplicaStore, StoreError};
use tracing::{info, warn};

use super::metrics::ReplicaMetrics;
use crate::staging::{fsync, LocalFile, StagingDir, StagingError};
use crate::state::{read_json, write_json, write_json_durable, ReplicaProgress};

/// The highest TXID uploaded at each level 0..=9, shared between a replica's
/// uploader and the database's local clean-up.
#[derive(Debug, Default)]
pub struct UploadMarks([AtomicU64; 10]);

impl UploadMarks {
    pub fn get(&self, level: u8) -> u64 {
        self.0[usize::from(level).min(9)].load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, level: u8, max: u64) {
        self.0[usize::from(level).min(9)].fetch_max(max, Ordering::Relaxed);
    }
}

/// Why an upload round stopped.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("replica {replica}: another writer owns this replica ({source})")]
    Conflict { replica: String, source: StoreError },
    #[error("uploading {}: {source}", path.display())]
    Store { path: PathBuf, source: StoreError },
    #[error(transparent)]
    Staging(#[from] StagingError),
}

impl UploadError {
    /// The database cannot go on: another writer, or a broken staging disk.
    pub fn is_fatal(&self) -> bool {
        match self {
            UploadError::Conflict { .. } => true,
            UploadError::Staging(e) => e.is_fatal(),
            UploadError::Store { .. } => false,
        }
    }
}

#[derive(Debug)]
pub struct Uploader {
    pub name: String,
    pub url: String,
    pub store: Arc<dyn ReplicaStore>,
    pub layout: Layout,
    pub litestream_compatible: bool,
    batch: bool,
    conditional_put: Option<bool>,
    staging: StagingDir,
    progress_path: PathBuf,
    progress: ReplicaProgress,
    pub marks: Arc<UploadMarks>,
    pub metrics: Arc<ReplicaMetrics>,
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StagingError> + Send + 'static,
) -> Result<T, StagingError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StagingError::io(
            "blocking task",
            Path::new("-"),
            std::io::Error::other(e.to_string()),
        ))
    })
}

impl Uploader {
    /// `index` is the replica's position in the configuration: its progress
    /// file is `replica-<index>.json`.
    pub fn new(
        replica: &super::ReplicaSpec,
        store: Arc<dyn ReplicaStore>,
        staging: &StagingDir,
        index: usize,
        metrics: Arc<ReplicaMetrics>,
    ) -> Self {
        let url = replica.url.to_string();
        let progress_path = staging.progress_path(index);
        // Lost or corrupt progress only means uploads are repeated (and
        // accepted: the objects already there have the same bytes).
        let mut progress: ReplicaProgress = read_json(&progress_path)
            .unwrap_or_else(|e| {
                warn!("{e}; uploading the staged files again");
                None
            })
            .unwrap_or_default();
        if progress.url != url {
            // A different replica at this index: start its uploads over.
            progress = ReplicaProgress {
                url: url.clone(),
                uploaded: [0; 10],
            };
        }
        let marks = Arc::new(UploadMarks::default());
        for level in 0..=SNAPSHOT_LEVEL {
            marks.set(level, progress.uploaded[usize::from(level)]);
        }
        Uploader {
            name: replica.name.clone(),
            url,
            store,
            layout: replica.url.layout(),
            litestream_compatible: replica.litestream_compatible,
            batch: replica.batch && !replica.litestream_compatible,
            conditional_put: None,
            staging: staging.clone(),
            progress_path,
            progress,
            marks,
            metrics,
        }
    }

    pub fn uploaded(&self, level: u8) -> u64 {
        self.progress.uploaded[usize::from(level)]
    }

    /// Probes put-if-absent support once; logs a warning where it is missing.
    pub async fn probe(&mut self) -> Result<(), StoreError> {
        if self.conditional_put.is_some() {
            return Ok(());
        }
        let key = self
            .layout
            .sluice_key(&format!("probe-{}", std::process::id()));
        let caps = self.store.probe(&key).await?;
        if !caps.conditional_put {
            warn!(replica = %self.name, url = %self.url, "store ignores conditional writes (If-None-Match); assuming a single writer");
        }
        self.conditional_put = Some(caps.conditional_put);
        Ok(())
    }

    /// Staged files not uploaded yet, L0 first.
    ///
    /// A listing (`readdir`) may miss a file renamed into the directory
    /// while it runs and still return a later one; uploading that later
    /// file would move the mark past the missed one for good (a gap in the
    /// replica). Each level's files are staged in TXID order, so every file
    /// at or below the newest one a first listing saw was in place before a
    /// second listing began: the second listing, cut at that TXID, is
    /// complete.
    async fn not_uploaded(&self) -> Result<Vec<LocalFile>, StagingError> {
        let staging = self.staging.clone();
        let done = self.progress.uploaded;
        blocking(move || {
            let mut out = Vec::new();
            for level in 0..=SNAPSHOT_LEVEL {
                let Some(seen) = staging.list_level(level)?.last().map(|f| f.max) else {
                    continue;
                };
                out.extend(
                    staging
                        .list_level(level)?
                        .into_iter()
                        .filter(|f| f.max.0 > done[usize::from(level)] && f.max <= seen),
                );
            }
            Ok(out)
        })
        .await
    }

    /// True if every staged file of every level is uploaded.
    pub async fn caught_up(&self) -> Result<bool, StagingError> {
        Ok(self.not_uploaded().await?.is_empty())
    }

    /// Uploads every staged file not yet uploaded, L0 first; with `batch`,
    /// runs of consecutive L0 files go as bundles. Returns the objects put.
    pub async fn upload_pending(&mut self) -> Result<usize, UploadError> {
        let files = self.not_uploaded().await?;
        let mut n = 0;
        let mut rest = files.as_slice();
        while let Some(f) = rest.first() {
            let run = if self.batch && f.level == 0 {
                bundle_run(rest)
            } else {
                1
            };
            let done = if run > 1 {
                self.upload_bundle(&rest[..run]).await?
            } else {
                self.upload(f).await?;
                1
            };
            rest = &rest[done..];
            n += 1;
        }
        Ok(n)
    }

    /// Uploads the first of `files` (consecutive L0 files) as one bundle
    /// object named by their TXID range; returns how many it took. Every
    /// file in it stays restorable on its own: the catalogue lists them one
    /// by one.
    async fn upload_bundle(&mut self, files: &[LocalFile]) -> Result<usize, UploadError> {
        let tmp = self.staging.tmp_dir();
        let parts: Vec<LocalFile> = files.to_vec();
        let b = blocking(move || write_bundle_file(&tmp, &parts)).await?;
        let last = &files[b.files - 1];
        let key = self.layout.ltx_key(0, files[0].min, last.max);
        let put = self
            .store
            .put(&key, &PutSource::File(b.path.clone()), PutMode::Create)
            .await;
        let _ = tokio::fs::remove_file(&b.path).await;
        self.put_result(put, &last.path)?;
        self.progress.uploaded[0] = last.max.0;
        self.save_progress(false).await?;
        self.marks.set(0, last.max.0);
        self.metrics.record_upload(0, last.max.0, b.size, b.created);
        Ok(b.files)
    }

    fn put_result(&self, put: Result<(), StoreError>, path: &Path) -> Result<(), UploadError> {
        match put {
            Ok(()) => Ok(()),
            Err(e) if e.is_already_exists() => Err(UploadError::Conflict {
                replica: self.url.clone(),
                source: e,
            }),
            Err(e) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                Err(UploadError::Store {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        }
    }

    async fn upload(&mut self, f: &LocalFile) -> Result<(), UploadError> {
        let key = self.layout.ltx_key(f.level, f.min, f.max);
        let (path, tmp) = (f.path.clone(), self.staging.tmp_dir());
        let meta = tokio::fs::metadata(&f.path)
            .await
            .map_err(|e| StagingError::io("stat", &f.path, e))?;
        let src = if self.litestream_compatible {
            PutSource::File(blocking(move || no_checksum_copy(&path, &tmp)).await?)
        } else {
            PutSource::File(f.path.clone())
        };
        let put = self.store.put(&key, &src, PutMode::Create).await;
        if let PutSource::File(p) = &src {
            if p != &f.path {
                let _ = tokio::fs::remove_file(p).await;
            }
        }
        self.put_result(put, &f.path)?;
        self.progress.uploaded[usize::from(f.level)] = f.max.0;
        self.save_progress(false).await?;
        self.marks.set(f.level, f.max.0);
        self.metrics
            .record_upload(f.level, f.max.0, meta.len(), meta.modified().ok());
        Ok(())
    }

    /// Records progress (durably at a clean stop).
    pub async fn save_progress(&self, durable: bool) -> Result<(), StagingError> {
        let (path, progress) = (self.progress_path.clone(), self.progress.clone());
        blocking(move || {
            if durable {
                write_json_durable(&path, &progress)
            } else {
                write_json(&path, &progress)
            }
        })
        .await
    }

    /// Deletes replica files no restore within `retention` needs: everything
    /// (levels 0..=8) covered by the newest snapshot older than the window,
    /// and older snapshots. Nothing is deleted without such a snapshot.
    pub async fn apply_retention(&self, retention: Duration) -> Result<usize, StoreError> {
        let Some(cutoff) = SystemTime::now().checked_sub(retention) else {
            return Ok(0);
        };
        let files = catalogue::list(&self.store, &self.layout).await?;
        let keep = files
            .iter()
            .filter(|f| f.level == SNAPSHOT_LEVEL && f.last_modified.is_some_and(|t| t <= cutoff))
            .max_by_key(|f| f.max);
        let Some(keep) = keep else {
            return Ok(0);
        };
        let floor = keep.max;
        // The files of a bundle share its key: it goes when all of them may.
        let (mut old, mut needed) = (BTreeSet::new(), BTreeSet::new());
        for f in &files {
            let is_old = if f.level == SNAPSHOT_LEVEL {
                f.max < floor && f.key != keep.key
            } else {
                f.max <= floor
            };
            if is_old { &mut old } else { &mut needed }.insert(f.key.as_str());
        }
        let mut deleted = 0;
        for key in old.difference(&needed) {
            self.store.delete(key).await?;
            deleted += 1;
        }
        if deleted > 0 {
            info!(replica = %self.name, deleted, floor = %floor, "retention removed replica files");
        }
        Ok(deleted)
    }
}

/// Most files, and bytes, in one bundle: a bundle of 10,000 files has a
/// 320 KB index; under load one interval rarely stages more.
const BUNDLE_MAX_FILES: usize = 10_000;
const BUNDLE_MAX_BYTES: u64 = 64 << 20;

/// How many of `files` (not uploaded, L0 first) may go in the next bundle:
/// the run of consecutive L0 files from the first, within the count limit.
fn bundle_run(files: &[LocalFile]) -> usize {
    let n = files
        .windows(2)
        .take(BUNDLE_MAX_FILES - 1)
        .take_while(|w| w[1].level == 0 && w[0].max.0.checked_add(1) == Some(w[1].min.0))
        .count();
    n + 1
}

/// A bundle written to the staging tmp dir, ready to upload.
struct BundleFile {
    path: PathBuf,
    /// How many of the files offered it holds (the byte limit may stop it
    /// short).
    files: usize,
    size: u64,
    /// The last file's modification time (for the lag metric).
    created: Option<SystemTime>,
}

/// Writes the first of `files` as a bundle in `tmp`, up to the byte limit.
/// Opens one file at a time: a bundle may hold thousands, beyond the usual
/// limit of 1,024 open files, and the capture needs descriptors too.
fn write_bundle_file(tmp: &Path, files: &[LocalFile]) -> Result<BundleFile, StagingError> {
    std::fs::create_dir_all(tmp).map_err(|e| StagingError::io("create", tmp, e))?;
    let mut readers = Vec::with_capacity(files.len());
    let (mut bytes, mut created) = (0u64, None);
    for f in files {
        let meta = std::fs::metadata(&f.path).map_err(|e| StagingError::io("stat", &f.path, e))?;
        bytes += meta.len();
        // Two files at least: a bundle of one would look like a plain file.
        if readers.len() >= 2 && bytes > BUNDLE_MAX_BYTES {
            break;
        }
        created = meta.modified().ok();
        readers.push((f.min, f.max, OpenOnRead::new(&f.path)));
    }
    let n = readers.len();
    let (first, last) = (&files[0], &files[n - 1]);
    let out = tmp.join(format!("{}.bundle", format_filename(first.min, last.max)));
    let w = std::fs::File::create(&out).map_err(|e| StagingError::io("create", &out, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, w);
    let write_err =
        |e: ltx_format::Error| StagingError::io("write", &out, std::io::Error::other(e));
    write_bundle(&mut w, readers).map_err(write_err)?;
    let w = w
        .into_inner()
        .map_err(|e| StagingError::io("write", &out, e.into_error()))?;
    let size = w
        .metadata()
        .map_err(|e| StagingError::io("stat", &out, e))?
        .len();
    Ok(BundleFile {
        path: out,
        files: n,
        size,
        created,
    })
}

/// A file opened at its first read (and closed when dropped).
struct OpenOnRead<'a> {
    path: &'a Path,
    file: Option<BufReader<std::fs::File>>,
}

impl<'a> OpenOnRead<'a> {
    fn new(path: &'a Path) -> Self {
        OpenOnRead { path, file: None }
    }
}

impl std::io::Read for OpenOnRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let f = std::fs::File::open(self.path).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("open {}: {e}", self.path.display()))
                })?;
                self.file.insert(BufReader::new(f))
            }
        };
        file.read(buf)
    }
}

/// A NoChecksum re-encoding of a staged file, in the staging tmp dir (the
/// form `litestream restore` accepts).
fn no_checksum_copy(path: &Path, tmp: &Path) -> Result<PathBuf, StagingError> {
    std::fs::create_dir_all(tmp).map_err(|e| StagingError::io("create", tmp, e))?;
    let name = path.file_name().unwrap_or_default();
    let out = tmp.join(name);
    let encode_err = |source| StagingError::Encode {
        path: out.clone(),
        source,
    };
    let src = std::fs::File::open(path).map_err(|e| StagingError::io("open", path, e))?;
    let mut dec = Decoder::new(BufReader::new(src)).map_err(encode_err)?;
    let mut h = *dec.header();
    h.flags = HEADER_FLAG_NO_CHECKSUM;
    h.pre_apply_checksum = Checksum::ZERO;
    let f = std::fs::File::create(&out).map_err(|e| StagingError::io("create", &out, e))?;
    let mut enc = Encoder::new(std::io::BufWriter::new(&f), h).map_err(encode_err)?;
    let mut page = vec![0u8; h.page_size.as_usize()];
    while let Some(pgno) = dec.next_page(&mut page).map_err(encode_err)? {
        enc.encode_page(pgno, &page).map_err(encode_err)?;
    }
    let (w, _) = enc.finish(Checksum::ZERO).map_err(encode_err)?;
    w.into_inner()
        .map_err(|e| StagingError::io("write", &out, e.into_error()))?;
    fsync(&f, &out)?;
    Ok(out)
}
