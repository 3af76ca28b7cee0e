//! Generation on top of [`InferenceModel::forward`]: one request ([`Generator`]) or many at once with continuous
//! batching ([`BatchEngine`]), both with the same per-sequence rules ([`Sequence`]):
//!
//! - stop on any of `eos_token_ids` (the token is kept in `tokens`, as transformers returns it, and left out of
//!   the text), on a stop string (the text is cut before it; LLaMA-Factory's template `stop_words`), or after
//!   `max_new_tokens` / when the cache is full (`finish_reason` "length");
//! - text is streamed as it becomes final: bytes of an incomplete UTF-8 character (byte-fallback pieces, a byte-
//!   level BPE token holding half an emoji) are held back until the character completes, and so is any tail
//!   that could still turn into a stop string.

use crate::model::{InferenceModel, KvCache, Segment};
use crate::sampling::{Sampler, SamplingParams};
use ferrotune_models::{bail, ModelTokenizer, Result};
use std::collections::VecDeque;
use std::time::Instant;

/// What to generate (HF `GenerationConfig` names).
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub eos_token_ids: Vec<u32>,
    /// Generation ends where the text first contains one of these (it is cut before the match).
    pub stop_strings: Vec<String>,
    /// Drop special tokens from the text (transformers' `skip_special_tokens=True`, what chat UIs show).
    pub skip_special_tokens: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 512,
            sampling: SamplingParams::default(),
            eos_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            skip_special_tokens: true,
        }
    }
}

/// Why a generation ended (OpenAI's `finish_reason` spelling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An eos token or a stop string.
    Stop,
    /// `max_new_tokens`, or the cache is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Generated ids (an eos that ended it included).
    pub tokens: Vec<u32>,
    /// Their text, cut before a stop string (empty without a tokenizer).
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
}

/// Incremental detokenization that only emits finished characters (the offsets scheme of TGI's decode stream):
/// the text of `ids[prefix..]` minus the text of `ids[prefix..read]` is new, unless it ends in U+FFFD (an
/// incomplete UTF-8 sequence, which the next token may complete).
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl TextStream {
    /// Add one id; returns the text that became final (possibly empty).
    pub fn push(&mut self, tokenizer: &ModelTokenizer, id: u32, skip_special: bool) -> Result<String> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], skip_special)?;
        let now = tokenizer.decode(&self.ids[self.prefix..], skip_special)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.is_char_boundary(before.len()) && now.starts_with(&before) {
            self.prefix = self.read;
            self.read = self.ids.len();
            return Ok(now[before.len()..].to_string());
        }
        Ok(String::new())
    }

    /// Whatever is still held back (an unfinished character shows as U+FFFD, as transformers would print it).
    pub fn flush(&mut self, tokenizer: &ModelTokenizer, skip_special: bool) -> Result<String> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], skip_special)?;
        let now = tokenizer.decode(&self.ids[self.prefix..], skip_special)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(if now.len() > before.len() && now.is_char_boundary(before.len()) { now[before.len()..].to_string() } else { String::new() })
    }
}

/// One request's generation state: its context, sampler, text and stop rules.
#[derive(Clone, Debug)]
pub struct Sequence {
    config: GenerationConfig,
    sampler: Sampler,
    /// Prompt followed by generated ids (what the repetition penalty sees).
    context: Vec<u32>,
    prompt_len: usize,
    stream: TextStream,
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    finished: Option<FinishReason>,
}

impl Sequence {
    pub fn new(prompt: &[u32], config: GenerationConfig) -> Result<Sequence> {
        if prompt.is_empty() {
            bail!("the prompt has no tokens");
        }
        if config.stop_strings.iter().any(|s| s.is_empty()) {
            bail!("stop strings must not be empty");
        }
        let sampler = Sampler::new(config.sampling.clone())?;
        Ok(Sequence {
            config,
            sampler,
            context: prompt.to_vec(),
            prompt_len: prompt.len(),
            stream: TextStream::default(),
            text: String::new(),
            emitted: 0,
            finished: None,
        })
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    pub fn generated(&self) -> &[u32] {
        &self.context[self.prompt_len..]
    }

    /// The id the next forward must feed (the last one generated).
    fn last_token(&self) -> u32 {
        *self.context.last().expect("context starts with the prompt")
    }

    /// Sample from `logits`, record the token, and return the text that became final.
    /// `cache_full` says no further forward is possible after this token.
    fn advance(&mut self, logits: &mut [f32], tokenizer: Option<&ModelTokenizer>, cache_full: bool) -> Result<(u32, String)> {
        if self.config.max_new_tokens == 0 {
            self.finished = Some(FinishReason::Length);
            return Ok((0, String::new()));
        }
        let token = self.sampler.sample(logits, &self.context);
        self.context.push(token);
        let mut delta = String::new();
        if self.config.eos_token_ids.contains(&token) {
            self.finished = Some(FinishReason::Stop);
        } else if let Some(tok) = tokenizer {
            self.text.push_str(&self.stream.push(tok, token, self.config.skip_special_tokens)?);
        }
        if self.finished.is_none() && (self.generated().len() >= self.config.max_new_tokens || cache_full) {
            self.finished = Some(FinishReason::Length);
        }
        if let (Some(_), Some(tok)) = (self.finished, tokenizer) {
            if !self.config.eos_token_ids.contains(&token) {
                self.text.push_str(&self.stream.flush(tok, self.config.skip_special_tokens)?);
            }
        }
        // Stop strings: search the text not yet handed out, plus enough before it to catch a match straddling.
        let longest = self.config.stop_strings.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = self.emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self.config.stop_strings.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i)).min();
        let mut end = self.text.len();
        if let Some(at) = hit {
            self.text.truncate(at.max(self.emitted));
            end = self.text.len();
            self.finished = Some(FinishReason::Stop);
        } else if self.finished.is_none() {
            end -= held_back(&self.text[self.emitted..], &self.config.stop_strings);
        }
        delta.push_str(&self.text[self.emitted..end]);
        self.emitted = end;
        Ok((token, delta))
    }

    fn into_generation(self) -> Generation {
        let finish_reason = self.finished.unwrap_or(FinishReason::Length);
        Generation { tokens: self.context[self.prompt_len..].to_vec(), text: self.text, finish_reason, prompt_tokens: self.prompt_len }
    }
}

/// Length of the longest tail of `text` that is a proper prefix of a stop string (it may still become one).
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for (cut, _) in s.char_indices().skip(1) {
            if cut > best && text.ends_with(&s[..cut]) {
                best = cut;
            }
        }
    }
    best
}

/// Timings of one [`Generator::generate`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    pub prefill_secs: f64,
    pub decode_secs: f64,
    /// Tokens that went through a decode step (generated tokens minus the one the prefill produced).
    pub decode_tokens: usize,
}

/// Single-request generation.
pub struct Generator<'a> {
    pub model: &'a InferenceModel,
    pub tokenizer: Option<&'a ModelTokenizer>,
}

impl<'a> Generator<'a> {
    pub fn new(model: &'a InferenceModel, tokenizer: Option<&'a ModelTokenizer>) -> Generator<'a> {
        Generator { model, tokenizer }
    }

    /// Generate after `prompt`, starting from an empty `cache` (cleared first), calling `on_text` with each
    /// piece of final text as it appears.
    pub fn generate(
        &self,
        cache: &mut KvCache,
        prompt: &[u32],
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<(Generation, Timings)> {
        let mut seq = Sequence::new(prompt, config.clone())?;
        if prompt.len() > cache.capacity() {
            bail!("the prompt has {} tokens but the cache holds {}", prompt.len(), cache.capacity());
        }
        cache.clear();
        let mut timings = Timings::default();
        let start = Instant::now();
        let mut logits = self.model.forward(&mut [Segment { cache, tokens: prompt }])?;
        timings.prefill_secs = start.elapsed().as_secs_f64();
        let start = Instant::now();
        loop {
            let full = cache.len() >= cache.capacity();
            let (_, text) = seq.advance(&mut logits, self.tokenizer, full)?;
            if !text.is_empty() {
                on_text(&text);
            }
            if seq.finished().is_some() {
                break;
            }
            let token = [seq.last_token()];
            logits = self.model.forward(&mut [Segment { cache, tokens: &token }])?;
            timings.decode_tokens += 1;
        }
        timings.decode_secs = start.elapsed().as_secs_f64();
        Ok((seq.into_generation(), timings))
    }
}

/// A request's handle in a [`BatchEngine`].
pub type RequestId = u64;

/// What a [`BatchEngine::step`] produced for one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A token was generated; `text` is the text that became final with it (often empty mid-character).
    Token { id: RequestId, token: u32, text: String },
    /// The request ended (after its last `Token` event) and left its slot.
    Finished { id: RequestId, generation: Generation },
}

struct Active {
    id: RequestId,
    seq: Sequence,
    /// Tokens to feed at the next step: the whole prompt when just admitted, then the last generated token.
    pending: Vec<u32>,
}

/// Continuous batching: up to `max_batch` requests decode together, one forward per step for all of them
/// (their rows share every weight pass); queued requests join as slots free up, their prefill riding in the
/// same forward as the others' decode rows. Each slot owns a preallocated [`KvCache`] of `max_len` positions,
/// reused by the next request.
pub struct BatchEngine<'a> {
    model: &'a InferenceModel,
    tokenizer: Option<&'a ModelTokenizer>,
    caches: Vec<KvCache>,
    slots: Vec<Option<Active>>,
    queue: VecDeque<(RequestId, Sequence, Vec<u32>)>,
    next_id: RequestId,
    max_len: usize,
}

impl<'a> BatchEngine<'a> {
    pub fn new(model: &'a InferenceModel, tokenizer: Option<&'a ModelTokenizer>, max_batch: usize, max_len: usize) -> Result<Self> {
        if max_batch == 0 || max_len == 0 {
            bail!("max_batch and max_len must be at least 1");
        }
        let caches = (0..max_batch).map(|_| model.new_cache(max_len)).collect::<Result<Vec<_>>>()?;
        Ok(BatchEngine {
            model,
            tokenizer,
            caches,
            slots: (0..max_batch).map(|_| None).collect(),
            queue: VecDeque::new(),
            next_id: 0,
            max_len,
        })
    }

    /// Queue a request; it starts at the next step with a free slot.
    pub fn submit(&mut self, prompt: &[u32], config: GenerationConfig) -> Result<RequestId> {
        if prompt.len() > self.max_len {
            bail!("the prompt has {} tokens; this engine's sequences hold at most {}", prompt.len(), self.max_len);
        }
        let seq = Sequence::new(prompt, config)?;
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back((id, seq, prompt.to_vec()));
        Ok(id)
    }

    /// Requests running or waiting.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn is_idle(&self) -> bool {
        self.pending() == 0
    }

    /// Drop a request (running or queued); false if it is unknown or already finished.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if let Some(i) = self.queue.iter().position(|(q, _, _)| *q == id) {
            self.queue.remove(i);
            return true;
        }
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|a| a.id == id) {
                *slot = None;
                return true;
            }
        }
        false
    }

    /// Admit queued requests into free slots, run one forward for every active request, sample, and report.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        for (slot, cache) in self.slots.iter_mut().zip(&mut self.caches) {
            if slot.is_none() {
                if let Some((id, seq, prompt)) = self.queue.pop_front() {
                    cache.clear();
                    *slot = Some(Active { id, seq, pending: prompt });
                }
            }
        }
        let mut order = Vec::new();
        let mut segments = Vec::new();
        for (i, (slot, cache)) in self.slots.iter().zip(self.caches.iter_mut()).enumerate() {
            if let Some(a) = slot {
                order.push(i);
                segments.push(Segment { cache, tokens: &a.pending });
            }
        }
        if segments.is_empty() {
            return Ok(Vec::new());
        }
        let mut logits = self.model.forward(&mut segments)?;
        drop(segments);
        let vocab = self.model.vocab_size();
        let mut events = Vec::new();
        for (row, &i) in order.iter().enumerate() {
            let full = self.caches[i].len() >= self.max_len;
            let a = self.slots[i].as_mut().expect("active slot");
            let (token, text) = a.seq.advance(&mut logits[row * vocab..(row + 1) * vocab], self.tokenizer, full)?;
            if a.seq.generated().last() == Some(&token) {
                events.push(Event::Token { id: a.id, token, text });
            }
            a.pending.clear();
            a.pending.push(token);
            if a.seq.finished().is_some() {
                let done = self.slots[i].take().expect("active slot");
                events.push(Event::Finished { id: done.id, generation: done.seq.into_generation() });
            }
        }
        Ok(events)
    }
}
