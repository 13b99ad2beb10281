//! Namespace operations: lookup, create/remove names, rename, directories.

use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fuser::{Errno, FileAttr, FileType, RenameFlags};
use nix::sys::stat::{Mode, SFlag};

use super::{backing_key, nix_errno, Core};
use crate::attr::file_attr;
use crate::handles::{DirEntry, DirHandle};
use crate::hooks::Caller;
use crate::inodes::ROOT_INO;
use crate::sync::lock;

/// `statfs` numbers: blocks, bfree, bavail, files, ffree, bsize, namelen,
/// frsize.
pub(super) type StatFs = (u64, u64, u64, u64, u64, u32, u32, u32);

impl Core {
    pub(super) fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let rel = lock(&self.inodes).child_path(parent, name)?;
        let meta = fs::symlink_metadata(self.abs(&rel))?;
        self.register(parent, name, &meta)
    }

    /// Records a name the kernel will hold a lookup on; returns its attributes.
    fn register(&self, parent: u64, name: &OsStr, meta: &Metadata) -> Result<FileAttr, Errno> {
        let ino = lock(&self.inodes).lookup(parent, name, backing_key(meta));
        Ok(file_attr(ino, meta))
    }

    pub(super) fn forget(&self, ino: u64, n: u64) {
        if lock(&self.inodes).forget(ino, n) {
            self.locks.remove_inode(ino);
        }
    }

    pub(super) fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let target = fs::read_link(self.path(ino)?)?;
        Ok(target.as_os_str().as_bytes().to_vec())
    }

    /// The backing path for a new name, after the hooks allowed it.
    fn new_name(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        self.writable()?;
        let path = self.abs(&lock(&self.inodes).child_path(parent, name)?);
        self.hooks.before_create(&path)?;
        Ok(path)
    }

    /// Sets a new file's mode to exactly `perm` (the daemon's own umask must
    /// not apply: the kernel already applied the caller's) and its owner to
    /// the caller.
    pub(super) fn finish_new(
        &self,
        path: &Path,
        meta: &Metadata,
        perm: u32,
        caller: Caller,
    ) -> Result<Metadata, Errno> {
        if meta.file_type().is_symlink() {
            self.chown_to_caller(path, caller)?;
            return Ok(fs::symlink_metadata(path)?);
        }
        if meta.mode() & 0o7777 != perm {
            fs::set_permissions(path, fs::Permissions::from_mode(perm))?;
        }
        self.chown_to_caller(path, caller)?;
        Ok(fs::symlink_metadata(path)?)
    }

    pub(super) fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<FileAttr, Errno> {
        let _change = self.name_change();
        let path = self.new_name(parent, name)?;
        let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
        let perm = mode & 0o7777;
        nix::sys::stat::mknod(&path, kind, Mode::from_bits_truncate(perm), rdev.into())
            .map_err(nix_errno)?;
        let meta = self.finish_new(&path, &fs::symlink_metadata(&path)?, perm, caller)?;
        self.register(parent, name, &meta)
    }

    pub(super) fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        let _change = self.name_change();
        let path = self.new_name(parent, name)?;
        let perm = mode & 0o7777;
        DirBuilder::new().mode(perm).create(&path)?;
        let meta = self.finish_new(&path, &fs::symlink_metadata(&path)?, perm, caller)?;
        self.register(parent, name, &meta)
    }

    pub(super) fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> Result<FileAttr, Errno> {
        let _change = self.name_change();
        let path = self.new_name(parent, name)?;
        std::os::unix::fs::symlink(target, &path)?;
        let meta = self.finish_new(&path, &fs::symlink_metadata(&path)?, 0o777, caller)?;
        self.register(parent, name, &meta)
    }

    pub(super) fn link(
        &self,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> Result<FileAttr, Errno> {
        let _change = self.name_change();
        let from = self.path(ino)?;
        let to = self.new_name(newparent, newname)?;
        fs::hard_link(&from, &to)?;
        self.register(newparent, newname, &fs::symlink_metadata(&to)?)
    }

    pub(super) fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let _change = self.name_change();
        self.writable()?;
        let path = self.abs(&lock(&self.inodes).child_path(parent, name)?);
        self.hooks.before_unlink(&path)?;
        fs::remove_file(&path)?;
        self.hooks.changed(&path);
        lock(&self.inodes).unlink(parent, name);
        Ok(())
    }

    pub(super) fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let _change = self.name_change();
        self.writable()?;
        let path = self.abs(&lock(&self.inodes).child_path(parent, name)?);
        fs::remove_dir(&path)?;
        lock(&self.inodes).unlink(parent, name);
        Ok(())
    }

    pub(super) fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let _change = self.name_change();
        self.writable()?;
        let (from, to) = {
            let inodes = lock(&self.inodes);
            (
                inodes.child_path(parent, name)?,
                inodes.child_path(newparent, newname)?,
            )
        };
        let (from, to) = (self.abs(&from), self.abs(&to));
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        if flags
            .difference(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_NOREPLACE)
            .bits()
            != 0
        {
            return Err(Errno::EINVAL);
        }
        let replaced = !exchange && self.before_replace(&from, &to)?;
        self.hooks.before_rename(&from, &to)?;
        if flags.is_empty() {
            fs::rename(&from, &to)?;
        } else {
            let nix_flags = nix::fcntl::RenameFlags::from_bits_truncate(flags.bits());
            let cwd = nix::fcntl::AT_FDCWD;
            nix::fcntl::renameat2(cwd, &from, cwd, &to, nix_flags).map_err(nix_errno)?;
        }
        if replaced {
            self.hooks.changed(&to);
        }
        let mut inodes = lock(&self.inodes);
        if exchange {
            inodes.exchange(parent, name, newparent, newname);
        } else {
            inodes.rename(parent, name, newparent, newname);
        }
        Ok(())
    }

    /// A rename onto an existing file (not a directory, not the same file)
    /// removes that file's name: the unlink hook hears of it. Returns
    /// whether it did.
    fn before_replace(&self, from: &Path, to: &Path) -> Result<bool, Errno> {
        let Ok(target) = fs::symlink_metadata(to) else {
            return Ok(false);
        };
        let source = fs::symlink_metadata(from)?;
        if target.is_dir() || backing_key(&target) == backing_key(&source) {
            return Ok(false);
        }
        self.hooks.before_unlink(to)?;
        Ok(true)
    }

    pub(super) fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        if !fs::metadata(&path)?.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(lock(&self.handles).add_dir(DirHandle {
            ino,
            entries: std::sync::OnceLock::new(),
        }))
    }

    /// The entries of directory `ino`, `.` and `..` first.
    pub(super) fn list_dir(&self, ino: u64) -> Result<Vec<DirEntry>, Errno> {
        let path = self.path(ino)?;
        let parent_ino = if ino == ROOT_INO { ROOT_INO } else { 0 };
        let mut entries = vec![
            DirEntry {
                name: OsString::from("."),
                kind: FileType::Directory,
                ino,
            },
            DirEntry {
                name: OsString::from(".."),
                kind: FileType::Directory,
                ino: parent_ino,
            },
        ];
        for e in fs::read_dir(&path)? {
            let e = e?;
            let kind = e
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            entries.push(DirEntry {
                name: e.file_name(),
                kind,
                ino: std::os::unix::fs::DirEntryExt::ino(&e),
            });
        }
        Ok(entries)
    }

    pub(super) fn fsyncdir(&self, ino: u64, datasync: bool) -> Result<(), Errno> {
        let path = self.path(ino)?;
        // Every name change is durable already (a `syncfs` since the last
        // one; see `Core::syncfs`): SQLite syncs the directory right after
        // the first sync of a new journal, which the hooks ask to be one.
        if self.names_synced() && fs::metadata(&path).is_ok_and(|m| m.dev() == self.root_dev) {
            return Ok(());
        }
        let dir = fs::File::open(&path)?;
        if datasync {
            dir.sync_data()?;
        } else {
            dir.sync_all()?;
        }
        Ok(())
    }

    pub(super) fn statfs(&self) -> Result<StatFs, Errno> {
        let s = nix::sys::statvfs::statvfs(&self.root).map_err(nix_errno)?;
        Ok((
            s.blocks(),
            s.blocks_free(),
            s.blocks_available(),
            s.files(),
            s.files_free(),
            s.block_size() as u32,
            s.name_max() as u32,
            s.fragment_size() as u32,
        ))
    }

    pub(super) fn access(&self, ino: u64, mask: i32) -> Result<(), Errno> {
        let path = self.path(ino)?;
        if mask & libc::W_OK != 0 {
            self.writable()?;
        }
        let flags = nix::unistd::AccessFlags::from_bits_truncate(mask);
        nix::unistd::access(&path, flags).map_err(nix_errno)
    }
}
