//! WAL capture: turns a WAL-mode database's committed transactions into LTX
//! files with a rolling database checksum.
//!
//! [`DbSource`] reads a database as of its last commit: the main file with the
//! WAL's committed frames laid over it. [`Shipper`] keeps a position (TXID,
//! per-page checksums, WAL salts and cursor) and, on each `sync`, packs the
//! frames committed since the last sync into the next L0 file, written to a
//! temporary name, fsynced, and renamed into place.
//!
//! This module does not yet take SQLite locks: callers must ensure no
//! checkpoint moves frames out of the WAL before they are shipped (the demo
//! checkpoints only right after a sync).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ltx_format::checksum::sqlite_page_size;
use ltx_format::wal::{scan_committed, CommittedFrames, WalCursor, WalHeader, WalReader};
use ltx_format::{
    checksum_page, format_filename, lock_pgno, Checksum, DbChecksum, Encoder, Header, PageSize,
    Txid, HEADER_FLAG_NO_CHECKSUM,
};

/// The `-wal` path of a database.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
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
    F: FnOnce(&mut BufWriter<&File>) -> Result<()>,
{
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(name);
    if path.exists() {
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
    {
        let mut w = BufWriter::new(&f);
        write(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?;
    }
    f.sync_all()
        .with_context(|| format!("fsync {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(path)
}

/// Ships one database's commits to a directory of L0 files.
pub struct Shipper {
    db: PathBuf,
    out_dir: PathBuf,
    page_size: PageSize,
    /// Page checksums by page number - 1 (0 for the lock page).
    pages: Vec<u64>,
    sum: DbChecksum,
    txid: Txid,
    wal: Option<(WalHeader, WalCursor)>,
    no_checksum: bool,
}

/// What one sync shipped.
#[derive(Debug, Clone)]
pub struct Shipped {
    pub txid: Txid,
    pub path: PathBuf,
    pub pages: usize,
    pub commit: u32,
    pub checksum: Checksum,
}

impl Shipper {
    /// Writes the snapshot (TXID 1) of `db` into `out_dir` and returns a shipper
    /// positioned after it.
    pub fn start(db: &Path, out_dir: &Path, no_checksum: bool) -> Result<(Self, Shipped)> {
        let main =
            File::open(db).with_context(|| format!("cannot open database {}", db.display()))?;
        let mut src = DbSource::open(&main, db)?;
        let ps = src.page_size;
        let lock = lock_pgno(ps);
        let mut header = Header::new(ps, src.commit, Txid(1), Txid(1));
        header.timestamp_ms = now_ms();
        if no_checksum {
            header.flags = HEADER_FLAG_NO_CHECKSUM;
        }
        if let Some((h, c)) = src.wal_position() {
            header.wal_offset = 32;
            header.wal_size = (c.offset - 32) as i64;
            header.wal_salt1 = h.salt1;
            header.wal_salt2 = h.salt2;
        }
        let mut pages = vec![0u64; src.commit as usize];
        let mut sum = DbChecksum::new();
        let mut buf = vec![0u8; ps.as_usize()];
        let commit = src.commit;
        let name = format_filename(Txid(1), Txid(1));
        let path = write_ltx(out_dir, &name, |w| {
            let mut enc = Encoder::new(w, header)?;
            for pgno in 1..=commit {
                if pgno == lock {
                    continue;
                }
                src.read_page(pgno, &mut buf)?;
                enc.encode_page(pgno, &buf)?;
                let c = checksum_page(pgno, &buf);
                pages[pgno as usize - 1] = c;
                sum.toggle(c);
            }
            let post = if no_checksum {
                Checksum::ZERO
            } else {
                enc.pages_checksum()
            };
            enc.finish(post)?;
            Ok(())
        })?;
        let shipper = Shipper {
            db: db.to_path_buf(),
            out_dir: out_dir.to_path_buf(),
            page_size: ps,
            pages,
            sum,
            txid: Txid(1),
            wal: src.wal_position(),
            no_checksum,
        };
        let shipped = Shipped {
            txid: Txid(1),
            path,
            pages: commit as usize,
            commit,
            checksum: sum.value(),
        };
        Ok((shipper, shipped))
    }

    pub fn checksum(&self) -> Checksum {
        self.sum.value()
    }

    /// Ships every frame committed since the last sync as the next L0 file.
    pub fn sync(&mut self) -> Result<Option<Shipped>> {
        let wp = wal_path(&self.db);
        let f = match File::open(&wp) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", wp.display())),
        };
        if f.metadata()?.len() < 32 {
            return Ok(None);
        }
        let mut hb = [0u8; 32];
        f.read_exact_at(&mut hb, 0)?;
        let header = WalHeader::parse(&hb).with_context(|| wp.display().to_string())?;
        let start = match self.wal {
            Some((h, c)) if h.salt1 == header.salt1 && h.salt2 == header.salt2 => c,
            // A new WAL generation (after a checkpoint restarted it): read from
            // its first frame.
            _ => WalCursor {
                offset: 32,
                checksum: header.checksum,
            },
        };
        let mut rf = &f;
        rf.seek(SeekFrom::Start(start.offset))?;
        let mut reader = WalReader::resume(std::io::BufReader::new(rf), header, start);
        let Some(frames) = scan_committed(&mut reader)? else {
            return Ok(None);
        };
        let txid = Txid(self.txid.0 + 1);
        let mut h = Header::new(self.page_size, frames.commit, txid, txid);
        h.timestamp_ms = now_ms();
        if self.no_checksum {
            h.flags = HEADER_FLAG_NO_CHECKSUM;
        } else {
            h.pre_apply_checksum = self.sum.value();
        }
        h.wal_offset = start.offset as i64;
        h.wal_size = (frames.end.offset - start.offset) as i64;
        h.wal_salt1 = header.salt1;
        h.wal_salt2 = header.salt2;
        let lock = lock_pgno(self.page_size);
        let ps = self.page_size.as_usize();
        let mut buf = vec![0u8; ps];
        let commit = frames.commit as usize;
        let old = &self.pages;
        let mut sum = self.sum;
        // Dropped pages leave the checksum; grown pages start absent.
        for c in old.iter().skip(commit) {
            sum.toggle(*c);
        }
        let mut changes: Vec<(usize, u64)> = Vec::with_capacity(frames.pages.len());
        let no_checksum = self.no_checksum;
        let name = format_filename(txid, txid);
        let path = write_ltx(&self.out_dir, &name, |w| {
            let mut enc = Encoder::new(w, h)?;
            let zero = vec![0u8; ps];
            for pgno in 1..=frames.commit {
                if pgno == lock {
                    continue;
                }
                let idx = pgno as usize - 1;
                let data: &[u8] = if let Some(&off) = frames.pages.get(&pgno) {
                    f.read_exact_at(&mut buf, off)?;
                    &buf
                } else if idx >= old.len() {
                    // Grown but never written: zeros in the file, so in the LTX too.
                    &zero
                } else {
                    continue;
                };
                enc.encode_page(pgno, data)?;
                let c = checksum_page(pgno, data);
                sum.toggle(old.get(idx).copied().unwrap_or(0));
                sum.toggle(c);
                changes.push((idx, c));
            }
            let post = if no_checksum {
                Checksum::ZERO
            } else {
                sum.value()
            };
            enc.finish(post)?;
            Ok(())
        })?;
        // Only now, with the file durable, does the position advance.
        self.pages.resize(commit, 0);
        for (idx, c) in changes {
            self.pages[idx] = c;
        }
        self.sum = sum;
        self.txid = txid;
        self.wal = Some((header, frames.end));
        Ok(Some(Shipped {
            txid,
            path,
            pages: frames.pages.len(),
            commit: frames.commit,
            checksum: sum.value(),
        }))
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
