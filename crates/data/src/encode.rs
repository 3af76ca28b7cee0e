//! Tokenizing aligned examples as LLaMA-Factory's processors do (`data/processor/supervised.py`,
//! `pretrain.py`, `processor_utils.py`): truncation by `infer_seqlen`, `IGNORE_INDEX` masking,
//! `train_on_prompt`, `mask_history`, `efficient_eos`, pt blocks, and greedy-knapsack packing.

use crate::convert::Example;
use crate::template::Template;
use crate::{bail, Result};
use ferrotune_models::ModelTokenizer;

/// Label value the loss skips (PyTorch / HF convention).
pub const IGNORE_INDEX: i64 = -100;

/// One tokenized example; `labels` are aligned with `input_ids` (HF shifts them inside the loss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedExample {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// A packed row (`packing` / `neat_packing`): several examples back to back, then pad tokens up to
/// `cutoff_len + 1` as LLaMA-Factory pads them. `sequence_lengths` are the examples' lengths in order (the
/// padding is not among them: `pad_len` counts it); `position_ids` restart at 0 for each example and are 0
/// over the padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRow {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub position_ids: Vec<u32>,
    pub sequence_lengths: Vec<usize>,
    pub pad_len: usize,
    /// `neat_packing`: sequences must not attend to each other.
    pub neat: bool,
}

impl PackedRow {
    /// LLaMA-Factory's `attention_mask` for the row: `neat_packing` numbers the sequences from 1 with 0 over
    /// the padding; plain packing is all ones.
    pub fn attention_mask(&self) -> Vec<i64> {
        let mut mask = Vec::with_capacity(self.input_ids.len());
        for (i, &len) in self.sequence_lengths.iter().enumerate() {
            mask.extend(std::iter::repeat_n(
                if self.neat { i as i64 + 1 } else { 1 },
                len,
            ));
        }
        mask.extend(std::iter::repeat_n(
            if self.neat { 0 } else { 1 },
            self.pad_len,
        ));
        mask
    }
}

/// `infer_seqlen(source_len, target_len, cutoff_len)`: how much of each side survives truncation.
pub fn infer_seqlen(source_len: usize, target_len: usize, cutoff_len: usize) -> (usize, usize) {
    let max_target_len = if target_len * 2 < cutoff_len {
        cutoff_len
    } else if source_len * 2 < cutoff_len {
        cutoff_len - source_len
    } else {
        // int(cutoff_len * (target_len / (source_len + target_len))), in f64 as Python computes it.
        (cutoff_len as f64 * (target_len as f64 / (source_len + target_len) as f64)) as usize
    };
    let new_target_len = max_target_len.min(target_len);
    let max_source_len = cutoff_len.saturating_sub(new_target_len);
    (max_source_len.min(source_len), new_target_len)
}

/// The per-example switches of the supervised processor.
#[derive(Debug, Clone, Copy)]
pub struct SupervisedConfig {
    pub cutoff_len: usize,
    pub train_on_prompt: bool,
    pub mask_history: bool,
}

/// Whether the supervised processor keeps `ex` (`len(_prompt) % 2 == 1 and len(_response) == 1`).
pub fn is_valid_supervised(ex: &Example) -> bool {
    ex.prompt.len() % 2 == 1 && ex.response.len() == 1
}

/// `SupervisedDatasetProcessor._encode_data_example`. The example must be valid ([`is_valid_supervised`]).
pub fn encode_supervised(
    tok: &ModelTokenizer,
    template: &Template,
    ex: &Example,
    cfg: SupervisedConfig,
) -> Result<EncodedExample> {
    if !is_valid_supervised(ex) {
        bail!(
            "invalid supervised example: {} prompt and {} response messages",
            ex.prompt.len(),
            ex.response.len()
        );
    }
    let messages: Vec<_> = ex
        .prompt
        .iter()
        .chain(ex.response.iter())
        .cloned()
        .collect();
    let discarding_history_cot = cfg.mask_history && !template.preserve_thinking;
    let mut pairs = template.encode_multiturn(
        tok,
        &messages,
        &ex.system,
        &ex.tools,
        discarding_history_cot,
    )?;
    let eos = if template.efficient_eos {
        match tok.eos_token_id() {
            Some(id) => Some(id),
            None => bail!(
                "template {} needs an eos token and the tokenizer has none",
                template.name
            ),
        }
    } else {
        None
    };
    let mut total_length = usize::from(template.efficient_eos);
    if cfg.mask_history {
        pairs.reverse();
    }
    // With mask_history the turns are produced last-first and prepended; collect them and reverse at the end.
    let mut chunks: Vec<(Vec<u32>, Vec<i64>)> = Vec::new();
    for (turn_idx, (source, target)) in pairs.into_iter().enumerate() {
        if total_length >= cfg.cutoff_len {
            break;
        }
        let (source_len, target_len) =
            infer_seqlen(source.len(), target.len(), cfg.cutoff_len - total_length);
        let source = &source[..source_len];
        let target = &target[..target_len];
        total_length += source_len + target_len;
        let source_label: Vec<i64> = if cfg.train_on_prompt {
            source.iter().map(|&x| i64::from(x)).collect()
        } else if let (Some(eos), true) = (eos, turn_idx != 0) {
            let mut l = vec![IGNORE_INDEX; source_len];
            if let Some(first) = l.first_mut() {
                *first = i64::from(eos);
            } else {
                l.push(i64::from(eos)); // Python's [eos] + [IGNORE] * -1 is [eos] even for an empty source
            }
            l
        } else {
            vec![IGNORE_INDEX; source_len]
        };
        let target_label: Vec<i64> = if cfg.mask_history && turn_idx != 0 {
            vec![IGNORE_INDEX; target_len]
        } else {
            target.iter().map(|&x| i64::from(x)).collect()
        };
        let ids: Vec<u32> = source.iter().chain(target.iter()).copied().collect();
        chunks.push((ids, [source_label, target_label].concat()));
    }
    if cfg.mask_history {
        chunks.reverse();
    }
    let mut input_ids = Vec::new();
    let mut labels = Vec::new();
    for (ids, l) in chunks {
        input_ids.extend(ids);
        labels.extend(l);
    }
    if let Some(eos) = eos {
        input_ids.push(eos);
        labels.push(i64::from(eos));
    }
    Ok(EncodedExample { input_ids, labels })
}

/// A prompt to generate from (`predict_with_generate`): the prompt's ids, and the response's ids as the label
/// the generation is scored against (not aligned with `input_ids`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptExample {
    pub input_ids: Vec<u32>,
    pub labels: Vec<u32>,
}

/// Whether the unsupervised processor keeps `ex` (`len(_prompt) % 2 == 1`; any number of responses).
pub fn is_valid_unsupervised(ex: &Example) -> bool {
    ex.prompt.len() % 2 == 1
}

/// `UnsupervisedDatasetProcessor._encode_data_example`: the prompt with an empty assistant turn (or the one
/// response) through `encode_oneturn`; the response ids (+ eos for `efficient_eos` templates) are the label;
/// both truncated by `infer_seqlen`. The example must be valid ([`is_valid_unsupervised`]).
pub fn encode_unsupervised(
    tok: &ModelTokenizer,
    template: &Template,
    ex: &Example,
    cutoff_len: usize,
) -> Result<PromptExample> {
    if !is_valid_unsupervised(ex) {
        bail!("invalid example for generation: {} prompt messages (an odd number is needed)", ex.prompt.len());
    }
    let mut messages = ex.prompt.clone();
    match ex.response.as_slice() {
        [one] => messages.push(one.clone()),
        _ => messages.push(crate::convert::Message::new(crate::convert::Role::Assistant, "")),
    }
    let (input_ids, mut labels) = template.encode_oneturn(tok, &messages, &ex.system, &ex.tools)?;
    if template.efficient_eos {
        let Some(eos) = tok.eos_token_id() else {
            bail!("template {} needs an eos token and the tokenizer has none", template.name)
        };
        labels.push(eos);
    }
    let (source_len, target_len) = infer_seqlen(input_ids.len(), labels.len(), cutoff_len);
    labels.truncate(target_len);
    let mut input_ids = input_ids;
    input_ids.truncate(source_len);
    Ok(PromptExample { input_ids, labels })
}

/// A preference pair (`rm` / `dpo` data): the same prompt with the chosen and with the rejected response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedExample {
    pub chosen: EncodedExample,
    pub rejected: EncodedExample,
}

/// Whether the pairwise processor keeps `ex` (`len(_prompt) % 2 == 1 and len(_response) >= 2`).
pub fn is_valid_pairwise(ex: &Example) -> bool {
    ex.prompt.len() % 2 == 1 && ex.response.len() >= 2
}

/// `PairwiseDatasetProcessor._encode_data_example`: the prompt and both responses truncated together by
/// `infer_seqlen(prompt, max(chosen, rejected))`, the prompt masked.
pub fn encode_pairwise(
    tok: &ModelTokenizer,
    template: &Template,
    ex: &Example,
    cutoff_len: usize,
) -> Result<PairedExample> {
    if !is_valid_pairwise(ex) {
        bail!(
            "invalid preference example: {} prompt and {} response messages",
            ex.prompt.len(),
            ex.response.len()
        );
    }
    let with = |r: &crate::convert::Message| -> Vec<crate::convert::Message> {
        ex.prompt
            .iter()
            .cloned()
            .chain(std::iter::once(r.clone()))
            .collect()
    };
    let (prompt, mut chosen) =
        template.encode_oneturn(tok, &with(&ex.response[0]), &ex.system, &ex.tools)?;
    let (_, mut rejected) =
        template.encode_oneturn(tok, &with(&ex.response[1]), &ex.system, &ex.tools)?;
    if template.efficient_eos {
        let Some(eos) = tok.eos_token_id() else {
            bail!(
                "template {} needs an eos token and the tokenizer has none",
                template.name
            )
        };
        chosen.push(eos);
        rejected.push(eos);
    }
    let (source_len, target_len) =
        infer_seqlen(prompt.len(), chosen.len().max(rejected.len()), cutoff_len);
    let prompt = &prompt[..source_len];
    let side = |resp: &[u32]| {
        let resp = &resp[..target_len.min(resp.len())];
        EncodedExample {
            input_ids: prompt.iter().chain(resp).copied().collect(),
            labels: std::iter::repeat_n(IGNORE_INDEX, source_len)
                .chain(resp.iter().map(|&x| i64::from(x)))
                .collect(),
        }
    };
    Ok(PairedExample {
        chosen: side(&chosen),
        rejected: side(&rejected),
    })
}

/// `greedy_knapsack(lengths, capacity)`: groups of lengths, each summing to at most `capacity`, largest
/// fitting first (lengths sorted, then binary search), in LLaMA-Factory's order.
pub fn greedy_knapsack(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut numbers = lengths.to_vec();
    numbers.sort_unstable();
    let mut knapsacks = Vec::new();
    while !numbers.is_empty() {
        let mut current = Vec::new();
        let mut remaining = capacity;
        loop {
            // bisect_right(numbers, remaining) - 1
            let index = numbers.partition_point(|&x| x <= remaining);
            if index == 0 {
                break;
            }
            remaining -= numbers[index - 1];
            current.push(numbers.remove(index - 1));
        }
        if current.is_empty() {
            // Only lengths over capacity are left; LLaMA-Factory drops those before packing.
            break;
        }
        knapsacks.push(current);
    }
    knapsacks
}

/// `PackedSupervisedDatasetProcessor`: examples longer than `cutoff_len` are dropped (with a warning), the rest
/// packed by [`greedy_knapsack`] into rows padded with `pad_id` to `cutoff_len + 1` tokens.
pub fn pack_supervised(
    examples: Vec<EncodedExample>,
    cutoff_len: usize,
    pad_id: u32,
    neat: bool,
) -> Vec<PackedRow> {
    let mut kept: Vec<EncodedExample> = Vec::new();
    let mut by_length: std::collections::HashMap<usize, Vec<usize>> =
        std::collections::HashMap::new();
    let mut lengths = Vec::new();
    for ex in examples {
        let len = ex.input_ids.len();
        if len > cutoff_len {
            eprintln!("[ferrotune-data] warning: dropped lengthy example with length {len} > {cutoff_len}");
            continue;
        }
        lengths.push(len);
        by_length.entry(len).or_default().push(kept.len());
        kept.push(ex);
    }
    let mut rows = Vec::new();
    for knapsack in greedy_knapsack(&lengths, cutoff_len) {
        let mut row = PackedRow {
            input_ids: Vec::new(),
            labels: Vec::new(),
            position_ids: Vec::new(),
            sequence_lengths: Vec::new(),
            pad_len: 0,
            neat,
        };
        for len in knapsack {
            // length2indexes[length].pop(): the last example of that length first.
            let Some(index) = by_length.get_mut(&len).and_then(Vec::pop) else {
                continue;
            };
            let ex = &kept[index];
            row.input_ids.extend_from_slice(&ex.input_ids);
            row.labels.extend_from_slice(&ex.labels);
            row.position_ids.extend(0..len as u32);
            row.sequence_lengths.push(len);
        }
        if row.input_ids.len() < cutoff_len + 1 {
            let pad = cutoff_len + 1 - row.input_ids.len();
            row.input_ids.extend(std::iter::repeat_n(pad_id, pad));
            row.labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
            row.position_ids.extend(std::iter::repeat_n(0, pad));
            row.pad_len = pad;
        }
        rows.push(row);
    }
    rows
}

/// The text a pt example contributes: its first prompt message plus the eos text (`<|end_of_text|>` for the
/// llama3 template, as upstream hard-codes).
pub fn pretrain_text(
    tok: &ModelTokenizer,
    template_name: Option<&str>,
    ex: &Example,
) -> Result<String> {
    let eos = if template_name == Some("llama3") {
        "<|end_of_text|>".to_string()
    } else {
        match &tok.eos_token {
            Some(e) => e.clone(),
            None => bail!("pretraining appends the eos token and the tokenizer has none"),
        }
    };
    let Some(first) = ex.prompt.first() else {
        bail!("pretraining example has no text")
    };
    Ok(format!("{}{eos}", first.content))
}

/// `PretrainDatasetProcessor`: with packing, all texts concatenated and cut into `cutoff_len` blocks (the
/// remainder dropped; the first token of each block becomes bos when the tokenizer adds bos); without,
/// each text truncated to `cutoff_len` (bos text prepended when the tokenizer adds bos). Labels are the
/// inputs, as the language-modelling collator makes them.
pub fn encode_pretrain(
    tok: &ModelTokenizer,
    texts: &[String],
    cutoff_len: usize,
    packing: bool,
) -> Result<Vec<EncodedExample>> {
    let add_bos = tok.add_bos_token == Some(true);
    let to_example = |ids: Vec<u32>| EncodedExample {
        labels: ids.iter().map(|&x| i64::from(x)).collect(),
        input_ids: ids,
    };
    if !packing {
        let mut out = Vec::with_capacity(texts.len());
        for text in texts {
            let text = match (add_bos, &tok.bos_token) {
                (true, Some(b)) => format!("{b}{text}"),
                _ => text.clone(),
            };
            let mut ids = tok.encode(&text, false)?;
            ids.truncate(cutoff_len);
            out.push(to_example(ids));
        }
        return Ok(out);
    }
    let mut all = Vec::new();
    for text in texts {
        all.extend(tok.encode(text, false)?);
    }
    let bos = if add_bos { tok.bos_token_id() } else { None };
    let blocks = all.len() / cutoff_len;
    Ok((0..blocks)
        .map(|b| {
            let mut ids = all[b * cutoff_len..(b + 1) * cutoff_len].to_vec();
            if let Some(bos) = bos {
                ids[0] = bos;
            }
            to_example(ids)
        })
        .collect())
}
