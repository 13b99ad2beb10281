//! Mounting: a busy mountpoint, overlapping directories, and the stale mount
//! a killed daemon leaves behind (detected, explained, cleared).

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::TestMount;
use fuse_fs::{MountConfig, MountError, MountState, NoHooks, PassthroughOptions};

fn mount_at(data: &Path, mnt: &Path) -> Result<fuse_fs::Mounted, MountError> {
    fuse_fs::mount_passthrough(
        data,
        mnt,
        PassthroughOptions::default(),
        &MountConfig::default(),
        NoHooks,
    )
    .map(|(m, _)| m)
}

#[test]
fn a_mounted_mountpoint_is_busy() {
    let t = TestMount::new(NoHooks);
    let other = tempfile::tempdir().expect("temp dir");
    let e = mount_at(other.path(), &t.mnt).expect_err("busy");
    assert!(
        matches!(&e, MountError::MountpointBusy { fstype, .. } if fstype == "fuse"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("already mounted") && msg.contains("fusermount3 -u"),
        "{msg}"
    );
    assert!(matches!(
        fuse_fs::mount_state(&t.mnt),
        Ok(MountState::Live { .. })
    ));
}

#[test]
fn overlapping_directories_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    fs::create_dir_all(data.join("mnt")).expect("mkdir");
    let e = mount_at(&data, &data.join("mnt")).expect_err("mountpoint inside the data dir");
    assert!(matches!(e, MountError::Overlap { .. }), "{e:?}");
    assert!(e.to_string().contains("outside the data directory"), "{e}");
    let e = mount_at(&data.join("mnt"), &data).expect_err("data dir inside the mountpoint");
    assert!(matches!(e, MountError::Overlap { .. }), "{e:?}");
    let e = mount_at(&dir.path().join("nope"), &dir.path().join("m")).expect_err("no data dir");
    assert!(matches!(e, MountError::DataDirMissing(_)), "{e:?}");
}

const CHILD_DATA: &str = "FUSE_FS_TEST_CHILD_DATA";
const CHILD_MNT: &str = "FUSE_FS_TEST_CHILD_MNT";

/// Run by `a_killed_daemon_leaves_a_stale_mount_that_is_cleared` in a child
/// process (this test binary again): mounts, says so, waits to be killed.
#[test]
#[ignore = "helper: run as a child process by another test"]
fn child_mounts_and_waits() {
    let (Some(data), Some(mnt)) = (std::env::var_os(CHILD_DATA), std::env::var_os(CHILD_MNT))
    else {
        panic!("run only by a_killed_daemon_leaves_a_stale_mount_that_is_cleared");
    };
    let m = mount_at(Path::new(&data), Path::new(&mnt)).expect("child mount");
    fs::write(
        Path::new(&mnt).join("from-child"),
        b"written before the crash",
    )
    .expect("write");
    println!("child mounted");
    thread::sleep(Duration::from_secs(120));
    drop(m);
}

#[test]
fn a_killed_daemon_leaves_a_stale_mount_that_is_cleared() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    fs::create_dir(&data).expect("mkdir");
    fs::create_dir(&mnt).expect("mkdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "child_mounts_and_waits",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DATA, &data)
        .env(CHILD_MNT, &mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mounted = (0..50).any(|_| {
        rx.recv_timeout(Duration::from_secs(1))
            .is_ok_and(|l| l.ends_with("child mounted"))
    });
    let _ = child.kill();
    let _ = child.wait();
    // Whatever happens below, leave no mount behind.
    let _guard = Unmounter(mnt.clone());
    assert!(mounted, "the child did not mount");

    let state = fuse_fs::mount_state(&mnt).expect("state");
    assert_eq!(
        state,
        MountState::Stale {
            fstype: "fuse".into()
        }
    );
    let e = fs::metadata(&mnt).expect_err("a dead mount");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN));
    let e = fuse_fs::check_mountpoint(&mnt, false).expect_err("stale, not cleared");
    assert!(matches!(e, MountError::StaleMount { .. }), "{e:?}");
    assert!(e.to_string().contains("fusermount3 -u -z"), "{e}");

    let mut m = mount_at(&data, &mnt).expect("mount clears the stale mount");
    assert_eq!(
        fs::read(mnt.join("from-child")).expect("read"),
        b"written before the crash"
    );
    m.unmount().expect("unmount");
    assert_eq!(
        fuse_fs::mount_state(&mnt).expect("state"),
        MountState::NotMounted
    );
}

/// Lazily unmounts a path on drop, if anything is mounted there.
struct Unmounter(std::path::PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        if !matches!(fuse_fs::mount_state(&self.0), Ok(MountState::NotMounted)) {
            let _ = common::run_bounded(
                Command::new("fusermount3").arg("-u").arg("-z").arg(&self.0),
                Duration::from_secs(10),
            );
        }
    }
}
