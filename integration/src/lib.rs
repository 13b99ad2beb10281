//! Helpers for the end-to-end tests in `tests/` and the benchmark programs in
//! `src/bin/`: where the `sluice` binary and the Litestream peer are, the
//! daemon and Garage as tests use them, [`TestEnv`] (one replicated database
//! and the checks against it) and the one seeded RNG. The shared test
//! vectors are `ltx_format::test_vectors` (feature `test-util`). Scripts that
//! install and start real servers live in `scripts/`.

pub mod byteflip;
pub mod env;
pub mod faults;
pub mod http;
pub mod mount;
pub mod rng;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use env::{Setup, TestEnv};
pub use rng::XorShift64;

/// A path as the `&str` a command line takes (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("not UTF-8: {}", p.display()))
}

/// A benchmark's work directory: `dir` (created) or a new temporary
/// directory named `prefix…`, removed when the returned guard drops (call
/// `keep()` on it to keep it). The path is canonical.
pub fn work_dir(
    dir: Option<&Path>,
    prefix: &str,
) -> std::io::Result<(PathBuf, Option<tempfile::TempDir>)> {
    if let Some(d) = dir {
        std::fs::create_dir_all(d)?;
        return Ok((d.canonicalize()?, None));
    }
    let t = tempfile::Builder::new().prefix(prefix).tempdir()?;
    Ok((t.path().canonicalize()?, Some(t)))
}

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `sluice` binary built alongside the tests (override with `SLUICE_BIN`).
pub fn sluice_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> -> target/<profile>/sluice
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("sluice"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p sluice` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// The Litestream 0.5.17 binary installed by `integration/scripts/install-deps.sh`
/// (override with `SLUICE_LITESTREAM`). Panics with the fix if it is missing:
/// an interoperability test must not pass by skipping.
pub fn litestream_bin() -> PathBuf {
    let p = std::env::var_os("SLUICE_LITESTREAM").map_or_else(
        || project_root().join(".tools/litestream-venv/bin/litestream"),
        PathBuf::from,
    );
    assert!(
        p.exists(),
        "Litestream 0.5.17 not found at {}: run integration/scripts/install-deps.sh",
        p.display()
    );
    p
}

/// Runs a command to completion and returns its output.
pub fn run(cmd: &mut Command) -> Output {
    // Litestream refuses to start with a custom CA bundle set for plain HTTP.
    cmd.env_remove("AWS_CA_BUNDLE");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `sluice ARGS...`.
pub fn sluice(args: &[&str]) -> Output {
    run(Command::new(sluice_bin()).args(args))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `sluice replicate` process for tests, logging to a file.
#[derive(Debug)]
pub struct Daemon {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `sluice replicate --config CONFIG`.
    pub fn start(config: &Path, log: &Path) -> Daemon {
        Self::start_with_env(config, log, &[])
    }

    /// Starts it with extra environment variables.
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let args = [
            std::ffi::OsStr::new("replicate"),
            "--config".as_ref(),
            config.as_os_str(),
        ];
        Daemon::spawn(&args, log, env)
    }

    /// Runs `sluice ARGS...`, logging to `log` (appended).
    pub fn spawn(args: &[&std::ffi::OsStr], log: &Path, env: &[(&str, &str)]) -> Daemon {
        Self::spawn_in(Command::new(sluice_bin()), args, log, env)
    }

    /// The same with at most `nofile` open files (soft and hard limit, set
    /// by util-linux's `prlimit`, which then executes sluice in place).
    pub fn spawn_limited(
        args: &[&std::ffi::OsStr],
        log: &Path,
        env: &[(&str, &str)],
        nofile: u32,
    ) -> Daemon {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(sluice_bin());
        Self::spawn_in(cmd, args, log, env)
    }

    fn spawn_in(
        mut cmd: Command,
        args: &[&std::ffi::OsStr],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = cmd
            .args(args)
            .env_remove("AWS_CA_BUNDLE")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,sluice=debug")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(f)
            .spawn()
            .expect("spawn sluice");
        Daemon {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Starts and waits (bounded) until the database is being captured.
    pub fn start_ready(config: &Path, log: &Path) -> Daemon {
        let before = std::fs::read_to_string(log).map_or(0, |s| s.matches("capturing").count());
        let d = Daemon::start(config, log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while d.log_text().matches("capturing").count() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "sluice did not start capturing; log:\n{}",
                d.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        d
    }

    /// Sends a signal (`-TERM`, `-USR1`, …) to the daemon.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    /// Waits for exit (bounded); returns the exit code, `None` if killed.
    pub fn wait(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "sluice did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait: the clean stop.
    pub fn stop(mut self) -> Option<i32> {
        self.signal("-TERM");
        self.wait(std::time::Duration::from_secs(30))
    }

    /// SIGTERM, and the exit status must be 0; prints the log otherwise.
    pub fn stop_ok(self) {
        let log = self.log.clone();
        let code = self.stop();
        assert_eq!(
            code,
            Some(0),
            "sluice exited with {code:?}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Waits (bounded) for the daemon to exit by itself with a non-zero
    /// status, having logged `needle`.
    pub fn expect_failure(&mut self, needle: &str, timeout: std::time::Duration) {
        let code = self.wait(timeout);
        assert_ne!(code, Some(0), "sluice exited 0; log:\n{}", self.log_text());
        assert!(self.log_text().contains(needle), "{}", self.log_text());
    }

    /// SIGKILL: the crash.
    pub fn kill9(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (bounded).
    pub fn wait_for_log(&self, needle: &str, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM to a child process (Litestream, say), a bounded wait for it to
/// exit, then SIGKILL if it has not.
pub fn terminate(child: &mut std::process::Child, timeout: std::time::Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + timeout;
    while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// An S3 server for tests: the Garage that `integration/scripts/test-all.sh`
/// starts and describes in `SLUICE_S3_*` and the AWS credential variables
/// ([`garage`]), the SeaweedFS beside it ([`seaweedfs`]), or one a fault test
/// starts itself.
#[derive(Debug, Clone)]
pub struct Garage {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

/// The running Garage, or `None` without one (the caller's test then
/// returns early and says so). `SLUICE_REQUIRE_GARAGE=1`, set by the test
/// command, turns a missing Garage into a failure: no S3 test passes by
/// skipping there.
pub fn garage() -> Option<Garage> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let g = (|| {
        Some(Garage {
            endpoint: get("SLUICE_S3_ENDPOINT")?,
            region: get("SLUICE_S3_REGION")?,
            bucket: get("SLUICE_S3_BUCKET")?,
            key_id: get("AWS_ACCESS_KEY_ID")?,
            secret: get("AWS_SECRET_ACCESS_KEY")?,
        })
    })();
    if g.is_none() {
        assert!(
            get("SLUICE_REQUIRE_GARAGE").is_none(),
            "SLUICE_REQUIRE_GARAGE is set but SLUICE_S3_* are not: start Garage with integration/scripts/garage.sh"
        );
        eprintln!("skipped: no Garage (run integration/scripts/test-all.sh)");
    }
    g
}

/// Any S3 server the tests talk to (the struct was Garage's first).
pub type S3Server = Garage;

/// The SeaweedFS 4.48 that `integration/scripts/test-all.sh` starts beside
/// Garage (`integration/scripts/seaweedfs.sh`) and describes in
/// `SLUICE_SEAWEEDFS_*`, or `None` without one. `SLUICE_REQUIRE_SEAWEEDFS=1`,
/// set by the test command, turns a missing one into a failure.
pub fn seaweedfs() -> Option<S3Server> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let w = (|| {
        Some(Garage {
            endpoint: get("SLUICE_SEAWEEDFS_ENDPOINT")?,
            region: get("SLUICE_SEAWEEDFS_REGION")?,
            bucket: get("SLUICE_SEAWEEDFS_BUCKET")?,
            key_id: get("SLUICE_SEAWEEDFS_KEY_ID")?,
            secret: get("SLUICE_SEAWEEDFS_SECRET")?,
        })
    })();
    if w.is_none() {
        assert!(
            get("SLUICE_REQUIRE_SEAWEEDFS").is_none(),
            "SLUICE_REQUIRE_SEAWEEDFS is set but SLUICE_SEAWEEDFS_* are not: start it with integration/scripts/seaweedfs.sh"
        );
        eprintln!("skipped: no SeaweedFS (run integration/scripts/test-all.sh)");
    }
    w
}

/// Reads an `env.sh` that `garage.sh` or `seaweedfs.sh` wrote (lines
/// `export NAME=VALUE`) into a server description: for a test that starts
/// its own server.
pub fn s3_server_from_env_file(path: &Path) -> S3Server {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let vars: std::collections::HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .collect();
    let get = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| vars.get(n))
            .unwrap_or_else(|| panic!("{} sets none of {names:?}", path.display()))
            .to_string()
    };
    Garage {
        endpoint: get(&["SLUICE_S3_ENDPOINT", "SLUICE_SEAWEEDFS_ENDPOINT"]),
        region: get(&["SLUICE_S3_REGION", "SLUICE_SEAWEEDFS_REGION"]),
        bucket: get(&["SLUICE_S3_BUCKET", "SLUICE_SEAWEEDFS_BUCKET"]),
        key_id: get(&["AWS_ACCESS_KEY_ID", "SLUICE_SEAWEEDFS_KEY_ID"]),
        secret: get(&["AWS_SECRET_ACCESS_KEY", "SLUICE_SEAWEEDFS_SECRET"]),
    }
}

impl Garage {
    /// The credentials as environment variables, for a child process (the
    /// daemon, `sluice ls`) talking to this server.
    pub fn env(&self) -> [(&'static str, &str); 3] {
        [
            ("AWS_ACCESS_KEY_ID", &self.key_id),
            ("AWS_SECRET_ACCESS_KEY", &self.secret),
            ("AWS_REGION", &self.region),
        ]
    }

    /// A replica URL under `prefix` in the test bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint={}&region={}&force-path-style=true",
            self.bucket, self.endpoint, self.region
        )
    }
}

/// `name-<nanoseconds>`: a prefix no other run uses.
pub fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{name}-{n:x}")
}

/// The `.ltx` files of a directory, sorted; none if it does not exist.
pub fn ltx_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ltx"))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Starts `litestream replicate` for `db` to `prefix` in the test Garage, with
/// level-1 compaction every `l1_interval`; `extra_db` adds lines to the
/// database entry (indented four spaces). The config goes in `dir`.
pub fn litestream_replicate_to_garage(
    g: &Garage,
    db: &Path,
    prefix: &str,
    l1_interval: &str,
    extra_db: &str,
    dir: &Path,
    stderr: std::process::Stdio,
) -> std::process::Child {
    let cfg = dir.join("litestream.yml");
    std::fs::write(
        &cfg,
        format!(
            "levels:\n  - interval: {l1_interval}\n\
             dbs:\n  - path: {}\n    monitor-interval: 100ms\n{extra_db}    replica:\n      type: s3\n      bucket: {}\n      path: {prefix}\n      endpoint: {}\n      region: {}\n      force-path-style: true\n      access-key-id: {}\n      secret-access-key: {}\n      sync-interval: 200ms\n",
            db.display(), g.bucket, g.endpoint, g.region, g.key_id, g.secret
        ),
    )
    .expect("write litestream.yml");
    Command::new(litestream_bin())
        .arg("replicate")
        .arg("-config")
        .arg(&cfg)
        .env_remove("AWS_CA_BUNDLE")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn litestream replicate")
}
