//! What an observer saw, and the pure reading of fields and aggregates out of JSON documents
//! (Kubernetes objects, HTTP bodies, Docker inspect documents).

use homeplane_crds::registry::Aggregate;
use serde_json::Value;

/// The observed value of one property, or why it could not be observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The value, or the reason it could not be read (then the property is `Unknown`).
    pub value: Result<Value, String>,
    /// What the observer adds, e.g. which containers lack a CPU limit.
    pub message: Option<String>,
}

impl Observation {
    /// A value without a message.
    pub fn value(value: Value) -> Self {
        Self {
            value: Ok(value),
            message: None,
        }
    }

    /// A failed observation.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self {
            value: Err(reason.into()),
            message: None,
        }
    }
}

/// The values at a JSON pointer in which a `*` segment stands for every element of a list
/// (or every value of a map): `/spec/containers/*/resources/limits/cpu`. A missing field
/// gives `null`, so that "every container has a CPU limit" sees the one that has none.
pub fn select(document: &Value, pointer: &str) -> Vec<Value> {
    let mut current = vec![document.clone()];
    if pointer.is_empty() {
        return current;
    }
    for raw in pointer.trim_start_matches('/').split('/') {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        let mut next = Vec::with_capacity(current.len());
        for value in current {
            match (segment.as_str(), value) {
                ("*", Value::Array(items)) => next.extend(items),
                ("*", Value::Object(map)) => next.extend(map.into_iter().map(|(_, v)| v)),
                ("*", _) => next.push(Value::Null),
                (key, Value::Object(mut map)) => next.push(map.remove(key).unwrap_or(Value::Null)),
                (key, Value::Array(mut items)) => match key.parse::<usize>() {
                    Ok(i) if i < items.len() => next.push(items.swap_remove(i)),
                    _ => next.push(Value::Null),
                },
                (_, _) => next.push(Value::Null),
            }
        }
        current = next;
    }
    current
}

/// Whether a value counts as set: not null, false, zero or empty.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A number, or a Kubernetes quantity such as `500m`, `2Gi` or `1.5`.
pub fn quantity(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            let split = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
                .unwrap_or(s.len());
            let (number, suffix) = s.split_at(split);
            let n: f64 = number.parse().ok()?;
            let factor = match suffix {
                "" => 1.0,
                "m" => 1e-3,
                "k" => 1e3,
                "M" => 1e6,
                "G" => 1e9,
                "T" => 1e12,
                "Ki" => 1024.0,
                "Mi" => 1024.0 * 1024.0,
                "Gi" => 1024.0 * 1024.0 * 1024.0,
                "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
                _ => return None,
            };
            Some(n * factor)
        }
        _ => None,
    }
}

/// `namespace/name` of a Kubernetes object, for messages.
fn object_name(o: &Value) -> String {
    let meta = &o["metadata"];
    match (meta["namespace"].as_str(), meta["name"].as_str()) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_string(),
        _ => "?".to_string(),
    }
}

/// Most offenders named in a message.
const NAMED: usize = 5;

/// Reads one property out of the selected objects: a field of the single object, or an
/// aggregate over all of them.
pub fn aggregate(objects: &[&Value], field: Option<&str>, how: Aggregate) -> Observation {
    let field = field.unwrap_or("");
    match how {
        Aggregate::Value => match objects {
            [] => Observation::failed("no object matches the selection"),
            [one] => {
                let mut values = select(one, field);
                if field.contains('*') {
                    Observation::value(Value::Array(values))
                } else {
                    Observation::value(values.pop().unwrap_or(Value::Null))
                }
            }
            many => Observation::failed(format!(
                "{} objects match; name one object or use an aggregate (count, all, any, sum, max)",
                many.len()
            )),
        },
        Aggregate::Count => {
            let n = if field.is_empty() {
                objects.len()
            } else {
                objects
                    .iter()
                    .filter(|o| select(o, field).iter().any(truthy))
                    .count()
            };
            Observation::value(Value::from(n))
        }
        Aggregate::All | Aggregate::Any => {
            let mut failing = Vec::new();
            let mut passing = 0usize;
            let mut total = 0usize;
            for o in objects {
                let values = select(o, field);
                total += values.len();
                let ok = values.iter().filter(|v| truthy(v)).count();
                passing += ok;
                if ok < values.len() {
                    failing.push(object_name(o));
                }
            }
            let value = if how == Aggregate::All {
                passing == total
            } else {
                passing > 0
            };
            let message = (!failing.is_empty()).then(|| {
                let mut names = failing
                    .iter()
                    .take(NAMED)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if failing.len() > NAMED {
                    names.push_str(&format!(" and {} more", failing.len() - NAMED));
                }
                format!(
                    "{} of {total} values at {field} are not set, in {names}",
                    total - passing
                )
            });
            Observation {
                value: Ok(Value::Bool(value)),
                message,
            }
        }
        Aggregate::Sum | Aggregate::Max => {
            let mut numbers = Vec::new();
            for o in objects {
                for v in select(o, field) {
                    if v.is_null() {
                        continue;
                    }
                    match quantity(&v) {
                        Some(n) => numbers.push(n),
                        None => {
                            return Observation::failed(format!(
                                "{field} of {} is {v}, not a number",
                                object_name(o)
                            ));
                        }
                    }
                }
            }
            let result = if how == Aggregate::Sum {
                numbers.iter().sum::<f64>()
            } else if let Some(max) = numbers.iter().copied().reduce(f64::max) {
                max
            } else {
                return Observation::failed(format!("no object has a value at {field}"));
            };
            Observation::value(number(result))
        }
    }
}

/// A JSON number, integral when it is one.
pub fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        #[allow(clippy::cast_possible_truncation)]
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, cpus: &[Option<&str>]) -> Value {
        let containers: Vec<Value> = cpus
            .iter()
            .map(|c| match c {
                Some(cpu) => json!({"name": "c", "resources": {"limits": {"cpu": cpu}}}),
                None => json!({"name": "c", "resources": {}}),
            })
            .collect();
        json!({"metadata": {"namespace": "homelab", "name": name}, "spec": {"containers": containers}})
    }

    #[test]
    fn every_container_has_a_cpu_limit() {
        let a = pod("a", &[Some("500m"), Some("1")]);
        let b = pod("b", &[Some("250m")]);
        let c = pod("c", &[Some("250m"), None]);
        let field = Some("/spec/containers/*/resources/limits/cpu");
        let ok = aggregate(&[&a, &b], field, Aggregate::All);
        assert_eq!(ok, Observation::value(json!(true)));
        let bad = aggregate(&[&a, &b, &c], field, Aggregate::All);
        assert_eq!(bad.value, Ok(json!(false)));
        assert_eq!(
            bad.message.as_deref(),
            Some(
                "1 of 5 values at /spec/containers/*/resources/limits/cpu are not set, in homelab/c"
            )
        );
        assert_eq!(
            aggregate(&[&a, &b, &c], field, Aggregate::Sum).value,
            Ok(json!(2))
        );
        assert_eq!(
            aggregate(&[&a, &b, &c], field, Aggregate::Max).value,
            Ok(json!(1))
        );
        assert_eq!(
            aggregate(&[&a, &b, &c], None, Aggregate::Count).value,
            Ok(json!(3))
        );
        assert_eq!(
            aggregate(&[&c], field, Aggregate::Any).value,
            Ok(json!(true))
        );
    }

    #[test]
    fn a_single_value_needs_a_single_object() {
        let a = json!({"spec": {"replicas": 2}});
        assert_eq!(
            aggregate(&[&a], Some("/spec/replicas"), Aggregate::Value).value,
            Ok(json!(2))
        );
        assert_eq!(
            aggregate(&[&a], Some("/spec/missing"), Aggregate::Value).value,
            Ok(Value::Null)
        );
        assert!(
            aggregate(&[], Some("/spec/replicas"), Aggregate::Value)
                .value
                .is_err()
        );
        assert!(
            aggregate(&[&a, &a], Some("/spec/replicas"), Aggregate::Value)
                .value
                .is_err()
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity(&json!("500m")), Some(0.5));
        assert_eq!(
            quantity(&json!("2Gi")),
            Some(2.0 * 1024.0 * 1024.0 * 1024.0)
        );
        assert_eq!(quantity(&json!(3)), Some(3.0));
        assert_eq!(quantity(&json!("lots")), None);
    }

    #[test]
    fn escaped_pointer_segments() {
        let doc = json!({"metadata": {"labels": {"app.kubernetes.io/name": "n8n"}}});
        assert_eq!(
            select(&doc, "/metadata/labels/app.kubernetes.io~1name"),
            vec![json!("n8n")]
        );
    }
}
