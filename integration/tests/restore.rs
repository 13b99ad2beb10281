#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! `sluice restore` end to end: the real binary restores the Litestream
//! vector replica at every TXID (checksums from the vectors README, bytes of
//! `source.db`), legacy LZ4 frames, Sluice-written replicas (real SQLite
//! histories encoded with checksums, and the demo's), a replica Litestream
//! 0.5.17 writes to Garage during the test; `--timestamp` picks the last
//! commit at or before the time; 240 single-byte corruptions are each
//! detected or harmless; bad input leaves nothing at the output path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use integration::{
    garage, litestream_bin, run, sluice, sluice_bin, stderr, stdout, unique, vectors_dir,
};
use ltx_format::{
    checksum_database, compact, format_filename, CompactOptions, Encoder, Header, PageSize, Txid,
};

/// Expected database checksum at TXID 1..=0x14 (vectors README).
const SUMS: [&str; 20] = integration::VECTOR_CHECKSUMS;

/// L0 header times (ms) of the vector replica, TXID 1..=0x14.
const TIMES: [i64; 20] = [
    1795355573434,
    1795355576420,
    1795355577920,
    1795355579420,
    1795355580920,
    1795355582420,
    1795355583920,
    1795355585420,
    1795355586920,
    1795355588420,
    1795355589920,
    1795355591420,
    1795355592920,
    1795355594421,
    1795355595922,
    1795355597421,
    1795355598920,
    1795355600420,
    1795355601920,
    1795355603419,
];

/// `2026-11-22T13:53:23.419Z` (RFC 3339, UTC, milliseconds).
fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3600,
        (t / 60) % 60,
        t % 60,
        ms.rem_euclid(1000)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn url(root: &Path) -> String {
    format!("file://{}", root.display())
}

fn vector_replica() -> PathBuf {
    // A file URL takes an absolute path without '..'.
    vectors_dir()
        .join("litestream/replica")
        .canonicalize()
        .unwrap()
}

fn source_db() -> Vec<u8> {
    std::fs::read(vectors_dir().join("litestream/source.db")).unwrap()
}

fn checksum_of(p: &Path) -> String {
    checksum_database(std::fs::File::open(p).unwrap())
        .unwrap()
        .0
        .to_string()
}

fn restore(args: &[&str]) -> Output {
    let mut a = vec!["restore"];
    a.extend_from_slice(args);
    sluice(&a)
}

fn json_of(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Copies the chosen levels of a file replica.
fn copy_levels(src: &Path, dst: &Path, levels: &[u8]) {
    for l in levels {
        let from = src.join("ltx").join(l.to_string());
        let to = dst.join("ltx").join(l.to_string());
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&from).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn restores_the_litestream_vectors_at_every_txid() {
    let dir = tempfile::tempdir().unwrap();
    let full = vector_replica();
    // Without snapshots and L2, chains run through L0 and L1 files.
    let l0_l1 = dir.path().join("l0-l1");
    copy_levels(&full, &l0_l1, &[0, 1]);
    let l2 = dir.path().join("l2");
    copy_levels(&full, &l2, &[0, 2]);
    for replica in [&full, &l0_l1, &l2] {
        for t in 1..=0x14u64 {
            let out = dir.path().join(format!("r{t}.db"));
            let o = restore(&[
                "--json",
                "--txid",
                &format!("{t:x}"),
                "-o",
                s(&out),
                &url(replica),
            ]);
            let j = json_of(&o);
            assert_eq!(
                checksum_of(&out),
                SUMS[t as usize - 1],
                "{} TXID {t:x}",
                replica.display()
            );
            assert_eq!(j["checksum"], SUMS[t as usize - 1]);
            assert_eq!(j["txid"], format!("{t:016x}"));
            assert_eq!(j["timestamp_ms"], TIMES[t as usize - 1]);
            assert_eq!(j["files_verified"], true);
            if t == 0x14 {
                assert_eq!(std::fs::read(&out).unwrap(), source_db());
            }
            std::fs::remove_file(&out).unwrap();
        }
        let out = dir.path().join("latest.db");
        let o = restore(&["-o", s(&out), &url(replica)]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(std::fs::read(&out).unwrap(), source_db());
        let line = stdout(&o);
        assert!(
            line.starts_with(&format!("restored {}: TXID 0000000000000014 committed 2026-11-22T13:53:23.419Z, 28 pages of 4096", out.display())),
            "{line}"
        );
        assert!(
            line.contains("database checksum ec7d0b4286c9da50"),
            "{line}"
        );
        assert_eq!(
            line.lines().count(),
            1,
            "one summary line when not on a terminal"
        );
        std::fs::remove_file(&out).unwrap();
    }
    // The plan is printed without writing anything.
    let out = dir.path().join("dry.db");
    let o = restore(&["--dry-run", "--txid", "13", "-o", s(&out), &url(&full)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.starts_with("plan: TXID 0000000000000013 from 3 files, 7568 bytes"),
        "{text}"
    );
    assert!(
        text.contains("9      0000000000000001  0000000000000011  6102"),
        "{text}"
    );
    assert!(!out.exists());
    let j = json_of(&restore(&[
        "--dry-run",
        "--json",
        "-o",
        s(&out),
        &url(&l0_l1),
    ]));
    let plan: Vec<(u64, String, String)> = j["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["level"].as_u64().unwrap(),
                f["min_txid"].as_str().unwrap().into(),
                f["max_txid"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(plan.len(), 5, "{plan:?}");
    assert!(plan.iter().skip(1).all(|f| f.0 == 1), "{plan:?}");
}

#[test]
fn restores_legacy_lz4_frames() {
    let dir = tempfile::tempdir().unwrap();
    let l9 = dir.path().join("replica/ltx/9");
    std::fs::create_dir_all(&l9).unwrap();
    std::fs::copy(
        vectors_dir().join("go-reference/legacy/legacy-frames-snapshot.ltx"),
        l9.join("0000000000000001-0000000000000001.ltx"),
    )
    .unwrap();
    let out = dir.path().join("out.db");
    let j = json_of(&restore(&[
        "--json",
        "-o",
        s(&out),
        &url(&dir.path().join("replica")),
    ]));
    assert_eq!(std::fs::read(&out).unwrap(), source_db());
    // A checksum-carrying snapshot: the result is checked against it too.
    assert_eq!(j["checksum_matched_post_apply"], true);
}

#[test]
fn timestamp_picks_the_last_commit_at_or_before_the_time() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.db");
    let u = url(&vector_replica());
    let at = format_ms;
    for (i, &ms) in TIMES.iter().enumerate() {
        let t = i as u64 + 1;
        for (when, want) in [(ms, t), (ms + 1, t), (ms - 1, t - 1)] {
            if want == 0 {
                continue;
            }
            let o = restore(&["--json", "--timestamp", &at(when), "-o", s(&out), &u]);
            let j = json_of(&o);
            assert_eq!(j["txid"], format!("{want:016x}"), "time {}", at(when));
            assert_eq!(j["timestamp_ms"], TIMES[want as usize - 1]);
            assert_eq!(checksum_of(&out), SUMS[want as usize - 1]);
            std::fs::remove_file(&out).unwrap();
        }
    }
    // Offsets other than Z, and a time after the last commit.
    let o = restore(&[
        "--json",
        "--timestamp",
        "2026-11-22T14:53:12.920+01:00",
        "-o",
        s(&out),
        &u,
    ]);
    assert_eq!(json_of(&o)["txid"], "000000000000000d");
    std::fs::remove_file(&out).unwrap();
    let o = restore(&[
        "--json",
        "--timestamp",
        "2030-01-01T00:00:00Z",
        "-o",
        s(&out),
        &u,
    ]);
    assert_eq!(json_of(&o)["txid"], "0000000000000014");
    std::fs::remove_file(&out).unwrap();
    // Before the first commit: the range that exists, nothing written.
    let o = restore(&["--timestamp", "2026-11-22T13:52:53Z", "-o", s(&out), &u]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is before the first restorable commit (TXID 0000000000000001 at 2026-11-22T13:52:53.434Z)"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    let o = restore(&["--timestamp", "yesterday", "-o", s(&out), &u]);
    assert!(
        !o.status.success() && stderr(&o).contains("invalid RFC 3339 timestamp"),
        "{}",
        stderr(&o)
    );
}

/// A real SQLite history, encoded as Sluice encodes it (database checksums
/// tracked): a snapshot from `sluice ltx encode-db`, one L0 file per
/// transaction with the changed pages, and L1 compactions.
struct SluiceReplica {
    root: PathBuf,
    /// Database bytes at TXID t (index 0 unused).
    states: Vec<Vec<u8>>,
}

fn sluice_replica(dir: &Path) -> SluiceReplica {
    let ps = 4096usize;
    let db = dir.join("src.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA page_size=4096; PRAGMA journal_mode=DELETE;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         CREATE INDEX t_v ON t(v);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 200)
         INSERT INTO t(v) SELECT printf('seed %d %s', i, hex(randomblob(30))) FROM n;",
    )
    .unwrap();
    let steps = [
        "INSERT INTO t(v) VALUES ('one'), ('two'), ('three');",
        "UPDATE t SET v = v || ' (updated)' WHERE id % 7 = 0;",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 400) INSERT INTO t(v) SELECT printf('bulk %d %s', i, hex(randomblob(200))) FROM n;",
        "DELETE FROM t WHERE id % 3 = 0;",
        "INSERT INTO t(v) VALUES ('after delete');",
        "VACUUM;",
        "UPDATE t SET v = 'x' WHERE id = 5;",
        "DELETE FROM t WHERE id > 300;",
        "INSERT INTO t(v) VALUES ('last');",
    ];
    let root = dir.join("sluice-replica");
    let l0 = root.join("ltx/0");
    std::fs::create_dir_all(&l0).unwrap();
    let snap = l0.join(format_filename(Txid(1), Txid(1)));
    let o = sluice(&["ltx", "encode-db", s(&db), "-o", s(&snap)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut states = vec![Vec::new(), std::fs::read(&db).unwrap()];
    let page_size = PageSize::new(ps as u32).unwrap();
    let mut files = vec![Vec::new(), std::fs::read(&snap).unwrap()];
    for (i, sql) in steps.iter().enumerate() {
        let t = i as u64 + 2;
        c.execute_batch(sql).unwrap();
        let new = std::fs::read(&db).unwrap();
        let old = &states[t as usize - 1];
        let commit = (new.len() / ps) as u32;
        let mut h = Header::new(page_size, commit, Txid(t), Txid(t));
        h.timestamp_ms = 1_800_000_000_000 + t as i64 * 1000;
        h.pre_apply_checksum = checksum_database(&old[..]).unwrap().0;
        let mut enc = Encoder::new(Vec::new(), h).unwrap();
        for p in 0..commit as usize {
            let page = &new[p * ps..(p + 1) * ps];
            if old.get(p * ps..(p + 1) * ps) != Some(page) {
                enc.encode_page(p as u32 + 1, page).unwrap();
            }
        }
        let (bytes, _) = enc.finish(checksum_database(&new[..]).unwrap().0).unwrap();
        std::fs::write(l0.join(format_filename(Txid(t), Txid(t))), &bytes).unwrap();
        files.push(bytes);
        states.push(new);
    }
    // L1: 2-5 and 6-8 (TXIDs 9, 10 only in L0).
    let l1 = root.join("ltx/1");
    std::fs::create_dir_all(&l1).unwrap();
    for (a, b) in [(2u64, 5u64), (6, 8)] {
        let inputs: Vec<&[u8]> = (a..=b).map(|t| files[t as usize].as_slice()).collect();
        let (out, _, _) = compact(inputs, Vec::new(), CompactOptions::default()).unwrap();
        std::fs::write(l1.join(format_filename(Txid(a), Txid(b))), out).unwrap();
    }
    SluiceReplica { root, states }
}

#[test]
fn restores_sluice_written_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let r = sluice_replica(dir.path());
    let n = r.states.len() as u64 - 1;
    for t in 1..=n {
        let out = dir.path().join(format!("r{t}.db"));
        let j = json_of(&restore(&[
            "--json",
            "--integrity-check",
            "quick",
            "--txid",
            &format!("{t:x}"),
            "-o",
            s(&out),
            &url(&r.root),
        ]));
        assert_eq!(
            std::fs::read(&out).unwrap(),
            r.states[t as usize],
            "TXID {t}"
        );
        assert_eq!(j["checksum_matched_post_apply"], true);
        assert_eq!(j["integrity_check"], "quick");
        if t == 8 {
            // L1 compactions carry it: 1 + L1 2-5 + L1 6-8.
            assert_eq!(j["files"].as_array().unwrap().len(), 3, "{j}");
        }
    }
    // The demo's replica: Sluice's WAL capture, one L0 file per sync.
    let demo = dir.path().join("demo");
    let o = sluice(&["demo", "--dir", s(&demo), "--transactions", "60"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = dir.path().join("demo.db");
    let j = json_of(&restore(&[
        "--json",
        "--integrity-check",
        "full",
        "-o",
        s(&out),
        &url(&demo.join("replica")),
    ]));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(demo.join("app.db")).unwrap()
    );
    assert_eq!(j["checksum_matched_post_apply"], true);
}

/// Flips one byte of one replica file per trial (then restores it): the
/// restore either fails, writing nothing, or gives the clean result.
#[test]
fn every_single_byte_corruption_is_detected_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    copy_levels(&vector_replica(), &full, &[0, 1, 2, 9]);
    let l0 = dir.path().join("l0");
    copy_levels(&vector_replica(), &l0, &[0]);
    let tracked = sluice_replica(&dir.path().join("tracked-src").tap_mkdir()).root;
    let replicas = [full, l0, tracked];
    let outdir = dir.path().join("out");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("db");
    let mut clean: HashMap<(usize, String), (Vec<u8>, Vec<PathBuf>)> = HashMap::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut detected, mut harmless, mut trials) = (0, 0, 0);
    let started = Instant::now();
    while trials < 240 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "corruption trials took too long"
        );
        let ri = (next() % 3) as usize;
        let root = &replicas[ri];
        let max = if ri == 2 { 10 } else { 0x14 };
        let target = if next() % 3 == 0 {
            "latest".to_string()
        } else {
            format!("{:x}", 1 + next() % max)
        };
        let mut args = vec!["--json"];
        if target != "latest" {
            args.extend(["--txid", target.as_str()]);
        }
        let u = url(root);
        let (want, plan_files) = clean
            .entry((ri, target.clone()))
            .or_insert_with(|| {
                let mut a = args.clone();
                a.extend(["-o", s(&out), &u]);
                let j = json_of(&restore(&a));
                let bytes = std::fs::read(&out).unwrap();
                std::fs::remove_file(&out).unwrap();
                let files = j["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| root.join(f["key"].as_str().unwrap()))
                    .collect();
                (bytes, files)
            })
            .clone();
        // A byte of a file the plan reads.
        let f = &plan_files[(next() % plan_files.len() as u64) as usize];
        let orig = std::fs::read(f).unwrap();
        let at = (next() % orig.len() as u64) as usize;
        let mut bad = orig.clone();
        bad[at] ^= 1 + (next() % 255) as u8;
        std::fs::write(f, &bad).unwrap();
        let mut a = args.clone();
        a.extend(["-o", s(&out), &u]);
        let o = restore(&a);
        std::fs::write(f, &orig).unwrap();
        trials += 1;
        if o.status.success() {
            assert_eq!(
                std::fs::read(&out).unwrap(),
                want,
                "{} byte {at} changed the restored database",
                f.display()
            );
            std::fs::remove_file(&out).unwrap();
            harmless += 1;
        } else {
            let err = stderr(&o);
            assert!(
                names(&outdir).is_empty(),
                "{} byte {at}: left {:?}",
                f.display(),
                names(&outdir)
            );
            assert!(err.contains("nothing was written"), "{err}");
            let name = f.file_name().unwrap().to_str().unwrap();
            assert!(
                err.contains(name) || err.contains("checksum mismatch"),
                "{} byte {at}: {err}",
                f.display()
            );
            detected += 1;
        }
    }
    eprintln!("{trials} single-byte corruptions: {detected} detected, {harmless} harmless");
    assert!(detected > trials / 2, "{detected} of {trials} detected");
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let outdir = dir.path().join("out");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("app.db");
    let fails = |args: &[&str], want: &str| {
        let o = restore(args);
        assert!(!o.status.success(), "{args:?} succeeded: {}", stdout(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    };
    // A gap: L0 only, without TXIDs 5..7.
    let gap = dir.path().join("gap");
    copy_levels(&vector_replica(), &gap, &[0]);
    for t in 5..=7u64 {
        std::fs::remove_file(gap.join("ltx/0").join(format_filename(Txid(t), Txid(t)))).unwrap();
    }
    fails(
        &["-o", s(&out), &url(&gap)],
        "gap in the replica: TXIDs 0000000000000005-0000000000000007 are missing",
    );
    fails(
        &["--txid", "6", "-o", s(&out), &url(&gap)],
        "TXIDs 0000000000000005-0000000000000007 are missing",
    );
    // Before TXID 5 is still there.
    let o = restore(&["--txid", "4", "-o", s(&out), &url(&gap)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(checksum_of(&out), SUMS[3]);
    std::fs::remove_file(&out).unwrap();
    // Out of range, both ends.
    let u = url(&vector_replica());
    fails(&["--txid", "15", "-o", s(&out), &u], "TXID 0000000000000015 is after the last TXID in the replica; the replica can restore TXIDs 0000000000000001-0000000000000014");
    fails(&["--txid", "0", "-o", s(&out), &u], "TXID 0 does not exist (TXIDs start at 1); the replica can restore TXIDs 0000000000000001-0000000000000014");
    let late = dir.path().join("late");
    copy_levels(&vector_replica(), &late, &[0]);
    std::fs::create_dir_all(late.join("ltx/9")).unwrap();
    std::fs::copy(
        vector_replica().join("ltx/9/0000000000000001-0000000000000011.ltx"),
        late.join("ltx/9/0000000000000001-0000000000000011.ltx"),
    )
    .unwrap();
    std::fs::remove_file(late.join("ltx/0/0000000000000001-0000000000000001.ltx")).unwrap();
    fails(&["--txid", "3", "-o", s(&out), &url(&late)], "TXID 0000000000000003 is before the first restorable TXID (older snapshots are gone); the replica can restore TXIDs 0000000000000011-0000000000000014");
    // A corrupted file: named, with the broken rule.
    let bad = dir.path().join("bad");
    copy_levels(&vector_replica(), &bad, &[0]);
    std::fs::copy(
        vectors_dir().join("invalid/header-flags-byte.ltx"),
        bad.join("ltx/0/000000000000000d-000000000000000d.ltx"),
    )
    .unwrap();
    fails(&["-o", s(&out), &url(&bad)], "ltx/0/000000000000000d-000000000000000d.ltx: header flags: invalid header flags 0x00000003");
    std::fs::copy(
        vectors_dir().join("invalid/payload-last-byte.ltx"),
        bad.join("ltx/0/000000000000000d-000000000000000d.ltx"),
    )
    .unwrap();
    fails(
        &["-o", s(&out), &url(&bad)],
        "ltx/0/000000000000000d-000000000000000d.ltx: file checksum: file checksum mismatch",
    );
    std::fs::copy(
        vectors_dir().join("invalid/truncated-half.ltx"),
        bad.join("ltx/0/000000000000000d-000000000000000d.ltx"),
    )
    .unwrap();
    fails(
        &["-o", s(&out), &url(&bad)],
        "000000000000000d-000000000000000d.ltx: truncated file",
    );
    assert!(names(&outdir).is_empty(), "{:?}", names(&outdir));
    // An existing output: refused, kept; skipped with --if-db-not-exists;
    // replaced with --force.
    std::fs::write(&out, b"precious").unwrap();
    fails(
        &["-o", s(&out), &u],
        "exists; refusing to overwrite it (pass --force to replace it",
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let o = restore(&["--if-db-not-exists", "-o", s(&out), &u]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("already exists (--if-db-not-exists)"));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let o = restore(&["--force", "-o", s(&out), &u]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), source_db());
    std::fs::remove_file(&out).unwrap();
    // No replica.
    let empty = dir.path().join("empty");
    fails(&["-o", s(&out), &url(&empty)], "no LTX files under file://");
    let o = restore(&["--if-replica-exists", "-o", s(&out), &url(&empty)]);
    assert!(
        o.status.success() && stdout(&o).contains("--if-replica-exists"),
        "{}",
        stderr(&o)
    );
    // A database path needs the config to find its replica.
    fails(
        &[s(&out)],
        "its replica comes from a config file. Pass --config FILE, or give the replica URL instead",
    );
    fails(
        &[&u],
        "-o/--output is required when restoring from a replica URL",
    );
    fails(&["--txid", "xyz", "-o", s(&out), &u], "expected a hex TXID");
    assert!(names(&outdir).is_empty(), "{:?}", names(&outdir));
}

#[test]
fn a_database_path_finds_its_replica_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let cfg = dir.path().join("sluice.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    replicas:\n      - url: {}\n",
            db.display(),
            url(&vector_replica())
        ),
    )
    .unwrap();
    let o = restore(&["--config", s(&cfg), s(&db)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&db).unwrap(), source_db());
    let o = restore(&["--config", s(&cfg), s(&dir.path().join("other.db"))]);
    assert!(
        !o.status.success() && stderr(&o).contains("does not list database"),
        "{}",
        stderr(&o)
    );
}

/// Writing fails part-way (a full file system, or a file size limit): an
/// error, and neither the output nor a temporary file remains.
#[test]
fn a_full_disk_leaves_nothing_at_the_output_path() {
    let dir = tempfile::tempdir().unwrap();
    let outdir = dir.path().join("small");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("app.db");
    let bin = sluice_bin();
    let u = url(&vector_replica());
    // A 64 KiB tmpfs (source.db is 112 KiB), in a private mount namespace.
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {d} || exit 77; {b} restore -o {o} {u}; rc=$?; ls -A {d}; exit $rc",
        d = s(&outdir),
        b = s(&bin),
        o = s(&out),
    );
    let o = run(Command::new("unshare").args(["--mount", "sh", "-c", &script]));
    if o.status.code() == Some(77) || stderr(&o).contains("unshare failed") {
        eprintln!(
            "no private tmpfs here ({}); the file size limit below stands in",
            stderr(&o).trim()
        );
    } else {
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("No space left on device"),
            "{}",
            stderr(&o)
        );
        assert!(stderr(&o).contains("nothing was written"), "{}", stderr(&o));
        assert_eq!(stdout(&o).trim(), "", "left behind: {}", stdout(&o));
    }
    // RLIMIT_FSIZE: writes past 64 KiB fail with EFBIG (SIGXFSZ ignored;
    // bash counts ulimit -f in KiB).
    let script = format!(
        "trap '' XFSZ; ulimit -f 64; exec {} restore -o {} {u}",
        s(&bin),
        s(&out)
    );
    let o = run(Command::new("bash").args(["-c", &script]));
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains("File too large"), "{}", stderr(&o));
    assert!(names(&outdir).is_empty(), "{:?}", names(&outdir));
}

// ---------------------------------------------------------------------------
// Garage

/// The L0 TXIDs under an S3 replica.
fn l0_max(rt: &tokio::runtime::Runtime, u: &str) -> Option<u64> {
    let url = s3_backend::ReplicaUrl::parse(u).unwrap();
    rt.block_on(async {
        let store = url
            .open(
                s3_backend::retry::RetryPolicy::default(),
                s3_backend::retry::Shutdown::never(),
            )
            .await
            .unwrap();
        let files = store.list(&url.layout().level_dir(0), None).await.unwrap();
        files
            .iter()
            .filter_map(|o| url.layout().parse_ltx_key(&o.key))
            .map(|(_, _, max)| max.0)
            .max()
    })
}

fn levels_present(rt: &tokio::runtime::Runtime, u: &str) -> Vec<u8> {
    let url = s3_backend::ReplicaUrl::parse(u).unwrap();
    rt.block_on(async {
        let store = url
            .open(
                s3_backend::retry::RetryPolicy::default(),
                s3_backend::retry::Shutdown::never(),
            )
            .await
            .unwrap();
        let mut v = Vec::new();
        for l in 0..=9u8 {
            if !store
                .list(&url.layout().level_dir(l), None)
                .await
                .unwrap()
                .is_empty()
            {
                v.push(l);
            }
        }
        v
    })
}

/// The LTX checksum of the committed state of a WAL-mode database (main file
/// plus committed WAL frames), via `sluice ltx encode-db`.
fn live_checksum(db: &Path, scratch: &Path) -> String {
    let snap = scratch.join("live.ltx");
    let o = sluice(&["ltx", "encode-db", "--force", s(db), "-o", s(&snap)]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().rsplit(' ').next().unwrap().to_string()
}

#[test]
fn restores_a_replica_litestream_writes_to_garage() {
    let Some(g) = garage() else { return };
    let ls = litestream_bin();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
    }
    let prefix = unique("restore-litestream");
    let mut child = integration::litestream_replicate_to_garage(
        &g,
        &db,
        &prefix,
        "4s",
        "    checkpoint-interval: 1h\n",
        dir.path(),
        Stdio::null(),
    );
    let u = g.url(&prefix);
    // Wait until the replica's L0 stops moving; returns its last TXID.
    let settle = |after: Option<u64>| -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        let mut stable_since = Instant::now();
        loop {
            assert!(
                Instant::now() < deadline,
                "Litestream did not ship within 60 s (L0 at {last:?})"
            );
            let now = l0_max(&rt, &u);
            if now != last {
                last = now;
                stable_since = Instant::now();
            } else if now.is_some()
                && now > after
                && stable_since.elapsed() > Duration::from_millis(1200)
            {
                return now.unwrap_or_default();
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    };
    let scratch = dir.path().join("scratch").tap_mkdir();
    let mut expected: Vec<(u64, String)> = Vec::new();
    let mut txid = settle(None);
    expected.push((txid, live_checksum(&db, &scratch)));
    let c = rusqlite::Connection::open(&db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let steps = [
        "INSERT INTO t(v) VALUES ('a'), ('b'), ('c');",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 300) INSERT INTO t(v) SELECT printf('bulk %d %s', i, hex(randomblob(300))) FROM n;",
        "UPDATE t SET v = v || '!' WHERE id % 5 = 0;",
        "DELETE FROM t WHERE id % 2 = 0;",
        "INSERT INTO t(v) VALUES ('d');",
        "UPDATE t SET v = 'z' WHERE id = 1;",
    ];
    for sql in steps {
        c.execute_batch(sql).unwrap();
        txid = settle(Some(txid));
        expected.push((txid, live_checksum(&db, &scratch)));
    }
    // Let an L1 compaction appear, then stop Litestream cleanly.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !levels_present(&rt, &u).contains(&1) {
        assert!(Instant::now() < deadline, "no L1 compaction within 60 s");
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(c);

    let out = dir.path().join("out.db");
    for (t, sum) in &expected {
        let j = json_of(&restore(&[
            "--json",
            "--txid",
            &format!("{t:x}"),
            "-o",
            s(&out),
            &u,
        ]));
        assert_eq!(&checksum_of(&out), sum, "TXID {t:x}");
        assert_eq!(j["files_verified"], true);
        std::fs::remove_file(&out).unwrap();
    }
    // Latest: as Litestream restores it, and as the source is once checkpointed.
    let j = json_of(&restore(&["--json", "-o", s(&out), &u]));
    assert_eq!(j["txid"], format!("{:016x}", expected.last().unwrap().0));
    let levels: Vec<u64> = j["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["level"].as_u64().unwrap())
        .collect();
    eprintln!(
        "{} TXIDs restored; latest from levels {levels:?}",
        expected.len()
    );
    assert!(
        levels.iter().any(|&l| l >= 1),
        "the latest plan uses no compaction: {levels:?}"
    );
    let theirs = dir.path().join("litestream.db");
    let o = run(Command::new(&ls).args(["restore", "-o", s(&theirs), &u]));
    assert!(o.status.success(), "litestream restore: {}", stderr(&o));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&theirs).unwrap()
    );
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    drop(c);
    assert_eq!(checksum_of(&out), checksum_of(&db));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&db).unwrap());
    std::fs::remove_file(&out).unwrap();

    // A Sluice-written (checksum-carrying) replica on Garage too: only the
    // pages that end up in the database are fetched, with ranged reads.
    let r = sluice_replica(&dir.path().join("sluice").tap_mkdir());
    let sprefix = unique("restore-sluice");
    let surl = s3_backend::ReplicaUrl::parse(&g.url(&sprefix)).unwrap();
    rt.block_on(async {
        let store = surl
            .open(
                s3_backend::retry::RetryPolicy::default(),
                s3_backend::retry::Shutdown::never(),
            )
            .await
            .unwrap();
        for level in [0u8, 1] {
            for e in std::fs::read_dir(r.root.join("ltx").join(level.to_string())).unwrap() {
                let p = e.unwrap().path();
                let (min, max) =
                    ltx_format::parse_filename(p.file_name().unwrap().to_str().unwrap()).unwrap();
                let key = surl.layout().ltx_key(level, min, max);
                store
                    .put(
                        &key,
                        &s3_backend::PutSource::File(p),
                        s3_backend::PutMode::Overwrite,
                    )
                    .await
                    .unwrap();
            }
        }
    });
    for t in 1..r.states.len() as u64 {
        let j = json_of(&restore(&[
            "--json",
            "--txid",
            &format!("{t:x}"),
            "-o",
            s(&out),
            &g.url(&sprefix),
        ]));
        assert_eq!(
            std::fs::read(&out).unwrap(),
            r.states[t as usize],
            "TXID {t}"
        );
        assert_eq!(j["checksum_matched_post_apply"], true);
        std::fs::remove_file(&out).unwrap();
    }
}
