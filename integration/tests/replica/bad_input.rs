//! The command line and the config form: several replicas in one process
//! with metrics and status lines; bad input ends with one clear error and
//! no mount left behind. `file://` replicas; no Garage needed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration::http::{free_port, http_get, metric};
use integration::{s, sluice, stderr, Setup};

use crate::{dump, fuse_available, is_mounted, Replica};

/// Unmounts a mountpoint lazily on drop, if it is still mounted.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", s(&self.0)])
                .status();
        }
    }
}

/// `sluice replica ARGS` must fail at start: (stderr, and no mount at `mnt`).
fn fails(args: &[&str], mnt: &Path) -> String {
    std::fs::create_dir_all(mnt).unwrap();
    let _guard = Unmount(mnt.to_path_buf());
    let mut all = vec!["replica"];
    all.extend_from_slice(args);
    let o = sluice(&all);
    assert!(!o.status.success(), "{all:?} succeeded");
    assert!(!is_mounted(mnt), "{all:?} left a mount");
    stderr(&o)
}

#[test]
fn empty_replicas_and_unknown_names_are_clear_errors() {
    if !fuse_available() {
        return;
    }
    let env = Setup::new().build();
    let mnt = env.path("mnt");
    let empty = env.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let url = format!("file://{}", empty.display());
    let e = fails(&[&url, s(&mnt)], &mnt);
    assert!(
        e.contains(&format!("replica {url} holds no LTX files")),
        "{e}"
    );

    // A database name that is not under the URL.
    let d = env.start_ready();
    env.settle();
    let parent = format!("file://{}", env.dir().display());
    let e = fails(&[&parent, s(&mnt), "--db", "nope.db"], &mnt);
    assert!(
        e.contains("is \"nope.db\" a database under") && e.contains("check --db"),
        "{e}"
    );
    // The same replica by its name works.
    let r = Replica::start(&parent, &mnt, "replica", &["--db", "replica"]);
    assert_eq!(dump(&r.db()), dump(&env.db));
    r.stop();

    let e = fails(&["file://relative", s(&mnt)], &mnt);
    assert!(e.contains("file:///abs/path"), "{e}");
    d.stop_ok();
}

#[test]
fn a_config_serves_several_replicas_with_metrics_and_status_lines() {
    if !fuse_available() {
        return;
    }
    let env = Setup::new().build();
    let d = env.start_ready();
    let app = env.app();
    app.execute("INSERT INTO t(v) VALUES ('one')", []).unwrap();
    let t0 = env.settle();
    let (m1, m2) = (env.path("m1"), env.path("m2"));
    std::fs::create_dir_all(&m2).unwrap();
    let _g2 = Unmount(m2.clone());
    let addr = format!("127.0.0.1:{}", free_port());
    let config = env.path("replicas.yml");
    std::fs::write(
        &config,
        format!(
            "metrics-addr: {addr}\nreplica-mounts:\n  - url: {url}\n    mountpoint: {m1}\n    poll-interval: 100ms\n    cache-dir: {c1}\n  - url: file://{parent}\n    db: replica\n    mountpoint: {m2}\n    cache-dir: {c2}\n",
            url = env.url,
            m1 = m1.display(),
            m2 = m2.display(),
            c1 = env.path("c1").display(),
            c2 = env.path("c2").display(),
            parent = env.dir().display(),
        ),
    )
    .unwrap();
    let r = Replica::spawn(&["--config", s(&config)], &m1, "replica");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !m2.join("replica").exists() {
        assert!(std::time::Instant::now() < deadline, "{}", r.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    r.wait_txid(t0, Duration::from_secs(10));
    assert_eq!(
        std::fs::read_to_string(m2.join("replica-pos")).unwrap(),
        std::fs::read_to_string(m1.join("replica-pos")).unwrap()
    );
    let text = http_get(&addr, "/metrics");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("sluice_replica_txid{"))
            .count(),
        2,
        "{text}"
    );
    assert_eq!(metric(&text, "sluice_replica_txid{") as u64, t0);
    let line = r.status_line();
    assert!(line.contains(&format!("txid {t0:016x}")), "{line}");
    r.stop();
    assert!(!is_mounted(&m2), "the second mount is left behind");
    d.stop_ok();
}

/// A tmpfs of `size` at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                s(dir),
            ])
            .status()
            .is_ok_and(|st| st.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", s(&self.0)]).status();
    }
}

#[test]
fn a_full_cache_disk_is_a_clear_error() {
    if !fuse_available() {
        return;
    }
    let env = Setup::new().build();
    let d = env.start_ready();
    env.app()
        .execute(
            "INSERT INTO t(v, b) VALUES ('big', randomblob(2000000))",
            [],
        )
        .unwrap();
    env.settle();
    let Some(_cache) = Tmpfs::mount(&env.path("cache"), "256k") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    let mnt = env.path("mnt");
    let e = fails(
        &[&env.url, s(&mnt), "--cache-dir", s(&env.path("cache"))],
        &mnt,
    );
    assert!(
        e.contains("No space left on device") || e.contains("disk full"),
        "{e}"
    );
    eprintln!("full cache disk: {e}");
    d.stop_ok();
}
