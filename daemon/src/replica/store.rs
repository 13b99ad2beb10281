//! The replica's store, counted: every GET (whole or ranged) and LIST that
//! reaches the server, and the bytes read, so the cost of following a bucket
//! is reported (metrics, status line, the benchmark).
//!
//! The counter sits under the retry policy, so a retried request counts as
//! many times as it was sent. An S3 listing returns at most 1000 keys a
//! page; a listing call that returned `n` keys counts `max(1, ceil(n/1000))`
//! LIST requests (the pages are fetched inside the S3 store).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use s3_backend::retry::{RetryPolicy, RetryingStore, Shutdown};
use s3_backend::s3::S3Store;
use s3_backend::store::{BoxFut, ObjectMeta, ObjectReader, PutMode, PutSource};
use s3_backend::{local::LocalStore, ReplicaStore, ReplicaUrl};

/// Requests and bytes, since the process started.
#[derive(Debug, Default)]
pub struct Counters {
    pub gets: AtomicU64,
    pub lists: AtomicU64,
    pub bytes: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.gets.load(Relaxed),
            self.lists.load(Relaxed),
            self.bytes.load(Relaxed),
        )
    }
}

/// Keys a page of an S3 listing holds.
const LIST_PAGE: u64 = 1000;

#[derive(Debug)]
pub struct CountingStore<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S: ReplicaStore> CountingStore<S> {
    pub fn new(inner: S, counters: Arc<Counters>) -> Self {
        CountingStore { inner, counters }
    }
}

impl<S: ReplicaStore> ReplicaStore for CountingStore<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn put<'a>(&'a self, key: &'a str, src: &'a PutSource, mode: PutMode) -> BoxFut<'a, ()> {
        self.inner.put(key, src, mode)
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, ObjectReader> {
        self.counters.gets.fetch_add(1, Relaxed);
        self.inner.get(key)
    }

    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFut<'a, Vec<u8>> {
        Box::pin(async move {
            self.counters.gets.fetch_add(1, Relaxed);
            let b = self.inner.get_range(key, offset, len).await?;
            self.counters.bytes.fetch_add(b.len() as u64, Relaxed);
            Ok(b)
        })
    }

    fn list<'a>(
        &'a self,
        dir: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxFut<'a, Vec<ObjectMeta>> {
        Box::pin(async move {
            let r = self.inner.list(dir, start_after).await;
            let n = r.as_ref().map_or(0, |v| v.len() as u64);
            self.counters
                .lists
                .fetch_add(n.div_ceil(LIST_PAGE).max(1), Relaxed);
            r
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, ()> {
        self.inner.delete(key)
    }
}

/// A follower's retry policy: short, so a poll against an unreachable store
/// ends in seconds (the lag keeps growing meanwhile, and the next poll tries
/// again); the first restore gets the same per-request bound.
pub fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(30),
        total_timeout: Duration::from_secs(60),
    }
}

/// Connects the replica's store: counted, then wrapped in `policy`.
pub async fn open(
    url: &ReplicaUrl,
    counters: Arc<Counters>,
    policy: RetryPolicy,
    shutdown: Shutdown,
) -> s3_backend::Result<Arc<dyn ReplicaStore>> {
    Ok(match url {
        ReplicaUrl::File { root } => Arc::new(RetryingStore::new(
            CountingStore::new(LocalStore::new(root.clone()), counters),
            policy,
            shutdown,
        )),
        ReplicaUrl::S3 { config, .. } => {
            let mut config = config.clone();
            config.attempt_timeout = policy.attempt_timeout;
            let s3 = S3Store::connect(config).await?;
            Arc::new(RetryingStore::new(
                CountingStore::new(s3, counters),
                policy,
                shutdown,
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3_backend::memory::MemoryStore;

    #[tokio::test(flavor = "current_thread")]
    async fn counts_requests_bytes_and_listing_pages() {
        let c = Arc::new(Counters::default());
        let s = CountingStore::new(MemoryStore::new(), c.clone());
        for i in 0..2500 {
            let body = PutSource::Bytes(vec![7; 10]);
            s.put(&format!("d/{i:05}"), &body, PutMode::Overwrite)
                .await
                .unwrap();
        }
        assert_eq!(s.list("d/", None).await.unwrap().len(), 2500);
        assert_eq!(s.list("d/", Some("d/02499")).await.unwrap().len(), 0);
        assert_eq!(s.get_range("d/00001", 2, 5).await.unwrap(), vec![7; 5]);
        assert_eq!(c.snapshot(), (1, 3 + 1, 5));
    }
}
