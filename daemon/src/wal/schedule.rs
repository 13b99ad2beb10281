//! When the WAL watcher syncs: a pure scheduler over what recent syncs
//! shipped (no clocks or files of its own; `now` is passed in).
//!
//! - A write after an idle period ships at once, after a few ms of debounce
//!   (longer when the last sync was moments ago: a load that is starting
//!   makes a few full files, not many tiny ones).
//! - Once an interval ships `STEADY_TRANSACTIONS` or more, the load is
//!   steady: one sync per interval, on a timer, with no file-system events.
//! - A heavy load (megabytes of WAL per interval) also has its WAL flushed
//!   while waiting, and a pin on read mark 0 moved early.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Transactions per sync interval above which the load counts as steady.
pub const STEADY_TRANSACTIONS: u64 = 8;

/// The debounce of a write after an idle period.
pub const DEBOUNCE: Duration = Duration::from_millis(3);

/// A write this soon after the last sync is debounced for `BUSY_DEBOUNCE`.
pub const BUSY_AFTER: Duration = Duration::from_millis(100);
pub const BUSY_DEBOUNCE: Duration = Duration::from_millis(25);

/// WAL bytes per sync interval above which the load is heavy.
pub const HEAVY_INTERVAL_BYTES: u64 = 8 << 20;

/// The load, judged by what the last interval shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    pub steady: bool,
    pub heavy: bool,
}

/// How to wait for the next sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Steady load: sleep until `until`, waking every `step` (to flush the
    /// WAL when `flush`, and to see whether the pin must move).
    Timer {
        until: Instant,
        step: Duration,
        flush: bool,
    },
    /// Otherwise: wait for a write to the WAL, at most `poll`, then
    /// debounce (see [`Scheduler::debounce`]).
    Event { poll: Duration },
}

#[derive(Debug)]
pub struct Scheduler {
    interval: Duration,
    last_sync: Instant,
    /// (when, transactions, WAL bytes) of the syncs of the last interval.
    recent: VecDeque<(Instant, u64, u64)>,
}

impl Scheduler {
    pub fn new(interval: Duration, now: Instant) -> Self {
        Scheduler {
            interval,
            last_sync: now.checked_sub(interval).unwrap_or(now),
            recent: VecDeque::new(),
        }
    }

    /// The load over the last interval.
    pub fn load(&mut self, now: Instant) -> Load {
        while self
            .recent
            .front()
            .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) > self.interval)
        {
            self.recent.pop_front();
        }
        Load {
            steady: self.recent.iter().map(|r| r.1).sum::<u64>() >= STEADY_TRANSACTIONS,
            heavy: self.recent.iter().map(|r| r.2).sum::<u64>() >= HEAVY_INTERVAL_BYTES,
        }
    }

    /// How to wait, given the load and whether our pin may be on read mark 0.
    pub fn wait(&self, now: Instant, load: Load, zero_pinned: bool) -> Wait {
        if !load.steady {
            return Wait::Event {
                poll: self.interval.min(Duration::from_secs(1)),
            };
        }
        let since = now.saturating_duration_since(self.last_sync);
        // Wake-ups cost CPU: sleep through the interval unless there is
        // something to watch.
        let step = if load.heavy {
            Duration::from_millis(100)
        } else if zero_pinned {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        Wait::Timer {
            until: now + self.interval.saturating_sub(since),
            step,
            flush: load.heavy,
        }
    }

    /// The debounce after a write event.
    pub fn debounce(&self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.last_sync) < BUSY_AFTER {
            BUSY_DEBOUNCE
        } else {
            DEBOUNCE
        }
    }

    /// A sync shipped `transactions` in `wal_bytes`.
    pub fn record(&mut self, now: Instant, transactions: u64, wal_bytes: u64) {
        self.last_sync = now;
        self.recent.push_back((now, transactions, wal_bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn idle_waits_for_events_and_a_starting_load_debounces_longer() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(S, t0);
        let load = s.load(t0);
        assert_eq!(load, Load::default());
        assert_eq!(s.wait(t0, load, false), Wait::Event { poll: S });
        assert_eq!(s.debounce(t0), DEBOUNCE);
        s.record(t0, 1, 4096);
        assert_eq!(s.debounce(t0 + Duration::from_millis(50)), BUSY_DEBOUNCE);
        assert_eq!(s.debounce(t0 + Duration::from_millis(150)), DEBOUNCE);
        // A short interval polls at its own pace.
        let fast = Scheduler::new(Duration::from_millis(100), t0);
        assert_eq!(
            fast.wait(t0, Load::default(), false),
            Wait::Event {
                poll: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn eight_transactions_an_interval_is_steady_until_the_interval_passes() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(S, t0);
        for i in 0..4 {
            s.record(t0 + Duration::from_millis(i * 100), 2, 8192);
        }
        let now = t0 + Duration::from_millis(300);
        let load = s.load(now);
        assert!(load.steady && !load.heavy);
        // One sync per interval, counted from the last one.
        assert_eq!(
            s.wait(now, load, false),
            Wait::Timer {
                until: now + Duration::from_secs(1),
                step: S,
                flush: false
            }
        );
        let later = t0 + Duration::from_millis(900);
        assert_eq!(
            s.wait(later, load, true),
            Wait::Timer {
                until: t0 + Duration::from_millis(1300),
                step: Duration::from_millis(250),
                flush: false
            }
        );
        // Older syncs leave the window: the load is idle again.
        let quiet = t0 + Duration::from_millis(2500);
        assert!(!s.load(quiet).steady);
    }

    #[test]
    fn megabytes_an_interval_is_heavy() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(S, t0);
        s.record(t0, 9, HEAVY_INTERVAL_BYTES);
        let load = s.load(t0);
        assert!(load.steady && load.heavy);
        let Wait::Timer { step, flush, .. } = s.wait(t0, load, false) else {
            panic!("steady load waits on a timer");
        };
        assert_eq!((step, flush), (Duration::from_millis(100), true));
    }
}
