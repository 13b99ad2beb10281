//! Property tests: random files round-trip through encode, decode, verify and
//! apply; compacting any contiguous part of a random chain changes nothing in
//! the database the chain produces.
//!
//! Page contents come from a seeded generator (so that a failing case shrinks
//! to small seeds and page counts rather than to kilobytes of bytes) and mix
//! zero pages, runs of one byte, SQLite-like text rows, random bytes, and pages
//! that are half text and half random.

use std::fs::{File, OpenOptions};
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use ltx_format::index::{read_page, read_page_index};
use ltx_format::{
    checksum_page, compact, format_filename, verify, Applier, Checksum, CompactOptions, DbChecksum,
    Decoder, Encoder, Header, PageSize, Txid, HEADER_FLAG_NO_CHECKSUM,
};
use proptest::prelude::*;

const CASES: u32 = 64;

// ---------------------------------------------------------------------------
// Page contents

/// SplitMix64: small, fast, good enough to fill pages.
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

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// How a page is filled.
#[derive(Debug, Clone, Copy)]
struct PageGen {
    kind: u8,
    seed: u64,
}

const WORDS: &[&str] = &[
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "user@example.com",
    "2024-01-01T00:00:00Z",
    "pending",
    "shipped",
    "NULL",
];

fn text_rows(rng: &mut Rng, out: &mut [u8]) {
    let mut pos = 0;
    let mut row = rng.below(1 << 20);
    while pos < out.len() {
        let line = format!(
            "{row:08}|{}|{}|{}\n",
            WORDS[rng.below(WORDS.len() as u64) as usize],
            WORDS[rng.below(WORDS.len() as u64) as usize],
            rng.below(100_000)
        );
        let n = line.len().min(out.len() - pos);
        out[pos..pos + n].copy_from_slice(&line.as_bytes()[..n]);
        pos += n;
        row += 1;
    }
}

impl PageGen {
    fn make(self, page_size: usize) -> Vec<u8> {
        let mut rng = Rng(self.seed);
        let mut p = vec![0u8; page_size];
        match self.kind % 5 {
            0 => {}
            1 => p.fill(rng.next() as u8),
            2 => text_rows(&mut rng, &mut p),
            3 => rng.fill(&mut p),
            _ => {
                let cut = rng.below(page_size as u64) as usize;
                text_rows(&mut rng, &mut p[..cut]);
                rng.fill(&mut p[cut..]);
            }
        }
        p
    }
}

fn page_gen() -> impl Strategy<Value = PageGen> {
    (0u8..5, any::<u64>()).prop_map(|(kind, seed)| PageGen { kind, seed })
}

fn page_size() -> impl Strategy<Value = PageSize> {
    (9u32..=12).prop_map(|e| PageSize::new(1 << e).expect("power of two in range"))
}

// ---------------------------------------------------------------------------
// A model database: pages 1..=len, in memory.

fn db_checksum(pages: &[Vec<u8>]) -> Checksum {
    let mut s = DbChecksum::new();
    for (i, p) in pages.iter().enumerate() {
        s.toggle(checksum_page(i as u32 + 1, p));
    }
    s.value()
}

/// Applies a file's pages to the model: overwrite, then truncate or extend
/// with zero pages to `commit`, as `Applier` does to a file.
fn model_apply(db: &mut Vec<Vec<u8>>, ps: usize, commit: u32, pages: &[(u32, Vec<u8>)]) {
    for (pgno, data) in pages {
        let i = *pgno as usize - 1;
        if db.len() <= i {
            db.resize(i + 1, vec![0u8; ps]);
        }
        db[i] = data.clone();
    }
    db.resize(commit as usize, vec![0u8; ps]);
}

fn flat(db: &[Vec<u8>]) -> Vec<u8> {
    db.concat()
}

// ---------------------------------------------------------------------------
// Files

#[derive(Debug, Clone)]
struct LtxFile {
    header: Header,
    post_apply: Checksum,
    pages: Vec<(u32, Vec<u8>)>,
}

impl LtxFile {
    fn encode(&self) -> Vec<u8> {
        let mut enc = Encoder::new(Vec::new(), self.header).expect("valid header");
        for (pgno, data) in &self.pages {
            enc.encode_page(*pgno, data).expect("page accepted");
        }
        if self.header.is_snapshot() && !self.header.no_checksum() {
            assert_eq!(
                enc.pages_checksum(),
                self.post_apply,
                "snapshot checksum model"
            );
        }
        let (bytes, trailer) = enc.finish(self.post_apply).expect("file finishes");
        assert_eq!(trailer.post_apply_checksum, self.post_apply);
        bytes
    }
}

/// Decodes every page with the streaming decoder.
fn decode_all(bytes: &[u8]) -> (Header, Checksum, Vec<(u32, Vec<u8>)>) {
    let mut dec = Decoder::new(Cursor::new(bytes)).expect("header decodes");
    let h = *dec.header();
    let mut page = vec![0u8; h.page_size.as_usize()];
    let mut pages = Vec::new();
    while let Some(pgno) = dec.next_page(&mut page).expect("page decodes") {
        pages.push((pgno, page.clone()));
    }
    let post = dec
        .trailer()
        .expect("trailer after the end")
        .post_apply_checksum;
    (h, post, pages)
}

fn write_ltx(dir: &Path, bytes: &[u8], h: &Header) -> PathBuf {
    let p = dir.join(format_filename(h.min_txid, h.max_txid));
    std::fs::write(&p, bytes).expect("write ltx");
    p
}

fn open_db(path: &Path, content: &[u8]) -> File {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("open db");
    f.write_all(content).expect("write db");
    f
}

fn read_db(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(path)
        .expect("open db")
        .read_to_end(&mut v)
        .expect("read db");
    v
}

// ---------------------------------------------------------------------------
// Round trip

#[derive(Debug, Clone)]
struct RoundTrip {
    ps: PageSize,
    commit: u32,
    snapshot: bool,
    tracked: bool,
    min_txid: u64,
    span: u64,
    timestamp: i64,
    wal: Option<(i64, i64, u32, u32)>,
    /// Per page 1..=commit: stored in an incremental? and its content.
    pages: Vec<(bool, PageGen)>,
    /// The database before an incremental is applied.
    base: Vec<PageGen>,
    /// Byte to flip in the corruption check: (position seed, xor mask).
    flip: (u64, u8),
}

fn round_trip_case() -> impl Strategy<Value = RoundTrip> {
    (
        page_size(),
        0u32..=24,
        any::<bool>(),
        any::<bool>(),
        2u64..1_000_000,
        0u64..4,
        any::<i64>(),
        proptest::option::of((1i64..1 << 40, 0i64..1 << 40, any::<u32>(), any::<u32>())),
        proptest::collection::vec((any::<bool>(), page_gen()), 24),
        proptest::collection::vec(page_gen(), 0..24),
        (any::<u64>(), 1u8..=255),
    )
        .prop_map(
            |(ps, commit, snapshot, tracked, min_txid, span, timestamp, wal, pages, base, flip)| {
                RoundTrip {
                    ps,
                    commit,
                    snapshot,
                    tracked,
                    min_txid,
                    span,
                    timestamp,
                    wal,
                    pages,
                    base,
                    flip,
                }
            },
        )
}

fn run_round_trip(c: &RoundTrip) {
    let ps = c.ps.as_usize();
    let base: Vec<Vec<u8>> = c.base.iter().map(|g| g.make(ps)).collect();
    let pages: Vec<(u32, Vec<u8>)> = c.pages[..c.commit as usize]
        .iter()
        .enumerate()
        .filter(|(_, (stored, _))| c.snapshot || *stored)
        .map(|(i, (_, g))| (i as u32 + 1, g.make(ps)))
        .collect();

    let mut expect = if c.snapshot { Vec::new() } else { base.clone() };
    model_apply(&mut expect, ps, c.commit, &pages);

    let min = if c.snapshot { 1 } else { c.min_txid };
    let mut h = Header::new(c.ps, c.commit, Txid(min), Txid(min + c.span));
    h.timestamp_ms = c.timestamp;
    if let Some((off, size, s1, s2)) = c.wal {
        h.wal_offset = off;
        h.wal_size = size;
        h.wal_salt1 = s1;
        h.wal_salt2 = s2;
    }
    let post = if c.tracked {
        if !c.snapshot {
            h.pre_apply_checksum = db_checksum(&base);
        }
        db_checksum(&expect)
    } else {
        h.flags = HEADER_FLAG_NO_CHECKSUM;
        Checksum::ZERO
    };
    let file = LtxFile {
        header: h,
        post_apply: post,
        pages: pages.clone(),
    };
    let bytes = file.encode();

    // Decode: header, pages, trailer as written.
    let summary = verify(Cursor::new(&bytes)).expect("encoded file verifies");
    assert_eq!(summary.header, h);
    assert_eq!(summary.trailer.post_apply_checksum, post);
    assert_eq!(summary.size, bytes.len() as u64);
    assert_eq!(summary.index.entries.len(), pages.len());
    let (dh, dpost, dpages) = decode_all(&bytes);
    assert_eq!(dh, h);
    assert_eq!(dpost, post);
    assert!(dpages == pages, "decoded pages differ from encoded pages");

    // Random access through the page index gives the same pages.
    let mut cur = Cursor::new(&bytes);
    let (ih, index) = read_page_index(&mut cur).expect("index reads");
    assert_eq!(ih, h);
    assert_eq!(index, summary.index);
    let mut buf = vec![0u8; ps];
    for (e, (pgno, data)) in index.entries.iter().zip(&pages) {
        assert_eq!(e.pgno, *pgno);
        read_page(&mut cur, &h, e, &mut buf).expect("indexed page reads");
        assert!(buf == *data, "page {pgno} read through the index differs");
    }

    // Apply onto the base database (a snapshot replaces whatever is there).
    let dir = tempfile::tempdir().expect("tempdir");
    let ltx = write_ltx(dir.path(), &bytes, &h);
    let db_path = dir.path().join("db");
    let db = open_db(&db_path, &flat(&base));
    let prev = if c.snapshot {
        None
    } else {
        Some(Txid(min - 1))
    };
    let mut a = Applier::new(db, prev);
    let applied = a.apply_path(&ltx).expect("file applies");
    assert_eq!(applied.checksum, db_checksum(&expect));
    assert_eq!(a.position(), Some(Txid(min + c.span)));
    a.finish().expect("db syncs");
    assert!(
        read_db(&db_path) == flat(&expect),
        "applied database differs from the model"
    );

    // One flipped byte: either rejected, or (LZ4 matches are not unique) the
    // same content exactly. Never different content that verifies.
    let mut bad = bytes.clone();
    let at = (c.flip.0 % bad.len() as u64) as usize;
    bad[at] ^= c.flip.1;
    if let Ok(s) = verify(Cursor::new(&bad)) {
        assert_eq!(
            s.header, h,
            "flipped byte {at} changed the header undetected"
        );
        let (_, bpost, bpages) = decode_all(&bad);
        assert_eq!(bpost, post);
        assert!(
            bpages == pages,
            "flipped byte {at} changed a page undetected"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn encode_decode_apply_round_trip(c in round_trip_case()) {
        run_round_trip(&c);
    }
}

// ---------------------------------------------------------------------------
// Compaction equals application

#[derive(Debug, Clone)]
struct Step {
    commit: u32,
    /// Page numbers 1..=commit to store (pages past the previous commit are
    /// stored regardless: SQLite writes every page it allocates).
    store: Vec<bool>,
    gens: Vec<PageGen>,
    span: u64,
}

#[derive(Debug, Clone)]
struct ChainCase {
    ps: PageSize,
    tracked: bool,
    steps: Vec<Step>,
    /// Picks the compacted range [first, last] from the chain's length.
    range: (usize, usize),
    /// The range starts at the snapshot (else anywhere).
    from_snapshot: bool,
}

const MAX_COMMIT: u32 = 20;

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![1 => Just(0u32), 12 => 1u32..=MAX_COMMIT],
        proptest::collection::vec(proptest::bool::weighted(0.3), MAX_COMMIT as usize),
        proptest::collection::vec(page_gen(), MAX_COMMIT as usize),
        0u64..3,
    )
        .prop_map(|(commit, store, gens, span)| Step {
            commit,
            store,
            gens,
            span,
        })
}

fn chain_case() -> impl Strategy<Value = ChainCase> {
    (
        page_size(),
        any::<bool>(),
        proptest::collection::vec(step(), 2..=7),
        (any::<usize>(), any::<usize>()),
        any::<bool>(),
    )
        .prop_map(|(ps, tracked, mut steps, range, from_snapshot)| {
            // The first file is a snapshot: it stores every page and never
            // deletes the database.
            steps[0].commit = steps[0].commit.max(1);
            ChainCase {
                ps,
                tracked,
                steps,
                range,
                from_snapshot,
            }
        })
}

/// Builds the chain's files; returns them with the model database after each.
fn build_chain(c: &ChainCase) -> (Vec<LtxFile>, Vec<Vec<Vec<u8>>>) {
    let ps = c.ps.as_usize();
    let mut db: Vec<Vec<u8>> = Vec::new();
    let mut files = Vec::new();
    let mut states = Vec::new();
    let mut next_txid = 1u64;
    for (k, s) in c.steps.iter().enumerate() {
        let snapshot = k == 0;
        let prev_commit = db.len() as u32;
        let pages: Vec<(u32, Vec<u8>)> = (1..=s.commit)
            .filter(|&p| snapshot || p > prev_commit || s.store[p as usize - 1])
            .map(|p| (p, s.gens[p as usize - 1].make(ps)))
            .collect();
        let min = next_txid;
        let max = min + s.span;
        next_txid = max + 1;
        let mut h = Header::new(c.ps, s.commit, Txid(min), Txid(max));
        h.timestamp_ms = 1_700_000_000_000 + k as i64;
        let before = db_checksum(&db);
        model_apply(&mut db, ps, s.commit, &pages);
        let post = if c.tracked {
            if !snapshot {
                h.pre_apply_checksum = before;
            }
            db_checksum(&db)
        } else {
            h.flags = HEADER_FLAG_NO_CHECKSUM;
            Checksum::ZERO
        };
        files.push(LtxFile {
            header: h,
            post_apply: post,
            pages,
        });
        states.push(db.clone());
    }
    (files, states)
}

/// Applies `files` in order to a fresh database; returns its bytes.
fn apply_chain(dir: &Path, name: &str, files: &[(Header, Vec<u8>)]) -> Vec<u8> {
    let sub = dir.join(name);
    std::fs::create_dir(&sub).expect("mkdir");
    let db_path = sub.join("db");
    let mut a = Applier::new(open_db(&db_path, &[]), None);
    for (h, bytes) in files {
        let p = write_ltx(&sub, bytes, h);
        a.apply_path(&p)
            .unwrap_or_else(|e| panic!("{name}: applying {}: {e}", p.display()));
    }
    a.finish().expect("db syncs");
    read_db(&db_path)
}

fn run_chain(c: &ChainCase) {
    let (files, states) = build_chain(c);
    let n = files.len();
    let encoded: Vec<(Header, Vec<u8>)> = files.iter().map(|f| (f.header, f.encode())).collect();
    let dir = tempfile::tempdir().expect("tempdir");

    let whole = apply_chain(dir.path(), "whole", &encoded);
    assert!(
        whole == flat(&states[n - 1]),
        "whole chain differs from the model"
    );

    let first = if c.from_snapshot { 0 } else { c.range.0 % n };
    let last = first + c.range.1 % (n - first);
    let inputs = &encoded[first..=last];

    for no_checksum in [false, true] {
        let opts = CompactOptions {
            no_checksum,
            allow_non_contiguous: false,
            snapshot: false,
        };
        let readers: Vec<Cursor<&[u8]>> = inputs.iter().map(|(_, b)| Cursor::new(&b[..])).collect();
        let res = compact(readers, Vec::new(), opts);
        if !no_checksum && !c.tracked {
            let e = res.expect_err("tracked compaction of NoChecksum inputs must fail");
            assert!(e.to_string().contains("NoChecksum"), "{e}");
            continue;
        }
        let (out, h, trailer) = res.expect("compaction succeeds");

        // The output's identity, as Go's compactor sets it.
        let (fh, lh) = (&files[first].header, &files[last].header);
        assert_eq!(h.min_txid, fh.min_txid);
        assert_eq!(h.max_txid, lh.max_txid);
        assert_eq!(h.commit, lh.commit);
        assert_eq!(h.timestamp_ms, lh.timestamp_ms);
        assert_eq!(h.no_checksum(), no_checksum);
        if no_checksum {
            assert_eq!(h.pre_apply_checksum, Checksum::ZERO);
            assert_eq!(trailer.post_apply_checksum, Checksum::ZERO);
        } else {
            assert_eq!(h.pre_apply_checksum, fh.pre_apply_checksum);
            assert_eq!(trailer.post_apply_checksum, files[last].post_apply);
            assert_eq!(trailer.post_apply_checksum, db_checksum(&states[last]));
        }

        // Its pages: for each page up to the last commit, the latest copy in
        // the range.
        let mut want: Vec<Option<&Vec<u8>>> = vec![None; lh.commit as usize];
        for f in &files[first..=last] {
            for (pgno, data) in &f.pages {
                if *pgno <= lh.commit {
                    want[*pgno as usize - 1] = Some(data);
                }
            }
        }
        let want: Vec<(u32, Vec<u8>)> = want
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (i as u32 + 1, d.clone())))
            .collect();
        let s = verify(Cursor::new(&out)).expect("compacted file verifies");
        assert_eq!(s.header, h);
        let (_, _, got) = decode_all(&out);
        assert!(got == want, "compacted pages differ from the latest copies");

        // Applying prefix + compacted + suffix gives the same database.
        let mut chain: Vec<(Header, Vec<u8>)> = encoded[..first].to_vec();
        chain.push((h, out));
        chain.extend_from_slice(&encoded[last + 1..]);
        let name = format!("compacted-{first}-{last}-{no_checksum}");
        let got = apply_chain(dir.path(), &name, &chain);
        assert!(
            got == whole,
            "{name}: database after the compacted chain differs from the whole chain ({} vs {} bytes)",
            got.len(),
            whole.len()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn compacting_a_contiguous_range_equals_applying_it(c in chain_case()) {
        run_chain(&c);
    }
}

/// The page-filling generator covers what the tests claim: text pages
/// compress, random pages do not.
#[test]
fn page_generator_mixes_compressible_and_random() {
    let ratio = |kind| {
        let p = PageGen { kind, seed: 7 }.make(4096);
        let mut enc = Encoder::new(
            Vec::new(),
            Header::new(PageSize::new(4096).expect("page size"), 1, Txid(1), Txid(1)),
        )
        .expect("encoder");
        enc.encode_page(1, &p).expect("page");
        let post = enc.pages_checksum();
        let (bytes, _) = enc.finish(post).expect("finish");
        bytes.len() as f64 / 4096.0
    };
    assert!(ratio(0) < 0.1);
    assert!(ratio(2) < 0.6, "text rows compress: {}", ratio(2));
    assert!(ratio(3) > 1.0, "random bytes do not compress: {}", ratio(3));
}
