//! File operations through a plain passthrough mount reach the data
//! directory exactly.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use common::{open_rw, run_bounded, TestMount};
use fuse_fs::NoHooks;

#[test]
fn files_and_directories_pass_through() {
    let t = TestMount::new(NoHooks);
    assert!(
        t.handle.passthrough_status().active,
        "{:?}",
        t.handle.passthrough_status()
    );
    fs::write(t.m("a.txt"), b"hello").expect("write");
    assert_eq!(fs::read(t.d("a.txt")).expect("backing"), b"hello");
    fs::write(t.d("b.txt"), b"from below").expect("write backing");
    assert_eq!(fs::read(t.m("b.txt")).expect("read"), b"from below");

    fs::create_dir(t.m("dir")).expect("mkdir");
    fs::write(t.m("dir/inner"), b"x").expect("write inner");
    fs::rename(t.m("dir"), t.m("moved")).expect("rename dir");
    assert_eq!(fs::read(t.m("moved/inner")).expect("read moved"), b"x");
    assert!(t.d("moved/inner").exists() && !t.d("dir").exists());

    let mut names: Vec<String> = fs::read_dir(&t.mnt)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.txt", "b.txt", "moved"]);

    fs::remove_file(t.m("moved/inner")).expect("unlink");
    fs::remove_dir(t.m("moved")).expect("rmdir");
    assert!(!t.d("moved").exists());
}

#[test]
fn attributes_truncate_chmod_times_and_links() {
    let t = TestMount::new(NoHooks);
    fs::write(t.m("f"), b"0123456789").expect("write");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(t.m("f"))
        .expect("open");
    f.set_len(4).expect("ftruncate");
    drop(f);
    assert_eq!(fs::read(t.d("f")).expect("backing"), b"0123");
    fs::set_permissions(t.m("f"), fs::Permissions::from_mode(0o640)).expect("chmod");
    assert_eq!(fs::metadata(t.d("f")).expect("stat").mode() & 0o7777, 0o640);
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let f = fs::File::options()
        .write(true)
        .open(t.m("f"))
        .expect("open");
    f.set_modified(when).expect("utimens");
    drop(f);
    assert_eq!(
        fs::metadata(t.d("f"))
            .expect("stat")
            .modified()
            .expect("mtime"),
        when
    );
    assert_eq!(
        fs::metadata(t.m("f"))
            .expect("stat")
            .modified()
            .expect("mtime"),
        when
    );

    fs::hard_link(t.m("f"), t.m("g")).expect("link");
    assert_eq!(
        fs::metadata(t.m("g")).expect("stat").ino(),
        fs::metadata(t.m("f")).expect("stat").ino()
    );
    assert_eq!(fs::metadata(t.m("f")).expect("stat").nlink(), 2);
    std::os::unix::fs::symlink("f", t.m("s")).expect("symlink");
    assert_eq!(
        fs::read_link(t.m("s")).expect("readlink"),
        std::path::Path::new("f")
    );
    assert_eq!(fs::read(t.m("s")).expect("read via symlink"), b"0123");
    let out = run_bounded(
        std::process::Command::new("df").arg(&t.mnt),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "statfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_unlinked_open_file_stays_usable() {
    let t = TestMount::new(NoHooks);
    let mut f = open_rw(&t.m("gone"));
    f.write_all(b"still here").expect("write");
    fs::remove_file(t.m("gone")).expect("unlink");
    assert!(!t.d("gone").exists());
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut s = String::new();
    f.read_to_string(&mut s).expect("read");
    assert_eq!(s, "still here");
    assert_eq!(f.metadata().expect("fstat").len(), 10);
    f.set_len(5).expect("ftruncate an unlinked file");
    assert_eq!(f.metadata().expect("fstat").len(), 5);
    f.sync_all().expect("fsync");
}

#[test]
fn o_trunc_and_o_excl_and_permissions_of_new_files() {
    let t = TestMount::new(NoHooks);
    fs::write(t.m("t"), b"long content").expect("write");
    fs::write(t.m("t"), b"short").expect("rewrite with O_TRUNC");
    assert_eq!(fs::read(t.d("t")).expect("backing"), b"short");
    let e = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(t.m("t"))
        .expect_err("O_EXCL");
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    // The daemon's umask must not apply on top of the caller's.
    let f = std::os::unix::fs::OpenOptionsExt::mode(
        fs::OpenOptions::new().write(true).create(true),
        0o666,
    )
    .open(t.m("m"))
    .expect("create");
    drop(f);
    let want = 0o666 & !current_umask();
    assert_eq!(fs::metadata(t.d("m")).expect("stat").mode() & 0o777, want);
}

fn current_umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .expect("Umask line")
}

#[test]
fn unmount_is_refused_while_busy_then_clean() {
    let mut t = TestMount::new(NoHooks);
    let f = open_rw(&t.m("open"));
    let e = t.unmount().expect_err("busy");
    assert!(matches!(e, fuse_fs::MountError::UnmountBusy(_)), "{e}");
    assert!(e.to_string().contains("busy"), "{e}");
    assert!(fs::metadata(t.m("open")).is_ok(), "still served");
    drop(f);
    t.unmount().expect("unmount");
    assert_eq!(
        fuse_fs::mount_state(&t.mnt).expect("state"),
        fuse_fs::MountState::NotMounted
    );
}
