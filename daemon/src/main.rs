//! `sluice`: the replication sidecar's single binary. `main` parses the command
//! line and dispatches to one function per subcommand.

/// `println!` for command output: a reader that stops early (`sluice ls |
/// head`) ends the process quietly with status 0, as other command-line
/// tools do, instead of Rust's "failed printing to stdout" panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))
    };
}

mod cmd_drill;
mod cmd_ls;
mod cmd_ltx;
mod cmd_restore;
mod config;
mod demo;
mod demo_mount;
mod drill;
mod failpoint;
mod mount;
mod pipeline;
mod replica;
mod replicate;
mod scheduled_drill;
mod staging;
mod state;
mod wal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Sluice: continuous replication of SQLite databases to S3-compatible object
/// storage or a local directory, as LTX files.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect, verify, apply and create LTX files.
    #[command(subcommand)]
    Ltx(LtxCommand),
    /// Replicate databases continuously: every database of a YAML config, or
    /// one database to one replica URL.
    Replicate {
        /// YAML configuration (see config.example.yml).
        #[arg(long, short = 'c', conflicts_with_all = ["db", "url"])]
        config: Option<PathBuf>,
        /// Database path (with REPLICA_URL, instead of a config).
        #[arg(requires = "url")]
        db: Option<PathBuf>,
        /// Replica URL: file:///abs/path or s3://bucket/prefix?endpoint=…
        url: Option<String>,
        /// Serve Prometheus metrics and /healthz here (one-database form).
        #[arg(long)]
        metrics_addr: Option<String>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// List the LTX files of a replica: level, TXID range, size, creation time.
    Ls {
        /// `file:///abs/path` or `s3://bucket/prefix?endpoint=…&region=…`.
        url: String,
        /// Print JSON (the same fields as `litestream ltx -level all -json`).
        #[arg(long)]
        json: bool,
    },
    /// Restore a database from its replica (latest, a TXID, or a time), verified.
    Restore(cmd_restore::RestoreArgs),
    /// Serve a data directory through a FUSE primary at a mountpoint: every
    /// SQLite transaction of every database in it becomes one TXID, captured
    /// before the commit completes (WAL and rollback-journal modes).
    Mount {
        /// YAML configuration with a `mounts:` section (see config.example.yml).
        #[arg(long, short = 'c', conflicts_with_all = ["data_dir", "mountpoint", "urls"])]
        config: Option<PathBuf>,
        /// The real directory holding the databases.
        #[arg(requires = "mountpoint")]
        data_dir: Option<PathBuf>,
        /// Where applications open them (an empty directory).
        mountpoint: Option<PathBuf>,
        /// Replica URLs; each database goes to `<url>/<its path in DATA_DIR>`.
        urls: Vec<String>,
        /// Serve Prometheus metrics and /healthz here.
        #[arg(long)]
        metrics_addr: Option<String>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// Disaster-recovery drill: restore into a scratch directory, verify
    /// everything, report RPO and RTO (exit 1 on a failed check, 2 when the
    /// drill cannot run).
    Drill(cmd_drill::DrillArgs),
    /// Mount read-only replicas that follow their bucket: any SQLite client
    /// can open MOUNTPOINT/NAME; `NAME-pos` and `NAME-lag` tell where it is.
    Replica(ReplicaArgs),
    /// Run the built-in example: a WAL-mode database replicated to a local
    /// `file://` replica, restored, and compared with the source.
    Demo {
        /// Directory for the example database and replica (default: a new
        /// temporary directory, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Number of write transactions the example application makes.
        #[arg(long, default_value_t = 200)]
        transactions: u32,
    },
}

#[derive(Debug, clap::Args)]
struct ReplicaArgs {
    /// YAML configuration with a `replica-mounts:` list (several replicas
    /// in one process).
    #[arg(long, short = 'c', conflicts_with_all = ["url", "mountpoint", "db", "cache_dir"])]
    config: Option<PathBuf>,
    /// The database's replica (as given to `sluice replicate`), or with
    /// --db the replica holding databases by name.
    #[arg(requires = "mountpoint")]
    url: Option<String>,
    /// An existing empty directory; the database appears in it.
    mountpoint: Option<PathBuf>,
    /// The database's name under REPLICA_URL, also its file name in the
    /// mount. Default: the last component of REPLICA_URL.
    #[arg(long)]
    db: Option<String>,
    /// How often the store is asked for new files.
    #[arg(long, default_value = "1s", value_parser = config::parse_duration)]
    poll_interval: std::time::Duration,
    /// The local copy and its position (default: `.<mountpoint
    /// name>.sluice-replica` beside the mountpoint).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Serve Prometheus metrics and /healthz here.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[derive(Debug, Subcommand)]
enum LtxCommand {
    /// Verify files completely: one line per file, non-zero exit on any failure.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a file's header, pages, page index and trailer.
    Dump {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Apply files in order to a database, checking TXID continuity and the
    /// pre/post-apply checksums where the files carry them.
    Apply {
        /// The database to create or update.
        #[arg(long)]
        db: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the LTX database checksum of a SQLite file (16 hex digits).
    Checksum { db: PathBuf },
    /// Write a snapshot LTX file of a database (its main file plus any
    /// committed WAL frames).
    EncodeDb {
        db: PathBuf,
        /// Output file.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Write the NoChecksum flag and no database checksums, as Litestream
        /// 0.5 does; `litestream restore` refuses files with checksums.
        #[arg(long)]
        no_checksum: bool,
        /// MaxTXID of the snapshot (MinTXID is always 1).
        #[arg(long, default_value_t = 1)]
        txid: u64,
        /// Overwrite the output if it exists.
        #[arg(long)]
        force: bool,
    },
}

fn init_logging(format: config::LogFormat, level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.unwrap_or("info")));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Json => b.json().init(),
        config::LogFormat::Text => b.init(),
    }
}

fn replicate_cmd(
    config_path: Option<PathBuf>,
    db: Option<PathBuf>,
    url: Option<String>,
    metrics_addr: Option<String>,
    log_json: bool,
) -> anyhow::Result<ExitCode> {
    let mut cfg = match (config_path, db, url) {
        (Some(p), _, _) => config::Config::load(&p)?,
        (None, Some(db), Some(url)) => {
            let db = std::path::absolute(&db)?;
            let yaml = format!(
                "dbs:\n  - path: {}\n    replicas:\n      - url: {}\n",
                serde_json::to_string(&db.display().to_string())?,
                serde_json::to_string(&url)?
            );
            config::Config::parse(&yaml)?
        }
        _ => anyhow::bail!("give --config FILE, or DB_PATH REPLICA_URL"),
    };
    if cfg.dbs.is_empty() {
        anyhow::bail!(
            "dbs: no databases configured (replica-mounts are served by `sluice replica`)"
        );
    }
    if metrics_addr.is_some() {
        cfg.metrics_addr = metrics_addr;
    }
    if log_json {
        cfg.log_format = config::LogFormat::Json;
    }
    init_logging(cfg.log_format, cfg.log_level.as_deref());
    replicate::run(cfg)
}

fn mount_cmd(
    config_path: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    mountpoint: Option<PathBuf>,
    urls: Vec<String>,
    metrics_addr: Option<String>,
    log_json: bool,
) -> anyhow::Result<ExitCode> {
    let mut cfg = match (config_path, data_dir, mountpoint) {
        (Some(p), _, _) => config::Config::load(&p)?,
        (None, Some(data), Some(mnt)) => {
            if urls.is_empty() {
                anyhow::bail!("give at least one REPLICA_URL after DATA_DIR MOUNTPOINT");
            }
            let q = |p: &std::path::Path| -> anyhow::Result<String> {
                Ok(serde_json::to_string(
                    &std::path::absolute(p)?.display().to_string(),
                )?)
            };
            let mut yaml = format!(
                "mounts:\n  - data-dir: {}\n    mountpoint: {}\n    replicas:\n",
                q(&data)?,
                q(&mnt)?
            );
            for u in &urls {
                yaml.push_str(&format!("      - url: {}\n", serde_json::to_string(u)?));
            }
            config::Config::parse(&yaml)?
        }
        _ => anyhow::bail!("give --config FILE, or DATA_DIR MOUNTPOINT REPLICA_URL..."),
    };
    if metrics_addr.is_some() {
        cfg.metrics_addr = metrics_addr;
    }
    if log_json {
        cfg.log_format = config::LogFormat::Json;
    }
    init_logging(cfg.log_format, cfg.log_level.as_deref());
    mount::run(cfg)
}

fn replica_cmd(a: ReplicaArgs) -> anyhow::Result<ExitCode> {
    use replica::mount::MountSpec;
    let (specs, metrics_addr, format, level) = match (a.config, a.url, a.mountpoint) {
        (Some(p), _, _) => {
            let cfg = config::Config::load(&p)?;
            if cfg.replica_mounts.is_empty() {
                anyhow::bail!("config {}: no replica-mounts configured", p.display());
            }
            let mut specs = Vec::new();
            for m in cfg.replica_mounts {
                specs.push(MountSpec {
                    url: s3_backend::ReplicaUrl::parse(&m.url)?,
                    db: m.db,
                    mountpoint: m.mountpoint,
                    poll_interval: m.poll_interval.0,
                    cache_dir: m.cache_dir,
                });
            }
            (specs, cfg.metrics_addr, cfg.log_format, cfg.log_level)
        }
        (None, Some(url), Some(mountpoint)) => {
            if a.poll_interval < std::time::Duration::from_millis(10) {
                anyhow::bail!("--poll-interval must be at least 10ms");
            }
            let spec = MountSpec {
                url: s3_backend::ReplicaUrl::parse(&url)?,
                db: a.db,
                mountpoint,
                poll_interval: a.poll_interval,
                cache_dir: a.cache_dir,
            };
            (vec![spec], None, config::LogFormat::Text, None)
        }
        _ => anyhow::bail!("give --config FILE, or REPLICA_URL MOUNTPOINT"),
    };
    let format = if a.log_json {
        config::LogFormat::Json
    } else {
        format
    };
    init_logging(format, level.as_deref());
    replica::mount::run(specs, a.metrics_addr.or(metrics_addr))
}

/// Standard output for command output (see `outln!`): a reader that stops
/// early ends the process quietly with status 0; any other write error
/// ends it with status 1 and says so.
struct Out(std::io::StdoutLock<'static>);

fn out() -> Out {
    Out(std::io::stdout().lock())
}

impl Out {
    fn check<T>(r: std::io::Result<T>) -> std::io::Result<T> {
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            Err(e) => {
                eprintln!("error: cannot write to standard output: {e}");
                std::process::exit(1);
            }
            ok => ok,
        }
    }
}

impl std::io::Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Self::check(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Self::check(self.0.flush())
    }
}

/// Writes one line of command output (see `outln!`).
fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut o = out();
    // Errors end the process inside `Out`.
    let _ = o.write_fmt(args).and_then(|()| o.write_all(b"\n"));
}

/// Raises the soft limit on open files to the hard one, as Go programs
/// (Litestream among them) do at start. The soft limit is often 1,024 (a
/// login shell, a systemd service), and a mount holds a backing descriptor
/// per open of a file through it: three per SQLite connection.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_open_file_limit();
    let result = match cli.command {
        Command::Ltx(cmd) => match cmd {
            LtxCommand::Verify { files } => cmd_ltx::verify(&files),
            LtxCommand::Dump { file, json } => cmd_ltx::dump(&file, json),
            LtxCommand::Apply { db, files } => cmd_ltx::apply(&db, &files),
            LtxCommand::Checksum { db } => cmd_ltx::checksum(&db),
            LtxCommand::EncodeDb {
                db,
                output,
                no_checksum,
                txid,
                force,
            } => cmd_ltx::encode_db(&db, &output, no_checksum, txid, force),
        },
        Command::Ls { url, json } => cmd_ls::run(&url, json),
        Command::Restore(args) => cmd_restore::run(args),
        Command::Drill(args) => cmd_drill::run(args),
        Command::Replica(args) => replica_cmd(args),
        Command::Replicate {
            config,
            db,
            url,
            metrics_addr,
            log_json,
        } => replicate_cmd(config, db, url, metrics_addr, log_json),
        Command::Mount {
            config,
            data_dir,
            mountpoint,
            urls,
            metrics_addr,
            log_json,
        } => mount_cmd(config, data_dir, mountpoint, urls, metrics_addr, log_json),
        Command::Demo { dir, transactions } => demo::run(dir, transactions),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
