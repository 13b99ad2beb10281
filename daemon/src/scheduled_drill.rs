//! Scheduled drills (`drill-interval:`): the daemon drills each replica of a
//! database on a period, as `sluice drill --config` would next to the
//! primary, and exports the outcome (`sluice_drill_ok`,
//! `sluice_drill_rto_seconds`, `sluice_drill_rpo_seconds`,
//! `sluice_drill_timestamp_seconds`).
//!
//! A drill downloads, decodes and checks a whole database: it runs on a
//! thread of its own with its own small runtime, never on the daemon's
//! executor (which serves uploads, metrics and the watchdog). Its scratch
//! copy lives in the staging directory's `drill/` (the same disk as the
//! database, which has room for one more copy), emptied when the thread
//! starts in case a crash left one behind. A stop cancels a drill in
//! progress; the scratch copy is removed with it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tracing::{error, info, warn};

use crate::drill::{self, DrillSpec, Primary, When};
use crate::pipeline::metrics::{DbMetrics, DrillResult};
use crate::pipeline::{PipelineSpec, Stops};

/// Ranged downloads in flight for a scheduled drill: gentle on the store
/// and on the cores the application uses.
const PARALLELISM: usize = 2;

/// Starts the drill thread of one database.
pub fn spawn(
    db: &std::path::Path,
    spec: &PipelineSpec,
    every: Duration,
    metrics: Arc<DbMetrics>,
    stops: Stops,
) -> std::io::Result<JoinHandle<()>> {
    let name = db
        .file_name()
        .map_or_else(|| "drill.db".into(), |n| n.to_string_lossy().into_owned());
    let scratch = spec.staging.drill_dir();
    let primary = Primary {
        db: db.to_path_buf(),
        staging: spec.staging.clone(),
    };
    let drills: Vec<(String, DrillSpec)> = spec
        .replicas
        .iter()
        .map(|r| {
            let d = DrillSpec {
                url: r.url.clone(),
                name: name.clone(),
                when: When::Latest,
                primary: Some(primary.clone()),
                keep: None,
                scratch_parent: Some(scratch.clone()),
                max_rpo: None,
                parallelism: PARALLELISM,
            };
            (r.name.clone(), d)
        })
        .collect();
    std::thread::Builder::new()
        .name("sluice-drill".into())
        .spawn(move || {
            if let Err(e) = std::fs::remove_dir_all(&scratch) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(dir = %scratch.display(), "cannot empty the drill scratch directory: {e}");
                }
            }
            drill_loop(&drills, every, &metrics, &stops)
        })
}

/// Sleeps `d` in short steps; false if a stop came first.
fn sleep_unless_stopped(d: Duration, stops: &Stops) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stops.stopping() {
            return false;
        }
        std::thread::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
    }
    !stops.stopping()
}

fn drill_loop(drills: &[(String, DrillSpec)], every: Duration, m: &DbMetrics, stops: &Stops) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(db = %m.db, "scheduled drills cannot start: {e}");
            return;
        }
    };
    // The first drill after one period: at start-up a new replica may not
    // hold its first snapshot yet.
    while sleep_unless_stopped(every, stops) {
        for (replica, spec) in drills {
            let report = rt.block_on(async {
                tokio::select! {
                    r = drill::run(spec) => Some(r),
                    _ = stops.drain.cancelled() => None,
                    _ = stops.halt.cancelled() => None,
                }
            });
            let Some(r) = report else {
                return;
            };
            let rto = r.rto.total().as_secs_f64();
            let rpo = r.rpo.as_ref().map(|p| p.seconds);
            match &r.reason {
                None => info!(db = %m.db, %replica, rto_s = rto, rpo_s = rpo, "scheduled drill ok"),
                Some(why) => error!(db = %m.db, %replica, "scheduled drill failed: {why}"),
            }
            m.record_drill(DrillResult {
                replica: replica.clone(),
                ok: r.ok(),
                rto_seconds: rto,
                rpo_seconds: rpo,
                at: SystemTime::now(),
            });
        }
    }
}
