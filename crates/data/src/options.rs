//! `DataOptions`: the data-side arguments, spelled as LLaMA-Factory's `DataArguments` spells them so the
//! argument layer fills it by copying fields.

use crate::{bail, Result};
use std::path::PathBuf;

/// Which processor the examples go through (`finetuning_args.stage`, data side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Pre-training: `text + eos`, concatenated into `cutoff_len` blocks when packing.
    Pt,
    /// Supervised fine-tuning: prompt masked with `IGNORE_INDEX`, responses trained on.
    Sft,
    /// Preference pairs (`rm`, and `dpo` which reads the same data): chosen and rejected encodings.
    Rm,
}

/// How several datasets are merged (`mix_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MixStrategy {
    #[default]
    Concat,
    /// Stop when the first dataset runs out (`first_exhausted`).
    InterleaveUnder,
    /// Oversample until every dataset has been seen whole (`all_exhausted`).
    InterleaveOver,
    /// Until every dataset is used up, each example once (`all_exhausted_without_replacement`).
    InterleaveOnce,
}

impl MixStrategy {
    pub fn parse(s: &str) -> Result<MixStrategy> {
        Ok(match s {
            "concat" => MixStrategy::Concat,
            "interleave_under" => MixStrategy::InterleaveUnder,
            "interleave_over" => MixStrategy::InterleaveOver,
            "interleave_once" => MixStrategy::InterleaveOnce,
            other => bail!(
                "unknown mix_strategy {other:?}; expected concat, interleave_under, interleave_over or interleave_once"
            ),
        })
    }
}

/// `val_size`: a fraction in `[0, 1)` or a count of examples (LLaMA-Factory takes `int(val_size)` when > 1).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ValSize {
    #[default]
    None,
    Fraction(f64),
    Count(usize),
}

impl ValSize {
    /// LLaMA-Factory's reading of the float it receives: `<= 1e-6` none, `> 1` a count, else a fraction.
    pub fn from_f64(v: f64) -> Result<ValSize> {
        if !v.is_finite() || v < 0.0 {
            bail!("val_size must be a fraction in [0, 1) or a whole number of examples, got {v}");
        }
        Ok(if v <= 1e-6 {
            ValSize::None
        } else if v > 1.0 {
            ValSize::Count(v as usize)
        } else if v < 1.0 {
            ValSize::Fraction(v)
        } else {
            bail!("val_size 1.0 would leave no training data; give a fraction below 1 or a count above 1")
        })
    }
}

/// The data arguments (LLaMA-Factory `DataArguments` names; `seed` is the training seed).
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Names in `dataset_info.json` (LLaMA-Factory's comma list, split).
    pub dataset: Vec<String>,
    pub eval_dataset: Vec<String>,
    /// Folder holding `dataset_info.json` (default `data`).
    pub dataset_dir: PathBuf,
    /// Template name; `None` parses the tokenizer's `chat_template` (or `empty` when it has none).
    pub template: Option<String>,
    /// Maximum tokens per example (default 2048). Packing makes it one less, as LLaMA-Factory does.
    pub cutoff_len: usize,
    pub train_on_prompt: bool,
    pub mask_history: bool,
    /// `None`: on for pt, off otherwise.
    pub packing: Option<bool>,
    pub neat_packing: bool,
    /// Keep the first N examples of **each** dataset.
    pub max_samples: Option<usize>,
    pub val_size: ValSize,
    pub mix_strategy: MixStrategy,
    /// One probability per dataset, for the interleave strategies.
    pub interleave_probs: Option<Vec<f64>>,
    pub seed: u64,
    /// Only `false` is supported (datasets are read into memory).
    pub streaming: bool,
    /// A folder for tokenized data: read when it holds data (the other data arguments are then ignored),
    /// else written after tokenizing (see `cache`).
    pub tokenized_path: Option<PathBuf>,
    /// Overrides the template's default system prompt.
    pub default_system: Option<String>,
    /// Reasoning templates: `Some(true)` empty CoT is trained on, `Some(false)` it goes to the prompt.
    pub enable_thinking: Option<bool>,
    pub preserve_thinking: bool,
    /// Overrides the template's tool format (`default`, `qwen`).
    pub tool_format: Option<String>,
    /// sft `predict_with_generate`: the eval split becomes prompts to generate from (LLaMA-Factory's
    /// unsupervised processor), in [`crate::DatasetModule::eval_prompts`] instead of `eval`.
    pub predict_with_generate: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            dataset: Vec::new(),
            eval_dataset: Vec::new(),
            dataset_dir: PathBuf::from("data"),
            template: None,
            cutoff_len: 2048,
            train_on_prompt: false,
            mask_history: false,
            packing: None,
            neat_packing: false,
            max_samples: None,
            val_size: ValSize::None,
            mix_strategy: MixStrategy::Concat,
            interleave_probs: None,
            seed: 42,
            streaming: false,
            tokenized_path: None,
            default_system: None,
            enable_thinking: Some(true),
            preserve_thinking: false,
            tool_format: None,
            predict_with_generate: false,
        }
    }
}

impl DataOptions {
    /// Whether examples are packed for `stage` (`packing`, defaulting to on for pt; `neat_packing` implies it).
    pub fn packing_for(&self, stage: Stage) -> bool {
        self.neat_packing || self.packing.unwrap_or(stage == Stage::Pt)
    }

    /// The cutoff the processors use: LLaMA-Factory's `DataArguments.__post_init__` takes one off when
    /// `packing` (or `neat_packing`) was set explicitly, to leave room for the pad token of a packed row.
    /// pt's implicit packing keeps the full length.
    pub fn effective_cutoff_len(&self) -> usize {
        if self.neat_packing || self.packing == Some(true) {
            self.cutoff_len.saturating_sub(1)
        } else {
            self.cutoff_len
        }
    }

    /// The checks LLaMA-Factory makes on these arguments (`DataArguments.__post_init__`, parser, template).
    pub fn validate(&self, stage: Stage) -> Result<()> {
        if self.streaming {
            bail!("streaming: true is not supported; datasets are read into memory (set streaming: false)");
        }
        if self.cutoff_len == 0 {
            bail!("cutoff_len must be at least 1");
        }
        if self.train_on_prompt && self.mask_history {
            bail!("`mask_history` is incompatible with `train_on_prompt`");
        }
        if (self.packing == Some(true) || self.neat_packing) && stage == Stage::Rm {
            bail!("packing is not supported for preference (rm / dpo) data");
        }
        if self.neat_packing && stage != Stage::Sft {
            bail!("`neat_packing` cannot be set as True except SFT");
        }
        if self.dataset.is_empty() && self.eval_dataset.is_empty() {
            bail!(
                "no dataset given: set `dataset` to names from {}",
                self.dataset_dir.join("dataset_info.json").display()
            );
        }
        if !self.eval_dataset.is_empty() && self.val_size != ValSize::None {
            bail!("Cannot specify `val_size` if `eval_dataset` is not None");
        }
        if let Some(probs) = &self.interleave_probs {
            if self.mix_strategy == MixStrategy::Concat {
                bail!("`interleave_probs` is only valid for interleaved mixing (mix_strategy: interleave_*)");
            }
            if probs.len() != self.dataset.len() {
                bail!("the length of dataset and interleave probs should be identical ({} datasets, {} probabilities)", self.dataset.len(), probs.len());
            }
            if probs.iter().any(|p| !p.is_finite() || *p < 0.0)
                || (probs.iter().sum::<f64>() - 1.0).abs() > 1e-6
            {
                bail!("interleave_probs must be non-negative and sum to 1, got {probs:?}");
            }
        }
        Ok(())
    }
}
