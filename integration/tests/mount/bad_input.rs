//! Bad input gets a clear error naming the problem and the fix: a busy,
//! missing or non-empty mountpoint, a missing data directory, a write to a
//! database that is not whole pages, and the journal and locking modes that
//! give no commit signal.

use std::os::unix::fs::FileExt;

use integration::mount::MountEnv;
use integration::{s, sluice, stderr};

use super::open;

fn mount_fails(args: &[&str]) -> String {
    let o = sluice(args);
    assert!(!o.status.success(), "sluice {args:?} succeeded");
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn bad_mountpoints_and_data_directories_are_named() {
    let mut env = MountEnv::new();
    let url = format!("file://{}", env.replica.display());
    let missing = env.dir().join("nowhere");
    let e = mount_fails(&["mount", s(&env.data), s(&missing), &url]);
    assert!(
        e.contains(s(&missing)) && e.contains("does not exist"),
        "{e}"
    );
    let full = env.dir().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    let e = mount_fails(&["mount", s(&env.data), s(&full), &url]);
    assert!(e.contains("not empty"), "{e}");
    let e = mount_fails(&["mount", s(&missing), s(&env.mnt), &url]);
    assert!(e.contains(s(&missing)), "{e}");
    env.start();
    let e = mount_fails(&["mount", s(&env.data), s(&env.mnt), &url]);
    assert!(e.contains("already") || e.contains("busy"), "{e}");
    assert_eq!(env.stop(), Some(0), "{}", env.log_text());
}

#[test]
fn a_write_that_is_not_whole_pages_is_refused() {
    let mut env = MountEnv::new();
    env.start();
    let db = env.db("app.db");
    open(&db, "DELETE")
        .execute_batch("CREATE TABLE t(v); INSERT INTO t VALUES (1);")
        .unwrap();
    let before = std::fs::read(env.backing("app.db")).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    let err = f.write_all_at(b"garbage", 100).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(22), "EINVAL: {err}");
    drop(f);
    assert_eq!(std::fs::read(env.backing("app.db")).unwrap(), before);
    assert!(
        env.log_text().contains("not whole pages"),
        "{}",
        env.log_text()
    );
    assert_eq!(env.stop(), Some(0), "{}", env.log_text());
}

#[test]
fn modes_without_a_commit_signal_are_refused_and_say_why() {
    let mut env = MountEnv::new();
    env.start();
    // The refused write shows in SQLite as an I/O error; the refused lock as
    // a permission error. Either way the log says why.
    for (name, pragmas, why, sqlite_error) in [
        (
            "memory.db",
            "PRAGMA journal_mode=MEMORY;",
            "journal_mode=MEMORY or OFF",
            "disk I/O error",
        ),
        (
            "off.db",
            "PRAGMA journal_mode=OFF;",
            "journal_mode=MEMORY or OFF",
            "disk I/O error",
        ),
        (
            "exclusive.db",
            "PRAGMA journal_mode=WAL; PRAGMA locking_mode=EXCLUSIVE;",
            "locking_mode=EXCLUSIVE in WAL mode",
            "access permission denied",
        ),
    ] {
        let db = env.db(name);
        // Created in a mode that works, then switched.
        open(&db, "DELETE")
            .execute_batch("CREATE TABLE t(v); INSERT INTO t VALUES (1);")
            .unwrap();
        let c = rusqlite::Connection::open(&db).unwrap();
        for p in pragmas.split(';').filter(|p| !p.trim().is_empty()) {
            let _: String = c
                .query_row(p, [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{name}: {p}: {e}"));
        }
        let err = c
            .execute_batch("INSERT INTO t VALUES (2); INSERT INTO t VALUES (3);")
            .unwrap_err();
        assert!(err.to_string().contains(sqlite_error), "{name}: {err}");
        assert!(env.log_text().contains(why), "{name}: {}", env.log_text());
        drop(c);
        let mode = if name == "exclusive.db" {
            "WAL"
        } else {
            "DELETE"
        };
        let rows: i64 = open(&db, mode)
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "{name}: nothing of the refused transaction is in");
    }
    assert_eq!(env.stop(), Some(0), "{}", env.log_text());
}
