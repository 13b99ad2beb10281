//! The redo record of a step: written before the step's first page touches
//! the cached database, removed once the position records the step. It is
//! an LTX file (TXIDs `from+1..=to`, the new pages, pre- and post-apply
//! checksums), so its own file checksum says whether it is complete.
//!
//! At start-up a complete record whose pre-apply position is the recorded
//! one is applied again (its pages written, the file resized): a crash in
//! the middle of a step then loses nothing. An incomplete record means the
//! crash came before the step began to write, so it is dropped. Either way
//! the database's checksum is then recomputed and compared, and a database
//! that still does not match is restored again, never served.
//!
//! It is written without an fsync: a process crash keeps the page cache, and
//! a power failure that loses it is caught by that comparison.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use ltx_format::{Checksum, Decoder, Encoder, Header, Txid};

use super::cache::Step;

/// Writes `step` (from a database at `(step.from, pre)`) as the record at
/// `path`, by rename.
pub fn write(
    path: &Path,
    step: &Step,
    page_size: ltx_format::PageSize,
    pre: Checksum,
) -> Result<()> {
    let tmp = path.with_extension("ltx.tmp");
    let mut h = Header::new(page_size, step.commit, Txid(step.from.0 + 1), step.to);
    h.timestamp_ms = step.timestamp_ms;
    h.pre_apply_checksum = pre;
    let out = BufWriter::new(
        File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?,
    );
    let mut enc = Encoder::new(out, h)?;
    for (pgno, data, _) in &step.pages {
        enc.encode_page(*pgno, data)?;
    }
    let (w, _) = enc.finish(step.checksum)?;
    w.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {}", tmp.display()))
}

/// What the record did at start-up.
#[derive(Debug, PartialEq, Eq)]
pub enum Replayed {
    /// No record, or one already applied or not applicable: dropped.
    Nothing,
    /// Its pages were written: the database should now be at this position.
    Applied {
        txid: Txid,
        checksum: Checksum,
        timestamp_ms: i64,
    },
}

/// Applies the record at `path` to `db` if it continues `(txid, _)`; removes
/// it in every case.
pub fn replay(path: &Path, db: &File, txid: Txid) -> Result<Replayed> {
    if !path.exists() {
        return Ok(Replayed::Nothing);
    }
    let result = replay_inner(path, db, txid);
    std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    result
}

fn replay_inner(path: &Path, db: &File, txid: Txid) -> Result<Replayed> {
    let open = || -> Result<BufReader<File>> { Ok(BufReader::new(File::open(path)?)) };
    let summary = match ltx_format::verify(open()?) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!("{}: incomplete step record dropped ({e})", path.display());
            return Ok(Replayed::Nothing);
        }
    };
    let h = summary.header;
    if h.min_txid.0 != txid.0 + 1 {
        return Ok(Replayed::Nothing);
    }
    let ps = h.page_size.as_usize();
    let mut dec = Decoder::new(open()?)?;
    let mut page = vec![0u8; ps];
    while let Some(pgno) = dec.next_page(&mut page)? {
        db.write_all_at(&page, u64::from(pgno - 1) * ps as u64)?;
    }
    let trailer = dec
        .trailer()
        .context("step record has no trailer after its pages")?;
    db.set_len(u64::from(h.commit) * ps as u64)?;
    Ok(Replayed::Applied {
        txid: h.max_txid,
        checksum: trailer.post_apply_checksum,
        timestamp_ms: h.timestamp_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltx_format::checksum::CHECKSUM_FLAG;
    use ltx_format::{checksum_page, PageSize};

    #[test]
    fn a_complete_record_replays_and_a_torn_one_is_dropped() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("step.ltx");
        let ps = PageSize::new(512).unwrap();
        let db = tempfile::tempfile().unwrap();
        db.write_all_at(&[1u8; 1024], 0).unwrap();
        let new = vec![9u8; 512];
        let ck = checksum_page(3, &new) & !CHECKSUM_FLAG;
        let step = Step {
            from: Txid(4),
            to: Txid(6),
            commit: 3,
            timestamp_ms: 77,
            pages: vec![(3, new.clone(), ck)],
            checksum: Checksum(CHECKSUM_FLAG | 5),
        };
        write(&path, &step, ps, Checksum(CHECKSUM_FLAG | 1)).unwrap();
        // Not the recorded position: dropped, nothing written.
        assert_eq!(replay(&path, &db, Txid(3)).unwrap(), Replayed::Nothing);
        assert!(!path.exists());
        assert_eq!(db.metadata().unwrap().len(), 1024);

        write(&path, &step, ps, Checksum(CHECKSUM_FLAG | 1)).unwrap();
        let r = replay(&path, &db, Txid(4)).unwrap();
        assert_eq!(
            r,
            Replayed::Applied {
                txid: Txid(6),
                checksum: step.checksum,
                timestamp_ms: 77
            }
        );
        let mut got = vec![0u8; 512];
        db.read_exact_at(&mut got, 1024).unwrap();
        assert_eq!(got, new);

        write(&path, &step, ps, Checksum(CHECKSUM_FLAG | 1)).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert_eq!(replay(&path, &db, Txid(4)).unwrap(), Replayed::Nothing);
        assert!(!path.exists());
    }
}
