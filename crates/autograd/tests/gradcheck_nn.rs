//! The fused blocks through autograd, against central finite differences in f64 (same tolerance reasoning as
//! gradcheck_basic.rs), and a tiny Llama-style decoder block end to end.

use ferrotune_autograd::{check_gradients, Var};
use ferrotune_tensor::ops::{AttentionOptions, Reduction, RopeScaling, RopeTable, IGNORE_INDEX};
use ferrotune_tensor::{DType, Result, Tensor};
use std::sync::Arc;

const H: f64 = 1e-6;
const TOL: f64 = 1e-6;

fn randn(seed: u64, shape: &[usize], std: f64) -> Tensor {
    Tensor::randn(seed, shape, 0.0, std, DType::F64).unwrap()
}

#[track_caller]
fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Var]) -> Result<Var>) {
    let report = check_gradients(inputs, H, f).unwrap();
    assert!(report.max_error < TOL, "{name}: gradient mismatch {report:?}");
}

#[test]
fn rms_norm_swiglu_softmax() {
    let x = randn(1, &[2, 3, 8], 1.0);
    let w = Tensor::rand_uniform(2, &[8], 0.5, 1.5, DType::F64).unwrap();
    check("rms_norm", &[x.clone(), w], |v| v[0].rms_norm(&v[1], 1e-6));
    check("swiglu", &[x.clone(), randn(3, &[2, 3, 8], 1.0)], |v| v[0].swiglu(&v[1]));
    check("softmax", &[x.clone()], |v| v[0].softmax_last());
    check("log_softmax", &[x.clone()], |v| v[0].log_softmax_last());
    check("dropout", &[x], |v| v[0].dropout(0.25, 42));
}

#[test]
fn rope_with_packed_positions() {
    let x = randn(4, &[2, 5, 3, 8], 1.0);
    let table = Arc::new(RopeTable::new(8, 10_000.0, &RopeScaling::None, 32, 5).unwrap());
    let positions = Tensor::from_vec(vec![0i64, 1, 2, 0, 1, 0, 1, 2, 3, 4], &[2, 5]).unwrap();
    check("rope", &[x], move |v| v[0].rope(&table, &positions));
}

#[test]
fn attention_gqa_causal_and_packed() {
    let q = randn(5, &[2, 6, 4, 8], 1.0);
    let k = randn(6, &[2, 6, 2, 8], 1.0);
    let v = randn(7, &[2, 6, 2, 8], 1.0);
    let opts = AttentionOptions { causal: true, ..Default::default() };
    check("attention", &[q.clone(), k.clone(), v.clone()], move |x| Var::attention(&x[0], &x[1], &x[2], &opts));
    let segments = Tensor::from_vec(vec![1i64, 1, 1, 2, 2, 2, 1, 1, 2, 2, 2, 2], &[2, 6]).unwrap();
    let packed = AttentionOptions { causal: true, segment_ids: Some(segments), ..Default::default() };
    check("attention packed", &[q, k, v], move |x| Var::attention(&x[0], &x[1], &x[2], &packed));
}

#[test]
fn cross_entropy_and_fused_linear_cross_entropy() {
    let logits = randn(8, &[5, 11], 1.0);
    let targets = Tensor::from_vec(vec![3i64, IGNORE_INDEX, 0, 10, 7], &[5]).unwrap();
    let t = targets.clone();
    check("cross_entropy mean", &[logits.clone()], move |v| v[0].cross_entropy(&t, IGNORE_INDEX, Reduction::Mean));
    let t = targets.clone();
    check("cross_entropy sum", &[logits], move |v| v[0].cross_entropy(&t, IGNORE_INDEX, Reduction::Sum));
    let hidden = randn(9, &[5, 6], 1.0);
    let weight = randn(10, &[11, 6], 0.5);
    check("linear_cross_entropy", &[hidden, weight], move |v| {
        // Scale the loss so the upstream gradient is not 1 and the backward's scaling is exercised.
        Var::linear_cross_entropy(&v[0], &v[1], &targets, IGNORE_INDEX, Reduction::Mean)?.scale(1.7)
    });
}

/// One Llama decoder block (pre-norm attention with RoPE and GQA, pre-norm SwiGLU MLP, residuals) and a
/// tied-embedding cross-entropy head: every parameter's gradient through the whole chain.
#[test]
fn tiny_llama_block_end_to_end() {
    let (b, t, hidden, heads, kv_heads, head_dim, inter, vocab) = (1, 4, 8, 2, 1, 4, 12, 10);
    let ids = Tensor::from_vec(vec![1i64, 4, 2, 9], &[b, t]).unwrap();
    let targets = Tensor::from_vec(vec![4i64, 2, 9, IGNORE_INDEX], &[b * t]).unwrap();
    let positions = Tensor::from_vec(vec![0i64, 1, 2, 3], &[t]).unwrap();
    let table = Arc::new(RopeTable::new(head_dim, 10_000.0, &RopeScaling::None, 16, t).unwrap());
    let params = vec![
        randn(20, &[vocab, hidden], 0.5),                  // 0 embed (tied lm head)
        Tensor::rand_uniform(21, &[hidden], 0.5, 1.5, DType::F64).unwrap(), // 1 input norm
        randn(22, &[heads * head_dim, hidden], 0.3),       // 2 q
        randn(23, &[kv_heads * head_dim, hidden], 0.3),    // 3 k
        randn(24, &[kv_heads * head_dim, hidden], 0.3),    // 4 v
        randn(25, &[hidden, heads * head_dim], 0.3),       // 5 o
        Tensor::rand_uniform(26, &[hidden], 0.5, 1.5, DType::F64).unwrap(), // 6 post-attention norm
        randn(27, &[inter, hidden], 0.3),                  // 7 gate
        randn(28, &[inter, hidden], 0.3),                  // 8 up
        randn(29, &[hidden, inter], 0.3),                  // 9 down
        Tensor::rand_uniform(30, &[hidden], 0.5, 1.5, DType::F64).unwrap(), // 10 final norm
    ];
    check("llama block", &params, move |p| {
        let x = p[0].embedding(&ids)?; // [b, t, hidden]
        let h = x.rms_norm(&p[1], 1e-6)?;
        let q = h.matmul(&p[2].t()?)?.reshape(&[b, t, heads, head_dim])?.rope(&table, &positions)?;
        let k = h.matmul(&p[3].t()?)?.reshape(&[b, t, kv_heads, head_dim])?.rope(&table, &positions)?;
        let v = h.matmul(&p[4].t()?)?.reshape(&[b, t, kv_heads, head_dim])?;
        let attn = Var::attention(&q, &k, &v, &AttentionOptions { causal: true, ..Default::default() })?;
        let x = x.add(&attn.reshape(&[b, t, heads * head_dim])?.matmul(&p[5].t()?)?)?;
        let h = x.rms_norm(&p[6], 1e-6)?;
        let mlp = h.matmul(&p[7].t()?)?.swiglu(&h.matmul(&p[8].t()?)?)?.matmul(&p[9].t()?)?;
        let x = x.add(&mlp)?.rms_norm(&p[10], 1e-6)?;
        Var::linear_cross_entropy(&x.reshape(&[b * t, hidden])?, &p[0], &targets, IGNORE_INDEX, Reduction::Mean)
    });
}
