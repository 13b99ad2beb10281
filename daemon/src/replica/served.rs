//! What readers see of one replicated database: its bytes with the header
//! patched, its position and its lag. The filesystem reads through this on
//! its request threads; the follower changes it only inside an apply step,
//! while no reader holds a lock.
//!
//! The patch (page 1, as served, never as stored or checksummed):
//! - bytes 18 and 19 = 1: a rollback-journal database, so readers need no
//!   `-wal` or `-shm` and take SQLite's ordinary file locks;
//! - bytes 24..28 and 92..96 = the low 32 bits of the TXID: the change
//!   counter moves with every step (SQLite drops its page cache when it
//!   changes; the primary, in WAL mode, does not move it), and the
//!   version-valid-for number equals it;
//! - bytes 28..32 = the database size in pages, which SQLite then trusts
//!   (valid because 92..96 equals the change counter), so it is made exact.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use ltx_format::{Checksum, Txid};

use super::cache::CacheDb;

/// The file readers see.
#[derive(Debug, Clone, Default)]
struct View {
    file: Option<Arc<File>>,
    size: u64,
    counter: u32,
    pages: u32,
    /// A step failed halfway: reads fail rather than show a torn database.
    withdrawn: bool,
}

/// Position and freshness, for `-pos`, `-lag`, metrics and the status line.
#[derive(Debug, Clone)]
pub struct Status {
    pub txid: Txid,
    pub checksum: Checksum,
    /// Commit time of `txid`.
    pub timestamp_ms: i64,
    /// When the last poll of the store succeeded.
    pub last_poll_ok: Option<Instant>,
    /// Upload time of the oldest file seen and not yet applied.
    pub behind_since: Option<SystemTime>,
    /// Why applying stopped, while it is stopped.
    pub stalled: Option<String>,
    pub poll_interval: Duration,
}

#[derive(Debug)]
pub struct Served {
    pub name: String,
    view: RwLock<View>,
    status: Mutex<Status>,
}

/// Header bytes readers see differently from the stored page 1.
fn patch(buf: &mut [u8], offset: u64, counter: u32, pages: u32) {
    if offset >= 100 {
        return;
    }
    let c = counter.to_be_bytes();
    let p = pages.to_be_bytes();
    let fields: [(u64, &[u8]); 4] = [(18, &[1, 1]), (24, &c), (28, &p), (92, &c)];
    for (at, bytes) in fields {
        for (i, b) in bytes.iter().enumerate() {
            let pos = at + i as u64;
            if pos >= offset && pos - offset < buf.len() as u64 {
                buf[(pos - offset) as usize] = *b;
            }
        }
    }
}

impl Served {
    pub fn new(name: &str, poll_interval: Duration) -> Served {
        Served {
            name: name.to_string(),
            view: RwLock::new(View::default()),
            status: Mutex::new(Status {
                txid: Txid(0),
                checksum: Checksum::ZERO,
                timestamp_ms: 0,
                last_poll_ok: None,
                behind_since: None,
                stalled: None,
                poll_interval,
            }),
        }
    }

    /// Points readers at the cache database as it is now.
    pub fn publish_db(&self, db: &CacheDb) {
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = View {
            file: Some(db.file().clone()),
            size: db.len(),
            counter: db.txid.0 as u32,
            pages: db.commit,
            withdrawn: false,
        };
        let mut s = self.status();
        s.txid = db.txid;
        s.checksum = db.checksum;
        s.timestamp_ms = db.timestamp_ms;
    }

    pub fn is_withdrawn(&self) -> bool {
        self.view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .withdrawn
    }

    /// Reads fail (EIO) until the next publish.
    pub fn withdraw(&self) {
        self.view
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .withdrawn = true;
    }

    pub fn size(&self) -> u64 {
        self.view.read().unwrap_or_else(|p| p.into_inner()).size
    }

    /// Reads what readers see at `offset`; short only at the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let v = self.view.read().unwrap_or_else(|p| p.into_inner());
        if v.withdrawn {
            return Err(std::io::Error::other(
                "the cached database is being repaired after a failed write",
            ));
        }
        let Some(file) = &v.file else { return Ok(0) };
        if offset >= v.size {
            return Ok(0);
        }
        let want = buf.len().min((v.size - offset) as usize);
        let mut got = 0;
        while got < want {
            match file.read_at(&mut buf[got..want], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        patch(&mut buf[..got], offset, v.counter, v.pages);
        Ok(got)
    }

    pub fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `<db>-pos`: TXID and database checksum, as `%016x/%016x`.
    pub fn pos_text(&self) -> String {
        let s = self.status();
        format!("{}/{}\n", s.txid, s.checksum)
    }

    /// Seconds the served state is behind: the age of the oldest file seen
    /// and not applied; otherwise, when polls fail, the time since the last
    /// one that succeeded; otherwise 0.
    pub fn lag_seconds(&self) -> f64 {
        let s = self.status();
        if let Some(t) = s.behind_since {
            return SystemTime::now()
                .duration_since(t)
                .map_or(0.0, |d| d.as_secs_f64());
        }
        let grace = s.poll_interval * 2 + Duration::from_secs(1);
        match s.last_poll_ok {
            Some(t) if t.elapsed() > grace => t.elapsed().as_secs_f64(),
            _ => 0.0,
        }
    }

    /// `<db>-lag`.
    pub fn lag_text(&self) -> String {
        format!("{:.3}\n", self.lag_seconds())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_a_patched_header_and_exact_bytes_elsewhere() {
        let f = tempfile::tempfile().unwrap();
        let mut page1 = vec![0xAAu8; 512];
        page1[18] = 2;
        page1[19] = 2;
        f.write_all_at(&page1, 0).unwrap();
        f.write_all_at(&[0xBB; 512], 512).unwrap();
        let ps = ltx_format::PageSize::new(512).unwrap();
        let db = CacheDb::load(f, ps, Txid(0x1_0000_0203), 0).unwrap();
        let s = Served::new("app.db", Duration::from_secs(1));
        s.publish_db(&db);
        let mut all = vec![0u8; 2000];
        assert_eq!(s.read_at(0, &mut all).unwrap(), 1024);
        assert_eq!(&all[18..20], &[1, 1]);
        assert_eq!(&all[24..28], &[0, 0, 2, 3]);
        assert_eq!(&all[28..32], &[0, 0, 0, 2]);
        assert_eq!(&all[92..96], &[0, 0, 2, 3]);
        assert!(all[96..512].iter().all(|&b| b == 0xAA));
        assert!(all[512..1024].iter().all(|&b| b == 0xBB));
        // A read that starts inside the header patches only what it holds.
        let mut part = vec![0u8; 8];
        assert_eq!(s.read_at(20, &mut part).unwrap(), 8);
        assert_eq!(part, [0xAA, 0xAA, 0xAA, 0xAA, 0, 0, 2, 3]);
        assert_eq!(s.read_at(1024, &mut part).unwrap(), 0);
        assert_eq!(s.pos_text(), format!("0000000100000203/{}\n", db.checksum));
        s.withdraw();
        assert!(s.read_at(0, &mut part).is_err());
    }
}
