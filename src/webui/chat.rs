//! The Chat tab: load a model (with the top bar's adapters) into the page's server, chat with streamed answers,
//! unload it. The model runs in this process on the batched engine `ferrotune chat` / `api` use
//! (`ChatModel` + `EngineHandle`), as LLaMA-Factory's `WebChatModel` runs in the WebUI's process.

use crate::chat_model::{ChatModel, Overrides};
use crate::engine_thread::{EngineHandle, Update};
use crate::http::{Conn, Response};
use ferrotune_data::{Message, Role};
use serde_json::{json, Value as Json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Loaded {
    chat: Arc<ChatModel>,
    engine: EngineHandle,
}

#[derive(Default)]
pub struct ChatTab {
    loaded: Mutex<Option<Arc<Loaded>>>,
}

impl ChatTab {
    fn current(&self) -> Option<Arc<Loaded>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `args`: `[[key, value], ...]` LLaMA-Factory inference arguments (model_name_or_path, adapter_name_or_path,
    /// template, finetuning_type, ...), passed as `--key=value` flags (llamafactory-cli without a config file) and
    /// checked as `ferrotune chat` checks its own.
    pub fn load(&self, body: &Json) -> Result<Json, String> {
        let args = super::infer_flags(body)?;
        let parsed = ferrotune_args::parse_infer_args(&args).map_err(|e| e.to_string())?;
        let chat = Arc::new(ChatModel::from_infer_args(&parsed).map_err(|e| e.to_string())?);
        let engine = EngineHandle::start(chat.clone(), 1, 4).map_err(|e| e.to_string())?;
        let summary = chat.summary();
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Loaded { chat, engine }));
        Ok(json!({ "loaded": true, "summary": summary }))
    }

    pub fn unload(&self) -> Result<Json, String> {
        match self.loaded.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(_) => Ok(json!({ "loaded": false })),
            None => Err("no model is loaded".into()),
        }
    }

    /// Streams one answer as server-sent events: `{"text": ...}` pieces, then `{"done": finish_reason}` or
    /// `{"error": ...}`.
    pub fn answer(&self, body: &Json, conn: &mut Conn) {
        let fail = |conn: &mut Conn, m: String| {
            let _ = conn.send(&Response::json(400, &json!({ "error": { "message": m } })));
        };
        let Some(loaded) = self.current() else { return fail(conn, "load a model first (Load model)".into()) };
        let mut messages = Vec::new();
        for m in body.get("messages").and_then(Json::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            let content = m.get("content").and_then(Json::as_str).unwrap_or("").to_string();
            let role = match m.get("role").and_then(Json::as_str) {
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                other => return fail(conn, format!("message roles are user or assistant, found {other:?}")),
            };
            messages.push(Message::new(role, content));
        }
        if let Err(e) = crate::chat_model::check_turns(&messages) {
            return fail(conn, e.to_string());
        }
        let system = body.get("system").and_then(Json::as_str).filter(|s| !s.trim().is_empty());
        let overrides = Overrides {
            temperature: body.get("temperature").and_then(Json::as_f64),
            top_p: body.get("top_p").and_then(Json::as_f64),
            max_new_tokens: body.get("max_new_tokens").and_then(Json::as_u64).map(|n| n as usize),
            ..Overrides::default()
        };
        let prompt = match loaded.chat.encode_prompt(&messages, system) {
            Ok(p) => p,
            Err(e) => return fail(conn, e.to_string()),
        };
        let config = match loaded.chat.generation_config(prompt.len(), &overrides) {
            Ok(c) => c,
            Err(e) => return fail(conn, e.to_string()),
        };
        let ticket = match loaded.engine.submit(vec![(prompt, config)]) {
            Ok(mut t) => t.remove(0),
            Err(busy) => return fail(conn, format!("the model is busy ({} answers in flight); try again", busy.in_flight)),
        };
        let Ok(mut events) = conn.start_events() else {
            loaded.engine.cancel(ticket.id);
            return;
        };
        loop {
            let event = match ticket.updates.recv_timeout(Duration::from_millis(500)) {
                Ok(Update::Text(text)) => json!({ "text": text }),
                Ok(Update::Done(g)) => {
                    let _ = events.data(&json!({ "done": g.finish_reason.as_str() }).to_string());
                    return;
                }
                Ok(Update::Failed(m)) => {
                    let _ = events.data(&json!({ "error": m }).to_string());
                    return;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if events.client_gone() {
                        loaded.engine.cancel(ticket.id);
                        return;
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = events.data(&json!({ "error": "the generation engine stopped; load the model again" }).to_string());
                    return;
                }
            };
            if events.data(&event.to_string()).is_err() {
                loaded.engine.cancel(ticket.id);
                return;
            }
        }
    }
}
