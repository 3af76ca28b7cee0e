//! `ferrotune chat` and `ferrotune api` as a user runs them: the binary on a tiny random model (built here,
//! with the fixture tokenizer and its chat_template) and on SmolLM2. The reference for every answer is
//! ferrotune-infer's `Generator` run in this process on a prompt this test builds itself with the template
//! (`encode_oneturn` of the messages plus an empty assistant turn, as LLaMA-Factory's chat engine does), so
//! the commands' prompt building, stop tokens, streaming and HTTP layer are what is checked.

mod common;

use ferrotune_data::{get_template_and_fix_tokenizer, DataOptions, Message, Role};
use ferrotune_infer::{GenerationConfig, Generator, InferenceModel, SamplingParams, WeightFormat};
use ferrotune_models::llama::RandomInit;
use ferrotune_models::loader::save_hf_folder;
use ferrotune_models::{LlamaModel, ModelConfig, ModelTokenizer, WeightMap};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrotune-chat-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A random Llama (hidden 64, 2 layers, 2048 positions) with the byte-level BPE fixture tokenizer, saved as an
/// HF folder once per test binary.
fn tiny_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("tiny-model");
        let tokenizer = ModelTokenizer::from_folder(&repo().join("tests/fixtures/tokenizers/bytelevel_bpe")).unwrap();
        let mut config = ModelConfig::from_file(&repo().join("tests/fixtures/models/llama_tied/config.json")).unwrap();
        config.vocab_size = tokenizer.vocab_size();
        config.hidden_size = 64;
        config.intermediate_size = 128;
        config.max_position_embeddings = 2048;
        // A wide init so the random logits are far apart: greedy picks are stable across kernels.
        let model = LlamaModel::random(config.clone(), &RandomInit { seed: 7, initializer_range: 0.5, ..RandomInit::default() }).unwrap();
        let mut weights = WeightMap::new("tiny");
        for (name, mut tensor) in model.named_tensors() {
            if name == "model.embed_tokens.weight" {
                // A zero row for eos (tied, so also its lm_head row): its logit is always 0 while the largest
                // random logit is positive, so greedy answers never stop early and run as long as asked.
                let eos = tokenizer.eos_token_id().unwrap() as usize;
                let shape = tensor.shape().to_vec();
                let mut values = tensor.to_vec::<f32>().unwrap();
                values[eos * shape[1]..(eos + 1) * shape[1]].fill(0.0);
                tensor = ferrotune_tensor::Tensor::from_vec(values, &shape).unwrap();
            }
            weights.insert(name, tensor).unwrap();
        }
        save_hf_folder(&dir, &config, &weights, Some(&tokenizer), None).unwrap();
        dir
    })
}

/// A YAML config for `model` with `extra` lines.
fn config_file(name: &str, model: &Path, extra: &str) -> PathBuf {
    let path = scratch(name).join("cfg.yaml");
    std::fs::write(&path, format!("model_name_or_path: {}\n{extra}", model.display())).unwrap();
    path
}

/// What the commands must answer: greedy generation on the template's prompt for `messages`.
fn reference_answer(model: &Path, messages: &[(Role, &str)], max_new_tokens: usize) -> (String, usize, usize) {
    let (engine, tokenizer) = InferenceModel::load(model.to_str().unwrap(), reference_format(model)).unwrap();
    let mut tokenizer = tokenizer.unwrap();
    let template = get_template_and_fix_tokenizer(&mut tokenizer, &DataOptions::default()).unwrap();
    let mut paired: Vec<Message> = messages.iter().map(|(r, c)| Message::new(*r, *c)).collect();
    paired.push(Message::new(Role::Assistant, ""));
    let (prompt, _) = template.encode_oneturn(&tokenizer, &paired, "", "").unwrap();
    let config = GenerationConfig {
        max_new_tokens,
        sampling: SamplingParams::default(),
        eos_token_ids: tokenizer.eos_token_id().into_iter().collect(),
        stop_strings: Vec::new(),
        skip_special_tokens: true,
    };
    let mut cache = engine.new_cache(prompt.len() + max_new_tokens).unwrap();
    let (generation, _) = Generator::new(&engine, Some(&tokenizer)).generate(&mut cache, &prompt, &config, &mut |_| {}).unwrap();
    (generation.text, prompt.len(), generation.tokens.len())
}

/// The format `infer_dtype: auto` picks: a GGUF's own blocks (SmolLM2 is Q4_1), f32 for the f32 tiny folder.
fn reference_format(model: &Path) -> WeightFormat {
    if model.extension().is_some_and(|e| e == "gguf") {
        WeightFormat::Q4_1
    } else {
        WeightFormat::F32
    }
}

// ---- chat

fn chat(cfg: &Path, input: &str) -> (String, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["chat", cfg.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A run that fails at start-up exits before reading: a broken pipe here is its answer, not an error.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned(), out.status.success())
}

/// The answers in a chat transcript, in order.
fn answers(stdout: &str) -> Vec<String> {
    stdout.split("Assistant: ").skip(1).map(|a| a.split("\n\nUser: ").next().unwrap().trim_end_matches('\n').to_string()).collect()
}

#[test]
fn chat_piped_answers_like_the_generator_and_clear_resets_the_history() {
    let model = tiny_model();
    let cfg = config_file("chat", model, "do_sample: false\nmax_new_tokens: 6\n");
    let (stdout, stderr, ok) = chat(&cfg, "hello there\nhow are you\nclear\nhello there\nexit\nnever read\n");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("History has been removed."), "{stdout}");
    let got = answers(&stdout);
    assert_eq!(got.len(), 3, "{stdout}");
    let (first, _, _) = reference_answer(model, &[(Role::User, "hello there")], 6);
    assert_eq!(got[0], first);
    // The second turn sees the first (history), the third does not (cleared).
    let (second, _, _) = reference_answer(model, &[(Role::User, "hello there"), (Role::Assistant, &first), (Role::User, "how are you")], 6);
    assert_eq!(got[1], second);
    assert_eq!(got[2], first);
    assert!(stderr.contains("peak memory (RSS)"), "{stderr}");
}

#[test]
fn chat_ends_at_end_of_input_and_rejects_bad_settings_clearly() {
    let model = tiny_model();
    let cfg = config_file("chat-eof", model, "do_sample: false\nmax_new_tokens: 2\n");
    let (stdout, stderr, ok) = chat(&cfg, "hi\n");
    assert!(ok, "{stderr}");
    assert_eq!(answers(&stdout).len(), 1, "{stdout}");

    for (extra, want) in [
        ("num_beams: 2\n", "beam search"),
        ("infer_dtype: float16\n", "bfloat16"),
        ("template: nonesuch\n", "nonesuch"),
        ("stage: pt\n", "stage: sft"),
        ("adapter_name_or_path: /nonexistent/adapter\n", "/nonexistent/adapter"),
    ] {
        let cfg = config_file("chat-bad", model, extra);
        let (_, stderr, ok) = chat(&cfg, "hi\n");
        assert!(!ok, "{extra}");
        assert!(stderr.contains(want) && !stderr.contains("panicked"), "{extra}: {stderr}");
    }
}

// ---- api

/// A running `ferrotune api`, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_api(cfg: &Path, env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["api", cfg.to_str().unwrap()])
        .env("API_PORT", "0")
        .env_remove("API_KEY")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let Some(addr) = line.trim().strip_prefix("listening on http://") else {
        let _ = child.kill();
        panic!("the server did not start: {line:?}");
    };
    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
    Server { child, port }
}

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `data:` payloads of an event stream.
    fn events(&self) -> Vec<String> {
        String::from_utf8(self.body.clone()).unwrap().split("\n\n").filter_map(|e| e.strip_prefix("data: ").map(String::from)).collect()
    }
}

fn send_raw(port: u16, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    // A server may answer (413) before taking the whole body; what matters is the answer.
    let _ = s.write_all(raw);
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let text_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&bytes)));
    let head = String::from_utf8_lossy(&bytes[..text_end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply { status, head, body: bytes[text_end + 4..].to_vec() }
}

fn request(port: u16, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> Reply {
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    send_raw(port, &raw)
}

fn post(port: u16, path: &str, body: &Value) -> Reply {
    request(port, "POST", path, None, body.to_string().as_bytes())
}

fn assert_error(reply: &Reply, status: u16, want: &str) {
    assert_eq!(reply.status, status, "{}", String::from_utf8_lossy(&reply.body));
    let v = reply.json();
    let message = v["error"]["message"].as_str().unwrap_or_else(|| panic!("not OpenAI's error shape: {v}"));
    assert!(message.contains(want), "{want:?} not in {message:?}");
    assert!(v["error"]["type"].is_string(), "{v}");
}

#[test]
fn api_answers_like_the_generator_whole_and_streamed() {
    let model = tiny_model();
    let server = start_api(&config_file("api", model, "max_new_tokens: 8\n"), &[]);
    let port = server.port;
    let (want, prompt_tokens, completion_tokens) = reference_answer(model, &[(Role::User, "hello there")], 8);

    let body = json!({"model": "tiny", "temperature": 0, "messages": [{"role": "user", "content": "hello there"}]});
    let r = post(port, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    let finish = if completion_tokens < 8 { "stop" } else { "length" };
    assert_eq!(v["choices"][0]["finish_reason"], finish);
    assert_eq!(v["usage"], json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}));

    // Streamed: a role chunk, content deltas that add up to the same text, a finish chunk, usage, [DONE].
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = post(port, "/v1/chat/completions", &streamed);
    assert_eq!(r.status, 200);
    assert!(r.head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{}", r.head);
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, want);
    let finish_chunk = &chunks[chunks.len() - 2];
    assert_eq!(finish_chunk["choices"][0]["finish_reason"], finish);
    assert!(chunks[..chunks.len() - 2].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], completion_tokens);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));

    // A stop string cuts the answer before its first match: finish_reason stop.
    let chars: Vec<char> = want.chars().collect();
    assert!(chars.len() >= 6, "{want:?}");
    let stop: String = chars[3..5].iter().collect();
    let mut stopped = body.clone();
    stopped["stop"] = json!([stop]);
    let v = post(port, "/v1/chat/completions", &stopped).json();
    assert_eq!(v["choices"][0]["message"]["content"], &want[..want.find(&stop).unwrap()]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // max_tokens caps the answer: finish_reason length.
    let mut short = body.clone();
    short["max_tokens"] = json!(2);
    let v = post(port, "/v1/chat/completions", &short).json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);

    // Several sampled answers in one request.
    let many = json!({"model": "tiny", "n": 3, "seed": 1, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]});
    let v = post(port, "/v1/chat/completions", &many).json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 3, "{v}");
    let lengths: u64 = v["choices"].as_array().unwrap().iter().map(|c| if c["finish_reason"] == "length" { 3 } else { 1 }).sum();
    let total = v["usage"]["completion_tokens"].as_u64().unwrap();
    // Each answer is 3 tokens unless a sampled eos ended it sooner (eos counted, as LLaMA-Factory counts it).
    assert!(total >= lengths && total <= 9, "{v}");

    // /v1/completions: the raw prompt (tokenizer special tokens added), whole and streamed.
    let v = post(port, "/v1/completions", &json!({"model": "tiny", "prompt": "once upon", "max_tokens": 4, "temperature": 0})).json();
    assert_eq!(v["object"], "text_completion");
    let whole = v["choices"][0]["text"].as_str().unwrap().to_string();
    let r = post(port, "/v1/completions", &json!({"model": "tiny", "prompt": "once upon", "max_tokens": 4, "temperature": 0, "stream": true}));
    let events = r.events();
    let text: String = events[..events.len() - 1].iter().map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(text, whole);
}

#[test]
fn api_rejects_bad_requests_with_openai_errors() {
    let model = tiny_model();
    let server = start_api(&config_file("api-bad", model, "max_new_tokens: 2\n"), &[]);
    let port = server.port;
    let user = json!([{"role": "user", "content": "hi"}]);
    assert_error(&request(port, "POST", "/v1/chat/completions", None, b"{\"model\": \"x\", \"messages\": "), 400, "not valid JSON");
    assert_error(&request(port, "POST", "/v1/chat/completions", None, b"[1, 2]"), 400, "JSON object");
    assert_error(&post(port, "/v1/chat/completions", &json!({"model": "x", "messages": []})), 400, "empty");
    assert_error(&post(port, "/v1/chat/completions", &json!({"messages": user})), 400, "model");
    assert_error(&post(port, "/v1/chat/completions", &json!({"model": "x", "messages": [{"role": "assistant", "content": "a"}]})), 400, "expected user");
    assert_error(
        &post(port, "/v1/chat/completions", &json!({"model": "x", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})),
        400,
        "expected assistant",
    );
    assert_error(&post(port, "/v1/chat/completions", &json!({"model": "x", "messages": [{"role": "robot", "content": "a"}]})), 400, "Invalid role");
    assert_error(&post(port, "/v1/chat/completions", &json!({"model": "x", "messages": user, "temperature": -1})), 400, "temperature");
    assert_error(&post(port, "/v1/chat/completions", &json!({"model": "x", "messages": user, "top_p": 0})), 400, "top_p");
    assert_error(&post(port, "/v1/chat/completions", &json!({"model": "x", "messages": user, "max_tokens": "many"})), 400, "max_tokens");
    assert_error(&post(port, "/v1/chat/completions", &json!({"model": "x", "messages": user, "n": 2, "stream": true})), 400, "Cannot stream multiple");
    assert_error(&post(port, "/v1/chat/completions", &json!({"model": "x", "messages": user, "tools": [{"type": "function"}]})), 400, "function calling");
    assert_error(&post(port, "/v1/completions", &json!({"model": "x", "prompt": "a", "echo": true})), 400, "echo");
    assert_error(&post(port, "/v1/completions", &json!({"model": "x"})), 400, "prompt");
    assert_error(&post(port, "/v1/nowhere", &json!({})), 404, "no route");
    assert_error(&request(port, "GET", "/v1/chat/completions", None, b""), 405, "use POST");
    let mut form = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 2\r\n\r\n{}".to_vec();
    assert_error(&send_raw(port, &form), 415, "application/json");
    form = b"this is not http\r\n\r\n".to_vec();
    assert_error(&send_raw(port, &form), 400, "malformed");
    let huge = vec![b' '; 3 * 1024 * 1024];
    assert_error(&request(port, "POST", "/v1/chat/completions", None, &huge), 413, "limit");
    // The server is still fine afterwards.
    assert_eq!(post(port, "/v1/chat/completions", &json!({"model": "x", "messages": user})).status, 200);
}

#[test]
fn api_key_is_required_when_set() {
    let model = tiny_model();
    let server = start_api(&config_file("api-key", model, ""), &[("API_KEY", "s3cret"), ("API_MODEL_NAME", "tiny-chat")]);
    let port = server.port;
    assert_error(&request(port, "GET", "/v1/models", None, b""), 401, "Invalid API key");
    assert_error(&request(port, "GET", "/v1/models", Some("wrong"), b""), 401, "Invalid API key");
    let body = json!({"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    assert_error(&request(port, "POST", "/v1/chat/completions", None, body.as_bytes()), 401, "Invalid API key");
    let r = request(port, "GET", "/v1/models", Some("s3cret"), b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"][0]["id"], "tiny-chat");
    assert_eq!(request(port, "POST", "/v1/chat/completions", Some("s3cret"), body.as_bytes()).status, 200);
}

/// Open a streaming request for `max_tokens` and read until its first content chunk arrives.
fn open_stream(port: u16, max_tokens: usize) -> (TcpStream, Vec<u8>) {
    let body = json!({"model": "x", "stream": true, "temperature": 0, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "tell me a long story"}]}).to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(9).filter(|w| w == b"\"content\"").count() < 2 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    (s, seen)
}

#[test]
fn api_queue_is_bounded_and_a_client_that_leaves_is_cancelled() {
    let model = tiny_model();
    // One slot, no waiting room: a second request while one runs is refused with 429.
    let server = start_api(&config_file("api-busy", model, ""), &[("MAX_CONCURRENT", "1"), ("API_MAX_QUEUE", "0")]);
    let port = server.port;
    let quick = json!({"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
    // The slot frees within `limit` only if the abandoned request was cancelled: run to the end, its 2000
    // tokens (the tiny model never picks eos greedily) take several times longer than that.
    let slot_frees_within = |limit: Duration| {
        let start = Instant::now();
        loop {
            let r = post(port, "/v1/chat/completions", &quick);
            if r.status == 200 {
                return;
            }
            assert_eq!(r.status, 429);
            assert!(start.elapsed() < limit, "the abandoned request still holds the slot after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let full = Instant::now();
    let r = post(port, "/v1/chat/completions", &json!({"model": "x", "temperature": 0, "max_tokens": 2000, "messages": [{"role": "user", "content": "tell me a long story"}]}));
    assert_eq!(r.json()["usage"]["completion_tokens"], 2000);
    let full = full.elapsed();

    // Streaming: the client leaves after the first tokens.
    let (first, _) = open_stream(port, 2000);
    assert_error(&post(port, "/v1/chat/completions", &quick), 429, "busy");
    drop(first);
    slot_frees_within(full / 3);

    // Whole answer: the client leaves while waiting.
    let body = json!({"model": "x", "temperature": 0, "max_tokens": 2000, "messages": [{"role": "user", "content": "tell me a long story"}]}).to_string();
    let mut waiting = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(waiting, "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_error(&post(port, "/v1/chat/completions", &quick), 429, "busy");
    drop(waiting);
    slot_frees_within(full / 3);
}

#[test]
fn api_serves_concurrent_clients_with_the_same_answers() {
    let model = tiny_model();
    let server = start_api(&config_file("api-concurrent", model, "max_new_tokens: 8\n"), &[("MAX_CONCURRENT", "4")]);
    let port = server.port;
    let prompts = ["hello there", "once upon a time", "what is this", "hi", "a b c", "the end"];
    let threads: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = json!({"model": "x", "temperature": 0, "messages": [{"role": "user", "content": p}]});
            std::thread::spawn(move || post(port, "/v1/chat/completions", &body).json()["choices"][0]["message"]["content"].as_str().unwrap().to_string())
        })
        .collect();
    for (p, t) in prompts.iter().zip(threads) {
        let (want, _, _) = reference_answer(model, &[(Role::User, p)], 8);
        assert_eq!(t.join().unwrap(), want, "{p}");
    }
}

// ---- SmolLM2

#[test]
fn smollm2_chat_and_api_answer_like_the_generator_within_the_memory_target() {
    let Some(gguf) = common::smollm2_gguf() else { return };
    let question = "What is the capital of France?";
    let (want, prompt_tokens, completion_tokens) = reference_answer(&gguf, &[(Role::User, question)], 24);
    assert!(want.contains("Paris"), "{want}");

    let cfg = config_file("smollm2", &gguf, "do_sample: false\nmax_new_tokens: 24\n");
    let (stdout, stderr, ok) = chat(&cfg, &format!("{question}\n"));
    assert!(ok, "{stderr}");
    assert_eq!(answers(&stdout), vec![want.clone()]);
    // The target: resident memory within weights + KV cache + 100 MB while chatting.
    let line = stderr.lines().find(|l| l.starts_with("peak memory (RSS):")).unwrap_or_else(|| panic!("{stderr}"));
    let numbers: Vec<f64> = line.split(|c: char| !c.is_ascii_digit() && c != '.').filter_map(|w| w.parse().ok()).collect();
    let (peak, weights, kv) = (numbers[0], numbers[1], numbers[2]);
    assert!(peak < weights + kv + 100.0, "{line}");

    let server = start_api(&cfg, &[]);
    let v = post(server.port, "/v1/chat/completions", &json!({"model": "smollm2", "messages": [{"role": "user", "content": question}]})).json();
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], completion_tokens);
}

#[test]
fn template_arguments_reach_the_prompt() {
    // default_system replaces the template's system prompt in what the model sees (checked through the
    // prompt token count the API reports).
    let model = tiny_model();
    let mut tokenizer = ModelTokenizer::from_folder(model).unwrap();
    let options = DataOptions { default_system: Some("You are terse.".into()), ..DataOptions::default() };
    let template = get_template_and_fix_tokenizer(&mut tokenizer, &options).unwrap();
    let paired = [Message::new(Role::User, "hi"), Message::new(Role::Assistant, "")];
    let (prompt, _) = template.encode_oneturn(&tokenizer, &paired, "", "").unwrap();
    let server = start_api(&config_file("api-system", model, "default_system: You are terse.\nmax_new_tokens: 1\n"), &[]);
    let v = post(server.port, "/v1/chat/completions", &json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]})).json();
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
    let with_request_system = post(
        server.port,
        "/v1/chat/completions",
        &json!({"model": "x", "messages": [{"role": "system", "content": "Another, longer system prompt than the default one."}, {"role": "user", "content": "hi"}]}),
    )
    .json();
    assert!(with_request_system["usage"]["prompt_tokens"].as_u64().unwrap() > prompt.len() as u64);
}

#[test]
fn chat_merges_a_lora_adapter_as_peft_does() {
    use ferrotune_autograd::Var;
    use ferrotune_models::{load_model, LoadOptions};
    use ferrotune_train::adapters::{self, AdapterMode, LoraSettings};
    let base = tiny_model();
    let load = || {
        let loaded = load_model(base.to_str().unwrap(), &LoadOptions::default(), &Default::default()).unwrap();
        (LlamaModel::from_weights(loaded.config, loaded.weights).unwrap(), loaded.tokenizer.unwrap())
    };
    // An adapter whose lora_B is non-zero (a fresh one is zero and would change nothing).
    let (mut model, _) = load();
    let settings = LoraSettings { rank: 4, alpha: Some(16.0), target: vec!["all".into()], ..LoraSettings::default() };
    adapters::setup_lora(&mut model, &settings).unwrap();
    for (i, (_, linear)) in model.linears_mut().into_iter().enumerate() {
        let lora = linear.lora.as_mut().unwrap();
        let shape = lora.b.shape().to_vec();
        let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|j| (((i * 7919 + j * 104729) % 1000) as f32 / 1000.0 - 0.5) * 0.8).collect();
        lora.b = Var::constant(ferrotune_tensor::Tensor::from_vec(values, &shape).unwrap());
    }
    let adapter_dir = scratch("adapter");
    adapters::save_adapter(&adapter_dir, &model, &settings, &base.display().to_string()).unwrap();

    // The reference: PEFT's merge_and_unload through the training model, then the Generator.
    let (mut merged, mut tokenizer) = load();
    adapters::load_adapter(&mut merged, &adapter_dir, AdapterMode::Merge).unwrap();
    let engine = InferenceModel::from_llama(&merged, WeightFormat::F32).unwrap();
    let template = get_template_and_fix_tokenizer(&mut tokenizer, &DataOptions::default()).unwrap();
    let (prompt, _) = template.encode_oneturn(&tokenizer, &[Message::new(Role::User, "hello there"), Message::new(Role::Assistant, "")], "", "").unwrap();
    let config = GenerationConfig { max_new_tokens: 6, eos_token_ids: tokenizer.eos_token_id().into_iter().collect(), ..GenerationConfig::default() };
    let mut cache = engine.new_cache(64).unwrap();
    let (want, _) = Generator::new(&engine, Some(&tokenizer)).generate(&mut cache, &prompt, &config, &mut |_| {}).unwrap();
    let (base_answer, _, _) = reference_answer(base, &[(Role::User, "hello there")], 6);
    assert_ne!(want.text, base_answer, "the adapter must change the answer for this check to mean anything");

    let cfg = config_file("chat-adapter", base, &format!("adapter_name_or_path: {}\ndo_sample: false\nmax_new_tokens: 6\n", adapter_dir.display()));
    let (stdout, stderr, ok) = chat(&cfg, "hello there\n");
    assert!(ok, "{stderr}");
    assert_eq!(answers(&stdout), vec![want.text]);
}
