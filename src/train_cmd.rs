//! `ferrotune train cfg.yaml [key=value ...]`: LLaMA-Factory's `llamafactory-cli train` on ferrotune.
//!
//! Arguments (ferrotune-args) -> model and tokenizer (ferrotune-models `load_model`) -> dataset, template,
//! encoding and packing (ferrotune-data) -> LoRA / freeze / full setup, training loop, checkpoints and
//! artifacts (ferrotune-train, which writes trainer_log.jsonl, trainer_state.json, *_results.json and the loss
//! plots through ferrotune-args' logging module) -> `do_eval` / `do_predict` with `predict_with_generate`
//! (generation on ferrotune-infer, BLEU / ROUGE, `generated_predictions.jsonl`: [`predict`]).

mod predict;

use ferrotune_args::{FinetuningType, IntervalStrategy, SaveStrategy, Stage, TrainArgs};
use ferrotune_data::{make_batches, DataOptions, Encoded, MixStrategy, ValSize};
use ferrotune_models::llama::LlamaModel;
use ferrotune_models::{load_model, LoadOptions, WeightDType};
use ferrotune_train::adapters::{self, AdapterMode, FreezeSettings, LoraSettings};
use ferrotune_train::data::{BatchSource, MicroBatch};
use ferrotune_train::trainer::{self, Method, Precision, TrainerCallback, TrainerOptions};
use ferrotune_train::{OptimizerKind, ScheduleKind, ScheduleKwargs, Trainer};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Encoded data from ferrotune-data as the trainer's batch source: `per_device_*_batch_size` items per packed
/// row, reshuffled each epoch from `seed + epoch` unless `disable_shuffling`.
struct DataSource {
    encoded: Encoded,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    drop_last: bool,
}

impl BatchSource for DataSource {
    fn num_batches(&self) -> usize {
        if self.drop_last {
            self.encoded.len() / self.batch_size
        } else {
            self.encoded.len().div_ceil(self.batch_size)
        }
    }

    fn num_items(&self) -> usize {
        self.encoded.len()
    }

    fn epoch_batches(&self, epoch: usize) -> ferrotune_models::Result<Vec<MicroBatch>> {
        let seed = self.shuffle.then(|| self.seed.wrapping_add(epoch as u64));
        let mut out = Vec::new();
        for b in make_batches(&self.encoded, self.batch_size, seed)? {
            if self.drop_last && b.num_items < self.batch_size {
                continue;
            }
            out.push(MicroBatch { batch: b.to_model_batch()?, labels: b.labels.clone(), num_items: b.num_items });
        }
        Ok(out)
    }
}

/// Prints a log line per `Trainer.log` (HF's `{'loss': ..., 'grad_norm': ..., 'learning_rate': ..., 'epoch': ...}`).
struct PrintLogs {
    start: Instant,
    max_steps: u64,
}

/// Set by SIGINT / SIGTERM: the run stops after the optimizer step in progress and saves a checkpoint there
/// (`ferrotune webui`'s Abort sends SIGTERM; Ctrl-C sends SIGINT). A second signal ends the process at once.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
mod stop_signal {
    use super::STOP_REQUESTED;
    use std::sync::atomic::Ordering;

    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
        fn _exit(status: i32) -> !;
    }
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15; // the same on Linux and macOS

    extern "C" fn on_signal(signum: i32) {
        // Only async-signal-safe work here: an atomic swap, and _exit on the second signal.
        if STOP_REQUESTED.swap(true, Ordering::SeqCst) {
            // SAFETY: _exit is async-signal-safe and ends the process without running destructors.
            unsafe { _exit(128 + signum) }
        }
    }

    pub fn install() {
        for signum in [SIGINT, SIGTERM] {
            // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
            unsafe {
                signal(signum, on_signal as extern "C" fn(i32) as usize);
            }
        }
    }
}

impl TrainerCallback for PrintLogs {
    fn on_step_end(&mut self, state: &ferrotune_args::logging::TrainerState) -> bool {
        if STOP_REQUESTED.load(Ordering::SeqCst) {
            println!("stop requested: saving checkpoint-{} and stopping (a second signal stops at once)", state.global_step);
            return false;
        }
        true
    }

    fn checkpoint_on_stop(&self) -> bool {
        true
    }

    fn on_log(&mut self, state: &ferrotune_args::logging::TrainerState, logs: &[(String, ferrotune_args::Value)]) {
        let fields: Vec<String> = logs
            .iter()
            .filter(|(k, _)| k != "step")
            .map(|(k, v)| match v {
                ferrotune_args::Value::Float(x) => format!("'{k}': {}", ferrotune_args::logging::py_float(*x)),
                other => format!("'{k}': {}", other.scalar_text().unwrap_or_default()),
            })
            .collect();
        let elapsed = self.start.elapsed().as_secs_f64();
        println!("[{}/{} {}] {{{}}}", state.global_step, self.max_steps.max(state.max_steps), ferrotune_args::logging::format_duration(elapsed), fields.join(", "));
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    #[cfg(unix)]
    stop_signal::install();
    let mut a = ferrotune_args::parse_train_args(args).map_err(|e| e.to_string())?;
    for note in &a.notes {
        eprintln!("note: {note}");
    }
    for key in &a.ignored {
        eprintln!("note: ignoring unknown key `{key}` (ALLOW_EXTRA_ARGS)");
    }
    run_parsed(&mut a).map_err(|e| e.to_string())
}

fn data_options(a: &TrainArgs) -> ferrotune_models::Result<DataOptions> {
    let d = &a.data;
    let list = |v: &Option<ferrotune_args::CommaList>| v.as_ref().map(|l| l.0.clone()).unwrap_or_default();
    let probs = match &d.interleave_probs {
        Some(l) => Some(
            l.iter()
                .map(|p| p.trim().parse::<f64>().map_err(|_| ferrotune_models::Error::msg(format!("interleave_probs: {p:?} is not a number"))))
                .collect::<ferrotune_models::Result<Vec<f64>>>()?,
        ),
        None => None,
    };
    Ok(DataOptions {
        dataset: list(&d.dataset),
        eval_dataset: list(&d.eval_dataset),
        dataset_dir: PathBuf::from(&d.dataset_dir),
        template: d.template.clone(),
        cutoff_len: d.cutoff_len.max(0) as usize,
        train_on_prompt: d.train_on_prompt,
        mask_history: d.mask_history,
        packing: d.packing,
        neat_packing: d.neat_packing,
        max_samples: d.max_samples.map(|m| m.max(0) as usize),
        val_size: ValSize::from_f64(d.val_size)?,
        mix_strategy: MixStrategy::parse(&d.mix_strategy)?,
        interleave_probs: probs,
        seed: a.training.seed as u64,
        streaming: d.streaming,
        tokenized_path: d.tokenized_path.as_ref().map(PathBuf::from),
        default_system: d.default_system.clone(),
        enable_thinking: d.enable_thinking,
        preserve_thinking: d.preserve_thinking,
        tool_format: d.tool_format.clone(),
        predict_with_generate: a.training.predict_with_generate && a.finetuning.stage == Stage::Sft,
    })
}

fn method_of(a: &TrainArgs) -> ferrotune_models::Result<Method> {
    let f = &a.finetuning;
    Ok(match f.finetuning_type {
        FinetuningType::Full => Method::Full,
        FinetuningType::Freeze => Method::Freeze(FreezeSettings {
            trainable_layers: f.freeze_trainable_layers,
            trainable_modules: f.freeze_trainable_modules.0.clone(),
            extra_modules: f.freeze_extra_modules.as_ref().map(|l| l.0.clone()).unwrap_or_default(),
        }),
        FinetuningType::Lora => Method::Lora(LoraSettings {
            rank: f.lora_rank.max(0) as usize,
            alpha: Some(f.lora_alpha_value() as f64),
            dropout: f.lora_dropout,
            target: f.lora_target.0.clone(),
            additional_target: f.additional_target.as_ref().map(|l| l.0.clone()).unwrap_or_default(),
            use_rslora: f.use_rslora,
            seed: a.training.seed as u64,
        }),
        FinetuningType::Oft => ferrotune_models::bail!("finetuning_type oft is not implemented; use lora, freeze or full"),
    })
}

fn run_parsed(a: &mut TrainArgs) -> ferrotune_models::Result<()> {
    let t = a.training.clone();
    let stage = match a.finetuning.stage {
        Stage::Sft => ferrotune_data::Stage::Sft,
        Stage::Pt => ferrotune_data::Stage::Pt,
        other => ferrotune_models::bail!("stage {other:?} is not implemented by `ferrotune train` yet; use sft or pt"),
    };
    let out_dir = PathBuf::from(t.output_dir());
    let resume = if t.do_train { trainer::resolve_output_dir(&out_dir, t.overwrite_output_dir, t.resume_from_checkpoint.as_deref())? } else { None };
    if let Some(ck) = &resume {
        println!("resuming from {}", ck.display());
    }
    let precision = if a.finetuning.pure_bf16 {
        Precision::PureBf16
    } else if t.bf16 {
        Precision::Bf16
    } else if t.fp16 {
        Precision::F16
    } else {
        Precision::F32
    };

    // Model and tokenizer.
    let Some(name) = a.model.model_name_or_path.clone() else { ferrotune_models::bail!("model_name_or_path is required") };
    let t0 = Instant::now();
    let loaded = load_model(&name, &LoadOptions { dtype: WeightDType::F32 }, &crate::model_source::hub_options(&a.model))?;
    let Some(mut tokenizer) = loaded.tokenizer.clone() else {
        ferrotune_models::bail!("{}: no tokenizer (tokenizer.json) next to the model", loaded.source.display())
    };
    let mut model = LlamaModel::from_weights(loaded.config.clone(), loaded.weights)?;
    println!("loaded {name} ({} parameters) in {:.1} s", model.num_parameters(), t0.elapsed().as_secs_f64());

    // Data.
    let t1 = Instant::now();
    let data = ferrotune_data::load_dataset(&mut tokenizer, &data_options(a)?, stage)?;
    println!(
        "dataset: {} train items, {} eval items (template {}) in {:.1} s",
        data.train.len(),
        data.eval.as_ref().map_or(0, Encoded::len) + data.eval_prompts.as_ref().map_or(0, Vec::len),
        a.data.template.as_deref().unwrap_or("from the tokenizer"),
        t1.elapsed().as_secs_f64()
    );

    // What trains.
    let mut method = method_of(a)?;
    let adapters_given = crate::model_source::adapter_dirs(&a.model);
    match (&mut method, adapters_given.split_last()) {
        (Method::Lora(settings), Some((last, earlier))) if t.do_train => {
            // LLaMA-Factory: merge all but the last adapter, resume training the last (or merge all and start a
            // new one with create_new_adapter).
            model.set_trainable(|_| false);
            for p in earlier {
                adapters::load_adapter(&mut model, p, AdapterMode::Merge)?;
            }
            if a.finetuning.create_new_adapter {
                adapters::load_adapter(&mut model, last, AdapterMode::Merge)?;
                trainer::prepare_model(&mut model, &method, precision)?;
            } else {
                let loaded = adapters::load_adapter(&mut model, last, AdapterMode::Trainable)?;
                *settings = LoraSettings { seed: settings.seed, dropout: settings.dropout, ..loaded };
                trainer::apply_precision(&mut model, precision)?;
            }
        }
        (_, Some(_)) if t.do_train => ferrotune_models::bail!("Adapter is only valid for the LoRA method."),
        _ => {
            for p in &adapters_given {
                adapters::load_adapter(&mut model, p, AdapterMode::Merge)?;
            }
            trainer::prepare_model(&mut model, &method, precision)?;
        }
    }
    let trainable: usize = trainer::trainable_parameters(&model).iter().map(|(_, v)| v.value().elem_count()).sum();
    let all: usize = model.parameters_with_adapters().iter().map(|(_, v)| v.value().elem_count()).sum();
    println!("trainable params: {trainable} || all params: {all} || trainable%: {:.4}", 100.0 * trainable as f64 / all.max(1) as f64);

    // Batches and the steps the strategies ask for.
    let bs = t.per_device_train_batch_size.max(1) as usize;
    let train_src = DataSource { encoded: data.train, batch_size: bs, shuffle: !a.finetuning.disable_shuffling, seed: t.data_seed_value() as u64, drop_last: t.dataloader_drop_last };
    let eval_src = data.eval.map(|e| DataSource { encoded: e, batch_size: t.per_device_eval_batch_size.max(1) as usize, shuffle: false, seed: 0, drop_last: false });
    let ga = t.gradient_accumulation_steps.max(1) as usize;
    let updates_per_epoch = train_src.num_batches().div_ceil(ga).max(1) as f64;
    let logging_steps = match t.logging_strategy {
        IntervalStrategy::No => 0.0,
        IntervalStrategy::Epoch => updates_per_epoch,
        IntervalStrategy::Steps => t.logging_steps,
    };
    let save_steps = match t.save_strategy {
        SaveStrategy::No => 0.0,
        SaveStrategy::Epoch => updates_per_epoch,
        SaveStrategy::Steps => t.save_steps,
        SaveStrategy::Best => ferrotune_models::bail!("save_strategy best needs load_best_model_at_end/metric tracking, which ferrotune does not implement; use steps or epoch"),
    };
    let eval_steps = match t.eval_strategy {
        IntervalStrategy::No => 0.0,
        IntervalStrategy::Epoch => updates_per_epoch,
        IntervalStrategy::Steps => t.eval_steps_value(),
    };
    let kind = ScheduleKind::parse(t.lr_scheduler_type.as_str())?;
    let kwargs_json = match &t.lr_scheduler_kwargs {
        ferrotune_args::Value::Null => serde_json::Value::Null,
        v => serde_json::from_str(&ferrotune_args::logging::py_json(v, None, false)).map_err(|e| ferrotune_models::Error::msg(format!("lr_scheduler_kwargs: {e}")))?,
    };
    let tokens_seen = !matches!(&t.include_num_input_tokens_seen, ferrotune_args::Value::Str(s) if s == "no")
        && t.include_num_input_tokens_seen != ferrotune_args::Value::Bool(false);
    let opts = TrainerOptions {
        output_dir: out_dir.clone(),
        overwrite_output_dir: t.overwrite_output_dir,
        per_device_train_batch_size: bs,
        per_device_eval_batch_size: t.per_device_eval_batch_size.max(1) as usize,
        gradient_accumulation_steps: ga,
        learning_rate: t.learning_rate,
        weight_decay: t.weight_decay,
        adam_beta1: t.adam_beta1,
        adam_beta2: t.adam_beta2,
        adam_epsilon: t.adam_epsilon,
        max_grad_norm: t.max_grad_norm,
        optim: OptimizerKind::from_optim(&t.optim)?,
        num_train_epochs: t.num_train_epochs,
        max_steps: t.max_steps,
        lr_scheduler_type: kind,
        lr_scheduler_kwargs: ScheduleKwargs::from_json(kind, &kwargs_json)?,
        warmup_steps: t.warmup_steps,
        warmup_ratio: t.warmup_ratio.unwrap_or(0.0),
        logging_steps,
        logging_first_step: t.logging_first_step,
        save_steps,
        save_total_limit: t.save_total_limit.map(|l| l.max(1) as usize),
        save_only_model: t.save_only_model,
        eval_steps,
        seed: t.seed as u64,
        gradient_checkpointing: !a.model.disable_gradient_checkpointing,
        neftune_noise_alpha: t.neftune_noise_alpha.filter(|&x| x > 0.0),
        loraplus_lr_ratio: a.finetuning.loraplus_lr_ratio,
        include_num_input_tokens_seen: tokens_seen,
        resume_from_checkpoint: resume,
        plot_loss: a.finetuning.plot_loss,
    };
    let mut tr = Trainer::new(model, opts, method, name.clone())?;
    tr.tokenizer = Some(tokenizer);

    let generate_settings = predict::GenerateSettings {
        generating: &a.generating,
        template: &data.template,
        batch_size: t.per_device_eval_batch_size.max(1) as usize,
        seed: t.seed as u64,
        stop: &STOP_REQUESTED,
    };
    let prompts = data.eval_prompts.as_deref().unwrap_or_default();
    if !t.do_train && !t.do_predict && data.eval_prompts.is_none() {
        let Some(eval) = &eval_src else { ferrotune_models::bail!("nothing to do: do_train is false and there is no eval set") };
        let loss = tr.evaluate(eval)?;
        println!("eval_loss = {loss:.4}  perplexity = {:.4}", ferrotune_args::logging::perplexity(loss));
        return Ok(());
    }
    if t.do_train {
        if data.eval_prompts.is_some() && eval_steps > 0.0 {
            ferrotune_models::bail!(
                "eval_strategy {} with predict_with_generate: evaluating with generation during training is not implemented; \
                 set eval_strategy: no (do_eval / do_predict still generate after training)",
                t.eval_strategy.as_str()
            );
        }
        if STOP_REQUESTED.load(Ordering::SeqCst) {
            println!("stop requested before the first step: nothing trained, nothing saved");
            return Ok(());
        }
        let mut cb = PrintLogs { start: Instant::now(), max_steps: 0 };
        let eval_for_train: Option<&dyn BatchSource> = if t.do_eval || eval_steps > 0.0 { eval_src.as_ref().map(|e| e as &dyn BatchSource) } else { None };
        let cpu_before = process_cpu_seconds();
        let out = tr.train(&train_src, eval_for_train, &mut cb)?;
        let cpu_used = process_cpu_seconds().zip(cpu_before).map(|(after, before)| after - before);
        if out.interrupted {
            println!(
                "stopped at step {} on request; checkpoint-{} saved in {} (run the same command again to resume from it)",
                out.global_step,
                out.global_step,
                out_dir.display()
            );
            return Ok(());
        }
        println!("{}", ferrotune_args::logging::format_metrics("train", &out.metrics));
        if let Some(l) = out.eval_loss {
            println!("***** eval metrics *****\n  eval_loss = {l:.4}\n  perplexity = {:.4}", ferrotune_args::logging::perplexity(l));
        }
        let tps = out.tokens as f64 / out.runtime_secs.max(1e-9);
        let rss = crate::model_cmd::peak_rss_bytes().map_or("unknown".to_string(), |b| format!("{:.0} MB", b as f64 / 1e6));
        println!(
            "trained {} steps on {} tokens in {:.1} s: {:.1} tokens/s (real tokens, no padding), {:.2} s/step; peak RSS {rss}; saved to {}",
            out.global_step,
            out.tokens,
            out.runtime_secs,
            tps,
            out.runtime_secs / (out.global_step.max(1) as f64),
            out_dir.display()
        );
        // The arithmetic rate, to set against `ferrotune bench gemm` on the same thread count; the CPU use says how
        // much of the wall time the process actually ran (below 100% per thread on a machine shared with others).
        let cpu = cpu_used.map_or(String::new(), |s| format!("; CPU use {:.0}% of {} thread(s)", 100.0 * s / out.runtime_secs.max(1e-9), rayon::current_num_threads()));
        let flops = trainer::training_flops(&tr.model, tr.opts.gradient_checkpointing, out.tokens, out.label_tokens);
        println!(
            "arithmetic: {:.1} GFLOP/s executed ({:.0} MFLOP/token with checkpoint recompute, {:.0} of model math; {:.0}% of tokens labelled){cpu}",
            flops.executed / out.runtime_secs.max(1e-9) / 1e9,
            flops.executed / out.tokens.max(1) as f64 / 1e6,
            flops.model / out.tokens.max(1) as f64 / 1e6,
            100.0 * out.label_tokens as f64 / out.tokens.max(1) as f64,
        );
    }
    if data.eval_prompts.is_none() || !(t.do_eval || t.do_predict) {
        return Ok(());
    }
    // Generation (do_eval / do_predict with predict_with_generate) on the model as it is now: trained in memory,
    // or loaded with its adapters merged. LoRA branches are merged in (the adapter is already saved).
    let t2 = Instant::now();
    tr.model.merge_lora()?;
    let format = if matches!(precision, Precision::Bf16 | Precision::PureBf16) { ferrotune_infer::WeightFormat::BF16 } else { ferrotune_infer::WeightFormat::F32 };
    let infer = ferrotune_infer::InferenceModel::from_llama(&tr.model, format)?;
    // HF reports the preparation of a model that training did not prepare, once, with the first evaluation.
    let mut preparation = (!t.do_train).then(|| t2.elapsed().as_secs_f64());
    let Some(tokenizer) = tr.tokenizer.as_ref() else { ferrotune_models::bail!("no tokenizer to decode generations with") };
    std::fs::create_dir_all(&out_dir).map_err(|e| ferrotune_models::Error::msg(format!("{}: {e}", out_dir.display())))?;
    // A run that only generates reports its progress in trainer_log.jsonl (LogCallback's `on_prediction_step`);
    // a training run's log already ended with its last step.
    let mut progress = if t.do_train {
        None
    } else {
        Some(
            ferrotune_args::logging::TrainerLog::new(&out_dir, t.overwrite_output_dir)
                .map_err(|e| ferrotune_models::Error::msg(format!("{}: cannot write trainer_log.jsonl: {e}", out_dir.display())))?,
        )
    };
    for (split, run) in [("eval", t.do_eval), ("predict", t.do_predict)] {
        if !run {
            continue;
        }
        let dir = (split == "predict").then_some(out_dir.as_path());
        let Some(metrics) = predict::generate_and_score(&infer, tokenizer, prompts, &generate_settings, split, preparation.take(), dir, progress.as_mut())? else {
            println!("stopped during {split} generation on request; no {split} results written");
            return Ok(());
        };
        println!("{}", ferrotune_args::logging::format_metrics(split, &metrics));
        ferrotune_args::logging::save_metrics(&out_dir, split, &metrics, true)
            .map_err(|e| ferrotune_models::Error::msg(format!("{}: cannot write {split}_results.json: {e}", out_dir.display())))?;
    }
    Ok(())
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`, clock ticks at the usual 100 Hz);
/// `None` elsewhere.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14 and stime 15 (1-based).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
