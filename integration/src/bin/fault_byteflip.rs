//! Fault harness item 6, at any size: `fault_byteflip [N] [SEED]` builds a
//! replica with `sluice demo` (L0, L1, L2 and snapshot files), then makes N
//! random byte flips in its stored files, each followed by `sluice drill`
//! (latest or a random TXID), and prints what it did and found. Exit status
//! 1 if any drill passed on a wrong database or ended unexpectedly.
//! `SLUICE_BIN` names the binary (default: `sluice` beside this program).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use integration::byteflip::{flips, truth};
use integration::env::state_checksum;
use integration::{s, sluice, stderr};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    if std::env::var_os("SLUICE_BIN").is_none() {
        let exe = std::env::current_exe()?;
        let beside = exe.with_file_name("sluice");
        std::env::set_var("SLUICE_BIN", beside);
    }
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(200), |a| a.parse()).context("N")?;
    let seed: u64 = args
        .next()
        .map_or(Ok(0xb17f11b5), |a| a.parse())
        .context("SEED")?;
    let dir = tempfile::tempdir()?;
    let o = sluice(&["demo", "--dir", s(dir.path()), "--transactions", "200"]);
    anyhow::ensure!(o.status.success(), "sluice demo: {}", stderr(&o));
    let replica = dir.path().join("replica");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch)?;
    let truth = truth(&replica, &scratch);
    let (latest, sum) = truth.iter().last().context("no L0 files")?;
    anyhow::ensure!(
        *sum == state_checksum(&dir.path().join("app.db")),
        "the L0 chain does not rebuild the source"
    );
    let files = (0..=9)
        .map(|l| integration::ltx_files(&replica.join(format!("ltx/{l}"))).len())
        .sum::<usize>();
    println!(
        "replica: {files} LTX files, TXIDs 1..{latest:x}; truth at every TXID from the L0 chain"
    );
    println!("{n} flips, seed {seed}");
    let t = Instant::now();
    let summary = flips(&replica, &truth, n, seed, &scratch, &mut |l| {
        println!("{l}")
    })?;
    println!(
        "found: {} flips in {:.1}s: {} detected, {} harmless, {} drills passed on a wrong database, {} unexpected; {} flips in a planned file",
        summary.flips,
        t.elapsed().as_secs_f64(),
        summary.detected,
        summary.harmless,
        summary.wrong_ok,
        summary.unexpected,
        summary.in_plan
    );
    println!("{}", if summary.passed() { "PASS" } else { "FAIL" });
    Ok(summary.passed())
}
