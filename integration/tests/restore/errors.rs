//! What must not restore wrongly: single-byte corruptions, gaps, TXIDs out
//! of range, invalid files, an existing output, a missing replica, a full
//! disk. Each fails clearly and leaves nothing at the output path.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use integration::{run, s, sluice_bin, stderr, stdout, Setup, XorShift64};
use ltx_format::test_vectors;
use ltx_format::{format_filename, Txid};

use crate::sluice_written::sluice_replica;
use crate::{
    checksum_of, copy_levels, json_of, names, restore, source_db, sum, url, vector_replica,
    TapMkdir,
};

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
    let mut rng = XorShift64::new(0x9e37_79b9_7f4a_7c15);
    let (mut detected, mut harmless, mut trials) = (0, 0, 0);
    let started = Instant::now();
    while trials < 240 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "corruption trials took too long"
        );
        let ri = rng.below(3) as usize;
        let root = &replicas[ri];
        let max = if ri == 2 { 10 } else { 0x14 };
        let target = if rng.below(3) == 0 {
            "latest".to_string()
        } else {
            format!("{:x}", 1 + rng.below(max))
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
        let f = &plan_files[rng.below(plan_files.len() as u64) as usize];
        let orig = std::fs::read(f).unwrap();
        let at = rng.below(orig.len() as u64) as usize;
        let mut bad = orig.clone();
        bad[at] ^= 1 + rng.below(255) as u8;
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
    assert_eq!(checksum_of(&out), sum(4));
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
        test_vectors::dir().join("invalid/header-flags-byte.ltx"),
        bad.join("ltx/0/000000000000000d-000000000000000d.ltx"),
    )
    .unwrap();
    fails(&["-o", s(&out), &url(&bad)], "ltx/0/000000000000000d-000000000000000d.ltx: header flags: invalid header flags 0x00000003");
    std::fs::copy(
        test_vectors::dir().join("invalid/payload-last-byte.ltx"),
        bad.join("ltx/0/000000000000000d-000000000000000d.ltx"),
    )
    .unwrap();
    fails(
        &["-o", s(&out), &url(&bad)],
        "ltx/0/000000000000000d-000000000000000d.ltx: file checksum: file checksum mismatch",
    );
    std::fs::copy(
        test_vectors::dir().join("invalid/truncated-half.ltx"),
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
    let env = Setup::new()
        .without_database()
        .url(&url(&vector_replica()))
        .build();
    let (cfg, db) = (&env.config, &env.db);
    let o = restore(&["--config", s(cfg), s(db)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(db).unwrap(), source_db());
    let o = restore(&["--config", s(cfg), s(&env.path("other.db"))]);
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

/// A last file whose commit field grew by 256 pages (byte 14 flipped):
/// the database checksum cannot see 256 zero pages whose page numbers XOR
/// to zero, and a restore that reads only the pages it needs never checks
/// that file's own checksum. SQLite's header in the result gives it away;
/// the error names the file. (The corruption test above met this now and
/// then, when its random byte fell there.)
#[test]
fn a_commit_grown_by_zero_pages_the_checksum_cannot_see_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let tracked = sluice_replica(&dir.path().join("src").tap_mkdir()).root;
    let u = url(&tracked);
    let outdir = dir.path().join("out").tap_mkdir();
    let out = outdir.join("db");
    let name = "000000000000000a-000000000000000a.ltx";
    let f = tracked.join("ltx/0").join(name);
    let mut bad = std::fs::read(&f).unwrap();
    bad[14] ^= 1;
    std::fs::write(&f, &bad).unwrap();
    for target in [None, Some("a")] {
        let mut args = vec!["-o", s(&out)];
        if let Some(t) = target {
            args.extend(["--txid", t]);
        }
        args.push(&u);
        let o = restore(&args);
        assert!(!o.status.success(), "{target:?}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains("nothing was written")
                && err.contains(name)
                && err.contains("file checksum mismatch"),
            "{target:?}: {err}"
        );
        assert!(names(&outdir).is_empty(), "{:?}", names(&outdir));
    }
}
