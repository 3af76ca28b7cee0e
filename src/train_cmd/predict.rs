//! sft `predict_with_generate`: LLaMA-Factory's `trainer.predict` / `trainer.evaluate` with generation
//! (train/sft/workflow.py, trainer.py, metric.py) on ferrotune-infer.
//!
//! Each eval prompt (the unsupervised encoding: the prompt without its response) is generated from with the
//! generating arguments, `per_device_eval_batch_size` sequences decoding together, stopping at eos or at a
//! template stop word (LLaMA-Factory adds those to the tokenizer's special tokens and passes them all as
//! `eos_token_id`). Scores are `ComputeSimilarity`'s ([`ferrotune_train::metrics`]); `predict` also writes
//! `generated_predictions.jsonl` as `save_predictions` does. In a run that does not train, each batch's end is a
//! `trainer_log.jsonl` progress line (LLaMA-Factory's `on_prediction_step`), which the WebUI's progress bar reads.

use ferrotune_args::logging::{self, py_round, TrainerLog};
use ferrotune_args::{GeneratingArguments, Value};
use ferrotune_data::pyjson::{dumps, PyValue};
use ferrotune_data::{PromptExample, Template};
use ferrotune_infer::{BatchEngine, Event, GenerationConfig, InferenceModel, SamplingParams};
use ferrotune_models::{bail, ModelTokenizer, Result};
use ferrotune_train::metrics::{Similarity, SimilarityScores};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a generation pass needs besides the model.
pub struct GenerateSettings<'a> {
    pub generating: &'a GeneratingArguments,
    pub template: &'a Template,
    pub batch_size: usize,
    pub seed: u64,
    /// Set by SIGINT / SIGTERM (Ctrl-C, the WebUI's Abort): generation ends after the decode step in progress.
    pub stop: &'a AtomicBool,
}

/// One prompt's generated ids, in the prompts' order; `None` when a stop was requested first. With `progress`, a
/// progress line per `batch_size` prompts finished.
fn generate_all(
    model: &InferenceModel,
    tok: &ModelTokenizer,
    prompts: &[PromptExample],
    s: &GenerateSettings,
    mut progress: Option<&mut TrainerLog>,
) -> Result<Option<Vec<Vec<u32>>>> {
    let g = s.generating;
    // GeneratingArguments.to_dict: max_new_tokens when positive, else max_length (prompt included).
    let max_new = |prompt_len: usize| -> usize {
        if g.max_new_tokens > 0 {
            g.max_new_tokens as usize
        } else {
            (g.max_length.max(0) as usize).saturating_sub(prompt_len)
        }
    };
    let Some(eos) = tok.eos_token_id() else { bail!("the tokenizer has no eos token to stop generation at") };
    // [eos_token_id] + additional_special_tokens_ids: the template's stop words are among the latter.
    let mut eos_ids = vec![eos];
    for w in &s.template.stop_words {
        if let Some(id) = tok.token_to_id(w).filter(|id| !eos_ids.contains(id)) {
            eos_ids.push(id);
        }
    }
    let longest = prompts.iter().map(|p| p.input_ids.len() + max_new(p.input_ids.len())).max().unwrap_or(1);
    let max_len = longest.min(model.max_positions()).max(1);
    if let Some(p) = prompts.iter().find(|p| p.input_ids.len() >= max_len) {
        bail!(
            "a prompt has {} tokens, which leaves no room to generate within the model's {} positions; lower cutoff_len",
            p.input_ids.len(),
            model.max_positions()
        );
    }
    // No tokenizer: without stop strings the engine needs no text, and the ids are decoded whole afterwards (as
    // batch_decode does), not streamed.
    let mut engine = BatchEngine::new(model, None, s.batch_size.max(1), max_len)?;
    let mut ids = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let config = GenerationConfig {
            max_new_tokens: max_new(p.input_ids.len()),
            sampling: SamplingParams {
                do_sample: g.do_sample,
                temperature: g.temperature as f32,
                top_p: g.top_p as f32,
                top_k: g.top_k.max(0) as usize,
                repetition_penalty: g.repetition_penalty as f32,
                // One stream per prompt, so an example's sample does not depend on its batch neighbours.
                seed: s.seed.wrapping_add(i as u64),
            },
            eos_token_ids: eos_ids.clone(),
            stop_strings: Vec::new(),
            skip_special_tokens: true,
        };
        ids.push(engine.submit(&p.input_ids, config)?);
    }
    let mut out: Vec<Option<Vec<u32>>> = vec![None; prompts.len()];
    let (mut done, started) = (0, Instant::now());
    let batches = prompts.len().div_ceil(s.batch_size.max(1)) as u64;
    while !engine.is_idle() {
        if s.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        for event in engine.step()? {
            if let Event::Finished { id, generation } = event {
                out[id as usize - ids[0] as usize] = Some(generation.tokens);
                done += 1;
                if done % s.batch_size.max(1) == 0 || done == prompts.len() {
                    eprintln!("[generate] {done}/{} prompts ({:.1} s)", prompts.len(), started.elapsed().as_secs_f64());
                    if let Some(log) = progress.as_deref_mut() {
                        log.on_prediction_step(batches)
                            .map_err(|e| ferrotune_models::Error::msg(format!("{}: {e}", log.path().display())))?;
                    }
                }
            }
        }
    }
    Ok(Some(out.into_iter().map(Option::unwrap_or_default).collect()))
}

/// Generate for every prompt and score the generations against the labels (`{prefix}_bleu-4`, ...,
/// `{prefix}_runtime`, `{prefix}_samples_per_second`, `{prefix}_steps_per_second`, and
/// `{prefix}_model_preparation_time` when `preparation_secs` is given, as HF reports the first evaluation of a
/// model it had not prepared for training). With `predictions_dir`, also writes `generated_predictions.jsonl`; with
/// `progress`, the progress lines. `None` when a stop was requested before generation finished (nothing written).
pub fn generate_and_score(
    model: &InferenceModel,
    tok: &ModelTokenizer,
    prompts: &[PromptExample],
    settings: &GenerateSettings,
    prefix: &str,
    preparation_secs: Option<f64>,
    predictions_dir: Option<&Path>,
    progress: Option<&mut TrainerLog>,
) -> Result<Option<Vec<(String, Value)>>> {
    if prompts.is_empty() {
        bail!("the eval set has no examples to generate from (eval_dataset is empty after preprocessing)");
    }
    let start = Instant::now();
    let Some(generated) = generate_all(model, tok, prompts, settings, progress)? else { return Ok(None) };
    let scorer = Similarity::new();
    let skip = settings.generating.skip_special_tokens;
    let mut scores = Vec::with_capacity(prompts.len());
    let mut lines = String::new();
    for (p, gen) in prompts.iter().zip(&generated) {
        // ComputeSimilarity always decodes with skip_special_tokens=True.
        let (pred, label) = (tok.decode(gen, true)?, tok.decode(&p.labels, true)?);
        scores.push(scorer.score(&pred, &label));
        if predictions_dir.is_some() {
            let (pred, label) = if skip { (pred, label) } else { (tok.decode(gen, false)?, tok.decode(&p.labels, false)?) };
            let row = PyValue::Object(vec![
                ("prompt".into(), PyValue::Str(tok.decode(&p.input_ids, false)?)),
                ("predict".into(), PyValue::Str(pred)),
                ("label".into(), PyValue::Str(label)),
            ]);
            lines.push_str(&dumps(&row));
            lines.push('\n');
        }
    }
    let mut metrics = SimilarityScores::mean(&scores).metrics(prefix);
    if let Some(secs) = preparation_secs {
        metrics.push((format!("{prefix}_model_preparation_time"), Value::Float(py_round(secs, 4))));
    }
    let steps = prompts.len().div_ceil(settings.batch_size.max(1)) as u64;
    metrics.extend(logging::speed_metrics(prefix, start.elapsed().as_secs_f64(), Some(prompts.len() as u64), Some(steps), None));
    if let Some(dir) = predictions_dir {
        let path = dir.join("generated_predictions.jsonl");
        logging::write_atomic(&path, lines.as_bytes()).map_err(|e| ferrotune_models::Error::msg(format!("{}: {e}", path.display())))?;
        println!("Saving prediction results to {}", path.display());
    }
    Ok(Some(metrics))
}
