//! One LoRA training step on the CUDA backend's code path (`FERROTUNE_CUDA_EMULATE=1`): adapters attached to a
//! tiny Llama on `Device::Cuda(0)`, forward + loss + backward through the kernels/*.cu kernels, one AdamW step,
//! and the next loss, each against the same step on `Device::Cpu`. The AdamW update itself runs on the host
//! (`Optimizer::step` reads the gradients back and writes the new values to the parameter's device); the fused
//! adamw.cu kernel is not wired into the optimizer yet.
//!
//! Tolerances as in crates/models/tests/cuda_emulation.rs (f32 on both sides, different summation orders,
//! ~1e-6 per op): each tensor within 1e-4 of its largest magnitude. After the step, AdamW's first update is
//! `lr * g / (|g| + eps)`, about `lr * sign(g)` for every element of lora_B: the same on both sides unless a
//! gradient element is within rounding of zero (none is here; the check would name it).

use ferrotune_autograd::Var;
use ferrotune_models::llama::{Batch, LlamaModel, RandomInit};
use ferrotune_models::ModelConfig;
use ferrotune_tensor::{Device, Tensor};
use ferrotune_train::{setup_lora, LoraSettings, Optimizer, OptimizerConfig, ParamGroup};
use std::sync::Once;

const CUDA: Device = Device::Cuda(0);
const TOL: f64 = 1e-4;

fn emulate() {
    static SET: Once = Once::new();
    SET.call_once(|| std::env::set_var("FERROTUNE_CUDA_EMULATE", "1"));
}

/// head_dim 64 (the flash-attention kernels' smallest), GQA 2:1, one layer.
fn tiny_lora_model() -> LlamaModel {
    let config = ModelConfig::from_hf_json(&serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 80, "hidden_size": 128, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
        "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu"
    }))
    .unwrap();
    let mut model = LlamaModel::random(config, &RandomInit { seed: 5, initializer_range: 0.1, ..RandomInit::default() }).unwrap();
    setup_lora(&mut model, &LoraSettings { rank: 4, ..LoraSettings::default() }).unwrap();
    model
}

#[track_caller]
fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.device(), CUDA, "{what}: not on the device");
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (got, want) = (got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
    let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f64, f64::max);
    assert!(worst <= TOL * scale, "{what}: max |cuda - cpu| = {worst:e}, max |cpu| = {scale:e}");
}

/// Loss, backward and one AdamW step on the adapters; returns the loss and the adapters' gradients before the
/// step (which replaces the leaves).
fn train_step(model: &mut LlamaModel, batch: &Batch, labels: &[i64]) -> (Var, Vec<(String, Option<Tensor>)>) {
    let loss = model.loss(batch, labels).unwrap();
    loss.backward().unwrap();
    let groups: Vec<(String, Vec<usize>, ParamGroup)> = model
        .lora_parameters()
        .into_iter()
        .map(|(name, v)| (name, v.shape().to_vec(), ParamGroup { lr_multiplier: 1.0, weight_decay: 0.01 }))
        .collect();
    let mut optimizer = Optimizer::new(OptimizerConfig::default(), &groups);
    let grads: Vec<(String, Option<Tensor>)> = model.lora_parameters().into_iter().map(|(n, v)| (n, v.grad())).collect();
    optimizer.step(&mut model.lora_parameters_mut(), 1e-2, 1.0).unwrap();
    (loss, grads)
}

#[test]
fn one_lora_step_matches_the_cpu() {
    emulate();
    let batch = Batch::from_sequences(&[vec![5u32, 17, 3, 79, 41, 2], vec![9, 60, 2, 71, 33]]).unwrap();
    let labels: Vec<i64> = vec![-100, -100, 3, 79, 41, 2, -100, 60, 2, 71, 33];
    let mut cpu = tiny_lora_model();
    let mut gpu = tiny_lora_model();
    gpu.to_device(CUDA).unwrap();
    let gpu_batch = batch.to_device(CUDA).unwrap();

    let (cpu_loss, cpu_grads) = train_step(&mut cpu, &batch, &labels);
    let (gpu_loss, gpu_grads) = train_step(&mut gpu, &gpu_batch, &labels);
    assert_close("loss", gpu_loss.value(), cpu_loss.value());
    assert!(!cpu_grads.is_empty());
    for ((name, want), (_, got)) in cpu_grads.iter().zip(&gpu_grads) {
        let (want, got) = (want.as_ref().expect("cpu gradient"), got.as_ref().unwrap_or_else(|| panic!("{name}: no cuda gradient")));
        // lora_A's gradient is exactly zero on the first step (lora_B starts at zero): compared as such.
        assert_close(&format!("grad {name}"), got, want);
    }
    for ((name, want), (_, got)) in cpu.lora_parameters().iter().zip(&gpu.lora_parameters()) {
        assert_close(&format!("{name} after the step"), got.value(), want.value());
    }
    // The base weights stayed frozen and on the device; the updated adapters change the next loss alike.
    assert!(gpu.parameters().iter().all(|(_, v)| !v.requires_grad() && v.value().device() == CUDA));
    let (cpu_next, gpu_next) = (cpu.loss(&batch, &labels).unwrap(), gpu.loss(&gpu_batch, &labels).unwrap());
    assert!((cpu_next.value().to_scalar::<f32>().unwrap() - cpu_loss.value().to_scalar::<f32>().unwrap()).abs() > 1e-4, "the step changed the loss");
    assert_close("loss after the step", gpu_next.value(), cpu_next.value());
}
