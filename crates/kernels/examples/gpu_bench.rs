//! Times every kernel on GPU 0 at training-sized shapes and prints one JSON object per kernel (name, shape,
//! milliseconds, bytes moved, flops). scripts/gpu-check.sh runs it next to scripts/gpu_bench_torch.py (the
//! torch equivalents at the same shapes) and prints the comparison table.
//!
//!   cargo run --release -p ferrotune-kernels --features cuda --example gpu_bench
//!
//! Each kernel runs once to warm up, then `REPEATS` times; the time is the best run, measured on the host
//! around launch + synchronize (so it includes ~10 us of launch overhead: negligible at these sizes).

use ferrotune_kernels::cuda::{CudaKernels, DeviceBuffer};
use ferrotune_kernels::LaunchConfig;
use std::any::Any;
use std::ffi::c_void;
use std::time::Instant;

const REPEATS: usize = 10;

struct Bench<'a> {
    kernels: &'a CudaKernels,
}

/// Kernel parameters by value (device pointers as u64), as cuLaunchKernel takes them.
#[derive(Default)]
struct Args(Vec<Box<dyn Any>>);

impl Args {
    fn val<T: Copy + 'static>(mut self, v: T) -> Self {
        self.0.push(Box::new(v));
        self
    }
    fn buf(self, b: &DeviceBuffer) -> Self {
        self.val(b.device_ptr())
    }
    fn null(self) -> Self {
        self.val(0u64)
    }
}

impl Bench<'_> {
    fn buffer(&self, bytes: usize) -> DeviceBuffer {
        // Small positive values (bf16 1/64 in both halves of every u32, f32 ~2e-3): finite through exp/log.
        let fill: Vec<u8> = (0..bytes).map(|i| if i % 2 == 0 { 0x80 } else { 0x3c }).collect();
        self.kernels.upload(&fill).expect("device memory")
    }

    fn zeros(&self, bytes: usize) -> Result<DeviceBuffer, String> {
        self.kernels.zeros(bytes)
    }

    /// Best of REPEATS runs of the launch sequence `launches`, in milliseconds.
    fn time(&self, launches: &mut [(&str, LaunchConfig, Args)]) -> f64 {
        let mut best = f64::INFINITY;
        for repeat in 0..=REPEATS {
            let start = Instant::now();
            for (name, config, args) in launches.iter_mut() {
                let mut ptrs: Vec<*mut c_void> = args.0.iter_mut().map(|b| (&mut **b as *mut dyn Any) as *mut c_void).collect();
                // SAFETY: each launch below lists its kernel's parameters with buffers sized for the shape.
                unsafe { self.kernels.launch(name, *config, &mut ptrs) }.unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            if repeat > 0 {
                best = best.min(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        best
    }

    fn report(&self, kernel: &str, shape: &str, ms: f64, bytes: f64, flops: f64) {
        println!(
            "{{\"kernel\": \"{kernel}\", \"shape\": \"{shape}\", \"ms\": {ms:.4}, \"bytes\": {bytes:.0}, \"flops\": {flops:.0}, \"device\": \"{}\"}}",
            self.kernels.device_name()
        );
    }
}

fn grid_for(n: usize, threads: usize) -> u32 {
    n.div_ceil(threads).min(65_535 * 8) as u32
}

fn main() {
    let kernels = CudaKernels::new(0).unwrap_or_else(|e| {
        eprintln!("gpu_bench: {e}");
        std::process::exit(1);
    });
    let b = Bench { kernels: &kernels };
    const BF16: usize = 2;

    // RMSNorm with the fused residual add: tokens x hidden bf16.
    let (rows, cols) = (16_384usize, 4096usize);
    let (x, res, w, y, h) = (b.buffer(rows * cols * BF16), b.buffer(rows * cols * BF16), b.buffer(cols * BF16), b.buffer(rows * cols * BF16), b.buffer(rows * cols * BF16));
    let inv = b.buffer(rows * 4);
    let ms = b.time(&mut [(
        "rms_norm_forward_bf16",
        LaunchConfig::linear(rows as u32, 256),
        Args::default().buf(&x).buf(&res).buf(&w).buf(&y).buf(&h).buf(&inv).val(rows as i64).val(cols as i64).val(1e-5f32),
    )]);
    b.report("rms_norm_fwd+residual", &format!("{rows}x{cols} bf16"), ms, (4 * rows * cols * BF16) as f64, 0.0);
    let (gy, gh, gw) = (b.buffer(rows * cols * BF16), b.buffer(rows * cols * BF16), b.zeros(cols * 4).unwrap());
    let ms = b.time(&mut [(
        "rms_norm_backward_bf16",
        LaunchConfig { dynamic_shared: cols * 4, ..LaunchConfig::linear(1024, 256) },
        Args::default().buf(&h).buf(&w).buf(&gy).null().buf(&inv).buf(&gh).buf(&gw).val(rows as i64).val(cols as i64),
    )]);
    b.report("rms_norm_bwd", &format!("{rows}x{cols} bf16"), ms, (3 * rows * cols * BF16) as f64, 0.0);

    // SwiGLU: tokens x intermediate bf16.
    let n = 16_384usize * 11_008;
    let (gate, up, out) = (b.buffer(n * BF16), b.buffer(n * BF16), b.buffer(n * BF16));
    let ms = b.time(&mut [("swiglu_forward_bf16", LaunchConfig::linear(grid_for(n, 256), 256), Args::default().buf(&gate).buf(&up).buf(&out).val(n as i64))]);
    b.report("swiglu_fwd", &format!("{n} bf16"), ms, (3 * n * BF16) as f64, 0.0);
    let (g, dg, du) = (b.buffer(n * BF16), b.buffer(n * BF16), b.buffer(n * BF16));
    let ms = b.time(&mut [(
        "swiglu_backward_bf16",
        LaunchConfig::linear(grid_for(n, 256), 256),
        Args::default().buf(&gate).buf(&up).buf(&g).buf(&dg).buf(&du).val(n as i64),
    )]);
    b.report("swiglu_bwd", &format!("{n} bf16"), ms, (5 * n * BF16) as f64, 0.0);
    drop((gate, up, out, g, dg, du));

    // RoPE on q: tokens x 32 heads x 128.
    let (tokens, heads, head_dim) = (16_384usize, 32usize, 128usize);
    let half = head_dim / 2;
    let (q, qo) = (b.buffer(tokens * heads * head_dim * BF16), b.buffer(tokens * heads * head_dim * BF16));
    let (cos, sin) = (b.buffer(tokens * half * 4), b.buffer(tokens * half * 4));
    let positions: Vec<u8> = (0..tokens as i64).flat_map(|p| (p % 4096).to_le_bytes()).collect();
    let pos = kernels.upload(&positions).unwrap();
    let pairs = tokens * heads * half;
    let ms = b.time(&mut [(
        "rope_bf16",
        LaunchConfig::linear(grid_for(pairs, 256), 256),
        Args::default().buf(&q).buf(&cos).buf(&sin).buf(&pos).buf(&qo).val(tokens as i64).val(heads as i32).val(head_dim as i32).val(0i32),
    )]);
    b.report("rope_fwd", &format!("{tokens}x{heads}x{head_dim} bf16"), ms, (2 * tokens * heads * head_dim * BF16) as f64, 0.0);
    drop((q, qo, cos, sin));

    // Cross-entropy: rows x vocab bf16 logits.
    let (rows, vocab) = (4096usize, 128_256usize);
    let logits = b.buffer(rows * vocab * BF16);
    let targets: Vec<u8> = (0..rows as i64).flat_map(|r| ((r * 7919) % vocab as i64).to_le_bytes()).collect();
    let targets = kernels.upload(&targets).unwrap();
    let (lse, loss, bad) = (b.buffer(rows * 4), b.buffer(rows * 4), b.zeros(4).unwrap());
    let ms = b.time(&mut [(
        "cross_entropy_forward_bf16",
        LaunchConfig::linear(rows as u32, 1024),
        Args::default().buf(&logits).buf(&targets).buf(&lse).buf(&loss).val(rows as i64).val(vocab as i64).val(-100i64).buf(&bad),
    )]);
    b.report("cross_entropy_fwd", &format!("{rows}x{vocab} bf16"), ms, (rows * vocab * BF16) as f64, 0.0);
    let grad = b.buffer(rows * vocab * BF16);
    let ms = b.time(&mut [(
        "cross_entropy_backward_bf16",
        LaunchConfig { grid: [64, rows as u32, 1], block: [256, 1, 1], dynamic_shared: 0 },
        Args::default().buf(&logits).buf(&targets).buf(&lse).buf(&grad).val(rows as i64).val(vocab as i64).val(-100i64).val(1.0f32 / rows as f32),
    )]);
    b.report("cross_entropy_bwd", &format!("{rows}x{vocab} bf16"), ms, (2 * rows * vocab * BF16) as f64, 0.0);
    drop((logits, grad));

    // AdamW over 100M bf16 parameters with f32 master weights and moments.
    let n = 100_000_000usize;
    let (p, master, g, m, v) = (b.buffer(n * BF16), b.buffer(n * 4), b.buffer(n * BF16), b.zeros(n * 4).unwrap(), b.zeros(n * 4).unwrap());
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct AdamWStep([f32; 7], u32);
    let hyper = AdamWStep([0.9, 0.999, 1e-8, 1e-3, 0.03, 0.9999, 0.0], 0);
    let ms = b.time(&mut [(
        "adamw_bf16",
        LaunchConfig::linear(grid_for(n, 256).min(132 * 16), 256),
        Args::default().buf(&p).buf(&master).buf(&g).buf(&m).buf(&v).val(n as i64).val(hyper).null(),
    )]);
    b.report("adamw_bf16_master", &format!("{n} params"), ms, (n * (2 * BF16 + BF16 + 6 * 4)) as f64, 0.0);
    drop((p, master, g, m, v));

    // Causal flash attention, one sequence, GQA 32/8 heads, head_dim 128, bf16.
    for seq in [2048usize, 4096] {
        let (hq, hkv, d) = (32usize, 8usize, 128usize);
        let (q, k, v, o) = (b.buffer(seq * hq * d * BF16), b.buffer(seq * hkv * d * BF16), b.buffer(seq * hkv * d * BF16), b.buffer(seq * hq * d * BF16));
        let lse = b.buffer(hq * seq * 4);
        let cu = kernels.upload(&[0i32.to_le_bytes(), (seq as i32).to_le_bytes()].concat()).unwrap();
        let scale = 1.0f32 / (d as f32).sqrt();
        let ms = b.time(&mut [(
            "flash_attention_forward_bf16_d128",
            LaunchConfig { grid: [seq.div_ceil(16) as u32, hq as u32, 1], block: [128, 1, 1], dynamic_shared: 0 },
            Args::default().buf(&q).buf(&k).buf(&v).buf(&cu).buf(&o).buf(&lse).val(hq as i32).val(hkv as i32).val(seq as i64).val(scale).val(1i32),
        )]);
        // Causal: half of the 4 * seq^2 * d flops per head of the full product pair.
        let flops = 2.0 * (hq * seq * seq * d) as f64;
        b.report("flash_attention_fwd", &format!("seq {seq} h {hq}/{hkv} d {d} bf16 causal"), ms, 0.0, flops);
        let (go, delta, gq, gk, gv) = (b.buffer(seq * hq * d * BF16), b.buffer(hq * seq * 4), b.zeros(seq * hq * d * 4).unwrap(), b.buffer(seq * hkv * d * BF16), b.buffer(seq * hkv * d * BF16));
        let shared = (4 * 32 * (d + 1) + 4 * 2 * d) * 4;
        let ms = b.time(&mut [
            (
                "flash_attention_delta_bf16",
                LaunchConfig::linear(1024, 256),
                Args::default().buf(&o).buf(&go).buf(&delta).val(seq as i64).val(hq as i32).val(d as i32),
            ),
            (
                "flash_attention_backward_bf16_d128",
                LaunchConfig { grid: [seq.div_ceil(32) as u32, hkv as u32, 1], block: [128, 1, 1], dynamic_shared: shared },
                Args::default()
                    .buf(&q)
                    .buf(&k)
                    .buf(&v)
                    .buf(&go)
                    .buf(&lse)
                    .buf(&delta)
                    .buf(&cu)
                    .buf(&gq)
                    .buf(&gk)
                    .buf(&gv)
                    .val(hq as i32)
                    .val(hkv as i32)
                    .val(seq as i64)
                    .val(scale)
                    .val(1i32),
            ),
        ]);
        b.report("flash_attention_bwd", &format!("seq {seq} h {hq}/{hkv} d {d} bf16 causal"), ms, 0.0, 2.5 * flops);
    }
}
