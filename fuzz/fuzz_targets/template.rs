//! Desired-value templates of the state registry: parsing and rendering stay inside their
//! bounds (size, nesting, steps, output) whatever the text.
#![no_main]
use std::sync::OnceLock;

use homeplane_state::template::{MAX_OUTPUT, Template};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fn context() -> &'static Value {
    static CONTEXT: OnceLock<Value> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        json!({
            "namespace": "homelab",
            "registry": "seed",
            "count": {"Workflow": 76, "Database": 1, "Agent": 3},
            "active": {"Workflow": 70},
            "names": ["a", "b", "c"],
            "text": "x".repeat(1000),
        })
    })
}

fuzz_target!(|text: &str| {
    if let Ok(template) = Template::parse(text) {
        if let Ok(value) = template.render(context()) {
            // The bound is on the text built; JSON would count an escaped NUL as six bytes.
            let size = match &value {
                Value::String(s) => s.len(),
                other => other.to_string().len(),
            };
            assert!(size <= MAX_OUTPUT, "{size} bytes from {text:?}");
        }
    }
});
