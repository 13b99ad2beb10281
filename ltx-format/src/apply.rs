//! Applying LTX files to a database file, checking TXID continuity and, where
//! the files carry them, the pre- and post-apply database checksums.
//!
//! Each file is verified completely (file checksum, every strict rule) before
//! any of its pages touches the database.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::checksum::{checksum_pages, Checksum};
use crate::decoder::{verify, Decoder};
use crate::error::{Error, Result, Rule};
use crate::header::Header;
use crate::name::parse_filename;
use crate::{is_contiguous, PageSize, Txid};

/// Applies a chain of files to one database file, in order.
#[derive(Debug)]
pub struct Applier {
    db: File,
    page_size: Option<PageSize>,
    prev_max: Option<Txid>,
}

/// What one applied file did.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub header: Header,
    /// The database checksum after applying (computed from the file).
    pub checksum: Checksum,
}

impl Applier {
    /// `db` must be open for reading and writing. `prev_max` is the TXID the
    /// database is already at, if known; `None` means the first file must be a
    /// snapshot unless the database file is non-empty.
    pub fn new(db: File, prev_max: Option<Txid>) -> Self {
        Applier {
            db,
            page_size: None,
            prev_max,
        }
    }

    pub fn position(&self) -> Option<Txid> {
        self.prev_max
    }

    /// Verifies then applies the LTX file at `path`.
    pub fn apply_path(&mut self, path: &Path) -> Result<Applied> {
        let open = || -> Result<BufReader<File>> { Ok(BufReader::new(File::open(path)?)) };
        let summary = verify(open()?)?;
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            check_name(name, &summary.header)?;
        }
        self.apply_verified(open()?, &summary.header)
    }

    fn apply_verified<R: Read>(&mut self, r: R, expect: &Header) -> Result<Applied> {
        let mut dec = Decoder::new(r)?;
        let h = *dec.header();
        if h != *expect {
            return Err(Error::Usage(
                "file changed between verification and apply".into(),
            ));
        }
        let db_len = self.db.seek(SeekFrom::End(0))?;
        if let Some(ps) = self.page_size {
            if ps != h.page_size {
                return Err(Error::invalid(
                    Rule::PageSizeMismatch,
                    format!("file has page size {}, earlier files had {ps}", h.page_size),
                ));
            }
        }
        match self.prev_max {
            Some(prev) => {
                if !is_contiguous(prev, h.min_txid, h.max_txid) {
                    let detail = if h.min_txid.0 > prev.0 + 1 {
                        format!(
                            "gap: database is at TXID {prev}, file covers {}-{}; TXIDs {:016x}-{:016x} are missing",
                            h.min_txid, h.max_txid, prev.0 + 1, h.min_txid.0 - 1
                        )
                    } else {
                        format!(
                            "file {}-{} adds nothing after TXID {prev}",
                            h.min_txid, h.max_txid
                        )
                    };
                    return Err(Error::invalid(Rule::TxidContinuity, detail));
                }
            }
            None => {
                if !h.is_snapshot() && db_len == 0 {
                    return Err(Error::invalid(
                        Rule::TxidContinuity,
                        format!(
                            "the first file ({}-{}) is not a snapshot (MinTXID 1) and the database is empty",
                            h.min_txid, h.max_txid
                        ),
                    ));
                }
            }
        }
        let tracked = !h.no_checksum();
        if tracked && !h.is_snapshot() {
            self.db.seek(SeekFrom::Start(0))?;
            let (have, _) = checksum_pages(&[], BufReader::new(&mut self.db), h.page_size)?;
            if have != h.pre_apply_checksum {
                return Err(Error::invalid(
                    Rule::PreApplyChecksum,
                    format!(
                        "pre-apply checksum mismatch: file expects database {}, database is {have}",
                        h.pre_apply_checksum
                    ),
                ));
            }
        }
        let ps = h.page_size.as_usize();
        let mut page = vec![0u8; ps];
        while let Some(pgno) = dec.next_page(&mut page)? {
            self.db
                .seek(SeekFrom::Start(u64::from(pgno - 1) * ps as u64))?;
            self.db.write_all(&page)?;
        }
        let trailer = dec
            .trailer()
            .ok_or_else(|| Error::Usage("decoder ended without a trailer".into()))?;
        let new_len = u64::from(h.commit) * ps as u64;
        self.db.set_len(new_len)?;
        self.db.flush()?;
        self.db.seek(SeekFrom::Start(0))?;
        let (after, _) = checksum_pages(&[], BufReader::new(&mut self.db), h.page_size)?;
        if tracked && after != trailer.post_apply_checksum {
            return Err(Error::invalid(
                Rule::PostApplyChecksum,
                format!(
                    "post-apply checksum mismatch: file says {}, database is {after} after applying",
                    trailer.post_apply_checksum
                ),
            ));
        }
        self.page_size = Some(h.page_size);
        self.prev_max = Some(h.max_txid);
        Ok(Applied {
            header: h,
            checksum: after,
        })
    }

    /// Flushes the database to stable storage and returns it.
    pub fn finish(self) -> Result<File> {
        self.db.sync_all()?;
        Ok(self.db)
    }
}

/// A file named `%016x-%016x.ltx` must hold those TXIDs.
pub fn check_name(name: &str, h: &Header) -> Result<()> {
    if let Some((min, max)) = parse_filename(name) {
        if min != h.min_txid || max != h.max_txid {
            return Err(Error::invalid(
                Rule::FileName,
                format!(
                    "file name says TXIDs {min}-{max}, header says {}-{}",
                    h.min_txid, h.max_txid
                ),
            ));
        }
    }
    Ok(())
}

/// Applies `paths` in order to the database at `db_path` (created if missing).
pub fn apply_file(db_path: &Path, paths: &[&Path]) -> Result<Vec<Applied>> {
    let db = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(db_path)?;
    let mut a = Applier::new(db, None);
    let mut out = Vec::new();
    for p in paths {
        out.push(a.apply_path(p)?);
    }
    a.finish()?;
    Ok(out)
}
