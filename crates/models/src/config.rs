//! The model configuration: what ferrotune needs to build a Llama-family model, read from an HF `config.json`
//! (transformers 4.x and 5.x spellings) or from GGUF metadata (`gguf::config`), and written back as a
//! `config.json` that transformers loads.
//!
//! Defaults are the HF `*Config` class defaults of transformers 5.6 for each `model_type`, so a config.json that
//! omits a key means what it means to transformers.

use crate::{bail, Context, Error, Result};
use ferrotune_tensor::ops::rope::RopeScaling;
use serde_json::{json, Map, Value};
use std::path::Path;

/// The model families ferrotune implements. All are the Llama decoder (RMSNorm, RoPE half-split, GQA, SwiGLU);
/// they differ in biases and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 1/2/3.x, SmolLM/SmolLM2, TinyLlama, ...).
    Llama,
    /// `Qwen2ForCausalLM` (Qwen2, Qwen2.5): bias on q/k/v projections.
    Qwen2,
    /// `MistralForCausalLM`: Llama with a sliding attention window.
    Mistral,
}

/// `(architectures[0], model_type, Architecture)` for everything ferrotune accepts.
const SUPPORTED: &[(&str, &str, Architecture)] = &[
    ("LlamaForCausalLM", "llama", Architecture::Llama),
    ("Qwen2ForCausalLM", "qwen2", Architecture::Qwen2),
    ("MistralForCausalLM", "mistral", Architecture::Mistral),
];

impl Architecture {
    /// The HF class name written to `architectures`.
    pub fn hf_class(self) -> &'static str {
        SUPPORTED.iter().find(|s| s.2 == self).map(|s| s.0).unwrap_or("LlamaForCausalLM")
    }
    /// The HF `model_type`.
    pub fn model_type(self) -> &'static str {
        SUPPORTED.iter().find(|s| s.2 == self).map(|s| s.1).unwrap_or("llama")
    }
    /// Look up by `architectures[0]` or `model_type`; the error lists what is supported.
    pub fn from_hf_name(name: &str) -> Result<Architecture> {
        SUPPORTED
            .iter()
            .find(|s| s.0 == name || s.1 == name)
            .map(|s| s.2)
            .ok_or_else(|| Error::msg(format!("unsupported architecture {name:?}; ferrotune supports {}", supported_list())))
    }
}

fn supported_list() -> String {
    SUPPORTED.iter().map(|s| format!("{} (model_type {:?})", s.0, s.1)).collect::<Vec<_>>().join(", ")
}

/// Everything the model code reads. Field names follow HF.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o (Llama `attention_bias`); Qwen2 has q/k/v bias only, see [`ModelConfig::qkv_bias`].
    pub attention_bias: bool,
    /// Bias on gate/up/down (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Mistral's attention window; sequences longer than this are rejected by the model, not silently wrong.
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// `torch_dtype` / `dtype` as written in the file ("float32", "bfloat16", ...), kept for round trips.
    pub torch_dtype: Option<String>,
}

impl ModelConfig {
    /// q/k/v projections carry a bias.
    pub fn qkv_bias(&self) -> bool {
        self.architecture == Architecture::Qwen2 || self.attention_bias
    }
    /// o_proj carries a bias.
    pub fn o_bias(&self) -> bool {
        self.architecture != Architecture::Qwen2 && self.attention_bias
    }

    /// Read `config.json`; errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON (fix or re-download the file)", path.display()))?;
        ModelConfig::from_hf_json(&value).with_context(|| format!("{}", path.display()))
    }

    /// Parse an HF config object (transformers 4.x `rope_theta` + `rope_scaling`, or 5.x `rope_parameters`).
    pub fn from_hf_json(v: &Value) -> Result<ModelConfig> {
        let obj = v.as_object().ok_or_else(|| Error::msg("config.json must be a JSON object"))?;
        let arch_name = match obj.get("architectures").and_then(|a| a.as_array()).and_then(|a| a.first()) {
            Some(Value::String(s)) => s.clone(),
            Some(_) => bail!("key \"architectures\" must be a list of strings"),
            None => match obj.get("model_type") {
                Some(Value::String(s)) => s.clone(),
                _ => bail!("neither \"architectures\" nor \"model_type\" is set; ferrotune supports {}", supported_list()),
            },
        };
        let architecture = Architecture::from_hf_name(&arch_name)?;
        // HF class defaults per family (transformers 5.6 LlamaConfig / Qwen2Config / MistralConfig).
        let (d_vocab, d_hidden, d_inter, d_layers, d_heads, d_maxpos, d_eps) = match architecture {
            Architecture::Llama => (32000, 4096, 11008, 32, 32, 2048, 1e-6),
            Architecture::Qwen2 => (151936, 4096, 22016, 32, 32, 32768, 1e-6),
            Architecture::Mistral => (32000, 4096, 14336, 32, 32, 4096 * 32, 1e-6),
        };
        let vocab_size = get_usize(obj, "vocab_size", d_vocab)?;
        let hidden_size = get_usize(obj, "hidden_size", d_hidden)?;
        let intermediate_size = get_usize(obj, "intermediate_size", d_inter)?;
        let num_hidden_layers = get_usize(obj, "num_hidden_layers", d_layers)?;
        let num_attention_heads = get_usize(obj, "num_attention_heads", d_heads)?;
        let d_kv = match architecture {
            Architecture::Mistral => 8,
            _ => num_attention_heads,
        };
        let num_key_value_heads = get_opt_usize(obj, "num_key_value_heads")?.unwrap_or(d_kv);
        if num_attention_heads == 0 || hidden_size == 0 || num_key_value_heads == 0 {
            bail!("hidden_size, num_attention_heads and num_key_value_heads must be > 0");
        }
        let head_dim = get_opt_usize(obj, "head_dim")?.unwrap_or(hidden_size / num_attention_heads);
        let max_position_embeddings = get_usize(obj, "max_position_embeddings", d_maxpos)?;
        let rms_norm_eps = get_f64(obj, "rms_norm_eps", d_eps)?;
        if let Some(act) = obj.get("hidden_act") {
            if act.as_str() != Some("silu") {
                bail!("key \"hidden_act\" is {act}; ferrotune's Llama-family MLP is SwiGLU and needs \"silu\"");
            }
        }
        let tie_word_embeddings = get_bool(obj, "tie_word_embeddings", false)?;
        let attention_bias = get_bool(obj, "attention_bias", false)?;
        let mlp_bias = get_bool(obj, "mlp_bias", false)?;
        let sliding_window = match architecture {
            Architecture::Mistral => get_opt_usize(obj, "sliding_window")?,
            Architecture::Qwen2 if get_bool(obj, "use_sliding_window", false)? => bail!(
                "key \"use_sliding_window\" is true: Qwen2 sliding-window attention is not supported; set it to false \
                 (Qwen2/2.5 checkpoints ship with false)"
            ),
            _ => None,
        };
        let (rope_theta, rope_scaling) = parse_rope(obj, max_position_embeddings)?;
        let config = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings,
            attention_bias,
            mlp_bias,
            sliding_window,
            bos_token_id: get_opt_token(obj, "bos_token_id")?,
            eos_token_ids: get_token_list(obj, "eos_token_id")?,
            pad_token_id: get_opt_token(obj, "pad_token_id")?,
            torch_dtype: obj.get("torch_dtype").or(obj.get("dtype")).and_then(|d| d.as_str()).map(str::to_string),
        };
        config.validate()?;
        Ok(config)
    }

    /// Shape rules every family shares; a config that breaks them cannot be run.
    pub fn validate(&self) -> Result<()> {
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            bail!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({}) for grouped-query attention",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            bail!("head_dim must be even and > 0 for rotary embeddings, got {}", self.head_dim);
        }
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                bail!("{key} must be > 0");
            }
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            bail!("rms_norm_eps must be finite and > 0, got {}", self.rms_norm_eps);
        }
        // Parameter counts past 2^40 are not a model this machine can hold; refuse before any allocation.
        let per_layer = self.hidden_size as u128 * (self.head_dim as u128 * (self.num_attention_heads + 2 * self.num_key_value_heads) as u128)
            + self.hidden_size as u128 * self.intermediate_size as u128 * 3;
        let total = per_layer * self.num_hidden_layers as u128 + self.vocab_size as u128 * self.hidden_size as u128 * 2;
        if total > 1u128 << 40 {
            bail!("config describes {total} parameters, far beyond anything loadable; check the sizes in config.json");
        }
        Ok(())
    }

    /// Apply LLaMA-Factory's `rope_scaling` argument (`model_args.rope_scaling`, `model/model_utils/rope.py`).
    ///
    /// Training (`is_trainable`): nothing changes unless `cutoff_len` exceeds the current
    /// `max_position_embeddings`; then `factor = ceil(cutoff_len / max_position_embeddings)`. Inference: factor 2.
    /// `max_position_embeddings` is multiplied by the factor, as upstream does.
    pub fn apply_user_rope_scaling(&mut self, kind: &str, cutoff_len: usize, is_trainable: bool) -> Result<()> {
        let original = self.max_position_embeddings;
        let factor = if is_trainable {
            if cutoff_len <= original {
                return Ok(());
            }
            cutoff_len.div_ceil(original) as f64
        } else {
            2.0
        };
        let scaled_max = (original as f64 * factor) as usize;
        self.rope_scaling = match kind {
            "linear" => RopeScaling::Linear { factor },
            // HF 5.6 dynamic NTK reads config.max_position_embeddings, which LLaMA-Factory has just multiplied.
            "dynamic" => RopeScaling::Dynamic { factor, original_max_position_embeddings: scaled_max },
            "yarn" => RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast: 32.0,
                beta_slow: 1.0,
                mscale: None,
                mscale_all_dim: None,
                attention_factor: None,
            },
            "llama3" => RopeScaling::Llama3 {
                factor,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: original,
            },
            other => bail!("rope_scaling {other:?} is not one of linear, dynamic, yarn, llama3"),
        };
        self.max_position_embeddings = scaled_max;
        Ok(())
    }

    /// Number of parameters (embeddings counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.qkv_bias() {
            attn += q + 2 * kv;
        }
        if self.o_bias() {
            attn += h;
        }
        let mut mlp = 3 * h * self.intermediate_size;
        if self.mlp_bias {
            mlp += 2 * self.intermediate_size + h;
        }
        let layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        self.num_hidden_layers * layer + embed + head + h
    }

    /// A `config.json` transformers 5.6 loads (and 4.x, which reads `rope_theta` / `rope_scaling`).
    pub fn to_hf_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("architectures".into(), json!([self.architecture.hf_class()]));
        m.insert("model_type".into(), json!(self.architecture.model_type()));
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        m.insert("intermediate_size".into(), json!(self.intermediate_size));
        m.insert("num_hidden_layers".into(), json!(self.num_hidden_layers));
        m.insert("num_attention_heads".into(), json!(self.num_attention_heads));
        m.insert("num_key_value_heads".into(), json!(self.num_key_value_heads));
        m.insert("head_dim".into(), json!(self.head_dim));
        m.insert("hidden_act".into(), json!("silu"));
        m.insert("max_position_embeddings".into(), json!(self.max_position_embeddings));
        m.insert("rms_norm_eps".into(), json!(self.rms_norm_eps));
        m.insert("rope_theta".into(), json!(self.rope_theta));
        m.insert("rope_scaling".into(), rope_scaling_json(&self.rope_scaling));
        m.insert("tie_word_embeddings".into(), json!(self.tie_word_embeddings));
        match self.architecture {
            Architecture::Llama => {
                m.insert("attention_bias".into(), json!(self.attention_bias));
                m.insert("mlp_bias".into(), json!(self.mlp_bias));
            }
            Architecture::Qwen2 => {
                m.insert("use_sliding_window".into(), json!(false));
            }
            Architecture::Mistral => {
                m.insert("sliding_window".into(), json!(self.sliding_window));
            }
        }
        m.insert("bos_token_id".into(), json!(self.bos_token_id));
        m.insert(
            "eos_token_id".into(),
            match self.eos_token_ids.as_slice() {
                [] => Value::Null,
                [one] => json!(one),
                many => json!(many),
            },
        );
        m.insert("pad_token_id".into(), json!(self.pad_token_id));
        m.insert("torch_dtype".into(), json!(self.torch_dtype.as_deref().unwrap_or("float32")));
        Value::Object(m)
    }
}

fn rope_scaling_json(s: &RopeScaling) -> Value {
    match *s {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Dynamic { factor, .. } => json!({"rope_type": "dynamic", "factor": factor}),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => json!({
            "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings
        }),
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            attention_factor,
        } => {
            let mut v = json!({
                "rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original_max_position_embeddings,
                "beta_fast": beta_fast, "beta_slow": beta_slow
            });
            for (k, x) in [("mscale", mscale), ("mscale_all_dim", mscale_all_dim), ("attention_factor", attention_factor)] {
                if let Some(x) = x {
                    v[k] = json!(x);
                }
            }
            v
        }
    }
}

/// `rope_theta` and the scaling, from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (4.x),
/// resolved the way transformers 5.6 `standardize_rope_params` and `_compute_*_parameters` do.
fn parse_rope(obj: &Map<String, Value>, max_position_embeddings: usize) -> Result<(f64, RopeScaling)> {
    let params = match (obj.get("rope_parameters"), obj.get("rope_scaling")) {
        (Some(Value::Object(p)), _) => Some(p),
        (_, Some(Value::Object(p))) => Some(p),
        (Some(Value::Null) | None, Some(Value::Null) | None) => None,
        _ => bail!("key \"rope_scaling\" / \"rope_parameters\" must be an object or null"),
    };
    let key = if obj.get("rope_parameters").is_some_and(|v| v.is_object()) { "rope_parameters" } else { "rope_scaling" };
    let theta_top = get_opt_f64(obj, "rope_theta")?;
    let theta = match params {
        Some(p) => get_opt_f64(p, "rope_theta")?.or(theta_top),
        None => theta_top,
    }
    .unwrap_or(10_000.0);
    let Some(p) = params else { return Ok((theta, RopeScaling::None)) };
    let rope_type = p.get("rope_type").or(p.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
    if let Some(f) = get_opt_f64(p, "partial_rotary_factor")?.or(get_opt_f64(obj, "partial_rotary_factor")?) {
        if f != 1.0 {
            bail!("{key}.partial_rotary_factor = {f} is not supported (ferrotune rotates the whole head_dim)");
        }
    }
    let factor = || -> Result<f64> {
        let f = get_opt_f64(p, "factor")?
            .ok_or_else(|| Error::msg(format!("{key}: rope_type {rope_type:?} needs a \"factor\"")))?;
        if !(f.is_finite() && f >= 1.0) {
            bail!("{key}.factor must be >= 1, got {f}");
        }
        Ok(f)
    };
    // llama3 / yarn fall back to max_position_embeddings as transformers' standardize_rope_params does.
    let original = || -> Result<usize> {
        Ok(match get_opt_usize(p, "original_max_position_embeddings")? {
            Some(v) => v,
            None => get_opt_usize(obj, "original_max_position_embeddings")?.unwrap_or(max_position_embeddings),
        })
    };
    let scaling = match rope_type {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        // transformers 5.6 `_compute_dynamic_ntk_parameters` uses config.max_position_embeddings.
        "dynamic" => RopeScaling::Dynamic { factor: factor()?, original_max_position_embeddings: max_position_embeddings },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: get_opt_f64(p, "low_freq_factor")?
                .ok_or_else(|| Error::msg(format!("{key}: rope_type \"llama3\" needs \"low_freq_factor\"")))?,
            high_freq_factor: get_opt_f64(p, "high_freq_factor")?
                .ok_or_else(|| Error::msg(format!("{key}: rope_type \"llama3\" needs \"high_freq_factor\"")))?,
            original_max_position_embeddings: original()?,
        },
        "yarn" => {
            if p.get("truncate").and_then(|t| t.as_bool()) == Some(false) {
                bail!("{key}.truncate = false is not supported (ferrotune implements YaRN with HF's default truncate = true)");
            }
            let original_max_position_embeddings = original()?;
            let factor = match get_opt_f64(p, "factor")? {
                Some(_) => factor()?,
                None => max_position_embeddings as f64 / original_max_position_embeddings as f64,
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                // HF: `get("beta_fast") or 32`, so 0 and null both mean the default.
                beta_fast: get_opt_f64(p, "beta_fast")?.filter(|b| *b != 0.0).unwrap_or(32.0),
                beta_slow: get_opt_f64(p, "beta_slow")?.filter(|b| *b != 0.0).unwrap_or(1.0),
                mscale: get_opt_f64(p, "mscale")?,
                mscale_all_dim: get_opt_f64(p, "mscale_all_dim")?,
                attention_factor: get_opt_f64(p, "attention_factor")?,
            }
        }
        other => bail!("{key}: rope_type {other:?} is not supported; ferrotune supports default, linear, dynamic, llama3, yarn"),
    };
    Ok((theta, scaling))
}

fn get_opt_usize(obj: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| Error::msg(format!("key {key:?} must be a non-negative integer, got {v}"))),
    }
}

fn get_usize(obj: &Map<String, Value>, key: &str, default: usize) -> Result<usize> {
    Ok(get_opt_usize(obj, key)?.unwrap_or(default))
}

fn get_opt_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::msg(format!("key {key:?} must be a number, got {v}"))),
    }
}

fn get_f64(obj: &Map<String, Value>, key: &str, default: f64) -> Result<f64> {
    Ok(get_opt_f64(obj, key)?.unwrap_or(default))
}

fn get_bool(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => bail!("key {key:?} must be true or false, got {v}"),
    }
}

fn get_opt_token(obj: &Map<String, Value>, key: &str) -> Result<Option<u32>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| Error::msg(format!("key {key:?} must be a token id, got {v}"))),
    }
}

fn get_token_list(obj: &Map<String, Value>, key: &str) -> Result<Vec<u32>> {
    match obj.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| Error::msg(format!("key {key:?} must hold token ids, got {v}")))
            })
            .collect(),
        _ => Ok(get_opt_token(obj, key)?.into_iter().collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_135m() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000, "rope_scaling": null,
            "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
            "torch_dtype": "bfloat16"
        })
    }

    #[test]
    fn smollm2_parses_and_counts_135m_parameters() {
        let c = ModelConfig::from_hf_json(&smollm2_135m()).unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert_eq!(c.num_parameters(), 134_515_008);
        let again = ModelConfig::from_hf_json(&c.to_hf_json()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn transformers5_rope_parameters_and_legacy_type_key() {
        let mut v = smollm2_135m();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = ModelConfig::from_hf_json(&v).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        let mut v = smollm2_135m();
        v["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        let c = ModelConfig::from_hf_json(&v).unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
    }

    #[test]
    fn unknown_architecture_lists_supported_ones() {
        let mut v = smollm2_135m();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        let e = ModelConfig::from_hf_json(&v).unwrap_err().to_string();
        assert!(e.contains("GPT2LMHeadModel") && e.contains("Qwen2ForCausalLM") && e.contains("MistralForCausalLM"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (key, bad) in [("num_key_value_heads", json!(4)), ("hidden_size", json!("big")), ("rms_norm_eps", json!(-1.0))] {
            let mut v = smollm2_135m();
            v[key] = bad;
            let e = ModelConfig::from_hf_json(&v).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn llamafactory_rope_scaling_argument() {
        let mut c = ModelConfig::from_hf_json(&smollm2_135m()).unwrap();
        c.apply_user_rope_scaling("linear", 4096, true).unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::None, "cutoff below the trained length leaves RoPE alone");
        c.apply_user_rope_scaling("linear", 20000, true).unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 3.0 });
        assert_eq!(c.max_position_embeddings, 8192 * 3);
        assert!(c.apply_user_rope_scaling("ntk", 1, false).is_err());
    }
}
