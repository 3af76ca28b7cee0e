//! What the page's forms become: LLaMA-Factory YAML arguments (`training_args.yaml`) for the Train and the
//! Evaluate & Predict tabs, the command that runs them, their validation by ferrotune-args, the output-dir
//! policy, and the saved-form files
//! (`llamaboard_config/*.yaml`). Also the data the form's pickers list: datasets from `dataset_info.json`, a
//! dataset's records, and the checkpoints under `saves/`.

use serde_json::{json, Map, Value as Json};
use std::path::{Path, PathBuf};

/// One run as the page sends it: the top bar's model name (for `saves/<model_name>/...`) and the LLaMA-Factory
/// arguments in form order (`[[key, value], ...]`; JSON numbers, booleans, strings, lists of strings).
#[derive(Debug, Clone, PartialEq)]
pub struct RunForm {
    pub model_name: String,
    pub args: Vec<(String, Json)>,
}

impl RunForm {
    pub fn from_json(body: &Json) -> Result<RunForm, String> {
        let model_name = body.get("model_name").and_then(Json::as_str).unwrap_or("").trim().to_string();
        let Some(pairs) = body.get("args").and_then(Json::as_array) else {
            return Err("the body needs `args`: a list of [key, value] pairs".into());
        };
        let mut args = Vec::new();
        for pair in pairs {
            match pair.as_array().map(Vec::as_slice) {
                Some([Json::String(k), v]) => args.push((k.clone(), v.clone())),
                _ => return Err(format!("`args` entries must be [key, value] pairs, found {pair}")),
            }
        }
        Ok(RunForm { model_name, args })
    }

    fn get(&self, key: &str) -> Option<&Json> {
        self.args.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string value, trimmed; `None` when missing or blank.
    fn text(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Json::as_str).map(str::trim).filter(|s| !s.is_empty())
    }
}

/// Which tab a run comes from: both run `ferrotune train <output_dir>/training_args.yaml`, with arguments built
/// as LLaMA-Factory's runner builds them (`_parse_train_args` / `_parse_eval_args`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunKind {
    Train,
    Eval,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Train => "train",
            RunKind::Eval => "eval",
        }
    }

    /// The YAML arguments for this kind of run.
    pub fn args(self, form: &RunForm) -> Result<Vec<(String, Json)>, String> {
        match self {
            RunKind::Train => training_args(form),
            RunKind::Eval => eval_args(form),
        }
    }
}

/// `saves/<model_name>/<finetuning_type>/<name>` for a bare name (LLaMA-Factory's `get_save_dir`); a path with
/// a separator, or an absolute one, is used as given.
pub fn save_dir(model_name: &str, finetuning_type: &str, output_dir: &str) -> String {
    if output_dir.contains('/') || output_dir.contains('\\') || Path::new(output_dir).is_absolute() {
        return output_dir.to_string();
    }
    let model = if model_name.is_empty() { "custom" } else { model_name };
    format!("saves/{model}/{finetuning_type}/{output_dir}")
}

/// The arguments `Start` writes: the form's non-empty values plus what the WebUI always sets, as LLaMA-Factory's
/// runner does (`do_train`, `plot_loss`, `include_num_input_tokens_seen`; with a validation split, evaluation
/// every `save_steps` with the training batch size), and `output_dir` resolved under `saves/`.
pub fn training_args(form: &RunForm) -> Result<Vec<(String, Json)>, String> {
    let (mut out, output_dir) = form_values(form, "dataset")?;
    let finetuning_type = form.text("finetuning_type").unwrap_or("lora");
    let mut set = |key: &str, value: Json| set_arg(&mut out, key, value);
    set("do_train", json!(true));
    set("plot_loss", json!(true));
    set("include_num_input_tokens_seen", json!(true));
    set("output_dir", json!(save_dir(&form.model_name, finetuning_type, &output_dir)));
    let val_size = form.get("val_size").and_then(Json::as_f64).unwrap_or(0.0);
    if val_size > 0.0 {
        set("eval_strategy", json!("steps"));
        set("eval_steps", form.get("save_steps").cloned().unwrap_or(json!(100)));
        set("per_device_eval_batch_size", form.get("per_device_train_batch_size").cloned().unwrap_or(json!(2)));
    }
    Ok(out)
}

/// The arguments the Evaluate & Predict tab's Start writes, as LLaMA-Factory's `_parse_eval_args` builds them:
/// the form's values (`eval_dataset`, `cutoff_len`, `max_samples`, `per_device_eval_batch_size`, the generation
/// settings) plus `stage: sft`, `predict_with_generate: true`, `report_to: none`, `output_dir` resolved under
/// `saves/`, and the form's `predict` (Save predictions) as `do_predict: true`, or `do_eval: true` without it
/// (the same BLEU / ROUGE scores as `eval_*`, and no generated_predictions.jsonl).
pub fn eval_args(form: &RunForm) -> Result<Vec<(String, Json)>, String> {
    let (mut out, output_dir) = form_values(form, "eval_dataset")?;
    let predict = match out.iter().position(|(k, _)| k == "predict") {
        Some(i) => match out.remove(i).1 {
            Json::Bool(b) => b,
            other => return Err(format!("`predict` (Save predictions) must be true or false, found {other}")),
        },
        None => true,
    };
    let finetuning_type = form.text("finetuning_type").unwrap_or("lora");
    let mut set = |key: &str, value: Json| set_arg(&mut out, key, value);
    set("stage", json!("sft"));
    set("predict_with_generate", json!(true));
    set("report_to", json!("none"));
    set("output_dir", json!(save_dir(&form.model_name, finetuning_type, &output_dir)));
    set(if predict { "do_predict" } else { "do_eval" }, json!(true));
    Ok(out)
}

/// The form's non-empty values in form order (a repeated key keeps its last value), after checking that the model,
/// the datasets (`dataset_key`) and the output dir are filled; also returns the output dir as typed.
fn form_values(form: &RunForm, dataset_key: &str) -> Result<(Vec<(String, Json)>, String), String> {
    let mut out: Vec<(String, Json)> = Vec::new();
    for (k, v) in &form.args {
        let empty = match v {
            Json::Null => true,
            Json::String(s) => s.trim().is_empty(),
            Json::Array(a) => a.is_empty(),
            _ => false,
        };
        if !empty {
            set_arg(&mut out, k, v.clone());
        }
    }
    if form.text("model_name_or_path").is_none() {
        return Err("choose a model: fill the model path (a local folder, a .gguf file or a hub id)".into());
    }
    if form.text(dataset_key).is_none() {
        return Err("choose at least one dataset".into());
    }
    let Some(output_dir) = form.text("output_dir") else { return Err("fill the output dir".into()) };
    Ok((out, output_dir.to_string()))
}

/// Sets `key` in place when present (keeping its position), else appends it.
fn set_arg(out: &mut Vec<(String, Json)>, key: &str, value: Json) {
    match out.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => out.push((key.to_string(), value)),
    }
}

/// A YAML scalar for `v`: strings stay plain when YAML 1.1 (OmegaConf) reads them back as the same string,
/// otherwise they are double-quoted (JSON string syntax is valid YAML).
fn yaml_scalar(v: &Json) -> String {
    match v {
        Json::String(s) => {
            let safe = !s.is_empty()
                && !s.starts_with(['-', '.', '~'])
                && s.chars().all(|c| c.is_alphanumeric() || "_./,+-@".contains(c))
                && ferrotune_args::value::resolve_plain(s) == ferrotune_args::Value::Str(s.clone());
            if safe {
                s.clone()
            } else {
                Json::String(s.clone()).to_string()
            }
        }
        Json::Array(items) => format!("[{}]", items.iter().map(yaml_scalar).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

/// `key: value` lines (LLaMA-Factory's flat YAML), with a comment saying what wrote them.
pub fn to_yaml(pairs: &[(String, Json)], header: &str) -> String {
    let mut s = format!("# {header}\n");
    for (k, v) in pairs {
        s.push_str(&format!("{k}: {}\n", yaml_scalar(v)));
    }
    s
}

/// Reads a flat YAML file written by [`to_yaml`] (or by hand) back as JSON pairs in file order.
pub fn from_yaml(path: &Path) -> Result<Vec<(String, Json)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let pairs = ferrotune_args::value::parse_config_text(&path.display().to_string(), &text, false).map_err(|e| e.to_string())?;
    pairs
        .into_iter()
        .map(|(k, v)| {
            let text = ferrotune_args::logging::py_json(&v, None, false);
            serde_json::from_str(&text).map(|j| (k.clone(), j)).map_err(|e| format!("{}: `{k}`: {e}", path.display()))
        })
        .collect()
}

/// Runs the arguments through ferrotune-args (every check `ferrotune train` makes before loading anything):
/// the notes (keys with no effect) or the error, word for word as `ferrotune train` would print it.
pub fn check_args(pairs: &[(String, Json)], scratch_dir: &Path) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(scratch_dir).map_err(|e| format!("cannot create {}: {e}", scratch_dir.display()))?;
    let path = scratch_dir.join(format!("preview-{}-{:?}.yaml", std::process::id(), std::thread::current().id()).replace(['(', ')'], ""));
    std::fs::write(&path, to_yaml(pairs, "preview")).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let parsed = ferrotune_args::parse_train_args(&[path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    let a = parsed.map_err(|e| e.to_string())?;
    let mut notes = a.notes.clone();
    notes.extend(a.ignored.iter().map(|k| format!("ignoring unknown key `{k}` (ALLOW_EXTRA_ARGS)")));
    Ok(notes)
}

/// What `Start` does with an output dir.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputDir {
    /// Missing or empty: a new run.
    New,
    /// Holds checkpoints of an unfinished training run: `ferrotune train` resumes from the last one.
    Resume(PathBuf),
    /// Holds something that a new run would overwrite: refused, with why.
    Refuse(String),
}

/// What Start writes into an output dir before `ferrotune train` writes anything.
const WEBUI_FILES: &[&str] = &["training_args.yaml", "llamaboard_config.yaml", super::runner::SUBPROCESS_LOG];

/// What Start does with `dir`. `resumable`: a training run, which continues from the last checkpoint there; an
/// evaluation always starts afresh, so it only takes a new dir.
pub fn output_dir_state(dir: &Path, resumable: bool) -> OutputDir {
    let Ok(entries) = std::fs::read_dir(dir) else { return OutputDir::New };
    let names: Vec<String> = entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    // Only the files Start itself writes (a run that failed or was stopped before training began): reused.
    if names.iter().all(|n| WEBUI_FILES.contains(&n.as_str())) {
        return OutputDir::New;
    }
    let finished = ["train_results.json", "all_results.json"].into_iter().find(|marker| names.iter().any(|n| n == marker));
    if let Some(marker) = finished {
        return OutputDir::Refuse(format!(
            "{} already holds a finished run ({marker}); choose a new output dir (nothing was overwritten)",
            dir.display()
        ));
    }
    if !resumable {
        return OutputDir::Refuse(format!(
            "{} already exists ({}); an evaluation starts afresh, so choose a new output dir or delete it yourself \
             (nothing was overwritten)",
            dir.display(),
            names.join(", ")
        ));
    }
    match ferrotune_args::last_checkpoint(dir) {
        Some(ck) => OutputDir::Resume(ck),
        None => OutputDir::Refuse(format!(
            "{} already exists and holds no checkpoint to resume from ({}); choose a new output dir or delete it yourself \
             (nothing was overwritten)",
            dir.display(),
            names.join(", ")
        )),
    }
}

/// The datasets `dataset_info.json` in `dataset_dir` declares: name, formatting, whether pairwise (ranking).
pub fn datasets(dataset_dir: &Path) -> Result<Json, String> {
    let info_path = dataset_dir.join("dataset_info.json");
    let text = std::fs::read_to_string(&info_path).map_err(|e| format!("cannot read {}: {e}", info_path.display()))?;
    let info: Map<String, Json> = serde_json::from_str(&text).map_err(|e| format!("{}: invalid JSON: {e}", info_path.display()))?;
    let mut list = Vec::new();
    for (name, entry) in &info {
        let attr = ferrotune_data::DatasetAttr::from_info(name, entry, &info_path).map_err(|e| e.to_string())?;
        list.push(json!({ "name": name, "formatting": format!("{:?}", attr.formatting).to_lowercase(), "ranking": attr.ranking }));
    }
    Ok(json!({ "datasets": list }))
}

/// Records `offset .. offset + limit` of dataset `name` (LLaMA-Factory's Preview dataset pages through them).
pub fn preview_dataset(dataset_dir: &Path, name: &str, offset: usize, limit: usize) -> Result<Json, String> {
    let info_path = dataset_dir.join("dataset_info.json");
    let text = std::fs::read_to_string(&info_path).map_err(|e| format!("cannot read {}: {e}", info_path.display()))?;
    let info: Map<String, Json> = serde_json::from_str(&text).map_err(|e| format!("{}: invalid JSON: {e}", info_path.display()))?;
    let Some(entry) = info.get(name) else {
        return Err(format!("{} has no dataset `{name}`", info_path.display()));
    };
    let attr = ferrotune_data::DatasetAttr::from_info(name, entry, &info_path).map_err(|e| e.to_string())?;
    let records = ferrotune_data::info::read_records(&attr, dataset_dir).map_err(|e| e.to_string())?;
    let rows: Vec<Json> = records.iter().skip(offset).take(limit.min(50)).map(|r| Json::Object(r.clone())).collect();
    Ok(json!({ "total": records.len(), "offset": offset, "rows": rows }))
}

/// The folders under `saves/<model_name>/<finetuning_type>/` that hold weights (an adapter, a model, or
/// `checkpoint-N` folders), newest name last, as the checkpoint picker lists them.
pub fn checkpoints(workdir: &Path, model_name: &str, finetuning_type: &str) -> Json {
    let model = if model_name.is_empty() { "custom" } else { model_name };
    let root = workdir.join("saves").join(model).join(finetuning_type);
    let has_weights = |p: &Path| ferrotune_args::CHECKPOINT_NAMES.iter().any(|n| p.join(n).is_file());
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()) {
            let run = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if has_weights(&run) {
                found.push(name.clone());
            }
            if let Ok(sub) = std::fs::read_dir(&run) {
                for c in sub.filter_map(|c| c.ok()).filter(|c| c.path().is_dir() && has_weights(&c.path())) {
                    found.push(format!("{name}/{}", c.file_name().to_string_lossy()));
                }
            }
        }
    }
    found.sort();
    json!({ "root": format!("saves/{model}/{finetuning_type}"), "checkpoints": found })
}

/// A saved-form name: a bare file name (no folders), `.yaml` added when missing.
pub fn config_file(workdir: &Path, name: &str) -> Result<PathBuf, String> {
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(format!("config name {name:?} must be a plain file name such as my_run.yaml (saved under llamaboard_config/)"));
    }
    let file = if name.ends_with(".yaml") || name.ends_with(".yml") { name.to_string() } else { format!("{name}.yaml") };
    Ok(workdir.join("llamaboard_config").join(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(args: &[(&str, Json)]) -> RunForm {
        RunForm { model_name: "Tiny".into(), args: args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }
    }

    #[test]
    fn the_webui_adds_what_llamafactory_forces_and_resolves_the_output_dir() {
        let f = form(&[
            ("model_name_or_path", json!("m")),
            ("finetuning_type", json!("lora")),
            ("dataset", json!("identity")),
            ("template", json!("")),
            ("save_steps", json!(7)),
            ("per_device_train_batch_size", json!(3)),
            ("val_size", json!(0.1)),
            ("output_dir", json!("train_1")),
        ]);
        let a = training_args(&f).unwrap();
        let get = |k: &str| a.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        assert_eq!(get("template"), None, "empty values are left to the defaults");
        assert_eq!(get("output_dir"), Some(json!("saves/Tiny/lora/train_1")));
        assert_eq!(get("eval_steps"), Some(json!(7)));
        assert_eq!(get("per_device_eval_batch_size"), Some(json!(3)));
        assert_eq!(get("do_train"), Some(json!(true)));
        let missing = training_args(&form(&[("model_name_or_path", json!("m"))])).unwrap_err();
        assert!(missing.contains("dataset"), "{missing}");
    }

    /// LLaMA-Factory's `_parse_eval_args` for the same form: the top bar's model, adapter and template, the tab's
    /// values, and stage sft / predict_with_generate / report_to none / the output dir under saves/ forced;
    /// Save predictions picks do_predict, without it do_eval.
    #[test]
    fn eval_args_are_upstreams_parse_eval_args() {
        let tab = |predict: bool| {
            form(&[
                ("model_name_or_path", json!("m")),
                ("adapter_name_or_path", json!("saves/Tiny/lora/train_1")),
                ("template", json!("default")),
                ("finetuning_type", json!("lora")),
                ("dataset_dir", json!("data")),
                ("eval_dataset", json!("identity,alpaca_en_demo")),
                ("cutoff_len", json!(1024)),
                ("max_samples", json!(100000)),
                ("per_device_eval_batch_size", json!(2)),
                ("predict", json!(predict)),
                ("max_new_tokens", json!(512)),
                ("top_p", json!(0.7)),
                ("temperature", json!(0.95)),
                ("output_dir", json!("eval_1")),
            ])
        };
        let a = eval_args(&tab(true)).unwrap();
        let expected = [
            ("model_name_or_path", json!("m")),
            ("adapter_name_or_path", json!("saves/Tiny/lora/train_1")),
            ("template", json!("default")),
            ("finetuning_type", json!("lora")),
            ("dataset_dir", json!("data")),
            ("eval_dataset", json!("identity,alpaca_en_demo")),
            ("cutoff_len", json!(1024)),
            ("max_samples", json!(100000)),
            ("per_device_eval_batch_size", json!(2)),
            ("max_new_tokens", json!(512)),
            ("top_p", json!(0.7)),
            ("temperature", json!(0.95)),
            ("output_dir", json!("saves/Tiny/lora/eval_1")),
            ("stage", json!("sft")),
            ("predict_with_generate", json!(true)),
            ("report_to", json!("none")),
            ("do_predict", json!(true)),
        ];
        assert_eq!(a, expected.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<Vec<_>>());
        let e = eval_args(&tab(false)).unwrap();
        assert!(e.contains(&("do_eval".to_string(), json!(true))) && !e.iter().any(|(k, _)| k == "do_predict" || k == "do_train"), "{e:?}");
        let missing = eval_args(&form(&[("model_name_or_path", json!("m")), ("output_dir", json!("e"))])).unwrap_err();
        assert!(missing.contains("dataset"), "{missing}");
        assert!(eval_args(&form(&[("model_name_or_path", json!("m")), ("eval_dataset", json!("identity"))])).unwrap_err().contains("output dir"));
    }

    #[test]
    fn yaml_quotes_exactly_what_omegaconf_would_misread() {
        let y = to_yaml(
            &[
                ("a".into(), json!("no")),
                ("b".into(), json!("5e-5")),
                ("c".into(), json!("saves/x/lora/train_1")),
                ("d".into(), json!(0.0005)),
                ("e".into(), json!("identity,alpaca")),
                ("f".into(), json!("q: x")),
                ("g".into(), json!(true)),
            ],
            "test",
        );
        assert!(y.contains("a: \"no\"\n") && y.contains("b: \"5e-5\"\n") && y.contains("c: saves/x/lora/train_1\n"), "{y}");
        assert!(y.contains("d: 0.0005\n") && y.contains("e: identity,alpaca\n") && y.contains("f: \"q: x\"\n") && y.contains("g: true\n"), "{y}");
        let dir = std::env::temp_dir().join(format!("ferrotune-webui-yaml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.yaml");
        std::fs::write(&p, &y).unwrap();
        let back = from_yaml(&p).unwrap();
        assert_eq!(back[0], ("a".to_string(), json!("no")));
        assert_eq!(back[1], ("b".to_string(), json!("5e-5")), "OmegaConf reads a plain 5e-5 as a float: the string is quoted");
        assert_eq!(back[5], ("f".to_string(), json!("q: x")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_dirs_are_new_resumed_or_refused_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("ferrotune-webui-outdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(output_dir_state(&dir, true), OutputDir::New);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(output_dir_state(&dir, true), OutputDir::New);
        std::fs::write(dir.join("training_args.yaml"), "").unwrap();
        assert_eq!(output_dir_state(&dir, true), OutputDir::New, "a run that failed before training wrote nothing to lose");
        assert_eq!(output_dir_state(&dir, false), OutputDir::New);
        std::fs::write(dir.join("trainer_log.jsonl"), "").unwrap();
        assert!(matches!(output_dir_state(&dir, true), OutputDir::Refuse(m) if m.contains("no checkpoint")));
        assert!(matches!(output_dir_state(&dir, false), OutputDir::Refuse(m) if m.contains("starts afresh")));
        std::fs::create_dir_all(dir.join("checkpoint-3")).unwrap();
        std::fs::create_dir_all(dir.join("checkpoint-12")).unwrap();
        assert_eq!(output_dir_state(&dir, true), OutputDir::Resume(dir.join("checkpoint-12")));
        assert!(matches!(output_dir_state(&dir, false), OutputDir::Refuse(_)), "an evaluation never resumes");
        std::fs::write(dir.join("train_results.json"), "{}").unwrap();
        assert!(matches!(output_dir_state(&dir, true), OutputDir::Refuse(m) if m.contains("finished run")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_names_stay_inside_llamaboard_config() {
        let w = Path::new("/w");
        assert_eq!(config_file(w, "run1").unwrap(), Path::new("/w/llamaboard_config/run1.yaml"));
        assert!(config_file(w, "../etc/passwd").is_err() && config_file(w, "").is_err());
    }
}
