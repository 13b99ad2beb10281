//! Single-threaded codec throughput: `cargo bench -p ltx-format --bench codec`.
//!
//! For a snapshot of 4 KiB pages (16384 pages = 64 MiB by default) of
//! (a) compressible, SQLite-like table pages and (b) random bytes, prints the
//! best of 5 runs of
//!
//! * encode: [`Encoder`] into a `Vec<u8>`, tracked checksums (the snapshot's
//!   post-apply checksum from [`Encoder::pages_checksum`]);
//! * decode+verify: [`verify`] over a `Cursor` (LZ4, file checksum, and the
//!   snapshot's database checksum);
//!
//! in MB/s (10^6 bytes per second) of page data, i.e. decompressed bytes, and
//! the file size over the page bytes. Then the parts the codec is made of, on
//! the same pages: CRC-64 and LZ4 alone, to show where the time goes, with the
//! `crc` crate's slice-by-16 table (the CRC used before `crc-fast`) beside it.
//!
//! Last, the SQLite WAL checksum the daemon verifies on every frame:
//! [`wal_checksum`] on 4 KiB pages held in L2 (as a page just read into the
//! reader's buffer is), both word orders, beside SQLite's plain loop; and
//! [`scan_committed`] over an in-memory WAL of the compressible pages.
//!
//! Environment: `LTX_BENCH_PAGES` (default 16384), `LTX_BENCH_RUNS` (default
//! 5), `LTX_BENCH_PARTS=0` to skip the parts (e.g. under `perf record`).
//!
//! Times are thread CPU time (from `/proc/thread-self/schedstat`) where Linux
//! provides it, so that other work on a shared machine does not count; each
//! timed run repeats its work for at least 250 ms because the kernel updates
//! that figure only every few milliseconds.

use std::hint::black_box;
use std::io::Cursor;
use std::time::{Duration, Instant};

use ltx_format::checksum::CRC64;
use ltx_format::wal::{
    scan_committed, wal_checksum, WalFrameHeader, WalHeader, WalReader, WAL_FRAME_HEADER_SIZE,
};
use ltx_format::{checksum_page, verify, Encoder, Header, PageSize, Txid};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const PAGE: usize = 4096;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const FIRST: &[&str] = &[
    "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory",
    "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter",
];
const LAST: &[&str] = &[
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Martinez",
    "Lopez", "Wilson", "Anderson", "Taylor", "Moore",
];
const STATUS: &[&str] = &[
    "pending",
    "paid",
    "shipped",
    "delivered",
    "refunded",
    "cancelled",
];
const PRODUCT: &[&str] = &[
    "Stainless steel water bottle, 750 ml, blue",
    "Stainless steel water bottle, 500 ml, green",
    "Organic cotton t-shirt, size M, white",
    "Organic cotton t-shirt, size L, black",
    "Wireless mouse, 2.4 GHz, USB receiver",
    "USB-C charging cable, 2 m, braided",
];
const CITY: &[&str] = &[
    "Amsterdam",
    "Berlin",
    "Chicago",
    "Lisbon",
    "Montreal",
    "Osaka",
    "Paris",
    "Seoul",
    "Sydney",
];

/// A SQLite-like table b-tree leaf page: an 8-byte page header, a cell
/// pointer array, free space, and cells packed at the end, each a varint
/// payload length, a varint rowid, a record header (serial types) and
/// the record: integers and text with repeated words, as an `orders` table.
fn sqlite_like_page(pgno: u32, rng: &mut Rng) -> Vec<u8> {
    let mut page = vec![0u8; PAGE];
    let mut cells: Vec<Vec<u8>> = Vec::new();
    let mut used = 8;
    let mut rowid = u64::from(pgno) * 40;
    let mut ts = 1_700_000_000u32 + pgno * 3600;
    loop {
        // Orders come from a few regular customers (name, e-mail and city
        // travel together, as a join would write them).
        let customer = rng.below(8) as usize;
        let first = FIRST[customer % FIRST.len()];
        let last = LAST[(customer * 7) % LAST.len()];
        let name = format!("{first} {last}");
        let email = format!(
            "{}.{}@example.com",
            first.to_lowercase(),
            last.to_lowercase()
        );
        let status = if rng.below(4) == 0 {
            STATUS[rng.below(STATUS.len() as u64) as usize]
        } else {
            "delivered"
        };
        let city = CITY[customer % CITY.len()];
        let qty = if rng.below(3) == 0 {
            1 + rng.below(5) as u8
        } else {
            1
        };
        ts += 60 * rng.below(4) as u32;
        let pi = rng.below(PRODUCT.len() as u64) as usize;
        let product = PRODUCT[pi];
        let cents = (1999 + 500 * pi as u32) * u32::from(qty);
        let note = if rng.below(3) == 0 {
            format!("deliver to {city} office; call before delivery")
        } else {
            String::new()
        };
        let texts = [&name, &email, city, product, status, &note];
        // header size (patched), 1-, 3- and 4-byte integers, then texts
        let mut rec_hdr = vec![0u8, 1, 3, 4];
        for t in texts {
            rec_hdr.push((13 + 2 * t.len()) as u8); // text serial type, < 128
        }
        rec_hdr[0] = rec_hdr.len() as u8;
        let mut body = vec![qty];
        body.extend_from_slice(&cents.to_be_bytes()[1..]);
        body.extend_from_slice(&ts.to_be_bytes());
        for t in texts {
            body.extend_from_slice(t.as_bytes());
        }
        let payload = rec_hdr.len() + body.len();
        let mut cell = vec![(payload as u8) & 0x7f | 0x80, (payload >> 7) as u8];
        cell.push(0x80 | ((rowid >> 7) as u8 & 0x7f));
        cell.push(rowid as u8 & 0x7f);
        cell.extend_from_slice(&rec_hdr);
        cell.extend_from_slice(&body);
        if used + 2 + cell.len() > PAGE - 100 {
            break;
        }
        used += 2 + cell.len();
        cells.push(cell);
        rowid += 1;
    }
    page[0] = 0x0d; // table leaf
    page[3..5].copy_from_slice(&(cells.len() as u16).to_be_bytes());
    let mut end = PAGE;
    for (i, c) in cells.iter().enumerate() {
        end -= c.len();
        page[end..end + c.len()].copy_from_slice(c);
        page[8 + 2 * i..10 + 2 * i].copy_from_slice(&(end as u16).to_be_bytes());
    }
    page[5..7].copy_from_slice(&(end as u16).to_be_bytes());
    page
}

fn random_page(rng: &mut Rng) -> Vec<u8> {
    let mut p = vec![0u8; PAGE];
    for c in p.chunks_mut(8) {
        c.copy_from_slice(&rng.next().to_le_bytes());
    }
    p
}

/// Nanoseconds this thread has spent on a CPU (Linux `schedstat`), so that
/// other processes on a shared machine do not count against the codec.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// What the figures are measured in: thread CPU time where the kernel tells
/// it, else wall-clock time.
fn clock_name() -> &'static str {
    if thread_cpu_ns().is_some() {
        "thread CPU time"
    } else {
        "wall-clock time"
    }
}

/// The scheduler updates a running thread's CPU time only every few
/// milliseconds, so each run repeats the work for at least this long.
const MIN_RUN: Duration = Duration::from_millis(250);

/// Best of `runs` by thread CPU time (wall time without schedstat) per call
/// of `f`; each run calls `f` as often as it takes to fill [`MIN_RUN`].
/// Returns that duration and the last result.
fn best_of<T>(runs: usize, mut f: impl FnMut() -> Res<T>) -> Res<(Duration, T)> {
    let mut best: Option<Duration> = None;
    let mut last = None;
    for _ in 0..runs {
        let c0 = thread_cpu_ns();
        let t = Instant::now();
        let mut calls = 0u32;
        let d = loop {
            last = Some(f()?);
            calls += 1;
            let d = match (c0, thread_cpu_ns()) {
                (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
                _ => t.elapsed(),
            };
            if d >= MIN_RUN {
                break d / calls;
            }
        };
        if best.is_none_or(|b| d < b) {
            best = Some(d);
        }
    }
    match (best, last) {
        (Some(d), Some(v)) => Ok((d, v)),
        _ => Err("no runs".into()),
    }
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn encode(pages: &[Vec<u8>], cap: usize) -> Res<Vec<u8>> {
    let ps = PageSize::new(PAGE as u32)?;
    let h = Header::new(ps, pages.len() as u32, Txid(1), Txid(1));
    let mut enc = Encoder::new(Vec::with_capacity(cap), h)?;
    for (i, p) in pages.iter().enumerate() {
        enc.encode_page(i as u32 + 1, p)?;
    }
    let post = enc.pages_checksum();
    let (out, _) = enc.finish(post)?;
    Ok(out)
}

fn bench_set(label: &str, pages: &[Vec<u8>], runs: usize, parts: bool) -> Res<()> {
    let bytes = pages.len() * PAGE;
    let first = encode(pages, 0)?;
    let cap = first.len() + 4096;
    let (enc_t, file) = best_of(runs, || encode(pages, cap))?;
    if file != first {
        return Err("encoder is not deterministic".into());
    }
    let (dec_t, summary) = best_of(runs, || Ok(verify(Cursor::new(&file[..]))?))?;
    if summary.index.entries.len() != pages.len() {
        return Err("decoded page count differs".into());
    }
    println!(
        "{label:<13} encode {:>7.0} MB/s   decode+verify {:>7.0} MB/s   file/pages {:.3} ({:.2}x)   {} pages, {:.1} MiB -> {:.1} MiB",
        mbps(bytes, enc_t),
        mbps(bytes, dec_t),
        file.len() as f64 / bytes as f64,
        bytes as f64 / file.len() as f64,
        pages.len(),
        bytes as f64 / 1048576.0,
        file.len() as f64 / 1048576.0,
    );

    if !parts {
        return Ok(());
    }
    // The parts, on the same pages.
    let (crc_t, _) = best_of(runs, || {
        let mut d = CRC64.digest();
        for p in pages {
            d.update(p);
        }
        Ok(black_box(d.finalize()))
    })?;
    let table = crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_GO_ISO);
    let (table_t, table_sum) = best_of(runs, || {
        let mut d = table.digest();
        for p in pages {
            d.update(p);
        }
        Ok(black_box(d.finalize()))
    })?;
    if table_sum != CRC64.checksum(&pages.concat()) {
        return Err("crc-fast and the crc crate disagree".into());
    }
    let (pc_t, _) = best_of(runs, || {
        let mut x = 0u64;
        for (i, p) in pages.iter().enumerate() {
            x ^= checksum_page(i as u32 + 1, p);
        }
        Ok(black_box(x))
    })?;
    let mut blocks = Vec::with_capacity(pages.len());
    let mut cbuf = vec![0u8; lz4_flex::block::get_maximum_output_size(PAGE)];
    for p in pages {
        let n = lz4_flex::block::compress_into(p, &mut cbuf)?;
        blocks.push(cbuf[..n].to_vec());
    }
    let (lz_c_t, _) = best_of(runs, || {
        let mut total = 0;
        for p in pages {
            total += lz4_flex::block::compress_into(p, &mut cbuf)?;
        }
        Ok(black_box(total))
    })?;
    let mut out = vec![0u8; PAGE];
    let (lz_d_t, _) = best_of(runs, || {
        let mut total = 0;
        for b in &blocks {
            total += lz4_flex::block::decompress_into(b, &mut out)?;
        }
        Ok(black_box(total))
    })?;
    println!(
        "{:<13}   parts: crc64 stream {:>6.0} MB/s (crc slice-by-16 {:>5.0}), checksum_page {:>6.0} MB/s, lz4 compress {:>6.0} MB/s, lz4 decompress {:>6.0} MB/s",
        "",
        mbps(bytes, crc_t),
        mbps(bytes, table_t),
        mbps(bytes, pc_t),
        mbps(bytes, lz_c_t),
        mbps(bytes, lz_d_t),
    );
    Ok(())
}

/// SQLite's `walChecksumBytes` as written (the implementation before the
/// split chains), for comparison.
fn wal_checksum_plain(big_endian: bool, start: (u32, u32), data: &[u8]) -> (u32, u32) {
    let (mut s1, mut s2) = start;
    let mut chunks = data.chunks_exact(8);
    if big_endian {
        for c in &mut chunks {
            s1 = s1
                .wrapping_add(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .wrapping_add(s2);
            s2 = s2
                .wrapping_add(u32::from_be_bytes([c[4], c[5], c[6], c[7]]))
                .wrapping_add(s1);
        }
    } else {
        for c in &mut chunks {
            s1 = s1
                .wrapping_add(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .wrapping_add(s2);
            s2 = s2
                .wrapping_add(u32::from_le_bytes([c[4], c[5], c[6], c[7]]))
                .wrapping_add(s1);
        }
    }
    (s1, s2)
}

type WalSum = fn(bool, (u32, u32), &[u8]) -> (u32, u32);

/// A WAL (little-endian sums) holding `pages` as frames of one transaction.
fn build_wal(pages: &[Vec<u8>]) -> Res<Vec<u8>> {
    let mut h = WalHeader {
        magic: 0x377f_0682,
        version: 3_007_000,
        page_size: PageSize::new(PAGE as u32)?,
        checkpoint_seq: 0,
        salt1: 0x1234_5678,
        salt2: 0x9abc_def0,
        checksum: (0, 0),
    };
    h.checksum = wal_checksum(false, (0, 0), &h.encode()[..24]);
    let mut out = Vec::with_capacity(32 + pages.len() * (PAGE + WAL_FRAME_HEADER_SIZE));
    out.extend_from_slice(&h.encode());
    let mut sum = h.checksum;
    for (i, p) in pages.iter().enumerate() {
        let mut fh = WalFrameHeader {
            pgno: i as u32 + 1,
            commit: if i + 1 == pages.len() {
                i as u32 + 1
            } else {
                0
            },
            salt1: h.salt1,
            salt2: h.salt2,
            checksum: (0, 0),
        };
        sum = wal_checksum(false, wal_checksum(false, sum, &fh.encode()[..8]), p);
        fh.checksum = sum;
        out.extend_from_slice(&fh.encode());
        out.extend_from_slice(p);
    }
    Ok(out)
}

fn bench_wal(pages: &[Vec<u8>], runs: usize) -> Res<()> {
    let hot = &pages[..pages.len().min(64)];
    let hot_bytes = hot.len() * PAGE;
    let mut figures = Vec::new();
    for (name, f) in [
        ("wal_checksum", wal_checksum as WalSum),
        ("plain loop", wal_checksum_plain as WalSum),
    ] {
        for be in [false, true] {
            let (t, s) = best_of(runs, || {
                let mut s = (0, 0);
                for p in hot {
                    s = f(black_box(be), s, p);
                }
                Ok(black_box(s))
            })?;
            let mut want = (0, 0);
            for p in hot {
                want = wal_checksum_plain(be, want, p);
            }
            if s != want {
                return Err(format!("{name} differs from SQLite's loop").into());
            }
            figures.push(mbps(hot_bytes, t));
        }
    }
    let wal = build_wal(pages)?;
    let (scan_t, frames) = best_of(runs, || {
        let mut r = WalReader::new(&wal[..])?;
        let c = scan_committed(&mut r)?.ok_or("no commit in the WAL")?;
        Ok(c.pages.len())
    })?;
    if frames != pages.len() {
        return Err("WAL scan lost frames".into());
    }
    println!(
        "wal checksum  native (LE) {:>6.0} MB/s, big-endian {:>6.0} MB/s (SQLite's plain loop {:>5.0} / {:>5.0}) on {} hot pages; scan_committed {:>6.0} MB/s of frames",
        figures[0], figures[1], figures[2], figures[3], hot.len(),
        mbps(wal.len(), scan_t),
    );
    Ok(())
}

fn env_usize(name: &str, default: usize) -> Res<usize> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse().map_err(|e| format!("{name}={v}: {e}"))?),
        Err(_) => Ok(default),
    }
}

fn main() -> Res<()> {
    let n = env_usize("LTX_BENCH_PAGES", 16384)?;
    let runs = env_usize("LTX_BENCH_RUNS", 5)?.max(1);
    let parts = env_usize("LTX_BENCH_PARTS", 1)? != 0;
    if cfg!(debug_assertions) {
        println!("warning: built with debug assertions; run `cargo bench` for real figures");
    }
    println!(
        "ltx-format codec, single thread, {n} x {PAGE}-byte pages, best of {runs} by {} (MB = 10^6 bytes of page data)",
        clock_name()
    );
    let mut rng = Rng(0x5EED);
    let compressible: Vec<Vec<u8>> = (1..=n as u32)
        .map(|pgno| sqlite_like_page(pgno, &mut rng))
        .collect();
    bench_set("compressible", &compressible, runs, parts)?;
    if parts {
        bench_wal(&compressible, runs)?;
    }
    drop(compressible);
    let random: Vec<Vec<u8>> = (0..n).map(|_| random_page(&mut rng)).collect();
    bench_set("random", &random, runs, parts)?;
    Ok(())
}
