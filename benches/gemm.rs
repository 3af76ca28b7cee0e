//! Criterion benchmarks of the CPU GEMM on a few training shapes (`cargo bench --bench gemm`). Throughput is
//! reported in "elements" = multiply-adds, so criterion's elem/s figure is half the FLOP/s. For the full shape
//! list and the numpy comparison use `ferrotune bench gemm` and scripts/bench_gemm_numpy.py.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrotune_tensor::cpu::gemm::{sgemm, MatMut, MatRef};
use std::hint::black_box;

fn values(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5).collect()
}

/// (name, m, n, k, A transposed in memory, B transposed in memory)
const CASES: [(&str, usize, usize, usize, bool, bool); 5] = [
    ("square", 1024, 1024, 1024, false, false),
    ("mlp_up", 1024, 1536, 576, false, false),
    ("mlp_up_dx (A·Bᵀ)", 1024, 576, 1536, false, true),
    ("mlp_up_dw (Aᵀ·B)", 576, 1536, 1024, true, false),
    ("lm_head", 512, 49152, 576, false, false),
];

fn gemm(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut group = c.benchmark_group("sgemm");
    group.sample_size(10);
    for (name, m, n, k, a_t, b_t) in CASES {
        let (a, b) = (values(m * k), values(k * n));
        let mut out = vec![0f32; m * n];
        let (a_rs, a_cs) = if a_t { (1, m) } else { (k, 1) };
        let (b_rs, b_cs) = if b_t { (1, k) } else { (n, 1) };
        group.throughput(Throughput::Elements((m * n * k) as u64));
        for threads in [1, cores] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let id = BenchmarkId::new(format!("{name} {m}x{n}x{k}"), format!("{threads} threads"));
            group.bench_function(id, |bench| {
                bench.iter(|| {
                    let a = MatRef::new(&a, 0, m, k, a_rs, a_cs).unwrap();
                    let b = MatRef::new(&b, 0, k, n, b_rs, b_cs).unwrap();
                    let c = MatMut::new(&mut out, 0, m, n, n).unwrap();
                    pool.install(|| sgemm(1.0, black_box(a), black_box(b), 0.0, c));
                })
            });
            if cores == 1 {
                break;
            }
        }
    }
    group.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
