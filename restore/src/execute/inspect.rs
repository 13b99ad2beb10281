//! Reading single files outside the bulk download: one header (for the
//! timestamp search and commit times), or a whole file through the streaming
//! decoder, which names the broken rule precisely once something failed.

use std::io::{BufReader, Read};
use std::sync::Arc;

use ltx_format::{Error as LtxError, Header, Rule, Txid, HEADER_SIZE};
use s3_backend::ReplicaStore;

use crate::error::RestoreError;
use crate::plan::{FileInfo, TimeSearch};
use crate::verify::invalid;

/// A format error (or a read failure) of file `f`.
pub(super) fn corrupt(f: &FileInfo, e: LtxError) -> RestoreError {
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
    let b = store.get_range(&f.key, f.at(0), HEADER_SIZE as u64).await?;
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
    ltx_format::apply::check_name(&f.name(), &h).map_err(|e| corrupt(f, e))?;
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
        pos: f.at(0),
        size: f.at(f.size),
        buf: Vec::new(),
        at: 0,
    };
    let name = f.name().to_string();
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
pub(super) async fn corrupt_diagnosed(
    store: &Arc<dyn ReplicaStore>,
    f: &FileInfo,
    mine: LtxError,
) -> RestoreError {
    match diagnose(store, f).await {
        Some(e) => corrupt(f, e),
        None => corrupt(f, mine),
    }
}
