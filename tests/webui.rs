//! `ferrotune webui`'s HTTP API as the page uses it, against the real binary: the page and assets, bad requests
//! answered with 4xx JSON, the preview running ferrotune-args' checks, and a tiny LoRA run started, watched
//! through /api/status and aborted at a step boundary with its checkpoint kept and resumable, and /api/export's
//! checks and a merged export, and the Evaluate & Predict tab's runs (upstream's arguments, predictions, scores,
//! abort). The browser side is
//! tests/browser/webui.test.mjs (chromium, run by .ci/run).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: String,
    workdir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

fn start_server(name: &str) -> Server {
    start_server_with(name, &[]).0
}

/// The server with extra arguments; also returns its standard error (read after it stops).
fn start_server_with(name: &str, extra: &[&str]) -> (Server, Option<std::process::ChildStderr>) {
    let workdir = std::env::temp_dir().join(format!("ferrotune-webui-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&workdir);
    std::fs::create_dir_all(&workdir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["webui", "--port", "0"])
        .args(extra)
        .current_dir(&workdir)
        .stdout(Stdio::piped())
        .stderr(if extra.is_empty() { Stdio::inherit() } else { Stdio::piped() })
        .spawn()
        .expect("run ferrotune webui");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_else(|| panic!("no address in {line:?}")).to_string();
    let stderr = child.stderr.take();
    (Server { child, addr, workdir }, stderr)
}

/// One request; (status, body).
fn request(s: &Server, method: &str, path: &str, content_type: Option<&str>, body: &str) -> (u16, String) {
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let ct = content_type.map(|t| format!("content-type: {t}\r\n")).unwrap_or_default();
    write!(c, "{method} {path} HTTP/1.1\r\nhost: {}\r\n{ct}content-length: {}\r\n\r\n{body}", s.addr, body.len()).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = request(s, "POST", path, Some("application/json"), &body.to_string());
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")))
}

fn get(s: &Server, path: &str) -> (u16, Value) {
    let (status, text) = request(s, "GET", path, None, "");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")))
}

fn repo(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p).display().to_string()
}

/// The page's arguments for a LoRA run of the tiny fixture on data/identity (16 examples, batch 2: 8 steps per epoch).
fn tiny_run(output_dir: &str, epochs: u32) -> Value {
    json!({
        "model_name": "tiny",
        "args": [
            ["model_name_or_path", repo("tests/fixtures/models/tiny_chat")],
            ["template", "default"],
            ["stage", "sft"],
            ["finetuning_type", "lora"],
            ["dataset_dir", repo("data")],
            ["dataset", "identity"],
            ["cutoff_len", 64],
            ["learning_rate", 0.001],
            ["num_train_epochs", epochs],
            ["max_samples", 16],
            ["per_device_train_batch_size", 2],
            ["gradient_accumulation_steps", 1],
            ["logging_steps", 1],
            ["save_steps", 1000],
            ["lora_rank", 4],
            ["lora_target", "all"],
            ["report_to", "none"],
            ["output_dir", output_dir]
        ]
    })
}

fn wait_done(s: &Server, limit: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        let (_, st) = get(s, "/api/status");
        if st["state"] == "done" {
            return st;
        }
        assert!(t0.elapsed() < limit, "run not done after {limit:?}: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn page_assets_and_bad_requests() {
    let s = start_server("basics");
    let (status, page) = request(&s, "GET", "/", None, "");
    assert_eq!(status, 200);
    assert!(page.contains("/assets/app.js") && page.contains("data-i18n=\"tab_train\""));
    for asset in ["/assets/app.js", "/assets/i18n.js", "/assets/style.css"] {
        assert_eq!(request(&s, "GET", asset, None, "").0, 200, "{asset}");
    }
    let (status, info) = get(&s, "/api/info");
    assert_eq!(status, 200);
    assert_eq!(info["support"]["quantization_bit"]["status"], "not_yet");
    assert!(info["templates"].as_array().unwrap().iter().any(|t| t == "smollm2"));

    // 4xx JSON: unknown route, a POST without a JSON content type (what a cross-site form would send), bad JSON.
    assert_eq!(get(&s, "/api/nothing").0, 404);
    let (status, body) = request(&s, "POST", "/api/preview", Some("text/plain"), "{}");
    assert_eq!(status, 415, "{body}");
    let (status, body) = request(&s, "POST", "/api/preview", Some("application/json"), "{not json");
    assert_eq!(status, 400);
    assert!(body.contains("\"error\""), "{body}");
    let (status, body) = post(&s, "/api/abort", &json!({}));
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("no run"), "{body}");

    // Datasets and a page of records.
    let (status, d) = post(&s, "/api/datasets", &json!({ "dataset_dir": repo("data") }));
    assert_eq!(status, 200);
    assert!(d["datasets"].as_array().unwrap().iter().any(|x| x["name"] == "identity"), "{d}");
    let (_, p) = post(&s, "/api/dataset_preview", &json!({ "dataset_dir": repo("data"), "dataset": "identity", "offset": 2, "limit": 2 }));
    assert_eq!(p["total"], 40);
    assert_eq!(p["rows"].as_array().unwrap().len(), 2);
    let (status, _) = post(&s, "/api/datasets", &json!({ "dataset_dir": "no/such/dir" }));
    assert_eq!(status, 400);

    // Preview: the YAML under saves/, and ferrotune-args' own verdict.
    let (status, p) = post(&s, "/api/preview", &tiny_run("run1", 1));
    assert_eq!(status, 200);
    assert_eq!(p["ok"], true, "{p}");
    assert_eq!(p["command"], "ferrotune train saves/tiny/lora/run1/training_args.yaml");
    assert!(p["yaml"].as_str().unwrap().contains("\nplot_loss: true\n"));
    let mut bad = tiny_run("run1", 1);
    bad["args"].as_array_mut().unwrap().push(json!(["quantization_bit", 4]));
    let (_, p) = post(&s, "/api/preview", &bad);
    assert_eq!(p["ok"], false);
    assert!(p["error"].as_str().unwrap().contains("quantization_bit"), "{p}");

    // Saved forms stay inside llamaboard_config/.
    let form = json!({ "learning_rate": "1e-4", "dataset": ["identity"], "packing": false });
    assert_eq!(post(&s, "/api/save_args", &json!({ "config_path": "a", "form": form })).0, 200);
    let (_, loaded) = post(&s, "/api/load_args", &json!({ "config_path": "a.yaml" }));
    assert_eq!(loaded["form"], form);
    assert_eq!(post(&s, "/api/save_args", &json!({ "config_path": "../x", "form": form })).0, 400);
}

#[test]
fn start_watch_abort_and_resume_a_tiny_lora_run() {
    let s = start_server("run");
    // 40 epochs of 8 steps: long enough to abort in the middle. `form` is what the page sends along (the
    // values it shows), kept as llamaboard_config.yaml in the output dir.
    let mut first = tiny_run("long", 40);
    first["form"] = json!({ "lora_target": "all", "output_dir": "long" });
    let (status, r) = post(&s, "/api/start", &first);
    assert_eq!(status, 200, "{r}");
    assert_eq!(post(&s, "/api/start", &tiny_run("other", 1)).0, 400, "one run at a time");
    let t0 = Instant::now();
    loop {
        let (_, st) = get(&s, "/api/status");
        let step = st["progress"]["current_steps"].as_u64().unwrap_or(0);
        if step >= 3 {
            assert!(st["progress"]["label"].as_str().unwrap().starts_with("Running "), "{st}");
            break;
        }
        assert!(st["state"] == "running", "the run ended early: {st}");
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, a) = post(&s, "/api/abort", &json!({}));
    assert_eq!(status, 200, "{a}");
    let st = wait_done(&s, Duration::from_secs(60));
    assert_eq!(st["outcome"], "aborted", "{st}");
    let out = s.workdir.join("saves/tiny/lora/long");
    let last = std::fs::read_dir(&out).unwrap().filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str()?.strip_prefix("checkpoint-")?.parse::<u64>().ok()).max();
    let stopped_at = last.expect("a checkpoint saved at the stop");
    assert!(st["log"].as_str().unwrap().contains(&format!("stopped at step {stopped_at} on request")), "{st}");
    assert!(st["loss"]["raw"].as_array().unwrap().len() as u64 >= stopped_at.min(3), "{st}");

    // Picking that output dir in the page: it says Start will resume there, and gives back the form that
    // started the run (LLaMA-Factory's check_output_dir); a dir that does not exist is a new run.
    let (status, info) = post(&s, "/api/output_dir", &json!({ "model_name": "tiny", "finetuning_type": "lora", "output_dir": "long" }));
    assert_eq!(status, 200, "{info}");
    assert!(info["message"].as_str().unwrap().contains(&format!("resumes it from checkpoint-{stopped_at}")), "{info}");
    assert_eq!(info["form"]["lora_target"], "all", "{info}");
    let (_, fresh) = post(&s, "/api/output_dir", &json!({ "model_name": "tiny", "finetuning_type": "lora", "output_dir": "brand_new" }));
    assert_eq!(fresh["exists"], false, "{fresh}");

    // The same output dir again: resumed from that checkpoint, not overwritten.
    let (_, p) = post(&s, "/api/preview", &tiny_run("long", 40));
    assert_eq!(p["output"]["action"], "resume", "{p}");
    let (status, r) = post(&s, "/api/start", &tiny_run("long", 40));
    assert_eq!(status, 200, "{r}");
    assert!(r["message"].as_str().unwrap().contains(&format!("resuming from checkpoint-{stopped_at}")), "{r}");
    let t0 = Instant::now();
    loop {
        let (_, st) = get(&s, "/api/status");
        if st["progress"]["current_steps"].as_u64().unwrap_or(0) > stopped_at {
            break;
        }
        assert!(st["state"] == "running" && t0.elapsed() < Duration::from_secs(60), "the resumed run made no progress: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(post(&s, "/api/abort", &json!({})).0, 200);
    let st = wait_done(&s, Duration::from_secs(60));
    let log = st["log"].as_str().unwrap();
    assert!(log.contains(&format!("resuming from saves/tiny/lora/long/checkpoint-{stopped_at}")), "{st}");
    assert!(log.contains(&format!("[{}/320 ", stopped_at + 1)), "the resumed run continues at the next step: {st}");
}

#[test]
fn chat_loads_streams_and_unloads() {
    let s = start_server("chat");
    let ask = json!({ "messages": [{ "role": "user", "content": "hi" }], "max_new_tokens": 8, "temperature": 0 });
    let (status, body) = post(&s, "/api/chat", &ask);
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("load a model first"), "{body}");
    let load = json!({ "args": [["model_name_or_path", repo("tests/fixtures/models/tiny_chat")], ["template", "default"], ["finetuning_type", "lora"], ["adapter_name_or_path", ""]] });
    let (status, r) = post(&s, "/api/chat/load", &load);
    assert_eq!(status, 200, "{r}");
    assert!(r["summary"].as_str().unwrap().contains("template default"), "{r}");
    // A streamed answer: `data: {"text": ...}` events, then `data: {"done": reason}`.
    let (status, stream) = request(&s, "POST", "/api/chat", Some("application/json"), &ask.to_string());
    assert_eq!(status, 200);
    let events: Vec<Value> = stream.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(|e| serde_json::from_str(e).unwrap()).collect();
    let last = events.last().expect("events");
    assert!(last["done"] == "stop" || last["done"] == "length", "{stream}");
    assert!(events[..events.len() - 1].iter().all(|e| e["text"].is_string()), "{stream}");
    let bad = json!({ "messages": [{ "role": "assistant", "content": "hi" }] });
    assert_eq!(post(&s, "/api/chat", &bad).0, 400);
    assert_eq!(post(&s, "/api/chat/unload", &json!({})).0, 200);
    assert_eq!(post(&s, "/api/chat/unload", &json!({})).0, 400);
}

#[test]
fn binding_beyond_loopback_warns() {
    let (mut s, stderr) = start_server_with("host", &["--host", "0.0.0.0"]);
    let _ = s.child.kill();
    let mut text = String::new();
    stderr.unwrap().read_to_string(&mut text).unwrap();
    assert!(text.contains("warning: binding 0.0.0.0") && text.contains("no login"), "{text}");
}

#[test]
fn export_merges_into_an_hf_folder_with_upstreams_checks() {
    let s = start_server("export");
    let (_, info) = get(&s, "/api/info");
    assert_eq!(info["support"]["export_quantization_bit"]["status"], "not_yet", "{info}");
    assert_eq!(info["support"]["export_device"]["status"], "noop", "{info}");
    let model = repo("tests/fixtures/models/tiny_chat");
    let export = |extra: Value| {
        let mut args = vec![json!(["model_name_or_path", model]), json!(["template", "default"]), json!(["finetuning_type", "lora"])];
        args.extend(extra.as_array().unwrap().iter().cloned());
        post(&s, "/api/export", &json!({ "args": args }))
    };
    let refused = |(status, body): (u16, Value), needle: &str| {
        assert_eq!(status, 400, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(needle), "expected {needle:?}: {body}");
    };
    // Upstream's checks, in upstream's words, then ferrotune-args' support table.
    refused(export(json!([["export_dir", ""]])), "Please specify export dir");
    refused(export(json!([["export_dir", "out"], ["export_quantization_bit", 4]])), "Please specify dataset for quantization");
    refused(
        export(json!([["export_dir", "out"], ["export_quantization_bit", 4], ["export_quantization_dataset", "data/c4_demo.jsonl"], ["adapter_name_or_path", "saves/x"]])),
        "Please merge adapters before quantizing",
    );
    refused(export(json!([["export_dir", "out"], ["export_quantization_bit", 4], ["export_quantization_dataset", "data/c4_demo.jsonl"]])), "GPTQ export quantization is not implemented");
    refused(export(json!([["export_dir", "out"], ["export_legacy_format", true]])), "legacy");
    // An adapter folder that is not there: ferrotune export's own error comes back.
    refused(export(json!([["export_dir", "out"], ["adapter_name_or_path", "saves/none"]])), "ferrotune export failed");

    let (status, r) = export(json!([["export_dir", "out"], ["export_size", 1], ["infer_dtype", "bfloat16"]]));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["message"], "Model exported to out", "{r}");
    assert!(r["log"].as_str().unwrap().contains("as bfloat16"), "{r}");
    for f in ["config.json", "model.safetensors", "Modelfile", "tokenizer.json"] {
        assert!(s.workdir.join("out").join(f).is_file(), "{f} in out/");
    }
    let config: Value = serde_json::from_str(&std::fs::read_to_string(s.workdir.join("out/config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16", "{config}");
    // A folder that holds a model is never overwritten.
    refused(export(json!([["export_dir", "out"]])), "already holds a model");
}

/// The Evaluate & Predict tab's arguments (as the page sends them) for the tiny fixture on data/identity.
fn tiny_eval(output_dir: &str, predict: bool, max_samples: u32, max_new_tokens: u32) -> Value {
    json!({
        "model_name": "tiny",
        "args": [
            ["model_name_or_path", repo("tests/fixtures/models/tiny_chat")],
            ["template", "default"],
            ["finetuning_type", "lora"],
            ["dataset_dir", repo("data")],
            ["eval_dataset", "identity"],
            ["cutoff_len", 64],
            ["max_samples", max_samples],
            ["per_device_eval_batch_size", 2],
            ["predict", predict],
            ["max_new_tokens", max_new_tokens],
            ["top_p", 0.7],
            ["temperature", 0.95],
            ["output_dir", output_dir]
        ]
    })
}

#[test]
fn evaluate_and_predict_builds_upstreams_arguments_runs_and_shows_the_scores() {
    let s = start_server("eval");
    // Preview: LLaMA-Factory's `_parse_eval_args` (stage sft, predict_with_generate, Save predictions as
    // do_predict, the output dir under saves/), and no training.
    let (status, p) = post(&s, "/api/eval/preview", &tiny_eval("eval_1", true, 6, 8));
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["ok"], true, "{p}");
    assert_eq!(p["command"], "ferrotune train saves/tiny/lora/eval_1/training_args.yaml");
    let yaml = p["yaml"].as_str().unwrap();
    for line in [
        "stage: sft",
        "dataset_dir: ",
        "eval_dataset: identity",
        "cutoff_len: 64",
        "max_samples: 6",
        "per_device_eval_batch_size: 2",
        "predict_with_generate: true",
        "max_new_tokens: 8",
        "top_p: 0.7",
        "temperature: 0.95",
        "report_to: none",
        "output_dir: saves/tiny/lora/eval_1",
        "do_predict: true",
    ] {
        assert!(yaml.contains(&format!("\n{line}")), "{line:?} in {yaml}");
    }
    assert!(!yaml.contains("do_train") && !yaml.contains("do_eval") && !yaml.contains("\npredict:"), "{yaml}");
    let (_, p) = post(&s, "/api/eval/preview", &tiny_eval("eval_2", false, 6, 8));
    let yaml = p["yaml"].as_str().unwrap();
    assert!(yaml.contains("\ndo_eval: true\n") && !yaml.contains("do_predict"), "Save predictions off is do_eval: {yaml}");

    // Start with Save predictions: progress to 100% (6 prompts, batch 2: 3 steps), the files, and the scores.
    let (status, r) = post(&s, "/api/eval/start", &tiny_eval("eval_1", true, 6, 8));
    assert_eq!(status, 200, "{r}");
    let st = wait_done(&s, Duration::from_secs(60));
    assert_eq!(st["outcome"], "finished", "{st}");
    assert_eq!(st["kind"], "eval", "{st}");
    assert_eq!(st["progress"]["percentage"], 100.0, "{st}");
    assert!(st["progress"]["label"].as_str().unwrap().starts_with("Running 3/3: "), "{st}");
    let out = s.workdir.join("saves/tiny/lora/eval_1");
    for f in ["training_args.yaml", "trainer_log.jsonl", "generated_predictions.jsonl", "predict_results.json", "all_results.json"] {
        assert!(out.join(f).is_file(), "{f} in {}", out.display());
    }
    assert!(!out.join("adapter_model.safetensors").exists(), "nothing was trained");
    let predictions = std::fs::read_to_string(out.join("generated_predictions.jsonl")).unwrap();
    assert_eq!(predictions.lines().count(), 6, "{predictions}");
    for line in predictions.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        assert!(row["prompt"].is_string() && row["predict"].is_string() && row["label"].is_string(), "{row}");
    }
    let on_disk: Value = serde_json::from_str(&std::fs::read_to_string(out.join("all_results.json")).unwrap()).unwrap();
    assert_eq!(st["results"], on_disk, "the page shows all_results.json");
    for k in ["predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l"] {
        let x = st["results"][k].as_f64().unwrap_or_else(|| panic!("{k} in {st}"));
        assert!((0.0..=100.0).contains(&x), "{k} = {x}");
    }
    // The same output dir again: refused, nothing overwritten.
    let (status, r) = post(&s, "/api/eval/start", &tiny_eval("eval_1", true, 6, 8));
    assert_eq!(status, 400, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("finished run"), "{r}");

    // Save predictions off: do_eval, the same scores named eval_*, no predictions file.
    let (status, r) = post(&s, "/api/eval/start", &tiny_eval("eval_2", false, 6, 8));
    assert_eq!(status, 200, "{r}");
    let st = wait_done(&s, Duration::from_secs(60));
    assert_eq!(st["outcome"], "finished", "{st}");
    let out = s.workdir.join("saves/tiny/lora/eval_2");
    assert!(out.join("eval_results.json").is_file() && !out.join("generated_predictions.jsonl").exists());
    assert!(st["results"]["eval_bleu-4"].is_f64() && st["results"]["eval_rouge-l"].is_f64(), "{st}");

    // Abort stops the generation at a decode step; no scores are written.
    let (status, r) = post(&s, "/api/eval/start", &tiny_eval("eval_long", true, 40, 900));
    assert_eq!(status, 200, "{r}");
    assert_eq!(post(&s, "/api/start", &tiny_run("train_meanwhile", 1)).0, 400, "one run at a time, across tabs");
    let t0 = Instant::now();
    loop {
        let (_, st) = get(&s, "/api/status");
        if st["log"].as_str().unwrap_or("").contains("[generate] ") {
            break;
        }
        assert!(st["state"] == "running" && t0.elapsed() < Duration::from_secs(60), "generation did not start: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, a) = post(&s, "/api/abort", &json!({}));
    assert_eq!(status, 200, "{a}");
    assert!(a["message"].as_str().unwrap().contains("no results are written"), "{a}");
    let st = wait_done(&s, Duration::from_secs(60));
    assert_eq!(st["outcome"], "aborted", "{st}");
    assert!(st["log"].as_str().unwrap().contains("stopped during predict generation on request"), "{st}");
    assert!(st["results"].is_null(), "{st}");
    assert!(!s.workdir.join("saves/tiny/lora/eval_long/all_results.json").exists());
}
