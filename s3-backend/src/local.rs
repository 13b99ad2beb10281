//! The local-directory store (`file:///abs/path`). Writes go to a temporary
//! file in the target directory, are fsynced, then renamed (overwrite) or
//! hard-linked (put-if-absent: `link` fails if the name exists, atomically),
//! and the directory is fsynced. A crash leaves at most a `.…tmp` file, which
//! listings skip.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, StoreError};
use crate::store::{BoxFut, ObjectMeta, ObjectReader, PutMode, PutSource, ReplicaStore};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, op: &'static str, key: &str) -> Result<PathBuf> {
        let rel = Path::new(key);
        if key.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(StoreError::Other {
                store: self.describe(),
                op,
                key: key.to_string(),
                detail: "key must be a relative path without '..' or '.' components".into(),
                retryable: false,
            });
        }
        Ok(self.root.join(rel))
    }

    fn io_err(&self, op: &'static str, key: &str, e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::NotFound {
            StoreError::NotFound {
                store: self.describe(),
                key: key.to_string(),
            }
        } else {
            StoreError::Io {
                store: self.describe(),
                op,
                key: key.to_string(),
                source: e,
            }
        }
    }

    fn put_blocking(&self, key: &str, src: &PutSource, mode: PutMode) -> Result<()> {
        let path = self.path("put", key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let io = |e| StoreError::Io {
            store: self.describe(),
            op: "put",
            key: key.to_string(),
            source: e,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        let tmp = dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| -> io::Result<bool> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            match src {
                PutSource::Bytes(b) => f.write_all(b)?,
                PutSource::File(p) => {
                    let mut s = File::open(p)?;
                    io::copy(&mut s, &mut f)?;
                }
            }
            f.sync_all()?;
            drop(f);
            let placed = match mode {
                PutMode::Overwrite => {
                    fs::rename(&tmp, &path)?;
                    true
                }
                PutMode::Create => match fs::hard_link(&tmp, &path) {
                    Ok(()) => true,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                    Err(e) => return Err(e),
                },
            };
            File::open(&dir)?.sync_all()?;
            Ok(placed)
        })();
        let _ = fs::remove_file(&tmp);
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::AlreadyExists {
                store: self.describe(),
                key: key.to_string(),
            }),
            Err(e) => Err(io(e)),
        }
    }

    fn list_blocking(&self, dir: &str, start_after: Option<&str>) -> Result<Vec<ObjectMeta>> {
        let trimmed = dir.trim_end_matches('/');
        let path = if trimmed.is_empty() {
            self.root.clone()
        } else {
            self.path("list", trimmed)?
        };
        let entries = match fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_err("list", dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io_err("list", dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Removed between readdir and stat.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_err("list", dir, e)),
            };
            if !meta.is_file() {
                continue;
            }
            let key = format!("{dir}{name}");
            if start_after.is_some_and(|s| key.as_str() <= s) {
                continue;
            }
            out.push(ObjectMeta {
                key,
                size: meta.len(),
                last_modified: meta.modified().ok(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

async fn blocking<T: Send + 'static>(
    store: &LocalStore,
    f: impl FnOnce(LocalStore) -> Result<T> + Send + 'static,
) -> Result<T> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(s))
        .await
        .map_err(|e| StoreError::Other {
            store: store.describe(),
            op: "blocking task",
            key: String::new(),
            detail: e.to_string(),
            retryable: false,
        })?
}

impl ReplicaStore for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put<'a>(&'a self, key: &'a str, src: &'a PutSource, mode: PutMode) -> BoxFut<'a, ()> {
        let (key2, src2) = (key.to_string(), src.clone());
        Box::pin(blocking(self, move |s| s.put_blocking(&key2, &src2, mode)))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, ObjectReader> {
        Box::pin(async move {
            let path = self.path("get", key)?;
            let f = tokio::fs::File::open(&path)
                .await
                .map_err(|e| self.io_err("get", key, e))?;
            let r: ObjectReader = Box::pin(tokio::io::BufReader::with_capacity(256 * 1024, f));
            Ok(r)
        })
    }

    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFut<'a, Vec<u8>> {
        let key2 = key.to_string();
        Box::pin(blocking(self, move |s| {
            let path = s.path("get range", &key2)?;
            let f = File::open(&path).map_err(|e| s.io_err("get range", &key2, e))?;
            let size = f
                .metadata()
                .map_err(|e| s.io_err("get range", &key2, e))?
                .len();
            if offset >= size {
                return Err(crate::memory::past_end(&s.describe(), &key2, offset, size));
            }
            let n = len.min(size - offset) as usize;
            let mut buf = vec![0u8; n];
            f.read_exact_at(&mut buf, offset)
                .map_err(|e| s.io_err("get range", &key2, e))?;
            Ok(buf)
        }))
    }

    fn list<'a>(
        &'a self,
        dir: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxFut<'a, Vec<ObjectMeta>> {
        let (dir2, sa) = (dir.to_string(), start_after.map(str::to_string));
        Box::pin(blocking(self, move |s| {
            s.list_blocking(&dir2, sa.as_deref())
        }))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, ()> {
        let key2 = key.to_string();
        Box::pin(blocking(self, move |s| {
            let path = s.path("delete", &key2)?;
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(s.io_err("delete", &key2, e)),
            }
        }))
    }
}
