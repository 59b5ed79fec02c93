//! Durations on the command line: a bare number of seconds (`5`, `0.5`) or a number with a
//! unit (`500ms`, `5s`, `2m`, `1h`).

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}': use a number of seconds or ms, s, m, h (e.g. 500ms, 5s, 2m)"
            ));
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration: use e.g. 30, 500ms, 5s, 2m"))?;
    let secs = value * scale;
    if secs >= u64::MAX as f64 {
        // Longer than a Duration holds: it means "never", so clamp instead of failing.
        return Ok(Duration::MAX);
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("'{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_bare_seconds_and_units() {
        assert_eq!(parse("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn huge_values_clamp_to_the_longest_duration() {
        assert_eq!(parse("18446744073709551615s"), Ok(Duration::MAX));
        assert_eq!(parse("99999999999999999999999h"), Ok(Duration::MAX));
        assert!(parse("18446744073709500000s").unwrap() < Duration::MAX);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["soon", "", "-1", "5x", "ms", "1e3", "5 parsecs"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
