//! POSIX locks through a real mount, between this process and Python
//! children: exact F_GETLK answers, release at close and at SIGKILL, and
//! F_SETLKW answered later without holding a worker thread, or failed with
//! EAGAIN at the deadline.

mod common;

use std::fs;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{bounded, getlk, open_rw, setlk, setlkw, Py, TestMount};
use fuse_fs::{NoHooks, PassthroughOptions};
use libc::{F_RDLCK, F_UNLCK, F_WRLCK};

const SEC: Duration = Duration::from_secs(1);

/// The child answers each "typ start len" line on stdin with the F_GETLK
/// result "type start len pid".
const GETLK_SERVER: &str = r#"
fd = os.open(sys.argv[1], os.O_RDWR)
say("ready")
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "lock":
        lk(fd, fcntl.F_SETLK, int(cmd[1]), int(cmd[2]), int(cmd[3]))
        say("locked")
    else:
        t, s, l, p = lk(fd, fcntl.F_GETLK, int(cmd[0]), int(cmd[1]), int(cmd[2]))
        say(t, s, l, p)
"#;

fn ask(py: &mut Py, typ: i32, start: i64, len: i64) -> String {
    py.send(&format!("{typ} {start} {len}"));
    py.line(10 * SEC)
}

#[test]
fn getlk_answers_exactly_across_processes() {
    let t = TestMount::new(NoHooks);
    let path = t.m("locks.bin");
    let f = open_rw(&path);
    setlk(&f, F_RDLCK, 10, 10).expect("read lock 10..19");
    setlk(&f, F_WRLCK, 40, 0).expect("write lock 40..EOF");
    let me = std::process::id();
    let mut py = Py::spawn(GETLK_SERVER, &[path.to_str().expect("utf-8")]);
    assert_eq!(py.line(10 * SEC), "ready");
    // A write lock in the way is reported before a read lock.
    assert_eq!(
        ask(&mut py, F_WRLCK, 0, 100),
        format!("{F_WRLCK} 40 0 {me}")
    );
    assert_eq!(
        ask(&mut py, F_WRLCK, 0, 20),
        format!("{F_RDLCK} 10 10 {me}")
    );
    assert_eq!(ask(&mut py, F_RDLCK, 10, 5), format!("{F_UNLCK} 10 5 0"));
    assert_eq!(ask(&mut py, F_RDLCK, 45, 1), format!("{F_WRLCK} 40 0 {me}"));
    assert_eq!(ask(&mut py, F_WRLCK, 20, 20), format!("{F_UNLCK} 20 20 0"));
    // Downgrading part of the write lock shows up at once.
    setlk(&f, F_RDLCK, 40, 10).expect("downgrade 40..49");
    assert_eq!(ask(&mut py, F_RDLCK, 40, 10), format!("{F_UNLCK} 40 10 0"));
    assert_eq!(
        ask(&mut py, F_WRLCK, 45, 1),
        format!("{F_RDLCK} 40 10 {me}")
    );
    assert_eq!(ask(&mut py, F_RDLCK, 50, 1), format!("{F_WRLCK} 50 0 {me}"));
    // The child's own lock is visible to us and never to itself.
    py.send(&format!("lock {F_RDLCK} 25 5"));
    assert_eq!(py.line(10 * SEC), "locked");
    assert_eq!(
        getlk(&f, F_WRLCK, 20, 10),
        (F_RDLCK, 25, 5, py.pid() as i32)
    );
    assert_eq!(
        getlk(&f, F_WRLCK, 0, 0).0,
        F_RDLCK,
        "our own locks are not reported, the child's are"
    );
    assert_eq!(ask(&mut py, F_WRLCK, 25, 5), format!("{F_UNLCK} 25 5 0"));
    // Unlocking a sub-range splits our read lock.
    setlk(&f, F_UNLCK, 12, 2).expect("unlock 12..13");
    assert_eq!(ask(&mut py, F_WRLCK, 12, 2), format!("{F_UNLCK} 12 2 0"));
    assert_eq!(ask(&mut py, F_WRLCK, 11, 2), format!("{F_RDLCK} 10 2 {me}"));
    assert_eq!(ask(&mut py, F_WRLCK, 13, 2), format!("{F_RDLCK} 14 6 {me}"));
    assert!(py.wait(10 * SEC));
}

#[test]
fn a_setlk_conflict_is_eagain_and_close_releases() {
    let t = TestMount::new(NoHooks);
    let path = t.m("c.bin");
    let mut py = Py::spawn(
        r#"
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
lk(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 100)
say("locked")
sys.stdin.readline()
fd2 = os.open(sys.argv[1], os.O_RDONLY)
os.close(fd2)   # closing ANY descriptor drops all of this process's locks
say("closed")
sys.stdin.readline()
"#,
        &[path.to_str().expect("utf-8")],
    );
    assert_eq!(py.line(10 * SEC), "locked");
    let f = open_rw(&path);
    assert_eq!(setlk(&f, F_RDLCK, 50, 1), Err(libc::EAGAIN));
    assert_eq!(setlk(&f, F_WRLCK, 100, 1), Ok(()), "byte 100 is free");
    py.send("go");
    assert_eq!(py.line(10 * SEC), "closed");
    assert_eq!(setlk(&f, F_WRLCK, 0, 100), Ok(()));
    assert!(py.wait(10 * SEC));
}

#[test]
fn a_process_killed_while_holding_locks_releases_them() {
    let t = TestMount::new(NoHooks);
    let path = t.m("k.bin");
    let mut py = Py::spawn(
        r#"
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
lk(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 0)
say("locked")
time.sleep(60)
"#,
        &[path.to_str().expect("utf-8")],
    );
    assert_eq!(py.line(10 * SEC), "locked");
    let f = open_rw(&path);
    assert_eq!(getlk(&f, F_WRLCK, 7, 1), (F_WRLCK, 0, 0, py.pid() as i32));
    assert_eq!(setlk(&f, F_WRLCK, 7, 1), Err(libc::EAGAIN));
    py.kill();
    // Exit closes the files (FLUSH) before the parent can reap the child.
    assert_eq!(getlk(&f, F_WRLCK, 0, 0).0, F_UNLCK);
    assert_eq!(setlk(&f, F_WRLCK, 0, 0), Ok(()));
}

#[test]
fn a_sqlite_writer_killed_mid_transaction_leaves_the_database_usable() {
    let t = TestMount::new(NoHooks);
    let db = t.m("app.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x);")
        .expect("schema");
    let mut py = Py::spawn(
        r#"
import sqlite3
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")
c.execute("INSERT INTO t VALUES (1)")
say("in transaction")
time.sleep(60)
"#,
        &[db.to_str().expect("utf-8")],
    );
    assert_eq!(py.line(10 * SEC), "in transaction");
    let e = conn
        .execute("INSERT INTO t VALUES (2)", [])
        .expect_err("the writer holds RESERVED");
    assert!(e.to_string().contains("locked"), "{e}");
    py.kill();
    conn.busy_timeout(10 * SEC).expect("busy timeout");
    conn.execute("INSERT INTO t VALUES (3)", [])
        .expect("insert after the kill");
    let rows: Vec<i64> = conn
        .prepare("SELECT x FROM t")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("select");
    assert_eq!(rows, vec![3], "the killed transaction was rolled back");
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(ok, "ok");
}

/// A child holding a write lock on byte 0 of `path` until it reads a line.
fn holder(path: &std::path::Path) -> Py {
    let py = Py::spawn(
        r#"
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
lk(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 1)
say("locked")
sys.stdin.readline()
lk(fd, fcntl.F_SETLK, fcntl.F_UNLCK, 0, 1)
say("released")
sys.stdin.readline()
"#,
        &[path.to_str().expect("utf-8")],
    );
    assert_eq!(py.line(10 * SEC), "locked");
    py
}

#[test]
fn setlkw_waits_without_blocking_other_requests_then_is_granted() {
    let t = TestMount::new(NoHooks);
    let path = t.m("w.bin");
    fs::write(t.m("other"), b"other file").expect("write");
    let mut py = holder(&path);
    // More waiters than the mount has worker threads (4): if a waiter held a
    // thread, the requests below would hang.
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let waiters: Vec<_> = (0..6)
        .map(|_| {
            let (p, tx) = (path.clone(), tx.clone());
            thread::spawn(move || {
                let f = open_rw(&p);
                let r = setlkw(&f, F_WRLCK, 0, 1);
                let _ = tx.send((r, started.elapsed()));
                // Keep the file open (closing it would drop our locks) until
                // every waiter was answered.
                thread::sleep(Duration::from_millis(500));
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    assert!(
        rx.try_recv().is_err(),
        "F_SETLKW must wait while the child holds the lock"
    );
    // Meanwhile the mount serves everything else, locks on the same file too.
    for i in 0..8 {
        let (p, o) = (path.clone(), t.m("other"));
        let got = bounded(5 * SEC, move || {
            let lk = getlk(&open_rw(&p), F_WRLCK, 0, 1).0;
            (
                fs::read(&o).expect("read other"),
                lk,
                fs::write(p.with_extension(format!("n{i}")), b"x").is_ok(),
            )
        });
        assert_eq!(got, (b"other file".to_vec(), F_WRLCK, true));
    }
    assert!(rx.try_recv().is_err(), "still waiting");
    py.send("release");
    assert_eq!(py.line(10 * SEC), "released");
    for _ in 0..6 {
        let (r, waited) = rx
            .recv_timeout(10 * SEC)
            .expect("every waiter was answered");
        assert_eq!(r, Ok(()));
        assert!(
            waited >= Duration::from_millis(300),
            "it waited: {waited:?}"
        );
    }
    for w in waiters {
        w.join().expect("join");
    }
    assert!(py.wait(10 * SEC));
}

#[test]
fn setlkw_fails_with_eagain_at_the_deadline() {
    let mut opts = PassthroughOptions::default();
    opts.lock_wait_timeout = Duration::from_millis(800);
    let t = TestMount::with(NoHooks, opts);
    let path = t.m("d.bin");
    let py = holder(&path);
    let f = open_rw(&path);
    let t0 = Instant::now();
    let r = bounded(10 * SEC, move || setlkw(&f, F_WRLCK, 0, 1));
    let waited = t0.elapsed();
    // EAGAIN, not EINTR (which the kernel would turn into errno 512).
    assert_eq!(r, Err(libc::EAGAIN));
    assert!(
        waited >= Duration::from_millis(800) && waited < 5 * SEC,
        "{waited:?}"
    );
    drop(py);
}

#[test]
fn a_setlkw_cycle_is_edeadlk() {
    let t = TestMount::new(NoHooks);
    let path = t.m("dl.bin");
    let mut py = Py::spawn(
        r#"
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
lk(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 1, 1)
say("locked")
sys.stdin.readline()
try:
    lk(fd, fcntl.F_SETLKW, fcntl.F_WRLCK, 0, 1)
    say("granted")
except OSError as e:
    say("errno", e.errno)
sys.stdin.readline()
"#,
        &[path.to_str().expect("utf-8")],
    );
    assert_eq!(py.line(10 * SEC), "locked");
    let f = open_rw(&path);
    setlk(&f, F_WRLCK, 0, 1).expect("byte 0");
    let f2 = f.try_clone().expect("dup");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(setlkw(&f2, F_WRLCK, 1, 1));
    });
    // We wait for byte 1 (the child's); the child then asks for byte 0 (ours).
    thread::sleep(Duration::from_millis(300));
    py.send("go");
    let child = py.line(10 * SEC);
    if child == "granted" {
        panic!("both sides cannot be granted");
    }
    assert_eq!(child, format!("errno {}", libc::EDEADLK));
    py.send("exit");
    assert!(py.wait(10 * SEC));
    assert_eq!(
        rx.recv_timeout(10 * SEC).expect("answered"),
        Ok(()),
        "granted when the child exited"
    );
}
