//! Step 4: the output. The checks before the download (a usable directory,
//! no output to clobber), the temporary file beside the output, the
//! checksums of the result, then the integrity check, fsync, rename and
//! directory fsync that put it in place.
//!
//! Every file-system call runs on the blocking pool. Until the rename the
//! output's own name is never touched, and a [`Temp`] that is dropped (an
//! error, or the restore future dropped) removes its file; a dropped
//! restore future never renames.

use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ltx_format::checksum::CHECKSUM_FLAG;
use ltx_format::Checksum;
use s3_backend::ReplicaStore;
use tempfile::TempPath;

use super::fetch::{Chunk, Job};
use super::inspect::{corrupt, corrupt_diagnosed, diagnose};
use super::meta::Chain;
use super::IntegrityCheck;
use crate::error::RestoreError;
use crate::plan::FileInfo;
use crate::verify::{self, ChunkOut};

/// Runs `f` on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, RestoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, RestoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RestoreError::Internal(e.to_string()))?
}

/// Where the restored database goes.
#[derive(Debug, Clone)]
pub(super) struct Dest {
    output: PathBuf,
    dir: PathBuf,
    name: String,
    overwrite: bool,
}

impl Dest {
    /// The output's directory exists, and the output does not unless it may
    /// be replaced.
    pub async fn check(output: &Path, overwrite: bool) -> Result<Dest, RestoreError> {
        let output = output.to_path_buf();
        blocking(move || {
            let (dir, name) = split_output(&output)?;
            if !overwrite && exists(&output)? {
                return Err(RestoreError::OutputExists(output));
            }
            Ok(Dest {
                output,
                dir,
                name,
                overwrite,
            })
        })
        .await
    }

    /// A new temporary file beside the output. A new database gets 0666
    /// less the umask, as any created file; a replaced one keeps its mode.
    pub async fn create_temp(&self) -> Result<Temp, RestoreError> {
        let d = self.clone();
        blocking(move || {
            let mode = match std::fs::metadata(&d.output) {
                Ok(m) if d.overwrite => m.permissions().mode() & 0o7777,
                _ => 0o666,
            };
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{}.", d.name))
                .suffix(".sluice-restore.tmp")
                .permissions(std::fs::Permissions::from_mode(mode))
                .tempfile_in(&d.dir)
                .map_err(|e| {
                    let what = format!("creating a temporary file in {}", d.dir.display());
                    RestoreError::Io(what, e)
                })?;
            let (file, path) = tmp.into_parts();
            Ok(Temp {
                shown: path.to_path_buf(),
                output: d.output,
                file,
                path,
            })
        })
        .await
    }

    /// Sizes the database, checks it if asked, fsyncs it and renames it into
    /// place, then fsyncs the directory. If this future is dropped before
    /// the rename, the rename does not happen.
    pub async fn put_in_place(
        &self,
        tmp: Temp,
        db_len: u64,
        check: IntegrityCheck,
    ) -> Result<(), RestoreError> {
        let tmp = blocking(move || {
            tmp.file
                .set_len(db_len)
                .map_err(|e| tmp.io_err("sizing", e))?;
            integrity_check(&tmp.shown, check)?;
            Ok(tmp)
        })
        .await?;
        let abandoned = Arc::new(AtomicBool::new(false));
        let _guard = SetOnDrop(abandoned.clone());
        let d = self.clone();
        blocking(move || {
            tmp.file.sync_all().map_err(|e| tmp.io_err("fsync", e))?;
            if abandoned.load(Ordering::SeqCst) {
                return Err(RestoreError::Internal("restore abandoned".into()));
            }
            d.rename(tmp)?;
            File::open(&d.dir)
                .and_then(|f| f.sync_all())
                .map_err(|e| RestoreError::Io(format!("fsync {}", d.dir.display()), e))
        })
        .await
    }

    /// Renames `tmp` to the output (blocking). Replacing an output also
    /// removes its `-wal`, `-shm` and `-journal`, which belong to the old
    /// database.
    fn rename(&self, tmp: Temp) -> Result<(), RestoreError> {
        let output = &self.output;
        let Temp {
            file, path, shown, ..
        } = tmp;
        drop(file);
        let failed = |e| {
            let what = format!("renaming {} to {}", shown.display(), output.display());
            RestoreError::Io(what, e)
        };
        if !self.overwrite {
            return path.persist_noclobber(output).map_err(|e| {
                if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                    RestoreError::OutputExists(output.clone())
                } else {
                    failed(e.error)
                }
            });
        }
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut p = output.as_os_str().to_owned();
            p.push(suffix);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let what = format!("removing {}", Path::new(&p).display());
                    return Err(RestoreError::Io(what, e));
                }
            }
        }
        path.persist(output).map_err(|e| failed(e.error))
    }
}

/// Sets the flag when dropped: tells a blocking task its caller is gone.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The temporary file the database is written into; removed when dropped
/// unless it was renamed into place.
#[derive(Debug)]
pub(super) struct Temp {
    file: File,
    path: TempPath,
    /// The temporary path, for messages.
    shown: PathBuf,
    output: PathBuf,
}

impl Temp {
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A local file-system error on the temporary file.
    pub fn io_err(&self, what: &str, e: std::io::Error) -> RestoreError {
        let what = format!(
            "{what} {} (for {})",
            self.shown.display(),
            self.output.display()
        );
        RestoreError::Io(what, e)
    }

    /// Removes the file, on the blocking pool. (Dropping a `Temp` removes
    /// it too, where it is dropped: a restore future dropped mid-way costs
    /// its executor that one unlink.)
    pub async fn discard(self) {
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

/// Checks each file (its checksum and layout when every byte was read, its
/// layout otherwise) and computes the database checksum of the result, which
/// must equal the last file's post-apply checksum when it carries one.
pub(super) async fn verify_result(
    store: &Arc<dyn ReplicaStore>,
    files: &[FileInfo],
    job: &Job,
    chunks: &[Chunk],
    outs: &[ChunkOut],
    chain: &Chain,
    out: &File,
) -> Result<Checksum, RestoreError> {
    let mut db_sum = 0u64;
    for (i, m) in job.metas.iter().enumerate() {
        let mine: Vec<ChunkOut> = chunks
            .iter()
            .zip(outs)
            .filter(|(c, _)| c.file == i)
            .map(|(_, o)| *o)
            .collect();
        db_sum ^= mine.iter().fold(0, |a, o| a ^ o.db_sum);
        let name = files[i].name();
        let name = Some(&*name);
        let checked = if job.full {
            verify::finish_full(m, name, &mine)
        } else {
            verify::check_layout(m, name, None)
        };
        if let Err(e) = checked {
            return Err(corrupt_diagnosed(store, &files[i], e).await);
        }
    }
    db_sum ^= job.owners.zero_pages_sum(&job.shifts);
    let checksum = Checksum(CHECKSUM_FLAG | db_sum);
    let key = || files.last().map(|f| f.key.clone()).unwrap_or_default();
    let mismatch = if chain.tracked_end && checksum != chain.last_post {
        Some(RestoreError::ChecksumMismatch {
            key: key(),
            expected: chain.last_post,
            actual: checksum,
        })
    } else {
        // The database checksum cannot see zero pages added or dropped in
        // runs whose page numbers XOR to zero (an even count): a damaged
        // commit field in a file whose bytes were not all read can grow the
        // result by such a run unseen. SQLite's own header says the size.
        let header =
            header_pages(out).map_err(|e| RestoreError::Io("reading the result".into(), e))?;
        header
            .filter(|&h| h != chain.commit)
            .map(|header| RestoreError::SizeMismatch {
                key: key(),
                header,
                commit: chain.commit,
            })
    };
    if let Some(mismatch) = mismatch {
        // Find the file to blame: verify each one completely.
        for f in files {
            if let Some(e) = diagnose(store, f).await {
                return Err(corrupt(f, e));
            }
        }
        return Err(mismatch);
    }
    Ok(checksum)
}

/// The database size in pages from the SQLite header of the file, when
/// the header marks it valid (`sqlite_header_pages`). `None` for anything
/// else (an older writer, a file that is not a SQLite database).
fn header_pages(out: &File) -> std::io::Result<Option<u32>> {
    let mut h = [0u8; 100];
    match out.read_exact_at(&mut h, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if !h.starts_with(b"SQLite format 3\0") {
        return Ok(None);
    }
    Ok(ltx_format::checksum::sqlite_header_pages(&h))
}

fn exists(p: &Path) -> Result<bool, RestoreError> {
    match std::fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(RestoreError::Io(format!("checking {}", p.display()), e)),
    }
}

fn split_output(output: &Path) -> Result<(PathBuf, String), RestoreError> {
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            RestoreError::Usage(format!("output {} has no file name", output.display()))
        })?
        .to_string();
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(RestoreError::Usage(format!(
            "the output's directory {} does not exist",
            dir.display()
        )));
    }
    Ok((dir, name))
}

fn sqlite_uri(path: &Path) -> String {
    let mut s = String::from("file:");
    for b in path.to_string_lossy().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                s.push(b as char)
            }
            _ => s.push_str(&format!("%{b:02X}")),
        }
    }
    s.push_str("?immutable=1");
    s
}

/// Runs `PRAGMA quick_check` or `integrity_check` on a database without
/// changing it (opened immutable: no locks, no `-wal`/`-shm`). Blocking.
pub fn integrity_check(path: &Path, mode: IntegrityCheck) -> Result<(), RestoreError> {
    use rusqlite::OpenFlags;
    let pragma = match mode {
        IntegrityCheck::None => return Ok(()),
        IntegrityCheck::Quick => "PRAGMA quick_check",
        IntegrityCheck::Full => "PRAGMA integrity_check",
    };
    let fail = |detail: String| RestoreError::Integrity {
        mode: mode.as_str(),
        detail,
    };
    let c = rusqlite::Connection::open_with_flags(
        sqlite_uri(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut st = c.prepare(pragma).map_err(|e| fail(e.to_string()))?;
    let rows: Vec<String> = st
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| fail(e.to_string()))?
        .take(20)
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(fail(rows.join("; ")))
    }
}
