//! ferrotune-args: LLaMA-Factory's argument groups and `llamafactory-cli`'s way of reading them.
//!
//! - [`parse_train_args`] (for `ferrotune train`) and [`parse_infer_args`] (chat, api, export) take the
//!   arguments after the command: a `.yaml`/`.yml`/`.json` config plus `key=value` overrides, or `--key value`
//!   flags. Values are typed per field; unknown keys are an error that names the closest valid key (unless
//!   `ALLOW_EXTRA_ARGS=1`); LLaMA-Factory's cross-argument rules are checked up front with its messages.
//! - Every key is classified in one table ([`support::SUPPORT`]): implemented, a documented no-op on this
//!   runtime, or not implemented yet (rejected when set to a non-default value, with the reason).
//! - [`TrainArgs::to_yaml`] writes a flat YAML LLaMA-Factory reads back (`training_args.yaml`).
//! - [`logging`] and [`plot`]: the trainer's files in LLaMA-Factory's formats (`trainer_log.jsonl`,
//!   `trainer_state.json`, `*_results.json`, `training_loss.png`) and the terminal progress line.
//!
//! Notes on fidelity:
//! - Keys live in the group LLaMA-Factory 0.9.5 declares them in (`enable_thinking` and `default_system` are
//!   `DataArguments`); since configs are flat, that only matters to code reading the structs.
//! - Fields hold what the user wrote; LLaMA-Factory's derived values are methods
//!   ([`FinetuningArguments::lora_alpha_value`], [`TrainArgs::packing`], [`DataArguments::effective_cutoff_len`],
//!   [`TrainingArguments::warmup_steps_for`], ...), so [`TrainArgs::to_yaml`] round-trips.
//! - TrainingArguments is the union of transformers 4.55-5.6 (the range LLaMA-Factory 0.9.5 accepts), so a
//!   config written for either parses; `warmup_ratio` and a fractional `warmup_steps` both work.
//! - Friendlier than LLaMA-Factory where it would crash later: numbers and booleans given as strings are
//!   converted (as argparse does), `Literal` choices are checked at parse time, `save_strategy: no` (YAML
//!   false) means "no".

pub mod convert;
pub mod error;
pub mod groups;
pub mod logging;
mod parse;
pub mod plot;
pub mod support;
mod validate;
pub mod value;

pub use convert::{
    CommaList, FinetuningType, IntervalStrategy, Optimizer, SaveStrategy, SchedulerType, Stage,
};
pub use error::{ArgsError, Result};
pub use groups::{
    DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments, TrainingArguments,
};
pub use support::{support, Support};
pub use value::Value;

use convert::ArgKind;
use parse::KeyInfo;
use std::path::{Path, PathBuf};

/// The arguments of `ferrotune train` (LLaMA-Factory's `get_train_args`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainArgs {
    pub model: ModelArguments,
    pub data: DataArguments,
    pub training: TrainingArguments,
    pub finetuning: FinetuningArguments,
    pub generating: GeneratingArguments,
    /// Keys set to a value that has no effect here (no-op keys), one line each, for the CLI to print.
    pub notes: Vec<String>,
    /// Unknown keys ignored because `ALLOW_EXTRA_ARGS=1`.
    pub ignored: Vec<String>,
}

/// The arguments of `ferrotune chat`, `api` and `export` (LLaMA-Factory's `get_infer_args`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferArgs {
    pub model: ModelArguments,
    pub data: DataArguments,
    pub finetuning: FinetuningArguments,
    pub generating: GeneratingArguments,
    pub notes: Vec<String>,
    pub ignored: Vec<String>,
}

/// Parsing switches (the environment, made explicit for tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions {
    /// `ALLOW_EXTRA_ARGS`: ignore unknown keys instead of failing.
    pub allow_extra_args: bool,
}

impl ParseOptions {
    /// From the environment, as LLaMA-Factory's `is_env_enabled` reads it (`true`, `y` or `1`).
    pub fn from_env() -> ParseOptions {
        ParseOptions {
            allow_extra_args: env_enabled("ALLOW_EXTRA_ARGS"),
        }
    }
}

fn env_enabled(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "y" | "1"))
        .unwrap_or(false)
}

/// The groups an entry point takes, with mutable access by name.
trait Groups {
    const TRAINING: bool;
    fn set(&mut self, key: &str, v: &Value) -> Result<bool>;
    fn get(&self, key: &str) -> Option<Value>;
}

impl Groups for TrainArgs {
    const TRAINING: bool = true;
    fn set(&mut self, key: &str, v: &Value) -> Result<bool> {
        Ok(self.model.set(key, v)?
            || self.data.set(key, v)?
            || self.training.set(key, v)?
            || self.finetuning.set(key, v)?
            || self.generating.set(key, v)?)
    }
    fn get(&self, key: &str) -> Option<Value> {
        self.model
            .get(key)
            .or_else(|| self.data.get(key))
            .or_else(|| self.training.get(key))
            .or_else(|| self.finetuning.get(key))
            .or_else(|| self.generating.get(key))
    }
}

impl Groups for InferArgs {
    const TRAINING: bool = false;
    fn set(&mut self, key: &str, v: &Value) -> Result<bool> {
        Ok(self.model.set(key, v)?
            || self.data.set(key, v)?
            || self.finetuning.set(key, v)?
            || self.generating.set(key, v)?)
    }
    fn get(&self, key: &str) -> Option<Value> {
        self.model
            .get(key)
            .or_else(|| self.data.get(key))
            .or_else(|| self.finetuning.get(key))
            .or_else(|| self.generating.get(key))
    }
}

fn group_kind(key: &str, training: bool) -> Option<ArgKind> {
    ModelArguments::kind(key)
        .or_else(|| DataArguments::kind(key))
        .or_else(|| {
            if training {
                TrainingArguments::kind(key)
            } else {
                None
            }
        })
        .or_else(|| FinetuningArguments::kind(key))
        .or_else(|| GeneratingArguments::kind(key))
}

fn all_keys(training: bool) -> impl Iterator<Item = &'static str> {
    let t: &'static [&'static str] = if training {
        TrainingArguments::KEYS
    } else {
        &[]
    };
    ModelArguments::KEYS
        .iter()
        .chain(DataArguments::KEYS)
        .chain(t)
        .chain(FinetuningArguments::KEYS)
        .chain(GeneratingArguments::KEYS)
        .copied()
}

/// Reads, types and applies the settings; checks the support table. Validation is the caller's.
fn build<G: Groups + Default>(
    args: &[String],
    opts: ParseOptions,
) -> Result<(G, Vec<String>, Vec<String>)> {
    let defaults = G::default();
    let lookup = |key: &str| -> Option<KeyInfo> {
        group_kind(key, G::TRAINING).map(|kind| KeyInfo {
            kind,
            default_true: defaults.get(key) == Some(Value::Bool(true)),
        })
    };
    let entries = parse::collect(args, &lookup)?;
    let mut g = G::default();
    let mut ignored = Vec::new();
    let mut set_keys: Vec<String> = Vec::new();
    for (key, value) in &entries {
        if g.set(key, value)? {
            if !set_keys.contains(key) {
                set_keys.push(key.clone());
            }
            continue;
        }
        if opts.allow_extra_args {
            ignored.push(key.clone());
            continue;
        }
        let hint = (!G::TRAINING && TrainingArguments::KEYS.contains(&key.as_str())).then(|| {
            format!("`{key}` is a training argument; chat, api and export do not take it")
        });
        let suggestion = if hint.is_some() {
            None
        } else {
            parse::closest(key, all_keys(G::TRAINING))
        };
        return Err(ArgsError::UnknownKey {
            key: key.clone(),
            suggestion,
            hint,
        });
    }
    let mut notes = Vec::new();
    for key in &set_keys {
        let (Some(now), Some(default)) = (g.get(key), defaults.get(key)) else {
            continue;
        };
        if now == default {
            continue;
        }
        match support::support(key) {
            Some(Support::Supported) | None => {}
            Some(Support::NoOp(why)) => {
                notes.push(format!("`{key}` has no effect in ferrotune: {why}"))
            }
            Some(Support::NotYet(why)) => {
                return Err(ArgsError::NotImplemented {
                    key: key.clone(),
                    value: now.to_string(),
                    reason: why.into(),
                })
            }
            Some(Support::Values(allowed, why)) => {
                let texts: Vec<String> = match &now {
                    Value::List(items) => items.iter().filter_map(Value::scalar_text).collect(),
                    other => other.scalar_text().into_iter().collect(),
                };
                if texts.iter().any(|t| !allowed.contains(&t.as_str())) {
                    return Err(ArgsError::NotImplemented {
                        key: key.clone(),
                        value: now.to_string(),
                        reason: why.into(),
                    });
                }
            }
        }
    }
    Ok((g, notes, ignored))
}

/// Normalises `report_to` the way HF does: `none` (any case) or an empty list means no trackers.
fn normalize_report_to(report_to: &mut Vec<String>) {
    if report_to.is_empty() || report_to.iter().all(|r| r.eq_ignore_ascii_case("none")) {
        *report_to = vec!["none".to_string()];
    }
}

/// Parses `ferrotune train`'s arguments (after the command), reading `ALLOW_EXTRA_ARGS` from the environment.
pub fn parse_train_args(args: &[String]) -> Result<TrainArgs> {
    parse_train_args_with(args, ParseOptions::from_env())
}

/// [`parse_train_args`] with explicit options.
pub fn parse_train_args_with(args: &[String], opts: ParseOptions) -> Result<TrainArgs> {
    let (mut a, notes, ignored): (TrainArgs, _, _) = build(args, opts)?;
    normalize_report_to(&mut a.training.report_to);
    a.notes = notes;
    a.ignored = ignored;
    a.validate()?;
    Ok(a)
}

/// Parses `ferrotune chat` / `api` / `export` arguments (Model + Data + Finetuning + Generating).
pub fn parse_infer_args(args: &[String]) -> Result<InferArgs> {
    parse_infer_args_with(args, ParseOptions::from_env())
}

/// [`parse_infer_args`] with explicit options.
pub fn parse_infer_args_with(args: &[String], opts: ParseOptions) -> Result<InferArgs> {
    let (mut a, notes, ignored): (InferArgs, _, _) = build(args, opts)?;
    a.notes = notes;
    a.ignored = ignored;
    a.validate()?;
    Ok(a)
}

/// The dtype training computes in (LLaMA-Factory's `compute_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDtype {
    F32,
    Bf16,
    F16,
}

impl TrainArgs {
    /// Every check `get_train_args` makes (and the dataclasses' own), in LLaMA-Factory's order.
    pub fn validate(&mut self) -> Result<()> {
        validate::model(&self.model)?;
        validate::data(&self.data)?;
        validate::training(&mut self.training)?;
        validate::finetuning(&self.finetuning)?;
        validate::generating(&self.generating)?;
        validate::train(&self.model, &self.data, &self.training, &self.finetuning)
    }

    /// bf16 with `bf16` or `pure_bf16`, f16 with `fp16`, else f32.
    pub fn compute_dtype(&self) -> ComputeDtype {
        if self.training.bf16 || self.finetuning.pure_bf16 {
            ComputeDtype::Bf16
        } else if self.training.fp16 {
            ComputeDtype::F16
        } else {
            ComputeDtype::F32
        }
    }

    /// Whether examples are packed (`packing`, default on for pt only; `neat_packing` implies it).
    pub fn packing(&self) -> bool {
        self.data.neat_packing
            || self
                .data
                .packing
                .unwrap_or(self.finetuning.stage == Stage::Pt)
    }

    /// LLaMA-Factory's auto-resume (`get_train_args`): with `do_train`, an existing `output_dir` and no
    /// `overwrite_output_dir`, the last `checkpoint-N` becomes `resume_from_checkpoint`; weights without a
    /// checkpoint are an error. Returns the checkpoint chosen, if any.
    pub fn resolve_resume(&mut self) -> Result<Option<PathBuf>> {
        if let Some(r) = &self.training.resume_from_checkpoint {
            return Ok(Some(PathBuf::from(r)));
        }
        let out = PathBuf::from(self.training.output_dir());
        if !self.training.do_train || !out.is_dir() || self.training.overwrite_output_dir {
            return Ok(None);
        }
        let last = last_checkpoint(&out);
        if last.is_none() && CHECKPOINT_NAMES.iter().any(|n| out.join(n).is_file()) {
            return Err(ArgsError::invalid(format!(
                "Output directory already exists and is not empty. Please set `overwrite_output_dir`. ({})",
                out.display()
            )));
        }
        if let Some(ck) = &last {
            self.training.resume_from_checkpoint = Some(ck.to_string_lossy().into_owned());
        }
        Ok(last)
    }

    /// A flat YAML LLaMA-Factory reads back (`llamafactory-cli train training_args.yaml`): every key that differs
    /// from its default plus the core ones, grouped under `### model` ... comments. Tokens and API keys are left
    /// out.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        type Getter<'a> = &'a dyn Fn(&str) -> Option<Value>;
        let groups: [(&str, &[&str], Getter, Getter); 5] = [
            (
                "model",
                ModelArguments::KEYS,
                &|k| self.model.get(k),
                &|k| ModelArguments::default().get(k),
            ),
            (
                "method",
                FinetuningArguments::KEYS,
                &|k| self.finetuning.get(k),
                &|k| FinetuningArguments::default().get(k),
            ),
            (
                "dataset",
                DataArguments::KEYS,
                &|k| self.data.get(k),
                &|k| DataArguments::default().get(k),
            ),
            (
                "train",
                TrainingArguments::KEYS,
                &|k| self.training.get(k),
                &|k| TrainingArguments::default().get(k),
            ),
            (
                "generate",
                GeneratingArguments::KEYS,
                &|k| self.generating.get(k),
                &|k| GeneratingArguments::default().get(k),
            ),
        ];
        // report_to too: transformers 4.x reads a missing report_to as "all" (every installed tracker).
        const ALWAYS: &[&str] = &[
            "model_name_or_path",
            "stage",
            "do_train",
            "finetuning_type",
            "output_dir",
            "report_to",
        ];
        for (title, keys, get, default) in groups {
            let mut section = String::new();
            for key in keys {
                if key.ends_with("token") || key.ends_with("api_key") {
                    continue;
                }
                let (Some(v), Some(d)) = (get(key), default(key)) else {
                    continue;
                };
                if v == d && !ALWAYS.contains(key) {
                    continue;
                }
                if v == Value::Null && ALWAYS.contains(key) && v == d {
                    continue;
                }
                // Step counts typed as floats (HF allows ratios) read better as integers when whole.
                let v = match v {
                    Value::Float(x)
                        if key.ends_with("_steps") && x.fract() == 0.0 && x.abs() < 1e15 =>
                    {
                        Value::Int(x as i64)
                    }
                    other => other,
                };
                section.push_str(&format!("{key}: {}\n", yaml_value(&v)));
            }
            if !section.is_empty() {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&format!("### {title}\n{section}"));
            }
        }
        out
    }
}

impl InferArgs {
    /// Every check `get_infer_args` makes (and the dataclasses' own).
    pub fn validate(&mut self) -> Result<()> {
        validate::model(&self.model)?;
        validate::data(&self.data)?;
        validate::finetuning(&self.finetuning)?;
        validate::generating(&self.generating)?;
        validate::infer(&self.model, &self.finetuning)
    }
}

impl FinetuningArguments {
    /// The LoRA scale factor in use: `lora_alpha`, or `2 * lora_rank` when unset (or 0, as Python's `or` reads it).
    pub fn lora_alpha_value(&self) -> i64 {
        match self.lora_alpha {
            Some(a) if a != 0 => a,
            _ => self.lora_rank * 2,
        }
    }

    /// The LoRA scaling applied to `B @ A`: `alpha / rank`, or `alpha / sqrt(rank)` with `use_rslora`.
    pub fn lora_scaling(&self) -> f64 {
        let alpha = self.lora_alpha_value() as f64;
        let rank = self.lora_rank.max(1) as f64;
        if self.use_rslora {
            alpha / rank.sqrt()
        } else {
            alpha / rank
        }
    }
}

impl DataArguments {
    /// The cutoff the processors use: one less when `packing` or `neat_packing` was set explicitly
    /// (`DataArguments.__post_init__`); pt's implicit packing keeps the full length.
    pub fn effective_cutoff_len(&self) -> i64 {
        if self.neat_packing || self.packing == Some(true) {
            self.cutoff_len - 1
        } else {
            self.cutoff_len
        }
    }

    /// `media_dir`, defaulting to `dataset_dir`.
    pub fn media_dir(&self) -> &str {
        self.media_dir.as_deref().unwrap_or(&self.dataset_dir)
    }
}

impl TrainingArguments {
    /// `output_dir`, or HF's fallback `trainer_output`.
    pub fn output_dir(&self) -> &str {
        self.output_dir.as_deref().unwrap_or("trainer_output")
    }

    /// The optimizer `optim` names (`None` only for names the support table rejects).
    pub fn optimizer(&self) -> Option<Optimizer> {
        Optimizer::from_optim(&self.optim)
    }

    /// Optimizer steps per epoch for `num_batches` micro-batches (HF: `ceil(len(dataloader) / grad_accum)`, at least 1).
    pub fn update_steps_per_epoch(&self, num_batches: usize) -> usize {
        // transformers 5.6 `Trainer._inner_training_loop`: a partial accumulation window at the end of an epoch
        // is still an optimizer step, so this rounds up.
        num_batches.div_ceil(self.gradient_accumulation_steps.max(1) as usize).max(1)
    }

    /// Total optimizer steps: `max_steps` when > 0, else `ceil(num_train_epochs * steps_per_epoch)`.
    pub fn total_steps(&self, update_steps_per_epoch: usize) -> usize {
        if self.max_steps > 0 {
            self.max_steps as usize
        } else {
            (self.num_train_epochs * update_steps_per_epoch as f64)
                .ceil()
                .max(0.0) as usize
        }
    }

    /// Warmup steps for `total` steps: `warmup_steps` (>= 1 a count, in (0,1) a ratio, as transformers 5 reads
    /// it), else `ceil(total * warmup_ratio)`.
    pub fn warmup_steps_for(&self, total: usize) -> usize {
        if self.warmup_steps >= 1.0 {
            self.warmup_steps as usize
        } else if self.warmup_steps > 0.0 {
            (total as f64 * self.warmup_steps).ceil() as usize
        } else {
            self.warmup_ratio
                .map_or(0, |r| (total as f64 * r).ceil() as usize)
        }
    }

    /// A `*_steps` value for `total` steps: below 1 it is a ratio (`ceil(total * v)`), HF's reading.
    pub fn steps_from(value: f64, total: usize) -> usize {
        if value < 1.0 {
            ((total as f64 * value).ceil() as usize).max(1)
        } else {
            value as usize
        }
    }

    /// `eval_steps`, falling back to `logging_steps` as HF does.
    pub fn eval_steps_value(&self) -> f64 {
        match self.eval_steps {
            Some(s) if s > 0.0 => s,
            _ => self.logging_steps,
        }
    }

    /// `data_seed`, defaulting to `seed`.
    pub fn data_seed_value(&self) -> i64 {
        self.data_seed.unwrap_or(self.seed)
    }
}

impl GeneratingArguments {
    /// The new-token budget `to_dict` hands to generate: `max_new_tokens` when > 0, else `max_length`
    /// (a total-length limit; the second field says which).
    pub fn token_limit(&self) -> (i64, bool) {
        if self.max_new_tokens > 0 {
            (self.max_new_tokens, true)
        } else {
            (self.max_length, false)
        }
    }
}

/// Files whose presence marks `output_dir` as holding weights (LLaMA-Factory's `CHECKPOINT_NAMES`).
pub const CHECKPOINT_NAMES: &[&str] = &[
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
];

/// HF's `get_last_checkpoint`: the `checkpoint-N` folder with the largest N.
pub fn last_checkpoint(dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_prefix("checkpoint-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// One value in YAML flow style that reads back to the same [`Value`].
fn yaml_value(v: &Value) -> String {
    match v {
        Value::Str(s) => yaml_str(s, false),
        Value::List(items) => format!(
            "[{}]",
            items
                .iter()
                .map(yaml_flow_item)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}: {}", yaml_str(k, true), yaml_flow_item(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.scalar_text().unwrap_or_default(),
    }
}

/// A value inside `[...]` or `{...}` (commas must be quoted there).
fn yaml_flow_item(v: &Value) -> String {
    match v {
        Value::Str(s) => yaml_str(s, true),
        other => yaml_value(other),
    }
}

fn yaml_str(s: &str, in_flow: bool) -> String {
    let plain_ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-+@".contains(c) || (c == ',' && !in_flow))
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '/')
        && value::resolve_plain(s) == Value::Str(s.to_string());
    if plain_ok {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

#[cfg(test)]
mod tests;
