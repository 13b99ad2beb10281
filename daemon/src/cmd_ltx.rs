//! `sluice ltx …`: verify, dump, apply, checksum, encode-db.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ltx_format::apply::check_name;
use ltx_format::{
    checksum_database, checksum_page, verify as verify_file, Applier, Checksum, Decoder, Encoder,
    FileSummary, Header, Txid, HEADER_FLAG_NO_CHECKSUM,
};
use serde_json::json;

use crate::wal::source::{now_ms, DbSource};

fn verify_path(path: &Path) -> Result<FileSummary> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let s = verify_file(BufReader::new(f)).with_context(|| path.display().to_string())?;
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        check_name(name, &s.header).with_context(|| path.display().to_string())?;
    }
    Ok(s)
}

pub fn verify(files: &[PathBuf]) -> Result<ExitCode> {
    let mut failed = 0;
    for p in files {
        match verify_path(p) {
            Ok(s) => {
                let h = &s.header;
                let kind = if h.is_snapshot() {
                    "snapshot"
                } else {
                    "incremental"
                };
                outln!(
                    "ok   {}: TXID {}-{} {kind}, {} pages, commit {}, {}",
                    p.display(),
                    h.min_txid,
                    h.max_txid,
                    s.index.entries.len(),
                    h.commit,
                    if h.no_checksum() {
                        "no checksums".to_string()
                    } else {
                        format!("post-apply {}", s.trailer.post_apply_checksum)
                    }
                );
            }
            Err(e) => {
                failed += 1;
                outln!("FAIL {e:#}");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} files failed verification", files.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn header_json(h: &Header) -> serde_json::Value {
    json!({
        "flags": format!("0x{:08x}", h.flags),
        "no_checksum": h.no_checksum(),
        "page_size": h.page_size.get(),
        "commit": h.commit,
        "min_txid": h.min_txid.to_string(),
        "max_txid": h.max_txid.to_string(),
        "timestamp_ms": h.timestamp_ms,
        "pre_apply_checksum": h.pre_apply_checksum.to_string(),
        "wal_offset": h.wal_offset,
        "wal_size": h.wal_size,
        "wal_salt1": format!("{:08x}", h.wal_salt1),
        "wal_salt2": format!("{:08x}", h.wal_salt2),
        "node_id": h.node_id,
        "snapshot": h.is_snapshot(),
    })
}

pub fn dump(path: &Path, as_json: bool) -> Result<ExitCode> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut dec = Decoder::new(BufReader::new(f)).with_context(|| path.display().to_string())?;
    let h = *dec.header();
    let mut page = vec![0u8; h.page_size.as_usize()];
    let mut pages = Vec::new();
    while let Some(pgno) = dec
        .next_page(&mut page)
        .with_context(|| path.display().to_string())?
    {
        pages.push((pgno, checksum_page(pgno, &page)));
    }
    let s = dec.into_summary()?;
    let t = s.trailer;
    if as_json {
        let v = json!({
            "file": path.display().to_string(),
            "size": s.size,
            "header": header_json(&h),
            "pages": s.index.entries.iter().zip(&pages).map(|(e, (_, c))| json!({
                "pgno": e.pgno, "offset": e.offset, "size": e.size,
                "checksum": Checksum(*c).to_string(),
            })).collect::<Vec<_>>(),
            "legacy_frames": s.legacy_frames,
            "trailer": {
                "post_apply_checksum": t.post_apply_checksum.to_string(),
                "file_checksum": t.file_checksum.to_string(),
            },
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut o = crate::out();
    writeln!(
        o,
        "file:               {}  ({} bytes)",
        path.display(),
        s.size
    )?;
    writeln!(o, "header:")?;
    writeln!(
        o,
        "  flags:            0x{:08x}{}",
        h.flags,
        if h.no_checksum() { " (NoChecksum)" } else { "" }
    )?;
    writeln!(o, "  page size:        {}", h.page_size)?;
    writeln!(o, "  commit:           {}", h.commit)?;
    writeln!(
        o,
        "  TXID:             {}-{}{}",
        h.min_txid,
        h.max_txid,
        if h.is_snapshot() { " (snapshot)" } else { "" }
    )?;
    writeln!(o, "  timestamp:        {} ms", h.timestamp_ms)?;
    writeln!(o, "  pre-apply:        {}", h.pre_apply_checksum)?;
    writeln!(o, "  WAL offset/size:  {}/{}", h.wal_offset, h.wal_size)?;
    writeln!(
        o,
        "  WAL salts:        {:08x} {:08x}",
        h.wal_salt1, h.wal_salt2
    )?;
    writeln!(o, "  node ID:          {}", h.node_id)?;
    writeln!(o, "pages ({}):", pages.len())?;
    writeln!(
        o,
        "  {:>10} {:>12} {:>8}  checksum",
        "pgno", "offset", "size"
    )?;
    for (e, (_, c)) in s.index.entries.iter().zip(&pages) {
        writeln!(
            o,
            "  {:>10} {:>12} {:>8}  {}",
            e.pgno,
            e.offset,
            e.size,
            Checksum(*c)
        )?;
    }
    if s.legacy_frames > 0 {
        writeln!(o, "legacy LZ4 frames:  {}", s.legacy_frames)?;
    }
    writeln!(o, "trailer:")?;
    writeln!(o, "  post-apply:       {}", t.post_apply_checksum)?;
    writeln!(o, "  file checksum:    {}", t.file_checksum)?;
    Ok(ExitCode::SUCCESS)
}

pub fn apply(db: &Path, files: &[PathBuf]) -> Result<ExitCode> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(db)
        .with_context(|| format!("cannot open database {}", db.display()))?;
    let mut a = Applier::new(f, None);
    for p in files {
        let done = a
            .apply_path(p)
            .with_context(|| format!("{}: not applied to {}", p.display(), db.display()))?;
        let h = done.header;
        outln!(
            "applied {}: TXID {}-{}, commit {}, database checksum {}",
            p.display(),
            h.min_txid,
            h.max_txid,
            h.commit,
            done.checksum
        );
    }
    a.finish()
        .with_context(|| format!("fsync {}", db.display()))?;
    Ok(ExitCode::SUCCESS)
}

pub fn checksum(db: &Path) -> Result<ExitCode> {
    let f = File::open(db).with_context(|| format!("cannot open database {}", db.display()))?;
    let (sum, _) =
        checksum_database(BufReader::new(f)).with_context(|| db.display().to_string())?;
    outln!("{sum}");
    Ok(ExitCode::SUCCESS)
}

pub fn encode_db(
    db: &Path,
    out: &Path,
    no_checksum: bool,
    txid: u64,
    force: bool,
) -> Result<ExitCode> {
    if txid == 0 {
        bail!("--txid must be at least 1");
    }
    if out.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", out.display());
    }
    let main = File::open(db).with_context(|| format!("cannot open database {}", db.display()))?;
    let mut src = DbSource::open(&main, db)?;
    let ps = src.page_size;
    let mut header = Header::new(ps, src.commit, Txid(1), Txid(txid));
    header.timestamp_ms = now_ms();
    if no_checksum {
        header.flags = HEADER_FLAG_NO_CHECKSUM;
    }
    let tmp = out.with_extension("ltx.tmp");
    let f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut enc = Encoder::new(std::io::BufWriter::new(f), header)?;
    src.encode_all(&mut enc, |_, _| {})?;
    let sum = enc.pages_checksum();
    let post = if no_checksum { Checksum::ZERO } else { sum };
    let (w, _) = enc.finish(post)?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, out)?;
    outln!(
        "wrote {}: snapshot TXID {}-{}, {} pages of {}, database checksum {sum}",
        out.display(),
        Txid(1),
        Txid(txid),
        src.commit,
        ps
    );
    Ok(ExitCode::SUCCESS)
}
