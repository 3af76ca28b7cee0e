//! `ferrotune webui`: LLaMA Board, LLaMA-Factory's low-code page, served from this binary.
//!
//! The page is plain HTML / JS / CSS under `webui/` (no build step), embedded with `include_str!` so the binary
//! serves it offline; every label and help text lives in one table (`webui/i18n.js`, en / zh / ru / ko / ja).
//! The server is the crate's own small HTTP/1.1 server (`src/http.rs`, std::net + httparse). The working
//! directory plays LLaMA-Factory's role: `data/` (datasets), `saves/` (runs), `llamaboard_config/` (saved forms).
//!
//! JSON API (POST bodies are JSON and must say `content-type: application/json`, which a cross-site page cannot
//! send without a CORS preflight this server never grants):
//!
//! | route | does |
//! |---|---|
//! | `GET /api/info` | version, working directory, template names, support of the keys the form offers |
//! | `POST /api/datasets` `{dataset_dir}` | datasets in `dataset_info.json` |
//! | `POST /api/dataset_preview` `{dataset_dir, dataset, offset, limit}` | a page of records |
//! | `POST /api/checkpoints` `{model_name, finetuning_type}` | adapters / checkpoints under `saves/` |
//! | `POST /api/preview` `{model_name, args}` | the YAML, the command, ferrotune-args' verdict, the output-dir policy |
//! | `POST /api/start` `{model_name, args, form}` | writes `training_args.yaml`, runs `ferrotune train` |
//! | `POST /api/eval/preview`, `POST /api/eval/start` | the same for the Evaluate & Predict tab (`do_predict` / `do_eval`) |
//! | `POST /api/abort` | stops the run at a step boundary (training saves a checkpoint there) |
//! | `GET /api/status` | which tab's run, progress, loss points (raw + smoothed), log tail, `all_results.json` once finished |
//! | `POST /api/save_args` `{config_path, form}` / `POST /api/load_args` `{config_path}` | saved forms |
//! | `POST /api/output_dir` `{model_name, finetuning_type, output_dir}` | whether Start would resume or refuse it, and the form saved there |
//! | `POST /api/chat/load` `{args}` / `POST /api/chat/unload` | the Chat tab's model, in this process |
//! | `POST /api/chat` `{messages, system, temperature, top_p, max_new_tokens}` | one answer, streamed (SSE) |
//! | `POST /api/export` `{args}` | merges the adapters and writes the model with `ferrotune export` (waits for it) |

mod chat;
mod export;
mod form;
mod runner;

use crate::http::{self, Conn, Handler, Limits, Request, Response};
use form::{OutputDir, RunForm, RunKind};
use serde_json::{json, Value as Json};
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const INDEX_HTML: &str = include_str!("../../webui/index.html");
const APP_JS: &str = include_str!("../../webui/app.js");
const I18N_JS: &str = include_str!("../../webui/i18n.js");
const STYLE_CSS: &str = include_str!("../../webui/style.css");

/// The argument keys the form offers; `/api/info` reports ferrotune's support of each so the page can disable
/// what ferrotune does not implement and say why.
const FORM_KEYS: &[&str] = &[
    "quantization_bit",
    "quantization_method",
    "rope_scaling",
    "flash_attn",
    "use_unsloth",
    "enable_liger_kernel",
    "resize_vocab",
    "use_llama_pro",
    "report_to",
    "use_dora",
    "pissa_init",
    "pref_beta",
    "pref_ftx",
    "pref_loss",
    "reward_model",
    "ppo_score_norm",
    "ppo_whiten_rewards",
    "use_galore",
    "use_apollo",
    "use_badam",
    "deepspeed",
    "neat_packing",
    "packing",
    "optim",
    "enable_thinking",
    "export_quantization_bit",
    "export_quantization_dataset",
    "export_device",
    "export_legacy_format",
    "export_hub_model_id",
];

struct WebUi {
    workdir: PathBuf,
    runner: Mutex<runner::Runner>,
    chat: chat::ChatTab,
    export: export::ExportTab,
}

pub fn run(host: &str, port: u16) -> Result<(), String> {
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        eprintln!(
            "warning: binding {host}: anyone who can reach this address can start training runs and read files under the \
             working directory; the WebUI has no login. Prefer the default 127.0.0.1 (and an SSH tunnel) on shared machines."
        );
    }
    let listener = TcpListener::bind((host, port)).map_err(|e| format!("cannot listen on {host}:{port}: {e} (choose another --port)"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let workdir = std::env::current_dir().map_err(|e| format!("cannot read the working directory: {e}"))?;
    println!("LLaMA Board (ferrotune webui) on http://{addr}/  working directory {}", workdir.display());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let app = Arc::new(WebUi { workdir, runner: Mutex::new(runner::Runner::default()), chat: chat::ChatTab::default(), export: export::ExportTab::default() });
    http::serve(listener, Limits::default(), app).map_err(|e| format!("server stopped: {e}"))
}

fn error(status: u16, message: impl Into<String>) -> Response {
    Response::json(status, &json!({ "error": { "message": message.into() } }))
}

fn asset(content_type: &'static str, body: &str) -> Response {
    Response { status: 200, content_type, headers: vec![("cache-control", "no-cache".into())], body: body.as_bytes().to_vec() }
}

fn is_json(r: &Request) -> bool {
    r.header("content-type").is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

fn str_field<'a>(body: &'a Json, key: &str) -> &'a str {
    body.get(key).and_then(Json::as_str).unwrap_or("")
}

impl Handler for WebUi {
    fn handle(&self, request: Request, conn: &mut Conn) {
        // The one streamed answer: everything else is a whole JSON response.
        if request.method == "POST" && request.path == "/api/chat" && is_json(&request) {
            match serde_json::from_slice::<Json>(&request.body) {
                Ok(body) => self.chat.answer(&body, conn),
                Err(e) => {
                    let _ = conn.send(&error(400, format!("the body is not valid JSON: {e}")));
                }
            }
            return;
        }
        let response = self.route(&request);
        let _ = conn.send(&response);
    }

    fn error_response(&self, status: u16, message: &str) -> Response {
        error(status, message)
    }
}

impl WebUi {
    fn route(&self, r: &Request) -> Response {
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/") | ("GET", "/index.html") => asset("text/html; charset=utf-8", INDEX_HTML),
            ("GET", "/assets/app.js") => asset("text/javascript; charset=utf-8", APP_JS),
            ("GET", "/assets/i18n.js") => asset("text/javascript; charset=utf-8", I18N_JS),
            ("GET", "/assets/style.css") => asset("text/css; charset=utf-8", STYLE_CSS),
            ("GET", "/api/info") => Response::json(200, &self.info()),
            ("GET", "/api/status") => Response::json(200, &self.lock_runner().status()),
            ("POST", path) if path.starts_with("/api/") => {
                if !is_json(r) {
                    return error(415, "send the body as JSON with `content-type: application/json`");
                }
                let body: Json = match serde_json::from_slice(&r.body) {
                    Ok(b) => b,
                    Err(e) => return error(400, format!("the body is not valid JSON: {e}")),
                };
                let result = match path {
                    "/api/datasets" => form::datasets(&self.path(str_field(&body, "dataset_dir"))),
                    "/api/dataset_preview" => form::preview_dataset(
                        &self.path(str_field(&body, "dataset_dir")),
                        str_field(&body, "dataset"),
                        body.get("offset").and_then(Json::as_u64).unwrap_or(0) as usize,
                        body.get("limit").and_then(Json::as_u64).unwrap_or(2) as usize,
                    ),
                    "/api/checkpoints" => {
                        Ok(form::checkpoints(&self.workdir, str_field(&body, "model_name"), str_field(&body, "finetuning_type")))
                    }
                    "/api/preview" => self.preview(&body, RunKind::Train),
                    "/api/start" => self.start(&body, RunKind::Train),
                    "/api/eval/preview" => self.preview(&body, RunKind::Eval),
                    "/api/eval/start" => self.start(&body, RunKind::Eval),
                    "/api/abort" => self.lock_runner().abort().map(|m| json!({ "message": m })),
                    "/api/save_args" => self.save_args(&body),
                    "/api/load_args" => self.load_args(&body),
                    "/api/output_dir" => self.output_dir_info(&body),
                    "/api/chat/load" => self.chat.load(&body),
                    "/api/chat/unload" => self.chat.unload(),
                    "/api/export" => self.export.export(&self.workdir, &body),
                    _ => return error(404, format!("no route POST {path}")),
                };
                match result {
                    Ok(v) => Response::json(200, &v),
                    Err(message) => error(400, message),
                }
            }
            (_, "/" | "/index.html" | "/api/info" | "/api/status") => error(405, format!("{} {} is not allowed", r.method, r.path)),
            (m, p) => error(404, format!("no route {m} {p}")),
        }
    }

    fn lock_runner(&self) -> std::sync::MutexGuard<'_, runner::Runner> {
        // A panic while holding the lock leaves the runner's state as it was between calls: still usable.
        self.runner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A path from the page, relative to the working directory unless absolute.
    fn path(&self, p: &str) -> PathBuf {
        let p = if p.trim().is_empty() { "data" } else { p.trim() };
        self.workdir.join(p)
    }

    fn info(&self) -> Json {
        let support: serde_json::Map<String, Json> = FORM_KEYS
            .iter()
            .map(|k| {
                let v = match ferrotune_args::support(k) {
                    Some(ferrotune_args::Support::Supported) | None => json!({ "status": "supported" }),
                    Some(ferrotune_args::Support::NoOp(why)) => json!({ "status": "noop", "reason": why }),
                    Some(ferrotune_args::Support::NotYet(why)) => json!({ "status": "not_yet", "reason": why }),
                    Some(ferrotune_args::Support::Values(allowed, why)) => json!({ "status": "values", "allowed": allowed, "reason": why }),
                };
                (k.to_string(), v)
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "workdir": self.workdir.display().to_string(),
            "templates": ferrotune_data::TEMPLATE_NAMES,
            "support": support,
        })
    }

    /// The YAML, the command, and whether ferrotune-args accepts it, as Preview command shows them.
    fn preview(&self, body: &Json, kind: RunKind) -> Result<Json, String> {
        let f = RunForm::from_json(body)?;
        let args = kind.args(&f)?;
        let out_dir = args.iter().find(|(k, _)| k == "output_dir").and_then(|(_, v)| v.as_str()).unwrap_or("").to_string();
        let yaml_path = format!("{out_dir}/training_args.yaml");
        let yaml = form::to_yaml(&args, &format!("written by ferrotune webui; run with: ferrotune train {yaml_path}"));
        let (ok, notes, err) = match form::check_args(&args, &self.workdir.join("llamaboard_cache")) {
            Ok(notes) => (true, notes, None),
            Err(e) => (false, Vec::new(), Some(e)),
        };
        let output = match form::output_dir_state(&self.workdir.join(&out_dir), kind == RunKind::Train) {
            OutputDir::New => json!({ "action": "new" }),
            OutputDir::Resume(ck) => json!({ "action": "resume", "checkpoint": ck.display().to_string() }),
            OutputDir::Refuse(why) => json!({ "action": "refuse", "message": why }),
        };
        Ok(json!({
            "ok": ok,
            "error": err,
            "notes": notes,
            "yaml": yaml,
            "command": format!("ferrotune train {yaml_path}"),
            "output_dir": out_dir,
            "output": output,
        }))
    }

    fn start(&self, body: &Json, kind: RunKind) -> Result<Json, String> {
        let f = RunForm::from_json(body)?;
        let args = kind.args(&f)?;
        form::check_args(&args, &self.workdir.join("llamaboard_cache"))?;
        let out_rel = args.iter().find(|(k, _)| k == "output_dir").and_then(|(_, v)| v.as_str()).unwrap_or("").to_string();
        let out_dir = self.workdir.join(&out_rel);
        let mut runner = self.lock_runner();
        if runner.is_running() {
            return Err("a run is already in progress; abort it or wait for it to finish".into());
        }
        let message = match form::output_dir_state(&out_dir, kind == RunKind::Train) {
            OutputDir::Refuse(why) => return Err(why),
            OutputDir::Resume(ck) => format!("{out_rel} holds an unfinished run: resuming from {}", ck.file_name().unwrap_or_default().to_string_lossy()),
            OutputDir::New => format!("started a new {} run in {out_rel}", kind.as_str()),
        };
        std::fs::create_dir_all(&out_dir).map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
        let yaml_path = out_dir.join("training_args.yaml");
        let yaml = form::to_yaml(&args, &format!("written by ferrotune webui; run with: ferrotune train {out_rel}/training_args.yaml"));
        std::fs::write(&yaml_path, yaml).map_err(|e| format!("cannot write {}: {e}", yaml_path.display()))?;
        if let Some(state) = body.get("form").and_then(Json::as_object) {
            let pairs: Vec<(String, Json)> = state.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let path = out_dir.join("llamaboard_config.yaml");
            std::fs::write(&path, form::to_yaml(&pairs, "the LLaMA Board form that started this run"))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        let pid = runner.start(&yaml_path, &out_dir, kind)?;
        Ok(json!({ "message": message, "pid": pid, "output_dir": out_rel }))
    }

    fn save_args(&self, body: &Json) -> Result<Json, String> {
        let path = form::config_file(&self.workdir, str_field(body, "config_path"))?;
        let Some(state) = body.get("form").and_then(Json::as_object) else { return Err("the body needs `form`: the form's values".into()) };
        let pairs: Vec<(String, Json)> = state.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        std::fs::write(&path, form::to_yaml(&pairs, "a LLaMA Board form saved by ferrotune webui")).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(json!({ "path": rel(&self.workdir, &path) }))
    }

    /// What Start would do with the Train tab's output dir, and the form that started the run there
    /// (`llamaboard_config.yaml`), so picking an existing run's dir shows its settings before it is resumed
    /// (LLaMA-Factory's `check_output_dir`).
    fn output_dir_info(&self, body: &Json) -> Result<Json, String> {
        let name = str_field(body, "output_dir").trim();
        if name.is_empty() {
            return Ok(json!({ "exists": false }));
        }
        let rel_dir = form::save_dir(str_field(body, "model_name"), str_field(body, "finetuning_type"), name);
        let dir = self.path(&rel_dir);
        if !dir.is_dir() {
            return Ok(json!({ "exists": false, "output_dir": rel_dir }));
        }
        let message = match form::output_dir_state(&dir, true) {
            OutputDir::Resume(ck) => format!(
                "{rel_dir} holds an unfinished run: Start resumes it from {}; its settings are loaded into the form",
                ck.file_name().unwrap_or_default().to_string_lossy()
            ),
            OutputDir::Refuse(why) => why,
            OutputDir::New => format!("{rel_dir} exists but holds no training output yet; Start uses it"),
        };
        let config = dir.join("llamaboard_config.yaml");
        let form = if config.is_file() { Some(Json::Object(form::from_yaml(&config)?.into_iter().collect())) } else { None };
        Ok(json!({ "exists": true, "output_dir": rel_dir, "message": message, "form": form }))
    }

    fn load_args(&self, body: &Json) -> Result<Json, String> {
        let path = form::config_file(&self.workdir, str_field(body, "config_path"))?;
        let pairs = form::from_yaml(&path)?;
        Ok(json!({ "path": rel(&self.workdir, &path), "form": Json::Object(pairs.into_iter().collect()) }))
    }
}

/// `{args: [[key, value], ...]}` (LLaMA-Factory inference / export arguments) as `--key=value` flags, as
/// llamafactory-cli takes them without a config file. An empty value keeps the argument's default.
fn infer_flags(body: &Json) -> Result<Vec<String>, String> {
    let Some(pairs) = body.get("args").and_then(Json::as_array) else { return Err("the body needs `args`: [[key, value], ...]".into()) };
    let mut flags = Vec::new();
    for p in pairs {
        let Some([Json::String(k), v]) = p.as_array().map(Vec::as_slice) else {
            return Err(format!("`args` entries must be [key, value] pairs, found {p}"));
        };
        let text = match v {
            Json::String(s) => s.trim().to_string(),
            other => other.to_string(),
        };
        if !text.is_empty() {
            flags.push(format!("--{k}={text}"));
        }
    }
    Ok(flags)
}

fn rel(base: &Path, p: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}
