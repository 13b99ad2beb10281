#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! `sluice replica` end to end: `sluice replicate` writes to Garage (or a
//! `file://` replica), `sluice replica` mounts the same bucket read-only
//! through FUSE, and real readers (`sqlite3`, Python processes, rusqlite)
//! read it. Every mount is unmounted when its guard drops, even when a
//! test fails. A module per theme.

mod bad_input;
mod corruption;
mod follow;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use integration::mount::is_mounted;
use integration::{s, sluice_bin};

/// True where this process may mount FUSE filesystems; tests return early
/// (and say so) elsewhere.
fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && (nix_is_root() || Path::new("/usr/bin/fusermount3").exists());
    if !ok {
        eprintln!("SKIPPED: no FUSE here (/dev/fuse and root, or fusermount3)");
    }
    ok
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|t| t.lines().any(|l| l.starts_with("Uid:\t0\t")))
        .unwrap_or(false)
}

/// A `sluice replica` process and its mount.
#[derive(Debug)]
pub struct Replica {
    child: Option<Child>,
    pub mnt: PathBuf,
    pub name: String,
    pub log: PathBuf,
}

impl Replica {
    /// Starts `sluice replica URL MNT ARGS…` and waits (bounded) until the
    /// database is served.
    pub fn start(url: &str, mnt: &Path, name: &str, args: &[&str]) -> Replica {
        let mut all = vec![url, s(mnt)];
        all.extend_from_slice(args);
        Replica::spawn(&all, mnt, name)
    }

    /// Starts `sluice replica ARGS…`; waits until `mnt/name` is served.
    pub fn spawn(args: &[&str], mnt: &Path, name: &str) -> Replica {
        std::fs::create_dir_all(mnt).unwrap();
        let log = mnt.with_extension("log");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(sluice_bin())
            .arg("replica")
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        let mut r = Replica {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            name: name.to_string(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(is_mounted(mnt) && r.db().exists()) {
            assert!(
                Instant::now() < deadline,
                "the replica was not served; log:\n{}",
                r.log_text()
            );
            if let Some(Ok(Some(st))) = r.child.as_mut().map(|c| c.try_wait()) {
                panic!("sluice replica exited: {st}; log:\n{}", r.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    pub fn db(&self) -> PathBuf {
        self.mnt.join(&self.name)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `<db>-pos`: (TXID, checksum).
    pub fn pos(&self) -> (u64, String) {
        let t = std::fs::read_to_string(self.mnt.join(format!("{}-pos", self.name))).unwrap();
        let (txid, sum) = t.trim().split_once('/').unwrap();
        (u64::from_str_radix(txid, 16).unwrap(), sum.to_string())
    }

    pub fn lag(&self) -> f64 {
        let t = std::fs::read_to_string(self.mnt.join(format!("{}-lag", self.name))).unwrap();
        t.trim().parse().unwrap()
    }

    /// Waits (bounded) until the replica serves `txid`.
    pub fn wait_txid(&self, txid: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pos().0 != txid {
            assert!(
                Instant::now() < deadline,
                "the replica serves txid {:x}, not {txid:x}, after {timeout:?}; log:\n{}",
                self.pos().0,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// The status line SIGUSR1 logs.
    pub fn status_line(&self) -> String {
        let count = |t: &str| t.matches(" lists ").count();
        let before = count(&self.log_text());
        self.signal("-USR1");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.log_text();
            if count(&t) > before {
                return t.lines().rfind(|l| l.contains(" lists ")).unwrap().into();
            }
            assert!(Instant::now() < deadline, "no status line; log:\n{t}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Bytes fetched from the store since the process started.
    pub fn bytes_fetched(&self) -> u64 {
        let line = self.status_line();
        let mut words = line.split(' ');
        while let Some(w) = words.next() {
            if w == "bytes" {
                return words.next().unwrap().parse().unwrap();
            }
        }
        panic!("no bytes in {line:?}");
    }

    /// SIGTERM: the process must exit 0 and leave no mount.
    pub fn stop(mut self) {
        let code = self.terminate();
        assert_eq!(code, Some(0), "log:\n{}", self.log_text());
        assert!(!is_mounted(&self.mnt), "still mounted after exit");
    }

    fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.terminate();
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", s(&self.mnt)])
                .status();
            if is_mounted(&self.mnt) {
                let _ = Command::new("umount").args(["-l", s(&self.mnt)]).status();
            }
        }
    }
}

/// `sqlite3 DB SQL`: (success, stdout, stderr).
pub fn sqlite3(db: &Path, sql: &str) -> (bool, String, String) {
    let mut c = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let ok = c.wait().unwrap().success();
    (ok, out, err)
}

/// The database's content as `sqlite3 .dump` prints it (the header the
/// replica patches is not part of it).
pub fn dump(db: &Path) -> String {
    let (ok, out, err) = sqlite3(db, ".dump");
    assert!(ok, "dump of {}: {err}", db.display());
    out
}
