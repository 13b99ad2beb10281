//! Open file and directory handles, and the kernel passthrough backing files.
//!
//! The kernel allows one backing file per inode and insists that while any
//! passthrough open of an inode is live, every new open of it is passthrough
//! too, with that backing file, and that no page-cache open is live meanwhile
//! (else open(2) fails with EIO). So each inode has at most one
//! [`BackingId`], shared through `Arc` by every handle of the inode and
//! dropped (closing it in the kernel) with the last one, as fuser's
//! `examples/passthrough.rs` does; an inode's mode is decided under this
//! table's mutex, so two concurrent first opens cannot register two backing
//! files.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, Weak};

use fuser::{BackingId, FileType, FopenFlags};

use crate::hooks::{OpenMode, ServedAs};
use crate::sync::lock;

/// One open file description, as the daemon holds it.
#[derive(Debug)]
pub struct OpenFile {
    /// FUSE inode.
    pub ino: u64,
    /// The backing file, opened by the daemon with the caller's access mode.
    pub file: File,
    /// What the hooks asked for.
    pub requested: OpenMode,
    /// How the kernel serves it.
    pub served: ServedAs,
    backing: Option<Arc<BackingId>>,
    /// Owners that took locks through this handle (OFD locks must go when it
    /// is released: no request names their owner at close).
    lock_owners: Mutex<Vec<u64>>,
}

impl OpenFile {
    /// The kernel backing file, for passthrough opens.
    pub fn backing(&self) -> Option<&BackingId> {
        self.backing.as_deref()
    }

    /// The `FOPEN_*` flags of the open reply.
    pub fn fopen_flags(&self) -> FopenFlags {
        match self.served {
            ServedAs::Passthrough => FopenFlags::empty(),
            ServedAs::PassthroughDirectIo | ServedAs::DirectIo => FopenFlags::FOPEN_DIRECT_IO,
            ServedAs::Cached { keep_cache: true } => FopenFlags::FOPEN_KEEP_CACHE,
            ServedAs::Cached { keep_cache: false } => FopenFlags::empty(),
        }
    }

    /// Whether writes through this handle go to [`crate::Hooks::before_write`].
    pub fn is_routed(&self) -> bool {
        self.requested == OpenMode::Routed
    }

    /// Records that `owner` set a lock through this handle.
    pub fn note_lock_owner(&self, owner: u64) {
        let mut owners = lock(&self.lock_owners);
        if !owners.contains(&owner) {
            owners.push(owner);
        }
    }

    /// The owners that set locks through this handle.
    pub fn lock_owners(&self) -> Vec<u64> {
        lock(&self.lock_owners).clone()
    }
}

/// A directory listing taken at opendir, so offsets stay stable while
/// entries are removed during the listing (`rm -r`).
#[derive(Debug)]
pub struct DirHandle {
    /// FUSE inode of the directory.
    pub ino: u64,
    /// Entries, `.` and `..` first; the readdir offset of entry `i` is `i + 1`.
    /// Read at the first `readdir`, not at `opendir`: SQLite opens the
    /// directory at every rollback-journal commit only to fsync it.
    pub entries: std::sync::OnceLock<Vec<DirEntry>>,
}

/// One directory entry.
#[derive(Debug)]
pub struct DirEntry {
    /// Its name.
    pub name: OsString,
    /// Its type.
    pub kind: FileType,
    /// The inode number shown by readdir (informational only: without
    /// readdirplus the kernel looks every name up).
    pub ino: u64,
}

#[derive(Debug, Default)]
struct InodeOpens {
    backing: Weak<BackingId>,
    /// Live opens that are not passthrough (page cache or plain direct io):
    /// while any is live, a passthrough open of the inode would fail.
    non_passthrough: usize,
    opens: usize,
}

/// All open handles of a mount.
#[derive(Debug)]
pub struct HandleTable {
    files: HashMap<u64, Arc<OpenFile>>,
    dirs: HashMap<u64, Arc<DirHandle>>,
    inodes: HashMap<u64, InodeOpens>,
    next_fh: u64,
    passthrough: bool,
    passthrough_error: Option<String>,
}

impl HandleTable {
    /// An empty table; `passthrough` says whether kernel passthrough may be
    /// used (it is switched off for good the first time registering a backing
    /// file fails).
    pub fn new(passthrough: bool) -> HandleTable {
        HandleTable {
            files: HashMap::new(),
            dirs: HashMap::new(),
            inodes: HashMap::new(),
            next_fh: 1,
            passthrough,
            passthrough_error: None,
        }
    }

    /// Whether new inodes can get passthrough opens.
    pub fn passthrough(&self) -> bool {
        self.passthrough
    }

    /// Why passthrough was switched off, if it was.
    pub fn passthrough_error(&self) -> Option<&str> {
        self.passthrough_error.as_deref()
    }

    /// Switches passthrough off (the kernel did not grant it).
    pub fn disable_passthrough(&mut self, why: String) {
        self.passthrough = false;
        self.passthrough_error.get_or_insert(why);
    }

    /// Registers an open of `ino` asked to be served as `requested`;
    /// `make_backing` registers `file` as the inode's kernel backing file
    /// when the inode has none yet. Returns the new handle.
    pub fn open(
        &mut self,
        ino: u64,
        file: File,
        requested: OpenMode,
        make_backing: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> (u64, Arc<OpenFile>) {
        let (served, backing) = self.decide(ino, &file, requested, make_backing);
        let fh = self.next_fh;
        self.next_fh += 1;
        let opens = self.inodes.entry(ino).or_default();
        opens.opens += 1;
        if !served.is_passthrough() {
            opens.non_passthrough += 1;
        }
        let handle = Arc::new(OpenFile {
            ino,
            file,
            requested,
            served,
            backing,
            lock_owners: Mutex::new(Vec::new()),
        });
        self.files.insert(fh, Arc::clone(&handle));
        (fh, handle)
    }

    fn decide(
        &mut self,
        ino: u64,
        file: &File,
        requested: OpenMode,
        make_backing: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> (ServedAs, Option<Arc<BackingId>>) {
        let opens = self.inodes.entry(ino).or_default();
        let as_passthrough = |backing| match requested {
            OpenMode::Routed => (ServedAs::PassthroughDirectIo, Some(backing)),
            _ => (ServedAs::Passthrough, Some(backing)),
        };
        if let Some(backing) = opens.backing.upgrade() {
            return as_passthrough(backing);
        }
        let fallback = match requested {
            OpenMode::Passthrough => ServedAs::Cached { keep_cache: false },
            OpenMode::Routed => ServedAs::DirectIo,
            OpenMode::Cached { keep_cache } => return (ServedAs::Cached { keep_cache }, None),
        };
        if !self.passthrough || opens.non_passthrough > 0 {
            return (fallback, None);
        }
        match make_backing(file) {
            Ok(id) => {
                let id = Arc::new(id);
                opens.backing = Arc::downgrade(&id);
                as_passthrough(id)
            }
            Err(e) => {
                self.disable_passthrough(format!("registering a backing file failed: {e}"));
                (fallback, None)
            }
        }
    }

    /// The open file behind `fh`.
    pub fn get(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.files.get(&fh).cloned()
    }

    /// Any open handle of `ino` (to reach a file that has no name any more).
    pub fn any_for_inode(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.files.values().find(|f| f.ino == ino).cloned()
    }

    /// Whether a handle of `ino` other than `fh` saw `owner` set locks.
    pub fn owner_elsewhere(&self, ino: u64, fh: u64, owner: u64) -> bool {
        self.files
            .iter()
            .any(|(&h, f)| h != fh && f.ino == ino && f.lock_owners().contains(&owner))
    }

    /// Forgets `fh`; its backing file reference goes with it.
    pub fn release(&mut self, fh: u64) -> Option<Arc<OpenFile>> {
        let handle = self.files.remove(&fh)?;
        if let Some(opens) = self.inodes.get_mut(&handle.ino) {
            opens.opens = opens.opens.saturating_sub(1);
            if !handle.served.is_passthrough() {
                opens.non_passthrough = opens.non_passthrough.saturating_sub(1);
            }
            if opens.opens == 0 {
                self.inodes.remove(&handle.ino);
            }
        }
        Some(handle)
    }

    /// Registers a directory listing; returns its handle.
    pub fn add_dir(&mut self, dir: DirHandle) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.dirs.insert(fh, Arc::new(dir));
        fh
    }

    /// The listing behind `fh`.
    pub fn dir(&self, fh: u64) -> Option<Arc<DirHandle>> {
        self.dirs.get(&fh).cloned()
    }

    /// Forgets a directory handle.
    pub fn release_dir(&mut self, fh: u64) {
        self.dirs.remove(&fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> File {
        tempfile::tempfile().expect("temp file")
    }

    #[test]
    fn without_passthrough_modes_fall_back_and_never_need_a_backing_file() {
        let mut t = HandleTable::new(false);
        let no_backing =
            |_: &File| -> io::Result<BackingId> { panic!("no backing without passthrough") };
        let (a, fa) = t.open(2, file(), OpenMode::Passthrough, no_backing);
        let (_, fb) = t.open(2, file(), OpenMode::Routed, no_backing);
        let (_, fc) = t.open(3, file(), OpenMode::Cached { keep_cache: true }, no_backing);
        assert_eq!(fa.served, ServedAs::Cached { keep_cache: false });
        assert_eq!(fb.served, ServedAs::DirectIo);
        assert!(fb.is_routed() && !fa.is_routed());
        assert_eq!(fc.fopen_flags(), FopenFlags::FOPEN_KEEP_CACHE);
        assert_eq!(fb.fopen_flags(), FopenFlags::FOPEN_DIRECT_IO);
        assert!(t.get(a).is_some());
        fa.note_lock_owner(7);
        assert!(!t.owner_elsewhere(2, a, 7));
        fb.note_lock_owner(7);
        assert!(t.owner_elsewhere(2, a, 7));
        assert!(t.release(a).is_some());
        assert!(t.release(a).is_none());
        assert_eq!(
            t.any_for_inode(2).map(|f| f.served),
            Some(ServedAs::DirectIo)
        );
    }

    #[test]
    fn a_failed_backing_registration_switches_passthrough_off() {
        let mut t = HandleTable::new(true);
        let (_, f) = t.open(2, file(), OpenMode::Routed, |_| {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        });
        assert_eq!(f.served, ServedAs::DirectIo);
        assert!(!t.passthrough());
        assert!(t
            .passthrough_error()
            .is_some_and(|e| e.contains("backing file")));
    }
}
