//! Our connections to the database, and the read pin.
//!
//! Invariant: one of the two reader connections always holds a read
//! transaction, begun *before* the frames it protects are read. A reader
//! pins the WAL: no checkpoint copies frames past its snapshot and no writer
//! restarts the WAL under it, so frames we have not shipped stay in the WAL
//! until we have read them. A pin on read mark 0 (begun on a fully copied
//! WAL) holds SQLite's `WAL_READ_LOCK(0)`, which every backfill must take
//! exclusively: it blocks all checkpoints until it moves.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::error::{CaptureError, Result};

/// The two pin connections (one holds the pin) and the sealing writer.
pub struct Pins {
    conns: [Connection; 2],
    held: usize,
    writer: Connection,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins").field("held", &self.held).finish()
    }
}

/// A connection that never checkpoints on its own, even when closing last.
fn open_conn(db: &Path) -> Result<Connection> {
    let err = CaptureError::sqlite(db);
    let c = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    let err = || CaptureError::sqlite(db);
    c.busy_timeout(Duration::from_secs(5)).map_err(err())?;
    c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(err())?;
    c.execute_batch("PRAGMA wal_autocheckpoint=0;")
        .map_err(err())?;
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(err())?;
    if mode != "wal" {
        return Err(CaptureError::NotReady(format!(
            "database {} is in journal mode {mode}, not WAL; switch it with: sqlite3 {} 'PRAGMA journal_mode=WAL'",
            db.display(),
            db.display()
        )));
    }
    Ok(c)
}

fn begin_read(c: &Connection) -> rusqlite::Result<()> {
    // Cached statements: a sync begins and ends a read transaction each time.
    c.prepare_cached("BEGIN")?.execute([])?;
    // A read transaction starts at the first read.
    c.prepare_cached("SELECT 1 FROM sqlite_schema LIMIT 1")?
        .query([])?
        .next()?;
    Ok(())
}

fn end_read(c: &Connection) {
    if let Ok(mut st) = c.prepare_cached("ROLLBACK") {
        let _ = st.execute([]);
    }
}

/// One `PRAGMA wal_checkpoint(PASSIVE)`: (busy, log frames, copied frames).
fn passive_checkpoint(c: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

impl Pins {
    /// Opens the connections and takes the first pin.
    pub fn open(db: &Path) -> Result<Pins> {
        let pins = Pins {
            conns: [open_conn(db)?, open_conn(db)?],
            held: 0,
            writer: open_conn(db)?,
        };
        begin_read(&pins.conns[0]).map_err(CaptureError::sqlite(db))?;
        Ok(pins)
    }

    /// Pins the WAL as it is now on the idle connection. Until
    /// [`Pins::release_old`], both pins are held: at every moment one pin
    /// protects what is not yet shipped.
    pub fn begin_next(&mut self, db: &Path) -> Result<()> {
        begin_read(&self.conns[1 - self.held]).map_err(CaptureError::sqlite(db))
    }

    /// Releases the old pin after [`Pins::begin_next`]: the new one is held.
    pub fn release_old(&mut self) {
        end_read(&self.conns[self.held]);
        self.held = 1 - self.held;
    }

    /// A PASSIVE checkpoint from the idle connection: our pin (begun before
    /// the last sync read the WAL) stops the copy at shipped frames.
    pub fn checkpoint_unlocked(&self) -> i64 {
        passive_checkpoint(&self.conns[1 - self.held]).map_or(1, |r| r.0)
    }

    /// Takes the write lock (`BEGIN IMMEDIATE`): nothing new commits until
    /// [`Pins::unseal`]. False if a writer holds it.
    pub fn seal(&self) -> bool {
        self.writer.execute_batch("BEGIN IMMEDIATE").is_ok()
    }

    pub fn unseal(&self) {
        let _ = self.writer.execute_batch("ROLLBACK");
    }

    /// Under the seal: drops our pin (it would stop the checkpoint), runs a
    /// PASSIVE checkpoint for as long as `again(result)` asks, and pins
    /// again. Returns the last result and the number of attempts.
    pub fn checkpoint_sealed(
        &self,
        db: &Path,
        mut again: impl FnMut(&(i64, i64, i64)) -> bool,
    ) -> Result<((i64, i64, i64), u32)> {
        let c = &self.conns[self.held];
        end_read(c);
        let mut attempts = 0u32;
        let result = loop {
            attempts += 1;
            match passive_checkpoint(c) {
                Ok(r) if again(&r) => std::thread::sleep(Duration::from_micros(500)),
                other => break other,
            }
        };
        // Pin again even if the checkpoint failed: what the application
        // commits after the seal must stay protected.
        begin_read(c).map_err(CaptureError::sqlite(db))?;
        Ok((result.map_err(CaptureError::sqlite(db))?, attempts))
    }

    /// Stops pinning (for shutdown).
    pub fn release(&self) {
        end_read(&self.conns[self.held]);
    }
}
