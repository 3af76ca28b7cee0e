//! The Llama-family decoder (Llama, SmolLM, Qwen2, Mistral) for inference: plain weights, no autograd graph, a
//! preallocated KV cache per sequence, and one forward that serves prefill, decode and both at once.
//!
//! The math is `ferrotune_models::llama`'s (see its module docs), computed on f32 activations:
//!
//! - q/k/v are one fused `[q_out + 2 kv_out, hidden]` matrix and gate/up one `[2 inter, hidden]` matrix, so a
//!   layer is four products (qkv, o, gate_up, down).
//! - A forward takes **segments**: `(cache, new tokens)` pairs. All their tokens go through the projections as
//!   one `[N, hidden]` activation (one GEMM, or one weight pass for few rows); RoPE positions continue from each
//!   cache's length; K/V are written into the cache; attention is per segment: the engine's flash attention
//!   (causal, aligned bottom-right so the new queries see the cached prefix) for multi-token segments, a direct
//!   softmax over the cache for one-token ones. Only each segment's last position reaches the lm_head.
//! - A prefill is one segment with the prompt; a batched decode step is one segment per active sequence with one
//!   token each; continuous batching mixes both in one call.
//!
//! **Adapters.** LoRA adapters are merged before the weights reach this type (`W + s B A` is just a different
//! tensor): build from a `LlamaModel` after `merge_lora`, or from a `WeightMap` with merged tensors. Keeping
//! several adapters resident means keeping one `InferenceModel` per merged set (they can share nothing today;
//! an unmerged low-rank term per [`Matrix`] is the hook for sharing the base).

use crate::lazy_buffer::LazyZeroedF32;
use crate::matrix::Matrix;
use crate::quant::{BlockQ4_1, BlockQ8_0, WeightFormat};
use ferrotune_models::gguf::{names, GgmlType, GgufFile};
use ferrotune_models::{bail, Architecture, Context, Error, LoadOptions, ModelConfig, Result, WeightMap};
use ferrotune_tensor::cpu::kernels::attention::{flash_attention_forward, AttentionMask, HeadsView};
use ferrotune_tensor::ops::RopeTable;
use ferrotune_tensor::DType;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// One decoder layer's weights.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// Fused `[q_proj; k_proj; v_proj]`, `[q_out + 2 kv_out, hidden]`.
    pub qkv: Matrix,
    pub qkv_bias: Option<Vec<f32>>,
    pub o: Matrix,
    pub o_bias: Option<Vec<f32>>,
    /// Fused `[gate_proj; up_proj]`, `[2 intermediate, hidden]`.
    pub gate_up: Matrix,
    pub gate_up_bias: Option<Vec<f32>>,
    pub down: Matrix,
    pub down_bias: Option<Vec<f32>>,
    pub input_norm: Vec<f32>,
    pub post_attention_norm: Vec<f32>,
}

/// A decoder ready for generation. Immutable while generating: every sequence's state is in its [`KvCache`].
#[derive(Clone, Debug)]
pub struct InferenceModel {
    config: ModelConfig,
    format: WeightFormat,
    embed: Matrix,
    layers: Vec<LayerWeights>,
    norm: Vec<f32>,
    /// `None` when tied: the lm_head is `embed`.
    lm_head: Option<Matrix>,
    /// `[positions, head_dim / 2]` RoPE tables (already times the attention scaling), as the training model uses.
    cos: Vec<f32>,
    sin: Vec<f32>,
    max_positions: usize,
}

/// Per-sequence keys and values, `[layers, max_len, kv_heads, head_dim]` f32 each, reserved once and
/// committed page by page as positions fill (see [`LazyZeroedF32`]).
#[derive(Debug)]
pub struct KvCache {
    k: LazyZeroedF32,
    v: LazyZeroedF32,
    layers: usize,
    max_len: usize,
    /// `kv_heads * head_dim`.
    row: usize,
    len: usize,
}

impl KvCache {
    /// Room for `max_len` positions of `model`.
    fn new(model: &InferenceModel, max_len: usize) -> Result<KvCache> {
        let c = &model.config;
        let row = c.num_key_value_heads * c.head_dim;
        let size = c.num_hidden_layers * max_len * row;
        let reserve = || {
            LazyZeroedF32::new(size).map_err(|e| Error::msg(format!("cannot reserve a KV cache of {max_len} positions ({} MB): {e}", size * 8 / 1_000_000)))
        };
        Ok(KvCache { k: reserve()?, v: reserve()?, layers: c.num_hidden_layers, max_len, row, len: 0 })
    }

    /// Positions filled so far (the next token's RoPE position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.max_len
    }

    /// Forget everything (keeps the memory for the next sequence).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `len` positions (reuse a shared prompt prefix; drop a rejected tail).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn nbytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 4
    }

    fn layer_offset(&self, layer: usize) -> usize {
        layer * self.max_len * self.row
    }
}

/// New tokens for one sequence in a forward.
pub struct Segment<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
}

impl InferenceModel {
    /// Build from HF-named tensors (any float dtype), converting each to `format` as it is taken out of
    /// `weights` (so at most one f32 copy of one tensor exists beside the map). Norms and biases stay f32.
    pub fn from_weights(config: ModelConfig, mut weights: WeightMap, format: WeightFormat) -> Result<InferenceModel> {
        let shapes = Shapes::of(&config)?;
        let mut take = |name: &str, shape: &[usize]| weights.take(name, shape);
        let model = build(config, format, &shapes, &mut |name, shape, fmt| match fmt {
            Some(f) => Ok(Part::Matrix(Matrix::from_tensor(&take(name, shape)?, f)?)),
            None => Ok(Part::Vector(take(name, shape)?.to_dtype(DType::F32)?.to_vec::<f32>()?)),
        })?;
        if model.config.tie_word_embeddings {
            let (v, h) = (model.config.vocab_size, model.config.hidden_size);
            weights.take_optional("lm_head.weight", &[v, h])?;
        }
        let left = weights.into_remaining();
        if !left.is_empty() {
            bail!("{} tensor(s) are not used by this model: {:?}", left.len(), &left[..left.len().min(8)]);
        }
        Ok(model)
    }

    /// Load a GGUF file keeping its blocks: tensors already in `format` (Q8_0 or Q4_1 blocks for those formats)
    /// are used as stored, with llama.cpp's q/k row permutation undone on whole rows of blocks; anything else is
    /// dequantized one tensor at a time and converted. No f32 copy of the model is ever made.
    pub fn from_gguf(path: &Path, format: WeightFormat) -> Result<InferenceModel> {
        let file = GgufFile::open(path)?;
        let where_ = path.display().to_string();
        let config = ferrotune_models::gguf::config::model_config_from_file(&file).with_context(|| where_.clone())?;
        let (_, permuted) = ferrotune_models::gguf::config::architecture(&file.metadata).with_context(|| where_.clone())?;
        let mut by_hf = HashMap::new();
        for info in &file.metadata.tensors {
            if let names::Mapped::Hf(name) = names::hf_name(&info.name).with_context(|| where_.clone())? {
                by_hf.insert(name, info.clone());
            }
        }
        let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
        let shapes = Shapes::of(&config)?;
        let mut source = |name: &str, shape: &[usize], fmt: Option<WeightFormat>| -> Result<Part> {
            let info = by_hf.get(name).ok_or_else(|| Error::msg(format!("{where_}: no tensor for {name}")))?;
            if info.shape != shape {
                bail!("{where_}: {} ({name}) has shape {:?}, expected {shape:?}", info.name, info.shape);
            }
            let heads = names::permuted_heads(&info.name, permuted, heads, kv_heads);
            let bytes = file.tensor_bytes(info)?;
            // A quantized run keeps the file's blocks when they are the requested format, or Q8_0 under a Q4_1
            // request (never made lossier than the file; llama.cpp runs such a file the same way).
            let keep = match (fmt, info.ggml_type) {
                (Some(WeightFormat::Q8_0), GgmlType::Q8_0) | (Some(WeightFormat::Q4_1), GgmlType::Q8_0) => Some(GgmlType::Q8_0),
                (Some(WeightFormat::Q4_1), GgmlType::Q4_1) => Some(GgmlType::Q4_1),
                _ => None,
            };
            let part = match keep {
                Some(GgmlType::Q8_0) => {
                    let mut blocks: Vec<BlockQ8_0> = bytes.chunks_exact(BlockQ8_0::BYTES).map(BlockQ8_0::from_bytes).collect();
                    unpermute_block_rows(&mut blocks, shape, heads)?;
                    Part::Matrix(Matrix::new(shape[0], shape[1], crate::matrix::MatrixData::Q8_0(blocks))?)
                }
                Some(_) => {
                    let mut blocks: Vec<BlockQ4_1> = bytes.chunks_exact(BlockQ4_1::BYTES).map(BlockQ4_1::from_bytes).collect();
                    unpermute_block_rows(&mut blocks, shape, heads)?;
                    Part::Matrix(Matrix::new(shape[0], shape[1], crate::matrix::MatrixData::Q4_1(blocks))?)
                }
                _ => {
                    let mut values = ferrotune_models::gguf::dequant::dequantize::<f32>(info.ggml_type, bytes)
                        .with_context(|| format!("{where_}: {}", info.name))?;
                    if let Some(h) = heads {
                        names::unpermute_rows(&mut values, shape[0], shape.get(1).copied().unwrap_or(1), h)?;
                    }
                    match fmt {
                        Some(f) => Part::Matrix(Matrix::from_f32(values, shape[0], shape[1], f)?),
                        None => Part::Vector(values),
                    }
                }
            };
            file.release_tensor_pages(info);
            Ok(part)
        };
        build(config, format, &shapes, &mut source)
    }

    /// Load any model `ferrotune_models::load_model` reads (HF folder, GGUF, hub id); a GGUF file goes through
    /// [`InferenceModel::from_gguf`] so its blocks are kept.
    pub fn load(name_or_path: &str, format: WeightFormat) -> Result<(InferenceModel, Option<ferrotune_models::ModelTokenizer>)> {
        let path = Path::new(name_or_path);
        if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            let tokenizer = ferrotune_models::gguf::tokenizer::model_tokenizer(&ferrotune_models::gguf::inspect(path)?)?;
            return Ok((InferenceModel::from_gguf(path, format)?, Some(tokenizer)));
        }
        let dtype = if format == WeightFormat::BF16 { ferrotune_models::WeightDType::BF16 } else { ferrotune_models::WeightDType::F32 };
        let loaded = ferrotune_models::load_model(name_or_path, &LoadOptions { dtype }, &Default::default())?;
        let model = InferenceModel::from_weights(loaded.config, loaded.weights, format)?;
        Ok((model, loaded.tokenizer))
    }

    /// From a training model's current weights (merge LoRA branches into it first: `merge_lora`).
    pub fn from_llama(model: &ferrotune_models::LlamaModel, format: WeightFormat) -> Result<InferenceModel> {
        let mut weights = WeightMap::new("LlamaModel");
        for (name, tensor) in model.named_tensors() {
            weights.insert(name, tensor)?;
        }
        InferenceModel::from_weights(model.config().clone(), weights, format)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// Longest sequence the RoPE tables cover (a cache longer than this is refused).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Bytes held by the weights.
    pub fn nbytes(&self) -> usize {
        let mats: usize = self
            .layers
            .iter()
            .map(|l| l.qkv.nbytes() + l.o.nbytes() + l.gate_up.nbytes() + l.down.nbytes() + 4 * (l.input_norm.len() * 2))
            .sum();
        mats + self.embed.nbytes() + self.lm_head.as_ref().map_or(0, |m| m.nbytes())
    }

    /// A cache for one sequence of up to `max_len` positions.
    pub fn new_cache(&self, max_len: usize) -> Result<KvCache> {
        if max_len > self.max_positions {
            bail!("a cache of {max_len} positions is longer than the model's {} (max_position_embeddings)", self.max_positions);
        }
        KvCache::new(self, max_len)
    }

    /// Run the new tokens of every segment and return the logits after each segment's last token,
    /// `[segments, vocab]` row-major. Each cache grows by its segment's length. Errors (empty segment, token
    /// outside the vocabulary, cache full) leave every cache unchanged.
    pub fn forward(&self, segments: &mut [Segment<'_>]) -> Result<Vec<f32>> {
        let c = &self.config;
        let (h, hq, hkv, d) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let (q_out, kv_out) = (hq * d, hkv * d);
        let qkv_out = q_out + 2 * kv_out;
        let inter = c.intermediate_size;
        for (i, s) in segments.iter().enumerate() {
            if s.tokens.is_empty() {
                bail!("segment {i} has no tokens");
            }
            if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                bail!("token id {t} is outside the vocabulary (vocab_size {})", c.vocab_size);
            }
            if s.cache.len + s.tokens.len() > s.cache.max_len {
                bail!(
                    "sequence {i} would reach {} positions, past its cache of {}",
                    s.cache.len + s.tokens.len(),
                    s.cache.max_len
                );
            }
            if s.cache.layers != c.num_hidden_layers || s.cache.row != kv_out {
                bail!("sequence {i}'s cache was made for another model");
            }
            if let (Architecture::Mistral, Some(w)) = (c.architecture, c.sliding_window) {
                if s.cache.len + s.tokens.len() > w {
                    bail!("Mistral's sliding window ({w}) is not implemented; sequences are limited to {w} tokens");
                }
            }
        }
        // Row layout: segment after segment; `starts[i]` is segment i's first row.
        let mut starts = Vec::with_capacity(segments.len() + 1);
        let mut positions = Vec::new();
        let mut tokens = Vec::new();
        starts.push(0);
        for s in segments.iter() {
            positions.extend(s.cache.len..s.cache.len + s.tokens.len());
            tokens.extend_from_slice(s.tokens);
            starts.push(tokens.len());
        }
        let n = tokens.len();

        let mut x = vec![0.0f32; n * h];
        for (row, &t) in x.chunks_exact_mut(h).zip(&tokens) {
            self.embed.row_f32(t as usize, row);
        }
        let mut normed = vec![0.0f32; n * h];
        let mut qkv = vec![0.0f32; n * qkv_out];
        let mut attended = vec![0.0f32; n * q_out];
        let mut proj = vec![0.0f32; n * h];
        let mut gate_up = vec![0.0f32; n * 2 * inter];
        let mut act = vec![0.0f32; n * inter];
        let eps = c.rms_norm_eps as f32;
        let scale = 1.0 / (d as f32).sqrt();

        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.input_norm, eps, &mut normed);
            layer.qkv.matmul_t(&normed, n, &mut qkv)?;
            add_bias(&mut qkv, layer.qkv_bias.as_deref());
            self.rope_rows(&mut qkv, qkv_out, &positions, hq + hkv);
            // K and V of the new tokens into each cache.
            for (si, s) in segments.iter_mut().enumerate() {
                let base = s.cache.layer_offset(li);
                for (j, row) in qkv[starts[si] * qkv_out..starts[si + 1] * qkv_out].chunks_exact(qkv_out).enumerate() {
                    let at = base + (s.cache.len + j) * kv_out;
                    s.cache.k[at..at + kv_out].copy_from_slice(&row[q_out..q_out + kv_out]);
                    s.cache.v[at..at + kv_out].copy_from_slice(&row[q_out + kv_out..]);
                }
            }
            self.attention(li, segments, &starts, &qkv, qkv_out, scale, &mut attended)?;
            layer.o.matmul_t(&attended, n, &mut proj)?;
            add_bias(&mut proj, layer.o_bias.as_deref());
            add_in_place(&mut x, &proj);

            rms_norm(&x, &layer.post_attention_norm, eps, &mut normed);
            layer.gate_up.matmul_t(&normed, n, &mut gate_up)?;
            add_bias(&mut gate_up, layer.gate_up_bias.as_deref());
            swiglu_rows(&gate_up, inter, &mut act);
            layer.down.matmul_t(&act, n, &mut proj)?;
            add_bias(&mut proj, layer.down_bias.as_deref());
            add_in_place(&mut x, &proj);
        }

        // Final norm and lm_head on each segment's last row only.
        let mut last = vec![0.0f32; segments.len() * h];
        for (si, row) in last.chunks_exact_mut(h).enumerate() {
            let r = starts[si + 1] - 1;
            rms_norm(&x[r * h..(r + 1) * h], &self.norm, eps, row);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0.0f32; segments.len() * c.vocab_size];
        head.matmul_t(&last, segments.len(), &mut logits)?;
        for (si, s) in segments.iter_mut().enumerate() {
            s.cache.len += starts[si + 1] - starts[si];
        }
        Ok(logits)
    }

    /// Logits after `tokens` run from an empty cache (tests: compare with a decode step).
    pub fn last_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut cache = self.new_cache(tokens.len().max(1))?;
        self.forward(&mut [Segment { cache: &mut cache, tokens }])
    }

    /// Rotate the q and k heads (the first `heads` heads of each row) in place, HF's half-split layout.
    fn rope_rows(&self, qkv: &mut [f32], row_len: usize, positions: &[usize], heads: usize) {
        let d = self.config.head_dim;
        let half = d / 2;
        let rotate = |(row, &p): (&mut [f32], &usize)| {
            let (cos, sin) = (&self.cos[p * half..][..half], &self.sin[p * half..][..half]);
            for head in row[..heads * d].chunks_exact_mut(d) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * cos[i] - b * sin[i];
                    x2[i] = b * cos[i] + a * sin[i];
                }
            }
        };
        if positions.len() >= 16 {
            qkv.par_chunks_mut(row_len).zip(positions.par_iter()).for_each(rotate);
        } else {
            qkv.chunks_mut(row_len).zip(positions.iter()).for_each(rotate);
        }
    }

    /// Attention of every segment's new queries over its cache (already holding the new keys and values).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        segments: &[Segment<'_>],
        starts: &[usize],
        qkv: &[f32],
        qkv_out: usize,
        scale: f32,
        out: &mut [f32],
    ) -> Result<()> {
        let c = &self.config;
        let (hq, hkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let q_out = hq * d;
        let group = hq / hkv;
        // Multi-token segments: flash attention, queries aligned bottom-right against the whole cache.
        for (si, s) in segments.iter().enumerate() {
            let t = starts[si + 1] - starts[si];
            if t == 1 {
                continue;
            }
            let total = s.cache.len + t;
            let q = HeadsView::new(qkv, starts[si] * qkv_out, [1, t, hq, d], [t * qkv_out, qkv_out, d])?;
            let base = s.cache.layer_offset(layer);
            let stride = [total * hkv * d, hkv * d, d];
            let k = HeadsView::new(&s.cache.k, base, [1, total, hkv, d], stride)?;
            let v = HeadsView::new(&s.cache.v, base, [1, total, hkv, d], stride)?;
            let (o, _lse) = flash_attention_forward(q, k, v, scale, AttentionMask { causal: true, segment_ids: None })?;
            out[starts[si] * q_out..starts[si + 1] * q_out].copy_from_slice(&o);
        }
        // One-token segments (decode): each (row, head) is a softmax over the cached keys; rows in parallel.
        let single: Vec<(usize, &KvCache)> =
            segments.iter().enumerate().filter(|(si, _)| starts[si + 1] - starts[*si] == 1).map(|(si, s)| (si, &*s.cache)).collect();
        if single.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<(usize, &KvCache, &mut [f32])> = Vec::with_capacity(single.len());
        let mut rest = &mut out[..];
        let mut taken = 0;
        for &(si, cache) in &single {
            let r = starts[si];
            let (_, tail) = rest.split_at_mut((r - taken) * q_out);
            let (row, tail) = tail.split_at_mut(q_out);
            rows.push((r, cache, row));
            rest = tail;
            taken = r + 1;
        }
        // One task per (row, kv head) with all `group` query heads that share it (contiguous in the output), so
        // each cached key and value row is read once for the group rather than once per query head (at a
        // 512-token context the per-head walk read ~3x SmolLM2's KV cache, 80 MB, per decode step).
        let work: Vec<(usize, &KvCache, usize, &mut [f32])> = rows
            .into_iter()
            .flat_map(|(r, cache, row)| row.chunks_exact_mut(group * d).enumerate().map(move |(kv, o)| (r, cache, kv, o)))
            .collect();
        work.into_par_iter().for_each_init(|| (Vec::new(), Vec::new()), |(scores, inv): &mut (Vec<f32>, Vec<f32>), (r, cache, kv_head, o)| {
            let q = &qkv[r * qkv_out + kv_head * group * d..][..group * d];
            let len = cache.len + 1;
            let base = cache.layer_offset(layer) + kv_head * d;
            let row = cache.row;
            // scores[g * len + s]: query head g of the group against position s.
            scores.clear();
            scores.resize(group * len, 0.0);
            for s in 0..len {
                let k = &cache.k[base + s * row..][..d];
                for (g, qh) in q.chunks_exact(d).enumerate() {
                    scores[g * len + s] = dot(qh, k) * scale;
                }
            }
            inv.clear();
            for sc in scores.chunks_exact_mut(len) {
                let max = sc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut sum = 0.0f32;
                for v in sc.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                inv.push(1.0 / sum);
            }
            o.fill(0.0);
            for s in 0..len {
                let v = &cache.v[base + s * row..][..d];
                for (g, oh) in o.chunks_exact_mut(d).enumerate() {
                    let p = scores[g * len + s];
                    for (a, &b) in oh.iter_mut().zip(v) {
                        *a += p * b;
                    }
                }
            }
            for (g, oh) in o.chunks_exact_mut(d).enumerate() {
                for a in oh.iter_mut() {
                    *a *= inv[g];
                }
            }
        });
        Ok(())
    }
}

/// Tensor shapes implied by a config.
struct Shapes {
    h: usize,
    v: usize,
    inter: usize,
    q_out: usize,
    kv_out: usize,
}

impl Shapes {
    fn of(c: &ModelConfig) -> Result<Shapes> {
        c.validate()?;
        Ok(Shapes {
            h: c.hidden_size,
            v: c.vocab_size,
            inter: c.intermediate_size,
            q_out: c.num_attention_heads * c.head_dim,
            kv_out: c.num_key_value_heads * c.head_dim,
        })
    }
}

/// A tensor handed to `build`: a matrix already in its format, or an f32 vector (norms, biases).
enum Part {
    Matrix(Matrix),
    Vector(Vec<f32>),
}

type PartSource<'a> = dyn FnMut(&str, &[usize], Option<WeightFormat>) -> Result<Part> + 'a;

fn build(config: ModelConfig, format: WeightFormat, s: &Shapes, source: &mut PartSource<'_>) -> Result<InferenceModel> {
    let c = &config;
    let mut matrix = |name: &str, shape: &[usize]| -> Result<Matrix> {
        match source(name, shape, Some(format)).with_context(|| name.to_string())? {
            Part::Matrix(m) => Ok(m),
            Part::Vector(_) => bail!("{name}: expected a matrix"),
        }
    };
    let embed = matrix("model.embed_tokens.weight", &[s.v, s.h])?;
    let mut layer_mats = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let q = matrix(&format!("{p}.self_attn.q_proj.weight"), &[s.q_out, s.h])?;
        let k = matrix(&format!("{p}.self_attn.k_proj.weight"), &[s.kv_out, s.h])?;
        let v = matrix(&format!("{p}.self_attn.v_proj.weight"), &[s.kv_out, s.h])?;
        let o = matrix(&format!("{p}.self_attn.o_proj.weight"), &[s.h, s.q_out])?;
        let gate = matrix(&format!("{p}.mlp.gate_proj.weight"), &[s.inter, s.h])?;
        let up = matrix(&format!("{p}.mlp.up_proj.weight"), &[s.inter, s.h])?;
        let down = matrix(&format!("{p}.mlp.down_proj.weight"), &[s.h, s.inter])?;
        layer_mats.push((Matrix::concat_rows(vec![q, k, v])?, o, Matrix::concat_rows(vec![gate, up])?, down));
    }
    let lm_head = if c.tie_word_embeddings { None } else { Some(matrix("lm_head.weight", &[s.v, s.h])?) };
    let mut vector = |name: &str, len: usize| -> Result<Vec<f32>> {
        match source(name, &[len], None).with_context(|| name.to_string())? {
            Part::Vector(v) => Ok(v),
            Part::Matrix(_) => bail!("{name}: expected a vector"),
        }
    };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for (i, (qkv, o, gate_up, down)) in layer_mats.into_iter().enumerate() {
        let p = format!("model.layers.{i}");
        let qkv_bias = if c.qkv_bias() {
            let mut b = vector(&format!("{p}.self_attn.q_proj.bias"), s.q_out)?;
            b.extend(vector(&format!("{p}.self_attn.k_proj.bias"), s.kv_out)?);
            b.extend(vector(&format!("{p}.self_attn.v_proj.bias"), s.kv_out)?);
            Some(b)
        } else {
            None
        };
        let o_bias = if c.o_bias() { Some(vector(&format!("{p}.self_attn.o_proj.bias"), s.h)?) } else { None };
        let (gate_up_bias, down_bias) = if c.mlp_bias {
            let mut b = vector(&format!("{p}.mlp.gate_proj.bias"), s.inter)?;
            b.extend(vector(&format!("{p}.mlp.up_proj.bias"), s.inter)?);
            (Some(b), Some(vector(&format!("{p}.mlp.down_proj.bias"), s.h)?))
        } else {
            (None, None)
        };
        layers.push(LayerWeights {
            qkv,
            qkv_bias,
            o,
            o_bias,
            gate_up,
            gate_up_bias,
            down,
            down_bias,
            input_norm: vector(&format!("{p}.input_layernorm.weight"), s.h)?,
            post_attention_norm: vector(&format!("{p}.post_attention_layernorm.weight"), s.h)?,
        });
    }
    let norm = vector("model.norm.weight", s.h)?;
    let max_positions = c.max_position_embeddings.max(1);
    let table = RopeTable::new(c.head_dim, c.rope_theta, &c.rope_scaling, c.max_position_embeddings, max_positions)?;
    let cos = table.cos().to_dtype(DType::F32)?.to_vec::<f32>()?;
    let sin = table.sin().to_dtype(DType::F32)?.to_vec::<f32>()?;
    Ok(InferenceModel { config, format, embed, layers, norm, lm_head, cos, sin, max_positions })
}

/// Undo llama.cpp's q/k row permutation on whole rows of blocks (a row is `cols / 32` blocks).
fn unpermute_block_rows<B: Copy>(blocks: &mut [B], shape: &[usize], heads: Option<usize>) -> Result<()> {
    if let Some(h) = heads {
        let rows = shape[0];
        names::unpermute_rows(blocks, rows, blocks.len() / rows.max(1), h)?;
    }
    Ok(())
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    ferrotune_tensor::cpu::kernels::rms_norm::rms_norm_forward(x, w, eps, out);
}

fn add_bias(y: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(b.len()) {
            add_in_place(row, b);
        }
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `silu(gate) * up` for each `[gate | up]` row of width `2 inter`.
fn swiglu_rows(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    let one = |(o, gu): (&mut [f32], &[f32])| {
        let (g, u) = gu.split_at(inter);
        ferrotune_tensor::cpu::kernels::swiglu::swiglu_forward(g, u, o);
    };
    if out.len() >= 1 << 15 {
        out.par_chunks_mut(inter).zip(gate_up.par_chunks(2 * inter)).for_each(one);
    } else {
        out.chunks_mut(inter).zip(gate_up.chunks(2 * inter)).for_each(one);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let body = a.len() / 8 * 8;
    for (x, y) in a[..body].chunks_exact(8).zip(b[..body].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in body..a.len() {
        s += a[i] * b[i];
    }
    s
}
