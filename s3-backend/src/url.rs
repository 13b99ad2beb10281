//! Replica URLs, compatible with Litestream's:
//!
//! - `file:///abs/path`
//! - `s3://bucket/prefix?endpoint=http://host:port&region=r&force-path-style=true`
//!
//! Credentials never go in a URL: they come from config or the standard AWS
//! chain (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles, …).

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Result, StoreError};
use crate::layout::{Layout, LayoutKind};
use crate::local::LocalStore;
use crate::retry::{RetryPolicy, RetryingStore, Shutdown};
use crate::s3::{S3Config, S3Store};
use crate::store::ReplicaStore;

/// A parsed replica location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaUrl {
    File { root: PathBuf },
    S3 { config: S3Config, prefix: String },
}

fn bad(url: &str, detail: impl Into<String>) -> StoreError {
    StoreError::InvalidUrl {
        url: url.to_string(),
        detail: detail.into(),
    }
}

fn percent_decode(url: &str, s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad(url, format!("bad percent-escape in {s:?}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad(url, format!("{s:?} is not UTF-8 once decoded")))
}

impl ReplicaUrl {
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(rest) = url.strip_prefix("file://") {
            if rest.contains('?') {
                return Err(bad(url, "file URLs take no query parameters"));
            }
            if !rest.starts_with('/') {
                return Err(bad(
                    url,
                    "a file URL needs an absolute path: file:///abs/path (three slashes)",
                ));
            }
            let path = percent_decode(url, rest)?;
            if path.split('/').any(|c| c == "..") {
                return Err(bad(url, "the path must not contain '..'"));
            }
            return Ok(ReplicaUrl::File {
                root: PathBuf::from(path),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (loc, query) = rest.split_once('?').unwrap_or((rest, ""));
            let (bucket, prefix) = loc.split_once('/').unwrap_or((loc, ""));
            if bucket.is_empty() {
                return Err(bad(url, "missing bucket name: s3://BUCKET/prefix"));
            }
            if !bucket.bytes().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.' || c == b'_'
            }) {
                return Err(bad(
                    url,
                    format!("bucket {bucket:?} may hold only lowercase letters, digits, '-', '.' and '_'"),
                ));
            }
            let mut config = S3Config::new(bucket);
            let mut path_style: Option<bool> = None;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let v = percent_decode(url, v)?;
                match k {
                    "endpoint" => {
                        if !(v.starts_with("http://") || v.starts_with("https://")) {
                            return Err(bad(
                                url,
                                format!("endpoint {v:?} needs a scheme: endpoint=http://host:port or https://host"),
                            ));
                        }
                        config.endpoint = Some(v.trim_end_matches('/').to_string());
                    }
                    "region" => {
                        if v.is_empty() {
                            return Err(bad(url, "region is empty"));
                        }
                        config.region = Some(v);
                    }
                    "force-path-style" | "forcePathStyle" => {
                        path_style = Some(match v.as_str() {
                            "true" | "1" | "" => true,
                            "false" | "0" => false,
                            other => {
                                return Err(bad(
                                    url,
                                    format!("force-path-style must be true or false, not {other:?}"),
                                ))
                            }
                        });
                    }
                    other => {
                        return Err(bad(
                            url,
                            format!("unknown parameter {other:?}; known: endpoint, region, force-path-style"),
                        ))
                    }
                }
            }
            // Self-hosted endpoints almost always need path-style addressing.
            config.force_path_style = path_style.unwrap_or(config.endpoint.is_some());
            let prefix = percent_decode(url, prefix)?.trim_matches('/').to_string();
            return Ok(ReplicaUrl::S3 { config, prefix });
        }
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        Err(bad(
            url,
            if scheme.is_empty() {
                "not a URL; use file:///abs/path or s3://bucket/prefix".to_string()
            } else {
                format!("unsupported scheme {scheme:?}; use file:///abs/path or s3://bucket/prefix")
            },
        ))
    }

    /// The key layout of this replica.
    pub fn layout(&self) -> Layout {
        match self {
            ReplicaUrl::File { .. } => Layout::new(LayoutKind::File, ""),
            ReplicaUrl::S3 { prefix, .. } => Layout::new(LayoutKind::S3, prefix),
        }
    }

    /// Connects the store, wrapped in the retry policy.
    pub async fn open(
        &self,
        policy: RetryPolicy,
        shutdown: Shutdown,
    ) -> Result<Arc<dyn ReplicaStore>> {
        Ok(match self {
            ReplicaUrl::File { root } => Arc::new(RetryingStore::new(
                LocalStore::new(root.clone()),
                policy,
                shutdown,
            )),
            ReplicaUrl::S3 { config, .. } => {
                let mut config = config.clone();
                config.attempt_timeout = policy.attempt_timeout;
                Arc::new(RetryingStore::new(
                    S3Store::connect(config).await?,
                    policy,
                    shutdown,
                ))
            }
        })
    }
}

impl std::fmt::Display for ReplicaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaUrl::File { root } => write!(f, "file://{}", root.display()),
            ReplicaUrl::S3 { config, prefix } => {
                write!(f, "s3://{}/{prefix}", config.bucket)?;
                if let Some(ep) = &config.endpoint {
                    write!(f, " at {ep}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_litestream_urls() {
        let u = ReplicaUrl::parse("file:///var/lib/replica").unwrap();
        assert_eq!(
            u,
            ReplicaUrl::File {
                root: "/var/lib/replica".into()
            }
        );
        let u = ReplicaUrl::parse(
            "s3://my-bucket/db/app?endpoint=http%3A%2F%2F127.0.0.1%3A3900&region=garage",
        )
        .unwrap();
        let ReplicaUrl::S3 { config, prefix } = &u else {
            panic!()
        };
        assert_eq!(config.bucket, "my-bucket");
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(config.region.as_deref(), Some("garage"));
        assert!(config.force_path_style);
        assert_eq!(prefix, "db/app");
        assert_eq!(
            u.layout()
                .ltx_key(0, ltx_format::Txid(1), ltx_format::Txid(1)),
            "db/app/0000/0000000000000001-0000000000000001.ltx"
        );
        let u = ReplicaUrl::parse("s3://b").unwrap();
        let ReplicaUrl::S3 { config, prefix } = &u else {
            panic!()
        };
        assert!(!config.force_path_style && prefix.is_empty());
    }

    #[test]
    fn errors_name_the_bad_part() {
        let cases = [
            ("file://relative/path", "absolute path"),
            ("s3:///prefix", "missing bucket"),
            ("s3://Bad_Bucket/x", "\"Bad_Bucket\""),
            ("s3://b/x?endpoint=127.0.0.1:9000", "needs a scheme"),
            ("s3://b/x?bogus=1", "unknown parameter \"bogus\""),
            ("s3://b/x?force-path-style=maybe", "\"maybe\""),
            ("gs://b/x", "unsupported scheme \"gs\""),
            ("/just/a/path", "not a URL"),
        ];
        for (url, want) in cases {
            let e = ReplicaUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(url), "{url}: {e}");
        }
    }
}
