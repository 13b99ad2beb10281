#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! The conformance suite on the memory and local-directory stores, and the
//! retry policy under injected faults. (The same suite runs against Garage in
//! `integration/tests/garage.rs`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use s3_backend::conformance::{run_all, Expect};
use s3_backend::fault::{Fault, FaultStore};
use s3_backend::local::LocalStore;
use s3_backend::memory::MemoryStore;
use s3_backend::retry::{shutdown_channel, RetryPolicy, RetryingStore, Shutdown};
use s3_backend::{PutMode, PutSource, ReplicaStore};

const LARGE: u64 = 64 * 1024 * 1024;

#[tokio::test]
async fn conformance_memory() {
    let scratch = tempfile::tempdir().unwrap();
    let expect = Expect {
        conditional_put: true,
        large_object_bytes: LARGE,
    };
    run_all(&MemoryStore::new(), "t/", scratch.path(), &expect)
        .await
        .unwrap();
    let expect = Expect {
        conditional_put: false,
        large_object_bytes: 1 << 20,
    };
    run_all(
        &MemoryStore::with_conditional_put(false),
        "t/",
        scratch.path(),
        &expect,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn conformance_local_directory() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = LocalStore::new(root.path().join("replica"));
    let expect = Expect {
        conditional_put: true,
        large_object_bytes: LARGE,
    };
    run_all(&store, "", scratch.path(), &expect).await.unwrap();
    run_all(&store, "nested/prefix/", scratch.path(), &expect)
        .await
        .unwrap();
    // No temporary files are left behind.
    let mut stack = vec![root.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            assert!(
                !e.file_name().to_string_lossy().ends_with(".tmp"),
                "{:?}",
                e.path()
            );
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

#[tokio::test]
async fn local_store_rejects_escaping_keys() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::new(root.path());
    let e = store
        .put("../x", &PutSource::Bytes(vec![1]), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("'..'"), "{e}");
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        attempt_timeout: Duration::from_millis(300),
        total_timeout: Duration::from_secs(10),
    }
}

fn faulty() -> Arc<FaultStore<MemoryStore>> {
    Arc::new(FaultStore::new(MemoryStore::new()))
}

#[tokio::test]
async fn retries_recover_from_transient_faults() {
    let f = faulty();
    let s = RetryingStore::new(f.clone(), fast_policy(), Shutdown::never());
    f.fail_call(1, Fault::Transient);
    f.fail_call(2, Fault::DropConnection);
    s.put("k", &PutSource::Bytes(b"v".to_vec()), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(f.calls(), 3, "two faults, then success");
    // A download whose connection drops before the response is retried.
    f.fail_call(4, Fault::Transient);
    let v = s.get_range("k", 0, 1).await.unwrap();
    assert_eq!(v, b"v");
    assert_eq!(f.calls(), 5);
    // Latency beyond the attempt timeout is a timeout, and is retried.
    f.set_latency(Duration::from_millis(500));
    let started = Instant::now();
    let e = s.list("", None).await.unwrap_err().to_string();
    assert!(
        e.contains("gave up after 4 attempts") && e.contains("timed out"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    f.set_latency(Duration::ZERO);
}

#[tokio::test]
async fn retries_give_up_on_permanent_faults_at_once() {
    let f = faulty();
    let s = RetryingStore::new(f.clone(), fast_policy(), Shutdown::never());
    f.fail_call(1, Fault::Permanent);
    let e = s
        .put("k", &PutSource::Bytes(b"v".to_vec()), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("injected permanent fault"), "{e}");
    assert_eq!(f.calls(), 1, "no retry of a permanent error");
    // A missing key is permanent too.
    assert!(s.get("missing").await.is_err_and(|e| e.is_not_found()));
    assert_eq!(f.calls(), 2);
    // Endless transient faults: bounded attempts, the last error reported.
    f.fail_from(3, Fault::Transient);
    let e = s.delete("k").await.unwrap_err().to_string();
    assert!(
        e.contains("gave up after 4 attempts") && e.contains("HTTP 503"),
        "{e}"
    );
    assert_eq!(f.calls(), 6);
}

#[tokio::test]
async fn put_if_absent_retry_recognises_its_own_lost_write() {
    let f = faulty();
    let s = RetryingStore::new(f.clone(), fast_policy(), Shutdown::never());
    f.fail_call(1, Fault::LoseResponse);
    s.put("k", &PutSource::Bytes(b"mine".to_vec()), PutMode::Create)
        .await
        .unwrap();
    // But a different writer's object is still a conflict.
    f.fail_call(f.calls() + 1, Fault::LoseResponse);
    let e = s
        .put("k", &PutSource::Bytes(b"other".to_vec()), PutMode::Create)
        .await
        .unwrap_err();
    assert!(e.is_already_exists(), "{e}");
}

#[tokio::test]
async fn dropped_connection_mid_body_is_an_error_not_short_data() {
    use tokio::io::AsyncReadExt;
    let f = faulty();
    f.put("k", &PutSource::Bytes(vec![9u8; 1000]), PutMode::Overwrite)
        .await
        .unwrap();
    f.fail_call(2, Fault::DropConnection);
    let mut r = f.get("k").await.unwrap();
    let mut v = Vec::new();
    let e = r.read_to_end(&mut v).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn shutdown_cancels_pending_calls() {
    let f = faulty();
    let (trigger, shutdown) = shutdown_channel();
    let mut policy = fast_policy();
    policy.attempt_timeout = Duration::from_secs(30);
    let s = Arc::new(RetryingStore::new(f.clone(), policy, shutdown));
    f.set_latency(Duration::from_secs(20));
    let s2 = s.clone();
    let task = tokio::spawn(async move { s2.list("", None).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    trigger.fire();
    let e = task.await.unwrap().unwrap_err().to_string();
    assert!(e.contains("cancelled by shutdown"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
}
