//! FUSE attributes from backing-file metadata.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

/// The attributes the kernel caches for inode `ino`, from its backing file's
/// metadata (`ino` replaces the backing inode number).
pub fn file_attr(ino: u64, m: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: file_type(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink().try_into().unwrap_or(u32::MAX),
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize().try_into().unwrap_or(4096),
        flags: 0,
    }
}

/// The FUSE file type of a backing file.
pub fn file_type(m: &Metadata) -> FileType {
    FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile)
}

/// A timestamp from `stat` seconds and nanoseconds (seconds may be negative).
fn time(secs: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::new(0, nsec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_carry_the_fuse_inode_and_the_backing_metadata() {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), b"hello").expect("write");
        let m = std::fs::metadata(f.path()).expect("stat");
        let a = file_attr(42, &m);
        assert_eq!(a.ino, INodeNo(42));
        assert_eq!(a.size, 5);
        assert_eq!(a.kind, FileType::RegularFile);
        assert_eq!(u32::from(a.perm), m.mode() & 0o7777);
        assert_eq!(a.mtime, m.modified().expect("mtime"));
        assert_eq!(
            time(-1, 500),
            UNIX_EPOCH - Duration::from_secs(1) + Duration::new(0, 500)
        );
    }
}
