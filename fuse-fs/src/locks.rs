//! POSIX byte-range locks, as the kernel would keep them, kept by the daemon
//! instead (`FUSE_POSIX_LOCKS` makes the daemon the only lock manager).
//!
//! [`LockTable`] owns every granted lock, per inode, per owner. Its invariants:
//! one owner's locks on one inode never overlap, and two of its locks of the
//! same kind are never adjacent (they are merged), so the table is the
//! canonical form of what each owner holds, byte by byte. Locks of different
//! owners never conflict (a write lock overlaps nothing of another owner; read
//! locks overlap only read locks).
//!
//! [`WaitQueue`] holds blocking requests (`F_SETLKW`) that could not be granted
//! yet. It never parks a thread: the filesystem stores the reply with the
//! request, calls [`WaitQueue::retry`] whenever locks are released and
//! [`WaitQueue::expire`] from a timer, and answers the waiter then.
//!
//! Nothing here knows FUSE or SQLite: offsets are plain byte numbers, no lock
//! byte is special.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Instant;

/// The last byte a lock can cover: a lock with `end == EOF` extends to the end
/// of the file however large it grows (a length-0 `struct flock`). This is the
/// kernel's `OFFSET_MAX`.
pub const EOF: u64 = i64::MAX as u64;

/// A shared (read) or exclusive (write) lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockKind {
    /// `F_RDLCK`: any number of owners may hold read locks on a byte.
    Read,
    /// `F_WRLCK`: one owner only, and no read locks of others.
    Write,
}

impl LockKind {
    /// Whether a lock of this kind and one of `other` held by another owner on
    /// the same byte conflict.
    pub fn conflicts_with(self, other: LockKind) -> bool {
        self == LockKind::Write || other == LockKind::Write
    }

    /// The `l_type` value (`F_RDLCK` or `F_WRLCK`).
    pub fn fcntl_type(self) -> i32 {
        match self {
            LockKind::Read => libc::F_RDLCK,
            LockKind::Write => libc::F_WRLCK,
        }
    }

    /// The kind of an `l_type`; `None` for `F_UNLCK` and anything unknown.
    pub fn from_fcntl_type(typ: i32) -> Option<LockKind> {
        match typ {
            libc::F_RDLCK => Some(LockKind::Read),
            libc::F_WRLCK => Some(LockKind::Write),
            _ => None,
        }
    }
}

/// An inclusive byte range `start..=end`, with `end <= EOF`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteRange {
    start: u64,
    end: u64,
}

impl ByteRange {
    /// `start..=end`; `None` unless `start <= end <= EOF`.
    pub fn new(start: u64, end: u64) -> Option<ByteRange> {
        (start <= end && end <= EOF).then_some(ByteRange { start, end })
    }

    /// One byte.
    pub fn byte(offset: u64) -> ByteRange {
        let offset = offset.min(EOF);
        ByteRange {
            start: offset,
            end: offset,
        }
    }

    /// From `start` to the end of the file.
    pub fn to_eof(start: u64) -> ByteRange {
        ByteRange {
            start: start.min(EOF),
            end: EOF,
        }
    }

    /// `len` bytes from `start`, as `struct flock` says it: `len == 0` means to
    /// the end of the file. `None` if the range would pass `EOF`.
    pub fn with_len(start: u64, len: u64) -> Option<ByteRange> {
        if len == 0 {
            return (start <= EOF).then_some(ByteRange::to_eof(start));
        }
        ByteRange::new(start, start.checked_add(len - 1)?)
    }

    /// The first byte.
    pub fn start(self) -> u64 {
        self.start
    }

    /// The last byte (inclusive); `EOF` for a lock to the end of the file.
    pub fn end(self) -> u64 {
        self.end
    }

    /// Whether the range extends to the end of the file.
    pub fn is_to_eof(self) -> bool {
        self.end == EOF
    }

    /// Whether the two ranges share a byte.
    pub fn overlaps(self, other: ByteRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// Whether `offset` is in the range.
    pub fn contains(self, offset: u64) -> bool {
        self.start <= offset && offset <= self.end
    }

    /// The bytes both ranges share.
    pub fn intersect(self, other: ByteRange) -> Option<ByteRange> {
        ByteRange::new(self.start.max(other.start), self.end.min(other.end))
    }

    /// Whether `other` starts right after this range ends (or the reverse).
    fn adjacent(self, other: ByteRange) -> bool {
        self.end.checked_add(1) == Some(other.start) || other.end.checked_add(1) == Some(self.start)
    }
}

impl fmt::Debug for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_to_eof() {
            write!(f, "{}..=EOF", self.start)
        } else {
            write!(f, "{}..={}", self.start, self.end)
        }
    }
}

/// A granted lock (or a piece of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lock {
    /// Who holds it: the kernel's `lock_owner` (one per process for classic
    /// POSIX locks, one per open file description for OFD locks), or an owner
    /// the filesystem itself uses.
    pub owner: u64,
    /// The bytes.
    pub range: ByteRange,
    /// Read or write.
    pub kind: LockKind,
    /// The holder's process id, as `F_GETLK` reports it.
    pub pid: u32,
}

/// Every granted lock, per inode.
#[derive(Debug, Default)]
pub struct LockTable {
    /// Per inode, sorted by (start, owner); see the module docs for the
    /// invariants.
    files: HashMap<u64, Vec<Lock>>,
}

impl LockTable {
    /// An empty table.
    pub fn new() -> LockTable {
        LockTable::default()
    }

    /// `F_GETLK`: a lock of another owner that conflicts with `kind` on
    /// `range`, or `None` if `owner` could take it now. When several conflict,
    /// a write lock is preferred (it is the one that must be waited out), then
    /// the lowest start, then the lowest owner: so "another process holds a
    /// read lock" is reported only when no write lock is in the way.
    pub fn test(&self, ino: u64, owner: u64, range: ByteRange, kind: LockKind) -> Option<Lock> {
        self.conflicts(ino, owner, range, kind)
            .min_by_key(|l| (l.kind != LockKind::Write, l.range.start, l.owner))
            .copied()
    }

    /// `F_SETLK`: grants `kind` on `range` to `owner`, replacing whatever the
    /// owner held there (a read lock over part of its write lock downgrades
    /// that part; a write lock over its read lock upgrades it), merging with
    /// its adjacent locks of the same kind. Returns the owner's previous locks
    /// inside `range` (clipped to it) that were replaced, or, if another owner
    /// holds a conflicting lock, that lock (as [`LockTable::test`] picks it),
    /// and nothing changes.
    pub fn set(
        &mut self,
        ino: u64,
        owner: u64,
        range: ByteRange,
        kind: LockKind,
        pid: u32,
    ) -> Result<Vec<Lock>, Lock> {
        if let Some(conflict) = self.test(ino, owner, range, kind) {
            return Err(conflict);
        }
        let new = Lock {
            owner,
            range,
            kind,
            pid,
        };
        Ok(self.replace(ino, owner, range, Some(new)))
    }

    /// `F_UNLCK` of `range`: removes the owner's locks there, splitting any
    /// that extend past it. Returns exactly what was released: the pieces
    /// inside `range`, with the kind they had.
    pub fn unlock(&mut self, ino: u64, owner: u64, range: ByteRange) -> Vec<Lock> {
        self.replace(ino, owner, range, None)
    }

    /// What [`LockTable::unlock`] would release, without releasing it.
    pub fn preview_unlock(&self, ino: u64, owner: u64, range: ByteRange) -> Vec<Lock> {
        self.owner_locks(ino, owner)
            .into_iter()
            .filter_map(|l| l.range.intersect(range).map(|range| Lock { range, ..l }))
            .collect()
    }

    /// Drops every lock `owner` holds on `ino` (what closing any descriptor of
    /// the file does to a process's POSIX locks). Returns them.
    pub fn release_owner(&mut self, ino: u64, owner: u64) -> Vec<Lock> {
        self.unlock(ino, owner, ByteRange::to_eof(0))
    }

    /// Forgets every lock on `ino` (the inode is gone). Returns them.
    pub fn remove_inode(&mut self, ino: u64) -> Vec<Lock> {
        self.files.remove(&ino).unwrap_or_default()
    }

    /// Every lock on `ino`, sorted by start then owner.
    pub fn locks(&self, ino: u64) -> &[Lock] {
        self.files.get(&ino).map_or(&[], Vec::as_slice)
    }

    /// The locks `owner` holds on `ino`, sorted by start.
    pub fn owner_locks(&self, ino: u64, owner: u64) -> Vec<Lock> {
        self.locks(ino)
            .iter()
            .filter(|l| l.owner == owner)
            .copied()
            .collect()
    }

    /// Every lock on `ino` that overlaps `range`, whoever holds it.
    pub fn overlapping(&self, ino: u64, range: ByteRange) -> impl Iterator<Item = &Lock> + '_ {
        self.locks(ino)
            .iter()
            .filter(move |l| l.range.overlaps(range))
    }

    /// The kind of lock `owner` holds on byte `offset`, if any.
    pub fn held_kind(&self, ino: u64, owner: u64, offset: u64) -> Option<LockKind> {
        self.locks(ino)
            .iter()
            .find(|l| l.owner == owner && l.range.contains(offset))
            .map(|l| l.kind)
    }

    /// Whether `owner` holds a lock of exactly `kind` on byte `offset`.
    pub fn holds(&self, ino: u64, owner: u64, offset: u64, kind: LockKind) -> bool {
        self.held_kind(ino, owner, offset) == Some(kind)
    }

    /// Whether anyone but `except` holds a lock on `range`, of `kind` if given
    /// (e.g. "is any reader holding SHARED": `Some(Read)` on the shared range).
    pub fn is_locked(
        &self,
        ino: u64,
        range: ByteRange,
        kind: Option<LockKind>,
        except: Option<u64>,
    ) -> bool {
        self.overlapping(ino, range)
            .any(|l| Some(l.owner) != except && kind.is_none_or(|k| l.kind == k))
    }

    /// The owners holding anything on `ino`.
    pub fn owners(&self, ino: u64) -> Vec<u64> {
        let mut owners: Vec<u64> = self.locks(ino).iter().map(|l| l.owner).collect();
        owners.sort_unstable();
        owners.dedup();
        owners
    }

    fn conflicts(
        &self,
        ino: u64,
        owner: u64,
        range: ByteRange,
        kind: LockKind,
    ) -> impl Iterator<Item = &Lock> + '_ {
        self.overlapping(ino, range)
            .filter(move |l| l.owner != owner && l.kind.conflicts_with(kind))
    }

    /// Removes the owner's locks inside `range` (keeping the parts outside),
    /// inserts `new` (whose range is `range`) merged with the owner's adjacent
    /// same-kind locks, and returns the removed pieces inside `range`.
    fn replace(&mut self, ino: u64, owner: u64, range: ByteRange, new: Option<Lock>) -> Vec<Lock> {
        let locks = self.files.entry(ino).or_default();
        let mut replaced = Vec::new();
        let mut kept = Vec::with_capacity(locks.len() + 2);
        for l in locks.drain(..) {
            if l.owner != owner || !l.range.overlaps(range) {
                kept.push(l);
                continue;
            }
            if let Some(inside) = l.range.intersect(range) {
                replaced.push(Lock { range: inside, ..l });
            }
            if l.range.start < range.start {
                kept.push(Lock {
                    range: ByteRange {
                        start: l.range.start,
                        end: range.start - 1,
                    },
                    ..l
                });
            }
            if l.range.end > range.end {
                kept.push(Lock {
                    range: ByteRange {
                        start: range.end + 1,
                        end: l.range.end,
                    },
                    ..l
                });
            }
        }
        if let Some(new) = new {
            let merged = merge_neighbours(&mut kept, new);
            kept.push(merged);
        }
        kept.sort_by_key(|l| (l.range.start, l.owner));
        *locks = kept;
        if locks.is_empty() {
            self.files.remove(&ino);
        }
        replaced.sort_by_key(|l| l.range.start);
        replaced
    }
}

/// Takes out of `locks` the same-owner, same-kind locks adjacent to `new` and
/// returns `new` grown over them (they cannot overlap it: the caller removed
/// the owner's locks inside its range).
fn merge_neighbours(locks: &mut Vec<Lock>, new: Lock) -> Lock {
    let mut merged = new;
    locks.retain(|l| {
        let joins = l.owner == new.owner && l.kind == new.kind && l.range.adjacent(new.range);
        if joins {
            merged.range.start = merged.range.start.min(l.range.start);
            merged.range.end = merged.range.end.max(l.range.end);
        }
        !joins
    });
    merged
}

/// A blocking request (`F_SETLKW`) waiting for a conflicting lock to go.
#[derive(Debug)]
pub struct Waiter<R> {
    /// Unique within its queue.
    pub id: u64,
    /// The inode.
    pub ino: u64,
    /// The requesting owner.
    pub owner: u64,
    /// The requested range.
    pub range: ByteRange,
    /// The requested kind.
    pub kind: LockKind,
    /// The requester's pid.
    pub pid: u32,
    /// When to give up (the filesystem answers `EAGAIN` then).
    pub deadline: Instant,
    /// How to answer it.
    pub reply: R,
}

/// A waiter whose lock has just been granted (it is in the table already).
#[derive(Debug)]
pub struct GrantedWaiter<R> {
    /// The waiter, to be answered with success.
    pub waiter: Waiter<R>,
    /// The owner's previous locks inside the range, as [`LockTable::set`]
    /// returns them.
    pub replaced: Vec<Lock>,
}

/// Blocking lock requests, in arrival order, generic over how they are
/// answered (a FUSE reply in the filesystem, anything in tests).
#[derive(Debug)]
pub struct WaitQueue<R> {
    waiters: Vec<Waiter<R>>,
    next_id: u64,
}

impl<R> Default for WaitQueue<R> {
    fn default() -> Self {
        WaitQueue {
            waiters: Vec::new(),
            next_id: 1,
        }
    }
}

/// What the queue needs to know about a blocking request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRequest {
    /// The inode.
    pub ino: u64,
    /// The requesting owner.
    pub owner: u64,
    /// The requested range.
    pub range: ByteRange,
    /// The requested kind.
    pub kind: LockKind,
    /// The requester's pid.
    pub pid: u32,
}

impl<R> WaitQueue<R> {
    /// An empty queue.
    pub fn new() -> WaitQueue<R> {
        WaitQueue::default()
    }

    /// How many requests wait.
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// The waiting requests, oldest first.
    pub fn waiters(&self) -> impl Iterator<Item = &Waiter<R>> + '_ {
        self.waiters.iter()
    }

    /// Whether making `req` wait would close a cycle of owners waiting for
    /// each other (answer `EDEADLK` then, as the kernel does): some owner that
    /// blocks `req` waits, directly or through others, for `req.owner`.
    pub fn would_deadlock(&self, table: &LockTable, req: &LockRequest) -> bool {
        let blockers = |ino: u64, owner: u64, range: ByteRange, kind: LockKind| -> Vec<u64> {
            table
                .conflicts(ino, owner, range, kind)
                .map(|l| l.owner)
                .collect()
        };
        let mut frontier = blockers(req.ino, req.owner, req.range, req.kind);
        let mut seen: HashSet<u64> = HashSet::new();
        while let Some(owner) = frontier.pop() {
            if owner == req.owner {
                return true;
            }
            if !seen.insert(owner) {
                continue;
            }
            for w in self.waiters.iter().filter(|w| w.owner == owner) {
                frontier.extend(blockers(w.ino, w.owner, w.range, w.kind));
            }
        }
        false
    }

    /// Queues `req` until `deadline`. Returns its id.
    pub fn push(&mut self, req: LockRequest, deadline: Instant, reply: R) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.waiters.push(Waiter {
            id,
            ino: req.ino,
            owner: req.owner,
            range: req.range,
            kind: req.kind,
            pid: req.pid,
            deadline,
            reply,
        });
        id
    }

    /// Grants, oldest first, every waiter on `ino` whose lock no longer
    /// conflicts, and takes them out of the queue. Call it after anything
    /// released or downgraded a lock on `ino`.
    pub fn retry(&mut self, table: &mut LockTable, ino: u64) -> Vec<GrantedWaiter<R>> {
        let mut granted = Vec::new();
        let mut i = 0;
        while i < self.waiters.len() {
            let w = &self.waiters[i];
            if w.ino != ino {
                i += 1;
                continue;
            }
            match table.set(w.ino, w.owner, w.range, w.kind, w.pid) {
                Ok(replaced) => {
                    let waiter = self.waiters.remove(i);
                    granted.push(GrantedWaiter { waiter, replaced });
                }
                Err(_) => i += 1,
            }
        }
        granted
    }

    /// Takes out the waiters whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Waiter<R>> {
        self.take_where(|w| w.deadline <= now)
    }

    /// Takes out the waiter with this id.
    pub fn remove(&mut self, id: u64) -> Option<Waiter<R>> {
        self.take_where(|w| w.id == id).pop()
    }

    /// Takes out every waiter (the filesystem is going away).
    pub fn drain(&mut self) -> Vec<Waiter<R>> {
        std::mem::take(&mut self.waiters)
    }

    /// The earliest deadline, for the timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiters.iter().map(|w| w.deadline).min()
    }

    fn take_where(&mut self, pred: impl Fn(&Waiter<R>) -> bool) -> Vec<Waiter<R>> {
        let (taken, kept) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| pred(w));
        self.waiters = kept;
        taken
    }
}

#[cfg(test)]
mod tests;
