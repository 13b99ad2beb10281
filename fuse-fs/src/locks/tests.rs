use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

use LockKind::{Read, Write};

fn r(start: u64, end: u64) -> ByteRange {
    ByteRange::new(start, end).expect("valid range")
}

fn lk(owner: u64, range: ByteRange, kind: LockKind) -> Lock {
    Lock {
        owner,
        range,
        kind,
        pid: owner as u32 * 100,
    }
}

fn set(t: &mut LockTable, owner: u64, range: ByteRange, kind: LockKind) -> Result<Vec<Lock>, Lock> {
    t.set(1, owner, range, kind, owner as u32 * 100)
}

#[test]
fn ranges_follow_struct_flock() {
    assert_eq!(ByteRange::with_len(10, 10), Some(r(10, 19)));
    assert_eq!(ByteRange::with_len(50, 0), Some(ByteRange::to_eof(50)));
    assert_eq!(ByteRange::with_len(EOF, 2), None);
    assert_eq!(ByteRange::new(5, 4), None);
    assert_eq!(ByteRange::new(0, EOF + 1), None);
    assert!(r(0, 10).overlaps(r(10, 20)));
    assert!(!r(0, 9).overlaps(r(10, 20)));
    assert_eq!(format!("{:?}", ByteRange::to_eof(3)), "3..=EOF");
    assert_eq!(LockKind::from_fcntl_type(libc::F_UNLCK), None);
    assert_eq!(LockKind::from_fcntl_type(Write.fcntl_type()), Some(Write));
}

#[test]
fn own_locks_merge_and_never_conflict() {
    let mut t = LockTable::new();
    assert_eq!(set(&mut t, 1, r(0, 9), Read), Ok(vec![]));
    assert_eq!(set(&mut t, 1, r(10, 19), Read), Ok(vec![]));
    assert_eq!(t.locks(1), &[lk(1, r(0, 19), Read)]);
    // Upgrading part of its own read lock: the owner never conflicts with itself.
    assert_eq!(
        set(&mut t, 1, r(5, 14), Write),
        Ok(vec![lk(1, r(5, 14), Read)])
    );
    assert_eq!(
        t.locks(1),
        &[
            lk(1, r(0, 4), Read),
            lk(1, r(5, 14), Write),
            lk(1, r(15, 19), Read)
        ]
    );
}

#[test]
fn a_read_lock_over_part_of_a_write_lock_downgrades_that_part() {
    let mut t = LockTable::new();
    set(&mut t, 1, ByteRange::to_eof(0), Write).expect("free");
    assert_eq!(
        set(&mut t, 2, r(120, 120), Read),
        Err(lk(1, ByteRange::to_eof(0), Write))
    );
    assert_eq!(
        set(&mut t, 1, r(100, 200), Read),
        Ok(vec![lk(1, r(100, 200), Write)])
    );
    assert_eq!(
        t.locks(1),
        &[
            lk(1, r(0, 99), Write),
            lk(1, r(100, 200), Read),
            lk(1, ByteRange::to_eof(201), Write)
        ]
    );
    assert_eq!(set(&mut t, 2, r(120, 120), Read), Ok(vec![]));
    assert!(t.holds(1, 1, 120, Read));
    assert!(t.holds(1, 2, 120, Read));
    assert!(!t.holds(1, 1, 120, Write));
    assert_eq!(t.held_kind(1, 1, 99), Some(Write));
}

#[test]
fn unlocking_a_sub_range_splits_and_reports_what_it_released() {
    let mut t = LockTable::new();
    set(&mut t, 1, r(0, 9), Read).expect("free");
    set(&mut t, 1, r(10, 29), Write).expect("free");
    let released = t.unlock(1, 1, r(5, 14));
    assert_eq!(
        released,
        vec![lk(1, r(5, 9), Read), lk(1, r(10, 14), Write)]
    );
    assert_eq!(t.locks(1), &[lk(1, r(0, 4), Read), lk(1, r(15, 29), Write)]);
    assert_eq!(t.unlock(1, 1, r(100, 200)), vec![]);
    assert_eq!(
        t.unlock(1, 2, r(0, 29)),
        vec![],
        "another owner's unlock releases nothing"
    );
    let all = t.release_owner(1, 1);
    assert_eq!(all, vec![lk(1, r(0, 4), Read), lk(1, r(15, 29), Write)]);
    assert!(t.locks(1).is_empty());
}

#[test]
fn preview_matches_unlock() {
    let mut t = LockTable::new();
    set(&mut t, 1, r(0, 9), Write).expect("free");
    set(&mut t, 2, r(20, 29), Read).expect("free");
    let preview = t.preview_unlock(1, 1, r(5, 25));
    assert_eq!(preview, t.unlock(1, 1, r(5, 25)));
    assert_eq!(preview, vec![lk(1, r(5, 9), Write)]);
}

#[test]
fn getlk_reports_the_real_kind_and_prefers_a_write_lock() {
    let mut t = LockTable::new();
    // The SQLite DMS byte: readers hold F_RDLCK on 128; a newcomer asking for
    // F_WRLCK must hear F_RDLCK, never F_WRLCK, or it loops on SQLITE_BUSY.
    set(&mut t, 1, r(128, 128), Read).expect("free");
    set(&mut t, 2, r(128, 128), Read).expect("free");
    assert_eq!(
        t.test(1, 3, r(128, 128), Write),
        Some(lk(1, r(128, 128), Read))
    );
    assert_eq!(t.test(1, 3, r(128, 128), Read), None);
    assert_eq!(
        t.test(1, 1, r(128, 128), Write),
        Some(lk(2, r(128, 128), Read))
    );
    // Own locks are never reported.
    assert_eq!(t.test(1, 1, r(0, 127), Write), None);
    set(&mut t, 3, r(200, 300), Write).expect("free");
    assert_eq!(
        t.test(1, 4, r(0, 400), Write),
        Some(lk(3, r(200, 300), Write))
    );
    assert_eq!(t.test(2, 4, r(0, 400), Write), None, "inodes are separate");
}

#[test]
fn queries_answer_who_holds_what() {
    let mut t = LockTable::new();
    let shared = r(0x10002, 0x10002 + 509);
    set(&mut t, 1, shared, Read).expect("free");
    set(&mut t, 2, r(120, 120), Write).expect("free");
    assert!(t.is_locked(1, shared, Some(Read), None));
    assert!(!t.is_locked(1, shared, Some(Read), Some(1)));
    assert!(!t.is_locked(1, shared, Some(Write), None));
    assert!(t.is_locked(1, r(0, EOF), None, None));
    assert_eq!(t.owners(1), vec![1, 2]);
    assert_eq!(t.overlapping(1, r(100, 130)).count(), 1);
    assert_eq!(t.owner_locks(1, 2), vec![lk(2, r(120, 120), Write)]);
    assert_eq!(t.remove_inode(1).len(), 2);
    assert!(t.owners(1).is_empty());
}

fn req(owner: u64, range: ByteRange, kind: LockKind) -> LockRequest {
    LockRequest {
        ino: 1,
        owner,
        range,
        kind,
        pid: owner as u32,
    }
}

#[test]
fn waiters_are_granted_in_order_when_locks_go() {
    let mut t = LockTable::new();
    let mut q: WaitQueue<&str> = WaitQueue::new();
    let far = Instant::now() + Duration::from_secs(60);
    set(&mut t, 1, r(0, 9), Write).expect("free");
    q.push(req(2, r(0, 0), Write), far, "two");
    q.push(req(3, r(5, 5), Read), far, "three");
    q.push(req(4, r(100, 100), Write), far, "elsewhere");
    assert!(q
        .retry(&mut t, 1)
        .iter()
        .any(|g| g.waiter.reply == "elsewhere"));
    assert_eq!(q.len(), 2);
    t.unlock(1, 1, r(0, 4));
    let granted: Vec<_> = q
        .retry(&mut t, 1)
        .into_iter()
        .map(|g| g.waiter.reply)
        .collect();
    assert_eq!(
        granted,
        vec!["two"],
        "byte 5 is still write-locked by owner 1"
    );
    t.release_owner(1, 1);
    let granted: Vec<_> = q
        .retry(&mut t, 1)
        .into_iter()
        .map(|g| g.waiter.reply)
        .collect();
    assert_eq!(granted, vec!["three"]);
    assert!(q.is_empty());
    assert!(t.holds(1, 2, 0, Write) && t.holds(1, 3, 5, Read));
}

#[test]
fn waiters_expire_at_their_deadline() {
    let mut q: WaitQueue<u32> = WaitQueue::new();
    let now = Instant::now();
    q.push(req(2, r(0, 0), Write), now + Duration::from_secs(2), 2);
    q.push(req(3, r(0, 0), Write), now + Duration::from_secs(1), 3);
    assert_eq!(q.next_deadline(), Some(now + Duration::from_secs(1)));
    assert!(q.expire(now).is_empty());
    let gone: Vec<u32> = q
        .expire(now + Duration::from_secs(1))
        .into_iter()
        .map(|w| w.reply)
        .collect();
    assert_eq!(gone, vec![3]);
    assert_eq!(q.next_deadline(), Some(now + Duration::from_secs(2)));
    assert_eq!(q.drain().len(), 1);
    assert_eq!(q.next_deadline(), None);
}

#[test]
fn a_cycle_of_waiting_owners_is_a_deadlock() {
    let mut t = LockTable::new();
    let mut q: WaitQueue<()> = WaitQueue::new();
    let far = Instant::now() + Duration::from_secs(60);
    set(&mut t, 1, r(0, 0), Write).expect("free");
    set(&mut t, 2, r(1, 1), Write).expect("free");
    set(&mut t, 3, r(2, 2), Write).expect("free");
    // 1 waits for 2, 2 waits for 3: 3 asking for byte 0 would wait for 1.
    let one = req(1, r(1, 1), Write);
    assert!(!q.would_deadlock(&t, &one));
    q.push(one, far, ());
    let two = req(2, r(2, 2), Write);
    assert!(!q.would_deadlock(&t, &two));
    q.push(two, far, ());
    assert!(q.would_deadlock(&t, &req(3, r(0, 0), Write)));
    assert!(!q.would_deadlock(&t, &req(4, r(0, 0), Write)));
    let id = q.waiters().next().map(|w| w.id).expect("one waits");
    assert!(q.remove(id).is_some());
    assert!(!q.would_deadlock(&t, &req(3, r(0, 0), Write)));
}

// --- property test: the table against a byte-map model -------------------

/// Model bytes 0..=LAST; LAST stands for every byte from LAST to EOF.
const LAST: u64 = 40;

#[derive(Clone, Debug)]
enum Op {
    Set(u64, ByteRange, LockKind),
    Unlock(u64, ByteRange),
    Release(u64),
    Test(u64, ByteRange, LockKind),
}

fn range_strategy() -> impl Strategy<Value = ByteRange> {
    (0..LAST, 0..LAST, any::<bool>()).prop_map(|(a, b, to_eof)| {
        let (s, e) = (a.min(b), a.max(b));
        if to_eof {
            ByteRange::to_eof(s)
        } else {
            r(s, e)
        }
    })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![Just(Read), Just(Write)];
    prop_oneof![
        4 => (1..=3u64, range_strategy(), kind.clone()).prop_map(|(o, r, k)| Op::Set(o, r, k)),
        2 => (1..=3u64, range_strategy()).prop_map(|(o, r)| Op::Unlock(o, r)),
        1 => (1..=3u64).prop_map(Op::Release),
        2 => (1..=3u64, range_strategy(), kind).prop_map(|(o, r, k)| Op::Test(o, r, k)),
    ]
}

type Bytes = [Option<LockKind>; LAST as usize + 1];

fn model_bytes(range: ByteRange) -> std::ops::RangeInclusive<usize> {
    range.start() as usize..=range.end().min(LAST) as usize
}

fn expand(locks: &[Lock], owner: u64) -> Bytes {
    let mut b: Bytes = [None; LAST as usize + 1];
    for l in locks.iter().filter(|l| l.owner == owner) {
        for i in model_bytes(l.range) {
            assert!(b[i].is_none(), "overlapping locks of one owner: {locks:?}");
            b[i] = Some(l.kind);
        }
    }
    b
}

fn clip(b: &Bytes, range: ByteRange) -> Bytes {
    let mut out: Bytes = [None; LAST as usize + 1];
    for i in model_bytes(range) {
        out[i] = b[i];
    }
    out
}

/// The conflicting byte kinds the model sees for `owner` asking `kind` on `range`.
fn model_conflicts(
    model: &HashMap<u64, Bytes>,
    owner: u64,
    range: ByteRange,
    kind: LockKind,
) -> Vec<LockKind> {
    let mut out = Vec::new();
    for (&o, bytes) in model {
        if o == owner {
            continue;
        }
        for i in model_bytes(range) {
            if let Some(k) = bytes[i] {
                if k.conflicts_with(kind) {
                    out.push(k);
                }
            }
        }
    }
    out
}

fn check_conflict(
    t: &LockTable,
    model: &HashMap<u64, Bytes>,
    owner: u64,
    range: ByteRange,
    kind: LockKind,
    got: Option<Lock>,
) {
    let expected = model_conflicts(model, owner, range, kind);
    match got {
        None => assert!(expected.is_empty(), "missed a conflict: {expected:?}"),
        Some(c) => {
            assert_ne!(c.owner, owner);
            assert!(c.range.overlaps(range) && c.kind.conflicts_with(kind));
            assert!(
                t.locks(1).contains(&c),
                "reported lock {c:?} is not a held lock"
            );
            assert_eq!(c.pid, c.owner as u32 * 100);
            if expected.contains(&Write) {
                assert_eq!(c.kind, Write, "a conflicting write lock exists");
            }
        }
    }
}

fn check_canonical(t: &LockTable) {
    let locks = t.locks(1);
    for w in locks.windows(2) {
        assert!(
            (w[0].range.start(), w[0].owner) <= (w[1].range.start(), w[1].owner),
            "unsorted"
        );
    }
    for (i, a) in locks.iter().enumerate() {
        for b in &locks[i + 1..] {
            if a.owner == b.owner {
                assert!(!a.range.overlaps(b.range), "own overlap {a:?} {b:?}");
                assert!(
                    !(a.kind == b.kind && a.range.adjacent(b.range)),
                    "unmerged {a:?} {b:?}"
                );
            } else {
                assert!(
                    !(a.range.overlaps(b.range) && a.kind.conflicts_with(b.kind)),
                    "conflict held {a:?} {b:?}"
                );
            }
        }
    }
}

fn run_ops(ops: &[Op]) {
    let mut t = LockTable::new();
    let mut model: HashMap<u64, Bytes> = (1..=3).map(|o| (o, [None; LAST as usize + 1])).collect();
    for op in ops {
        match *op {
            Op::Set(owner, range, kind) => {
                let before = clip(&model[&owner], range);
                match set(&mut t, owner, range, kind) {
                    Ok(replaced) => {
                        assert!(model_conflicts(&model, owner, range, kind).is_empty());
                        assert_eq!(expand(&replaced, owner), before, "replaced pieces");
                        let bytes = model.get_mut(&owner).expect("owner");
                        for i in model_bytes(range) {
                            bytes[i] = Some(kind);
                        }
                    }
                    Err(c) => check_conflict(&t, &model, owner, range, kind, Some(c)),
                }
            }
            Op::Unlock(owner, range) => {
                let before = clip(&model[&owner], range);
                let preview = t.preview_unlock(1, owner, range);
                let released = t.unlock(1, owner, range);
                assert_eq!(preview, released);
                assert_eq!(expand(&released, owner), before, "released pieces");
                let bytes = model.get_mut(&owner).expect("owner");
                for i in model_bytes(range) {
                    bytes[i] = None;
                }
            }
            Op::Release(owner) => {
                let released = t.release_owner(1, owner);
                assert_eq!(expand(&released, owner), model[&owner]);
                model.insert(owner, [None; LAST as usize + 1]);
            }
            Op::Test(owner, range, kind) => {
                let got = t.test(1, owner, range, kind);
                check_conflict(&t, &model, owner, range, kind, got);
            }
        }
        check_canonical(&t);
        for (&owner, bytes) in &model {
            assert_eq!(
                &expand(t.locks(1), owner),
                bytes,
                "owner {owner} after {op:?}"
            );
            for (i, k) in bytes.iter().enumerate() {
                assert_eq!(t.held_kind(1, owner, i as u64), *k);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn table_matches_a_byte_map_model(ops in proptest::collection::vec(op_strategy(), 1..60)) {
        run_ops(&ops);
    }
}
