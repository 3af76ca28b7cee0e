//! Every kernel against `gemm_reference` in f64, over edge sizes, strides, transposes, offsets, alpha/beta,
//! half-precision inputs, and 1 and 2 threads. Kernels are forced through `sgemm_with_kernel` (not the
//! environment variable) so the tests can run in parallel.

use super::*;
use half::{bf16, f16};

/// Kernels this CPU can run (forcing one it lacks would silently test another).
fn available_kernels() -> Vec<GemmKernel> {
    let mut out = vec![GemmKernel::Generic];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            out.push(GemmKernel::Avx2);
        }
        if is_x86_feature_detected!("avx512f") {
            out.push(GemmKernel::Avx512);
        }
    }
    out
}

/// Every available kernel with its real blocking, and again with blocks so small (KC = 40, MC = 3 micro-panels,
/// NC = 2 micro-panels) that modest shapes cross k blocks, row blocks and column tiles.
fn kernels() -> Vec<(GemmKernel, MicroKernel<f32>)> {
    let mut out = Vec::new();
    for kernel in available_kernels() {
        let real = f32_kernel(kernel);
        out.push((kernel, real));
        out.push((kernel, MicroKernel { kc: 40, mc: 3 * real.mr, nc: 2 * real.nr, ..real }));
    }
    out
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
}

/// Deterministic values in [-1, 1) (a 64-bit LCG; no dependency on a random crate).
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// How an operand is laid out in its buffer.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Row-major, row stride = cols.
    RowMajor,
    /// Stored as the transpose (column-major view): row stride 1, column stride = rows.
    Transposed,
    /// Both strides > 1 and a gap at the start: row stride = 2*cols + 3, column stride 2, offset 5.
    Strided,
}

/// A `rows x cols` operand in `layout`, built from `vals` (row-major logical values): the buffer and the view's
/// (offset, row_stride, col_stride).
fn lay_out<T: Copy + Default>(vals: &[T], rows: usize, cols: usize, layout: Layout) -> (Vec<T>, usize, usize, usize) {
    let (offset, rs, cs) = match layout {
        Layout::RowMajor => (0, cols, 1),
        Layout::Transposed => (0, 1, rows),
        Layout::Strided => (5, 2 * cols + 3, 2),
    };
    let len = if rows == 0 || cols == 0 { offset } else { offset + (rows - 1) * rs + (cols - 1) * cs + 1 };
    let mut buf = vec![T::default(); len + 1];
    for r in 0..rows {
        for c in 0..cols {
            buf[offset + r * rs + c * cs] = vals[r * cols + c];
        }
    }
    (buf, offset, rs, cs)
}

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    a_layout: Layout,
    b_layout: Layout,
    alpha: f32,
    beta: f32,
}

impl Case {
    fn plain(m: usize, n: usize, k: usize) -> Case {
        Case { m, n, k, a_layout: Layout::RowMajor, b_layout: Layout::RowMajor, alpha: 1.0, beta: 0.0 }
    }
}

/// Run `case` with inputs of type `E` on `kernel` with `threads` threads and compare with the f64 reference.
///
/// Tolerance: each output is a k-term f32 dot product accumulated with FMAs, then scaled by alpha and combined
/// with beta * C_old. The classic bound for recursive summation gives |error| <= gamma_k * sum_p |a_ip b_pj| with
/// gamma_k ~ k * u, u = 2^-24; the alpha/beta step adds a couple of roundings of (|alpha| S + |beta| |C_old|).
/// We allow (k + 2) * 2u of that magnitude (twice the worst-case bound, so only a real bug fails it), plus
/// 1e-30 so all-zero products compare exactly. The inputs were rounded to E *before* the reference sees them,
/// so half-precision inputs need no extra slack.
fn check<E: GemmInput>((kernel, mk): (GemmKernel, MicroKernel<f32>), threads: usize, case: Case, to_e: fn(f32) -> E) {
    let Case { m, n, k, a_layout, b_layout, alpha, beta } = case;
    let seed = (m * 1_000_003 + n * 1009 + k) as u64;
    let a_vals: Vec<E> = values(seed, m * k).into_iter().map(to_e).collect();
    let b_vals: Vec<E> = values(seed + 1, k * n).into_iter().map(to_e).collect();
    // C starts as NaN when beta == 0: the GEMM must not read it.
    let c_old: Vec<f32> = if beta == 0.0 { vec![f32::NAN; m * n] } else { values(seed + 2, m * n) };

    let (a_buf, a_off, a_rs, a_cs) = lay_out(&a_vals, m, k, a_layout);
    let (b_buf, b_off, b_rs, b_cs) = lay_out(&b_vals, k, n, b_layout);
    // C has a row stride wider than n and an offset, so writes outside the block would show.
    let (c_off, ldc) = (3, n + 2);
    let sentinel = -7.25f32;
    let mut c_buf = vec![sentinel; c_off + m * ldc + 4];
    for i in 0..m {
        c_buf[c_off + i * ldc..][..n].copy_from_slice(&c_old[i * n..][..n]);
    }

    let a = MatRef::new(&a_buf, a_off, m, k, a_rs, a_cs).unwrap();
    let b = MatRef::new(&b_buf, b_off, k, n, b_rs, b_cs).unwrap();
    let c = MatMut::new(&mut c_buf, c_off, m, n, ldc).unwrap();
    // The real blocking goes through the public entry point, so products with few rows or columns take the skinny
    // path there; the tiny blocking drives the packed loop nest directly on every shape.
    let real_blocking = mk.kc == f32_kernel(kernel).kc;
    pool(threads).install(|| if real_blocking { sgemm_with_kernel(kernel, alpha, a, b, beta, c) } else { driver::gemm(&mk, alpha, a, b, beta, c) });

    let wide = |v: &[E]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
    let (a64, b64) = (wide(&a_vals), wide(&b_vals));
    let mut c64: Vec<f64> = c_old.iter().map(|&x| x as f64).collect();
    let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<f64>>();
    let mut magnitude = vec![0.0; m * n];
    gemm_reference(
        alpha as f64,
        MatRef::new(&a64, 0, m, k, k, 1).unwrap(),
        MatRef::new(&b64, 0, k, n, n, 1).unwrap(),
        beta as f64,
        MatMut::new(&mut c64, 0, m, n, n).unwrap(),
    );
    gemm_reference(
        1.0,
        MatRef::new(&abs(&a64), 0, m, k, k, 1).unwrap(),
        MatRef::new(&abs(&b64), 0, k, n, n, 1).unwrap(),
        0.0,
        MatMut::new(&mut magnitude, 0, m, n, n).unwrap(),
    );

    let u = f32::EPSILON as f64 / 2.0;
    for i in 0..m {
        for j in 0..n {
            let got = c_buf[c_off + i * ldc + j] as f64;
            let want = c64[i * n + j];
            let old = if beta == 0.0 { 0.0 } else { c_old[i * n + j].abs() as f64 };
            let scale = (alpha.abs() as f64) * magnitude[i * n + j] + (beta.abs() as f64) * old;
            let tol = (k as f64 + 2.0) * 2.0 * u * scale + 1e-30;
            assert!(
                (got - want).abs() <= tol,
                "{kernel:?} kc={} threads={threads} {case:?} {}: C[{i},{j}] = {got}, want {want} (tol {tol})",
                mk.kc,
                std::any::type_name::<E>()
            );
        }
        // The gap between rows (columns n..ldc) is never touched.
        assert!(c_buf[c_off + i * ldc + n..][..ldc - n].iter().all(|&x| x == sentinel), "{kernel:?} {case:?}: wrote past a row");
    }
    assert!(c_buf[..c_off].iter().all(|&x| x == sentinel), "{kernel:?} {case:?}: wrote before C");
}

const EDGE_SIZES: [usize; 23] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 31, 33, 65, 127, 129, 1];

#[test]
fn edge_sizes_every_kernel() {
    for kernel in kernels() {
        for &m in &EDGE_SIZES[..22] {
            for &n in &[1, 7, 16, 17, 33, 65] {
                check(kernel, 1, Case::plain(m, n, 9), |x| x);
            }
        }
        for &n in &EDGE_SIZES[..22] {
            for &m in &[1, 5, 12, 13, 25] {
                check(kernel, 1, Case::plain(m, n, 13), |x| x);
            }
        }
        for &k in &[1, 2, 3, 15, 16, 17, 255, 256, 257, 600] {
            check(kernel, 1, Case::plain(13, 35, k), |x| x);
        }
    }
}

#[test]
fn strides_transposes_and_offsets() {
    let layouts = [Layout::RowMajor, Layout::Transposed, Layout::Strided];
    for kernel in kernels() {
        for a_layout in layouts {
            for b_layout in layouts {
                for &(m, n, k) in &[(1, 1, 1), (13, 33, 17), (31, 65, 300), (12, 32, 16), (40, 7, 3), (1, 70, 45), (50, 1, 33)] {
                    let case = Case { m, n, k, a_layout, b_layout, alpha: 1.0, beta: 0.0 };
                    check(kernel, 1, case, |x| x);
                }
            }
        }
    }
}

#[test]
fn alpha_beta_and_multiple_k_blocks() {
    for kernel in kernels() {
        for &(alpha, beta) in &[(1.0, 1.0), (-0.5, 2.0), (2.0, 0.0), (0.0, 0.5), (1.5, -1.0)] {
            // k = 600 spans three k blocks, so beta must be applied once and later blocks accumulate.
            for &(m, n, k) in &[(17, 33, 600), (5, 3, 7), (13, 47, 257)] {
                let case = Case { m, n, k, a_layout: Layout::Transposed, b_layout: Layout::RowMajor, alpha, beta };
                check(kernel, 1, case, |x| x);
            }
        }
    }
}

#[test]
fn k_zero_scales_or_clears_c() {
    for kernel in kernels() {
        check(kernel, 1, Case { beta: 0.0, ..Case::plain(7, 9, 0) }, |x| x);
        check(kernel, 1, Case { beta: 0.75, ..Case::plain(7, 9, 0) }, |x| x);
        check(kernel, 2, Case::plain(0, 9, 5), |x| x);
        check(kernel, 2, Case::plain(9, 0, 5), |x| x);
    }
}

#[test]
fn half_precision_inputs() {
    for kernel in kernels() {
        for &(m, n, k) in &[(13, 33, 17), (1, 40, 70), (29, 31, 300)] {
            for a_layout in [Layout::RowMajor, Layout::Transposed] {
                for b_layout in [Layout::RowMajor, Layout::Transposed, Layout::Strided] {
                    let case = Case { m, n, k, a_layout, b_layout, alpha: 1.0, beta: 0.5 };
                    check(kernel, 1, case, bf16::from_f32);
                    check(kernel, 1, case, f16::from_f32);
                }
            }
        }
    }
}

/// Large enough to run in parallel (m*n*k above the fork threshold), with column tiles, row tiles (n narrow)
/// and a row-major / transposed mix as the backward pass produces.
#[test]
fn two_threads_match_one() {
    for kernel in kernels() {
        for threads in [1, 2] {
            for &(m, n, k, a_layout, b_layout) in &[
                (129, 200, 129, Layout::RowMajor, Layout::RowMajor),
                (300, 20, 400, Layout::RowMajor, Layout::Transposed),
                (65, 1100, 40, Layout::Transposed, Layout::RowMajor),
                (127, 127, 520, Layout::Transposed, Layout::Transposed),
                // Matrix-vector products large enough to split: rows of B contiguous, then columns of A.
                (1, 5000, 300, Layout::RowMajor, Layout::RowMajor),
                (3000, 1, 400, Layout::RowMajor, Layout::Strided),
                (2000, 1, 600, Layout::Transposed, Layout::RowMajor),
                // LoRA's rank-8 products on the skinny path, every way they appear in a linear's forward and
                // backward: x Aᵀ, G B, Xᵀ G', (x Aᵀ)ᵀ G.
                (640, 8, 576, Layout::RowMajor, Layout::Transposed),
                (640, 8, 1536, Layout::RowMajor, Layout::RowMajor),
                (576, 8, 640, Layout::Transposed, Layout::RowMajor),
                (8, 1536, 640, Layout::Transposed, Layout::RowMajor),
                (16, 700, 300, Layout::Strided, Layout::Transposed),
            ] {
                let case = Case { m, n, k, a_layout, b_layout, alpha: 1.0, beta: 0.0 };
                check(kernel, threads, case, |x| x);
            }
            let case = Case { m: 70, n: 300, k: 300, a_layout: Layout::RowMajor, b_layout: Layout::Strided, alpha: 0.5, beta: 1.0 };
            check(kernel, threads, case, bf16::from_f32);
        }
    }
}

/// dgemm runs the packed portable path; in f64 the bound is (k + 2) * 2u with u = 2^-53.
#[test]
fn dgemm_matches_reference() {
    for &(m, n, k) in &[(1, 1, 1), (13, 9, 300), (65, 33, 17), (130, 140, 150)] {
        let a: Vec<f64> = values(1, m * k).into_iter().map(f64::from).collect();
        let b: Vec<f64> = values(2, k * n).into_iter().map(f64::from).collect();
        let c0: Vec<f64> = values(3, m * n).into_iter().map(f64::from).collect();
        let (mut fast, mut slow) = (c0.clone(), c0.clone());
        // A transposed in memory: stored k x m.
        let mut at = vec![0.0; m * k];
        for i in 0..m {
            for p in 0..k {
                at[p * m + i] = a[i * k + p];
            }
        }
        pool(2).install(|| {
            dgemm(0.5, MatRef::new(&at, 0, m, k, 1, m).unwrap(), MatRef::new(&b, 0, k, n, n, 1).unwrap(), 2.0, MatMut::new(&mut fast, 0, m, n, n).unwrap())
        });
        gemm_reference(0.5, MatRef::new(&a, 0, m, k, k, 1).unwrap(), MatRef::new(&b, 0, k, n, n, 1).unwrap(), 2.0, MatMut::new(&mut slow, 0, m, n, n).unwrap());
        let tol = (k as f64 + 2.0) * f64::EPSILON * (0.5 * k as f64 + 2.0);
        for (x, y) in fast.iter().zip(&slow) {
            assert!((x - y).abs() <= tol, "dgemm {m}x{n}x{k}: {x} vs {y}");
        }
    }
}

/// The public entry points (the tests above call the driver with explicit blocking).
#[test]
fn public_entry_points() {
    let (m, n, k) = (37, 45, 300);
    let a = values(1, m * k);
    let b = values(2, k * n);
    let mut want = vec![0f32; m * n];
    gemm_reference(1.0, MatRef::new(&a, 0, m, k, k, 1).unwrap(), MatRef::new(&b, 0, k, n, n, 1).unwrap(), 0.0, MatMut::new(&mut want, 0, m, n, n).unwrap());
    let mut runs = vec![GemmKernel::Auto];
    runs.extend(available_kernels());
    for kernel in runs {
        let mut got = vec![f32::NAN; m * n];
        sgemm_with_kernel(kernel, 1.0, MatRef::new(&a, 0, m, k, k, 1).unwrap(), MatRef::new(&b, 0, k, n, n, 1).unwrap(), 0.0, MatMut::new(&mut got, 0, m, n, n).unwrap());
        // Same bound as `check`: |a|, |b| < 1 so sum |a b| < k.
        let tol = (k as f32 + 2.0) * f32::EPSILON * k as f32;
        assert!(got.iter().zip(&want).all(|(x, y)| (x - y).abs() <= tol), "{kernel:?}");
    }
    let mut got = vec![f32::NAN; m * n];
    sgemm(1.0, MatRef::new(&a, 0, m, k, k, 1).unwrap(), MatRef::new(&b, 0, k, n, n, 1).unwrap(), 0.0, MatMut::new(&mut got, 0, m, n, n).unwrap());
    assert!(got.iter().all(|x| x.is_finite()));
}

#[test]
fn views_that_overrun_are_rejected() {
    let data = vec![0f32; 10];
    assert!(MatRef::new(&data, 0, 2, 5, 5, 1).is_ok());
    assert!(MatRef::new(&data, 1, 2, 5, 5, 1).is_err());
    assert!(MatRef::new(&data, 0, 3, 4, usize::MAX / 2, 1).is_err());
    let mut out = vec![0f32; 10];
    assert!(MatMut::new(&mut out, 0, 2, 5, 5).is_ok());
    assert!(MatMut::new(&mut out, 0, 2, 6, 5).is_err());
    assert!(MatMut::new(&mut out, 1, 2, 5, 5).is_err());
}

#[test]
fn kernel_names_and_fallback() {
    assert_eq!(GemmKernel::from_name("AVX512"), Some(GemmKernel::Avx512));
    assert_eq!(GemmKernel::from_name("generic"), Some(GemmKernel::Generic));
    assert_eq!(GemmKernel::from_name("sse9"), None);
    assert_eq!(GemmKernel::Generic.resolve(), GemmKernel::Generic);
    let available = available_kernels();
    for k in [GemmKernel::Avx512, GemmKernel::Avx2, GemmKernel::Auto] {
        assert!(available.contains(&k.resolve()), "{k:?} resolved to a kernel this CPU lacks");
    }
    assert!(["avx512", "avx2", "generic"].contains(&selected_kernel()));
}
