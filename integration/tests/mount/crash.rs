//! Crashes: the daemon killed in the middle of a write workload, an
//! application killed in the middle of a transaction, and one killed while
//! it holds the WAL write lock. Each time the database passes
//! `integrity_check`, the LTX chain continues, and nothing acknowledged
//! under `synchronous=FULL` is lost.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration::mount::MountEnv;

use super::{open, restore_at, state};

/// A Python application committing numbered rows (`synchronous=FULL`), one
/// per transaction, printing each number once its commit returned.
const WRITER: &str = r#"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=20)
con.execute("PRAGMA journal_mode=" + sys.argv[2])
con.execute("PRAGMA synchronous=FULL")
con.execute("CREATE TABLE IF NOT EXISTS t(n INTEGER PRIMARY KEY, pad BLOB)")
n = con.execute("SELECT coalesce(max(n), 0) FROM t").fetchone()[0]
while n < 100000:
    n += 1
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO t VALUES (?, randomblob(300))", (n,))
        con.execute("COMMIT")
    except Exception as e:
        print("error", e, flush=True)
        sys.exit(0)
    print(n, flush=True)
"#;

fn writer(db: &std::path::Path, mode: &str) -> Child {
    Command::new("python3")
        .args(["-c", WRITER])
        .arg(db)
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The highest number the writer reported as committed.
fn acknowledged(child: Child) -> u64 {
    let out = BufReader::new(child.stdout.unwrap());
    out.lines()
        .map_while(Result::ok)
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

fn rows(c: &rusqlite::Connection) -> (u64, u64) {
    c.query_row("SELECT count(*), coalesce(max(n), 0) FROM t", [], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })
    .unwrap()
}

fn check(env: &MountEnv, name: &str, mode: &str, acked: u64) {
    let c = open(&env.db(name), mode);
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let (count, max) = rows(&c);
    assert!(
        max >= acked,
        "{mode}: acknowledged {acked}, database has up to {max}"
    );
    assert_eq!(count, max, "{mode}: rows 1..={max} without a gap");
}

#[test]
fn the_daemon_killed_mid_workload_loses_nothing_acknowledged() {
    for mode in ["WAL", "DELETE"] {
        let mut env = MountEnv::new();
        env.start();
        let name = "app.db";
        let w = writer(&env.db(name), mode);
        let deadline = Instant::now() + Duration::from_secs(30);
        while env.txid(name) < 30 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        env.kill9();
        let acked = acknowledged(w);
        assert!(
            acked >= 20,
            "{mode}: the writer committed {acked} rows before the kill"
        );
        // The next start clears the stale mount and recovers.
        env.start();
        check(&env, name, mode, acked);
        let before = env.txid(name);
        let c = open(&env.db(name), mode);
        let (_, max) = rows(&c);
        c.execute("INSERT INTO t VALUES (?1, NULL)", [max as i64 + 1])
            .unwrap();
        assert_eq!(env.txid(name), before + 1, "{mode}: the chain continues");
        let want = state(&env.backing(name));
        drop(c);
        assert_eq!(env.stop(), Some(0), "{}", env.log_text());
        let out = env.dir().join("restored.db");
        assert_eq!(restore_at(&env.url(name), before + 1, &out), want);
    }
}

#[test]
fn an_application_killed_mid_transaction_or_holding_the_write_lock() {
    for mode in ["WAL", "DELETE"] {
        let mut env = MountEnv::new();
        env.start();
        let name = "app.db";
        let db = env.db(name);
        let c = open(&db, mode);
        c.execute_batch(
            "CREATE TABLE t(n INTEGER PRIMARY KEY, pad BLOB); INSERT INTO t VALUES (1, NULL);",
        )
        .unwrap();
        drop(c);
        // A big transaction (it spills to the files) killed before COMMIT,
        // and a process killed right after it took the write lock.
        for sql in [
            "BEGIN; WITH RECURSIVE s(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM s WHERE i < 3000) INSERT INTO t SELECT i, randomblob(4000) FROM s; SELECT 'ready';",
            "BEGIN IMMEDIATE; SELECT 'ready';",
        ] {
            let before = env.txid(name);
            let mut app = Command::new("python3")
                .args(["-c", &format!(
                    "import sqlite3, sys, time\ncon = sqlite3.connect(sys.argv[1], isolation_level=None)\ncon.execute('PRAGMA journal_mode={mode}')\ncon.execute('PRAGMA cache_size=10')\nfor s in {sql:?}.split(';')[:-1]:\n    r = con.execute(s).fetchall()\nprint('ready', flush=True)\ntime.sleep(60)\n"
                )])
                .arg(&db)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(app.stdout.take().unwrap()).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ready");
            app.kill().unwrap();
            app.wait().unwrap();
            assert_eq!(env.txid(name), before, "{mode}: nothing committed");
            let c = open(&db, mode);
            let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
            assert_eq!(ok, "ok");
            assert_eq!(rows(&c).0, 1);
            c.execute("INSERT INTO t VALUES (NULL, NULL)", []).unwrap();
            c.execute("DELETE FROM t WHERE n > 1", []).unwrap();
            assert_eq!(env.txid(name), before + 2, "{mode}: the chain continues");
        }
        let want = state(&env.backing(name));
        let last = env.txid(name);
        assert_eq!(env.stop(), Some(0), "{}", env.log_text());
        let out = env.dir().join("restored.db");
        assert_eq!(restore_at(&env.url(name), last, &out), want);
    }
}
