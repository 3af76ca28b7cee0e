//! Cross-argument checks, up front, with LLaMA-Factory's (and HF TrainingArguments') own messages: the
//! dataclass `__post_init__`s, `get_train_args`, `get_infer_args` and `_verify_model_args` of 0.9.5.

use crate::convert::{FinetuningType, IntervalStrategy, SaveStrategy, SchedulerType, Stage};
use crate::error::{ArgsError, Result};
use crate::groups::{
    DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments, TrainingArguments,
};

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(ArgsError::invalid(msg))
}

/// `ModelArguments.__post_init__` (base, processor, export).
pub(crate) fn model(m: &ModelArguments) -> Result<()> {
    if m.model_name_or_path
        .as_deref()
        .is_none_or(|s| s.trim().is_empty())
    {
        return fail("Please provide `model_name_or_path`.");
    }
    if m.image_max_pixels < m.image_min_pixels {
        return fail("`image_max_pixels` cannot be smaller than `image_min_pixels`.");
    }
    if m.video_max_pixels < m.video_min_pixels {
        return fail("`video_max_pixels` cannot be smaller than `video_min_pixels`.");
    }
    if m.export_quantization_bit.is_some() && m.export_quantization_dataset.is_none() {
        return fail("Quantization dataset is necessary for exporting.");
    }
    if m.export_size < 1 {
        return fail(format!(
            "`export_size` is the shard size in GB and must be at least 1, got {}",
            m.export_size
        ));
    }
    Ok(())
}

/// `DataArguments.__post_init__`.
pub(crate) fn data(d: &DataArguments) -> Result<()> {
    if d.cutoff_len < 1 {
        return fail(format!(
            "`cutoff_len` must be at least 1, got {}",
            d.cutoff_len
        ));
    }
    if !d.val_size.is_finite() || d.val_size < 0.0 {
        return fail(format!(
            "`val_size` must be a fraction in [0, 1) or a number of examples, got {}",
            d.val_size
        ));
    }
    if d.dataset.is_none() && d.val_size > 1e-6 {
        return fail("Cannot specify `val_size` if `dataset` is None.");
    }
    if d.eval_dataset.is_some() && d.val_size > 1e-6 {
        return fail("Cannot specify `val_size` if `eval_dataset` is not None.");
    }
    if let Some(probs) = &d.interleave_probs {
        if d.mix_strategy == "concat" {
            return fail("`interleave_probs` is only valid for interleaved mixing.");
        }
        for p in probs.iter() {
            if p.parse::<f64>().is_err() {
                return Err(ArgsError::BadValue {
                    key: "interleave_probs".into(),
                    value: format!("{:?}", probs.join(",")),
                    expected: format!("comma-separated numbers (`{p}` is not a number)"),
                });
            }
        }
        if d.dataset.as_ref().is_some_and(|ds| ds.len() != probs.len()) {
            return fail("The length of dataset and interleave probs should be identical.");
        }
        if d.eval_dataset
            .as_ref()
            .is_some_and(|ds| ds.len() != probs.len())
        {
            return fail("The length of eval dataset and interleave probs should be identical.");
        }
    }
    if d.streaming && d.val_size > 1e-6 && d.val_size < 1.0 {
        return fail("Streaming mode should have an integer val size.");
    }
    if d.streaming && d.max_samples.is_some() {
        return fail("`max_samples` is incompatible with `streaming`.");
    }
    if d.mask_history && d.train_on_prompt {
        return fail("`mask_history` is incompatible with `train_on_prompt`.");
    }
    if let Some(n) = d.max_samples {
        if n < 1 {
            return fail(format!("`max_samples` must be at least 1, got {n}"));
        }
    }
    Ok(())
}

/// `FinetuningArguments.__post_init__`.
pub(crate) fn finetuning(f: &FinetuningArguments) -> Result<()> {
    for (key, bit) in [
        ("ref_model_quantization_bit", f.ref_model_quantization_bit),
        (
            "reward_model_quantization_bit",
            f.reward_model_quantization_bit,
        ),
    ] {
        if bit.is_some_and(|b| b != 4 && b != 8) {
            return fail(format!(
                "`{key}`: We only accept 4-bit or 8-bit quantization."
            ));
        }
    }
    let use_ref_model = f.stage == Stage::Dpo && !matches!(f.pref_loss.as_str(), "orpo" | "simpo");
    if f.stage == Stage::Ppo && f.reward_model.is_none() {
        return fail("`reward_model` is necessary for PPO training.");
    }
    if f.stage == Stage::Ppo
        && f.reward_model_type == "lora"
        && f.finetuning_type != FinetuningType::Lora
    {
        return fail("`reward_model_type` cannot be lora for Freeze/Full PPO training.");
    }
    if f.stage == Stage::Dpo && f.pref_loss != "sigmoid" && f.dpo_label_smoothing > 1e-6 {
        return fail("`dpo_label_smoothing` is only valid for sigmoid loss function.");
    }
    if f.use_llama_pro && f.finetuning_type == FinetuningType::Full {
        return fail("`use_llama_pro` is only valid for Freeze or LoRA training.");
    }
    if f.finetuning_type == FinetuningType::Lora && (f.use_galore || f.use_apollo || f.use_badam) {
        return fail("Cannot use LoRA with GaLore, APOLLO or BAdam together.");
    }
    if u8::from(f.use_galore) + u8::from(f.use_apollo) + u8::from(f.use_badam) > 1 {
        return fail("Cannot use GaLore, APOLLO or BAdam together.");
    }
    if f.pissa_init && (matches!(f.stage, Stage::Ppo | Stage::Kto) || use_ref_model) {
        return fail("Cannot use PiSSA for current training stage.");
    }
    if f.finetuning_type != FinetuningType::Lora {
        if f.loraplus_lr_ratio.is_some() {
            return fail("`loraplus_lr_ratio` is only valid for LoRA training.");
        }
        if f.use_rslora {
            return fail("`use_rslora` is only valid for LoRA training.");
        }
        if f.use_dora {
            return fail("`use_dora` is only valid for LoRA training.");
        }
        if f.pissa_init {
            return fail("`pissa_init` is only valid for LoRA training.");
        }
    }
    if f.finetuning_type == FinetuningType::Lora {
        if f.lora_rank < 1 {
            return fail(format!(
                "`lora_rank` must be at least 1, got {}",
                f.lora_rank
            ));
        }
        if !(0.0..1.0).contains(&f.lora_dropout) {
            return fail(format!(
                "`lora_dropout` must be in [0, 1), got {}",
                f.lora_dropout
            ));
        }
        if f.lora_target.is_empty() {
            return fail("`lora_target` is empty: use `all` or a comma list of module names such as q_proj,v_proj");
        }
        if f.loraplus_lr_ratio.is_some_and(|r| r <= 0.0) {
            return fail("`loraplus_lr_ratio` must be positive");
        }
    }
    if f.finetuning_type == FinetuningType::Freeze && f.freeze_trainable_modules.is_empty() {
        return fail(
            "`freeze_trainable_modules` is empty: use `all` or a comma list such as mlp,self_attn",
        );
    }
    Ok(())
}

/// `GeneratingArguments`: ranges the sampler needs.
pub(crate) fn generating(g: &GeneratingArguments) -> Result<()> {
    if g.do_sample && (g.temperature.is_nan() || g.temperature <= 0.0) {
        return fail(format!(
            "`temperature` must be positive when sampling (do_sample), got {}",
            g.temperature
        ));
    }
    if !(g.top_p > 0.0 && g.top_p <= 1.0) {
        return fail(format!("`top_p` must be in (0, 1], got {}", g.top_p));
    }
    if g.top_k < 0 {
        return fail(format!(
            "`top_k` must be >= 0 (0 disables it), got {}",
            g.top_k
        ));
    }
    if g.num_beams < 1 {
        return fail(format!(
            "`num_beams` must be at least 1, got {}",
            g.num_beams
        ));
    }
    if g.repetition_penalty.is_nan() || g.repetition_penalty <= 0.0 {
        return fail(format!(
            "`repetition_penalty` must be positive, got {}",
            g.repetition_penalty
        ));
    }
    Ok(())
}

/// `_verify_model_args`.
pub(crate) fn model_vs_method(m: &ModelArguments, f: &FinetuningArguments) -> Result<()> {
    if m.adapter_name_or_path.is_some() && f.finetuning_type != FinetuningType::Lora {
        return fail("Adapter is only valid for the LoRA method.");
    }
    if m.quantization_bit.is_some() {
        if !matches!(
            f.finetuning_type,
            FinetuningType::Lora | FinetuningType::Oft
        ) {
            return fail("Quantization is only compatible with the LoRA or OFT method.");
        }
        if f.pissa_init {
            return fail(
                "Please use scripts/pissa_init.py to initialize PiSSA for a quantized model.",
            );
        }
        if m.resize_vocab {
            return fail("Cannot resize embedding layers of a quantized model.");
        }
        if m.adapter_name_or_path.is_some() && f.create_new_adapter {
            return fail("Cannot create new adapter upon a quantized model.");
        }
        if m.adapter_name_or_path
            .as_ref()
            .is_some_and(|a| a.len() != 1)
        {
            return fail("Quantized model only accepts a single adapter. Merge them first.");
        }
    }
    Ok(())
}

fn check_integral_steps(name: &str, v: f64) -> Result<()> {
    if v > 1.0 && v.fract() != 0.0 {
        return fail(format!("--{name} must be an integer if bigger than 1: {v}"));
    }
    if v < 0.0 {
        return fail(format!(
            "--{name} must be positive (a step count, or a ratio below 1), got {v}"
        ));
    }
    Ok(())
}

/// HF `TrainingArguments.__post_init__` (the checks that do not need torch). Also HF's one auto-derived
/// switch: an `eval_strategy` other than `no` turns `do_eval` on.
pub(crate) fn training(t: &mut TrainingArguments) -> Result<()> {
    if t.eval_strategy != IntervalStrategy::No {
        t.do_eval = true;
    }
    if t.eval_strategy == IntervalStrategy::Steps
        && t.eval_steps.is_none_or(|s| s == 0.0)
        && t.logging_steps <= 0.0
    {
        return fail(
            "evaluation strategy steps requires either non-zero --eval_steps or --logging_steps",
        );
    }
    if t.logging_strategy == IntervalStrategy::Steps && t.logging_steps == 0.0 {
        return fail("logging strategy steps requires non-zero --logging_steps");
    }
    check_integral_steps("logging_steps", t.logging_steps)?;
    if t.eval_strategy == IntervalStrategy::Steps {
        check_integral_steps("eval_steps", t.eval_steps.unwrap_or(t.logging_steps))?;
    }
    if t.save_strategy == SaveStrategy::Steps {
        if t.save_steps == 0.0 {
            return fail("save strategy steps requires non-zero --save_steps");
        }
        check_integral_steps("save_steps", t.save_steps)?;
    }
    if !matches!(
        t.lr_scheduler_kwargs,
        crate::value::Value::Null | crate::value::Value::Map(_)
    ) {
        return Err(ArgsError::bad(
            "lr_scheduler_kwargs",
            &t.lr_scheduler_kwargs,
            "a mapping such as {min_lr: 1.0e-6} (or a JSON object string)",
        ));
    }
    if t.fp16 && t.bf16 {
        return fail("At most one of fp16 and bf16 can be True, but not both");
    }
    if t.fp16_full_eval && t.bf16_full_eval {
        return fail("At most one of fp16 and bf16 can be True for full eval, but not both");
    }
    if t.lr_scheduler_type == SchedulerType::ReduceLrOnPlateau
        && t.eval_strategy == IntervalStrategy::No
    {
        return fail("lr_scheduler_type reduce_lr_on_plateau requires an eval strategy");
    }
    if t.lr_scheduler_type == SchedulerType::Greedy && t.eval_strategy == IntervalStrategy::No {
        return fail("lr_scheduler_type greedy requires an eval strategy");
    }
    if t.warmup_steps < 0.0 {
        return fail("warmup_steps must be an integer or a float");
    }
    if t.warmup_steps > 1.0 && t.warmup_steps.fract() != 0.0 {
        return fail(format!(
            "`warmup_steps` must be an integer if bigger than 1: {}",
            t.warmup_steps
        ));
    }
    if t.warmup_ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        return fail("warmup_ratio must lie in range [0,1]");
    }
    if t.dataloader_num_workers == 0 && t.dataloader_prefetch_factor.is_some() {
        return fail(
            "--dataloader_prefetch_factor can only be set when data is loaded in a different process, i.e. when \
             --dataloader_num_workers > 0.",
        );
    }
    for (key, v) in [
        ("per_device_train_batch_size", t.per_device_train_batch_size),
        ("per_device_eval_batch_size", t.per_device_eval_batch_size),
        ("gradient_accumulation_steps", t.gradient_accumulation_steps),
    ] {
        if v < 1 {
            return fail(format!("`{key}` must be at least 1, got {v}"));
        }
    }
    if !t.learning_rate.is_finite() || t.learning_rate < 0.0 {
        return fail(format!(
            "`learning_rate` must be a finite number >= 0, got {}",
            t.learning_rate
        ));
    }
    if t.max_grad_norm.is_nan() || t.max_grad_norm < 0.0 {
        return fail(format!(
            "`max_grad_norm` must be >= 0 (0 disables clipping), got {}",
            t.max_grad_norm
        ));
    }
    if t.save_total_limit.is_some_and(|n| n < 1) {
        return fail("`save_total_limit` must be at least 1 (or null to keep every checkpoint)");
    }
    if t.do_train && t.max_steps <= 0 && (t.num_train_epochs.is_nan() || t.num_train_epochs <= 0.0)
    {
        return fail(format!(
            "nothing to train: set num_train_epochs > 0 or max_steps > 0 (got num_train_epochs {} and max_steps {})",
            t.num_train_epochs, t.max_steps
        ));
    }
    Ok(())
}

/// `get_train_args`' checks across groups.
pub(crate) fn train(
    m: &ModelArguments,
    d: &DataArguments,
    t: &TrainingArguments,
    f: &FinetuningArguments,
) -> Result<()> {
    if f.stage != Stage::Sft {
        if t.predict_with_generate {
            return fail("`predict_with_generate` cannot be set as True except SFT.");
        }
        if d.neat_packing {
            return fail("`neat_packing` cannot be set as True except SFT.");
        }
        if d.train_on_prompt || d.mask_history {
            return fail("`train_on_prompt` or `mask_history` cannot be set as True except SFT.");
        }
    }
    if f.stage == Stage::Sft && t.do_predict && !t.predict_with_generate {
        return fail("Please enable `predict_with_generate` to save model predictions.");
    }
    if matches!(f.stage, Stage::Rm | Stage::Ppo) && t.load_best_model_at_end {
        return fail("RM and PPO stages do not support `load_best_model_at_end`.");
    }
    if f.stage == Stage::Ppo {
        if !t.do_train {
            return fail(
                "PPO training does not support evaluation, use the SFT stage to evaluate models.",
            );
        }
        if m.shift_attn {
            return fail("PPO training is incompatible with S^2-Attn.");
        }
    }
    if t.max_steps == -1 && d.streaming {
        return fail("Please specify `max_steps` in streaming mode.");
    }
    if t.do_train && d.dataset.is_none() {
        return fail("Please specify dataset for training.");
    }
    if (t.do_eval || t.do_predict || t.predict_with_generate)
        && d.eval_dataset.is_none()
        && d.val_size < 1e-6
    {
        return fail("Please make sure eval_dataset be provided or val_size >1e-6");
    }
    if t.predict_with_generate && d.eval_dataset.is_none() {
        return fail("Cannot use `predict_with_generate` if `eval_dataset` is None.");
    }
    if t.predict_with_generate && f.compute_accuracy {
        return fail("Cannot use `predict_with_generate` and `compute_accuracy` together.");
    }
    if t.do_train && m.quantization_device_map.as_deref() == Some("auto") {
        return fail("Cannot use device map for quantized models in training.");
    }
    if t.fp8 && m.quantization_bit.is_some() {
        return fail(
            "FP8 training is not compatible with quantization. Please disable one of them.",
        );
    }
    if m.infer_backend != "huggingface" {
        return fail("vLLM/SGLang backend is only available for API, CLI and Web.");
    }
    model_vs_method(m, f)
}

/// `get_infer_args`' checks (the vLLM ones included, for when an engine lands).
pub(crate) fn infer(m: &ModelArguments, f: &FinetuningArguments) -> Result<()> {
    if m.infer_backend == "vllm" {
        if f.stage != Stage::Sft {
            return fail("vLLM engine only supports auto-regressive models.");
        }
        if m.quantization_bit.is_some() {
            return fail(
                "vLLM engine does not support bnb quantization (GPTQ and AWQ are supported).",
            );
        }
        if m.rope_scaling.is_some() {
            return fail("vLLM engine does not support RoPE scaling.");
        }
        if m.adapter_name_or_path
            .as_ref()
            .is_some_and(|a| a.len() != 1)
        {
            return fail("vLLM only accepts a single adapter. Merge them first.");
        }
    }
    model_vs_method(m, f)
}
