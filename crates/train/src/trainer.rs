//! The training loop: HF `Trainer` semantics on packed micro-batches.
//!
//! Per optimizer step: `gradient_accumulation_steps` micro-batches (the last step of an epoch takes what is
//! left), each contributing `sum of token losses / num_items_in_batch` where `num_items_in_batch` counts the
//! not-ignored labels of all micro-batches of the step (transformers 5's loss normalisation, so the step's
//! gradient is the gradient of the mean over all its tokens whatever the split). Then the global gradient
//! norm is clipped to `max_grad_norm`, the optimizer steps at `lr · factor(step)`, and logging, evaluation
//! and checkpointing follow HF's `_maybe_log_save_evaluate` order.
//!
//! **Determinism.** Every random draw is a pure function of `(seed, global_step, micro-batch)`: the data
//! order of epoch `e` comes from `seed + e`, LoRA dropout and NEFTune noise from `mix64` of the step and
//! micro-batch, so a run resumed from `checkpoint-N` (weights, optimizer moments, schedule state, position in
//! the epoch) reaches bit-identical weights to one that never stopped.

use crate::adapters::{self, FreezeSettings, LoraSettings};
use crate::data::{BatchSource, MicroBatch};
use crate::optim::{grad_norm_and_clip, hf_decays, Optimizer, OptimizerConfig, OptimizerKind, ParamGroup};
use crate::schedule::{Schedule, ScheduleKind, ScheduleKwargs};
use ferrotune_args::logging::{self as artifacts, LogEntry, TrainerLog, TrainerState};
use ferrotune_args::Value;
use ferrotune_autograd::{no_grad, Var};
use ferrotune_models::llama::{DecoderLayer, LayerContext, LlamaModel};
use ferrotune_models::safetensors::{save_safetensors, SafetensorsFile};
use ferrotune_models::{bail, Context, Error, ModelTokenizer, Result, WeightMap};
use ferrotune_tensor::ops::Reduction;
use ferrotune_tensor::rng::mix64;
use ferrotune_tensor::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `finetuning_type` with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Full,
    Freeze(FreezeSettings),
    Lora(LoraSettings),
}

/// Weight storage during training (LLaMA-Factory's compute type). Activations, gradients of f32 leaves,
/// the loss and the optimizer state are f32 in every mode; the CPU has no fast half-precision arithmetic to
/// gain from, so the modes differ only in how weights are stored:
///
/// - `F32` (default): every weight f32.
/// - `Bf16` (`bf16: true`): frozen weights stored bf16 (half the memory, widened inside the GEMMs); trainable
///   ones f32, as LLaMA-Factory upcasts trainable parameters under AMP.
/// - `F16` (`fp16: true`): the same with f16 storage for frozen weights. No loss scaling is needed or done:
///   gradients are computed in f32.
/// - `PureBf16` (`pure_bf16: true`): every weight bf16, trainable ones included; their gradients are bf16 and
///   each optimizer update is computed in f32 and rounded to bf16 (optimizer state f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
    PureBf16,
}

/// Trainer settings under LLaMA-Factory / HF names (a field copy from `ferrotune_args::TrainArgs`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerOptions {
    pub output_dir: PathBuf,
    pub overwrite_output_dir: bool,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    pub optim: OptimizerKind,
    pub num_train_epochs: f64,
    /// > 0 overrides `num_train_epochs`.
    pub max_steps: i64,
    pub lr_scheduler_type: ScheduleKind,
    pub lr_scheduler_kwargs: ScheduleKwargs,
    /// >= 1 a count, in (0, 1) a ratio of the total steps (transformers 5).
    pub warmup_steps: f64,
    pub warmup_ratio: f64,
    /// Log every N optimizer steps (0: never); below 1, a ratio of the total steps.
    pub logging_steps: f64,
    pub logging_first_step: bool,
    /// Save `checkpoint-N` every N steps and at the end (0: never); below 1, a ratio.
    pub save_steps: f64,
    pub save_total_limit: Option<usize>,
    /// Checkpoints without optimizer/scheduler state (cannot be resumed exactly).
    pub save_only_model: bool,
    /// Evaluate every N steps (0: only at the end); below 1, a ratio.
    pub eval_steps: f64,
    pub seed: u64,
    pub gradient_checkpointing: bool,
    pub neftune_noise_alpha: Option<f64>,
    /// LoRA+: `lora_B` (and 1-D trainables) at `lr · ratio`.
    pub loraplus_lr_ratio: Option<f64>,
    pub include_num_input_tokens_seen: bool,
    /// A `checkpoint-N` folder to resume from.
    pub resume_from_checkpoint: Option<PathBuf>,
    pub plot_loss: bool,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        TrainerOptions {
            output_dir: PathBuf::from("trainer_output"),
            overwrite_output_dir: false,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            learning_rate: 5e-5,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            optim: OptimizerKind::AdamW,
            num_train_epochs: 3.0,
            max_steps: -1,
            lr_scheduler_type: ScheduleKind::Linear,
            lr_scheduler_kwargs: ScheduleKwargs::default(),
            warmup_steps: 0.0,
            warmup_ratio: 0.0,
            logging_steps: 500.0,
            logging_first_step: false,
            save_steps: 500.0,
            save_total_limit: None,
            save_only_model: false,
            eval_steps: 0.0,
            seed: 42,
            gradient_checkpointing: true,
            neftune_noise_alpha: None,
            loraplus_lr_ratio: None,
            include_num_input_tokens_seen: false,
            resume_from_checkpoint: None,
            plot_loss: false,
        }
    }
}

/// Apply the method and the precision to a freshly loaded model: what trains, LoRA branches, weight dtypes.
pub fn prepare_model(model: &mut LlamaModel, method: &Method, precision: Precision) -> Result<()> {
    match method {
        Method::Full => adapters::setup_full(model),
        Method::Freeze(s) => {
            adapters::setup_freeze(model, s)?;
        }
        Method::Lora(s) => {
            adapters::setup_lora(model, s)?;
        }
    }
    apply_precision(model, precision)
}

/// Cast weights for `precision` (see [`Precision`]); f64 models are left alone.
pub fn apply_precision(model: &mut LlamaModel, precision: Precision) -> Result<()> {
    if model.compute_dtype() == DType::F64 {
        return Ok(());
    }
    for (_, var) in model.parameters_with_adapters_mut() {
        let trainable = var.requires_grad();
        let want = match (precision, trainable) {
            (Precision::F32, _) | (Precision::Bf16 | Precision::F16, true) => DType::F32,
            (Precision::Bf16, false) | (Precision::PureBf16, _) => DType::BF16,
            (Precision::F16, false) => DType::F16,
        };
        if var.value().dtype() != want {
            let t = var.value().to_dtype(want)?;
            *var = if trainable { Var::param(t) } else { Var::constant(t) };
        }
    }
    Ok(())
}

/// Names and leaves of every trainable parameter (base parameters and LoRA matrices), in PEFT module order.
pub fn trainable_parameters(model: &LlamaModel) -> Vec<(String, Var)> {
    model.parameters_with_adapters().into_iter().filter(|(_, v)| v.requires_grad()).collect()
}

fn trainable_parameters_mut(model: &mut LlamaModel) -> Vec<(String, &mut Var)> {
    model.parameters_with_adapters_mut().into_iter().filter(|(_, v)| v.requires_grad()).collect()
}

/// One layer with activation checkpointing: the forward runs without recording a graph (only the input is
/// kept); backward re-runs the layer with gradients on a detached copy of the input and backpropagates the
/// incoming gradient through it.
///
/// With `y = f(x; θ)` and upstream gradient `G = dL/dy`, the recomputed graph gives `dL/dx = J_x(f)^T G`,
/// returned as this node's input gradient, while `dL/dθ = J_θ(f)^T G` accumulates straight into the trainable
/// leaves `θ` during the inner backward. The recompute builds the graph only
/// ([`DecoderLayer::forward_for_backward`]): the output value it would recompute is already known, so the MLP's
/// down projection is not run again. The leaves are listed as inputs (with no gradient returned) only so
/// the node is recorded when `x` itself needs none (LoRA: the embedding output is a constant).
pub fn checkpointed_layer(layer: &DecoderLayer, x: &Var, ctx: &LayerContext) -> Result<Var> {
    let out = no_grad(|| layer.forward(&x.detach(), ctx))?;
    let params = layer_trainable_leaves(layer);
    let mut inputs: Vec<&Var> = vec![x];
    inputs.extend(params.iter());
    let n_inputs = inputs.len();
    let x_needs_grad = x.requires_grad();
    let (layer, ctx, x_value) = (layer.clone(), ctx.clone(), x.value().clone());
    Ok(Var::from_fn(out.value().clone(), &inputs, "checkpoint(decoder_layer)", move |g| {
        let x_in = if x_needs_grad { Var::param(x_value.clone()) } else { Var::constant(x_value.clone()) };
        let y = layer.forward_for_backward(&x_in, &ctx).map_err(|e| ferrotune_tensor::Error::Msg(e.to_string()))?;
        y.backward_with(g.clone())?;
        let mut grads: Vec<Option<Tensor>> = vec![None; n_inputs];
        grads[0] = if x_needs_grad { x_in.grad() } else { None };
        Ok(grads)
    }))
}

fn layer_trainable_leaves(layer: &DecoderLayer) -> Vec<Var> {
    let a = &layer.self_attn;
    let m = &layer.mlp;
    let mut out = vec![layer.input_layernorm.clone(), layer.post_attention_layernorm.clone()];
    for lin in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj] {
        out.push(lin.weight.clone());
        out.extend(lin.bias.iter().cloned());
        if let Some(l) = &lin.lora {
            out.push(l.a.clone());
            out.push(l.b.clone());
        }
    }
    out.retain(|v| v.requires_grad());
    out
}

/// Forward of one micro-batch to the final hidden states, in training mode (dropout seed, NEFTune noise,
/// optional checkpointing) or evaluation mode (`train = None`).
pub fn forward_hidden(model: &LlamaModel, batch: &ferrotune_models::Batch, train: Option<TrainMode>) -> Result<Var> {
    let ctx = model.layer_context(batch)?.with_dropout_seed(train.map(|t| t.seed));
    let mut x = model.embed(batch)?;
    if let Some(TrainMode { seed, neftune_noise_alpha: Some(alpha), .. }) = train {
        // HF `neftune_post_forward_hook`: uniform(-m, m) noise with m = alpha / sqrt(L · d), L the padded length
        // of the batch; a packed row's equivalent of that length is its longest sequence.
        let longest = batch.sequence_lengths().iter().copied().max().unwrap_or(1);
        let hidden = x.shape()[1];
        let mag = alpha / ((longest * hidden) as f64).sqrt();
        let noise = Tensor::rand_uniform(mix64(seed ^ 0x4E45_4654), x.shape(), -mag, mag, x.value().dtype())?;
        x = x.add(&Var::constant(noise))?;
    }
    let checkpoint = train.is_some_and(|t| t.gradient_checkpointing);
    for (i, layer) in model.layers.iter().enumerate() {
        let r = if checkpoint { checkpointed_layer(layer, &x, &ctx) } else { layer.forward(&x, &ctx) };
        x = r.map_err(|e| Error::msg(format!("model.layers.{i}: {e}")))?;
    }
    model.final_norm(&x)
}

/// The arithmetic of the GEMMs of a training run (linear layers, LoRA branches and the lm_head; attention's
/// `QK^T` / `PV` products, about 2% at a few hundred tokens per sequence, and the elementwise ops are left out).
/// For a product `[N, in] x [in, out]` the forward costs `2 in out` FLOPs per token, the input gradient `G W` the
/// same again, and the weight gradient `X^T G` the same once more, paid only when the weight trains (LoRA and
/// freeze skip it for frozen weights; a LoRA branch of rank `r` costs `2 r (in + out)` per product). The fused
/// lm_head + loss runs only on tokens with a label (the prompt rows of SFT are skipped). With activation
/// checkpointing every decoder layer's forward runs again in backward, less the MLP's down projection
/// ([`DecoderLayer::forward_for_backward`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepFlops {
    /// FLOPs of the math itself: forward, input gradients, trainable weight gradients.
    pub model: f64,
    /// `model` plus the forward recomputed by activation checkpointing: what the CPU actually executes.
    pub executed: f64,
}

/// [`StepFlops`] of `tokens` trained tokens of which `label_tokens` carry a label, for `model` as prepared for
/// training (trainability read from the leaves).
pub fn training_flops(model: &LlamaModel, gradient_checkpointing: bool, tokens: u64, label_tokens: u64) -> StepFlops {
    let product = |in_f: usize, out_f: usize, trains: bool| -> (f64, f64) {
        let fwd = 2.0 * in_f as f64 * out_f as f64;
        (fwd, fwd * if trains { 2.0 } else { 1.0 })
    };
    let (mut layer_fwd, mut layer_bwd, mut recompute_fwd) = (0.0, 0.0, 0.0);
    // Layers below the first one with a trainable leaf (freeze) record no graph: forward only, no recompute.
    let mut backward_reaches = model.embed_tokens.requires_grad();
    for (i, layer) in model.layers.iter().enumerate() {
        let linears: Vec<_> = model.linears().into_iter().filter(|(name, _)| name.starts_with(&format!("model.layers.{i}."))).collect();
        backward_reaches |= [&layer.input_layernorm, &layer.post_attention_layernorm].iter().any(|v| v.requires_grad())
            || linears.iter().any(|(_, lin)| lin.weight.requires_grad() || lin.lora.is_some());
        for (name, lin) in linears {
            let (fwd, bwd) = product(lin.in_features(), lin.out_features(), lin.weight.requires_grad());
            let branch = lin.lora.as_ref().map_or(0.0, |l| 2.0 * l.rank() as f64 * (lin.in_features() + lin.out_features()) as f64);
            layer_fwd += fwd + branch;
            if backward_reaches {
                layer_bwd += bwd + 2.0 * branch;
                recompute_fwd += branch + if name.ends_with("mlp.down_proj") { 0.0 } else { fwd };
            }
        }
    }
    let head = model.lm_head_weight();
    let (head_fwd, head_bwd) = product(head.shape()[1], head.shape()[0], head.requires_grad());
    let model_flops = (layer_fwd + layer_bwd) * tokens as f64 + (head_fwd + head_bwd) * label_tokens as f64;
    let recompute = if gradient_checkpointing { recompute_fwd * tokens as f64 } else { 0.0 };
    StepFlops { model: model_flops, executed: model_flops + recompute }
}

/// Training-mode switches for one micro-batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainMode {
    /// Seeds LoRA dropout and NEFTune noise for this micro-batch.
    pub seed: u64,
    pub neftune_noise_alpha: Option<f64>,
    pub gradient_checkpointing: bool,
}

/// The summed token loss of a micro-batch (HF's shifted labels) and its count of target tokens.
pub fn micro_batch_loss(model: &LlamaModel, mb: &MicroBatch, train: Option<TrainMode>, reduction: Reduction) -> Result<Var> {
    let targets = mb.batch.shift_labels(&mb.labels)?;
    let hidden = forward_hidden(model, &mb.batch, train)?;
    model.loss_from_hidden(&hidden, &targets, reduction)
}

/// HF's evaluation loss: each batch's mean token loss, averaged over batches weighted by their item counts.
pub fn evaluate_loss(model: &LlamaModel, batches: &[MicroBatch]) -> Result<f64> {
    no_grad(|| {
        let (mut sum, mut items) = (0.0f64, 0usize);
        for mb in batches {
            let loss = micro_batch_loss(model, mb, None, Reduction::Mean)?.value().to_vec_f64()?[0];
            sum += loss * mb.num_items as f64;
            items += mb.num_items;
        }
        if items == 0 {
            bail!("the evaluation set is empty");
        }
        Ok(sum / items as f64)
    })
}

/// What [`Trainer::train`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutput {
    pub global_step: usize,
    pub train_loss: f64,
    pub metrics: Vec<(String, Value)>,
    pub eval_loss: Option<f64>,
    /// Tokens (all, no padding exists) seen by the forward passes of this run.
    pub tokens: u64,
    /// Of `tokens`, those with a label (not IGNORE_INDEX): the rows the loss is computed on.
    pub label_tokens: u64,
    pub runtime_secs: f64,
    /// Whether the run stopped early because `on_step_end` asked it to.
    pub interrupted: bool,
}

/// Hooks into the loop.
pub trait TrainerCallback {
    /// Called with each `Trainer.log` entry (training logs, eval logs, the final metrics).
    fn on_log(&mut self, _state: &TrainerState, _logs: &[(String, Value)]) {}
    /// Called after each optimizer step (and its logging/saving); return false to stop the run there, as an
    /// interruption would.
    fn on_step_end(&mut self, _state: &TrainerState) -> bool {
        true
    }
    /// Whether a run that `on_step_end` stops saves a checkpoint there first (a graceful stop, e.g. on Ctrl-C or
    /// the WebUI's Abort, that `resume_from_checkpoint` continues exactly). The default, false, keeps only the
    /// checkpoints already saved, as a kill would.
    fn checkpoint_on_stop(&self) -> bool {
        false
    }
}

/// A callback that does nothing.
pub struct NoCallback;
impl TrainerCallback for NoCallback {}

const OPTIMIZER_NAME: &str = "optimizer.safetensors";
const SCHEDULER_NAME: &str = "scheduler.json";
const RNG_NAME: &str = "rng_state.json";

/// The trainer: the model being trained, its optimizer and schedule, and HF's `TrainerState`.
pub struct Trainer {
    pub model: LlamaModel,
    pub opts: TrainerOptions,
    pub method: Method,
    /// Recorded in `adapter_config.json`.
    pub base_model_name_or_path: String,
    /// Saved next to full/freeze weights.
    pub tokenizer: Option<ModelTokenizer>,
    pub state: TrainerState,
    optimizer: Optimizer,
    schedule: Option<Schedule>,
}

impl Trainer {
    /// `model` must already be prepared ([`prepare_model`]). The optimizer groups every trainable parameter
    /// as HF does: weight decay except on biases and norms, LoRA+ ratios when asked.
    pub fn new(model: LlamaModel, opts: TrainerOptions, method: Method, base_model_name_or_path: impl Into<String>) -> Result<Trainer> {
        if opts.per_device_train_batch_size == 0 || opts.gradient_accumulation_steps == 0 {
            bail!("per_device_train_batch_size and gradient_accumulation_steps must be at least 1");
        }
        if !(opts.learning_rate.is_finite() && opts.learning_rate >= 0.0) {
            bail!("learning_rate must be finite and >= 0, got {}", opts.learning_rate);
        }
        if opts.loraplus_lr_ratio.is_some() && !matches!(method, Method::Lora(_)) {
            bail!("`loraplus_lr_ratio` is only valid for LoRA training.");
        }
        let params = trainable_parameters(&model);
        if params.is_empty() {
            bail!("no parameter is trainable; check finetuning_type and its module settings");
        }
        let specs: Vec<(String, Vec<usize>, ParamGroup)> =
            params.iter().map(|(name, v)| (name.clone(), v.shape().to_vec(), param_group(name, v, &opts))).collect();
        let config = OptimizerConfig { kind: opts.optim, adam_beta1: opts.adam_beta1, adam_beta2: opts.adam_beta2, adam_epsilon: opts.adam_epsilon };
        let optimizer = Optimizer::new(config, &specs);
        let state = TrainerState::default();
        Ok(Trainer { model, opts, method, base_model_name_or_path: base_model_name_or_path.into(), tokenizer: None, state, optimizer, schedule: None })
    }

    /// Run training over `train` (evaluating on `eval` every `eval_steps` and at the end), writing
    /// `trainer_log.jsonl`, checkpoints, the final model, `trainer_state.json`, `*_results.json` and, with
    /// `plot_loss`, `training_loss.png` into `output_dir`.
    pub fn train(&mut self, train: &dyn BatchSource, eval: Option<&dyn BatchSource>, callback: &mut dyn TrainerCallback) -> Result<TrainOutput> {
        let o = self.opts.clone();
        let out_dir = o.output_dir.clone();
        std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create output_dir {}", out_dir.display()))?;
        let len_dataloader = train.num_batches();
        if len_dataloader == 0 {
            bail!("the training set gives no batch (fewer items than per_device_train_batch_size with dataloader_drop_last?)");
        }
        let ga = o.gradient_accumulation_steps;
        let updates_per_epoch = len_dataloader.div_ceil(ga).max(1);
        let max_steps = if o.max_steps > 0 { o.max_steps as usize } else { (o.num_train_epochs * updates_per_epoch as f64).ceil() as usize };
        if max_steps == 0 {
            bail!("nothing to train: num_train_epochs {} and max_steps {} give 0 optimizer steps", o.num_train_epochs, o.max_steps);
        }
        let num_epochs = if o.max_steps > 0 { max_steps.div_ceil(updates_per_epoch) } else { o.num_train_epochs.ceil() as usize };
        let warmup = if o.warmup_steps >= 1.0 {
            o.warmup_steps as usize
        } else if o.warmup_steps > 0.0 {
            (max_steps as f64 * o.warmup_steps).ceil() as usize
        } else {
            (max_steps as f64 * o.warmup_ratio).ceil() as usize
        };
        let ratio_steps = |v: f64| -> usize {
            if v <= 0.0 {
                0
            } else if v < 1.0 {
                ((max_steps as f64 * v).ceil() as usize).max(1)
            } else {
                v as usize
            }
        };
        let (logging_steps, save_steps, eval_steps) = (ratio_steps(o.logging_steps), ratio_steps(o.save_steps), ratio_steps(o.eval_steps));
        let mut schedule = Schedule::new(o.lr_scheduler_type, warmup, max_steps, o.lr_scheduler_kwargs.clone(), o.learning_rate)?;
        if schedule.kind == ScheduleKind::ReduceLrOnPlateau && eval.is_none() {
            bail!("lr_scheduler_type reduce_lr_on_plateau steps on the evaluation loss; give an eval set (val_size or eval_dataset)");
        }

        self.state = TrainerState {
            max_steps: max_steps as u64,
            logging_steps: logging_steps as u64,
            eval_steps: eval_steps as u64,
            save_steps: save_steps as u64,
            train_batch_size: Some(o.per_device_train_batch_size as u64),
            num_train_epochs: num_epochs as u64,
            ..TrainerState::default()
        };
        // Where in the data the run starts: (epoch, micro-batches of it already consumed).
        let (mut start_epoch, mut skip_micro) = (0usize, 0usize);
        if let Some(ck) = &o.resume_from_checkpoint {
            let (epoch, micro) = self.load_checkpoint(ck, &mut schedule)?;
            start_epoch = epoch;
            skip_micro = micro;
            // The new run's own settings win over what the checkpoint recorded (HF re-reads them too).
            self.state.max_steps = max_steps as u64;
            self.state.logging_steps = logging_steps as u64;
            self.state.eval_steps = eval_steps as u64;
            self.state.save_steps = save_steps as u64;
        }
        self.schedule = Some(schedule);
        let mut log = TrainerLog::new(&out_dir, o.overwrite_output_dir && o.resume_from_checkpoint.is_none())
            .with_context(|| format!("cannot open the trainer log in {}", out_dir.display()))?;
        log.on_train_begin(max_steps as u64);
        let eval_batches = eval.map(|e| e.epoch_batches(0)).transpose()?;

        let start = Instant::now();
        let start_step = self.state.global_step as usize;
        let (mut tr_loss, mut total_loss) = (0.0f64, 0.0f64);
        let mut last_logged = start_step;
        let mut tokens_this_run = 0u64;
        let mut label_tokens_this_run = 0u64;
        let mut interrupted = false;
        let mut last_eval_loss = None;
        let mut saved_at_end = false;

        'epochs: for epoch in start_epoch..num_epochs.max(start_epoch + 1) {
            if self.state.global_step as usize >= max_steps {
                break;
            }
            let batches = train.epoch_batches(epoch)?;
            let steps_in_epoch = batches.len();
            let mut micro = if epoch == start_epoch { skip_micro } else { 0 };
            skip_micro = 0;
            while micro < steps_in_epoch {
                let group_end = (micro + ga).min(steps_in_epoch);
                let group = &batches[micro..group_end];
                let step = self.state.global_step as usize;
                let num_items_in_batch: usize = group.iter().map(MicroBatch::num_label_tokens).sum();
                let mut step_loss = 0.0f64;
                for (k, mb) in group.iter().enumerate() {
                    let mode = TrainMode {
                        seed: mix64(o.seed ^ mix64(((step as u64) << 20) ^ (k as u64 + 1))),
                        neftune_noise_alpha: o.neftune_noise_alpha,
                        gradient_checkpointing: o.gradient_checkpointing,
                    };
                    let loss_sum = micro_batch_loss(&self.model, mb, Some(mode), Reduction::Sum)?;
                    let loss = loss_sum.scale(1.0 / num_items_in_batch.max(1) as f64)?;
                    let value = loss.value().to_vec_f64()?[0];
                    if !value.is_finite() {
                        bail!(
                            "the training loss is {value} at step {} (epoch {epoch}, micro-batch {}); training stopped. \
                             Lower the learning_rate, keep max_grad_norm > 0, or check the data",
                            step + 1,
                            micro + k
                        );
                    }
                    loss.backward()?;
                    step_loss += value;
                    tokens_this_run += mb.batch.len() as u64;
                    label_tokens_this_run += mb.num_label_tokens() as u64;
                    if o.include_num_input_tokens_seen {
                        self.state.num_input_tokens_seen += mb.batch.len() as u64;
                    }
                }
                micro = group_end;
                let lr_now = {
                    let params = trainable_parameters(&self.model);
                    let (norm, coef) = grad_norm_and_clip(&params, o.max_grad_norm)?;
                    if !norm.is_finite() {
                        bail!("the gradient norm is {norm} at step {}; training stopped", step + 1);
                    }
                    let sched = self.schedule.as_ref().ok_or_else(|| Error::msg("no schedule"))?;
                    let lr = o.learning_rate * sched.factor(step);
                    let mut leaves = trainable_parameters_mut(&mut self.model);
                    self.optimizer.step(&mut leaves, lr, coef)?;
                    (lr, norm)
                };
                tr_loss += step_loss;
                self.state.global_step += 1;
                self.state.epoch = epoch as f64 + micro as f64 / steps_in_epoch as f64;
                let gs = self.state.global_step as usize;
                let done = gs >= max_steps;

                let should_log = (logging_steps > 0 && gs.is_multiple_of(logging_steps)) || (o.logging_first_step && gs == 1);
                if should_log && gs > last_logged {
                    let loss = tr_loss / (gs - last_logged) as f64;
                    total_loss += tr_loss;
                    tr_loss = 0.0;
                    last_logged = gs;
                    let mut logs = vec![
                        ("loss".to_string(), Value::Float(loss)),
                        ("grad_norm".to_string(), Value::Float(lr_now.1)),
                        ("learning_rate".to_string(), Value::Float(lr_now.0)),
                    ];
                    if o.include_num_input_tokens_seen {
                        logs.push(("num_input_tokens_seen".into(), Value::Int(self.state.num_input_tokens_seen as i64)));
                    }
                    self.log(&mut log, callback, logs, Some(loss), None, Some(lr_now.0))?;
                }
                let should_eval = eval_batches.is_some() && eval_steps > 0 && gs.is_multiple_of(eval_steps);
                if should_eval {
                    last_eval_loss = Some(self.run_eval(eval_batches.as_deref().unwrap_or(&[]), &mut log, callback)?);
                }
                let should_save = save_steps > 0 && (gs.is_multiple_of(save_steps) || done);
                if should_save {
                    self.save_checkpoint(epoch, micro, steps_in_epoch)?;
                    saved_at_end = done;
                }
                if done {
                    break 'epochs;
                }
                if !callback.on_step_end(&self.state) {
                    if callback.checkpoint_on_stop() && !should_save {
                        self.save_checkpoint(epoch, micro, steps_in_epoch)?;
                    }
                    interrupted = true;
                    break 'epochs;
                }
            }
        }
        let runtime = start.elapsed().as_secs_f64();
        let _ = saved_at_end;
        if interrupted {
            return Ok(TrainOutput {
                global_step: self.state.global_step as usize,
                train_loss: f64::NAN,
                metrics: Vec::new(),
                eval_loss: last_eval_loss,
                tokens: tokens_this_run,
                label_tokens: label_tokens_this_run,
                runtime_secs: runtime,
                interrupted,
            });
        }
        total_loss += tr_loss;
        let steps_this_run = (self.state.global_step as usize).saturating_sub(start_step).max(1);
        let train_loss = total_loss / steps_this_run as f64;
        let num_train_samples = if o.max_steps > 0 {
            (max_steps * o.per_device_train_batch_size * ga) as u64
        } else {
            (train.num_items() as f64 * o.num_train_epochs) as u64
        };
        let metrics = artifacts::train_metrics(runtime, num_train_samples, max_steps as u64, 0.0, train_loss, self.state.epoch);
        self.state.log(metrics.clone());
        callback.on_log(&self.state, &metrics);

        // The final model, the state and the metrics (LLaMA-Factory `run_sft`: save_model, save_state,
        // log/save_metrics "train", then evaluate).
        self.save_model(&out_dir)?;
        self.state.save(&out_dir).with_context(|| format!("cannot write trainer_state.json in {}", out_dir.display()))?;
        artifacts::save_metrics(&out_dir, "train", &metrics, true).context("cannot write train_results.json")?;
        let mut eval_loss = None;
        if let Some(batches) = &eval_batches {
            let t0 = Instant::now();
            let loss = evaluate_loss(&self.model, batches)?;
            let mut m = artifacts::speed_metrics("eval", t0.elapsed().as_secs_f64(), Some(eval.map_or(0, |e| e.num_items()) as u64), Some(batches.len() as u64), None);
            m.insert(0, ("eval_loss".into(), Value::Float(loss)));
            m.push(("epoch".into(), Value::Float(self.state.epoch)));
            artifacts::save_metrics(&out_dir, "eval", &m, true).context("cannot write eval_results.json")?;
            eval_loss = Some(loss);
        }
        if o.plot_loss {
            let keys: &[&str] = if eval_batches.is_some() { &["loss", "eval_loss"] } else { &["loss"] };
            artifacts_plot(&out_dir, keys)?;
        }
        Ok(TrainOutput {
            global_step: self.state.global_step as usize,
            train_loss,
            metrics,
            eval_loss,
            tokens: tokens_this_run,
            label_tokens: label_tokens_this_run,
            runtime_secs: runtime,
            interrupted,
        })
    }

    fn log(
        &mut self,
        log: &mut TrainerLog,
        callback: &mut dyn TrainerCallback,
        logs: Vec<(String, Value)>,
        loss: Option<f64>,
        eval_loss: Option<f64>,
        lr: Option<f64>,
    ) -> Result<()> {
        let entry_logs = self.state.log(logs).to_vec();
        callback.on_log(&self.state, &entry_logs);
        let entry = LogEntry { loss, eval_loss, lr, epoch: Some(self.state.epoch), ..LogEntry::default() };
        log.on_log(self.state.global_step, &entry, self.state.num_input_tokens_seen).context("cannot append to trainer_log.jsonl")?;
        Ok(())
    }

    fn run_eval(&mut self, batches: &[MicroBatch], log: &mut TrainerLog, callback: &mut dyn TrainerCallback) -> Result<f64> {
        let t0 = Instant::now();
        let loss = evaluate_loss(&self.model, batches)?;
        if let Some(s) = self.schedule.as_mut() {
            s.on_evaluate(loss);
        }
        let mut logs = vec![("eval_loss".to_string(), Value::Float(loss))];
        logs.extend(artifacts::speed_metrics("eval", t0.elapsed().as_secs_f64(), None, Some(batches.len() as u64), None));
        self.log(log, callback, logs, None, Some(loss), None)?;
        Ok(loss)
    }

    /// Evaluate on `eval` (HF `Trainer.evaluate`'s loss).
    pub fn evaluate(&self, eval: &dyn BatchSource) -> Result<f64> {
        evaluate_loss(&self.model, &eval.epoch_batches(0)?)
    }

    /// The trained weights into `dir`: the PEFT adapter for LoRA, else an HF folder (config, weights,
    /// tokenizer).
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        match &self.method {
            Method::Lora(s) => {
                adapters::save_adapter(dir, &self.model, s, &self.base_model_name_or_path)?;
                match &self.tokenizer {
                    Some(tok) => tok.save_to_folder(dir),
                    None => Ok(()),
                }
            }
            _ => {
                let mut weights = WeightMap::new(dir.display().to_string());
                for (name, t) in self.model.named_tensors() {
                    weights.insert(name, t)?;
                }
                ferrotune_models::loader::save_hf_folder(dir, self.model.config(), &weights, self.tokenizer.as_ref(), None)
            }
        }
    }

    /// `checkpoint-{global_step}` in output_dir, written in a temporary folder and renamed into place; older
    /// checkpoints beyond `save_total_limit` are deleted afterwards.
    fn save_checkpoint(&mut self, epoch: usize, micro: usize, steps_in_epoch: usize) -> Result<()> {
        let out = self.opts.output_dir.clone();
        let name = format!("checkpoint-{}", self.state.global_step);
        let final_dir = out.join(&name);
        let tmp = out.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot clear {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        self.save_model(&tmp)?;
        // The position after this step: an epoch whose batches are all used continues at the next epoch.
        let (next_epoch, next_micro) = if micro >= steps_in_epoch { (epoch + 1, 0) } else { (epoch, micro) };
        if !self.opts.save_only_model {
            let (tensors, steps) = self.optimizer.state_tensors()?;
            let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let mut meta = BTreeMap::new();
            meta.insert("steps".to_string(), serde_json::to_string(&steps).map_err(|e| Error::msg(e.to_string()))?);
            meta.insert("optimizer".to_string(), format!("{:?}", self.optimizer.config.kind));
            save_safetensors(&tmp.join(OPTIMIZER_NAME), &refs, Some(&meta))?;
            let plateau = self.schedule.as_ref().map(|s| s.plateau.clone()).unwrap_or_default();
            let sched = serde_json::json!({
                "lr_scheduler_type": self.schedule.as_ref().map(|s| s.kind.name()),
                "last_epoch": self.state.global_step,
                "plateau_scale": plateau.scale,
                "plateau_best": if plateau.best.is_finite() { serde_json::json!(plateau.best) } else { serde_json::Value::Null },
                "plateau_num_bad_epochs": plateau.num_bad_epochs,
                "plateau_cooldown_counter": plateau.cooldown_counter,
            });
            write_json(&tmp.join(SCHEDULER_NAME), &sched)?;
            let rng = serde_json::json!({ "seed": self.opts.seed, "epoch": next_epoch, "micro_batches_done": next_micro });
            write_json(&tmp.join(RNG_NAME), &rng)?;
        }
        self.state.save(&tmp).context("cannot write trainer_state.json")?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).with_context(|| format!("cannot replace {}", final_dir.display()))?;
        }
        std::fs::rename(&tmp, &final_dir).with_context(|| format!("cannot move {} to {}", tmp.display(), final_dir.display()))?;
        if let Some(limit) = self.opts.save_total_limit {
            rotate_checkpoints(&out, limit.max(1))?;
        }
        Ok(())
    }

    /// Restore trainable weights, optimizer, schedule and trainer state from a checkpoint folder; returns
    /// where in the data to continue (epoch, micro-batches already used of it).
    fn load_checkpoint(&mut self, dir: &Path, schedule: &mut Schedule) -> Result<(usize, usize)> {
        if !dir.is_dir() {
            bail!("resume_from_checkpoint {} is not a folder", dir.display());
        }
        // Trainable weights.
        let (file, prefix) = match &self.method {
            Method::Lora(_) => (dir.join(adapters::ADAPTER_WEIGHTS_NAME), "base_model.model."),
            _ => (dir.join("model.safetensors"), ""),
        };
        if !file.is_file() {
            bail!("{}: no {} to resume from (was it saved by another finetuning_type?)", dir.display(), file.file_name().map(|f| f.to_string_lossy()).unwrap_or_default());
        }
        let st = SafetensorsFile::open(&file)?;
        for (name, var) in trainable_parameters_mut(&mut self.model) {
            let key = format!("{prefix}{name}");
            if st.info(&key).is_none() {
                bail!("{}: the checkpoint has no {key:?}; it was made with other trainable parameters", file.display());
            }
            let t = st.read(&key, None)?;
            if t.shape() != var.shape() {
                bail!("{}: {key} is {:?}, the model's is {:?}", file.display(), t.shape(), var.shape());
            }
            *var = Var::param(t.to_dtype(var.value().dtype())?);
        }
        // Optimizer.
        let opt_path = dir.join(OPTIMIZER_NAME);
        if !opt_path.is_file() {
            bail!("{}: no {OPTIMIZER_NAME} (saved with save_only_model?); it cannot be resumed exactly", dir.display());
        }
        let of = SafetensorsFile::open(&opt_path)?;
        let steps: BTreeMap<String, u64> = of
            .metadata()
            .get("steps")
            .map(|s| serde_json::from_str(s))
            .transpose()
            .map_err(|e| Error::msg(format!("{}: bad steps metadata: {e}", opt_path.display())))?
            .unwrap_or_default();
        let get = |name: &str| -> Result<Option<Tensor>> { if of.info(name).is_some() { Ok(Some(of.read(name, None)?)) } else { Ok(None) } };
        self.optimizer.load_state(&get, &steps)?;
        // Schedule.
        let sched = read_json(&dir.join(SCHEDULER_NAME))?;
        schedule.plateau.scale = sched.get("plateau_scale").and_then(serde_json::Value::as_f64).unwrap_or(1.0);
        schedule.plateau.best = sched.get("plateau_best").and_then(serde_json::Value::as_f64).unwrap_or(f64::INFINITY);
        schedule.plateau.num_bad_epochs = sched.get("plateau_num_bad_epochs").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        schedule.plateau.cooldown_counter = sched.get("plateau_cooldown_counter").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        // State and data position.
        let state_path = dir.join("trainer_state.json");
        self.state = TrainerState::load(&state_path).with_context(|| format!("cannot read {}", state_path.display()))?;
        let rng = read_json(&dir.join(RNG_NAME))?;
        if let Some(seed) = rng.get("seed").and_then(serde_json::Value::as_u64) {
            if seed != self.opts.seed {
                bail!("{}: the checkpoint was trained with seed {seed}, this run uses {}; resume with the same seed", dir.display(), self.opts.seed);
            }
        }
        let epoch = rng.get("epoch").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        let micro = rng.get("micro_batches_done").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        Ok((epoch, micro))
    }
}

/// HF's parameter groups: decay by name ([`hf_decays`]); with LoRA+ (LLaMA-Factory
/// `_create_loraplus_optimizer`) `lora_B` matrices and every 1-D parameter get `lr · ratio`.
fn param_group(name: &str, v: &Var, o: &TrainerOptions) -> ParamGroup {
    let decay = if hf_decays(name) { o.weight_decay } else { 0.0 };
    let lr_multiplier = match o.loraplus_lr_ratio {
        Some(ratio) if name.contains("lora_B") || v.shape().len() == 1 => ratio,
        _ => 1.0,
    };
    ParamGroup { lr_multiplier, weight_decay: decay }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::msg(e.to_string()))? + "\n";
    artifacts::write_atomic(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

fn artifacts_plot(dir: &Path, keys: &[&str]) -> Result<()> {
    ferrotune_args::plot::plot_loss(dir, keys).with_context(|| format!("cannot plot the loss in {}", dir.display()))?;
    Ok(())
}

/// Keep the newest `limit` `checkpoint-N` folders (HF `_rotate_checkpoints`, without a best model).
pub fn rotate_checkpoints(dir: &Path, limit: usize) -> Result<()> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n: u64 = e.file_name().to_str()?.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().is_dir().then(|| (n, e.path()))
        })
        .collect();
    found.sort();
    while found.len() > limit {
        let (_, p) = found.remove(0);
        std::fs::remove_dir_all(&p).with_context(|| format!("cannot delete old checkpoint {}", p.display()))?;
    }
    Ok(())
}

/// Check `output_dir` as HF and LLaMA-Factory do before training: an existing, non-empty folder needs
/// `overwrite_output_dir` or a checkpoint to resume. Returns the checkpoint to resume (`resume_from_checkpoint`
/// as given, `true` meaning the last one, or the last one found when resuming automatically).
pub fn resolve_output_dir(output_dir: &Path, overwrite_output_dir: bool, resume_from_checkpoint: Option<&str>) -> Result<Option<PathBuf>> {
    let last = || ferrotune_args::last_checkpoint(output_dir);
    match resume_from_checkpoint {
        Some("true" | "True") => match last() {
            Some(ck) => return Ok(Some(ck)),
            None => bail!("resume_from_checkpoint is true but {} holds no checkpoint-N folder", output_dir.display()),
        },
        Some("false" | "False") | None => {}
        Some(path) => return Ok(Some(PathBuf::from(path))),
    }
    if overwrite_output_dir || !output_dir.is_dir() {
        return Ok(None);
    }
    if let Some(ck) = last() {
        return Ok(Some(ck));
    }
    let non_empty = std::fs::read_dir(output_dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if non_empty && ferrotune_args::CHECKPOINT_NAMES.iter().any(|n| output_dir.join(n).is_file()) {
        bail!("Output directory already exists and is not empty. Please set `overwrite_output_dir`. ({})", output_dir.display());
    }
    Ok(None)
}
