//! Restarts: after a clean stop, a crash, an application checkpoint or lost
//! state files the daemon resumes without a new snapshot, and repeated
//! `kill -9`s leave a replica that restores to a gap-free prefix.

use std::path::Path;
use std::time::{Duration, Instant};

use integration::env::ltx_checksum;
use integration::faults::{env_number, gap_free_rows, sluice_restore, NumberedWriter, NUMBERED};
use integration::{ltx_files, Setup, TestEnv, XorShift64};

/// Bytes in the replica.
fn replica_bytes(replica: &Path) -> u64 {
    let mut total = 0;
    for level in 0..=9 {
        for f in ltx_files(&replica.join(format!("ltx/{level}"))) {
            total += std::fs::metadata(f).unwrap().len();
        }
    }
    total
}

#[test]
fn restarts_resume_without_a_snapshot() {
    let env = TestEnv::new();
    {
        let c = env.app();
        // About 2 MB, so a new snapshot would be far above 64 KiB.
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000)
             INSERT INTO t(v, b) SELECT 'x' || i, randomblob(1000) FROM n;",
        )
        .unwrap();
    }
    let small_write = |n: i32| {
        let c = env.app();
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("restart {n}")])
            .unwrap();
    };
    let d = env.start();
    env.settle();
    small_write(0);
    env.settle();
    d.stop_ok();
    let mut kinds = Vec::new();
    for (n, how) in [
        "clean stop",
        "kill -9",
        "app TRUNCATE checkpoint",
        "lost state files",
    ]
    .iter()
    .enumerate()
    {
        let before = replica_bytes(&env.replica);
        if *how == "lost state files" {
            // What a power failure can leave of the unsynced state files: an
            // empty position and torn replica progress. The staged files are
            // the truth; a repeated upload meets its own objects.
            let staging = env.path(".app.db-sluice");
            std::fs::write(staging.join("position.json"), b"").unwrap();
            std::fs::write(staging.join("replica-0.json"), b"{\"url\": \"fi").unwrap();
        }
        if *how == "app TRUNCATE checkpoint" {
            let c = env.app();
            let (busy, _, _): (i64, i64, i64) = c
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!(busy, 0);
            assert_eq!(
                std::fs::metadata(env.path("app.db-wal")).map_or(0, |m| m.len()),
                0
            );
        }
        let d = env.start_ready();
        small_write(n as i32 + 1);
        env.settle();
        let uploaded = replica_bytes(&env.replica) - before;
        assert!(
            uploaded < 64 * 1024,
            "after {how}: restart uploaded {uploaded} bytes\n{}",
            d.log_text()
        );
        kinds.push((*how, uploaded));
        if *how == "lost state files" {
            assert!(
                d.log_text()
                    .contains("recovering the position from the staged files"),
                "{}",
                d.log_text()
            );
        }
        if *how == "clean stop" {
            // Next round starts from a crash.
            d.kill9();
        } else {
            d.stop_ok();
        }
    }
    assert!(
        !std::fs::read_to_string(&env.log)
            .unwrap()
            .contains("full-page file"),
        "{}",
        std::fs::read_to_string(&env.log).unwrap()
    );
    eprintln!("bytes uploaded after restart: {kinds:?}");
    // And the chain still restores to the source.
    let out = env.path("restored.db");
    let got = env.restore_l0(u64::MAX, &out);
    assert_eq!(got, env.checkpointed_checksum());
}

/// `kill -9` of the daemon at random moments under an application that
/// commits numbered rows: after every kill the replica restores (from its L0
/// chain and with `sluice restore`) to a gap-free prefix of what was
/// committed, never shorter than the round before; after a final clean stop
/// it equals the source. `SLUICE_KILL9_ROUNDS` (default 20) sets the number
/// of kills; `integration/scripts/fault-kill9.sh N` runs it with any N.
#[test]
fn survives_repeated_kill9s_with_gap_free_restores() {
    let rounds = env_number("SLUICE_KILL9_ROUNDS", 20);
    let seed = env_number("SLUICE_KILL9_SEED", 0x1234_5678_9abc_def1);
    let env = Setup::new()
        .schema(NUMBERED)
        .extra_db("    checkpoint-pages: 200\n")
        .build();
    let started = Instant::now();
    // Bounded; a round takes 1 s at first, more as the L0 chain to
    // restore grows (about 7 s at round 80).
    let limit = Duration::from_secs(120 + 30 * rounds);
    let app = NumberedWriter::start(&env.db, 500, Duration::from_millis(2), limit);
    let mut rng = XorShift64::new(seed);
    let (l0_out, cli_out) = (env.path("restored.db"), env.path("restored-cli.db"));
    let mut max_rows = 0;
    let mut behind = Vec::new();
    for round in 1..=rounds {
        let d = env.start();
        let after = 150 + rng.below(600);
        std::thread::sleep(Duration::from_millis(after));
        d.kill9();
        let committed = app.committed();
        let files = ltx_files(&env.l0()).len();
        if files == 0 {
            eprintln!(
                "kill9 round {round}/{rounds}: killed after {after} ms, before the first upload"
            );
            continue;
        }
        let what = format!("round {round} (killed after {after} ms)");
        let sum = env.restore_l0(u64::MAX, &l0_out);
        let count = gap_free_rows(&l0_out, &what);
        let restore = sluice_restore(&env.url, &cli_out, &[])
            .unwrap_or_else(|e| panic!("{what}: sluice restore: {e}"));
        assert_eq!(
            ltx_checksum(&cli_out),
            sum,
            "{what}: sluice restore differs from the L0 chain"
        );
        let begun = app.begun();
        assert!(
            count <= begun,
            "{what}: {count} rows restored but only {begun} begun"
        );
        assert!(
            count >= max_rows,
            "{what}: the replica went back from {max_rows} to {count} rows"
        );
        max_rows = count;
        behind.push(committed - count);
        eprintln!(
            "kill9 round {round}/{rounds}: killed after {after} ms; restored {count} rows, gap-free, \
             integrity ok ({} behind the {committed} committed; {files} L0 files; sluice restore {} ms)",
            committed - count,
            restore.as_millis()
        );
    }
    // Final: a clean run to the end, then the replica equals the source.
    let d = env.start();
    std::thread::sleep(Duration::from_millis(500));
    let committed = app.stop();
    env.settle();
    d.stop_ok();
    let got = env.restore_l0(u64::MAX, &l0_out);
    let count = gap_free_rows(&l0_out, "after the clean stop");
    assert_eq!(count, committed);
    assert_eq!(got, env.checkpointed_checksum());
    sluice_restore(&env.url, &cli_out, &[]).unwrap();
    assert_eq!(ltx_checksum(&cli_out), got);
    behind.sort_unstable();
    eprintln!(
        "kill9 summary: {rounds} kills in {:.0} s, every restore a gap-free prefix; \
         rows behind the app at a kill: median {}, max {}; after the clean stop the restore \
         equals the source ({committed} rows)",
        started.elapsed().as_secs_f64(),
        behind.get(behind.len() / 2).copied().unwrap_or(0),
        behind.last().copied().unwrap_or(0),
    );
}
