//! Config values as `llamafactory-cli` reads them: YAML through OmegaConf (PyYAML's YAML 1.1 resolver with
//! OmegaConf's float rule, no timestamps), JSON, and `key=value` dotlist overrides (each value read as YAML).

use crate::error::{ArgsError, Result};
use std::collections::HashMap;
use std::fmt;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One config value, typed as the YAML/JSON loader typed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    /// A mapping in file order (only dict-valued arguments such as `lr_scheduler_kwargs` take one).
    Map(Vec<(String, Value)>),
}

impl Value {
    /// The scalar's text as a command line would carry it (`None` for lists and maps).
    pub fn scalar_text(&self) -> Option<String> {
        Some(match self {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(x) => format_float(*x),
            Value::Str(s) => s.clone(),
            Value::List(_) | Value::Map(_) => return None,
        })
    }
}

impl Value {
    /// As a `serde_json::Value` (for code that takes JSON, such as `lr_scheduler_kwargs`); NaN and infinities,
    /// which JSON cannot hold, become null.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(x) => serde_json::Number::from_f64(*x)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::List(items) => {
                serde_json::Value::Array(items.iter().map(Value::to_json).collect())
            }
            Value::Map(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A float as YAML/OmegaConf reads it back as a float (always a `.` or an exponent).
pub(crate) fn format_float(x: f64) -> String {
    if x.is_nan() {
        return ".nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            ".inf".into()
        } else {
            "-.inf".into()
        };
    }
    let s = format!("{x:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(entries) => {
                f.write_str("{")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
            other => f.write_str(&other.scalar_text().unwrap_or_default()),
        }
    }
}

/// Resolves a plain (unquoted) YAML scalar the way OmegaConf's loader does.
pub fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Value::Bool(true)
        }
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Value::Bool(false)
        }
        _ => {}
    }
    if let Some(i) = resolve_int(s) {
        return Value::Int(i);
    }
    if let Some(x) = resolve_float(s) {
        return Value::Float(x);
    }
    Value::Str(s.to_string())
}

/// YAML 1.1 ints: decimal, `0b`, `0x`, leading-zero octal, `_` separators.
fn resolve_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() || body.starts_with('_') {
        return None;
    }
    let (radix, digits) = if let Some(d) = body.strip_prefix("0b") {
        (2, d)
    } else if let Some(d) = body.strip_prefix("0x") {
        (16, d)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    if clean.is_empty() || !clean.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i64::from_str_radix(&clean, radix).ok()?;
    Some(if neg { -v } else { v })
}

/// OmegaConf's float rule: `1.0`, `1.`, `1e-4` (no dot needed), `.5`, `.inf`, `.nan`.
fn resolve_float(s: &str) -> Option<f64> {
    match s {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    let b = s.as_bytes();
    let mut i = 0;
    let signed = matches!(b.first(), Some(b'-' | b'+'));
    if signed {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && (b[i].is_ascii_digit() || (b[i] == b'_' && i > int_start)) {
        i += 1;
    }
    let int_len = i - int_start;
    let mut has_dot = false;
    if i < b.len() && b[i] == b'.' {
        has_dot = true;
        i += 1;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
    }
    let mut has_exp = false;
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        let exp_signed = j < b.len() && (b[j] == b'-' || b[j] == b'+');
        if exp_signed {
            j += 1;
        }
        let ds = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j == ds {
            return None;
        }
        // `.5e3` needs a signed exponent in the rule; keep it simple and accept both.
        has_exp = true;
        i = j;
    }
    if i != b.len() {
        return None;
    }
    let ok = if int_len > 0 {
        b[int_start].is_ascii_digit() && (has_dot || has_exp)
    } else {
        // `.5` form: no sign allowed by the rule.
        has_dot && !signed && s.len() > 1
    };
    if !ok {
        return None;
    }
    let clean: String = s.chars().filter(|&c| c != '_').collect();
    clean.parse::<f64>().ok()
}

/// Builds a value tree from yaml-rust2's events (scalar styles kept, so only plain scalars are resolved).
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    docs: Vec<Value>,
    error: Option<String>,
}

enum Frame {
    List(Vec<Value>, usize),
    Map(Vec<(String, Value)>, Option<String>, usize, Marker),
}

impl Builder {
    fn push_value(&mut self, v: Value, anchor: usize, mark: Marker) {
        if anchor != 0 {
            self.anchors.insert(anchor, v.clone());
        }
        match self.stack.last_mut() {
            None => self.docs.push(v),
            Some(Frame::List(items, _)) => items.push(v),
            Some(Frame::Map(entries, pending, _, _)) => match pending.take() {
                None => {
                    let key = match v {
                        Value::Str(s) => s,
                        Value::Null => "null".into(),
                        other => match other.scalar_text() {
                            Some(t) => t,
                            None => {
                                self.fail(mark, "a mapping key must be a scalar");
                                return;
                            }
                        },
                    };
                    if entries.iter().any(|(k, _)| *k == key) {
                        let msg = format!("found duplicate key `{key}`");
                        self.fail(mark, &msg);
                        return;
                    }
                    *pending = Some(key);
                }
                Some(key) => entries.push((key, v)),
            },
        }
    }

    fn fail(&mut self, mark: Marker, msg: &str) {
        if self.error.is_none() {
            self.error = Some(format!(
                "line {}, column {}: {msg}",
                mark.line(),
                mark.col() + 1
            ));
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let v = match tag {
                    Some(t) if t.handle == "!!" || t.handle == "tag:yaml.org,2002:" => {
                        match t.suffix.as_str() {
                            "str" => Value::Str(text),
                            "null" => Value::Null,
                            "bool" | "int" | "float" => {
                                match (t.suffix.as_str(), resolve_plain(&text)) {
                                    ("bool", v @ Value::Bool(_)) | ("int", v @ Value::Int(_)) => v,
                                    ("float", Value::Float(x)) => Value::Float(x),
                                    ("float", Value::Int(i)) => Value::Float(i as f64),
                                    _ => {
                                        let msg = format!("`{text}` is not a valid !!{}", t.suffix);
                                        self.fail(mark, &msg);
                                        return;
                                    }
                                }
                            }
                            other => {
                                let msg = format!("unsupported tag !!{other}");
                                self.fail(mark, &msg);
                                return;
                            }
                        }
                    }
                    Some(t) => {
                        let msg = format!("unsupported tag {}{}", t.handle, t.suffix);
                        self.fail(mark, &msg);
                        return;
                    }
                    None if style == TScalarStyle::Plain => resolve_plain(&text),
                    None => Value::Str(text),
                };
                self.push_value(v, anchor, mark);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(v) => self.push_value(v, 0, mark),
                None => self.fail(mark, "alias to an unknown anchor"),
            },
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::List(Vec::new(), anchor)),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map(Vec::new(), None, anchor, mark))
            }
            Event::SequenceEnd => {
                if let Some(Frame::List(items, anchor)) = self.stack.pop() {
                    self.push_value(Value::List(items), anchor, mark);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(entries, _, anchor, start)) = self.stack.pop() {
                    self.push_value(Value::Map(entries), anchor, start);
                }
            }
            _ => {}
        }
    }
}

/// Parses YAML text into one value (an empty document is `Null`).
pub fn parse_yaml(text: &str) -> std::result::Result<Value, String> {
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        docs: Vec::new(),
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut b, true).map_err(|e| e.to_string())?;
    if let Some(e) = b.error {
        return Err(e);
    }
    match b.docs.len() {
        0 => Ok(Value::Null),
        1 => Ok(b.docs.pop().unwrap_or(Value::Null)),
        n => Err(format!("expected one YAML document, found {n}")),
    }
}

/// Reads a config file's text as a flat mapping (`.yaml`/`.yml` as YAML, `.json` as JSON).
pub fn parse_config_text(path: &str, text: &str, json: bool) -> Result<Vec<(String, Value)>> {
    let file_err = |message: String| ArgsError::File {
        path: path.to_string(),
        message,
    };
    let root = if json {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| file_err(format!("invalid JSON: {e}")))?;
        from_json(v)
    } else {
        parse_yaml(text).map_err(|e| file_err(format!("invalid YAML: {e}")))?
    };
    match root {
        Value::Map(entries) => Ok(entries),
        Value::Null => Ok(Vec::new()),
        other => Err(file_err(format!(
            "the config must be a mapping of argument names to values (a flat `key: value` file), found {other}"
        ))),
    }
}

/// A JSON value as OmegaConf keeps it (ints stay ints).
pub fn from_json(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(a) => Value::List(a.into_iter().map(from_json).collect()),
        serde_json::Value::Object(o) => {
            Value::Map(o.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
    }
}

/// One dotlist override (`key=value`, value read as YAML; a bare `key` is null, as in `OmegaConf.from_dotlist`).
pub fn parse_dotlist_item(arg: &str) -> Result<(String, Value)> {
    if arg.starts_with('-') {
        return Err(ArgsError::Usage(format!(
            "`{arg}`: after a config file, overrides are written key=value (for example learning_rate=1e-5), \
             not as --flags"
        )));
    }
    let (key, raw) = match arg.split_once('=') {
        Some((k, v)) => (k.trim(), Some(v)),
        None => (arg.trim(), None),
    };
    if key.is_empty() {
        return Err(ArgsError::Usage(format!(
            "`{arg}`: an override needs a key (key=value)"
        )));
    }
    let value = match raw {
        None => Value::Null,
        Some(raw) => parse_yaml(raw)
            .map_err(|e| ArgsError::Usage(format!("`{arg}`: the value is not valid YAML: {e}")))?,
    };
    Ok((key.to_string(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omegaconf_scalars() {
        assert_eq!(resolve_plain("1.0e-4"), Value::Float(1.0e-4));
        assert_eq!(resolve_plain("1e-4"), Value::Float(1.0e-4));
        assert_eq!(resolve_plain("5e-05"), Value::Float(5e-5));
        assert_eq!(resolve_plain("3.0"), Value::Float(3.0));
        assert_eq!(resolve_plain(".5"), Value::Float(0.5));
        assert_eq!(resolve_plain("180000000"), Value::Int(180_000_000));
        assert_eq!(resolve_plain("-1"), Value::Int(-1));
        assert_eq!(resolve_plain("1_000"), Value::Int(1000));
        assert_eq!(resolve_plain("0x10"), Value::Int(16));
        assert_eq!(resolve_plain("yes"), Value::Bool(true));
        assert_eq!(resolve_plain("Off"), Value::Bool(false));
        assert_eq!(resolve_plain("null"), Value::Null);
        assert_eq!(resolve_plain("~"), Value::Null);
        assert_eq!(resolve_plain("none"), Value::Str("none".into()));
        assert_eq!(resolve_plain("None"), Value::Str("None".into()));
        assert_eq!(
            resolve_plain("identity,alpaca_en_demo"),
            Value::Str("identity,alpaca_en_demo".into())
        );
        assert_eq!(resolve_plain("1.2.3"), Value::Str("1.2.3".into()));
        assert_eq!(resolve_plain("e5"), Value::Str("e5".into()));
        assert_eq!(resolve_plain("2024-01-01"), Value::Str("2024-01-01".into()));
        assert!(matches!(resolve_plain(".nan"), Value::Float(x) if x.is_nan()));
    }

    #[test]
    fn yaml_styles_and_structure() {
        let v = parse_yaml("a: 'true'\nb: true\nc: \"1e-4\"\nd: [x, 1]\ne: {k: 2}\nf:\n").unwrap();
        let Value::Map(m) = v else {
            panic!("not a map")
        };
        assert_eq!(m[0], ("a".into(), Value::Str("true".into())));
        assert_eq!(m[1], ("b".into(), Value::Bool(true)));
        assert_eq!(m[2], ("c".into(), Value::Str("1e-4".into())));
        assert_eq!(
            m[3].1,
            Value::List(vec![Value::Str("x".into()), Value::Int(1)])
        );
        assert_eq!(m[4].1, Value::Map(vec![("k".into(), Value::Int(2))]));
        assert_eq!(m[5].1, Value::Null);
        assert!(parse_yaml("a: 1\na: 2\n")
            .unwrap_err()
            .contains("duplicate key `a`"));
        assert!(parse_yaml("a: [1\n").is_err());
    }

    #[test]
    fn dotlist() {
        assert_eq!(
            parse_dotlist_item("learning_rate=1e-5").unwrap(),
            ("learning_rate".into(), Value::Float(1e-5))
        );
        assert_eq!(
            parse_dotlist_item("resume_from_checkpoint=null").unwrap().1,
            Value::Null
        );
        assert_eq!(parse_dotlist_item("x=").unwrap().1, Value::Null);
        assert_eq!(
            parse_dotlist_item("dataset=a,b").unwrap().1,
            Value::Str("a,b".into())
        );
        assert_eq!(parse_dotlist_item("template").unwrap().1, Value::Null);
        assert!(parse_dotlist_item("--learning_rate").is_err());
    }

    #[test]
    fn to_json() {
        let v = parse_yaml("{min_lr: 1.0e-6, num_cycles: 2, name: x, l: [true, null]}").unwrap();
        assert_eq!(
            v.to_json(),
            serde_json::json!({"min_lr": 1e-6, "num_cycles": 2, "name": "x", "l": [true, null]})
        );
        // serde_json objects are sorted by key (no preserve_order feature).
        let sorted =
            parse_yaml("{l: [true, null], min_lr: 1.0e-6, name: x, num_cycles: 2}").unwrap();
        assert_eq!(from_json(v.to_json()), sorted);
    }

    #[test]
    fn floats_print_as_floats() {
        for x in [1e-4, 3.0, 0.1, 1e20, 2.5e-7] {
            assert_eq!(resolve_plain(&format_float(x)), Value::Float(x), "{x}");
        }
    }
}
