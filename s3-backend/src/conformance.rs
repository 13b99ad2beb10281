//! One conformance suite for every store: memory, local directory and a real S3
//! server run the same checks. Each check works under its own `prefix`, so runs
//! against a shared bucket do not collide.

use std::path::Path;

use tokio::io::AsyncReadExt;

use crate::error::StoreError;
use crate::store::{PutMode, PutSource, ReplicaStore};

/// What the suite should expect of the store under test.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Whether put-if-absent is honoured (the probe must find the same).
    pub conditional_put: bool,
    /// Size of the large-object check.
    pub large_object_bytes: u64,
}

fn fail(msg: String) -> StoreError {
    StoreError::Config(format!("conformance: {msg}"))
}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(fail(format!($($arg)*)));
        }
    };
}

/// Deterministic pseudo-random bytes (incompressible), for large objects.
pub fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut x = seed ^ (offset / 8 + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 31;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 29;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

async fn read_all<S: ReplicaStore + ?Sized>(s: &S, key: &str) -> Result<Vec<u8>, StoreError> {
    let mut r = s.get(key).await?;
    let mut v = Vec::new();
    r.read_to_end(&mut v).await.map_err(|e| StoreError::Io {
        store: s.describe(),
        op: "get",
        key: key.to_string(),
        source: e,
    })?;
    Ok(v)
}

/// Runs every check; `scratch` is a local directory for source files.
pub async fn run_all<S: ReplicaStore + ?Sized>(
    s: &S,
    prefix: &str,
    scratch: &Path,
    expect: &Expect,
) -> Result<(), StoreError> {
    missing_keys(s, &format!("{prefix}missing/")).await?;
    put_get_overwrite(s, &format!("{prefix}rw/"), scratch).await?;
    put_if_absent(s, &format!("{prefix}cond/"), expect.conditional_put).await?;
    racing_puts_if_absent(s, &format!("{prefix}race/"), expect.conditional_put).await?;
    // Above the S3 part size in the tests (5 MiB): a multipart upload, whose
    // condition goes on CompleteMultipartUpload.
    large_put_if_absent(
        s,
        &format!("{prefix}condlarge/"),
        scratch,
        expect.conditional_put,
        expect.large_object_bytes.min(6 << 20),
    )
    .await?;
    ranged_reads(s, &format!("{prefix}range/")).await?;
    listing(s, &format!("{prefix}list/")).await?;
    failed_put_leaves_nothing(s, &format!("{prefix}fail/"), scratch).await?;
    large_object(
        s,
        &format!("{prefix}large/"),
        scratch,
        expect.large_object_bytes,
    )
    .await?;
    Ok(())
}

pub async fn missing_keys<S: ReplicaStore + ?Sized>(s: &S, p: &str) -> Result<(), StoreError> {
    let key = format!("{p}nope.ltx");
    match s.get(&key).await {
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            return Err(fail(format!(
                "get of a missing key: want NotFound, got {e}"
            )))
        }
        Ok(_) => return Err(fail("get of a missing key succeeded".into())),
    }
    match s.get_range(&key, 0, 10).await {
        Err(e) if e.is_not_found() => {}
        other => {
            return Err(fail(format!(
                "get_range of a missing key: want NotFound, got {other:?}"
            )))
        }
    }
    s.delete(&key).await?;
    let l = s.list(&format!("{p}nodir/"), None).await?;
    ensure!(l.is_empty(), "listing a missing directory gave {l:?}");
    Ok(())
}

pub async fn put_get_overwrite<S: ReplicaStore + ?Sized>(
    s: &S,
    p: &str,
    scratch: &Path,
) -> Result<(), StoreError> {
    let key = format!("{p}a.ltx");
    s.put(
        &key,
        &PutSource::Bytes(b"first".to_vec()),
        PutMode::Overwrite,
    )
    .await?;
    ensure!(read_all(s, &key).await? == b"first", "read-after-write");
    let file = scratch.join("put-src.bin");
    std::fs::write(&file, b"second, from a file").map_err(|e| fail(e.to_string()))?;
    s.put(&key, &PutSource::File(file), PutMode::Overwrite)
        .await?;
    ensure!(
        read_all(s, &key).await? == b"second, from a file",
        "overwrite from a file"
    );
    let empty = format!("{p}empty");
    s.put(&empty, &PutSource::Bytes(Vec::new()), PutMode::Overwrite)
        .await?;
    ensure!(read_all(s, &empty).await?.is_empty(), "empty object");
    s.delete(&key).await?;
    s.delete(&empty).await?;
    ensure!(
        s.get(&key).await.is_err_and(|e| e.is_not_found()),
        "deleted key still readable"
    );
    Ok(())
}

pub async fn put_if_absent<S: ReplicaStore + ?Sized>(
    s: &S,
    p: &str,
    conditional: bool,
) -> Result<(), StoreError> {
    let caps = s.probe(&format!("{p}probe")).await?;
    ensure!(
        caps.conditional_put == conditional,
        "probe found conditional_put = {}, expected {conditional}",
        caps.conditional_put
    );
    let key = format!("{p}0000000000000001-0000000000000001.ltx");
    s.put(
        &key,
        &PutSource::Bytes(b"writer one".to_vec()),
        PutMode::Create,
    )
    .await?;
    let second = s
        .put(
            &key,
            &PutSource::Bytes(b"writer two".to_vec()),
            PutMode::Create,
        )
        .await;
    let now = read_all(s, &key).await?;
    if conditional {
        ensure!(
            second.as_ref().is_err_and(|e| e.is_already_exists()),
            "second put-if-absent: want AlreadyExists, got {second:?}"
        );
        ensure!(now == b"writer one", "refused put changed the object");
        let msg = second.err().map(|e| e.to_string()).unwrap_or_default();
        ensure!(
            msg.contains("another writer owns this replica"),
            "conflict message: {msg}"
        );
    } else {
        ensure!(
            second.is_ok(),
            "second put on a store without conditional writes failed: {second:?}"
        );
        ensure!(
            now == b"writer two",
            "store ignored the condition but kept the old bytes"
        );
    }
    s.delete(&key).await?;
    Ok(())
}

/// Four writers put-if-absent the same key at once: on a store that honours
/// the condition exactly one wins and the object holds its bytes; on one
/// that does not, every put succeeds and the object is one of them.
pub async fn racing_puts_if_absent<S: ReplicaStore + ?Sized>(
    s: &S,
    p: &str,
    conditional: bool,
) -> Result<(), StoreError> {
    let key = format!("{p}0000000000000001-0000000000000001.ltx");
    let put = |n: u8| {
        let key = key.clone();
        async move {
            let body = PutSource::Bytes(format!("racing writer {n}").into_bytes());
            s.put(&key, &body, PutMode::Create).await
        }
    };
    let results = tokio::join!(put(0), put(1), put(2), put(3));
    let results = [results.0, results.1, results.2, results.3];
    let now = read_all(s, &key).await?;
    let won: Vec<usize> = (0..4).filter(|&i| results[i].is_ok()).collect();
    for r in &results {
        if let Err(e) = r {
            ensure!(
                conditional && e.is_already_exists(),
                "racing put-if-absent failed with {e} (conditional: {conditional})"
            );
        }
    }
    if conditional {
        ensure!(
            won.len() == 1,
            "racing put-if-absent: {} winners",
            won.len()
        );
        ensure!(
            now == format!("racing writer {}", won[0]).into_bytes(),
            "the object does not hold the winner's bytes"
        );
    } else {
        ensure!(
            won.len() == 4,
            "racing puts without conditions: {results:?}"
        );
        ensure!(
            now.starts_with(b"racing writer "),
            "the object holds none of the racing writers' bytes"
        );
    }
    s.delete(&key).await?;
    Ok(())
}

/// A put-if-absent of `size` bytes from a file over an existing key: on a
/// store that honours the condition it is refused and the object keeps
/// the first bytes; otherwise it overwrites them.
pub async fn large_put_if_absent<S: ReplicaStore + ?Sized>(
    s: &S,
    p: &str,
    scratch: &Path,
    conditional: bool,
    size: u64,
) -> Result<(), StoreError> {
    let file = |name: &str, seed: u64| -> Result<std::path::PathBuf, StoreError> {
        let mut v = vec![0u8; size as usize];
        pattern(seed, 0, &mut v);
        let f = scratch.join(name);
        std::fs::write(&f, v).map_err(|e| fail(e.to_string()))?;
        Ok(f)
    };
    let (one, two) = (file("cond-one.bin", 1)?, file("cond-two.bin", 2)?);
    let key = format!("{p}0000000000000001-0000000000000002.ltx");
    s.put(&key, &PutSource::File(one.clone()), PutMode::Create)
        .await?;
    let second = s
        .put(&key, &PutSource::File(two.clone()), PutMode::Create)
        .await;
    let first = s.get_range(&key, 0, 64).await?;
    let mut want = vec![0u8; 64];
    if conditional {
        ensure!(
            second.as_ref().is_err_and(|e| e.is_already_exists()),
            "second put-if-absent of {size} bytes: want AlreadyExists, got {second:?}"
        );
        pattern(1, 0, &mut want);
        ensure!(
            first == want,
            "a refused put of {size} bytes changed the object"
        );
    } else {
        ensure!(second.is_ok(), "second put of {size} bytes: {second:?}");
        pattern(2, 0, &mut want);
        ensure!(
            first == want,
            "an unconditional put of {size} bytes kept the old bytes"
        );
    }
    let listed = s.list(p, None).await?;
    ensure!(
        listed.len() == 1 && listed[0].size == size,
        "after two puts of {size} bytes: {listed:?}"
    );
    s.delete(&key).await?;
    let _ = std::fs::remove_file(one);
    let _ = std::fs::remove_file(two);
    Ok(())
}

pub async fn ranged_reads<S: ReplicaStore + ?Sized>(s: &S, p: &str) -> Result<(), StoreError> {
    let key = format!("{p}obj");
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    s.put(&key, &PutSource::Bytes(data.clone()), PutMode::Overwrite)
        .await?;
    for (off, len, want) in [
        (0u64, 10u64, 0..10),
        (100, 200, 100..300),
        (990, 10, 990..1000),
        (995, 100, 995..1000),
    ] {
        let got = s.get_range(&key, off, len).await?;
        ensure!(
            got == data[want.clone()],
            "range {off}+{len}: got {} bytes",
            got.len()
        );
    }
    match s.get_range(&key, 1000, 10).await {
        Err(e) if !e.is_not_found() && !e.is_retryable() => {}
        other => {
            return Err(fail(format!(
                "range past the end: want a permanent error, got {other:?}"
            )))
        }
    }
    s.delete(&key).await?;
    Ok(())
}

pub async fn listing<S: ReplicaStore + ?Sized>(s: &S, p: &str) -> Result<(), StoreError> {
    let put = |k: String, n: usize| async move {
        s.put(&k, &PutSource::Bytes(vec![7u8; n]), PutMode::Overwrite)
            .await
    };
    // Written out of order; one nested, one sibling prefix, one temp name.
    put(format!("{p}d/0000000000000003-0000000000000003.ltx"), 3).await?;
    put(format!("{p}d/0000000000000001-0000000000000001.ltx"), 1).await?;
    put(format!("{p}d/0000000000000002-0000000000000002.ltx"), 2).await?;
    put(format!("{p}d/sub/0000000000000009-0000000000000009.ltx"), 9).await?;
    put(format!("{p}dx/0000000000000004-0000000000000004.ltx"), 4).await?;
    put(
        format!("{p}d/.0000000000000005-0000000000000005.ltx.tmp"),
        5,
    )
    .await?;
    let dir = format!("{p}d/");
    let all = s.list(&dir, None).await?;
    let names: Vec<&str> = all.iter().map(|o| o.name()).collect();
    ensure!(
        names
            == [
                "0000000000000001-0000000000000001.ltx",
                "0000000000000002-0000000000000002.ltx",
                "0000000000000003-0000000000000003.ltx"
            ],
        "listing: {names:?}"
    );
    ensure!(
        all.iter().map(|o| o.size).collect::<Vec<_>>() == [1, 2, 3],
        "sizes: {all:?}"
    );
    ensure!(
        all.iter().all(|o| o.key.starts_with(&dir)),
        "keys are full keys: {all:?}"
    );
    let after = s.list(&dir, Some(&all[0].key)).await?;
    ensure!(
        after.len() == 2 && after[0].key == all[1].key,
        "start-after: {after:?}"
    );
    let none = s.list(&dir, Some(&all[2].key)).await?;
    ensure!(none.is_empty(), "start-after the last key: {none:?}");
    for o in all {
        s.delete(&o.key).await?;
    }
    s.delete(&format!("{p}d/sub/0000000000000009-0000000000000009.ltx"))
        .await?;
    s.delete(&format!("{p}dx/0000000000000004-0000000000000004.ltx"))
        .await?;
    s.delete(&format!("{p}d/.0000000000000005-0000000000000005.ltx.tmp"))
        .await?;
    Ok(())
}

pub async fn failed_put_leaves_nothing<S: ReplicaStore + ?Sized>(
    s: &S,
    p: &str,
    scratch: &Path,
) -> Result<(), StoreError> {
    let key = format!("{p}x.ltx");
    let missing = scratch.join("does-not-exist.bin");
    let r = s
        .put(&key, &PutSource::File(missing), PutMode::Create)
        .await;
    ensure!(r.is_err(), "put from a missing file succeeded");
    ensure!(
        s.get(&key).await.is_err_and(|e| e.is_not_found()),
        "failed put left an object"
    );
    ensure!(
        s.list(p, None).await?.is_empty(),
        "failed put left a listing entry"
    );
    Ok(())
}

pub async fn large_object<S: ReplicaStore + ?Sized>(
    s: &S,
    p: &str,
    scratch: &Path,
    size: u64,
) -> Result<(), StoreError> {
    use std::io::Write;
    let file = scratch.join("large.bin");
    {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(&file).map_err(|e| fail(e.to_string()))?);
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < size {
            let n = (size - off).min(buf.len() as u64) as usize;
            pattern(42, off, &mut buf[..n]);
            f.write_all(&buf[..n]).map_err(|e| fail(e.to_string()))?;
            off += n as u64;
        }
        f.flush().map_err(|e| fail(e.to_string()))?;
    }
    let key = format!("{p}big.ltx");
    s.put(&key, &PutSource::File(file.clone()), PutMode::Create)
        .await?;
    let listed = s.list(p, None).await?;
    ensure!(
        listed.len() == 1 && listed[0].size == size,
        "large object listing: {listed:?}"
    );
    // Stream it back and compare chunk by chunk, never holding it whole.
    let mut r = s.get(&key).await?;
    let mut got = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = r
            .read(&mut got)
            .await
            .map_err(|e| fail(format!("large get: {e}")))?;
        if n == 0 {
            break;
        }
        pattern(42, off, &mut want[..n]);
        // `pattern` is aligned to 8 bytes: compare only aligned reads exactly.
        if off.is_multiple_of(8) {
            ensure!(
                got[..n] == want[..n],
                "large object differs near offset {off}"
            );
        }
        off += n as u64;
    }
    ensure!(off == size, "large object read back {off} of {size} bytes");
    let mid = size / 2 + 8 - (size / 2) % 8;
    let part = s.get_range(&key, mid, 4096).await?;
    pattern(42, mid, &mut want[..4096]);
    ensure!(part == want[..4096], "range in the large object");
    s.delete(&key).await?;
    let _ = std::fs::remove_file(&file);
    Ok(())
}
