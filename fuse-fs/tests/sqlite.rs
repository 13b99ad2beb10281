//! SQLite through a real mount: several processes writing one database
//! concurrently in WAL and DELETE mode, and the `-shm` mapped MAP_SHARED.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::{wait_bounded, Py, TestMount};
use fuse_fs::{Hooks, NoHooks, OpenMode};

const ROWS: u32 = 150;

/// A `sqlite3` shell inserting `ROWS` numbered rows, one transaction each.
fn shell_writer(db: &Path, writer: &str) -> thread::JoinHandle<()> {
    let mut script = String::from(".bail on\n.timeout 30000\n");
    for i in 1..=ROWS {
        script.push_str(&format!(
            "INSERT INTO t(writer, seq) VALUES ('{writer}', {i});\n"
        ));
    }
    let db = db.to_path_buf();
    thread::spawn(move || {
        let mut child = Command::new("sqlite3")
            .arg(&db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sqlite3");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(script.as_bytes()).expect("script");
        drop(stdin);
        let out = wait_bounded(child, Duration::from_secs(180));
        assert!(
            out.status.success(),
            "sqlite3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
}

fn rust_writer(db: PathBuf) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).expect("open");
        conn.busy_timeout(Duration::from_secs(30))
            .expect("busy timeout");
        for i in 1..=ROWS {
            conn.execute("INSERT INTO t(writer, seq) VALUES ('rust', ?1)", [i])
                .expect("insert");
        }
    })
}

fn concurrent_writers(mode: &str, hooks: impl Hooks) {
    let t = TestMount::new(hooks);
    let db = t.m("app.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    let got: String = conn
        .query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(got, mode.to_lowercase());
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, writer TEXT, seq INTEGER);")
        .expect("schema");
    let writers = [
        shell_writer(&db, "sh1"),
        shell_writer(&db, "sh2"),
        rust_writer(db.clone()),
    ];
    for w in writers {
        w.join().expect("writer");
    }
    let mut per_writer: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT writer, seq FROM t ORDER BY id")
        .expect("select");
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
        .expect("query");
    for row in rows {
        let (w, s) = row.expect("row");
        per_writer.entry(w).or_default().push(s);
    }
    let want: Vec<u32> = (1..=ROWS).collect();
    assert_eq!(per_writer.len(), 3);
    for (w, seqs) in &per_writer {
        assert_eq!(
            seqs, &want,
            "writer {w}: every row once, in its commit order"
        );
    }
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(ok, "ok");
    drop(stmt);
    drop(conn);
    // The same database read straight from the data directory.
    let below = rusqlite::Connection::open(t.d("app.db")).expect("open backing");
    let n: u32 = below
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 3 * ROWS);
}

#[test]
fn three_processes_write_one_wal_database() {
    concurrent_writers("WAL", NoHooks);
}

#[test]
fn three_processes_write_one_delete_mode_database() {
    concurrent_writers("DELETE", NoHooks);
}

/// Journals routed through the daemon, as the capturing filesystem routes
/// them; the `-shm` too, to show a routed file stays mmap-able.
struct RouteSidecars;

impl Hooks for RouteSidecars {
    fn open_mode(&self, path: &Path) -> OpenMode {
        let name = path.to_string_lossy();
        if name.ends_with("-journal") || name.ends_with("-wal") || name.ends_with("-shm") {
            OpenMode::Routed
        } else {
            OpenMode::Passthrough
        }
    }
}

#[test]
fn three_processes_write_one_wal_database_with_routed_sidecars() {
    concurrent_writers("WAL", RouteSidecars);
}

#[test]
fn three_processes_write_one_delete_mode_database_with_routed_journals() {
    concurrent_writers("DELETE", RouteSidecars);
}

#[test]
fn wal_mode_works_and_the_shm_is_mapped_shared() {
    let t = TestMount::new(NoHooks);
    let db = t.m("w.db");
    let a = rusqlite::Connection::open(&db).expect("open");
    let mode: String = a
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("wal");
    assert_eq!(mode, "wal");
    a.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .expect("write");
    let b = rusqlite::Connection::open(&db).expect("open second");
    let n: i64 = b
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("read");
    assert_eq!(n, 1);
    assert!(t.d("w.db-shm").metadata().expect("shm").len() >= 32 * 1024);
    assert!(t.d("w.db-wal").metadata().expect("wal").len() > 0);
}

/// Two processes map one file MAP_SHARED through the mount; stores of one
/// are seen by the other, by read(2), and in the backing file.
fn shared_mapping(hooks: impl Hooks, name: &str) {
    let t = TestMount::new(hooks);
    let path = t.m(name);
    let script = r#"
import mmap
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
os.ftruncate(fd, 32768)
m = mmap.mmap(fd, 32768, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
if sys.argv[2] == "write":
    m[100:105] = b"hello"
    say("stored")
    sys.stdin.readline()
else:
    say(m[100:105].decode())
m.close()
"#;
    let mut writer = Py::spawn(script, &[path.to_str().expect("utf-8"), "write"]);
    assert_eq!(writer.line(Duration::from_secs(10)), "stored");
    let reader = Py::spawn(script, &[path.to_str().expect("utf-8"), "read"]);
    assert_eq!(reader.line(Duration::from_secs(10)), "hello");
    assert!(reader.wait(Duration::from_secs(10)));
    let mut buf = [0u8; 5];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&path).expect("open"),
        &mut buf,
        100,
    )
    .expect("pread");
    assert_eq!(&buf, b"hello");
    writer.send("done");
    assert!(writer.wait(Duration::from_secs(10)));
    let backing = std::fs::read(t.d(name)).expect("backing");
    assert_eq!(&backing[100..105], b"hello");
}

#[test]
fn a_passthrough_file_maps_shared() {
    shared_mapping(NoHooks, "plain-shm");
}

#[test]
fn a_routed_file_maps_shared() {
    shared_mapping(RouteSidecars, "routed-shm");
}
