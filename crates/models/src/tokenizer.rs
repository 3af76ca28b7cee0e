//! `ModelTokenizer`: a `tokenizers::Tokenizer` plus what LLaMA-Factory and generation read next to it
//! (special tokens, `chat_template`), whether it came from `tokenizer.json` + `tokenizer_config.json` or was
//! rebuilt from GGUF metadata (`gguf::tokenizer`).

use crate::{bail, Context, Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// A loaded tokenizer and its chat metadata.
#[derive(Clone)]
pub struct ModelTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    /// `bos_token` / `eos_token` / `pad_token` / `unk_token` as strings (tokenizer_config.json spelling).
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    /// The Jinja chat template, when the model ships one.
    pub chat_template: Option<String>,
    /// `add_bos_token` / `add_eos_token` when the tokenizer config states them.
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    /// `model_max_length` from tokenizer_config.json.
    pub model_max_length: Option<usize>,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("pad_token", &self.pad_token)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// The named special-token slots of transformers' `SPECIAL_TOKENS_ATTRIBUTES`, in its order.
const SPECIAL_TOKEN_KEYS: [&str; 7] = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

impl ModelTokenizer {
    /// Load an HF tokenizer folder the way transformers 5 `AutoTokenizer.from_pretrained` does for a
    /// `tokenizer.json` (the "tokenizers" backend):
    /// - `tokenizer.json` is the pipeline; `add_bos_token` / `add_eos_token` are recorded but, as in transformers 5
    ///   when a `tokenizer.json` exists, do not change it (its post-processor decides what `encode` adds).
    /// - `tokenizer_config.json` (optional) names the special tokens (strings or `{"content": ...}` objects),
    ///   `chat_template` (a string, or a list of `{name, template}` where "default" is used), `model_max_length`;
    ///   `special_tokens_map.json` fills special tokens the config lacks; `chat_template.jinja` (what transformers 5
    ///   writes) takes priority over the config's template.
    /// - Named special tokens are registered as special added tokens, as transformers' `_post_init` does, so their
    ///   text in the input encodes to their id.
    pub fn from_folder(dir: &Path) -> Result<ModelTokenizer> {
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            let hint = if dir.join("tokenizer.model").is_file() {
                " (only a SentencePiece tokenizer.model is present: save the tokenizer once with transformers \
                 `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)` to get tokenizer.json)"
            } else {
                ""
            };
            bail!("{}: no tokenizer.json{hint}", dir.display());
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::msg(format!("{}: cannot load tokenizer: {e}", tokenizer_path.display())))?;
        let config = read_optional_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let special_map = read_optional_json(&dir.join("special_tokens_map.json"))?.unwrap_or_default();
        let config_name = dir.join("tokenizer_config.json").display().to_string();
        let map_name = dir.join("special_tokens_map.json").display().to_string();

        let special = |key: &str| -> Result<Option<String>> {
            match special_token(&config, key).with_context(|| format!("{config_name}: key {key:?}"))? {
                Some(t) => Ok(Some(t)),
                None => special_token(&special_map, key).with_context(|| format!("{map_name}: key {key:?}")),
            }
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(v) => bail!("{config_name}: key {key:?} must be true or false, got {v}"),
            }
        };
        let mut chat_template = chat_template_from_config(&config).with_context(|| config_name.clone())?;
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            chat_template =
                Some(std::fs::read_to_string(&jinja).with_context(|| format!("cannot read {}", jinja.display()))?);
        }
        // transformers writes 1e30-ish sentinels ("no limit") here; anything that is not a usable integer is no limit.
        let model_max_length = config.get("model_max_length").and_then(Value::as_u64).and_then(|n| usize::try_from(n).ok());

        let mut loaded = ModelTokenizer {
            tokenizer,
            bos_token: special("bos_token")?,
            eos_token: special("eos_token")?,
            pad_token: special("pad_token")?,
            unk_token: special("unk_token")?,
            chat_template,
            add_bos_token: flag("add_bos_token")?,
            add_eos_token: flag("add_eos_token")?,
            model_max_length,
        };
        let mut named = Vec::new();
        for key in SPECIAL_TOKEN_KEYS {
            named.extend(special(key)?);
        }
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            for source in [&config, &special_map] {
                if let Some(Value::Array(items)) = source.get(key) {
                    for item in items {
                        named.extend(token_content(item));
                    }
                }
            }
        }
        let added: Vec<tokenizers::AddedToken> =
            named.into_iter().filter(|t| !t.is_empty()).map(|t| tokenizers::AddedToken::from(t, true)).collect();
        loaded.tokenizer.add_special_tokens(&added);
        Ok(loaded)
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (BOS/EOS as configured).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| Error::msg(format!("cannot tokenize {:?}: {e}", abbreviate(text))))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special_tokens` drops special tokens as transformers' `decode` does. Ids past the
    /// vocabulary decode to nothing, as in transformers 5.6 (`decode([28, 49300, 29])` of SmolLM2's 49152-token
    /// tokenizer is `",-"`): models often have more embedding rows than tokens (Qwen2.5: 151936 vs 151665), and a
    /// sampled padding row must not end a generation with an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let vocab = self.vocab_size();
        let known: Vec<u32> = ids.iter().copied().filter(|&id| (id as usize) < vocab).collect();
        self.tokenizer.decode(&known, skip_special_tokens).map_err(|e| Error::msg(format!("cannot decode ids: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// Vocabulary size including added tokens (what the embedding must cover).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// The `tokenizer_config.json` transformers needs next to our `tokenizer.json`: the special tokens, flags,
    /// `model_max_length` and `chat_template` (in the config, which transformers 4.x and 5.x both read).
    pub fn hf_config_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("tokenizer_class".into(), Value::from("PreTrainedTokenizerFast"));
        for (key, token) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("pad_token", &self.pad_token),
            ("unk_token", &self.unk_token),
        ] {
            m.insert(key.into(), token.as_deref().map_or(Value::Null, Value::from));
        }
        // Stating these flags makes transformers 4.x rebuild the post-processor; write them only when known.
        if let Some(b) = self.add_bos_token {
            m.insert("add_bos_token".into(), Value::from(b));
        }
        if let Some(b) = self.add_eos_token {
            m.insert("add_eos_token".into(), Value::from(b));
        }
        if let Some(n) = self.model_max_length {
            m.insert("model_max_length".into(), Value::from(n));
        }
        // Our decode never applies transformers' punctuation clean-up, so say so for an identical round trip.
        m.insert("clean_up_tokenization_spaces".into(), Value::from(false));
        if let Some(t) = &self.chat_template {
            m.insert("chat_template".into(), Value::from(t.as_str()));
        }
        Value::Object(m)
    }

    /// Write `tokenizer.json` and `tokenizer_config.json` into `dir` (atomically, each).
    pub fn save_to_folder(&self, dir: &Path) -> Result<()> {
        let json = self.tokenizer.to_string(false).map_err(|e| Error::msg(format!("cannot serialise the tokenizer: {e}")))?;
        let path = dir.join("tokenizer.json");
        crate::safetensors::write_atomically(&path, |out| out.write_all(json.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        let config = serde_json::to_string_pretty(&self.hf_config_json()).map_err(|e| Error::msg(e.to_string()))? + "\n";
        let path = dir.join("tokenizer_config.json");
        crate::safetensors::write_atomically(&path, |out| out.write_all(config.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// A JSON object file that may be absent; present but malformed is an error naming it.
fn read_optional_json(path: &Path) -> Result<Option<Map<String, Value>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => bail!("{}: expected a JSON object", path.display()),
        Err(e) => bail!("{} is not valid JSON: {e}", path.display()),
    }
}

/// A token written as a string or as an AddedToken object `{"content": ..., ...}`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn special_token(source: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match source.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match token_content(v) {
            Some(t) => Ok(Some(t)),
            None => bail!("must be a string or an object with \"content\", got {v}"),
        },
    }
}

/// `chat_template` as a string, or the "default" entry of a `[{name, template}]` list (else the first entry,
/// which is what a single-template list means).
fn chat_template_from_config(config: &Map<String, Value>) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => {
            let mut named = Vec::with_capacity(items.len());
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some(n), Some(t)) => named.push((n, t)),
                    _ => bail!("key \"chat_template\": list entries must be {{\"name\": ..., \"template\": ...}}, got {item}"),
                }
            }
            Ok(named.iter().find(|(n, _)| *n == "default").or(named.first()).map(|(_, t)| t.to_string()))
        }
        Some(v) => bail!("key \"chat_template\" must be a string or a list of {{name, template}}, got {v}"),
    }
}

fn abbreviate(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if text.chars().nth(40).is_some() {
        s.push('…');
    }
    s
}
