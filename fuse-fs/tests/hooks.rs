//! The hooks see SQLite's commits and can refuse operations, through a real
//! mount.

mod common;

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{open_rw, setlk, Py, TestMount};
use fuse_fs::{
    ByteRange, Errno, FsHandle, Hooks, Lock, LockAttempt, LockGranted, LockKind, LocksReleased,
    OpenEvent, OpenMode, ReleaseCause, ServedAs, TruncateEvent, WriteEvent,
};

#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Opened(String, ServedAs),
    Closed(String),
    Released {
        name: String,
        cause: ReleaseCause,
        locks: Vec<Lock>,
        held: bool,
    },
    Granted(String, Lock),
    Write(String, u64, usize),
    Truncate(String, u64),
    Unlink(String),
    Rename(String, String),
    Create(String),
    Fsync(String),
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Records every event; refuses what its name says: `keep` cannot be
/// unlinked (EPERM), `fixed` truncated (EFBIG), `nolock` locked (ENOLCK),
/// `bad-journal` written (EIO), `forbidden` created (EACCES), nothing renamed
/// to `r2` (EXDEV), `sticky` unlocked (EBUSY).
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Ev>>,
    fs: OnceLock<FsHandle>,
}

impl Recorder {
    fn push(&self, e: Ev) {
        self.events.lock().expect("events").push(e);
    }
}

struct Rec(Arc<Recorder>);

impl Hooks for Rec {
    fn open_mode(&self, path: &Path) -> OpenMode {
        if name(path).ends_with("-journal") {
            OpenMode::Routed
        } else {
            OpenMode::Passthrough
        }
    }
    fn opened(&self, ev: &OpenEvent<'_>) -> Result<(), Errno> {
        self.0.push(Ev::Opened(name(ev.path), ev.served));
        Ok(())
    }
    fn closed(&self, ev: &fuse_fs::CloseEvent<'_>) {
        self.0.push(Ev::Closed(name(ev.path)));
    }
    fn check_lock(&self, ev: &LockAttempt<'_>) -> Result<(), Errno> {
        if name(ev.path) == "nolock" {
            return Err(Errno::ENOLCK);
        }
        Ok(())
    }
    fn lock_granted(&self, ev: &LockGranted<'_>) {
        self.0.push(Ev::Granted(name(ev.path), ev.lock));
    }
    fn locks_released(&self, ev: &LocksReleased<'_>) -> Result<(), Errno> {
        // The owner must still hold what it releases while the hook runs.
        let held = self.0.fs.get().is_some_and(|fs| {
            fs.with_locks(|t| {
                ev.released.iter().all(|l| {
                    t.holds(ev.ino, ev.owner, l.range.start(), l.kind)
                        && t.holds(ev.ino, ev.owner, l.range.end(), l.kind)
                })
            })
        });
        self.0.push(Ev::Released {
            name: name(ev.path),
            cause: ev.cause,
            locks: ev.released.to_vec(),
            held,
        });
        if name(ev.path) == "sticky" && ev.cause == ReleaseCause::Unlock {
            return Err(Errno::EBUSY);
        }
        Ok(())
    }
    fn before_write(&self, ev: &WriteEvent<'_>) -> Result<(), Errno> {
        self.0
            .push(Ev::Write(name(ev.path), ev.offset, ev.data.len()));
        if name(ev.path) == "bad-journal" {
            return Err(Errno::EIO);
        }
        Ok(())
    }
    fn before_truncate(&self, ev: &TruncateEvent<'_>) -> Result<(), Errno> {
        self.0.push(Ev::Truncate(name(ev.path), ev.size));
        if name(ev.path) == "fixed" {
            return Err(Errno::EFBIG);
        }
        Ok(())
    }
    fn before_unlink(&self, path: &Path) -> Result<(), Errno> {
        self.0.push(Ev::Unlink(name(path)));
        if name(path) == "keep" {
            return Err(Errno::EPERM);
        }
        Ok(())
    }
    fn before_rename(&self, from: &Path, to: &Path) -> Result<(), Errno> {
        self.0.push(Ev::Rename(name(from), name(to)));
        if name(to) == "r2" {
            return Err(Errno::EXDEV);
        }
        Ok(())
    }
    fn before_create(&self, path: &Path) -> Result<(), Errno> {
        self.0.push(Ev::Create(name(path)));
        if name(path) == "forbidden" {
            return Err(Errno::EACCES);
        }
        Ok(())
    }
    fn after_fsync(&self, path: &Path, _datasync: bool) -> Result<(), Errno> {
        self.0.push(Ev::Fsync(name(path)));
        Ok(())
    }
}

fn mount() -> (TestMount, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let t = TestMount::new(Rec(Arc::clone(&rec)));
    rec.fs.set(t.handle.clone()).expect("set once");
    (t, rec)
}

fn events(rec: &Recorder) -> Vec<Ev> {
    rec.events.lock().expect("events").clone()
}

fn covers_write(locks: &[Lock], byte: u64) -> bool {
    locks
        .iter()
        .any(|l| l.kind == LockKind::Write && l.range.contains(byte))
}

#[test]
fn each_wal_commit_releases_byte_120_while_still_holding_it() {
    let (t, rec) = mount();
    let conn = rusqlite::Connection::open(t.m("w.db")).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
        .expect("schema");
    rec.events.lock().expect("events").clear();
    for i in 0..5 {
        conn.execute("INSERT INTO t VALUES (?1)", [i])
            .expect("insert");
    }
    let commits: Vec<Ev> = events(&rec)
        .into_iter()
        .filter(|e| {
            matches!(e, Ev::Released { name, cause: ReleaseCause::Unlock, locks, .. }
            if name == "w.db-shm" && covers_write(locks, 120))
        })
        .collect();
    assert_eq!(
        commits.len(),
        5,
        "one release of the WAL write lock per commit"
    );
    for c in &commits {
        let Ev::Released { locks, held, .. } = c else {
            unreachable!()
        };
        assert!(held, "the lock is still held while the hook runs");
        assert_eq!(
            locks,
            &[Lock {
                range: ByteRange::byte(120),
                ..locks[0]
            }]
        );
    }
}

#[test]
fn delete_mode_routes_the_journal_and_unlinks_it_at_each_commit() {
    let (t, rec) = mount();
    let conn = rusqlite::Connection::open(t.m("d.db")).expect("open");
    conn.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x);")
        .expect("schema");
    rec.events.lock().expect("events").clear();
    for i in 0..3 {
        conn.execute("INSERT INTO t VALUES (?1)", [i])
            .expect("insert");
    }
    let ev = events(&rec);
    let count = |f: &dyn Fn(&Ev) -> bool| ev.iter().filter(|e| f(e)).count();
    assert_eq!(
        count(&|e| *e == Ev::Unlink("d.db-journal".into())),
        3,
        "{ev:?}"
    );
    assert_eq!(
        count(&|e| *e == Ev::Opened("d.db-journal".into(), ServedAs::PassthroughDirectIo)),
        3
    );
    assert!(
        count(&|e| matches!(e, Ev::Write(n, 0, _) if n == "d.db-journal")) >= 3,
        "journal headers reach the daemon"
    );
    assert!(count(&|e| *e == Ev::Fsync("d.db".into())) >= 3);
    // SQLite's RESERVED byte is released (with PENDING) after each commit.
    let reserved = 0x4000_0001;
    assert!(
        count(
            &|e| matches!(e, Ev::Released { name, locks, held: true, .. } if name == "d.db" && covers_write(locks, reserved))
        ) >= 3
    );
    assert!(
        count(&|e| matches!(e, Ev::Granted(n, l) if n == "d.db" && l.kind == LockKind::Write)) >= 3
    );
    assert!(
        ev.iter()
            .all(|e| !matches!(e, Ev::Write(n, ..) if n == "d.db")),
        "the db file is not routed"
    );
}

#[test]
fn refusing_hooks_fail_the_operation_and_change_nothing() {
    let (t, _rec) = mount();
    fs::write(t.m("keep"), b"k").expect("write");
    assert_eq!(
        fs::remove_file(t.m("keep")).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EPERM))
    );
    assert!(t.d("keep").exists());

    fs::write(t.m("fixed"), b"0123").expect("write");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(t.m("fixed"))
        .expect("open");
    assert_eq!(
        f.set_len(1).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EFBIG))
    );
    drop(f);
    assert_eq!(fs::read(t.d("fixed")).expect("backing"), b"0123");

    let f = open_rw(&t.m("nolock"));
    assert_eq!(setlk(&f, libc::F_WRLCK, 0, 1), Err(libc::ENOLCK));

    let e = fs::write(t.m("bad-journal"), b"data").expect_err("write refused");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert_eq!(fs::read(t.d("bad-journal")).expect("backing"), b"");

    let e = fs::write(t.m("forbidden"), b"x").expect_err("create refused");
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    assert!(!t.d("forbidden").exists());
    let e = fs::create_dir(t.m("forbidden")).expect_err("mkdir refused");
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));

    let e = fs::rename(t.m("keep"), t.m("r2")).expect_err("rename refused");
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    assert!(t.d("keep").exists() && !t.d("r2").exists());
}

#[test]
fn truncation_and_replacement_are_announced() {
    let (t, rec) = mount();
    fs::write(t.m("a"), b"first").expect("write");
    fs::write(t.m("a"), b"2nd").expect("O_TRUNC rewrite");
    fs::write(t.m("b"), b"b").expect("write");
    fs::rename(t.m("b"), t.m("a")).expect("rename over");
    let ev = events(&rec);
    assert!(ev.contains(&Ev::Truncate("a".into(), 0)), "{ev:?}");
    let unlink = ev
        .iter()
        .position(|e| *e == Ev::Unlink("a".into()))
        .expect("replaced file announced");
    let rename = ev
        .iter()
        .position(|e| *e == Ev::Rename("b".into(), "a".into()))
        .expect("rename");
    assert!(unlink < rename);
    assert!(ev.contains(&Ev::Create("b".into())));
    assert!(ev.contains(&Ev::Closed("a".into())));
}

#[test]
fn a_refused_unlock_keeps_the_lock_and_close_drops_it_anyway() {
    let (t, rec) = mount();
    let path = t.m("sticky");
    let f = open_rw(&path);
    setlk(&f, libc::F_WRLCK, 0, 10).expect("lock");
    assert_eq!(setlk(&f, libc::F_UNLCK, 0, 10), Err(libc::EBUSY));
    let probe = r#"
fd = os.open(sys.argv[1], os.O_RDWR)
say(lk(fd, fcntl.F_GETLK, fcntl.F_WRLCK, 0, 0)[0])
"#;
    let py = Py::spawn(probe, &[path.to_str().expect("utf-8")]);
    assert_eq!(
        py.line(Duration::from_secs(10)),
        libc::F_WRLCK.to_string(),
        "still held"
    );
    assert!(py.wait(Duration::from_secs(10)));
    drop(f);
    let py = Py::spawn(probe, &[path.to_str().expect("utf-8")]);
    assert_eq!(
        py.line(Duration::from_secs(10)),
        libc::F_UNLCK.to_string(),
        "gone at close"
    );
    assert!(py.wait(Duration::from_secs(10)));
    let closes: Vec<Ev> = events(&rec)
        .into_iter()
        .filter(|e| matches!(e, Ev::Released { name, cause: ReleaseCause::Close, .. } if name == "sticky"))
        .collect();
    assert_eq!(closes.len(), 1, "{closes:?}");
}

#[test]
fn a_process_exit_releases_exactly_its_locks() {
    let (t, rec) = mount();
    let path = t.m("exit");
    let py = Py::spawn(
        r#"
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
lk(fd, fcntl.F_SETLK, fcntl.F_RDLCK, 0, 10)
lk(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 20, 5)
lk(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 100, 0)
lk(fd, fcntl.F_SETLK, fcntl.F_UNLCK, 200, 10)
say(os.getpid())
"#,
        &[path.to_str().expect("utf-8")],
    );
    let pid: u32 = py.line(Duration::from_secs(10)).parse().expect("pid");
    assert!(py.wait(Duration::from_secs(10)));
    let released: Vec<(ReleaseCause, Vec<Lock>)> = events(&rec)
        .into_iter()
        .filter_map(|e| match e {
            Ev::Released {
                name,
                cause,
                locks,
                held: true,
            } if name == "exit" => Some((cause, locks)),
            _ => None,
        })
        .collect();
    let owner = released
        .first()
        .map(|(_, l)| l[0].owner)
        .expect("a release");
    let lock = |range, kind| Lock {
        owner,
        range,
        kind,
        pid,
    };
    let r = |a, b| ByteRange::new(a, b).expect("range");
    assert_eq!(
        released,
        vec![
            (
                ReleaseCause::Unlock,
                vec![lock(r(200, 209), LockKind::Write)]
            ),
            (
                ReleaseCause::Close,
                vec![
                    lock(r(0, 9), LockKind::Read),
                    lock(r(20, 24), LockKind::Write),
                    lock(r(100, 199), LockKind::Write),
                    lock(ByteRange::to_eof(210), LockKind::Write),
                ]
            ),
        ]
    );
}
