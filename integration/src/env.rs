//! [`TestEnv`]: the setup the end-to-end replication tests share (a
//! temporary directory, an application database in WAL mode, a config for
//! `sluice replicate`, the daemon) and the checks made against it: waiting
//! until the replica holds what was committed, restoring from the L0 chain,
//! comparing LTX checksums. The free functions work on any database and
//! replica path, for tests with more than one of either.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::{ltx_files, s, sluice, stderr, stdout, Daemon};

/// The default application table: an id, a text and a blob column.
pub const TABLE_T: &str = "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);";

/// What [`TestEnv`] sets up. By default: `app.db` with [`TABLE_T`] at page
/// size 4096, replicated to `file://<dir>/replica` every 100 ms.
#[derive(Debug, Clone)]
pub struct Setup {
    page_size: u32,
    schema: Option<String>,
    replica: Option<PathBuf>,
    url: Option<String>,
    extra_db: String,
    extra_replica: String,
    top_level: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            page_size: 4096,
            schema: Some(TABLE_T.to_string()),
            replica: None,
            url: None,
            extra_db: String::new(),
            extra_replica: String::new(),
            top_level: String::new(),
        }
    }
}

impl Setup {
    pub fn new() -> Setup {
        Setup::default()
    }

    /// The database's page size (set before WAL mode, so it sticks).
    pub fn page_size(mut self, page_size: u32) -> Setup {
        self.page_size = page_size;
        self
    }

    /// The SQL that creates the application's tables instead of [`TABLE_T`].
    pub fn schema(mut self, sql: &str) -> Setup {
        self.schema = Some(sql.to_string());
        self
    }

    /// No database: only its path, for a test that creates it (a restore).
    pub fn without_database(mut self) -> Setup {
        self.schema = None;
        self
    }

    /// A file replica in `dir` (shared with another environment, say)
    /// instead of `<dir>/replica`.
    pub fn file_replica(mut self, dir: &Path) -> Setup {
        self.replica = Some(dir.to_path_buf());
        self
    }

    /// A replica URL (an S3 one, say) instead of the file replica; the
    /// file-replica helpers then do not apply.
    pub fn url(mut self, url: &str) -> Setup {
        self.url = Some(url.to_string());
        self
    }

    /// YAML lines added to the database entry (indented four spaces).
    pub fn extra_db(mut self, yaml: &str) -> Setup {
        self.extra_db = yaml.to_string();
        self
    }

    /// YAML lines after the replica's `url` line: its settings (indented
    /// eight spaces) or more replicas (`      - url: ...`).
    pub fn extra_replica(mut self, yaml: &str) -> Setup {
        self.extra_replica = yaml.to_string();
        self
    }

    /// YAML lines at the top of the config, before `dbs:`.
    pub fn top_level(mut self, yaml: &str) -> Setup {
        self.top_level = yaml.to_string();
        self
    }

    /// Creates the directory, the database and the config.
    pub fn build(self) -> TestEnv {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = dir.path().join("app.db");
        let replica = self.replica.unwrap_or_else(|| dir.path().join("replica"));
        let url = self
            .url
            .unwrap_or_else(|| format!("file://{}", replica.display()));
        if let Some(sql) = &self.schema {
            open_app(&db, self.page_size)
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let config = dir.path().join("sluice.yml");
        std::fs::write(
            &config,
            format!(
                "{}{}",
                self.top_level,
                config_yaml(&db, &url, &self.extra_db, &self.extra_replica)
            ),
        )
        .expect("write sluice.yml");
        TestEnv {
            log: dir.path().join("sluice.log"),
            dir,
            db,
            replica,
            url,
            config,
            page_size: self.page_size,
        }
    }
}

/// One replicated database in a temporary directory (removed on drop).
#[derive(Debug)]
pub struct TestEnv {
    dir: tempfile::TempDir,
    /// `<dir>/app.db`.
    pub db: PathBuf,
    /// The file replica's directory (`<dir>/replica` unless set).
    pub replica: PathBuf,
    /// The replica URL in the config.
    pub url: String,
    /// `<dir>/sluice.yml`.
    pub config: PathBuf,
    /// `<dir>/sluice.log`, where the daemon logs.
    pub log: PathBuf,
    pub page_size: u32,
}

impl TestEnv {
    /// The default [`Setup`].
    pub fn new() -> TestEnv {
        Setup::default().build()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `<dir>/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The file replica's level-0 directory.
    pub fn l0(&self) -> PathBuf {
        self.replica.join("ltx/0")
    }

    /// `sluice replicate --config <config>`, logging to `<log>`.
    pub fn start(&self) -> Daemon {
        Daemon::start(&self.config, &self.log)
    }

    /// [`TestEnv::start`], then waits (bounded) until it is capturing.
    pub fn start_ready(&self) -> Daemon {
        Daemon::start_ready(&self.config, &self.log)
    }

    /// [`TestEnv::start`] with extra environment variables.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with_env(&self.config, &self.log, env)
    }

    /// A connection as the application opens it.
    pub fn app(&self) -> Connection {
        open_app(&self.db, self.page_size)
    }

    /// [`settle`] on the file replica.
    pub fn settle(&self) -> u64 {
        settle(&self.db, &self.replica)
    }

    /// [`settle_s3`] on the configured URL.
    pub fn settle_s3(&self) -> u64 {
        settle_s3(&self.db, &self.url)
    }

    /// [`restore_l0`] from the file replica.
    pub fn restore_l0(&self, upto: u64, out: &Path) -> String {
        restore_l0(&self.l0(), upto, out)
    }

    /// [`state_checksum`] of the database.
    pub fn state_checksum(&self) -> String {
        state_checksum(&self.db)
    }

    /// [`checkpointed_checksum`] of the database.
    pub fn checkpointed_checksum(&self) -> String {
        checkpointed_checksum(&self.db)
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

/// The `sluice replicate` config for one database and replica.
pub fn config_yaml(db: &Path, url: &str, extra_db: &str, extra_replica: &str) -> String {
    format!("dbs:\n{}", db_yaml(db, url, extra_db, extra_replica))
}

/// One entry of the config's `dbs:` list (concatenate several for a daemon
/// with several databases).
pub fn db_yaml(db: &Path, url: &str, extra_db: &str, extra_replica: &str) -> String {
    format!(
        "  - path: {}\n    sync-interval: 100ms\n{extra_db}    replicas:\n      - url: {url}\n{extra_replica}",
        db.display()
    )
}

/// Opens (creating) `db` as the application does: the page size, WAL mode
/// and a 10 s busy timeout.
pub fn open_app(db: &Path, page_size: u32) -> Connection {
    let c = Connection::open(db).unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    c.execute_batch(&format!("PRAGMA page_size={page_size};"))
        .expect("page size");
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .expect("WAL mode");
    c.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    c
}

/// The staging directory `sluice replicate` keeps beside `db` by default.
pub fn staging_dir(db: &Path) -> PathBuf {
    let name = db
        .file_name()
        .and_then(|n| n.to_str())
        .expect("db file name");
    db.parent()
        .expect("db directory")
        .join(format!(".{name}-sluice"))
}

/// The staging position (`position.json`), if there is a whole one.
pub fn position(staging: &Path) -> Option<serde_json::Value> {
    std::fs::read(staging.join("position.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The staging position's TXID (0 without one).
pub fn position_txid(db: &Path) -> u64 {
    position(&staging_dir(db))
        .and_then(|v| v["txid"].as_u64())
        .unwrap_or(0)
}

/// The staging position's checksum (empty without one).
pub fn position_checksum(db: &Path) -> String {
    position(&staging_dir(db))
        .and_then(|v| v["checksum"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Waits (bounded) until the file replica holds L0 `txid`.
pub fn wait_replica(replica: &Path, txid: u64) {
    let name = format!("{txid:016x}-{txid:016x}.ltx");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if replica.join("ltx/0").join(&name).exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("replica never received TXID {txid:x}");
}

/// Waits until the daemon has captured everything committed so far (its
/// position's checksum equals the source's committed state; the application
/// must be quiet) and the replica holds it; returns the TXID.
pub fn settle(db: &Path, replica: &Path) -> u64 {
    settle_with(db, &staging_dir(db), replica)
}

/// [`settle`] for a database with its own staging directory.
pub fn settle_with(db: &Path, staging: &Path, replica: &Path) -> u64 {
    let want = state_checksum(db);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(p) = position(staging) {
            if p["checksum"].as_str() == Some(want.as_str()) {
                let t = p["txid"].as_u64().expect("position TXID");
                wait_replica(replica, t);
                return t;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("daemon never reached the source's state {want}");
}

/// Waits until the daemon has captured the source's committed state and the
/// S3 replica lists that TXID at level 0; returns the TXID.
pub fn settle_s3(db: &Path, url: &str) -> u64 {
    settle_s3_as(db, url, &[], Duration::from_secs(90))
}

/// [`settle_s3`] with credentials for `sluice ls` (`S3Server::env`) and
/// its own bound.
pub fn settle_s3_as(db: &Path, url: &str, env: &[(&str, &str)], timeout: Duration) -> u64 {
    let want = state_checksum(db);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if position_checksum(db) == want {
            let t = position_txid(db);
            while Instant::now() < deadline {
                if max_l0_txid(url, env) >= Some(t) {
                    return t;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the S3 replica never reached the source's state {want} within {timeout:?}");
}

/// The highest TXID an S3 replica lists at level 0 (`sluice ls --json`
/// with the credentials in `env`); `None` when it lists none or cannot be
/// listed.
pub fn max_l0_txid(url: &str, env: &[(&str, &str)]) -> Option<u64> {
    let o = crate::run(
        std::process::Command::new(crate::sluice_bin())
            .args(["ls", "--json", url])
            .envs(env.iter().copied()),
    );
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    listed
        .as_array()?
        .iter()
        .filter(|e| e["level"] == 0)
        .filter_map(|e| u64::from_str_radix(e["max_txid"].as_str()?, 16).ok())
        .max()
}

/// The LTX checksum of the database's committed state (main file + WAL),
/// from `sluice ltx encode-db`.
pub fn state_checksum(db: &Path) -> String {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("s.ltx");
    let o = sluice(&["ltx", "encode-db", s(db), "-o", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    text.trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `sluice ltx checksum FILE`: the LTX checksum of a database file.
pub fn ltx_checksum(db: &Path) -> String {
    let o = sluice(&["ltx", "checksum", s(db)]);
    assert!(o.status.success(), "ltx checksum: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

/// Moves the whole WAL into the database file (`wal_checkpoint(TRUNCATE)`).
pub fn checkpoint(db: &Path) {
    Connection::open(db)
        .and_then(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);"))
        .unwrap_or_else(|e| panic!("checkpoint {}: {e}", db.display()));
}

/// [`checkpoint`], then [`ltx_checksum`]: what a restore of everything
/// committed must equal.
pub fn checkpointed_checksum(db: &Path) -> String {
    checkpoint(db);
    ltx_checksum(db)
}

/// Applies the L0 files with a max TXID up to `upto` from `l0_dir` into a
/// new `out`; returns its checksum.
pub fn restore_l0(l0_dir: &Path, upto: u64, out: &Path) -> String {
    let _ = std::fs::remove_file(out);
    let files: Vec<PathBuf> = ltx_files(l0_dir)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            n.get(17..33)
                .and_then(|max| u64::from_str_radix(max, 16).ok())
                .unwrap_or_else(|| panic!("not an LTX file name: {}", p.display()))
                <= upto
        })
        .collect();
    assert!(
        !files.is_empty(),
        "no L0 files up to {upto:x} in {}",
        l0_dir.display()
    );
    let mut args = vec!["ltx", "apply", "--db", s(out)];
    args.extend(files.iter().map(|p| s(p)));
    let o = sluice(&args);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    let o = sluice(&["ltx", "checksum", s(out)]);
    stdout(&o).trim().to_string()
}

/// `PRAGMA integrity_check` of a database: "ok" when sound.
pub fn integrity(db: &Path) -> String {
    pragma_check(db, "integrity_check")
}

/// `PRAGMA quick_check` of a database: "ok" when sound.
pub fn quick_check(db: &Path) -> String {
    pragma_check(db, "quick_check")
}

fn pragma_check(db: &Path, pragma: &str) -> String {
    Connection::open(db)
        .and_then(|c| c.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0)))
        .unwrap_or_else(|e| panic!("{pragma} of {}: {e}", db.display()))
}

/// Downloads an S3 replica's L0 files into `dir` (through the real store).
pub fn download_l0(url: &str, dir: &Path) {
    download_l0_as(url, None, dir);
}

/// [`download_l0`] with explicit credentials (`key ID`, `secret`) instead of
/// the AWS variables of the environment.
pub fn download_l0_as(url: &str, credentials: Option<(&str, &str)>, dir: &Path) {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut u = s3_backend::ReplicaUrl::parse(url).expect("replica URL");
        if let (s3_backend::ReplicaUrl::S3 { config, .. }, Some((id, secret))) =
            (&mut u, credentials)
        {
            config.access_key_id = Some(id.to_string());
            config.secret_access_key = Some(secret.to_string());
        }
        let store = u
            .open(
                s3_backend::retry::RetryPolicy::default(),
                s3_backend::retry::Shutdown::never(),
            )
            .await
            .expect("open the replica");
        let layout = u.layout();
        std::fs::create_dir_all(dir).expect("download directory");
        let listed = store
            .list(&layout.level_dir(0), None)
            .await
            .expect("list L0");
        for o in listed {
            let mut r = store.get(&o.key).await.expect("get an L0 file");
            let mut v = Vec::new();
            r.read_to_end(&mut v).await.expect("read an L0 file");
            std::fs::write(dir.join(o.name()), v).expect("write an L0 file");
        }
    });
}
