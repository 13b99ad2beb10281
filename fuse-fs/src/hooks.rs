//! The hooks through which a filesystem built on [`crate::PassthroughFs`]
//! sees and steers operations.
//!
//! # Contract
//!
//! - Every hook runs on the FUSE worker thread serving the request, **before
//!   the request is answered**. A `before_*` hook, `opened`, `check_lock`,
//!   `locks_released` or `after_fsync` returning `Err(errno)` fails the
//!   request with that errno, and (for `before_*`, `check_lock` and an
//!   `F_UNLCK`'s `locks_released`) the operation is not performed.
//! - Hooks run with **no internal mutex held**: not the inode table, not the
//!   handle table, not the lock table. They may take time (fsync, read and
//!   write other files of the data directory, consult
//!   [`crate::FsHandle`]), and other requests, including lock requests of other
//!   owners on the same file, are served meanwhile.
//! - What *is* held while a lock hook runs: (1) the locks being released are
//!   still in the lock table, so other owners asking for a conflicting lock
//!   get `EAGAIN` (or wait) until the hook returns and the release happens;
//!   (2) a per-(inode, owner) gate, so the same owner's next lock request on
//!   the same file waits for this one to finish.
//! - What the kernel holds while the request is in flight (the parent
//!   directory's lock for unlink/rename/create, the inode's lock for write and
//!   truncate) is also held. So a hook must **never access the mount itself**:
//!   it works on the backing files (the paths it is given are backing paths,
//!   inside the data directory).
//! - Paths are absolute backing paths. For a file unlinked while open, it is
//!   the path the file had when it lost its last name.
//! - The filesystem has one instance of the hooks and calls it from several
//!   threads at once.

use std::path::Path;

pub use fuser::Errno;

use crate::locks::{ByteRange, Lock, LockKind};

/// How the kernel should serve an open file; chosen per open by
/// [`Hooks::open_mode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Kernel passthrough (`FOPEN_PASSTHROUGH`): read(2), write(2) and mmap
    /// go straight to the backing file; the daemon sees neither. Fastest.
    Passthrough,
    /// Every read(2) and write(2) reaches the daemon (and
    /// [`Hooks::before_write`]), while mmap still maps the backing file:
    /// `FOPEN_DIRECT_IO | FOPEN_PASSTHROUGH`. Because it is a passthrough open
    /// with the same backing file, it mixes freely with `Passthrough` opens of
    /// the same inode (the kernel insists all opens of an inode agree on
    /// passthrough).
    Routed,
    /// The kernel page cache, no passthrough; `keep_cache` keeps cached pages
    /// across opens (`FOPEN_KEEP_CACHE`; the owner then invalidates them
    /// explicitly). Served as `Passthrough` while another open of the inode
    /// is a passthrough open.
    Cached {
        /// `FOPEN_KEEP_CACHE`.
        keep_cache: bool,
    },
}

/// How an open is actually served. It differs from the requested
/// [`OpenMode`] only when kernel passthrough is unavailable (no
/// CAP_SYS_ADMIN, kernel older than 6.9, a backing filesystem stacked too
/// deep) or an inode's other opens force it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServedAs {
    /// `FOPEN_PASSTHROUGH`.
    Passthrough,
    /// `FOPEN_PASSTHROUGH | FOPEN_DIRECT_IO`.
    PassthroughDirectIo,
    /// Page cache; the flag is `FOPEN_KEEP_CACHE`.
    Cached {
        /// `FOPEN_KEEP_CACHE`.
        keep_cache: bool,
    },
    /// `FOPEN_DIRECT_IO` without passthrough: the fallback for `Routed`
    /// (shared mmap then needs `FUSE_DIRECT_IO_ALLOW_MMAP`, which the
    /// filesystem negotiates when the kernel offers it).
    DirectIo,
}

impl ServedAs {
    /// Whether the open uses a kernel passthrough backing file.
    pub fn is_passthrough(self) -> bool {
        matches!(self, ServedAs::Passthrough | ServedAs::PassthroughDirectIo)
    }

    /// Whether every read(2) and write(2) reaches the daemon.
    pub fn is_direct_io(self) -> bool {
        matches!(self, ServedAs::PassthroughDirectIo | ServedAs::DirectIo)
    }
}

/// Who made a file durable in [`Hooks::before_fsync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncedBy {
    /// Nobody yet: the filesystem fsyncs the backing file.
    Nobody,
    /// The hook did (for example with one syncfs(2) that also covered files
    /// of its own); the backing fsync is skipped.
    Hook,
    /// Nobody yet, and the filesystem should sync the whole backing
    /// filesystem (syncfs(2)) rather than the file: that also makes every
    /// name change durable, so a later fsync of a directory with no name
    /// change since needs no sync of its own.
    Filesystem,
}

/// Who made a request: ids from the FUSE request header (`pid` is the
/// calling thread's id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// Thread id of the caller.
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
}

/// A file was opened (or created and opened).
#[derive(Debug)]
#[non_exhaustive]
pub struct OpenEvent<'a> {
    /// Backing path.
    pub path: &'a Path,
    /// FUSE inode.
    pub ino: u64,
    /// The new file handle.
    pub fh: u64,
    /// open(2) flags (`O_ACCMODE`, `O_APPEND`, ...; the kernel strips
    /// `O_CREAT`, `O_EXCL` and `O_TRUNC` from plain opens).
    pub flags: i32,
    /// Whether this open created the file.
    pub created: bool,
    /// What the hook asked for.
    pub requested: OpenMode,
    /// How it is served.
    pub served: ServedAs,
    /// The caller.
    pub caller: Caller,
}

/// The last reference to an open file description went (`release`).
#[derive(Debug)]
#[non_exhaustive]
pub struct CloseEvent<'a> {
    /// Backing path (the last one, if the file was unlinked).
    pub path: &'a Path,
    /// FUSE inode.
    pub ino: u64,
    /// The released handle.
    pub fh: u64,
    /// Whether the file still has a name.
    pub linked: bool,
}

/// Why locks are being released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseCause {
    /// `F_UNLCK` of a range (or a downgrade is not this: see
    /// [`LockGranted::replaced`]).
    Unlock,
    /// The owner closed a descriptor of the file (`flush`; also what process
    /// exit and SIGKILL do): POSIX drops all its locks on the file.
    Close,
    /// The last descriptor of an open file description went (`release`): its
    /// open-file-description (OFD) locks go.
    ReleaseOfd,
}

/// An owner is releasing locks. The locks are still held while the hook
/// runs; on `Ok` they are released.
#[derive(Debug)]
#[non_exhaustive]
pub struct LocksReleased<'a> {
    /// Backing path.
    pub path: &'a Path,
    /// FUSE inode.
    pub ino: u64,
    /// The releasing owner.
    pub owner: u64,
    /// Why.
    pub cause: ReleaseCause,
    /// Exactly what goes: pieces inside the unlocked range, with the kind
    /// they had, sorted by start. Never empty.
    pub released: &'a [Lock],
}

/// An owner asks for a lock (`F_SETLK`, or `F_SETLKW` when `blocking`).
#[derive(Debug)]
#[non_exhaustive]
pub struct LockAttempt<'a> {
    /// Backing path.
    pub path: &'a Path,
    /// FUSE inode.
    pub ino: u64,
    /// The requesting owner.
    pub owner: u64,
    /// The bytes.
    pub range: ByteRange,
    /// The kind.
    pub kind: LockKind,
    /// The requesting process.
    pub pid: u32,
    /// `F_SETLKW`.
    pub blocking: bool,
}

/// A lock was granted (now, or to a waiter after others released theirs).
#[derive(Debug)]
#[non_exhaustive]
pub struct LockGranted<'a> {
    /// Backing path.
    pub path: &'a Path,
    /// FUSE inode.
    pub ino: u64,
    /// The lock as requested (the table may hold it merged with neighbours).
    pub lock: Lock,
    /// The owner's previous locks inside the range that this one replaced: a
    /// write lock here and `lock.kind == Read` is a downgrade.
    pub replaced: &'a [Lock],
    /// Whether it was an `F_SETLKW` that had to wait.
    pub waited: bool,
}

/// A write to a routed file ([`OpenMode::Routed`]), before it reaches the
/// backing file.
#[derive(Debug)]
#[non_exhaustive]
pub struct WriteEvent<'a> {
    /// Backing path.
    pub path: &'a Path,
    /// FUSE inode.
    pub ino: u64,
    /// The handle written through.
    pub fh: u64,
    /// File offset.
    pub offset: u64,
    /// The bytes.
    pub data: &'a [u8],
    /// The lock owner, when the kernel sends it (direct-io writes do).
    pub lock_owner: Option<u64>,
    /// The backing file the write goes to (hooks may read it).
    pub file: &'a std::fs::File,
}

/// A file's size is about to be set: truncate(2)/ftruncate(2), or an open
/// with `O_TRUNC` of an existing file.
#[derive(Debug)]
#[non_exhaustive]
pub struct TruncateEvent<'a> {
    /// Backing path.
    pub path: &'a Path,
    /// FUSE inode.
    pub ino: u64,
    /// The new size.
    pub size: u64,
}

/// The interception points of a filesystem built on this layer. Every method
/// has a default that lets the operation through; see the module docs for
/// what runs under which lock.
pub trait Hooks: Send + Sync + 'static {
    /// How opens of `path` are served. Called for every open and create.
    fn open_mode(&self, _path: &Path) -> OpenMode {
        OpenMode::Passthrough
    }

    /// A file was opened; `Err` fails the open (a file this open created
    /// stays on disk).
    fn opened(&self, _ev: &OpenEvent<'_>) -> Result<(), Errno> {
        Ok(())
    }

    /// An open file description was released. Cannot fail.
    fn closed(&self, _ev: &CloseEvent<'_>) {}

    /// Before a lock is attempted; `Err` refuses it (no conflict check is
    /// made, nothing changes). Not called for unlocks.
    fn check_lock(&self, _ev: &LockAttempt<'_>) -> Result<(), Errno> {
        Ok(())
    }

    /// A lock was granted, before the requester hears it. Cannot fail: the
    /// lock is already in the table (refuse in `check_lock`).
    fn lock_granted(&self, _ev: &LockGranted<'_>) {}

    /// An owner is releasing locks (which it still holds while this runs).
    /// For [`ReleaseCause::Unlock`], `Err` fails the `F_UNLCK` and the locks
    /// stay held. For `Close` and `ReleaseOfd` the locks are dropped anyway
    /// (the kernel never asks again, and a dead process's locks must go); the
    /// error is returned to close(2).
    fn locks_released(&self, _ev: &LocksReleased<'_>) -> Result<(), Errno> {
        Ok(())
    }

    /// A write, truncation or removal of `path` (an unlink, or a rename
    /// over it) that a `before_*` hook let through was done, before the
    /// requester hears it. Not called when the operation failed. Cannot fail.
    fn changed(&self, _path: &Path) {}

    /// Before a write to a routed file; `Err` fails the write(2).
    fn before_write(&self, _ev: &WriteEvent<'_>) -> Result<(), Errno> {
        Ok(())
    }

    /// Before a file's size is set; `Err` fails it.
    fn before_truncate(&self, _ev: &TruncateEvent<'_>) -> Result<(), Errno> {
        Ok(())
    }

    /// Before a file name is removed: unlink(2), or a rename that replaces
    /// an existing file. `Err` fails it.
    fn before_unlink(&self, _path: &Path) -> Result<(), Errno> {
        Ok(())
    }

    /// Before a rename (after [`Hooks::before_unlink`] of a replaced target).
    fn before_rename(&self, _from: &Path, _to: &Path) -> Result<(), Errno> {
        Ok(())
    }

    /// Before a new name is made: create, mknod, mkdir, symlink, link.
    fn before_create(&self, _path: &Path) -> Result<(), Errno> {
        Ok(())
    }

    /// Before fsync(2)/fdatasync(2) of a file reaches the backing file.
    /// Returning [`SyncedBy::Hook`] says the hook made the file durable
    /// itself, and the backing fsync is skipped; `Err` fails the fsync.
    fn before_fsync(&self, _path: &Path, _datasync: bool) -> Result<SyncedBy, Errno> {
        Ok(SyncedBy::Nobody)
    }

    /// After fsync(2)/fdatasync(2) of a file succeeded on the backing file,
    /// before the caller hears it; `Err` fails the fsync.
    fn after_fsync(&self, _path: &Path, _datasync: bool) -> Result<(), Errno> {
        Ok(())
    }
}

/// Hooks that intercept nothing: a plain passthrough filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}
