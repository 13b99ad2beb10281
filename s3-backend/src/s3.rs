//! The S3 store (AWS S3, Garage, MinIO, R2) over `aws-sdk-s3`.
//!
//! Request checksums are sent only when an operation requires them: LTX files
//! carry their own CRC-64, and some S3-compatible servers reject the SDK's
//! default CRC32 headers. The SDK's own retries are off: [`crate::retry`]
//! applies one policy (attempt timeout, backoff with jitter, cancellation) to
//! every store. Objects larger than the part size go up as multipart uploads
//! streamed from the file one part at a time; a failed multipart upload is
//! aborted, so no part lingers and nothing appears under the key.

use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    retry::RetryConfig, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_types::byte_stream::Length;
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::error::{Result, StoreError};
use crate::store::{BoxFut, ObjectMeta, ObjectReader, PutMode, PutSource, ReplicaStore};

/// The smallest part S3 accepts (except the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// Connection settings of an S3 store.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// `http(s)://host:port` for S3-compatible servers; `None` for AWS.
    pub endpoint: Option<String>,
    /// Default `us-east-1`; must equal the server's region (Garage: `s3_region`).
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most
    /// self-hosted servers.
    pub force_path_style: bool,
    /// Static credentials; `None` uses the standard AWS chain (environment,
    /// profile files, web identity, container and instance metadata).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Objects above this size are uploaded in parts of this size. Default
    /// 16 MiB, minimum 5 MiB; AWS caps a single PUT at 5 GiB.
    pub part_size: u64,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for one request attempt, body transfer included.
    pub attempt_timeout: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field("access_key_id", &self.access_key_id)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            endpoint: None,
            region: None,
            force_path_style: false,
            access_key_id: None,
            secret_access_key: None,
            part_size: 16 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(120),
        }
    }
}

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    cfg: S3Config,
    name: String,
    /// Test hook: fail a multipart upload after this many parts.
    fail_after_parts: Option<usize>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("cfg", &self.cfg).finish()
    }
}

impl S3Store {
    pub async fn connect(cfg: S3Config) -> Result<Self> {
        if cfg.bucket.is_empty() {
            return Err(StoreError::Config("S3 bucket name is empty".into()));
        }
        if cfg.part_size < MIN_PART_SIZE {
            return Err(StoreError::Config(format!(
                "part size {} is below the S3 minimum of {MIN_PART_SIZE} bytes",
                cfg.part_size
            )));
        }
        let region = cfg
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".to_string());
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region));
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "sluice-config",
            ));
        } else if cfg.access_key_id.is_some() != cfg.secret_access_key.is_some() {
            return Err(StoreError::Config(
                "set both access-key-id and secret-access-key, or neither".into(),
            ));
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(cfg.connect_timeout)
                    .operation_attempt_timeout(cfg.attempt_timeout)
                    .build(),
            );
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep);
        }
        let name = match &cfg.endpoint {
            Some(ep) => format!("s3://{} at {ep}", cfg.bucket),
            None => format!("s3://{}", cfg.bucket),
        };
        Ok(S3Store {
            client: Client::from_conf(b.build()),
            cfg,
            name,
            fail_after_parts: None,
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// Test hook: make multipart uploads fail after `n` parts.
    #[doc(hidden)]
    pub fn fail_multipart_after(&mut self, n: usize) {
        self.fail_after_parts = Some(n);
    }

    /// Multipart uploads in progress under `key` (to check cleanup).
    pub async fn pending_multipart_uploads(&self, key: &str) -> Result<usize> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.cfg.bucket)
            .prefix(key)
            .send()
            .await
            .map_err(|e| self.classify("list uploads", key, e))?;
        Ok(out.uploads().len())
    }

    fn classify<E>(&self, op: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let store = self.name.clone();
        let key = key.to_string();
        let endpoint = self
            .cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| "AWS S3".to_string());
        match &err {
            SdkError::TimeoutError(_) => StoreError::Timeout {
                store,
                op,
                key,
                millis: self.cfg.attempt_timeout.as_millis() as u64,
            },
            SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => {
                StoreError::Unreachable {
                    store,
                    endpoint,
                    detail: DisplayErrorContext(&err).to_string(),
                }
            }
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = se.err().code().unwrap_or("");
                let msg = se.err().message().unwrap_or("");
                let detail = format!("HTTP {status} {code} {msg}").trim().to_string();
                match (status, code) {
                    (_, "NoSuchBucket") => StoreError::NoSuchBucket {
                        store,
                        bucket: self.cfg.bucket.clone(),
                    },
                    (_, "NoSuchKey") | (404, "") | (404, "NotFound") => {
                        StoreError::NotFound { store, key }
                    }
                    (403, _)
                    | (_, "InvalidAccessKeyId")
                    | (_, "SignatureDoesNotMatch")
                    | (_, "AccessDenied") => StoreError::Auth { store, detail },
                    (412, _) | (_, "PreconditionFailed") => {
                        StoreError::AlreadyExists { store, key }
                    }
                    (409 | 429 | 500..=599, _) => StoreError::Other {
                        store,
                        op,
                        key,
                        detail,
                        retryable: true,
                    },
                    _ => StoreError::Other {
                        store,
                        op,
                        key,
                        detail,
                        retryable: false,
                    },
                }
            }
            SdkError::ConstructionFailure(_) => StoreError::Other {
                store,
                op,
                key,
                detail: DisplayErrorContext(&err).to_string(),
                retryable: false,
            },
            _ => StoreError::Other {
                store,
                op,
                key,
                detail: DisplayErrorContext(&err).to_string(),
                retryable: true,
            },
        }
    }

    async fn body(&self, key: &str, src: &PutSource, offset: u64, len: u64) -> Result<ByteStream> {
        const SMALL_BODY: u64 = 8 << 20;
        let unreadable = |p: &std::path::Path, e: &dyn std::fmt::Display| StoreError::Other {
            store: self.name.clone(),
            op: "put",
            key: key.to_string(),
            detail: format!("cannot read {}: {e}", p.display()),
            retryable: false,
        };
        match src {
            PutSource::Bytes(b) => {
                let end = (offset + len) as usize;
                Ok(ByteStream::from(b[offset as usize..end].to_vec()))
            }
            // A small file is read at once, in one trip to the blocking pool
            // (a file-backed stream makes a thread hop per chunk); never on
            // the executor, which also serves metrics and the watchdog.
            PutSource::File(p) if len <= SMALL_BODY => {
                let path = p.clone();
                let read = move || -> std::io::Result<Vec<u8>> {
                    use std::os::unix::fs::FileExt;
                    let f = std::fs::File::open(&path)?;
                    let mut b = vec![0u8; len as usize];
                    f.read_exact_at(&mut b, offset)?;
                    Ok(b)
                };
                match tokio::task::spawn_blocking(read).await {
                    Ok(r) => r.map(ByteStream::from).map_err(|e| unreadable(p, &e)),
                    Err(e) => Err(unreadable(p, &e)),
                }
            }
            PutSource::File(p) => ByteStream::read_from()
                .path(p)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| unreadable(p, &e)),
        }
    }

    async fn put_single(&self, key: &str, src: &PutSource, len: u64, mode: PutMode) -> Result<()> {
        let body = self.body(key, src, 0, len).await?;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .content_length(len as i64)
            .body(body);
        if mode == PutMode::Create {
            req = req.if_none_match("*");
        }
        req.send().await.map_err(|e| self.classify("put", key, e))?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        key: &str,
        src: &PutSource,
        len: u64,
        mode: PutMode,
    ) -> Result<()> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.classify("create multipart upload", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        if upload_id.is_empty() {
            return Err(StoreError::Other {
                store: self.name.clone(),
                op: "create multipart upload",
                key: key.to_string(),
                detail: "server returned no upload ID".into(),
                retryable: true,
            });
        }
        let result = self.upload_parts(key, src, len, mode, &upload_id).await;
        if result.is_err() {
            // Best effort: an abort that fails leaves parts the bucket's
            // lifecycle rules must collect, but never a visible object.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        src: &PutSource,
        len: u64,
        mode: PutMode,
        upload_id: &str,
    ) -> Result<()> {
        let part_size = self.cfg.part_size;
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut number = 1i32;
        while offset < len {
            if self.fail_after_parts == Some(parts.len()) {
                return Err(StoreError::Other {
                    store: self.name.clone(),
                    op: "upload part",
                    key: key.to_string(),
                    detail: "injected failure".into(),
                    retryable: false,
                });
            }
            let n = part_size.min(len - offset);
            let body = self.body(key, src, offset, n).await?;
            let out = self
                .client
                .upload_part()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(n as i64)
                .body(body)
                .send()
                .await
                .map_err(|e| self.classify("upload part", key, e))?;
            parts.push(
                CompletedPart::builder()
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .part_number(number)
                    .build(),
            );
            offset += n;
            number += 1;
        }
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        if mode == PutMode::Create {
            req = req.if_none_match("*");
        }
        req.send()
            .await
            .map_err(|e| self.classify("complete multipart upload", key, e))?;
        Ok(())
    }
}

impl ReplicaStore for S3Store {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn put<'a>(&'a self, key: &'a str, src: &'a PutSource, mode: PutMode) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let len = src.len().await.map_err(|e| StoreError::Io {
                store: self.name.clone(),
                op: "put",
                key: key.to_string(),
                source: e,
            })?;
            if len > self.cfg.part_size {
                self.put_multipart(key, src, len, mode).await
            } else {
                self.put_single(key, src, len, mode).await
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, ObjectReader> {
        Box::pin(async move {
            let out = self
                .client
                .get_object()
                .bucket(&self.cfg.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| self.classify("get", key, e))?;
            let r: ObjectReader = Box::pin(out.body.into_async_read());
            Ok(r)
        })
    }

    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFut<'a, Vec<u8>> {
        Box::pin(async move {
            if len == 0 {
                return Ok(Vec::new());
            }
            let out = self
                .client
                .get_object()
                .bucket(&self.cfg.bucket)
                .key(key)
                .range(format!("bytes={}-{}", offset, offset + len - 1))
                .send()
                .await
                .map_err(|e| self.classify("get range", key, e))?;
            let data = out.body.collect().await.map_err(|e| StoreError::Other {
                store: self.name.clone(),
                op: "get range",
                key: key.to_string(),
                detail: format!("body: {e}"),
                retryable: true,
            })?;
            let mut v: Vec<u8> = data.into_bytes().into();
            v.truncate(len as usize);
            Ok(v)
        })
    }

    fn list<'a>(
        &'a self,
        dir: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxFut<'a, Vec<ObjectMeta>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            // A listing of a million keys is 1000 pages; stop well past that.
            for _ in 0..100_000 {
                let resp = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.cfg.bucket)
                    .prefix(dir)
                    .delimiter("/")
                    .set_start_after(start_after.map(str::to_string))
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| self.classify("list", dir, e))?;
                for o in resp.contents() {
                    let Some(key) = o.key() else { continue };
                    let name = &key[dir.len().min(key.len())..];
                    if name.starts_with('.') || name.contains('/') {
                        continue;
                    }
                    out.push(ObjectMeta {
                        key: key.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        last_modified: o
                            .last_modified()
                            .and_then(|d| SystemTime::try_from(*d).ok()),
                    });
                }
                match (resp.is_truncated(), resp.next_continuation_token()) {
                    (Some(true), Some(t)) => token = Some(t.to_string()),
                    _ => {
                        out.sort_by(|a, b| a.key.cmp(&b.key));
                        return Ok(out);
                    }
                }
            }
            Err(StoreError::Other {
                store: self.name.clone(),
                op: "list",
                key: dir.to_string(),
                detail: "listing did not end after 100000 pages".into(),
                retryable: false,
            })
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.client
                .delete_object()
                .bucket(&self.cfg.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| self.classify("delete", key, e))?;
            Ok(())
        })
    }
}
