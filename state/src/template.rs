//! Desired values written as templates (`{{ count.Workflow - 6 }}`), evaluated in a sandbox
//! against the registry context (what homeplane knows about the registry's namespace).
//!
//! A template is text with `{{ expression }}` holes (and `{# comments #}`). An expression reads
//! the context (`count.Workflow`, `active["Workflow"]`), computes with numbers, strings and
//! booleans (`+ - * / % ~`, comparisons, `and`/`or`/`not`) and applies a few filters
//! (`| default(0)`, `| length`, `| round`, …). There are no statements (`{% %}`: no loops, no
//! assignments, no includes, no macros) and no functions: nothing reads the environment, files,
//! the clock or the network. Every template is bounded before it runs (its length and nesting)
//! and while it runs (a step budget and the size of every value it builds), so a template that
//! breaks a bound fails with a reason, which makes its one property Unknown.

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

/// Longest template text.
pub const MAX_TEMPLATE: usize = 4096;
/// Longest text a template may build (any intermediate string, and the output).
pub const MAX_OUTPUT: usize = 4096;
/// Most evaluation steps of one render (each expression node and each list element a filter
/// visits is a step).
pub const MAX_STEPS: u32 = 10_000;
/// Deepest nesting of an expression.
const MAX_DEPTH: usize = 32;

/// The filters a template may use: the ones the catalogue needs.
pub const FILTERS: &[&str] = &[
    "default", "length", "int", "float", "round", "abs", "lower", "upper", "trim", "join", "min",
    "max", "sum", "first", "last",
];

/// Whether `text` is a template rather than a literal.
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

/// Checks that `text` parses as a template.
pub fn check(text: &str) -> Result<(), String> {
    Template::parse(text)
        .map(|_| ())
        .map_err(|e| format!("not a valid template: {e}"))
}

/// Templates compiled once and rendered on every evaluation.
#[derive(Default)]
pub struct Templates {
    templates: std::collections::HashMap<String, Template>,
}

impl Templates {
    /// Compiles `(id, text)` pairs; a template that does not compile is reported by id.
    pub fn compile<'a>(
        templates: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> (Self, Vec<(String, String)>) {
        let mut out = Self::default();
        let mut errors = Vec::new();
        for (id, text) in templates {
            match Template::parse(text) {
                Ok(t) => {
                    out.templates.insert(id.to_string(), t);
                }
                Err(e) => errors.push((id.to_string(), format!("not a valid template: {e}"))),
            }
        }
        (out, errors)
    }

    /// Renders the template of `id` against `context`: text that reads as JSON (a number, a
    /// boolean, a list) becomes that value, anything else stays text.
    pub fn render(&self, id: &str, context: &Value) -> Result<Value, String> {
        let template = self
            .templates
            .get(id)
            .ok_or_else(|| format!("desired template of {id} did not compile"))?;
        template
            .render(context)
            .map_err(|e| format!("desired template failed: {e}"))
    }
}

/// The context of a registry (e.g. `{"count": {"Workflow": 76}}`); kept for callers that
/// build it from JSON.
pub fn context(value: &Value) -> Value {
    value.clone()
}

/// One parsed template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Expr(Expr),
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Literal(Value),
    /// A context path: a name, then `.name` or `[expression]` steps.
    Path(String, Vec<Step>),
    List(Vec<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Binary(Op, Box<Expr>, Box<Expr>),
    Filter(Box<Expr>, String, Vec<Expr>),
    Call(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Index(Box<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Concat,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl Template {
    /// Parses a template; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.len() > MAX_TEMPLATE {
            return Err(format!(
                "the template has {} bytes; at most {MAX_TEMPLATE} are allowed",
                text.len()
            ));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        let mut trim_next = false;
        while !rest.is_empty() {
            let open = ["{{", "{%", "{#"].iter().filter_map(|o| rest.find(o)).min();
            let Some(at) = open else {
                push_text(&mut parts, rest, trim_next, false);
                break;
            };
            let tag = &rest[at..at + 2];
            let trim_before = rest[at + 2..].starts_with('-');
            push_text(&mut parts, &rest[..at], trim_next, trim_before);
            let inner_start = at + 2 + usize::from(trim_before);
            match tag {
                "{%" => {
                    return Err(
                        "statements ({% ... %}) are not allowed: a desired value is one or more {{ expressions }}"
                            .to_string(),
                    );
                }
                "{#" => {
                    let end = rest[inner_start..]
                        .find("#}")
                        .ok_or("a {# comment #} is not closed")?;
                    rest = &rest[inner_start + end + 2..];
                    trim_next = false;
                }
                _ => {
                    let body = &rest[inner_start..];
                    let mut parser = Parser::new(body);
                    let expr = parser.expression(0)?;
                    parser.skip_space();
                    let after = parser.rest();
                    let (trim_after, close) = if let Some(r) = after.strip_prefix("-}}") {
                        (true, r)
                    } else if let Some(r) = after.strip_prefix("}}") {
                        (false, r)
                    } else {
                        return Err(format!(
                            "expected }} after the expression, found {:?}",
                            preview(after)
                        ));
                    };
                    parts.push(Part::Expr(expr));
                    rest = close;
                    trim_next = trim_after;
                }
            }
        }
        Ok(Template { parts })
    }

    /// Renders against `context`: the text, read as JSON when it is a number, a boolean, a list
    /// or null.
    pub fn render(&self, context: &Value) -> Result<Value, String> {
        let mut eval = Eval { context, steps: 0 };
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(e) => {
                    let v = eval.eval(e)?;
                    write_value(&mut out, &v);
                }
            }
            if out.len() > MAX_OUTPUT {
                return Err(format!(
                    "the template produced more than {MAX_OUTPUT} bytes"
                ));
            }
        }
        Ok(value_of(out.trim()))
    }
}

fn push_text(parts: &mut Vec<Part>, text: &str, trim_start: bool, trim_end: bool) {
    let mut t = text;
    if trim_start {
        t = t.trim_start();
    }
    if trim_end {
        t = t.trim_end();
    }
    if !t.is_empty() {
        parts.push(Part::Text(t.to_string()));
    }
}

fn preview(text: &str) -> String {
    text.chars().take(20).collect()
}

fn value_of(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Array(_) | Value::Null)) => v,
        _ => Value::String(text.to_string()),
    }
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Null => {}
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// A recursive-descent parser of one expression.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            pos: 0,
            depth: 0,
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// Eats a keyword (`and`, `or`, `not`) only when it is a whole word.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_space();
        let rest = self.rest();
        if rest.starts_with(word)
            && !rest[word.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "the expression is nested more than {MAX_DEPTH} deep"
            ));
        }
        Ok(())
    }

    /// Precedence climbing: 0 `or`, 1 `and`, 2 comparisons, 3 `~`, 4 `+ -`, 5 `* / %`. The
    /// nesting of the tree built (not only of the text) is bounded, so that evaluating and
    /// dropping it never recurses deeper than [`MAX_DEPTH`].
    fn expression(&mut self, level: u8) -> Result<Expr, String> {
        self.enter()?;
        let result = self.level(level);
        self.depth -= 1;
        result
    }

    fn level(&mut self, level: u8) -> Result<Expr, String> {
        if level > 5 {
            return self.unary();
        }
        let mut left = self.expression(level + 1)?;
        let mut chain = 0usize;
        loop {
            let op = match level {
                0 if self.eat_word("or") => Op::Or,
                1 if self.eat_word("and") => Op::And,
                2 => {
                    if self.eat("==") {
                        Op::Eq
                    } else if self.eat("!=") {
                        Op::Ne
                    } else if self.eat("<=") {
                        Op::Le
                    } else if self.eat(">=") {
                        Op::Ge
                    } else if self.eat("<") {
                        Op::Lt
                    } else if self.eat(">") {
                        Op::Gt
                    } else {
                        break;
                    }
                }
                3 if self.eat("~") => Op::Concat,
                4 => {
                    if self.eat("+") {
                        Op::Add
                    } else if self.peek_minus() {
                        Op::Sub
                    } else {
                        break;
                    }
                }
                5 => {
                    if self.eat("*") {
                        Op::Mul
                    } else if self.eat("/") {
                        Op::Div
                    } else if self.eat("%") {
                        Op::Rem
                    } else {
                        break;
                    }
                }
                _ => break,
            };
            // A chain `a + b + c` nests to the left: it counts towards the depth too.
            chain += 1;
            if self.depth + chain > MAX_DEPTH {
                return Err(format!(
                    "the expression is nested more than {MAX_DEPTH} deep (split long chains of operators)"
                ));
            }
            self.depth += chain;
            let right = self.expression(level + 1);
            self.depth -= chain;
            left = Expr::Binary(op, Box::new(left), Box::new(right?));
        }
        Ok(left)
    }

    /// A binary minus, but not the `-` of a closing `-}}`.
    fn peek_minus(&mut self) -> bool {
        self.skip_space();
        let rest = self.rest();
        if rest.starts_with('-') && !rest.starts_with("-}}") {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.enter()?;
        let result = if self.eat_word("not") {
            self.unary().map(|e| Expr::Not(Box::new(e)))
        } else if self.peek_minus() {
            self.unary().map(|e| Expr::Neg(Box::new(e)))
        } else {
            self.postfix()
        };
        self.depth -= 1;
        result
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut expr = self.primary()?;
        let mut chain = 0usize;
        loop {
            chain += 1;
            if self.depth + chain > MAX_DEPTH {
                return Err(format!(
                    "the expression is nested more than {MAX_DEPTH} deep"
                ));
            }
            if self.eat("|") {
                let name = self.name().ok_or("expected a filter name after |")?;
                let mut args = Vec::new();
                if self.eat("(") {
                    self.depth += chain;
                    let parsed = self.arguments(")");
                    self.depth -= chain;
                    args = parsed?;
                }
                expr = Expr::Filter(Box::new(expr), name, args);
            } else if let Expr::Path(root, steps) = &mut expr {
                if self.eat(".") {
                    let field = self
                        .name()
                        .or_else(|| self.digits())
                        .ok_or("expected a name after .")?;
                    steps.push(Step::Field(field));
                } else if self.eat("[") {
                    self.depth += chain;
                    let index = self.expression(0);
                    self.depth -= chain;
                    let index = index?;
                    if !self.eat("]") {
                        return Err(format!("expected ] after the index of {root}"));
                    }
                    steps.push(Step::Index(Box::new(index)));
                } else {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(expr)
    }

    fn arguments(&mut self, close: &str) -> Result<Vec<Expr>, String> {
        let mut args = Vec::new();
        if self.eat(close) {
            return Ok(args);
        }
        loop {
            // `name=value` arguments are read as their value (`default(value=0)`).
            let save = self.pos;
            if self.name().is_some() && self.eat("=") && !self.rest().starts_with('=') {
            } else {
                self.pos = save;
            }
            args.push(self.expression(0)?);
            if self.eat(close) {
                return Ok(args);
            }
            if !self.eat(",") {
                return Err(format!("expected , or {close} in a list of arguments"));
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        self.skip_space();
        let rest = self.rest();
        let Some(first) = rest.chars().next() else {
            return Err("the expression ends too early".to_string());
        };
        if self.eat("(") {
            let e = self.expression(0)?;
            if !self.eat(")") {
                return Err("expected )".to_string());
            }
            return Ok(e);
        }
        if self.eat("[") {
            return Ok(Expr::List(self.arguments("]")?));
        }
        if first == '"' || first == '\'' {
            return self.string(first);
        }
        if first.is_ascii_digit() {
            return self.number();
        }
        let Some(name) = self.name() else {
            return Err(format!("unexpected {:?}", preview(rest)));
        };
        match name.as_str() {
            "true" | "True" => return Ok(Expr::Literal(Value::Bool(true))),
            "false" | "False" => return Ok(Expr::Literal(Value::Bool(false))),
            "none" | "None" | "null" => return Ok(Expr::Literal(Value::Null)),
            _ => {}
        }
        if self.eat("(") {
            // Parsed so that the error is a clear one when rendered, not a syntax error.
            self.arguments(")")?;
            return Ok(Expr::Call(name));
        }
        Ok(Expr::Path(name, Vec::new()))
    }

    fn name(&mut self) -> Option<String> {
        self.skip_space();
        let rest = self.rest();
        let len = rest
            .char_indices()
            .find(|(i, c)| {
                !(c.is_ascii_alphabetic() || *c == '_' || (*i > 0 && c.is_ascii_digit()))
            })
            .map_or(rest.len(), |(i, _)| i);
        if len == 0 {
            return None;
        }
        self.pos += len;
        Some(rest[..len].to_string())
    }

    fn digits(&mut self) -> Option<String> {
        let rest = self.rest();
        let len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        (len > 0).then(|| {
            self.pos += len;
            rest[..len].to_string()
        })
    }

    fn number(&mut self) -> Result<Expr, String> {
        let rest = self.rest();
        let mut len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mut float = false;
        if rest[len..].starts_with('.') && rest[len + 1..].starts_with(|c: char| c.is_ascii_digit())
        {
            float = true;
            len += 1 + rest[len + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - len - 1);
        }
        let text = &rest[..len];
        self.pos += len;
        let value = if float {
            text.parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number)
        } else {
            text.parse::<i64>().ok().map(Value::from)
        };
        value
            .map(Expr::Literal)
            .ok_or_else(|| format!("{text} is not a number a template can hold"))
    }

    fn string(&mut self, quote: char) -> Result<Expr, String> {
        let body = &self.rest()[1..];
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                self.pos += 1 + i + 1;
                return Ok(Expr::Literal(Value::String(out)));
            }
            if c == '\\' {
                match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, other)) => out.push(other),
                    None => break,
                }
            } else {
                out.push(c);
            }
        }
        Err("a string is not closed".to_string())
    }
}

/// One render: the context and the steps taken.
struct Eval<'a> {
    context: &'a Value,
    steps: u32,
}

impl Eval<'_> {
    fn step(&mut self, n: usize) -> Result<(), String> {
        self.steps = self
            .steps
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if self.steps > MAX_STEPS {
            return Err(format!("the template took more than {MAX_STEPS} steps"));
        }
        Ok(())
    }

    fn eval(&mut self, e: &Expr) -> Result<Value, String> {
        self.step(1)?;
        match e {
            Expr::Literal(v) => Ok(v.clone()),
            Expr::Path(root, steps) => self.path(root, steps),
            Expr::List(items) => {
                let values = items
                    .iter()
                    .map(|i| self.eval(i))
                    .collect::<Result<Vec<_>, _>>()?;
                bounded(Value::Array(values))
            }
            Expr::Not(inner) => Ok(Value::Bool(!truthy(&self.eval(inner)?))),
            Expr::Neg(inner) => match self.eval(inner)? {
                Value::Number(n) => negate(&n),
                other => Err(format!("cannot negate {}", kind(&other))),
            },
            Expr::Binary(op, l, r) => self.binary(*op, l, r),
            Expr::Filter(input, name, args) => self.filter(input, name, args),
            Expr::Call(name) => Err(format!(
                "{name}() is not available: desired templates have no functions (nothing reads the environment, files, the clock or the network); filters are {}",
                FILTERS.join(", ")
            )),
        }
    }

    fn path(&mut self, root: &str, steps: &[Step]) -> Result<Value, String> {
        let mut current = self.context.get(root).ok_or_else(|| {
            let known: Vec<&str> = self
                .context
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            format!(
                "{root} is not in the registry context (it has {})",
                known.join(", ")
            )
        })?;
        let mut shown = root.to_string();
        for step in steps {
            self.step(1)?;
            let next = match step {
                Step::Field(name) => {
                    shown.push('.');
                    shown.push_str(name);
                    match current {
                        Value::Array(items) => {
                            name.parse::<usize>().ok().and_then(|i| items.get(i))
                        }
                        other => other.get(name),
                    }
                }
                Step::Index(index) => {
                    let key = self.eval(index)?;
                    let _ = write!(shown, "[{key}]");
                    match (&key, current) {
                        (Value::String(k), other) => other.get(k),
                        (Value::Number(n), Value::Array(items)) => n
                            .as_u64()
                            .and_then(|i| usize::try_from(i).ok())
                            .and_then(|i| items.get(i)),
                        _ => None,
                    }
                }
            };
            current = next.ok_or_else(|| format!("{shown} is not in the registry context"))?;
        }
        Ok(current.clone())
    }

    fn binary(&mut self, op: Op, l: &Expr, r: &Expr) -> Result<Value, String> {
        // `and`/`or` short-circuit.
        match op {
            Op::And => {
                let left = self.eval(l)?;
                return if truthy(&left) {
                    self.eval(r)
                } else {
                    Ok(left)
                };
            }
            Op::Or => {
                let left = self.eval(l)?;
                return if truthy(&left) {
                    Ok(left)
                } else {
                    self.eval(r)
                };
            }
            _ => {}
        }
        let (a, b) = (self.eval(l)?, self.eval(r)?);
        match op {
            Op::Eq => Ok(Value::Bool(equal(&a, &b))),
            Op::Ne => Ok(Value::Bool(!equal(&a, &b))),
            Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let ordering = order(&a, &b)?;
                Ok(Value::Bool(match op {
                    Op::Lt => ordering.is_lt(),
                    Op::Le => ordering.is_le(),
                    Op::Gt => ordering.is_gt(),
                    _ => ordering.is_ge(),
                }))
            }
            Op::Concat => {
                let mut s = String::new();
                write_value(&mut s, &a);
                write_value(&mut s, &b);
                bounded(Value::String(s))
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Rem => arithmetic(op, &a, &b),
            Op::And | Op::Or => Ok(Value::Null),
        }
    }

    fn filter(&mut self, input: &Expr, name: &str, args: &[Expr]) -> Result<Value, String> {
        if name == "default" {
            let fallback = match args.first() {
                Some(a) => self.eval(a)?,
                None => Value::String(String::new()),
            };
            return match self.eval(input) {
                Ok(Value::Null) | Err(_) => Ok(fallback),
                Ok(v) => Ok(v),
            };
        }
        let value = self.eval(input)?;
        let args = args
            .iter()
            .map(|a| self.eval(a))
            .collect::<Result<Vec<_>, _>>()?;
        if let Value::Array(items) = &value {
            self.step(items.len())?;
        }
        let numbers = |v: &Value| -> Result<Vec<f64>, String> {
            match v {
                Value::Array(items) => items
                    .iter()
                    .map(|i| {
                        i.as_f64()
                            .ok_or_else(|| format!("{name} needs numbers, found {}", kind(i)))
                    })
                    .collect(),
                other => Err(format!("{name} needs a list, found {}", kind(other))),
            }
        };
        match name {
            "length" => match &value {
                Value::Array(a) => Ok(Value::from(a.len())),
                Value::Object(m) => Ok(Value::from(m.len())),
                Value::String(s) => Ok(Value::from(s.chars().count())),
                other => Err(format!("length of {}", kind(other))),
            },
            "int" => match &value {
                Value::Number(n) => match n.as_i64() {
                    Some(i) => Ok(Value::from(i)),
                    None => float_to_int(n.as_f64().unwrap_or(f64::NAN)),
                },
                Value::String(s) => s
                    .trim()
                    .parse::<i64>()
                    .map(Value::from)
                    .or_else(|_| {
                        s.trim()
                            .parse::<f64>()
                            .map_err(|_| ())
                            .and_then(|f| float_to_int(f).map_err(|_| ()))
                    })
                    .map_err(|()| format!("{s:?} is not a number")),
                Value::Bool(b) => Ok(Value::from(i64::from(*b))),
                other => Err(format!("int of {}", kind(other))),
            },
            "float" => match &value {
                Value::Number(n) => float(n.as_f64().unwrap_or(f64::NAN)),
                Value::String(s) => s
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{s:?} is not a number"))
                    .and_then(float),
                other => Err(format!("float of {}", kind(other))),
            },
            "round" => {
                let precision = args
                    .first()
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    .clamp(0, 10);
                let x = value
                    .as_f64()
                    .ok_or_else(|| format!("round of {}", kind(&value)))?;
                let scale = 10f64.powi(i32::try_from(precision).unwrap_or(0));
                let rounded = (x * scale).round() / scale;
                if precision == 0 {
                    float_to_int(rounded)
                } else {
                    float(rounded)
                }
            }
            "abs" => match &value {
                Value::Number(n) => match n.as_i64() {
                    Some(i) => i
                        .checked_abs()
                        .map(Value::from)
                        .ok_or_else(|| "arithmetic overflow".to_string()),
                    None => float(n.as_f64().unwrap_or(f64::NAN).abs()),
                },
                other => Err(format!("abs of {}", kind(other))),
            },
            "lower" | "upper" | "trim" => match &value {
                Value::String(s) => bounded(Value::String(match name {
                    "lower" => s.to_lowercase(),
                    "upper" => s.to_uppercase(),
                    _ => s.trim().to_string(),
                })),
                other => Err(format!("{name} of {}", kind(other))),
            },
            "join" => {
                let separator = match args.first() {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => {
                        return Err(format!(
                            "join needs a text separator, found {}",
                            kind(other)
                        ));
                    }
                    None => String::new(),
                };
                let Value::Array(items) = &value else {
                    return Err(format!("join of {}", kind(&value)));
                };
                let mut out = String::new();
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&separator);
                    }
                    write_value(&mut out, item);
                    if out.len() > MAX_OUTPUT {
                        return Err(format!(
                            "the template built text longer than {MAX_OUTPUT} bytes"
                        ));
                    }
                }
                Ok(Value::String(out))
            }
            "min" | "max" | "sum" => {
                let xs = numbers(&value)?;
                if name == "sum" {
                    if let Value::Array(items) = &value
                        && items.iter().all(|i| i.as_i64().is_some())
                    {
                        return items
                            .iter()
                            .filter_map(Value::as_i64)
                            .try_fold(0i64, i64::checked_add)
                            .map(Value::from)
                            .ok_or_else(|| "arithmetic overflow".to_string());
                    }
                    return float(xs.iter().sum());
                }
                let Value::Array(items) = &value else {
                    return Ok(Value::Null);
                };
                let pick = items
                    .iter()
                    .zip(&xs)
                    .fold(None::<(&Value, f64)>, |best, (v, x)| match best {
                        Some((_, b))
                            if (name == "min" && *x >= b) || (name == "max" && *x <= b) =>
                        {
                            best
                        }
                        _ => Some((v, *x)),
                    });
                Ok(pick.map(|(v, _)| v.clone()).unwrap_or(Value::Null))
            }
            "first" | "last" => match &value {
                Value::Array(items) => Ok(if name == "first" {
                    items.first()
                } else {
                    items.last()
                }
                .cloned()
                .unwrap_or(Value::Null)),
                other => Err(format!("{name} of {}", kind(other))),
            },
            other => Err(format!(
                "there is no filter {other}; filters are {}",
                FILTERS.join(", ")
            )),
        }
    }
}

/// Refuses values larger than a template may build.
fn bounded(v: Value) -> Result<Value, String> {
    let size = match &v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.len().saturating_mul(8),
        _ => 0,
    };
    if size > MAX_OUTPUT {
        return Err(format!(
            "the template built a value larger than {MAX_OUTPUT} bytes"
        ));
    }
    Ok(v)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => Ok(i.cmp(&j)),
            _ => x
                .as_f64()
                .zip(y.as_f64())
                .and_then(|(x, y)| x.partial_cmp(&y))
                .ok_or_else(|| "numbers that cannot be compared".to_string()),
        },
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        _ => Err(format!("cannot compare {} with {}", kind(a), kind(b))),
    }
}

fn float(x: f64) -> Result<Value, String> {
    Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| "the result is not a finite number".to_string())
}

fn float_to_int(x: f64) -> Result<Value, String> {
    // i64::MAX as f64 rounds up to 2^63, so the upper bound is exclusive.
    if x.is_finite() && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&x) {
        #[allow(clippy::cast_possible_truncation)]
        let i = x.trunc() as i64;
        Ok(Value::from(i))
    } else {
        Err("the number does not fit an integer".to_string())
    }
}

fn negate(n: &Number) -> Result<Value, String> {
    match n.as_i64() {
        Some(i) => i
            .checked_neg()
            .map(Value::from)
            .ok_or_else(|| "arithmetic overflow".to_string()),
        None => float(-n.as_f64().unwrap_or(f64::NAN)),
    }
}

fn arithmetic(op: Op, a: &Value, b: &Value) -> Result<Value, String> {
    let (Value::Number(x), Value::Number(y)) = (a, b) else {
        return Err(format!(
            "cannot compute with {} and {} (use ~ to join text)",
            kind(a),
            kind(b)
        ));
    };
    if let (Some(i), Some(j)) = (x.as_i64(), y.as_i64()) {
        let exact = match op {
            Op::Add => i.checked_add(j),
            Op::Sub => i.checked_sub(j),
            Op::Mul => i.checked_mul(j),
            Op::Rem if j == 0 => return Err("division by zero".to_string()),
            Op::Rem => i.checked_rem(j),
            Op::Div if j == 0 => return Err("division by zero".to_string()),
            Op::Div if i.checked_rem(j) == Some(0) => i.checked_div(j),
            _ => None,
        };
        if let Some(v) = exact {
            return Ok(Value::from(v));
        }
        if op != Op::Div {
            return Err("arithmetic overflow".to_string());
        }
    }
    let (x, y) = (
        x.as_f64().unwrap_or(f64::NAN),
        y.as_f64().unwrap_or(f64::NAN),
    );
    let r = match op {
        Op::Add => x + y,
        Op::Sub => x - y,
        Op::Mul => x * y,
        Op::Div if y == 0.0 => return Err("division by zero".to_string()),
        Op::Div => x / y,
        Op::Rem if y == 0.0 => return Err("division by zero".to_string()),
        _ => x % y,
    };
    float(r)
}

/// The context as a JSON object with `count` and the like; used by tests and benches.
pub fn object(pairs: impl IntoIterator<Item = (String, Value)>) -> Value {
    Value::Object(pairs.into_iter().collect::<Map<String, Value>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(text: &str, ctx: &Value) -> Result<Value, String> {
        Template::parse(text)?.render(ctx)
    }

    #[test]
    fn renders_counts_into_numbers() {
        let (t, errors) = Templates::compile([
            ("a", "{{ count.Workflow }}"),
            ("b", "{{ count.Workflow - 6 }}"),
            ("c", "PostgreSQL {{ version }}"),
            ("d", "{{ count.Nope }}"),
        ]);
        assert!(errors.is_empty());
        let ctx = json!({"count": {"Workflow": 76}, "version": "16"});
        assert_eq!(t.render("a", &ctx), Ok(json!(76)));
        assert_eq!(t.render("b", &ctx), Ok(json!(70)));
        assert_eq!(t.render("c", &ctx), Ok(json!("PostgreSQL 16")));
        let missing = t.render("d", &ctx);
        assert!(
            missing
                .as_ref()
                .is_err_and(|e| e.contains("count.Nope is not in the registry context")),
            "{missing:?}"
        );
    }

    #[test]
    fn recognises_templates() {
        assert!(is_template("{{ x }}"));
        assert!(!is_template("16"));
        assert!(check("{{ x ").is_err());
    }

    #[test]
    fn expressions_filters_and_whitespace_control() {
        let ctx =
            json!({"count": {"Workflow": 76, "Agent": 3}, "names": ["a", "b"], "ns": "Homelab"});
        assert_eq!(render("{{ count.Workflow * 2 + 1 }}", &ctx), Ok(json!(153)));
        assert_eq!(
            render("{{ (count.Workflow + 4) / 8 }}", &ctx),
            Ok(json!(10))
        );
        assert_eq!(render("{{ count.Agent / 2 }}", &ctx), Ok(json!(1.5)));
        assert_eq!(render("{{ count.Workflow % 10 }}", &ctx), Ok(json!(6)));
        assert_eq!(render("{{ -count.Agent }}", &ctx), Ok(json!(-3)));
        assert_eq!(
            render("{{ count.Agent > 2 and count.Workflow == 76 }}", &ctx),
            Ok(json!(true))
        );
        assert_eq!(render("{{ not count.Agent }}", &ctx), Ok(json!(false)));
        assert_eq!(render("{{ count[\"Agent\"] }}", &ctx), Ok(json!(3)));
        assert_eq!(
            render("{{ names | join(\", \") }}", &ctx),
            Ok(json!("a, b"))
        );
        assert_eq!(render("{{ names | length }}", &ctx), Ok(json!(2)));
        assert_eq!(render("{{ names.1 }}", &ctx), Ok(json!("b")));
        assert_eq!(render("{{ count.Nope | default(0) }}", &ctx), Ok(json!(0)));
        assert_eq!(render("{{ ns | lower }}", &ctx), Ok(json!("homelab")));
        assert_eq!(render("{{ 2.5 | round }}", &ctx), Ok(json!(3)));
        assert_eq!(render("{{ [1, 5, 3] | max }}", &ctx), Ok(json!(5)));
        assert_eq!(render("{{ [1, 5, 3] | sum }}", &ctx), Ok(json!(9)));
        assert_eq!(render("{{ \"v\" ~ count.Agent }}", &ctx), Ok(json!("v3")));
        assert_eq!(render("  {{- count.Agent -}}  ", &ctx), Ok(json!(3)));
        assert_eq!(render("{# note #}{{ count.Agent }}", &ctx), Ok(json!(3)));
    }

    #[test]
    fn nothing_reaches_outside_the_sandbox() {
        let ctx = json!({"count": {}});
        // Used to read the operator's environment through Tera's get_env.
        let env = render("{{ get_env(name=\"HOME\") }}", &ctx).unwrap_err();
        assert!(env.contains("get_env() is not available"), "{env}");
        let range = render("{{ range(end=100000000000) | length }}", &ctx).unwrap_err();
        assert!(range.contains("range() is not available"), "{range}");
        let statement = Template::parse("{% for i in range(end=10) %}x{% endfor %}").unwrap_err();
        assert!(statement.contains("statements"), "{statement}");
        assert!(render("{{ now() }}", &ctx).is_err());
        assert!(
            render("{{ x | filesizeformat }}", &json!({"x": 1}))
                .unwrap_err()
                .contains("no filter")
        );
    }

    #[test]
    fn every_bound_holds() {
        let ctx = json!({"s": "x".repeat(1000), "n": 9_223_372_036_854_775_807i64});
        let long = render("{{ s ~ s ~ s ~ s ~ s }}", &ctx).unwrap_err();
        assert!(long.contains("larger than"), "{long}");
        assert!(
            render("{{ n + 1 }}", &ctx)
                .unwrap_err()
                .contains("overflow")
        );
        assert!(
            render("{{ 1 / 0 }}", &ctx)
                .unwrap_err()
                .contains("division by zero")
        );
        assert!(render("{{ 99999999999999999999 }}", &ctx).is_err());
        let deep = format!("{{{{ {}1{} }}}}", "(".repeat(100), ")".repeat(100));
        assert!(Template::parse(&deep).unwrap_err().contains("nested"));
        let big = format!("{{{{ {} }}}}", "1 + ".repeat(2000));
        assert!(Template::parse(&big).is_err(), "too long");
        let chain = format!("{{{{ {}1 }}}}", "1 + ".repeat(900));
        assert!(Template::parse(&chain).unwrap_err().contains("nested"));
        let filters = format!("{{{{ 1{} }}}}", " | abs".repeat(100));
        assert!(Template::parse(&filters).unwrap_err().contains("nested"));
        let sums: String = (0..60).map(|_| "{{ 1 + 2 + 3 + 4 + 5 + 6 }}").collect();
        assert_eq!(render(&sums, &ctx).map(|v| v.is_number()), Ok(true));
        let wide: String = (0..600).map(|_| "{{ s | length }}").collect();
        assert!(
            Template::parse(&wide).is_err(),
            "longer than the template bound"
        );
        let out: String = (0..200).map(|_| "{{ s }}").collect();
        assert!(
            render(&out, &ctx)
                .unwrap_err()
                .contains("more than 4096 bytes")
        );
    }
}
