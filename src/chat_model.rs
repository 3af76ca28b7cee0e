//! What `chat` and `api` (and later the WebUI and `do_predict`) generate with, built from LLaMA-Factory's
//! argument groups: the model on the inference engine (LoRA adapters merged), its tokenizer, the chat template
//! with its stop tokens, and the generating arguments (LLaMA-Factory's `ChatModel` / `HuggingfaceEngine`).
//!
//! - Prompts are what LLaMA-Factory's engine feeds the model: `template.encode_oneturn` of the messages plus an
//!   empty assistant turn, with the system text (or the template's default, which `default_system` replaces).
//! - Generation stops on the tokenizer's eos or any of the template's stop words (`get_stop_token_ids`).
//! - Per-request values (the API's `temperature`, `max_tokens`, ...) override the generating arguments with
//!   `_process_args`' rules: a temperature of 0 means greedy, and `max_new_tokens` (when > 0) wins over
//!   `max_length` (prompt + answer).

use ferrotune_args::{DataArguments, FinetuningArguments, GeneratingArguments, InferArgs, ModelArguments, Stage};
use ferrotune_data::{Message, Role, Template};
use ferrotune_infer::{GenerationConfig, InferenceModel, KvCache, SamplingParams, WeightFormat};
use ferrotune_models::gguf::dequant::GgmlType;
use ferrotune_models::{bail, load_model, Context, LlamaModel, LoadOptions, ModelTokenizer, Result, WeightDType};
use ferrotune_train::adapters::{self, AdapterMode};
use std::path::{Path, PathBuf};

/// Longest sequence (prompt + answer) one KV cache holds, when the model allows more. The cache is allocated
/// zeroed, so the operating system commits its pages only as positions fill; the cap only bounds the address
/// space a long-context model would reserve per sequence.
pub const MAX_CONTEXT: usize = 8192;

/// A model ready to chat.
pub struct ChatModel {
    pub model: InferenceModel,
    pub tokenizer: ModelTokenizer,
    pub template: Template,
    pub generating: GeneratingArguments,
    /// Positions one sequence's KV cache holds (prompt + answer).
    pub context_len: usize,
    /// Token ids that end an answer: the tokenizer's eos and the template's stop words.
    pub stop_token_ids: Vec<u32>,
    /// What was loaded, for logs: `model_name_or_path` and any adapters.
    pub description: String,
}

/// Per-request decoding values; `None` keeps the generating arguments' value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f64>,
    /// Ignored when 0 (LLaMA-Factory tests it for truth).
    pub max_new_tokens: Option<usize>,
    /// Several answers to one prompt: sampling is forced on (temperature 0 becomes 1), as LLaMA-Factory does.
    pub num_return_sequences: usize,
    /// Generation ends before the first of these strings (OpenAI's `stop`).
    pub stop: Vec<String>,
    pub seed: Option<u64>,
}

impl ChatModel {
    pub fn from_infer_args(a: &InferArgs) -> Result<ChatModel> {
        ChatModel::load(&a.model, &a.data, &a.finetuning, &a.generating)
    }

    /// Load the model, merge `adapter_name_or_path`, and set up the template, as `ChatModel(args)` does.
    pub fn load(m: &ModelArguments, d: &DataArguments, f: &FinetuningArguments, g: &GeneratingArguments) -> Result<ChatModel> {
        if f.stage != Stage::Sft {
            bail!("chat and api generate with `stage: sft` (LLaMA-Factory's generating engine); got stage {}", f.stage.as_str());
        }
        let Some(name) = m.model_name_or_path.clone() else {
            bail!("model_name_or_path is required: an HF folder, a .gguf file or a hub id (org/name)")
        };
        let adapter_dirs = crate::model_source::adapter_dirs(m);
        let hub = crate::model_source::hub_options(m);

        let path = Path::new(&name);
        let gguf = path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        let format = weight_format(&m.infer_dtype, path, gguf, !adapter_dirs.is_empty())?;
        let (model, tokenizer) = if gguf && adapter_dirs.is_empty() {
            // Keep the file's quantized blocks: no f32 copy of the model is ever made.
            let meta = ferrotune_models::gguf::inspect(path)?;
            let tokenizer = ferrotune_models::gguf::tokenizer::model_tokenizer(&meta).with_context(|| name.clone())?;
            (InferenceModel::from_gguf(path, format)?, tokenizer)
        } else {
            let dtype = if format == WeightFormat::BF16 && adapter_dirs.is_empty() { WeightDType::BF16 } else { WeightDType::F32 };
            let loaded = load_model(&name, &LoadOptions { dtype }, &hub)?;
            let Some(tokenizer) = loaded.tokenizer else {
                bail!("{}: no tokenizer (tokenizer.json) next to the model; chat needs one", loaded.source.display())
            };
            let model = if adapter_dirs.is_empty() {
                InferenceModel::from_weights(loaded.config, loaded.weights, format)?
            } else {
                // PEFT's merge_and_unload: every adapter folded into the base weights, in order.
                let mut llama = LlamaModel::from_weights(loaded.config, loaded.weights)?;
                for dir in &adapter_dirs {
                    adapters::load_adapter(&mut llama, dir, AdapterMode::Merge)?;
                }
                InferenceModel::from_llama(&llama, format)?
            };
            (model, tokenizer)
        };
        ChatModel::new(model, tokenizer, d, g.clone(), describe(&name, &adapter_dirs))
    }

    /// Wrap a loaded model: template from `d` (the named one, else the tokenizer's chat_template, else `empty`).
    pub fn new(model: InferenceModel, mut tokenizer: ModelTokenizer, d: &DataArguments, generating: GeneratingArguments, description: String) -> Result<ChatModel> {
        let template = crate::model_source::template_for(d, &mut tokenizer)?;
        let stop_token_ids = template.stop_token_ids(&tokenizer);
        let context_len = model.max_positions().min(MAX_CONTEXT);
        Ok(ChatModel { model, tokenizer, template, generating, context_len, stop_token_ids, description })
    }

    /// A KV cache for one conversation.
    pub fn new_cache(&self) -> Result<KvCache> {
        self.model.new_cache(self.context_len)
    }

    /// The prompt ids for `messages` (user, assistant, ..., user): `encode_oneturn` of the messages plus an
    /// empty assistant turn. `system` empty or `None` means the template's default system prompt.
    pub fn encode_prompt(&self, messages: &[Message], system: Option<&str>) -> Result<Vec<u32>> {
        check_turns(messages)?;
        let mut paired = messages.to_vec();
        paired.push(Message::new(Role::Assistant, ""));
        let (prompt, _) = self.template.encode_oneturn(&self.tokenizer, &paired, system.unwrap_or(""), "")?;
        if prompt.len() > self.context_len {
            bail!(
                "the conversation is {} tokens but a sequence holds at most {} (the model's context, capped at {MAX_CONTEXT}); shorten it",
                prompt.len(),
                self.context_len
            );
        }
        Ok(prompt)
    }

    /// The generation settings for a prompt of `prompt_len` tokens: the generating arguments with `o` on top.
    pub fn generation_config(&self, prompt_len: usize, o: &Overrides) -> Result<GenerationConfig> {
        let g = &self.generating;
        let mut do_sample = o.do_sample.unwrap_or(g.do_sample);
        let mut temperature = o.temperature.unwrap_or(g.temperature);
        if o.num_return_sequences > 1 {
            do_sample = true;
            if temperature == 0.0 {
                temperature = 1.0;
            }
        }
        if temperature == 0.0 {
            do_sample = false;
        }
        let top_k = match o.top_k {
            Some(k) => k,
            None => usize::try_from(g.top_k).map_err(|_| ferrotune_models::Error::msg(format!("top_k must be >= 0, got {}", g.top_k)))?,
        };
        let sampling = SamplingParams {
            do_sample,
            temperature: if do_sample { temperature as f32 } else { 1.0 },
            top_p: if do_sample { o.top_p.unwrap_or(g.top_p) as f32 } else { 1.0 },
            top_k,
            repetition_penalty: o.repetition_penalty.unwrap_or(g.repetition_penalty) as f32,
            seed: o.seed.unwrap_or_else(fresh_seed),
        };
        sampling.validate()?;
        // GeneratingArguments.to_dict: max_new_tokens when > 0, else max_length (prompt included).
        let max_new_tokens = match o.max_new_tokens.filter(|&n| n > 0) {
            Some(n) => n,
            None if g.max_new_tokens > 0 => g.max_new_tokens as usize,
            None => {
                let total = usize::try_from(g.max_length).unwrap_or(0);
                if total <= prompt_len {
                    bail!(
                        "the prompt has {prompt_len} tokens but max_length is {}: raise max_length or set max_new_tokens",
                        g.max_length
                    );
                }
                total - prompt_len
            }
        };
        Ok(GenerationConfig {
            max_new_tokens,
            sampling,
            eos_token_ids: self.stop_token_ids.clone(),
            stop_strings: o.stop.clone(),
            skip_special_tokens: g.skip_special_tokens,
        })
    }

    /// A line for the logs: what runs, in what format, and what the KV cache costs.
    pub fn summary(&self) -> String {
        let c = self.model.config();
        let per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4;
        format!(
            "{}: {} weights {:.1} MB, template {}, KV cache {:.1} MB per 1k tokens (up to {} tokens per sequence)",
            self.description,
            self.model.format().name(),
            self.model.nbytes() as f64 / 1e6,
            self.template.name,
            per_token as f64 * 1000.0 / 1e6,
            self.context_len
        )
    }
}

/// Messages must be user, assistant, user, ... and end with the user's turn (LLaMA-Factory's
/// "Only supports u/a/u/a/u..."); user turns may also be tool results (observation) and assistant turns
/// function calls.
pub fn check_turns(messages: &[Message]) -> Result<()> {
    if messages.is_empty() {
        bail!("no messages: the conversation must hold at least one user message");
    }
    for (i, m) in messages.iter().enumerate() {
        let ok = if i % 2 == 0 { matches!(m.role, Role::User | Role::Observation) } else { matches!(m.role, Role::Assistant | Role::Function) };
        if !ok {
            let want = if i % 2 == 0 { "user (or tool)" } else { "assistant" };
            bail!("message {i} has role {}, expected {want}: turns must go user, assistant, user, ...", m.role.as_str());
        }
    }
    if messages.len().is_multiple_of(2) {
        bail!("the last message is the assistant's; the conversation must end with a user message");
    }
    Ok(())
}

/// `infer_dtype` to the engine's weight format. `auto` keeps what the weights are stored as: a GGUF file's own
/// Q8_0 / Q4_1 blocks (other block types run as Q8_0, f16/bf16 files as bf16), an HF folder saved in
/// bfloat16/float16 as bf16, anything else f32. Merged adapters change every targeted weight, so a quantized
/// base with adapters runs as Q8_0 (re-quantizing the merged weights to 4 bits would blur the adapter's delta).
fn weight_format(infer_dtype: &str, path: &Path, gguf: bool, merging: bool) -> Result<WeightFormat> {
    Ok(match infer_dtype {
        "float32" => WeightFormat::F32,
        "bfloat16" => WeightFormat::BF16,
        "float16" => bail!("infer_dtype float16: the inference engine computes in f32 from f32, bf16 or quantized weights; use bfloat16 or float32"),
        "auto" if gguf => {
            let meta = ferrotune_models::gguf::inspect(path)?;
            // The type most matrix elements are stored in (1-D norms are always f32).
            let mut counts: Vec<(GgmlType, usize)> = Vec::new();
            for t in meta.tensors.iter().filter(|t| t.shape.len() == 2) {
                let n: usize = t.shape.iter().product();
                match counts.iter_mut().find(|(k, _)| *k == t.ggml_type) {
                    Some((_, c)) => *c += n,
                    None => counts.push((t.ggml_type, n)),
                }
            }
            match counts.iter().max_by_key(|(_, n)| *n).map(|(k, _)| *k) {
                Some(GgmlType::F32) | Some(GgmlType::F64) | None => WeightFormat::F32,
                Some(GgmlType::F16) | Some(GgmlType::BF16) => WeightFormat::BF16,
                Some(GgmlType::Q4_1) if !merging => WeightFormat::Q4_1,
                Some(_) => WeightFormat::Q8_0,
            }
        }
        "auto" => {
            let stored = std::fs::read_to_string(path.join("config.json"))
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|c| c.get("torch_dtype").or_else(|| c.get("dtype")).and_then(|v| v.as_str()).map(String::from));
            match stored.as_deref() {
                Some("bfloat16") | Some("float16") => WeightFormat::BF16,
                _ => WeightFormat::F32,
            }
        }
        other => bail!("infer_dtype {other:?}: expected auto, bfloat16 or float32"),
    })
}

fn describe(name: &str, adapters: &[PathBuf]) -> String {
    if adapters.is_empty() {
        return name.to_string();
    }
    let list: Vec<String> = adapters.iter().map(|p| p.display().to_string()).collect();
    format!("{name} + adapter {}", list.join(", "))
}

/// A seed for a request that gave none: the clock mixed with a counter, so concurrent requests differ.
pub fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    ferrotune_tensor::rng::mix64(nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32))
}
