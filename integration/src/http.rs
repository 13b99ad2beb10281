//! A minimal HTTP client for the daemon's `/metrics` and `/healthz`, and a
//! free loopback port to serve them on.

use std::time::Duration;

/// `GET path` from `addr`; the whole response, status line included.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    // A few bounded attempts: a connection can be reset under load.
    let mut last = String::new();
    for _ in 0..5 {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("socket timeout");
        // One write, as an HTTP client sends it; the server must also cope
        // with a split request line (a unit test in metrics.rs covers that).
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        if s.write_all(req.as_bytes()).is_ok() {
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1") {
                return out;
            }
            last = out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The value of metric `name` in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}
