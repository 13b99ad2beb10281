//! Uploads a database's staged LTX files to one replica, in TXID order per
//! level, with put-if-absent, and applies the replica's retention.
//!
//! Progress (the highest TXID uploaded per level) is persisted after each
//! object, so a restart re-uploads nothing that was acknowledged. A replica
//! marked `litestream-compatible` receives NoChecksum re-encodings of the
//! same files.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use ltx_format::{Checksum, Decoder, Encoder, HEADER_FLAG_NO_CHECKSUM};
use s3_backend::layout::SNAPSHOT_LEVEL;
use s3_backend::{Layout, PutMode, PutSource, ReplicaStore, StoreError};
use tracing::{info, warn};

use super::files::list_level;
use super::metrics::ReplicaMetrics;
use super::position::{read_json, write_json, ReplicaProgress};

#[derive(Debug)]
pub struct Uploader {
    pub name: String,
    pub url: String,
    pub store: Arc<dyn ReplicaStore>,
    pub layout: Layout,
    pub litestream_compatible: bool,
    pub conditional_put: Option<bool>,
    ltx: PathBuf,
    tmp: PathBuf,
    progress_path: PathBuf,
    pub progress: ReplicaProgress,
    pub metrics: Arc<ReplicaMetrics>,
}

/// Why an upload round stopped.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("replica {replica}: another writer owns this replica ({source})")]
    Conflict { replica: String, source: StoreError },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Uploader {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        url: String,
        store: Arc<dyn ReplicaStore>,
        layout: Layout,
        litestream_compatible: bool,
        staging: &Path,
        index: usize,
        metrics: Arc<ReplicaMetrics>,
    ) -> Result<Self> {
        let progress_path = staging.join(format!("replica-{index}.json"));
        // Lost or corrupt progress only means uploads are repeated (and
        // accepted: the objects already there have the same bytes).
        let mut progress: ReplicaProgress = read_json(&progress_path)
            .unwrap_or_else(|e| {
                warn!("{e:#}; uploading the staged files again");
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
        Ok(Uploader {
            name,
            url,
            store,
            layout,
            litestream_compatible,
            conditional_put: None,
            ltx: staging.join("ltx"),
            tmp: staging.join("tmp"),
            progress_path,
            progress,
            metrics,
        })
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

    /// True if every staged file of every level is uploaded.
    pub fn caught_up(&self) -> Result<bool> {
        for level in 0..=SNAPSHOT_LEVEL {
            if let Some(f) = list_level(&self.ltx, level)?.last() {
                if f.max.0 > self.progress.uploaded[level as usize] {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Uploads every staged file not yet uploaded, L0 first.
    pub async fn upload_pending(&mut self) -> Result<usize, UploadError> {
        let mut n = 0;
        for level in 0..=SNAPSHOT_LEVEL {
            let files = list_level(&self.ltx, level).map_err(anyhow::Error::from)?;
            for f in files {
                if f.max.0 <= self.progress.uploaded[level as usize] {
                    continue;
                }
                let key = self.layout.ltx_key(level, f.min, f.max);
                let src = if self.litestream_compatible {
                    PutSource::File(self.no_checksum_copy(&f.path).map_err(UploadError::Other)?)
                } else {
                    PutSource::File(f.path.clone())
                };
                let size = std::fs::metadata(&f.path).map_or(0, |m| m.len());
                let created = std::fs::metadata(&f.path).and_then(|m| m.modified()).ok();
                match self.store.put(&key, &src, PutMode::Create).await {
                    Ok(()) => {}
                    Err(e) if e.is_already_exists() => {
                        return Err(UploadError::Conflict {
                            replica: self.url.clone(),
                            source: e,
                        })
                    }
                    Err(e) => {
                        self.metrics
                            .errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Err(UploadError::Other(
                            anyhow::Error::new(e)
                                .context(format!("uploading {}", f.path.display())),
                        ));
                    }
                }
                if let PutSource::File(p) = &src {
                    if p != &f.path {
                        let _ = std::fs::remove_file(p);
                    }
                }
                self.progress.uploaded[level as usize] = f.max.0;
                write_json(&self.progress_path, &self.progress)?;
                self.metrics.record_upload(level, f.max.0, size, created);
                n += 1;
            }
        }
        Ok(n)
    }

    /// A NoChecksum re-encoding of a staged file, in the staging tmp dir.
    fn no_checksum_copy(&self, path: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.tmp)?;
        let name = path.file_name().context("staged file has no name")?;
        let out = self.tmp.join(name);
        let mut dec = Decoder::new(BufReader::new(std::fs::File::open(path)?))?;
        let mut h = *dec.header();
        h.flags = HEADER_FLAG_NO_CHECKSUM;
        h.pre_apply_checksum = Checksum::ZERO;
        let f = std::fs::File::create(&out)?;
        let mut enc = Encoder::new(std::io::BufWriter::new(f), h)?;
        let mut page = vec![0u8; h.page_size.as_usize()];
        while let Some(pgno) = dec.next_page(&mut page)? {
            enc.encode_page(pgno, &page)?;
        }
        let (w, _) = enc.finish(Checksum::ZERO)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(out)
    }

    /// Deletes replica files no restore within `retention` needs: everything
    /// (levels 0..=8) covered by the newest snapshot older than the window,
    /// and older snapshots. Nothing is deleted without such a snapshot.
    pub async fn apply_retention(&self, retention: Duration) -> Result<usize> {
        let Some(cutoff) = SystemTime::now().checked_sub(retention) else {
            return Ok(0);
        };
        let snaps = self
            .store
            .list(&self.layout.level_dir(SNAPSHOT_LEVEL), None)
            .await?;
        let mut keep: Option<(u64, String)> = None;
        for o in &snaps {
            let Some((_, _, max)) = self.layout.parse_ltx_key(&o.key) else {
                continue;
            };
            if o.last_modified.is_some_and(|t| t <= cutoff)
                && keep.as_ref().is_none_or(|(m, _)| max.0 > *m)
            {
                keep = Some((max.0, o.key.clone()));
            }
        }
        let Some((floor, keep_key)) = keep else {
            return Ok(0);
        };
        let mut deleted = 0;
        for level in 0..=SNAPSHOT_LEVEL {
            for o in self.store.list(&self.layout.level_dir(level), None).await? {
                let Some((_, _, max)) = self.layout.parse_ltx_key(&o.key) else {
                    continue;
                };
                let old = if level == SNAPSHOT_LEVEL {
                    max.0 < floor && o.key != keep_key
                } else {
                    max.0 <= floor
                };
                if old {
                    self.store.delete(&o.key).await?;
                    deleted += 1;
                }
            }
        }
        if deleted > 0 {
            info!(replica = %self.name, deleted, floor = format!("{floor:016x}"), "retention removed replica files");
        }
        Ok(deleted)
    }
}
