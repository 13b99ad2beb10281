//! Reading a database as of its last commit, and writing LTX files durably.
//!
//! [`DbSource`] lays the WAL's committed frames over the main file.
//! [`write_ltx`] writes a file to a temporary name, fsyncs it, renames it into
//! place and fsyncs the directory; it never replaces an existing file.

use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ltx_format::checksum::sqlite_page_size;
use ltx_format::wal::{scan_committed, CommittedFrames, WalCursor, WalHeader, WalReader};
use ltx_format::PageSize;

/// The `-wal` path of a database.
pub fn wal_path(db: &Path) -> PathBuf {
    suffixed(db, "-wal")
}

/// The `-shm` (WAL-index) path of a database.
pub fn shm_path(db: &Path) -> PathBuf {
    suffixed(db, "-shm")
}

fn suffixed(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A database as of its last commit: main file plus committed WAL frames.
///
/// It reads through a file handle the caller keeps open: closing any
/// descriptor of the database file would release every POSIX lock this
/// process holds on it, SQLite's included.
pub struct DbSource<'a> {
    main: &'a File,
    main_pages: u32,
    wal: Option<(File, WalHeader, CommittedFrames)>,
    pub page_size: PageSize,
    pub commit: u32,
}

impl<'a> DbSource<'a> {
    /// `main` is the open database file at `path`.
    pub fn open(main: &'a File, path: &Path) -> Result<Self> {
        let mut head = [0u8; 100];
        main.read_exact_at(&mut head, 0)
            .with_context(|| format!("{}: too short to be a SQLite database", path.display()))?;
        let page_size = sqlite_page_size(&head).with_context(|| path.display().to_string())?;
        let len = main.metadata()?.len();
        let ps = u64::from(page_size.get());
        if len % ps != 0 {
            bail!(
                "{}: size {len} is not a multiple of the page size {ps}",
                path.display()
            );
        }
        let main_pages = u32::try_from(len / ps).context("database has too many pages")?;
        let mut commit = main_pages;
        let wp = wal_path(path);
        let mut wal = None;
        if let Ok(f) = File::open(&wp) {
            if f.metadata()?.len() >= 32 {
                let mut reader = WalReader::new(std::io::BufReader::new(&f))
                    .with_context(|| format!("{}: unreadable WAL", wp.display()))?;
                let header = *reader.header();
                if header.page_size != page_size {
                    bail!(
                        "{}: WAL page size {} differs from the database's {}",
                        wp.display(),
                        header.page_size,
                        page_size
                    );
                }
                if let Some(frames) = scan_committed(&mut reader)? {
                    commit = frames.commit;
                    wal = Some((f, header, frames));
                }
            }
        }
        Ok(DbSource {
            main,
            main_pages,
            wal,
            page_size,
            commit,
        })
    }

    /// Reads page `pgno` as of the last commit; pages past the main file's end
    /// that no frame holds read as zeros.
    pub fn read_page(&mut self, pgno: u32, buf: &mut [u8]) -> Result<()> {
        if let Some((f, _, frames)) = &self.wal {
            if let Some(&off) = frames.pages.get(&pgno) {
                f.read_exact_at(buf, off)?;
                return Ok(());
            }
        }
        if pgno <= self.main_pages {
            let off = u64::from(pgno - 1) * u64::from(self.page_size.get());
            self.main.read_exact_at(buf, off)?;
        } else {
            buf.fill(0);
        }
        Ok(())
    }

    /// The WAL header and the cursor just after its last commit, if any.
    pub fn wal_position(&self) -> Option<(WalHeader, WalCursor)> {
        self.wal.as_ref().map(|(_, h, fr)| (*h, fr.end))
    }
}

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync dir.
pub fn write_ltx<F>(dir: &Path, name: &str, write: F) -> Result<PathBuf>
where
    F: FnOnce(&mut BufWriter<SyncEvery<'_>>) -> Result<()>,
{
    write_file(dir, name, false, write)
}

/// Like [`write_ltx`], but replaces an existing file (for local state that
/// is never uploaded: the pending tail).
pub fn write_ltx_replacing<F>(dir: &Path, name: &str, write: F) -> Result<PathBuf>
where
    F: FnOnce(&mut BufWriter<SyncEvery<'_>>) -> Result<()>,
{
    write_file(dir, name, true, write)
}

fn write_file<F>(dir: &Path, name: &str, replace: bool, write: F) -> Result<PathBuf>
where
    F: FnOnce(&mut BufWriter<SyncEvery<'_>>) -> Result<()>,
{
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(name);
    if !replace && path.exists() {
        bail!(
            "{} already exists; shipped LTX files are never overwritten",
            path.display()
        );
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let written = (|| -> Result<()> {
        let mut w = BufWriter::new(SyncEvery::new(&f));
        write(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(())
    })()
    .with_context(|| format!("writing {}", tmp.display()));
    if let Err(e) = written {
        // A full disk or a failed encode leaves nothing behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(path)
}

/// A file writer that flushes to disk every 16 MiB, so a large file (a
/// snapshot) never leaves a gigabyte of dirty pages for one final fsync that
/// would stall the application's own fsyncs on the same disk.
#[derive(Debug)]
pub struct SyncEvery<'a> {
    f: &'a File,
    unsynced: usize,
}

impl<'a> SyncEvery<'a> {
    const CHUNK: usize = 16 << 20;

    pub fn new(f: &'a File) -> Self {
        SyncEvery { f, unsynced: 0 }
    }
}

impl std::io::Write for SyncEvery<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = (&mut &*self.f).write(buf)?;
        self.unsynced += n;
        if self.unsynced >= Self::CHUNK {
            self.f.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
