//! `sluice drill` on `file://` replicas: the report of a good replica, the
//! failures that must be caught, and bad input.

use std::time::Duration;

use integration::env::ltx_checksum;
use integration::{s, Setup};

use crate::{drill_in, leftovers, replicated};

#[test]
fn a_good_replica_drills_ok_next_to_its_primary_and_leaves_nothing() {
    let (env, txid) = replicated(Setup::new(), 5);
    let want = env.checkpointed_checksum();
    let tmp = tempfile::tempdir().unwrap();
    let d = drill_in(tmp.path(), &["--config", s(&env.config), "--json"]);
    assert_eq!(d.code, Some(0), "{}\n{}", d.stdout, d.stderr);
    assert_eq!(d.stderr, "");
    let v = d.json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["restored"]["txid"], format!("{txid:016x}"));
    assert_eq!(v["restored"]["checksum"], want.as_str());
    assert_eq!(v["newest"]["txid"], format!("{txid:016x}"));
    assert!(v["newest"]["time"].as_str().unwrap().ends_with('Z'), "{v}");
    assert_eq!(v["rpo"]["basis"], "primary");
    assert_eq!(v["rpo"]["txids_behind"], 0);
    assert_eq!(v["rpo"]["seconds"], 0.0);
    assert_eq!(v["store"]["conditional_writes"], true, "{v}");
    assert!(v["rto"]["total_seconds"].as_f64().unwrap() > 0.0, "{v}");
    assert!(!v["plan"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["bytes_fetched"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["replica_files"].as_u64(), Some(txid), "{v}");
    let checks: Vec<(String, String)> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    for name in [
        "list",
        "plan",
        "file checksums",
        "database checksum",
        "integrity check",
        "primary checksum",
    ] {
        assert!(
            checks.contains(&(name.into(), "ok".into())),
            "{name}: {checks:?}"
        );
    }
    assert_eq!(
        leftovers(tmp.path()),
        Vec::<String>::new(),
        "scratch files left"
    );

    // Text, a point in time, and --keep: the kept database is the one at
    // that TXID.
    let keep = env.path("kept");
    let d = drill_in(
        tmp.path(),
        &[
            &env.url,
            "--txid",
            &format!("{:x}", txid - 1),
            "--keep",
            s(&keep),
        ],
    );
    assert_eq!(d.code, Some(0), "{}\n{}", d.stdout, d.stderr);
    assert!(d.stdout.starts_with("drill ok\n"), "{}", d.stdout);
    for line in [
        "  rpo ",
        "  rto ",
        "  plan ",
        "  store ",
        "conditional writes (If-None-Match): honoured",
    ] {
        assert!(d.stdout.contains(line), "{line}: {}", d.stdout);
    }
    let kept = keep.join("drill.db");
    assert!(
        d.stdout
            .contains(&format!("  kept       {}", kept.display())),
        "{}",
        d.stdout
    );
    let at = integration::env::restore_l0(&env.l0(), txid - 1, &env.path("l0.db"));
    assert_eq!(ltx_checksum(&kept), at);
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}

/// The replica file of a plan entry (`key` relative to the replica root).
fn planned_file(env: &integration::TestEnv, v: &serde_json::Value, i: usize) -> std::path::PathBuf {
    env.replica.join(v["plan"][i]["key"].as_str().unwrap())
}

#[test]
fn a_corrupted_file_fails_the_drill_naming_it() {
    let (env, _) = replicated(Setup::new(), 4);
    let tmp = tempfile::tempdir().unwrap();
    let v = drill_in(tmp.path(), &[&env.url, "--json"]).json();
    let n = v["plan"].as_array().unwrap().len();
    let victim = planned_file(&env, &v, n - 1);
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();
    let d = drill_in(tmp.path(), &[&env.url]);
    assert_eq!(d.code, Some(1), "{}\n{}", d.stdout, d.stderr);
    let name = victim.file_name().unwrap().to_str().unwrap();
    let reason = d.reason();
    assert!(reason.starts_with("error: drill of file://"), "{reason}");
    assert!(
        reason.contains("restore: ") && reason.contains(name),
        "{reason}"
    );
    assert!(
        d.stdout.starts_with("drill FAILED: restore: "),
        "{}",
        d.stdout
    );
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}

#[test]
fn a_file_missing_from_the_chain_fails_the_drill_with_the_gap() {
    let (env, txid) = replicated(Setup::new(), 5);
    let gone = env
        .l0()
        .join(format!("{:016x}-{:016x}.ltx", txid - 2, txid - 2));
    std::fs::remove_file(&gone).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = drill_in(tmp.path(), &["--config", s(&env.config), "--json"]);
    assert_eq!(d.code, Some(1), "{}\n{}", d.stdout, d.stderr);
    let v = d.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["outcome"], "failed");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.starts_with("plan: gap in the replica"), "{reason}");
    assert!(reason.contains(&format!("{:016x}", txid - 2)), "{reason}");
    assert!(d.reason().contains(reason), "{}", d.stderr);
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}

#[test]
fn a_replica_behind_the_primary_by_more_than_max_rpo_fails() {
    let (env, txid) = replicated(Setup::new(), 5);
    // The replica lost its two newest files: it is behind what the primary
    // staged, for as long as those commits are old.
    for t in [txid, txid - 1] {
        std::fs::remove_file(env.l0().join(format!("{t:016x}-{t:016x}.ltx"))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let tmp = tempfile::tempdir().unwrap();
    let cfg = s(&env.config);
    let d = drill_in(tmp.path(), &["--config", cfg, "--max-rpo", "1s", "--json"]);
    assert_eq!(d.code, Some(1), "{}\n{}", d.stdout, d.stderr);
    let v = d.json();
    assert_eq!(v["rpo"]["txids_behind"], 2, "{v}");
    assert_eq!(v["rpo"]["primary_txid"], format!("{txid:016x}"));
    assert!(v["rpo"]["seconds"].as_f64().unwrap() >= 1.5, "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("rpo: RPO ") && reason.contains("exceeds the maximum"),
        "{reason}"
    );
    assert!(reason.contains("2 behind"), "{reason}");
    // What the replica holds is still sound, and equals the primary there.
    let restored = &v["checks"].as_array().unwrap();
    assert!(
        restored
            .iter()
            .any(|c| c["name"] == "primary checksum" && c["status"] == "ok"),
        "{v}"
    );
    // A looser threshold passes.
    let d = drill_in(tmp.path(), &["--config", cfg, "--max-rpo", "1h"]);
    assert_eq!(d.code, Some(0), "{}\n{}", d.stdout, d.stderr);
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}

/// A listener that accepts connections and never answers.
fn silent_server() -> (u16, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(45);
        while std::time::Instant::now() < until {
            if let Ok((s, _)) = l.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (port, h)
}

#[test]
fn bad_input_fails_within_30s_in_one_line_with_status_2_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let a_file = dir.path().join("not-a-dir");
    std::fs::write(&a_file, b"x").unwrap();
    let (port, server) = silent_server();
    let silent = format!("s3://bucket/app?endpoint=http://127.0.0.1:{port}&region=garage");
    let cases: Vec<(String, &str)> = vec![
        (format!("file://{}", empty.display()), "holds no LTX files"),
        (
            format!("file://{}/missing", dir.path().display()),
            "holds no LTX files",
        ),
        (
            format!("file://{}", a_file.display()),
            "cannot list replica",
        ),
        (silent, "did not answer within 20s"),
        ("file://relative/path".into(), "invalid replica URL"),
        ("/var/lib/app.db".into(), "is not a replica URL"),
    ];
    for (url, want) in &cases {
        let mut cmd = std::process::Command::new(integration::sluice_bin());
        cmd.args(["drill", url.as_str(), "--json"])
            .env("TMPDIR", tmp.path())
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "y");
        let t = std::time::Instant::now();
        let o = integration::run(&mut cmd);
        let elapsed = t.elapsed();
        let err = integration::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{url}: {err}");
        assert_eq!(err.lines().count(), 1, "{url}: {err}");
        assert!(err.contains(want), "{url}: {err}");
        assert!(elapsed < Duration::from_secs(30), "{url}: {elapsed:?}");
        assert_eq!(leftovers(tmp.path()), Vec::<String>::new(), "{url}");
    }
    // A config that does not list the database, and one that does not parse.
    let cfg = dir.path().join("sluice.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: /a.db\n    replicas:\n      - url: file://{}\n",
            empty.display()
        ),
    )
    .unwrap();
    let d = drill_in(tmp.path(), &["--config", s(&cfg), "--db", "/b.db"]);
    assert_eq!(d.code, Some(2));
    assert!(
        d.reason().contains("does not list database /b.db"),
        "{}",
        d.stderr
    );
    std::fs::write(&cfg, "dbs: [\n").unwrap();
    let d = drill_in(tmp.path(), &["--config", s(&cfg)]);
    assert_eq!(d.code, Some(2));
    assert!(d.reason().contains("sluice.yml"), "{}", d.stderr);
    drop(server);
}
