//! `sluice mount` for tests: a data directory, a mountpoint and a `file://`
//! replica in a temporary directory. Dropping it stops the daemon and always
//! unmounts, even when the test failed or the daemon was killed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Daemon;

#[derive(Debug)]
pub struct MountEnv {
    dir: tempfile::TempDir,
    /// The real directory.
    pub data: PathBuf,
    /// Where applications open the databases.
    pub mnt: PathBuf,
    /// The replica root: each database under `<replica>/<name>`.
    pub replica: PathBuf,
    pub log: PathBuf,
    pub daemon: Option<Daemon>,
    /// The daemon's open-file limit, if it is to have one.
    pub nofile: Option<u32>,
}

impl Default for MountEnv {
    fn default() -> Self {
        MountEnv::new()
    }
}

impl MountEnv {
    pub fn new() -> MountEnv {
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("data");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::create_dir_all(&mnt).expect("mountpoint");
        MountEnv {
            replica: dir.path().join("replica"),
            log: dir.path().join("sluice.log"),
            data,
            mnt,
            dir,
            daemon: None,
            nofile: None,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `sluice mount DATA MNT file://REPLICA` and waits (bounded)
    /// until it has mounted.
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        let before = self.log_text().matches("mounted").count();
        let url = format!("file://{}", self.replica.display());
        let args = [
            "mount".as_ref(),
            self.data.as_os_str(),
            self.mnt.as_os_str(),
            url.as_ref(),
        ];
        self.daemon = Some(match self.nofile {
            Some(n) => Daemon::spawn_limited(&args, &self.log, env, n),
            None => Daemon::spawn(&args, &self.log, env),
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log_text().matches("mounted").count() <= before {
            let exited = self
                .daemon
                .as_mut()
                .is_some_and(|d| d.child.try_wait().ok().flatten().is_some());
            assert!(
                !exited && Instant::now() < deadline,
                "sluice mount did not mount; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (bounded): the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.daemon.take().and_then(Daemon::stop)
    }

    /// SIGKILL: the mount is left stale.
    pub fn kill9(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.kill9();
        }
    }

    /// A database through the mount.
    pub fn db(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// The same database's backing file.
    pub fn backing(&self, name: &str) -> PathBuf {
        self.data.join(name)
    }

    /// Its staging directory (`<data>.sluice/<name>`).
    pub fn staging(&self, name: &str) -> PathBuf {
        self.dir.path().join("data.sluice").join(name)
    }

    /// Its replica URL.
    pub fn url(&self, name: &str) -> String {
        format!("file://{}", self.replica.join(name).display())
    }

    /// The TXID of its newest staged L0 file (0 if none), once the
    /// deferred files waiting when called are staged: a rollback-journal
    /// commit is made durable with the database's fsync and staged by the
    /// flusher within 50 ms (waits at most 2 s: a file of a transaction
    /// that never reached its commit point stays there). A deferred file
    /// lies in the spare pool (`spare/`) under a number until then; its
    /// header names its TXID.
    pub fn txid(&self, name: &str) -> u64 {
        let newest = |dir: &str| {
            crate::ltx_files(&self.staging(name).join(dir))
                .iter()
                .filter_map(|p| {
                    let n = p.file_name()?.to_str()?;
                    u64::from_str_radix(n.get(17..33)?, 16).ok()
                })
                .max()
                .unwrap_or(0)
        };
        let waiting = std::fs::read_dir(self.staging(name).join("spare"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let mut b = [0u8; ltx_format::HEADER_SIZE];
                let mut f = std::fs::File::open(e.path()).ok()?;
                std::io::Read::read_exact(&mut f, &mut b).ok()?;
                Some(ltx_format::Header::decode(&b).ok()?.max_txid.0)
            })
            .max()
            .unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let staged = newest("ltx/0");
            if staged >= waiting || Instant::now() >= deadline {
                return staged;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MountEnv {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.signal("-TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            while d.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
        // Whatever happened, nothing stays mounted.
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mnt)
            .output();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
    }
}

/// True if `mnt` is a mount point now (`/proc/mounts`).
pub fn is_mounted(mnt: &Path) -> bool {
    let Ok(m) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    let want = mnt.to_string_lossy();
    m.lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_ref()))
}

/// Unmounts `mnt`; lazily if a plain unmount fails (files still open).
pub fn unmount(mnt: &Path) {
    for args in [&["-u"][..], &["-u", "-z"][..]] {
        if !is_mounted(mnt) {
            return;
        }
        let _ = Command::new("fusermount3")
            .args(args)
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
    }
    if is_mounted(mnt) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
    }
}

/// Sends `sig` (`-TERM`, `-INT`, …) to `child` with kill(1).
pub fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}
