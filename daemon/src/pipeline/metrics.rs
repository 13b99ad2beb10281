//! Prometheus metrics and `/healthz`, served as plain HTTP on a loopback
//! address: TXID, lag, bytes and objects shipped, errors, WAL size and
//! checkpoints, per database and replica.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::warn;

#[derive(Debug, Default)]
pub struct DbMetrics {
    pub db: String,
    pub txid: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub checkpoints: AtomicU64,
    pub errors: AtomicU64,
    pub full_files: AtomicU64,
    /// Why replication of this database stopped, if it did.
    pub failed: Mutex<Option<String>>,
    /// What capture waits for (a database that does not exist yet, is not
    /// in WAL mode, or was deleted), if it waits.
    pub waiting: Mutex<Option<String>>,
    pub replicas: Mutex<Vec<Arc<ReplicaMetrics>>>,
    /// The last scheduled drill of each replica (`drill-interval`).
    pub drills: Mutex<Vec<DrillResult>>,
}

/// The outcome of the last scheduled drill of one replica.
#[derive(Debug, Clone)]
pub struct DrillResult {
    pub replica: String,
    pub ok: bool,
    pub rto_seconds: f64,
    pub rpo_seconds: Option<f64>,
    /// When the drill ended.
    pub at: SystemTime,
}

impl DbMetrics {
    /// Records why this database stopped (the first reason wins).
    pub fn set_failed(&self, reason: String) {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
    }

    /// Sets (or clears) what capture waits for; returns the previous value.
    pub fn set_waiting(&self, reason: Option<String>) -> Option<String> {
        std::mem::replace(
            &mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()),
            reason,
        )
    }

    pub fn waiting(&self) -> Option<String> {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a replica's drill, replacing its previous one.
    pub fn record_drill(&self, d: DrillResult) {
        let mut drills = self.drills.lock().unwrap_or_else(|p| p.into_inner());
        drills.retain(|x| x.replica != d.replica);
        drills.push(d);
    }

    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[derive(Debug, Default)]
pub struct ReplicaMetrics {
    pub name: String,
    /// Highest L0 TXID uploaded (for lag; upload progress itself lives in
    /// the uploader's `UploadMarks`).
    pub uploaded_txid: AtomicU64,
    pub bytes: AtomicU64,
    pub objects: AtomicU64,
    pub errors: AtomicU64,
    /// Milliseconds from an L0 file's creation to its upload, last seen.
    pub last_lag_ms: AtomicU64,
    /// When the oldest staged L0 not yet uploaded appeared.
    pub pending_since: Mutex<Option<Instant>>,
}

impl ReplicaMetrics {
    pub fn record_upload(&self, level: u8, max: u64, size: u64, created: Option<SystemTime>) {
        self.bytes.fetch_add(size, Relaxed);
        self.objects.fetch_add(1, Relaxed);
        if level == 0 {
            self.uploaded_txid.store(max, Relaxed);
            if let Some(lag) = created.and_then(|c| c.elapsed().ok()) {
                self.last_lag_ms.store(lag.as_millis() as u64, Relaxed);
            }
        }
    }

    pub fn lag_seconds(&self, db_txid: u64) -> f64 {
        if self.uploaded_txid.load(Relaxed) >= db_txid {
            return 0.0;
        }
        let since = *self.pending_since.lock().unwrap_or_else(|p| p.into_inner());
        since.map_or(0.0, |s| s.elapsed().as_secs_f64())
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub dbs: Mutex<Vec<Arc<DbMetrics>>>,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut o = String::new();
        let dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = writeln!(o, "# TYPE sluice_txid gauge");
        for d in &dbs {
            let _ = writeln!(
                o,
                "sluice_txid{{db=\"{}\"}} {}",
                esc(&d.db),
                d.txid.load(Relaxed)
            );
        }
        for (name, help, f) in [
            (
                "sluice_wal_bytes",
                "gauge",
                (|d: &DbMetrics| d.wal_bytes.load(Relaxed)) as fn(&DbMetrics) -> u64,
            ),
            ("sluice_checkpoints_total", "counter", |d: &DbMetrics| {
                d.checkpoints.load(Relaxed)
            }),
            ("sluice_db_errors_total", "counter", |d: &DbMetrics| {
                d.errors.load(Relaxed)
            }),
            ("sluice_full_files_total", "counter", |d: &DbMetrics| {
                d.full_files.load(Relaxed)
            }),
            ("sluice_db_waiting", "gauge", |d: &DbMetrics| {
                u64::from(d.waiting().is_some())
            }),
        ] {
            let _ = writeln!(o, "# TYPE {name} {help}");
            for d in &dbs {
                let _ = writeln!(o, "{name}{{db=\"{}\"}} {}", esc(&d.db), f(d));
            }
        }
        let _ = writeln!(o, "# TYPE sluice_replica_txid gauge\n# TYPE sluice_replication_lag_seconds gauge\n# TYPE sluice_bytes_shipped_total counter\n# TYPE sluice_objects_shipped_total counter\n# TYPE sluice_replica_errors_total counter");
        for d in &dbs {
            let txid = d.txid.load(Relaxed);
            for r in d.replicas.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let l = format!("db=\"{}\",replica=\"{}\"", esc(&d.db), esc(&r.name));
                let _ = writeln!(
                    o,
                    "sluice_replica_txid{{{l}}} {}",
                    r.uploaded_txid.load(Relaxed)
                );
                let _ = writeln!(
                    o,
                    "sluice_replication_lag_seconds{{{l}}} {:.3}",
                    r.lag_seconds(txid)
                );
                let _ = writeln!(
                    o,
                    "sluice_bytes_shipped_total{{{l}}} {}",
                    r.bytes.load(Relaxed)
                );
                let _ = writeln!(
                    o,
                    "sluice_objects_shipped_total{{{l}}} {}",
                    r.objects.load(Relaxed)
                );
                let _ = writeln!(
                    o,
                    "sluice_replica_errors_total{{{l}}} {}",
                    r.errors.load(Relaxed)
                );
            }
        }
        render_drills(&mut o, &dbs);
        o
    }

    /// Databases whose capture waits for them, with the reason.
    pub fn waiting(&self) -> Vec<String> {
        let dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        dbs.iter()
            .filter_map(|d| d.waiting().map(|r| format!("{}: waiting: {r}", d.db)))
            .collect()
    }

    /// `Ok` when no database has stopped (waiting ones included); otherwise
    /// the reasons.
    pub fn health(&self) -> Result<(), Vec<String>> {
        let dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let bad: Vec<String> = dbs
            .iter()
            .filter_map(|d| {
                d.failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|r| format!("{}: {r}", d.db))
            })
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad)
        }
    }
}

/// The last scheduled drill of each replica: whether it passed, its RTO and
/// RPO, and when it ended (Unix seconds).
fn render_drills(o: &mut String, dbs: &[Arc<DbMetrics>]) {
    let _ = writeln!(o, "# TYPE sluice_drill_ok gauge\n# TYPE sluice_drill_rto_seconds gauge\n# TYPE sluice_drill_rpo_seconds gauge\n# TYPE sluice_drill_timestamp_seconds gauge");
    for d in dbs {
        for r in d.drills.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let l = format!("db=\"{}\",replica=\"{}\"", esc(&d.db), esc(&r.replica));
            let _ = writeln!(o, "sluice_drill_ok{{{l}}} {}", u8::from(r.ok));
            let _ = writeln!(o, "sluice_drill_rto_seconds{{{l}}} {:.3}", r.rto_seconds);
            if let Some(rpo) = r.rpo_seconds {
                let _ = writeln!(o, "sluice_drill_rpo_seconds{{{l}}} {rpo:.3}");
            }
            let at =
                r.at.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
            let _ = writeln!(o, "sluice_drill_timestamp_seconds{{{l}}} {at:.3}");
        }
    }
}

/// `/healthz`: 200 and `ok` while no database has stopped, then one line
/// per database that waits to appear; 503 and the reasons otherwise.
fn healthz<M: Exporter + ?Sized>(m: &M) -> (&'static str, String) {
    let mut lines = match m.health() {
        Ok(()) => {
            return (
                "200 OK",
                ["ok".to_string()]
                    .into_iter()
                    .chain(m.waiting())
                    .collect::<Vec<_>>()
                    .join("\n")
                    + "\n",
            )
        }
        Err(r) => r,
    };
    lines.extend(m.waiting());
    ("503 Service Unavailable", lines.join("\n") + "\n")
}

/// What `/metrics` and `/healthz` report: `sluice replicate`'s [`Metrics`],
/// or another command's.
pub trait Exporter: Send + Sync + 'static {
    fn render(&self) -> String;
    fn health(&self) -> Result<(), Vec<String>>;
    /// Lines for what is waited for (not a failure).
    fn waiting(&self) -> Vec<String> {
        Vec::new()
    }
}

impl Exporter for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }

    fn health(&self) -> Result<(), Vec<String>> {
        Metrics::health(self)
    }

    fn waiting(&self) -> Vec<String> {
        Metrics::waiting(self)
    }
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve<M: Exporter>(addr: String, metrics: Arc<M>) {
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, "cannot listen for metrics: {e}");
            return;
        }
    };
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            // A request line may arrive in several segments: read until its
            // end, bounded in size and time.
            let mut buf = [0u8; 1024];
            let mut n = 0;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while n < buf.len() && !buf[..n].contains(&b'\n') {
                match tokio::time::timeout_at(deadline, sock.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(k)) => n += k,
                }
            }
            if n == 0 {
                return;
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", m.render()),
                "/healthz" => healthz(&*m),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_line_split_across_segments_is_still_served() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        tokio::spawn(serve(addr.clone(), Arc::new(Metrics::default())));
        let mut sock = None;
        for _ in 0..100 {
            if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
                sock = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut sock = sock.expect("metrics server never listened");
        sock.set_nodelay(true).unwrap();
        sock.write_all(b"GET ").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        sock.write_all(b"/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), sock.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.ends_with("\r\n\r\nok\n"), "{out}");
    }
}
