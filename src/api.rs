//! `ferrotune api cfg.yaml [key=value ...]`: `llamafactory-cli api`, an OpenAI-compatible server on the
//! inference engine.
//!
//! Routes: `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions`, each whole or streamed
//! as server-sent events (`data: {chunk}` ... `data: [DONE]`). Environment, with LLaMA-Factory's names:
//! `API_HOST` (default 127.0.0.1), `API_PORT` (8000; 0 picks a free port), `API_KEY` (when set, every route
//! wants `Authorization: Bearer <key>`), `API_MODEL_NAME` (the id `/v1/models` lists, default
//! `gpt-3.5-turbo`), `MAX_CONCURRENT` (sequences decoded together by continuous batching, default 8), and
//! ferrotune's `API_MAX_QUEUE` (sequences that may wait for a slot, default 64; past it requests get 429).
//!
//! Requests are checked the way LLaMA-Factory checks them (an optional leading system message, then user /
//! assistant turns ending with the user's) and every problem is a 4xx in OpenAI's error shape
//! (`{"error": {"message", "type", "param", "code"}}`). Not implemented, and refused with a 400 that says so:
//! tools / function calling, image inputs, logprobs, logit_bias, presence / frequency penalties, `echo`,
//! `suffix`, `best_of`. Extensions LLaMA-Factory and vLLM accept: `do_sample`, `top_k`, `repetition_penalty`.

use crate::chat_model::{ChatModel, Overrides};
use crate::engine_thread::{EngineHandle, Ticket, Update};
use crate::http::{Conn, Handler, Limits, Request, Response};
use ferrotune_data::{Message, Role};
use ferrotune_infer::Generation;
use serde_json::{json, Map, Value};
use std::net::TcpListener;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a waiting request checks that its client is still there.
const CLIENT_CHECK: Duration = Duration::from_millis(100);

pub fn run(args: &[String]) -> Result<(), String> {
    let parsed = ferrotune_args::parse_infer_args(args).map_err(|e| e.to_string())?;
    for note in &parsed.notes {
        eprintln!("note: {note}");
    }
    let host = env_or("API_HOST", "127.0.0.1");
    let port: u16 = env_or("API_PORT", "8000").parse().map_err(|_| "API_PORT must be a port number (0-65535)".to_string())?;
    let max_batch = env_count("MAX_CONCURRENT", 8)?;
    let max_queue = env_count("API_MAX_QUEUE", 64)?;
    let api_key = std::env::var("API_KEY").ok().filter(|k| !k.is_empty());
    let model_name = env_or("API_MODEL_NAME", "gpt-3.5-turbo");

    let start = Instant::now();
    let chat = Arc::new(ChatModel::from_infer_args(&parsed).map_err(|e| e.to_string())?);
    eprintln!("loaded {} in {:.1} s", chat.summary(), start.elapsed().as_secs_f64());
    let engine = EngineHandle::start(chat.clone(), max_batch, max_queue).map_err(|e| e.to_string())?;
    let listener = TcpListener::bind((host.as_str(), port)).map_err(|e| format!("cannot listen on {host}:{port}: {e} (set API_HOST / API_PORT)"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "{} sequences decode together (MAX_CONCURRENT), {} more may wait (API_MAX_QUEUE); API key {}",
        max_batch,
        max_queue,
        if api_key.is_some() { "required (API_KEY)" } else { "not required (set API_KEY to require one)" }
    );
    // The one line on standard output: scripts and tests wait for it (and read the port when API_PORT=0).
    println!("listening on http://{addr}");
    let api = Api { chat, engine, api_key, model_name, created: unix_time() };
    crate::http::serve(listener, Limits::default(), Arc::new(api)).map_err(|e| e.to_string())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

fn env_count(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().ok().filter(|&n| n >= 1).ok_or_else(|| format!("{name} must be a whole number >= 1, got {v:?}")),
        _ => Ok(default),
    }
}

fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A random hex id (`chatcmpl-...`), from the same mixer the seeds use.
fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}{:016x}", crate::chat_model::fresh_seed(), crate::chat_model::fresh_seed())
}

/// An API error: status, OpenAI `type`, message, and the offending parameter.
#[derive(Debug)]
struct ApiError {
    status: u16,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status: 400, kind: "invalid_request_error", message: message.into(), param: Some(param), code: None }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError { status: 400, kind: "invalid_request_error", message: message.into(), param: None, code: None }
    }

    fn response(&self) -> Response {
        error_response(self.status, self.kind, &self.message, self.param, self.code)
    }
}

fn error_response(status: u16, kind: &str, message: &str, param: Option<&str>, code: Option<&str>) -> Response {
    Response::json(status, &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}))
}

struct Api {
    chat: Arc<ChatModel>,
    engine: EngineHandle,
    api_key: Option<String>,
    model_name: String,
    created: u64,
}

impl Handler for Api {
    fn handle(&self, request: Request, conn: &mut Conn) {
        if let Err(e) = self.route(&request, conn) {
            let _ = conn.send(&e.response());
        }
    }

    fn error_response(&self, status: u16, message: &str) -> Response {
        let kind = if status >= 500 { "server_error" } else { "invalid_request_error" };
        error_response(status, kind, message, None, None)
    }
}

/// Which endpoint a completion request came in on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
}

/// A checked completion request.
struct Job {
    endpoint: Endpoint,
    /// Echoed back, as OpenAI and LLaMA-Factory do.
    model: String,
    prompt: Vec<u32>,
    overrides: Overrides,
    n: usize,
    stream: bool,
    include_usage: bool,
}

impl Api {
    fn route(&self, request: &Request, conn: &mut Conn) -> Result<(), ApiError> {
        let endpoint = match request.path.as_str() {
            "/v1/models" => None,
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/completions" => Some(Endpoint::Completions),
            other => return Err(ApiError { status: 404, kind: "invalid_request_error", message: format!("no route {other}; this server has /v1/models, /v1/chat/completions and /v1/completions"), param: None, code: Some("unknown_url") }),
        };
        let method = if endpoint.is_some() { "POST" } else { "GET" };
        if request.method != method {
            let e = ApiError { status: 405, kind: "invalid_request_error", message: format!("{} {} is not allowed; use {method}", request.method, request.path), param: None, code: None };
            let _ = conn.send(&e.response().with_header("allow", method));
            return Ok(());
        }
        self.authorize(request)?;
        let Some(endpoint) = endpoint else {
            let _ = conn.send(&Response::json(
                200,
                &json!({"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created, "owned_by": "owner"}]}),
            ));
            return Ok(());
        };
        if let Some(ct) = request.header("content-type") {
            let mime = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            if mime != "application/json" && !mime.ends_with("+json") {
                return Err(ApiError { status: 415, kind: "invalid_request_error", message: format!("Content-Type {ct:?}: send the request as application/json"), param: None, code: None });
            }
        }
        let body: Value = serde_json::from_slice(&request.body).map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))?;
        let Value::Object(body) = body else { return Err(ApiError::bad("the body must be a JSON object")) };
        let job = self.parse_job(endpoint, &body)?;
        self.answer(job, conn)
    }

    fn authorize(&self, request: &Request) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else { return Ok(()) };
        let given = request.header("authorization").and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))).map(str::trim);
        // Compare without stopping at the first difference, so timing does not reveal a prefix of the key.
        let matches = given.is_some_and(|g| g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0);
        if matches {
            return Ok(());
        }
        Err(ApiError { status: 401, kind: "invalid_request_error", message: "Invalid API key.".into(), param: None, code: Some("invalid_api_key") })
    }

    fn parse_job(&self, endpoint: Endpoint, body: &Map<String, Value>) -> Result<Job, ApiError> {
        let model = match body.get("model") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => return Err(ApiError::invalid("model", "`model` is required (any name; this server runs one model)")),
            Some(_) => return Err(ApiError::invalid("model", "`model` must be a string")),
        };
        refuse_unsupported(body, endpoint)?;
        let prompt = match endpoint {
            Endpoint::Chat => {
                let (system, messages) = parse_messages(body.get("messages"))?;
                self.chat.encode_prompt(&messages, system.as_deref()).map_err(|e| ApiError::invalid("messages", e.to_string()))?
            }
            Endpoint::Completions => {
                let text = match body.get("prompt") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => items[0].as_str().unwrap_or_default().to_string(),
                    Some(Value::Array(_)) => return Err(ApiError::invalid("prompt", "send one prompt per request (a string)")),
                    _ => return Err(ApiError::invalid("prompt", "`prompt` is required and must be a string")),
                };
                let ids = self.chat.tokenizer.encode(&text, true).map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
                if ids.is_empty() {
                    return Err(ApiError::invalid("prompt", "the prompt encodes to no tokens"));
                }
                if ids.len() > self.chat.context_len {
                    return Err(ApiError::invalid("prompt", format!("the prompt is {} tokens; a sequence holds at most {}", ids.len(), self.chat.context_len)));
                }
                ids
            }
        };
        let n = match opt_u64(body, "n")? {
            None => 1,
            Some(n) if (1..=16).contains(&n) => n as usize,
            Some(n) => return Err(ApiError::invalid("n", format!("n must be between 1 and 16, got {n}"))),
        };
        let stream = opt_bool(body, "stream")?.unwrap_or(false);
        if stream && n > 1 {
            return Err(ApiError::invalid("n", "Cannot stream multiple responses."));
        }
        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ApiError::invalid("stream_options", "stream_options.include_usage must be a boolean")),
            },
            Some(_) => return Err(ApiError::invalid("stream_options", "stream_options must be an object")),
        };
        let stop = match body.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items.iter().map(|v| v.as_str().map(String::from)).collect::<Option<Vec<_>>>().ok_or_else(|| ApiError::invalid("stop", "stop must be a string or a list of strings"))?,
            Some(_) => return Err(ApiError::invalid("stop", "stop must be a string or a list of strings")),
        };
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid("stop", "stop strings must not be empty"));
        }
        let max_tokens = match (opt_u64(body, "max_completion_tokens")?, opt_u64(body, "max_tokens")?) {
            (Some(n), _) | (None, Some(n)) => Some(n as usize),
            (None, None) => None,
        };
        let overrides = Overrides {
            do_sample: opt_bool(body, "do_sample")?,
            temperature: opt_f64(body, "temperature")?,
            top_p: opt_f64(body, "top_p")?,
            top_k: opt_u64(body, "top_k")?.map(|k| k as usize),
            repetition_penalty: opt_f64(body, "repetition_penalty")?,
            max_new_tokens: max_tokens,
            num_return_sequences: n,
            stop,
            seed: opt_u64(body, "seed")?,
        };
        // Check the sampling values now, so a bad one is a 400 and not a failed generation.
        self.chat.generation_config(prompt.len(), &overrides).map_err(|e| ApiError::bad(e.to_string()))?;
        Ok(Job { endpoint, model, prompt, overrides, n, stream, include_usage })
    }

    fn answer(&self, job: Job, conn: &mut Conn) -> Result<(), ApiError> {
        let mut jobs = Vec::with_capacity(job.n);
        for i in 0..job.n {
            let mut o = job.overrides.clone();
            // Several answers to one prompt: one seed each (consecutive when the client fixed one).
            o.seed = o.seed.map(|s| s.wrapping_add(i as u64));
            let config = self.chat.generation_config(job.prompt.len(), &o).map_err(|e| ApiError::bad(e.to_string()))?;
            jobs.push((job.prompt.clone(), config));
        }
        let tickets = self.engine.submit(jobs).map_err(|busy| ApiError {
            status: 429,
            kind: "server_busy",
            message: format!(
                "the server is busy: {} of {} sequences are running or queued (MAX_CONCURRENT + API_MAX_QUEUE); retry later",
                busy.in_flight, busy.capacity
            ),
            param: None,
            code: Some("rate_limit_exceeded"),
        })?;
        let id = new_id(if job.endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" });
        let created = unix_time();
        if job.stream {
            let ticket = tickets.into_iter().next().expect("one ticket per answer");
            self.stream(&job, &id, created, ticket, conn);
            return Ok(());
        }
        let mut choices = Vec::new();
        let mut completion_tokens = 0;
        for (index, ticket) in tickets.iter().enumerate() {
            let generation = loop {
                match next_update(ticket, &|| conn.client_gone()) {
                    Waited::Text(_) => continue,
                    Waited::Done(g) => break g,
                    Waited::Failed(message) => {
                        tickets.iter().for_each(|t| self.engine.cancel(t.id));
                        return Err(ApiError { status: 500, kind: "server_error", message, param: None, code: None });
                    }
                    Waited::ClientGone => {
                        tickets.iter().for_each(|t| self.engine.cancel(t.id));
                        return Ok(());
                    }
                }
            };
            completion_tokens += generation.tokens.len();
            let finish = generation.finish_reason.as_str();
            choices.push(match job.endpoint {
                Endpoint::Chat => json!({"index": index, "message": {"role": "assistant", "content": generation.text}, "logprobs": null, "finish_reason": finish}),
                Endpoint::Completions => json!({"index": index, "text": generation.text, "logprobs": null, "finish_reason": finish}),
            });
        }
        let object = if job.endpoint == Endpoint::Chat { "chat.completion" } else { "text_completion" };
        let usage = usage(job.prompt.len(), completion_tokens);
        let _ = conn.send(&Response::json(200, &json!({"id": id, "object": object, "created": created, "model": job.model, "choices": choices, "usage": usage})));
        Ok(())
    }

    fn stream(&self, job: &Job, id: &str, created: u64, ticket: Ticket, conn: &mut Conn) {
        let chat = job.endpoint == Endpoint::Chat;
        let object = if chat { "chat.completion.chunk" } else { "text_completion" };
        let chunk = |delta: Value, finish: Option<&str>| -> String {
            let choice = if chat {
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            } else {
                json!({"index": 0, "text": delta.get("content").and_then(Value::as_str).unwrap_or(""), "logprobs": null, "finish_reason": finish})
            };
            json!({"id": id, "object": object, "created": created, "model": job.model, "choices": [choice]}).to_string()
        };
        let Ok(mut events) = conn.start_events() else {
            self.engine.cancel(ticket.id);
            return;
        };
        if chat && events.data(&chunk(json!({"role": "assistant", "content": ""}), None)).is_err() {
            self.engine.cancel(ticket.id);
            return;
        }
        let outcome = loop {
            let update = next_update(&ticket, &|| events.client_gone());
            match update {
                Waited::Text(text) => {
                    if events.data(&chunk(json!({"content": text}), None)).is_err() {
                        break Waited::ClientGone;
                    }
                }
                other => break other,
            }
        };
        let end = match outcome {
            Waited::Done(generation) => {
                let mut lines = vec![chunk(json!({}), Some(generation.finish_reason.as_str()))];
                if job.include_usage {
                    lines.push(json!({"id": id, "object": object, "created": created, "model": job.model, "choices": [], "usage": usage(job.prompt.len(), generation.tokens.len())}).to_string());
                }
                lines
            }
            Waited::Failed(message) => vec![json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}}).to_string()],
            Waited::Text(_) | Waited::ClientGone => {
                self.engine.cancel(ticket.id);
                return;
            }
        };
        for line in end.iter().map(String::as_str).chain(["[DONE]"]) {
            if events.data(line).is_err() {
                return;
            }
        }
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

enum Waited {
    Text(String),
    Done(Generation),
    Failed(String),
    ClientGone,
}

/// The next update of `ticket`; `gone` is asked whenever nothing came for a while (is the client still there?).
fn next_update(ticket: &Ticket, gone: &dyn Fn() -> bool) -> Waited {
    loop {
        match ticket.updates.recv_timeout(CLIENT_CHECK) {
            Ok(Update::Text(text)) => return Waited::Text(text),
            Ok(Update::Done(generation)) => return Waited::Done(generation),
            Ok(Update::Failed(message)) => return Waited::Failed(message),
            Err(RecvTimeoutError::Timeout) => {
                if gone() {
                    return Waited::ClientGone;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Waited::Failed("the generation engine stopped; restart the server".into()),
        }
    }
}

/// The leading system text and the user / assistant turns of a chat request (LLaMA-Factory's
/// `_process_request`), with OpenAI's content forms: a string, or a list of `{"type": "text"}` parts.
fn parse_messages(value: Option<&Value>) -> Result<(Option<String>, Vec<Message>), ApiError> {
    let Some(Value::Array(items)) = value else {
        return Err(ApiError::invalid("messages", "`messages` is required and must be a list of {role, content} objects"));
    };
    if items.is_empty() {
        return Err(ApiError::invalid("messages", "Invalid length: `messages` is empty"));
    }
    let mut system = None;
    let mut messages = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(m) = item else { return Err(ApiError::invalid("messages", format!("messages[{i}] must be an object"))) };
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            _ => return Err(ApiError::invalid("messages", format!("messages[{i}].role is required and must be a string"))),
        };
        if m.get("tool_calls").is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(ApiError::invalid("messages", format!("messages[{i}]: tool calls are not supported by this server yet")));
        }
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::new();
                for part in parts {
                    match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => texts.push(t),
                        (Some("text"), None) => return Err(ApiError::invalid("messages", format!("messages[{i}]: a text part needs a string `text`"))),
                        (Some(other), _) => return Err(ApiError::invalid("messages", format!("messages[{i}]: {other} parts are not supported (text-only models)"))),
                        (None, _) => return Err(ApiError::invalid("messages", format!("messages[{i}]: each content part needs a `type`"))),
                    }
                }
                texts.join("\n")
            }
            Some(_) => return Err(ApiError::invalid("messages", format!("messages[{i}].content must be a string or a list of text parts"))),
        };
        let role = match role {
            "system" | "developer" if i == 0 => {
                system = Some(content);
                continue;
            }
            "system" | "developer" => return Err(ApiError::invalid("messages", format!("messages[{i}]: a system message may only come first"))),
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" | "function" => return Err(ApiError::invalid("messages", format!("messages[{i}]: {role} messages are not supported by this server yet (no function calling)"))),
            other => return Err(ApiError::invalid("messages", format!("messages[{i}]: Invalid role {other:?}; expected system, user or assistant"))),
        };
        messages.push(Message::new(role, content));
    }
    crate::chat_model::check_turns(&messages).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    Ok((system, messages))
}

/// Parameters this server does not implement: refused when set to anything but their "off" value.
fn refuse_unsupported(body: &Map<String, Value>, endpoint: Endpoint) -> Result<(), ApiError> {
    let off = |v: &Value| match v {
        Value::Null | Value::Bool(false) => true,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(_) | Value::Bool(true) => false,
    };
    let mut keys: Vec<(&'static str, &'static str)> = vec![
        ("tools", "function calling is not supported by this server yet"),
        ("functions", "function calling is not supported by this server yet"),
        ("logprobs", "logprobs are not implemented"),
        ("top_logprobs", "logprobs are not implemented"),
        ("logit_bias", "logit_bias is not implemented"),
        ("presence_penalty", "presence_penalty is not implemented; use repetition_penalty"),
        ("frequency_penalty", "frequency_penalty is not implemented; use repetition_penalty"),
    ];
    if endpoint == Endpoint::Completions {
        keys.extend([("echo", "echo is not implemented"), ("suffix", "suffix is not implemented")]);
        if let Some(b) = body.get("best_of").filter(|v| !v.is_null() && v.as_u64() != Some(1)) {
            return Err(ApiError::invalid("best_of", format!("best_of {b} is not implemented (only 1)")));
        }
    }
    for (key, why) in keys {
        if let Some(v) = body.get(key) {
            if !off(v) {
                return Err(ApiError::invalid(key, format!("{key}: {why}")));
            }
        }
    }
    if let Some(v) = body.get("tool_choice") {
        if !(v.is_null() || v.as_str() == Some("none") || v.as_str() == Some("auto")) {
            return Err(ApiError::invalid("tool_choice", "tool_choice: function calling is not supported by this server yet"));
        }
    }
    if let Some(v) = body.get("response_format") {
        if !(v.is_null() || v.get("type").and_then(Value::as_str) == Some("text")) {
            return Err(ApiError::invalid("response_format", "response_format: only {\"type\": \"text\"} is supported"));
        }
    }
    Ok(())
}

fn opt_bool(body: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be true or false"))),
    }
}

fn opt_f64(body: &Map<String, Value>, key: &'static str) -> Result<Option<f64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be a number"))),
    }
}

fn opt_u64(body: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| ApiError::invalid(key, format!("{key} must be a whole number >= 0, got {n}"))),
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be a whole number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(v: Value) -> Result<(Option<String>, Vec<Message>), ApiError> {
        parse_messages(Some(&v))
    }

    #[test]
    fn messages_follow_llamafactory_rules() {
        let (system, m) = msgs(json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}])).unwrap();
        assert_eq!(system.as_deref(), Some("be brief"));
        assert_eq!(m, vec![Message::new(Role::User, "hi")]);
        let bad = [
            (json!([]), "empty"),
            (json!([{"role": "assistant", "content": "x"}]), "expected user"),
            (json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]), "end with a user"),
            (json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]), "expected assistant"),
            (json!([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]), "only come first"),
            (json!([{"role": "wizard", "content": "a"}]), "Invalid role"),
            (json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "text-only"),
            (json!([{"role": "user", "content": 3}]), "content must be"),
        ];
        for (v, want) in bad {
            let e = msgs(v.clone()).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(want), "{v}: {}", e.message);
        }
    }

    #[test]
    fn unsupported_parameters_are_refused_only_when_on() {
        let ok = json!({"presence_penalty": 0, "logprobs": false, "tools": [], "tool_choice": "auto", "response_format": {"type": "text"}});
        refuse_unsupported(ok.as_object().unwrap(), Endpoint::Chat).unwrap();
        for (key, v) in [("presence_penalty", json!(0.5)), ("logprobs", json!(true)), ("tools", json!([{"type": "function"}])), ("logit_bias", json!({"1": 2}))] {
            let e = refuse_unsupported(json!({key: v}).as_object().unwrap(), Endpoint::Chat).unwrap_err();
            assert_eq!(e.param, Some(key));
        }
        let e = refuse_unsupported(json!({"echo": true}).as_object().unwrap(), Endpoint::Completions).unwrap_err();
        assert_eq!(e.param, Some("echo"));
    }
}
