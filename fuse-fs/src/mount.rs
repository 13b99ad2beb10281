//! Mounting and unmounting, with errors that name the problem and the fix.
//!
//! [`mount`] checks the environment first (`/dev/fuse`, `fusermount3` when
//! not root, the mountpoint: present, a directory, empty, not already
//! mounted), clears a stale FUSE mount left by a dead daemon, mounts
//! (`Session::new`, which runs the INIT handshake) and serves the mount from
//! background threads (`Session::spawn`). [`Mounted`] unmounts on
//! [`Mounted::unmount`] or, lazily as a last resort, on drop.
//!
//! A stale mount is a FUSE entry in `/proc/self/mountinfo` whose stat fails
//! with `ENOTCONN`: the daemon died, the kernel keeps the entry until someone
//! unmounts it.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use fuser::{BackgroundSession, Config, Filesystem, MountOption, Notifier, Session, SessionACL};

use crate::hooks::Hooks;
use crate::passthrough::{FsHandle, PassthroughFs, PassthroughOptions};

/// Why a filesystem could not be mounted or unmounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mountpoint does not exist.
    #[error("mountpoint {} does not exist: create it (mkdir -p {})", .0.display(), .0.display())]
    MountpointMissing(PathBuf),
    /// The mountpoint is not a directory.
    #[error("mountpoint {} is not a directory: mount on an empty directory", .0.display())]
    MountpointNotDirectory(PathBuf),
    /// The mountpoint has files in it.
    #[error("mountpoint {} is not empty: the mount would hide its files; empty it or choose an empty directory", .0.display())]
    MountpointNotEmpty(PathBuf),
    /// Something is mounted there already.
    #[error("mountpoint {} is busy: a {fstype} filesystem is already mounted there; unmount it first (fusermount3 -u {}) or choose another directory", path.display(), path.display())]
    MountpointBusy {
        /// The mountpoint.
        path: PathBuf,
        /// What is mounted there.
        fstype: String,
    },
    /// A FUSE mount whose daemon died or hangs could not be cleared.
    #[error("mountpoint {} holds a dead or hung FUSE mount that could not be cleared ({reason}): run `fusermount3 -u -z {}` (or `umount -l {}` as root)", path.display(), path.display(), path.display())]
    StaleMount {
        /// The mountpoint.
        path: PathBuf,
        /// What went wrong clearing it.
        reason: String,
    },
    /// The mountpoint cannot be inspected.
    #[error("mountpoint {}: {source}; check its permissions", path.display())]
    Mountpoint {
        /// The mountpoint.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The data directory does not exist.
    #[error("data directory {} does not exist: create it, or fix the path", .0.display())]
    DataDirMissing(PathBuf),
    /// The data directory is not a directory.
    #[error("data directory {} is not a directory", .0.display())]
    DataDirNotDirectory(PathBuf),
    /// The data directory cannot be read, written or searched.
    #[error("data directory {} is not readable, writable and searchable by this user ({source}): fix its owner or mode (chown/chmod), or run as its owner", path.display())]
    DataDirPermission {
        /// The data directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The data directory cannot be inspected.
    #[error("data directory {}: {source}", path.display())]
    DataDir {
        /// The data directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The mountpoint is inside the data directory or the reverse.
    #[error("mountpoint {} and data directory {} overlap: the filesystem would serve itself; put the mountpoint outside the data directory", mountpoint.display(), data_dir.display())]
    Overlap {
        /// The data directory.
        data_dir: PathBuf,
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// `/dev/fuse` does not exist.
    #[error("/dev/fuse does not exist: load the fuse kernel module (modprobe fuse), or in a container pass the device (--device /dev/fuse)")]
    DevFuseMissing,
    /// `/dev/fuse` cannot be opened.
    #[error(
        "/dev/fuse cannot be opened ({0}): run as root, or give this user access to /dev/fuse"
    )]
    DevFusePermission(io::Error),
    /// `fusermount3` is needed and missing.
    #[error("fusermount3 is not installed and is needed {0}: install the Debian package fuse3 (apt-get install fuse3)")]
    FusermountMissing(&'static str),
    /// The mount itself failed.
    #[error("mounting FUSE at {}: {source}", path.display())]
    Mount {
        /// The mountpoint.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Unmounting failed because files are open under the mountpoint.
    #[error("cannot unmount {}: it is busy (a process has files open under it); close them, or unmount lazily with fusermount3 -u -z {}", .0.display(), .0.display())]
    UnmountBusy(PathBuf),
    /// Unmounting failed.
    #[error("unmounting {}: {source}", path.display())]
    Unmount {
        /// The mountpoint.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The serving threads did not stop after the unmount.
    #[error("unmounted {} but its serving threads did not stop within {timeout:?} (a request handler is stuck)", path.display())]
    UnmountTimeout {
        /// The mountpoint.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
    /// Another I/O failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

/// How to mount; build from `Default` and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MountConfig {
    /// The source shown in `mount` and mountinfo. Default `sluice`.
    pub fsname: String,
    /// Threads reading and serving FUSE requests. Default 4. A waiting lock
    /// never holds one, but hooks (capture, fsync) do while they run.
    pub threads: usize,
    /// Let users other than the mounting one in (`allow_other`). Default:
    /// when running as root. Non-root needs `user_allow_other` in
    /// /etc/fuse.conf.
    pub allow_other: Option<bool>,
    /// Mount read-only: the kernel refuses writes with EROFS. Default false.
    pub read_only: bool,
    /// Let the kernel check permissions from the file modes
    /// (`default_permissions`). Default true.
    pub default_permissions: bool,
    /// Clear a stale FUSE mount found at the mountpoint. Default true.
    pub clear_stale: bool,
    /// How long to wait for the serving threads after an unmount. Default 10 s.
    pub unmount_timeout: Duration,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            fsname: "sluice".into(),
            threads: 4,
            allow_other: None,
            read_only: false,
            default_permissions: true,
            clear_stale: true,
            unmount_timeout: Duration::from_secs(10),
        }
    }
}

/// What is at a mountpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountState {
    /// Nothing is mounted there.
    NotMounted,
    /// A filesystem that answers.
    Live {
        /// Its type from mountinfo (`fuse`, `fuse.bindfs`, `ext4`, ...).
        fstype: String,
    },
    /// A FUSE mount whose daemon is gone (`ENOTCONN`).
    Stale {
        /// Its type.
        fstype: String,
    },
    /// A FUSE mount whose daemon does not answer a stat within 2 s.
    Unresponsive {
        /// Its type.
        fstype: String,
    },
}

/// A mounted filesystem served from background threads.
#[derive(Debug)]
pub struct Mounted {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    notifier: Notifier,
    timeout: Duration,
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// `path` made absolute with its parent resolved, without touching `path`
/// itself (a stale mount there fails every stat with ENOTCONN).
fn normalize(path: &Path) -> Result<PathBuf, MountError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let cwd = std::env::current_dir().map_err(|source| MountError::Io {
            what: "reading the current directory".into(),
            source,
        })?;
        cwd.join(path)
    };
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Ok(abs);
    };
    match fs::canonicalize(parent) {
        Ok(p) => Ok(p.join(name)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(MountError::MountpointMissing(abs)),
        Err(source) => Err(MountError::Mountpoint { path: abs, source }),
    }
}

/// Checks that `path` is a directory this process can read, write and
/// search; returns it canonical.
pub fn check_data_dir(path: &Path) -> Result<PathBuf, MountError> {
    let canon = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError::DataDirMissing(path.into()))
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(MountError::DataDirPermission {
                path: path.into(),
                source: e,
            })
        }
        Err(source) => {
            return Err(MountError::DataDir {
                path: path.into(),
                source,
            })
        }
    };
    if !canon.is_dir() {
        return Err(MountError::DataDirNotDirectory(canon));
    }
    let rwx = nix::unistd::AccessFlags::R_OK
        | nix::unistd::AccessFlags::W_OK
        | nix::unistd::AccessFlags::X_OK;
    nix::unistd::access(&canon, rwx).map_err(|e| MountError::DataDirPermission {
        path: canon.clone(),
        source: io::Error::from_raw_os_error(e as i32),
    })?;
    Ok(canon)
}

/// Whether `name` is an executable in `$PATH`.
fn in_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Checks `/dev/fuse` and, when not root, `fusermount3`.
pub fn check_fuse() -> Result<(), MountError> {
    match fs::metadata("/dev/fuse") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(MountError::DevFuseMissing),
        _ => {}
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        if euid() == 0 || !in_path("fusermount3") {
            return Err(MountError::DevFusePermission(e));
        }
    }
    if euid() != 0 && !in_path("fusermount3") {
        return Err(MountError::FusermountMissing("to mount as a non-root user"));
    }
    Ok(())
}

/// The mountinfo entry for `path`: the topmost mount there, by fstype.
fn mounted_fstype(path: &Path) -> Result<Option<String>, MountError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(|source| MountError::Io {
        what: "reading /proc/self/mountinfo".into(),
        source,
    })?;
    let want = path.as_os_str().as_encoded_bytes();
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(4).map(|m| unescape(m)) == Some(want.to_vec()) {
            found = fields.get(sep + 1).map(|s| s.to_string());
        }
    }
    Ok(found)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| b[i] == b'\\' && o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(o) => {
                out.push(
                    o.iter()
                        .fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// What is mounted at `mountpoint` (a stat runs in a helper thread, bounded
/// at 2 s, so a hung daemon cannot hang the caller).
pub fn mount_state(mountpoint: &Path) -> Result<MountState, MountError> {
    let path = normalize(mountpoint)?;
    let Some(fstype) = mounted_fstype(&path)? else {
        return Ok(MountState::NotMounted);
    };
    let (tx, rx) = mpsc::channel();
    let probe = path.clone();
    thread::Builder::new()
        .name("fuse-stat-probe".into())
        .spawn(move || {
            let _ = tx.send(fs::metadata(&probe).map(drop));
        })
        .map_err(|source| MountError::Io {
            what: "starting a stat probe thread".into(),
            source,
        })?;
    Ok(match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => MountState::Stale { fstype },
        Ok(_) => MountState::Live { fstype },
        Err(_) => MountState::Unresponsive { fstype },
    })
}

fn is_fuse(fstype: &str) -> bool {
    fstype == "fuse" || fstype == "fuseblk" || fstype.starts_with("fuse.")
}

/// Unmounts `path` with umount(2), lazily (`MNT_DETACH`) if `lazy`; as a
/// non-root user through `fusermount3 -u [-z]`.
pub fn unmount_path(path: &Path, lazy: bool) -> Result<(), MountError> {
    let flags = if lazy {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    match nix::mount::umount2(path, flags) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => Err(MountError::UnmountBusy(path.into())),
        Err(nix::errno::Errno::EPERM) if euid() != 0 => fusermount_unmount(path, lazy),
        Err(e) => Err(MountError::Unmount {
            path: path.into(),
            source: io::Error::from_raw_os_error(e as i32),
        }),
    }
}

fn fusermount_unmount(path: &Path, lazy: bool) -> Result<(), MountError> {
    if !in_path("fusermount3") {
        return Err(MountError::FusermountMissing(
            "to unmount as a non-root user",
        ));
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| MountError::Io {
            what: "running fusermount3 -u".into(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if msg.contains("busy") {
        return Err(MountError::UnmountBusy(path.into()));
    }
    Err(MountError::Unmount {
        path: path.into(),
        source: io::Error::other(msg),
    })
}

/// Clears a stale FUSE mount at `mountpoint`. Returns whether there was one.
/// A live mount is left alone (`MountpointBusy`), an unresponsive one is
/// reported (`StaleMount`).
pub fn clear_stale_mount(mountpoint: &Path) -> Result<bool, MountError> {
    let path = normalize(mountpoint)?;
    match mount_state(&path)? {
        MountState::NotMounted => Ok(false),
        MountState::Live { fstype } => Err(MountError::MountpointBusy { path, fstype }),
        MountState::Unresponsive { .. } => Err(MountError::StaleMount {
            path,
            reason: "its daemon does not answer".into(),
        }),
        MountState::Stale { .. } => {
            unmount_path(&path, true).map_err(|e| MountError::StaleMount {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            Ok(true)
        }
    }
}

/// Checks the mountpoint (clearing a stale FUSE mount there if `clear_stale`);
/// returns it absolute.
pub fn check_mountpoint(mountpoint: &Path, clear_stale: bool) -> Result<PathBuf, MountError> {
    let path = normalize(mountpoint)?;
    match mount_state(&path)? {
        MountState::NotMounted => {}
        MountState::Stale { fstype } if clear_stale && is_fuse(&fstype) => {
            clear_stale_mount(&path)?;
        }
        MountState::Stale { .. } | MountState::Unresponsive { .. } => {
            return Err(MountError::StaleMount {
                path,
                reason: "its daemon is gone or does not answer".into(),
            })
        }
        MountState::Live { fstype } => return Err(MountError::MountpointBusy { path, fstype }),
    }
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError::MountpointMissing(path))
        }
        Err(source) => return Err(MountError::Mountpoint { path, source }),
    };
    if !meta.is_dir() {
        return Err(MountError::MountpointNotDirectory(path));
    }
    let mut entries = fs::read_dir(&path).map_err(|source| MountError::Mountpoint {
        path: path.clone(),
        source,
    })?;
    if entries.next().is_some() {
        return Err(MountError::MountpointNotEmpty(path));
    }
    Ok(path)
}

fn session_config(cfg: &MountConfig) -> Config {
    let mut c = Config::default();
    c.mount_options = vec![MountOption::FSName(cfg.fsname.clone())];
    if cfg.default_permissions {
        c.mount_options.push(MountOption::DefaultPermissions);
    }
    if cfg.read_only {
        c.mount_options.push(MountOption::RO);
    }
    c.acl = if cfg.allow_other.unwrap_or(euid() == 0) {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    c.n_threads = Some(cfg.threads.max(1));
    // One shared /dev/fuse fd: with cloned fds fuser's ENOSYS answer to
    // FUSE_INTERRUPT fails (ENOENT) and the kernel keeps sending them.
    c.clone_fd = false;
    c
}

fn session_error(path: &Path, e: io::Error) -> MountError {
    match e.raw_os_error() {
        Some(libc::ENOTCONN) => MountError::StaleMount {
            path: path.into(),
            reason: e.to_string(),
        },
        Some(libc::ENOENT) => MountError::MountpointMissing(path.into()),
        Some(libc::EBUSY) => MountError::MountpointBusy {
            path: path.into(),
            fstype: "(unknown)".into(),
        },
        _ => MountError::Mount {
            path: path.into(),
            source: e,
        },
    }
}

/// Mounts `fs` at `mountpoint` and serves it from background threads.
pub fn mount<FS: Filesystem>(
    fs: FS,
    mountpoint: &Path,
    cfg: &MountConfig,
) -> Result<Mounted, MountError> {
    check_fuse()?;
    let path = check_mountpoint(mountpoint, cfg.clear_stale)?;
    let session =
        Session::new(fs, &path, &session_config(cfg)).map_err(|e| session_error(&path, e))?;
    let notifier = session.notifier();
    let session = session.spawn().map_err(|source| MountError::Io {
        what: "starting the FUSE session thread".into(),
        source,
    })?;
    Ok(Mounted {
        session: Some(session),
        mountpoint: path,
        notifier,
        timeout: cfg.unmount_timeout,
    })
}

/// Mounts a [`PassthroughFs`] of `data_dir` at `mountpoint`, after checking
/// both and that they do not overlap. Returns the mount and a handle on the
/// filesystem.
pub fn mount_passthrough(
    data_dir: &Path,
    mountpoint: &Path,
    opts: PassthroughOptions,
    cfg: &MountConfig,
    hooks: impl Hooks,
) -> Result<(Mounted, FsHandle), MountError> {
    let data = check_data_dir(data_dir)?;
    let mnt = normalize(mountpoint)?;
    if mnt.starts_with(&data) || data.starts_with(&mnt) {
        return Err(MountError::Overlap {
            data_dir: data,
            mountpoint: mnt,
        });
    }
    let mut opts = opts;
    opts.read_only |= cfg.read_only;
    let fs = PassthroughFs::new(&data, opts, hooks)?;
    let handle = fs.handle();
    Ok((mount(fs, &mnt, cfg)?, handle))
}

impl Mounted {
    /// Where it is mounted (absolute).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// For kernel cache invalidation (call it from outside request handlers).
    pub fn notifier(&self) -> Notifier {
        self.notifier.clone()
    }

    /// Unmounts (not lazily: if files are open under the mountpoint this
    /// fails with [`MountError::UnmountBusy`] and the mount keeps being
    /// served) and waits, bounded, for the serving threads to stop.
    pub fn unmount(&mut self) -> Result<(), MountError> {
        if self.session.is_none() {
            return Ok(());
        }
        match unmount_path(&self.mountpoint, false) {
            Ok(()) => {}
            // Unmounted by someone else already: the threads stop on their own.
            Err(MountError::Unmount { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
        self.join()
    }

    fn join(&mut self) -> Result<(), MountError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("fuse-unmount-join".into())
            .spawn(move || {
                let _ = tx.send(session.join());
            })
            .map_err(|source| MountError::Io {
                what: "starting the unmount join thread".into(),
                source,
            })?;
        match rx.recv_timeout(self.timeout) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(MountError::Io {
                what: format!(
                    "the FUSE session at {} ended with an error",
                    self.mountpoint.display()
                ),
                source,
            }),
            Err(_) => Err(MountError::UnmountTimeout {
                path: self.mountpoint.clone(),
                timeout: self.timeout,
            }),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.session.is_none() {
            return;
        }
        if self.unmount().is_err() && self.session.is_some() {
            // Busy: detach it from the tree; it is served until the last
            // open file under it closes, and the session thread ends then.
            let _ = unmount_path(&self.mountpoint, true);
            drop(self.session.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/tmp/a\040b"), b"/tmp/a b".to_vec());
        assert_eq!(unescape(r"/x\134y"), b"/x\\y".to_vec());
        assert_eq!(unescape(r"/plain\0"), b"/plain\\0".to_vec());
    }

    #[test]
    fn data_dir_errors_name_the_problem() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("nope");
        let e = check_data_dir(&missing).expect_err("missing");
        assert!(matches!(e, MountError::DataDirMissing(_)));
        assert!(e.to_string().contains("does not exist"), "{e}");
        let file = dir.path().join("f");
        fs::write(&file, b"x").expect("write");
        assert!(matches!(
            check_data_dir(&file),
            Err(MountError::DataDirNotDirectory(_))
        ));
        assert_eq!(
            check_data_dir(dir.path()).ok(),
            fs::canonicalize(dir.path()).ok()
        );
    }

    #[test]
    fn mountpoint_errors_name_the_problem_and_the_fix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("nope");
        let e = check_mountpoint(&missing, true).expect_err("missing");
        assert!(matches!(e, MountError::MountpointMissing(_)));
        assert!(e.to_string().contains("mkdir -p"), "{e}");
        let file = dir.path().join("f");
        fs::write(&file, b"x").expect("write");
        assert!(matches!(
            check_mountpoint(&file, true),
            Err(MountError::MountpointNotDirectory(_))
        ));
        let e = check_mountpoint(dir.path(), true).expect_err("not empty");
        assert!(matches!(e, MountError::MountpointNotEmpty(_)));
        assert!(e.to_string().contains("empty"), "{e}");
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        assert_eq!(
            check_mountpoint(&empty, true).ok(),
            Some(fs::canonicalize(&empty).expect("canon"))
        );
        assert_eq!(mount_state(&empty).ok(), Some(MountState::NotMounted));
    }

    #[test]
    fn fuse_fstypes_are_recognised() {
        assert!(is_fuse("fuse") && is_fuse("fuse.bindfs") && is_fuse("fuseblk"));
        assert!(!is_fuse("ext4") && !is_fuse("fusectl"));
        let e = MountError::FusermountMissing("to mount as a non-root user");
        assert!(e.to_string().contains("fuse3"), "{e}");
    }
}
