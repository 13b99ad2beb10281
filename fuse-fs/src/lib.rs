//! The FUSE foundation both Sluice filesystems share: the primary passthrough
//! that captures transactions and the read-only replica mount.
//!
//! - [`locks`]: the POSIX byte-range lock table and the queue of blocking
//!   requests (pure logic, no FUSE types).
//! - [`lock_service`]: that table shared by a mount's threads, with a timer
//!   for waiters and per-owner gates.
//! - [`inodes`], [`handles`], [`attr`]: the passthrough plumbing (inode
//!   numbers and paths, open handles and kernel backing files, attributes).
//! - [`PassthroughFs`]: a passthrough filesystem over a data directory,
//!   steered by [`Hooks`].
//! - [`mount()`](mount::mount) and friends: mounting, unmounting, stale
//!   mounts, and the errors that say what to fix.
//! - [`replica`]: the read-only replica filesystem, served from a
//!   [`ReplicaSource`] the daemon implements.
//!
//! This crate knows nothing of S3, LTX shipping or the daemon.

pub mod attr;
pub mod handles;
pub mod hooks;
pub mod inodes;
pub mod lock_service;
pub mod locks;
pub mod mount;
mod passthrough;
pub mod primary;
pub mod replica;
mod sync;

pub use hooks::{
    Caller, CloseEvent, Errno, Hooks, LockAttempt, LockGranted, LocksReleased, NoHooks, OpenEvent,
    OpenMode, ReleaseCause, ServedAs, TruncateEvent, WriteEvent,
};
pub use locks::{ByteRange, Lock, LockKind, LockTable, EOF};
pub use mount::{
    check_data_dir, check_fuse, check_mountpoint, clear_stale_mount, mount, mount_passthrough,
    mount_state, unmount_path, MountConfig, MountError, MountState, Mounted,
};
pub use passthrough::{
    FsHandle, PassthroughFs, PassthroughOptions, PassthroughStatus, FS_OWNER_BASE,
};
pub use replica::{mount_replica, ReplicaFs, ReplicaHandle, ReplicaSource, StepLock};
