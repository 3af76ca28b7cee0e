//! The Llama-family decoder over autograd: Llama (1/2/3.x, SmolLM), Qwen2 (q/k/v bias) and Mistral.
//!
//! ```text
//! x_0 = E[input_ids]                                                     embed_tokens  [N, hidden]
//! for each layer l:
//!   h   = RMSNorm(x, w_in)                                               input_layernorm
//!   q,k = RoPE(h W_q^T + b_q), RoPE(h W_k^T + b_k);  v = h W_v^T + b_v    GQA: Hq query heads on Hkv kv heads
//!   x   = x + Attention_causal(q, k, v) W_o^T (+ b_o)                     self_attn
//!   h   = RMSNorm(x, w_post)                                             post_attention_layernorm
//!   x   = x + (silu(h W_g^T) * (h W_u^T)) W_d^T                          mlp (SwiGLU)
//! hidden = RMSNorm(x, w_final)                                           norm
//! logits = hidden W_lm^T          (W_lm = E when tie_word_embeddings)    lm_head
//! ```
//!
//! **Batches** are packed and unpadded ([`Batch`]): one row of `N` tokens, positions restarting per sequence,
//! optional segment ids so packed sequences do not see each other. Activations are `[N, hidden]`; attention
//! runs on `[1, N, heads, head_dim]` with the segment ids.
//!
//! **Dtypes.** Weights keep the dtype they were loaded in (f32, bf16 or f16; all f64 for reference checks).
//! Activations are f32 (f64 for an f64 model): bf16 weights are widened inside the GEMMs, as the fused ops do.
//! Every gradient has its parameter's dtype (bf16 weights get bf16 gradients, as in PyTorch).
//!
//! **Parameters** are autograd leaves under their HF names ([`LlamaModel::parameters`]). A leaf made with
//! `Var::param` is trainable, one made with `Var::constant` is frozen; [`LlamaModel::set_trainable`] chooses by
//! name. A tied model has one embedding leaf, used by both the lookup and the lm_head, so its gradient holds
//! both contributions (as HF's `named_parameters()` lists it once).
//!
//! **Loss** is the fused `linear_cross_entropy` over the final hidden states (the `[N, vocab]` logits are never
//! made), with HF's causal shift applied per sequence ([`Batch::shift_labels`]).

mod batch;
mod layers;

pub use batch::Batch;
pub use layers::{Linear, LoraAdapter};

use crate::{bail, Architecture, Error, ModelConfig, Result, WeightDType, WeightMap};
use ferrotune_autograd::Var;
use ferrotune_tensor::ops::{AttentionOptions, Reduction, RopeScaling, RopeTable, IGNORE_INDEX};
use ferrotune_tensor::rng::mix64;
use ferrotune_tensor::{DType, Device, Tensor};
use std::sync::Arc;

/// q/k/v/o projections of one layer (HF `self_attn`).
#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

/// gate/up/down projections of one layer (HF `mlp`).
#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// One pre-norm decoder layer (HF `model.layers.{i}`).
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: Var,
    pub post_attention_layernorm: Var,
}

/// A layer's seven projections under their module names relative to the layer, in HF's `named_modules()`
/// order: the one list parameter naming, LoRA attachment and the optimizer walk.
fn projections<'a>(a: &'a Attention, m: &'a Mlp) -> [(&'static str, &'a Linear); 7] {
    [
        ("self_attn.q_proj", &a.q_proj),
        ("self_attn.k_proj", &a.k_proj),
        ("self_attn.v_proj", &a.v_proj),
        ("self_attn.o_proj", &a.o_proj),
        ("mlp.gate_proj", &m.gate_proj),
        ("mlp.up_proj", &m.up_proj),
        ("mlp.down_proj", &m.down_proj),
    ]
}

/// [`projections`], mutable. Takes the two halves rather than the layer so callers can still borrow its norms.
fn projections_mut<'a>(a: &'a mut Attention, m: &'a mut Mlp) -> [(&'static str, &'a mut Linear); 7] {
    let Attention { q_proj, k_proj, v_proj, o_proj } = a;
    let Mlp { gate_proj, up_proj, down_proj } = m;
    [
        ("self_attn.q_proj", q_proj),
        ("self_attn.k_proj", k_proj),
        ("self_attn.v_proj", v_proj),
        ("self_attn.o_proj", o_proj),
        ("mlp.gate_proj", gate_proj),
        ("mlp.up_proj", up_proj),
        ("mlp.down_proj", down_proj),
    ]
}

/// Per-batch inputs of [`DecoderLayer::forward`], from [`LlamaModel::layer_context`].
#[derive(Debug, Clone)]
pub struct LayerContext {
    rope: Arc<RopeTable>,
    positions: Tensor,
    attention: AttentionOptions,
    tokens: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rms_norm_eps: f64,
    /// A training step's seed: turns on LoRA dropout (`None`: evaluation, no dropout).
    dropout_seed: Option<u64>,
}

impl LayerContext {
    /// This context with training-mode dropout seeded by `seed` (LoRA dropout), or none.
    pub fn with_dropout_seed(mut self, seed: Option<u64>) -> LayerContext {
        self.dropout_seed = seed;
        self
    }

    pub fn dropout_seed(&self) -> Option<u64> {
        self.dropout_seed
    }
}

impl DecoderLayer {
    /// One pre-norm layer on the residual stream `x [N, hidden]`:
    /// `x + o(attn(RoPE(q(n1 x)), RoPE(k(n1 x)), v(n1 x)))`, then `x + down(silu(gate(n2 x)) * up(n2 x))`.
    pub fn forward(&self, x: &Var, ctx: &LayerContext) -> Result<Var> {
        self.forward_graph(x, ctx, true)
    }

    /// The graph of [`DecoderLayer::forward`] for backpropagation only (activation checkpointing's recompute,
    /// where the output's value is already known): the MLP's down projection, whose product feeds nothing but
    /// that value, is left out (a quarter of the layer's GEMM work; see [`Linear::forward_without_value`]).
    /// The gradients are the same, bit for bit; the returned value is not the layer's output.
    pub fn forward_for_backward(&self, x: &Var, ctx: &LayerContext) -> Result<Var> {
        self.forward_graph(x, ctx, false)
    }

    fn forward_graph(&self, x: &Var, ctx: &LayerContext, output_value_needed: bool) -> Result<Var> {
        let (n, hq, hkv, d) = (ctx.tokens, ctx.heads, ctx.kv_heads, ctx.head_dim);
        let a = &self.self_attn;
        let seed = ctx.dropout_seed;
        let h = x.rms_norm(&self.input_layernorm, ctx.rms_norm_eps)?;
        let q = a.q_proj.forward_with_dropout(&h, seed)?.reshape(&[1, n, hq, d])?.rope(&ctx.rope, &ctx.positions)?;
        let k = a.k_proj.forward_with_dropout(&h, seed)?.reshape(&[1, n, hkv, d])?.rope(&ctx.rope, &ctx.positions)?;
        let v = a.v_proj.forward_with_dropout(&h, seed)?.reshape(&[1, n, hkv, d])?;
        let attended = Var::attention(&q, &k, &v, &ctx.attention)?.reshape(&[n, hq * d])?;
        let x = x.add(&a.o_proj.forward_with_dropout(&attended, seed)?)?;
        let m = &self.mlp;
        let h = x.rms_norm(&self.post_attention_layernorm, ctx.rms_norm_eps)?;
        let gated = m.gate_proj.forward_with_dropout(&h, seed)?.swiglu(&m.up_proj.forward_with_dropout(&h, seed)?)?;
        let down = if output_value_needed {
            m.down_proj.forward_with_dropout(&gated, seed)?
        } else {
            m.down_proj.forward_without_value(&gated, seed)?
        };
        Ok(x.add(&down)?)
    }
}

/// A Llama-family causal language model. See the module docs for the math, batches and dtypes. `clone()` is
/// shallow: the clone shares the parameter leaves (and their gradients).
#[derive(Debug, Clone)]
pub struct LlamaModel {
    config: ModelConfig,
    pub embed_tokens: Var,
    pub layers: Vec<DecoderLayer>,
    pub norm: Var,
    /// `None` when the embeddings are tied: the lm_head is `embed_tokens`.
    pub lm_head: Option<Var>,
    /// Tables for positions `0..max_position_embeddings`; longer batches get a table of their own.
    rope: Arc<RopeTable>,
    /// f32, or f64 for an f64 model.
    compute_dtype: DType,
}

/// How one weight is initialised for pre-training (HF `PreTrainedModel._init_weights`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum WeightKind {
    /// normal(0, initializer_range), the `padding_idx` row zeroed.
    Embedding,
    /// normal(0, initializer_range).
    Linear,
    /// zeros.
    Bias,
    /// ones.
    Norm,
}

/// Seeded random initialisation for training from scratch: HF's `_init_weights` for these models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomInit {
    pub seed: u64,
    /// Standard deviation of linear and embedding weights (HF `initializer_range`, 0.02 by default).
    pub initializer_range: f64,
    pub dtype: WeightDType,
}

impl Default for RandomInit {
    fn default() -> Self {
        RandomInit { seed: 0, initializer_range: 0.02, dtype: WeightDType::F32 }
    }
}

impl LlamaModel {
    /// Build the model from HF-named tensors. Every tensor the config implies must be present with its exact
    /// shape (errors name the tensor, the file and both shapes); tensors the model does not use are an error
    /// too, listing them, except an `lm_head.weight` next to tied embeddings, which HF ignores as well (the
    /// embedding wins) and so is dropped here.
    pub fn from_weights(config: ModelConfig, mut weights: WeightMap) -> Result<LlamaModel> {
        config.validate()?;
        let source = weights.source().to_string();
        let model = LlamaModel::build(config, &mut |name, shape, _kind| weights.take(name, shape))?;
        if model.config.tie_word_embeddings {
            let (v, h) = (model.config.vocab_size, model.config.hidden_size);
            weights.take_optional("lm_head.weight", &[v, h])?;
        }
        let leftover = weights.into_remaining();
        if !leftover.is_empty() {
            let shown: Vec<&String> = leftover.iter().take(8).collect();
            let more = if leftover.len() > shown.len() { format!(" and {} more", leftover.len() - shown.len()) } else { String::new() };
            bail!(
                "{source}: {} tensor(s) are not used by a {:?} model with this config: {shown:?}{more}; the checkpoint \
                 and config.json disagree (check num_hidden_layers, attention_bias, mlp_bias, tie_word_embeddings)",
                leftover.len(),
                model.config.architecture
            );
        }
        Ok(model)
    }

    /// A freshly initialised model (HF `_init_weights`): linear and embedding weights normal(0,
    /// `initializer_range`) with the `pad_token_id` row of the embedding zeroed, norm weights 1, biases 0. Each
    /// tensor draws from its own stream, `mix64(seed + index)`, so the result does not depend on thread count.
    pub fn random(config: ModelConfig, init: &RandomInit) -> Result<LlamaModel> {
        config.validate()?;
        if !(init.initializer_range.is_finite() && init.initializer_range >= 0.0) {
            bail!("initializer_range must be finite and >= 0, got {}", init.initializer_range);
        }
        let dtype = init.dtype.dtype();
        let pad = config.pad_token_id.map(|p| p as usize).filter(|&p| p < config.vocab_size);
        let mut index = 0u64;
        LlamaModel::build(config, &mut |_name, shape, kind| {
            index += 1;
            let seed = mix64(init.seed.wrapping_add(index));
            Ok(match kind {
                WeightKind::Linear => Tensor::randn(seed, shape, 0.0, init.initializer_range, dtype)?,
                WeightKind::Embedding => {
                    let mut rows = Tensor::randn(seed, shape, 0.0, init.initializer_range, DType::F64)?.to_vec::<f64>()?;
                    if let Some(p) = pad {
                        rows[p * shape[1]..(p + 1) * shape[1]].fill(0.0);
                    }
                    Tensor::from_vec(rows, shape)?.to_dtype(dtype)?
                }
                WeightKind::Bias => Tensor::zeros(shape, dtype, ferrotune_tensor::Device::Cpu)?,
                WeightKind::Norm => Tensor::ones(shape, dtype, ferrotune_tensor::Device::Cpu)?,
            })
        })
    }

    /// Assemble the model, asking `source` for each tensor by HF name, shape and kind, in HF's
    /// `named_parameters()` order.
    fn build(config: ModelConfig, source: &mut TensorSource<'_>) -> Result<LlamaModel> {
        let mut src = Source(source);
        let c = &config;
        let (h, v, inter) = (c.hidden_size, c.vocab_size, c.intermediate_size);
        let (q_out, kv_out) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        let embed_tokens = src.leaf("model.embed_tokens.weight", &[v, h], WeightKind::Embedding)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let self_attn = Attention {
                q_proj: src.linear(&format!("{p}.self_attn.q_proj"), q_out, h, c.qkv_bias())?,
                k_proj: src.linear(&format!("{p}.self_attn.k_proj"), kv_out, h, c.qkv_bias())?,
                v_proj: src.linear(&format!("{p}.self_attn.v_proj"), kv_out, h, c.qkv_bias())?,
                o_proj: src.linear(&format!("{p}.self_attn.o_proj"), h, q_out, c.o_bias())?,
            };
            let mlp = Mlp {
                gate_proj: src.linear(&format!("{p}.mlp.gate_proj"), inter, h, c.mlp_bias)?,
                up_proj: src.linear(&format!("{p}.mlp.up_proj"), inter, h, c.mlp_bias)?,
                down_proj: src.linear(&format!("{p}.mlp.down_proj"), h, inter, c.mlp_bias)?,
            };
            let input_layernorm = src.leaf(&format!("{p}.input_layernorm.weight"), &[h], WeightKind::Norm)?;
            let post_attention_layernorm = src.leaf(&format!("{p}.post_attention_layernorm.weight"), &[h], WeightKind::Norm)?;
            layers.push(DecoderLayer { self_attn, mlp, input_layernorm, post_attention_layernorm });
        }
        let norm = src.leaf("model.norm.weight", &[h], WeightKind::Norm)?;
        let lm_head = if c.tie_word_embeddings { None } else { Some(src.leaf("lm_head.weight", &[v, h], WeightKind::Linear)?) };

        // One dtype family for the whole model: f64 everywhere (reference runs), or any mix of f32/bf16/f16
        // (computed in f32). An f64 tensor among f32 ones would make the GEMMs fail later, far from the cause.
        let compute_dtype = if embed_tokens.value().dtype() == DType::F64 { DType::F64 } else { DType::F32 };
        let model = LlamaModel {
            rope: Arc::new(rope_table(&config, config.max_position_embeddings)?),
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            compute_dtype,
        };
        for (name, var) in model.parameters() {
            if (var.value().dtype() == DType::F64) != (compute_dtype == DType::F64) {
                bail!(
                    "tensor {name:?} is {} but model.embed_tokens.weight is {}; an f64 model must be f64 throughout \
                     (and an f32/bf16/f16 one must hold no f64 tensor)",
                    var.value().dtype(),
                    model.embed_tokens.value().dtype()
                );
            }
        }
        Ok(model)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The dtype activations are computed in: f32, or f64 for an f64 model.
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// The `[vocab, hidden]` output projection: `lm_head.weight`, or the embedding when tied.
    pub fn lm_head_weight(&self) -> &Var {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Every parameter under its HF name, in HF's `named_parameters()` order; a tied model lists the embedding
    /// once (no `lm_head.weight`). Cloning a `Var` is cheap (a shared handle): gradients read from these are the
    /// model's.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        self.collect_parameters(false)
    }

    fn collect_parameters(&self, with_lora: bool) -> Vec<(String, Var)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.clone())];
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, lin) in projections(&layer.self_attn, &layer.mlp) {
                out.push((format!("model.layers.{i}.{name}.weight"), lin.weight.clone()));
                if let Some(b) = &lin.bias {
                    out.push((format!("model.layers.{i}.{name}.bias"), b.clone()));
                }
                if let (true, Some(l)) = (with_lora, &lin.lora) {
                    out.push((format!("model.layers.{i}.{name}.lora_A.weight"), l.a.clone()));
                    out.push((format!("model.layers.{i}.{name}.lora_B.weight"), l.b.clone()));
                }
            }
            out.push((format!("model.layers.{i}.input_layernorm.weight"), layer.input_layernorm.clone()));
            out.push((format!("model.layers.{i}.post_attention_layernorm.weight"), layer.post_attention_layernorm.clone()));
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(w) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), w.clone()));
        }
        out
    }

    /// Mutable handles to every parameter, same names and order as [`LlamaModel::parameters`]: an optimizer
    /// writes updated values by replacing the leaf (`*var = Var::param(new_value)`).
    pub fn parameters_mut(&mut self) -> Vec<(String, &mut Var)> {
        self.collect_parameters_mut(false)
    }

    /// Every parameter including the LoRA matrices: [`LlamaModel::parameters`]'s order with each projection's
    /// `lora_A.weight` and `lora_B.weight` right after its weight and bias (PEFT's module order).
    pub fn parameters_with_adapters(&self) -> Vec<(String, Var)> {
        self.collect_parameters(true)
    }

    /// [`LlamaModel::parameters_with_adapters`], mutable (the optimizer replaces leaves).
    pub fn parameters_with_adapters_mut(&mut self) -> Vec<(String, &mut Var)> {
        self.collect_parameters_mut(true)
    }

    fn collect_parameters_mut(&mut self, with_lora: bool) -> Vec<(String, &mut Var)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &mut self.embed_tokens)];
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let DecoderLayer { self_attn, mlp, input_layernorm, post_attention_layernorm } = layer;
            for (name, lin) in projections_mut(self_attn, mlp) {
                let Linear { weight, bias, lora } = lin;
                out.push((format!("model.layers.{i}.{name}.weight"), weight));
                if let Some(b) = bias.as_mut() {
                    out.push((format!("model.layers.{i}.{name}.bias"), b));
                }
                if let (true, Some(l)) = (with_lora, lora.as_mut()) {
                    out.push((format!("model.layers.{i}.{name}.lora_A.weight"), &mut l.a));
                    out.push((format!("model.layers.{i}.{name}.lora_B.weight"), &mut l.b));
                }
            }
            out.push((format!("model.layers.{i}.input_layernorm.weight"), input_layernorm));
            out.push((format!("model.layers.{i}.post_attention_layernorm.weight"), post_attention_layernorm));
        }
        out.push(("model.norm.weight".to_string(), &mut self.norm));
        if let Some(w) = self.lm_head.as_mut() {
            out.push(("lm_head.weight".to_string(), w));
        }
        out
    }

    /// Move every parameter (LoRA matrices included) to `device`, keeping each one's trainability; gradients
    /// accumulated so far are dropped. Batches go along with [`Batch::to_device`]; the RoPE table stays on the
    /// host (the device evaluates its cos/sin from the table's frequencies).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        for (name, var) in self.collect_parameters_mut(true) {
            let value = var.value().to_device(device).map_err(|e| Error::msg(format!("{name}: {e}")))?;
            *var = if var.requires_grad() { Var::param(value) } else { Var::constant(value) };
        }
        Ok(())
    }

    /// Make the parameters whose HF name satisfies `trainable` leaves that receive gradients (`Var::param`) and
    /// the rest constants (`Var::constant`, no gradient, no weight-gradient GEMM). Values are kept; gradients
    /// accumulated so far are dropped, so call this before training.
    pub fn set_trainable(&mut self, trainable: impl Fn(&str) -> bool) {
        for (name, var) in self.parameters_mut() {
            let value = var.value().clone();
            *var = if trainable(&name) { Var::param(value) } else { Var::constant(value) };
        }
    }

    /// Parameters that currently receive gradients.
    pub fn trainable_parameters(&self) -> Vec<(String, Var)> {
        self.parameters().into_iter().filter(|(_, v)| v.requires_grad()).collect()
    }

    /// The weights under HF names, as `save_pretrained` writes them (a tied model has no `lm_head.weight`).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.parameters().into_iter().map(|(name, var)| (name, var.value().clone())).collect()
    }

    /// Number of parameter elements (the embedding counted once when tied).
    pub fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|(_, v)| v.value().elem_count()).sum()
    }

    /// The final hidden states `[N, hidden]` (after the last RMSNorm), in the compute dtype.
    ///
    /// The same as `embed`, then each layer's [`DecoderLayer::forward`] with [`LlamaModel::layer_context`], then
    /// `final_norm`: a trainer that checkpoints activations drives those steps itself.
    pub fn forward_hidden(&self, batch: &Batch) -> Result<Var> {
        let ctx = self.layer_context(batch)?;
        let mut x = self.embed(batch)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &ctx).map_err(|e| Error::msg(format!("model.layers.{i}: {e}")))?;
        }
        self.final_norm(&x)
    }

    /// What every layer needs for this batch besides its weights (RoPE table, positions, attention mask rules).
    /// Checks the batch first: token ids inside the vocabulary, Mistral sequences within the sliding window,
    /// positions within reach.
    pub fn layer_context(&self, batch: &Batch) -> Result<LayerContext> {
        self.check_batch(batch)?;
        let c = &self.config;
        Ok(LayerContext {
            rope: self.rope_for(batch)?,
            positions: batch.position_ids().clone(),
            attention: AttentionOptions { causal: true, scale: None, segment_ids: batch.segment_ids().cloned() },
            tokens: batch.len(),
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            rms_norm_eps: c.rms_norm_eps,
            dropout_seed: None,
        })
    }

    /// The token embeddings `[N, hidden]` in the compute dtype (HF's `padding_idx` rule for the gradient).
    pub fn embed(&self, batch: &Batch) -> Result<Var> {
        layers::embedding(&self.embed_tokens, batch.tokens(), batch.input_ids(), self.config.pad_token_id, self.compute_dtype)
    }

    /// The last RMSNorm (HF `model.norm`).
    pub fn final_norm(&self, x: &Var) -> Result<Var> {
        Ok(x.rms_norm(&self.norm, self.config.rms_norm_eps)?)
    }

    /// `[N, vocab]` logits in the compute dtype, for evaluation and generation (training uses
    /// [`LlamaModel::loss`], which never makes this matrix).
    pub fn logits(&self, batch: &Batch) -> Result<Var> {
        let hidden = self.forward_hidden(batch)?;
        Ok(hidden.matmul(&self.lm_head_weight().t()?)?)
    }

    /// HF's causal-LM loss: `labels [N]` are aligned with the input ids (-100 where no loss is wanted), each
    /// sequence's position `t` predicts `labels[t + 1]`, and the mean is over all valid targets of the batch
    /// (HF's reduction when `num_items_in_batch` is not given). A batch without any valid target has loss 0.
    pub fn loss(&self, batch: &Batch, labels: &[i64]) -> Result<Var> {
        let targets = batch.shift_labels(labels)?;
        self.loss_on_targets(batch, &targets, Reduction::Mean)
    }

    /// The loss on already-shifted targets (`targets[t]` is what position `t` predicts, -100 for nothing).
    /// `Reduction::Sum` lets a trainer divide by the valid-token count of a whole accumulated batch, as HF does
    /// with `num_items_in_batch`.
    pub fn loss_on_targets(&self, batch: &Batch, targets: &[i64], reduction: Reduction) -> Result<Var> {
        if targets.len() != batch.len() {
            bail!("{} targets for a batch of {} tokens", targets.len(), batch.len());
        }
        let hidden = self.forward_hidden(batch)?;
        self.loss_from_hidden(&hidden, targets, reduction)
    }

    /// The fused lm_head + cross-entropy on final hidden states `[N, hidden]` (from [`LlamaModel::final_norm`])
    /// against already-shifted targets, for trainers that drive the layers themselves.
    pub fn loss_from_hidden(&self, hidden: &Var, targets: &[i64], reduction: Reduction) -> Result<Var> {
        if targets.len() != hidden.shape()[0] {
            bail!("{} targets for {} hidden states", targets.len(), hidden.shape()[0]);
        }
        let vocab = self.config.vocab_size as i64;
        if let Some((i, t)) = targets.iter().enumerate().find(|(_, &t)| t != IGNORE_INDEX && !(0..vocab).contains(&t)) {
            bail!("target {t} at token {i} is neither -100 nor a token id below vocab_size {vocab}");
        }
        let targets = Tensor::from_vec(targets.to_vec(), &[targets.len()])?;
        Ok(Var::linear_cross_entropy(hidden, self.lm_head_weight(), &targets, IGNORE_INDEX, reduction)?)
    }

    /// Every projection under its HF module name (`model.layers.{i}.self_attn.q_proj`, ...), in
    /// `named_modules()` order: where LoRA branches attach.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, lin) in projections(&layer.self_attn, &layer.mlp) {
                out.push((format!("model.layers.{i}.{name}"), lin));
            }
        }
        out
    }

    /// [`LlamaModel::linears`], mutable.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, lin) in projections_mut(&mut layer.self_attn, &mut layer.mlp) {
                out.push((format!("model.layers.{i}.{name}"), lin));
            }
        }
        out
    }

    /// The LoRA matrices under PEFT's names without the `base_model.model.` prefix
    /// (`model.layers.0.self_attn.q_proj.lora_A.weight`, then `lora_B`), in module order.
    pub fn lora_parameters(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (name, lin) in self.linears() {
            if let Some(l) = &lin.lora {
                out.push((format!("{name}.lora_A.weight"), l.a.clone()));
                out.push((format!("{name}.lora_B.weight"), l.b.clone()));
            }
        }
        out
    }

    /// [`LlamaModel::lora_parameters`], mutable (an optimizer replaces the leaves).
    pub fn lora_parameters_mut(&mut self) -> Vec<(String, &mut Var)> {
        let mut out = Vec::new();
        for (name, lin) in self.linears_mut() {
            if let Some(l) = lin.lora.as_mut() {
                out.push((format!("{name}.lora_A.weight"), &mut l.a));
                out.push((format!("{name}.lora_B.weight"), &mut l.b));
            }
        }
        out
    }

    /// Fold every LoRA branch into its weight (PEFT `merge_and_unload`).
    pub fn merge_lora(&mut self) -> Result<()> {
        for (name, lin) in self.linears_mut() {
            lin.merge_lora().map_err(|e| Error::msg(format!("{name}: merging LoRA: {e}")))?;
        }
        Ok(())
    }

    /// Reject what this model would otherwise compute differently from HF, or fail on deep inside a kernel.
    fn check_batch(&self, batch: &Batch) -> Result<()> {
        let c = &self.config;
        if let Some((i, t)) = batch.tokens().iter().enumerate().find(|(_, &t)| t as usize >= c.vocab_size) {
            bail!("token id {t} at position {i} is outside the vocabulary (vocab_size {})", c.vocab_size);
        }
        if let (Architecture::Mistral, Some(window)) = (c.architecture, c.sliding_window) {
            // HF masks keys more than `window - 1` tokens back; a sequence of at most `window` tokens never has
            // such a key, so full causal attention is exact there and only there.
            if let Some(&longest) = batch.sequence_lengths().iter().filter(|&&len| len > window).max() {
                bail!(
                    "a sequence of {longest} tokens is longer than Mistral's sliding_window of {window}; ferrotune does \
                     not implement sliding-window attention, so cut sequences to at most {window} tokens (cutoff_len)"
                );
            }
        }
        let limit = c.max_position_embeddings.max(batch.len());
        if batch.max_position() >= limit {
            bail!(
                "position id {} is beyond both max_position_embeddings ({}) and the batch length ({}); positions \
                 restart at 0 for each packed sequence",
                batch.max_position(),
                c.max_position_embeddings,
                batch.len()
            );
        }
        Ok(())
    }

    /// The RoPE table for this batch: the cached one, or a longer one for positions past it. Dynamic NTK grows
    /// theta with the batch's length beyond `original_max_position_embeddings` (HF recomputes its frequencies
    /// per forward the same way, without HF's memory of earlier long batches).
    fn rope_for(&self, batch: &Batch) -> Result<Arc<RopeTable>> {
        let needed = batch.max_position() + 1;
        let dynamic_grows = matches!(self.config.rope_scaling,
            RopeScaling::Dynamic { original_max_position_embeddings, .. } if needed > original_max_position_embeddings);
        if needed <= self.rope.max_positions() && !dynamic_grows {
            return Ok(self.rope.clone());
        }
        Ok(Arc::new(rope_table(&self.config, needed)?))
    }
}

fn rope_table(c: &ModelConfig, seq_len: usize) -> Result<RopeTable> {
    Ok(RopeTable::new(c.head_dim, c.rope_theta, &c.rope_scaling, c.max_position_embeddings, seq_len)?)
}

/// Gives `build` the tensor for an HF name, shape and kind (a checkpoint's, or a fresh random one).
type TensorSource<'a> = dyn FnMut(&str, &[usize], WeightKind) -> Result<Tensor> + 'a;

/// Where `build` gets its tensors, checked to be floating point.
struct Source<'a, 'b>(&'a mut TensorSource<'b>);

impl Source<'_, '_> {
    fn leaf(&mut self, name: &str, shape: &[usize], kind: WeightKind) -> Result<Var> {
        let t = (self.0)(name, shape, kind)?;
        if !t.dtype().is_float() {
            bail!("tensor {name:?} has dtype {}; model weights must be floating point", t.dtype());
        }
        Ok(Var::param(t))
    }

    fn linear(&mut self, prefix: &str, out_features: usize, in_features: usize, bias: bool) -> Result<Linear> {
        let weight = self.leaf(&format!("{prefix}.weight"), &[out_features, in_features], WeightKind::Linear)?;
        let bias = if bias { Some(self.leaf(&format!("{prefix}.bias"), &[out_features], WeightKind::Bias)?) } else { None };
        Ok(Linear::new(weight, bias))
    }
}
