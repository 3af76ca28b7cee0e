//! The training loop on the tiny fixtures: every finetuning type and stage learns, an interrupted run resumed
//! from its checkpoint ends bit-identical to one that never stopped, the artifacts are written, bad runs stop
//! with clear errors.

use ferrotune_autograd::Var;
use ferrotune_models::llama::LlamaModel;
use ferrotune_models::loader::load_hf_folder;
use ferrotune_models::LoadOptions;
use ferrotune_args::logging::TrainerState;
use ferrotune_tensor::Tensor;
use ferrotune_train::adapters::{FreezeSettings, LoraSettings};
use ferrotune_train::data::{BatchSource, ItemSource};
use ferrotune_train::trainer::{self, Method, NoCallback, Precision, TrainerCallback, TrainerOptions};
use ferrotune_train::{OptimizerKind, ScheduleKind, Trainer};
use std::path::{Path, PathBuf};

fn fixture(case: &str) -> LlamaModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(case);
    let loaded = load_hf_folder(&dir, &LoadOptions::default()).unwrap();
    LlamaModel::from_weights(loaded.config, loaded.weights).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrotune_train_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `n` learnable sequences: an arithmetic progression mod 200 with a per-example start. sft masks the first 4
/// tokens (the "prompt"); pt trains on everything.
fn items(n: usize, sft: bool) -> Vec<(Vec<u32>, Vec<i64>)> {
    (0..n)
        .map(|i| {
            let len = 9 + i % 5;
            let ids: Vec<u32> = (0..len).map(|j| ((i * 11 + j * 3) % 200) as u32 + 2).collect();
            let labels = ids.iter().enumerate().map(|(j, &t)| if sft && j < 4 { -100 } else { t as i64 }).collect();
            (ids, labels)
        })
        .collect()
}

fn source(n: usize, sft: bool, bs: usize) -> ItemSource {
    ItemSource { items: items(n, sft), batch_size: bs, shuffle: true, seed: 42, drop_last: false }
}

fn options(out: &Path) -> TrainerOptions {
    TrainerOptions {
        output_dir: out.to_path_buf(),
        per_device_train_batch_size: 2,
        gradient_accumulation_steps: 2,
        learning_rate: 1e-2,
        num_train_epochs: 1.0,
        logging_steps: 1.0,
        save_steps: 0.0,
        lr_scheduler_type: ScheduleKind::Constant,
        ..TrainerOptions::default()
    }
}

/// Losses logged in trainer_state's history.
fn logged_losses(state: &TrainerState) -> Vec<f64> {
    state
        .log_history
        .iter()
        .filter_map(|e| e.iter().find(|(k, _)| k == "loss").and_then(|(_, v)| match v {
            ferrotune_args::Value::Float(x) => Some(*x),
            _ => None,
        }))
        .collect()
}

fn train(case: &str, method: Method, mut opts: TrainerOptions, sft: bool, epochs: f64) -> (Trainer, trainer::TrainOutput) {
    let mut model = fixture(case);
    trainer::prepare_model(&mut model, &method, Precision::F32).unwrap();
    opts.num_train_epochs = epochs;
    let mut t = Trainer::new(model, opts, method, case).unwrap();
    let data = source(12, sft, 2);
    let out = t.train(&data, None, &mut NoCallback).unwrap();
    (t, out)
}

#[test]
fn every_method_and_stage_learns() {
    let lora = Method::Lora(LoraSettings { rank: 4, ..LoraSettings::default() });
    let freeze = Method::Freeze(FreezeSettings { trainable_layers: 1, trainable_modules: vec!["all".into()], extra_modules: vec![] });
    for (label, method, sft, case) in [
        ("lora sft", lora.clone(), true, "llama_untied"),
        ("lora pt", lora, false, "qwen2_tied"),
        ("freeze sft", freeze.clone(), true, "llama_tied"),
        ("freeze pt", freeze, false, "mistral"),
        ("full sft", Method::Full, true, "qwen2_untied"),
        ("full pt", Method::Full, false, "llama_rope_bias"),
    ] {
        let out_dir = tmp(&label.replace(' ', "_"));
        let (t, out) = train(case, method, options(&out_dir), sft, 4.0);
        let losses = logged_losses(&t.state);
        assert_eq!(out.global_step, 12, "{label}: 12 items / (2 x 2) = 3 steps per epoch, 4 epochs");
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(last < 0.85 * first, "{label}: loss went {first} -> {last} ({losses:?})");
        assert!(out.train_loss.is_finite());
        // Artifacts of a finished run.
        for f in ["trainer_log.jsonl", "trainer_state.json", "all_results.json", "train_results.json"] {
            assert!(out_dir.join(f).is_file(), "{label}: {f}");
        }
        let weights = if label.starts_with("lora") { "adapter_model.safetensors" } else { "model.safetensors" };
        assert!(out_dir.join(weights).is_file(), "{label}: {weights}");
        std::fs::remove_dir_all(&out_dir).unwrap();
    }
}

#[test]
fn freeze_selects_layers_and_modules_as_llamafactory() {
    let mut m = fixture("llama_untied");
    let s = FreezeSettings { trainable_layers: 1, trainable_modules: vec!["mlp".into()], extra_modules: vec!["embed_tokens".into()] };
    let names = ferrotune_train::setup_freeze(&mut m, &s).unwrap();
    assert_eq!(
        names,
        ["model.embed_tokens.weight", "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    );
    let s = FreezeSettings { trainable_layers: -1, trainable_modules: vec!["all".into()], extra_modules: vec![] };
    let names = ferrotune_train::setup_freeze(&mut m, &s).unwrap();
    assert!(names.iter().all(|n| n.starts_with("model.layers.0.")) && names.len() == 9, "{names:?}");
    let bad = FreezeSettings { trainable_modules: vec!["attention".into()], ..FreezeSettings::default() };
    let e = ferrotune_train::setup_freeze(&mut m, &bad).unwrap_err().to_string();
    assert!(e.contains("Module attention is not found") && e.contains("self_attn"), "{e}");
}

/// Stops the run after `.0` optimizer steps: as a kill would (the checkpoints already saved are the only trace),
/// or gracefully when `.1` (a checkpoint is saved at the stop, as Ctrl-C / the WebUI's Abort do).
struct StopAfter(u64, bool);
impl TrainerCallback for StopAfter {
    fn on_step_end(&mut self, state: &TrainerState) -> bool {
        state.global_step < self.0
    }
    fn checkpoint_on_stop(&self) -> bool {
        self.1
    }
}

fn trainable_values(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    trainer::trainable_parameters(&t.model).into_iter().map(|(n, v)| (n, v.value().to_vec::<f32>().unwrap())).collect()
}

#[test]
fn resumed_runs_end_bit_identical() {
    // 10 items, batch 2, accumulation 2: 5 micro-batches and 3 optimizer steps per epoch (the last one a single
    // micro-batch), 2 epochs. LoRA dropout and NEFTune make every step draw random numbers.
    let methods = [
        ("lora", Method::Lora(LoraSettings { rank: 4, dropout: 0.2, ..LoraSettings::default() }), OptimizerKind::AdamW),
        ("full", Method::Full, OptimizerKind::Adafactor),
    ];
    for (label, method, optim) in methods {
        let run = |out: &Path, resume: Option<PathBuf>, stop: Option<(u64, bool)>| -> Trainer {
            let mut model = fixture("llama_rope_bias");
            trainer::prepare_model(&mut model, &method, Precision::F32).unwrap();
            let opts = TrainerOptions {
                num_train_epochs: 2.0,
                save_steps: 2.0,
                save_total_limit: Some(2),
                neftune_noise_alpha: Some(5.0),
                weight_decay: 0.01,
                optim,
                lr_scheduler_type: ScheduleKind::Cosine,
                warmup_steps: 1.0,
                resume_from_checkpoint: resume,
                ..options(out)
            };
            let mut t = Trainer::new(model, opts, method.clone(), "llama_rope_bias").unwrap();
            let data = ItemSource { items: items(10, true), batch_size: 2, shuffle: true, seed: 42, drop_last: false };
            assert_eq!(data.num_batches(), 5);
            match stop {
                Some((k, graceful)) => assert!(t.train(&data, None, &mut StopAfter(k, graceful)).unwrap().interrupted),
                None => assert_eq!(t.train(&data, None, &mut NoCallback).unwrap().global_step, 6),
            }
            t
        };
        let full_dir = tmp(&format!("resume_full_{label}"));
        let reference = trainable_values(&run(&full_dir, None, None));
        // save_total_limit 2 keeps the two newest checkpoints.
        assert!(!full_dir.join("checkpoint-2").exists() && full_dir.join("checkpoint-4").is_dir() && full_dir.join("checkpoint-6").is_dir());
        // Killed at step 3 (end of epoch 0, checkpoint 2 is the last saved) and at step 4 (mid epoch 1); stopped
        // gracefully at step 3, which saves checkpoint-3 on the way out.
        for (stop, graceful, from) in [(3u64, false, "checkpoint-2"), (4, false, "checkpoint-4"), (3, true, "checkpoint-3")] {
            let dir = tmp(&format!("resume_{label}_{stop}_{graceful}"));
            run(&dir, None, Some((stop, graceful)));
            assert_eq!(dir.join("checkpoint-3").is_dir(), graceful, "{label}: stop at 3 (graceful: {graceful})");
            let resumed = trainable_values(&run(&dir, Some(dir.join(from)), None));
            assert_eq!(resumed.len(), reference.len());
            for ((n, a), (_, b)) in resumed.iter().zip(&reference) {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{label}: resumed from {from}: {n} differs from the uninterrupted run");
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::remove_dir_all(&full_dir).unwrap();
    }
}

#[test]
fn accumulation_normalises_over_all_tokens_of_the_step() {
    // One step over 4 items: batch 4 x accumulation 1 and batch 1 x accumulation 4 give the same update (the
    // step's loss is the mean over all its target tokens either way; plain SGD without clipping shows it).
    let run = |bs: usize, ga: usize| -> Vec<(String, Vec<f32>)> {
        let mut model = fixture("llama_untied");
        trainer::prepare_model(&mut model, &Method::Full, Precision::F32).unwrap();
        let dir = tmp(&format!("accum_{bs}_{ga}"));
        let opts = TrainerOptions {
            per_device_train_batch_size: bs,
            gradient_accumulation_steps: ga,
            max_steps: 1,
            optim: OptimizerKind::Sgd,
            max_grad_norm: 0.0,
            gradient_checkpointing: false,
            ..options(&dir)
        };
        let mut t = Trainer::new(model, opts, Method::Full, "x").unwrap();
        let data = ItemSource { items: items(4, true), batch_size: bs, shuffle: false, seed: 1, drop_last: false };
        t.train(&data, None, &mut NoCallback).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        trainable_values(&t)
    };
    let (a, b) = (run(4, 1), run(1, 4));
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        let worst = x.iter().zip(y).fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(worst < 1e-6, "{n}: {worst:e}");
    }
}

#[test]
fn evaluation_and_artifacts() {
    let out = tmp("eval");
    let mut model = fixture("llama_untied");
    let method = Method::Lora(LoraSettings { rank: 4, ..LoraSettings::default() });
    trainer::prepare_model(&mut model, &method, Precision::Bf16).unwrap();
    // bf16: frozen weights stored bf16, trainable (LoRA) f32.
    assert_eq!(model.embed_tokens.value().dtype(), ferrotune_tensor::DType::BF16);
    let opts = TrainerOptions { eval_steps: 2.0, plot_loss: true, num_train_epochs: 2.0, include_num_input_tokens_seen: true, ..options(&out) };
    let mut t = Trainer::new(model, opts, method, "llama_untied").unwrap();
    let train = source(8, true, 2);
    let eval = source(4, true, 2);
    let res = t.train(&train, Some(&eval), &mut NoCallback).unwrap();
    assert!(res.eval_loss.unwrap().is_finite());
    let log = std::fs::read_to_string(out.join("trainer_log.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"eval_loss\"")), "{log}");
    assert!(log.lines().any(|l| l.contains("\"total_tokens\"")), "{log}");
    for f in ["eval_results.json", "training_loss.png", "training_eval_loss.png", "adapter_config.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let state = TrainerState::load(&out.join("trainer_state.json")).unwrap();
    assert_eq!(state.global_step, 4);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_runs_stop_with_clear_errors() {
    // A NaN weight makes the loss NaN at the first step.
    let out = tmp("nan");
    let mut model = fixture("llama_untied");
    trainer::prepare_model(&mut model, &Method::Full, Precision::F32).unwrap();
    let shape = model.norm.shape().to_vec();
    model.norm = Var::param(Tensor::full(f64::NAN, &shape, ferrotune_tensor::DType::F32, ferrotune_tensor::Device::Cpu).unwrap());
    let mut t = Trainer::new(model, options(&out), Method::Full, "x").unwrap();
    let e = t.train(&source(4, true, 2), None, &mut NoCallback).unwrap_err().to_string();
    assert!(e.contains("NaN") && e.contains("step 1"), "{e}");
    let _ = std::fs::remove_dir_all(&out);

    // An output_dir with weights but no checkpoint is refused unless overwritten.
    let out = tmp("refuse");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("model.safetensors"), b"x").unwrap();
    let e = trainer::resolve_output_dir(&out, false, None).unwrap_err().to_string();
    assert!(e.contains("overwrite_output_dir"), "{e}");
    assert_eq!(trainer::resolve_output_dir(&out, true, None).unwrap(), None);
    std::fs::create_dir_all(out.join("checkpoint-7")).unwrap();
    std::fs::create_dir_all(out.join("checkpoint-12")).unwrap();
    assert_eq!(trainer::resolve_output_dir(&out, false, None).unwrap(), Some(out.join("checkpoint-12")));
    assert_eq!(trainer::resolve_output_dir(&out, false, Some("true")).unwrap(), Some(out.join("checkpoint-12")));
    std::fs::remove_dir_all(&out).unwrap();

    // LoRA+ outside LoRA, and nothing trainable, are errors.
    let model = fixture("llama_untied");
    let opts = TrainerOptions { loraplus_lr_ratio: Some(16.0), ..options(Path::new("unused")) };
    assert!(Trainer::new(model, opts, Method::Full, "x").is_err());
    let mut model = fixture("llama_untied");
    model.set_trainable(|_| false);
    assert!(Trainer::new(model, options(Path::new("unused")), Method::Full, "x").is_err());
}
