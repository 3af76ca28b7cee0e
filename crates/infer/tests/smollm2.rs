//! The inference engine on the real SmolLM2-135M-Instruct GGUF against transformers
//! (tests/golden/infer_smollm2_greedy.json, from scripts/golden/generate.py), and against itself: KV-cached
//! decode vs a full forward, batched vs single-sequence decode, seeded sampling, top_k = 1 vs greedy, the
//! quantized formats vs f32, stop strings and UTF-8 streaming.
//!
//! The GGUF is found via FERROTUNE_SMOLLM2_GGUF or <repo>/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf; when it
//! is absent the tests print how to fetch it and pass, unless FERROTUNE_REQUIRE_MODELS=1.

use ferrotune_infer::{
    argmax, BatchEngine, Event, FinishReason, GenerationConfig, Generator, InferenceModel, SamplingParams, Segment,
    TextStream, WeightFormat,
};
use ferrotune_models::ModelTokenizer;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gguf_path() -> Option<PathBuf> {
    let path = std::env::var_os("FERROTUNE_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("FERROTUNE_REQUIRE_MODELS").as_deref() == Ok("1") {
        panic!("{} is missing and FERROTUNE_REQUIRE_MODELS=1: run scripts/fetch-smollm2.sh", path.display());
    }
    eprintln!("skipping: {} not found; run scripts/fetch-smollm2.sh", path.display());
    None
}

type Loaded = (InferenceModel, ModelTokenizer);

/// Each format loaded once per test binary.
fn model(format: WeightFormat) -> Option<&'static Loaded> {
    static MODELS: OnceLock<std::sync::Mutex<HashMap<WeightFormat, &'static Loaded>>> = OnceLock::new();
    let path = gguf_path()?;
    let mut map = MODELS.get_or_init(Default::default).lock().unwrap();
    Some(*map.entry(format).or_insert_with(|| {
        let (m, t) = InferenceModel::load(path.to_str().unwrap(), format).expect("load SmolLM2");
        Box::leak(Box::new((m, t.expect("GGUF has a tokenizer"))))
    }))
}

struct Case {
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    greedy_text: String,
}

fn golden() -> (Vec<Case>, usize, u32) {
    let text = std::fs::read_to_string(repo().join("tests/golden/infer_smollm2_greedy.json")).expect("golden file");
    let v: Value = serde_json::from_str(&text).unwrap();
    let ids = |x: &Value| x.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case { prompt_ids: ids(&c["prompt_ids"]), greedy_ids: ids(&c["greedy_ids"]), greedy_text: c["greedy_text"].as_str().unwrap().to_string() })
        .collect();
    (cases, v["max_new_tokens"].as_u64().unwrap() as usize, v["eos_token_id"].as_u64().unwrap() as u32)
}

fn greedy(max_new_tokens: usize, eos: u32) -> GenerationConfig {
    GenerationConfig { max_new_tokens, eos_token_ids: vec![eos], ..Default::default() }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn greedy_f32_matches_transformers_token_for_token() {
    let Some((m, tok)) = model(WeightFormat::F32) else { return };
    let (cases, max_new, eos) = golden();
    let generator = Generator::new(m, Some(tok));
    let mut cache = m.new_cache(256).unwrap();
    for (i, case) in cases.iter().enumerate() {
        let mut streamed = String::new();
        let (out, _) = generator.generate(&mut cache, &case.prompt_ids, &greedy(max_new, eos), &mut |t| streamed.push_str(t)).unwrap();
        assert_eq!(out.tokens, case.greedy_ids, "case {i}: {:?} vs HF {:?}", out.text, case.greedy_text);
        assert_eq!(out.text, case.greedy_text, "case {i}");
        assert_eq!(streamed, out.text, "case {i}: streamed pieces add up to the text");
        let expected = if case.greedy_ids.last() == Some(&eos) { FinishReason::Stop } else { FinishReason::Length };
        assert_eq!(out.finish_reason, expected, "case {i}");
    }
}

#[test]
fn q4_1_blocks_from_the_file_compute_what_f32_does() {
    // The file's linear weights are Q4_1 and its embedding Q8_0: kept as blocks they are the very values the f32
    // load dequantizes, so only summation order differs.
    let (Some((f, _)), Some((q, tok))) = (model(WeightFormat::F32), model(WeightFormat::Q4_1)) else { return };
    let (cases, max_new, eos) = golden();
    assert!(q.nbytes() * 5 < f.nbytes(), "q4_1 {} bytes vs f32 {}", q.nbytes(), f.nbytes());
    for case in &cases {
        let (a, b) = (f.last_logits(&case.prompt_ids).unwrap(), q.last_logits(&case.prompt_ids).unwrap());
        assert!(max_abs_diff(&a, &b) < 2e-3, "prefill logits differ by {}", max_abs_diff(&a, &b));
    }
    let mut cache = q.new_cache(256).unwrap();
    let (out, _) = Generator::new(q, Some(tok)).generate(&mut cache, &cases[0].prompt_ids, &greedy(max_new, eos), &mut |_| {}).unwrap();
    assert_eq!(out.tokens, cases[0].greedy_ids);
}

#[test]
fn bf16_and_q8_0_stay_close_to_f32() {
    let Some((f, _)) = model(WeightFormat::F32) else { return };
    let (cases, _, _) = golden();
    for format in [WeightFormat::BF16, WeightFormat::Q8_0] {
        let (m, _) = model(format).unwrap();
        for case in &cases {
            let (a, b) = (f.last_logits(&case.prompt_ids).unwrap(), m.last_logits(&case.prompt_ids).unwrap());
            assert_eq!(argmax(&a), argmax(&b), "{format:?}: the next token changed");
            let scale = a.iter().fold(0.0f32, |x, v| x.max(v.abs()));
            assert!(max_abs_diff(&a, &b) < 0.05 * scale, "{format:?}: logits differ by {} (max |logit| {scale})", max_abs_diff(&a, &b));
        }
    }
}

#[test]
fn cached_decode_logits_equal_a_full_forward() {
    let Some((m, _)) = model(WeightFormat::F32) else { return };
    let (cases, _, _) = golden();
    let case = &cases[3];
    let mut cache = m.new_cache(128).unwrap();
    let mut logits = m.forward(&mut [Segment { cache: &mut cache, tokens: &case.prompt_ids }]).unwrap();
    let mut seen = case.prompt_ids.clone();
    for &t in &case.greedy_ids[..12] {
        assert_eq!(argmax(&logits), t);
        seen.push(t);
        logits = m.forward(&mut [Segment { cache: &mut cache, tokens: &[t] }]).unwrap();
        let full = m.last_logits(&seen).unwrap();
        let d = max_abs_diff(&logits, &full);
        assert!(d < 1e-3, "after {} tokens the cached decode differs from a full forward by {d}", seen.len());
    }
    // Prefill continuing a cache (a second chat turn) equals prefilling everything at once.
    let mut cache = m.new_cache(128).unwrap();
    m.forward(&mut [Segment { cache: &mut cache, tokens: &seen[..20] }]).unwrap();
    let tail = m.forward(&mut [Segment { cache: &mut cache, tokens: &seen[20..] }]).unwrap();
    let d = max_abs_diff(&tail, &m.last_logits(&seen).unwrap());
    assert!(d < 1e-3, "continued prefill differs by {d}");
}

#[test]
fn batched_continuous_decoding_equals_one_sequence_at_a_time() {
    for format in [WeightFormat::F32, WeightFormat::Q4_1] {
        let Some((m, tok)) = model(format) else { return };
        let (cases, max_new, eos) = golden();
        let mut cache = m.new_cache(256).unwrap();
        let single: Vec<_> = cases
            .iter()
            .map(|c| Generator::new(m, Some(tok)).generate(&mut cache, &c.prompt_ids, &greedy(max_new, eos), &mut |_| {}).unwrap().0)
            .collect();
        // Three slots for four requests: two start, one joins two steps later, the last waits for a free slot.
        let mut engine = BatchEngine::new(m, Some(tok), 3, 256).unwrap();
        let mut ids = vec![engine.submit(&cases[0].prompt_ids, greedy(max_new, eos)).unwrap(), engine.submit(&cases[1].prompt_ids, greedy(max_new, eos)).unwrap()];
        let mut results = HashMap::new();
        let mut texts: HashMap<u64, String> = HashMap::new();
        let mut steps = 0;
        while !engine.is_idle() || ids.len() < 4 {
            if steps == 2 {
                ids.push(engine.submit(&cases[2].prompt_ids, greedy(max_new, eos)).unwrap());
                ids.push(engine.submit(&cases[3].prompt_ids, greedy(max_new, eos)).unwrap());
            }
            for e in engine.step().unwrap() {
                match e {
                    Event::Token { id, text, .. } => texts.entry(id).or_default().push_str(&text),
                    Event::Finished { id, generation } => {
                        results.insert(id, generation);
                    }
                }
            }
            steps += 1;
            assert!(steps < 500);
        }
        for (id, want) in ids.iter().zip(&single) {
            assert_eq!(&results[id], want, "{format:?} request {id}");
            assert_eq!(texts.get(id).cloned().unwrap_or_default(), want.text);
        }
    }
}

#[test]
fn seeded_sampling_reproduces_and_top_k_one_is_greedy() {
    let Some((m, tok)) = model(WeightFormat::Q4_1) else { return };
    let (cases, _, eos) = golden();
    let generator = Generator::new(m, Some(tok));
    let mut cache = m.new_cache(256).unwrap();
    let sample = |cache: &mut _, seed, top_k| {
        let sampling = SamplingParams { do_sample: true, temperature: 0.9, top_p: 0.95, top_k, repetition_penalty: 1.1, seed };
        let cfg = GenerationConfig { max_new_tokens: 24, sampling, eos_token_ids: vec![eos], ..Default::default() };
        generator.generate(cache, &cases[1].prompt_ids, &cfg, &mut |_| {}).unwrap().0
    };
    let a = sample(&mut cache, 7, 0);
    assert_eq!(a, sample(&mut cache, 7, 0));
    let others: Vec<_> = (8..12).map(|s| sample(&mut cache, s, 0).tokens).collect();
    assert!(others.iter().any(|t| *t != a.tokens), "different seeds should not all agree");
    // top_k = 1 leaves only the argmax (after the penalty), so it is greedy with the same penalty.
    let penalised_greedy = GenerationConfig {
        max_new_tokens: 24,
        sampling: SamplingParams { repetition_penalty: 1.1, ..Default::default() },
        eos_token_ids: vec![eos],
        ..Default::default()
    };
    let g = generator.generate(&mut cache, &cases[1].prompt_ids, &penalised_greedy, &mut |_| {}).unwrap().0;
    assert_eq!(sample(&mut cache, 3, 1).tokens, g.tokens);
}

#[test]
fn stop_strings_cut_the_text_and_are_never_streamed() {
    let Some((m, tok)) = model(WeightFormat::Q4_1) else { return };
    let (cases, _, eos) = golden();
    let cfg = GenerationConfig { max_new_tokens: 32, eos_token_ids: vec![eos], stop_strings: vec![" Paris".into()], ..Default::default() };
    let mut cache = m.new_cache(256).unwrap();
    let mut streamed = String::new();
    let (out, _) = Generator::new(m, Some(tok)).generate(&mut cache, &cases[0].prompt_ids, &cfg, &mut |t| streamed.push_str(t)).unwrap();
    assert_eq!(out.text, "The capital of France is");
    assert_eq!(streamed, out.text);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    // max_new_tokens ends with "length".
    let cfg = GenerationConfig { max_new_tokens: 3, eos_token_ids: vec![eos], ..Default::default() };
    let (out, _) = Generator::new(m, Some(tok)).generate(&mut cache, &cases[0].prompt_ids, &cfg, &mut |_| {}).unwrap();
    assert_eq!((out.tokens.len(), out.finish_reason), (3, FinishReason::Length));
}

#[test]
fn streaming_holds_back_incomplete_utf8() {
    let Some((_, tok)) = model(WeightFormat::Q4_1) else { return };
    let text = "Emoji 🦀🚀👩‍💻, café, 我爱自然语言处理, Ünïcödé.";
    let ids = tok.encode(text, false).unwrap();
    let mut stream = TextStream::default();
    let mut out = String::new();
    let mut pieces = 0;
    for &id in &ids {
        let piece = stream.push(tok, id, true).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "an incomplete character was emitted: {piece:?}");
        pieces += !piece.is_empty() as usize;
        out.push_str(&piece);
    }
    out.push_str(&stream.flush(tok, true).unwrap());
    assert_eq!(out, tok.decode(&ids, true).unwrap());
    assert_eq!(out, text);
    assert!(pieces < ids.len(), "multi-token characters should have been held back at least once");
}

#[test]
fn bad_requests_are_errors() {
    let Some((m, tok)) = model(WeightFormat::Q4_1) else { return };
    let mut cache = m.new_cache(8).unwrap();
    assert!(m.forward(&mut [Segment { cache: &mut cache, tokens: &[1, 2, 3, 4, 5, 6, 7, 8, 9] }]).is_err());
    assert!(m.forward(&mut [Segment { cache: &mut cache, tokens: &[60000] }]).is_err());
    assert!(m.forward(&mut [Segment { cache: &mut cache, tokens: &[] }]).is_err());
    assert_eq!(cache.len(), 0, "failed forwards leave the cache alone");
    let generator = Generator::new(m, Some(tok));
    assert!(generator.generate(&mut cache, &[], &GenerationConfig::default(), &mut |_| {}).is_err());
    let mut engine = BatchEngine::new(m, Some(tok), 1, 8).unwrap();
    assert!(engine.submit(&[1; 9], GenerationConfig::default()).is_err());
    // A full cache ends the generation with "length" instead of failing.
    let (out, _) = generator.generate(&mut cache, &[1, 2, 3, 4, 5, 6], &GenerationConfig { max_new_tokens: 10, ..Default::default() }, &mut |_| {}).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.tokens.len(), 3);
}
