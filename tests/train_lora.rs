//! LoRA as PEFT builds it, checked against PEFT itself (scripts/golden/peft_lora.py, PEFT 0.21.2, f64 run):
//! loss and every lora_A / lora_B / modules_to_save gradient, the adapter file layout, adapter load/merge, and
//! activation checkpointing giving the same gradients as a plain backward.
//!
//! Measured (f64 model vs PEFT's f64 run): loss and gradients agree to ~1e-15 relative of scale, i.e. the
//! same math; the tolerance below is 1e-11 of each tensor's scale.

mod common;

use common::load_golden;
use ferrotune_autograd::Var;
use ferrotune_models::llama::LlamaModel;
use ferrotune_models::loader::load_hf_folder;
use ferrotune_models::{Batch, LoadOptions, WeightMap};
use ferrotune_tensor::ops::Reduction;
use ferrotune_tensor::{DType, Tensor};
use ferrotune_train::adapters::{self, AdapterMode, LoraSettings};
use ferrotune_train::data::MicroBatch;
use ferrotune_train::trainer::{self, TrainMode};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(case)
}

fn load(case: &str, dtype: DType) -> LlamaModel {
    let loaded = load_hf_folder(&fixture_dir(case), &LoadOptions::default()).unwrap();
    let mut weights = WeightMap::new(loaded.weights.source());
    for (name, t) in loaded.weights.iter() {
        weights.insert(name, t.to_dtype(dtype).unwrap()).unwrap();
    }
    LlamaModel::from_weights(loaded.config, weights).unwrap()
}

/// models.py's two sequences and labels, as one packed micro-batch.
fn golden_batch() -> MicroBatch {
    let seqs: [Vec<u32>; 2] = [vec![1, 17, 5, 200, 33, 5, 91], vec![1, 250, 3, 3, 44, 128, 7, 5, 60, 255, 12, 2]];
    let labels_for = |ids: &[u32]| -> Vec<i64> {
        let mut l: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        for x in l.iter_mut().take(3) {
            *x = -100;
        }
        let n = l.len();
        l[n - 2] = -100;
        l
    };
    let items: Vec<(Vec<u32>, Vec<i64>)> = seqs.iter().map(|s| (s.clone(), labels_for(s))).collect();
    let refs: Vec<(&[u32], &[i64])> = items.iter().map(|(a, b)| (a.as_slice(), b.as_slice())).collect();
    MicroBatch::pack(&refs).unwrap()
}

/// Worst |a - e| over max |e|.
fn scaled_error(a: &Tensor, e: &Tensor) -> f64 {
    assert_eq!(a.shape(), e.shape());
    let (a, e) = (a.to_vec_f64().unwrap(), e.to_vec_f64().unwrap());
    let scale = e.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
    a.iter().zip(&e).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn case_settings(case: &str) -> (&'static str, LoraSettings) {
    match case {
        "all" => ("llama_untied", LoraSettings { rank: 4, alpha: Some(16.0), target: vec!["all".into()], ..LoraSettings::default() }),
        _ => (
            "qwen2_untied",
            LoraSettings {
                rank: 2,
                alpha: Some(3.0),
                use_rslora: true,
                target: vec!["q_proj".into(), "v_proj".into()],
                additional_target: vec!["lm_head".into()],
                ..LoraSettings::default()
            },
        ),
    }
}

/// PEFT's name for one of our trainable parameters.
fn peft_name(name: &str) -> String {
    if name.contains("lora_") {
        format!("base_model.model.{name}")
    } else {
        let module = name.strip_suffix(".weight").unwrap();
        format!("base_model.model.{module}.modules_to_save.weight")
    }
}

/// A model with the case's LoRA and the golden A/B values.
fn golden_model(case: &str, golden: &HashMap<String, Tensor>) -> LlamaModel {
    let (fixture, settings) = case_settings(case);
    let mut model = load(fixture, DType::F64);
    adapters::setup_lora(&mut model, &settings).unwrap();
    for (name, var) in model.parameters_with_adapters_mut() {
        if var.requires_grad() {
            let v = golden.get(&format!("value.{}", peft_name(&name))).unwrap_or_else(|| panic!("no golden value for {name}"));
            *var = Var::param(v.clone());
        }
    }
    model
}

#[test]
fn lora_loss_and_gradients_match_peft() {
    for case in ["all", "rslora"] {
        let (golden, _) = load_golden(&format!("train_peft_{case}"));
        let model = golden_model(case, &golden);
        let mb = golden_batch();
        let loss = trainer::micro_batch_loss(&model, &mb, None, Reduction::Mean).unwrap();
        loss.backward().unwrap();
        let want = golden["loss"].to_vec_f64().unwrap()[0];
        let got = loss.value().to_vec_f64().unwrap()[0];
        assert!((got - want).abs() <= 1e-12 * want.abs(), "{case}: loss {got} vs PEFT {want}");
        let trainable = trainer::trainable_parameters(&model);
        let expected_count = golden.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(trainable.len(), expected_count, "{case}: trainable parameter count");
        for (name, var) in trainable {
            let g = var.grad().unwrap_or_else(|| panic!("{case}: {name} has no gradient"));
            let e = &golden[&format!("grad.{}", peft_name(&name))];
            let err = scaled_error(&g, e);
            assert!(err < 1e-11, "{case}: gradient of {name}: scaled error {err:e}");
        }
        // Frozen base weights get no gradient at all.
        for (name, var) in model.parameters() {
            if !name.starts_with("lm_head") || case == "all" {
                assert!(var.grad().is_none(), "{case}: frozen {name} got a gradient");
            }
        }
    }
}

#[test]
fn adapter_files_have_peft_layout_and_load_back() {
    let dir = std::env::temp_dir().join(format!("ferrotune_train_lora_layout_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for case in ["all", "rslora"] {
        let (golden, meta) = load_golden(&format!("train_peft_{case}"));
        let model = golden_model(case, &golden);
        let (fixture, settings) = case_settings(case);
        let out = dir.join(case);
        adapters::save_adapter(&out, &model, &settings, &fixture_dir(fixture).display().to_string()).unwrap();

        // For the by-hand check that PEFT loads what we save:
        //   FERROTUNE_KEEP_ADAPTERS=/tmp/x cargo test --test train_lora adapter_files
        //   /work/pyref/bin/python scripts/golden/peft_lora.py --check /tmp/x/all
        if let Ok(keep) = std::env::var("FERROTUNE_KEEP_ADAPTERS") {
            let kept = std::path::Path::new(&keep).join(case);
            adapters::save_adapter(&kept, &model, &settings, &fixture_dir(fixture).display().to_string()).unwrap();
            let loss = trainer::micro_batch_loss(&model, &golden_batch(), None, Reduction::Mean).unwrap();
            println!("{case}: kept adapter in {}, f64 loss {:.15}", kept.display(), loss.value().to_vec_f64().unwrap()[0]);
        }
        // Tensor names exactly PEFT's state-dict keys, shapes [r, in] / [out, r].
        let peft_keys: Vec<String> = serde_json::from_str(&meta["peft_keys"]).unwrap();
        let file = ferrotune_models::safetensors::SafetensorsFile::open(&out.join("adapter_model.safetensors")).unwrap();
        let mut ours: Vec<String> = file.tensors().iter().map(|t| t.name.clone()).collect();
        ours.sort();
        assert_eq!(ours, peft_keys, "{case}: adapter tensor names");
        for info in file.tensors() {
            if info.name.ends_with("lora_A.weight") {
                assert_eq!(info.shape[0], settings.rank, "{}", info.name);
            } else if info.name.ends_with("lora_B.weight") {
                assert_eq!(info.shape[1], settings.rank, "{}", info.name);
            }
        }
        // Config keys and values as PEFT writes them.
        let ours: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
        let peft: serde_json::Value = serde_json::from_str(&meta["adapter_config"]).unwrap();
        for key in ["peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "use_rslora", "modules_to_save", "bias", "fan_in_fan_out", "inference_mode", "use_dora"] {
            assert_eq!(ours[key], peft[key], "{case}: adapter_config.json {key}");
        }
        // PEFT keeps target_modules as a set (written in arbitrary order); ours is sorted.
        let as_set = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
            v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
        };
        assert_eq!(as_set(&ours["target_modules"]), as_set(&peft["target_modules"]), "{case}: target_modules");

        // Loaded back onto a fresh base: unmerged gives the same loss, merged too (to f64 rounding).
        let mb = golden_batch();
        let want = trainer::micro_batch_loss(&model, &mb, None, Reduction::Mean).unwrap().value().to_vec_f64().unwrap()[0];
        for mode in [AdapterMode::Frozen, AdapterMode::Merge, AdapterMode::Trainable] {
            let mut fresh = load(fixture, DType::F64);
            fresh.set_trainable(|_| false);
            let s = adapters::load_adapter(&mut fresh, &out, mode).unwrap();
            assert_eq!(s.rank, settings.rank);
            let got = trainer::micro_batch_loss(&fresh, &mb, None, Reduction::Mean).unwrap().value().to_vec_f64().unwrap()[0];
            assert!((got - want).abs() < 1e-12, "{case} {mode:?}: loss {got} vs {want}");
            let n_trainable = trainer::trainable_parameters(&fresh).len();
            match mode {
                AdapterMode::Trainable => assert_eq!(n_trainable, peft_keys.len(), "{case}"),
                _ => assert_eq!(n_trainable, 0, "{case} {mode:?}"),
            }
            if mode == AdapterMode::Merge {
                assert!(fresh.lora_parameters().is_empty());
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lora_init_is_kaiming_uniform_and_zero_b() {
    let mut model = load("llama_untied", DType::F32);
    let targets = adapters::setup_lora(&mut model, &LoraSettings { rank: 8, ..LoraSettings::default() }).unwrap();
    assert_eq!(targets.len(), 2 * 7);
    for (name, lin) in model.linears() {
        let l = lin.lora.as_ref().unwrap();
        let bound = 1.0 / (lin.in_features() as f64).sqrt();
        let a = l.a.value().to_vec_f64().unwrap();
        assert!(a.iter().all(|x| x.abs() <= bound), "{name}");
        assert!(a.iter().any(|x| x.abs() > 0.5 * bound), "{name}: A looks degenerate");
        assert!(l.b.value().to_vec_f64().unwrap().iter().all(|&x| x == 0.0), "{name}: B must start at zero");
        assert_eq!(l.scaling, 2.0, "alpha defaults to 2 * rank");
    }
    // Base weights are frozen; only A and B train.
    assert!(model.trainable_parameters().is_empty());
    assert_eq!(trainer::trainable_parameters(&model).len(), 28);
    // A target that matches nothing is an error, not a silent no-op.
    let mut m2 = load("llama_untied", DType::F32);
    let e = adapters::setup_lora(&mut m2, &LoraSettings { target: vec!["qkv".into()], ..LoraSettings::default() }).unwrap_err();
    assert!(e.to_string().contains("matches no module"), "{e}");
}

/// Backward through checkpointed layers (forward without a graph, recomputed in backward) gives the same
/// gradients as the plain graph, for full training (the layer input needs a gradient) and LoRA with dropout
/// (it does not, and the recomputation must replay the same dropout masks).
#[test]
fn gradient_checkpointing_gives_identical_gradients() {
    let mb = golden_batch();
    for method in ["full", "lora"] {
        let grads = |checkpoint: bool| -> Vec<(String, Tensor)> {
            let mut model = load("llama_rope_bias", DType::F32);
            if method == "lora" {
                let s = LoraSettings { rank: 4, dropout: 0.3, ..LoraSettings::default() };
                adapters::setup_lora(&mut model, &s).unwrap();
                // Nonzero B so every path carries gradient.
                for (name, var) in model.lora_parameters_mut() {
                    if name.contains("lora_B") {
                        let shape = var.shape().to_vec();
                        *var = Var::param(Tensor::randn(3, &shape, 0.0, 0.1, DType::F32).unwrap());
                    }
                }
            }
            let mode = TrainMode { seed: 99, neftune_noise_alpha: Some(5.0), gradient_checkpointing: checkpoint };
            let loss = trainer::micro_batch_loss(&model, &mb, Some(mode), Reduction::Sum).unwrap();
            loss.backward().unwrap();
            trainer::trainable_parameters(&model).into_iter().map(|(n, v)| (n, v.grad().unwrap())).collect()
        };
        let (plain, ckpt) = (grads(false), grads(true));
        assert_eq!(plain.len(), ckpt.len());
        for ((n, a), (_, b)) in plain.iter().zip(&ckpt) {
            let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
            let worst = a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst == 0.0, "{method}: {n}: checkpointed gradient differs by {worst:e}");
        }
    }
}

#[test]
fn dropout_is_off_in_evaluation_and_seeded_in_training() {
    let mut model = load("llama_untied", DType::F32);
    adapters::setup_lora(&mut model, &LoraSettings { rank: 4, dropout: 0.5, ..LoraSettings::default() }).unwrap();
    for (name, var) in model.lora_parameters_mut() {
        if name.contains("lora_B") {
            let shape = var.shape().to_vec();
            *var = Var::param(Tensor::randn(5, &shape, 0.0, 0.2, DType::F32).unwrap());
        }
    }
    let batch = Batch::from_sequences(&[[1u32, 2, 3, 4, 5, 6]]).unwrap();
    let run = |seed: Option<u64>| {
        let mode = seed.map(|s| TrainMode { seed: s, neftune_noise_alpha: None, gradient_checkpointing: false });
        trainer::forward_hidden(&model, &batch, mode).unwrap().value().to_vec_f64().unwrap()
    };
    assert_eq!(run(Some(1)), run(Some(1)), "same seed, same masks");
    assert_ne!(run(Some(1)), run(Some(2)), "another seed, other masks");
    assert_ne!(run(None), run(Some(1)), "evaluation has no dropout");
    assert_eq!(run(None), run(None));
}
