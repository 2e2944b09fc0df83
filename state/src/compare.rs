//! Comparing a property's desired value with its observed value. Pure and deterministic: the
//! same inputs always give the same outcome, and a comparison that cannot be made is
//! `Unknown` with the reason, never drift and never in sync.

use serde_json::Value;

/// How desired and observed are compared (the `comparison` field of a property).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Comparison {
    /// Equal values (numbers compare by value: `2` equals `2.0`).
    Equals,
    /// Same semantic-version major (`16.4` and `16.9`).
    SemverMajor,
    /// Observed at least desired (numbers).
    AtLeast,
    /// Observed at most desired (numbers).
    AtMost,
    /// Observed within this many percent of desired (numbers).
    WithinPercent(f64),
    /// Observed (text) matches the regular expression in desired, anchored at both ends.
    MatchesRegex,
    /// Same elements, in any order (arrays).
    SetEquals,
}

/// The outcome of one comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Observed is as desired.
    InSync,
    /// Observed differs from desired.
    Drifted,
    /// The comparison could not be made; the reason says why.
    Unknown(String),
}

/// Compares `observed` with `desired` by `comparison`.
pub fn compare(comparison: Comparison, desired: &Value, observed: &Value) -> Outcome {
    let verdict = |ok: bool| {
        if ok {
            Outcome::InSync
        } else {
            Outcome::Drifted
        }
    };
    match comparison {
        Comparison::Equals => verdict(equal(desired, observed)),
        Comparison::SemverMajor => match (major(desired), major(observed)) {
            (Some(d), Some(o)) => verdict(d == o),
            (None, _) => Outcome::Unknown(format!("desired {desired} is not a version")),
            (_, None) => Outcome::Unknown(format!("observed {observed} is not a version")),
        },
        Comparison::AtLeast => {
            numbers(desired, observed).map_or_else(Outcome::Unknown, |(d, o)| verdict(o >= d))
        }
        Comparison::AtMost => {
            numbers(desired, observed).map_or_else(Outcome::Unknown, |(d, o)| verdict(o <= d))
        }
        Comparison::WithinPercent(percent) => {
            numbers(desired, observed).map_or_else(Outcome::Unknown, |(d, o)| {
                let allowed = (d * percent / 100.0).abs();
                verdict((o - d).abs() <= allowed)
            })
        }
        Comparison::MatchesRegex => match (desired.as_str(), text(observed)) {
            (Some(pattern), Some(text)) => match anchored(pattern, &text) {
                Ok(matched) => verdict(matched),
                Err(e) => Outcome::Unknown(format!(
                    "desired {pattern:?} is not a regular expression: {e}"
                )),
            },
            (None, _) => Outcome::Unknown(format!("desired {desired} is not a regular expression")),
            (_, None) => Outcome::Unknown(format!("observed {observed} is not text")),
        },
        Comparison::SetEquals => match (desired.as_array(), observed.as_array()) {
            (Some(d), Some(o)) => {
                let contains = |set: &[Value], v: &Value| set.iter().any(|x| equal(x, v));
                verdict(d.iter().all(|v| contains(o, v)) && o.iter().all(|v| contains(d, v)))
            }
            _ => Outcome::Unknown("set-equals compares two lists".to_string()),
        },
    }
}

/// Most compiled patterns kept per thread.
const PATTERNS: usize = 4096;

thread_local! {
    /// Compiled patterns: a catalogue repeats the same few, and compiling dominates the cost.
    static COMPILED: std::cell::RefCell<std::collections::HashMap<String, regex::Regex>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Whether all of `text` matches `pattern`.
fn anchored(pattern: &str, text: &str) -> Result<bool, regex::Error> {
    COMPILED.with(|cell| {
        let mut compiled = cell.borrow_mut();
        if let Some(re) = compiled.get(pattern) {
            return Ok(re.is_match(text));
        }
        let re = regex::Regex::new(&format!("^(?:{pattern})$"))?;
        let matched = re.is_match(text);
        if compiled.len() >= PATTERNS {
            compiled.clear();
        }
        compiled.insert(pattern.to_string(), re);
        Ok(matched)
    })
}

/// Equality where numbers compare by value and a number equals its text form.
fn equal(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn numbers(desired: &Value, observed: &Value) -> Result<(f64, f64), String> {
    let d = number(desired).ok_or_else(|| format!("desired {desired} is not a number"))?;
    let o = number(observed).ok_or_else(|| format!("observed {observed} is not a number"))?;
    Ok((d, o))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The major version of `16`, `"16.4"`, `"v1.37.2"` or `"PostgreSQL 16.4"`.
fn major(v: &Value) -> Option<u64> {
    let s = text(v)?;
    let start = s.find(|c: char| c.is_ascii_digit())?;
    let digits: String = s[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equals_compares_numbers_by_value() {
        assert_eq!(
            compare(Comparison::Equals, &json!(2), &json!(2.0)),
            Outcome::InSync
        );
        assert_eq!(
            compare(Comparison::Equals, &json!(76), &json!("76")),
            Outcome::InSync
        );
        assert_eq!(
            compare(Comparison::Equals, &json!(true), &json!(false)),
            Outcome::Drifted
        );
        assert_eq!(
            compare(Comparison::Equals, &json!("a"), &json!("a")),
            Outcome::InSync
        );
    }

    #[test]
    fn semver_major() {
        assert_eq!(
            compare(
                Comparison::SemverMajor,
                &json!("16"),
                &json!("PostgreSQL 16.4")
            ),
            Outcome::InSync
        );
        assert_eq!(
            compare(Comparison::SemverMajor, &json!("v1.37.2"), &json!("1.36.0")),
            Outcome::InSync
        );
        assert_eq!(
            compare(Comparison::SemverMajor, &json!("16"), &json!("15.8")),
            Outcome::Drifted
        );
        assert!(matches!(
            compare(Comparison::SemverMajor, &json!("16"), &json!(null)),
            Outcome::Unknown(_)
        ));
    }

    #[test]
    fn bounds_and_tolerance() {
        assert_eq!(
            compare(Comparison::AtLeast, &json!(70), &json!(76)),
            Outcome::InSync
        );
        assert_eq!(
            compare(Comparison::AtMost, &json!(70), &json!(76)),
            Outcome::Drifted
        );
        assert_eq!(
            compare(Comparison::WithinPercent(10.0), &json!(100), &json!(109)),
            Outcome::InSync
        );
        assert_eq!(
            compare(Comparison::WithinPercent(10.0), &json!(100), &json!(111)),
            Outcome::Drifted
        );
        let unknown = compare(Comparison::AtLeast, &json!(1), &json!("many"));
        assert_eq!(
            unknown,
            Outcome::Unknown("observed \"many\" is not a number".to_string())
        );
    }

    #[test]
    fn regular_expressions_are_anchored() {
        let re = |pattern: &str, observed: &str| {
            compare(Comparison::MatchesRegex, &json!(pattern), &json!(observed))
        };
        assert_eq!(re("ok.*", "ok: 3 checks"), Outcome::InSync);
        assert_eq!(re(r"v1\.3[0-9]", "v1.37"), Outcome::InSync);
        assert_eq!(re("ok", "not ok"), Outcome::Drifted);
        assert!(matches!(re("(ok", "ok"), Outcome::Unknown(_)));
    }

    #[test]
    fn set_equals_ignores_order() {
        assert_eq!(
            compare(
                Comparison::SetEquals,
                &json!(["a", "b"]),
                &json!(["b", "a"])
            ),
            Outcome::InSync
        );
        assert_eq!(
            compare(Comparison::SetEquals, &json!(["a", "b"]), &json!(["a"])),
            Outcome::Drifted
        );
        assert!(matches!(
            compare(Comparison::SetEquals, &json!(["a"]), &json!("a")),
            Outcome::Unknown(_)
        ));
    }
}
