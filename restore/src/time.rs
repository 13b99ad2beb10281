//! RFC 3339 timestamps, parsed and printed with millisecond precision, without
//! a date-time dependency.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// `2026-11-23T16:42:41` (no zone) for whole seconds since the Unix epoch.
fn format_date_time(secs: i64) -> String {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

/// `2026-11-23T16:42:41.434Z` for milliseconds since the Unix epoch.
pub fn format_ms(ms: i64) -> String {
    format!(
        "{}.{:03}Z",
        format_date_time(ms.div_euclid(1000)),
        ms.rem_euclid(1000)
    )
}

/// `2026-11-23T16:42:41Z` (whole seconds, as `litestream ltx` prints) for
/// milliseconds since the Unix epoch.
pub fn format_secs(ms: i64) -> String {
    format!("{}Z", format_date_time(ms.div_euclid(1000)))
}

/// [`format_secs`] of a system time.
pub fn format_system_time(t: std::time::SystemTime) -> String {
    let ms = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    };
    format_secs(ms)
}

/// Parses an RFC 3339 date-time (`2026-11-23T16:42:41Z`,
/// `2026-11-23T17:42:41.5+01:00`, lowercase `t`/`z` and a space separator
/// accepted) into milliseconds since the Unix epoch. Fractions beyond
/// milliseconds are truncated.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad = |why: &str| {
        format!("invalid RFC 3339 timestamp {s:?}: {why} (example: 2026-11-23T16:42:41Z)")
    };
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 {
        return Err(bad("too short"));
    }
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    ) else {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS"));
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS"));
    }
    let y = i64::from(y);
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
        return Err(bad("no such date"));
    }
    if h > 23 || mi > 59 || sec > 60 {
        return Err(bad("no such time of day"));
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err(bad("empty fraction of a second"));
        }
        let digits = &s[start..i.min(start + 3)];
        ms = digits.parse::<i64>().map_err(|_| bad("bad fraction"))?
            * 10i64.pow(3 - digits.len() as u32);
    }
    let offset_min: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let (Some(oh), Some(om)) = (num(i + 1..i + 3), num(i + 4..i + 6)) else {
                return Err(bad("bad UTC offset"));
            };
            if oh > 23 || om > 59 {
                return Err(bad("bad UTC offset"));
            }
            let m = i64::from(oh * 60 + om);
            if *c == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return Err(bad("expected Z or a UTC offset like +01:00 at the end")),
    };
    let secs = days_from_civil(y, mo, d) * 86_400
        + i64::from(h) * 3600
        + i64::from(mi) * 60
        + i64::from(sec.min(59))
        - offset_min * 60;
    Ok(secs * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_offsets() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_795_355_603_419), "2026-11-22T13:53:23.419Z");
        assert_eq!(
            parse_rfc3339("2026-11-22T13:53:23.419Z"),
            Ok(1_795_355_603_419)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T13:53:23.4199Z"),
            Ok(1_795_355_603_419)
        );
        assert_eq!(parse_rfc3339("2026-11-22T13:53:23Z"), Ok(1_795_355_603_000));
        assert_eq!(
            parse_rfc3339("2026-11-22T14:53:23.5+01:00"),
            Ok(1_795_355_603_500)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22t08:23:23-05:30"),
            Ok(1_795_355_603_000)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Ok(951_782_400_000));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.999Z"), Ok(-1));
        for ms in [0i64, 1, 999, 951_782_400_123, 1_795_355_603_419, -1] {
            assert_eq!(parse_rfc3339(&format_ms(ms)), Ok(ms));
        }
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "2026-11-23",
            "2026-11-23T16:33:23",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T16:33:23.Z",
            "2026-11-23T16:33:23+0100",
            "2026/11/23T16:33:23Z",
            "yesterday",
        ] {
            let e = parse_rfc3339(s).unwrap_err();
            assert!(e.contains("invalid RFC 3339 timestamp"), "{s}: {e}");
        }
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn whole_seconds_like_litestream() {
        assert_eq!(format_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_secs(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_secs(1_795_452_161_999), "2026-11-23T16:42:41Z");
        assert_eq!(format_ms(1_795_452_161_999), "2026-11-23T16:42:41.999Z");
    }
}
