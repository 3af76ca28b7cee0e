//! JSON the way Python's `json` module reads and writes it for LLaMA-Factory's tool texts: objects keep
//! their key order (serde_json's default map is sorted), and `dumps` writes `json.dumps(v, ensure_ascii=False)`
//! (", " and ": " separators, non-ASCII kept, floats as Python's `repr`).

use crate::{bail, Result};
use ferrotune_args::logging::py_float;

/// A JSON value whose objects keep insertion order.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    Null,
    Bool(bool),
    /// The number's text as written when it is an integer; floats are re-rendered as Python's repr.
    Int(String),
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    Object(Vec<(String, PyValue)>),
}

impl PyValue {
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Object(items) => items.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }
    /// Python's `str()` of the value as it appears in a format string (`"{}".format(v)`).
    pub fn py_str(&self) -> String {
        match self {
            PyValue::Str(s) => s.clone(),
            PyValue::Null => "None".into(),
            PyValue::Bool(true) => "True".into(),
            PyValue::Bool(false) => "False".into(),
            other => dumps(other),
        }
    }
}

/// Parse JSON text, keeping object key order (a repeated key keeps its first position and last value, as
/// a Python dict does).
pub fn loads(text: &str) -> Result<PyValue> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        bail!("extra data after the JSON value at byte {}", p.i);
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }
    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }
    fn value(&mut self, depth: usize) -> Result<PyValue> {
        if depth > 512 {
            bail!("JSON nested too deeply");
        }
        let Some(&c) = self.s.get(self.i) else {
            bail!("unexpected end of JSON")
        };
        match c {
            b'n' if self.eat("null") => Ok(PyValue::Null),
            b't' if self.eat("true") => Ok(PyValue::Bool(true)),
            b'f' if self.eat("false") => Ok(PyValue::Bool(false)),
            b'"' => Ok(PyValue::Str(self.string()?)),
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat("]") {
                    return Ok(PyValue::List(items));
                }
                loop {
                    self.ws();
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("]") {
                        return Ok(PyValue::List(items));
                    }
                    bail!("expected ',' or ']' at byte {}", self.i);
                }
            }
            b'{' => {
                self.i += 1;
                let mut items: Vec<(String, PyValue)> = Vec::new();
                self.ws();
                if self.eat("}") {
                    return Ok(PyValue::Object(items));
                }
                loop {
                    self.ws();
                    if self.s.get(self.i) != Some(&b'"') {
                        bail!("expected a string key at byte {}", self.i);
                    }
                    let k = self.string()?;
                    self.ws();
                    if !self.eat(":") {
                        bail!("expected ':' at byte {}", self.i);
                    }
                    self.ws();
                    let v = self.value(depth + 1)?;
                    match items.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = v,
                        None => items.push((k, v)),
                    }
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("}") {
                        return Ok(PyValue::Object(items));
                    }
                    bail!("expected ',' or '}}' at byte {}", self.i);
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                if text.contains(['.', 'e', 'E']) {
                    match text.parse::<f64>() {
                        Ok(f) => Ok(PyValue::Float(f)),
                        Err(_) => bail!("bad number {text:?}"),
                    }
                } else if text.parse::<i128>().is_ok()
                    || (text.len() > 1 && text[1..].bytes().all(|b| b.is_ascii_digit()))
                {
                    Ok(PyValue::Int(text.trim_start_matches('+').to_string()))
                } else {
                    bail!("bad number {text:?}")
                }
            }
            _ => bail!("unexpected character at byte {}", self.i),
        }
    }
    fn hex4(&mut self) -> Result<u32> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok());
        let Some(v) = h.and_then(|h| u32::from_str_radix(h, 16).ok()) else {
            bail!("bad \\u escape at byte {}", self.i)
        };
        self.i += 4;
        Ok(v)
    }
    fn string(&mut self) -> Result<String> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i] != b'"' && self.s[self.i] != b'\\' {
                self.i += 1;
            }
            match std::str::from_utf8(&self.s[start..self.i]) {
                Ok(t) => out.push_str(t),
                Err(_) => bail!("invalid UTF-8 in a JSON string"),
            }
            let Some(&c) = self.s.get(self.i) else {
                bail!("unterminated JSON string")
            };
            self.i += 1;
            if c == b'"' {
                return Ok(out);
            }
            let Some(&e) = self.s.get(self.i) else {
                bail!("unterminated escape")
            };
            self.i += 1;
            match e {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let hi = self.hex4()?;
                    let cp =
                        if (0xD800..0xDC00).contains(&hi) && self.s[self.i..].starts_with(b"\\u") {
                            let save = self.i;
                            self.i += 2;
                            let lo = self.hex4()?;
                            if (0xDC00..0xE000).contains(&lo) {
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                self.i = save;
                                0xFFFD
                            }
                        } else {
                            hi
                        };
                    out.push(char::from_u32(cp).unwrap_or('\u{FFFD}'));
                }
                _ => bail!("bad escape at byte {}", self.i - 1),
            }
        }
    }
}

/// `json.dumps(v, ensure_ascii=False)`.
pub fn dumps(v: &PyValue) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// `json.dumps` of a serde_json value (keys in serde_json's map order).
pub fn dumps_value(v: &serde_json::Value) -> String {
    dumps(&from_serde(v))
}

pub fn from_serde(v: &serde_json::Value) -> PyValue {
    use serde_json::Value;
    match v {
        Value::Null => PyValue::Null,
        Value::Bool(b) => PyValue::Bool(*b),
        Value::Number(n) if n.is_f64() => PyValue::Float(n.as_f64().unwrap_or(0.0)),
        Value::Number(n) => PyValue::Int(n.to_string()),
        Value::String(s) => PyValue::Str(s.clone()),
        Value::Array(a) => PyValue::List(a.iter().map(from_serde).collect()),
        Value::Object(o) => {
            PyValue::Object(o.iter().map(|(k, v)| (k.clone(), from_serde(v))).collect())
        }
    }
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write(v: &PyValue, out: &mut String) {
    match v {
        PyValue::Null => out.push_str("null"),
        PyValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        PyValue::Int(t) => out.push_str(t),
        PyValue::Float(f) => out.push_str(&py_float(*f)),
        PyValue::Str(s) => write_str(s, out),
        PyValue::List(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(x, out);
            }
            out.push(']');
        }
        PyValue::Object(items) => {
            out.push('{');
            for (i, (k, x)) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(k, out);
                out.push_str(": ");
                write(x, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_like_python() {
        let v =
            loads(r#"{"b": 1, "a": [1.5, 1e-05, 2.0, "x\u00e9\n", null, true], "c": {"z": -3}}"#)
                .unwrap();
        assert_eq!(
            dumps(&v),
            r#"{"b": 1, "a": [1.5, 1e-05, 2.0, "xé\n", null, true], "c": {"z": -3}}"#
        );
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(123.25), "123.25");
        assert_eq!(py_float(0.0001), "0.0001");
        assert!(loads("{").is_err());
        assert!(loads("[1,]").is_err());
    }
}
