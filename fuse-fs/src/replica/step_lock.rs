//! Keeping SQLite readers out while a step is applied.
//!
//! SQLite's lock bytes on the database file (unix VFS, default
//! `PENDING_BYTE`): PENDING at `0x40000000`, RESERVED at `+1`, SHARED at
//! `+2 .. +511`. A reader starting a read transaction takes a read lock on
//! PENDING, then on the SHARED range, then drops PENDING; it holds the SHARED
//! range until the transaction ends. So, on the daemon's own open file
//! description of the database (OFD locks conflict with every process's
//! POSIX locks, the daemon's own process included):
//!
//! 1. a write lock on PENDING: no new read transaction can begin (SQLite
//!    answers `SQLITE_BUSY`, which busy handlers retry);
//! 2. a write lock on the SHARED range, retried until the readers inside a
//!    transaction have left, at most the caller's bound: past it, both are
//!    released and nothing was written;
//! 3. the write, then the kernel's page cache is invalidated for what it
//!    changed (from this thread, never a request handler: an invalidation
//!    waits for reads in flight, which handler threads answer);
//! 4. release.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::time::{Duration, Instant};

use fuser::{INodeNo, Notifier};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

/// SQLite's `PENDING_BYTE`.
pub const PENDING_BYTE: i64 = 0x4000_0000;
const SHARED_FIRST: i64 = PENDING_BYTE + 2;
const SHARED_SIZE: i64 = 510;

/// What the kernel must drop from its cache of the database after a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidate {
    /// These byte ranges (and the file's attributes).
    Ranges(Vec<Range<u64>>),
    /// Everything (a new database was swapped in).
    All,
}

#[derive(Debug, thiserror::Error)]
pub enum ExclusiveError {
    /// A reader stayed in its read transaction past the bound.
    #[error("a reader held the database for more than {0:?}")]
    Busy(Duration),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The daemon's lock descriptor of one served database.
pub struct StepLock {
    file: File,
    ino: u64,
    notifier: Notifier,
    name: String,
}

impl std::fmt::Debug for StepLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepLock").field("db", &self.name).finish()
    }
}

fn flock(typ: i32, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: typ as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

impl StepLock {
    pub(super) fn new(file: File, ino: u64, notifier: Notifier, name: String) -> StepLock {
        StepLock {
            file,
            ino,
            notifier,
            name,
        }
    }

    /// A write lock on `start..start+len` now, or `false` if another holds
    /// a conflicting lock.
    fn try_lock(&self, start: i64, len: i64) -> io::Result<bool> {
        let fl = flock(libc::F_WRLCK, start, len);
        match fcntl(&self.file, FcntlArg::F_OFD_SETLK(&fl)) {
            Ok(_) => Ok(true),
            Err(Errno::EAGAIN) | Err(Errno::EACCES) => Ok(false),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// Retries until `deadline`, sleeping a little longer each time.
    fn lock_until(&self, start: i64, len: i64, deadline: Instant) -> io::Result<bool> {
        let mut nap = Duration::from_micros(100);
        loop {
            if self.try_lock(start, len)? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }

    fn unlock(&self) -> io::Result<()> {
        let fl = flock(libc::F_UNLCK, PENDING_BYTE, 2 + SHARED_SIZE);
        fcntl(&self.file, FcntlArg::F_OFD_SETLK(&fl)).map_err(io::Error::from)?;
        Ok(())
    }

    /// A stale page would show readers a torn database: if invalidating the
    /// ranges fails, everything is invalidated.
    fn invalidate(&self, what: &Invalidate) -> io::Result<()> {
        let ino = INodeNo(self.ino);
        let ranges = |rs: &[Range<u64>]| -> io::Result<()> {
            for r in rs.iter().filter(|r| r.end > r.start) {
                self.notifier
                    .inval_inode(ino, r.start as i64, (r.end - r.start) as i64)?;
            }
            // Attributes (the size) go even when no range changed.
            self.notifier.inval_inode(ino, -1, 0)
        };
        match what {
            Invalidate::Ranges(rs) if ranges(rs).is_ok() => Ok(()),
            _ => self.notifier.inval_inode(ino, 0, 0),
        }
    }

    /// Runs `write` while no reader is in a read transaction (see the module
    /// docs), waiting at most `wait` for the readers to leave.
    pub fn exclusive(
        &self,
        wait: Duration,
        write: &mut dyn FnMut() -> io::Result<Invalidate>,
    ) -> Result<(), ExclusiveError> {
        let deadline = Instant::now() + wait;
        if !self.lock_until(PENDING_BYTE, 1, deadline)? {
            return Err(ExclusiveError::Busy(wait));
        }
        let inside = self
            .lock_until(SHARED_FIRST, SHARED_SIZE, deadline)
            .map_err(ExclusiveError::from)
            .and_then(|held| {
                if !held {
                    return Err(ExclusiveError::Busy(wait));
                }
                let what = write()?;
                self.invalidate(&what)?;
                Ok(())
            });
        let released = self.unlock();
        inside?;
        released.map_err(ExclusiveError::from)
    }
}
