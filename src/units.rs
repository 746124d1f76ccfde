//! Durations and sizes as users write them (placeholder until the build branch lands).

use std::time::Duration;

/// A value that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what} `{value}`; write it like {example}")]
pub struct UnitsError {
    what: &'static str,
    value: String,
    example: &'static str,
}

/// Parses `500ms`, `30s`, `15m`, `2h`, `1d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, UnitsError> {
    let err = || UnitsError {
        what: "duration",
        value: s.to_string(),
        example: "`30s`, `500ms`, `15m` or `2h`",
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| err())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| err())
}

/// Parses `10GiB`, `500M`, `1.5G`, `0` (bytes; K/M/G/T are powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, UnitsError> {
    let err = || UnitsError {
        what: "size",
        value: s.to_string(),
        example: "`500M`, `10GiB` or `0`",
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| err())?;
    let mult: f64 = match unit.trim().trim_end_matches(['B', 'b']).trim_end_matches('i') {
        "" => 1.0,
        "K" | "k" => 1024.0,
        "M" | "m" => 1024f64.powi(2),
        "G" | "g" => 1024f64.powi(3),
        "T" | "t" => 1024f64.powi(4),
        _ => return Err(err()),
    };
    Ok((n * mult) as u64)
}
