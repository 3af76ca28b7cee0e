//! Converters into LLaMA-Factory's aligned format (`data/converter.py`): `_prompt`, `_response`, `_system`,
//! `_tools`. Media columns are not carried (text-only models).

use crate::info::{kind_of, DatasetAttr, Formatting};
use crate::{bail, Result};
use serde_json::{Map, Value};

/// A message role (`data_utils.Role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    System,
    Function,
    Observation,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::Function => "function",
            Role::Observation => "observation",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// One example in the aligned format. `prompt` holds `2T - 1` messages for a valid supervised example and
/// `response` one (two for ranking data: chosen then rejected); a dropped example has both empty.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Example {
    pub prompt: Vec<Message>,
    pub response: Vec<Message>,
    pub system: String,
    pub tools: String,
}

/// A record's field: a missing key reads as null, as in a `datasets` table where the column exists.
fn field<'a>(record: &'a Map<String, Value>, key: &Option<String>) -> Option<&'a Value> {
    key.as_ref()
        .and_then(|k| record.get(k))
        .filter(|v| !v.is_null())
}

fn string_field(record: &Map<String, Value>, key: &Option<String>, what: &str) -> Result<String> {
    match field(record, key) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => bail!(
            "column {:?} ({what}) must be a string, got {}",
            key.as_deref().unwrap_or(""),
            kind_of(v)
        ),
    }
}

/// Python truthiness of a column used as text.
fn truthy_text(v: Option<&Value>, key: &Option<String>) -> Result<Option<String>> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => bail!(
            "column {:?} must be a string, got {}",
            key.as_deref().unwrap_or(""),
            kind_of(other)
        ),
    }
}

/// Convert one record of `attr`'s dataset. `Err` is a malformed record (wrong types, missing tags); an
/// example that upstream skips with a warning comes back with an empty prompt and response.
pub fn convert(attr: &DatasetAttr, record: &Map<String, Value>) -> Result<Example> {
    match attr.formatting {
        Formatting::Alpaca => convert_alpaca(attr, record),
        Formatting::Sharegpt => convert_sharegpt(attr, record),
        Formatting::Openai => convert_openai(attr, record),
    }
}

fn tools_text(attr: &DatasetAttr, record: &Map<String, Value>) -> Result<String> {
    match field(record, &attr.tools) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Array(_) | Value::Object(_))) => Ok(crate::pyjson::dumps_value(v)),
        Some(v) => bail!(
            "column {:?} (tools) must be a JSON string, got {}",
            attr.tools.as_deref().unwrap_or(""),
            kind_of(v)
        ),
    }
}

fn convert_alpaca(attr: &DatasetAttr, record: &Map<String, Value>) -> Result<Example> {
    let mut prompt = Vec::new();
    if let Some(Value::Array(turns)) = field(record, &attr.history) {
        for (i, turn) in turns.iter().enumerate() {
            match turn.as_array().map(Vec::as_slice) {
                Some([Value::String(q), Value::String(a)]) => {
                    prompt.push(Message::new(Role::User, q.clone()));
                    prompt.push(Message::new(Role::Assistant, a.clone()));
                }
                _ => bail!(
                    "column {:?} (history) entry {i} must be a [query, response] pair of strings, got {turn}",
                    attr.history.as_deref().unwrap_or("")
                ),
            }
        }
    }
    let mut query = Vec::new();
    if let Some(p) = truthy_text(field(record, &attr.prompt), &attr.prompt)? {
        query.push(p);
    }
    if let Some(q) = truthy_text(field(record, &attr.query), &attr.query)? {
        query.push(q);
    }
    prompt.push(Message::new(Role::User, query.join("\n")));

    let response = if let (Some(tag), Some(Value::Bool(desirable))) = (
        &attr.kto_tag,
        record.get(attr.kto_tag.as_deref().unwrap_or("")),
    ) {
        let _ = tag;
        let r = Message::new(
            Role::Assistant,
            string_field(record, &attr.response, "response")?,
        );
        let empty = Message::new(Role::Assistant, "");
        if *desirable {
            vec![r, empty]
        } else {
            vec![empty, r]
        }
    } else if let (true, Some(Value::String(c)), Some(Value::String(r))) = (
        attr.ranking,
        field(record, &attr.chosen),
        field(record, &attr.rejected),
    ) {
        vec![
            Message::new(Role::Assistant, c.clone()),
            Message::new(Role::Assistant, r.clone()),
        ]
    } else if let Some(Value::String(r)) = field(record, &attr.response) {
        vec![Message::new(Role::Assistant, r.clone())]
    } else {
        Vec::new()
    };
    Ok(Example {
        prompt,
        response,
        system: string_field(record, &attr.system, "system")?,
        tools: tools_text(attr, record)?,
    })
}

struct Tags<'a> {
    role: &'a str,
    content: &'a str,
}

fn tag<'a>(t: &'a Option<String>, name: &str) -> Result<&'a str> {
    t.as_deref()
        .ok_or_else(|| crate::Error::msg(format!("tags.{name} is null; sharegpt data needs it")))
}

fn message_parts<'a>(m: &'a Value, tags: &Tags, i: usize) -> Result<(&'a str, &'a str)> {
    let Some(obj) = m.as_object() else {
        bail!("message {i} must be an object, got {}", kind_of(m))
    };
    let role = match obj.get(tags.role) {
        Some(Value::String(s)) => s.as_str(),
        Some(v) => bail!(
            "message {i}: key {:?} (role_tag) must be a string, got {}",
            tags.role,
            kind_of(v)
        ),
        None => bail!("message {i}: no key {:?} (role_tag)", tags.role),
    };
    let content = match obj.get(tags.content) {
        Some(Value::String(s)) => s.as_str(),
        None | Some(Value::Null) => "",
        Some(v) => bail!(
            "message {i}: key {:?} (content_tag) must be a string, got {}",
            tags.content,
            kind_of(v)
        ),
    };
    Ok((role, content))
}

fn messages_field<'a>(attr: &DatasetAttr, record: &'a Map<String, Value>) -> Result<&'a [Value]> {
    match field(record, &attr.messages) {
        Some(Value::Array(m)) => Ok(m),
        Some(v) => bail!(
            "column {:?} (messages) must be a list, got {}",
            attr.messages.as_deref().unwrap_or(""),
            kind_of(v)
        ),
        None => bail!(
            "no column {:?} (messages)",
            attr.messages.as_deref().unwrap_or("")
        ),
    }
}

fn warn(msg: &str) {
    eprintln!("[ferrotune-data] warning: {msg}");
}

/// The role a message's role string names under the dataset's tags; later tags win on duplicates, as the
/// later keys of LLaMA-Factory's tag dict do.
fn role_of(attr: &DatasetAttr, r: &str) -> Option<Role> {
    [
        (&attr.user_tag, Role::User),
        (&attr.assistant_tag, Role::Assistant),
        (&attr.observation_tag, Role::Observation),
        (&attr.function_tag, Role::Function),
        (&attr.system_tag, Role::System),
    ]
    .iter()
    .rev()
    .find(|(t, _)| t.as_deref() == Some(r))
    .map(|(_, role)| *role)
}

/// The conversation's messages and its system prompt: a leading message with the system tag is the prompt
/// (and is dropped from the messages), else the `system` column, as both LLaMA-Factory converters do.
fn split_system<'a>(attr: &DatasetAttr, record: &'a Map<String, Value>, tags: &Tags) -> Result<(&'a [Value], String)> {
    let messages = messages_field(attr, record)?;
    if attr.system_tag.is_some() && !messages.is_empty() {
        let (r, c) = message_parts(&messages[0], tags, 0)?;
        if attr.system_tag.as_deref() == Some(r) {
            return Ok((&messages[1..], c.to_string()));
        }
    }
    Ok((messages, string_field(record, &attr.system, "system")?))
}

fn convert_sharegpt(attr: &DatasetAttr, record: &Map<String, Value>) -> Result<Example> {
    let tags = Tags {
        role: tag(&attr.role_tag, "role_tag")?,
        content: tag(&attr.content_tag, "content_tag")?,
    };
    let map_role = |r: &str| role_of(attr, r);
    let is = |t: &Option<String>, r: &str| t.as_deref() == Some(r);
    let (messages, system) = split_system(attr, record, &tags)?;
    let mut aligned = Vec::new();
    let mut broken = false;
    for (i, m) in messages.iter().enumerate() {
        let (r, c) = message_parts(m, &tags, i)?;
        let ok = if i % 2 == 0 {
            is(&attr.user_tag, r) || is(&attr.observation_tag, r)
        } else {
            is(&attr.assistant_tag, r) || is(&attr.function_tag, r)
        };
        if !ok {
            warn(&format!("invalid role tag {r:?} at message {i}"));
            broken = true;
            break;
        }
        // `ok` implies the tag maps to a role.
        let role = map_role(r).unwrap_or(Role::User);
        aligned.push(Message::new(role, c));
    }
    if (!attr.ranking && aligned.len() % 2 != 0) || (attr.ranking && aligned.len() % 2 == 0) {
        warn(&format!("invalid message count {}", aligned.len()));
        broken = true;
    }
    finish_chat(
        attr,
        record,
        aligned,
        broken,
        system,
        tools_text(attr, record)?,
        &tags,
        &map_role,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish_chat(
    attr: &DatasetAttr,
    record: &Map<String, Value>,
    mut aligned: Vec<Message>,
    broken: bool,
    system: String,
    tools: String,
    tags: &Tags,
    map_role: &dyn Fn(&str) -> Option<Role>,
) -> Result<Example> {
    let (prompt, response) = if broken {
        warn("skipping this abnormal example");
        (Vec::new(), Vec::new())
    } else if let (Some(_), Some(Value::Bool(desirable))) = (
        &attr.kto_tag,
        record.get(attr.kto_tag.as_deref().unwrap_or("")),
    ) {
        let last = aligned.split_off(aligned.len().saturating_sub(1));
        let empty = Message::new(Role::Assistant, "");
        let response = if *desirable {
            [last, vec![empty]].concat()
        } else {
            [vec![empty], last].concat()
        };
        (aligned, response)
    } else if let (true, Some(c @ Value::Object(_)), Some(r @ Value::Object(_))) = (
        attr.ranking,
        field(record, &attr.chosen),
        field(record, &attr.rejected),
    ) {
        let (cr, cc) = message_parts(c, tags, 0)?;
        let (rr, rc) = message_parts(r, tags, 1)?;
        let even = |t: &str| {
            attr.assistant_tag.as_deref() == Some(t) || attr.function_tag.as_deref() == Some(t)
        };
        if !even(cr) || !even(rr) {
            warn(&format!(
                "invalid role tag in chosen/rejected ({cr:?}, {rr:?})"
            ));
        }
        let role = |t: &str| map_role(t).unwrap_or(Role::Assistant);
        (
            aligned,
            vec![Message::new(role(cr), cc), Message::new(role(rr), rc)],
        )
    } else {
        let last = aligned.split_off(aligned.len().saturating_sub(1));
        (aligned, last)
    };
    Ok(Example {
        prompt,
        response,
        system,
        tools,
    })
}

fn convert_openai(attr: &DatasetAttr, record: &Map<String, Value>) -> Result<Example> {
    let tags = Tags {
        role: tag(&attr.role_tag, "role_tag")?,
        content: tag(&attr.content_tag, "content_tag")?,
    };
    let map_role = |r: &str| role_of(attr, r);
    let is = |t: &Option<String>, r: &str| t.as_deref() == Some(r);
    let (messages, mut system) = split_system(attr, record, &tags)?;
    let mut aligned = Vec::new();
    let mut tool_responses: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let (r, c) = message_parts(m, &tags, i)?;
        let mut role = r.to_string();
        let mut content = c.to_string();
        if is(&attr.assistant_tag, r) || is(&attr.function_tag, r) {
            if let Some(Value::Array(calls)) = m.get("tool_calls") {
                if !calls.is_empty() {
                    let functions: Vec<Value> = calls
                        .iter()
                        .map(|t| t.get("function").cloned().unwrap_or(Value::Null))
                        .collect();
                    content = crate::pyjson::dumps_value(&Value::Array(functions));
                    role = attr.function_tag.clone().unwrap_or_default();
                }
            }
        }
        if is(&attr.observation_tag, &role) {
            tool_responses.push(content);
            continue;
        } else if !tool_responses.is_empty() {
            aligned.push(Message::new(
                Role::Observation,
                tool_responses.join("\n</tool_response>\n<tool_response>\n"),
            ));
            tool_responses.clear();
        }
        let Some(mapped) = map_role(&role) else {
            bail!("message {i}: role {role:?} matches none of the dataset's tags");
        };
        aligned.push(Message::new(mapped, content));
    }
    let mut broken = false;
    for (i, m) in aligned.iter().enumerate() {
        let ok = if i % 2 == 0 {
            matches!(m.role, Role::User | Role::Observation)
        } else {
            matches!(m.role, Role::Assistant | Role::Function)
        };
        if !ok {
            warn(&format!(
                "invalid role {:?} at message {i}",
                m.role.as_str()
            ));
            broken = true;
            break;
        }
    }
    if (!attr.ranking && aligned.len() % 2 != 0) || (attr.ranking && aligned.len() % 2 == 0) {
        warn(&format!("invalid message count {}", aligned.len()));
        broken = true;
    }
    let tools = tools_text(attr, record)?;
    // LLaMA-Factory 0.9.5's openai converter appends this reasoning switch to the system prompt.
    let short = "detailed thinking off";
    if system.is_empty() {
        if tools.is_empty() {
            system = short.to_string();
        }
    } else if tools.is_empty() {
        if !system.contains("detailed thinking on") && !system.contains(short) {
            system = format!("{system}\n{short}");
        }
    } else {
        system.push('\n');
    }
    finish_chat(
        attr, record, aligned, broken, system, tools, &tags, &map_role,
    )
}
