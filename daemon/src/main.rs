//! `sluice`: the replication sidecar's single binary. `main` parses the command
//! line and dispatches to one function per subcommand.

mod capture;
mod cmd_ltx;
mod demo;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
