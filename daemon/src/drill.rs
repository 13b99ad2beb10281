//! Disaster-recovery drills: restore a replica into a scratch directory
//! through the `restore` library, verify the result completely, and measure
//! what an operator trusts Sluice by: RPO (how much would be lost now) and
//! RTO (how long recovery takes). Shared by `sluice drill` and the daemon's
//! scheduled drills (`drill-interval:`).
//!
//! Checks, in order: the replica lists (within [`LIST_TIMEOUT`]) and holds
//! files; a chain reaches the target (a missing file is a gap); every byte of
//! every planned file verifies and the database checksum equals the last
//! file's post-apply checksum; `PRAGMA integrity_check`; next to the
//! primary, the restored checksum equals the primary's at that TXID (read
//! from the staging directory: the application's database is never opened);
//! the RPO is within `max_rpo`.
//!
//! A drill never returns an error: every failure is in its report, as a
//! failed check (the replica is not what it should be) or as a drill that
//! could not run (bad input, a store that does not answer). The scratch
//! directory is removed on every path unless the database is to be kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ltx_format::{Checksum, Txid};
use restore::{FileInfo, IntegrityCheck, Options, Plan, Progress, RestoreError, Target, Verify};
use s3_backend::retry::{RetryPolicy, Shutdown};
use s3_backend::{ReplicaStore, ReplicaUrl};

use crate::staging::{read_ends, StagingDir};
use crate::state::read_json;
use crate::wal::position::Position;

/// Connecting and listing the replica must answer within this, or the drill
/// cannot run (an unreachable or silent store fails well within 30 s).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(20);
/// The store capability probe gets this long (its result is informative).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The point a drill restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Latest,
    Txid(Txid),
    /// The last commit at or before this time (ms since the epoch).
    Time(i64),
}

/// The primary a drill runs next to: its database (named, never opened)
/// and its staging directory.
#[derive(Debug, Clone)]
pub struct Primary {
    pub db: PathBuf,
    pub staging: StagingDir,
}

#[derive(Debug, Clone)]
pub struct DrillSpec {
    pub url: ReplicaUrl,
    /// File name of the restored database (the primary's, or `drill.db`).
    pub name: String,
    pub when: When,
    pub primary: Option<Primary>,
    /// Restore into this directory and keep the database there.
    pub keep: Option<PathBuf>,
    /// Where the scratch directory is made (default: the temp directory).
    pub scratch_parent: Option<PathBuf>,
    pub max_rpo: Option<Duration>,
    pub parallelism: usize,
}

/// How a drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every check passed.
    Ok,
    /// A check failed: the replica is not what it should be.
    Failed,
    /// The drill could not run: bad input, or the store did not answer.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Failed,
    Skipped,
}

/// One verification and what it found.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

/// Recovery time, broken down. Decoding overlaps the download: `download`
/// runs until the last byte arrived, `rebuild_verify` is the rest of the
/// restore (last pages, file and database checksums, fsync, rename).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rto {
    pub list: Duration,
    pub download: Duration,
    pub rebuild_verify: Duration,
    pub integrity_check: Duration,
}

impl Rto {
    pub fn total(&self) -> Duration {
        self.list + self.download + self.rebuild_verify + self.integrity_check
    }
}

/// How much would be lost if the primary were lost now.
#[derive(Debug, Clone)]
pub struct Rpo {
    pub seconds: f64,
    /// TXIDs the primary has staged that the replica does not hold (next to
    /// the primary only).
    pub txids_behind: Option<u64>,
    pub primary_txid: Option<Txid>,
    /// `primary` (staged TXID vs replica TXID) or `newest-file-age`.
    pub basis: &'static str,
}

/// The restored database.
#[derive(Debug, Clone)]
pub struct RestoredDb {
    pub txid: Txid,
    pub time_ms: Option<i64>,
    pub checksum: Checksum,
    pub page_size: u32,
    pub pages: u32,
}

/// Everything a drill found.
#[derive(Debug, Clone)]
pub struct DrillReport {
    pub outcome: Outcome,
    /// The first failure, on one line.
    pub reason: Option<String>,
    pub replica: String,
    pub db: Option<PathBuf>,
    pub started: SystemTime,
    pub newest: Option<(Txid, Option<i64>)>,
    pub restored: Option<RestoredDb>,
    pub rpo: Option<Rpo>,
    pub rto: Rto,
    pub replica_files: usize,
    pub replica_bytes: u64,
    pub plan: Vec<FileInfo>,
    pub bytes_fetched: u64,
    pub requests: u64,
    /// Whether the store refuses a second put-if-absent (`None`: unknown).
    pub conditional_writes: Option<bool>,
    pub capability_note: Option<String>,
    pub checks: Vec<Check>,
    /// The restored database, kept (`--keep`).
    pub kept: Option<PathBuf>,
}

/// The drill stops here (the failure is recorded).
struct Stop;

impl DrillReport {
    fn new(spec: &DrillSpec) -> Self {
        DrillReport {
            outcome: Outcome::Ok,
            reason: None,
            replica: spec.url.to_string(),
            db: spec.primary.as_ref().map(|p| p.db.clone()),
            started: SystemTime::now(),
            newest: None,
            restored: None,
            rpo: None,
            rto: Rto::default(),
            replica_files: 0,
            replica_bytes: 0,
            plan: Vec::new(),
            bytes_fetched: 0,
            requests: 0,
            conditional_writes: None,
            capability_note: None,
            checks: Vec::new(),
            kept: None,
        }
    }

    fn check(&mut self, name: &'static str, status: Status, detail: impl Into<String>) {
        let detail = one_line(&detail.into());
        if status == Status::Failed && self.reason.is_none() {
            self.reason = Some(format!("{name}: {detail}"));
            if self.outcome == Outcome::Ok {
                self.outcome = Outcome::Failed;
            }
        }
        self.checks.push(Check {
            name,
            status,
            detail,
        });
    }

    /// A failed check; the drill goes no further.
    fn failed(&mut self, name: &'static str, detail: impl Into<String>) -> Stop {
        self.check(name, Status::Failed, detail);
        Stop
    }

    /// The drill cannot run; it goes no further.
    fn error(&mut self, name: &'static str, detail: impl Into<String>) -> Stop {
        if self.reason.is_none() {
            self.outcome = Outcome::Error;
        }
        self.failed(name, detail)
    }

    pub fn ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }
}

/// Messages on one line: a store's or SQLite's may hold newlines.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs a drill. Blocking file work goes to the blocking pool of the
/// runtime it runs on.
pub async fn run(spec: &DrillSpec) -> DrillReport {
    let mut r = DrillReport::new(spec);
    let _ = drive(spec, &mut r).await;
    r
}

async fn drive(spec: &DrillSpec, r: &mut DrillReport) -> Result<(), Stop> {
    let t = Instant::now();
    let (store, files) = list_replica(spec, r).await?;
    r.rto.list = t.elapsed();
    r.replica_files = files.len();
    r.replica_bytes = files.iter().map(|f| f.size).sum();
    let newest = files.iter().map(|f| f.max).max().unwrap_or(Txid(0));
    let newest_ms = newest_time(&store, &files, newest).await;
    r.newest = Some((newest, newest_ms));
    probe_capabilities(&store, &spec.url, r).await;
    let plan = plan_target(spec, &store, &files, r).await?;
    let scratch = Scratch::create(spec).map_err(|e| r.error("scratch", e))?;
    let out = scratch.dir().join(&spec.name);
    restore_into(spec, store, &plan, &out, r).await?;
    integrity(&out, r).await?;
    let primary = match &spec.primary {
        Some(p) => Some(primary_state(p, newest, r).await?),
        None => None,
    };
    compare_with_primary(primary.as_ref(), r);
    measure_rpo(spec, primary.as_ref(), newest, newest_ms, r);
    r.kept = scratch.keep().then_some(out);
    Ok(())
}

/// The drill's store policy: a few attempts, each bounded. Connecting and
/// listing are bounded as a whole by [`LIST_TIMEOUT`] on top.
fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(15),
        total_timeout: Duration::from_secs(60),
    }
}

async fn list_replica(
    spec: &DrillSpec,
    r: &mut DrillReport,
) -> Result<(Arc<dyn ReplicaStore>, Vec<FileInfo>), Stop> {
    let url = &spec.url;
    let listed = tokio::time::timeout(LIST_TIMEOUT, async {
        let store = url.open(policy(), Shutdown::never()).await?;
        let files = restore::catalogue::list(&store, &url.layout()).await?;
        Ok::<_, s3_backend::StoreError>((store, files))
    })
    .await;
    match listed {
        Err(_) => Err(r.error(
            "list",
            format!(
                "replica {url} did not answer within {}s (store unreachable or not responding)",
                LIST_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(e)) => Err(r.error("list", format!("cannot list replica {url}: {e}"))),
        Ok(Ok((_, files))) if files.is_empty() => Err(r.error(
            "list",
            format!("replica {url} holds no LTX files (empty, or a wrong URL or prefix)"),
        )),
        Ok(Ok((store, files))) => {
            r.check(
                "list",
                Status::Ok,
                format!(
                    "{} files, {} bytes",
                    files.len(),
                    files.iter().map(|f| f.size).sum::<u64>()
                ),
            );
            Ok((store, files))
        }
    }
}

/// The commit time of the newest TXID (header time of its file).
async fn newest_time(
    store: &Arc<dyn ReplicaStore>,
    files: &[FileInfo],
    newest: Txid,
) -> Option<i64> {
    let f = restore::plan::time_file(files, newest)?;
    restore::execute::read_header(store, f)
        .await
        .ok()
        .map(|h| h.timestamp_ms)
}

/// Whether the store honours put-if-absent, probed under `.sluice/`. A
/// read-only key cannot probe: that is noted, not failed.
async fn probe_capabilities(store: &Arc<dyn ReplicaStore>, url: &ReplicaUrl, r: &mut DrillReport) {
    let key = url
        .layout()
        .sluice_key(&format!("drill-probe-{}", std::process::id()));
    match tokio::time::timeout(PROBE_TIMEOUT, store.probe(&key)).await {
        Ok(Ok(c)) => r.conditional_writes = Some(c.conditional_put),
        Ok(Err(e)) => r.capability_note = Some(one_line(&format!("probe failed: {e}"))),
        Err(_) => {
            r.capability_note = Some(format!(
                "probe did not answer within {}s",
                PROBE_TIMEOUT.as_secs()
            ))
        }
    }
}

/// The plan for the drill's target. A bad target is an input error; a chain
/// that cannot reach it (a missing file) is a failed check.
async fn plan_target(
    spec: &DrillSpec,
    store: &Arc<dyn ReplicaStore>,
    files: &[FileInfo],
    r: &mut DrillReport,
) -> Result<Plan, Stop> {
    let target = match spec.when {
        When::Latest => Target::Latest,
        When::Txid(t) => Target::Txid(t),
        When::Time(ms) => match restore::resolve_timestamp(store, files, ms).await {
            Ok((t, _)) => Target::Txid(t),
            Err(e @ RestoreError::Plan(_)) => return Err(r.error("target", e.to_string())),
            Err(e) => return Err(r.failed("target", e.to_string())),
        },
    };
    match restore::plan(files, target) {
        Ok(p) => {
            r.plan = p.files.clone();
            r.check(
                "plan",
                Status::Ok,
                format!(
                    "TXID {} from {} files, {} bytes",
                    p.target,
                    p.files.len(),
                    p.total_bytes()
                ),
            );
            Ok(p)
        }
        Err(e @ restore::PlanError::OutOfRange { .. }) if spec.when != When::Latest => {
            Err(r.error("plan", e.to_string()))
        }
        Err(e) => Err(r.failed("plan", e.to_string())),
    }
}

/// The scratch directory: a temporary one (removed when dropped), or the
/// `--keep` directory.
enum Scratch {
    Temp(tempfile::TempDir),
    Keep(PathBuf),
}

impl Scratch {
    fn create(spec: &DrillSpec) -> Result<Scratch, String> {
        if let Some(k) = &spec.keep {
            std::fs::create_dir_all(k)
                .map_err(|e| format!("cannot create --keep directory {}: {e}", k.display()))?;
            return Ok(Scratch::Keep(k.clone()));
        }
        let parent = spec
            .scratch_parent
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        tempfile::Builder::new()
            .prefix("sluice-drill.")
            .tempdir_in(&parent)
            .map(Scratch::Temp)
            .map_err(|e| {
                format!(
                    "cannot create a scratch directory in {}: {e}",
                    parent.display()
                )
            })
    }

    fn dir(&self) -> &Path {
        match self {
            Scratch::Temp(t) => t.path(),
            Scratch::Keep(p) => p,
        }
    }

    fn keep(&self) -> bool {
        matches!(self, Scratch::Keep(_))
    }
}

/// When the last downloaded byte arrived (the end of the download phase).
#[derive(Debug, Default)]
struct Timing {
    last_byte: Mutex<Option<Instant>>,
}

impl Progress for Timing {
    fn begin(&self, _: u64, _: usize) {}
    fn set_total(&self, _: u64) {}
    fn advance(&self, _: u64) {
        *self.last_byte.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
    fn file_done(&self) {}
    fn finish(&self) {}
}

/// Restores with every byte of every file verified. A corrupt file or a
/// wrong result is a failed check; a store failure means the drill could
/// not run, except a planned file that is gone (a missing file).
async fn restore_into(
    spec: &DrillSpec,
    store: Arc<dyn ReplicaStore>,
    plan: &Plan,
    out: &Path,
    r: &mut DrillReport,
) -> Result<(), Stop> {
    let opts = Options {
        parallelism: spec.parallelism,
        integrity_check: IntegrityCheck::None,
        verify: Verify::All,
        overwrite: spec.keep.is_some(),
        ..Options::default()
    };
    let timing = Arc::new(Timing::default());
    let t = Instant::now();
    let done = restore::restore(store, plan, out, &opts, timing.clone()).await;
    let end = Instant::now();
    let last = timing
        .last_byte
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or(end);
    r.rto.download = last.saturating_duration_since(t);
    r.rto.rebuild_verify = end.saturating_duration_since(last);
    let x = match done {
        Ok(x) => x,
        Err(RestoreError::Store(e)) if !e.is_not_found() => {
            return Err(r.error("restore", format!("store failed during the restore: {e}")))
        }
        Err(e @ (RestoreError::Io(..) | RestoreError::Usage(_))) => {
            return Err(r.error("restore", e.to_string()))
        }
        Err(e) => return Err(r.failed("restore", e.to_string())),
    };
    r.bytes_fetched = x.bytes_fetched;
    r.requests = x.requests;
    let files = format!(
        "{} files verified completely (file checksums)",
        x.files.len()
    );
    r.check(
        "file checksums",
        if x.files_verified {
            Status::Ok
        } else {
            Status::Failed
        },
        files,
    );
    if x.checksum_matched_post_apply {
        let d = format!("{} equals the last file's post-apply checksum", x.checksum);
        r.check("database checksum", Status::Ok, d);
    } else {
        let d = format!(
            "{} (the files carry no database checksum: litestream-compatible)",
            x.checksum
        );
        r.check("database checksum", Status::Skipped, d);
    }
    r.restored = Some(RestoredDb {
        txid: x.txid,
        time_ms: x.timestamp_ms,
        checksum: x.checksum,
        page_size: x.page_size,
        pages: x.pages,
    });
    if x.files_verified {
        Ok(())
    } else {
        Err(Stop)
    }
}

/// `PRAGMA integrity_check` of the restored database, on the blocking pool.
async fn integrity(out: &Path, r: &mut DrillReport) -> Result<(), Stop> {
    let t = Instant::now();
    let path = out.to_path_buf();
    let checked = tokio::task::spawn_blocking(move || {
        restore::execute::integrity_check(&path, IntegrityCheck::Full)
    })
    .await;
    r.rto.integrity_check = t.elapsed();
    match checked {
        Ok(Ok(())) => {
            r.check("integrity check", Status::Ok, "PRAGMA integrity_check: ok");
            Ok(())
        }
        Ok(Err(e)) => Err(r.failed("integrity check", e.to_string())),
        Err(e) => Err(r.error("integrity check", format!("internal error: {e}"))),
    }
}

/// What the primary's staging directory says.
#[derive(Debug, Clone)]
struct PrimaryState {
    /// The newest TXID staged (files, the position, a pending tail).
    staged: Txid,
    /// The database checksum at the restored TXID, if a staged file (or the
    /// position) still records it.
    at_restored: Option<Checksum>,
    /// Commit time of the oldest staged TXID the replica does not hold.
    oldest_unreplicated_ms: Option<i64>,
}

async fn primary_state(
    p: &Primary,
    replica_newest: Txid,
    r: &mut DrillReport,
) -> Result<PrimaryState, Stop> {
    let staging = p.staging.clone();
    let target = r.restored.as_ref().map_or(Txid(0), |x| x.txid);
    let read =
        tokio::task::spawn_blocking(move || read_primary(&staging, replica_newest, target)).await;
    match read {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(r.error("primary", e)),
        Err(e) => Err(r.error("primary", format!("internal error: {e}"))),
    }
}

/// Reads the staging directory (never the database): the newest staged
/// TXID, the checksum at `target`, and the time of the first TXID after
/// `replica_newest`. Blocking.
fn read_primary(
    staging: &StagingDir,
    replica_newest: Txid,
    target: Txid,
) -> Result<PrimaryState, String> {
    let root = staging.root();
    if !root.is_dir() {
        return Err(format!(
            "no staging directory at {}: run the drill where `sluice replicate` runs, with the same config",
            root.display()
        ));
    }
    let err = |e: crate::staging::StagingError| e.to_string();
    let pos: Option<Position> = read_json(&staging.position_path()).unwrap_or(None);
    let mut staged = staging.newest().map_err(err)?.map_or(Txid(0), |f| f.max);
    let mut at_restored = None;
    let mut oldest = None;
    // A file read as it is removed (an L0 file may be recycled as a spare
    // inode and rewritten) is ignored unless it still holds its TXIDs.
    let ends = |f: &crate::staging::LocalFile| {
        read_ends(&f.path).filter(|(h, _)| (h.min_txid, h.max_txid) == (f.min, f.max))
    };
    for level in 0..=s3_backend::layout::SNAPSHOT_LEVEL {
        for f in staging.list_level(level).map_err(err)? {
            if f.max == target && at_restored.is_none() {
                at_restored = ends(&f).map(|(_, t)| t.post_apply_checksum);
            }
            if level == 0 && f.max > replica_newest && oldest.is_none() {
                oldest = ends(&f).map(|(h, _)| h.timestamp_ms);
            }
        }
    }
    if let Some(p) = &pos {
        staged = staged.max(Txid(p.txid));
        if p.txid == target.0 && at_restored.is_none() {
            at_restored = u64::from_str_radix(&p.checksum, 16).ok().map(Checksum);
        }
    }
    if let Some((h, _)) = read_ends(&staging.pending_path()) {
        staged = staged.max(h.max_txid);
        if h.max_txid > replica_newest && oldest.is_none() {
            oldest = Some(h.timestamp_ms);
        }
    }
    Ok(PrimaryState {
        staged,
        at_restored,
        oldest_unreplicated_ms: oldest,
    })
}

fn compare_with_primary(primary: Option<&PrimaryState>, r: &mut DrillReport) {
    let (Some(p), Some(x)) = (primary, r.restored.clone()) else {
        return;
    };
    match p.at_restored {
        Some(c) if c == x.checksum => {
            let d = format!(
                "{} equals the primary's checksum at TXID {}",
                x.checksum, x.txid
            );
            r.check("primary checksum", Status::Ok, d);
        }
        Some(c) => {
            let d = format!(
                "the restored database at TXID {} has checksum {}, the primary had {c}: the replica holds another history",
                x.txid, x.checksum
            );
            r.check("primary checksum", Status::Failed, d);
        }
        None => {
            let d = format!(
                "the primary's staging directory no longer records TXID {}",
                x.txid
            );
            r.check("primary checksum", Status::Skipped, d);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RPO next to the primary: the replica's lag behind what is staged (0 when
/// it holds everything; else the age of the oldest commit it lacks).
/// Elsewhere: the age of the newest file. Then `--max-rpo`.
fn measure_rpo(
    spec: &DrillSpec,
    primary: Option<&PrimaryState>,
    newest: Txid,
    newest_ms: Option<i64>,
    r: &mut DrillReport,
) {
    let age = |ms: i64| (now_ms() - ms).max(0) as f64 / 1000.0;
    let rpo = match primary {
        Some(p) => Rpo {
            seconds: if p.staged > newest {
                p.oldest_unreplicated_ms.map_or(0.0, age)
            } else {
                0.0
            },
            txids_behind: Some(p.staged.0.saturating_sub(newest.0)),
            primary_txid: Some(p.staged),
            basis: "primary",
        },
        None => Rpo {
            seconds: newest_ms.map_or(0.0, age),
            txids_behind: None,
            primary_txid: None,
            basis: "newest-file-age",
        },
    };
    if let Some(max) = spec.max_rpo {
        let behind = match (rpo.primary_txid, rpo.txids_behind) {
            (Some(p), Some(n)) => format!("replica at TXID {newest}, primary at {p}, {n} behind"),
            _ => format!("newest file TXID {newest}"),
        };
        let d = format!(
            "RPO {:.1}s, --max-rpo {:.1}s ({behind})",
            rpo.seconds,
            max.as_secs_f64()
        );
        let ok = rpo.seconds <= max.as_secs_f64();
        r.check(
            "rpo",
            if ok { Status::Ok } else { Status::Failed },
            if ok {
                d
            } else {
                format!("{d}: exceeds the maximum")
            },
        );
    }
    r.rpo = Some(rpo);
}
