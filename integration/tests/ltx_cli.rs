#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! `sluice ltx …` end to end: the real binary on the shared vectors, real
//! SQLite databases, and Litestream 0.5.17 restoring what `encode-db` writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration::env::ltx_checksum as checksum_of;
use integration::{litestream_bin, ltx_files, run, s, sluice, stderr, stdout};
use ltx_format::test_vectors::{self, dir as vectors_dir};

/// (file, expected db checksum) for L0 1..14, from the vectors README.
fn l0_expected() -> Vec<(PathBuf, String)> {
    let sums = test_vectors::L0_CHECKSUMS.map(|c| c.to_string());
    ltx_files(&vectors_dir().join("litestream/replica/ltx/0"))
        .into_iter()
        .zip(sums)
        .collect()
}

#[test]
fn verify_prints_one_line_per_file_and_fails_on_any_invalid() {
    let v = vectors_dir();
    let mut files = Vec::new();
    for d in [
        "litestream/replica/ltx/0",
        "litestream/replica/ltx/1",
        "litestream/replica/ltx/2",
        "litestream/replica/ltx/9",
        "go-reference/stamped",
        "go-reference/compacted",
        "go-reference/legacy",
        "go-reference/synthetic",
    ] {
        files.extend(ltx_files(&v.join(d)));
    }
    let args: Vec<&str> = std::iter::once("ltx")
        .chain(std::iter::once("verify"))
        .chain(files.iter().map(|p| s(p)))
        .collect();
    let o = sluice(&args);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), files.len());
    assert!(out.lines().all(|l| l.starts_with("ok ")), "{out}");

    // One bad file among good ones: every file still gets its line, exit fails.
    let bad = v.join("invalid/header-flags-byte.ltx");
    let o = sluice(&["ltx", "verify", s(&files[0]), s(&bad), s(&files[1])]);
    assert!(!o.status.success());
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[1].starts_with("FAIL "), "{out}");
    assert!(lines[1].contains("header-flags-byte.ltx"), "{out}");
    assert!(
        lines[1].contains("invalid header flags 0x00000003"),
        "{out}"
    );
}

#[test]
fn every_invalid_file_is_rejected_naming_file_and_rule() {
    let cases = [
        ("payload-mid-byte.ltx", "LZ4 block does not decode"),
        ("payload-last-byte.ltx", "file checksum mismatch"),
        ("header-timestamp-byte.ltx", "file checksum mismatch"),
        ("header-flags-byte.ltx", "invalid header flags 0x00000003"),
        ("truncated-last-byte.ltx", "truncated page index"),
        ("truncated-half.ltx", "in frame 96"),
        (
            "trailing-garbage.ltx",
            "8 unexpected bytes before the trailer",
        ),
        (
            "short-page-payload.ltx",
            "payload decompresses to 4095 bytes",
        ),
        ("snapshot-wrong-post.ltx", "post-apply checksum mismatch"),
        ("strict-out-of-order.ltx", "page numbers must ascend"),
        ("strict-page-beyond-commit.ltx", "beyond commit"),
        ("strict-snapshot-incomplete.ltx", "snapshot incomplete"),
        ("strict-index-offset-wrong.ltx", "differs from frame"),
        (
            "strict-post-in-nochecksum.ltx",
            "must be 0 under NoChecksum",
        ),
    ];
    for (name, reason) in cases {
        let p = vectors_dir().join("invalid").join(name);
        let o = sluice(&["ltx", "verify", s(&p)]);
        assert!(!o.status.success(), "{name} accepted");
        let out = stdout(&o);
        assert!(out.contains(name) && out.contains(reason), "{name}: {out}");
    }
}

#[test]
fn apply_one_step_at_a_time_prints_expected_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("out.db");
    for (file, want) in l0_expected() {
        let o = sluice(&["ltx", "apply", "--db", s(&db), s(&file)]);
        assert!(o.status.success(), "{}: {}", file.display(), stderr(&o));
        let o = sluice(&["ltx", "checksum", s(&db)]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o).trim(), want, "after {}", file.display());
    }
    let src = std::fs::read(vectors_dir().join("litestream/source.db")).unwrap();
    assert_eq!(std::fs::read(&db).unwrap(), src);
}

fn apply_all(files: &[PathBuf]) -> (std::process::Output, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("out.db");
    let mut args = vec!["ltx", "apply", "--db", s(&db)];
    args.extend(files.iter().map(|p| s(p)));
    let o = sluice(&args);
    let bytes = std::fs::read(&db).unwrap_or_default();
    (o, bytes)
}

#[test]
fn apply_every_documented_chain_rebuilds_source() {
    let v = vectors_dir();
    let src = std::fs::read(v.join("litestream/source.db")).unwrap();
    let r = v.join("litestream/replica/ltx");
    let c = v.join("go-reference/compacted");
    let chains: Vec<(&str, Vec<PathBuf>)> = vec![
        ("L0 1..14", ltx_files(&r.join("0"))),
        (
            "L9 1-14",
            vec![r.join("9/0000000000000001-0000000000000014.ltx")],
        ),
        (
            "L9 1-11 + L1 12-14",
            vec![
                r.join("9/0000000000000001-0000000000000011.ltx"),
                r.join("1/0000000000000012-0000000000000014.ltx"),
            ],
        ),
        ("L1 chain", ltx_files(&r.join("1"))),
        ("L2 chain", ltx_files(&r.join("2"))),
        ("stamped", ltx_files(&v.join("go-reference/stamped"))),
        (
            "compacted 1-14",
            vec![c.join("0000000000000001-0000000000000014.ltx")],
        ),
        (
            "compacted 1-c, d-14",
            vec![
                c.join("0000000000000001-000000000000000c.ltx"),
                c.join("000000000000000d-0000000000000014.ltx"),
            ],
        ),
        ("encode-db", vec![c.join("encode-db-source.ltx")]),
        (
            "legacy frames",
            vec![v.join("go-reference/legacy/legacy-frames-snapshot.ltx")],
        ),
    ];
    for (name, files) in chains {
        let (o, bytes) = apply_all(&files);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert_eq!(bytes, src, "{name}");
        let last = stdout(&o).lines().last().unwrap_or_default().to_string();
        assert!(
            last.ends_with("database checksum ec7d0b4286c9da50"),
            "{name}: {last}"
        );
    }
}

#[test]
fn apply_catches_the_post_apply_lie_and_gaps() {
    let v = vectors_dir();
    let mut files = ltx_files(&v.join("go-reference/stamped"));
    files.truncate(19);
    files.push(v.join("invalid/post-apply-lie/0000000000000014-0000000000000014.ltx"));
    let (o, _) = apply_all(&files);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("post-apply checksum mismatch") && err.contains("post-apply-lie"),
        "{err}"
    );

    let l0 = ltx_files(&v.join("litestream/replica/ltx/0"));
    let (o, _) = apply_all(&[l0[0].clone(), l0[5].clone()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("TXIDs 0000000000000002-0000000000000005 are missing"),
        "{err}"
    );
}

#[test]
fn dump_json_describes_the_file() {
    let p = vectors_dir().join("go-reference/synthetic/v1-snapshot.ltx");
    let o = sluice(&["ltx", "dump", "--json", s(&p)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["header"]["page_size"], 1024);
    assert_eq!(j["header"]["commit"], 2);
    assert_eq!(j["header"]["min_txid"], "0000000000000001");
    assert_eq!(j["pages"][0]["offset"], 100);
    assert_eq!(j["pages"][1]["offset"], 136);
    assert_eq!(j["pages"][1]["size"], 36);
    assert_eq!(j["trailer"]["post_apply_checksum"], "e1899b6d587aaaaa");
    assert_eq!(j["trailer"]["file_checksum"], "f86fcff36247df82");
    let o = sluice(&["ltx", "dump", s(&p)]);
    let text = stdout(&o);
    assert!(
        text.contains("post-apply:       e1899b6d587aaaaa"),
        "{text}"
    );
}

#[test]
fn a_reader_that_stops_early_ends_the_output_quietly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let (db, ltx) = (dir.path().join("big.db"), dir.path().join("big.ltx"));
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA page_size=512; CREATE TABLE t(v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 30000)
         INSERT INTO t(v) SELECT hex(randomblob(40)) FROM n;",
    )
    .unwrap();
    drop(c);
    let o = sluice(&["ltx", "encode-db", s(&db), "-o", s(&ltx)]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Far more than a pipe holds, so the dump is still writing when the
    // reader goes (`sluice ltx dump big.ltx | head -c 100`).
    let all = sluice(&["ltx", "dump", s(&ltx)]);
    assert!(all.stdout.len() > 2 * 65536, "{} bytes", all.stdout.len());
    let mut child = Command::new(integration::sluice_bin())
        .args(["ltx", "dump", s(&ltx)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut head = [0u8; 100];
    out.read_exact(&mut head).unwrap();
    assert_eq!(&head[..], &all.stdout[..100]);
    drop(out);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(err.is_empty(), "{err}");
    assert!(o.status.success(), "{:?}", o.status);
}

/// A real SQLite database with some history, in WAL mode or not.
fn make_db(path: &Path, page_size: u32, wal: bool) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(&format!("PRAGMA page_size={page_size};"))
        .unwrap();
    if wal {
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        c.execute_batch("PRAGMA wal_autocheckpoint=0;").unwrap();
    }
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 3000)
         INSERT INTO t(v) SELECT printf('row %d %s', i, hex(randomblob(40))) FROM n;
         DELETE FROM t WHERE id % 3 = 0;",
    )
    .unwrap();
}

#[test]
fn encode_db_snapshots_round_trip_for_both_page_sizes_and_wal() {
    for (ps, wal) in [(4096, false), (65536, false), (4096, true)] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("src.db");
        make_db(&db, ps, wal);
        let snap = dir.path().join("snap.ltx");
        let o = sluice(&["ltx", "encode-db", s(&db), "-o", s(&snap)]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = sluice(&["ltx", "verify", s(&snap)]);
        assert!(o.status.success(), "{}", stdout(&o));
        let out = dir.path().join("out.db");
        let o = sluice(&["ltx", "apply", "--db", s(&out), s(&snap)]);
        assert!(o.status.success(), "{}", stderr(&o));
        // With uncheckpointed WAL frames the snapshot holds the committed state,
        // which the main file alone does not: compare through SQLite.
        if wal {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        }
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&db).unwrap(),
            "page size {ps}, wal {wal}"
        );
        assert_eq!(checksum_of(&out), checksum_of(&db));
        let c = rusqlite::Connection::open(&out).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        // Refuses to overwrite without --force.
        let o = sluice(&["ltx", "encode-db", s(&db), "-o", s(&snap)]);
        assert!(
            !o.status.success() && stderr(&o).contains("--force"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn litestream_restores_encode_db_nochecksum_snapshots_byte_identically() {
    let ls = litestream_bin();
    let v = vectors_dir();
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated.db");
    make_db(&generated, 4096, false);
    for src in [v.join("litestream/source.db"), generated] {
        let replica = dir.path().join(format!(
            "replica-{}",
            src.file_stem().unwrap().to_str().unwrap()
        ));
        let l9 = replica.join("ltx/9");
        std::fs::create_dir_all(&l9).unwrap();
        let snap = l9.join("0000000000000001-0000000000000001.ltx");
        let o = sluice(&["ltx", "encode-db", "--no-checksum", s(&src), "-o", s(&snap)]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = dir.path().join(format!(
            "restored-{}",
            src.file_name().unwrap().to_str().unwrap()
        ));
        let url = format!("file://{}", replica.display());
        let o = run(Command::new(&ls).args(["restore", "-o", s(&out), &url]));
        assert!(
            o.status.success(),
            "litestream restore: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&src).unwrap(),
            "{}",
            src.display()
        );
    }
    // And it refuses a checksum-carrying file, as documented.
    let replica = dir.path().join("tracked");
    std::fs::create_dir_all(replica.join("ltx/9")).unwrap();
    let snap = replica.join("ltx/9/0000000000000001-0000000000000001.ltx");
    let o = sluice(&[
        "ltx",
        "encode-db",
        s(&v.join("litestream/source.db")),
        "-o",
        s(&snap),
    ]);
    assert!(o.status.success());
    let out = dir.path().join("tracked.db");
    let o = run(Command::new(&ls).args([
        "restore",
        "-o",
        s(&out),
        &format!("file://{}", replica.display()),
    ]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("post-apply checksum not allowed"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn demo_replicates_restores_and_matches() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("demo");
    let o = sluice(&["demo", "--dir", s(&d), "--transactions", "120"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("demo ok"), "{}", stdout(&o));
    // The mount part: one TXID per transaction, restores inside bundles.
    assert!(
        stdout(&o).contains("mount replica: 101 transactions as 101 TXIDs"),
        "{}",
        stdout(&o)
    );
    // The replica part: a reader of the `sluice replica` mount saw every row.
    assert!(
        stdout(&o).contains("replica:  a reader sees all 100 rows"),
        "{}",
        stdout(&o)
    );
    let files = ltx_files(&d.join("replica/ltx/0"));
    assert!(files.len() > 10);
    // The replica is also a valid input to the CLI: verify and apply it again.
    let mut args = vec!["ltx", "verify"];
    args.extend(files.iter().map(|p| s(p)));
    assert!(sluice(&args).status.success());
    let (o, bytes) = apply_all(&files);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(bytes, std::fs::read(d.join("app.db")).unwrap());
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.ltx");
    let o = sluice(&["ltx", "verify", s(&missing)]);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("nope.ltx"), "{}", stdout(&o));
    let notdb = dir.path().join("x.db");
    std::fs::write(&notdb, vec![7u8; 5000]).unwrap();
    let o = sluice(&["ltx", "checksum", s(&notdb)]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a SQLite database"),
        "{}",
        stderr(&o)
    );
    let o = sluice(&[
        "ltx",
        "encode-db",
        s(&notdb),
        "-o",
        s(&dir.path().join("o.ltx")),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a SQLite database"),
        "{}",
        stderr(&o)
    );
}
