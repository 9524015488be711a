//! Durations as upstream writes them: `500ms`, `30s`, `5m`, `1h`, `1d`.

use std::time::Duration;

/// Parses `^(\d+)(ms|s|m|h|d)$`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = text.split_at(digits);
    let bad = || {
        format!("invalid duration {text:?}; expected a number and a unit: ms, s, m, h or d (e.g. \"30s\")")
    };
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    Ok(Duration::from_millis(n.checked_mul(ms).ok_or_else(bad)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_the_rest() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "5", "m", "1.5s", "-1s", "5 m", "5M"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
