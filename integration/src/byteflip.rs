//! Fault harness item 6: random byte flips in a replica's stored files, each
//! followed by `sluice drill`. Every flip must be detected (the drill fails
//! with one line of reason) or harmless (the drill passes and the restored
//! database is the true one at that TXID); a drill must never pass on a
//! wrong database.
//!
//! The truth at every TXID comes from applying the untouched L0 files in
//! order (`sluice ltx apply`, which checks every pre- and post-apply
//! checksum), not from the restore path under test. Targets are the latest
//! state or a random TXID; half the flips land in a file the drill's plan
//! reads (the rest anywhere in the replica, where most are harmless); half
//! land in a header or a trailer.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::env::{ltx_checksum, restore_l0};
use crate::{ltx_files, run, sluice, sluice_bin, stderr, stdout, XorShift64};

/// The database checksum at every TXID the replica's L0 files reach.
pub fn truth(replica: &Path, scratch: &Path) -> BTreeMap<u64, String> {
    let l0 = replica.join("ltx/0");
    let out = scratch.join("truth.db");
    let mut t = BTreeMap::new();
    for f in ltx_files(&l0) {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(max) = name
            .get(17..33)
            .and_then(|m| u64::from_str_radix(m, 16).ok())
        else {
            continue;
        };
        t.insert(max, restore_l0(&l0, max, &out));
    }
    let _ = std::fs::remove_file(&out);
    t
}

/// What one flip led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The drill failed, with this reason.
    Detected(String),
    /// The drill passed and the database is the true one.
    Harmless,
    /// The drill passed on a wrong database: the harness fails.
    WrongOk(String),
    /// Anything else (a drill that could not run, a reason on several
    /// lines): the harness fails.
    Unexpected(String),
}

/// The counts of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub flips: usize,
    pub detected: usize,
    pub harmless: usize,
    pub wrong_ok: usize,
    pub unexpected: usize,
    /// Flips in a file the drill's plan read.
    pub in_plan: usize,
}

impl Summary {
    fn count(&mut self, f: &Found, in_plan: bool) {
        self.flips += 1;
        self.in_plan += usize::from(in_plan);
        match f {
            Found::Detected(_) => self.detected += 1,
            Found::Harmless => self.harmless += 1,
            Found::WrongOk(_) => self.wrong_ok += 1,
            Found::Unexpected(_) => self.unexpected += 1,
        }
    }

    /// Every flip detected or harmless.
    pub fn passed(&self) -> bool {
        self.wrong_ok == 0 && self.unexpected == 0
    }
}

/// The files the plan for `txid` reads, relative to the replica.
fn plan_files(url: &str, txid: u64) -> Result<Vec<PathBuf>> {
    let hex = format!("{txid:x}");
    let o = sluice(&[
        "restore",
        "--dry-run",
        "--json",
        "--txid",
        &hex,
        "-o",
        "/nonexistent/x.db",
        url,
    ]);
    if !o.status.success() {
        bail!("planning TXID {hex}: {}", stderr(&o));
    }
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).context("plan JSON")?;
    Ok(v["files"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["key"].as_str().map(PathBuf::from))
                .collect()
        })
        .unwrap_or_default())
}

/// Where in an LTX file an offset lies.
fn region(offset: usize, len: usize) -> &'static str {
    if offset < ltx_format::HEADER_SIZE {
        "header"
    } else if offset + ltx_format::TRAILER_SIZE >= len {
        "trailer"
    } else {
        "body"
    }
}

/// A random offset in a file of `len` bytes: a quarter of them in the
/// header, a quarter in the trailer (uniform offsets would almost never reach
/// those few bytes, whose fields the drill must check too), the rest anywhere.
fn offset_in(rng: &mut XorShift64, len: usize) -> usize {
    let head = ltx_format::HEADER_SIZE.min(len);
    let tail = ltx_format::TRAILER_SIZE.min(len);
    match rng.below(4) {
        0 => rng.below(head as u64) as usize,
        1 => len - tail + rng.below(tail as u64) as usize,
        _ => rng.below(len as u64) as usize,
    }
}

/// Runs the drill at `txid` keeping the database in `keep`, and judges it.
fn judge(url: &str, txid: u64, latest: bool, keep: &Path, truth: &BTreeMap<u64, String>) -> Found {
    let hex = format!("{txid:x}");
    let mut args = vec!["drill", url, "--json", "--keep"];
    args.push(keep.to_str().unwrap_or_default());
    if !latest {
        args.extend(["--txid", &hex]);
    }
    let o = run(Command::new(sluice_bin()).args(&args));
    let err = stderr(&o);
    match o.status.code() {
        Some(1) if err.lines().count() == 1 => Found::Detected(err.trim().to_string()),
        Some(0) => {
            let restored = ltx_checksum(&keep.join("drill.db"));
            match truth.get(&txid) {
                Some(want) if *want == restored => Found::Harmless,
                Some(want) => {
                    Found::WrongOk(format!("restored {restored}, true {want} at TXID {hex}"))
                }
                None => Found::Unexpected(format!("no truth for TXID {hex}")),
            }
        }
        code => Found::Unexpected(format!("exit {code:?}: {}", err.trim())),
    }
}

/// `n` flips in the file replica at `replica` (each undone after its
/// drill), seeded; `say` gets one line per flip. The replica is left as it
/// was found.
pub fn flips(
    replica: &Path,
    truth: &BTreeMap<u64, String>,
    n: usize,
    seed: u64,
    scratch: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<Summary> {
    let url = format!("file://{}", replica.display());
    let latest = *truth.keys().last().context("no L0 files in the replica")?;
    let all: Vec<PathBuf> = (0..=9u8)
        .flat_map(|l| ltx_files(&replica.join(format!("ltx/{l}"))))
        .collect();
    let mut rng = XorShift64::new(seed);
    let mut plans: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    let mut sum = Summary::default();
    for i in 0..n {
        let at_latest = rng.below(2) == 0;
        let txid = if at_latest {
            latest
        } else {
            1 + rng.below(latest)
        };
        let plan = match plans.entry(txid) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(plan_files(&url, txid)?),
        };
        let file = if rng.below(2) == 0 && !plan.is_empty() {
            replica.join(&plan[rng.below(plan.len() as u64) as usize])
        } else {
            all[rng.below(all.len() as u64) as usize].clone()
        };
        let in_plan = plan.iter().any(|p| replica.join(p) == file);
        let original = std::fs::read(&file).with_context(|| file.display().to_string())?;
        let offset = offset_in(&mut rng, original.len());
        let mask = 1u8 << rng.below(8);
        let mut bad = original.clone();
        bad[offset] ^= mask;
        std::fs::write(&file, &bad)?;
        let keep = scratch.join(format!("keep-{i}"));
        let found = judge(&url, txid, at_latest, &keep, truth);
        std::fs::write(&file, &original)?;
        let _ = std::fs::remove_dir_all(&keep);
        let rel = file
            .strip_prefix(replica)
            .unwrap_or(&file)
            .display()
            .to_string();
        let place = region(offset, original.len());
        let plan_note = if in_plan {
            "in the plan"
        } else {
            "not in the plan"
        };
        say(&format!(
            "flip {i}: {rel} byte {offset} ({place}, {plan_note}) ^{mask:#04x}, drill of TXID {txid:x}{}: {found:?}",
            if at_latest { " (latest)" } else { "" }
        ));
        sum.count(&found, in_plan);
    }
    Ok(sum)
}
