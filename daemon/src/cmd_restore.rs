//! `sluice restore`: rebuild a database from a replica as of the latest
//! commit, a TXID, or a time, verified, into a file that appears atomically.
//!
//! The work is the `restore` crate's; this module parses the command line,
//! finds the replica (a URL, or a database's entry in the config), and prints
//! the plan, a progress bar, the summary line or JSON.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use ltx_format::Txid;
use restore::time::{format_ms, parse_rfc3339};
use restore::{IntegrityCheck, NoProgress, Options, Plan, Progress, Restored, Target};
use s3_backend::retry::{RetryPolicy, Shutdown};
use s3_backend::{ReplicaUrl, StoreError};
use serde_json::json;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum IntegrityArg {
    None,
    Quick,
    Full,
}

/// Restore a database from its replica: the latest state, a TXID, or the last
/// commit at or before a time. Nothing is written to the output unless the
/// whole restore succeeds and verifies.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A replica URL (file:///abs/path, s3://bucket/prefix?endpoint=…), or a
    /// database path whose replica is looked up in --config.
    #[arg(value_name = "DB_PATH | REPLICA_URL")]
    pub source: String,
    /// YAML config holding the database's replicas (for a DB_PATH).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to write the database (default: DB_PATH; required with a URL).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Restore exactly this TXID (hex, as in file names).
    #[arg(long, value_name = "HEX", conflicts_with = "timestamp")]
    pub txid: Option<String>,
    /// Restore the last commit at or before this time (RFC 3339, e.g.
    /// 2026-11-23T16:42:41Z); commit times are LTX header times.
    #[arg(long, value_name = "RFC3339")]
    pub timestamp: Option<String>,
    /// Print the plan (files, TXIDs, bytes) and exit without writing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace an existing output (and remove its -wal, -shm, -journal).
    #[arg(long)]
    pub force: bool,
    /// Do nothing, successfully, if the output already exists.
    #[arg(long)]
    pub if_db_not_exists: bool,
    /// Do nothing, successfully, if the replica has no files.
    #[arg(long)]
    pub if_replica_exists: bool,
    /// Run PRAGMA quick_check or integrity_check before putting the database in place.
    #[arg(long, value_enum, default_value = "none", value_name = "MODE")]
    pub integrity_check: IntegrityArg,
    /// Ranged downloads in flight (each holds at most 4 MiB). Default: 2 × cores, 4..32.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallelism: Option<u16>,
    /// Print one JSON object (the plan with --dry-run) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses `--txid`: 1 to 16 hex digits, an optional `0x`.
pub(crate) fn parse_txid(s: &str) -> Result<Txid> {
    let h = s.strip_prefix("0x").unwrap_or(s);
    if h.is_empty() || h.len() > 16 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
        bail!("--txid {s:?}: expected a hex TXID such as 0000000000000014 or 14");
    }
    Ok(Txid(u64::from_str_radix(h, 16)?))
}

/// The replica of a database named by path, from the config file.
///
/// The config format belongs to `sluice replicate`; this is the one place
/// restore depends on it: the first replica of the `dbs` entry whose path
/// is this database.
fn replica_for_db(config: Option<&Path>, db: &Path) -> Result<ReplicaUrl> {
    let Some(config) = config else {
        bail!(
            "{} is a database path: its replica comes from a config file. Pass --config FILE, \
             or give the replica URL instead: sluice restore -o {} REPLICA_URL \
             (file:///abs/path or s3://bucket/prefix?endpoint=…)",
            db.display(),
            db.display()
        );
    };
    let cfg = crate::config::Config::load(config)?;
    let abs = std::path::absolute(db)?;
    let same = |p: &Path| {
        p == abs
            || (p
                .canonicalize()
                .ok()
                .is_some_and(|c| Some(c) == abs.canonicalize().ok()))
    };
    let entry = cfg.dbs.iter().find(|d| same(&d.path)).ok_or_else(|| {
        let listed: Vec<String> = cfg
            .dbs
            .iter()
            .map(|d| d.path.display().to_string())
            .collect();
        anyhow!(
            "{} does not list database {} (it lists: {})",
            config.display(),
            abs.display(),
            listed.join(", ")
        )
    })?;
    let r = entry.replicas.first().ok_or_else(|| {
        anyhow!(
            "{}: database {} has no replicas",
            config.display(),
            abs.display()
        )
    })?;
    r.resolve()
        .with_context(|| format!("{}: replica of {}", config.display(), abs.display()))
}

enum When {
    Latest,
    Txid(Txid),
    Time(i64),
}

/// A progress bar on stderr: bytes, files, ETA.
struct Bar {
    pb: indicatif::ProgressBar,
    files: AtomicUsize,
    total_files: AtomicUsize,
}

impl Bar {
    fn new() -> Self {
        let pb = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        pb.set_style(style);
        Bar {
            pb,
            files: AtomicUsize::new(0),
            total_files: AtomicUsize::new(0),
        }
    }

    fn show_files(&self) {
        self.pb.set_message(format!(
            "files {}/{}",
            self.files.load(Ordering::Relaxed),
            self.total_files.load(Ordering::Relaxed)
        ));
    }
}

impl Progress for Bar {
    fn begin(&self, total_bytes: u64, files: usize) {
        self.pb.set_length(total_bytes);
        self.total_files.store(files, Ordering::Relaxed);
        self.show_files();
    }
    fn set_total(&self, total_bytes: u64) {
        self.pb.set_length(total_bytes);
    }
    fn advance(&self, bytes: u64) {
        self.pb.inc(bytes);
    }
    fn file_done(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.show_files();
    }
    fn finish(&self) {
        self.pb.finish_and_clear();
    }
}

fn file_json(f: &restore::FileInfo) -> serde_json::Value {
    json!({
        "level": f.level,
        "min_txid": f.min.to_string(),
        "max_txid": f.max.to_string(),
        "size": f.size,
        "key": f.key,
    })
}

fn print_plan(
    plan: &Plan,
    url: &ReplicaUrl,
    output: &Path,
    time: Option<i64>,
    as_json: bool,
) -> Result<()> {
    if as_json {
        let v = json!({
            "dry_run": true,
            "replica": url.to_string(),
            "output": output.display().to_string(),
            "txid": plan.target.to_string(),
            "timestamp": time.map(format_ms),
            "files": plan.files.iter().map(file_json).collect::<Vec<_>>(),
            "bytes": plan.total_bytes(),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    outln!(
        "plan: TXID {}{} from {} file{}, {} bytes, replica {url}, output {}",
        plan.target,
        time.map(|t| format!(" (committed {})", format_ms(t)))
            .unwrap_or_default(),
        plan.files.len(),
        if plan.files.len() == 1 { "" } else { "s" },
        plan.total_bytes(),
        output.display()
    );
    outln!("level  min_txid          max_txid          size        key");
    for f in &plan.files {
        outln!(
            "{:<6} {}  {}  {:<11} {}",
            f.level,
            f.min,
            f.max,
            f.size,
            f.key
        );
    }
    Ok(())
}

fn print_restored(r: &Restored, url: &ReplicaUrl, as_json: bool) -> Result<()> {
    let size = u64::from(r.pages) * u64::from(r.page_size);
    if as_json {
        let v = json!({
            "output": r.output.display().to_string(),
            "replica": url.to_string(),
            "txid": r.txid.to_string(),
            "timestamp": r.timestamp_ms.map(format_ms),
            "timestamp_ms": r.timestamp_ms,
            "page_size": r.page_size,
            "pages": r.pages,
            "size": size,
            "checksum": r.checksum.to_string(),
            "checksum_matched_post_apply": r.checksum_matched_post_apply,
            "files_verified": r.files_verified,
            "integrity_check": r.integrity_check.as_str(),
            "files": r.files.iter().map(file_json).collect::<Vec<_>>(),
            "bytes_fetched": r.bytes_fetched,
            "requests": r.requests,
            "elapsed_ms": r.elapsed.as_millis() as u64,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let verified = match (r.checksum_matched_post_apply, r.files_verified) {
        (true, true) => "every file verified, matches the last file's post-apply checksum",
        (true, false) => "matches the last file's post-apply checksum",
        (false, _) => "every file verified",
    };
    let integrity = match r.integrity_check {
        IntegrityCheck::None => String::new(),
        m => format!(", {} integrity check ok", m.as_str()),
    };
    outln!(
        "restored {}: TXID {} committed {}, {} pages of {} ({size} bytes), database checksum {} ({verified}{integrity}); {} file{}, {} bytes fetched from {url} in {:.2}s",
        r.output.display(),
        r.txid,
        r.timestamp_ms.map_or_else(|| "at an unknown time".to_string(), format_ms),
        r.pages,
        r.page_size,
        r.checksum,
        r.files.len(),
        if r.files.len() == 1 { "" } else { "s" },
        r.bytes_fetched,
        r.elapsed.as_secs_f64()
    );
    Ok(())
}

fn skip(reason: &str, as_json: bool) -> Result<ExitCode> {
    if as_json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({ "skipped": reason }))?
        );
    } else {
        outln!("nothing restored: {reason}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The replica and the output path named on the command line.
fn source_and_output(args: &RestoreArgs) -> Result<(ReplicaUrl, PathBuf)> {
    if args.source.contains("://") {
        let url = ReplicaUrl::parse(&args.source)?;
        let output = args.output.clone().ok_or_else(|| {
            anyhow!("-o/--output is required when restoring from a replica URL (where should the database go?)")
        })?;
        Ok((url, output))
    } else {
        let db = PathBuf::from(&args.source);
        let url = replica_for_db(args.config.as_deref(), &db)?;
        Ok((url, args.output.clone().unwrap_or(db)))
    }
}

pub fn run(args: RestoreArgs) -> Result<ExitCode> {
    let (url, output) = source_and_output(&args)?;
    let when = match (&args.txid, &args.timestamp) {
        (Some(t), _) => When::Txid(parse_txid(t)?),
        (None, Some(ts)) => When::Time(parse_rfc3339(ts).map_err(|e| anyhow!("--timestamp: {e}"))?),
        (None, None) => When::Latest,
    };
    let output_exists = std::fs::symlink_metadata(&output).is_ok();
    if output_exists && args.if_db_not_exists {
        return skip(
            &format!("{} already exists (--if-db-not-exists)", output.display()),
            args.json,
        );
    }
    if output_exists && !args.force && !args.dry_run {
        bail!(
            "{} exists; refusing to overwrite it (pass --force to replace it, or --if-db-not-exists to skip)",
            output.display()
        );
    }
    let parallelism = args
        .parallelism
        .map_or_else(restore::execute::default_parallelism, usize::from);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(2))
        .max_blocking_threads(parallelism + 4)
        .enable_all()
        .build()?;
    rt.block_on(restore_from(args, url, output, when, parallelism))
}

/// Lists the replica, plans, and restores (or prints the plan).
async fn restore_from(
    args: RestoreArgs,
    url: ReplicaUrl,
    output: PathBuf,
    when: When,
    parallelism: usize,
) -> Result<ExitCode> {
    let store = url.open(RetryPolicy::default(), Shutdown::never()).await?;
    let files = match restore::catalogue::list(&store, &url.layout()).await {
        Ok(f) => f,
        Err(e @ (StoreError::NoSuchBucket { .. } | StoreError::NotFound { .. }))
            if args.if_replica_exists =>
        {
            return skip(
                &format!("no replica at {url} ({e}) (--if-replica-exists)"),
                args.json,
            );
        }
        Err(e) => return Err(e).with_context(|| format!("listing {url}")),
    };
    if files.is_empty() {
        if args.if_replica_exists {
            return skip(
                &format!("no LTX files under {url} (--if-replica-exists)"),
                args.json,
            );
        }
        bail!("no LTX files under {url}: nothing to restore");
    }
    let (target, time) = match when {
        When::Latest => (Target::Latest, None),
        When::Txid(t) => (Target::Txid(t), None),
        When::Time(ms) => {
            let (t, at) = restore::resolve_timestamp(&store, &files, ms).await?;
            (Target::Txid(t), Some(at))
        }
    };
    let plan = restore::plan(&files, target)?;
    if args.dry_run {
        print_plan(&plan, &url, &output, time, args.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let opts = Options {
        parallelism,
        integrity_check: match args.integrity_check {
            IntegrityArg::None => IntegrityCheck::None,
            IntegrityArg::Quick => IntegrityCheck::Quick,
            IntegrityArg::Full => IntegrityCheck::Full,
        },
        overwrite: args.force,
        ..Options::default()
    };
    let progress: Arc<dyn Progress> = if std::io::stderr().is_terminal() && !args.json {
        Arc::new(Bar::new())
    } else {
        Arc::new(NoProgress)
    };
    let work = restore::restore(store, &plan, &output, &opts, progress.clone());
    let r = tokio::select! {
        r = work => r,
        s = interrupted() => {
            progress.finish();
            bail!("{s}: stopped; nothing was written to {}", output.display());
        }
    };
    let r = r.with_context(|| {
        format!(
            "restore of {url} to {} failed; nothing was written to it",
            output.display()
        )
    })?;
    print_restored(&r, &url, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM. Dropping the restore then removes its
/// temporary file.
async fn interrupted() -> &'static str {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term => "terminated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txids_parse_as_hex() {
        assert_eq!(parse_txid("14").unwrap(), Txid(0x14));
        assert_eq!(parse_txid("0x14").unwrap(), Txid(0x14));
        assert_eq!(parse_txid("0000000000000014").unwrap(), Txid(0x14));
        for bad in ["", "0x", "xyz", "00000000000000001"] {
            assert!(parse_txid(bad).is_err(), "{bad}");
        }
    }
}
