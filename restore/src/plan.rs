//! Restore planning: a pure function from a replica listing and a target to
//! the chain of files to apply.
//!
//! Positions are TXIDs; position 0 is the empty database. A snapshot (a file
//! starting at TXID 1) moves from anywhere to its MaxTXID. Any other file
//! `min-max` applies at a position `p` with `min <= p + 1 && max > p`
//! (overlap allowed, gaps refused) and moves to `max`. The plan is:
//!
//! 1. the newest snapshot at or before the target (a newer snapshot reaches
//!    every TXID an older one reaches: the first file of a chain that passes
//!    the newer snapshot's TXID also applies right after it);
//! 2. from there, the chain that reaches the target exactly with the fewest
//!    files, then the fewest bytes: larger compacted files are preferred, and
//!    a missing compacted file is routed around through other levels.
//!
//! Files only move forward, so this is a shortest path in a DAG, computed in
//! one pass over the files in MaxTXID order.

use std::collections::{BTreeMap, BTreeSet};

use ltx_format::Txid;

pub use s3_backend::catalogue::FileInfo;

/// What to restore to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The newest TXID in the replica.
    Latest,
    /// Exactly this TXID.
    Txid(Txid),
}

/// The files to apply, in order, to reach `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub target: Txid,
    /// A snapshot first, then incremental files in TXID order.
    pub files: Vec<FileInfo>,
    /// The file whose header time is the commit time of `target`: the
    /// lowest-level file ending at `target` (a compaction takes the time of
    /// its last transaction; an L9 snapshot's time is when it was taken).
    pub time_file: Option<FileInfo>,
}

impl Plan {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

fn missing_phrase(a: u64, b: u64) -> String {
    if a == b {
        format!("TXID {} is missing", Txid(a))
    } else {
        format!("TXIDs {}-{} are missing", Txid(a), Txid(b))
    }
}

/// Why no plan exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the replica holds no LTX files")]
    Empty,
    #[error("the replica holds no snapshot (no file starting at TXID 1), so nothing can be restored; it holds files up to TXID {last}")]
    NoSnapshot { last: Txid },
    #[error("{}", out_of_range(*target, *first, *last))]
    OutOfRange {
        target: Txid,
        first: Txid,
        last: Txid,
    },
    #[error(
        "gap in the replica: {}; the chain from snapshot {snapshot} reaches TXID {reached} and cannot continue to TXID {target}",
        missing_phrase(missing.0.0, missing.1.0)
    )]
    Gap {
        target: Txid,
        snapshot: String,
        reached: Txid,
        /// First and last missing TXID.
        missing: (Txid, Txid),
    },
    #[error("TXID {target} cannot be restored exactly: it lies inside {file} and no finer-grained file covers it; the nearest restorable TXIDs are {}", nearest(*below, *above))]
    NotAligned {
        target: Txid,
        file: String,
        below: Option<Txid>,
        above: Option<Txid>,
    },
    #[error("timestamp {} is before the first restorable commit (TXID {first_txid} at {}); the replica cannot restore that far back", crate::time::format_ms(*time_ms), crate::time::format_ms(*first_ms))]
    TimeBeforeFirst {
        time_ms: i64,
        first_txid: Txid,
        first_ms: i64,
    },
}

fn out_of_range(target: Txid, first: Txid, last: Txid) -> String {
    let have = format!("the replica can restore TXIDs {first}-{last}");
    if target.0 == 0 {
        format!("TXID 0 does not exist (TXIDs start at 1); {have}")
    } else if target > last {
        format!("TXID {target} is after the last TXID in the replica; {have}")
    } else {
        format!(
            "TXID {target} is before the first restorable TXID (older snapshots are gone); {have}"
        )
    }
}

fn nearest(below: Option<Txid>, above: Option<Txid>) -> String {
    match (below, above) {
        (Some(b), Some(a)) => format!("{b} and {a}"),
        (Some(b), None) => b.to_string(),
        (None, Some(a)) => a.to_string(),
        (None, None) => "none".into(),
    }
}

/// Cost of a path: files, then bytes.
type Cost = (usize, u64);

#[derive(Debug, Clone, Copy)]
struct Node {
    cost: Cost,
    /// (previous position, index of the file that led here); `None` at the start.
    via: Option<(u64, usize)>,
}

/// The snapshot to start from for each snapshot MaxTXID: the smallest file,
/// then the lowest level.
fn snapshots_by_max(files: &[FileInfo]) -> BTreeMap<u64, usize> {
    let mut out: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        if !f.is_snapshot() {
            continue;
        }
        out.entry(f.max.0)
            .and_modify(|j| {
                let g = &files[*j];
                if (f.size, f.level, &f.key) < (g.size, g.level, &g.key) {
                    *j = i;
                }
            })
            .or_insert(i);
    }
    out
}

/// Non-snapshot files in the order the DAG pass needs: MaxTXID ascending,
/// then higher levels first (larger files are tried first; ties keep them).
fn edges_in_order(files: &[FileInfo]) -> Vec<usize> {
    let mut e: Vec<usize> = (0..files.len())
        .filter(|&i| !files[i].is_snapshot() && files[i].min <= files[i].max)
        .collect();
    e.sort_by(|&a, &b| {
        let (fa, fb) = (&files[a], &files[b]);
        (fa.max, std::cmp::Reverse(fa.level), fa.min, &fa.key).cmp(&(
            fb.max,
            std::cmp::Reverse(fb.level),
            fb.min,
            &fb.key,
        ))
    });
    e
}

/// Shortest paths from `start` to every position up to `limit`.
fn reach_from(
    files: &[FileInfo],
    edges: &[usize],
    start: u64,
    start_cost: Cost,
    limit: u64,
) -> BTreeMap<u64, Node> {
    let mut reach = BTreeMap::new();
    reach.insert(
        start,
        Node {
            cost: start_cost,
            via: None,
        },
    );
    for &i in edges {
        let f = &files[i];
        if f.max.0 > limit {
            break;
        }
        if f.max.0 <= start {
            continue;
        }
        let lo = f.min.0.saturating_sub(1).max(start);
        let hi = f.max.0 - 1;
        let mut best: Option<(Cost, u64)> = None;
        for (&p, n) in reach.range(lo..=hi) {
            let c = (n.cost.0 + 1, n.cost.1 + f.size);
            // Equal cost: prefer the later position (less overlap).
            if best.is_none_or(|(bc, _)| c <= bc) {
                best = Some((c, p));
            }
        }
        if let Some((c, p)) = best {
            let better = reach.get(&f.max.0).is_none_or(|n| c < n.cost);
            if better {
                reach.insert(
                    f.max.0,
                    Node {
                        cost: c,
                        via: Some((p, i)),
                    },
                );
            }
        }
    }
    reach
}

/// The incremental files (no snapshots) that take a database at TXID `from`
/// as far forward as any chain in `files` goes, the fewest files first, then
/// the fewest bytes; empty when no file continues `from`. A replica that
/// follows a bucket fast-forwards along it.
pub fn chain_from(files: &[FileInfo], from: Txid) -> Vec<FileInfo> {
    let edges = edges_in_order(files);
    let reach = reach_from(files, &edges, from.0, (0, 0), u64::MAX);
    let Some((_, node)) = reach.iter().next_back() else {
        return Vec::new();
    };
    let mut chain = Vec::with_capacity(node.cost.0);
    let mut cur = *node;
    while let Some((prev, i)) = cur.via {
        chain.push(files[i].clone());
        cur = reach[&prev];
    }
    chain.reverse();
    chain
}

/// Every TXID some chain can restore exactly, from any snapshot.
pub fn restorable_txids(files: &[FileInfo]) -> BTreeSet<u64> {
    let mut reach: BTreeSet<u64> = snapshots_by_max(files).keys().copied().collect();
    for i in edges_in_order(files) {
        let f = &files[i];
        let lo = f.min.0.saturating_sub(1);
        if reach.range(lo..f.max.0).next().is_some() {
            reach.insert(f.max.0);
        }
    }
    reach
}

/// The file whose header carries the commit time of `txid`: the
/// lowest-level file ending there, L9 snapshots last, then the smallest.
pub fn time_file(files: &[FileInfo], txid: Txid) -> Option<&FileInfo> {
    files
        .iter()
        .filter(|f| f.max == txid)
        .min_by_key(|f| (f.level == 9, f.level, f.size, &f.key))
}

/// Plans the restore of `target` from `files` (a whole replica listing, any
/// order, any levels).
pub fn plan(files: &[FileInfo], target: Target) -> Result<Plan, PlanError> {
    let last = files.iter().map(|f| f.max).max().ok_or(PlanError::Empty)?;
    let snaps = snapshots_by_max(files);
    let first = match snaps.keys().next() {
        Some(&m) => Txid(m),
        None => return Err(PlanError::NoSnapshot { last }),
    };
    let t = match target {
        Target::Latest => last,
        Target::Txid(t) => t,
    };
    if t.0 == 0 || t > last || t < first {
        return Err(PlanError::OutOfRange {
            target: t,
            first,
            last,
        });
    }
    let edges = edges_in_order(files);
    let mut newest_failure: Option<(usize, BTreeMap<u64, Node>)> = None;
    for (&smax, &si) in snaps.range(..=t.0).rev() {
        let reach = reach_from(files, &edges, smax, (1, files[si].size), t.0);
        if let Some(node) = reach.get(&t.0) {
            let mut chain = Vec::with_capacity(node.cost.0);
            let mut cur = *node;
            while let Some((prev, i)) = cur.via {
                chain.push(files[i].clone());
                cur = reach[&prev];
            }
            chain.push(files[si].clone());
            chain.reverse();
            return Ok(Plan {
                target: t,
                files: chain,
                time_file: time_file(files, t).cloned(),
            });
        }
        if newest_failure.is_none() {
            newest_failure = Some((si, reach));
        }
    }
    // The newest snapshot explains the failure.
    let Some((si, reach)) = newest_failure else {
        return Err(PlanError::OutOfRange {
            target: t,
            first,
            last,
        });
    };
    let reached = reach.keys().next_back().copied().unwrap_or(files[si].max.0);
    let straddling = files
        .iter()
        .filter(|f| !f.is_snapshot() && f.min.0 <= reached + 1 && f.max.0 > t.0)
        .min_by_key(|f| (f.max, f.level));
    if let Some(f) = straddling {
        let all = restorable_txids(files);
        return Err(PlanError::NotAligned {
            target: t,
            file: format!("{f} ({})", f.key),
            below: all.range(..t.0).next_back().map(|&x| Txid(x)),
            above: all.range(t.0 + 1..).next().map(|&x| Txid(x)),
        });
    }
    let next_min = files
        .iter()
        .filter(|f| f.min.0 > reached + 1 && f.max.0 > reached)
        .map(|f| f.min.0)
        .min()
        .unwrap_or(t.0 + 1);
    Err(PlanError::Gap {
        target: t,
        snapshot: format!("{} ({})", files[si], files[si].key),
        reached: Txid(reached),
        missing: (Txid(reached + 1), Txid(next_min - 1)),
    })
}

/// Finds the last commit at or before a time by binary search over the
/// restorable TXIDs, reading one header time per probe. Commit times are
/// assumed to grow with TXIDs (they come from one writer's clock).
///
/// Drive it with [`TimeSearch::probe`] / [`TimeSearch::record`] until
/// `probe` returns `None`, then call [`TimeSearch::finish`].
#[derive(Debug)]
pub struct TimeSearch {
    cands: Vec<(Txid, FileInfo)>,
    t: i64,
    lo: usize,
    hi: usize,
    best: Option<(usize, i64)>,
    first_ms: Option<i64>,
}

impl TimeSearch {
    pub fn new(files: &[FileInfo], time_ms: i64) -> Result<Self, PlanError> {
        if files.is_empty() {
            return Err(PlanError::Empty);
        }
        let cands: Vec<(Txid, FileInfo)> = restorable_txids(files)
            .into_iter()
            .filter_map(|x| time_file(files, Txid(x)).map(|f| (Txid(x), f.clone())))
            .collect();
        if cands.is_empty() {
            let last = files.iter().map(|f| f.max).max().unwrap_or_default();
            return Err(PlanError::NoSnapshot { last });
        }
        let hi = cands.len();
        Ok(TimeSearch {
            cands,
            t: time_ms,
            lo: 0,
            hi,
            best: None,
            first_ms: None,
        })
    }

    fn mid(&self) -> usize {
        self.lo + (self.hi - self.lo) / 2
    }

    /// The file whose header time is needed next.
    pub fn probe(&self) -> Option<&FileInfo> {
        (self.lo < self.hi).then(|| &self.cands[self.mid()].1)
    }

    /// The header time of the file `probe` returned.
    pub fn record(&mut self, time_ms: i64) {
        let mid = self.mid();
        if mid == 0 {
            self.first_ms = Some(time_ms);
        }
        if time_ms <= self.t {
            self.best = Some((mid, time_ms));
            self.lo = mid + 1;
        } else {
            self.hi = mid;
        }
    }

    /// The TXID found and its commit time.
    pub fn finish(self) -> Result<(Txid, i64), PlanError> {
        match self.best {
            Some((i, ms)) => Ok((self.cands[i].0, ms)),
            None => Err(PlanError::TimeBeforeFirst {
                time_ms: self.t,
                first_txid: self.cands[0].0,
                first_ms: self.first_ms.unwrap_or(i64::MIN),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `"L:min-max:size"` entries separated by spaces; TXIDs in hex.
    fn listing(s: &str) -> Vec<FileInfo> {
        let layout = s3_backend::Layout::new(s3_backend::LayoutKind::File, "");
        s.split_whitespace()
            .map(|e| {
                let mut it = e.split(':');
                let level: u8 = it.next().unwrap().parse().unwrap();
                let (a, b) = it.next().unwrap().split_once('-').unwrap();
                let size: u64 = it.next().map_or(100, |x| x.parse().unwrap());
                let min = Txid(u64::from_str_radix(a, 16).unwrap());
                let max = Txid(u64::from_str_radix(b, 16).unwrap());
                FileInfo {
                    level,
                    min,
                    max,
                    size,
                    key: layout.ltx_key(level, min, max),
                    in_bundle: None,
                    last_modified: None,
                }
            })
            .collect()
    }

    fn show(p: &Plan) -> String {
        p.files
            .iter()
            .map(|f| format!("{}:{:x}-{:x}", f.level, f.min.0, f.max.0))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The vector replica's listing (`shared/ltx-vectors/litestream`), with sizes.
    const VECTORS: &str =
        "0:1-1:679 0:2-2:499 0:3-3:791 0:4-4:1083 0:5-5:1389 0:6-6:2143 0:7-7:502 \
        0:8-8:804 0:9-9:1103 0:a-a:1417 0:b-b:2191 0:c-c:3911 0:d-d:18716 0:e-e:1193 0:f-f:12475 \
        0:10-10:6005 0:11-11:596 0:12-12:687 0:13-13:779 0:14-14:3881 \
        1:1-1:679 1:2-4:1083 1:5-b:3755 1:c-11:6102 1:12-14:3881 \
        2:1-1:679 2:2-11:6102 2:12-14:3881 \
        9:1-1:679 9:1-11:6102 9:1-14:6165";

    #[test]
    fn chains_forward_from_a_position() {
        let names = |c: &[FileInfo]| {
            c.iter()
                .map(|f| format!("{}:{:x}-{:x}", f.level, f.min.0, f.max.0))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let files = listing(VECTORS);
        // Fewest files to the newest TXID; snapshots are never steps.
        // Equal cost (files, bytes): the higher level is taken.
        assert_eq!(names(&chain_from(&files, Txid(0xd))), "2:2-11 2:12-14");
        assert_eq!(names(&chain_from(&files, Txid(0x11))), "2:12-14");
        assert_eq!(names(&chain_from(&files, Txid(0x14))), "");
        // A gap: L0 files after 5 are gone and no compaction covers 6-7.
        let gap = listing("0:3-3 0:4-4 0:5-5 0:8-8 0:9-9");
        assert_eq!(names(&chain_from(&gap, Txid(3))), "0:4-4 0:5-5");
        assert_eq!(names(&chain_from(&gap, Txid(6))), "");
        // Overlap is allowed: an L1 file starting before the position.
        let over = listing("1:2-8 0:9-9");
        assert_eq!(names(&chain_from(&over, Txid(5))), "1:2-8 0:9-9");
    }

    #[test]
    fn plans_from_a_table() {
        // (listing, target, expected plan or error fragment)
        let cases: &[(&str, Target, Result<&str, &str>)] = &[
            // The vectors: newest snapshot, then fewest files.
            (VECTORS, Target::Latest, Ok("9:1-14")),
            (VECTORS, Target::Txid(Txid(0x14)), Ok("9:1-14")),
            (VECTORS, Target::Txid(Txid(0x13)), Ok("9:1-11 0:12-12 0:13-13")),
            (VECTORS, Target::Txid(Txid(0x11)), Ok("9:1-11")),
            (VECTORS, Target::Txid(Txid(0x10)), Ok("0:1-1 1:2-4 1:5-b 0:c-c 0:d-d 0:e-e 0:f-f 0:10-10")),
            (VECTORS, Target::Txid(Txid(0x1)), Ok("0:1-1")),
            (VECTORS, Target::Txid(Txid(0x4)), Ok("0:1-1 1:2-4")),
            (VECTORS, Target::Txid(Txid(0xb)), Ok("0:1-1 1:2-4 1:5-b")),
            // Without L9: L2 carries it.
            ("0:1-1 1:2-4 1:5-b 1:c-11 2:2-11 1:12-14 0:12-12", Target::Latest, Ok("0:1-1 2:2-11 1:12-14")),
            // A missing compacted file (L2 2-11 gone, L1 5-b gone): routed through L0.
            (
                "0:1-1 0:2-2 0:3-3 0:4-4 0:5-5 0:6-6 1:2-4 2:5-6",
                Target::Txid(Txid(6)),
                Ok("0:1-1 1:2-4 2:5-6"),
            ),
            (
                "0:1-1 0:2-2 0:3-3 0:4-4 0:5-5 0:6-6 1:2-4",
                Target::Txid(Txid(6)),
                Ok("0:1-1 1:2-4 0:5-5 0:6-6"),
            ),
            // Overlap is allowed: snapshot 1-5, then L1 4-8 overlapping it.
            ("9:1-5 1:4-8 0:6-6 0:7-7 0:8-8", Target::Latest, Ok("9:1-5 1:4-8")),
            // Fewer files beat fewer bytes; equal files, fewer bytes win.
            ("9:1-2:50 0:3-3:10 0:4-4:10 1:3-4:500", Target::Latest, Ok("9:1-2 1:3-4")),
            ("9:1-2:50 1:3-4:500 2:3-4:400", Target::Latest, Ok("9:1-2 2:3-4")),
            // Equal snapshots: the smaller file.
            ("0:1-3:900 9:1-3:800", Target::Latest, Ok("9:1-3")),
            // A compaction overlapping the snapshot continues it.
            ("9:1-2 9:1-5 1:3-7", Target::Txid(Txid(7)), Ok("9:1-5 1:3-7")),
            ("9:1-2 9:1-5 0:3-3 0:4-4 0:5-5 0:6-6 1:3-7 0:7-7", Target::Txid(Txid(7)), Ok("9:1-5 1:3-7")),
            // Gaps name the missing TXIDs.
            ("0:1-1 0:2-2 0:5-5 0:6-6", Target::Latest, Err("gap in the replica: TXIDs 0000000000000003-0000000000000004 are missing")),
            ("0:1-1 0:3-3", Target::Latest, Err("TXID 0000000000000002 is missing")),
            ("9:1-3 0:5-5", Target::Txid(Txid(5)), Err("TXID 0000000000000004 is missing; the chain from snapshot L9 0000000000000001-0000000000000003 (ltx/9/")),
            // Out of range states the range that exists.
            (VECTORS, Target::Txid(Txid(0x15)), Err("TXID 0000000000000015 is after the last TXID in the replica; the replica can restore TXIDs 0000000000000001-0000000000000014")),
            (VECTORS, Target::Txid(Txid(0)), Err("TXID 0 does not exist (TXIDs start at 1); the replica can restore TXIDs 0000000000000001-0000000000000014")),
            ("9:1-8 0:9-9", Target::Txid(Txid(3)), Err("TXID 0000000000000003 is before the first restorable TXID (older snapshots are gone); the replica can restore TXIDs 0000000000000008-0000000000000009")),
            // Inside a compaction with no finer file.
            ("0:1-1 1:2-4 0:5-5", Target::Txid(Txid(3)), Err("TXID 0000000000000003 cannot be restored exactly: it lies inside L1 0000000000000002-0000000000000004 (ltx/1/0000000000000002-0000000000000004.ltx) and no finer-grained file covers it; the nearest restorable TXIDs are 0000000000000001 and 0000000000000004")),
            ("", Target::Latest, Err("the replica holds no LTX files")),
            ("0:2-2 0:3-3", Target::Latest, Err("holds no snapshot")),
        ];
        for (i, (l, target, want)) in cases.iter().enumerate() {
            let files = listing(l);
            let got = plan(&files, *target);
            match (want, &got) {
                (Ok(w), Ok(p)) => assert_eq!(&show(p), w, "case {i}: {l} {target:?}"),
                (Err(w), Err(e)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(w), "case {i}: {l} {target:?}: {msg}")
                }
                _ => panic!("case {i}: {l} {target:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn every_vector_txid_is_planned_and_each_plan_is_contiguous() {
        let files = listing(VECTORS);
        for t in 1..=0x14u64 {
            let p = plan(&files, Target::Txid(Txid(t))).unwrap();
            assert!(p.files[0].is_snapshot());
            let mut pos = p.files[0].max;
            for f in &p.files[1..] {
                assert!(
                    ltx_format::is_contiguous(pos, f.min, f.max),
                    "{t:x}: {}",
                    show(&p)
                );
                pos = f.max;
            }
            assert_eq!(pos, Txid(t));
            // The time comes from L0 (one file per TXID exists at every TXID).
            assert_eq!(p.time_file.as_ref().unwrap().level, 0);
        }
        assert_eq!(restorable_txids(&files).len(), 0x14);
    }

    #[test]
    fn plan_is_independent_of_listing_order() {
        let mut files = listing(VECTORS);
        let want = show(&plan(&files, Target::Txid(Txid(0x13))).unwrap());
        files.reverse();
        assert_eq!(show(&plan(&files, Target::Txid(Txid(0x13))).unwrap()), want);
    }

    fn search(
        files: &[FileInfo],
        times: &dyn Fn(&FileInfo) -> i64,
        t: i64,
    ) -> Result<(Txid, i64), PlanError> {
        let mut s = TimeSearch::new(files, t)?;
        let mut probes = 0;
        while let Some(f) = s.probe() {
            let ms = times(f);
            s.record(ms);
            probes += 1;
            assert!(probes <= 64);
        }
        s.finish()
    }

    #[test]
    fn timestamps_pick_the_last_commit_at_or_before() {
        let files = listing(VECTORS);
        // TXID n committed at 1000 * n; L9 snapshots are taken later.
        let times = |f: &FileInfo| {
            if f.level == 9 {
                f.max.0 as i64 * 1000 + 500
            } else {
                f.max.0 as i64 * 1000
            }
        };
        let cases: &[(i64, Result<u64, &str>)] = &[
            (1000, Ok(1)),
            (1999, Ok(1)),
            (2000, Ok(2)),
            (0x10 * 1000 + 999, Ok(0x10)),
            (0x14 * 1000, Ok(0x14)),
            (1_000_000, Ok(0x14)),
            (
                999,
                Err("is before the first restorable commit (TXID 0000000000000001"),
            ),
        ];
        for (t, want) in cases {
            match (want, search(&files, &times, *t)) {
                (Ok(w), Ok((x, ms))) => {
                    assert_eq!(x, Txid(*w), "t={t}");
                    assert_eq!(ms, *w as i64 * 1000);
                }
                (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{e}"),
                (w, g) => panic!("t={t}: want {w:?}, got {g:?}"),
            }
        }
        // Only compacted files: candidates are their end points.
        let files = listing("0:1-1 1:2-4 1:5-8");
        assert_eq!(search(&files, &times, 7000).unwrap().0, Txid(4));
        assert_eq!(search(&files, &times, 8000).unwrap().0, Txid(8));
    }
}
