//! The lock table of a mounted filesystem, shared by its worker threads: the
//! [`LockTable`], the [`WaitQueue`] of blocking requests, a timer thread that
//! fails waiters at their deadline, and per-(inode, owner) gates.
//!
//! The mutex here is only ever held for table operations, never while a
//! hook, a reply or any I/O runs. A filesystem runs a lock operation in
//! phases: enter the owner's [`Gate`], look ([`LockService::preview_unlock`]),
//! run its hooks with the locks still held, then apply
//! ([`LockService::unlock`]) and answer the waiters it woke. The gate keeps
//! the same owner's next operation on the file from slipping in between.
//!
//! A waiter is failed with `EAGAIN` at its deadline, never `EINTR`: with no
//! signal pending the kernel would turn EINTR into ERESTARTSYS and the caller
//! would see errno 512.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fuser::{Errno, ReplyEmpty};

use crate::locks::{ByteRange, GrantedWaiter, Lock, LockKind, LockRequest, LockTable, WaitQueue};
use crate::sync::{lock, wait, wait_timeout};

/// How a blocking lock request is eventually answered.
pub trait LockReply: Send + 'static {
    /// The lock was granted.
    fn granted(self);
    /// It was not.
    fn failed(self, err: Errno);
}

impl LockReply for ReplyEmpty {
    fn granted(self) {
        self.ok();
    }

    fn failed(self, err: Errno) {
        self.error(err);
    }
}

/// What became of a lock request.
#[derive(Debug)]
pub enum SetOutcome<R> {
    /// Granted now. `replaced` are the owner's previous locks inside the
    /// range; `woken` are waiters granted because this lock downgraded the
    /// owner's previous one (answer them).
    Granted {
        /// The request's reply, to be answered.
        reply: R,
        /// As [`LockTable::set`] returns.
        replaced: Vec<Lock>,
        /// Waiters now granted.
        woken: Vec<GrantedWaiter<R>>,
    },
    /// Another owner holds a conflicting lock and the request does not wait.
    Conflict(R, Lock),
    /// Waiting would deadlock (answer `EDEADLK`).
    Deadlock(R),
    /// Queued: the reply is answered when the lock is granted or at the
    /// deadline.
    Queued,
}

#[derive(Debug)]
struct State<R> {
    table: LockTable,
    waiters: WaitQueue<R>,
    busy: HashSet<(u64, u64)>,
    /// Threads waiting in [`LockService::gate`] and in
    /// [`LockService::wait_until`]: a notify (a system call) only when
    /// there are any, not at every lock operation.
    gate_waiting: usize,
    release_waiting: usize,
    stopped: bool,
}

/// The shared lock state of a mount.
#[derive(Debug)]
pub struct LockService<R> {
    state: Mutex<State<R>>,
    gate_cv: Condvar,
    timer_cv: Condvar,
    released_cv: Condvar,
    wait_timeout: Duration,
}

/// Held while one owner's lock operation on one inode runs.
#[derive(Debug)]
pub struct Gate<'a, R> {
    svc: &'a LockService<R>,
    key: (u64, u64),
}

impl<R> Drop for Gate<'_, R> {
    fn drop(&mut self) {
        let waiting = {
            let mut st = lock(&self.svc.state);
            st.busy.remove(&self.key);
            st.gate_waiting > 0
        };
        if waiting {
            self.svc.gate_cv.notify_all();
        }
    }
}

impl<R: LockReply> LockService<R> {
    /// A service whose waiters give up after `wait_timeout`. Call
    /// [`LockService::start_timer`] before queuing waiters.
    pub fn new(wait_timeout: Duration) -> Arc<LockService<R>> {
        Arc::new(LockService {
            state: Mutex::new(State {
                table: LockTable::new(),
                waiters: WaitQueue::new(),
                busy: HashSet::new(),
                gate_waiting: 0,
                release_waiting: 0,
                stopped: false,
            }),
            gate_cv: Condvar::new(),
            timer_cv: Condvar::new(),
            released_cv: Condvar::new(),
            wait_timeout,
        })
    }

    /// Starts the thread that fails waiters at their deadline; it runs until
    /// [`LockService::stop`].
    pub fn start_timer(self: &Arc<Self>) -> io::Result<()> {
        let svc = Arc::clone(self);
        thread::Builder::new()
            .name("fuse-lock-timer".into())
            .spawn(move || svc.run_timer())
            .map(drop)
    }

    fn run_timer(&self) {
        let mut st = lock(&self.state);
        while !st.stopped {
            let now = Instant::now();
            let expired = st.waiters.expire(now);
            if !expired.is_empty() {
                drop(st);
                for w in expired {
                    w.reply.failed(Errno::EAGAIN);
                }
                st = lock(&self.state);
                continue;
            }
            st = match st.waiters.next_deadline() {
                Some(d) => wait_timeout(&self.timer_cv, st, d.saturating_duration_since(now)).0,
                None => wait(&self.timer_cv, st),
            };
        }
    }

    /// Stops the timer and fails every waiter with `EAGAIN` (unmount).
    pub fn stop(&self) {
        let waiters = {
            let mut st = lock(&self.state);
            st.stopped = true;
            st.waiters.drain()
        };
        self.timer_cv.notify_all();
        for w in waiters {
            w.reply.failed(Errno::EAGAIN);
        }
    }

    /// How long a blocking request waits at most.
    pub fn wait_timeout(&self) -> Duration {
        self.wait_timeout
    }

    /// Waits until no other operation of `owner` on `ino` runs, and holds
    /// that until the gate is dropped.
    pub fn gate(&self, ino: u64, owner: u64) -> Gate<'_, R> {
        let key = (ino, owner);
        let mut st = lock(&self.state);
        while st.busy.contains(&key) {
            st.gate_waiting += 1;
            st = wait(&self.gate_cv, st);
            st.gate_waiting -= 1;
        }
        st.busy.insert(key);
        Gate { svc: self, key }
    }

    /// Runs `f` on the table (keep it short: every lock request waits).
    pub fn with_table<T>(&self, f: impl FnOnce(&LockTable) -> T) -> T {
        f(&lock(&self.state).table)
    }

    /// `F_GETLK`, as [`LockTable::test`].
    pub fn test(&self, ino: u64, owner: u64, range: ByteRange, kind: LockKind) -> Option<Lock> {
        lock(&self.state).table.test(ino, owner, range, kind)
    }

    /// Sets a lock now or, with `wait`, queues `reply` until it can be.
    pub fn set(&self, req: LockRequest, wait: bool, reply: R) -> SetOutcome<R> {
        let mut st = lock(&self.state);
        match st
            .table
            .set(req.ino, req.owner, req.range, req.kind, req.pid)
        {
            Ok(replaced) => {
                let woken = if replaced.is_empty() {
                    Vec::new()
                } else {
                    let State { table, waiters, .. } = &mut *st;
                    waiters.retry(table, req.ino)
                };
                SetOutcome::Granted {
                    reply,
                    replaced,
                    woken,
                }
            }
            Err(conflict) if !wait || st.stopped => SetOutcome::Conflict(reply, conflict),
            Err(_) if st.waiters.would_deadlock(&st.table, &req) => SetOutcome::Deadlock(reply),
            Err(_) => {
                st.waiters
                    .push(req, Instant::now() + self.wait_timeout, reply);
                drop(st);
                self.timer_cv.notify_all();
                SetOutcome::Queued
            }
        }
    }

    /// Sets a lock for an owner that never waits (the filesystem's own).
    /// Returns the replaced locks and the waiters a downgrade woke.
    #[allow(clippy::type_complexity)]
    pub fn try_set(&self, req: LockRequest) -> Result<(Vec<Lock>, Vec<GrantedWaiter<R>>), Lock> {
        let mut st = lock(&self.state);
        let State { table, waiters, .. } = &mut *st;
        let replaced = table.set(req.ino, req.owner, req.range, req.kind, req.pid)?;
        let woken = if replaced.is_empty() {
            Vec::new()
        } else {
            waiters.retry(table, req.ino)
        };
        Ok((replaced, woken))
    }

    /// What unlocking would release.
    pub fn preview_unlock(&self, ino: u64, owner: u64, range: ByteRange) -> Vec<Lock> {
        lock(&self.state).table.preview_unlock(ino, owner, range)
    }

    /// `F_UNLCK`: releases and returns what went, and the waiters it woke
    /// (already granted; answer them).
    pub fn unlock(
        &self,
        ino: u64,
        owner: u64,
        range: ByteRange,
    ) -> (Vec<Lock>, Vec<GrantedWaiter<R>>) {
        self.release_with(ino, |t| t.unlock(ino, owner, range))
    }

    /// Drops all of `owner`'s locks on `ino`; as [`LockService::unlock`].
    pub fn release_owner(&self, ino: u64, owner: u64) -> (Vec<Lock>, Vec<GrantedWaiter<R>>) {
        self.release_with(ino, |t| t.release_owner(ino, owner))
    }

    /// Forgets the inode's locks (it is gone).
    pub fn remove_inode(&self, ino: u64) {
        lock(&self.state).table.remove_inode(ino);
    }

    /// Waits up to `timeout` for `done(table)` to hold, re-checking whenever
    /// locks are released. Returns whether it held.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&LockTable) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.state);
        loop {
            if done(&st.table) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st.release_waiting += 1;
            st = wait_timeout(&self.released_cv, st, deadline - now).0;
            st.release_waiting -= 1;
        }
    }

    fn release_with(
        &self,
        ino: u64,
        f: impl FnOnce(&mut LockTable) -> Vec<Lock>,
    ) -> (Vec<Lock>, Vec<GrantedWaiter<R>>) {
        let mut st = lock(&self.state);
        let State { table, waiters, .. } = &mut *st;
        let released = f(table);
        let woken = if released.is_empty() {
            Vec::new()
        } else {
            waiters.retry(table, ino)
        };
        let notify = !released.is_empty() && st.release_waiting > 0;
        drop(st);
        if notify {
            self.released_cv.notify_all();
        }
        (released, woken)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[derive(Debug)]
    struct Tx(mpsc::Sender<Result<(), Errno>>);

    impl LockReply for Tx {
        fn granted(self) {
            let _ = self.0.send(Ok(()));
        }
        fn failed(self, err: Errno) {
            let _ = self.0.send(Err(err));
        }
    }

    fn req(owner: u64, start: u64, end: u64, kind: LockKind) -> LockRequest {
        LockRequest {
            ino: 1,
            owner,
            range: ByteRange::new(start, end).expect("range"),
            kind,
            pid: owner as u32,
        }
    }

    #[test]
    fn a_waiter_times_out_with_eagain() {
        let svc: Arc<LockService<Tx>> = LockService::new(Duration::from_millis(200));
        svc.start_timer().expect("timer");
        assert!(svc.try_set(req(1, 0, 9, LockKind::Write)).is_ok());
        let (tx, rx) = mpsc::channel();
        let t0 = Instant::now();
        assert!(matches!(
            svc.set(req(2, 5, 5, LockKind::Read), true, Tx(tx)),
            SetOutcome::Queued
        ));
        let got = rx.recv_timeout(Duration::from_secs(5)).expect("answered");
        assert_eq!(got, Err(Errno::EAGAIN));
        assert!(t0.elapsed() >= Duration::from_millis(200));
        svc.stop();
    }

    #[test]
    fn a_release_wakes_a_waiter_and_stop_fails_the_rest() {
        let svc: Arc<LockService<Tx>> = LockService::new(Duration::from_secs(60));
        svc.start_timer().expect("timer");
        assert!(svc.try_set(req(1, 0, 9, LockKind::Write)).is_ok());
        let (tx, rx) = mpsc::channel();
        assert!(matches!(
            svc.set(req(2, 0, 0, LockKind::Write), true, Tx(tx)),
            SetOutcome::Queued
        ));
        let (tx3, rx3) = mpsc::channel();
        assert!(matches!(
            svc.set(req(3, 9, 9, LockKind::Write), true, Tx(tx3)),
            SetOutcome::Queued
        ));
        let (released, woken) = svc.unlock(1, 1, ByteRange::new(0, 4).expect("range"));
        assert_eq!(released.len(), 1);
        assert_eq!(woken.len(), 1);
        for g in woken {
            g.waiter.reply.granted();
        }
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(Ok(())));
        assert!(svc.with_table(|t| t.holds(1, 2, 0, LockKind::Write)));
        assert!(rx3.try_recv().is_err(), "byte 9 is still held");
        svc.stop();
        assert_eq!(
            rx3.recv_timeout(Duration::from_secs(5)),
            Ok(Err(Errno::EAGAIN))
        );
    }

    #[test]
    fn non_blocking_conflicts_and_deadlocks_come_back_to_the_caller() {
        let svc: Arc<LockService<Tx>> = LockService::new(Duration::from_secs(60));
        svc.start_timer().expect("timer");
        assert!(svc.try_set(req(1, 0, 0, LockKind::Write)).is_ok());
        assert!(svc.try_set(req(2, 1, 1, LockKind::Write)).is_ok());
        let (tx, _rx) = mpsc::channel();
        match svc.set(req(2, 0, 0, LockKind::Read), false, Tx(tx.clone())) {
            SetOutcome::Conflict(_, c) => assert_eq!((c.owner, c.kind), (1, LockKind::Write)),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(matches!(
            svc.set(req(2, 0, 0, LockKind::Read), true, Tx(tx.clone())),
            SetOutcome::Queued
        ));
        assert!(matches!(
            svc.set(req(1, 1, 1, LockKind::Read), true, Tx(tx)),
            SetOutcome::Deadlock(_)
        ));
        svc.stop();
    }

    #[test]
    fn gates_serialise_one_owner_and_wait_until_sees_releases() {
        let svc: Arc<LockService<Tx>> = LockService::new(Duration::from_secs(60));
        assert!(svc.try_set(req(1, 0, 0, LockKind::Read)).is_ok());
        let g = svc.gate(1, 1);
        let other = svc.gate(1, 2);
        drop(other);
        let svc2 = Arc::clone(&svc);
        let t = thread::spawn(move || {
            let _g = svc2.gate(1, 1);
            svc2.unlock(1, 1, ByteRange::to_eof(0));
        });
        thread::sleep(Duration::from_millis(50));
        assert!(
            svc.with_table(|t| t.holds(1, 1, 0, LockKind::Read)),
            "the gate holds the unlock back"
        );
        drop(g);
        assert!(svc.wait_until(Duration::from_secs(5), |t| t.locks(1).is_empty()));
        t.join().expect("join");
        assert!(!svc.wait_until(Duration::from_millis(10), |t| !t.locks(1).is_empty()));
    }
}
