//! Tool formats (`data/tool_utils.py`): how tool definitions go into the system text and how function
//! calls are written in assistant turns. `default` (ReAct-style) and `qwen` (`<tool_call>` JSON) are here.

use crate::pyjson::{dumps, loads, PyValue};
use crate::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Default,
    Qwen,
}

impl ToolFormat {
    pub fn parse(name: &str) -> Result<ToolFormat> {
        match name {
            "default" => Ok(ToolFormat::Default),
            "qwen" => Ok(ToolFormat::Qwen),
            other => bail!("tool format {other:?} is not supported; supported: default, qwen"),
        }
    }
}

const DEFAULT_TOOL_PROMPT_HEAD: &str = "You have access to the following tools:\n";
const QWEN_TOOL_PROMPT_HEAD: &str =
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
const QWEN_TOOL_PROMPT_TAIL: &str = "\n</tools>\n\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": \
<args-json-object>}\n</tool_call>";

/// `ToolFormatter.apply`: the tool text for the system prompt ("" for an empty list).
pub fn format_tools(format: ToolFormat, tools_json: &str) -> Result<String> {
    let tools = loads(tools_json)
        .map_err(|e| crate::Error::msg(format!("Invalid JSON format in tool description: {e}")))?;
    let items: Vec<PyValue> = match tools {
        PyValue::List(items) => items,
        PyValue::Object(o) if o.is_empty() => Vec::new(),
        other => vec![other],
    };
    if items.is_empty() {
        return Ok(String::new());
    }
    match format {
        ToolFormat::Default => {
            let mut tool_text = String::new();
            let mut names = Vec::new();
            for tool in &items {
                let tool = if tool.get("type").and_then(PyValue::as_str) == Some("function") {
                    tool.get("function").unwrap_or(&PyValue::Null)
                } else {
                    tool
                };
                let Some(name) = tool.get("name") else {
                    bail!("tool description has no \"name\": {}", dumps(tool))
                };
                let params = tool.get("parameters");
                let required: Vec<&PyValue> = match params.and_then(|p| p.get("required")) {
                    Some(PyValue::List(r)) => r.iter().collect(),
                    _ => Vec::new(),
                };
                let mut param_text = String::new();
                match params.and_then(|p| p.get("properties")) {
                    Some(PyValue::Object(props)) => {
                        for (pname, param) in props {
                            let req = if required.iter().any(|r| r.as_str() == Some(pname)) {
                                ", required"
                            } else {
                                ""
                            };
                            let enum_text = match param.get("enum") {
                                Some(PyValue::List(e)) if !e.is_empty() => {
                                    let parts: Vec<String> =
                                        e.iter().map(PyValue::py_str).collect();
                                    format!(", should be one of [{}]", parts.join(", "))
                                }
                                _ => String::new(),
                            };
                            let items_text = match param.get("items") {
                                Some(PyValue::Object(o)) if !o.is_empty() => format!(
                                    ", where each item should be {}",
                                    param
                                        .get("items")
                                        .and_then(|i| i.get("type"))
                                        .map_or(String::new(), PyValue::py_str)
                                ),
                                _ => String::new(),
                            };
                            let ty = param.get("type").map_or(String::new(), PyValue::py_str);
                            let desc = param
                                .get("description")
                                .map_or(String::new(), PyValue::py_str);
                            param_text.push_str(&format!(
                                "  - {pname} ({ty}{req}): {desc}{enum_text}{items_text}\n"
                            ));
                        }
                    }
                    _ => bail!("tool {} has no parameters.properties object", name.py_str()),
                }
                let desc = tool
                    .get("description")
                    .map_or(String::new(), PyValue::py_str);
                tool_text.push_str(&format!(
                    "> Tool Name: {}\nTool Description: {desc}\nTool Args:\n{param_text}\n",
                    name.py_str()
                ));
                names.push(name.py_str());
            }
            Ok(format!(
                "{DEFAULT_TOOL_PROMPT_HEAD}{tool_text}Use the following format if using a tool:\n```\nAction: tool name \
                 (one of [{}])\nAction Input: the input to the tool, in a JSON format representing the kwargs (e.g. \
                 ```{{\"input\": \"hello world\", \"num_beams\": 5}}```)\n```\n",
                names.join(", ")
            ))
        }
        ToolFormat::Qwen => {
            let mut tool_text = String::new();
            for tool in &items {
                let wrapped = if tool.get("type").and_then(PyValue::as_str) == Some("function") {
                    tool.clone()
                } else {
                    PyValue::Object(vec![
                        ("type".into(), PyValue::Str("function".into())),
                        ("function".into(), tool.clone()),
                    ])
                };
                tool_text.push('\n');
                tool_text.push_str(&dumps(&wrapped));
            }
            Ok(format!(
                "{QWEN_TOOL_PROMPT_HEAD}{tool_text}{QWEN_TOOL_PROMPT_TAIL}"
            ))
        }
    }
}

/// Non-greedy `re.search(re.escape(open) + "(.*?)" + re.escape(close), s, re.DOTALL)`: (whole start, whole end,
/// inner).
pub(crate) fn find_between<'a>(
    s: &'a str,
    open: &str,
    close: &str,
) -> Option<(usize, usize, &'a str)> {
    let start = s.find(open)?;
    let inner_start = start + open.len();
    let rel = s[inner_start..].find(close)?;
    Some((
        start,
        inner_start + rel + close.len(),
        &s[inner_start..inner_start + rel],
    ))
}

/// `FunctionFormatter.apply`'s content: a function-call message (JSON of `{name, arguments}` or a list of
/// them, optionally inside tool-call words and after a thought) rendered in `format`.
pub fn format_function(
    format: ToolFormat,
    content: &str,
    thought_words: Option<(&str, &str)>,
    tool_call_words: Option<(&str, &str)>,
) -> Result<String> {
    let parse = |json: &str| -> Result<Vec<(String, PyValue)>> {
        let v = loads(json).map_err(|_| {
            crate::Error::msg(format!(
                "Invalid JSON format in function message: {content:?}"
            ))
        })?;
        let calls = match v {
            PyValue::List(items) => items,
            other => vec![other],
        };
        calls
            .iter()
            .map(|c| match (c.get("name"), c.get("arguments")) {
                (Some(n), Some(a)) => Ok((n.py_str(), a.clone())),
                _ => bail!(
                    "function call must have \"name\" and \"arguments\": {}",
                    dumps(c)
                ),
            })
            .collect()
    };
    let render = |calls: &[(String, PyValue)]| -> String {
        match format {
            ToolFormat::Default => calls
                .iter()
                .map(|(n, a)| format!("Action: {n}\nAction Input: {}", dumps(a)))
                .collect::<Vec<_>>()
                .join("\n"),
            ToolFormat::Qwen => calls
                .iter()
                .map(|(n, a)| {
                    let obj = PyValue::Object(vec![
                        ("name".into(), PyValue::Str(n.clone())),
                        ("arguments".into(), a.clone()),
                    ]);
                    format!("<tool_call>\n{}\n</tool_call>", dumps(&obj))
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    };
    if let Some((s, e, inner)) = tool_call_words.and_then(|(o, c)| find_between(content, o, c)) {
        let thought = content.replace(&content[s..e], "");
        return Ok(thought + &render(&parse(inner)?));
    }
    match thought_words.and_then(|(o, c)| find_between(content, o, c)) {
        Some((s, e, _)) => {
            let whole = &content[s..e];
            let json_part = content.replace(whole, "");
            Ok(whole.to_string() + &render(&parse(&json_part)?))
        }
        None => Ok(render(&parse(content)?)),
    }
}
