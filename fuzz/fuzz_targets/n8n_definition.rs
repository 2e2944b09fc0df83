//! n8n workflow definitions (inline or from a ConfigMap): the payload sent to n8n and the
//! canonical hash, which does not depend on the order of keys.
#![no_main]
use homeplane_fuzz::definition;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// `v` with every object's keys in reverse order.
fn reversed(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m.iter().rev() {
                out.insert(k.clone(), reversed(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

fuzz_target!(|text: &str| {
    if let Ok(workflow) = definition::parse(text) {
        let _ = definition::payload(&workflow, "fallback");
        let hash = definition::canonical_hash(&workflow);
        assert_eq!(hash, definition::canonical_hash(&reversed(&workflow)));
        let _ = definition::differences(&workflow, &reversed(&workflow));
    }
});
