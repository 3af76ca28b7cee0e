//! Every kernel in kernels/*.cu, run on the CPU through the host emulation of the device primitives, against
//! its CPU-backend twin (ferrotune-tensor's ops, each checked against PyTorch by the golden tests in the root
//! tests/), or against the PyTorch golden directly (AdamW).
//!
//! Tolerances (relative to 1 + |expected|, per dtype):
//! - f32: the kernels sum in a different order than the twins (warp trees vs. sequential/SIMD lanes) and use
//!   `__expf`-style exponentials; 2e-5 covers that on these sizes (observed differences are ~1e-6).
//! - bf16: both sides compute in f32 and round once to bf16, so they agree unless the f32 values straddle a
//!   rounding boundary: one bf16 ulp, 2^-8 relative, so 8e-3.
//! - Accumulations through f32 atomics over many terms (embedding / RMSNorm weight gradients, attention dK/dV/dQ)
//!   use the f32 tolerance too: they are sums of a handful of terms at these sizes.

use ferrotune_kernels::{host, LaunchConfig};
use ferrotune_tensor::ops::{self, AttentionOptions, Reduction, RopeScaling, RopeTable};
use ferrotune_tensor::rng::SplitMix64;
use ferrotune_tensor::{bf16, DType, Tensor};
use std::any::Any;
use std::ffi::c_void;

const F32_TOL: f64 = 2e-5;
const BF16_TOL: f64 = 8e-3;

/// The parameters of one launch, kept alive until it returns: each value boxed, `args` pointing at each box
/// (what cuLaunchKernel takes). Buffers are host memory; on the host target they are the "device pointers".
///
/// `FERROTUNE_KERNEL_TARGET=cuda` (with `--features cuda`, as scripts/gpu-check.sh runs it) runs the same
/// launches on GPU 0: every buffer is copied to the device before the launch and back after it.
#[derive(Default)]
struct Params {
    values: Vec<Box<dyn Any>>,
    /// (index in `values`, host address, bytes) of each buffer parameter.
    buffers: Vec<(usize, *mut u8, usize)>,
}

fn on_gpu() -> bool {
    match std::env::var("FERROTUNE_KERNEL_TARGET").as_deref() {
        Ok("cuda") => {
            assert!(cfg!(feature = "cuda"), "FERROTUNE_KERNEL_TARGET=cuda needs `--features cuda`");
            true
        }
        Ok("host") | Err(_) => false,
        Ok(other) => panic!("FERROTUNE_KERNEL_TARGET={other:?}: use host or cuda"),
    }
}

#[cfg(feature = "cuda")]
fn gpu() -> &'static ferrotune_kernels::cuda::CudaKernels {
    static KERNELS: std::sync::OnceLock<ferrotune_kernels::cuda::CudaKernels> = std::sync::OnceLock::new();
    KERNELS.get_or_init(|| ferrotune_kernels::cuda::CudaKernels::new(0).unwrap_or_else(|e| panic!("GPU 0: {e}")))
}

impl Params {
    fn val<T: Copy + 'static>(mut self, v: T) -> Self {
        self.values.push(Box::new(v));
        self
    }
    fn buf<T>(mut self, b: &mut [T]) -> Self {
        self.buffers.push((self.values.len(), b.as_mut_ptr() as *mut u8, std::mem::size_of_val(b)));
        self.val(b.as_mut_ptr() as *mut c_void)
    }
    fn null(self) -> Self {
        self.val(std::ptr::null_mut::<c_void>())
    }
    fn launch(mut self, name: &str, config: LaunchConfig) {
        if on_gpu() {
            #[cfg(feature = "cuda")]
            {
                let kernels = gpu();
                let mut device = Vec::new();
                for &(index, host, bytes) in &self.buffers {
                    // SAFETY: `host` came from a live `&mut [T]` of `bytes` bytes that outlives this call.
                    let buffer = kernels.upload(unsafe { std::slice::from_raw_parts(host, bytes) }).unwrap();
                    self.values[index] = Box::new(buffer.device_ptr());
                    device.push(buffer);
                }
                let mut args: Vec<*mut c_void> = self.values.iter_mut().map(|b| (&mut **b as *mut dyn Any) as *mut c_void).collect();
                // SAFETY: as on the host below, with device copies of every buffer.
                unsafe { kernels.launch(name, config, &mut args) }.unwrap_or_else(|e| panic!("{name}: {e}"));
                for (&(_, host, bytes), buffer) in self.buffers.iter().zip(&device) {
                    // SAFETY: as above.
                    kernels.download(buffer, unsafe { std::slice::from_raw_parts_mut(host, bytes) }).unwrap();
                }
            }
            return;
        }
        let mut args: Vec<*mut c_void> =
            self.values.iter_mut().map(|b| (&mut **b as *mut dyn Any) as *mut c_void).collect();
        // SAFETY: each test passes the parameters in the kernel's order and types, with buffers of the extents
        // the kernel reads and writes.
        unsafe { host::launch(name, config, &mut args) }.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

fn normal(seed: u64, n: usize, scale: f64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| (rng.normal() * scale) as f32).collect()
}

fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

fn f64s<T: Copy + Into<f64>>(x: &[T]) -> Vec<f64> {
    x.iter().map(|&v| v.into()).collect()
}

fn bf16s_f64(x: &[bf16]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

#[track_caller]
fn assert_close(what: &str, got: &[f64], want: &Tensor, tol: f64) {
    let want = want.to_vec_f64().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let err = if a.is_infinite() && a == b { 0.0 } else { (a - b).abs() / (1.0 + b.abs()) };
        if !(err <= worst.0) {
            worst = (err, i);
        }
    }
    assert!(worst.0 <= tol, "{what}: worst error {:e} at {} (got {}, want {}), tolerance {tol:e}", worst.0, worst.1, got[worst.1], want[worst.1]);
}

fn t<T: ferrotune_tensor::Element>(v: Vec<T>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

#[test]
fn fill_cast_copy_and_reductions() {
    let n = 1000usize;
    let mut out = vec![0f32; n];
    Params::default().buf(&mut out).val(n as i64).val(2.5f32).launch("fill_f32", LaunchConfig::linear(3, 128));
    assert!(out.iter().all(|&v| v == 2.5));
    let mut outb = vec![bf16::ZERO; n];
    Params::default().buf(&mut outb).val(n as i64).val(-1.75f32).launch("fill_bf16", LaunchConfig::linear(3, 128));
    assert!(outb.iter().all(|&v| v == bf16::from_f32(-1.75)));

    // Casts round to nearest even exactly as Tensor::to_dtype does (bit-identical).
    let mut x = normal(1, n, 3.0);
    Params::default().buf(&mut x).buf(&mut outb).val(n as i64).launch("cast_f32_bf16", LaunchConfig::linear(4, 64));
    let want = t(x.clone(), &[n]).to_dtype(DType::BF16).unwrap().to_vec::<bf16>().unwrap();
    assert_eq!(outb, want);
    Params::default().buf(&mut outb).buf(&mut out).val(n as i64).launch("cast_bf16_f32", LaunchConfig::linear(4, 64));
    assert_eq!(out, t(want, &[n]).to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap());

    // A transposed and narrowed view, padded to six dims.
    let base = t(x.clone(), &[10, 4, 25]);
    let view = base.transpose(0, 2).unwrap().narrow(1, 1, 2).unwrap(); // [25, 2, 10]
    let strides: [i64; 6] = [0, 0, 0, 1, 25, 100];
    let dims: [i64; 6] = [1, 1, 1, 25, 2, 10];
    let mut copied = vec![0f32; 500];
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct StridedShape {
        dims: [i64; 6],
        strides: [i64; 6],
        offset: i64,
    }
    let shape = StridedShape { dims, strides, offset: 25 };
    Params::default().buf(&mut x).buf(&mut copied).val(shape).launch("copy_strided_f32", LaunchConfig::linear(2, 128));
    assert_eq!(copied, view.contiguous().unwrap().to_vec::<f32>().unwrap());

    let (rows, cols) = (7usize, 300usize);
    let mut m = normal(2, rows * cols, 1.0);
    let mut red = vec![0f32; rows];
    for (op, want) in [(0i32, t(m.clone(), &[rows, cols]).sum_keepdim(&[1]).unwrap()), (1, t(m.clone(), &[rows, cols]).max_keepdim(1).unwrap())] {
        Params::default().buf(&mut m).buf(&mut red).val(cols as i64).val(op).launch("reduce_rows_f32", LaunchConfig::linear(rows as u32, 128));
        assert_close(&format!("reduce_rows op {op}"), &f64s(&red), &want, F32_TOL);
        let mut mb = to_bf16(&m);
        Params::default().buf(&mut mb).buf(&mut red).val(cols as i64).val(op).launch("reduce_rows_bf16", LaunchConfig::linear(rows as u32, 64));
        let want_b = t(mb.clone(), &[rows, cols]).to_dtype(DType::F32).unwrap();
        let want_b = if op == 0 { want_b.sum_keepdim(&[1]).unwrap() } else { want_b.max_keepdim(1).unwrap() };
        assert_close(&format!("reduce_rows_bf16 op {op}"), &f64s(&red), &want_b, F32_TOL);
    }
}

#[test]
fn pointwise_unary_affine_powf_and_binary() {
    use ferrotune_tensor::{BinaryOp, UnaryOp};
    let n = 300usize;
    let x = normal(3, n, 2.0);
    // log / sqrt / recip / powf get positive inputs.
    let positive: Vec<f32> = x.iter().map(|v| v.abs() + 0.5).collect();
    let unary = [
        UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Recip, UnaryOp::Sqr, UnaryOp::Abs,
        UnaryOp::Tanh, UnaryOp::Sin, UnaryOp::Cos, UnaryOp::Sigmoid, UnaryOp::Silu, UnaryOp::Relu, UnaryOp::Step,
        UnaryOp::Sign,
    ];
    // Op codes 0..=14 are UnaryOp in declaration order, 15 affine, 16 powf (kernels/elementwise.cu ft_pointwise).
    for (code, op) in unary.into_iter().enumerate() {
        let mut input = if matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Recip) { positive.clone() } else { x.clone() };
        let want = t(input.clone(), &[n]).unary(op).unwrap();
        let mut out = vec![0f32; n];
        Params::default().buf(&mut input).buf(&mut out).val(n as i64).val(code as i32).val(0f32).val(0f32).launch("unary_f32", LaunchConfig::linear(2, 128));
        assert_close(&format!("unary {op:?}"), &f64s(&out), &want, F32_TOL);
    }
    let mut input = positive.clone();
    let mut out = vec![0f32; n];
    Params::default().buf(&mut input).buf(&mut out).val(n as i64).val(15i32).val(-1.5f32).val(0.25f32).launch("unary_f32", LaunchConfig::linear(2, 128));
    assert_close("affine", &f64s(&out), &t(positive.clone(), &[n]).affine(-1.5, 0.25).unwrap(), F32_TOL);
    Params::default().buf(&mut input).buf(&mut out).val(n as i64).val(16i32).val(-0.5f32).val(0f32).launch("unary_f32", LaunchConfig::linear(2, 128));
    assert_close("powf", &f64s(&out), &t(positive.clone(), &[n]).powf(-0.5).unwrap(), F32_TOL);
    let mut xb = to_bf16(&x);
    let mut outb = vec![bf16::ZERO; n];
    Params::default().buf(&mut xb).buf(&mut outb).val(n as i64).val(11i32).val(0f32).val(0f32).launch("unary_bf16", LaunchConfig::linear(2, 128));
    assert_close("unary_bf16 silu", &bf16s_f64(&outb), &t(xb.clone(), &[n]).silu().unwrap().to_dtype(DType::F32).unwrap(), BF16_TOL);

    let binary = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum, BinaryOp::Minimum];
    for (code, op) in binary.into_iter().enumerate() {
        let (mut a, mut b, mut out) = (x.clone(), positive.clone(), vec![0f32; n]);
        Params::default().buf(&mut a).buf(&mut b).buf(&mut out).val(n as i64).val(code as i32).launch("binary_f32", LaunchConfig::linear(2, 128));
        assert_close(&format!("binary {op:?}"), &f64s(&out), &t(x.clone(), &[n]).binary(&t(positive.clone(), &[n]), op).unwrap(), F32_TOL);
    }
    let (mut pb, mut outb) = (to_bf16(&positive), vec![bf16::ZERO; n]);
    Params::default().buf(&mut xb).buf(&mut pb).buf(&mut outb).val(n as i64).val(3i32).launch("binary_bf16", LaunchConfig::linear(2, 128));
    let want = t(xb.clone(), &[n]).div(&t(pb.clone(), &[n])).unwrap().to_dtype(DType::F32).unwrap();
    assert_close("binary_bf16 div", &bf16s_f64(&outb), &want, BF16_TOL);
}

#[test]
fn tiled_gemm_batched_and_shared_rhs() {
    // Sizes off the 16-wide tile grid on every axis.
    let (batch, m, n, k) = (2usize, 19usize, 23usize, 37usize);
    let (mut a, mut b) = (normal(4, batch * m * k, 1.0), normal(5, batch * k * n, 1.0));
    let config = LaunchConfig { grid: [2, 2, batch as u32], block: [16, 16, 1], dynamic_shared: 0 };
    let mut c = vec![0f32; batch * m * n];
    let dims = |p: Params| p.val(m as i64).val(n as i64).val(k as i64);
    dims(Params::default().buf(&mut a).buf(&mut b).buf(&mut c)).val((k * n) as i64).launch("gemm_tiled_f32", config);
    assert_close("gemm batched", &f64s(&c), &t(a.clone(), &[batch, m, k]).matmul(&t(b.clone(), &[batch, k, n])).unwrap(), F32_TOL);
    // One [k, n] rhs shared by the batch (a weight).
    dims(Params::default().buf(&mut a).buf(&mut b).buf(&mut c)).val(0i64).launch("gemm_tiled_f32", config);
    let shared = t(b[..k * n].to_vec(), &[k, n]);
    assert_close("gemm shared rhs", &f64s(&c), &t(a.clone(), &[batch, m, k]).matmul(&shared).unwrap(), F32_TOL);
    let (mut ab, mut bb, mut cb) = (to_bf16(&a), to_bf16(&b), vec![bf16::ZERO; batch * m * n]);
    dims(Params::default().buf(&mut ab).buf(&mut bb).buf(&mut cb)).val((k * n) as i64).launch("gemm_tiled_bf16", config);
    let want = t(ab.clone(), &[batch, m, k]).matmul(&t(bb.clone(), &[batch, k, n])).unwrap().to_dtype(DType::F32).unwrap();
    assert_close("gemm bf16", &bf16s_f64(&cb), &want, BF16_TOL);
}

#[test]
fn embedding_forward_and_backward() {
    let (rows, cols) = (11usize, 40usize);
    let mut table = normal(3, rows * cols, 1.0);
    let mut ids: Vec<i64> = vec![3, 0, 10, 3, 7, 3, 1];
    let n = ids.len();
    let mut bad = vec![0i32; 1];
    let mut out = vec![0f32; n * cols];
    Params::default().buf(&mut table).buf(&mut ids).buf(&mut out).val(n as i64).val(rows as i64).val(cols as i64).buf(&mut bad).launch("embedding_forward_f32", LaunchConfig::linear(4, 32));
    let ids_t = t(ids.clone(), &[n]);
    assert_close("embedding fwd", &f64s(&out), &t(table.clone(), &[rows, cols]).index_select(&ids_t).unwrap(), 0.0);
    let mut tb = to_bf16(&table);
    let mut outb = vec![bf16::ZERO; n * cols];
    Params::default().buf(&mut tb).buf(&mut ids).buf(&mut outb).val(n as i64).val(rows as i64).val(cols as i64).buf(&mut bad).launch("embedding_forward_bf16", LaunchConfig::linear(4, 32));
    assert_close("embedding fwd bf16", &bf16s_f64(&outb), &t(tb, &[rows, cols]).index_select(&ids_t).unwrap(), 0.0);
    assert_eq!(bad[0], 0);

    let mut g = normal(4, n * cols, 1.0);
    let mut grad = vec![0f32; rows * cols];
    Params::default().buf(&mut g).buf(&mut ids).buf(&mut grad).val(n as i64).val(rows as i64).val(cols as i64).buf(&mut bad).launch("embedding_backward_f32", LaunchConfig::linear(3, 64));
    assert_close("embedding bwd", &f64s(&grad), &t(g.clone(), &[n, cols]).index_add_rows(&ids_t, rows).unwrap(), F32_TOL);
    let mut gb = to_bf16(&g);
    let mut grad = vec![0f32; rows * cols];
    Params::default().buf(&mut gb).buf(&mut ids).buf(&mut grad).val(n as i64).val(rows as i64).val(cols as i64).buf(&mut bad).launch("embedding_backward_bf16", LaunchConfig::linear(3, 64));
    let want = t(gb, &[n, cols]).to_dtype(DType::F32).unwrap().index_add_rows(&ids_t, rows).unwrap();
    assert_close("embedding bwd bf16", &f64s(&grad), &want, F32_TOL);
    assert_eq!(bad[0], 0);

    let mut bad_ids: Vec<i64> = vec![2, 11, -1];
    let mut out = vec![0f32; 3 * cols];
    Params::default().buf(&mut table).buf(&mut bad_ids).buf(&mut out).val(3i64).val(rows as i64).val(cols as i64).buf(&mut bad).launch("embedding_forward_f32", LaunchConfig::linear(2, 32));
    assert_eq!(bad[0], 2, "ids 11 and -1 are out of range for 11 rows");
}

#[test]
fn rms_norm_with_fused_residual() {
    let (rows, cols, eps) = (9usize, 200usize, 1e-5f32);
    let (mut x, mut res, mut w, mut gy, mut gskip) = (normal(5, rows * cols, 1.0), normal(6, rows * cols, 1.0), normal(7, cols, 1.0), normal(8, rows * cols, 1.0), normal(9, rows * cols, 1.0));
    for bf in [false, true] {
        let (tol, dt) = if bf { (BF16_TOL, DType::BF16) } else { (F32_TOL, DType::F32) };
        let tensor = |v: &[f32], shape: &[usize]| t(v.to_vec(), shape).to_dtype(dt).unwrap();
        let (xt, rt, wt, gyt, gst) = (tensor(&x, &[rows, cols]), tensor(&res, &[rows, cols]), tensor(&w, &[cols]), tensor(&gy, &[rows, cols]), tensor(&gskip, &[rows, cols]));
        let h_want = xt.add(&rt).unwrap();
        let y_want = ops::rms_norm(&h_want, &wt, eps as f64).unwrap();
        let (gh_want, gw_want) = ops::rms_norm_backward(&h_want, &wt, eps as f64, &gyt).unwrap();
        let gh_want = gh_want.add(&gst).unwrap();
        let mut inv = vec![0f32; rows];
        let mut gw = vec![0f32; cols];
        let cfg = LaunchConfig::linear(4, 64);
        let bwd_cfg = LaunchConfig { dynamic_shared: cols * 4, ..LaunchConfig::linear(4, 64) };
        let (got_y, got_h, got_gh) = if bf {
            let (mut xb, mut rb, mut wb, mut gyb, mut gsb) = (to_bf16(&x), to_bf16(&res), to_bf16(&w), to_bf16(&gy), to_bf16(&gskip));
            let (mut y, mut h, mut gh) = (vec![bf16::ZERO; rows * cols], vec![bf16::ZERO; rows * cols], vec![bf16::ZERO; rows * cols]);
            Params::default().buf(&mut xb).buf(&mut rb).buf(&mut wb).buf(&mut y).buf(&mut h).buf(&mut inv).val(rows as i64).val(cols as i64).val(eps).launch("rms_norm_forward_bf16", cfg);
            Params::default().buf(&mut h).buf(&mut wb).buf(&mut gyb).buf(&mut gsb).buf(&mut inv).buf(&mut gh).buf(&mut gw).val(rows as i64).val(cols as i64).launch("rms_norm_backward_bf16", bwd_cfg);
            (bf16s_f64(&y), bf16s_f64(&h), bf16s_f64(&gh))
        } else {
            let (mut y, mut h, mut gh) = (vec![0f32; rows * cols], vec![0f32; rows * cols], vec![0f32; rows * cols]);
            Params::default().buf(&mut x).buf(&mut res).buf(&mut w).buf(&mut y).buf(&mut h).buf(&mut inv).val(rows as i64).val(cols as i64).val(eps).launch("rms_norm_forward_f32", cfg);
            Params::default().buf(&mut h).buf(&mut w).buf(&mut gy).buf(&mut gskip).buf(&mut inv).buf(&mut gh).buf(&mut gw).val(rows as i64).val(cols as i64).launch("rms_norm_backward_f32", bwd_cfg);
            (f64s(&y), f64s(&h), f64s(&gh))
        };
        assert_close(&format!("rms_norm h {dt}"), &got_h, &h_want, 0.0);
        assert_close(&format!("rms_norm y {dt}"), &got_y, &y_want, tol);
        assert_close(&format!("rms_norm grad_h {dt}"), &got_gh, &gh_want, tol);
        // dweight is accumulated in f32 by the kernel; the twin rounds it to the weight dtype.
        assert_close(&format!("rms_norm grad_weight {dt}"), &f64s(&gw), &gw_want, if bf { BF16_TOL } else { 1e-4 });
    }
    // Without a residual: h is x itself and nothing else is written.
    let (mut y, mut inv) = (vec![0f32; rows * cols], vec![0f32; rows]);
    Params::default().buf(&mut x).null().buf(&mut w).buf(&mut y).null().buf(&mut inv).val(rows as i64).val(cols as i64).val(eps).launch("rms_norm_forward_f32", LaunchConfig::linear(2, 128));
    assert_close("rms_norm y (no residual)", &f64s(&y), &ops::rms_norm(&t(x.clone(), &[rows, cols]), &t(w.clone(), &[cols]), eps as f64).unwrap(), F32_TOL);
}

fn rope_scalings() -> Vec<(&'static str, RopeScaling)> {
    vec![
        ("none", RopeScaling::None),
        ("linear", RopeScaling::Linear { factor: 4.0 }),
        ("dynamic", RopeScaling::Dynamic { factor: 2.0, original_max_position_embeddings: 16 }),
        ("llama3", RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 16 }),
        (
            "yarn",
            RopeScaling::Yarn { factor: 4.0, original_max_position_embeddings: 16, beta_fast: 32.0, beta_slow: 1.0, mscale: None, mscale_all_dim: None, attention_factor: None },
        ),
    ]
}

#[test]
fn rope_tables_and_rotation_for_every_scaling() {
    let (head_dim, heads) = (16usize, 3usize);
    let mut positions: Vec<i64> = vec![0, 1, 2, 3, 4, 0, 1, 2, 40, 41];
    let tokens = positions.len();
    let mut x = normal(10, tokens * heads * head_dim, 1.0);
    for (name, scaling) in rope_scalings() {
        // seq_len 42 > max_position_embeddings 32: dynamic NTK grows its base.
        let table = RopeTable::new(head_dim, 10_000.0, &scaling, 32, 42).unwrap();
        let half = head_dim / 2;
        let n_pos = table.max_positions();
        let (mut cos, mut sin) = (vec![0f32; n_pos * half], vec![0f32; n_pos * half]);
        let mut inv_freq = table.inv_freq().to_vec();
        Params::default().buf(&mut inv_freq).val(table.attention_scaling()).buf(&mut cos).buf(&mut sin).val(n_pos as i64).val(half as i32).launch("rope_table", LaunchConfig::linear(2, 128));
        // f64 on both sides, rounded once to f32: identical up to libm's last-bit differences.
        assert_close(&format!("rope cos {name}"), &f64s(&cos), table.cos(), 1e-7);
        assert_close(&format!("rope sin {name}"), &f64s(&sin), table.sin(), 1e-7);

        let pos_t = t(positions.clone(), &[tokens]);
        for bf in [false, true] {
            let (tol, dt) = if bf { (BF16_TOL, DType::BF16) } else { (F32_TOL, DType::F32) };
            let xt = t(x.clone(), &[1, tokens, heads, head_dim]).to_dtype(dt).unwrap();
            for inverse in [0i32, 1] {
                let want = if inverse == 0 { ops::rope(&xt, &table, &pos_t) } else { ops::rope_backward(&xt, &table, &pos_t) }.unwrap();
                let got = if bf {
                    let (mut xb, mut out) = (to_bf16(&x), vec![bf16::ZERO; x.len()]);
                    Params::default().buf(&mut xb).buf(&mut cos).buf(&mut sin).buf(&mut positions).buf(&mut out).val(tokens as i64).val(heads as i32).val(head_dim as i32).val(inverse).launch("rope_bf16", LaunchConfig::linear(2, 64));
                    bf16s_f64(&out)
                } else {
                    let mut out = vec![0f32; x.len()];
                    Params::default().buf(&mut x).buf(&mut cos).buf(&mut sin).buf(&mut positions).buf(&mut out).val(tokens as i64).val(heads as i32).val(head_dim as i32).val(inverse).launch("rope_f32", LaunchConfig::linear(2, 64));
                    f64s(&out)
                };
                assert_close(&format!("rope {name} {dt} inverse={inverse}"), &got, &want, tol);
            }
        }
    }
}

#[test]
fn swiglu_forward_and_backward() {
    let n = 777usize;
    let (mut gate, mut up, mut g) = (normal(11, n, 4.0), normal(12, n, 1.0), normal(13, n, 1.0));
    for bf in [false, true] {
        let (tol, dt) = if bf { (BF16_TOL, DType::BF16) } else { (F32_TOL, DType::F32) };
        let tt = |v: &[f32]| t(v.to_vec(), &[n]).to_dtype(dt).unwrap();
        let want_y = ops::swiglu(&tt(&gate), &tt(&up)).unwrap();
        let (want_gg, want_gu) = ops::swiglu_backward(&tt(&gate), &tt(&up), &tt(&g)).unwrap();
        let cfg = LaunchConfig::linear(3, 128);
        let got: Vec<Vec<f64>> = if bf {
            let (mut a, mut b, mut gg) = (to_bf16(&gate), to_bf16(&up), to_bf16(&g));
            let (mut y, mut da, mut db) = (vec![bf16::ZERO; n], vec![bf16::ZERO; n], vec![bf16::ZERO; n]);
            Params::default().buf(&mut a).buf(&mut b).buf(&mut y).val(n as i64).launch("swiglu_forward_bf16", cfg);
            Params::default().buf(&mut a).buf(&mut b).buf(&mut gg).buf(&mut da).buf(&mut db).val(n as i64).launch("swiglu_backward_bf16", cfg);
            vec![bf16s_f64(&y), bf16s_f64(&da), bf16s_f64(&db)]
        } else {
            let (mut y, mut da, mut db) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            Params::default().buf(&mut gate).buf(&mut up).buf(&mut y).val(n as i64).launch("swiglu_forward_f32", cfg);
            Params::default().buf(&mut gate).buf(&mut up).buf(&mut g).buf(&mut da).buf(&mut db).val(n as i64).launch("swiglu_backward_f32", cfg);
            vec![f64s(&y), f64s(&da), f64s(&db)]
        };
        assert_close(&format!("swiglu y {dt}"), &got[0], &want_y, tol);
        assert_close(&format!("swiglu grad_gate {dt}"), &got[1], &want_gg, tol);
        assert_close(&format!("swiglu grad_up {dt}"), &got[2], &want_gu, tol);
    }
}

#[test]
fn cross_entropy_with_ignore_index() {
    let (rows, vocab) = (6usize, 1000usize);
    let mut logits = normal(14, rows * vocab, 3.0);
    let mut targets: Vec<i64> = vec![5, -100, 999, 0, -100, 321];
    let mut bad = vec![0i32];
    for bf in [false, true] {
        let (tol, dt) = if bf { (BF16_TOL, DType::BF16) } else { (F32_TOL, DType::F32) };
        let lt = t(logits.clone(), &[rows, vocab]).to_dtype(dt).unwrap();
        let tt = t(targets.clone(), &[rows]);
        let want = ops::cross_entropy(&lt, &tt, -100, Reduction::Mean).unwrap();
        let (mut lse, mut loss) = (vec![0f32; rows], vec![0f32; rows]);
        let weight = 0.7 / want.n_valid as f32;
        let want_grad = ops::cross_entropy_backward(&lt, &tt, &want.lse, -100, Reduction::Mean, want.n_valid, 0.7).unwrap();
        let bwd = LaunchConfig { grid: [3, rows as u32, 1], block: [128, 1, 1], dynamic_shared: 0 };
        let grad = if bf {
            let (mut lb, mut g) = (to_bf16(&logits), vec![bf16::ZERO; rows * vocab]);
            Params::default().buf(&mut lb).buf(&mut targets).buf(&mut lse).buf(&mut loss).val(rows as i64).val(vocab as i64).val(-100i64).buf(&mut bad).launch("cross_entropy_forward_bf16", LaunchConfig::linear(4, 128));
            Params::default().buf(&mut lb).buf(&mut targets).buf(&mut lse).buf(&mut g).val(rows as i64).val(vocab as i64).val(-100i64).val(weight).launch("cross_entropy_backward_bf16", bwd);
            bf16s_f64(&g)
        } else {
            let mut g = vec![0f32; rows * vocab];
            Params::default().buf(&mut logits).buf(&mut targets).buf(&mut lse).buf(&mut loss).val(rows as i64).val(vocab as i64).val(-100i64).buf(&mut bad).launch("cross_entropy_forward_f32", LaunchConfig::linear(4, 128));
            Params::default().buf(&mut logits).buf(&mut targets).buf(&mut lse).buf(&mut g).val(rows as i64).val(vocab as i64).val(-100i64).val(weight).launch("cross_entropy_backward_f32", bwd);
            f64s(&g)
        };
        // lse and the loss are f32 on both sides whatever the logits dtype.
        assert_close(&format!("ce lse {dt}"), &f64s(&lse), &want.lse, F32_TOL);
        let mean = loss.iter().map(|&v| v as f64).sum::<f64>() / want.n_valid as f64;
        assert_close(&format!("ce loss {dt}"), &[mean], &want.loss, F32_TOL);
        assert!(loss[1] == 0.0 && loss[4] == 0.0, "ignored rows add nothing");
        assert_close(&format!("ce grad {dt}"), &grad, &want_grad, tol);
    }
    assert_eq!(bad[0], 0);
}

/// AdamW against torch.optim.AdamW directly (tests/golden/train_optim.safetensors, three steps with fixed
/// gradients, lr 1e-2, weight_decay 0.01; written by scripts/golden/peft_trainer_refs.py).
#[test]
fn adamw_matches_torch_and_grad_norm_clips() {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/train_optim.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |k: &str| -> Vec<f32> { st.tensor(k).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect() };
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct AdamWStep {
        beta1: f32,
        beta2: f32,
        eps: f32,
        step_size: f32,
        bias_correction2_sqrt: f32,
        decay: f32,
        max_grad_norm: f32,
        stochastic_seed: u32,
    }
    let (lr, wd, b1, b2) = (1e-2f64, 0.01f64, 0.9f64, 0.999f64);
    let hyper = |step: i32| AdamWStep {
        beta1: b1 as f32,
        beta2: b2 as f32,
        eps: 1e-8,
        step_size: (lr / (1.0 - b1.powi(step))) as f32,
        bias_correction2_sqrt: (1.0 - b2.powi(step)).sqrt() as f32,
        decay: (1.0 - lr * wd) as f32,
        max_grad_norm: 0.0,
        stochastic_seed: 0,
    };
    for key in ["mat", "vec"] {
        let mut p = get(&format!("p0.{key}"));
        let n = p.len();
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        // f32 parameters: no master copy.
        for step in 1..=3 {
            let mut g = get(&format!("g{step}.{key}"));
            Params::default().buf(&mut p).null().buf(&mut g).buf(&mut m).buf(&mut v).val(n as i64).val(hyper(step)).null().launch("adamw_f32", LaunchConfig::linear(2, 64));
            let want = get(&format!("p{step}.adamw.{key}"));
            assert_close(&format!("adamw f32 {key} step {step}"), &f64s(&p), &t(want, &[n]), 2e-6);
        }
        // bf16 parameters with an f32 master: the master follows torch's f32 trajectory, the bf16 copy is its
        // rounding (torch on bf16 parameters without a master copy would drift).
        let mut master = get(&format!("p0.{key}"));
        let mut pb = to_bf16(&master);
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        for step in 1..=3 {
            let mut g = to_bf16(&get(&format!("g{step}.{key}")));
            Params::default().buf(&mut pb).buf(&mut master).buf(&mut g).buf(&mut m).buf(&mut v).val(n as i64).val(hyper(step)).null().launch("adamw_bf16", LaunchConfig::linear(2, 64));
        }
        // The gradients were rounded to bf16, so the master differs from torch's f32 run by the bf16 rounding
        // of g; with Adam's normalisation that is a relative change of ~2^-8 in each step's update.
        let want = t(get(&format!("p3.adamw.{key}")), &[n]);
        assert_close(&format!("adamw bf16 master {key}"), &f64s(&master), &want, 3e-4);
        assert_eq!(pb, to_bf16(&master), "bf16 parameters are the rounding of the master copy");
    }

    // Global norm over two buffers and clipping on the device: the same coefficient as torch's clip_grad_norm_.
    let (mut ga, mut gb) = (vec![3.0f32, 0.0], to_bf16(&[4.0f32]));
    let mut acc = vec![0f32];
    Params::default().buf(&mut ga).val(2i64).buf(&mut acc).launch("grad_norm_sq_f32", LaunchConfig::linear(1, 32));
    Params::default().buf(&mut gb).val(1i64).buf(&mut acc).launch("grad_norm_sq_bf16", LaunchConfig::linear(1, 32));
    assert_eq!(acc[0], 25.0);
    let (mut p, mut m, mut v) = (vec![0f32; 2], vec![0f32; 2], vec![0f32; 2]);
    let h = AdamWStep { decay: 1.0, max_grad_norm: 1.0, ..hyper(1) };
    Params::default().buf(&mut p).null().buf(&mut ga).buf(&mut m).buf(&mut v).val(2i64).val(h).buf(&mut acc).launch("adamw_f32", LaunchConfig::linear(1, 32));
    let coef = 1.0 / (5.0 + 1e-6);
    assert!((m[0] as f64 - 0.1 * 3.0 * coef).abs() < 1e-7, "first moment sees the clipped gradient: {}", m[0]);

    // Stochastic rounding (bf16 without master): a zero gradient and decay 0.999 take 1.0 to 0.999, between the
    // bf16 neighbours 0.99609375 and 1.0 (74.4% of the way up). Nearest rounding would leave every weight at
    // 1.0; stochastic rounding lands on one of the two neighbours and keeps the mean at 0.999 (standard error
    // 0.0039 * sqrt(0.744 * 0.256 / n) = 1.7e-5 for n = 10_000).
    let n = 10_000usize;
    let (mut p, mut g, mut m, mut v) = (vec![bf16::ONE; n], vec![bf16::ZERO; n], vec![0f32; n], vec![0f32; n]);
    let h = AdamWStep { decay: 0.999, stochastic_seed: 7, ..hyper(1) };
    Params::default().buf(&mut p).null().buf(&mut g).buf(&mut m).buf(&mut v).val(n as i64).val(h).null().launch("adamw_bf16", LaunchConfig::linear(8, 128));
    assert!(p.iter().all(|&x| x == bf16::ONE || x == bf16::from_f32(0.99609375)), "only the two neighbours");
    let mean = p.iter().map(|x| x.to_f64()).sum::<f64>() / n as f64;
    assert!((mean - 0.999).abs() < 1e-4, "stochastic rounding keeps the mean: {mean}");
}

/// Varlen causal attention with GQA against ops::attention on one packed row with segment ids.
#[test]
fn flash_attention_varlen_gqa_forward_and_backward() {
    let seqlens = [5usize, 19, 1, 40];
    let total: usize = seqlens.iter().sum();
    let mut cu: Vec<i32> = std::iter::once(0).chain(seqlens.iter().scan(0i32, |acc, &l| { *acc += l as i32; Some(*acc) })).collect();
    let segment_ids: Vec<i64> = seqlens.iter().enumerate().flat_map(|(s, &l)| std::iter::repeat_n(s as i64, l)).collect();
    let (hq, hkv) = (4usize, 2usize);
    let max_len = *seqlens.iter().max().unwrap();
    for d in [64usize, 128] {
        let scale = 1.0 / (d as f64).sqrt();
        let (mut q, mut k, mut v, mut go) = (normal(20, total * hq * d, 1.0), normal(21, total * hkv * d, 1.0), normal(22, total * hkv * d, 1.0), normal(23, total * hq * d, 1.0));
        for bf in [false, true] {
            let (tol, dt, suffix) = if bf { (BF16_TOL, DType::BF16, "bf16") } else { (F32_TOL, DType::F32, "f32") };
            let tt = |x: &[f32], h: usize| t(x.to_vec(), &[1, total, h, d]).to_dtype(dt).unwrap();
            let opts = AttentionOptions { causal: true, scale: Some(scale), segment_ids: Some(t(segment_ids.clone(), &[1, total])) };
            let (qt, kt, vt, got_t) = (tt(&q, hq), tt(&k, hkv), tt(&v, hkv), tt(&go, hq));
            let (out_want, lse_want) = ops::attention(&qt, &kt, &vt, &opts).unwrap();
            let (gq_want, gk_want, gv_want) = ops::attention_backward(&qt, &kt, &vt, &out_want, &lse_want, &got_t, &opts).unwrap();

            let mut lse = vec![0f32; hq * total];
            let mut delta = vec![0f32; hq * total];
            let mut gq_acc = vec![0f32; total * hq * d];
            let fwd = LaunchConfig { grid: [max_len.div_ceil(16) as u32, hq as u32, seqlens.len() as u32], block: [128, 1, 1], dynamic_shared: 0 };
            let shared = (4 * 32 * (d + 1) + 4 * 2 * d) * 4;
            let bwd = LaunchConfig { grid: [max_len.div_ceil(32) as u32, hkv as u32, seqlens.len() as u32], block: [128, 1, 1], dynamic_shared: shared };
            let fwd_name = format!("flash_attention_forward_{suffix}_d{d}");
            let bwd_name = format!("flash_attention_backward_{suffix}_d{d}");
            let common = |p: Params| p.val(hq as i32).val(hkv as i32).val(total as i64).val(scale as f32).val(1i32);
            let (out, gk, gv) = if bf {
                let (mut qb, mut kb, mut vb, mut gob) = (to_bf16(&q), to_bf16(&k), to_bf16(&v), to_bf16(&go));
                let (mut out, mut gk, mut gv) = (vec![bf16::ZERO; q.len()], vec![bf16::ZERO; k.len()], vec![bf16::ZERO; v.len()]);
                common(Params::default().buf(&mut qb).buf(&mut kb).buf(&mut vb).buf(&mut cu).buf(&mut out).buf(&mut lse)).launch(&fwd_name, fwd);
                Params::default().buf(&mut out).buf(&mut gob).buf(&mut delta).val(total as i64).val(hq as i32).val(d as i32).launch("flash_attention_delta_bf16", LaunchConfig::linear(4, 128));
                common(Params::default().buf(&mut qb).buf(&mut kb).buf(&mut vb).buf(&mut gob).buf(&mut lse).buf(&mut delta).buf(&mut cu).buf(&mut gq_acc).buf(&mut gk).buf(&mut gv)).launch(&bwd_name, bwd);
                (bf16s_f64(&out), bf16s_f64(&gk), bf16s_f64(&gv))
            } else {
                let (mut out, mut gk, mut gv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
                common(Params::default().buf(&mut q).buf(&mut k).buf(&mut v).buf(&mut cu).buf(&mut out).buf(&mut lse)).launch(&fwd_name, fwd);
                Params::default().buf(&mut out).buf(&mut go).buf(&mut delta).val(total as i64).val(hq as i32).val(d as i32).launch("flash_attention_delta_f32", LaunchConfig::linear(4, 128));
                common(Params::default().buf(&mut q).buf(&mut k).buf(&mut v).buf(&mut go).buf(&mut lse).buf(&mut delta).buf(&mut cu).buf(&mut gq_acc).buf(&mut gk).buf(&mut gv)).launch(&bwd_name, bwd);
                (f64s(&out), f64s(&gk), f64s(&gv))
            };
            let what = format!("attention {suffix} d{d}");
            assert_close(&format!("{what} out"), &out, &out_want, tol);
            assert_close(&format!("{what} lse"), &f64s(&lse), &lse_want, F32_TOL);
            // dQ is accumulated in f32 by the kernel (the backend rounds it to the input dtype afterwards).
            let gq_tol = if bf { BF16_TOL } else { F32_TOL };
            assert_close(&format!("{what} grad_q"), &f64s(&gq_acc), &gq_want, gq_tol);
            assert_close(&format!("{what} grad_k"), &gk, &gk_want, tol);
            assert_close(&format!("{what} grad_v"), &gv, &gv_want, tol);
        }
    }
}

#[test]
fn unknown_kernel_is_an_error() {
    let err = unsafe { host::launch("no_such_kernel", LaunchConfig::linear(1, 32), &mut []) }.unwrap_err();
    assert!(err.contains("no kernel named"), "{err}");
}

/// Built with nvcc (CI exports NVCC): one fatbin per kernel file, each a CUDA fatbin (magic 0xBA55ED50).
#[test]
fn fatbins_are_embedded_when_built_with_nvcc() {
    let Some(nvcc) = ferrotune_kernels::NVCC else {
        assert!(ferrotune_kernels::FATBINS.is_empty());
        return;
    };
    let kernel_files = ferrotune_kernels::SOURCES.iter().filter(|(name, _)| name.ends_with(".cu")).count();
    assert_eq!(ferrotune_kernels::FATBINS.len(), kernel_files, "built with {nvcc}");
    for (name, fatbin) in ferrotune_kernels::FATBINS {
        assert_eq!(fatbin.get(..4), Some(&0xBA55ED50u32.to_le_bytes()[..]), "{name}: not a fatbin");
    }
}
