#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! The shared test vectors: real Litestream 0.5.17 files, reference-library
//! files, and invalid files, read from `shared/ltx-vectors` in place.

mod common;

use std::fs::File;
use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};

use common::{ltx_files, vectors, L0_CHECKSUMS};
use ltx_format::{
    apply_file, checksum_database, compact, verify, Applier, Checksum, CompactOptions, Rule, Txid,
};

fn all_valid_files() -> Vec<PathBuf> {
    let v = vectors();
    let mut out = Vec::new();
    for level in ["0", "1", "2", "9"] {
        out.extend(ltx_files(&v.join("litestream/replica/ltx").join(level)));
    }
    for d in ["compacted", "legacy", "stamped", "synthetic"] {
        out.extend(ltx_files(&v.join("go-reference").join(d)));
    }
    out.extend(ltx_files(&v.join("invalid/post-apply-lie")));
    out
}

fn verify_path(p: &Path) -> ltx_format::Result<ltx_format::FileSummary> {
    let s = verify(BufReader::new(File::open(p)?))?;
    if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
        ltx_format::apply::check_name(name, &s.header)?;
    }
    Ok(s)
}

#[test]
fn every_valid_vector_verifies() {
    let files = all_valid_files();
    assert!(files.len() >= 60, "found only {} files", files.len());
    for f in files {
        let s = verify_path(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(s.size > 0);
    }
}

#[test]
fn legacy_frames_are_read() {
    let p = vectors().join("go-reference/legacy/legacy-frames-snapshot.ltx");
    let s = verify_path(&p).unwrap();
    assert_eq!(s.legacy_frames, 28);
    assert_eq!(s.trailer.post_apply_checksum, Checksum(0xec7d0b4286c9da50));
}

#[test]
fn invalid_vectors_are_rejected_for_the_right_reason() {
    let cases: &[(&str, Rule, &str)] = &[
        (
            "payload-mid-byte.ltx",
            Rule::Lz4Block,
            "LZ4 block does not decode",
        ),
        (
            "payload-last-byte.ltx",
            Rule::FileChecksum,
            "file checksum mismatch",
        ),
        (
            "header-timestamp-byte.ltx",
            Rule::FileChecksum,
            "file checksum mismatch",
        ),
        (
            "header-flags-byte.ltx",
            Rule::HeaderFlags,
            "invalid header flags 0x00000003",
        ),
        (
            "truncated-last-byte.ltx",
            Rule::Truncated,
            "truncated page index",
        ),
        (
            "truncated-half.ltx",
            Rule::Truncated,
            "truncated size-prefixed LZ4 block in frame 96 (page 103): 15 of 69",
        ),
        (
            "trailing-garbage.ltx",
            Rule::UnexpectedBytes,
            "8 unexpected bytes before the trailer",
        ),
        (
            "short-page-payload.ltx",
            Rule::PayloadSize,
            "payload decompresses to 4095 bytes",
        ),
        (
            "snapshot-wrong-post.ltx",
            Rule::PostApplyChecksum,
            "post-apply checksum mismatch",
        ),
        (
            "strict-out-of-order.ltx",
            Rule::PageOrder,
            "page numbers must ascend",
        ),
        (
            "strict-page-beyond-commit.ltx",
            Rule::PageBeyondCommit,
            "beyond commit",
        ),
        (
            "strict-snapshot-incomplete.ltx",
            Rule::SnapshotIncomplete,
            "snapshot incomplete",
        ),
        (
            "strict-index-offset-wrong.ltx",
            Rule::PageIndex,
            "page index entry 0 differs from frame",
        ),
        (
            "strict-post-in-nochecksum.ltx",
            Rule::PostApplyChecksum,
            "must be 0 under NoChecksum",
        ),
    ];
    let dir = vectors().join("invalid");
    let listed: Vec<_> = ltx_files(&dir);
    assert_eq!(listed.len(), cases.len(), "every invalid file has a case");
    for (name, rule, text) in cases {
        let err = verify_path(&dir.join(name)).expect_err(name);
        assert_eq!(err.rule(), Some(*rule), "{name}: {err}");
        assert!(err.to_string().contains(text), "{name}: {err}");
    }
}

fn source_db() -> Vec<u8> {
    std::fs::read(vectors().join("litestream/source.db")).unwrap()
}

fn apply_chain(files: &[PathBuf]) -> (Vec<u8>, Vec<Checksum>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("out.db");
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let applied = apply_file(&db, &refs).unwrap_or_else(|e| panic!("{e}"));
    let bytes = std::fs::read(&db).unwrap();
    let (sum, _) = checksum_database(&bytes[..]).unwrap();
    assert_eq!(applied.last().unwrap().checksum, sum);
    (bytes, applied.iter().map(|a| a.checksum).collect())
}

fn l(level: &str, names: &[&str]) -> Vec<PathBuf> {
    let base = vectors().join("litestream/replica/ltx").join(level);
    names
        .iter()
        .map(|n| base.join(format!("{n}.ltx")))
        .collect()
}

#[test]
fn chains_rebuild_the_source_database() {
    let src = source_db();
    let l0 = ltx_files(&vectors().join("litestream/replica/ltx/0"));
    let (db, sums) = apply_chain(&l0);
    assert_eq!(db, src, "L0 1..14");
    let want: Vec<Checksum> = L0_CHECKSUMS.iter().map(|&c| Checksum(c)).collect();
    assert_eq!(sums, want, "checksum after every L0 step");

    let chains: Vec<(&str, Vec<PathBuf>)> = vec![
        ("L9 1-14", l("9", &["0000000000000001-0000000000000014"])),
        (
            "L9 1-11 + L1 12-14",
            [
                l("9", &["0000000000000001-0000000000000011"]),
                l("1", &["0000000000000012-0000000000000014"]),
            ]
            .concat(),
        ),
        (
            "L1 chain",
            ltx_files(&vectors().join("litestream/replica/ltx/1")),
        ),
        (
            "L2 chain",
            ltx_files(&vectors().join("litestream/replica/ltx/2")),
        ),
        (
            "stamped",
            ltx_files(&vectors().join("go-reference/stamped")),
        ),
        (
            "compacted 1-14",
            vec![vectors().join("go-reference/compacted/0000000000000001-0000000000000014.ltx")],
        ),
        (
            "compacted 1-c + d-14",
            vec![
                vectors().join("go-reference/compacted/0000000000000001-000000000000000c.ltx"),
                vectors().join("go-reference/compacted/000000000000000d-0000000000000014.ltx"),
            ],
        ),
        (
            "encode-db",
            vec![vectors().join("go-reference/compacted/encode-db-source.ltx")],
        ),
        (
            "legacy",
            vec![vectors().join("go-reference/legacy/legacy-frames-snapshot.ltx")],
        ),
    ];
    for (name, files) in chains {
        let (db, sums) = apply_chain(&files);
        assert_eq!(db, src, "{name}");
        assert_eq!(
            *sums.last().unwrap(),
            Checksum(0xec7d0b4286c9da50),
            "{name}"
        );
    }
}

#[test]
fn stamped_chain_checksums_match_each_step() {
    let stamped = ltx_files(&vectors().join("go-reference/stamped"));
    let (_, sums) = apply_chain(&stamped);
    let want: Vec<Checksum> = L0_CHECKSUMS.iter().map(|&c| Checksum(c)).collect();
    assert_eq!(sums, want);
}

#[test]
fn post_apply_lie_is_caught_by_apply() {
    let v = vectors();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("out.db");
    let mut files = ltx_files(&v.join("go-reference/stamped"));
    files.truncate(19);
    files.push(v.join("invalid/post-apply-lie/0000000000000014-0000000000000014.ltx"));
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let err = apply_file(&db, &refs).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::PostApplyChecksum), "{err}");
    assert!(
        err.to_string().contains("post-apply checksum mismatch"),
        "{err}"
    );
}

#[test]
fn synthetic_chain_and_delete() {
    let v = vectors().join("go-reference/synthetic");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("out.db");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&db)
        .unwrap();
    let mut a = Applier::new(f, None);
    let steps = [
        ("v1-snapshot.ltx", 0xe1899b6d587aaaaa_u64, 2048),
        ("v2-incremental.ltx", 0x8164924028ca28bf, 3072),
        ("v3-shrink.ltx", 0xe0d53ff6f3d08215, 1024),
        ("v5-delete.ltx", 0x8000000000000000, 0),
    ];
    for (name, sum, len) in steps {
        let got = a
            .apply_path(&v.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.checksum, Checksum(sum), "{name}");
        assert_eq!(std::fs::metadata(&db).unwrap().len(), len, "{name}");
    }
    let bytes = std::fs::read(&db).unwrap();
    assert!(bytes.is_empty());
    // v4 stands alone: a NoChecksum page-size-512 file that is not a snapshot.
    let s = verify_path(&v.join("v4-nochecksum-wal.ltx")).unwrap();
    assert_eq!(s.header.wal_offset, 32);
    assert_eq!(
        (s.header.wal_salt1, s.header.wal_salt2),
        (0x11223344, 0x55667788)
    );
}

#[test]
fn gap_in_chain_names_missing_txids() {
    let l0 = ltx_files(&vectors().join("litestream/replica/ltx/0"));
    let chain = [l0[0].clone(), l0[3].clone()];
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<&Path> = chain.iter().map(|p| p.as_path()).collect();
    let err = apply_file(&dir.path().join("x.db"), &refs).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::TxidContinuity));
    assert!(
        err.to_string()
            .contains("0000000000000002-0000000000000003 are missing"),
        "{err}"
    );
}

#[test]
fn compacting_the_chains_equals_applying_them() {
    let src = source_db();
    let v = vectors();
    for (dir, no_checksum) in [
        ("litestream/replica/ltx/0", true),
        ("go-reference/stamped", false),
    ] {
        let files = ltx_files(&v.join(dir));
        // Compact the whole chain, and the suffix d..14 (an incremental).
        let readers: Vec<_> = files
            .iter()
            .map(|p| BufReader::new(File::open(p).unwrap()))
            .collect();
        let (out, header, _) = compact(
            readers,
            Vec::new(),
            CompactOptions {
                no_checksum,
                allow_non_contiguous: false,
                snapshot: false,
            },
        )
        .unwrap();
        assert_eq!((header.min_txid, header.max_txid), (Txid(1), Txid(0x14)));
        let s = verify(Cursor::new(&out)).unwrap();
        if !no_checksum {
            assert_eq!(s.trailer.post_apply_checksum, Checksum(0xec7d0b4286c9da50));
        }
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("0000000000000001-0000000000000014.ltx");
        std::fs::write(&p, &out).unwrap();
        let (db, _) = apply_chain(&[p]);
        assert_eq!(db, src, "{dir} compacted");

        let head: Vec<_> = files[..12]
            .iter()
            .map(|p| BufReader::new(File::open(p).unwrap()))
            .collect();
        let tail: Vec<_> = files[12..]
            .iter()
            .map(|p| BufReader::new(File::open(p).unwrap()))
            .collect();
        let opts = CompactOptions {
            no_checksum,
            allow_non_contiguous: false,
            snapshot: false,
        };
        let (a, _, _) = compact(head, Vec::new(), opts).unwrap();
        let (b, hb, _) = compact(tail, Vec::new(), opts).unwrap();
        assert_eq!((hb.min_txid, hb.max_txid), (Txid(0xd), Txid(0x14)));
        let pa = tmp.path().join("0000000000000001-000000000000000c.ltx");
        let pb = tmp.path().join("000000000000000d-0000000000000014.ltx");
        std::fs::write(&pa, &a).unwrap();
        std::fs::write(&pb, &b).unwrap();
        let (db, _) = apply_chain(&[pa, pb]);
        assert_eq!(db, src, "{dir} compacted in two");
    }
}
