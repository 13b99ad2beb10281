//! `sluice demo`'s second part: `sluice mount`, the FUSE primary, and
//! `sluice replica`, a read-only FUSE replica following its bucket. A
//! rollback-journal database (which the WAL watcher refuses) is written
//! through the mount, one row per transaction. Halfway through, a replica
//! is mounted from the bucket; a reader on it sees every row shortly after
//! the last commit. After a clean unmount the bucket holds one TXID per
//! transaction, shipped in a few bundle objects, and a restore at any TXID
//! holds exactly the rows committed up to it.
//!
//! The mount and the replica run as child `sluice` processes, as a user
//! would run them. Where FUSE is not available the part is skipped and says
//! why, in one line.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ltx_format::Txid;
use restore::{catalogue, IntegrityCheck, NoProgress, Options, Target};
use rusqlite::Connection;
use s3_backend::retry::{RetryPolicy, Shutdown};
use s3_backend::ReplicaUrl;

/// A `sluice mount` or `sluice replica` child, stopped (and the mount
/// released) on drop.
struct MountChild {
    child: Option<Child>,
    mountpoint: PathBuf,
}

impl MountChild {
    /// Runs `sluice ARGS…` (whose mountpoint is `mountpoint`) and waits,
    /// bounded, until the mount is live.
    fn start(args: &[&OsStr], mountpoint: &Path, log: &Path) -> Result<MountChild> {
        let exe = std::env::current_exe().context("locating the sluice binary")?;
        let log_file = std::fs::File::create(log)?;
        let what = args
            .first()
            .map_or(String::new(), |a| a.to_string_lossy().into_owned());
        let child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting sluice {what}"))?;
        let mut m = MountChild {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(
            fuse_fs::mount_state(mountpoint),
            Ok(fuse_fs::MountState::Live { .. })
        ) {
            let exited = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("sluice {what} did not mount: {}", text.trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(m)
    }

    /// SIGTERM: unmount (and, for `sluice mount`, drain the uploads). True
    /// on a clean exit.
    fn stop(mut self) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(false);
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MountChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if matches!(
            fuse_fs::mount_state(&self.mountpoint),
            Ok(fuse_fs::MountState::NotMounted)
        ) {
            return;
        }
        let _ = fuse_fs::unmount_path(&self.mountpoint, true);
    }
}

/// Why the mount part cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    fuse_fs::check_fuse().err().map(|e| e.to_string())
}

/// Runs the mount part in `dir` with `transactions` one-row transactions.
pub fn run(dir: &Path, transactions: u32) -> Result<()> {
    if let Some(why) = unavailable() {
        println!("mount and replica: skipped (FUSE is not available here: {why})");
        return Ok(());
    }
    let (data, mnt, replica) = (dir.join("data"), dir.join("mnt"), dir.join("mount-replica"));
    for d in [&data, &mnt] {
        std::fs::create_dir_all(d)?;
    }
    let url = format!("file://{}", replica.display());
    println!(
        "mount:    {} (data {}) -> {url}/journal.db",
        mnt.display(),
        data.display()
    );
    let args: [&OsStr; 4] = [
        "mount".as_ref(),
        data.as_os_str(),
        mnt.as_os_str(),
        url.as_ref(),
    ];
    let m = MountChild::start(&args, &mnt, &dir.join("mount.log"))?;
    let db = mnt.join("journal.db");
    let app = Connection::open(&db)?;
    app.busy_timeout(Duration::from_secs(10))?;
    app.execute_batch(
        "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, note TEXT);",
    )?;
    let insert = |i: u32| {
        app.execute(
            "INSERT INTO t(id, note) VALUES (?1, hex(randomblob(40)))",
            [i],
        )
    };
    let half = transactions / 2;
    for i in 1..=half {
        insert(i)?;
    }
    let r = start_replica(dir, &replica, &url)?;
    for i in half + 1..=transactions {
        insert(i)?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let last_commit = Instant::now();
    drop(app);
    follow_replica(&r, transactions, last_commit)?;
    if !r.stop()? {
        bail!(
            "sluice replica did not stop cleanly; see {}",
            dir.join("replica.log").display()
        );
    }
    if !m.stop()? {
        bail!(
            "sluice mount did not stop cleanly; see {}",
            dir.join("mount.log").display()
        );
    }
    check_replica(&replica.join("journal.db"), dir, transactions)
}

/// Mounts `sluice replica` of `journal.db` once the bucket holds its first
/// files (the mount ships them within its sync interval).
fn start_replica(dir: &Path, bucket: &Path, url: &str) -> Result<MountChild> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_files(&bucket.join("journal.db/ltx/0")) == 0 {
        if Instant::now() > deadline {
            bail!(
                "sluice mount shipped nothing within 30 s; see {}",
                dir.join("mount.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rmnt = dir.join("replica-mnt");
    std::fs::create_dir_all(&rmnt)?;
    let cache = dir.join("replica-cache");
    let args: [&OsStr; 9] = [
        "replica".as_ref(),
        url.as_ref(),
        rmnt.as_os_str(),
        "--db".as_ref(),
        "journal.db".as_ref(),
        "--poll-interval".as_ref(),
        "100ms".as_ref(),
        "--cache-dir".as_ref(),
        cache.as_os_str(),
    ];
    let r = MountChild::start(&args, &rmnt, &dir.join("replica.log"))?;
    println!(
        "replica:  {} (read-only, polls {url} every 100 ms)",
        rmnt.join("journal.db").display()
    );
    Ok(r)
}

/// Waits (bounded) until a reader of the replica sees all `rows` rows, and
/// says how long after the last commit that was.
fn follow_replica(r: &MountChild, rows: u32, last_commit: Instant) -> Result<()> {
    let db = r.mountpoint.join("journal.db");
    let deadline = last_commit + Duration::from_secs(30);
    let mut seen = 0u32;
    while Instant::now() < deadline {
        if let Ok(n) = replica_rows(&db) {
            seen = n;
            if n == rows {
                let after = last_commit.elapsed();
                let pos = std::fs::read_to_string(r.mountpoint.join("journal.db-pos"))?;
                println!(
                    "replica:  a reader sees all {rows} rows {} ms after the last commit (position {})",
                    after.as_millis(),
                    pos.trim()
                );
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the replica shows {seen} of {rows} rows 30 s after the last commit")
}

/// Rows of `t` in the replica, read as any SQLite client would.
fn replica_rows(db: &Path) -> rusqlite::Result<u32> {
    let c = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(Duration::from_secs(2))?;
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
}

/// Lists the replica and restores it at the first, middle and last insert.
fn check_replica(root: &Path, dir: &Path, transactions: u32) -> Result<()> {
    let objects = count_files(&root.join("ltx/0"));
    let url = ReplicaUrl::File {
        root: root.to_path_buf(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = url.open(RetryPolicy::default(), Shutdown::never()).await?;
        let files = catalogue::list(&store, &url.layout()).await?;
        let l0: Vec<_> = files.iter().filter(|f| f.level == 0).collect();
        let last = l0.last().map_or(0, |f| f.max.0);
        println!(
            "mount replica: {} transactions as {} TXIDs in {objects} level-0 objects",
            transactions + 1,
            l0.len()
        );
        // The inserts are the last `transactions` TXIDs.
        let first_insert = last + 1 - u64::from(transactions);
        for k in [
            1,
            u64::from(transactions).div_ceil(2),
            u64::from(transactions),
        ] {
            let txid = Txid(first_insert + k - 1);
            let plan = restore::plan(&files, Target::Txid(txid))?;
            let out = dir.join(format!("mount-restored-{k}.db"));
            let opts = Options {
                integrity_check: IntegrityCheck::Full,
                ..Options::default()
            };
            restore::restore(store.clone(), &plan, &out, &opts, Arc::new(NoProgress)).await?;
            let c = Connection::open(&out)?;
            let rows: u64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
            println!("restore --txid {txid}: {rows} rows (want {k}), integrity_check ok");
            if rows != k {
                bail!("the restore at TXID {txid} holds {rows} rows, not {k}");
            }
        }
        Ok(())
    })
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| rd.filter(|e| e.is_ok()).count())
}
