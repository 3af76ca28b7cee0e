//! The CUDA backend's code path on the host emulation of its kernels (`FERROTUNE_CUDA_EMULATE=1`): each test
//! runs the same Tensor-level op on `Device::Cpu` (the reference, itself checked against PyTorch by the golden
//! tests in the root tests/) and on the emulated `Device::Cuda(0)`, and compares.
//!
//! Tolerances: copies, casts and fills are exact (same rounding, round to nearest even, on both sides). Pointwise
//! f32: both compute in f32, but libm vs. the kernel's math functions and f64 vs. f32 affine parameters differ by an
//! ulp or two: 1e-6 relative. Pointwise bf16: one bf16 ulp (8e-3) for values straddling a rounding boundary.
//! Sums: the CPU accumulates in f64, the kernel in f32 over a block tree; relative 1e-5 of 1 + |expected| covers
//! f32 rounding on rows of up to ~800 unit-normal terms (observed ~1e-7). bf16 sums round once to bf16 on both
//! sides from slightly different f32 values: one bf16 ulp, 2^-8 relative, so 8e-3.

use ferrotune_tensor::backend::ReduceOp;
use ferrotune_tensor::{DType, Device, Error, Tensor};
use std::sync::Once;

const CUDA: Device = Device::Cuda(0);

/// Selects the emulation for this test binary (tests run in parallel; the variable is set once, before any op).
fn emulate() {
    static SET: Once = Once::new();
    SET.call_once(|| std::env::set_var("FERROTUNE_CUDA_EMULATE", "1"));
}

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    Tensor::randn(seed, shape, 0.0, 1.0, DType::F32).unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.device(), CUDA, "{what}: result left the device");
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let got = got.to_device(Device::Cpu).unwrap().to_vec_f64().unwrap();
    let want = want.to_vec_f64().unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: cuda {g} vs cpu {w}");
    }
}

#[test]
fn transfers_and_zeros_round_trip() {
    emulate();
    let x = randn(1, &[3, 5]);
    assert_close("to_device", &x.to_device(CUDA).unwrap(), &x, 0.0);
    for dtype in [DType::F32, DType::BF16] {
        let z = Tensor::zeros(&[4, 7], dtype, CUDA).unwrap();
        assert_close("zeros", &z, &Tensor::zeros(&[4, 7], dtype, Device::Cpu).unwrap(), 0.0);
    }
    let ids = Tensor::from_vec(vec![3i64, 1, 4], &[3]).unwrap();
    assert_eq!(ids.to_device(CUDA).unwrap().to_device(Device::Cpu).unwrap().to_vec::<i64>().unwrap(), vec![3, 1, 4]);
}

#[test]
fn strided_views_copy_like_the_cpu() {
    emulate();
    let x = randn(2, &[2, 3, 4, 5]);
    let on_gpu = x.to_device(CUDA).unwrap();
    let views: [(&str, fn(&Tensor) -> Tensor); 4] = [
        ("transpose", |t| t.transpose(1, 3).unwrap()),
        ("permute", |t| t.permute(&[3, 0, 2, 1]).unwrap()),
        ("narrow", |t| t.narrow(2, 1, 2).unwrap().narrow(3, 2, 3).unwrap()),
        ("broadcast", |t| t.narrow(1, 0, 1).unwrap().broadcast_as(&[2, 6, 4, 5]).unwrap()),
    ];
    for (name, view) in views {
        assert_close(name, &view(&on_gpu).contiguous().unwrap(), &view(&x).contiguous().unwrap(), 0.0);
        let bf = x.to_dtype(DType::BF16).unwrap();
        let bf_gpu = bf.to_device(CUDA).unwrap();
        assert_close(name, &view(&bf_gpu).contiguous().unwrap(), &view(&bf).contiguous().unwrap(), 0.0);
    }
}

/// `cat` copies views into place with the strided-copy kernel: exact.
#[test]
fn cat_matches_the_cpu() {
    emulate();
    let (a, b) = (randn(40, &[2, 3, 4]), randn(41, &[2, 5, 4]).narrow(1, 1, 3).unwrap());
    for dtype in [DType::F32, DType::BF16] {
        let (a, b) = (a.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap());
        let (ga, gb) = (a.to_device(CUDA).unwrap(), b.to_device(CUDA).unwrap());
        for dim in [0, 1, 2] {
            let want = Tensor::cat(&[&a, &b, &a], dim).unwrap();
            assert_close(&format!("cat dim {dim} {dtype}"), &Tensor::cat(&[&ga, &gb, &ga], dim).unwrap(), &want, 0.0);
        }
    }
    match Tensor::cat(&[&a, &b.to_device(CUDA).unwrap()], 0) {
        Err(Error::DeviceMismatch { op: "cat", .. }) => {}
        other => panic!("expected cat's DeviceMismatch for a cpu and a cuda tensor, got {other:?}"),
    }
}

#[test]
fn casts_match_the_cpu() {
    emulate();
    // Scaled so the values spread over many binades and most f32s round to bf16.
    let x = randn(3, &[6, 33]).scale(100.0).unwrap();
    let gpu = x.to_device(CUDA).unwrap();
    let bf_cpu = x.to_dtype(DType::BF16).unwrap();
    let bf_gpu = gpu.to_dtype(DType::BF16).unwrap();
    assert_close("f32->bf16", &bf_gpu, &bf_cpu, 0.0);
    assert_close("bf16->f32", &bf_gpu.to_dtype(DType::F32).unwrap(), &bf_cpu.to_dtype(DType::F32).unwrap(), 0.0);
    // A strided source is gathered first.
    assert_close("t().to_dtype", &gpu.t().unwrap().to_dtype(DType::BF16).unwrap(), &x.t().unwrap().to_dtype(DType::BF16).unwrap(), 0.0);
}

#[test]
fn sums_and_maxes_match_the_cpu() {
    emulate();
    let x = randn(4, &[3, 4, 70]);
    let gpu = x.to_device(CUDA).unwrap();
    for dims in [vec![2], vec![0], vec![0, 2], vec![0, 1, 2]] {
        for (op, name) in [(ReduceOp::Sum, "sum"), (ReduceOp::Max, "max"), (ReduceOp::Min, "min")] {
            let what = format!("{name} over {dims:?}");
            assert_close(&what, &gpu.reduce_keepdim(&dims, op).unwrap(), &x.reduce_keepdim(&dims, op).unwrap(), 1e-5);
            let bf = x.to_dtype(DType::BF16).unwrap();
            let got = bf.to_device(CUDA).unwrap().reduce_keepdim(&dims, op).unwrap();
            assert_close(&format!("bf16 {what}"), &got, &bf.reduce_keepdim(&dims, op).unwrap(), 8e-3);
        }
    }
    assert_close("sum of a transposed view", &gpu.transpose(0, 2).unwrap().sum_keepdim(&[0]).unwrap(), &x.transpose(0, 2).unwrap().sum_keepdim(&[0]).unwrap(), 1e-5);
}

#[test]
fn pointwise_ops_match_the_cpu() {
    emulate();
    use ferrotune_tensor::{BinaryOp, UnaryOp};
    // Positive inputs for log / sqrt / recip / powf; mixed signs (and exact zeros) for the rest.
    let x = randn(6, &[4, 37]);
    let positive = x.unary(UnaryOp::Abs).unwrap().affine(1.0, 0.5).unwrap();
    let unary = [
        UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Sqr, UnaryOp::Abs, UnaryOp::Tanh, UnaryOp::Sin, UnaryOp::Cos,
        UnaryOp::Sigmoid, UnaryOp::Silu, UnaryOp::Relu, UnaryOp::Step, UnaryOp::Sign,
    ];
    for dtype in [DType::F32, DType::BF16] {
        let tol = if dtype == DType::F32 { 1e-6 } else { 8e-3 };
        let (x, positive) = (x.to_dtype(dtype).unwrap(), positive.to_dtype(dtype).unwrap());
        let (gx, gp) = (x.to_device(CUDA).unwrap(), positive.to_device(CUDA).unwrap());
        for op in unary {
            assert_close(&format!("{op:?} {dtype}"), &gx.t().unwrap().unary(op).unwrap(), &x.t().unwrap().unary(op).unwrap(), tol);
        }
        for op in [UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Recip] {
            assert_close(&format!("{op:?} {dtype}"), &gp.unary(op).unwrap(), &positive.unary(op).unwrap(), tol);
        }
        assert_close(&format!("affine {dtype}"), &gx.affine(-1.5, 0.25).unwrap(), &x.affine(-1.5, 0.25).unwrap(), tol);
        assert_close(&format!("powf {dtype}"), &gp.powf(-0.5).unwrap(), &positive.powf(-0.5).unwrap(), tol);
        let row = x.narrow(0, 1, 1).unwrap();
        let grow = gx.narrow(0, 1, 1).unwrap();
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum, BinaryOp::Minimum] {
            // rhs broadcast from one row: the stride-0 view is gathered on the device.
            let (want, got) = (x.binary(&positive.narrow(0, 2, 1).unwrap(), op).unwrap(), gx.binary(&gp.narrow(0, 2, 1).unwrap(), op).unwrap());
            assert_close(&format!("{op:?} {dtype}"), &got, &want, tol);
            assert_close(&format!("{op:?} {dtype} row"), &grow.binary(&gx, op).unwrap(), &row.binary(&x, op).unwrap(), tol);
        }
    }
}

/// Matmul sums k products in f32 on both sides, in a different order: 1e-5 relative covers k = 45 unit-normal
/// terms; bf16 results round once to bf16 from f32 sums that differ by that much: one bf16 ulp, 8e-3.
#[test]
fn matmuls_match_the_cpu() {
    emulate();
    let (a, b) = (randn(7, &[3, 17, 45]), randn(8, &[3, 45, 21]));
    let weight = randn(9, &[21, 45]); // [out, in] as a linear layer's weight: x W^T through a transposed view
    for dtype in [DType::F32, DType::BF16] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 8e-3 };
        let (a, b, weight) = (a.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap(), weight.to_dtype(dtype).unwrap());
        let (ga, gb, gw) = (a.to_device(CUDA).unwrap(), b.to_device(CUDA).unwrap(), weight.to_device(CUDA).unwrap());
        assert_close(&format!("batched {dtype}"), &ga.matmul(&gb).unwrap(), &a.matmul(&b).unwrap(), tol);
        assert_close(&format!("x W^T {dtype}"), &ga.matmul(&gw.t().unwrap()).unwrap(), &a.matmul(&weight.t().unwrap()).unwrap(), tol);
        let (a2, ga2) = (a.narrow(0, 1, 1).unwrap().squeeze(0).unwrap(), ga.narrow(0, 1, 1).unwrap().squeeze(0).unwrap());
        assert_close(&format!("2-D {dtype}"), &ga2.matmul(&gw.t().unwrap()).unwrap(), &a2.matmul(&weight.t().unwrap()).unwrap(), tol);
    }
}

#[test]
fn embedding_lookup_and_gradient_match_the_cpu() {
    emulate();
    let table = randn(10, &[11, 24]);
    let ids = Tensor::from_vec(vec![3i64, 0, 10, 3, 7, 3, 1, 9], &[2, 4]).unwrap();
    let gids = ids.to_device(CUDA).unwrap();
    let grad = randn(11, &[2, 4, 24]);
    for dtype in [DType::F32, DType::BF16] {
        let (table, grad) = (table.to_dtype(dtype).unwrap(), grad.to_dtype(dtype).unwrap());
        let gtable = table.to_device(CUDA).unwrap();
        assert_close(&format!("index_select {dtype}"), &gtable.index_select(&gids).unwrap(), &table.index_select(&ids).unwrap(), 0.0);
        // Repeated ids sum in f32 atomics on the device, in id order on the CPU: f32 rounding of a 3-term sum
        // (1e-6), then for bf16 one rounding to bf16 of sums that may straddle a boundary (8e-3).
        let tol = if dtype == DType::F32 { 1e-6 } else { 8e-3 };
        let got = grad.to_device(CUDA).unwrap().index_add_rows(&gids, 11).unwrap();
        assert_close(&format!("index_add {dtype}"), &got, &grad.index_add_rows(&ids, 11).unwrap(), tol);
    }
    let bad = Tensor::from_vec(vec![2i64, 11], &[2]).unwrap().to_device(CUDA).unwrap();
    match table.to_device(CUDA).unwrap().index_select(&bad) {
        Err(Error::IndexOutOfRange { op: "index_select", index: 11, size: 11 }) => {}
        other => panic!("expected index_select's IndexOutOfRange for id 11, got {other:?}"),
    }
}

/// SwiGLU: f32 math on both sides; libm expf vs. the kernel's `__expf` (exact on the host emulation, an ulp or two
/// on a GPU): 1e-6 relative in f32, one bf16 ulp (8e-3) in bf16.
#[test]
fn swiglu_forward_and_backward_match_the_cpu() {
    emulate();
    let (gate, up, grad) = (randn(12, &[3, 40]), randn(13, &[3, 40]), randn(14, &[3, 40]));
    for dtype in [DType::F32, DType::BF16] {
        let tol = if dtype == DType::F32 { 1e-6 } else { 8e-3 };
        let [gate, up, grad] = [&gate, &up, &grad].map(|t| t.to_dtype(dtype).unwrap());
        let [gg, gu, gd] = [&gate, &up, &grad].map(|t| t.to_device(CUDA).unwrap());
        let want = ferrotune_tensor::ops::swiglu(&gate, &up).unwrap();
        assert_close(&format!("swiglu {dtype}"), &ferrotune_tensor::ops::swiglu(&gg, &gu).unwrap(), &want, tol);
        let (want_g, want_u) = ferrotune_tensor::ops::swiglu_backward(&gate, &up, &grad).unwrap();
        let (got_g, got_u) = ferrotune_tensor::ops::swiglu_backward(&gg, &gu, &gd).unwrap();
        assert_close(&format!("swiglu d gate {dtype}"), &got_g, &want_g, tol);
        assert_close(&format!("swiglu d up {dtype}"), &got_u, &want_u, tol);
    }
}

/// RMSNorm: both sides compute in f32 (the kernel sums x^2 over a block tree, the CPU in order) and round once:
/// 1e-5 relative for rows of 72 terms; the weight gradient sums 5 rows in f32 atomics vs. in order on the CPU,
/// same bound. bf16: one bf16 ulp (8e-3) for results next to a rounding boundary. The mixed case (bf16
/// activations, f32 weight) computes in f32 on both sides and rounds the output to bf16: one ulp again.
#[test]
fn rms_norm_forward_and_backward_match_the_cpu() {
    emulate();
    use ferrotune_tensor::ops::{rms_norm, rms_norm_backward};
    let (x, w, grad) = (randn(20, &[72, 5]).t().unwrap(), randn(21, &[72]).affine(0.2, 1.0).unwrap(), randn(22, &[5, 72]));
    for (xd, wd) in [(DType::F32, DType::F32), (DType::BF16, DType::BF16), (DType::BF16, DType::F32)] {
        let tol = if xd == DType::F32 { 1e-5 } else { 8e-3 };
        let (x, w, grad) = (x.to_dtype(xd).unwrap(), w.to_dtype(wd).unwrap(), grad.to_dtype(xd).unwrap());
        let [gx, gw, gg] = [&x, &w, &grad].map(|t| t.to_device(CUDA).unwrap());
        let what = format!("rms_norm x {xd} weight {wd}");
        assert_close(&what, &rms_norm(&gx, &gw, 1e-5).unwrap(), &rms_norm(&x, &w, 1e-5).unwrap(), tol);
        let (want_x, want_w) = rms_norm_backward(&x, &w, 1e-5, &grad).unwrap();
        let (got_x, got_w) = rms_norm_backward(&gx, &gw, 1e-5, &gg).unwrap();
        assert_close(&format!("{what} d x"), &got_x, &want_x, tol);
        assert_close(&format!("{what} d weight"), &got_w, &want_w, if wd == DType::F32 { 1e-5 } else { 8e-3 });
    }
}

/// RoPE: the device evaluates its cos/sin table with the rope_table kernel (f64 angles, rounded once to f32, as
/// RopeTable does on the host: equal up to libm's last f64 bit), then both sides rotate in f32: 1e-6 relative.
/// bf16: one bf16 ulp.
#[test]
fn rope_forward_and_backward_match_the_cpu() {
    emulate();
    use ferrotune_tensor::ops::{rope, rope_backward, RopeScaling, RopeTable};
    let llama3 = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 16 };
    let table = RopeTable::new(16, 500_000.0, &llama3, 64, 0).unwrap();
    // [B, T, H, D] as the strided view attention code produces; positions per batch row restart (packing).
    let x = randn(23, &[2, 3, 5, 16]).transpose(1, 2).unwrap();
    let positions = Tensor::from_vec(vec![0i64, 1, 2, 3, 4, 7, 0, 1, 2, 63], &[2, 5]).unwrap();
    let gpos = positions.to_device(CUDA).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let tol = if dtype == DType::F32 { 1e-6 } else { 8e-3 };
        let x = x.to_dtype(dtype).unwrap();
        let gx = x.to_device(CUDA).unwrap();
        assert_close(&format!("rope {dtype}"), &rope(&gx, &table, &gpos).unwrap(), &rope(&x, &table, &positions).unwrap(), tol);
        // Positions may stay on the host.
        let want = rope_backward(&x, &table, &positions).unwrap();
        assert_close(&format!("rope_backward {dtype}"), &rope_backward(&gx, &table, &positions).unwrap(), &want, tol);
    }
}

/// Causal GQA attention on packed sequences (segment ids) and on plain batches, forward and backward. Both sides
/// run FlashAttention-2's online softmax in f32 but over different tiles (32 keys on the device, the CPU's own
/// blocking): sums of up to 11 keys x 64 dims of unit-normal products differ by f32 rounding, 2e-5 relative
/// (the kernel harness's bound); dQ is summed by f32 atomics in any order, same bound. bf16: one bf16 ulp.
#[test]
fn attention_forward_and_backward_match_the_cpu() {
    emulate();
    use ferrotune_tensor::ops::{attention, attention_backward, AttentionOptions};
    let segments = Tensor::from_vec(vec![0i64, 0, 0, 7, 7, 7, 7, 7, 7, 7, 7, 2, 2], &[1, 13]).unwrap();
    let cases = [
        ("packed", [1usize, 13], Some(segments)),
        ("batched", [2, 6], None),
    ];
    for (name, [b, t], segment_ids) in cases {
        let d = 64;
        let (q, k, v, grad) = (randn(24, &[b, t, 4, d]), randn(25, &[b, t, 2, d]), randn(26, &[b, t, 2, d]), randn(27, &[b, t, 4, d]));
        let opts = AttentionOptions { causal: true, scale: None, segment_ids: segment_ids.clone() };
        let gopts = AttentionOptions { segment_ids: segment_ids.map(|s| s.to_device(CUDA).unwrap()), ..opts.clone() };
        for dtype in [DType::F32, DType::BF16] {
            let tol = if dtype == DType::F32 { 2e-5 } else { 8e-3 };
            let [q, k, v, grad] = [&q, &k, &v, &grad].map(|t| t.to_dtype(dtype).unwrap());
            let [gq, gk, gv, gg] = [&q, &k, &v, &grad].map(|t| t.to_device(CUDA).unwrap());
            let what = format!("attention {name} {dtype}");
            let (want_out, want_lse) = attention(&q, &k, &v, &opts).unwrap();
            let (got_out, got_lse) = attention(&gq, &gk, &gv, &gopts).unwrap();
            assert_close(&format!("{what} out"), &got_out, &want_out, tol);
            assert_close(&format!("{what} lse"), &got_lse, &want_lse, 2e-5);
            let want = attention_backward(&q, &k, &v, &want_out, &want_lse, &grad, &opts).unwrap();
            let got = attention_backward(&gq, &gk, &gv, &got_out, &got_lse, &gg, &gopts).unwrap();
            assert_close(&format!("{what} d q"), &got.0, &want.0, tol);
            assert_close(&format!("{what} d k"), &got.1, &want.1, tol);
            assert_close(&format!("{what} d v"), &got.2, &want.2, tol);
        }
    }
    // What the kernels do not take is refused, naming the limit.
    let odd = randn(28, &[1, 4, 2, 16]).to_device(CUDA).unwrap();
    let err = attention(&odd, &odd, &odd, &AttentionOptions { causal: true, ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("head_dim 64 or 128"), "{err}");
}

/// Cross-entropy and the lm_head + cross-entropy the model's loss uses. lse: the kernel's online log-sum-exp in
/// f32 (a block tree) vs. the CPU's chunked online one: 2e-5 relative. The mean loss sums 4 row losses in f32 on
/// the device, in f64 on the CPU: 2e-5. Gradients are `w (p - onehot)` from those lse values: 2e-5 of 1 + |g|
/// (p and w are below 1). Through the GEMMs (k = 24 or 120 f32 products) the hidden / weight gradients keep
/// the same bound. bf16 logits: one bf16 ulp of the gradient.
#[test]
fn cross_entropy_and_linear_cross_entropy_match_the_cpu() {
    emulate();
    use ferrotune_tensor::ops::{cross_entropy, cross_entropy_backward, linear_cross_entropy, Reduction, IGNORE_INDEX};
    let targets = Tensor::from_vec(vec![3i64, IGNORE_INDEX, 119, 0, 57], &[5]).unwrap();
    let logits = randn(29, &[5, 120]).scale(3.0).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let tol = if dtype == DType::F32 { 2e-5 } else { 8e-3 };
        let logits = logits.to_dtype(dtype).unwrap();
        let glogits = logits.to_device(CUDA).unwrap();
        for reduction in [Reduction::Mean, Reduction::Sum] {
            let what = format!("cross_entropy {dtype} {reduction:?}");
            let want = cross_entropy(&logits, &targets, IGNORE_INDEX, reduction).unwrap();
            let got = cross_entropy(&glogits, &targets, IGNORE_INDEX, reduction).unwrap();
            assert_eq!(got.n_valid, 4, "{what}: n_valid");
            assert_close(&format!("{what} loss"), &got.loss, &want.loss, 2e-5);
            assert_close(&format!("{what} lse"), &got.lse, &want.lse, 2e-5);
            let want_g = cross_entropy_backward(&logits, &targets, &want.lse, IGNORE_INDEX, reduction, 4, 0.5).unwrap();
            let got_g = cross_entropy_backward(&glogits, &targets, &got.lse, IGNORE_INDEX, reduction, 4, 0.5).unwrap();
            assert_close(&format!("{what} grad"), &got_g, &want_g, tol);
        }
    }
    let (hidden, weight) = (randn(30, &[5, 24]), randn(31, &[120, 24]));
    for wd in [DType::F32, DType::BF16] {
        let weight = weight.to_dtype(wd).unwrap();
        let (gh, gw) = (hidden.to_device(CUDA).unwrap(), weight.to_device(CUDA).unwrap());
        let want = linear_cross_entropy(&hidden, &weight, &targets, IGNORE_INDEX, Reduction::Mean, true).unwrap();
        let got = linear_cross_entropy(&gh, &gw, &targets, IGNORE_INDEX, Reduction::Mean, true).unwrap();
        let what = format!("linear_cross_entropy weight {wd}");
        assert_eq!(got.n_valid, want.n_valid, "{what}: n_valid");
        assert_close(&format!("{what} loss"), &got.loss, &want.loss, 2e-5);
        assert_close(&format!("{what} grad hidden"), &got.grad_hidden, &want.grad_hidden, 2e-5);
        let tol = if wd == DType::F32 { 2e-5 } else { 8e-3 };
        assert_close(&format!("{what} grad weight"), got.grad_weight.as_ref().unwrap(), want.grad_weight.as_ref().unwrap(), tol);
        let frozen = linear_cross_entropy(&gh, &gw, &targets, IGNORE_INDEX, Reduction::Mean, false).unwrap();
        assert!(frozen.grad_weight.is_none(), "a frozen lm_head gets no weight gradient");
    }
    let bad = Tensor::from_vec(vec![3i64, 120, 0, 1, 2], &[5]).unwrap();
    match cross_entropy(&logits.to_device(CUDA).unwrap(), &bad, IGNORE_INDEX, Reduction::Mean) {
        Err(Error::IndexOutOfRange { index: 120, size: 120, .. }) => {}
        other => panic!("expected IndexOutOfRange for target 120, got {other:?}"),
    }
}

#[test]
fn unwired_ops_name_themselves() {
    emulate();
    let gpu = randn(5, &[2, 2]).to_device(CUDA).unwrap();
    let softmax = ferrotune_tensor::ops::softmax_last(&gpu);
    let dropout = ferrotune_tensor::ops::dropout(&gpu, 0.1, 7);
    for (op, result) in [("softmax", softmax), ("dropout", dropout)] {
        match result {
            Err(Error::CudaUnavailable(msg)) => assert!(msg.contains(op), "{op}: {msg}"),
            other => panic!("{op}: expected a CudaUnavailable error naming the op, got {other:?}"),
        }
    }
}
