//! `ferrotune bench`: micro-benchmarks of the engine's hot paths.
//!
//! `ferrotune bench gemm` times the CPU GEMM (`sgemm`, into a preallocated C, so allocation is not measured) on
//! the shapes that matter for training and prints GFLOP/s. Each case is warmed up once, then run repeatedly
//! until `--min-time` has passed (at least 3 runs); the table and the JSON report the **best** run (the least
//! disturbed by other load on the machine) and the median beside it. `scripts/bench_gemm_numpy.py` measures
//! numpy (OpenBLAS) the same way and prints a side-by-side comparison.

#[path = "bench_generate.rs"]
mod bench_generate;

use ferrotune_tensor::cpu::gemm::{self, GemmInput, GemmKernel, MatMut, MatRef};
use ferrotune_tensor::{bf16, f16};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Time the CPU GEMM (C = A·B, f32 accumulation) and report GFLOP/s per shape and thread count.
    Gemm(GemmArgs),
    /// Time the inference engine: prompt processing and decode tokens/s per weight format and batch size.
    Generate(bench_generate::GenerateArgs),
}

#[derive(clap::Args)]
pub struct GemmArgs {
    /// Shapes as MxNxK (C is M x N, the inner dimension is K), comma-separated. Default: 1024x1024x1024 and the
    /// SmolLM2-135M training products T x 576 · 576 x 1536, T x 1536 · 1536 x 576 and T x 576 · 576 x 49152
    /// for T = 512, 1024, 2048.
    #[arg(long, value_delimiter = ',')]
    pub shapes: Vec<String>,
    /// Thread counts to run, comma-separated (default: 1 and all cores).
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Input element type (accumulation is always f32).
    #[arg(long, value_enum, default_value_t = InputDType::F32)]
    pub dtype: InputDType,
    /// Micro-kernel: auto, avx512, avx2 or generic (a kernel the CPU lacks falls back to the best it has).
    #[arg(long, default_value = "auto")]
    pub kernel: String,
    /// Operand layouts, comma-separated: nn (A·B), tn (Aᵀ·B, A stored K x M) and nt (A·Bᵀ, B stored N x K),
    /// the three products of a linear layer's forward and backward passes.
    #[arg(long, value_delimiter = ',', default_value = "nn")]
    pub layout: Vec<String>,
    /// Seconds to keep repeating each case after its warm-up run.
    #[arg(long, default_value_t = 1.0)]
    pub min_time: f64,
    /// Print one JSON object per case (for scripts/bench_gemm_numpy.py --compare) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Rank single-thread runs by the thread's CPU time (Linux x86_64) instead of wall time: on a machine shared with
    /// other jobs this leaves out the time the thread waited for a core. Multi-thread runs stay wall-clock.
    #[arg(long)]
    pub cpu_time: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputDType {
    F32,
    Bf16,
    F16,
}

impl InputDType {
    fn name(self) -> &'static str {
        match self {
            InputDType::F32 => "f32",
            InputDType::Bf16 => "bf16",
            InputDType::F16 => "f16",
        }
    }
}

pub fn run(cmd: BenchCommand) -> Result<(), String> {
    match cmd {
        BenchCommand::Gemm(args) => run_gemm(args),
        BenchCommand::Generate(args) => bench_generate::run(args),
    }
}

/// The default shapes: 1024^3, then the SmolLM2-135M linear layers (hidden 576, MLP 1536, vocabulary 49152).
pub fn default_gemm_shapes() -> Vec<(usize, usize, usize)> {
    let mut shapes = vec![(1024, 1024, 1024)];
    for t in [512, 1024, 2048] {
        shapes.extend([(t, 1536, 576), (t, 576, 1536), (t, 49152, 576)]);
    }
    shapes
}

fn parse_shape(s: &str) -> Result<(usize, usize, usize), String> {
    let dims: Vec<usize> = s
        .trim()
        .split(['x', 'X'])
        .map(|d| d.parse::<usize>().map_err(|_| format!("shape {s:?}: expected MxNxK with positive integers")))
        .collect::<Result<_, _>>()?;
    match dims[..] {
        [m, n, k] if m > 0 && n > 0 && k > 0 => Ok((m, n, k)),
        _ => Err(format!("shape {s:?}: expected MxNxK with positive integers")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OperandLayout {
    /// A is M x K, B is K x N, both row-major.
    Nn,
    /// A is stored K x M (so the product reads Aᵀ), B row-major.
    Tn,
    /// B is stored N x K (so the product reads Bᵀ), A row-major.
    Nt,
}

impl OperandLayout {
    fn parse(s: &str) -> Result<OperandLayout, String> {
        match s.trim() {
            "nn" => Ok(OperandLayout::Nn),
            "tn" => Ok(OperandLayout::Tn),
            "nt" => Ok(OperandLayout::Nt),
            other => Err(format!("layout {other:?}: expected nn, tn or nt")),
        }
    }
    fn name(self) -> &'static str {
        match self {
            OperandLayout::Nn => "nn",
            OperandLayout::Tn => "tn",
            OperandLayout::Nt => "nt",
        }
    }
}

/// One timed case (seconds).
struct Measurement {
    best: f64,
    median: f64,
    runs: usize,
}

fn run_gemm(args: GemmArgs) -> Result<(), String> {
    let shapes = if args.shapes.is_empty() {
        default_gemm_shapes()
    } else {
        args.shapes.iter().map(|s| parse_shape(s)).collect::<Result<_, _>>()?
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut threads = if args.threads.is_empty() { vec![1, cores] } else { args.threads.clone() };
    threads.dedup();
    if threads.contains(&0) {
        return Err("--threads: thread counts must be at least 1".into());
    }
    let kernel = GemmKernel::from_name(&args.kernel)
        .ok_or_else(|| format!("--kernel {:?}: expected auto, avx512, avx2 or generic", args.kernel))?;
    let kernel_name = kernel.resolve().name();
    let layouts = args.layout.iter().map(|s| OperandLayout::parse(s)).collect::<Result<Vec<_>, _>>()?;
    if !(args.min_time >= 0.0 && args.min_time.is_finite()) {
        return Err("--min-time must be a non-negative number of seconds".into());
    }
    let pools = threads
        .iter()
        .map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().map(|p| (t, p)).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;

    if !args.json {
        println!(
            "ferrotune sgemm, kernel {kernel_name}, {} inputs, f32 accumulation; best (and median) of repeated runs after a warm-up",
            args.dtype.name()
        );
        println!("{:>6} {:>6} {:>6} {:>6} {:>7} {:>12} {:>14} {:>6}", "M", "N", "K", "layout", "threads", "best GFLOP/s", "median GFLOP/s", "runs");
    }
    for &(m, n, k) in &shapes {
        for &layout in &layouts {
            let timing = Timing { min_time: args.min_time, cpu_time: args.cpu_time };
            let measured = match args.dtype {
                InputDType::F32 => time_shape::<f32>(m, n, k, layout, kernel, &pools, &timing, |x| x),
                InputDType::Bf16 => time_shape::<bf16>(m, n, k, layout, kernel, &pools, &timing, bf16::from_f32),
                InputDType::F16 => time_shape::<f16>(m, n, k, layout, kernel, &pools, &timing, f16::from_f32),
            }?;
            for ((t, _), (measured, cpu_clock)) in pools.iter().zip(measured) {
                let flops = 2.0 * m as f64 * n as f64 * k as f64;
                let gflops = flops / measured.best / 1e9;
                if args.json {
                    let line = serde_json::json!({
                        "bench": "gemm",
                        "impl": "ferrotune",
                        "kernel": kernel_name,
                        "dtype": args.dtype.name(),
                        "layout": layout.name(),
                        "m": m, "n": n, "k": k,
                        "threads": t,
                        "seconds": measured.best,
                        "median_seconds": measured.median,
                        "runs": measured.runs,
                        "clock": if cpu_clock { "thread-cpu" } else { "wall" },
                        "gflops": gflops,
                    });
                    println!("{line}");
                } else {
                    println!(
                        "{m:>6} {n:>6} {k:>6} {:>6} {t:>7} {gflops:>12.1} {:>14.1} {:>6}",
                        layout.name(),
                        flops / measured.median / 1e9,
                        measured.runs
                    );
                }
            }
        }
    }
    Ok(())
}

/// Fill a buffer with deterministic values in [-1, 1) (the values do not affect the timing; zeros would let a
/// future sparse shortcut cheat).
fn fill<E>(len: usize, seed: u64, convert: fn(f32) -> E) -> Vec<E> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            convert((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

/// How long to repeat a case, and which clock ranks the runs.
struct Timing {
    min_time: f64,
    /// For single-thread pools: on-CPU time of the worker thread rather than wall time.
    cpu_time: bool,
}

/// Seconds of CPU time this thread has used, `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` (precise, unlike the
/// tick-granular /proc counters). Issued as a raw system call: the root package has no libc binding.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn thread_cpu_seconds() -> Option<f64> {
    const SYS_CLOCK_GETTIME: usize = 228;
    const CLOCK_THREAD_CPUTIME_ID: usize = 3;
    let mut timespec = [0i64; 2];
    let ret: isize;
    // SAFETY: the kernel writes one `struct timespec` (two i64 on x86_64) to the pointer, which points at
    // `timespec`, valid and writable; `syscall` clobbers only rcx and r11 (declared) and does not touch the stack.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_CLOCK_GETTIME as isize => ret,
            in("rdi") CLOCK_THREAD_CPUTIME_ID,
            in("rsi") timespec.as_mut_ptr(),
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    (ret == 0).then(|| timespec[0] as f64 + timespec[1] as f64 * 1e-9)
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn thread_cpu_seconds() -> Option<f64> {
    None
}

/// Time one shape and layout on every pool: the operands are built once and shared. Returns, per pool, the
/// measurement and whether it used the thread CPU clock.
#[allow(clippy::too_many_arguments)]
fn time_shape<E: GemmInput>(
    m: usize,
    n: usize,
    k: usize,
    layout: OperandLayout,
    kernel: GemmKernel,
    pools: &[(usize, rayon::ThreadPool)],
    timing: &Timing,
    convert: fn(f32) -> E,
) -> Result<Vec<(Measurement, bool)>, String> {
    let too_big = || format!("shape {m}x{n}x{k} is too large to allocate");
    let (a_len, b_len, c_len) = (m.checked_mul(k).ok_or_else(too_big)?, k.checked_mul(n).ok_or_else(too_big)?, m.checked_mul(n).ok_or_else(too_big)?);
    let a = fill(a_len, 1, convert);
    let b = fill(b_len, 2, convert);
    let mut c = vec![0f32; c_len];
    let (a_rs, a_cs) = if layout == OperandLayout::Tn { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if layout == OperandLayout::Nt { (1, k) } else { (n, 1) };
    let mut results = Vec::new();
    for (threads, pool) in pools {
        let cpu_clock = timing.cpu_time && *threads == 1;
        let mut once = || -> Result<f64, String> {
            let a = MatRef::new(&a, 0, m, k, a_rs, a_cs).map_err(|e| e.to_string())?;
            let b = MatRef::new(&b, 0, k, n, b_rs, b_cs).map_err(|e| e.to_string())?;
            let c = MatMut::new(&mut c, 0, m, n, n).map_err(|e| e.to_string())?;
            pool.install(|| {
                // Read on the worker thread, which is where a single-thread pool runs the whole product.
                let (wall, cpu) = (Instant::now(), if cpu_clock { thread_cpu_seconds() } else { None });
                gemm::sgemm_with_kernel(kernel, 1.0, a, b, 0.0, c);
                match (cpu_clock, cpu, thread_cpu_seconds()) {
                    (true, Some(before), Some(after)) => Ok(after - before),
                    (true, _, _) => Err("--cpu-time: this platform has no thread CPU clock".to_string()),
                    (false, _, _) => Ok(wall.elapsed().as_secs_f64()),
                }
            })
        };
        once()?;
        let mut times = Vec::new();
        let started = Instant::now();
        while times.len() < 3 || started.elapsed().as_secs_f64() < timing.min_time {
            times.push(once()?);
        }
        times.sort_by(f64::total_cmp);
        results.push((Measurement { best: times[0], median: times[times.len() / 2], runs: times.len() }, cpu_clock));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_reject_garbage() {
        assert_eq!(parse_shape("1024x576x1536"), Ok((1024, 576, 1536)));
        assert!(parse_shape("1024x576").is_err());
        assert!(parse_shape("0x1x1").is_err());
        assert!(parse_shape("ax1x1").is_err());
        assert_eq!(default_gemm_shapes().len(), 10);
    }

    #[test]
    fn a_tiny_bench_runs_in_every_layout() {
        let args = GemmArgs {
            shapes: vec!["8x9x10".into()],
            threads: vec![1, 2],
            dtype: InputDType::Bf16,
            kernel: "auto".into(),
            layout: vec!["nn".into(), "tn".into(), "nt".into()],
            min_time: 0.0,
            json: true,
            cpu_time: true,
        };
        run(BenchCommand::Gemm(args)).unwrap();
    }
}
