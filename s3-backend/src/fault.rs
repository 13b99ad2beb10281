//! A fault-injecting store wrapper for tests: latency on every call, an error
//! on chosen calls (retryable or permanent), and dropped connections (a call
//! that fails with a reset, or a download cut short).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

use crate::error::StoreError;
use crate::store::{BoxFut, ObjectMeta, ObjectReader, PutMode, PutSource, ReplicaStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A 503-like error that retrying can cure.
    Transient,
    /// An error retrying cannot cure (like a 400).
    Permanent,
    /// The connection drops: a reset before the call completes, or for `get`,
    /// a body that breaks after its first bytes.
    DropConnection,
    /// The call takes effect but its response is lost (a reset after the
    /// server acted), so the caller sees a retryable error.
    LoseResponse,
}

#[derive(Debug, Default)]
struct Plan {
    latency: Duration,
    /// Faults by call number (1-based, all operations counted together).
    at_call: BTreeMap<u64, Fault>,
    /// A fault on every call from this number on.
    from_call: Option<(u64, Fault)>,
}

#[derive(Debug)]
pub struct FaultStore<S> {
    inner: S,
    plan: Mutex<Plan>,
    calls: AtomicU64,
}

impl<S: ReplicaStore> FaultStore<S> {
    pub fn new(inner: S) -> Self {
        FaultStore {
            inner,
            plan: Mutex::new(Plan::default()),
            calls: AtomicU64::new(0),
        }
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_latency(&self, d: Duration) {
        self.plan().latency = d;
    }

    /// Injects `fault` on call number `n` (1-based).
    pub fn fail_call(&self, n: u64, fault: Fault) {
        self.plan().at_call.insert(n, fault);
    }

    /// Injects `fault` on every call from number `n` on.
    pub fn fail_from(&self, n: u64, fault: Fault) {
        self.plan().from_call = Some((n, fault));
    }

    pub fn clear(&self) {
        let mut p = self.plan();
        p.at_call.clear();
        p.from_call = None;
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    async fn enter(&self, op: &'static str, key: &str) -> Result<Option<Fault>, StoreError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let (latency, fault) = {
            let p = self.plan();
            let f = p.at_call.get(&n).copied().or(match p.from_call {
                Some((from, f)) if n >= from => Some(f),
                _ => None,
            });
            (p.latency, f)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let store = self.inner.describe();
        let key = key.to_string();
        match fault {
            None => Ok(None),
            Some(Fault::Transient) => Err(StoreError::Other {
                store,
                op,
                key,
                detail: format!("injected transient fault on call {n} (HTTP 503 SlowDown)"),
                retryable: true,
            }),
            Some(Fault::Permanent) => Err(StoreError::Other {
                store,
                op,
                key,
                detail: format!("injected permanent fault on call {n} (HTTP 400)"),
                retryable: false,
            }),
            Some(Fault::LoseResponse) => Ok(Some(Fault::LoseResponse)),
            Some(Fault::DropConnection) if op == "get" => Ok(Some(Fault::DropConnection)),
            Some(Fault::DropConnection) => Err(StoreError::Io {
                store,
                op,
                key,
                source: std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    format!("injected connection reset on call {n}"),
                ),
            }),
        }
    }
}

/// A body that yields `left` bytes and then a connection reset.
struct BrokenReader {
    inner: ObjectReader,
    left: usize,
}

impl AsyncRead for BrokenReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected connection reset mid-body",
            )));
        }
        let want = buf.remaining().min(self.left);
        let mut small = vec![0u8; want];
        let mut rb = ReadBuf::new(&mut small);
        match self.inner.as_mut().poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                buf.put_slice(rb.filled());
                self.left -= n;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: ReplicaStore> ReplicaStore for FaultStore<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn put<'a>(&'a self, key: &'a str, src: &'a PutSource, mode: PutMode) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let f = self.enter("put", key).await?;
            self.inner.put(key, src, mode).await?;
            if f == Some(Fault::LoseResponse) {
                return Err(StoreError::Io {
                    store: self.inner.describe(),
                    op: "put",
                    key: key.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "injected reset after the put took effect",
                    ),
                });
            }
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, ObjectReader> {
        Box::pin(async move {
            let f = self.enter("get", key).await?;
            let r = self.inner.get(key).await?;
            if f == Some(Fault::DropConnection) {
                let b: ObjectReader = Box::pin(BrokenReader { inner: r, left: 16 });
                return Ok(b);
            }
            Ok(r)
        })
    }

    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFut<'a, Vec<u8>> {
        Box::pin(async move {
            self.enter("get range", key).await?;
            self.inner.get_range(key, offset, len).await
        })
    }

    fn list<'a>(
        &'a self,
        dir: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxFut<'a, Vec<ObjectMeta>> {
        Box::pin(async move {
            self.enter("list", dir).await?;
            self.inner.list(dir, start_after).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.enter("delete", key).await?;
            self.inner.delete(key).await
        })
    }
}
