//! The read-only replica filesystem: one directory holding, for each
//! database, `<name>` (the database), `<name>-pos` (TXID and checksum) and
//! `<name>-lag` (seconds behind). The bytes come from a [`ReplicaSource`]
//! the daemon implements; this module knows nothing of S3 or LTX.
//!
//! Design, and why:
//! - **Reads** use the kernel page cache with `FOPEN_KEEP_CACHE`: once a page
//!   has been read, reading it again never reaches the daemon, as for any
//!   file in the page cache. The daemon invalidates exactly what a step
//!   changed ([`StepLock`]); `FUSE_EXPLICIT_INVAL_DATA` keeps the kernel from
//!   dropping pages on its own. (Kernel passthrough would be as fast, but
//!   readers must see a patched header, which a passthrough file cannot.)
//! - **Locks** stay in the kernel (no `FUSE_POSIX_LOCKS`): SQLite takes four
//!   lock calls per read transaction, and sending each to the daemon
//!   measured 4000 point lookups/s against 67000 on a local file (and on
//!   this crate's `PassthroughFs`, which keeps locks in the daemon); with
//!   kernel locks the replica matches the local file. The daemon still takes
//!   part in SQLite's protocol: [`StepLock`] holds an open file description
//!   of the database through the mount and takes PENDING and then the SHARED
//!   range on it with OFD locks, which conflict with every reader's locks.
//! - **Negative lookups are cached** (`-journal`, `-wal`: SQLite looks for
//!   both at every read transaction): the names never appear.
//! - **Read-only everywhere**: every change fails with `EROFS` (opens for
//!   writing, create, unlink, rename, truncate, xattrs). The one writable
//!   open is the daemon's own lock descriptor, armed by [`ReplicaHandle`]
//!   for one open by a thread of this process; its writes fail too.

mod fs_impl;
mod step_lock;

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{Errno, FileAttr, FileType, INodeNo};

use crate::mount::{mount, MountConfig, MountError, Mounted};

pub use step_lock::{ExclusiveError, Invalidate, StepLock};

/// One database as the daemon serves it.
pub trait ReplicaSource: Send + Sync + 'static {
    /// Its file name in the mount.
    fn name(&self) -> &str;
    /// The database's size in bytes.
    fn size(&self) -> u64;
    /// Reads from `offset`; short only at the end of the database.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// The contents of `<name>-pos`.
    fn pos(&self) -> String;
    /// The contents of `<name>-lag`.
    fn lag(&self) -> String;
    /// When the database last changed.
    fn modified(&self) -> SystemTime;
}

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Root,
    Db(usize),
    Pos(usize),
    Lag(usize),
}

const ROOT: u64 = 1;

impl Node {
    fn of(ino: u64) -> Option<Node> {
        if ino == ROOT {
            return Some(Node::Root);
        }
        let i = usize::try_from(ino.checked_sub(2)? / 3).ok()?;
        Some(match (ino - 2) % 3 {
            0 => Node::Db(i),
            1 => Node::Pos(i),
            _ => Node::Lag(i),
        })
    }

    fn ino(self) -> u64 {
        match self {
            Node::Root => ROOT,
            Node::Db(i) => 2 + 3 * i as u64,
            Node::Pos(i) => 3 + 3 * i as u64,
            Node::Lag(i) => 4 + 3 * i as u64,
        }
    }

    fn db(self) -> Option<usize> {
        match self {
            Node::Root => None,
            Node::Db(i) | Node::Pos(i) | Node::Lag(i) => Some(i),
        }
    }
}

/// How long the kernel keeps names and attributes: names never change, and
/// a step invalidates the database's attributes with its pages.
const TTL: Duration = Duration::from_secs(60);

/// State shared by the filesystem and its [`ReplicaHandle`].
#[derive(Debug)]
struct Shared {
    /// Per database: one writable open (the daemon's lock descriptor) is
    /// allowed.
    lock_open: Vec<AtomicBool>,
}

/// The filesystem; mount it with [`mount_replica`].
pub struct ReplicaFs {
    dbs: Vec<Arc<dyn ReplicaSource>>,
    shared: Arc<Shared>,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
}

impl std::fmt::Debug for ReplicaFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.dbs.iter().map(|d| d.name()).collect();
        f.debug_struct("ReplicaFs").field("dbs", &names).finish()
    }
}

/// For the daemon: the mounted filesystem's databases and their lock
/// descriptors.
#[derive(Clone)]
pub struct ReplicaHandle {
    shared: Arc<Shared>,
    names: Vec<String>,
}

impl std::fmt::Debug for ReplicaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaHandle")
            .field("dbs", &self.names)
            .finish()
    }
}

impl ReplicaFs {
    /// A filesystem serving `dbs` (names must be distinct, non-empty, free
    /// of `/`, and not end in `-pos` or `-lag` of another).
    pub fn new(dbs: Vec<Arc<dyn ReplicaSource>>) -> io::Result<ReplicaFs> {
        for (i, d) in dbs.iter().enumerate() {
            let n = d.name();
            if n.is_empty() || n.contains('/') || n == "." || n == ".." {
                return Err(io::Error::other(format!("{n:?} cannot be a file name")));
            }
            if dbs[..i].iter().any(|o| o.name() == n) {
                return Err(io::Error::other(format!("database {n:?} is served twice")));
            }
        }
        Ok(ReplicaFs {
            shared: Arc::new(Shared {
                lock_open: dbs.iter().map(|_| AtomicBool::new(false)).collect(),
            }),
            dbs,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mounted_at: SystemTime::now(),
        })
    }

    pub fn handle(&self) -> ReplicaHandle {
        ReplicaHandle {
            shared: self.shared.clone(),
            names: self.dbs.iter().map(|d| d.name().to_string()).collect(),
        }
    }

    fn node(&self, ino: u64) -> Result<Node, Errno> {
        let n = Node::of(ino).ok_or(Errno::ENOENT)?;
        match n.db() {
            Some(i) if i >= self.dbs.len() => Err(Errno::ENOENT),
            _ => Ok(n),
        }
    }

    fn lookup_name(&self, parent: u64, name: &OsStr) -> Option<Node> {
        if parent != ROOT {
            return None;
        }
        let name = name.to_str()?;
        self.dbs.iter().enumerate().find_map(|(i, d)| {
            let n = d.name();
            if name == n {
                Some(Node::Db(i))
            } else if name.strip_prefix(n) == Some("-pos") {
                Some(Node::Pos(i))
            } else if name.strip_prefix(n) == Some("-lag") {
                Some(Node::Lag(i))
            } else {
                None
            }
        })
    }

    fn attr(&self, node: Node) -> FileAttr {
        let (kind, perm, size, mtime) = match node {
            Node::Root => (FileType::Directory, 0o555, 0, self.mounted_at),
            Node::Db(i) => (
                FileType::RegularFile,
                0o444,
                self.dbs[i].size(),
                self.dbs[i].modified(),
            ),
            Node::Pos(i) => (
                FileType::RegularFile,
                0o444,
                self.dbs[i].pos().len() as u64,
                SystemTime::now(),
            ),
            Node::Lag(i) => (
                FileType::RegularFile,
                0o444,
                self.dbs[i].lag().len() as u64,
                SystemTime::now(),
            ),
        };
        FileAttr {
            ino: INodeNo(node.ino()),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: self.mounted_at,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The attribute TTL: the status files change all the time.
    fn ttl(node: Node) -> Duration {
        match node {
            Node::Pos(_) | Node::Lag(_) => Duration::ZERO,
            _ => TTL,
        }
    }

    /// A writable open is the daemon's lock descriptor, or refused.
    fn check_writable(&self, node: Node, tid: u32) -> Result<(), Errno> {
        let Node::Db(i) = node else {
            return Err(Errno::EROFS);
        };
        let own_thread = Path::new("/proc/self/task").join(tid.to_string()).exists();
        if own_thread && self.shared.lock_open[i].swap(false, Ordering::AcqRel) {
            Ok(())
        } else {
            Err(Errno::EROFS)
        }
    }

    fn read(&self, node: Node, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let text = |s: String| {
            let b = s.into_bytes();
            let start = (offset as usize).min(b.len());
            let end = start.saturating_add(size as usize).min(b.len());
            b[start..end].to_vec()
        };
        match node {
            Node::Db(i) => {
                let d = &self.dbs[i];
                let n = (size as u64).min(d.size().saturating_sub(offset)) as usize;
                let mut buf = vec![0u8; n];
                let got = d.read_at(offset, &mut buf).map_err(|_| Errno::EIO)?;
                buf.truncate(got);
                Ok(buf)
            }
            Node::Pos(i) => Ok(text(self.dbs[i].pos())),
            Node::Lag(i) => Ok(text(self.dbs[i].lag())),
            Node::Root => Err(Errno::EISDIR),
        }
    }
}

impl ReplicaHandle {
    /// Opens the lock descriptor of database `db` through `mounted` (call it
    /// from a thread that is not serving the mount).
    pub fn step_lock(&self, mounted: &Mounted, db: usize) -> io::Result<StepLock> {
        let name = self
            .names
            .get(db)
            .ok_or_else(|| io::Error::other(format!("no database number {db}")))?;
        let path = mounted.mountpoint().join(name);
        self.shared.lock_open[db].store(true, Ordering::Release);
        let opened = std::fs::File::options().read(true).write(true).open(&path);
        self.shared.lock_open[db].store(false, Ordering::Release);
        let file = opened
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        Ok(StepLock::new(
            file,
            Node::Db(db).ino(),
            mounted.notifier(),
            name.clone(),
        ))
    }
}

/// Mounts a [`ReplicaFs`] of `dbs` at `mountpoint`. `cfg.read_only` and
/// `cfg.default_permissions` are overridden: every refusal is this
/// filesystem's own `EROFS` (a read-only mount would refuse the daemon's
/// lock descriptor, and permission bits would turn `EROFS` into `EACCES`).
pub fn mount_replica(
    dbs: Vec<Arc<dyn ReplicaSource>>,
    mountpoint: &Path,
    cfg: &MountConfig,
) -> Result<(Mounted, ReplicaHandle), MountError> {
    let fs = ReplicaFs::new(dbs).map_err(|source| MountError::Io {
        what: "serving the replica".into(),
        source,
    })?;
    let handle = fs.handle();
    let mut cfg = cfg.clone();
    cfg.read_only = false;
    cfg.default_permissions = false;
    Ok((mount(fs, mountpoint, &cfg)?, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_round_trip() {
        for n in [
            Node::Root,
            Node::Db(0),
            Node::Pos(0),
            Node::Lag(0),
            Node::Db(7),
            Node::Lag(7),
        ] {
            assert_eq!(Node::of(n.ino()), Some(n));
        }
        assert_eq!(Node::of(0), None);
    }
}
