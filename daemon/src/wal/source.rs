//! Reading a database as of its last commit: [`DbSource`] lays the WAL's
//! committed frames over the main file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ltx_format::checksum::sqlite_page_size;
use ltx_format::wal::{scan_committed, CommittedFrames, WalCursor, WalHeader, WalReader};
use ltx_format::{lock_pgno, Encoder, PageSize};

use super::error::{CaptureError, Result};

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

/// The committed frames of the WAL at `wp`, if it has any.
fn committed_wal(
    wp: &Path,
    page_size: PageSize,
) -> Result<Option<(File, WalHeader, CommittedFrames)>> {
    let Ok(f) = File::open(wp) else {
        return Ok(None);
    };
    let len = f.metadata().map_err(|e| CaptureError::read(wp, e))?.len();
    if len < 32 {
        return Ok(None);
    }
    // SQLite ignores a WAL whose header is not valid (a crash before it was
    // synced, an unknown version): it holds no commit.
    let mut hb = [0u8; 32];
    f.read_exact_at(&mut hb, 0)
        .map_err(|e| CaptureError::read(wp, e))?;
    if WalHeader::parse(&hb).is_err() {
        return Ok(None);
    }
    let mut reader =
        WalReader::new(std::io::BufReader::new(&f)).map_err(|e| CaptureError::read(wp, e))?;
    let header = *reader.header();
    if header.page_size != page_size {
        return Err(CaptureError::Database(format!(
            "{}: WAL page size {} differs from the database's {page_size}",
            wp.display(),
            header.page_size
        )));
    }
    let frames = scan_committed(&mut reader).map_err(|e| CaptureError::read(wp, e))?;
    Ok(frames.map(|fr| (f, header, fr)))
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
        let len = main
            .metadata()
            .map_err(|e| CaptureError::read(path, e))?
            .len();
        let wp = wal_path(path);
        let page_size = match len {
            // A new WAL-mode database can be all WAL: its page size is the WAL's.
            0 => match super::recover::read_wal_header(&wp)? {
                Some(h) => h.page_size,
                None => {
                    return Err(CaptureError::Database(format!(
                        "{}: empty, not yet a SQLite database",
                        path.display()
                    )))
                }
            },
            _ => {
                let mut head = [0u8; 100];
                main.read_exact_at(&mut head, 0).map_err(|_| {
                    CaptureError::Database(format!(
                        "{}: too short to be a SQLite database",
                        path.display()
                    ))
                })?;
                sqlite_page_size(&head).map_err(|e| CaptureError::read(path, e))?
            }
        };
        let ps = u64::from(page_size.get());
        if len % ps != 0 {
            return Err(CaptureError::Database(format!(
                "{}: size {len} is not a multiple of the page size {ps}",
                path.display()
            )));
        }
        let main_pages = u32::try_from(len / ps)
            .map_err(|_| CaptureError::Database(format!("{}: too many pages", path.display())))?;
        let wal = committed_wal(&wp, page_size)?;
        let commit = wal.as_ref().map_or(main_pages, |(_, _, fr)| fr.commit);
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
    pub fn read_page(&mut self, pgno: u32, buf: &mut [u8]) -> std::io::Result<()> {
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

    /// Encodes every page (the lock page excepted) into `enc`, in order,
    /// showing each to `each` as well.
    pub fn encode_all<W: std::io::Write>(
        &mut self,
        enc: &mut Encoder<W>,
        mut each: impl FnMut(u32, &[u8]),
    ) -> ltx_format::Result<()> {
        let lock = lock_pgno(self.page_size);
        let mut buf = vec![0u8; self.page_size.as_usize()];
        for pgno in (1..=self.commit).filter(|&p| p != lock) {
            self.read_page(pgno, &mut buf)?;
            enc.encode_page(pgno, &buf)?;
            each(pgno, &buf);
        }
        Ok(())
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
