//! Desired values written as templates (`{{ count.Workflow }}`), rendered with tera against the
//! registry context: what homeplane knows about the registry's namespace, e.g. how many objects
//! of each kind it holds.

use serde_json::Value;

/// Whether `text` is a template rather than a literal.
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

/// Checks that `text` parses as a template.
pub fn check(text: &str) -> Result<(), String> {
    let mut tera = tera::Tera::default();
    tera.add_raw_template("desired", text)
        .map(|_| ())
        .map_err(|e| format!("not a valid template: {}", chain(&e)))
}

/// Templates compiled once and rendered on every evaluation.
pub struct Templates {
    tera: tera::Tera,
}

impl Templates {
    /// Compiles `(id, text)` pairs; a template that does not compile is reported by id.
    pub fn compile<'a>(
        templates: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> (Self, Vec<(String, String)>) {
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        let mut errors = Vec::new();
        for (id, text) in templates {
            if let Err(e) = tera.add_raw_template(id, text) {
                errors.push((
                    id.to_string(),
                    format!("not a valid template: {}", chain(&e)),
                ));
            }
        }
        (Self { tera }, errors)
    }

    /// Renders the template of `id` against `context`: text that reads as JSON (a number, a
    /// boolean, a list) becomes that value, anything else stays text.
    pub fn render(&self, id: &str, context: &tera::Context) -> Result<Value, String> {
        let text = self
            .tera
            .render(id, context)
            .map_err(|e| format!("desired template failed: {}", chain(&e)))?;
        Ok(value_of(text.trim()))
    }
}

/// The context of a registry from a JSON object (e.g. `{"count": {"Workflow": 76}}`).
pub fn context(value: &Value) -> tera::Context {
    tera::Context::from_value(value.clone()).unwrap_or_default()
}

fn value_of(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Array(_) | Value::Null)) => v,
        _ => Value::String(text.to_string()),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_counts_into_numbers() {
        let (t, errors) = Templates::compile([
            ("a", "{{ count.Workflow }}"),
            ("b", "{{ count.Workflow - 6 }}"),
            ("c", "PostgreSQL {{ version }}"),
            ("d", "{{ count.Nope }}"),
        ]);
        assert!(errors.is_empty());
        let ctx = context(&json!({"count": {"Workflow": 76}, "version": "16"}));
        assert_eq!(t.render("a", &ctx), Ok(json!(76)));
        assert_eq!(t.render("b", &ctx), Ok(json!(70)));
        assert_eq!(t.render("c", &ctx), Ok(json!("PostgreSQL 16")));
        let missing = t.render("d", &ctx);
        assert!(missing.is_err(), "{missing:?}");
    }

    #[test]
    fn recognises_templates() {
        assert!(is_template("{{ x }}"));
        assert!(!is_template("16"));
        assert!(check("{{ x ").is_err());
    }
}
