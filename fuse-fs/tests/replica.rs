#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! The replica filesystem over a real mount, served from memory: reads,
//! refusals, and the step lock against SQLite readers of this process.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fuse_fs::replica::{ExclusiveError, Invalidate};
use fuse_fs::{mount_replica, MountConfig, Mounted, ReplicaHandle, ReplicaSource};
use rusqlite::{Connection, OpenFlags};

/// A database held in memory.
struct Mem {
    name: String,
    data: Mutex<Vec<u8>>,
}

impl ReplicaSource for Mem {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let d = self.data.lock().unwrap();
        let start = (offset as usize).min(d.len());
        let n = buf.len().min(d.len() - start);
        buf[..n].copy_from_slice(&d[start..start + n]);
        Ok(n)
    }
    fn pos(&self) -> String {
        "0000000000000007/8000000000000001\n".into()
    }
    fn lag(&self) -> String {
        "0.250\n".into()
    }
    fn modified(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A rollback-journal database of `rows` rows, as bytes.
fn database(dir: &Path, rows: i64) -> Vec<u8> {
    let p = dir.join(format!("src-{rows}.db"));
    let c = Connection::open(&p).unwrap();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..rows {
        tx.execute("INSERT INTO t(v) VALUES (?1)", [format!("{i:0200}")])
            .unwrap();
    }
    tx.commit().unwrap();
    drop(c);
    std::fs::read(&p).unwrap()
}

/// A mount that is always unmounted (lazily if the clean unmount fails).
struct Guard {
    mounted: Option<Mounted>,
    handle: ReplicaHandle,
    mnt: PathBuf,
    src: Arc<Mem>,
    _dir: tempfile::TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut m) = self.mounted.take() {
            if m.unmount().is_err() {
                let _ = fuse_fs::unmount_path(&self.mnt, true);
            }
        }
    }
}

fn mount(rows: i64) -> Guard {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let src = Arc::new(Mem {
        name: "app.db".into(),
        data: Mutex::new(database(dir.path(), rows)),
    });
    let (mounted, handle) = mount_replica(
        vec![src.clone() as Arc<dyn ReplicaSource>],
        &mnt,
        &MountConfig::default(),
    )
    .expect("mount the replica");
    Guard {
        mounted: Some(mounted),
        handle,
        mnt,
        src,
        _dir: dir,
    }
}

fn count(c: &Connection) -> i64 {
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn serves_the_database_and_refuses_every_change() {
    let g = mount(100);
    let db = g.mnt.join("app.db");
    let c = Connection::open(&db).unwrap();
    assert_eq!(count(&c), 100);
    let e = c
        .execute("INSERT INTO t(v) VALUES ('x')", [])
        .unwrap_err()
        .to_string();
    assert_eq!(e, "attempt to write a readonly database");
    use std::os::unix::fs::OpenOptionsExt;
    let opens = [
        std::fs::OpenOptions::new().write(true).clone(),
        std::fs::OpenOptions::new().read(true).write(true).clone(),
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .clone(),
    ];
    for (i, o) in opens.iter().enumerate() {
        let e = o.open(&db).map(drop).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "open {i}: {e}");
    }
    for side in ["app.db-journal", "app.db-wal", "app.db-shm", "other"] {
        let e = std::fs::File::create(g.mnt.join(side)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{side}");
    }
    assert_eq!(
        std::fs::remove_file(&db).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(
        std::fs::read_to_string(g.mnt.join("app.db-pos")).unwrap(),
        g.src.pos()
    );
    assert_eq!(
        std::fs::read_to_string(g.mnt.join("app.db-lag")).unwrap(),
        "0.250\n"
    );
    let mut names: Vec<String> = std::fs::read_dir(&g.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["app.db", "app.db-lag", "app.db-pos"]);
    assert_eq!(
        std::fs::metadata(g.mnt.join("app.db-journal"))
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn a_step_waits_for_readers_and_readers_see_it_whole() {
    let g = mount(100);
    let db = g.mnt.join("app.db");
    let lock = g
        .handle
        .step_lock(g.mounted.as_ref().unwrap(), 0)
        .expect("lock descriptor");
    let reader = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    reader.busy_timeout(Duration::from_secs(5)).unwrap();
    // Warm the kernel's page cache and SQLite's.
    assert_eq!(count(&reader), 100);
    let newer = database(g._dir.path(), 300);

    // A read transaction in progress holds the step off.
    reader.execute_batch("BEGIN").unwrap();
    assert_eq!(count(&reader), 100);
    let t0 = Instant::now();
    let r = lock.exclusive(Duration::from_millis(300), &mut || panic!("must not write"));
    assert!(matches!(r, Err(ExclusiveError::Busy(_))), "{r:?}");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(count(&reader), 100, "the reader's transaction is unchanged");
    reader.execute_batch("COMMIT").unwrap();

    // While the step runs, a new read transaction gets SQLITE_BUSY.
    let other = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    lock.exclusive(Duration::from_secs(1), &mut || {
        let e = other
            .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(e.to_string().contains("locked"), "{e}");
        let len = newer.len() as u64;
        *g.src.data.lock().unwrap() = newer.clone();
        Ok(Invalidate::Ranges(std::iter::once(0..len).collect()))
    })
    .expect("step");
    assert_eq!(count(&reader), 300, "the cached pages were invalidated");
    assert_eq!(std::fs::read(&db).unwrap(), newer);
}
