//! File operations: attributes, open/create, I/O, sync, release.

use std::ffi::OsStr;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{BackingId, Errno, FileAttr, TimeOrNow};
use nix::sys::stat::UtimensatFlags;
use nix::sys::time::TimeSpec;

use super::{backing_key, nix_errno, Core};
use crate::attr::file_attr;
use crate::handles::OpenFile;
use crate::hooks::{Caller, CloseEvent, OpenEvent, SyncedBy, TruncateEvent, WriteEvent};
use crate::sync::lock;

/// What `setattr` may change.
#[derive(Debug, Default)]
pub(super) struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

/// Flags of the daemon's own descriptor: the access mode and the sync
/// flags of the caller's open. Never `O_APPEND` (Linux pwrite(2) would then
/// ignore the offset the kernel computed) nor `O_DIRECT` (alignment).
fn backing_options(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => o.write(true),
        libc::O_RDWR => o.read(true).write(true),
        _ => o.read(true),
    };
    o.custom_flags((flags & (libc::O_SYNC | libc::O_DSYNC)) | libc::O_NOFOLLOW);
    o
}

fn to_timespec(t: Option<TimeOrNow>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => TimeSpec::from_duration(d),
            Err(e) => -TimeSpec::from_duration(e.duration()),
        },
    }
}

impl Core {
    fn handle(&self, fh: u64) -> Result<Arc<OpenFile>, Errno> {
        lock(&self.handles).get(fh).ok_or(Errno::EBADF)
    }

    /// Metadata through `fh`, else by path, else (unlinked) through any open
    /// handle of the inode.
    fn metadata(&self, ino: u64, fh: Option<u64>) -> Result<Metadata, Errno> {
        if let Some(h) = fh.and_then(|fh| lock(&self.handles).get(fh)) {
            return Ok(h.file.metadata()?);
        }
        match self.path(ino) {
            Ok(path) => Ok(fs::symlink_metadata(path)?),
            Err(e) if e == Errno::ENOENT => {
                let h = lock(&self.handles)
                    .any_for_inode(ino)
                    .ok_or(Errno::ENOENT)?;
                Ok(h.file.metadata()?)
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<FileAttr, Errno> {
        Ok(file_attr(ino, &self.metadata(ino, fh)?))
    }

    pub(super) fn setattr(&self, ino: u64, a: SetAttr) -> Result<FileAttr, Errno> {
        self.writable()?;
        let handle = match a.fh {
            Some(fh) => lock(&self.handles).get(fh),
            None => None,
        };
        let path = self.path(ino).ok();
        // A file without a name is reached through an open handle.
        let handle = match (&handle, &path) {
            (None, None) => Some(
                lock(&self.handles)
                    .any_for_inode(ino)
                    .ok_or(Errno::ENOENT)?,
            ),
            _ => handle,
        };
        if let Some(size) = a.size {
            let hook_path = self.hook_path(ino);
            self.hooks.before_truncate(&TruncateEvent {
                path: &hook_path,
                ino,
                size,
            })?;
            match (&handle, &path) {
                (Some(h), _) => h.file.set_len(size)?,
                (None, Some(p)) => OpenOptions::new().write(true).open(p)?.set_len(size)?,
                (None, None) => return Err(Errno::ENOENT),
            }
            self.hooks.changed(&hook_path);
        }
        self.set_meta(&a, handle.as_deref(), path.as_deref())?;
        let meta = match (&handle, &path) {
            (Some(h), _) => h.file.metadata()?,
            (None, Some(p)) => fs::symlink_metadata(p)?,
            (None, None) => return Err(Errno::ENOENT),
        };
        Ok(file_attr(ino, &meta))
    }

    /// Mode, owner and times, through the handle or the path.
    fn set_meta(
        &self,
        a: &SetAttr,
        handle: Option<&OpenFile>,
        path: Option<&Path>,
    ) -> Result<(), Errno> {
        if let Some(mode) = a.mode {
            let perm = fs::Permissions::from_mode(mode & 0o7777);
            match (handle, path) {
                (_, Some(p)) => fs::set_permissions(p, perm)?,
                (Some(h), None) => h.file.set_permissions(perm)?,
                (None, None) => return Err(Errno::ENOENT),
            }
        }
        if a.uid.is_some() || a.gid.is_some() {
            match (handle, path) {
                (_, Some(p)) => std::os::unix::fs::lchown(p, a.uid, a.gid)?,
                (Some(h), None) => std::os::unix::fs::fchown(&h.file, a.uid, a.gid)?,
                (None, None) => return Err(Errno::ENOENT),
            }
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let (at, mt) = (to_timespec(a.atime), to_timespec(a.mtime));
            match (handle, path) {
                (_, Some(p)) => nix::sys::stat::utimensat(
                    nix::fcntl::AT_FDCWD,
                    p,
                    &at,
                    &mt,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(nix_errno)?,
                (Some(h), None) => {
                    nix::sys::stat::futimens(&h.file, &at, &mt).map_err(nix_errno)?
                }
                (None, None) => return Err(Errno::ENOENT),
            }
        }
        Ok(())
    }

    pub(super) fn open(
        &self,
        caller: Caller,
        ino: u64,
        flags: i32,
        make_backing: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Result<(u64, Arc<OpenFile>), Errno> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            self.writable()?;
        }
        let path = self.path(ino)?;
        let mut options = backing_options(flags);
        if flags & libc::O_TRUNC != 0 {
            // The kernel strips O_TRUNC (no FUSE_ATOMIC_O_TRUNC) and sends a
            // setattr instead; honour it anyway if it ever comes.
            self.hooks.before_truncate(&TruncateEvent {
                path: &path,
                ino,
                size: 0,
            })?;
            options.custom_flags(
                (flags & (libc::O_SYNC | libc::O_DSYNC)) | libc::O_NOFOLLOW | libc::O_TRUNC,
            );
        }
        let file = options.open(&path)?;
        if flags & libc::O_TRUNC != 0 {
            self.hooks.changed(&path);
        }
        self.register_open(caller, ino, &path, flags, false, file, make_backing)
    }

    /// Registers an open backing file as a handle, asks the hooks, and
    /// undoes the registration if they refuse.
    #[allow(clippy::too_many_arguments)]
    fn register_open(
        &self,
        caller: Caller,
        ino: u64,
        path: &Path,
        flags: i32,
        created: bool,
        file: File,
        make_backing: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Result<(u64, Arc<OpenFile>), Errno> {
        let requested = self.hooks.open_mode(path);
        let (fh, handle) = lock(&self.handles).open(ino, file, requested, make_backing);
        let ev = OpenEvent {
            path,
            ino,
            fh,
            flags,
            created,
            requested,
            served: handle.served,
            caller,
        };
        if let Err(e) = self.hooks.opened(&ev) {
            lock(&self.handles).release(fh);
            return Err(e);
        }
        Ok((fh, handle))
    }

    /// `create`: makes (or, without `O_EXCL`, opens) `name` and opens it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        make_backing: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Result<(FileAttr, u64, Arc<OpenFile>), Errno> {
        let _change = self.name_change();
        self.writable()?;
        let path = self.abs(&lock(&self.inodes).child_path(parent, name)?);
        self.hooks.before_create(&path)?;
        let perm = mode & 0o7777;
        let mut options = backing_options(flags);
        options.create_new(true).mode(perm);
        let (file, created) = match options.open(&path) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && flags & libc::O_EXCL == 0 => {
                (self.open_existing_for_create(&path, flags)?, false)
            }
            Err(e) => return Err(e.into()),
        };
        let mut meta = file.metadata()?;
        if created {
            meta = self.finish_new(&path, &meta, perm, caller)?;
        }
        let ino = lock(&self.inodes).lookup(parent, name, backing_key(&meta));
        let attr = file_attr(ino, &meta);
        let (fh, handle) =
            self.register_open(caller, ino, &path, flags, created, file, make_backing)?;
        Ok((attr, fh, handle))
    }

    fn open_existing_for_create(&self, path: &Path, flags: i32) -> Result<File, Errno> {
        let mut options = backing_options(flags);
        if flags & libc::O_TRUNC != 0 {
            let ino = lock(&self.inodes).ino_of(path.strip_prefix(&self.root).unwrap_or(path));
            self.hooks.before_truncate(&TruncateEvent {
                path,
                ino: ino.unwrap_or(0),
                size: 0,
            })?;
            options.custom_flags(
                (flags & (libc::O_SYNC | libc::O_DSYNC)) | libc::O_NOFOLLOW | libc::O_TRUNC,
            );
        }
        let file = options.open(path)?;
        if flags & libc::O_TRUNC != 0 {
            self.hooks.changed(path);
        }
        Ok(file)
    }

    pub(super) fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let h = self.handle(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match h.file.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(n);
        Ok(buf)
    }

    pub(super) fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        lock_owner: Option<u64>,
    ) -> Result<u32, Errno> {
        self.writable()?;
        let h = self.handle(fh)?;
        if !h.is_routed() {
            h.file.write_all_at(data, offset)?;
            return u32::try_from(data.len()).map_err(|_| Errno::EINVAL);
        }
        let path = self.hook_path(h.ino);
        self.hooks.before_write(&WriteEvent {
            path: &path,
            ino: h.ino,
            fh,
            offset,
            data,
            lock_owner,
            file: &h.file,
        })?;
        h.file.write_all_at(data, offset)?;
        self.hooks.changed(&path);
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    pub(super) fn fsync(&self, fh: u64, datasync: bool) -> Result<(), Errno> {
        let h = self.handle(fh)?;
        let path = self.hook_path(h.ino);
        match self.hooks.before_fsync(&path, datasync)? {
            SyncedBy::Nobody if datasync => h.file.sync_data()?,
            SyncedBy::Nobody => h.file.sync_all()?,
            SyncedBy::Filesystem => self.syncfs(&h.file)?,
            SyncedBy::Hook => {}
        }
        self.hooks.after_fsync(&path, datasync)
    }

    /// Forgets the handle (dropping its backing file reference) and tells
    /// the hooks. OFD locks were dropped before (see `release_ofd_locks`).
    pub(super) fn release(&self, fh: u64) {
        let Some(h) = lock(&self.handles).release(fh) else {
            return;
        };
        let (rel, linked) = lock(&self.inodes).path_or_last(h.ino).unwrap_or_default();
        let path = self.abs(&rel);
        self.hooks.closed(&CloseEvent {
            path: &path,
            ino: h.ino,
            fh,
            linked,
        });
    }

    pub(super) fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        self.writable()?;
        let h = self.handle(fh)?;
        let (offset, length) = (
            i64::try_from(offset).map_err(|_| Errno::EFBIG)?,
            i64::try_from(length).map_err(|_| Errno::EFBIG)?,
        );
        let flags = nix::fcntl::FallocateFlags::from_bits_retain(mode);
        nix::fcntl::fallocate(&h.file, flags, offset, length).map_err(nix_errno)
    }

    pub(super) fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64, Errno> {
        let h = self.handle(fh)?;
        let whence = match whence {
            libc::SEEK_SET => nix::unistd::Whence::SeekSet,
            libc::SEEK_CUR => nix::unistd::Whence::SeekCur,
            libc::SEEK_END => nix::unistd::Whence::SeekEnd,
            libc::SEEK_DATA => nix::unistd::Whence::SeekData,
            libc::SEEK_HOLE => nix::unistd::Whence::SeekHole,
            _ => return Err(Errno::EINVAL),
        };
        nix::unistd::lseek(&h.file, offset, whence).map_err(nix_errno)
    }
}
