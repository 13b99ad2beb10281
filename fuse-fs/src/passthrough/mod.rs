//! A passthrough filesystem over a real directory, steered by [`Hooks`].
//!
//! [`PassthroughFs`] implements [`fuser::Filesystem`]: every callback is a
//! thin wrapper that calls one helper returning `Result<T, Errno>` and
//! answers. The state lives in `Core`, shared with [`FsHandle`]s:
//!
//! - the inode table ([`crate::inodes`]) and the handle table
//!   ([`crate::handles`]), each behind its own mutex, held only for table
//!   operations, never across I/O or hooks (the two are never held together);
//! - the lock service ([`crate::lock_service`]): POSIX locks are kept here
//!   (`FUSE_POSIX_LOCKS`), blocking requests are answered later from
//!   whichever thread releases the lock, or failed with `EAGAIN` by a timer
//!   after [`PassthroughOptions::lock_wait_timeout`], so no worker thread
//!   ever waits for a lock.
//!
//! Backing files are reached by path under the data directory, which must
//! not overlap the mountpoint (the mount helpers refuse that). Kernel
//! passthrough (`FUSE_PASSTHROUGH`, max stack depth 2) is used where the
//! kernel grants it; `FUSE_WRITEBACK_CACHE` never is (writes must arrive in
//! order, before the lock that covers them is released).

mod files;
mod fs_impl;
mod locking;
mod names;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{Errno, ReplyEmpty};

use crate::handles::HandleTable;
use crate::hooks::{Caller, Hooks};
use crate::inodes::{BackingKey, InodeTable};
use crate::lock_service::LockService;
use crate::locks::{ByteRange, GrantedWaiter, Lock, LockKind, LockRequest, LockTable};
use crate::mount::MountError;
use crate::sync::lock;

/// Owners at or above this value are free for the filesystem's own locks
/// ([`FsHandle::lock`]). Kernel lock owners are scrambled 64-bit pointers; a
/// collision with this range is as likely as any two of them colliding.
pub const FS_OWNER_BASE: u64 = u64::MAX - 0xffff;

/// Settings of a [`PassthroughFs`]; build from `Default` and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PassthroughOptions {
    /// How long the kernel may cache attributes. Default 1 s. Everything
    /// that changes a file through the mount updates the kernel's copy; a
    /// longer TTL saves GETATTR round trips but hides changes made to the
    /// data directory behind the mount's back for that long.
    pub attr_ttl: Duration,
    /// How long the kernel may cache a name lookup. Default 1 s; same
    /// trade-off as `attr_ttl`.
    pub entry_ttl: Duration,
    /// How long an `F_SETLKW` waits before it fails with `EAGAIN` (which
    /// SQLite maps to SQLITE_BUSY). Default 10 s. The kernel cannot
    /// interrupt a waiting lock request (no FUSE_INTERRUPT support), so this
    /// also bounds how long a process killed while waiting stays in D state.
    pub lock_wait_timeout: Duration,
    /// Use kernel passthrough where granted (needs CAP_SYS_ADMIN and Linux
    /// 6.9+). Default true. Off, or where refused: `Passthrough` opens use
    /// the page cache and `Routed` opens plain direct io.
    pub kernel_passthrough: bool,
    /// Refuse every change with `EROFS`. Default false. Mount it read-only
    /// too (see [`crate::MountConfig::read_only`]).
    pub read_only: bool,
    /// Negotiate `FUSE_EXPLICIT_INVAL_DATA`: the kernel never drops cached
    /// pages on its own when attributes change (the filesystem invalidates
    /// explicitly). Default false.
    pub explicit_inval_data: bool,
}

impl Default for PassthroughOptions {
    fn default() -> Self {
        PassthroughOptions {
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            lock_wait_timeout: Duration::from_secs(10),
            kernel_passthrough: true,
            read_only: false,
            explicit_inval_data: false,
        }
    }
}

/// Shared state of a mount.
struct Core {
    root: PathBuf,
    opts: PassthroughOptions,
    hooks: Box<dyn Hooks>,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HandleTable>,
    locks: Arc<LockService<ReplyEmpty>>,
    euid: u32,
    /// The device of the data directory.
    root_dev: u64,
    /// Name changes (create, unlink, rename, ...) completed so far.
    name_changes: AtomicU64,
    /// `name_changes` as it was when the last `syncfs` of the data
    /// directory's filesystem started, once it has finished: while the two
    /// are equal, every name change is durable, and a directory fsync needs
    /// no sync of its own.
    synced_names: AtomicU64,
}

/// Counts a name change when dropped (when the operation is over, whether
/// or not it succeeded).
struct NameChange<'a>(&'a AtomicU64);

impl Drop for NameChange<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Core {
    /// Marks the start of a name change; it is counted when the guard goes.
    fn name_change(&self) -> NameChange<'_> {
        NameChange(&self.name_changes)
    }

    /// One `syncfs(2)` of the filesystem of `f` in place of its fsync; if
    /// that is the data directory's filesystem, the name changes completed
    /// before it started are durable.
    fn syncfs(&self, f: &fs::File) -> Result<(), Errno> {
        let seen = self.name_changes.load(Ordering::SeqCst);
        nix::unistd::syncfs(f).map_err(nix_errno)?;
        if f.metadata().is_ok_and(|m| m.dev() == self.root_dev) {
            self.synced_names.fetch_max(seen, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Whether every name change on the data directory's filesystem is
    /// durable already.
    fn names_synced(&self) -> bool {
        self.name_changes.load(Ordering::SeqCst) == self.synced_names.load(Ordering::SeqCst)
    }
}

/// A passthrough filesystem over a data directory; mount it with
/// [`crate::mount`].
pub struct PassthroughFs {
    core: Arc<Core>,
}

impl std::fmt::Debug for PassthroughFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughFs")
            .field("root", &self.core.root)
            .finish_non_exhaustive()
    }
}

/// A handle on a mounted (or about to be mounted) [`PassthroughFs`], for
/// the code around it: lock queries, the filesystem's own locks, inode
/// numbers. Cheap to clone; usable from hooks (it takes only short internal
/// locks).
#[derive(Clone)]
pub struct FsHandle {
    core: Arc<Core>,
}

impl std::fmt::Debug for FsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsHandle")
            .field("root", &self.core.root)
            .finish_non_exhaustive()
    }
}

/// Whether kernel passthrough is in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassthroughStatus {
    /// New inodes get passthrough opens.
    pub active: bool,
    /// Why not, when it is not.
    pub reason: Option<String>,
}

impl PassthroughFs {
    /// A filesystem serving `data_dir` (checked: an existing directory this
    /// process can read, write and search).
    pub fn new(
        data_dir: &Path,
        opts: PassthroughOptions,
        hooks: impl Hooks,
    ) -> Result<PassthroughFs, MountError> {
        let root = crate::mount::check_data_dir(data_dir)?;
        let meta = fs::metadata(&root).map_err(|source| MountError::DataDir {
            path: root.clone(),
            source,
        })?;
        let locks = LockService::new(opts.lock_wait_timeout);
        locks.start_timer().map_err(|source| MountError::Io {
            what: "starting the lock timer thread".into(),
            source,
        })?;
        let core = Core {
            inodes: Mutex::new(InodeTable::new(backing_key(&meta))),
            handles: Mutex::new(HandleTable::new(opts.kernel_passthrough)),
            root,
            opts,
            hooks: Box::new(hooks),
            locks,
            euid: nix::unistd::geteuid().as_raw(),
            root_dev: meta.dev(),
            // Unequal: nothing is known to be synced yet.
            name_changes: AtomicU64::new(1),
            synced_names: AtomicU64::new(0),
        };
        Ok(PassthroughFs {
            core: Arc::new(core),
        })
    }

    /// A handle for the code around the filesystem.
    pub fn handle(&self) -> FsHandle {
        FsHandle {
            core: Arc::clone(&self.core),
        }
    }
}

impl Drop for PassthroughFs {
    fn drop(&mut self) {
        self.core.locks.stop();
    }
}

impl FsHandle {
    /// The data directory (canonical).
    pub fn data_dir(&self) -> &Path {
        &self.core.root
    }

    /// The inode of a backing path (absolute, inside the data directory, or
    /// relative to it), if the kernel has looked it up.
    pub fn ino_of(&self, path: &Path) -> Option<u64> {
        let rel = path.strip_prefix(&self.core.root).unwrap_or(path);
        lock(&self.core.inodes).ino_of(rel)
    }

    /// The backing path of an inode (its last one if it was unlinked).
    pub fn path_of(&self, ino: u64) -> Option<PathBuf> {
        let (rel, _) = lock(&self.core.inodes).path_or_last(ino)?;
        Some(self.core.root.join(rel))
    }

    /// Runs `f` on the lock table (keep it short: lock requests wait).
    pub fn with_locks<T>(&self, f: impl FnOnce(&LockTable) -> T) -> T {
        self.core.locks.with_table(f)
    }

    /// Takes a lock for one of the filesystem's own owners (at or above
    /// [`FS_OWNER_BASE`]), now or not at all: `Err` is the conflicting lock.
    /// Hooks are not called for it.
    pub fn lock(&self, ino: u64, owner: u64, range: ByteRange, kind: LockKind) -> Result<(), Lock> {
        let req = LockRequest {
            ino,
            owner,
            range,
            kind,
            pid: std::process::id(),
        };
        let (_, woken) = self.core.locks.try_set(req)?;
        self.core.answer_woken(woken);
        Ok(())
    }

    /// Releases a range of one of the filesystem's own owners; waiters it
    /// unblocks are answered. Returns what was released.
    pub fn unlock(&self, ino: u64, owner: u64, range: ByteRange) -> Vec<Lock> {
        let (released, woken) = self.core.locks.unlock(ino, owner, range);
        self.core.answer_woken(woken);
        released
    }

    /// Waits up to `timeout` until `done(table)` holds, re-checking whenever
    /// locks are released (e.g. "no reader holds SHARED any more").
    pub fn wait_for_locks(&self, timeout: Duration, done: impl Fn(&LockTable) -> bool) -> bool {
        self.core.locks.wait_until(timeout, done)
    }

    /// Whether kernel passthrough is in use, and why not.
    pub fn passthrough_status(&self) -> PassthroughStatus {
        let h = lock(&self.core.handles);
        PassthroughStatus {
            active: h.passthrough(),
            reason: h.passthrough_error().map(str::to_owned),
        }
    }
}

impl Core {
    fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// The backing path of `ino` for hooks: its current path, or the last
    /// one it had.
    fn hook_path(&self, ino: u64) -> PathBuf {
        let rel = lock(&self.inodes).path_or_last(ino).map(|(p, _)| p);
        self.abs(&rel.unwrap_or_default())
    }

    /// The current backing path of `ino`.
    fn path(&self, ino: u64) -> Result<PathBuf, Errno> {
        let rel = lock(&self.inodes).path(ino)?;
        Ok(self.abs(&rel))
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.opts.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Answers waiters granted by a release: the hook first, then the reply.
    fn answer_woken(&self, woken: Vec<GrantedWaiter<ReplyEmpty>>) {
        for g in woken {
            let w = g.waiter;
            let path = self.hook_path(w.ino);
            let lock = Lock {
                owner: w.owner,
                range: w.range,
                kind: w.kind,
                pid: w.pid,
            };
            self.hooks.lock_granted(&crate::hooks::LockGranted {
                path: &path,
                ino: w.ino,
                lock,
                replaced: &g.replaced,
                waited: true,
            });
            w.reply.ok();
        }
    }

    /// Gives a new file to the caller when the daemon runs as root.
    fn chown_to_caller(&self, path: &Path, caller: Caller) -> Result<(), Errno> {
        if self.euid != 0 || (caller.uid == 0 && caller.gid == 0) {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, Some(caller.uid), Some(caller.gid)).map_err(Errno::from)
    }
}

fn backing_key(m: &fs::Metadata) -> BackingKey {
    (m.dev(), m.ino())
}

fn nix_errno(e: nix::Error) -> Errno {
    Errno::from_i32(e as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::NoHooks;

    #[test]
    fn a_directory_needs_no_sync_only_while_no_name_changed_since_a_syncfs() {
        let dir = tempfile::tempdir().unwrap();
        let fs = PassthroughFs::new(dir.path(), PassthroughOptions::default(), NoHooks).unwrap();
        let core = &fs.core;
        assert!(
            !core.names_synced(),
            "nothing is known to be synced at first"
        );
        let root = fs::File::open(dir.path()).unwrap();
        core.syncfs(&root).unwrap();
        assert!(core.names_synced());
        {
            let _change = core.name_change();
            // In flight: a syncfs now may miss it, so it must not count.
            core.syncfs(&root).unwrap();
        }
        assert!(
            !core.names_synced(),
            "a change that ended after the syncfs began"
        );
        core.syncfs(&root).unwrap();
        assert!(core.names_synced());
    }
}
