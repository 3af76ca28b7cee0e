//! The Llama-family decoder (crates/models/src/llama) against HF transformers 5.6.
//!
//! Six tiny HF folders (tests/fixtures/models/*, written by scripts/golden/models.py: Llama tied/untied, Qwen2
//! tied/untied with q/k/v bias, Llama with llama3 RoPE + every bias + eps 1e-5, Mistral with linear RoPE) are
//! loaded through the real HF-folder loader, run on a packed batch of two sequences (7 and 12 tokens, segment
//! ids, positions restarting) and compared with HF running the two sequences separately: logits, the shifted
//! mean loss, and the gradient of that loss for every parameter.
//!
//! The reference is HF's **f64** run of the stored f32 weights, i.e. the exact answer to ~1e-15. Errors are
//! measured as `max |ours - HF| / max |HF|` over each tensor (a gradient's small elements are judged against
//! its scale, not their own).
//!
//! - f64 model: agrees to f64 rounding. Measured worst over the six cases: logits 1.0e-15, loss 2.9e-16,
//!   gradients 4.5e-15 (of each tensor's scale). Bound 1e-12: room for summation-order changes, while any real
//!   difference (an eps, a RoPE band, a bias, the shift, the pad-row gradient) shows at 1e-7 or more.
//! - f32 model: f32 rounding through 2 layers. HF's own f32 run is ~1e-6 (absolute, logits up to ~5) away from
//!   the f64 one. Ours, measured worst: logits 6.0e-7 of scale, loss 3.4e-8 relative, gradients 1.8e-6 of scale
//!   (post_attention_layernorm / k_proj). Bounds about 10x that: logits 5e-6, loss 1e-6, gradients 2e-5.
//!
//! The SmolLM2-135M GGUF test needs the model file (scripts/fetch-smollm2.sh, or FERROTUNE_SMOLLM2_GGUF); without
//! it it prints how to get it and passes, unless FERROTUNE_REQUIRE_MODELS=1.

mod common;

use ferrotune_autograd::{no_grad, Var};
use ferrotune_models::llama::{Batch, LlamaModel, RandomInit};
use ferrotune_models::loader::load_hf_folder;
use ferrotune_models::{LoadOptions, ModelConfig, WeightDType, WeightMap};
use ferrotune_tensor::ops::Reduction;
use ferrotune_tensor::{DType, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn fixture_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(case)
}

/// Config and weights of a fixture folder, the weights converted to `dtype` (f32 -> f64 is exact).
fn load_fixture(case: &str, dtype: DType) -> (ModelConfig, WeightMap) {
    let loaded = load_hf_folder(&fixture_dir(case), &LoadOptions::default()).unwrap();
    let mut weights = WeightMap::new(loaded.weights.source());
    for (name, t) in loaded.weights.iter() {
        weights.insert(name, t.to_dtype(dtype).unwrap()).unwrap();
    }
    (loaded.config, weights)
}

/// The golden batch: both sequences packed, and the labels aligned with them.
fn golden_batch(golden: &HashMap<String, Tensor>) -> (Batch, Vec<i64>) {
    let ids = |key: &str| golden[key].to_vec::<i64>().unwrap();
    let sequences: Vec<Vec<u32>> = (0..2).map(|i| ids(&format!("input_ids.{i}")).iter().map(|&t| t as u32).collect()).collect();
    let labels: Vec<i64> = (0..2).flat_map(|i| ids(&format!("labels.{i}"))).collect();
    (Batch::from_sequences(&sequences).unwrap(), labels)
}

/// A one-element tensor of any float dtype as f64.
fn scalar(t: &Tensor) -> f64 {
    t.to_vec_f64().unwrap()[0]
}

/// `max |actual - expected| / max |expected|`.
fn scaled_error(actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.shape(), expected.shape());
    let a = actual.to_vec_f64().unwrap();
    let e = expected.to_vec_f64().unwrap();
    let scale = e.iter().fold(0f64, |m, x| m.max(x.abs())).max(f64::MIN_POSITIVE);
    let diff = a.iter().zip(&e).fold(0f64, |m, (x, y)| if (x - y).is_nan() { f64::INFINITY } else { m.max((x - y).abs()) });
    diff / scale
}

struct Tolerances {
    logits: f64,
    loss: f64,
    grads: f64,
}

/// f64: exact up to summation order (see the module docs for the measured errors).
const F64_TOL: Tolerances = Tolerances { logits: 1e-12, loss: 1e-12, grads: 1e-12 };
/// f32: about 10x the measured worst over the six cases.
const F32_TOL: Tolerances = Tolerances { logits: 5e-6, loss: 1e-6, grads: 2e-5 };

fn check_against_hf(case: &str, dtype: DType, tol: &Tolerances) {
    let (golden, _) = common::load_golden(&format!("models_{case}"));
    let (config, weights) = load_fixture(case, dtype);
    let model = LlamaModel::from_weights(config, weights).unwrap();
    let (batch, labels) = golden_batch(&golden);

    let logits = no_grad(|| model.logits(&batch)).unwrap();
    let logits_err = scaled_error(logits.value(), &golden["logits"]);

    let loss = model.loss(&batch, &labels).unwrap();
    let hf_loss = scalar(&golden["loss"]);
    let loss_err = (scalar(loss.value()) - hf_loss).abs() / hf_loss.abs();
    loss.backward().unwrap();

    let mut worst_grad = (0.0, String::new());
    let mut names = BTreeSet::new();
    for (name, var) in model.parameters() {
        let want = golden.get(&format!("grad.{name}")).unwrap_or_else(|| panic!("{case}: HF has no parameter {name}"));
        let got = var.grad().unwrap_or_else(|| panic!("{case}: {name} got no gradient"));
        let err = scaled_error(&got, want);
        if err > worst_grad.0 {
            worst_grad = (err, name.clone());
        }
        names.insert(name);
    }
    let hf_names: BTreeSet<String> = golden.keys().filter_map(|k| k.strip_prefix("grad.")).map(str::to_string).collect();
    assert_eq!(names, hf_names, "{case}: parameter names differ from HF's named_parameters()");
    eprintln!(
        "{case} {dtype:?}: logits {logits_err:.2e}, loss {loss_err:.2e}, worst gradient {:.2e} ({})",
        worst_grad.0, worst_grad.1
    );
    assert!(logits_err <= tol.logits, "{case} {dtype:?}: logits error {logits_err:e} > {:e}", tol.logits);
    assert!(loss_err <= tol.loss, "{case} {dtype:?}: loss error {loss_err:e} > {:e}", tol.loss);
    assert!(worst_grad.0 <= tol.grads, "{case} {dtype:?}: gradient of {} off by {:e} > {:e}", worst_grad.1, worst_grad.0, tol.grads);
}

macro_rules! golden_cases {
    ($($case:ident),*) => {
        mod hf_f64 {
            $(#[test] fn $case() { super::check_against_hf(stringify!($case), ferrotune_tensor::DType::F64, &super::F64_TOL); })*
        }
        mod hf_f32 {
            $(#[test] fn $case() { super::check_against_hf(stringify!($case), ferrotune_tensor::DType::F32, &super::F32_TOL); })*
        }
    };
}

golden_cases!(llama_untied, llama_tied, qwen2_untied, qwen2_tied, llama_rope_bias, mistral);

/// A sequence run alone (no segment ids) gives the rows the packed batch gave it: packing changes nothing.
#[test]
fn packed_batch_equals_sequences_run_alone() {
    let (golden, _) = common::load_golden("models_qwen2_untied");
    let (config, weights) = load_fixture("qwen2_untied", DType::F64);
    let model = LlamaModel::from_weights(config, weights).unwrap();
    let second: Vec<u32> = golden["input_ids.1"].to_vec::<i64>().unwrap().iter().map(|&t| t as u32).collect();
    let alone = no_grad(|| model.logits(&Batch::from_sequences(&[second]).unwrap())).unwrap();
    let rows = golden["logits"].narrow(0, 7, 12).unwrap().contiguous().unwrap();
    assert!(scaled_error(alone.value(), &rows) < 1e-12);
}

/// `Sum` over already-shifted targets is the mean times the number of valid targets.
#[test]
fn sum_reduction_on_shifted_targets() {
    let (golden, _) = common::load_golden("models_llama_tied");
    let (config, weights) = load_fixture("llama_tied", DType::F64);
    let model = LlamaModel::from_weights(config, weights).unwrap();
    let (batch, labels) = golden_batch(&golden);
    let targets = batch.shift_labels(&labels).unwrap();
    let valid = targets.iter().filter(|&&t| t != -100).count() as f64;
    let sum = no_grad(|| model.loss_on_targets(&batch, &targets, Reduction::Sum)).unwrap().value().to_vec_f64().unwrap()[0];
    let mean = scalar(&golden["loss"]);
    assert!((sum / valid - mean).abs() < 1e-12 * mean, "{sum} / {valid} vs {mean}");
}

/// Freezing by name: only the trainable leaves get gradients, and those equal the fully trainable run's.
#[test]
fn frozen_parameters_get_no_gradient() {
    let (golden, _) = common::load_golden("models_qwen2_untied");
    let (config, weights) = load_fixture("qwen2_untied", DType::F64);
    let mut model = LlamaModel::from_weights(config, weights).unwrap();
    model.set_trainable(|name| name.ends_with("norm.weight") || name.contains("q_proj"));
    let (batch, labels) = golden_batch(&golden);
    model.loss(&batch, &labels).unwrap().backward().unwrap();
    let trainable: Vec<String> = model.trainable_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(trainable.len(), 2 * 2 + 1 + 2 * 2, "{trainable:?}");
    for (name, var) in model.parameters() {
        match var.grad() {
            Some(g) => assert!(scaled_error(&g, &golden[&format!("grad.{name}")]) < 1e-12, "{name}"),
            None => assert!(!trainable.contains(&name), "{name} is trainable but got no gradient"),
        }
    }
}

/// bf16 weights run end to end (computed in f32), get bf16 gradients, and land near the exact loss: bf16 rounding of the weights
/// (relative 2^-9) moves this loss by about 1e-3 relative.
#[test]
fn bf16_weights_compute_in_f32() {
    let (golden, _) = common::load_golden("models_llama_rope_bias");
    let loaded = load_hf_folder(&fixture_dir("llama_rope_bias"), &LoadOptions { dtype: WeightDType::BF16 }).unwrap();
    let model = LlamaModel::from_weights(loaded.config, loaded.weights).unwrap();
    assert_eq!(model.compute_dtype(), DType::F32);
    assert_eq!(model.embed_tokens.value().dtype(), DType::BF16);
    let (batch, labels) = golden_batch(&golden);
    let loss = model.loss(&batch, &labels).unwrap();
    loss.backward().unwrap();
    let hf = scalar(&golden["loss"]);
    let ours = scalar(loss.value());
    assert!((ours - hf).abs() < 1e-2 * hf, "bf16 loss {ours} vs {hf}");
    for (name, var) in model.parameters() {
        let g = var.grad().unwrap_or_else(|| panic!("{name}: no gradient"));
        assert_eq!(g.dtype(), DType::BF16, "{name}: a gradient has its parameter's dtype, as in PyTorch");
        assert!(g.to_vec_f64().unwrap().iter().all(|x| x.is_finite()), "{name}");
    }
}

// ---- loading errors --------------------------------------------------------------------------------------------

fn from_weights_error(case: &str, edit: impl FnOnce(&mut WeightMap)) -> String {
    let (config, mut weights) = load_fixture(case, DType::F32);
    edit(&mut weights);
    LlamaModel::from_weights(config, weights).unwrap_err().to_string()
}

#[test]
fn missing_unknown_and_misshaped_tensors_are_named() {
    let e = from_weights_error("llama_untied", |w| {
        w.take("model.layers.1.mlp.up_proj.weight", &[64, 32]).unwrap();
    });
    assert!(e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("missing"), "{e}");

    let e = from_weights_error("qwen2_untied", |w| {
        let b = w.take("model.layers.0.self_attn.k_proj.bias", &[32]).unwrap();
        w.insert("model.layers.0.self_attn.k_proj.bias", b.narrow(0, 0, 31).unwrap().contiguous().unwrap()).unwrap();
    });
    assert!(e.contains("model.layers.0.self_attn.k_proj.bias") && e.contains("[31]") && e.contains("[32]"), "{e}");

    let e = from_weights_error("llama_untied", |w| {
        w.insert("model.layers.2.input_layernorm.weight", Tensor::zeros(&[32], DType::F32, ferrotune_tensor::Device::Cpu).unwrap()).unwrap();
        w.insert("model.rotary_emb.inv_freq", Tensor::zeros(&[8], DType::F32, ferrotune_tensor::Device::Cpu).unwrap()).unwrap();
    });
    assert!(e.contains("model.layers.2.input_layernorm.weight") && e.contains("model.rotary_emb.inv_freq"), "{e}");

    let e = from_weights_error("llama_untied", |w| {
        let t = w.take("model.norm.weight", &[32]).unwrap();
        w.insert("model.norm.weight", t.to_dtype(DType::I64).unwrap()).unwrap();
    });
    assert!(e.contains("model.norm.weight") && e.contains("floating point"), "{e}");

    let e = from_weights_error("llama_untied", |w| {
        let t = w.take("model.norm.weight", &[32]).unwrap();
        w.insert("model.norm.weight", t.to_dtype(DType::F64).unwrap()).unwrap();
    });
    assert!(e.contains("model.norm.weight") && e.contains("f64"), "{e}");
}

/// A tied checkpoint that also stores lm_head (some exporters write it) loads; the embedding is the head.
#[test]
fn tied_model_with_a_stored_lm_head_loads() {
    let (config, mut weights) = load_fixture("llama_tied", DType::F32);
    let embed = weights.get("model.embed_tokens.weight").unwrap().clone();
    weights.insert("lm_head.weight", embed).unwrap();
    let model = LlamaModel::from_weights(config, weights).unwrap();
    assert!(model.lm_head.is_none());
    assert!(model.parameters().iter().all(|(n, _)| n != "lm_head.weight"));
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let (config, weights) = load_fixture("mistral", DType::F32);
    let model = LlamaModel::from_weights(config, weights).unwrap();
    // Mistral's window is 16: a 17-token sequence would need sliding-window attention.
    let long = Batch::from_sequences(&[vec![3u32; 17]]).unwrap();
    let e = model.logits(&long).unwrap_err().to_string();
    assert!(e.contains("sliding_window") && e.contains("17"), "{e}");
    // Two packed sequences of 16 are fine: the window applies per sequence.
    assert!(no_grad(|| model.logits(&Batch::from_sequences(&[vec![3u32; 16], vec![4u32; 16]]).unwrap())).is_ok());
    let e = model.logits(&Batch::from_sequences(&[vec![3u32, 256]]).unwrap()).unwrap_err().to_string();
    assert!(e.contains("256") && e.contains("vocab"), "{e}");
    let e = model.logits(&Batch::packed(&[1, 2], &[0, 500], None).unwrap()).unwrap_err().to_string();
    assert!(e.contains("position id 500"), "{e}");
    let batch = Batch::from_sequences(&[vec![1u32, 2, 3]]).unwrap();
    assert!(model.loss(&batch, &[1, 2]).is_err());
    let e = model.loss(&batch, &[1, 2, 999]).unwrap_err().to_string();
    assert!(e.contains("999"), "{e}");
}

/// `named_tensors` is what `save_hf_folder` needs: a tied and an untied model written out and read back run
/// bit for bit the same.
#[test]
fn named_tensors_round_trip_through_an_hf_folder() {
    for case in ["qwen2_tied", "llama_rope_bias"] {
        let (golden, _) = common::load_golden(&format!("models_{case}"));
        let (config, weights) = load_fixture(case, DType::F32);
        let model = LlamaModel::from_weights(config.clone(), weights).unwrap();
        let mut exported = WeightMap::new("export");
        for (name, t) in model.named_tensors() {
            exported.insert(name, t).unwrap();
        }
        let dir = std::env::temp_dir().join(format!("ferrotune-models-golden-{case}-{}", std::process::id()));
        ferrotune_models::loader::save_hf_folder(&dir, &config, &exported, None, None).unwrap();
        let loaded = load_hf_folder(&dir, &LoadOptions::default()).unwrap();
        let again = LlamaModel::from_weights(loaded.config, loaded.weights).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let (batch, _) = golden_batch(&golden);
        let (a, b) = no_grad(|| (model.logits(&batch).unwrap(), again.logits(&batch).unwrap()));
        assert_eq!(a.value().to_vec::<f32>().unwrap(), b.value().to_vec::<f32>().unwrap(), "{case}");
    }
}

// ---- random init -----------------------------------------------------------------------------------------------

#[test]
fn random_init_is_hf_init_and_seeded() {
    let (mut config, _) = load_fixture("llama_rope_bias", DType::F32);
    config.pad_token_id = Some(7);
    let init = RandomInit { seed: 42, ..Default::default() };
    let a = LlamaModel::random(config.clone(), &init).unwrap();
    let b = LlamaModel::random(config.clone(), &init).unwrap();
    let c = LlamaModel::random(config.clone(), &RandomInit { seed: 43, ..init }).unwrap();
    let hf_names: BTreeSet<String> = {
        let (golden, _) = common::load_golden("models_llama_rope_bias");
        golden.keys().filter_map(|k| k.strip_prefix("grad.")).map(str::to_string).collect()
    };
    assert_eq!(a.parameters().into_iter().map(|(n, _)| n).collect::<BTreeSet<_>>(), hf_names);
    assert_eq!(a.num_parameters(), config.num_parameters());
    for ((name, x), ((_, y), (_, z))) in a.parameters().into_iter().zip(b.parameters().into_iter().zip(c.parameters())) {
        let v = x.value().to_vec_f64().unwrap();
        assert_eq!(v, y.value().to_vec_f64().unwrap(), "{name}: same seed, same weights");
        if name.ends_with("norm.weight") {
            assert!(v.iter().all(|&w| w == 1.0), "{name}");
        } else if name.ends_with(".bias") {
            assert!(v.iter().all(|&w| w == 0.0), "{name}");
        } else {
            assert_ne!(v, z.value().to_vec_f64().unwrap(), "{name}: another seed, other weights");
            let std = (v.iter().map(|w| w * w).sum::<f64>() / v.len() as f64).sqrt();
            assert!((std - 0.02).abs() < 0.004, "{name}: std {std}");
        }
    }
    let embed = a.embed_tokens.value().narrow(0, 7, 1).unwrap().to_vec_f64().unwrap();
    assert!(embed.iter().all(|&w| w == 0.0), "the pad_token_id row starts at zero, as in HF");
    let bf16 = LlamaModel::random(config, &RandomInit { dtype: WeightDType::BF16, ..init }).unwrap();
    assert_eq!(bf16.named_tensors()[0].1.dtype(), DType::BF16);
}

// ---- SmolLM2-135M from GGUF ------------------------------------------------------------------------------------


/// The GGUF's dequantized weights through our decoder vs transformers' own GGUF path (scripts/golden/smollm2.py):
/// the chat prompt's loss (HF's mean over the T - 1 shifted predictions) and the last position's logits.
///
/// Both sides run f32 through 30 layers on the same dequantized weights (checked to 1e-6 in tests/models_gguf.rs),
/// so the gap is two f32 roundings' worth. Measured (58 tokens): loss 3.0e-6 relative, last logits 3.6e-6 of
/// scale. Bounds 10x that: 3e-5 and 4e-5.
#[test]
fn smollm2_gguf_matches_transformers() {
    let Some(path) = common::smollm2_gguf() else { return };
    let gguf = ferrotune_models::gguf::load(&path, &LoadOptions::default()).unwrap();
    let model = LlamaModel::from_weights(gguf.config, gguf.weights).unwrap();
    let (golden, _) = common::load_golden("smollm2_forward");
    let ids: Vec<u32> = golden["input_ids"].to_vec::<i64>().unwrap().iter().map(|&t| t as u32).collect();
    let labels = golden["labels"].to_vec::<i64>().unwrap();
    let batch = Batch::from_sequences(std::slice::from_ref(&ids)).unwrap();
    let (loss, logits) = no_grad(|| -> ferrotune_models::Result<(f64, Tensor)> {
        let hidden = model.forward_hidden(&batch)?;
        let targets = Tensor::from_vec(batch.shift_labels(&labels)?, &[ids.len()])?;
        let loss = Var::linear_cross_entropy(&hidden, model.lm_head_weight(), &targets, -100, Reduction::Mean)?;
        let last = hidden.narrow(0, ids.len() - 1, 1)?;
        let logits = last.matmul(&model.lm_head_weight().t()?)?;
        Ok((loss.value().to_vec_f64()?[0], logits.value().reshape(&[model.config().vocab_size])?))
    })
    .unwrap();
    let hf_loss = golden["loss"].to_vec_f64().unwrap()[0];
    let loss_err = (loss - hf_loss).abs() / hf_loss;
    let logits_err = scaled_error(&logits, &golden["last_logits"]);
    eprintln!("SmolLM2 GGUF ({} tokens): loss {loss} vs HF {hf_loss} ({loss_err:.2e}), last logits {logits_err:.2e}", ids.len());
    assert!(loss_err < 3e-5, "loss {loss} vs {hf_loss}");
    assert!(logits_err < 4e-5, "last logits off by {logits_err:e} of scale");
}

// ---- performance sanity (not a test) ---------------------------------------------------------------------------

/// Forward + backward of SmolLM2-135M shapes (random init, f32) on one packed batch of 512 tokens:
///
///     cargo test --test models_golden -- --ignored --nocapture smollm2_shapes_throughput   # test profile is opt-level 3
///
/// Reports tokens/s and the GFLOP/s implied by the usual 6 N tokens estimate (N = 134.5M parameters; the
/// attention's own FLOPs are not counted), next to a GEMM measured at the same moment (the machine is shared, so
/// absolute figures move with its load) and a breakdown: decoder stack forward, fused lm_head + loss, attention.
/// Measured 2026-11-29 on 2 threads under a load average of ~4.5: 100-112 tokens/s, 80-90 GFLOP/s, while the
/// calibration GEMM ran at 94-128 GFLOP/s.
#[test]
#[ignore]
fn smollm2_shapes_throughput() {
    let config = ModelConfig::from_hf_json(&serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "rope_theta": 100000, "tie_word_embeddings": true, "hidden_act": "silu"
    }))
    .unwrap();
    let model = LlamaModel::random(config, &RandomInit::default()).unwrap();
    let params = model.num_parameters() as f64;
    // Two packed sequences of 256 tokens, every target valid.
    let sequences: Vec<Vec<u32>> = (0..2).map(|s| (0..256).map(|i| ((i * 7919 + s * 104_729) % 49152) as u32).collect()).collect();
    let batch = Batch::from_sequences(&sequences).unwrap();
    let labels: Vec<i64> = batch.tokens().iter().map(|&t| t as i64).collect();
    let tokens = batch.len() as f64;
    // Calibration under the same machine load: one MLP-shaped GEMM, [512, 576] x [1536, 576]^T (the weight read
    // through a transposed view, as the model does).
    let x = Tensor::randn(1, &[512, 576], 0.0, 1.0, DType::F32).unwrap();
    let w = Tensor::randn(2, &[1536, 576], 0.0, 0.02, DType::F32).unwrap();
    let gemm_start = std::time::Instant::now();
    for _ in 0..20 {
        x.matmul(&w.t().unwrap()).unwrap();
    }
    let gemm = 20.0 * 2.0 * 512.0 * 576.0 * 1536.0 / gemm_start.elapsed().as_secs_f64() / 1e9;
    eprintln!("calibration: a [512, 576] x [576, 1536] GEMM runs at {gemm:.1} GFLOP/s right now");
    // Where the forward goes: the decoder stack alone, and the fused lm_head + loss on its output.
    let timed = |f: &dyn Fn()| {
        let start = std::time::Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    let hidden = no_grad(|| model.forward_hidden(&batch)).unwrap();
    let stack = timed(&|| drop(no_grad(|| model.forward_hidden(&batch)).unwrap()));
    let targets = Tensor::from_vec(batch.shift_labels(&labels).unwrap(), &[batch.len()]).unwrap();
    let head = Var::param(model.lm_head_weight().value().clone());
    let hidden = Var::param(hidden.value().clone());
    let lce = timed(&|| drop(Var::linear_cross_entropy(&hidden, &head, &targets, -100, Reduction::Mean).unwrap()));
    eprintln!("decoder stack forward (no grad) {stack:.3} s; fused lm_head + loss with both gradients {lce:.3} s");
    let (q, k, v) = (
        Var::param(Tensor::randn(3, &[1, 512, 9, 64], 0.0, 1.0, DType::F32).unwrap()),
        Var::param(Tensor::randn(4, &[1, 512, 3, 64], 0.0, 1.0, DType::F32).unwrap()),
        Var::param(Tensor::randn(5, &[1, 512, 3, 64], 0.0, 1.0, DType::F32).unwrap()),
    );
    let opts = ferrotune_tensor::ops::AttentionOptions { causal: true, segment_ids: batch.segment_ids().cloned(), ..Default::default() };
    let attention = timed(&|| {
        for _ in 0..30 {
            Var::attention(&q, &k, &v, &opts).unwrap().sum_all().unwrap().backward().unwrap();
        }
    });
    let one_span = ferrotune_tensor::ops::AttentionOptions { causal: true, ..Default::default() };
    let attention_one_span = timed(&|| {
        for _ in 0..30 {
            Var::attention(&q, &k, &v, &one_span).unwrap().sum_all().unwrap().backward().unwrap();
        }
    });
    eprintln!(
        "attention forward + backward, 30 layers' worth: {attention:.3} s (2 segments of 256), {attention_one_span:.3} s \
         (one causal span of 512)"
    );
    let mut best = f64::INFINITY;
    for step in 0..4 {
        for (_, p) in model.parameters() {
            p.zero_grad();
        }
        let start = std::time::Instant::now();
        let fwd_start = std::time::Instant::now();
        let loss = model.loss(&batch, &labels).unwrap();
        let fwd = fwd_start.elapsed().as_secs_f64();
        loss.backward().unwrap();
        let total = start.elapsed().as_secs_f64();
        eprintln!(
            "step {step}: forward {fwd:.3} s, forward+backward {total:.3} s: {:.0} tokens/s, {:.1} GFLOP/s (6 N tokens)",
            tokens / total,
            6.0 * params * tokens / total / 1e9
        );
        if step > 0 {
            best = best.min(total);
        }
    }
    eprintln!(
        "best of 3: {:.0} tokens/s, {:.1} GFLOP/s for N = {:.1}M parameters, {} rayon threads",
        tokens / best,
        6.0 * params * tokens / best / 1e9,
        params / 1e6,
        rayon::current_num_threads()
    );
}
