//! The primary filesystem's SQLite knowledge: which file operation is a
//! commit point, and when a mode that gives none must be refused. It reports
//! through [`TxSink`], which the daemon implements; it knows nothing of LTX
//! files or shipping.
//!
//! Commit points (the sink must have captured the transaction when it
//! returns; the operation completes only after that):
//! - WAL mode: the release of the WAL write lock (`-shm` byte 120) by its
//!   holder — an `F_UNLCK`, or the close that ends a writer that died while
//!   holding it.
//! - Rollback-journal modes: the journal's invalidation — unlink (DELETE),
//!   truncate to 0 (TRUNCATE), or 28 zero bytes written at offset 0
//!   (PERSIST, and DELETE in exclusive locking mode).
//!
//! A rollback-journal transaction may also be captured earlier, at the
//! database's fsync that precedes the commit point
//! ([`TxSink::database_syncing`]), so that one sync makes the database and
//! the L0 file durable together; the commit point then only confirms it.
//!
//! Durability: a transaction is reported `durable` when the application
//! synced it (an fsync of the WAL while the writer held the write lock:
//! `synchronous=FULL`; of the database or journal during a rollback-journal
//! transaction: anything but `synchronous=OFF`).
//!
//! Refused, because they give no commit signal:
//! - `journal_mode=MEMORY` and `OFF`: a write to a rollback-mode database
//!   with no `-journal` file beside it (in the other modes SQLite writes
//!   pages only after the journal is synced); the write fails;
//! - `locking_mode=EXCLUSIVE` in WAL mode: an exclusive lock on a WAL-mode
//!   database while no connection holds its shared WAL-index (the `-shm`
//!   "dead man switch", byte 128): the WAL-index then lives in the writer's
//!   heap; the lock fails.
//!
//! Both fail with EPERM (SQLite: "access permission denied") and the daemon
//! logs why. Exclusive locking mode with a rollback journal still
//! invalidates the journal at every commit, so it is captured.
//!
//! Database files are routed (every write reaches [`Hooks::before_write`]):
//! a write that is not whole pages is refused with EINVAL.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::hooks::{
    Errno, Hooks, LockAttempt, LockGranted, LocksReleased, OpenEvent, OpenMode, ReleaseCause,
    SyncedBy, TruncateEvent, WriteEvent,
};
use crate::locks::LockKind;
use crate::passthrough::FsHandle;

/// The WAL write lock: byte 120 of the `-shm` file.
pub const WAL_WRITE_LOCK: u64 = 120;

/// The checkpoint lock: byte 121 of the `-shm` file.
pub const WAL_CKPT_LOCK: u64 = 121;

/// The WAL-index's "dead man switch": byte 128 of the `-shm` file.
pub const DMS_BYTE: u64 = 128;

/// The length of SQLite's SHARED byte range on the database file: an
/// exclusive lock on it is SQLite's EXCLUSIVE (where it starts depends on
/// the pending byte, which tests move).
pub const SHARED_SIZE: u64 = 510;

/// What the primary filesystem reports to the daemon. Called on FUSE worker
/// threads: it must not wait on the network.
pub trait TxSink: Send + Sync + 'static {
    /// The WAL write lock of `db` was released by its holder: every
    /// transaction committed since the last call is captured when this
    /// returns `Ok`.
    fn wal_committed(&self, db: &Path, durable: bool) -> Result<(), String>;

    /// Whether a writer may take the WAL write lock of `db` now (`false`
    /// while commits are left uncaptured: the writer could restart the WAL
    /// over them; SQLite then retries).
    fn may_write(&self, db: &Path) -> bool;

    /// The rollback journal of `db` is about to be invalidated: capture its
    /// transaction (a journal without a valid header is none). `writes` is
    /// the count of writes and truncations of `db` so far (see
    /// [`TxSink::database_syncing`]).
    fn journal_committing(
        &self,
        db: &Path,
        journal: &Path,
        durable: bool,
        writes: u64,
    ) -> Result<(), String>;

    /// The invalidation of `db`'s rollback journal that
    /// [`TxSink::journal_committing`] captured (its `Ok`) was done: the
    /// transaction committed. Until then the sink holds its file back: if
    /// the daemon dies first, the journal stays hot and the transaction is
    /// rolled back at the next start. (If the invalidation fails instead,
    /// this is never called; the database's next commit point, SQLite's
    /// rollback of that hot journal, releases the file along with its own.)
    fn journal_invalidated(&self, _db: &Path) {}

    /// `db`, not in WAL mode, is about to be fsynced while its rollback
    /// journal `journal` exists: SQLite syncs the database after writing a
    /// transaction's pages and right before invalidating the journal. The
    /// sink may capture the transaction now and make it durable together
    /// with the database: `Ok(true)` when it synced the database itself.
    /// `writes` counts the writes and truncations of `db` so far; the same
    /// count at the commit point means the database did not change since
    /// (only the holder of SQLite's EXCLUSIVE lock writes it, and that
    /// connection is the one syncing). The default captures nothing here.
    fn database_syncing(&self, _db: &Path, _journal: &Path, _writes: u64) -> Result<bool, String> {
        Ok(false)
    }

    /// An operation on `db` was refused because its mode gives no commit
    /// signal; `why` says which and how to fix it.
    fn refused(&self, db: &Path, why: &str);
}

/// What a file of the data directory is to SQLite (a file without a side-file
/// suffix may be, or become, a database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Database,
    Journal(PathBuf),
    Wal(PathBuf),
    Shm(PathBuf),
}

/// Classifies `path` by name; `db` is the database a side file belongs to.
pub fn role(path: &Path) -> Role {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Role::Database;
    };
    for (suffix, make) in [
        ("-journal", Role::Journal as fn(PathBuf) -> Role),
        ("-wal", Role::Wal),
        ("-shm", Role::Shm),
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            if !base.is_empty() {
                return make(path.with_file_name(OsString::from(base)));
            }
        }
    }
    Role::Database
}

/// Per-database state the hooks keep.
#[derive(Debug, Default)]
struct DbState {
    /// The owner holding the WAL write lock.
    wal_writer: Option<u64>,
    /// The WAL was fsynced while the current writer held the write lock.
    wal_synced: bool,
    /// The database or journal was fsynced since the last journal commit.
    journal_synced: bool,
    /// Writes and truncations of the database file through the mount.
    db_writes: u64,
    /// The journal was created and not synced since.
    journal_new: bool,
    /// A journal invalidation was let through after a capture: the sink
    /// hears when it is done ([`TxSink::journal_invalidated`]).
    journal_invalidating: bool,
}

/// The primary's hooks over a [`TxSink`].
pub struct PrimaryHooks<S: TxSink> {
    sink: S,
    dbs: Mutex<HashMap<PathBuf, DbState>>,
    fs: Arc<OnceLock<FsHandle>>,
}

impl<S: TxSink> std::fmt::Debug for PrimaryHooks<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryHooks").finish_non_exhaustive()
    }
}

/// SQLite's file header.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// The start of a database file (up to its 100-byte header) and its length,
/// read once per hook call.
struct Head {
    len: u64,
    bytes: [u8; 100],
    /// How many of `bytes` were read.
    n: usize,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            len: 0,
            bytes: [0; 100],
            n: 0,
        }
    }
}

impl Head {
    fn of_file(f: &std::fs::File) -> Head {
        let mut h = Head {
            len: f.metadata().map_or(0, |m| m.len()),
            ..Head::default()
        };
        h.n = f.read_at(&mut h.bytes, 0).unwrap_or(0);
        h
    }

    fn of_path(p: &Path) -> Head {
        std::fs::File::open(p).map_or_else(|_| Head::default(), |f| Head::of_file(&f))
    }

    fn has(&self, n: usize) -> Option<&[u8]> {
        (self.n >= n).then(|| &self.bytes[..n])
    }

    /// The file starts with SQLite's header.
    fn is_sqlite(&self) -> bool {
        self.has(16).is_some_and(|b| b == MAGIC)
    }

    /// The database is in WAL mode (header bytes 18 and 19 are 2).
    fn wal_mode(&self) -> bool {
        self.has(20).is_some_and(|b| b[18..20] == [2, 2])
    }

    /// The page size in the header, if it has one.
    fn page_size(&self) -> Option<u64> {
        let b = self.has(18)?;
        match u16::from_be_bytes([b[16], b[17]]) {
            1 => Some(65536),
            n if n >= 512 && n.is_power_of_two() => Some(u64::from(n)),
            _ => None,
        }
    }
}

/// Whether a write goes to a SQLite database: the file has the header, or
/// the write puts it there.
fn is_sqlite(head: &Head, offset: u64, data: &[u8]) -> bool {
    (offset == 0 && data.starts_with(MAGIC)) || head.is_sqlite()
}

/// Whether a write of `len` bytes at `offset` is whole pages: one page of a
/// valid page size at a multiple of it (a page-size change writes pages of
/// the new size before the header says so), or pages of the header's size.
fn whole_pages(head: &Head, offset: u64, len: u64) -> bool {
    let one_page =
        len.is_power_of_two() && (512..=65536).contains(&len) && offset.is_multiple_of(len);
    one_page
        || head
            .page_size()
            .is_some_and(|ps| len > 0 && offset.is_multiple_of(ps) && len.is_multiple_of(ps))
}

impl<S: TxSink> PrimaryHooks<S> {
    pub fn new(sink: S) -> Self {
        PrimaryHooks {
            sink,
            dbs: Mutex::new(HashMap::new()),
            fs: Arc::new(OnceLock::new()),
        }
    }

    /// Where to put the filesystem's handle once it is mounted (the hooks
    /// need its lock table to refuse exclusive locking mode in WAL mode;
    /// until then they allow).
    pub fn fs_slot(&self) -> Arc<OnceLock<FsHandle>> {
        self.fs.clone()
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    fn with_db<T>(&self, db: &Path, f: impl FnOnce(&mut DbState) -> T) -> T {
        let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        f(dbs.entry(db.to_path_buf()).or_default())
    }

    /// Whether anyone holds the WAL-index's "dead man switch" (`-shm` byte
    /// 128): every connection using the shared WAL-index does, from the
    /// moment it maps it until it closes.
    fn wal_index_in_use(&self, db: &Path) -> bool {
        let Some(fs) = self.fs.get() else {
            return true;
        };
        let mut shm = db.as_os_str().to_owned();
        shm.push("-shm");
        let Some(ino) = fs.ino_of(Path::new(&shm)) else {
            return false;
        };
        fs.with_locks(|t| t.locks(ino).iter().any(|l| l.range.contains(DMS_BYTE)))
    }

    /// An exclusive lock on a WAL-mode database while nobody uses the shared
    /// WAL-index: exclusive locking mode (its WAL-index lives in the
    /// writer's heap), refused. A connection closing the WAL, or leaving WAL
    /// mode, holds the WAL-index (or others do, and the lock conflicts).
    fn check_exclusive(&self, db: &Path, head: &Head) -> Result<(), Errno> {
        if !head.wal_mode() || self.wal_index_in_use(db) {
            return Ok(());
        }
        self.sink.refused(
            db,
            "locking_mode=EXCLUSIVE in WAL mode keeps the WAL index in the writer's memory, so no commit can be seen; use PRAGMA locking_mode=NORMAL",
        );
        Err(Errno::EPERM)
    }

    /// Whether `owner` writes `db` as SQLite does: holding EXCLUSIVE (a write
    /// lock over the 510-byte SHARED range, merged or not with PENDING and
    /// RESERVED), or, in WAL mode, checkpointing (the `-shm` CKPT lock).
    fn holds_write_locks(&self, db: &Path, owner: u64, wal: bool) -> bool {
        let Some(fs) = self.fs.get() else {
            return true;
        };
        let exclusive = fs.ino_of(db).is_some_and(|ino| {
            fs.with_locks(|t| {
                t.locks(ino).iter().any(|l| {
                    l.owner == owner
                        && l.kind == LockKind::Write
                        && l.range.end() - l.range.start() + 1 >= SHARED_SIZE
                })
            })
        });
        if exclusive || !wal {
            return exclusive;
        }
        let mut shm = db.as_os_str().to_owned();
        shm.push("-shm");
        fs.ino_of(Path::new(&shm)).is_some_and(|ino| {
            fs.with_locks(|t| {
                t.locks(ino)
                    .iter()
                    .any(|l| l.owner == owner && l.range.contains(WAL_CKPT_LOCK))
            })
        })
    }

    /// A write to a SQLite database: whole pages, by SQLite (holding its
    /// write locks), and in a rollback-journal mode only with a journal
    /// beside it (SQLite writes pages after syncing the journal; without one
    /// the mode is MEMORY or OFF, whose commits cannot be seen).
    fn check_db_write(&self, ev: &WriteEvent<'_>, head: &Head) -> Result<(), Errno> {
        let (db, offset, len) = (ev.path, ev.offset, ev.data.len() as u64);
        let refuse = |why: String, errno: Errno| {
            self.sink.refused(db, &why);
            Err(errno)
        };
        if !whole_pages(head, offset, len) {
            return refuse(
                format!("a write of {len} bytes at offset {offset} is not whole pages: only SQLite may write database files under the mount"),
                Errno::EINVAL,
            );
        }
        if head.len == 0 {
            // A new database's first page.
            return Ok(());
        }
        if let Some(owner) = ev.lock_owner {
            if !self.holds_write_locks(db, owner, head.wal_mode()) {
                return refuse(
                    "a write by a process that does not hold SQLite's write lock: only SQLite may write database files under the mount (copy a database into the data directory before mounting)".into(),
                    Errno::EPERM,
                );
            }
        }
        let mut j = db.as_os_str().to_owned();
        j.push("-journal");
        if !head.wal_mode() && !Path::new(&j).exists() {
            return refuse(
                "journal_mode=MEMORY or OFF writes no journal, so no commit can be seen; use PRAGMA journal_mode=WAL (or DELETE, TRUNCATE, PERSIST)".into(),
                Errno::EPERM,
            );
        }
        Ok(())
    }

    /// A commit point of a rollback journal.
    fn journal_commit(&self, journal: &Path, db: &Path) -> Result<(), Errno> {
        let (durable, writes) =
            self.with_db(db, |s| (std::mem::take(&mut s.journal_synced), s.db_writes));
        self.sink
            .journal_committing(db, journal, durable, writes)
            .map_err(|_| Errno::EIO)?;
        self.with_db(db, |s| s.journal_invalidating = true);
        Ok(())
    }

    /// Counts a write or truncation of a database file.
    fn db_written(&self, db: &Path) {
        self.with_db(db, |s| s.db_writes += 1);
    }
}

impl<S: TxSink> Hooks for PrimaryHooks<S> {
    fn open_mode(&self, path: &Path) -> OpenMode {
        match role(path) {
            // Writes must reach us: a journal's invalidation (PERSIST), and
            // database writes, which must be whole pages (any file may become
            // a database: a new one is empty when opened).
            Role::Journal(_) | Role::Database => OpenMode::Routed,
            // Read by the daemon itself at the commit point, or mapped.
            Role::Wal(_) | Role::Shm(_) => OpenMode::Passthrough,
        }
    }

    fn check_lock(&self, ev: &LockAttempt<'_>) -> Result<(), Errno> {
        if ev.kind != LockKind::Write {
            return Ok(());
        }
        match role(ev.path) {
            Role::Shm(db) if ev.range.contains(WAL_WRITE_LOCK) => {
                if self.sink.may_write(&db) {
                    Ok(())
                } else {
                    Err(Errno::EAGAIN)
                }
            }
            Role::Database if ev.range.end() - ev.range.start() + 1 == SHARED_SIZE => {
                let head = Head::of_path(ev.path);
                if head.is_sqlite() {
                    self.check_exclusive(ev.path, &head)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn lock_granted(&self, ev: &LockGranted<'_>) {
        if ev.lock.kind != LockKind::Write {
            return;
        }
        if let Role::Shm(db) = role(ev.path) {
            if ev.lock.range.contains(WAL_WRITE_LOCK) {
                self.with_db(&db, |s| {
                    s.wal_writer = Some(ev.lock.owner);
                    s.wal_synced = false;
                });
            }
        }
    }

    fn locks_released(&self, ev: &LocksReleased<'_>) -> Result<(), Errno> {
        let Role::Shm(db) = role(ev.path) else {
            return Ok(());
        };
        let held = ev
            .released
            .iter()
            .any(|l| l.kind == LockKind::Write && l.range.contains(WAL_WRITE_LOCK));
        if !held || ev.cause == ReleaseCause::ReleaseOfd {
            return Ok(());
        }
        let durable = self.with_db(&db, |s| {
            s.wal_writer = None;
            std::mem::take(&mut s.wal_synced)
        });
        // The unlock goes through even if capture failed: SQLite ignores
        // unlock errors; the sink then refuses the next writer (`may_write`)
        // until a capture succeeds, so no uncaptured commit is overwritten.
        let _ = self.sink.wal_committed(&db, durable);
        Ok(())
    }

    fn changed(&self, path: &Path) {
        if let Role::Journal(db) = role(path) {
            if self.with_db(&db, |s| std::mem::take(&mut s.journal_invalidating)) {
                self.sink.journal_invalidated(&db);
            }
        }
    }

    fn before_write(&self, ev: &WriteEvent<'_>) -> Result<(), Errno> {
        match role(ev.path) {
            Role::Journal(db) => {
                let zeroed =
                    ev.offset == 0 && ev.data.len() >= 28 && ev.data[..28].iter().all(|&b| b == 0);
                if zeroed {
                    return self.journal_commit(ev.path, &db);
                }
                Ok(())
            }
            Role::Database => {
                self.db_written(ev.path);
                // The handle may be write-only: then read by path.
                let head = match Head::of_file(ev.file) {
                    h if h.n == 0 && h.len > 0 => Head::of_path(ev.path),
                    h => h,
                };
                if is_sqlite(&head, ev.offset, ev.data) {
                    self.check_db_write(ev, &head)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn before_truncate(&self, ev: &TruncateEvent<'_>) -> Result<(), Errno> {
        match role(ev.path) {
            Role::Journal(db) if ev.size == 0 => self.journal_commit(ev.path, &db),
            Role::Database => {
                self.db_written(ev.path);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn opened(&self, ev: &OpenEvent<'_>) -> Result<(), Errno> {
        if let (true, Role::Journal(db)) = (ev.created, role(ev.path)) {
            self.with_db(&db, |s| s.journal_new = true);
        }
        Ok(())
    }

    fn before_fsync(&self, path: &Path, _datasync: bool) -> Result<SyncedBy, Errno> {
        match role(path) {
            // SQLite syncs the directory right after the first sync of a new
            // journal; one syncfs makes both durable, and the directory's
            // fsync then finds nothing left to do (`fuse-fs` counts name
            // changes).
            Role::Journal(db) if self.with_db(&db, |s| std::mem::take(&mut s.journal_new)) => {
                return Ok(SyncedBy::Filesystem)
            }
            Role::Database => {}
            _ => return Ok(SyncedBy::Nobody),
        }
        let mut journal = path.as_os_str().to_owned();
        journal.push("-journal");
        let journal = Path::new(&journal);
        if !journal.exists() {
            return Ok(SyncedBy::Nobody);
        }
        let writes = self.with_db(path, |s| s.db_writes);
        match self.sink.database_syncing(path, journal, writes) {
            Ok(true) => Ok(SyncedBy::Hook),
            Ok(false) => Ok(SyncedBy::Nobody),
            Err(_) => Err(Errno::EIO),
        }
    }

    fn before_unlink(&self, path: &Path) -> Result<(), Errno> {
        match role(path) {
            Role::Journal(db) => self.journal_commit(path, &db),
            _ => Ok(()),
        }
    }

    fn after_fsync(&self, path: &Path, _datasync: bool) -> Result<(), Errno> {
        match role(path) {
            Role::Wal(db) => self.with_db(&db, |s| {
                if s.wal_writer.is_some() {
                    s.wal_synced = true;
                }
            }),
            Role::Journal(db) => self.with_db(&db, |s| s.journal_synced = true),
            Role::Database => self.with_db(path, |s| s.journal_synced = true),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_name() {
        let d = Path::new("/data/app.db");
        assert_eq!(role(d), Role::Database);
        assert_eq!(role(Path::new("/data/app.db-wal")), Role::Wal(d.into()));
        assert_eq!(role(Path::new("/data/app.db-shm")), Role::Shm(d.into()));
        assert_eq!(
            role(Path::new("/data/app.db-journal")),
            Role::Journal(d.into())
        );
        assert_eq!(role(Path::new("/data/-wal")), Role::Database);
    }
}
