//! LTX file names: `%016x-%016x.ltx`, lowercase hex, as Go's `FormatFilename`.

use crate::Txid;

/// `0000000000000001-000000000000000c.ltx`.
pub fn format_filename(min: Txid, max: Txid) -> String {
    format!("{:016x}-{:016x}.ltx", min.0, max.0)
}

/// Parses a file name of the exact form `^[0-9a-f]{16}-[0-9a-f]{16}\.ltx$`.
pub fn parse_filename(name: &str) -> Option<(Txid, Txid)> {
    let b = name.as_bytes();
    if b.len() != 37 || b[16] != b'-' || &b[33..] != b".ltx" {
        return None;
    }
    let hex = |s: &[u8]| -> Option<u64> {
        if !s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
    };
    Some((Txid(hex(&b[..16])?), Txid(hex(&b[17..33])?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let n = format_filename(Txid(1), Txid(0xc));
        assert_eq!(n, "0000000000000001-000000000000000c.ltx");
        assert_eq!(parse_filename(&n), Some((Txid(1), Txid(0xc))));
        assert_eq!(
            parse_filename("0000000000000001-000000000000000C.ltx"),
            None
        );
        assert_eq!(parse_filename("000000000000001-000000000000000c.ltx"), None);
        assert_eq!(
            parse_filename("0000000000000001-000000000000000c.ltx.tmp"),
            None
        );
    }
}
