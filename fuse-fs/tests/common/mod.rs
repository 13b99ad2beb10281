//! Shared by the mount tests: a mount that always unmounts, bounded process
//! runs, and fcntl locks from this process and from Python children.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use fuse_fs::{FsHandle, Hooks, MountConfig, Mounted, PassthroughOptions};
use tempfile::TempDir;

/// A passthrough mount of a fresh data directory at a fresh mountpoint. Its
/// Drop unmounts, with `fusermount3 -u -z` if the clean unmount fails.
pub struct TestMount {
    mounted: Option<Mounted>,
    pub handle: FsHandle,
    pub data: PathBuf,
    pub mnt: PathBuf,
    _dir: TempDir,
}

impl TestMount {
    pub fn new(hooks: impl Hooks) -> TestMount {
        TestMount::with(hooks, PassthroughOptions::default())
    }

    pub fn with(hooks: impl Hooks, opts: PassthroughOptions) -> TestMount {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&data).expect("mkdir data");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let (mounted, handle) =
            fuse_fs::mount_passthrough(&data, &mnt, opts, &MountConfig::default(), hooks)
                .expect("mount");
        TestMount {
            mounted: Some(mounted),
            handle,
            data: std::fs::canonicalize(&data).expect("canon"),
            mnt,
            _dir: dir,
        }
    }

    /// A path under the mountpoint.
    pub fn m(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// The backing path of a name.
    pub fn d(&self, name: &str) -> PathBuf {
        self.data.join(name)
    }

    /// Unmounts now (and reports the error).
    pub fn unmount(&mut self) -> Result<(), fuse_fs::MountError> {
        match self.mounted.as_mut() {
            Some(m) => m.unmount(),
            None => Ok(()),
        }
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        let Some(mut m) = self.mounted.take() else {
            return;
        };
        if m.unmount().is_err() {
            let _ = run_bounded(
                Command::new("fusermount3")
                    .arg("-u")
                    .arg("-z")
                    .arg(&self.mnt),
                Duration::from_secs(10),
            );
        }
    }
}

/// Runs a command to completion, killing it after `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_bounded(child, limit)
}

/// Waits for a child with piped output, killing it after `limit` (and
/// failing the test then).
pub fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "a child ran over {limit:?}; stdout: {} stderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Runs `f` on a thread; fails the test if it takes longer than `limit`.
pub fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("operation finished in time")
}

/// A Python child that runs `script` (argv[1..] = `args`) and talks over
/// lines: it prints a line when it reaches a point, and reads one to go on.
pub struct Py {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

/// Python helpers every script gets: `lk(fd, cmd, typ, start, length)`
/// returns (type, start, len, pid) after fcntl with a `struct flock`.
pub const PY_PRELUDE: &str = r#"
import fcntl, os, struct, sys, time
def lk(fd, cmd, typ, start, length):
    buf = struct.pack('hhqqi4x', typ, os.SEEK_SET, start, length, 0)
    out = fcntl.fcntl(fd, cmd, buf)
    t, _, s, l, p = struct.unpack('hhqqi4x', out)
    return (t, s, l, p)
def say(*a):
    print(*a, flush=True)
"#;

impl Py {
    pub fn spawn(script: &str, args: &[&str]) -> Py {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(format!("{PY_PRELUDE}\n{script}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3");
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Py {
            child,
            stdin,
            lines,
        }
    }

    /// The next line it prints (fails the test after `limit`).
    pub fn line(&self, limit: Duration) -> String {
        self.lines
            .recv_timeout(limit)
            .expect("python child printed a line in time")
    }

    /// Sends a line to it.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to python");
        stdin.flush().expect("flush");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for it to exit; returns whether it exited 0.
    pub fn wait(mut self, limit: Duration) -> bool {
        drop(self.stdin.take());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.success();
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!("python child did not exit within {limit:?}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `struct flock`.
pub fn flock(typ: i32, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: typ as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

/// F_SETLK from this process; Err is the errno.
pub fn setlk(f: &File, typ: i32, start: i64, len: i64) -> Result<(), i32> {
    let fl = flock(typ, start, len);
    nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_SETLK(&fl))
        .map(drop)
        .map_err(|e| e as i32)
}

/// F_SETLKW from this process; Err is the errno.
pub fn setlkw(f: &File, typ: i32, start: i64, len: i64) -> Result<(), i32> {
    let fl = flock(typ, start, len);
    nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_SETLKW(&fl))
        .map(drop)
        .map_err(|e| e as i32)
}

/// F_GETLK from this process: (type, start, len, pid).
pub fn getlk(f: &File, typ: i32, start: i64, len: i64) -> (i32, i64, i64, i32) {
    let mut fl = flock(typ, start, len);
    nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_GETLK(&mut fl)).expect("F_GETLK");
    (fl.l_type as i32, fl.l_start, fl.l_len, fl.l_pid)
}

/// Opens a file read-write.
pub fn open_rw(p: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .expect("open rw")
}
