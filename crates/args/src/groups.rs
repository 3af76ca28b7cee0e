//! The five argument groups with LLaMA-Factory 0.9.5's names and defaults (TrainingArguments: HF
//! transformers 4.55-5.6, the union of both, so a config written for either parses).
//!
//! Fields keep the values as given; derived values (lora_alpha's 2 x rank, packing's stage default, the
//! effective cutoff) are methods, so `to_yaml` writes back what the user wrote.

use crate::convert::{
    ArgKind, ArgType, CommaList, FinetuningType, IntervalStrategy, SaveStrategy, SchedulerType,
    Stage,
};
use crate::error::{ArgsError, Result};
use crate::value::Value;

/// Defines a group: the struct, its defaults, and by-name access for the parser.
macro_rules! arg_group {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name { $($(#[doc = $doc])* pub $field: $ty,)* }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* }
            }
        }

        impl $name {
            /// Every key of this group, in LLaMA-Factory's order.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Sets `key` from a config value; `Ok(false)` when the key is not in this group.
            pub(crate) fn set(&mut self, key: &str, v: &Value) -> Result<bool> {
                match key {
                    $(stringify!($field) => {
                        let parsed = <$ty as ArgType>::from_value(v)
                            .ok_or_else(|| ArgsError::bad(key, v, <$ty as ArgType>::expected()))?;
                        check_choice(key, &parsed.to_value(), v)?;
                        self.$field = parsed;
                        Ok(true)
                    })*
                    _ => Ok(false),
                }
            }

            /// The value of `key` as a config value.
            pub fn get(&self, key: &str) -> Option<Value> {
                match key {
                    $(stringify!($field) => Some(self.$field.to_value()),)*
                    _ => None,
                }
            }

            /// How `key` reads from `--flags`.
            pub(crate) fn kind(key: &str) -> Option<ArgKind> {
                match key {
                    $(stringify!($field) => Some(<$ty as ArgType>::KIND),)*
                    _ => None,
                }
            }
        }
    };
}

/// The allowed values of string-typed `Literal` fields (the enum-typed fields check themselves).
pub(crate) fn choices(key: &str) -> Option<&'static [&'static str]> {
    Some(match key {
        "init_special_tokens" => &["noise_init", "desc_init", "desc_init_w_noise"],
        "rope_scaling" => &["linear", "dynamic", "yarn", "llama3"],
        "flash_attn" => &["auto", "disabled", "sdpa", "fa2", "fa3"],
        "mixture_of_depths" => &["convert", "load"],
        "infer_backend" => &["huggingface", "vllm", "sglang"],
        "infer_dtype" => &["auto", "float16", "bfloat16", "float32"],
        "quantization_method" => &[
            "bnb", "gptq", "awq", "aqlm", "quanto", "eetq", "hqq", "mxfp4", "fp8",
        ],
        "quantization_type" => &["fp4", "nf4"],
        "quantization_device_map" => &["auto"],
        "export_device" => &["cpu", "auto"],
        "sglang_lora_backend" => &["triton", "flashinfer"],
        "mix_strategy" => &[
            "concat",
            "interleave_under",
            "interleave_over",
            "interleave_once",
        ],
        "log_level" | "log_level_replica" => &[
            "detail", "debug", "info", "warning", "error", "critical", "passive",
        ],
        "optim" => crate::convert::OPTIM_NAMES,
        "hub_strategy" => &["end", "every_save", "checkpoint", "all_checkpoints"],
        "half_precision_backend" | "fp16_backend" => &["auto", "apex", "cpu_amp"],
        "pref_loss" => &["sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"],
        "reward_model_type" => &["lora", "full", "api"],
        "galore_proj_type" => &["std", "reverse_std", "right", "left", "full"],
        "apollo_proj" => &["svd", "random"],
        "apollo_proj_type" => &["std", "right", "left"],
        "apollo_scale_type" => &["channel", "tensor"],
        "badam_mode" => &["layer", "ratio"],
        "badam_switch_mode" => &["ascending", "descending", "random", "fixed"],
        "badam_mask_mode" => &["adjacent", "scatter"],
        "swanlab_mode" => &["cloud", "local"],
        _ => return None,
    })
}

fn check_choice(key: &str, parsed: &Value, given: &Value) -> Result<()> {
    if let (Some(allowed), Value::Str(s)) = (choices(key), parsed) {
        if !allowed.contains(&s.as_str()) {
            return Err(ArgsError::bad(
                key,
                given,
                format!("one of {}", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

arg_group! {
    /// LLaMA-Factory `ModelArguments` (base, quantization, processor, export, KTransformers, vLLM, SGLang).
    pub struct ModelArguments {
        /// Path or hub id of the base model (required).
        model_name_or_path: Option<String> = None,
        /// Adapters to load, comma-separated; all but the last are merged when training.
        adapter_name_or_path: Option<CommaList> = None,
        /// Folder holding the adapter weights.
        adapter_folder: Option<String> = None,
        /// Where downloaded models are stored.
        cache_dir: Option<String> = None,
        /// Use the fast (tokenizers) tokenizer.
        use_fast_tokenizer: bool = true,
        /// Resize the tokenizer vocab and the embedding layers.
        resize_vocab: bool = false,
        /// Split special tokens during tokenization.
        split_special_tokens: bool = false,
        /// Non-special tokens to add, comma-separated.
        add_tokens: Option<CommaList> = None,
        /// Special tokens to add, comma-separated.
        add_special_tokens: Option<CommaList> = None,
        /// YAML file of special tokens with descriptions.
        new_special_tokens_config: Option<String> = None,
        /// How new special tokens are initialised.
        init_special_tokens: String = "noise_init".into(),
        /// Model revision (branch, tag or commit).
        model_revision: String = "main".into(),
        /// Memory-efficient model loading.
        low_cpu_mem_usage: bool = true,
        /// RoPE scaling strategy: linear, dynamic, yarn, llama3.
        rope_scaling: Option<String> = None,
        /// Attention implementation: auto, disabled, sdpa, fa2, fa3.
        flash_attn: String = "auto".into(),
        /// LongLoRA shift short attention (S^2-Attn).
        shift_attn: bool = false,
        /// Convert to or load a mixture-of-depths model.
        mixture_of_depths: Option<String> = None,
        /// Unsloth's LoRA optimisation.
        use_unsloth: bool = false,
        /// Unsloth's gradient checkpointing.
        use_unsloth_gc: bool = false,
        /// Liger kernels.
        enable_liger_kernel: bool = false,
        /// Router auxiliary loss coefficient for MoE models.
        moe_aux_loss_coef: Option<f64> = None,
        /// Turn off gradient checkpointing (on by default when training).
        disable_gradient_checkpointing: bool = false,
        /// Reentrant gradient checkpointing.
        use_reentrant_gc: bool = true,
        /// Keep layernorm weights in fp32.
        upcast_layernorm: bool = false,
        /// Compute the lm_head output in fp32.
        upcast_lmhead_output: bool = false,
        /// Randomly initialise the model weights.
        train_from_scratch: bool = false,
        /// Inference engine: huggingface, vllm, sglang.
        infer_backend: String = "huggingface".into(),
        /// Where offloaded weights go.
        offload_folder: String = "offload".into(),
        /// Use the KV cache in generation.
        use_kv_cache: bool = true,
        /// LLaMA-Factory v1 kernels.
        use_v1_kernels: Option<bool> = Some(false),
        /// Weight dtype at inference: auto, float16, bfloat16, float32.
        infer_dtype: String = "auto".into(),
        /// Hugging Face Hub token.
        hf_hub_token: Option<String> = None,
        /// ModelScope Hub token.
        ms_hub_token: Option<String> = None,
        /// Modelers Hub token.
        om_hub_token: Option<String> = None,
        /// Print every parameter's dtype, device and trainable flag.
        print_param_status: bool = false,
        /// Allow model/dataset code from the hub.
        trust_remote_code: bool = false,
        /// On-the-fly quantization method.
        quantization_method: String = "bnb".into(),
        /// On-the-fly quantization bits.
        quantization_bit: Option<i64> = None,
        /// bitsandbytes 4-bit data type: nf4 or fp4.
        quantization_type: String = "nf4".into(),
        /// bitsandbytes 4-bit double quantization.
        double_quantization: bool = true,
        /// Device map for 4-bit inference (auto).
        quantization_device_map: Option<String> = None,
        /// Maximum pixels of an image input.
        image_max_pixels: i64 = 768 * 768,
        /// Minimum pixels of an image input.
        image_min_pixels: i64 = 32 * 32,
        /// Gemma 3 pan and scan.
        image_do_pan_and_scan: bool = false,
        /// InternVL patch cropping.
        crop_to_patches: bool = false,
        /// Maximum pixels of a video frame.
        video_max_pixels: i64 = 256 * 256,
        /// Minimum pixels of a video frame.
        video_min_pixels: i64 = 16 * 16,
        /// Frames sampled per second of video.
        video_fps: f64 = 2.0,
        /// Maximum sampled frames per video.
        video_maxlen: i64 = 128,
        /// Use the audio track of videos.
        use_audio_in_video: bool = false,
        /// Audio sampling rate.
        audio_sampling_rate: i64 = 16000,
        /// Where `export` writes the model.
        export_dir: Option<String> = None,
        /// Shard size of the exported model, in GB.
        export_size: i64 = 5,
        /// Device used while exporting: cpu or auto.
        export_device: String = "cpu".into(),
        /// GPTQ bits for the exported model.
        export_quantization_bit: Option<i64> = None,
        /// Calibration dataset for export quantization.
        export_quantization_dataset: Option<String> = None,
        /// Calibration samples for export quantization.
        export_quantization_nsamples: i64 = 128,
        /// Calibration sequence length for export quantization.
        export_quantization_maxlen: i64 = 1024,
        /// Write `.bin` files instead of `.safetensors`.
        export_legacy_format: bool = false,
        /// Hub repository to push the exported model to.
        export_hub_model_id: Option<String> = None,
        /// KTransformers AMX MoE backend.
        use_kt: bool = false,
        /// KTransformers INT8 expert weights.
        kt_weight_path: Option<String> = None,
        /// KTransformers expert checkpoint.
        kt_expert_checkpoint_path: Option<String> = None,
        /// KTransformers GPU-side LoRA experts.
        kt_use_lora_experts: Option<bool> = None,
        /// Number of KTransformers LoRA experts.
        kt_lora_expert_num: Option<i64> = None,
        /// Intermediate size of KTransformers LoRA experts.
        kt_lora_expert_intermediate_size: Option<i64> = None,
        /// vLLM maximum sequence length.
        vllm_maxlen: i64 = 4096,
        /// vLLM GPU memory fraction.
        vllm_gpu_util: f64 = 0.7,
        /// Disable CUDA graphs in vLLM.
        vllm_enforce_eager: bool = false,
        /// vLLM maximum LoRA rank.
        vllm_max_lora_rank: i64 = 32,
        /// vLLM engine config (JSON).
        vllm_config: Value = Value::Null,
        /// SGLang maximum sequence length.
        sglang_maxlen: i64 = 4096,
        /// SGLang memory fraction.
        sglang_mem_fraction: f64 = 0.7,
        /// SGLang tensor-parallel size.
        sglang_tp_size: i64 = -1,
        /// SGLang engine config (JSON).
        sglang_config: Value = Value::Null,
        /// SGLang LoRA GEMM backend: triton or flashinfer.
        sglang_lora_backend: String = "triton".into(),
    }
}

arg_group! {
    /// LLaMA-Factory `DataArguments`.
    pub struct DataArguments {
        /// Chat template; none means the tokenizer's own chat template (or `empty`).
        template: Option<String> = None,
        /// Training datasets (names in dataset_info.json), comma-separated.
        dataset: Option<CommaList> = None,
        /// Evaluation datasets, comma-separated.
        eval_dataset: Option<CommaList> = None,
        /// Folder holding dataset_info.json.
        dataset_dir: String = "data".into(),
        /// Root of image/video/audio paths (defaults to dataset_dir).
        media_dir: Option<String> = None,
        /// Maximum tokens per example.
        cutoff_len: i64 = 2048,
        /// Compute the loss on the prompt too.
        train_on_prompt: bool = false,
        /// Train on the last turn only.
        mask_history: bool = false,
        /// Stream the datasets.
        streaming: bool = false,
        /// Shuffle buffer when streaming.
        buffer_size: i64 = 16384,
        /// concat, interleave_under, interleave_over, interleave_once.
        mix_strategy: String = "concat".into(),
        /// Sampling probability per dataset, comma-separated.
        interleave_probs: Option<CommaList> = None,
        /// Overwrite the cached datasets.
        overwrite_cache: bool = false,
        /// Examples per preprocessing batch.
        preprocessing_batch_size: i64 = 1000,
        /// Preprocessing processes.
        preprocessing_num_workers: Option<i64> = None,
        /// Keep the first N examples of each dataset.
        max_samples: Option<i64> = None,
        /// Beams for generation at evaluation.
        eval_num_beams: Option<i64> = None,
        /// Ignore pad tokens in the loss.
        ignore_pad_token_for_loss: bool = true,
        /// Validation split: a fraction in [0,1) or a number of examples.
        val_size: f64 = 0.0,
        /// Evaluate each eval dataset separately.
        eval_on_each_dataset: bool = false,
        /// Pack sequences; none means on for pt, off otherwise.
        packing: Option<bool> = None,
        /// Pack without cross-attention between packed sequences (implies packing).
        neat_packing: bool = false,
        /// Tool-call format overriding the template's.
        tool_format: Option<String> = None,
        /// System prompt overriding the template's default.
        default_system: Option<String> = None,
        /// Thinking mode for reasoning templates.
        enable_thinking: Option<bool> = Some(true),
        /// Keep reasoning content in history turns.
        preserve_thinking: bool = false,
        /// Save/load the tokenized datasets here.
        tokenized_path: Option<String> = None,
        /// Datasets live on a shared file system.
        data_shared_file_system: bool = false,
    }
}

arg_group! {
    /// HF `Seq2SeqTrainingArguments` (transformers 4.55-5.6, the range LLaMA-Factory 0.9.5 accepts) plus
/// LLaMA-Factory's Ray, profiler and FP8 extras.
    pub struct TrainingArguments {
        /// Where checkpoints and logs go (HF falls back to `trainer_output`).
        output_dir: Option<String> = None,
        /// Start over in an existing output_dir instead of resuming.
        overwrite_output_dir: bool = false,
        /// Run training.
        do_train: bool = false,
        /// Run evaluation.
        do_eval: bool = false,
        /// Run prediction.
        do_predict: bool = false,
        /// When to evaluate: no, steps, epoch.
        eval_strategy: IntervalStrategy = IntervalStrategy::No,
        /// Only return the loss when evaluating.
        prediction_loss_only: bool = false,
        /// Training batch size per device.
        per_device_train_batch_size: i64 = 8,
        /// Evaluation batch size per device.
        per_device_eval_batch_size: i64 = 8,
        /// Deprecated alias of per_device_train_batch_size.
        per_gpu_train_batch_size: Option<i64> = None,
        /// Deprecated alias of per_device_eval_batch_size.
        per_gpu_eval_batch_size: Option<i64> = None,
        /// Micro-batches per optimizer step.
        gradient_accumulation_steps: i64 = 1,
        /// Prediction steps accumulated before moving to the CPU.
        eval_accumulation_steps: Option<i64> = None,
        /// Epochs or steps to wait before the first evaluation.
        eval_delay: f64 = 0.0,
        /// Steps between torch.cuda.empty_cache calls.
        torch_empty_cache_steps: Option<i64> = None,
        /// Peak learning rate.
        learning_rate: f64 = 5e-5,
        /// Decoupled weight decay.
        weight_decay: f64 = 0.0,
        /// Adam beta1.
        adam_beta1: f64 = 0.9,
        /// Adam beta2.
        adam_beta2: f64 = 0.999,
        /// Adam epsilon.
        adam_epsilon: f64 = 1e-8,
        /// Gradient clipping norm (0 disables).
        max_grad_norm: f64 = 1.0,
        /// Epochs to train (ignored when max_steps > 0).
        num_train_epochs: f64 = 3.0,
        /// Optimizer steps to train; overrides num_train_epochs when > 0.
        max_steps: i64 = -1,
        /// Learning-rate schedule.
        lr_scheduler_type: SchedulerType = SchedulerType::Linear,
        /// Extra scheduler arguments (min_lr, num_cycles, power, ...).
        lr_scheduler_kwargs: Value = Value::Null,
        /// Fraction of the steps used for linear warmup.
        warmup_ratio: Option<f64> = None,
        /// Warmup steps (a value in (0,1) is a ratio, as in transformers 5).
        warmup_steps: f64 = 0.0,
        /// Logger level on the main process.
        log_level: String = "passive".into(),
        /// Logger level on replicas.
        log_level_replica: String = "warning".into(),
        /// Log on every node.
        log_on_each_node: bool = true,
        /// TensorBoard log directory.
        logging_dir: Option<String> = None,
        /// When to log: no, steps, epoch.
        logging_strategy: IntervalStrategy = IntervalStrategy::Steps,
        /// Log the first step.
        logging_first_step: bool = false,
        /// Steps between logs (a value below 1 is a ratio of the total).
        logging_steps: f64 = 500.0,
        /// Skip nan/inf losses when logging.
        logging_nan_inf_filter: bool = true,
        /// When to save: no, steps, epoch, best.
        save_strategy: SaveStrategy = SaveStrategy::Steps,
        /// Steps between checkpoints (a value below 1 is a ratio of the total).
        save_steps: f64 = 500.0,
        /// Keep at most this many checkpoints.
        save_total_limit: Option<i64> = None,
        /// Save weights as safetensors.
        save_safetensors: bool = true,
        /// Save on every node.
        save_on_each_node: bool = false,
        /// Checkpoints without optimizer/scheduler/RNG state.
        save_only_model: bool = false,
        /// Restore callback states when resuming.
        restore_callback_states_from_checkpoint: bool = false,
        /// Deprecated alias of use_cpu.
        no_cuda: bool = false,
        /// Train on the CPU.
        use_cpu: bool = false,
        /// Deprecated (Apple MPS).
        use_mps_device: bool = false,
        /// Random seed.
        seed: i64 = 42,
        /// Seed of the data samplers (defaults to seed).
        data_seed: Option<i64> = None,
        /// TorchScript for inference.
        jit_mode_eval: bool = false,
        /// bf16 mixed precision.
        bf16: bool = false,
        /// fp16 mixed precision.
        fp16: bool = false,
        /// Apex AMP level.
        fp16_opt_level: String = "O1".into(),
        /// Half-precision backend.
        half_precision_backend: String = "auto".into(),
        /// Evaluate fully in bf16.
        bf16_full_eval: bool = false,
        /// Evaluate fully in fp16.
        fp16_full_eval: bool = false,
        /// TF32 matmuls on Ampere GPUs.
        tf32: Option<bool> = None,
        /// Local rank in distributed training.
        local_rank: i64 = -1,
        /// Distributed backend.
        ddp_backend: Option<String> = None,
        /// TPU cores.
        tpu_num_cores: Option<i64> = None,
        /// TPU metrics debugging.
        tpu_metrics_debug: bool = false,
        /// Debug options.
        debug: String = String::new(),
        /// Drop the last incomplete batch.
        dataloader_drop_last: bool = false,
        /// Steps between evaluations (defaults to logging_steps).
        eval_steps: Option<f64> = None,
        /// Dataloader worker processes.
        dataloader_num_workers: i64 = 0,
        /// Batches prefetched per worker.
        dataloader_prefetch_factor: Option<i64> = None,
        /// Index of the past state in model outputs.
        past_index: i64 = -1,
        /// Run name for loggers.
        run_name: Option<String> = None,
        /// Disable progress bars.
        disable_tqdm: Option<bool> = None,
        /// Drop dataset columns the model does not take.
        remove_unused_columns: bool = true,
        /// Input keys holding labels.
        label_names: Option<Vec<String>> = None,
        /// Load the best checkpoint when training ends.
        load_best_model_at_end: bool = false,
        /// Metric that picks the best checkpoint.
        metric_for_best_model: Option<String> = None,
        /// Whether a larger metric is better.
        greater_is_better: Option<bool> = None,
        /// Do not skip seen batches when resuming.
        ignore_data_skip: bool = false,
        /// FSDP options.
        fsdp: Value = Value::Null,
        /// FSDP auto-wrap size.
        fsdp_min_num_params: i64 = 0,
        /// FSDP config.
        fsdp_config: Value = Value::Null,
        /// FSDP layer class to wrap.
        fsdp_transformer_layer_cls_to_wrap: Option<String> = None,
        /// Accelerate config.
        accelerator_config: Value = Value::Null,
        /// Accelerate parallelism config.
        parallelism_config: Value = Value::Null,
        /// DeepSpeed config file or dict.
        deepspeed: Value = Value::Null,
        /// Label smoothing.
        label_smoothing_factor: f64 = 0.0,
        /// Optimizer (HF OptimizerNames).
        optim: String = "adamw_torch".into(),
        /// Extra optimizer arguments.
        optim_args: Option<String> = None,
        /// Deprecated: use optim adafactor.
        adafactor: bool = false,
        /// Group samples of similar length.
        group_by_length: bool = false,
        /// Column with precomputed lengths.
        length_column_name: String = "length".into(),
        /// Experiment trackers.
        report_to: Vec<String> = vec!["none".to_string()],
        /// Trackio project.
        project: String = "huggingface".into(),
        /// Trackio space.
        trackio_space_id: Option<String> = None,
        /// Trackio bucket.
        trackio_bucket_id: Option<String> = None,
        /// Trackio static space.
        trackio_static_space_id: Option<String> = None,
        /// DDP find_unused_parameters.
        ddp_find_unused_parameters: Option<bool> = None,
        /// DDP bucket size.
        ddp_bucket_cap_mb: Option<i64> = None,
        /// DDP broadcast_buffers.
        ddp_broadcast_buffers: Option<bool> = None,
        /// DDP static_graph.
        ddp_static_graph: Option<bool> = None,
        /// Pin dataloader memory.
        dataloader_pin_memory: bool = true,
        /// Keep dataloader workers alive.
        dataloader_persistent_workers: bool = false,
        /// Skip memory profiling metrics.
        skip_memory_metrics: bool = true,
        /// Legacy prediction loop.
        use_legacy_prediction_loop: bool = false,
        /// Push the model to the hub.
        push_to_hub: bool = false,
        /// Checkpoint folder to resume from.
        resume_from_checkpoint: Option<String> = None,
        /// Hub repository.
        hub_model_id: Option<String> = None,
        /// When to push.
        hub_strategy: String = "every_save".into(),
        /// Hub token for pushing.
        hub_token: Option<String> = None,
        /// Make the hub repository private.
        hub_private_repo: Option<bool> = None,
        /// Push even while a push is running.
        hub_always_push: bool = false,
        /// Hub revision to push to.
        hub_revision: Option<String> = None,
        /// HF gradient checkpointing flag (LLaMA-Factory enables it itself).
        gradient_checkpointing: bool = false,
        /// Gradient checkpointing arguments.
        gradient_checkpointing_kwargs: Value = Value::Null,
        /// Deprecated: include_for_metrics.
        include_inputs_for_metrics: bool = false,
        /// Extra inputs passed to compute_metrics.
        include_for_metrics: Vec<String> = Vec::new(),
        /// Concatenate batches at evaluation.
        eval_do_concat_batches: bool = true,
        /// Deprecated: half_precision_backend.
        fp16_backend: String = "auto".into(),
        /// Deprecated: hub_model_id.
        push_to_hub_model_id: Option<String> = None,
        /// Deprecated: hub_model_id.
        push_to_hub_organization: Option<String> = None,
        /// Deprecated: hub_token.
        push_to_hub_token: Option<String> = None,
        /// SageMaker model-parallel parameters.
        mp_parameters: String = String::new(),
        /// Halve the batch size on out-of-memory.
        auto_find_batch_size: bool = false,
        /// Deterministic algorithms.
        full_determinism: bool = false,
        /// Deprecated: torch_compile_backend.
        torchdynamo: Option<String> = None,
        /// Ray Tune scope.
        ray_scope: String = "last".into(),
        /// Distributed timeout in seconds.
        ddp_timeout: i64 = 1800,
        /// torch.compile the model.
        torch_compile: bool = false,
        /// torch.compile backend.
        torch_compile_backend: Option<String> = None,
        /// torch.compile mode.
        torch_compile_mode: Option<String> = None,
        /// Log tokens per second.
        include_tokens_per_second: bool = false,
        /// Track input tokens seen (no, all, non_padding, or a boolean).
        include_num_input_tokens_seen: Value = Value::Str("no".into()),
        /// NEFTune noise alpha.
        neftune_noise_alpha: Option<f64> = None,
        /// Modules a GaLore/APOLLO-style optimizer targets.
        optim_target_modules: Value = Value::Null,
        /// Compute metrics per batch.
        batch_eval_metrics: bool = false,
        /// Evaluate before training.
        eval_on_start: bool = false,
        /// HF Liger kernel flag.
        use_liger_kernel: bool = false,
        /// Liger kernel config.
        liger_kernel_config: Value = Value::Null,
        /// Gather nested objects at evaluation.
        eval_use_gather_object: bool = false,
        /// Average token counts across devices.
        average_tokens_across_devices: bool = true,
        /// Model KV cache during training.
        use_cache: bool = false,
        /// Checkpoint on SIGTERM.
        enable_jit_checkpoint: bool = false,
        /// Training sampler.
        train_sampling_strategy: String = "random".into(),
        /// Sortish sampler.
        sortish_sampler: bool = false,
        /// Generate at evaluation/prediction (BLEU/ROUGE).
        predict_with_generate: bool = false,
        /// Generation length at evaluation (defaults to cutoff_len).
        generation_max_length: Option<i64> = None,
        /// Beams at evaluation.
        generation_num_beams: Option<i64> = None,
        /// Generation config file.
        generation_config: Option<String> = None,
        /// Ray workers.
        ray_num_workers: i64 = 1,
        /// ray.init arguments.
        ray_init_kwargs: Value = Value::Null,
        /// Master address for init_process_group.
        master_addr: Option<String> = None,
        /// Master port for init_process_group.
        master_port: Option<String> = None,
        /// torch.profiler traces.
        enable_torch_profiler: bool = false,
        /// Profiler trace folder.
        profiler_output_dir: Option<String> = None,
        /// Profiler wait steps.
        profiler_wait_steps: i64 = 1,
        /// Profiler warm-up steps.
        profiler_warmup_steps: i64 = 1,
        /// Profiler active steps.
        profiler_active_steps: i64 = 1,
        /// Profiler cycles.
        profiler_repeat: i64 = 1,
        /// Profiler records shapes.
        profiler_record_shapes: bool = true,
        /// Profiler profiles memory.
        profiler_profile_memory: bool = true,
        /// Profiler records stacks.
        profiler_with_stack: bool = true,
        /// Modules timed with CUDA events.
        profile_modules: Option<String> = None,
        /// FP8 mixed precision.
        fp8: bool = false,
        /// FP8 backend.
        fp8_backend: String = "auto".into(),
        /// FP8 FSDP all-gather.
        fp8_enable_fsdp_float8_all_gather: bool = false,
    }
}

arg_group! {
    /// LLaMA-Factory `FinetuningArguments` (freeze, LoRA, OFT, RLHF, GaLore, APOLLO, BAdam, SwanLab and the
/// top-level method switches).
    pub struct FinetuningArguments {
        /// Freeze tuning: train the last N layers (negative: the first |N|).
        freeze_trainable_layers: i64 = 2,
        /// Freeze tuning: trainable sub-modules of each layer.
        freeze_trainable_modules: CommaList = CommaList::new(["all"]),
        /// Freeze tuning: trainable modules outside the layers.
        freeze_extra_modules: Option<CommaList> = None,
        /// Modules besides the adapters to train and save (modules_to_save).
        additional_target: Option<CommaList> = None,
        /// LoRA scale factor; none means 2 x lora_rank.
        lora_alpha: Option<i64> = None,
        /// LoRA dropout.
        lora_dropout: f64 = 0.0,
        /// LoRA rank.
        lora_rank: i64 = 8,
        /// LoRA target modules; `all` means every linear layer but the head.
        lora_target: CommaList = CommaList::new(["all"]),
        /// LoRA+ learning-rate ratio (lr_B / lr_A).
        loraplus_lr_ratio: Option<f64> = None,
        /// LoRA+ learning rate of embedding adapters.
        loraplus_lr_embedding: f64 = 1e-6,
        /// Rank-stabilised LoRA scaling (alpha / sqrt(rank)).
        use_rslora: bool = false,
        /// Weight-decomposed LoRA (DoRA).
        use_dora: bool = false,
        /// Initialise a PiSSA adapter.
        pissa_init: bool = false,
        /// FSVD iterations for PiSSA (-1: full SVD).
        pissa_iter: i64 = 16,
        /// Convert PiSSA to a plain LoRA when saving.
        pissa_convert: bool = false,
        /// Start a new adapter on top of adapter_name_or_path.
        create_new_adapter: bool = false,
        /// OFT dropout.
        module_dropout: f64 = 0.0,
        /// OFT rank.
        oft_rank: i64 = 0,
        /// OFT block size.
        oft_block_size: i64 = 32,
        /// OFT target modules.
        oft_target: CommaList = CommaList::new(["all"]),
        /// Beta of the preference loss.
        pref_beta: f64 = 0.1,
        /// SFT loss coefficient in DPO.
        pref_ftx: f64 = 0.0,
        /// BCO coefficient in DPO.
        pref_bco_weight: f64 = 0.0,
        /// DPO loss: sigmoid, hinge, ipo, kto_pair, orpo, simpo.
        pref_loss: String = "sigmoid".into(),
        /// cDPO label smoothing.
        dpo_label_smoothing: f64 = 0.0,
        /// KTO desirable weight.
        kto_chosen_weight: f64 = 1.0,
        /// KTO undesirable weight.
        kto_rejected_weight: f64 = 1.0,
        /// SimPO reward margin.
        simpo_gamma: f64 = 0.5,
        /// PPO mini-batches per experience buffer.
        ppo_buffer_size: i64 = 1,
        /// PPO epochs per step.
        ppo_epochs: i64 = 4,
        /// PPO score normalisation.
        ppo_score_norm: bool = false,
        /// PPO adaptive KL target.
        ppo_target: f64 = 6.0,
        /// Whiten PPO rewards.
        ppo_whiten_rewards: bool = false,
        /// Reference model for PPO/DPO.
        ref_model: Option<String> = None,
        /// Adapters of the reference model.
        ref_model_adapters: Option<String> = None,
        /// Quantization bits of the reference model (4 or 8).
        ref_model_quantization_bit: Option<i64> = None,
        /// Reward model for PPO.
        reward_model: Option<String> = None,
        /// Adapters of the reward model.
        reward_model_adapters: Option<String> = None,
        /// Quantization bits of the reward model (4 or 8).
        reward_model_quantization_bit: Option<i64> = None,
        /// Reward model kind: lora, full, api.
        reward_model_type: String = "lora".into(),
        /// LD-DPO alpha.
        ld_alpha: Option<f64> = None,
        /// GaLore gradient projection.
        use_galore: bool = false,
        /// GaLore target modules.
        galore_target: CommaList = CommaList::new(["all"]),
        /// GaLore rank.
        galore_rank: i64 = 16,
        /// GaLore projection update interval.
        galore_update_interval: i64 = 200,
        /// GaLore scale.
        galore_scale: f64 = 2.0,
        /// GaLore projection type.
        galore_proj_type: String = "std".into(),
        /// Layer-wise GaLore updates.
        galore_layerwise: bool = false,
        /// APOLLO optimizer.
        use_apollo: bool = false,
        /// APOLLO target modules.
        apollo_target: CommaList = CommaList::new(["all"]),
        /// APOLLO rank.
        apollo_rank: i64 = 16,
        /// APOLLO projection update interval.
        apollo_update_interval: i64 = 200,
        /// APOLLO scale.
        apollo_scale: f64 = 32.0,
        /// APOLLO projection: svd or random.
        apollo_proj: String = "random".into(),
        /// APOLLO projection type.
        apollo_proj_type: String = "std".into(),
        /// APOLLO scaling: channel or tensor.
        apollo_scale_type: String = "channel".into(),
        /// Layer-wise APOLLO updates.
        apollo_layerwise: bool = false,
        /// APOLLO norm-growth limiter before scaling.
        apollo_scale_front: bool = false,
        /// BAdam optimizer.
        use_badam: bool = false,
        /// BAdam mode: layer or ratio.
        badam_mode: String = "layer".into(),
        /// BAdam starting block.
        badam_start_block: Option<i64> = None,
        /// BAdam block order.
        badam_switch_mode: Option<String> = Some("ascending".into()),
        /// Steps between BAdam block switches (-1: never).
        badam_switch_interval: Option<i64> = Some(50),
        /// Ratio-wise BAdam update ratio.
        badam_update_ratio: f64 = 0.05,
        /// BAdam mask mode: adjacent or scatter.
        badam_mask_mode: String = "adjacent".into(),
        /// BAdam verbosity.
        badam_verbose: i64 = 0,
        /// Log to SwanLab.
        use_swanlab: bool = false,
        /// SwanLab project.
        swanlab_project: Option<String> = Some("llamafactory".into()),
        /// SwanLab workspace.
        swanlab_workspace: Option<String> = None,
        /// SwanLab run name.
        swanlab_run_name: Option<String> = None,
        /// SwanLab mode: cloud or local.
        swanlab_mode: String = "cloud".into(),
        /// SwanLab API key.
        swanlab_api_key: Option<String> = None,
        /// SwanLab log folder.
        swanlab_logdir: Option<String> = None,
        /// SwanLab Lark webhook.
        swanlab_lark_webhook_url: Option<String> = None,
        /// SwanLab Lark secret.
        swanlab_lark_secret: Option<String> = None,
        /// Train purely in bf16 (no AMP master weights).
        pure_bf16: bool = false,
        /// Training stage: pt, sft, rm, ppo, dpo, kto.
        stage: Stage = Stage::Sft,
        /// Method: lora, oft, freeze, full.
        finetuning_type: FinetuningType = FinetuningType::Lora,
        /// Train only the expanded blocks (LLaMA Pro).
        use_llama_pro: bool = false,
        /// Adam-mini optimizer.
        use_adam_mini: bool = false,
        /// Megatron Core Adapter training.
        use_mca: bool = false,
        /// HyperParallel FSDP/TP backend.
        use_hyper_parallel: bool = false,
        /// HyperParallel strategy file.
        hyper_parallel_args: Option<String> = None,
        /// Muon optimizer.
        use_muon: bool = false,
        /// DFT loss.
        use_dft_loss: bool = false,
        /// ASFT loss.
        use_asft_loss: bool = false,
        /// ASFT alpha.
        asft_alpha: f64 = 0.1,
        /// EAFT loss.
        use_eaft_loss: bool = false,
        /// EAFT alpha.
        eaft_alpha: f64 = 1.0,
        /// Freeze the vision tower of multimodal models.
        freeze_vision_tower: bool = true,
        /// Freeze the multimodal projector.
        freeze_multi_modal_projector: bool = true,
        /// Freeze the language model of multimodal models.
        freeze_language_model: bool = false,
        /// Token accuracy at evaluation.
        compute_accuracy: bool = false,
        /// Do not shuffle the training set.
        disable_shuffling: bool = false,
        /// Stop after this many evaluations without improvement.
        early_stopping_steps: Option<i64> = None,
        /// Save training_loss.png (and eval loss) in output_dir.
        plot_loss: bool = false,
        /// Report effective (non-padding) tokens per second.
        include_effective_tokens_per_second: bool = false,
    }
}

arg_group! {
    /// LLaMA-Factory `GeneratingArguments` (decoding for chat, api, predict).
    pub struct GeneratingArguments {
        /// Sample; greedy decoding otherwise.
        do_sample: bool = true,
        /// Sampling temperature.
        temperature: f64 = 0.95,
        /// Nucleus sampling mass.
        top_p: f64 = 0.7,
        /// Top-k filtering.
        top_k: i64 = 50,
        /// Beam search width (1: no beam search).
        num_beams: i64 = 1,
        /// Maximum total length (overridden by max_new_tokens when > 0).
        max_length: i64 = 1024,
        /// Maximum new tokens.
        max_new_tokens: i64 = 1024,
        /// Repetition penalty (1.0: none).
        repetition_penalty: f64 = 1.0,
        /// Beam-search length penalty.
        length_penalty: f64 = 1.0,
        /// Drop special tokens when decoding.
        skip_special_tokens: bool = true,
    }
}
