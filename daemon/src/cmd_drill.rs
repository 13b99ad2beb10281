//! `sluice drill`: a disaster-recovery drill from the command line. The work
//! is [`crate::drill`]'s; this module turns the command line (a replica URL,
//! or the databases of a config) into drills, and prints the report as text
//! or one JSON object.
//!
//! Exit status: 0 when every check passed, 1 when a check failed (the
//! replica is not what it should be), 2 when the drill could not run (bad
//! input, an empty or unreadable replica, a store that does not answer).
//! The reason is printed on one line on stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use restore::time::{format_ms, format_system_time, parse_rfc3339};
use serde_json::{json, Value};

use crate::config::Config;
use crate::drill::{DrillReport, DrillSpec, Outcome, Primary, Status, When};
use crate::staging::StagingDir;

/// Practise recovery: restore a replica into a scratch directory, verify it
/// completely (every file's checksums, the database checksum, PRAGMA
/// integrity_check, and the primary's checksum when run next to it), and
/// report RPO, RTO, bytes, files, the plan and the store's capabilities.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// A replica URL: file:///abs/path or s3://bucket/prefix?endpoint=…
    #[arg(
        value_name = "REPLICA_URL",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub url: Option<String>,
    /// Drill the replicas of the databases in this config, next to their
    /// primary (its staging directory gives the RPO and the checksum to
    /// compare; the database itself is never opened).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// With --config: only this database (default: every database).
    #[arg(long, value_name = "PATH", requires = "config")]
    pub db: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Restore into DIR and keep the database there (default: a scratch
    /// directory in $TMPDIR, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Drill the last commit at or before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", conflicts_with = "txid")]
    pub timestamp: Option<String>,
    /// Drill exactly this TXID (hex).
    #[arg(long, value_name = "HEX")]
    pub txid: Option<String>,
    /// Fail when the RPO exceeds this (500ms, 5s, 1m…).
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub max_rpo: Option<Duration>,
    /// Ranged downloads in flight. Default: 2 × cores, 4..32.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallelism: Option<u16>,
}

/// Bad input: one line, exit status 2.
fn input_error(e: &anyhow::Error) -> ExitCode {
    let msg = format!("{e:#}");
    eprintln!(
        "error: drill cannot run: {}",
        msg.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    ExitCode::from(2)
}

pub fn run(args: DrillArgs) -> Result<ExitCode> {
    let specs = match specs(&args) {
        Ok(s) => s,
        Err(e) => return Ok(input_error(&e)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    for spec in &specs {
        reports.push(rt.block_on(crate::drill::run(spec)));
    }
    if args.json {
        let v = match reports.as_slice() {
            [one] => report_json(one),
            many => json!({
                "ok": many.iter().all(DrillReport::ok),
                "drills": many.iter().map(report_json).collect::<Vec<_>>(),
            }),
        };
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for r in &reports {
            print_text(r);
        }
    }
    let mut worst = 0u8;
    for r in &reports {
        let code = match r.outcome {
            Outcome::Ok => 0,
            Outcome::Failed => 1,
            Outcome::Error => 2,
        };
        if let Some(reason) = &r.reason {
            eprintln!("error: drill of {} failed: {reason}", r.replica);
        }
        worst = worst.max(code);
    }
    Ok(ExitCode::from(worst))
}

fn when(args: &DrillArgs) -> Result<When> {
    Ok(match (&args.txid, &args.timestamp) {
        (Some(t), _) => When::Txid(crate::cmd_restore::parse_txid(t)?),
        (None, Some(ts)) => When::Time(parse_rfc3339(ts).map_err(|e| anyhow!("--timestamp: {e}"))?),
        (None, None) => When::Latest,
    })
}

/// One drill per replica: of the URL, or of every (or the `--db`) database
/// in the config.
fn specs(args: &DrillArgs) -> Result<Vec<DrillSpec>> {
    let when = when(args)?;
    let parallelism = args
        .parallelism
        .map_or_else(restore::execute::default_parallelism, usize::from);
    let base = |url, name: String, primary| DrillSpec {
        url,
        name,
        when,
        primary,
        keep: args.keep.clone(),
        scratch_parent: None,
        max_rpo: args.max_rpo,
        parallelism,
    };
    if let Some(u) = &args.url {
        if !u.contains("://") {
            bail!("{u:?} is not a replica URL (file:///abs/path or s3://bucket/prefix?endpoint=…); to drill a database of a config, use --config FILE --db PATH");
        }
        let url = s3_backend::ReplicaUrl::parse(u)?;
        return Ok(vec![base(url, "drill.db".into(), None)]);
    }
    let Some(path) = &args.config else {
        bail!("give a REPLICA_URL, or --config FILE");
    };
    let cfg = Config::load(path)?;
    let dbs = select_dbs(&cfg, path, args.db.as_deref())?;
    let mut out = Vec::new();
    for db in dbs {
        let name = db
            .path
            .file_name()
            .map_or_else(|| "drill.db".into(), |n| n.to_string_lossy().into_owned());
        let primary = Primary {
            db: db.path.clone(),
            staging: StagingDir::for_db(&db.path, db.staging_dir.as_deref()),
        };
        for (i, r) in db.replicas.iter().enumerate() {
            let url = r.resolve().with_context(|| {
                format!("{}: replica {i} of {}", path.display(), db.path.display())
            })?;
            out.push(base(url, name.clone(), Some(primary.clone())));
        }
    }
    if out.len() > 1 {
        if let Some(k) = &args.keep {
            // One directory per drill under --keep.
            for (i, s) in out.iter_mut().enumerate() {
                s.keep = Some(k.join(format!("{i}-{}", s.name)));
            }
        }
    }
    Ok(out)
}

fn select_dbs<'a>(
    cfg: &'a Config,
    path: &Path,
    db: Option<&Path>,
) -> Result<Vec<&'a crate::config::DbConfig>> {
    let Some(db) = db else {
        return Ok(cfg.dbs.iter().collect());
    };
    let abs = std::path::absolute(db)?;
    let found: Vec<_> = cfg.dbs.iter().filter(|d| d.path == abs).collect();
    if found.is_empty() {
        let listed: Vec<String> = cfg
            .dbs
            .iter()
            .map(|d| d.path.display().to_string())
            .collect();
        bail!(
            "{} does not list database {} (it lists: {})",
            path.display(),
            abs.display(),
            listed.join(", ")
        );
    }
    Ok(found)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Failed => "failed",
        Status::Skipped => "skipped",
    }
}

/// The report as one JSON object.
pub fn report_json(r: &DrillReport) -> Value {
    json!({
        "ok": r.ok(),
        "outcome": r.outcome.as_str(),
        "reason": r.reason,
        "replica": r.replica,
        "db": r.db.as_ref().map(|p| p.display().to_string()),
        "started": format_system_time(r.started),
        "newest": r.newest.map(|(t, ms)| json!({
            "txid": t.to_string(),
            "time": ms.map(format_ms),
            "time_ms": ms,
        })),
        "restored": r.restored.as_ref().map(|x| json!({
            "txid": x.txid.to_string(),
            "time": x.time_ms.map(format_ms),
            "checksum": x.checksum.to_string(),
            "page_size": x.page_size,
            "pages": x.pages,
            "size": u64::from(x.pages) * u64::from(x.page_size),
        })),
        "rpo": r.rpo.as_ref().map(|p| json!({
            "seconds": (p.seconds * 1000.0).round() / 1000.0,
            "basis": p.basis,
            "primary_txid": p.primary_txid.map(|t| t.to_string()),
            "txids_behind": p.txids_behind,
        })),
        "rto": {
            "total_seconds": secs(r.rto.total()),
            "list_seconds": secs(r.rto.list),
            "download_seconds": secs(r.rto.download),
            "rebuild_verify_seconds": secs(r.rto.rebuild_verify),
            "integrity_check_seconds": secs(r.rto.integrity_check),
        },
        "bytes_fetched": r.bytes_fetched,
        "requests": r.requests,
        "replica_files": r.replica_files,
        "replica_bytes": r.replica_bytes,
        "plan": r.plan.iter().map(|f| json!({
            "level": f.level,
            "min_txid": f.min.to_string(),
            "max_txid": f.max.to_string(),
            "size": f.size,
            "key": f.key,
        })).collect::<Vec<_>>(),
        "store": {
            "conditional_writes": r.conditional_writes,
            "note": r.capability_note,
        },
        "checks": r.checks.iter().map(|c| json!({
            "name": c.name,
            "status": status(c.status),
            "detail": c.detail,
        })).collect::<Vec<_>>(),
        "kept": r.kept.as_ref().map(|p| p.display().to_string()),
    })
}

/// The report as text: a headline, then one line per subject.
fn print_text(r: &DrillReport) {
    let head = match r.outcome {
        Outcome::Ok => "drill ok".to_string(),
        _ => format!("drill FAILED: {}", r.reason.as_deref().unwrap_or("?")),
    };
    outln!("{head}");
    outln!("  replica    {}", r.replica);
    if let Some(db) = &r.db {
        outln!("  primary    {}", db.display());
    }
    if let Some((t, ms)) = r.newest {
        outln!(
            "  newest     TXID {t} committed {}",
            ms.map_or("at an unknown time".into(), format_ms)
        );
    }
    if let Some(x) = &r.restored {
        outln!(
            "  restored   TXID {} committed {}, checksum {}, {} pages of {} bytes",
            x.txid,
            x.time_ms.map_or("at an unknown time".into(), format_ms),
            x.checksum,
            x.pages,
            x.page_size
        );
    }
    if let Some(p) = &r.rpo {
        let basis = match (p.primary_txid, p.txids_behind) {
            (Some(t), Some(n)) => format!("primary staged TXID {t}, replica {n} TXIDs behind"),
            _ => "age of the newest file".to_string(),
        };
        outln!("  rpo        {:.3}s ({basis})", p.seconds);
    }
    if r.replica_files > 0 {
        print_measures(r);
    }
    for c in &r.checks {
        outln!(
            "  check      {:<18} {:<7} {}",
            c.name,
            status(c.status),
            c.detail
        );
    }
    if let Some(k) = &r.kept {
        outln!("  kept       {}", k.display());
    }
}

/// RTO, bytes, the plan and the store's capabilities.
fn print_measures(r: &DrillReport) {
    let t = &r.rto;
    outln!(
        "  rto        {:.3}s: list {:.3}s, download {:.3}s, rebuild/verify {:.3}s, integrity check {:.3}s",
        t.total().as_secs_f64(),
        t.list.as_secs_f64(),
        t.download.as_secs_f64(),
        t.rebuild_verify.as_secs_f64(),
        t.integrity_check.as_secs_f64()
    );
    outln!(
        "  bytes      {} fetched in {} requests; replica {} files, {} bytes",
        r.bytes_fetched,
        r.requests,
        r.replica_files,
        r.replica_bytes
    );
    let plan: Vec<String> = r.plan.iter().map(|f| f.to_string()).collect();
    outln!("  plan       {} files: {}", plan.len(), plan.join(", "));
    let cw = match (r.conditional_writes, &r.capability_note) {
        (Some(true), _) => "honoured".to_string(),
        (Some(false), _) => {
            "NOT honoured (a second writer is not refused by the store)".to_string()
        }
        (None, Some(n)) => format!("unknown ({n})"),
        (None, None) => "not probed".to_string(),
    };
    outln!("  store      conditional writes (If-None-Match): {cw}");
}
