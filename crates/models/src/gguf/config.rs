//! `ModelConfig` from GGUF metadata, reading the same keys transformers' GGUF loader maps
//! (`integrations/ggml.py` GGUF_CONFIG_MAPPING):
//!
//! ```text
//! general.architecture                     llama | mistral | qwen2   (llama + "mistral" in general.name -> Mistral,
//!                                                                      as transformers decides)
//! {arch}.context_length                    max_position_embeddings
//! {arch}.embedding_length                  hidden_size
//! {arch}.block_count                       num_hidden_layers
//! {arch}.feed_forward_length               intermediate_size
//! {arch}.attention.head_count              num_attention_heads
//! {arch}.attention.head_count_kv           num_key_value_heads (default: head_count)
//! {arch}.attention.key_length              head_dim (else rope.dimension_count for llama/mistral, else hidden/heads)
//! {arch}.attention.layer_norm_rms_epsilon  rms_norm_eps
//! {arch}.attention.sliding_window          sliding_window (mistral)
//! {arch}.rope.freq_base                    rope_theta (default 10000)
//! {arch}.rope.scaling.type / .factor / .original_context_length   rope_scaling (none, linear, yarn)
//! {arch}.vocab_size                        vocab_size (else tokenizer.ggml.tokens length, else token_embd rows)
//! tokenizer.ggml.{bos,eos,padding}_token_id  bos_token_id, eos_token_id, pad_token_id
//! output.weight absent                     tie_word_embeddings
//! ```

use super::dequant::dequantize;
use super::reader::{GgufFile, GgufMetadata, GgufValue};
use crate::{bail, Architecture, Context, Error, ModelConfig, Result};
use ferrotune_tensor::ops::rope::RopeScaling;

/// The architecture, and whether the converter permuted q/k rows into ggml's interleaved RoPE order.
pub fn architecture(meta: &GgufMetadata) -> Result<(Architecture, bool)> {
    let Some(arch) = meta.get("general.architecture") else {
        bail!("metadata key \"general.architecture\" is missing; it is required by the GGUF spec");
    };
    let Some(arch) = arch.as_str() else {
        bail!("metadata key \"general.architecture\" must be a string, got {}", arch.type_name());
    };
    let name = meta.get("general.name").and_then(GgufValue::as_str).unwrap_or("").to_lowercase();
    Ok(match arch {
        // llama.cpp writes Mistral checkpoints as `llama`; transformers tells them apart by name.
        "llama" if name.contains("mistral") => (Architecture::Mistral, true),
        "llama" => (Architecture::Llama, true),
        "mistral" => (Architecture::Mistral, true),
        "qwen2" => (Architecture::Qwen2, false),
        other => bail!(
            "GGUF architecture {other:?} is not supported; ferrotune reads llama (Llama, SmolLM, TinyLlama, ...), \
             mistral and qwen2 GGUF files"
        ),
    })
}

pub(crate) struct Keys<'a> {
    pub meta: &'a GgufMetadata,
    pub arch: &'a str,
}

impl Keys<'_> {
    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }
    fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                Error::msg(format!("metadata key {key:?} must be a non-negative integer, got {} {v}", v.type_name()))
            }),
        }
    }
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.opt_u64(key)?
            .map(|v| usize::try_from(v).map_err(|_| Error::msg(format!("metadata key {key:?} = {v} is too large"))))
            .transpose()
    }
    pub fn opt_token(&self, key: &str) -> Result<Option<u32>> {
        self.opt_u64(key)?
            .map(|v| u32::try_from(v).map_err(|_| Error::msg(format!("metadata key {key:?} = {v} is not a token id"))))
            .transpose()
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| Error::msg(format!("metadata key {key:?} is missing; the file does not describe the model")))
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::msg(format!("metadata key {key:?} must be a number, got {} {v}", v.type_name()))),
        }
    }
    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Error::msg(format!("metadata key {key:?} must be a string, got {}", v.type_name()))),
        }
    }
    /// `head_count_kv` may be written per layer as an array; ferrotune needs one value for all layers.
    fn per_layer_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.meta.get(key) {
            Some(GgufValue::Array(_, items)) => {
                let values: Option<Vec<u64>> = items.iter().map(GgufValue::as_u64).collect();
                match values.as_deref() {
                    Some([first, rest @ ..]) if rest.iter().all(|v| v == first) => Ok(usize::try_from(*first).ok()),
                    _ => bail!(
                        "metadata key {key:?} differs between layers (or is not integers); ferrotune needs one value"
                    ),
                }
            }
            _ => self.opt_usize(key),
        }
    }
}

/// Build and validate the `ModelConfig` from metadata alone. Files with a `rope_freqs.weight` tensor (Llama 3.1+)
/// need its data: use [`model_config_from_file`].
pub fn model_config(meta: &GgufMetadata) -> Result<ModelConfig> {
    build(meta, None)
}

/// Build and validate the `ModelConfig`, reading `rope_freqs.weight` when the file has one.
pub fn model_config_from_file(file: &GgufFile) -> Result<ModelConfig> {
    let freqs = match file.metadata.tensor("rope_freqs.weight") {
        None => None,
        Some(info) => Some(
            dequantize::<f32>(info.ggml_type, file.tensor_bytes(info)?)
                .context("cannot read tensor \"rope_freqs.weight\"")?,
        ),
    };
    build(&file.metadata, freqs.as_deref())
}

fn build(meta: &GgufMetadata, rope_freqs: Option<&[f32]>) -> Result<ModelConfig> {
    let (architecture, _) = architecture(meta)?;
    let arch = meta.architecture().unwrap_or("llama");
    let k = Keys { meta, arch };

    let hidden_size = k.usize(&k.key("embedding_length"))?;
    let num_attention_heads = k.per_layer_usize(&k.key("attention.head_count"))?.ok_or_else(|| {
        Error::msg(format!(
            "metadata key {:?} is missing; the file does not describe the model",
            k.key("attention.head_count")
        ))
    })?;
    let num_key_value_heads = k.per_layer_usize(&k.key("attention.head_count_kv"))?.unwrap_or(num_attention_heads);
    if hidden_size == 0 || num_attention_heads == 0 || num_key_value_heads == 0 {
        bail!("embedding_length, attention.head_count and attention.head_count_kv must be > 0");
    }
    let rope_dims = k.opt_usize(&k.key("rope.dimension_count"))?;
    let head_dim = match (k.opt_usize(&k.key("attention.key_length"))?, rope_dims) {
        (Some(d), _) => d,
        (None, Some(d)) if architecture != Architecture::Qwen2 => d,
        _ => hidden_size / num_attention_heads,
    };
    if let Some(rd) = rope_dims {
        if rd != head_dim {
            bail!(
                "metadata key {:?} = {rd} but head_dim is {head_dim}: partial rotary embeddings are not supported",
                k.key("rope.dimension_count")
            );
        }
    }
    let max_position_embeddings = k.usize(&k.key("context_length"))?;

    let tokens_len = meta.get("tokenizer.ggml.tokens").and_then(GgufValue::as_array).map(<[_]>::len);
    let embd_rows = meta.tensor("token_embd.weight").and_then(|t| t.shape.first().copied());
    let vocab_size = match (k.opt_usize(&k.key("vocab_size"))?, embd_rows, tokens_len) {
        (Some(v), _, _) => v,
        (None, Some(rows), _) => rows,
        (None, None, Some(n)) => n,
        (None, None, None) => {
            bail!("cannot tell the vocabulary size: no {:?}, no token_embd.weight, no token list", k.key("vocab_size"))
        }
    };

    let rope_theta = k.opt_f64(&k.key("rope.freq_base"))?.unwrap_or(10_000.0);
    let rope_scaling = rope_scaling(&k, max_position_embeddings)?;
    let rope_scaling = match (meta.tensor("rope_freqs.weight"), rope_freqs, &rope_scaling) {
        (None, _, _) | (Some(_), _, RopeScaling::Linear { .. } | RopeScaling::Yarn { .. }) => rope_scaling,
        (Some(_), Some(freqs), _) => llama3_from_rope_freqs(freqs, head_dim, rope_theta)?,
        (Some(_), None, _) => bail!(
            "the file carries rope_freqs.weight (Llama 3.1-style RoPE scaling): reading the config needs that \
             tensor's data (gguf::config::model_config_from_file or gguf::load)"
        ),
    };
    let eps = k.opt_f64(&k.key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6);
    let sliding_window = match architecture {
        Architecture::Mistral => k.opt_usize(&k.key("attention.sliding_window"))?,
        _ => None,
    };
    let has = |name: &str| meta.tensor(name).is_some();
    let config = ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: k.per_layer_usize(&k.key("feed_forward_length"))?.ok_or_else(|| {
            Error::msg(format!(
                "metadata key {:?} is missing; the file does not describe the model",
                k.key("feed_forward_length")
            ))
        })?,
        num_hidden_layers: k.usize(&k.key("block_count"))?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        max_position_embeddings,
        rms_norm_eps: eps,
        rope_theta,
        rope_scaling,
        tie_word_embeddings: !has("output.weight"),
        // Qwen2's q/k/v biases come with the architecture; a Llama file states its own by carrying the tensors.
        attention_bias: architecture != Architecture::Qwen2
            && (has("blk.0.attn_q.bias") || has("blk.0.attn_output.bias")),
        mlp_bias: has("blk.0.ffn_gate.bias") || has("blk.0.ffn_down.bias"),
        sliding_window,
        bos_token_id: k.opt_token("tokenizer.ggml.bos_token_id")?,
        eos_token_ids: k.opt_token("tokenizer.ggml.eos_token_id")?.into_iter().collect(),
        pad_token_id: k.opt_token("tokenizer.ggml.padding_token_id")?,
        torch_dtype: None,
    };
    config.validate()?;
    Ok(config)
}

fn rope_scaling(k: &Keys, max_position_embeddings: usize) -> Result<RopeScaling> {
    let kind = k.opt_str(&k.key("rope.scaling.type"))?;
    let factor_key = k.key("rope.scaling.factor");
    let factor = || -> Result<f64> {
        match k.opt_f64(&factor_key)? {
            Some(f) if f.is_finite() && f >= 1.0 => Ok(f),
            Some(f) => bail!("metadata key {factor_key:?} must be >= 1, got {f}"),
            None => bail!("metadata key {factor_key:?} is missing but rope.scaling.type asks for scaling"),
        }
    };
    let original = k.opt_usize(&k.key("rope.scaling.original_context_length"))?.unwrap_or(max_position_embeddings);
    Ok(match kind {
        None | Some("none") => match k.opt_f64(&factor_key)? {
            // Older converters wrote only the factor, meaning linear scaling.
            Some(f) if kind.is_none() && f > 1.0 => RopeScaling::Linear { factor: f },
            _ => RopeScaling::None,
        },
        Some("linear") => RopeScaling::Linear { factor: factor()? },
        Some("yarn") => RopeScaling::Yarn {
            factor: factor()?,
            original_max_position_embeddings: original,
            beta_fast: k.opt_f64(&k.key("rope.scaling.yarn_beta_fast"))?.filter(|b| *b != 0.0).unwrap_or(32.0),
            beta_slow: k.opt_f64(&k.key("rope.scaling.yarn_beta_slow"))?.filter(|b| *b != 0.0).unwrap_or(1.0),
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
        },
        Some(other) => {
            bail!("metadata key {:?} = {other:?} is not supported (none, linear, yarn)", k.key("rope.scaling.type"))
        }
    })
}

/// Recover Llama 3.1's RoPE scaling from the `rope_freqs.weight` llama.cpp's converter writes instead of the
/// parameters. The converter stores, per rotary frequency `f_i = theta^(-2i/d)` with wavelength `w = 2 pi / f_i`,
/// the divisor
///
/// ```text
/// w < L / high            ->  1
/// w > L / low             ->  factor
/// otherwise, s = (L / w - low) / (high - low)  ->  1 / ((1 - s) / factor + s)
/// ```
///
/// with `L = original_max_position_embeddings`. `factor` is the largest divisor; `low`, `high` and `L` are not
/// recoverable in closed form, so the values every Llama 3.x release uses (1, 4, 8192) are checked against the
/// whole tensor, and anything else is refused rather than guessed.
fn llama3_from_rope_freqs(freqs: &[f32], head_dim: usize, theta: f64) -> Result<RopeScaling> {
    if freqs.len() != head_dim / 2 {
        bail!("rope_freqs.weight has {} values; head_dim {head_dim} needs {}", freqs.len(), head_dim / 2);
    }
    if freqs.iter().all(|&f| f == 1.0) {
        return Ok(RopeScaling::None);
    }
    let factor = freqs.iter().fold(f32::MIN, |m, &f| m.max(f)) as f64;
    let (low, high, original) = (1.0f64, 4.0f64, 8192usize);
    let l = original as f64;
    let matches = freqs.iter().enumerate().all(|(i, &got)| {
        let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
        let wavelen = 2.0 * std::f64::consts::PI / freq;
        let want = if wavelen < l / high {
            1.0
        } else if wavelen > l / low {
            factor
        } else {
            let smooth = (l / wavelen - low) / (high - low);
            1.0 / ((1.0 - smooth) / factor + smooth)
        };
        (got as f64 - want).abs() <= 1e-4 * want.abs()
    });
    if !(factor.is_finite() && factor >= 1.0 && matches) {
        bail!(
            "rope_freqs.weight does not match Llama 3.1 RoPE scaling with low_freq_factor 1, high_freq_factor 4, \
             original_max_position_embeddings 8192 (factor {factor}); load the HF checkpoint instead"
        );
    }
    Ok(RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: original,
    })
}
