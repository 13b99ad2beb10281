//! Replicas Sluice writes: a real SQLite history encoded with database
//! checksums (one L0 file per transaction, L1 compactions), and the demo's.

use std::path::{Path, PathBuf};

use integration::{s, sluice, stderr, stdout};
use ltx_format::{
    checksum_database, compact, format_filename, CompactOptions, Encoder, Header, PageSize, Txid,
};

use crate::{json_of, restore, url};

/// A real SQLite history, encoded as Sluice encodes it (database checksums
/// tracked): a snapshot from `sluice ltx encode-db`, one L0 file per
/// transaction with the changed pages, and L1 compactions.
pub(crate) struct SluiceReplica {
    pub(crate) root: PathBuf,
    /// Database bytes at TXID t (index 0 unused).
    pub(crate) states: Vec<Vec<u8>>,
}

pub(crate) fn sluice_replica(dir: &Path) -> SluiceReplica {
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
