//! Wall-clock helpers. The simulator has no date library: it only needs to print
//! UTC instants the way Graph and Entra do, and to check ISO-8601 input.

/// Milliseconds since the Unix epoch (0 if the clock is before 1970), from the
/// workspace's one reading of the wall clock.
pub fn now_ms() -> u64 {
    u64::try_from(gwb_runtime::clock::system_now_ms()).unwrap_or(0)
}

struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
}

// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil(ms: u64) -> Civil {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil { year, month, day, hour: rem / 3600, minute: rem % 3600 / 60, second: rem % 60 }
}

/// `2024-05-01T12:34:56Z`, the form Graph uses for `createdDateTime`.
pub fn iso8601(ms: u64) -> String {
    let c = civil(ms);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

/// `2024-05-01T12:34:56`, the form Graph puts in `innerError.date`.
pub fn graph_error_date(ms: u64) -> String {
    let mut s = iso8601(ms);
    s.pop();
    s
}

/// `2024-05-01 12:34:56Z`, the form Entra puts in token-endpoint errors.
pub fn aad_timestamp(ms: u64) -> String {
    iso8601(ms).replacen('T', " ", 1)
}

/// Unix ms of an ISO 8601 instant (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`).
pub fn parse_iso8601(s: &str) -> Option<u64> {
    if !is_iso8601(s) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Howard Hinnant's days-from-civil algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        let digits: String = frac[..n].chars().chain("000".chars()).take(3).collect();
        millis = digits.parse().ok()?;
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        tz => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (tz.get(1..3)?.parse::<i64>().ok()? * 3600 + tz.get(4..6)?.parse::<i64>().ok()? * 60)
        }
    };
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Accepts `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
pub fn is_iso8601(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        "Z" | "z" => true,
        tz => {
            let t = tz.as_bytes();
            t.len() == 6
                && matches!(t[0], b'+' | b'-')
                && t[1..3].iter().all(u8::is_ascii_digit)
                && t[3] == b':'
                && t[4..6].iter().all(u8::is_ascii_digit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_714_566_896_000), "2024-05-01T12:34:56Z");
        assert_eq!(aad_timestamp(1_714_566_896_000), "2024-05-01 12:34:56Z");
        assert_eq!(graph_error_date(1_714_566_896_000), "2024-05-01T12:34:56");
    }

    #[test]
    fn parses_iso8601() {
        assert_eq!(parse_iso8601("2024-05-01T12:34:56Z"), Some(1_714_566_896_000));
        assert_eq!(parse_iso8601("2000-02-29T00:00:00.5Z"), Some(951_782_400_500));
        assert_eq!(parse_iso8601("2024-05-01T14:34:56+02:00"), Some(1_714_566_896_000));
        assert_eq!(parse_iso8601("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn validates_iso8601() {
        assert!(is_iso8601("2024-05-01T12:34:56Z"));
        assert!(is_iso8601("2024-05-01T12:34:56.123Z"));
        assert!(is_iso8601("2024-05-01T12:34:56+02:00"));
        assert!(!is_iso8601("2024-05-01 12:34:56Z"));
        assert!(!is_iso8601("2024-05-01T12:34:56"));
        assert!(!is_iso8601("yesterday"));
    }
}
