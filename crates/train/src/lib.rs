//! ferrotune-train: fine-tuning Llama-family models the way LLaMA-Factory does, on ferrotune's engine.
//!
//! - [`adapters`]: `finetuning_type` (full / freeze / LoRA as PEFT builds it) and PEFT adapter files.
//! - [`optim`]: AdamW, Adafactor, SGD over the trainable leaves (f32 state), global gradient clipping.
//! - [`schedule`]: HF's ten `lr_scheduler_type` schedules with warmup.
//! - [`data`]: micro-batches (packed rows) and the [`data::BatchSource`] the loop reads.
//! - [`metrics`]: predict_with_generate's BLEU-4 / ROUGE scores as LLaMA-Factory computes them.
//! - [`trainer`]: the loop (gradient accumulation with HF's token normalisation, activation checkpointing,
//!   NEFTune, evaluation, logging, atomic checkpoints, exact resume).

pub mod adapters;
pub mod metrics;
pub mod data;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use adapters::{load_adapter, save_adapter, setup_freeze, setup_full, setup_lora, AdapterMode, FreezeSettings, LoraSettings};
pub use data::{BatchSource, ItemSource, MicroBatch};
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind, ParamGroup};
pub use schedule::{Schedule, ScheduleKind, ScheduleKwargs};
pub use trainer::{prepare_model, Method, Precision, TrainOutput, Trainer, TrainerCallback, TrainerOptions};
