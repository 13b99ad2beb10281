//! The Litestream vector replica: every TXID from every level mix, legacy
//! LZ4 frames, the dry-run plan, and `--timestamp`.

use integration::{s, stderr, stdout};
use ltx_format::test_vectors;

use crate::{
    checksum_of, copy_levels, format_ms, json_of, restore, source_db, sum, url, vector_replica,
    TIMES,
};

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
                sum(t),
                "{} TXID {t:x}",
                replica.display()
            );
            assert_eq!(j["checksum"], sum(t));
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
        test_vectors::dir().join("go-reference/legacy/legacy-frames-snapshot.ltx"),
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
            assert_eq!(checksum_of(&out), sum(want));
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
