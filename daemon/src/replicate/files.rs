//! The staging directory: local LTX files laid out as a `file://` replica
//! (`ltx/<level>/<min>-<max>.ltx`).

use std::path::{Path, PathBuf};

use ltx_format::{parse_filename, Txid};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    pub level: u8,
    pub min: Txid,
    pub max: Txid,
    pub path: PathBuf,
}

pub fn level_dir(ltx: &Path, level: u8) -> PathBuf {
    ltx.join(level.to_string())
}

/// Files of one level, by (max, min).
pub fn list_level(ltx: &Path, level: u8) -> std::io::Result<Vec<LocalFile>> {
    let dir = level_dir(ltx, level);
    let rd = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e?;
        let name = e.file_name();
        let Some((min, max)) = name.to_str().and_then(parse_filename) else {
            continue;
        };
        out.push(LocalFile {
            level,
            min,
            max,
            path: e.path(),
        });
    }
    out.sort_by_key(|f| (f.max, f.min));
    Ok(out)
}
