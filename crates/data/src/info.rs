//! `dataset_info.json` (LLaMA-Factory `data/parser.py::DatasetAttr`) and reading local dataset files.

use crate::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The dataset's formatting (`formatting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formatting {
    Alpaca,
    Sharegpt,
    /// LLaMA-Factory's dedicated openai converter (role/content messages, `tool_calls`, merged tool results).
    Openai,
}

/// One entry of `dataset_info.json`, with LLaMA-Factory's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetAttr {
    /// The key in `dataset_info.json`.
    pub name: String,
    /// `file_name`, relative to `dataset_dir`.
    pub file_name: String,
    pub formatting: Formatting,
    pub ranking: bool,
    pub subset: Option<String>,
    pub split: String,
    pub folder: Option<String>,
    pub num_samples: Option<usize>,
    // columns
    pub system: Option<String>,
    pub tools: Option<String>,
    pub images: Option<String>,
    pub videos: Option<String>,
    pub audios: Option<String>,
    pub chosen: Option<String>,
    pub rejected: Option<String>,
    pub kto_tag: Option<String>,
    pub prompt: Option<String>,
    pub query: Option<String>,
    pub response: Option<String>,
    pub history: Option<String>,
    pub messages: Option<String>,
    // tags
    pub role_tag: Option<String>,
    pub content_tag: Option<String>,
    pub user_tag: Option<String>,
    pub assistant_tag: Option<String>,
    pub observation_tag: Option<String>,
    pub function_tag: Option<String>,
    pub system_tag: Option<String>,
}

impl DatasetAttr {
    fn with_defaults(name: &str, file_name: &str) -> DatasetAttr {
        let s = |v: &str| Some(v.to_string());
        DatasetAttr {
            name: name.to_string(),
            file_name: file_name.to_string(),
            formatting: Formatting::Alpaca,
            ranking: false,
            subset: None,
            split: "train".into(),
            folder: None,
            num_samples: None,
            system: None,
            tools: None,
            images: None,
            videos: None,
            audios: None,
            chosen: None,
            rejected: None,
            kto_tag: None,
            prompt: s("instruction"),
            query: s("input"),
            response: s("output"),
            history: None,
            messages: s("conversations"),
            role_tag: s("from"),
            content_tag: s("value"),
            user_tag: s("human"),
            assistant_tag: s("gpt"),
            observation_tag: s("observation"),
            function_tag: s("function_call"),
            system_tag: s("system"),
        }
    }

    /// Parse entry `name` of a `dataset_info.json` object. Hub and script entries are refused (no network):
    /// the message says to download the file and point `file_name` at it.
    pub fn from_info(name: &str, entry: &Value, info_path: &Path) -> Result<DatasetAttr> {
        let ctx = || format!("{}: dataset {name:?}", info_path.display());
        let Some(obj) = entry.as_object() else {
            bail!("{}: must be an object, got {entry}", ctx());
        };
        let file_name = match obj.get("file_name") {
            Some(Value::String(f)) => f.clone(),
            Some(v) => bail!("{}: key \"file_name\" must be a string, got {v}", ctx()),
            None => {
                for key in [
                    "hf_hub_url",
                    "ms_hub_url",
                    "om_hub_url",
                    "script_url",
                    "cloud_file_name",
                ] {
                    if let Some(v) = obj.get(key) {
                        bail!(
                            "{}: {key} {v} is not available offline; download the file and point file_name at it",
                            ctx()
                        );
                    }
                }
                bail!("{}: no \"file_name\"", ctx());
            }
        };
        let mut attr = DatasetAttr::with_defaults(name, &file_name);
        let opt_str =
            |o: &Map<String, Value>, key: &str, section: &str| -> Result<Option<Option<String>>> {
                match o.get(key) {
                    None => Ok(None),
                    Some(Value::Null) => Ok(Some(None)),
                    Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
                    Some(v) => bail!("{}: key {section}{key:?} must be a string, got {v}", ctx()),
                }
            };
        attr.formatting = match opt_str(obj, "formatting", "")?.flatten().as_deref() {
            None | Some("alpaca") => Formatting::Alpaca,
            Some("sharegpt") => Formatting::Sharegpt,
            Some("openai") => Formatting::Openai,
            Some(other) => bail!(
                "{}: unknown formatting {other:?}; expected alpaca, sharegpt or openai",
                ctx()
            ),
        };
        attr.ranking = match obj.get("ranking") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => bail!("{}: key \"ranking\" must be true or false, got {v}", ctx()),
        };
        attr.subset = opt_str(obj, "subset", "")?.flatten();
        attr.split = opt_str(obj, "split", "")?
            .flatten()
            .unwrap_or_else(|| "train".into());
        attr.folder = opt_str(obj, "folder", "")?.flatten();
        attr.num_samples = match obj.get("num_samples") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) => Some(n as usize),
                None => bail!(
                    "{}: key \"num_samples\" must be a whole number, got {v}",
                    ctx()
                ),
            },
        };
        // As upstream: a `columns` object replaces every column (absent ones become None), likewise `tags`.
        if let Some(columns) = obj.get("columns") {
            let Some(c) = columns.as_object() else {
                bail!("{}: key \"columns\" must be an object", ctx())
            };
            let get = |k: &str| opt_str(c, k, "columns.").map(Option::flatten);
            attr.prompt = get("prompt")?;
            attr.query = get("query")?;
            attr.response = get("response")?;
            attr.history = get("history")?;
            attr.messages = get("messages")?;
            attr.system = get("system")?;
            attr.tools = get("tools")?;
            attr.images = get("images")?;
            attr.videos = get("videos")?;
            attr.audios = get("audios")?;
            attr.chosen = get("chosen")?;
            attr.rejected = get("rejected")?;
            attr.kto_tag = get("kto_tag")?;
        }
        if let Some(tags) = obj.get("tags") {
            let Some(t) = tags.as_object() else {
                bail!("{}: key \"tags\" must be an object", ctx())
            };
            let get = |k: &str| opt_str(t, k, "tags.").map(Option::flatten);
            attr.role_tag = get("role_tag")?;
            attr.content_tag = get("content_tag")?;
            attr.user_tag = get("user_tag")?;
            attr.assistant_tag = get("assistant_tag")?;
            attr.observation_tag = get("observation_tag")?;
            attr.function_tag = get("function_tag")?;
            attr.system_tag = get("system_tag")?;
        }
        Ok(attr)
    }
}

/// Read `dataset_dir/dataset_info.json` and look up `names` in it.
pub fn dataset_list(names: &[String], dataset_dir: &Path) -> Result<Vec<DatasetAttr>> {
    let info_path = dataset_dir.join("dataset_info.json");
    let text = std::fs::read_to_string(&info_path)
        .with_context(|| format!("cannot open {}", info_path.display()))?;
    let info: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", info_path.display()))?;
    let Some(obj) = info.as_object() else {
        bail!(
            "{}: expected a JSON object of datasets",
            info_path.display()
        );
    };
    names
        .iter()
        .map(|name| match obj.get(name) {
            Some(entry) => DatasetAttr::from_info(name, entry, &info_path),
            None => bail!("undefined dataset {name:?} in {}", info_path.display()),
        })
        .collect()
}

/// The file types LLaMA-Factory reads locally (`FILEEXT2TYPE`), those we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Json,
    Csv,
    Text,
}

fn file_kind(path: &Path) -> Result<FileKind> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") | Some("jsonl") => Ok(FileKind::Json),
        Some("csv") => Ok(FileKind::Csv),
        Some("txt") => Ok(FileKind::Text),
        Some(ext @ ("parquet" | "arrow")) => {
            bail!(
                "{}: {ext} files are not supported; convert the dataset to json, jsonl or csv",
                path.display()
            )
        }
        _ => bail!(
            "{}: allowed file types: json, jsonl, csv, txt",
            path.display()
        ),
    }
}

/// The records of `attr`'s file (or of every file in its folder, sorted by name), as JSON objects.
/// json: an array of objects or JSON lines; csv: a header row then string fields; txt: one `{"text": line}`
/// per line (as `datasets`' text loader, empty lines included).
pub fn read_records(attr: &DatasetAttr, dataset_dir: &Path) -> Result<Vec<Map<String, Value>>> {
    let path = dataset_dir.join(&attr.file_name);
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
            .with_context(|| format!("dataset {:?}: cannot list {}", attr.name, path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            bail!(
                "dataset {:?}: folder {} has no files",
                attr.name,
                path.display()
            );
        }
        files
    } else if path.is_file() {
        vec![path]
    } else {
        bail!("dataset {:?}: file {} not found", attr.name, path.display());
    };
    let kind = file_kind(&files[0]).with_context(|| format!("dataset {:?}", attr.name))?;
    let mut records = Vec::new();
    for file in &files {
        if file_kind(file).with_context(|| format!("dataset {:?}", attr.name))? != kind {
            bail!(
                "dataset {:?}: file types should be identical in {}",
                attr.name,
                dataset_dir.join(&attr.file_name).display()
            );
        }
        let ctx = || format!("dataset {:?}: {}", attr.name, file.display());
        let text =
            std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", ctx()))?;
        match kind {
            FileKind::Json => records.extend(parse_json_records(&text).with_context(ctx)?),
            FileKind::Csv => records.extend(parse_csv_records(&text).with_context(ctx)?),
            FileKind::Text => {
                let body = text.strip_suffix('\n').unwrap_or(&text);
                if !text.is_empty() {
                    for line in body.split('\n') {
                        let line = line.strip_suffix('\r').unwrap_or(line);
                        let mut m = Map::new();
                        m.insert("text".into(), Value::from(line));
                        records.push(m);
                    }
                }
            }
        }
    }
    Ok(records)
}

/// A JSON array of objects, an object of column arrays, a single object, or JSON lines.
pub fn parse_json_records(text: &str) -> Result<Vec<Map<String, Value>>> {
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let whole = serde_json::from_str::<Value>(trimmed);
    let values: Vec<Value> = match whole {
        Ok(Value::Array(items)) => items,
        Ok(Value::Object(o)) if !o.is_empty() && o.values().all(Value::is_array) => {
            // {"col": [..], "col2": [..]}: columnar, as pandas/`datasets` read it.
            let n = o
                .values()
                .next()
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if o.values().any(|v| v.as_array().map_or(0, Vec::len) != n) {
                bail!("columnar JSON: every column must have the same length");
            }
            (0..n)
                .map(|i| Value::Object(o.iter().map(|(k, v)| (k.clone(), v[i].clone())).collect()))
                .collect()
        }
        Ok(v @ Value::Object(_)) => vec![v],
        Ok(v) => bail!(
            "expected an array of objects or JSON lines, got {}",
            kind_of(&v)
        ),
        Err(whole_err) => {
            let mut items = Vec::new();
            for (i, line) in trimmed.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(line) {
                    Ok(v) => items.push(v),
                    Err(e) => bail!(
                        "not valid JSON ({whole_err}) nor JSON lines (line {}: {e})",
                        i + 1
                    ),
                }
            }
            items
        }
    };
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(m) => Ok(m),
            other => bail!("record {i} must be an object, got {}", kind_of(&other)),
        })
        .collect()
}

fn parse_csv_records(text: &str) -> Result<Vec<Map<String, Value>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .context("cannot read the csv header")?
        .iter()
        .map(str::to_string)
        .collect();
    let mut out = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("csv row {}", i + 2))?;
        // pandas reads empty csv fields as missing values; `datasets` gives None for them.
        out.push(
            headers
                .iter()
                .zip(row.iter())
                .map(|(h, v)| {
                    (
                        h.clone(),
                        if v.is_empty() {
                            Value::Null
                        } else {
                            Value::from(v)
                        },
                    )
                })
                .collect(),
        );
    }
    Ok(out)
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
