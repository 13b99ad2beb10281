//! Applying a verified step, or swapping in a restored database, while no
//! reader is inside a read transaction.
//!
//! The [`Gate`] is what keeps readers out: the FUSE mount's implementation
//! takes SQLite's PENDING lock (no new reader starts), waits a bounded time
//! for the SHARED holders to finish, runs the write, invalidates the
//! kernel's page cache for the changed ranges, and releases. A reader that
//! outlasts the bound makes the gate answer [`GateError::Busy`]: the step
//! is put off, nothing was written, and readers go on seeing the old state.
//!
//! Order of a step, for crash safety:
//! 1. the redo record (`redo`) and the space the step needs (preallocated,
//!    so a full disk fails here, before anything readers see changes);
//! 2. inside the gate: the pages, the new size, the new served view;
//! 3. the position (by rename), then the redo record is removed.

use std::ops::Range;
use std::time::Duration;

use anyhow::{Context, Result};

use super::cache::{CacheDb, Step};
use super::position::{CacheDir, Position};
use super::redo;
use super::served::Served;

/// What the kernel must forget after a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidate {
    Ranges(Vec<Range<u64>>),
    All,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("a reader held the database for more than {0:?}; the step waits for the next poll")]
    Busy(Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Runs writes to a served database while no reader is in a read
/// transaction.
pub trait Gate: Send + Sync + std::fmt::Debug {
    fn exclusive(
        &self,
        wait: Duration,
        write: &mut dyn FnMut() -> std::io::Result<Invalidate>,
    ) -> Result<(), GateError>;
}

/// No readers to keep out (a cache that is not mounted: tests, benchmarks).
#[derive(Debug, Default)]
pub struct OpenGate;

impl Gate for OpenGate {
    fn exclusive(
        &self,
        _wait: Duration,
        write: &mut dyn FnMut() -> std::io::Result<Invalidate>,
    ) -> Result<(), GateError> {
        write()?;
        Ok(())
    }
}

/// How an apply ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// A reader outlasted the bound: nothing changed.
    Delayed,
}

/// Allocates the blocks of pages `from..=to` of `cache` without changing its
/// size: a step that grows the database must not find the disk full halfway.
fn preallocate(cache: &CacheDb, commit: u32) -> std::io::Result<()> {
    if commit <= cache.commit {
        return Ok(());
    }
    let ps = u64::from(cache.page_size.get());
    let from = cache.len();
    let len = u64::from(commit) * ps - from;
    nix::fcntl::fallocate(
        &**cache.file(),
        nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        from as i64,
        len as i64,
    )
    .or_else(|e| match e {
        // Filesystems without fallocate: the writes will find out.
        nix::errno::Errno::EOPNOTSUPP => Ok(()),
        e => Err(std::io::Error::from(e)),
    })
}

/// The position to record for `cache`.
pub fn position_of(
    cache: &CacheDb,
    replica: &str,
    after: &std::collections::BTreeMap<u8, String>,
) -> Position {
    Position {
        replica: replica.to_string(),
        txid: cache.txid.0,
        checksum: cache.checksum.to_string(),
        page_size: cache.page_size.get(),
        commit: cache.commit,
        timestamp_ms: cache.timestamp_ms,
        after: after.clone(),
    }
}

/// Applies a verified step (see the module docs). On an error inside the
/// gate the served database may be torn: the caller must restore it before
/// readers are let back (`Served::withdraw` has already hidden it).
pub fn apply_step(
    cache: &mut CacheDb,
    step: &Step,
    served: &Served,
    gate: &dyn Gate,
    dir: &CacheDir,
    wait: Duration,
) -> Result<Applied> {
    let redo_path = dir.redo();
    redo::write(&redo_path, step, cache.page_size, cache.checksum)
        .context("cannot write the step's redo record (is the cache disk full?)")?;
    if let Err(e) = preallocate(cache, step.commit) {
        let _ = std::fs::remove_file(&redo_path);
        return Err(e)
            .context("cannot allocate space for the step in the cache (is the disk full?)");
    }
    let ps = u64::from(cache.page_size.get());
    let mut failed: Option<std::io::Error> = None;
    let r = gate.exclusive(wait, &mut || match cache.write_step(step) {
        Ok(mut changed) => {
            // The change counter lives in page 1.
            changed.push(0..ps);
            served.publish_db(cache);
            Ok(Invalidate::Ranges(changed))
        }
        Err(e) => {
            served.withdraw();
            failed = Some(std::io::Error::new(e.kind(), e.to_string()));
            Err(e)
        }
    });
    match r {
        Ok(()) => {}
        Err(GateError::Busy(_)) if failed.is_none() => {
            let _ = std::fs::remove_file(&redo_path);
            return Ok(Applied::Delayed);
        }
        Err(e) => return Err(e).context("applying the step to the cached database"),
    }
    Ok(Applied::Done)
}

/// After a step: the position, then the redo record goes.
pub fn record(
    cache: &CacheDb,
    dir: &CacheDir,
    replica: &str,
    after: &std::collections::BTreeMap<u8, String>,
) -> Result<()> {
    dir.save(&position_of(cache, replica, after), false)?;
    match std::fs::remove_file(dir.redo()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).context("cannot remove the step's redo record"),
    }
}

/// Swaps readers over to a new database (a restore), inside the gate; the
/// whole page cache is dropped. Waits as long as readers hold the old one.
pub fn swap(
    new: &CacheDb,
    served: &Served,
    gate: &dyn Gate,
    wait: Duration,
    stop: &dyn Fn() -> bool,
) -> Result<bool> {
    loop {
        match gate.exclusive(wait, &mut || {
            served.publish_db(new);
            Ok(Invalidate::All)
        }) {
            Ok(()) => return Ok(true),
            Err(GateError::Busy(_)) if !stop() => continue,
            Err(GateError::Busy(_)) => return Ok(false),
            Err(e) => return Err(e).context("swapping in the restored database"),
        }
    }
}
