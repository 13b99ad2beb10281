//! One retry policy for every store: a timeout on each attempt, exponential
//! backoff with full jitter between attempts, retries only for retryable
//! errors, a cap on attempts and on total time, and cancellation on shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::error::{Result, StoreError};
use crate::store::{BoxFut, ObjectMeta, ObjectReader, PutMode, PutSource, ReplicaStore};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Bound on one attempt.
    pub attempt_timeout: Duration,
    /// Bound on all attempts and waits together.
    pub total_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(120),
            total_timeout: Duration::from_secs(300),
        }
    }
}

/// Fires once on shutdown; every pending store call then ends with `Cancelled`.
#[derive(Debug)]
pub struct ShutdownTrigger(CancellationToken);

/// The cancellation a store observes: a [`CancellationToken`], so a caller
/// can make it one branch of its own cancellation tree.
#[derive(Debug, Clone)]
pub struct Shutdown(CancellationToken);

pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let t = CancellationToken::new();
    (ShutdownTrigger(t.clone()), Shutdown(t))
}

impl ShutdownTrigger {
    pub fn fire(&self) {
        self.0.cancel();
    }
}

impl Shutdown {
    /// A token that never fires.
    pub fn never() -> Self {
        Shutdown(CancellationToken::new())
    }

    pub fn is_fired(&self) -> bool {
        self.0.is_cancelled()
    }

    pub async fn fired(&mut self) {
        self.0.cancelled().await
    }
}

impl From<CancellationToken> for Shutdown {
    fn from(t: CancellationToken) -> Self {
        Shutdown(t)
    }
}

/// Wraps a store with the retry policy.
#[derive(Debug)]
pub struct RetryingStore<S> {
    inner: S,
    policy: RetryPolicy,
    shutdown: Shutdown,
    seed: AtomicU64,
}

impl<S: ReplicaStore> RetryingStore<S> {
    pub fn new(inner: S, policy: RetryPolicy, shutdown: Shutdown) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        RetryingStore {
            inner,
            policy,
            shutdown,
            seed: AtomicU64::new(seed),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Full jitter: a uniform wait in [0, backoff].
    fn jitter(&self, backoff: Duration) -> Duration {
        let mut x = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        let ms = backoff.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { x % (ms + 1) })
    }

    async fn run<'a, T>(
        &'a self,
        op: &'static str,
        key: &str,
        mut attempt: impl FnMut(u32) -> BoxFut<'a, T>,
    ) -> Result<T> {
        let p = &self.policy;
        let started = Instant::now();
        let mut backoff = p.initial_backoff;
        let mut shutdown = self.shutdown.clone();
        let cancelled = || StoreError::Cancelled {
            store: self.inner.describe(),
            op,
            key: key.to_string(),
        };
        let mut n = 0;
        loop {
            n += 1;
            if shutdown.is_fired() {
                return Err(cancelled());
            }
            let result = tokio::select! {
                r = tokio::time::timeout(p.attempt_timeout, attempt(n)) => r,
                _ = shutdown.fired() => return Err(cancelled()),
            };
            let err = match result {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !e.is_retryable() => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => StoreError::Timeout {
                    store: self.inner.describe(),
                    op,
                    key: key.to_string(),
                    millis: p.attempt_timeout.as_millis() as u64,
                },
            };
            let wait = self.jitter(backoff);
            if n >= p.max_attempts || started.elapsed() + wait >= p.total_timeout {
                return Err(StoreError::Other {
                    store: self.inner.describe(),
                    op,
                    key: key.to_string(),
                    detail: format!(
                        "gave up after {n} attempts in {:.1?}: {err}",
                        started.elapsed()
                    ),
                    retryable: false,
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.fired() => return Err(cancelled()),
            }
            backoff = (backoff * 2).min(p.max_backoff);
        }
    }
}

/// True if the object at `key` holds exactly `src`'s bytes.
async fn same_content<S: ReplicaStore + ?Sized>(
    store: &S,
    key: &str,
    src: &PutSource,
) -> Result<bool> {
    let mut remote: ObjectReader = store.get(key).await?;
    let io = |e: std::io::Error| StoreError::Io {
        store: store.describe(),
        op: "compare",
        key: key.to_string(),
        source: e,
    };
    let mut local: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match src {
        PutSource::Bytes(b) => Box::new(std::io::Cursor::new(b.clone())),
        PutSource::File(p) => Box::new(tokio::fs::File::open(p).await.map_err(io)?),
    };
    let mut a = vec![0u8; 64 * 1024];
    let mut b = vec![0u8; 64 * 1024];
    loop {
        let n = local.read(&mut a).await.map_err(io)?;
        if n == 0 {
            return Ok(remote.read(&mut b[..1]).await.map_err(io)? == 0);
        }
        if remote.read_exact(&mut b[..n]).await.is_err() || a[..n] != b[..n] {
            return Ok(false);
        }
    }
}

impl<S: ReplicaStore> ReplicaStore for RetryingStore<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn put<'a>(&'a self, key: &'a str, src: &'a PutSource, mode: PutMode) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let r = self
                .run("put", key, |_| self.inner.put(key, src, mode))
                .await;
            match r {
                // A retried put-if-absent can meet its own earlier attempt,
                // which succeeded though its response was lost: same bytes
                // mean it is ours.
                Err(e) if e.is_already_exists() && mode == PutMode::Create => {
                    if same_content(&self.inner, key, src).await.unwrap_or(false) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                }
                r => r,
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, ObjectReader> {
        Box::pin(self.run("get", key, move |_| self.inner.get(key)))
    }

    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFut<'a, Vec<u8>> {
        Box::pin(self.run("get range", key, move |_| {
            self.inner.get_range(key, offset, len)
        }))
    }

    fn list<'a>(
        &'a self,
        dir: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxFut<'a, Vec<ObjectMeta>> {
        Box::pin(self.run("list", dir, move |_| self.inner.list(dir, start_after)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, ()> {
        Box::pin(self.run("delete", key, move |_| self.inner.delete(key)))
    }
}

impl<S: ReplicaStore + ?Sized> ReplicaStore for std::sync::Arc<S> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn put<'a>(&'a self, key: &'a str, src: &'a PutSource, mode: PutMode) -> BoxFut<'a, ()> {
        (**self).put(key, src, mode)
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, ObjectReader> {
        (**self).get(key)
    }
    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFut<'a, Vec<u8>> {
        (**self).get_range(key, offset, len)
    }
    fn list<'a>(
        &'a self,
        dir: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxFut<'a, Vec<ObjectMeta>> {
        (**self).list(dir, start_after)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, ()> {
        (**self).delete(key)
    }
}
