//! Step 1: the header, page index and trailer of every planned file, read
//! without the pages, and the rules that bind consecutive files of a chain.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ltx_format::{Checksum, Error as LtxError, Header, PageSize, Rule, HEADER_SIZE};
use s3_backend::StoreError;
use tokio::task::JoinSet;

use super::inspect::corrupt;
use super::{join_all, task_error, Options, Shared, TaskError};
use crate::error::RestoreError;
use crate::plan::FileInfo;
use crate::verify::{self, invalid, FileMeta};

/// A whole file kept in memory, if it was small enough.
pub(super) type Body = Option<Arc<Vec<u8>>>;

struct Fetched {
    meta: FileMeta,
    body: Body,
    fetched: u64,
    requests: u64,
}

/// Fetches the metadata of every file, `parallelism` at a time; small files
/// are fetched whole and kept while `opts.cache_bytes` lasts.
pub(super) async fn fetch_all(
    shared: &Arc<Shared>,
    files: &[FileInfo],
    opts: &Options,
) -> Result<(Vec<FileMeta>, Vec<Body>), RestoreError> {
    let cache_left = Arc::new(AtomicU64::new(opts.cache_bytes));
    let mut set = JoinSet::new();
    for (i, f) in files.iter().enumerate() {
        let (shared, f, cache_left) = (shared.clone(), f.clone(), cache_left.clone());
        let small = opts.small_file_bytes;
        set.spawn(async move {
            let _permit = shared.permit().await?;
            let got = fetch_meta(&shared, &f, small)
                .await
                .map_err(TaskError::Store)?;
            let mut got = got.map_err(|e| TaskError::Format(i, e))?;
            shared.count(got.fetched, got.requests);
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
            ltx_format::apply::check_name(&f.name(), &got.meta.header)
                .map_err(|e| TaskError::Format(i, e))?;
            Ok((i, (got.meta, got.body)))
        });
    }
    match join_all(shared, set, files.len(), "metadata").await {
        Ok(v) => Ok(v.into_iter().unzip()),
        Err(e) => Err(task_error(&shared.store, files, e).await),
    }
}

/// One file's metadata: the whole file if it is at most `small` bytes,
/// otherwise its header and its tail (end marker, index, trailer). The inner
/// error is a format error of the file.
async fn fetch_meta(
    shared: &Shared,
    f: &FileInfo,
    small: u64,
) -> Result<Result<Fetched, LtxError>, StoreError> {
    let (store, size) = (&shared.store, f.size);
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
        let b = store.get_range(&f.key, f.at(0), size).await?;
        let n = b.len() as u64;
        return Ok(verify::parse_meta(size, &b, &b, 0).map(|meta| Fetched {
            meta,
            body: Some(Arc::new(b)),
            fetched: n,
            requests: 1,
        }));
    }
    let head = store.get_range(&f.key, f.at(0), HEADER_SIZE as u64).await?;
    // The index takes about 8 bytes per page frame: an eighth of the file
    // (at most 64 KiB) nearly always holds it; otherwise a second read does.
    let guess = (size / 8).clamp(256, 64 << 10).min(size);
    let mut tail_off = size - guess;
    let mut tail = store.get_range(&f.key, f.at(tail_off), guess).await?;
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
        let mut more = store
            .get_range(&f.key, f.at(start), tail_off - start)
            .await?;
        fetched += more.len() as u64;
        requests += 1;
        more.extend_from_slice(&tail);
        tail = more;
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

/// What the chain as a whole restores to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chain {
    pub page_size: PageSize,
    /// Database size in pages after the last file.
    pub commit: u32,
    /// The last file's header.
    pub last: Header,
    /// The last file's post-apply checksum.
    pub last_post: Checksum,
    /// The last file carries a database checksum to compare with.
    pub tracked_end: bool,
}

/// Checks the chain: one page size, a snapshot first, contiguous TXIDs, and
/// checksums that agree where consecutive files both carry them.
pub(super) fn check_chain(files: &[FileInfo], metas: &[FileMeta]) -> Result<Chain, RestoreError> {
    let (Some(first), Some(last)) = (metas.first(), metas.last()) else {
        return Err(RestoreError::Internal("no files to chain".into()));
    };
    let ps = first.header.page_size;
    if !first.header.is_snapshot() {
        return Err(RestoreError::Internal(format!(
            "plan starts with {}, not a snapshot",
            files[0]
        )));
    }
    for (i, m) in metas.iter().enumerate() {
        if m.header.page_size != ps {
            let detail = format!(
                "file has page size {}, {} has {ps}",
                m.header.page_size, files[0].key
            );
            let e = invalid(Rule::PageSizeMismatch, detail, Some(8), None);
            return Err(corrupt(&files[i], e));
        }
        if i > 0 {
            check_link(&files[i - 1], &metas[i - 1], &metas[i])
                .map_err(|e| corrupt(&files[i], e))?;
        }
    }
    Ok(Chain {
        page_size: ps,
        commit: last.header.commit,
        last: last.header,
        last_post: last.trailer.post_apply_checksum,
        tracked_end: !last.header.no_checksum(),
    })
}

/// The rules between a file and the one before it (`prev_info`, `prev`).
fn check_link(prev_info: &FileInfo, prev: &FileMeta, m: &FileMeta) -> Result<(), LtxError> {
    let h = &m.header;
    let prev_max = prev.header.max_txid;
    if !ltx_format::is_contiguous(prev_max, h.min_txid, h.max_txid) {
        return Err(invalid(
            Rule::TxidContinuity,
            format!(
                "file {}-{} does not continue TXID {prev_max}",
                h.min_txid, h.max_txid
            ),
            None,
            None,
        ));
    }
    let chained = h.min_txid.0 == prev_max.0 + 1;
    if chained
        && !h.no_checksum()
        && !prev.header.no_checksum()
        && h.pre_apply_checksum != prev.trailer.post_apply_checksum
    {
        return Err(invalid(
            Rule::PreApplyChecksum,
            format!(
                "pre-apply checksum mismatch: file expects database {}, {} leaves {}",
                h.pre_apply_checksum, prev_info.key, prev.trailer.post_apply_checksum
            ),
            Some(40),
            None,
        ));
    }
    Ok(())
}
