//! Loading datasets named in `dataset_info.json`, merging several (`mix_strategy`), splitting off a
//! validation set (`val_size`), and the whole pipeline up to tokenized examples ([`load_dataset`]).

use crate::convert::{convert, Example};
use crate::encode::{self, EncodedExample, PackedRow, PairedExample, PromptExample, SupervisedConfig};
use crate::info::{dataset_list, read_records, DatasetAttr};
use crate::options::{DataOptions, MixStrategy, Stage, ValSize};
use crate::template::{get_template_and_fix_tokenizer, Template};
use crate::{bail, Context, Result};
use ferrotune_models::ModelTokenizer;

/// A small seeded generator (SplitMix64) for `num_samples` resampling and batch shuffling: reproducible for a
/// seed (LLaMA-Factory's `num_samples` uses numpy's unseeded global generator, so there is nothing to match).
/// `val_size` splits and interleaving use [`crate::numpy_rng`], as `datasets` does.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            p.swap(i, j);
        }
        p
    }
}

/// Read and convert one dataset: `num_samples` resampling, then `max_samples` truncation, as upstream.
pub fn load_single(
    attr: &DatasetAttr,
    options: &DataOptions,
    rng: &mut Rng,
) -> Result<Vec<Example>> {
    let mut records = read_records(attr, &options.dataset_dir)?;
    if let Some(target) = attr.num_samples {
        if records.is_empty() {
            bail!(
                "dataset {:?}: num_samples {target} asked of an empty dataset",
                attr.name
            );
        }
        let mut idx = rng.permutation(records.len());
        idx.truncate(target);
        while idx.len() < target {
            idx.push(rng.below(records.len()));
        }
        records = idx.into_iter().map(|i| records[i].clone()).collect();
    }
    if let Some(max) = options.max_samples {
        records.truncate(max);
    }
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            convert(attr, r).with_context(|| {
                format!("dataset {:?} ({}), record {i}", attr.name, attr.file_name)
            })
        })
        .collect()
}

/// `merge_dataset`: concatenation or interleaving (`first_exhausted` / `all_exhausted` /
/// `all_exhausted_without_replacement`) as `datasets.interleave_datasets` does it: whole rounds without
/// probabilities, numpy's seeded draws with them (same order as `datasets` for first/all_exhausted).
pub fn merge(
    datasets: Vec<Vec<Example>>,
    strategy: MixStrategy,
    probs: Option<&[f64]>,
    seed: u64,
) -> Result<Vec<Example>> {
    if datasets.len() == 1 || strategy == MixStrategy::Concat {
        return Ok(datasets.into_iter().flatten().collect());
    }
    let lens: Vec<usize> = datasets.iter().map(Vec::len).collect();
    if lens.contains(&0) {
        bail!("cannot interleave an empty dataset; remove it or use mix_strategy: concat");
    }
    let n = datasets.len();
    if let Some(p) = probs {
        if p.len() != n {
            bail!(
                "interleave_probs has {} entries for {n} datasets; give one per dataset",
                p.len()
            );
        }
    }
    let Some(p) = probs else {
        // `datasets` without probabilities: whole rounds over every dataset, min(lengths) rounds for
        // first_exhausted, max(lengths) for the others (shorter datasets wrap around).
        let rounds = if strategy == MixStrategy::InterleaveUnder {
            *lens.iter().min().unwrap_or(&0)
        } else {
            *lens.iter().max().unwrap_or(&0)
        };
        let mut out = Vec::with_capacity(rounds * n);
        for i in 0..rounds {
            for (j, set) in datasets.iter().enumerate() {
                if strategy == MixStrategy::InterleaveOnce && i >= lens[j] {
                    continue;
                }
                out.push(set[i % lens[j]].clone());
            }
        }
        return Ok(out);
    };
    // `datasets` with probabilities: numpy's default_rng(seed).choice draws a dataset per example;
    // first_exhausted stops once any dataset has been used up, all_exhausted once all have (used-up ones
    // start over). interleave_once (without replacement) skips used-up datasets and stops when all are.
    let mut out = Vec::new();
    let mut next = vec![0usize; n];
    let mut exhausted = vec![false; n];
    let mut used = vec![0usize; n];
    if strategy == MixStrategy::InterleaveOver && p.iter().any(|&x| x <= 0.0) {
        bail!("interleave_over never ends when a dataset has probability 0 (it is never used up); drop that dataset");
    }
    let mut rng = crate::numpy_rng::Pcg64::new(seed);
    let cdf = crate::numpy_rng::Pcg64::cdf(p);
    loop {
        let stop = match strategy {
            MixStrategy::InterleaveUnder => exhausted.iter().any(|&e| e),
            MixStrategy::InterleaveOver => exhausted.iter().all(|&e| e),
            _ => used.iter().zip(&lens).all(|(u, l)| u >= l),
        };
        if stop {
            break;
        }
        let j = rng.choice(&cdf);
        if strategy == MixStrategy::InterleaveOnce && used[j] >= lens[j] {
            if (0..n).all(|k| used[k] >= lens[k] || p[k] <= 0.0) {
                break;
            }
            continue;
        }
        out.push(datasets[j][next[j]].clone());
        used[j] += 1;
        next[j] += 1;
        if next[j] >= lens[j] {
            exhausted[j] = true;
            next[j] = 0;
        }
    }
    Ok(out)
}

/// `train_test_split(test_size, seed=seed)`: numpy's `default_rng(seed).permutation(n)`, the first `n_test`
/// for validation and the rest for training, each in permutation order (a fraction rounds up), so the same
/// examples as LLaMA-Factory land in each split, in the same order.
pub fn split(
    examples: Vec<Example>,
    val_size: ValSize,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>)> {
    let n = examples.len();
    let n_test = match val_size {
        ValSize::None => return Ok((examples, Vec::new())),
        ValSize::Fraction(f) => (f * n as f64).ceil() as usize,
        ValSize::Count(c) => c,
    };
    if n_test == 0 || n_test >= n {
        bail!("val_size gives {n_test} validation examples out of {n}; it must leave at least one on each side");
    }
    let perm = crate::numpy_rng::Pcg64::new(seed).permutation(n);
    let mut slots: Vec<Option<Example>> = examples.into_iter().map(Some).collect();
    let take = |slots: &mut Vec<Option<Example>>, idx: &[usize]| -> Vec<Example> {
        idx.iter().filter_map(|&i| slots[i].take()).collect()
    };
    let eval = take(&mut slots, &perm[..n_test]);
    let train = take(&mut slots, &perm[n_test..]);
    Ok((train, eval))
}

/// Tokenized data for one split: plain examples, or packed rows when packing.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    Examples(Vec<EncodedExample>),
    Packed(Vec<PackedRow>),
    /// Preference data (`Stage::Rm`).
    Pairs(Vec<PairedExample>),
}

impl Encoded {
    pub fn len(&self) -> usize {
        match self {
            Encoded::Examples(e) => e.len(),
            Encoded::Packed(p) => p.len(),
            Encoded::Pairs(p) => p.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What [`load_dataset`] returns: the template used (after the tokenizer was fixed), and the splits.
#[derive(Debug, Clone)]
pub struct DatasetModule {
    pub template: Template,
    pub train: Encoded,
    pub eval: Option<Encoded>,
    /// sft with `predict_with_generate`: the eval split as prompts with their responses as labels (`eval` is
    /// then `None`).
    pub eval_prompts: Option<Vec<PromptExample>>,
    /// Set when this run tokenized the data and saved it to `tokenized_path`: LLaMA-Factory then tells the
    /// user to launch again with `tokenized_path` and exits; the caller decides.
    pub saved_tokenized_path: Option<std::path::PathBuf>,
}

/// Tokenize aligned examples for `stage` (the processors; invalid supervised examples dropped with a warning).
pub fn encode_examples(
    tok: &ModelTokenizer,
    template: &Template,
    examples: &[Example],
    options: &DataOptions,
    stage: Stage,
) -> Result<Encoded> {
    let cutoff_len = options.effective_cutoff_len();
    let packing = options.packing_for(stage);
    match stage {
        Stage::Pt => {
            let texts = examples
                .iter()
                .map(|ex| encode::pretrain_text(tok, options.template.as_deref(), ex))
                .collect::<Result<Vec<_>>>()?;
            Ok(Encoded::Examples(encode::encode_pretrain(
                tok, &texts, cutoff_len, packing,
            )?))
        }
        Stage::Rm => {
            let mut out = Vec::with_capacity(examples.len());
            for (i, ex) in examples.iter().enumerate() {
                if !encode::is_valid_pairwise(ex) {
                    eprintln!(
                        "[ferrotune-data] warning: dropped invalid preference example {i} ({} prompt / {} response messages)",
                        ex.prompt.len(),
                        ex.response.len()
                    );
                    continue;
                }
                out.push(
                    encode::encode_pairwise(tok, template, ex, cutoff_len)
                        .with_context(|| format!("example {i}"))?,
                );
            }
            Ok(Encoded::Pairs(out))
        }
        Stage::Sft => {
            let cfg = SupervisedConfig {
                cutoff_len,
                train_on_prompt: options.train_on_prompt,
                mask_history: options.mask_history,
            };
            let mut out = Vec::with_capacity(examples.len());
            for (i, ex) in examples.iter().enumerate() {
                if !encode::is_valid_supervised(ex) {
                    eprintln!("[ferrotune-data] warning: dropped invalid example {i} ({} prompt / {} response messages)", ex.prompt.len(), ex.response.len());
                    continue;
                }
                out.push(
                    encode::encode_supervised(tok, template, ex, cfg)
                        .with_context(|| format!("example {i}"))?,
                );
            }
            if packing {
                let Some(pad) = tok.pad_token_id() else {
                    bail!("packing pads rows and the tokenizer has no pad token")
                };
                Ok(Encoded::Packed(encode::pack_supervised(
                    out,
                    cutoff_len,
                    pad,
                    options.neat_packing,
                )))
            } else {
                Ok(Encoded::Examples(out))
            }
        }
    }
}

/// Prompts to generate from (the unsupervised processor; examples without an odd number of prompt messages are
/// dropped with a warning, as LLaMA-Factory drops them).
pub fn encode_prompts(tok: &ModelTokenizer, template: &Template, examples: &[Example], cutoff_len: usize) -> Result<Vec<PromptExample>> {
    let mut out = Vec::with_capacity(examples.len());
    for (i, ex) in examples.iter().enumerate() {
        if !encode::is_valid_unsupervised(ex) {
            eprintln!("[ferrotune-data] warning: dropped invalid example {i} ({} prompt messages)", ex.prompt.len());
            continue;
        }
        out.push(encode::encode_unsupervised(tok, template, ex, cutoff_len).with_context(|| format!("example {i}"))?);
    }
    Ok(out)
}

/// The whole data pipeline (`get_dataset`): fix the tokenizer for the template, read `dataset` (and
/// `eval_dataset`), merge, split off `val_size`, tokenize. `tok` is modified as LLaMA-Factory modifies it
/// (eos / pad / stop words), so the model must use the same tokenizer afterwards.
pub fn load_dataset(
    tok: &mut ModelTokenizer,
    options: &DataOptions,
    stage: Stage,
) -> Result<DatasetModule> {
    if let Some(dir) = options
        .tokenized_path
        .as_ref()
        .filter(|d| crate::cache::has_tokenized_data(d))
    {
        // As LLaMA-Factory: data on disk wins and the other data arguments are ignored.
        eprintln!("[ferrotune-data] warning: loading the tokenized dataset from {}; other data arguments are ignored", dir.display());
        if options.predict_with_generate {
            bail!("predict_with_generate does not read tokenized_path data yet: leave out tokenized_path for generation runs");
        }
        let template = get_template_and_fix_tokenizer(tok, options)?;
        let (train, eval) = crate::cache::load(dir)?;
        return Ok(DatasetModule {
            template,
            train,
            eval,
            eval_prompts: None,
            saved_tokenized_path: None,
        });
    }
    options.validate(stage)?;
    let template = get_template_and_fix_tokenizer(tok, options)?;
    let mut rng = Rng::new(options.seed);
    let load_all = |names: &[String], rng: &mut Rng| -> Result<Option<Vec<Example>>> {
        if names.is_empty() {
            return Ok(None);
        }
        let attrs = dataset_list(names, &options.dataset_dir)?;
        let mut sets = Vec::new();
        for attr in &attrs {
            if attr.ranking != (stage == Stage::Rm) {
                bail!(
                    "dataset {:?} is not applicable in the {stage:?} stage: {}",
                    attr.name,
                    if attr.ranking {
                        "it is ranking (preference) data, for rm / dpo"
                    } else {
                        "rm / dpo need ranking data (\"ranking\": true)"
                    }
                );
            }
            sets.push(load_single(attr, options, rng)?);
        }
        Ok(Some(merge(
            sets,
            options.mix_strategy,
            options.interleave_probs.as_deref(),
            options.seed,
        )?))
    };
    let train = load_all(&options.dataset, &mut rng)?;
    let eval = load_all(&options.eval_dataset, &mut rng)?;
    let (train, eval) = match (train, eval) {
        (Some(t), None) if options.val_size != ValSize::None => {
            let (t, e) = split(t, options.val_size, options.seed)?;
            (t, Some(e))
        }
        (t, e) => (t.unwrap_or_default(), e),
    };
    let train = encode_examples(tok, &template, &train, options, stage)?;
    let (eval, eval_prompts) = match eval {
        Some(e) if options.predict_with_generate && stage == Stage::Sft => {
            (None, Some(encode_prompts(tok, &template, &e, options.effective_cutoff_len())?))
        }
        e => (e.map(|e| encode_examples(tok, &template, &e, options, stage)).transpose()?, None),
    };
    let mut saved_tokenized_path = None;
    if let Some(dir) = &options.tokenized_path {
        if eval_prompts.is_some() {
            bail!("predict_with_generate does not save tokenized_path data yet: leave out tokenized_path for generation runs");
        }
        crate::cache::save(dir, &train, eval.as_ref())?;
        saved_tokenized_path = Some(dir.clone());
    }
    Ok(DatasetModule {
        template,
        train,
        eval,
        eval_prompts,
        saved_tokenized_path,
    })
}
