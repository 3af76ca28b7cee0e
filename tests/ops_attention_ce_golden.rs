//! Fused attention, cross-entropy and fused linear + cross-entropy against PyTorch autograd
//! (tests/golden/ops_attention_*.safetensors, ops_ce_*.safetensors, ops_ce_linear_*.safetensors, written by
//! scripts/golden/ops_attention_ce.py; see its docstring for what each case and each bf16 reference means).
//!
//! Tolerances (`|ours - torch| <= atol + rtol * |torch|`), per dtype, and why (observed worst errors from the
//! committed files in brackets):
//! - f64: atol 1e-13, rtol 1e-12. Same math, different summation order (128-key tiles and an online softmax vs
//!   one softmax): a few f64 ulps of values of order 1 [attention 3.1e-15, CE/FLCE 1.8e-15].
//! - f32 attention: atol 1e-5, rtol 2e-5. torch's CPU kernel also tiles and rescales, with its own tile sizes
//!   and summation order; gradients sum up to ~140 products of order 1, so results differ by tens of f32 ulps
//!   of values up to ~3 [1.4e-6].
//! - f32 CE/FLCE: losses and lse atol 1e-5, rtol 1e-5 [the sum over 12 rows of ~20: 3e-5, i.e. 1.1e-6
//!   relative]; gradients atol 1e-6, rtol 1e-5 [1.8e-8].
//! - bf16 attention: atol 2e-2, rtol 2^-6 (two to four bf16 ulps). Both sides read the same bf16 inputs and
//!   compute in f32, but torch rounds the probabilities to bf16 before `P @ V` (and its gradient products
//!   likewise), a 2^-8 relative error per term that ferrotune does not make; each output is then rounded to
//!   bf16 [one bf16 ulp: 1.6e-2 on values in [2, 4)]. lse is f32 on both sides: f32 loss tolerances [9.5e-7].
//! - bf16 CE/FLCE: the reference is the f32 loss of the bf16 inputs (what HF computes: logits upcast before the
//!   loss), so losses match at f32 precision (atol 1e-5, rtol 1e-5 [3e-5 on a sum of ~270]) and ferrotune's
//!   bf16 gradients are that f32 gradient rounded once, a relative error <= 2^-8 (bf16's unit roundoff):
//!   atol 1e-4, rtol 2^-7 [exactly the rounded reference in the worst case checked, 3.7e-4 on 0.134].

mod common;

use common::{assert_close, load_golden};
use ferrotune_tensor::ops::{
    attention, attention_backward, cross_entropy, cross_entropy_backward, linear_cross_entropy, AttentionOptions,
    Reduction, IGNORE_INDEX,
};
use ferrotune_tensor::{DType, Tensor};
use std::collections::HashMap;

const TAGS: [(&str, DType); 3] = [("f64", DType::F64), ("f32", DType::F32), ("bf16", DType::BF16)];

/// `(atol, rtol)` for attention outputs and gradients in `dtype`.
fn attention_tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-13, 1e-12),
        DType::F32 => (1e-5, 2e-5),
        _ => (2e-2, 1.0 / 64.0),
    }
}

/// `(atol, rtol)` for losses and lse (computed in f32 for bf16 inputs) in `dtype`.
fn loss_tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-13, 1e-12),
        _ => (1e-5, 1e-5),
    }
}

/// `(atol, rtol)` for CE / FLCE gradients in `dtype`.
fn ce_grad_tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-13, 1e-12),
        DType::F32 => (1e-6, 1e-5),
        _ => (1e-4, 1.0 / 128.0),
    }
}

fn get<'a>(g: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    g.get(key).unwrap_or_else(|| panic!("golden tensor {key} missing; regenerate with scripts/golden/ops_attention_ce.py"))
}

#[test]
fn attention_matches_pytorch_sdpa() {
    for (tag, dtype) in TAGS {
        let (g, meta) = load_golden(&format!("ops_attention_{tag}"));
        for case in ["gqa", "kvcache", "packed", "bidir"] {
            let key = |name: &str| format!("attention.{case}.{name}");
            let (q, k, v) = (get(&g, &key("q")), get(&g, &key("k")), get(&g, &key("v")));
            assert_eq!(q.dtype(), dtype);
            let scale = match meta[&key("scale")].as_str() {
                "default" => None,
                s => Some(s.parse::<f64>().unwrap()),
            };
            let opts = AttentionOptions { causal: meta[&key("causal")] == "1", scale, segment_ids: g.get(&key("segment_ids")).cloned() };
            let what = |name: &str| format!("{tag} {case} {name}");
            let (atol, rtol) = attention_tol(dtype);
            let (out, lse) = attention(q, k, v, &opts).unwrap();
            assert_close(&what("out"), &out, get(&g, &key("out")), atol, rtol);
            let (latol, lrtol) = loss_tol(dtype);
            assert_close(&what("lse"), &lse, get(&g, &key("lse")), latol, lrtol);
            let (dq, dk, dv) = attention_backward(q, k, v, &out, &lse, get(&g, &key("grad_out")), &opts).unwrap();
            assert_close(&what("grad_q"), &dq, get(&g, &key("grad_q")), atol, rtol);
            assert_close(&what("grad_k"), &dk, get(&g, &key("grad_k")), atol, rtol);
            assert_close(&what("grad_v"), &dv, get(&g, &key("grad_v")), atol, rtol);
        }
    }
}

#[test]
fn cross_entropy_matches_pytorch() {
    for (tag, dtype) in TAGS {
        let (g, _) = load_golden(&format!("ops_ce_{tag}"));
        let (logits, targets) = (get(&g, "ce.logits"), get(&g, "ce.targets"));
        assert_eq!(logits.dtype(), dtype);
        let (latol, lrtol) = loss_tol(dtype);
        let mean = cross_entropy(logits, targets, IGNORE_INDEX, Reduction::Mean).unwrap();
        let sum = cross_entropy(logits, targets, IGNORE_INDEX, Reduction::Sum).unwrap();
        assert_close(&format!("{tag} ce loss mean"), &mean.loss, get(&g, "ce.loss_mean"), latol, lrtol);
        assert_close(&format!("{tag} ce loss sum"), &sum.loss, get(&g, "ce.loss_sum"), latol, lrtol);
        assert_close(&format!("{tag} ce lse"), &mean.lse, get(&g, "ce.lse"), latol, lrtol);
        let grad = cross_entropy_backward(logits, targets, &mean.lse, IGNORE_INDEX, Reduction::Mean, mean.n_valid, 1.0).unwrap();
        assert_eq!(grad.dtype(), dtype);
        let (gatol, grtol) = ce_grad_tol(dtype);
        assert_close(&format!("{tag} ce grad"), &grad, get(&g, "ce.grad_mean"), gatol, grtol);
        if dtype == DType::BF16 {
            // torch's own bf16 cross-entropy returns a bf16 loss: ours is within that one rounding (2^-8 relative).
            let native = get(&g, "ce.loss_mean_native");
            let native_ulp = native.to_vec_f64().unwrap()[0].abs() / 256.0;
            assert_close("bf16 ce loss vs torch bf16 loss", &mean.loss, native, native_ulp, 0.0);
        }
    }
}

#[test]
fn linear_cross_entropy_matches_pytorch() {
    for (tag, dtype) in TAGS {
        let (g, _) = load_golden(&format!("ops_ce_linear_{tag}"));
        let (hidden, weight, targets) = (get(&g, "flce.hidden"), get(&g, "flce.weight"), get(&g, "flce.targets"));
        let (latol, lrtol) = loss_tol(dtype);
        let (gatol, grtol) = ce_grad_tol(dtype);
        let mean = linear_cross_entropy(hidden, weight, targets, IGNORE_INDEX, Reduction::Mean, true).unwrap();
        assert_close(&format!("{tag} flce loss mean"), &mean.loss, get(&g, "flce.loss_mean"), latol, lrtol);
        assert_close(&format!("{tag} flce grad_hidden"), &mean.grad_hidden, get(&g, "flce.grad_hidden_mean"), gatol, grtol);
        let grad_weight = mean.grad_weight.expect("asked for grad_weight");
        assert_close(&format!("{tag} flce grad_weight"), &grad_weight, get(&g, "flce.grad_weight_mean"), gatol, grtol);
        // Sum: the loss sums instead of averaging, the gradients are n_valid times the mean's.
        let sum = linear_cross_entropy(hidden, weight, targets, IGNORE_INDEX, Reduction::Sum, false).unwrap();
        assert!(sum.grad_weight.is_none());
        assert_close(&format!("{tag} flce loss sum"), &sum.loss, get(&g, "flce.loss_sum"), latol, lrtol);
        let n = sum.n_valid as f64;
        let want = get(&g, "flce.grad_hidden_mean").scale(n).unwrap();
        assert_close(&format!("{tag} flce grad_hidden (sum)"), &sum.grad_hidden, &want, gatol * n, grtol);
        if dtype == DType::BF16 {
            // The unfused bf16 lm_head rounds each logit (std 2 here) to bf16 before the loss, moving it by up to
            // 2^-8 |z|; the fused loss never rounds them. Averaged over rows the two differ by ~1e-4 [6.5e-5]: a
            // bound of 6e-3 (the rounding of a logit of 1.5) says the paths agree to bf16 precision.
            assert_close("bf16 flce vs bf16-logits path", &mean.loss, get(&g, "flce.loss_mean_bf16_logits"), 6e-3, 0.0);
        }
    }
}

/// Not a check: the timings for the kernels' report, in f32 at 1 and 2 threads, against ~75 GFLOP/s per core.
/// Run with `cargo test --release --test ops_attention_ce_golden -- --ignored --nocapture timing`.
///
/// FLOP counts are the useful ones: causal attention forward `2 * B * Hq * T^2 * D` (half of `QK^T` and `PV`),
/// backward 2.5 times that (five products instead of two); the fused linear + CE `3 * 2 * N * H * V` (logits,
/// grad_hidden, grad_weight). Each line gives the best wall time and the best CPU time summed over the pool's
/// threads (Linux schedstat), so "per core" stays meaningful when other processes share the machine.
#[test]
#[ignore]
fn timing_attention_and_linear_cross_entropy() {
    /// CPU seconds the calling thread has run (Linux; 0 elsewhere).
    fn thread_cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        stat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).map_or(0.0, |ns| ns as f64 * 1e-9)
    }
    fn pool_cpu_seconds() -> f64 {
        rayon::broadcast(|_| thread_cpu_seconds()).iter().sum()
    }
    /// (best wall seconds, best CPU seconds) over `runs`.
    fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, f64) {
        let (mut wall, mut cpu) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..runs {
            let (start, cpu_start) = (std::time::Instant::now(), pool_cpu_seconds());
            std::hint::black_box(f());
            wall = wall.min(start.elapsed().as_secs_f64());
            cpu = cpu.min(pool_cpu_seconds() - cpu_start);
        }
        (wall, cpu)
    }
    let report = |what: &str, threads: usize, flops: f64, (wall, cpu): (f64, f64)| {
        println!(
            "{what}, {threads} thread(s): {:.1} ms wall = {:.1} GFLOP/s; {:.1} ms CPU = {:.1} GFLOP/s per core ({:.0}% of 75)",
            wall * 1e3, flops / wall / 1e9, cpu * 1e3, flops / cpu / 1e9, 100.0 * flops / cpu / 1e9 / 75.0
        );
    };
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            for t in [256, 1024] {
                let (b, hq, hkv, d) = (4, 9, 3, 64);
                let q = Tensor::randn(1, &[b, t, hq, d], 0.0, 1.0, DType::F32).unwrap();
                let k = Tensor::randn(2, &[b, t, hkv, d], 0.0, 1.0, DType::F32).unwrap();
                let v = Tensor::randn(3, &[b, t, hkv, d], 0.0, 1.0, DType::F32).unwrap();
                let g = Tensor::randn(4, &[b, t, hq, d], 0.0, 1.0, DType::F32).unwrap();
                let opts = AttentionOptions { causal: true, ..Default::default() };
                let (out, lse) = attention(&q, &k, &v, &opts).unwrap();
                let runs = if t > 256 { 3 } else { 10 };
                let fwd = best_of(runs, || attention(&q, &k, &v, &opts).unwrap());
                let bwd = best_of(runs, || attention_backward(&q, &k, &v, &out, &lse, &g, &opts).unwrap());
                let flops = 2.0 * (b * hq * t * t * d) as f64;
                let shape = format!("B={b} T={t} Hq={hq} Hkv={hkv} D={d} causal");
                report(&format!("attention forward  {shape}"), threads, flops, fwd);
                report(&format!("attention backward {shape}"), threads, 2.5 * flops, bwd);
                report(&format!("attention fwd+bwd  {shape}"), threads, 3.5 * flops, (fwd.0 + bwd.0, fwd.1 + bwd.1));
            }
            let (n, h, vocab) = (1024, 576, 49152);
            let hidden = Tensor::randn(5, &[n, h], 0.0, 1.0, DType::F32).unwrap();
            let weight = Tensor::randn(6, &[vocab, h], 0.0, 0.02, DType::F32).unwrap();
            let targets = Tensor::from_vec((0..n as i64).map(|i| (i * 7919) % vocab as i64).collect::<Vec<_>>(), &[n]).unwrap();
            let time = best_of(2, || linear_cross_entropy(&hidden, &weight, &targets, IGNORE_INDEX, Reduction::Mean, true).unwrap());
            report(&format!("linear_cross_entropy N={n} H={h} V={vocab}"), threads, 6.0 * (n * h * vocab) as f64, time);
        });
    }
}
