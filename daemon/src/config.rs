//! The YAML configuration of `sluice replicate`, parsed strictly.
//!
//! `${VAR}` is replaced by the environment variable before parsing (an unset
//! variable is an error naming it and its line; `$${` escapes). Unknown keys
//! and bad values are errors that name the key and line. Durations are
//! `500ms`, `1s`, `5m`, `1h`, `24h`, or sums like `1h30m`. Parsed with
//! `serde_yaml_ng`, the maintained successor of `serde_yaml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use s3_backend::s3::S3Config;
use s3_backend::ReplicaUrl;
use serde::{Deserialize, Deserializer};

/// A duration written as `500ms`, `1s`, `5m`, `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{s:?} is not a duration (like 500ms, 1s, 5m, 1h)"));
        }
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (like 500ms, 1s, 5m, 1h)"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            "" => return Err(format!("{s:?} needs a unit: ms, s, m, h or d")),
            u => return Err(format!("unknown unit {u:?} in {s:?}: use ms, s, m, h or d")),
        };
        total = Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| total.checked_add(d))
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(|| {
                format!(
                    "{s:?} is too long: at most {}d",
                    MAX_DURATION.as_secs() / 86400
                )
            })?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// The longest duration any key takes (ten years): longer ones would
/// overflow the clock arithmetic of timers.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 86400);

/// A secret from the configuration: usable, but never printed (`Debug`
/// shows `<redacted>`).
#[derive(Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Prometheus metrics and `/healthz` on this address (loopback unless you
    /// mean it). Default: off.
    #[serde(default)]
    pub metrics_addr: Option<String>,
    #[serde(default)]
    pub log_format: LogFormat,
    /// `error`, `warn`, `info`, `debug`, `trace`, or an `EnvFilter` directive.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Databases `sluice replicate` watches.
    #[serde(default)]
    pub dbs: Vec<DbConfig>,
    /// FUSE primaries `sluice mount` serves.
    #[serde(default)]
    pub mounts: Vec<MountConfig>,
    /// Read-only replicas `sluice replica` mounts.
    #[serde(default)]
    pub replica_mounts: Vec<ReplicaMountConfig>,
}

/// One read-only replica mount (`sluice replica`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReplicaMountConfig {
    /// The database's replica URL, or with `db` the URL holding databases by
    /// name (as `sluice mount` writes them).
    pub url: String,
    /// Where the database appears (an existing empty directory).
    pub mountpoint: PathBuf,
    /// The database's name under `url`; also the file name served.
    #[serde(default)]
    pub db: Option<String>,
    /// How often the store is asked for new files. Default 1s.
    #[serde(default = "default_sync_interval")]
    pub poll_interval: Dur,
    /// The local copy and its position. Default
    /// `.<mountpoint name>.sluice-replica` beside the mountpoint.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

impl ReplicaMountConfig {
    fn validate(&self) -> Result<()> {
        ReplicaUrl::parse(&self.url)?;
        if !self.mountpoint.is_absolute() {
            bail!(
                "mountpoint: {} must be an absolute path",
                self.mountpoint.display()
            );
        }
        if self.poll_interval.0 < Duration::from_millis(10) {
            bail!("poll-interval: must be at least 10ms");
        }
        if let Some(d) = &self.db {
            if d.is_empty() || d.contains('/') || d.ends_with("-pos") || d.ends_with("-lag") {
                bail!("db: {d:?} cannot be a database file name");
            }
        }
        Ok(())
    }
}

fn default_sync_interval() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_levels() -> Vec<Dur> {
    vec![
        Dur(Duration::from_secs(30)),
        Dur(Duration::from_secs(300)),
        Dur(Duration::from_secs(3600)),
    ]
}
fn default_snapshot_interval() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}
fn default_retention() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}
fn default_checkpoint_pages() -> u32 {
    1000
}
fn default_shutdown_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// One database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DbConfig {
    pub path: PathBuf,
    /// At most one L0 file per interval under steady load; a write after an
    /// idle period ships at once. Shorter: less lag, more PUTs (a PUT a
    /// second is about 2.6 M PUTs a month per replica). Default 1s.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
    /// Compaction intervals of levels 1, 2, …: each level merges the level
    /// below on this period. Default 30s, 5m, 1h.
    #[serde(default = "default_levels")]
    pub levels: Vec<Dur>,
    /// A full snapshot (level 9) this often. Default 24h. Restores replay at
    /// most this much history on top of a snapshot.
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval: Dur,
    /// Point-in-time restore window: files older than the newest snapshot
    /// before the window are deleted. Default 24h.
    #[serde(default = "default_retention")]
    pub retention: Dur,
    /// Sluice checkpoints once the WAL holds this many pages (all shipped
    /// first). Default 1000 (SQLite's own autocheckpoint size).
    #[serde(default = "default_checkpoint_pages")]
    pub checkpoint_pages: u32,
    /// Where local LTX files and the position live. Default
    /// `<db dir>/.<db name>-sluice`.
    #[serde(default)]
    pub staging_dir: Option<PathBuf>,
    /// The final sync on SIGTERM/SIGINT gets this long. Default 10s.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// Run a restore drill of every replica this often (as `sluice drill`
    /// next to the primary), exporting `sluice_drill_*` metrics. Default
    /// off. Each drill downloads the restore plan (about the database's
    /// size, in GETs and egress), writes a scratch copy under the staging
    /// directory and reads it back for `integrity_check`.
    #[serde(default)]
    pub drill_interval: Option<Dur>,
    pub replicas: Vec<ReplicaConfig>,
}

/// One replica: a `url`, or its parts.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReplicaConfig {
    /// A name for logs and metrics. Default `replica<N>`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    /// `s3` or `file`, with the fields below, instead of `url`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub bucket: Option<String>,
    /// S3 key prefix, or the directory of a `file` replica.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub force_path_style: Option<bool>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// Overrides the database's sync interval for this replica.
    #[serde(default)]
    pub sync_interval: Option<Dur>,
    /// Write NoChecksum files, which `litestream restore` accepts (it refuses
    /// files that carry database checksums). Default false.
    #[serde(default)]
    pub litestream_compatible: bool,
}

/// One FUSE primary: a data directory served at a mountpoint; every SQLite
/// database in it is captured transaction by transaction.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MountConfig {
    /// The real directory holding the databases.
    pub data_dir: PathBuf,
    /// Where applications open them.
    pub mountpoint: PathBuf,
    /// Replicas of every database: each URL gets the database's path in the
    /// data directory appended to its path (`s3://b/app` →
    /// `s3://b/app/orders.db`, `s3://b/app/eu/orders.db`).
    #[serde(default)]
    pub replicas: Vec<ReplicaConfig>,
    /// Per database (its path in the data directory, the file name for one
    /// directly in it): its own replicas (URLs used as given).
    #[serde(default)]
    pub databases: std::collections::BTreeMap<String, MountDbConfig>,
    /// Upload cadence: under load, one upload round per interval; a
    /// transaction after an idle period ships at once. Default 1s.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
    #[serde(default = "default_levels")]
    pub levels: Vec<Dur>,
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval: Dur,
    #[serde(default = "default_retention")]
    pub retention: Dur,
    /// Staging directories, one per database under it. Default
    /// `<data-dir>.sluice/` (beside the data directory, not inside the mount).
    #[serde(default)]
    pub staging_dir: Option<PathBuf>,
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
}

/// One database of a mount with replicas of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MountDbConfig {
    pub replicas: Vec<ReplicaConfig>,
}

impl MountConfig {
    fn validate(&self) -> Result<()> {
        for (what, p) in [
            ("data-dir", &self.data_dir),
            ("mountpoint", &self.mountpoint),
        ] {
            if !p.is_absolute() {
                bail!("{what}: {} must be an absolute path", p.display());
            }
        }
        if self.replicas.is_empty() && self.databases.is_empty() {
            bail!(
                "replicas: none configured (for every database, or per database under databases)"
            );
        }
        if self.sync_interval.0 < Duration::from_millis(10) {
            bail!("sync-interval: must be at least 10ms");
        }
        if self.levels.len() > 8 {
            bail!("levels: at most 8 compaction levels (level 9 holds snapshots)");
        }
        for (j, r) in self.replicas.iter().enumerate() {
            r.resolve().with_context(|| format!("replicas[{j}]"))?;
        }
        for (name, d) in &self.databases {
            for (j, r) in d.replicas.iter().enumerate() {
                r.resolve()
                    .with_context(|| format!("databases.{name}.replicas[{j}]"))?;
            }
        }
        Ok(())
    }
}

/// Replaces `${VAR}`; `$${` stays a literal `${`.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    for (lineno, line) in text.split_inclusive('\n').enumerate() {
        // Comments are left alone.
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("${") {
            if i > 0 && rest.as_bytes()[i - 1] == b'$' {
                out.push_str(&rest[..i - 1]);
                out.push_str("${");
                rest = &rest[i + 2..];
                continue;
            }
            out.push_str(&rest[..i]);
            let end = rest[i..].find('}').ok_or_else(|| {
                anyhow!("line {}: unclosed ${{ in {:?}", lineno + 1, line.trim_end())
            })?;
            let name = &rest[i + 2..i + end];
            let value = lookup(name).ok_or_else(|| {
                anyhow!(
                    "line {}: environment variable {name:?} is not set (referenced as ${{{name}}})",
                    lineno + 1
                )
            })?;
            out.push_str(&value);
            rest = &rest[i + end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// serde reports a bad value at its enclosing mapping; point at the line
/// that holds the value, and name its key.
fn locate_value_error(text: &str, msg: &str) -> String {
    let quoted = msg.split('"').nth(1).filter(|v| !v.is_empty());
    let Some(value) = quoted else {
        return msg.to_string();
    };
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start().trim_start_matches("- ");
        if let Some((key, v)) = t.split_once(':') {
            let v = v.trim().trim_matches('"').trim_matches('\'');
            if v == value && !key.trim().starts_with('#') {
                let head = msg.split(" at line ").next().unwrap_or(msg);
                return format!("{head}: key {:?} at line {}", key.trim(), i + 1);
            }
        }
    }
    msg.to_string()
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let expanded = expand_env(text, |k| std::env::var(k).ok())?;
        let cfg: Config = serde_yaml_ng::from_str(&expanded)
            .map_err(|e| anyhow!("{}", locate_value_error(&expanded, &e.to_string())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.dbs.is_empty() && self.mounts.is_empty() && self.replica_mounts.is_empty() {
            bail!("dbs: no databases configured (and no mounts or replica-mounts)");
        }
        for (i, m) in self.replica_mounts.iter().enumerate() {
            m.validate()
                .with_context(|| format!("replica-mounts[{i}]"))?;
        }
        for (i, m) in self.mounts.iter().enumerate() {
            m.validate().with_context(|| format!("mounts[{i}]"))?;
        }
        for (i, db) in self.dbs.iter().enumerate() {
            if !db.path.is_absolute() {
                bail!(
                    "dbs[{i}].path: {} must be an absolute path",
                    db.path.display()
                );
            }
            if db.replicas.is_empty() {
                bail!("dbs[{i}] ({}): no replicas configured", db.path.display());
            }
            if db.sync_interval.0 < Duration::from_millis(10) {
                bail!("dbs[{i}].sync-interval: must be at least 10ms");
            }
            if db
                .drill_interval
                .is_some_and(|d| d.0 < Duration::from_secs(1))
            {
                bail!("dbs[{i}].drill-interval: must be at least 1s");
            }
            if db.levels.len() > 8 {
                bail!("dbs[{i}].levels: at most 8 compaction levels (level 9 holds snapshots)");
            }
            for (j, r) in db.replicas.iter().enumerate() {
                r.resolve()
                    .with_context(|| format!("dbs[{i}].replicas[{j}]"))?;
            }
        }
        Ok(())
    }
}

impl ReplicaConfig {
    /// The replica location, from `url` or from the separate fields.
    pub fn resolve(&self) -> Result<ReplicaUrl> {
        let mut url = match (&self.url, &self.kind) {
            (Some(_), Some(_)) => bail!("give either url or type, not both"),
            (Some(u), None) => ReplicaUrl::parse(u)?,
            (None, Some(k)) if k == "file" => {
                let p = self
                    .path
                    .as_ref()
                    .ok_or_else(|| anyhow!("type file needs path"))?;
                ReplicaUrl::parse(&format!("file://{p}"))?
            }
            (None, Some(k)) if k == "s3" => {
                let bucket = self
                    .bucket
                    .as_ref()
                    .ok_or_else(|| anyhow!("type s3 needs bucket"))?;
                let mut c = S3Config::new(bucket);
                c.endpoint = self.endpoint.clone();
                c.region = self.region.clone();
                c.force_path_style = self.force_path_style.unwrap_or(self.endpoint.is_some());
                ReplicaUrl::S3 {
                    config: c,
                    prefix: self
                        .path
                        .clone()
                        .unwrap_or_default()
                        .trim_matches('/')
                        .to_string(),
                }
            }
            (None, Some(k)) => bail!("type: unknown replica type {k:?}; use s3 or file"),
            (None, None) => bail!("a replica needs url, or type with its fields"),
        };
        if let ReplicaUrl::S3 { config, .. } = &mut url {
            if let Some(r) = &self.region {
                config.region = Some(r.clone());
            }
            if let Some(f) = self.force_path_style {
                config.force_path_style = f;
            }
            config.access_key_id = self.access_key_id.clone();
            config.secret_access_key = self
                .secret_access_key
                .as_ref()
                .map(|s| s.expose().to_string());
            if config.access_key_id.is_some() != config.secret_access_key.is_some() {
                bail!("set both access-key-id and secret-access-key, or neither");
            }
        } else if self.access_key_id.is_some() || self.bucket.is_some() || self.endpoint.is_some() {
            bail!("bucket, endpoint and credentials apply to s3 replicas only");
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("10").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn huge_durations_are_errors_not_panics() {
        for d in [
            "99999999999999999999999h",
            "3651d",
            "3650d1s",
            "18446744073709551616s",
        ] {
            let e = parse_duration(d).unwrap_err();
            assert!(
                e.contains("too long") || e.contains("not a duration"),
                "{d}: {e}"
            );
        }
        assert_eq!(
            parse_duration("3650d").unwrap(),
            Duration::from_secs(3650 * 86400)
        );
        let e = Config::parse(
            "dbs:\n  - path: /a.db\n    sync-interval: 99999999999999999999999h\n    replicas:\n      - url: file:///x\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sync-interval") && e.contains("line 3"), "{e}");
        assert!(e.contains("too long"), "{e}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = Config::parse(
            "dbs:\n  - path: /a.db\n    replicas:\n      - type: s3\n        bucket: b\n        access-key-id: AKIAEXAMPLE\n        secret-access-key: wJalrXUtnFEMI-very-secret\n",
        )
        .unwrap();
        let debug = format!("{c:?} {:?}", c.dbs[0].replicas[0].resolve().unwrap());
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let ReplicaUrl::S3 { config, .. } = c.dbs[0].replicas[0].resolve().unwrap() else {
            panic!("an s3 replica");
        };
        assert_eq!(
            config.secret_access_key.as_deref(),
            Some("wJalrXUtnFEMI-very-secret")
        );
    }

    #[test]
    fn env_expansion() {
        let env = |k: &str| (k == "BUCKET").then(|| "b1".to_string());
        assert_eq!(
            expand_env("x: ${BUCKET}/$${LIT}\n", env).unwrap(),
            "x: b1/${LIT}\n"
        );
        let e = expand_env("a: 1\nb: ${NOPE}\n", env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("\"NOPE\""), "{e}");
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(
            "metrics-addr: 127.0.0.1:9090\ndbs:\n  - path: /data/app.db\n    sync-interval: 250ms\n    levels: [10s, 1m]\n    replicas:\n      - url: file:///backups/app\n      - type: s3\n        bucket: b\n        path: app\n        endpoint: http://127.0.0.1:3900\n        region: garage\n        litestream-compatible: true\n",
        )
        .unwrap();
        let db = &c.dbs[0];
        assert_eq!(db.sync_interval.0, Duration::from_millis(250));
        assert_eq!(db.levels.len(), 2);
        assert_eq!(db.replicas.len(), 2);
        assert!(db.replicas[1].litestream_compatible);
        let ReplicaUrl::S3 { config, prefix } = db.replicas[1].resolve().unwrap() else {
            panic!()
        };
        assert!(config.force_path_style);
        assert_eq!(prefix, "app");
    }

    #[test]
    fn strict_errors_name_key_and_line() {
        let e = Config::parse("dbs:\n  - path: /a.db\n    sync-intervl: 1s\n    replicas: []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sync-intervl") && e.contains("line 3"), "{e}");
        let e = Config::parse("dbs:\n  - path: /a.db\n    sync-interval: soon\n    replicas: []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"soon\"") && e.contains("line 3"), "{e}");
        let e =
            Config::parse("dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/x?nope=1\n")
                .unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown parameter \"nope\""),
            "{e:#}"
        );
        let e = Config::parse("dbs:\n  - path: rel.db\n    replicas:\n      - url: file:///x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../config.example.yml");
        let env = |k: &str| Some(format!("value-of-{k}"));
        let expanded = expand_env(text, env).unwrap();
        let cfg: Config = serde_yaml_ng::from_str(&expanded).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.dbs[0].replicas.len(), 3);
        assert!(cfg.dbs[0].replicas[1].litestream_compatible);
        let m = &cfg.mounts[0];
        assert_eq!(m.databases["orders.db"].replicas.len(), 1);
        assert_eq!(m.sync_interval.0, Duration::from_secs(1));
    }

    #[test]
    fn replica_mounts_parse_and_bad_ones_say_what_to_fix() {
        let cfg = Config::parse(
            "replica-mounts:\n  - url: s3://b/app?endpoint=http://127.0.0.1:3900\n    mountpoint: /mnt/app\n    db: app.db\n    poll-interval: 250ms\n    cache-dir: /var/cache/app\n  - url: file:///r/x\n    mountpoint: /mnt/x\n",
        )
        .unwrap();
        assert!(cfg.dbs.is_empty());
        let m = &cfg.replica_mounts;
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].db.as_deref(), Some("app.db"));
        assert_eq!(m[0].poll_interval.0, Duration::from_millis(250));
        assert_eq!(m[1].poll_interval.0, Duration::from_secs(1));
        assert_eq!(m[1].cache_dir, None);
        let bad = |yaml: &str| format!("{:#}", Config::parse(yaml).unwrap_err());
        assert_eq!(
            bad("replica-mounts:\n  - url: file:///r\n    mountpoint: mnt\n"),
            "replica-mounts[0]: mountpoint: mnt must be an absolute path"
        );
        assert_eq!(
            bad("replica-mounts:\n  - url: file:///r\n    mountpoint: /m\n    db: a/b\n"),
            "replica-mounts[0]: db: \"a/b\" cannot be a database file name"
        );
    }
}
