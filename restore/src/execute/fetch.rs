//! Step 3: the pages. Frames are grouped into chunks of a few MiB, each
//! fetched with one ranged read (or taken from a small file kept whole),
//! `parallelism` at a time, and decoded on the blocking pool, which writes
//! the owned pages into the temporary file with positioned writes.

use std::fs::File;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ltx_format::Rule;
use tokio::task::JoinSet;

use super::finalize::Temp;
use super::meta::Body;
use super::owners::Owners;
use super::{join_all, task_error, Shared, TaskError};
use crate::error::RestoreError;
use crate::plan::FileInfo;
use crate::verify::{
    chunk_entries, decode_chunk, invalid, owned_chunks, ChunkCtx, ChunkError, ChunkOut, FileMeta,
    Shifts,
};

/// One ranged read and its frames.
#[derive(Debug, Clone)]
pub(super) struct Chunk {
    /// The file's position in the plan.
    pub file: usize,
    /// Its index entries.
    pub entries: Range<usize>,
    pub start: u64,
    pub len: u64,
}

/// What every decode needs, shared by the chunks' blocking tasks.
#[derive(Debug)]
pub(super) struct Job {
    pub metas: Vec<FileMeta>,
    pub owners: Owners,
    pub shifts: Shifts,
    /// Decode and hash every frame, owned or not.
    pub full: bool,
    out: File,
}

impl Job {
    pub fn new(
        metas: Vec<FileMeta>,
        owners: Owners,
        full: bool,
        tmp: &Temp,
    ) -> Result<Self, RestoreError> {
        let out = tmp
            .file()
            .try_clone()
            .map_err(|e| tmp.io_err("opening", e))?;
        let ps = metas
            .first()
            .map(|m| m.header.page_size)
            .ok_or_else(|| RestoreError::Internal("no files to decode".into()))?;
        Ok(Job {
            metas,
            owners,
            shifts: Shifts::new(ps),
            full,
            out,
        })
    }

    fn decode(&self, c: &Chunk, base: u64, data: &[u8]) -> Result<ChunkOut, TaskError> {
        let meta = &self.metas[c.file];
        let ctx = ChunkCtx {
            meta,
            ordinal: c.file as u32 + 1,
            owners: &self.owners.by_page,
            full: self.full,
            shifts: &self.shifts,
            out: &self.out,
        };
        decode_chunk(&ctx, &meta.index.entries[c.entries.clone()], base, data).map_err(
            |e| match e {
                ChunkError::Format(e) => TaskError::Format(c.file, e),
                ChunkError::Write(e) => TaskError::Write(e),
            },
        )
    }
}

/// The chunks to read: every frame when verifying whole files (`full`),
/// otherwise only the owned frames, grouped across small holes.
pub(super) fn plan_chunks(
    metas: &[FileMeta],
    owners: &Owners,
    full: bool,
    chunk_bytes: u64,
) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for (i, m) in metas.iter().enumerate() {
        let groups = if full {
            chunk_entries(&m.index.entries, chunk_bytes)
        } else {
            owned_chunks(
                &m.index.entries,
                &owners.owned_entries(i, m),
                chunk_bytes,
                64 << 10,
            )
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
    chunks
}

fn chunk_span(meta: &FileMeta, r: &Range<usize>) -> (u64, u64) {
    let es = &meta.index.entries;
    let first = &es[r.start];
    let last = &es[r.end - 1];
    (first.offset, last.offset + last.size - first.offset)
}

/// Fetches and decodes every chunk; returns each chunk's contribution, in
/// the order of `chunks`. Reports each file done when its last chunk is.
pub(super) async fn fetch_chunks(
    shared: &Arc<Shared>,
    files: &[FileInfo],
    job: &Arc<Job>,
    bodies: Vec<Body>,
    chunks: &[Chunk],
    tmp: &Temp,
) -> Result<Vec<ChunkOut>, RestoreError> {
    let to_fetch: u64 = chunks
        .iter()
        .filter(|c| bodies[c.file].is_none())
        .map(|c| c.len)
        .sum();
    let progress = &shared.progress;
    progress.set_total(shared.fetched.load(Ordering::Relaxed) + to_fetch);
    let left: Arc<Vec<AtomicUsize>> = Arc::new(
        (0..files.len())
            .map(|i| AtomicUsize::new(chunks.iter().filter(|c| c.file == i).count()))
            .collect(),
    );
    for n in left.iter() {
        if n.load(Ordering::Relaxed) == 0 {
            progress.file_done();
        }
    }
    let mut set = JoinSet::new();
    for (ci, c) in chunks.iter().enumerate() {
        let (c, body) = (c.clone(), bodies[c.file].clone());
        let (key, at) = (files[c.file].key.clone(), files[c.file].at(0));
        let (shared, job, left) = (shared.clone(), job.clone(), left.clone());
        set.spawn(async move {
            // Held until the chunk is decoded: that bounds the bytes in memory.
            let _permit = shared.permit().await?;
            let (data, base) = match body {
                Some(b) => (b, 0u64),
                None => (read_chunk(&shared, &key, at, &c).await?, c.start),
            };
            let file = c.file;
            let out = tokio::task::spawn_blocking(move || job.decode(&c, base, &data))
                .await
                .map_err(|e| TaskError::Join(e.to_string()))??;
            if left[file].fetch_sub(1, Ordering::AcqRel) == 1 {
                shared.progress.file_done();
            }
            Ok((ci, out))
        });
    }
    match join_all(shared, set, chunks.len(), "chunk result").await {
        Ok(outs) => Ok(outs),
        Err(TaskError::Write(e)) => Err(tmp.io_err("writing", e)),
        Err(e) => Err(task_error(&shared.store, files, e).await),
    }
}

/// One ranged read; a short read is a truncated file.
/// `at` is where the file starts in the object (see [`FileInfo::at`]).
async fn read_chunk(
    shared: &Shared,
    key: &str,
    at: u64,
    c: &Chunk,
) -> Result<Arc<Vec<u8>>, TaskError> {
    let d = shared
        .store
        .get_range(key, at + c.start, c.len)
        .await
        .map_err(TaskError::Store)?;
    shared.count(d.len() as u64, 1);
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
    Ok(Arc::new(d))
}
