//! The staging directory of one database: the only owner of its local paths.
//!
//! ```text
//! <staging>/ltx/<level>/<min>-<max>.ltx   LTX files, laid out as a file:// replica
//! <staging>/position.json                 the capture source's position (a hint)
//! <staging>/pending.ltx                   captured frames not yet in an L0 file
//! <staging>/replica-<i>.json              upload progress of replica i (a hint)
//! <staging>/tmp/                          re-encodings being uploaded
//! <staging>/spare/<n>                     the spare pool: files for deferred L0
//!                                         files (FUSE capture), which are
//!                                         written there, under the spare's
//!                                         number, until the flusher moves them
//!                                         into ltx/0 (see `write_deferred`)
//! <staging>/deferred/<txid>-<txid>.ltx    deferred L0 files of older versions
//! <staging>/drill/                        scratch copies of scheduled drills
//! ```
//!
//! A mount's staging root also holds `.sluice-spares/<n>`, the reserve its
//! databases' spare pools draw from (see [`refill_reserve`]).
//!
//! Invariants: an LTX file appears under its final name only once it is
//! complete and fsynced, and its directory fsynced; a shipped name is never
//! written twice. A failed fsync is fatal ([`StagingError::is_fatal`]): the
//! kernel may already have dropped the dirty pages, so a retry could
//! "succeed" on data that is gone. A full disk is not: it is retried.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ltx_format::{format_filename, parse_filename, Txid};
use s3_backend::layout::SNAPSHOT_LEVEL;

use tracing::{debug, warn};

use crate::failpoint;

/// Why a staging operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("{}: {source}; free space on its filesystem (sluice keeps retrying)", path.display())]
    NoSpace { path: PathBuf, source: io::Error },
    #[error("fsync of {} failed: {source}; its data may already be lost from the page cache, so this database stops (fix the disk, then restart sluice: it re-establishes the chain)", path.display())]
    Fsync { path: PathBuf, source: io::Error },
    #[error("{} already exists; shipped LTX files are never overwritten", path.display())]
    Exists { path: PathBuf },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is corrupt ({detail}); remove it to start over with a snapshot", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("writing {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        source: ltx_format::Error,
    },
}

impl StagingError {
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        if is_no_space(&source) {
            StagingError::NoSpace {
                path: path.to_path_buf(),
                source,
            }
        } else {
            StagingError::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// The database must stop: a failed fsync, an I/O error of the device
    /// (EIO), or an attempt to rewrite a shipped file. Everything else (a full
    /// disk, a missing directory) may succeed when retried.
    pub fn is_fatal(&self) -> bool {
        match self {
            StagingError::Fsync { .. } | StagingError::Exists { .. } => true,
            StagingError::Io { source, .. } => source.raw_os_error() == Some(EIO),
            StagingError::Encode { source, .. } => match source {
                ltx_format::Error::Io(e) => e.raw_os_error() == Some(EIO),
                _ => false,
            },
            StagingError::NoSpace { .. } | StagingError::Corrupt { .. } => false,
        }
    }
}

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

fn is_no_space(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ENOSPC) || e.kind() == io::ErrorKind::StorageFull
}

/// The encoder's error, with a full disk kept recognisable.
fn encode_error(path: &Path, e: ltx_format::Error) -> StagingError {
    match e {
        ltx_format::Error::Io(source) if is_no_space(&source) => StagingError::NoSpace {
            path: path.to_path_buf(),
            source,
        },
        source => StagingError::Encode {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Fsyncs `f` (at `path`), through the `staging-fsync` fail point.
pub fn fsync(f: &File, path: &Path) -> Result<(), StagingError> {
    failpoint::fsync(path)
        .and_then(|()| f.sync_all())
        .map_err(|source| StagingError::Fsync {
            path: path.to_path_buf(),
            source,
        })
}

/// Fsyncs a directory, so a rename into it is durable.
pub fn fsync_dir(dir: &Path) -> Result<(), StagingError> {
    let f = File::open(dir).map_err(|e| StagingError::io("open", dir, e))?;
    fsync(&f, dir)
}

/// A staged LTX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    pub level: u8,
    pub min: Txid,
    pub max: Txid,
    pub path: PathBuf,
}

/// The paths of one database's staging directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagingDir {
    root: PathBuf,
    /// The reserve this directory's spare pool draws from (see
    /// [`refill_reserve`]).
    reserve: Option<PathBuf>,
}

impl StagingDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StagingDir {
            root: root.into(),
            reserve: None,
        }
    }

    /// The same directory, its spare pool drawing files from the reserve
    /// at `reserve` (see [`refill_reserve`]) before it makes any.
    pub fn with_reserve(self, reserve: impl Into<PathBuf>) -> Self {
        StagingDir {
            reserve: Some(reserve.into()),
            ..self
        }
    }

    /// `configured`, or the default `<db dir>/.<db name>-sluice`.
    pub fn for_db(db: &Path, configured: Option<&Path>) -> Self {
        if let Some(d) = configured {
            return Self::new(d);
        }
        let name = db
            .file_name()
            .map_or_else(|| "db".into(), |n| n.to_string_lossy().into_owned());
        Self::new(
            db.parent()
                .unwrap_or(Path::new("/"))
                .join(format!(".{name}-sluice")),
        )
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn create(&self) -> Result<(), StagingError> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| StagingError::io("cannot create staging directory", &self.root, e))
    }

    fn ltx_dir(&self) -> PathBuf {
        self.root.join("ltx")
    }

    pub fn level_dir(&self, level: u8) -> PathBuf {
        self.ltx_dir().join(level.to_string())
    }

    pub fn ltx_path(&self, level: u8, min: Txid, max: Txid) -> PathBuf {
        self.level_dir(level).join(format_filename(min, max))
    }

    pub fn position_path(&self) -> PathBuf {
        self.root.join("position.json")
    }

    pub fn pending_path(&self) -> PathBuf {
        self.root.join(PENDING_FILE)
    }

    pub fn progress_path(&self, replica: usize) -> PathBuf {
        self.root.join(format!("replica-{replica}.json"))
    }

    /// Re-encodings being uploaded (never the durable truth).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Scratch space of scheduled drills (emptied when they start).
    pub fn drill_dir(&self) -> PathBuf {
        self.root.join("drill")
    }

    /// Files of one level, by (max, min).
    pub fn list_level(&self, level: u8) -> Result<Vec<LocalFile>, StagingError> {
        let dir = self.level_dir(level);
        let rd = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StagingError::io("list", &dir, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| StagingError::io("list", &dir, e))?;
            let name = e.file_name();
            let Some((min, max)) = name.to_str().and_then(parse_filename) else {
                continue;
            };
            out.push(LocalFile {
                level,
                min,
                max,
                path: e.path(),
            });
        }
        out.sort_by_key(|f| (f.max, f.min));
        Ok(out)
    }

    /// The staged file with the highest TXID over every level (an L0 file on
    /// a tie: it also carries the WAL position).
    pub fn newest(&self) -> Result<Option<LocalFile>, StagingError> {
        let mut newest: Option<LocalFile> = None;
        for level in 0..=SNAPSHOT_LEVEL {
            if let Some(f) = self.list_level(level)?.pop() {
                if newest.as_ref().is_none_or(|n| f.max > n.max) {
                    newest = Some(f);
                }
            }
        }
        Ok(newest)
    }

    /// Whether this directory holds any history of the database: a position,
    /// a pending tail or a staged file. Without one, a replica that already
    /// holds files belongs to someone else.
    pub fn has_history(&self) -> Result<bool, StagingError> {
        Ok(self.position_path().exists()
            || self.pending_path().exists()
            || self.newest()?.is_some())
    }

    /// Writes `ltx/<level>/<min>-<max>.ltx`: temp file, fsync, rename, fsync
    /// of the directory. Never replaces a file.
    pub fn write_ltx<F>(
        &self,
        level: u8,
        min: Txid,
        max: Txid,
        encode: F,
    ) -> Result<PathBuf, StagingError>
    where
        F: FnOnce(&mut BufWriter<SyncEvery<'_>>) -> ltx_format::Result<()>,
    {
        let dir = self.level_dir(level);
        write_file(&dir, &format_filename(min, max), false, encode)
    }

    /// Writes the pending tail, replacing the previous one (local state that
    /// is never uploaded).
    pub fn write_pending<F>(&self, encode: F) -> Result<PathBuf, StagingError>
    where
        F: FnOnce(&mut BufWriter<SyncEvery<'_>>) -> ltx_format::Result<()>,
    {
        write_file(&self.root, PENDING_FILE, true, encode)
    }

    /// Where an earlier version left deferred files, named by TXID (a
    /// crash may have left some): read by [`StagingDir::list_deferred`].
    fn legacy_deferred_dir(&self) -> PathBuf {
        self.root.join("deferred")
    }

    /// The spare pool's directory, where deferred files are written.
    fn spare_dir(&self) -> PathBuf {
        self.root.join("spare")
    }

    /// Writes the L0 file of `txid` without an fsync, outside `ltx/`:
    /// nothing uploads or compacts it until [`StagingDir::promote_deferred`]
    /// has made it durable and moved it there. Returns its path.
    ///
    /// This runs inside a commit, so it takes a spare file when the pool
    /// has one and writes it where it lies, under its spare name: open,
    /// write over what it held (cutting off what is left past the new end),
    /// close; no directory changes. (A rename into a directory of its own
    /// was a third of the capture's cost on ext4.) Its name is the file's
    /// until the promotion; a restart finds a deferred file by its header
    /// (see [`StagingDir::list_deferred`]). A crash may leave one torn,
    /// which recovery finds invalid.
    pub fn write_deferred<F>(&self, txid: Txid, encode: F) -> Result<PathBuf, StagingError>
    where
        F: FnOnce(&mut BufWriter<SyncEvery<'_>>) -> ltx_format::Result<()>,
    {
        let pool = self.spares();
        let spare = pool.take().and_then(|sp| {
            // Truncating an empty file is not free on ext4: it marks the
            // file for block allocation at close (`auto_da_alloc`), which
            // then costs the commit tens of microseconds. One of unknown
            // size is emptied; one of known size is written over, in the
            // blocks it holds (none to allocate, none to free).
            let f = OpenOptions::new()
                .write(true)
                .truncate(sp.len.is_none())
                .open(&sp.path);
            // A spare gone missing: a new file below.
            f.ok().map(|f| (sp, f))
        });
        let (Spare { path, len }, f) = match spare {
            Some(s) => s,
            None => pool.create().map_err(|e| {
                let path = self.spare_dir();
                debug!(%txid, "no spare file for a deferred file");
                StagingError::io("create", &path, e)
            })?,
        };
        let written = write_all(&f, &path, encode).and_then(|()| match len {
            Some(old) if old > 0 => cut_at_end(&f, &path, old),
            _ => Ok(()),
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    /// Makes every deferred file written so far durable: one `syncfs` of
    /// the staging filesystem.
    pub fn sync_deferred_dir(&self) -> Result<(), StagingError> {
        let dir = &self.root;
        let d = File::open(dir).map_err(|e| StagingError::io("open", dir, e))?;
        failpoint::fsync(dir)
            .and_then(|()| nix::unistd::syncfs(&d).map_err(io::Error::from))
            .map_err(|source| StagingError::Fsync {
                path: dir.clone(),
                source,
            })
    }

    /// Whether the staging directory (once made) is on the filesystem of
    /// `other`.
    pub fn on_fs_of(&self, other: &File) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (other.metadata(), std::fs::metadata(&self.root)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev(),
            _ => false,
        }
    }

    /// Makes the deferred file at `path` durable, together with every file
    /// of `other`'s filesystem when the staging directory is on it
    /// (`same_fs`, see [`StagingDir::on_fs_of`]): one `syncfs` then covers
    /// both (returns true: `other` is synced too). Otherwise the file and
    /// its directory are fsynced.
    pub fn sync_deferred(
        &self,
        path: &Path,
        other: &File,
        same_fs: bool,
    ) -> Result<bool, StagingError> {
        if same_fs {
            failpoint::fsync(path)
                .and_then(|()| nix::unistd::syncfs(other).map_err(io::Error::from))
                .map_err(|source| StagingError::Fsync {
                    path: path.to_path_buf(),
                    source,
                })?;
            return Ok(true);
        }
        let f = File::open(path).map_err(|e| StagingError::io("open", path, e))?;
        fsync(&f, path)?;
        fsync_dir(path.parent().unwrap_or(&self.root))?;
        Ok(false)
    }

    /// Deferred L0 files not yet promoted, by TXID: the spare files whose
    /// LTX header names one TXID newer than every staged file, and files an
    /// earlier version left in `deferred/` under their TXID. A crash (or a
    /// stop before the flusher ran) may leave some; spare files holding an
    /// older L0 file (given back by the local clean-up) are not listed.
    pub fn list_deferred(&self) -> Result<Vec<LocalFile>, StagingError> {
        let newest = self.newest()?.map_or(0, |f| f.max.0);
        let mut out = Vec::new();
        let dir = self.legacy_deferred_dir();
        for e in read_dir_if_any(&dir)? {
            let e = e.map_err(|e| StagingError::io("list", &dir, e))?;
            if let Some((min, max)) = e.file_name().to_str().and_then(parse_filename) {
                out.push(LocalFile {
                    level: 0,
                    min,
                    max,
                    path: e.path(),
                });
            }
        }
        let dir = self.spare_dir();
        for e in read_dir_if_any(&dir)? {
            let e = e.map_err(|e| StagingError::io("list", &dir, e))?;
            let numbered = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u64>().is_ok());
            let txid = numbered.then(|| deferred_txid(&e.path())).flatten();
            if let Some(t) = txid.filter(|t| t.0 > newest) {
                out.push(LocalFile {
                    level: 0,
                    min: t,
                    max: t,
                    path: e.path(),
                });
            }
        }
        out.sort_by_key(|f| f.max);
        Ok(out)
    }

    /// Makes the deferred files `files` (TXID and path) durable (one
    /// `syncfs` of the staging filesystem, unless `synced` says they
    /// already are) and moves them into `ltx/0` (one fsync of that
    /// directory). Returns their new paths.
    pub fn promote_deferred(
        &self,
        files: &[(Txid, &Path)],
        synced: bool,
    ) -> Result<Vec<PathBuf>, StagingError> {
        if !synced {
            self.sync_deferred_dir()?;
        }
        let l0 = self.level_dir(0);
        std::fs::create_dir_all(&l0).map_err(|e| StagingError::io("create", &l0, e))?;
        let mut out = Vec::with_capacity(files.len());
        for &(t, from) in files {
            let to = l0.join(format_filename(t, t));
            if to.exists() {
                return Err(StagingError::Exists { path: to });
            }
            std::fs::rename(from, &to).map_err(|e| StagingError::io("rename", from, e))?;
            out.push(to);
        }
        fsync_dir(&l0)?;
        Ok(out)
    }

    /// Moves the pending tail into place as the L0 file of `txid`.
    pub fn promote_pending(&self, txid: Txid) -> Result<PathBuf, StagingError> {
        let dir = self.level_dir(0);
        std::fs::create_dir_all(&dir).map_err(|e| StagingError::io("create", &dir, e))?;
        let to = dir.join(format_filename(txid, txid));
        if to.exists() {
            return Err(StagingError::Exists { path: to });
        }
        let from = self.pending_path();
        std::fs::rename(&from, &to).map_err(|e| StagingError::io("rename", &from, e))?;
        fsync_dir(&dir)?;
        Ok(to)
    }

    pub fn remove_pending(&self) -> Result<(), StagingError> {
        let p = self.pending_path();
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StagingError::io("remove", &p, e)),
            _ => Ok(()),
        }
    }

    /// Removes a staged file that is no longer needed. Where deferred files
    /// are written (`sluice mount`), an L0 file goes back to the spare pool
    /// instead while the pool holds fewer files than recent demand wants
    /// (see [`StagingDir::refill_spares`]).
    pub fn remove(&self, f: &LocalFile) -> Result<(), StagingError> {
        if f.level == 0 && self.spare_dir().is_dir() && self.spares().keep(&f.path) {
            return Ok(());
        }
        std::fs::remove_file(&f.path).map_err(|e| StagingError::io("remove", &f.path, e))
    }

    /// Tops the spare pool up to what recent demand wants: [`SPARES_MIN`]
    /// plus four times the most files taken between two calls (a high-water
    /// mark that decays by an eighth a call), at most [`SPARES_READY`]: first
    /// with files of the mount's reserve (see [`refill_reserve`]), renamed;
    /// then with new ones, at most [`SPARES_PER_REFILL`] plus twice the
    /// files taken since the last call, for at most [`SPARE_MAKING_TIME`]. The mount's flusher calls this every interval, so a
    /// deferred L0 file takes an existing inode instead of allocating one
    /// while SQLite waits: on ext4, allocating an inode scans every inode
    /// deleted in the last minutes (five when their table block is dirty),
    /// which under a stream of deletions (a DELETE-mode journal per
    /// transaction, a directory removed) cost more than the rest of a WAL
    /// commit. Returns how many files it made.
    ///
    /// A file is made in `spare-new/` and then renamed into `spare/`: the
    /// creation holds its directory's lock for as long as ext4 scans for a
    /// free inode (milliseconds after mass deletions), and the flusher's
    /// promotions rename files out of `spare/`, which needs that lock. (A
    /// commit that finds the pool empty makes its own file in `spare/`.)
    pub fn refill_spares(&self) -> Result<usize, StagingError> {
        let pool = self.spares();
        let reserve = self.reserve.as_deref().map(reserve_pool);
        // Ramp up with demand: a new pool's 512 files at once would stall
        // the disk and the CPU that the application's commits share.
        let taken = pool.taken.swap(0, Ordering::Relaxed);
        let want = pool.want(taken);
        let idle = match taken {
            0 => pool.idle.fetch_add(1, Ordering::Relaxed) + 1,
            _ => {
                pool.idle.store(0, Ordering::Relaxed);
                0
            }
        };
        if idle > 0 && pool.len() > want {
            if idle >= IDLE_ROUNDS {
                pool.trim(want, reserve.as_deref());
            }
            return Ok(0);
        }
        if let Some(r) = reserve {
            pool.draw(&r, want)?;
        }
        pool.make(want, SPARES_PER_REFILL + 2 * taken, SPARE_MAKING_TIME)
    }

    /// Makes this directory's spare pool (if the process has none yet)
    /// once recovery has promoted or removed every deferred file (see
    /// `mount::recover`): every numbered file in `spare/` is a spare then,
    /// and no header needs reading. Called at recovery, so that the first
    /// commit after a restart does not read a header per spare file (65,536
    /// files: 0.6 s warm, 5 s cold here).
    pub fn spares_recovered(&self) {
        pool_at(self.spare_dir(), self.root.join("spare-new"), || {
            Some(std::collections::HashSet::new())
        });
    }

    /// The spare pool of this directory, shared by every `StagingDir` of
    /// the same root in the process; filled from `spare/` at first use.
    ///
    /// Deferred files not yet promoted lie among the pool's files (a crash
    /// or a stop left them): the pool leaves them out (see
    /// [`StagingDir::list_deferred`]), every file that is not empty if it
    /// cannot tell.
    fn spares(&self) -> Arc<SparePool> {
        pool_at(
            self.spare_dir(),
            self.root.join("spare-new"),
            || match self.list_deferred() {
                Ok(d) => Some(d.into_iter().map(|f| f.path).collect()),
                Err(e) => {
                    warn!(dir = %self.root.display(), "looking for deferred files: {e}; only empty spare files are reused");
                    None
                }
            },
        )
    }
}

/// Tops up the reserve of spare files at `dir` to [`RESERVE_SIZE`], making
/// at most `budget` files for at most `time`; returns how many it made.
///
/// A mount's databases draw their spare pools from one reserve
/// (`<staging root>/.sluice-spares/`), which the mount fills when it
/// starts (before it says it is ready) and its flusher keeps topped up. A database
/// created through the mount then finds spares from its first commit: its
/// own pool starts empty and grows with demand, and without the reserve its
/// first few thousand commits each made an inode. On ext4 without a
/// journal, an inode made within a minute of mass deletions costs close to
/// a millisecond (the allocator skips every recently freed inode, one by
/// one), about twice a whole WAL commit; the reserve pays that at the
/// mount's start instead of inside commits.
pub fn refill_reserve(dir: &Path, budget: usize, time: Duration) -> Result<usize, StagingError> {
    reserve_pool(dir).make(RESERVE_SIZE, budget, time)
}

/// The pool of the reserve at `dir`.
/// Only its empty files: what goes there is emptied first (see
/// `SparePool::trim`).
fn reserve_pool(dir: &Path) -> Arc<SparePool> {
    pool_at(dir.to_path_buf(), dir.join("new"), || None)
}

/// Spare files taken by every pool of the process so far (see
/// [`spares_taken`]).
static TAKEN: AtomicU64 = AtomicU64::new(0);

/// How many spare files the process's deferred L0 files have taken so far:
/// a mount's flusher tops its reserve up only once this stopped moving.
pub fn spares_taken() -> u64 {
    TAKEN.load(Ordering::Relaxed)
}

/// The spare pool whose files lie in `dir`, made in `making`: one per
/// directory in the process, filled from the directory at first use with
/// every file but those `exclude` gives (every file that is not empty if it
/// gives None).
fn pool_at(
    dir: PathBuf,
    making: PathBuf,
    exclude: impl FnOnce() -> Option<std::collections::HashSet<PathBuf>>,
) -> Arc<SparePool> {
    static POOLS: OnceLock<Mutex<std::collections::HashMap<PathBuf, Arc<SparePool>>>> =
        OnceLock::new();
    let pools = || {
        POOLS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    };
    if let Some(p) = pools().get(&dir) {
        return p.clone();
    }
    // Scanned without the lock, which every database's commits take: the
    // scan reads the header of every file in the directory. If another
    // thread got there first, its pool is the one.
    let p = Arc::new(SparePool::scan(dir.clone(), making, exclude()));
    pools().entry(dir).or_insert(p).clone()
}

/// Files ready to become deferred L0 files, written where they lie (see
/// [`StagingDir::write_deferred`] and [`StagingDir::refill_spares`]):
/// removed L0 files and empty files made ahead of need. A reuse writes over
/// a file's content and cuts it to its new length; what a removed L0 file
/// holds is an older TXID, which recovery never takes for a deferred file
/// (see [`StagingDir::list_deferred`]).
#[derive(Debug)]
struct SparePool {
    dir: PathBuf,
    /// Where new spare files are made (see [`StagingDir::refill_spares`]).
    making: PathBuf,
    free: Mutex<Vec<Spare>>,
    next: AtomicU64,
    /// Files taken since the last refill.
    taken: AtomicUsize,
    /// Refills in a row that found no file taken.
    idle: AtomicUsize,
    /// The most files taken between two refills, decaying (see
    /// [`StagingDir::refill_spares`]).
    demand: AtomicUsize,
}

/// A file of the spare pool.
#[derive(Debug)]
struct Spare {
    path: PathBuf,
    /// Its size, if known: a reuse writes over it and cuts off the rest.
    /// Unknown, a reuse truncates it first.
    len: Option<u64>,
}

impl SparePool {
    /// The pool of the files already in `dir` but those of `exclude` (or,
    /// if None, but those not empty), and of those a stop left in `making`
    /// (moved into `dir`); new names count on from the highest numeric one.
    fn scan(
        dir: PathBuf,
        making: PathBuf,
        exclude: Option<std::collections::HashSet<PathBuf>>,
    ) -> SparePool {
        let mut free = Vec::new();
        let mut next = 0;
        for e in std::fs::read_dir(&making).into_iter().flatten().flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u64>().is_ok())
            {
                // A file left unmoved is only an inode not reused.
                let _ = std::fs::rename(e.path(), dir.join(e.file_name()));
            }
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                next = next.max(n + 1);
                // One a stop left half written is not empty.
                let len = e.metadata().ok().map(|m| m.len());
                let out = match &exclude {
                    Some(paths) => paths.contains(&e.path()),
                    None => len != Some(0),
                };
                if !out {
                    free.push(Spare {
                        path: e.path(),
                        len,
                    });
                }
            }
        }
        SparePool {
            dir,
            making,
            free: Mutex::new(free),
            next: AtomicU64::new(next),
            taken: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            demand: AtomicUsize::new(0),
        }
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Spare>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.list().len()
    }

    fn next_name(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn take(&self) -> Option<Spare> {
        self.taken.fetch_add(1, Ordering::Relaxed);
        TAKEN.fetch_add(1, Ordering::Relaxed);
        self.list().pop()
    }

    /// Takes up to [`SPARES_PER_REFILL`] files out of a pool larger than
    /// `want`: into `reserve` while it has room, removed otherwise (best
    /// effort: a file left is only an inode not reused).
    fn trim(&self, want: usize, reserve: Option<&SparePool>) {
        let extra: Vec<Spare> = {
            let mut list = self.list();
            let n = list.len().saturating_sub(want).min(SPARES_PER_REFILL);
            let at = list.len() - n;
            list.split_off(at)
        };
        for s in extra {
            match reserve {
                // One that cannot move stays in this pool. The reserve
                // serves every database of the mount: a file goes there
                // empty (or not at all), never with an L0 file of this
                // database that another's recovery would read as its own.
                Some(r) if r.len() < RESERVE_SIZE && (s.len == Some(0) || empty_spare(&s.path)) => {
                    let empty = Spare {
                        path: s.path,
                        len: Some(0),
                    };
                    r.adopt(empty, self);
                }
                _ => {
                    let _ = std::fs::remove_file(&s.path);
                }
            }
        }
    }

    /// Moves files from `from` into this pool until it holds `want`: a
    /// rename each, no inode made. Stops at the first that cannot move (it
    /// stays in `from`).
    fn draw(&self, from: &SparePool, want: usize) -> Result<(), StagingError> {
        let mut moved = 0;
        while self.len() < want {
            let Some(s) = from.list().pop() else { break };
            if moved == 0 {
                std::fs::create_dir_all(&self.dir)
                    .map_err(|e| StagingError::io("create", &self.dir, e))?;
            }
            if !self.adopt(s, from) {
                break;
            }
            moved += 1;
        }
        Ok(())
    }

    /// Renames `s` (a file of `from`) into this pool; false, and `s` back
    /// in `from`, if the rename fails (another filesystem, say).
    fn adopt(&self, s: Spare, from: &SparePool) -> bool {
        let to = self.dir.join(self.next_name().to_string());
        match std::fs::rename(&s.path, &to) {
            Ok(()) => {
                self.put(Spare {
                    path: to,
                    len: s.len,
                });
                true
            }
            Err(e) => {
                debug!(file = %s.path.display(), "cannot move a spare file: {e}");
                from.put(s);
                false
            }
        }
    }

    /// Makes new files until the pool holds `want`, at most `budget` of
    /// them and for at most `time`; returns how many it made.
    fn make(&self, want: usize, budget: usize, time: Duration) -> Result<usize, StagingError> {
        let (dir, making) = (&self.dir, &self.making);
        let started = Instant::now();
        let mut made = 0;
        while self.len() < want && made < budget && started.elapsed() < time {
            if made == 0 {
                for d in [dir, making] {
                    std::fs::create_dir_all(d).map_err(|e| StagingError::io("create", d, e))?;
                }
            }
            let name = self.next_name().to_string();
            let (new, path) = (making.join(&name), dir.join(&name));
            match OpenOptions::new().write(true).create_new(true).open(&new) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StagingError::io("create", &new, e)),
            }
            std::fs::rename(&new, &path).map_err(|e| StagingError::io("rename", &new, e))?;
            self.put(Spare { path, len: Some(0) });
            made += 1;
        }
        Ok(made)
    }

    /// A new empty file in the pool's directory, not put in the pool: for
    /// a deferred file when the pool is empty. (A name is taken only if
    /// something else made files there; after 1,000 the error says so.)
    fn create(&self) -> io::Result<(Spare, File)> {
        let mut taken = None;
        for _ in 0..1000 {
            let path = self.dir.join(self.next_name().to_string());
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .or_else(|e| {
                    if e.kind() != io::ErrorKind::NotFound {
                        return Err(e);
                    }
                    std::fs::create_dir_all(&self.dir)?;
                    OpenOptions::new().write(true).create_new(true).open(&path)
                });
            match f {
                Ok(f) => return Ok((Spare { path, len: Some(0) }, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => taken = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(taken.unwrap_or_else(|| io::ErrorKind::AlreadyExists.into()))
    }

    fn put(&self, spare: Spare) {
        self.list().push(spare);
    }

    /// How many files the pool should hold, after `taken` files were
    /// taken since the last refill.
    fn want(&self, taken: usize) -> usize {
        let old = self.demand.load(Ordering::Relaxed);
        self.demand
            .store(taken.max(old - old / 8), Ordering::Relaxed);
        self.wanted()
    }

    /// How many files the pool should hold at the current demand.
    fn wanted(&self) -> usize {
        (SPARES_MIN + 4 * self.demand.load(Ordering::Relaxed)).min(SPARES_READY)
    }

    /// Moves the file at `path` into the pool unless the pool holds
    /// [`SPARES_KEPT`] files already; false if it was not kept. The local
    /// clean-up removes an L0 interval of files at once (tens of thousands
    /// on a busy mount): kept, they are the next interval's deferred files,
    /// where deleting them would leave the flusher to make as many inodes
    /// again (slower on ext4 right after mass deletions). Idle, the pool
    /// shrinks back to what demand wants (see [`StagingDir::refill_spares`]).
    ///
    /// A small file keeps its blocks: its reuse writes over them, where an
    /// emptied file would have its blocks freed here (on a filesystem
    /// mounted with `discard`, a discard request waited for each) and new
    /// ones allocated at the next writeback. One larger than
    /// [`SPARE_BLOCKS_KEPT`] is emptied here, off the commit path, so that
    /// a reuse by a small transaction does not free its blocks inside a
    /// commit.
    fn keep(&self, path: &Path) -> bool {
        if self.len() >= SPARES_KEPT {
            return false;
        }
        let to = self.dir.join(self.next_name().to_string());
        let kept = rename_into(path, &self.dir, &to);
        if kept.is_err() {
            return false;
        }
        let len = match std::fs::metadata(&to) {
            Ok(m) if m.len() <= SPARE_BLOCKS_KEPT => Some(m.len()),
            _ if empty_spare(&to) => Some(0),
            _ => {
                // Still a valid spare (a reuse truncates); it only holds
                // blocks.
                debug!(file = %to.display(), "cannot empty a spare file");
                None
            }
        };
        self.put(Spare { path: to, len });
        true
    }
}

const PENDING_FILE: &str = "pending.ltx";

/// The largest file the spare pool keeps as it is (see `SparePool::keep`):
/// a one-row transaction's L0 file is a few hundred bytes to a few pages.
const SPARE_BLOCKS_KEPT: u64 = 64 << 10;

/// The most time a refill spends making files for a database that made no
/// commit since the last, and the flusher's top-up of the reserve. An inode
/// costs 20–40 µs on most filesystems, but close to a millisecond on ext4
/// without a journal within a minute of mass deletions; a refill that made
/// its whole count then kept a CPU busy for most of the next second, while
/// other work (another database, another program) wanted it. (Unit tests
/// count the files a refill makes, so there it is unbounded.)
#[cfg(not(test))]
pub const SPARE_MAKING_TIME: Duration = Duration::from_millis(5);
#[cfg(test)]
pub const SPARE_MAKING_TIME: Duration = Duration::from_secs(3600);

/// The spare files a mount's reserve holds (see [`refill_reserve`]): about
/// a second of commits at 4,000 a second.
pub const RESERVE_SIZE: usize = 8192;

/// The reserve's directory under a mount's staging root.
pub const RESERVE_DIR: &str = ".sluice-spares";

/// The most spare files a pool wants: a quarter second of commits at 2,000
/// per second.
const SPARES_READY: usize = 512;

/// The fewest spare files a pool wants (an idle database's): enough for the
/// first 50 ms of a burst of short transactions (a commit that finds the
/// pool empty makes a new inode, several times the cost of a spare's). An
/// empty file costs an inode and no block.
const SPARES_MIN: usize = 64;

/// Refills in a row without a file taken (the flusher's, 50 ms apart:
/// about 30 s) after which a pool larger than demand wants gives its extra
/// files back (to the reserve, or removed). A pool holds what the local
/// clean-up gave it; a load that pauses for seconds finds them again,
/// where giving them back at once moved every file twice more (back to
/// the reserve, then back into the pool) for each transaction.
#[cfg(not(test))]
pub const IDLE_ROUNDS: usize = 600;
#[cfg(test)]
pub const IDLE_ROUNDS: usize = 8;

/// Files a refill makes at least (plus twice those taken since the last);
/// also the most an idle refill removes from a pool larger than demand
/// wants.
const SPARES_PER_REFILL: usize = 96;

/// The most files a pool keeps from the local clean-up: about 30 s (the
/// default L1 interval) of commits at 2,000 a second.
const SPARES_KEPT: usize = 1 << 16;

/// How a file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    /// Durable, never replacing a file.
    Create,
    /// Durable, replacing a file (local state that is never uploaded).
    Replace,
}

fn write_file<F>(dir: &Path, name: &str, replace: bool, encode: F) -> Result<PathBuf, StagingError>
where
    F: FnOnce(&mut BufWriter<SyncEvery<'_>>) -> ltx_format::Result<()>,
{
    let mode = if replace {
        WriteMode::Replace
    } else {
        WriteMode::Create
    };
    write_file_as(dir, name, mode, encode)
}

fn write_file_as<F>(
    dir: &Path,
    name: &str,
    mode: WriteMode,
    encode: F,
) -> Result<PathBuf, StagingError>
where
    F: FnOnce(&mut BufWriter<SyncEvery<'_>>) -> ltx_format::Result<()>,
{
    std::fs::create_dir_all(dir).map_err(|e| StagingError::io("cannot create", dir, e))?;
    let path = dir.join(name);
    if mode == WriteMode::Create && path.exists() {
        return Err(StagingError::Exists { path });
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| StagingError::io("cannot create", &tmp, e))?;
    let written = write_all(&f, &tmp, encode).and_then(|()| fsync(&f, &tmp));
    if let Err(e) = written {
        // A full disk or a failed encode leaves nothing behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(|e| StagingError::io("rename", &tmp, e))?;
    fsync_dir(dir)?;
    Ok(path)
}

/// Cuts the file `f` (at `path`), just written from its start over `old`
/// bytes, at the end of what was written, if that is shorter.
fn cut_at_end(f: &File, path: &Path, old: u64) -> Result<(), StagingError> {
    use std::io::Seek;
    let end = (&mut &*f)
        .stream_position()
        .map_err(|e| StagingError::io("seek", path, e))?;
    if end < old {
        f.set_len(end)
            .map_err(|e| StagingError::io("truncate", path, e))?;
    }
    Ok(())
}

/// The header and trailer of the LTX file at `path`, unverified (a damaged
/// file can only make a comparison with them fail); None if they cannot be
/// read.
pub fn read_ends(path: &Path) -> Option<(ltx_format::Header, ltx_format::Trailer)> {
    use ltx_format::{Header, Trailer, HEADER_SIZE, TRAILER_SIZE};
    use std::os::unix::fs::FileExt;
    let f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut h = [0u8; HEADER_SIZE];
    let mut t = [0u8; TRAILER_SIZE];
    f.read_exact_at(&mut h, 0).ok()?;
    f.read_exact_at(&mut t, len.checked_sub(TRAILER_SIZE as u64)?)
        .ok()?;
    Some((Header::decode(&h).ok()?, Trailer::decode(&t)))
}

/// Empties the file at `path` (a spare); false if it cannot.
fn empty_spare(path: &Path) -> bool {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .is_ok()
}

/// The entries of `dir`, none if it does not exist.
fn read_dir_if_any(dir: &Path) -> Result<Vec<io::Result<std::fs::DirEntry>>, StagingError> {
    match std::fs::read_dir(dir) {
        Ok(r) => Ok(r.collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StagingError::io("list", dir, e)),
    }
}

/// The TXID of the L0 file a spare file at `path` holds, if its first
/// bytes are the header of an L0 file of one TXID.
fn deferred_txid(path: &Path) -> Option<Txid> {
    use std::io::Read;
    let mut b = [0u8; ltx_format::HEADER_SIZE];
    File::open(path).ok()?.read_exact(&mut b).ok()?;
    let h = ltx_format::Header::decode(&b).ok()?;
    (h.min_txid == h.max_txid).then_some(h.max_txid)
}

/// Renames `from` to `to` in `dir`, making `dir` first if the rename finds it
/// missing (created on first use, not at every rename).
fn rename_into(from: &Path, dir: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to).or_else(|e| {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(e);
        }
        std::fs::create_dir_all(dir)?;
        std::fs::rename(from, to)
    })
}

/// Encodes into the open file `f` (at `path`), without an fsync.
fn write_all<F>(f: &File, path: &Path, encode: F) -> Result<(), StagingError>
where
    F: FnOnce(&mut BufWriter<SyncEvery<'_>>) -> ltx_format::Result<()>,
{
    let mut w = BufWriter::new(SyncEvery::new(f, path));
    encode(&mut w).map_err(|e| encode_error(path, e))?;
    w.into_inner()
        .map_err(|e| encode_error(path, e.into_error().into()))?;
    Ok(())
}

/// A file writer that flushes to disk every 16 MiB, so a large file (a
/// snapshot) never leaves a gigabyte of dirty pages for one final fsync that
/// would stall the application's own fsyncs on the same disk.
#[derive(Debug)]
pub struct SyncEvery<'a> {
    f: &'a File,
    path: &'a Path,
    unsynced: usize,
}

impl<'a> SyncEvery<'a> {
    const CHUNK: usize = 16 << 20;

    pub fn new(f: &'a File, path: &'a Path) -> Self {
        SyncEvery {
            f,
            path,
            unsynced: 0,
        }
    }
}

impl io::Write for SyncEvery<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&mut &*self.f).write(buf)?;
        self.unsynced += n;
        if self.unsynced >= Self::CHUNK {
            failpoint::fsync(self.path)?;
            self.f.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let s = StagingDir::for_db(&dir.path().join("app.db"), None);
        assert_eq!(s.root(), dir.path().join(".app.db-sluice"));
        assert!(!s.has_history().unwrap());
        s.write_ltx(0, Txid(1), Txid(1), |_| Ok(())).unwrap();
        s.write_ltx(0, Txid(2), Txid(2), |_| Ok(())).unwrap();
        s.write_ltx(1, Txid(1), Txid(2), |_| Ok(())).unwrap();
        assert!(s.has_history().unwrap());
        let l0 = s.list_level(0).unwrap();
        assert_eq!(l0.len(), 2);
        assert_eq!(l0[1].path, s.ltx_path(0, Txid(2), Txid(2)));
        // L0 wins a tie: it carries the WAL position.
        assert_eq!(s.newest().unwrap().unwrap().level, 0);
        let e = s.write_ltx(0, Txid(2), Txid(2), |_| Ok(())).unwrap_err();
        assert!(e.is_fatal(), "{e}");
        assert!(e.to_string().contains("never overwritten"), "{e}");
    }

    #[test]
    fn deferred_files_take_spare_inodes_made_ahead_or_left_by_removed_l0_files() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let s = StagingDir::new(dir.path());
        let spares = || -> Vec<u64> {
            let mut v: Vec<u64> = std::fs::read_dir(dir.path().join("spare"))
                .map(|d| d.map(|e| e.unwrap().metadata().unwrap().ino()).collect())
                .unwrap_or_default();
            v.sort();
            v
        };
        let page = |w: &mut BufWriter<SyncEvery<'_>>| {
            std::io::Write::write_all(w, b"ltx bytes").map_err(ltx_format::Error::from)
        };
        // Without deferred files (`sluice replicate`) nothing is kept.
        let p = s.write_ltx(0, Txid(1), Txid(1), page).unwrap();
        let f = |p: &Path, t: u64| LocalFile {
            level: 0,
            min: Txid(t),
            max: Txid(t),
            path: p.to_path_buf(),
        };
        s.remove(&f(&p, 1)).unwrap();
        assert!(!p.exists() && spares().is_empty());
        // A removed L0 file becomes the next deferred file: kept as it is
        // (a small file), then written over and cut to its new length.
        let d = s.write_deferred(Txid(2), page).unwrap();
        let ino = std::fs::metadata(&d).unwrap().ino();
        s.remove(&f(&d, 2)).unwrap();
        assert!(!d.exists());
        assert_eq!(spares(), vec![ino]);
        let spare = std::fs::read_dir(dir.path().join("spare"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read(spare.path()).unwrap(), b"ltx bytes");
        let again = s
            .write_deferred(Txid(3), |w| {
                std::io::Write::write_all(w, b"new").map_err(ltx_format::Error::from)
            })
            .unwrap();
        assert_eq!(
            std::fs::metadata(&again).unwrap().ino(),
            ino,
            "inode reused"
        );
        assert_eq!(std::fs::read(&again).unwrap(), b"new", "old content gone");
        assert_eq!(spares(), vec![ino], "written where it lies");
        assert_eq!(s.list_deferred().unwrap(), [], "not an LTX header");
        // Promoted, it moves into ltx/0.
        let promote = |t: u64, p: &Path| s.promote_deferred(&[(Txid(t), p)], false).unwrap();
        let l0 = promote(3, &again);
        assert_eq!(l0, [s.ltx_path(0, Txid(3), Txid(3))]);
        assert!(spares().is_empty());
        // The flusher keeps empty files ready, as many as recent demand
        // wants (two taken so far); a deferred file takes one.
        assert_eq!(s.refill_spares().unwrap(), SPARES_MIN + 4 * 2);
        assert_eq!(s.refill_spares().unwrap(), 0, "enough for the demand");
        let ready = spares();
        assert_eq!(ready.len(), SPARES_MIN + 4 * 2);
        let next = s.write_deferred(Txid(4), page).unwrap();
        let ino = std::fs::metadata(&next).unwrap().ino();
        assert!(ready.contains(&ino));
        assert_eq!(std::fs::read(&next).unwrap(), b"ltx bytes");
        promote(4, &next);
        assert!(!spares().contains(&ino));
        // More demand grows the pool, ramping up: 96 plus twice the files
        // taken per round, towards four times the most taken in one round
        // (a mark that decays by an eighth a round).
        for t in 0..100 {
            let p = s.write_deferred(Txid(10 + t), page).unwrap();
            promote(10 + t, &p);
        }
        let taken = 101; // with TXID 4's
        assert_eq!(s.refill_spares().unwrap(), SPARES_PER_REFILL + 2 * taken);
        assert_eq!(spares().len(), SPARES_PER_REFILL + 2 * taken);
        assert_eq!(
            s.refill_spares().unwrap(),
            SPARES_PER_REFILL,
            "still wanted: SPARES_MIN + 4 × 89"
        );
        while s.refill_spares().unwrap() > 0 {}
        assert!(spares().len() < SPARES_MIN + 4 * taken);
        // A large removed file is emptied when kept... once the pool wants
        // more (here: none taken for long enough that demand decayed).
        let big = s
            .write_deferred(Txid(200), |w| {
                std::io::Write::write_all(w, &vec![7u8; 100 << 10]).map_err(ltx_format::Error::from)
            })
            .unwrap();
        let big = promote(200, &big).remove(0);
        let grown = spares().len();
        for _ in 0..64 {
            s.refill_spares().unwrap();
        }
        // Idle, the pool shrank back to what the decayed demand wants (the
        // mark stops decaying at 7: an eighth of it rounds to 0).
        let before = spares().len();
        assert!(
            before < grown && before <= SPARES_MIN + 4 * 7,
            "{grown} spares, {before} left"
        );
        let big_ino = std::fs::metadata(&big).unwrap().ino();
        s.remove(&f(&big, 200)).unwrap();
        assert!(!big.exists());
        assert_eq!(spares().len(), before + 1, "the clean-up's files are kept");
        assert!(spares().contains(&big_ino));
        let kept = std::fs::read_dir(dir.path().join("spare"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap())
            .find(|m| m.ino() == big_ino)
            .unwrap();
        assert_eq!(kept.len(), 0, "emptied when kept");
        // Another process (a restart) finds the pool's files, and those a
        // stop left where they are made, and goes on numbering after them.
        let other = tempfile::tempdir().unwrap();
        for d in ["spare", "spare-new"] {
            std::fs::create_dir_all(other.path().join(d)).unwrap();
        }
        std::fs::write(other.path().join("spare/41"), b"").unwrap();
        std::fs::write(other.path().join("spare-new/45"), b"").unwrap();
        let o = StagingDir::new(other.path());
        assert_eq!(o.refill_spares().unwrap(), SPARES_MIN - 2);
        for n in [41, 45, 46, 51] {
            assert!(other.path().join(format!("spare/{n}")).exists(), "{n}");
        }
        let making = std::fs::read_dir(other.path().join("spare-new")).unwrap();
        assert_eq!(making.count(), 0, "every file made is in the pool");
        // A large removed L0 file kept as a spare is emptied.
        std::fs::create_dir_all(other.path().join("deferred")).unwrap();
        let taken: Vec<PathBuf> = (0..4)
            .map(|t| {
                let p = o
                    .write_deferred(Txid(300 + t), |w| {
                        std::io::Write::write_all(w, &vec![7u8; 100 << 10])
                            .map_err(ltx_format::Error::from)
                    })
                    .unwrap();
                o.promote_deferred(&[(Txid(300 + t), &p)], false)
                    .unwrap()
                    .remove(0)
            })
            .collect();
        o.remove(&f(&taken[0], 300)).unwrap();
        let kept = std::fs::read_dir(other.path().join("spare"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .collect::<Vec<_>>();
        assert_eq!(kept.len(), SPARES_MIN - 4 + 1);
        assert!(kept.iter().all(|&n| n == 0), "{kept:?}");
        // A spare a stop left half written is truncated when reused.
        let third = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(third.path().join("spare")).unwrap();
        let stale = third.path().join("spare/7");
        std::fs::write(&stale, b"stale bytes of a file a stop left").unwrap();
        let t = StagingDir::new(third.path());
        let d = t
            .write_deferred(Txid(1), |w| {
                std::io::Write::write_all(w, b"new").map_err(ltx_format::Error::from)
            })
            .unwrap();
        assert_eq!(std::fs::read(&d).unwrap(), b"new");
        assert_eq!(d, stale, "written where it lies, cut to its length");
    }

    #[test]
    fn spare_pools_draw_from_the_mounts_reserve_and_give_back_what_they_do_not_need() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let reserve = dir.path().join(RESERVE_DIR);
        let inodes = |d: &Path| -> Vec<u64> {
            let mut v: Vec<u64> = std::fs::read_dir(d)
                .map(|d| {
                    d.map(|e| e.unwrap())
                        .filter(|e| e.file_type().unwrap().is_file())
                        .map(|e| e.metadata().unwrap().ino())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        // A refill given no time makes nothing; given time, its count.
        assert_eq!(refill_reserve(&reserve, 100, Duration::ZERO).unwrap(), 0);
        assert_eq!(
            refill_reserve(&reserve, 100, Duration::from_secs(60)).unwrap(),
            100
        );
        let made = inodes(&reserve);
        assert_eq!(made.len(), 100);
        // A new database's pool takes what it wants from the reserve and
        // makes no file.
        let s = StagingDir::new(dir.path().join("app.db")).with_reserve(&reserve);
        assert_eq!(s.refill_spares().unwrap(), 0);
        let pool = inodes(&s.root().join("spare"));
        assert_eq!(pool.len(), SPARES_MIN);
        assert!(pool.iter().all(|i| made.contains(i)));
        assert_eq!(inodes(&reserve).len(), 100 - SPARES_MIN);
        // Busy, it takes the rest and makes more; idle again, it gives its
        // extra files back to the reserve instead of deleting them.
        let mut staged = Vec::new();
        for t in 0..50 {
            let p = s
                .write_deferred(Txid(1 + t), |w| {
                    std::io::Write::write_all(w, b"ltx").map_err(ltx_format::Error::from)
                })
                .unwrap();
            staged.extend(s.promote_deferred(&[(Txid(1 + t), &p)], false).unwrap());
        }
        let want = SPARES_MIN + 4 * 50;
        // Its budget (96 plus twice the files taken) is for files made.
        assert_eq!(s.refill_spares().unwrap(), SPARES_PER_REFILL + 2 * 50);
        assert_eq!(inodes(&reserve).len(), 0);
        // The clean-up gives the staged files back to the pool, bytes and
        // all.
        for (t, p) in staged.iter().enumerate() {
            let f = LocalFile {
                level: 0,
                min: Txid(1 + t as u64),
                max: Txid(1 + t as u64),
                path: p.clone(),
            };
            s.remove(&f).unwrap();
        }
        let busy = inodes(&s.root().join("spare"));
        for _ in 0..100 {
            s.refill_spares().unwrap();
        }
        // What goes back to the reserve, which every database draws from,
        // is emptied: no other database's recovery reads an L0 file there.
        for e in std::fs::read_dir(&reserve).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                assert_eq!(e.metadata().unwrap().len(), 0, "{}", e.path().display());
            }
        }
        let idle = inodes(&s.root().join("spare"));
        let back = inodes(&reserve);
        assert_eq!(idle.len() + back.len(), busy.len());
        assert!(idle.len() < want && !back.is_empty());
        assert!(back.iter().all(|i| busy.contains(i)));
        // A restart finds the reserve where it was.
        let again = dir.path().join("again");
        std::fs::rename(&reserve, &again).unwrap();
        assert_eq!(
            refill_reserve(&again, 0, Duration::from_secs(60)).unwrap(),
            0
        );
        assert_eq!(reserve_pool(&again).len(), back.len());
    }

    #[test]
    fn a_failed_encode_leaves_nothing_and_a_full_disk_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let s = StagingDir::new(dir.path());
        let full = io::Error::from_raw_os_error(ENOSPC);
        let e = s
            .write_ltx(0, Txid(1), Txid(1), |_| Err(full.into()))
            .unwrap_err();
        assert!(matches!(e, StagingError::NoSpace { .. }), "{e:?}");
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert!(!e.is_fatal());
        assert_eq!(std::fs::read_dir(s.level_dir(0)).unwrap().count(), 0);
        let eio = StagingError::io("write", dir.path(), io::Error::from_raw_os_error(EIO));
        assert!(eio.is_fatal());
    }
}
