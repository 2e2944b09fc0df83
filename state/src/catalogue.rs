//! Catalogues of properties: YAML (inline in a StateRegistry or from ConfigMaps) checked
//! property by property. A bad property is refused with its id and the field at fault; the
//! others are kept, so one mistake never hides the rest of the registry.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use homeplane_crds::registry::{
    Aggregate, Comparison as ComparisonSpec, Corrector, Observer, Property, Severity,
};
use serde_json::Value;

use crate::compare::Comparison;
use crate::duration;
use crate::template;

/// A property that passed every check, ready to be observed and compared.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    /// Dotted id.
    pub id: String,
    /// What the property means.
    pub description: Option<String>,
    /// The desired value.
    pub desired: Desired,
    /// How the observed value is read.
    pub observe: Observe,
    /// How desired and observed are compared.
    pub comparison: Comparison,
    /// How bad drift is.
    pub severity: Severity,
    /// Drift counts only after it lasted this long.
    pub grace: Option<Duration>,
    /// How the property is put back in `Correct` mode.
    pub corrector: Option<Corrector>,
}

/// A desired value: a literal, or a template rendered against the registry context.
#[derive(Clone, Debug, PartialEq)]
pub enum Desired {
    /// Used as written.
    Literal(Value),
    /// Rendered with tera; the text becomes a number, boolean or list when it parses as one.
    Template(String),
}

/// Where the observed value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Observe {
    /// An observer declared in the catalogue.
    Declared(Box<Observer>),
    /// Read from a homeplane object by the kind that contributes the property.
    Derived {
        /// Kind of the object, e.g. `Database`.
        kind: String,
        /// Name of the object (same namespace as the registry).
        name: String,
    },
}

/// A property that was refused: where it came from, its id, the field and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertyError {
    /// `inline` or `ConfigMap NAME key KEY`.
    pub source: String,
    /// The property's id, or `#N` (its position) when it has no readable id.
    pub property: String,
    /// The field at fault, e.g. `observe.http.url`.
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for PropertyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: property {}: {}: {}",
            self.source, self.property, self.field, self.message
        )
    }
}

/// The properties that passed and the ones that were refused.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalogue {
    /// Checked properties, in catalogue order.
    pub properties: Vec<Checked>,
    /// Refused properties.
    pub errors: Vec<PropertyError>,
}

impl Catalogue {
    /// Adds the inline properties of a StateRegistry.
    pub fn add_inline(&mut self, properties: &[Property]) {
        for (index, property) in properties.iter().enumerate() {
            let name = if property.id.is_empty() {
                format!("#{index}")
            } else {
                property.id.clone()
            };
            self.push("inline", &name, check(property));
        }
    }

    /// Adds a YAML catalogue: a list of properties, or a map with a `properties` list.
    pub fn add_yaml(&mut self, source: &str, text: &str) {
        let document: serde_yaml::Value = match serde_yaml::from_str(text) {
            Ok(d) => d,
            Err(e) => {
                return self.errors.push(PropertyError {
                    source: source.to_string(),
                    property: "*".to_string(),
                    field: "(document)".to_string(),
                    message: format!("not valid YAML: {e}"),
                });
            }
        };
        let items = match document {
            serde_yaml::Value::Sequence(items) => items,
            serde_yaml::Value::Mapping(mut map) => match map.remove("properties") {
                Some(serde_yaml::Value::Sequence(items)) => items,
                _ => {
                    return self.refuse_document(source, "a map must hold a `properties` list");
                }
            },
            serde_yaml::Value::Null => Vec::new(),
            _ => return self.refuse_document(source, "a catalogue is a list of properties"),
        };
        for (index, item) in items.into_iter().enumerate() {
            let name = item
                .get("id")
                .and_then(serde_yaml::Value::as_str)
                .map_or_else(|| format!("#{index}"), str::to_string);
            let parsed: Result<Property, _> = serde_path_to_error::deserialize(item);
            let checked = match parsed {
                Ok(property) => check(&property),
                Err(e) => {
                    let path = e.path().to_string();
                    let message = e.into_inner().to_string();
                    Err(Refusal::new(&field_of(&path, &message), message))
                }
            };
            self.push(source, &name, checked);
        }
    }

    /// Refuses every property whose id is used more than once (after the first).
    pub fn refuse_duplicates(&mut self) {
        let mut seen: HashMap<String, ()> = HashMap::with_capacity(self.properties.len());
        let mut kept = Vec::with_capacity(self.properties.len());
        for property in std::mem::take(&mut self.properties) {
            if seen.insert(property.id.clone(), ()).is_some() {
                self.errors.push(PropertyError {
                    source: "registry".to_string(),
                    property: property.id.clone(),
                    field: "id".to_string(),
                    message: "the id is used by another property; ids must be unique".to_string(),
                });
            } else {
                kept.push(property);
            }
        }
        self.properties = kept;
    }

    fn refuse_document(&mut self, source: &str, message: &str) {
        self.errors.push(PropertyError {
            source: source.to_string(),
            property: "*".to_string(),
            field: "(document)".to_string(),
            message: message.to_string(),
        });
    }

    fn push(&mut self, source: &str, name: &str, checked: Result<Checked, Refusal>) {
        match checked {
            Ok(p) => self.properties.push(p),
            Err(r) => self.errors.push(PropertyError {
                source: source.to_string(),
                property: name.to_string(),
                field: r.field,
                message: r.message,
            }),
        }
    }
}

/// The field a deserialization error is about: its path, completed with the name of a
/// missing field.
fn field_of(path: &str, message: &str) -> String {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (".", Some(name)) => name.to_string(),
        (".", None) => "(property)".to_string(),
        (path, Some(name)) => format!("{path}.{name}"),
        (path, None) => path.to_string(),
    }
}

/// Why one property was refused.
struct Refusal {
    field: String,
    message: String,
}

impl Refusal {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// The pattern of a property id (as in the CRD).
fn valid_id(id: &str) -> bool {
    static ID: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        regex::Regex::new(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9_]*[a-z0-9])?)*$")
            .ok()
    })
    .as_ref()
    .is_some_and(|re| re.is_match(id))
}

fn pointer(field: &str, value: &str) -> Result<(), Refusal> {
    if value.is_empty() || value.starts_with('/') {
        Ok(())
    } else {
        Err(Refusal::new(
            field,
            format!("{value:?} is not a JSON pointer; write it like /spec/replicas"),
        ))
    }
}

/// Checks one property the way the API server would, and more (templates, regular
/// expressions, pointers, durations, correctors).
fn check(p: &Property) -> Result<Checked, Refusal> {
    if p.id.is_empty() || p.id.len() > 200 || !valid_id(&p.id) {
        return Err(Refusal::new(
            "id",
            format!(
                "{:?} is not a property id: lower-case words joined by dots, e.g. pi.containers.cpu-limits",
                p.id
            ),
        ));
    }
    let o = &p.observe;
    let set = [
        o.kubernetes.is_some(),
        o.sql.is_some(),
        o.http.is_some(),
        o.docker.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if set != 1 {
        return Err(Refusal::new(
            "observe",
            "observe must set exactly one of kubernetes, sql, http or docker",
        ));
    }
    if let Some(k) = &o.kubernetes {
        if k.api_version.is_empty() {
            return Err(Refusal::new(
                "observe.kubernetes.apiVersion",
                "apiVersion is required, e.g. v1 or apps/v1",
            ));
        }
        if k.kind.is_empty() {
            return Err(Refusal::new(
                "observe.kubernetes.kind",
                "kind is required, e.g. Pod",
            ));
        }
        if let Some(field) = &k.field {
            pointer("observe.kubernetes.field", field)?;
        }
        let needs_field = !matches!(k.aggregate, Aggregate::Count);
        if needs_field && k.field.is_none() {
            return Err(Refusal::new(
                "observe.kubernetes.field",
                "field is required unless aggregate is count",
            ));
        }
    }
    if let Some(s) = &o.sql {
        if s.database.is_empty() {
            return Err(Refusal::new(
                "observe.sql.database",
                "database names a Database object in the registry's namespace",
            ));
        }
        if s.query.trim().is_empty() {
            return Err(Refusal::new(
                "observe.sql.query",
                "query must return one row with one column",
            ));
        }
    }
    if let Some(h) = &o.http {
        if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
            return Err(Refusal::new(
                "observe.http.url",
                format!("{:?} is not an http:// or https:// URL", h.url),
            ));
        }
        if let Some(ptr) = &h.json_pointer {
            pointer("observe.http.jsonPointer", ptr)?;
        }
        if !(1..=300).contains(&h.timeout_seconds) {
            return Err(Refusal::new(
                "observe.http.timeoutSeconds",
                "timeoutSeconds must be between 1 and 300",
            ));
        }
    }
    if let Some(d) = &o.docker {
        if !["unix://", "tcp://", "http://"]
            .iter()
            .any(|s| d.endpoint.starts_with(s))
        {
            return Err(Refusal::new(
                "observe.docker.endpoint",
                format!(
                    "{:?} is not a Docker endpoint such as unix:///run/docker.sock or tcp://gpu-host:2375",
                    d.endpoint
                ),
            ));
        }
        if d.container.is_empty() {
            return Err(Refusal::new(
                "observe.docker.container",
                "container names a container",
            ));
        }
        if d.field.is_empty() {
            return Err(Refusal::new(
                "observe.docker.field",
                "field is a JSON pointer such as /State/Status",
            ));
        }
        pointer("observe.docker.field", &d.field)?;
    }
    let comparison = match p.comparison {
        ComparisonSpec::Equals => Comparison::Equals,
        ComparisonSpec::SemverMajor => Comparison::SemverMajor,
        ComparisonSpec::AtLeast => Comparison::AtLeast,
        ComparisonSpec::AtMost => Comparison::AtMost,
        ComparisonSpec::WithinPercent => match p.tolerance_percent {
            Some(t) if (0.0..=100.0).contains(&t) => Comparison::WithinPercent(t),
            Some(_) => {
                return Err(Refusal::new(
                    "tolerancePercent",
                    "tolerancePercent must be between 0 and 100",
                ));
            }
            None => {
                return Err(Refusal::new(
                    "tolerancePercent",
                    "withinPercent needs tolerancePercent, e.g. 10",
                ));
            }
        },
        ComparisonSpec::MatchesRegex => Comparison::MatchesRegex,
        ComparisonSpec::SetEquals => Comparison::SetEquals,
    };
    let desired = match &p.desired {
        Value::String(text) if template::is_template(text) => {
            template::check(text).map_err(|e| Refusal::new("desired", e))?;
            Desired::Template(text.clone())
        }
        Value::Null => {
            return Err(Refusal::new(
                "desired",
                "desired is required: a value or a template",
            ));
        }
        other => Desired::Literal(other.clone()),
    };
    if let (Comparison::MatchesRegex, Desired::Literal(value)) = (comparison, &desired) {
        match value.as_str() {
            Some(pattern) => {
                regex::Regex::new(pattern).map_err(|e| {
                    Refusal::new("desired", format!("not a regular expression: {e}"))
                })?;
            }
            None => {
                return Err(Refusal::new(
                    "desired",
                    "matchesRegex needs a regular expression as text",
                ));
            }
        }
    }
    if let (Comparison::SetEquals, Desired::Literal(value)) = (comparison, &desired)
        && !value.is_array()
    {
        return Err(Refusal::new("desired", "setEquals needs a list"));
    }
    let grace = match &p.grace_period {
        Some(text) => Some(duration::parse(text).map_err(|e| Refusal::new("gracePeriod", e))?),
        None => None,
    };
    if let Some(c) = &p.corrector {
        if let Some(patch) = &c.patch {
            if !patch.is_object() {
                return Err(Refusal::new(
                    "corrector.patch",
                    "patch is a merge patch: an object",
                ));
            }
            let named = o.kubernetes.as_ref().is_some_and(|k| k.name.is_some());
            if !named {
                return Err(Refusal::new(
                    "corrector.patch",
                    "a patch applies to the observed object: observe one object by kubernetes kind and name",
                ));
            }
        }
        if c.reapply_owner && o.kubernetes.as_ref().is_none_or(|k| k.name.is_none()) {
            return Err(Refusal::new(
                "corrector.reapplyOwner",
                "reapplyOwner re-applies the homeplane object owning the observed object: observe one object by kubernetes kind and name",
            ));
        }
        if !c.reapply_owner && c.patch.is_none() {
            return Err(Refusal::new(
                "corrector",
                "a corrector sets reapplyOwner or a patch",
            ));
        }
    }
    Ok(Checked {
        id: p.id.clone(),
        description: p.description.clone(),
        desired,
        observe: Observe::Declared(Box::new(p.observe.clone())),
        comparison,
        severity: p.severity,
        grace,
        corrector: p.corrector.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
- id: pi.containers.cpu-limits
  description: every container on the Pi has a CPU limit
  desired: true
  severity: critical
  observe:
    kubernetes:
      apiVersion: v1
      kind: Pod
      fieldSelector: spec.nodeName=pi
      field: /spec/containers/*/resources/limits/cpu
      aggregate: all
- id: n8n.workflows.count
  desired: "{{ count.Workflow }}"
  observe:
    http:
      url: http://n8n:5678/healthz
"#;

    #[test]
    fn reads_a_yaml_list() {
        let mut c = Catalogue::default();
        c.add_yaml("ConfigMap seed key catalogue.yaml", GOOD);
        assert_eq!(c.errors, vec![]);
        assert_eq!(c.properties.len(), 2);
        assert_eq!(c.properties[0].severity, Severity::Critical);
        assert_eq!(
            c.properties[1].desired,
            Desired::Template("{{ count.Workflow }}".to_string())
        );
    }

    #[test]
    fn a_bad_property_is_refused_by_id_and_field_and_hides_nothing() {
        let text = r#"
properties:
- id: ok.one
  desired: 1
  observe: {http: {url: "http://a/"}}
- id: bad.url
  desired: 1
  observe: {http: {url: "ftp://a/"}}
- id: bad.missing-kind
  desired: 1
  observe: {kubernetes: {apiVersion: v1, aggregate: count}}
- id: bad.type
  desired: 1
  severity: dreadful
  observe: {http: {url: "http://a/"}}
- id: bad.tolerance
  desired: 1
  comparison: withinPercent
  observe: {http: {url: "http://a/"}}
- id: bad.two-observers
  desired: 1
  observe: {http: {url: "http://a/"}, sql: {database: d, query: select 1}}
- id: Bad_Id
  desired: 1
  observe: {http: {url: "http://a/"}}
- id: bad.template
  desired: "{{ count.Workflow "
  observe: {http: {url: "http://a/"}}
- id: bad.grace
  desired: 1
  gracePeriod: 10 minutes
  observe: {http: {url: "http://a/"}}
- id: ok.two
  desired: [a, b]
  comparison: setEquals
  observe: {docker: {endpoint: "unix:///run/podman.sock", container: ollama, field: /Config/Env}}
"#;
        let mut c = Catalogue::default();
        c.add_yaml("ConfigMap seed key c.yaml", text);
        let ids: Vec<_> = c.properties.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["ok.one", "ok.two"]);
        let refused: Vec<_> = c
            .errors
            .iter()
            .map(|e| (e.property.as_str(), e.field.as_str()))
            .collect();
        assert_eq!(
            refused,
            [
                ("bad.url", "observe.http.url"),
                ("bad.missing-kind", "observe.kubernetes.kind"),
                ("bad.type", "severity"),
                ("bad.tolerance", "tolerancePercent"),
                ("bad.two-observers", "observe"),
                ("Bad_Id", "id"),
                ("bad.template", "desired"),
                ("bad.grace", "gracePeriod"),
            ]
        );
        let text = c.errors[0].to_string();
        assert_eq!(
            text,
            "ConfigMap seed key c.yaml: property bad.url: observe.http.url: \"ftp://a/\" is not an http:// or https:// URL"
        );
        assert!(c.errors[2].message.contains("dreadful"), "{}", c.errors[2]);
    }

    #[test]
    fn an_unreadable_document_is_refused_whole() {
        let mut c = Catalogue::default();
        c.add_yaml("inline", "- id: [unclosed");
        assert_eq!(c.errors.len(), 1);
        assert_eq!(c.errors[0].field, "(document)");
        let mut c = Catalogue::default();
        c.add_yaml("inline", "just text");
        assert_eq!(c.errors[0].message, "a catalogue is a list of properties");
    }

    #[test]
    fn duplicate_ids_keep_the_first() {
        let mut c = Catalogue::default();
        c.add_yaml(
            "a",
            "- {id: x.y, desired: 1, observe: {http: {url: 'http://a/'}}}",
        );
        c.add_yaml(
            "b",
            "- {id: x.y, desired: 2, observe: {http: {url: 'http://b/'}}}",
        );
        c.refuse_duplicates();
        assert_eq!(c.properties.len(), 1);
        assert_eq!(c.properties[0].desired, Desired::Literal(1.into()));
        assert_eq!(c.errors[0].property, "x.y");
        assert_eq!(c.errors[0].field, "id");
    }

    #[test]
    fn correctors_need_one_named_object() {
        let mut c = Catalogue::default();
        c.add_yaml(
            "inline",
            r#"
- id: a.b
  desired: 2
  observe: {kubernetes: {apiVersion: apps/v1, kind: Deployment, field: /spec/replicas, aggregate: max}}
  corrector: {patch: {spec: {replicas: 2}}}
"#,
        );
        assert_eq!(c.errors[0].field, "corrector.patch");
    }
}
