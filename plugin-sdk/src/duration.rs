//! Durations as upstream OrgLoop writes them in YAML: a whole number and a unit, `^(\d+)(ms|s|m|h|d)$`
//! (`500ms`, `30s`, `5m`, `1h`, `1d`).
//!
//! The daemon parses the durations of its own YAML with the same function, so a value valid in one
//! place is valid in every other.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `<digits><unit>` with unit `ms`, `s`, `m`, `h` or `d`. No spaces, no fractions, no sign:
/// exactly what upstream's `parseDuration` accepts, so a config valid there is valid here.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {text:?}: expected a whole number and a unit ms, s, m, h or d (e.g. 500ms, 30s, 5m)")
    };
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(bad());
    }
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(per_unit_ms))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {text:?}: too large"))
}

/// `#[serde(deserialize_with = "duration::deserialize")]` for a duration config key, so that a
/// bad value is reported while the config is read, with the key's name.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// Renders a duration compactly for messages: `0ms`, `250ms`, `2s`, `1.5s`, `90s`.
pub fn display(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let (secs, frac) = (ms / 1_000, ms % 1_000);
    if frac == 0 {
        return format!("{secs}s");
    }
    let frac = format!("{frac:03}");
    format!("{secs}.{}s", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_upstream_rejects() {
        for bad in [
            "", "5", "m", "5 m", " 5m", "5m ", "1.5s", "-1s", "5M", "5min", "5sec", "+5s", "1w",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.contains("expected a whole number and a unit"),
                "{bad:?}: {err}"
            );
        }
        assert!(parse("99999999999999999999d")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(display(Duration::ZERO), "0ms");
        assert_eq!(display(Duration::from_millis(250)), "250ms");
        assert_eq!(display(Duration::from_secs(2)), "2s");
        assert_eq!(display(Duration::from_millis(1_500)), "1.5s");
        assert_eq!(display(Duration::from_millis(1_025)), "1.025s");
    }
}
