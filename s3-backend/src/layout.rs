//! Object keys, built in one place (Litestream 0.5 layout).
//!
//! | store | key |
//! |---|---|
//! | local directory | `<root>/ltx/<level>/<min:016x>-<max:016x>.ltx` |
//! | S3 | `<prefix>/<level:04x>/<min:016x>-<max:016x>.ltx` |

use ltx_format::{format_filename, parse_filename, Txid};

/// The snapshot level (Litestream's `SnapshotLevel`).
pub const SNAPSHOT_LEVEL: u8 = 9;

/// Which layout a store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    /// `ltx/<level>/` (decimal level), as Litestream's file replica.
    File,
    /// `<level:04x>/`, as Litestream's S3 replica.
    S3,
}

/// Builds and parses the keys of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    kind: LayoutKind,
    prefix: String,
}

impl Layout {
    /// `prefix` is the replica's root inside the store ("" for the root);
    /// leading and trailing slashes are ignored.
    pub fn new(kind: LayoutKind, prefix: &str) -> Self {
        Layout {
            kind,
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    fn join(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// The directory (with trailing slash) holding one level's files.
    pub fn level_dir(&self, level: u8) -> String {
        match self.kind {
            LayoutKind::File => self.join(&format!("ltx/{level}/")),
            LayoutKind::S3 => self.join(&format!("{level:04x}/")),
        }
    }

    /// The key of one LTX file.
    pub fn ltx_key(&self, level: u8, min: Txid, max: Txid) -> String {
        format!("{}{}", self.level_dir(level), format_filename(min, max))
    }

    /// A key for Sluice's own objects (probe, lease, drill reports), under a
    /// directory Litestream never lists.
    pub fn sluice_key(&self, name: &str) -> String {
        self.join(&format!(".sluice/{name}"))
    }

    /// Parses a key under [`Layout::level_dir`] back into `(level, min, max)`.
    pub fn parse_ltx_key(&self, key: &str) -> Option<(u8, Txid, Txid)> {
        let (dir, name) = key.rsplit_once('/')?;
        let (min, max) = parse_filename(name)?;
        let level_part = dir.rsplit('/').next()?;
        let level = match self.kind {
            LayoutKind::File => level_part.parse::<u8>().ok()?,
            LayoutKind::S3 => {
                if level_part.len() != 4 {
                    return None;
                }
                u8::try_from(u16::from_str_radix(level_part, 16).ok()?).ok()?
            }
        };
        (self.level_dir(level) + name == key).then_some((level, min, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let f = Layout::new(LayoutKind::File, "/");
        assert_eq!(
            f.ltx_key(9, Txid(1), Txid(0x14)),
            "ltx/9/0000000000000001-0000000000000014.ltx"
        );
        let s = Layout::new(LayoutKind::S3, "db/app/");
        let k = s.ltx_key(1, Txid(2), Txid(4));
        assert_eq!(k, "db/app/0001/0000000000000002-0000000000000004.ltx");
        assert_eq!(s.parse_ltx_key(&k), Some((1, Txid(2), Txid(4))));
        assert_eq!(
            s.parse_ltx_key("db/app/01/0000000000000002-0000000000000004.ltx"),
            None
        );
        assert_eq!(
            f.parse_ltx_key("ltx/0/000000000000000a-000000000000000a.ltx"),
            Some((0, Txid(10), Txid(10)))
        );
    }
}
