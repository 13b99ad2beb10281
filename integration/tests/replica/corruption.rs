//! A flipped byte in a stored LTX file is never served: the replica keeps
//! serving the last good state, reports itself behind, and says which file
//! failed. A `file://` replica, so that the stored bytes are easy to flip;
//! runs wherever FUSE does, with or without Garage.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use integration::{s, Setup};

use crate::{dump, fuse_available, sqlite3, Replica};

#[test]
fn a_corrupted_page_in_the_store_is_never_served() {
    if !fuse_available() {
        return;
    }
    let env = Setup::new().build();
    let d = env.start_ready();
    let app = env.app();
    app.execute("INSERT INTO t(v, b) VALUES ('good', randomblob(3000))", [])
        .unwrap();
    let t0 = env.settle();
    let cache = env.path("cache");
    let args = ["--poll-interval", "200ms", "--cache-dir", s(&cache)];
    let r = Replica::start(&env.url, &env.path("mnt"), "replica", &args);
    r.wait_txid(t0, Duration::from_secs(30));
    let good = dump(&r.db());
    assert_eq!(good, dump(&env.db));
    r.stop();

    // One more transaction; its file gets a byte flipped in its pages.
    app.execute("INSERT INTO t(v, b) VALUES ('bad', randomblob(20000))", [])
        .unwrap();
    let t1 = env.settle();
    let file = env.l0().join(format!("{t1:016x}-{t1:016x}.ltx"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    drop(f);

    let r = Replica::start(&env.url, &env.path("mnt"), "replica", &args);
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !r
        .log_text()
        .contains(&format!("{name} failed verification"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no verification failure reported; log:\n{}",
            r.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A few more polls: still the last good state, never the bad row.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(r.pos().0, t0, "log:\n{}", r.log_text());
    assert_eq!(dump(&r.db()), good);
    let (ok, out, err) = sqlite3(&r.db(), "PRAGMA integrity_check");
    assert!(ok && out.trim() == "ok", "{out}{err}");
    assert!(r.lag() > 0.0, "the lag shows the replica behind");
    assert!(r.status_line().contains("STALLED"), "{}", r.status_line());
    drop(r);
    d.stop_ok();
}
