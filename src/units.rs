//! Durations and sizes as people write them: `30s`, `15m`, `10GiB`, `1.5G`.
//!
//! Durations: a number with a unit `ms`, `s`, `m`, `h` or `d`; a bare number is seconds.
//! Sizes follow GNU coreutils (`head -c`, `du`): `K`, `M`, `G`, `T` and `KiB`..`TiB` are powers of
//! 1024, `KB`..`TB` powers of 1000, `B` or no unit are bytes. Both accept decimals (`1.5h`,
//! `1.5G`); the result is rounded down to a whole millisecond or byte.
//!
//! Hand-written because the grammar is tiny and the error messages must show a valid example.

use std::time::Duration;

/// A duration or size that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitsError {
    #[error(
        "invalid duration `{input}`: {reason}; write a number with a unit, e.g. `500ms`, `30s`, `15m`, `2h`, `1d` (a bare number is seconds)"
    )]
    Duration { input: String, reason: String },
    #[error(
        "invalid size `{input}`: {reason}; write a number with a unit, e.g. `500M`, `10GiB`, `1.5G`, `2TB` or `0` (K/M/G/T and KiB..TiB are powers of 1024, KB..TB powers of 1000)"
    )]
    Size { input: String, reason: String },
}

/// Splits `"1.5GiB"` into `("1.5", "GiB")`, trimming whitespace around both.
fn split_number(s: &str) -> (&str, &str) {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..end], s[end..].trim())
}

/// Parses a non-negative decimal like `12`, `1.5` or `.5`, exactly enough for scaling: returns
/// the value multiplied by `scale`, rounded down, or None on bad syntax or overflow.
fn scaled(number: &str, scale: u128) -> Result<u128, String> {
    if number.is_empty() {
        return Err("it does not start with a number".into());
    }
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
        return Err(format!("`{number}` is not a number"));
    }
    let too_big = || "it is too large".to_string();
    let int_value: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_big())?
    };
    let mut total = int_value.checked_mul(scale).ok_or_else(too_big)?;
    // Each fractional digit contributes digit * scale / 10^k; accumulate exactly then divide once.
    let mut frac_num: u128 = 0;
    let mut frac_den: u128 = 1;
    for digit in frac.bytes().take(18) {
        frac_num = frac_num * 10 + u128::from(digit - b'0');
        frac_den *= 10;
    }
    total = total
        .checked_add(frac_num.checked_mul(scale).ok_or_else(too_big)? / frac_den)
        .ok_or_else(too_big)?;
    Ok(total)
}

/// Parses `500ms`, `30s`, `15m`, `2h`, `1d`, `1.5h` or a bare number of seconds (`90`).
pub fn parse_duration(input: &str) -> Result<Duration, UnitsError> {
    let err = |reason: String| UnitsError::Duration {
        input: input.to_string(),
        reason,
    };
    let (number, unit) = split_number(input);
    let millis_per_unit: u128 = match unit {
        "ms" => 1,
        "" | "s" | "sec" | "secs" => 1_000,
        "m" | "min" | "mins" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(err(format!("unknown unit `{other}`"))),
    };
    let millis = scaled(number, millis_per_unit).map_err(err)?;
    let millis = u64::try_from(millis).map_err(|_| err("it is too large".into()))?;
    Ok(Duration::from_millis(millis))
}

/// Parses `10GiB`, `500M`, `1.5G`, `2TB`, `4096` or `0` into bytes.
pub fn parse_size(input: &str) -> Result<u64, UnitsError> {
    let err = |reason: String| UnitsError::Size {
        input: input.to_string(),
        reason,
    };
    let (number, unit) = split_number(input);
    const K: u128 = 1024;
    let scale: u128 = match unit {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" => K,
        "M" | "MiB" => K.pow(2),
        "G" | "GiB" => K.pow(3),
        "T" | "TiB" => K.pow(4),
        "KB" | "kB" => 1000,
        "MB" => 1000u128.pow(2),
        "GB" => 1000u128.pow(3),
        "TB" => 1000u128.pow(4),
        other => return Err(err(format!("unknown unit `{other}`"))),
    };
    let bytes = scaled(number, scale).map_err(err)?;
    u64::try_from(bytes).map_err(|_| err("it is too large".into()))
}

/// Formats a duration for people: `450ms`, `30s`, `15m`, `2h 5m`, `3d 4h` (two units at most).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, name) in units {
        if rest >= size {
            parts.push(format!("{}{name}", rest / size));
            rest %= size;
        } else if !parts.is_empty() {
            // Keep the second unit adjacent to the first: "2h 0m" is skipped, not "2h 5s".
            break;
        }
        if parts.len() == 2 {
            break;
        }
    }
    if secs < 60 && d.subsec_millis() != 0 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    parts.join(" ")
}

/// Formats a byte count with binary units: `0 B`, `512 B`, `1.5 KiB`, `10.0 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Serde helpers so configuration files can say `timeout = "30s"` or `timeout = 90`.
pub(crate) mod serde_units {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"30s\", \"15m\" or a number of seconds")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse_duration(v).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("a duration cannot be negative ({v}); write e.g. \"30s\"")))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
    }

    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a size such as \"10GiB\", \"500M\" or a number of bytes")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            super::parse_size(v).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("a size cannot be negative ({v}); write e.g. \"10GiB\"")))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
    }

    pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(DurationVisitor).map(Some)
    }

    pub fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(SizeVisitor).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration(" 1.5h ").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0.25s").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_durations_say_what_is_valid() {
        for bad in ["", "s", "10x", "1.2.3s", "-5s", "abc", "99999999999999999999999d"] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
            assert!(err.contains("e.g. `500ms`, `30s`"), "{err}");
        }
    }

    #[test]
    fn sizes_binary_and_decimal() {
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2KB").unwrap(), 2000);
        assert_eq!(parse_size("1 TB").unwrap(), 1_000_000_000_000);
        assert_eq!(parse_size("1K").unwrap(), 1024);
    }

    #[test]
    fn bad_sizes_say_what_is_valid() {
        for bad in ["", "G", "10Q", "1..5G", "-1G", "99999999999999999999T"] {
            let err = parse_size(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
            assert!(err.contains("e.g. `500M`, `10GiB`"), "{err}");
        }
    }

    #[test]
    fn formatting_is_short_and_readable() {
        assert_eq!(format_duration(Duration::from_millis(450)), "450ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(900)), "15m");
        assert_eq!(format_duration(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(format_duration(Duration::from_secs(7205)), "2h");
        assert_eq!(
            format_duration(Duration::from_secs(3 * 86_400 + 4 * 3600 + 7)),
            "3d 4h"
        );
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(10 << 30), "10.0 GiB");
    }
}
