//! POSIX lock requests: GETLK, SETLK/SETLKW, and the releases that flush
//! (close) and release (last close of an open file description) imply.
//!
//! Each operation runs inside the owner's gate (see
//! [`crate::lock_service`]): hooks run while the owner still holds what it
//! is releasing, then the table changes, then the caller is answered, then
//! the waiters the release unblocked.

use fuser::{Errno, ReplyEmpty};

use super::Core;
use crate::hooks::{LockAttempt, LockGranted, LocksReleased, ReleaseCause};
use crate::lock_service::SetOutcome;
use crate::locks::{ByteRange, GrantedWaiter, Lock, LockKind, LockRequest};
use crate::sync::lock;

/// A GETLK answer: start, end, type, pid (type `F_UNLCK` when free).
pub(super) type LockInfo = (u64, u64, i32, u32);

/// A SETLK request as the kernel sends it.
#[derive(Debug)]
pub(super) struct SetLk {
    pub ino: u64,
    pub fh: u64,
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub typ: i32,
    pub pid: u32,
    pub sleep: bool,
}

/// Waiters to answer after the caller was.
pub(super) type Woken = Vec<GrantedWaiter<ReplyEmpty>>;

impl Core {
    pub(super) fn getlk(
        &self,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
    ) -> Result<LockInfo, Errno> {
        let range = ByteRange::new(start, end).ok_or(Errno::EINVAL)?;
        let kind = LockKind::from_fcntl_type(typ).ok_or(Errno::EINVAL)?;
        Ok(match self.locks.test(ino, owner, range, kind) {
            Some(c) => (c.range.start(), c.range.end(), c.kind.fcntl_type(), c.pid),
            None => (start, end, libc::F_UNLCK, 0),
        })
    }

    /// SETLK/SETLKW. Answers `reply` itself: now, or later from whichever
    /// thread releases the conflicting lock, or from the timer.
    pub(super) fn setlk(&self, a: SetLk, reply: ReplyEmpty) {
        let Some(range) = ByteRange::new(a.start, a.end) else {
            return reply.error(Errno::EINVAL);
        };
        if a.typ == libc::F_UNLCK {
            return match self.unlock(a.ino, a.owner, range) {
                Ok(woken) => {
                    reply.ok();
                    self.answer_woken(woken);
                }
                Err(e) => reply.error(e),
            };
        }
        let Some(kind) = LockKind::from_fcntl_type(a.typ) else {
            return reply.error(Errno::EINVAL);
        };
        if let Some(h) = lock(&self.handles).get(a.fh) {
            h.note_lock_owner(a.owner);
        }
        let req = LockRequest {
            ino: a.ino,
            owner: a.owner,
            range,
            kind,
            pid: a.pid,
        };
        self.set_lock(req, a.sleep, reply);
    }

    fn set_lock(&self, req: LockRequest, sleep: bool, reply: ReplyEmpty) {
        let gate = self.locks.gate(req.ino, req.owner);
        let path = self.hook_path(req.ino);
        let attempt = LockAttempt {
            path: &path,
            ino: req.ino,
            owner: req.owner,
            range: req.range,
            kind: req.kind,
            pid: req.pid,
            blocking: sleep,
        };
        if let Err(e) = self.hooks.check_lock(&attempt) {
            return reply.error(e);
        }
        match self.locks.set(req, sleep, reply) {
            SetOutcome::Granted {
                reply,
                replaced,
                woken,
            } => {
                let lock = Lock {
                    owner: req.owner,
                    range: req.range,
                    kind: req.kind,
                    pid: req.pid,
                };
                self.hooks.lock_granted(&LockGranted {
                    path: &path,
                    ino: req.ino,
                    lock,
                    replaced: &replaced,
                    waited: false,
                });
                reply.ok();
                drop(gate);
                self.answer_woken(woken);
            }
            SetOutcome::Conflict(reply, _) => reply.error(Errno::EAGAIN),
            SetOutcome::Deadlock(reply) => reply.error(Errno::EDEADLK),
            SetOutcome::Queued => {}
        }
    }

    /// F_UNLCK: the hook sees what goes while it is still held; on `Ok` it
    /// goes. Returns the waiters to answer once the caller was.
    fn unlock(&self, ino: u64, owner: u64, range: ByteRange) -> Result<Woken, Errno> {
        let _gate = self.locks.gate(ino, owner);
        let going = self.locks.preview_unlock(ino, owner, range);
        if going.is_empty() {
            return Ok(Vec::new());
        }
        self.released_hook(ino, owner, ReleaseCause::Unlock, &going)?;
        Ok(self.locks.unlock(ino, owner, range).1)
    }

    /// Drops all of `owner`'s locks on `ino` (flush: a descriptor of the file
    /// was closed; release: an OFD went). The hook's error is the result,
    /// but the locks go anyway.
    pub(super) fn release_owner(
        &self,
        ino: u64,
        owner: u64,
        cause: ReleaseCause,
    ) -> (Result<(), Errno>, Woken) {
        let _gate = self.locks.gate(ino, owner);
        let going = self.locks.with_table(|t| t.owner_locks(ino, owner));
        if going.is_empty() {
            return (Ok(()), Vec::new());
        }
        let result = self.released_hook(ino, owner, cause, &going);
        (result, self.locks.release_owner(ino, owner).1)
    }

    /// At release of `fh`: the locks of owners seen only through this handle
    /// are OFD locks (classic POSIX locks went at flush) and go now.
    pub(super) fn release_ofd_locks(&self, ino: u64, fh: u64) {
        let Some(h) = lock(&self.handles).get(fh) else {
            return;
        };
        for owner in h.lock_owners() {
            if lock(&self.handles).owner_elsewhere(ino, fh, owner) {
                continue;
            }
            let (_, woken) = self.release_owner(ino, owner, ReleaseCause::ReleaseOfd);
            self.answer_woken(woken);
        }
    }

    fn released_hook(
        &self,
        ino: u64,
        owner: u64,
        cause: ReleaseCause,
        released: &[Lock],
    ) -> Result<(), Errno> {
        let path = self.hook_path(ino);
        self.hooks.locks_released(&LocksReleased {
            path: &path,
            ino,
            owner,
            cause,
            released,
        })
    }
}
