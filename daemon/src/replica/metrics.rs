//! Prometheus metrics of `sluice replica`, the status line (SIGUSR1) and
//! `/healthz`: per database, its position, lag, requests and steps.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::served::Served;
use super::store::Counters;

/// One followed database.
#[derive(Debug)]
pub struct DbMetrics {
    pub served: Arc<Served>,
    pub store: Arc<Counters>,
    pub steps: AtomicU64,
    pub pages_applied: AtomicU64,
    /// Steps put off because a reader held the database past the bound.
    pub delayed: AtomicU64,
    /// Full restores (first start, gaps, divergence).
    pub restores: AtomicU64,
    /// Steps whose pages did not verify (each retry counts).
    pub verify_failures: AtomicU64,
    /// Polls that failed (store unreachable, I/O).
    pub errors: AtomicU64,
    /// Where it is mounted: a label, as one database may be mounted twice.
    pub mountpoint: std::sync::OnceLock<String>,
}

impl DbMetrics {
    pub fn new(served: Arc<Served>, store: Arc<Counters>) -> DbMetrics {
        DbMetrics {
            served,
            store,
            steps: AtomicU64::new(0),
            pages_applied: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            restores: AtomicU64::new(0),
            verify_failures: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            mountpoint: std::sync::OnceLock::new(),
        }
    }

    /// One line: where the database is and what following it cost.
    pub fn status_line(&self) -> String {
        let (txid, checksum, stalled) = {
            let s = self.served.status();
            (s.txid, s.checksum, s.stalled.clone())
        };
        let (gets, lists, bytes) = self.store.snapshot();
        let mut line = format!(
            "replica {}: txid {txid} checksum {checksum} lag {:.3}s steps {} pages {} delayed {} restores {} gets {gets} lists {lists} bytes {bytes}",
            self.served.name,
            self.served.lag_seconds(),
            self.steps.load(Relaxed),
            self.pages_applied.load(Relaxed),
            self.delayed.load(Relaxed),
            self.restores.load(Relaxed),
        );
        if let Some(r) = stalled {
            let _ = write!(line, " STALLED: {r}");
        }
        line
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub dbs: Mutex<Vec<Arc<DbMetrics>>>,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

type Gauge = fn(&DbMetrics) -> String;

impl Metrics {
    pub fn add(&self, m: Arc<DbMetrics>) {
        self.dbs.lock().unwrap_or_else(|p| p.into_inner()).push(m);
    }

    fn all(&self) -> Vec<Arc<DbMetrics>> {
        self.dbs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One status line per database (SIGUSR1).
    pub fn status_lines(&self) -> Vec<String> {
        self.all().iter().map(|d| d.status_line()).collect()
    }

    pub fn render(&self) -> String {
        let dbs = self.all();
        let rows: [(&str, &str, Gauge); 11] = [
            ("sluice_replica_txid", "gauge", |d| {
                d.served.status().txid.0.to_string()
            }),
            ("sluice_replica_lag_seconds", "gauge", |d| {
                format!("{:.3}", d.served.lag_seconds())
            }),
            ("sluice_replica_get_requests_total", "counter", |d| {
                d.store.snapshot().0.to_string()
            }),
            ("sluice_replica_list_requests_total", "counter", |d| {
                d.store.snapshot().1.to_string()
            }),
            ("sluice_replica_bytes_fetched_total", "counter", |d| {
                d.store.snapshot().2.to_string()
            }),
            ("sluice_replica_steps_total", "counter", |d| {
                d.steps.load(Relaxed).to_string()
            }),
            ("sluice_replica_pages_applied_total", "counter", |d| {
                d.pages_applied.load(Relaxed).to_string()
            }),
            ("sluice_replica_steps_delayed_total", "counter", |d| {
                d.delayed.load(Relaxed).to_string()
            }),
            ("sluice_replica_restores_total", "counter", |d| {
                d.restores.load(Relaxed).to_string()
            }),
            ("sluice_replica_verify_failures_total", "counter", |d| {
                d.verify_failures.load(Relaxed).to_string()
            }),
            ("sluice_replica_errors_total", "counter", |d| {
                d.errors.load(Relaxed).to_string()
            }),
        ];
        let mut o = String::new();
        for (name, kind, f) in rows {
            let _ = writeln!(o, "# TYPE {name} {kind}");
            for d in &dbs {
                let mnt = d
                    .mountpoint
                    .get()
                    .map_or(String::new(), |m| format!(",mountpoint=\"{}\"", esc(m)));
                let _ = writeln!(o, "{name}{{db=\"{}\"{mnt}}} {}", esc(&d.served.name), f(d));
            }
        }
        o
    }

    /// `Ok` while every database applies; otherwise why not.
    pub fn health(&self) -> Result<(), Vec<String>> {
        let bad: Vec<String> = self
            .all()
            .iter()
            .filter_map(|d| {
                let s = d.served.status();
                s.stalled
                    .as_ref()
                    .map(|r| format!("{}: {r}", d.served.name))
            })
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad)
        }
    }
}

impl crate::pipeline::metrics::Exporter for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }

    fn health(&self) -> Result<(), Vec<String>> {
        Metrics::health(self)
    }
}
