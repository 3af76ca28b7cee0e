//! The whole Llama model on the CUDA backend's code path (`FERROTUNE_CUDA_EMULATE=1`: `Device::Cuda(0)` runs the
//! real kernels/*.cu kernels on the host emulation): a tiny model's logits, loss and every parameter gradient
//! against the same model on `Device::Cpu` (the reference; itself checked against PyTorch by tests/models_golden.rs).
//!
//! Tolerances. Both sides compute in f32, in different orders: the device's block-tree reductions, 16x16 GEMM
//! tiles, 32-key attention tiles and atomics against the CPU's blocked GEMM and in-order sums. Each op's results
//! agree to ~1e-6 relative (crates/tensor/tests/cuda_emulation.rs); through two layers of forward and backward
//! (some 40 ops deep) these differences add up and are amplified where gradients cancel, so each tensor is
//! compared as a whole: max |cuda - cpu| <= 1e-4 * max |cpu| (observed: at most 2.4e-6, in q_proj's gradient;
//! the margin leaves room for a GPU's fast-math exp and FMA contraction).

use ferrotune_models::llama::{Batch, LlamaModel, RandomInit};
use ferrotune_models::ModelConfig;
use ferrotune_tensor::{Device, Tensor};
use std::sync::Once;

const CUDA: Device = Device::Cuda(0);
const TOL: f64 = 1e-4;

fn emulate() {
    static SET: Once = Once::new();
    SET.call_once(|| std::env::set_var("FERROTUNE_CUDA_EMULATE", "1"));
}

/// The smallest Llama the flash-attention kernels take: head_dim 64 (their smallest), 2 query heads on 1 kv head
/// (GQA), two layers, untied lm_head.
fn tiny_config() -> ModelConfig {
    ModelConfig::from_hf_json(&serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 128, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
        "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "hidden_act": "silu"
    }))
    .unwrap()
}

/// A seeded model with weights large enough (std 0.1) that attention is not uniform and every gradient is far
/// from zero.
fn tiny_model() -> LlamaModel {
    LlamaModel::random(tiny_config(), &RandomInit { seed: 11, initializer_range: 0.1, ..RandomInit::default() }).unwrap()
}

#[track_caller]
fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.device(), CUDA, "{what}: not computed on the device");
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (got, want) = (got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
    let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f64, f64::max);
    assert!(scale > 0.0, "{what}: the reference is all zeros, the comparison would prove nothing");
    assert!(worst <= TOL * scale, "{what}: max |cuda - cpu| = {worst:e}, {:e} of max |cpu| = {scale:e}", worst / scale);
}

#[test]
fn tiny_llama_forward_loss_and_gradients_match_the_cpu() {
    emulate();
    // Two packed sequences (segment ids: the device runs them as varlen cu_seqlens) with a prompt token masked.
    let batch = Batch::from_sequences(&[vec![5u32, 17, 3, 88, 41], vec![9, 60, 2, 2, 71, 33, 95]]).unwrap();
    let labels: Vec<i64> = vec![-100, 17, 3, 88, 41, -100, 60, 2, 2, 71, 33, 95];
    let cpu = tiny_model();
    let mut gpu = tiny_model();
    gpu.to_device(CUDA).unwrap();
    let gpu_batch = batch.to_device(CUDA).unwrap();

    assert_close("logits", gpu.logits(&gpu_batch).unwrap().value(), cpu.logits(&batch).unwrap().value());

    let (cpu_loss, gpu_loss) = (cpu.loss(&batch, &labels).unwrap(), gpu.loss(&gpu_batch, &labels).unwrap());
    assert_close("loss", gpu_loss.value(), cpu_loss.value());
    cpu_loss.backward().unwrap();
    gpu_loss.backward().unwrap();
    let (cpu_params, gpu_params) = (cpu.parameters(), gpu.parameters());
    assert_eq!(cpu_params.len(), gpu_params.len());
    for ((name, want), (_, got)) in cpu_params.iter().zip(&gpu_params) {
        let (want, got) = (want.grad().unwrap_or_else(|| panic!("{name}: no cpu gradient")), got.grad().unwrap_or_else(|| panic!("{name}: no cuda gradient")));
        assert_close(&format!("grad {name}"), &got, &want);
    }
}
