//! Go-style durations as the API writes them (`2s`, `1500ms`, `5m`, `1h30m`), parsed and
//! printed for status.

use std::time::Duration;

/// A duration string the API server should have refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration (examples: 1500ms, 2s, 5m, 1h30m)")]
pub struct InvalidDuration(pub String);

/// Parses `1h30m`, `2s`, `1.5s`, `250ms`: total (an error, never a panic, for any text) and
/// bounded by [`homeplane_state::duration::MAX`].
pub fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    homeplane_state::duration::parse(text.trim()).map_err(|_| InvalidDuration(text.to_string()))
}

/// Prints a latency for status: `850ms` under a second, `1.42s` above.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_crd_rule_accepts() {
        assert_eq!(parse("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse("2 seconds").is_err());
        assert!(parse("").is_err());
        assert!(parse("5").is_err());
        assert!(parse("99999999999999999999s").is_err());
        assert!(parse("1e400s").is_err());
    }

    #[test]
    fn formats_latencies() {
        assert_eq!(format(Duration::from_millis(850)), "850ms");
        assert_eq!(format(Duration::from_millis(1420)), "1.42s");
    }
}
