//! Go-style durations (`90s`, `5m`, `1h30m`, `1500ms`), as the CRDs accept them. Total: every
//! input gives a duration or an error, never a panic; the arithmetic is exact integer
//! nanoseconds with overflow checks, and nothing longer than [`MAX`] is accepted.

use std::time::Duration;

/// The longest duration accepted anywhere: ten years.
pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Longest text read as a duration.
const MAX_TEXT: usize = 64;
/// Fraction digits that count (nanoseconds of an hour need 13).
const MAX_FRACTION_DIGITS: usize = 18;

/// Parses a duration such as `90s`, `5m`, `1h30m`, `1.5h` or `1500ms`: one or more numbers
/// (digits, optionally `.` and more digits) each followed by a unit (`ms`, `s`, `m`, `h`).
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 90s, 5m or 1h30m");
    if text.is_empty() || text.len() > MAX_TEXT {
        return Err(bad());
    }
    let too_long = || {
        format!(
            "{text:?} is longer than {} hours, the longest duration accepted",
            MAX.as_secs() / 3600
        )
    };
    let max = MAX.as_nanos();
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number = &rest[..end];
        rest = &rest[end..];
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || (number.contains('.') && fraction.is_empty()) {
            return Err(bad());
        }
        if fraction.contains('.') {
            return Err(bad());
        }
        let (unit, length): (u128, usize) = if rest.starts_with("ms") {
            (1_000_000, 2)
        } else if rest.starts_with('s') {
            (1_000_000_000, 1)
        } else if rest.starts_with('m') {
            (60_000_000_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000_000_000, 1)
        } else {
            return Err(bad());
        };
        rest = &rest[length..];
        // Digits beyond what fits in u128 are a duration far beyond MAX anyway.
        let whole = digits(whole).ok_or_else(too_long)?;
        let mut nanos = whole.checked_mul(unit).ok_or_else(too_long)?;
        let fraction = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
        if !fraction.is_empty() {
            let scale = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| bad())?);
            let part = digits(fraction).ok_or_else(bad)?;
            nanos = nanos
                .checked_add(part.checked_mul(unit).ok_or_else(too_long)? / scale)
                .ok_or_else(too_long)?;
        }
        total = total.checked_add(nanos).ok_or_else(too_long)?;
        if total > max {
            return Err(too_long());
        }
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| too_long())?;
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, nanos))
}

/// The value of ASCII `digits`; `None` when it does not fit.
fn digits(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |n, b| {
        n.checked_mul(10)?
            .checked_add(u128::from(b.checked_sub(b'0')?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0.001s"), Ok(Duration::from_millis(1)));
        assert_eq!(parse("5m30s"), Ok(Duration::from_secs(330)));
        assert!(parse("").is_err());
        assert!(parse("5").is_err());
        assert!(parse("m5").is_err());
        assert!(parse("5 minutes").is_err());
        assert!(parse("1.s").is_err());
        assert!(parse(".5s").is_err());
        assert!(parse("1.2.3s").is_err());
        assert!(parse("5mm").is_err());
    }

    #[test]
    fn huge_numbers_are_refused_never_a_panic() {
        // Schema-valid, and used to panic in Duration::from_secs_f64.
        let error = parse("99999999999999999999s").unwrap_err();
        assert!(error.contains("longer than 87600 hours"), "{error}");
        assert!(parse(&format!("{}h", "9".repeat(60))).is_err());
        assert!(parse("87601h").is_err());
        assert_eq!(parse("87600h"), Ok(MAX));
        assert!(parse(&"1h".repeat(40)).is_err(), "text too long");
        assert_eq!(
            parse("1.123456789123456789123s"),
            Ok(Duration::new(1, 123_456_789))
        );
    }
}
