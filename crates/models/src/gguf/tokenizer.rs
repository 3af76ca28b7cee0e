//! A `tokenizers::Tokenizer` rebuilt from `tokenizer.ggml.*` metadata.
//!
//! ```text
//! tokenizer.ggml.model        "gpt2"  byte-level BPE (vocab = tokens, merges = "a b" strings)
//!                             "llama" SentencePiece BPE: ▁ for spaces, <0xXX> byte fallback, merges from scores
//! tokenizer.ggml.pre          gpt2 only: the pre-tokenizer (llama.cpp's LLAMA_VOCAB_PRE_TYPE_*), see PRE_TOKENIZERS
//! tokenizer.ggml.tokens       string[n]        token_type  i32[n]: 1 normal, 2 unknown, 3 control, 4 user-defined,
//! tokenizer.ggml.scores       f32[n]                                5 unused, 6 byte
//! tokenizer.ggml.{bos,eos,unknown,padding}_token_id, add_bos_token, add_eos_token, add_space_prefix
//! tokenizer.chat_template     Jinja string
//! ```
//!
//! The pipeline is written as a `tokenizer.json` document (the `tokenizers` serialization format) and parsed by
//! the `tokenizers` crate, so what ferrotune builds is exactly what an HF `tokenizer.json` with the same parts
//! would do. Control tokens (type 3) become special added tokens and user-defined ones (type 4) plain added
//! tokens, so both are matched whole in raw text, as llama.cpp does.

use super::config::Keys;
use super::reader::{GgufMetadata, GgufValue};
use crate::tokenizer::ModelTokenizer;
use crate::{bail, Context, Error, Result};
use serde_json::{json, Map, Value};

/// llama.cpp `tokenizer.ggml.pre` names and the HF pre-tokenizer each corresponds to.
///
/// The regexes are the ones in the HF `tokenizer.json` of each family (llama.cpp's
/// `llama-vocab.cpp` uses the same expressions, written without `(?i:...)`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `pre` names ferrotune understands, for error messages.
const PRE_TOKENIZERS: &str =
    "default, gpt2, gpt-2, smollm, starcoder, refact, llama-bpe, llama3, dbrx, smaug-bpe, qwen2, \
                              deepseek-r1-qwen";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// `(normalizer, pre_tokenizer, ignore_merges)` for a byte-level BPE vocabulary.
fn gpt2_pipeline(pre: &str) -> Result<(Value, Value, bool)> {
    Ok(match pre {
        // GPT-2's own regex inside ByteLevel.
        "default" | "gpt2" | "gpt-2" => (Value::Null, byte_level(true), false),
        // Every digit on its own, then GPT-2's regex (SmolLM/StarCoder tokenizer.json: Digits + ByteLevel).
        "smollm" | "starcoder" | "refact" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        // Llama 3: whole words found in the vocabulary are not re-merged (tokenizer.json `ignore_merges`).
        "llama-bpe" | "llama3" | "dbrx" | "smaug-bpe" => {
            (Value::Null, json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}), true)
        }
        "qwen2" | "deepseek-r1-qwen" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
            false,
        ),
        other => bail!("tokenizer.ggml.pre = {other:?} is not supported; ferrotune knows {PRE_TOKENIZERS}"),
    })
}

/// What the metadata says about the vocabulary, checked.
struct Vocab<'a> {
    tokens: Vec<&'a str>,
    scores: Option<Vec<f32>>,
    types: Option<Vec<i64>>,
}

fn string_array<'a>(meta: &'a GgufMetadata, key: &str) -> Result<Option<Vec<&'a str>>> {
    match meta.get(key) {
        None => Ok(None),
        Some(GgufValue::Array(_, items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().ok_or_else(|| Error::msg(format!("metadata key {key:?}: element {i} is not a string")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(v) => bail!("metadata key {key:?} must be an array of strings, got {}", v.type_name()),
    }
}

fn read_vocab(meta: &GgufMetadata) -> Result<Vocab<'_>> {
    let tokens = string_array(meta, "tokenizer.ggml.tokens")?.ok_or_else(|| {
        Error::msg("metadata key \"tokenizer.ggml.tokens\" is missing: the file carries no tokenizer")
    })?;
    let n = tokens.len();
    if n == 0 || n > u32::MAX as usize {
        bail!("metadata key \"tokenizer.ggml.tokens\" holds {n} tokens");
    }
    let numbers = |key: &str, f: fn(&GgufValue) -> Option<f64>| -> Result<Option<Vec<f64>>> {
        match meta.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(_, items)) if items.len() == n => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    f(v).ok_or_else(|| Error::msg(format!("metadata key {key:?}: element {i} is {}", v.type_name())))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(GgufValue::Array(_, items)) => {
                bail!("metadata key {key:?} has {} entries but tokenizer.ggml.tokens has {n}", items.len())
            }
            Some(v) => bail!("metadata key {key:?} must be an array, got {}", v.type_name()),
        }
    };
    let scores =
        numbers("tokenizer.ggml.scores", GgufValue::as_f64)?.map(|v| v.into_iter().map(|x| x as f32).collect());
    let types = numbers("tokenizer.ggml.token_type", |v| v.as_i64().map(|x| x as f64))?
        .map(|v| v.into_iter().map(|x| x as i64).collect());
    Ok(Vocab { tokens, scores, types })
}

/// Token string -> first id (a vocabulary may list a string twice; later ids stay reachable by id only).
fn vocab_json(tokens: &[&str]) -> Map<String, Value> {
    let mut vocab = Map::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if !vocab.contains_key(*t) {
            vocab.insert((*t).to_string(), json!(id));
        }
    }
    vocab
}

/// `tokenizer.ggml.merges` ("left right" strings) as tokenizer.json pairs.
fn merges_from_metadata(meta: &GgufMetadata) -> Result<Option<Vec<Value>>> {
    let Some(merges) = string_array(meta, "tokenizer.ggml.merges")? else { return Ok(None) };
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok(json!([a, b])),
            _ => bail!(
                "metadata key \"tokenizer.ggml.merges\": entry {i} {m:?} is not two tokens separated by one space"
            ),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// SentencePiece vocabularies carry scores, not merges. Rebuild merges the way transformers'
/// `GGUFTokenizerSkeleton` does: every split of a token into two vocabulary pieces is a merge ranked by the
/// merged token's score (higher first); ties keep vocabulary order, and splits of one token are ordered by the
/// pieces' scores (higher first).
fn merges_from_scores(tokens: &[&str], scores: &[f32]) -> Vec<Value> {
    let mut score_of = std::collections::HashMap::with_capacity(tokens.len());
    for (t, s) in tokens.iter().zip(scores) {
        // Python's dict keeps the last score of a repeated key.
        score_of.insert(*t, *s);
    }
    let by_score_desc = |a: f32, b: f32| b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal);
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    let mut seen = std::collections::HashSet::with_capacity(tokens.len());
    for token in tokens {
        if !seen.insert(*token) {
            continue;
        }
        let piece_score = score_of[token];
        let mut local: Vec<(&str, &str, f32)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = token.split_at(at);
                (score_of.contains_key(l) && score_of.contains_key(r)).then_some((l, r, piece_score))
            })
            .collect();
        local.sort_by(|a, b| {
            by_score_desc(score_of[a.0], score_of[b.0]).then(by_score_desc(score_of[a.1], score_of[b.1]))
        });
        merges.extend(local);
    }
    merges.sort_by(|a, b| by_score_desc(a.2, b.2));
    merges.into_iter().map(|(l, r, _)| json!([l, r])).collect()
}

fn token_at<'a>(tokens: &[&'a str], id: Option<u32>, key: &str) -> Result<Option<&'a str>> {
    match id {
        None => Ok(None),
        Some(id) => tokens.get(id as usize).copied().map(Some).ok_or_else(|| {
            Error::msg(format!("metadata key {key:?} = {id} is outside the {}-token vocabulary", tokens.len()))
        }),
    }
}

/// Rebuild the tokenizer a GGUF file describes.
pub fn model_tokenizer(meta: &GgufMetadata) -> Result<ModelTokenizer> {
    build(meta).context("cannot rebuild the tokenizer from GGUF metadata")
}

fn build(meta: &GgufMetadata) -> Result<ModelTokenizer> {
    let k = Keys { meta, arch: meta.architecture().unwrap_or("llama") };
    let model = match meta.get("tokenizer.ggml.model") {
        Some(v) => v.as_str().ok_or_else(|| Error::msg("metadata key \"tokenizer.ggml.model\" must be a string"))?,
        None => bail!("metadata key \"tokenizer.ggml.model\" is missing: the file carries no tokenizer"),
    };
    let vocab = read_vocab(meta)?;
    let tokens = &vocab.tokens;
    let bos_id = k.opt_token("tokenizer.ggml.bos_token_id")?;
    let eos_id = k.opt_token("tokenizer.ggml.eos_token_id")?;
    let pad_id = k.opt_token("tokenizer.ggml.padding_token_id")?;
    let unk_id = k.opt_token("tokenizer.ggml.unknown_token_id")?;
    let bool_key = |key: &str| -> Result<Option<bool>> {
        match meta.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Error::msg(format!("metadata key {key:?} must be a bool, got {}", v.type_name()))),
        }
    };
    let add_bos = bool_key("tokenizer.ggml.add_bos_token")?;
    let add_eos = bool_key("tokenizer.ggml.add_eos_token")?;

    let mut doc = Map::new();
    let (normalizer, pre_tokenizer, decoder, model_json, default_add_bos) = match model {
        "gpt2" => {
            let pre = match meta.get("tokenizer.ggml.pre") {
                None => "default",
                Some(v) => v.as_str().ok_or_else(|| Error::msg("metadata key \"tokenizer.ggml.pre\" must be a string"))?,
            };
            let (normalizer, pre_tokenizer, ignore_merges) = gpt2_pipeline(pre)?;
            let merges = merges_from_metadata(meta)?
                .ok_or_else(|| Error::msg("metadata key \"tokenizer.ggml.merges\" is missing; a gpt2 (BPE) vocabulary needs it"))?;
            let bpe = json!({
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                "vocab": vocab_json(tokens), "merges": merges,
            });
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (normalizer, pre_tokenizer, decoder, bpe, false)
        }
        "llama" => {
            let add_prefix_space = bool_key("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            let merges = match merges_from_metadata(meta)? {
                Some(m) => m,
                None => {
                    let scores = vocab.scores.as_ref().ok_or_else(|| {
                        Error::msg("a llama (SentencePiece) vocabulary needs tokenizer.ggml.scores or tokenizer.ggml.merges")
                    })?;
                    merges_from_scores(tokens, scores)
                }
            };
            let unk = token_at(tokens, Some(unk_id.unwrap_or(0)), "tokenizer.ggml.unknown_token_id")?;
            // SentencePiece as transformers' LlamaConverter writes it (legacy mode): spaces become ▁ and a ▁ is
            // prepended; bytes missing from the vocabulary fall back to <0xXX> tokens.
            let mut norm = Vec::new();
            if add_prefix_space {
                norm.push(json!({"type": "Prepend", "prepend": "▁"}));
            }
            norm.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
            let mut dec = vec![
                json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if add_prefix_space {
                dec.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            let bpe = json!({
                "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab_json(tokens), "merges": merges,
            });
            (json!({"type": "Sequence", "normalizers": norm}), Value::Null, json!({"type": "Sequence", "decoders": dec}), bpe, true)
        }
        other => bail!("tokenizer.ggml.model = {other:?} is not supported; ferrotune reads \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece)"),
    };

    let mut added = Vec::new();
    if let Some(types) = &vocab.types {
        for (id, (t, ty)) in tokens.iter().zip(types).enumerate() {
            // 3 control -> special; 4 user-defined -> matched whole but not special (kept when decoding).
            if *ty == 3 || *ty == 4 {
                added.push(json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": *ty == 3}));
            }
        }
    } else {
        for id in [unk_id, bos_id, eos_id].into_iter().flatten() {
            if let Some(t) = tokens.get(id as usize) {
                added.push(json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": true}));
            }
        }
    }

    let bos = token_at(tokens, bos_id, "tokenizer.ggml.bos_token_id")?;
    let eos = token_at(tokens, eos_id, "tokenizer.ggml.eos_token_id")?;
    let pad = token_at(tokens, pad_id, "tokenizer.ggml.padding_token_id")?;
    let unk = token_at(tokens, unk_id, "tokenizer.ggml.unknown_token_id")?;
    // llama.cpp's defaults when the keys are absent: SentencePiece adds BOS, BPE does not.
    let post_processor = template(
        if add_bos.unwrap_or(default_add_bos) { bos.zip(bos_id) } else { None },
        if add_eos.unwrap_or(false) { eos.zip(eos_id) } else { None },
    );

    doc.insert("version".into(), json!("1.0"));
    doc.insert("truncation".into(), Value::Null);
    doc.insert("padding".into(), Value::Null);
    doc.insert("added_tokens".into(), Value::Array(added));
    doc.insert("normalizer".into(), normalizer);
    doc.insert("pre_tokenizer".into(), pre_tokenizer);
    doc.insert("post_processor".into(), post_processor);
    doc.insert("decoder".into(), decoder);
    doc.insert("model".into(), model_json);
    let text = serde_json::to_vec(&Value::Object(doc)).context("cannot serialize the tokenizer")?;
    let tokenizer =
        tokenizers::Tokenizer::from_bytes(&text).map_err(|e| Error::msg(format!("tokenizers rejected it: {e}")))?;

    let chat_template = match meta.get("tokenizer.chat_template") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| Error::msg("metadata key \"tokenizer.chat_template\" must be a string"))?
                .to_string(),
        ),
    };
    Ok(ModelTokenizer {
        tokenizer,
        bos_token: bos.map(str::to_string),
        eos_token: eos.map(str::to_string),
        pad_token: pad.map(str::to_string),
        unk_token: unk.map(str::to_string),
        chat_template,
        add_bos_token: add_bos,
        add_eos_token: add_eos,
        model_max_length: k.opt_usize(&format!("{}.context_length", k.arch))?,
    })
}

/// A TemplateProcessing post-processor adding BOS before and/or EOS after each sequence (null when neither).
fn template(bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Value {
    if bos.is_none() && eos.is_none() {
        return Value::Null;
    }
    let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let wrap = |inner: Value, type_id: u32| {
        let mut v = Vec::new();
        if let Some((t, _)) = bos {
            let mut s = special(t);
            s["SpecialToken"]["type_id"] = json!(type_id);
            v.push(s);
        }
        v.push(inner);
        if let Some((t, _)) = eos {
            let mut s = special(t);
            s["SpecialToken"]["type_id"] = json!(type_id);
            v.push(s);
        }
        v
    };
    let single = wrap(seq("A", 0), 0);
    let mut pair = single.clone();
    pair.extend(wrap(seq("B", 1), 1));
    let mut specials = Map::new();
    for (t, id) in [bos, eos].into_iter().flatten() {
        specials.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}
