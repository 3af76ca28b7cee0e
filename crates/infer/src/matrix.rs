//! Weight matrices in any [`WeightFormat`] and the products the decoder needs: `out [n, rows] = x [n, cols] · Wᵀ`
//! with `W [rows, cols]` in HF `[out, in]` layout.
//!
//! Two paths, chosen by the number of activation rows `n`:
//!
//! - **Few rows** (decode: one row per active sequence, `n <= SMALL_BATCH`): each weight row is read once and
//!   dotted with every activation row while it is in registers/L1, so a batch of 8 sequences costs about one
//!   pass over the weights, not eight. Quantized blocks are decoded 32 weights at a time on the stack (never a
//!   dequantized row in memory): `dot = d * Σ q_i x_i (+ m * Σ x_i)` with the block sums `Σ x_i` of each
//!   activation row computed once per call. Threads split the weight rows.
//! - **Many rows** (prefill): f32 and bf16 weights go straight to the engine's packed GEMM (`sgemm`, bf16 widened
//!   while packing). Quantized weights are dequantized `PANEL_ROWS` rows at a time into a reused scratch panel
//!   (a few hundred KiB) that the GEMM then consumes: the dequantization is amortised over all `n` rows and no full
//!   f32 copy of the matrix ever exists.
//!
//! The few-rows kernel is compiled three times (AVX-512, AVX2+FMA, portable) and picked at run time with
//! `is_x86_feature_detected!`; `FERROTUNE_INFER_KERNEL=avx512|avx2|generic` forces one (tests compare them).

#[cfg(target_arch = "x86_64")]
mod avx512;

use crate::quant::{quantize_q4_1, quantize_q8_0, BlockQ4_1, BlockQ8_0, WeightFormat, QK};
use ferrotune_models::{bail, Result};
use ferrotune_tensor::cpu::gemm::{sgemm, MatMut, MatRef};
use ferrotune_tensor::{bf16, DType, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Up to this many activation rows use the weight-streaming kernel; more go through the GEMM.
pub const SMALL_BATCH: usize = 16;
/// Activation rows dotted against one decoded block at a time (accumulators stay in registers).
const GROUP: usize = 8;
/// Weight rows dequantized per GEMM panel on the prefill path.
const PANEL_ROWS: usize = 256;

/// The stored weights of one matrix.
#[derive(Clone, Debug)]
pub enum MatrixData {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    Q8_0(Vec<BlockQ8_0>),
    Q4_1(Vec<BlockQ4_1>),
}

/// A `[rows, cols]` row-major weight matrix (HF `[out_features, in_features]`).
#[derive(Clone, Debug)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: MatrixData,
}

impl Matrix {
    /// Wrap stored data, checking its length against `rows x cols` (quantized rows must be whole blocks).
    pub fn new(rows: usize, cols: usize, data: MatrixData) -> Result<Matrix> {
        let elems = rows.checked_mul(cols).unwrap_or(usize::MAX);
        let (len, want) = match &data {
            MatrixData::F32(v) => (v.len(), elems),
            MatrixData::BF16(v) => (v.len(), elems),
            MatrixData::Q8_0(v) => (v.len(), elems / QK),
            MatrixData::Q4_1(v) => (v.len(), elems / QK),
        };
        if matches!(data, MatrixData::Q8_0(_) | MatrixData::Q4_1(_)) && !cols.is_multiple_of(QK) {
            bail!("a quantized matrix needs rows of whole {QK}-weight blocks; this one has {cols} columns");
        }
        if len != want {
            bail!("{len} stored elements/blocks do not make a {rows} x {cols} matrix ({want} expected)");
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Convert row-major f32 values to `format` (quantizing with llama.cpp's reference quantizers).
    pub fn from_f32(values: Vec<f32>, rows: usize, cols: usize, format: WeightFormat) -> Result<Matrix> {
        if values.len() != rows * cols {
            bail!("{} values do not make a {rows} x {cols} matrix", values.len());
        }
        if format.is_quantized() && !cols.is_multiple_of(QK) {
            bail!("cannot quantize to {}: rows of {cols} weights are not whole {QK}-weight blocks", format.name());
        }
        let data = match format {
            WeightFormat::F32 => MatrixData::F32(values),
            WeightFormat::BF16 => MatrixData::BF16(values.iter().map(|&v| bf16::from_f32(v)).collect()),
            WeightFormat::Q8_0 => MatrixData::Q8_0(quantize_q8_0(&values)?),
            WeightFormat::Q4_1 => MatrixData::Q4_1(quantize_q4_1(&values)?),
        };
        Matrix::new(rows, cols, data)
    }

    /// A 2-D float tensor `[rows, cols]` in `format`. A bf16 tensor kept as bf16 is not copied through f32.
    pub fn from_tensor(t: &Tensor, format: WeightFormat) -> Result<Matrix> {
        let &[rows, cols] = t.shape() else { bail!("a weight matrix must be 2-D, got shape {:?}", t.shape()) };
        if format == WeightFormat::BF16 && t.dtype() == DType::BF16 {
            return Matrix::new(rows, cols, MatrixData::BF16(t.contiguous()?.to_vec::<bf16>()?));
        }
        let values = t.to_dtype(DType::F32)?.contiguous()?.to_vec::<f32>()?;
        Matrix::from_f32(values, rows, cols, format)
    }

    /// Stack matrices with the same column count and format on top of each other (fused q/k/v and gate/up).
    pub fn concat_rows(parts: Vec<Matrix>) -> Result<Matrix> {
        let Some(first) = parts.first() else { bail!("nothing to concatenate") };
        let (cols, format) = (first.cols, first.format());
        if let Some(bad) = parts.iter().find(|p| p.cols != cols || p.format() != format) {
            bail!("cannot stack a {} {} x {} matrix under {} ones with {cols} columns", bad.format().name(), bad.rows, bad.cols, format.name());
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let data = match format {
            WeightFormat::F32 => MatrixData::F32(parts.into_iter().flat_map(|p| match p.data { MatrixData::F32(v) => v, _ => Vec::new() }).collect()),
            WeightFormat::BF16 => MatrixData::BF16(parts.into_iter().flat_map(|p| match p.data { MatrixData::BF16(v) => v, _ => Vec::new() }).collect()),
            WeightFormat::Q8_0 => MatrixData::Q8_0(parts.into_iter().flat_map(|p| match p.data { MatrixData::Q8_0(v) => v, _ => Vec::new() }).collect()),
            WeightFormat::Q4_1 => MatrixData::Q4_1(parts.into_iter().flat_map(|p| match p.data { MatrixData::Q4_1(v) => v, _ => Vec::new() }).collect()),
        };
        Matrix::new(rows, cols, data)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn data(&self) -> &MatrixData {
        &self.data
    }

    pub fn format(&self) -> WeightFormat {
        match self.data {
            MatrixData::F32(_) => WeightFormat::F32,
            MatrixData::BF16(_) => WeightFormat::BF16,
            MatrixData::Q8_0(_) => WeightFormat::Q8_0,
            MatrixData::Q4_1(_) => WeightFormat::Q4_1,
        }
    }

    /// Bytes the weights occupy.
    pub fn nbytes(&self) -> usize {
        match &self.data {
            MatrixData::F32(v) => v.len() * 4,
            MatrixData::BF16(v) => v.len() * 2,
            MatrixData::Q8_0(v) => v.len() * BlockQ8_0::BYTES,
            MatrixData::Q4_1(v) => v.len() * BlockQ4_1::BYTES,
        }
    }

    /// Row `r` as f32 (an embedding lookup; a panel of the prefill GEMM).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let cols = self.cols;
        let out = &mut out[..cols];
        match &self.data {
            MatrixData::F32(v) => out.copy_from_slice(&v[r * cols..][..cols]),
            MatrixData::BF16(v) => {
                for (o, w) in out.iter_mut().zip(&v[r * cols..][..cols]) {
                    *o = w.to_f32();
                }
            }
            MatrixData::Q8_0(v) => {
                let nb = cols / QK;
                for (o, blk) in out.chunks_exact_mut(QK).zip(&v[r * nb..][..nb]) {
                    blk.dequantize(o.try_into().expect("QK chunk"));
                }
            }
            MatrixData::Q4_1(v) => {
                let nb = cols / QK;
                for (o, blk) in out.chunks_exact_mut(QK).zip(&v[r * nb..][..nb]) {
                    blk.dequantize(o.try_into().expect("QK chunk"));
                }
            }
        }
    }

    /// The whole matrix as f32 (reference checks only: this is the copy the kernels avoid).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.row_f32(r, row);
        }
        out
    }

    /// `out [n, rows] = x [n, cols] · Wᵀ` (out is overwritten). Runs on the current rayon pool.
    pub fn matmul_t(&self, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        self.matmul_t_with(KernelChoice::Auto, x, n, out)
    }

    /// [`Matrix::matmul_t`] with an explicit kernel for the few-rows path (tests compare them).
    pub fn matmul_t_with(&self, kernel: KernelChoice, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        if x.len() != n * cols || out.len() != n * rows {
            bail!("matmul: x has {} values and out {} for n = {n} and a {rows} x {cols} weight", x.len(), out.len());
        }
        if n == 0 || rows == 0 {
            return Ok(());
        }
        if cols == 0 {
            out.fill(0.0);
            return Ok(());
        }
        if n <= SMALL_BATCH {
            self.few_rows(kernel.resolve(), x, n, out);
        } else {
            self.many_rows(x, n, out)?;
        }
        Ok(())
    }

    fn many_rows(&self, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        let a = MatRef::new(x, 0, n, cols, cols, 1)?;
        match &self.data {
            MatrixData::F32(w) => sgemm(1.0, a, MatRef::new(w, 0, cols, rows, 1, cols)?, 0.0, MatMut::new(out, 0, n, rows, rows)?),
            MatrixData::BF16(w) => sgemm(1.0, a, MatRef::new(w, 0, cols, rows, 1, cols)?, 0.0, MatMut::new(out, 0, n, rows, rows)?),
            MatrixData::Q8_0(_) | MatrixData::Q4_1(_) => PANEL.with(|panel| -> Result<()> {
                let mut panel = panel.borrow_mut();
                for r0 in (0..rows).step_by(PANEL_ROWS) {
                    let rb = PANEL_ROWS.min(rows - r0);
                    panel.resize(rb * cols, 0.0);
                    panel.par_chunks_mut(cols).enumerate().for_each(|(i, row)| self.row_f32(r0 + i, row));
                    let b = MatRef::new(&panel[..], 0, cols, rb, 1, cols)?;
                    sgemm(1.0, a, b, 0.0, MatMut::new(out, r0, n, rb, rows)?);
                }
                Ok(())
            })?,
        }
        Ok(())
    }

    fn few_rows(&self, kernel: KernelChoice, x: &[f32], n: usize, out: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        let nb = cols / QK;
        // Block sums of each activation row, for Q4_1's `m * Σ x` term.
        // (The AVX-512 kernels fold `m` into the decoded weights instead.)
        let xsums: Vec<f32> = if matches!(self.data, MatrixData::Q4_1(_)) && kernel != KernelChoice::Avx512 {
            x.chunks_exact(QK).map(|c| c.iter().sum()).collect()
        } else {
            Vec::new()
        };
        let threads = rayon::current_num_threads().max(1);
        // Enough chunks to balance threads, each big enough that task overhead stays small.
        let chunk = (rows / (threads * 8)).clamp(8, 256);
        let job = Job { m: self, x, xsums: &xsums, n, nb, kernel };
        if n == 1 {
            out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| job.rows(c * chunk, o));
        } else {
            // Rows-major scratch [rows, n], so each task owns a contiguous slice; transposed into out after.
            let mut t = vec![0.0f32; rows * n];
            t.par_chunks_mut(chunk * n).enumerate().for_each(|(c, o)| job.rows(c * chunk, o));
            for (r, vals) in t.chunks_exact(n).enumerate() {
                for (i, &v) in vals.iter().enumerate() {
                    out[i * rows + r] = v;
                }
            }
        }
    }
}

thread_local! {
    /// The dequantized panel of the prefill path, reused across calls on this thread.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Which build of the few-rows kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelChoice {
    /// `FERROTUNE_INFER_KERNEL` if set, else the best the CPU has.
    Auto,
    Avx512,
    Avx2,
    Generic,
}

impl KernelChoice {
    /// What actually runs: a request the CPU cannot honour steps down to the best kernel it has.
    pub fn resolve(self) -> KernelChoice {
        let wanted = match self {
            KernelChoice::Auto => env_choice(),
            k => k,
        };
        let best = best_kernel();
        match (wanted, best) {
            (KernelChoice::Auto, b) => b,
            (KernelChoice::Generic, _) => KernelChoice::Generic,
            (KernelChoice::Avx2, KernelChoice::Avx512 | KernelChoice::Avx2) => KernelChoice::Avx2,
            (KernelChoice::Avx512, KernelChoice::Avx512) => KernelChoice::Avx512,
            (_, b) => b,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelChoice::Auto => "auto",
            KernelChoice::Avx512 => "avx512",
            KernelChoice::Avx2 => "avx2",
            KernelChoice::Generic => "generic",
        }
    }
}

fn env_choice() -> KernelChoice {
    static CHOICE: OnceLock<KernelChoice> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("FERROTUNE_INFER_KERNEL").unwrap_or_default().trim() {
        "avx512" => KernelChoice::Avx512,
        "avx2" => KernelChoice::Avx2,
        "generic" => KernelChoice::Generic,
        _ => KernelChoice::Auto,
    })
}

fn best_kernel() -> KernelChoice {
    static BEST: OnceLock<KernelChoice> = OnceLock::new();
    *BEST.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return KernelChoice::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                return KernelChoice::Avx2;
            }
        }
        KernelChoice::Generic
    })
}

/// One few-rows product, shared by the tasks that split its weight rows.
struct Job<'a> {
    m: &'a Matrix,
    x: &'a [f32],
    xsums: &'a [f32],
    n: usize,
    nb: usize,
    kernel: KernelChoice,
}

impl Job<'_> {
    /// Weight rows `r0..r0 + out.len() / n`: `out[(r - r0) * n + i] = x_i · w_r`.
    fn rows(&self, r0: usize, out: &mut [f32]) {
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `resolve` only returns Avx512 when the CPU reports avx512f/bw/vl, fma and f16c.
            KernelChoice::Avx512 => unsafe { rows_avx512(self, r0, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `resolve` only returns Avx2 when the CPU reports avx2, fma and f16c.
            KernelChoice::Avx2 => unsafe { rows_avx2(self, r0, out) },
            _ => rows_portable(self, r0, out),
        }
    }
}

/// The AVX-512 build: the same row/group walk as [`rows_body`], on the hand-written kernels of [`avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn rows_avx512(job: &Job, r0: usize, out: &mut [f32]) {
    let (n, cols) = (job.n, job.m.cols);
    for (k, o) in out.chunks_exact_mut(n).enumerate() {
        let r = r0 + k;
        let mut g0 = 0;
        while g0 < n {
            let g = GROUP.min(n - g0);
            let xs = &job.x[g0 * cols..(g0 + g) * cols];
            let o = &mut o[g0..g0 + g];
            match g {
                1 => group_avx512::<1>(job.m, r, xs, o),
                2 => group_avx512::<2>(job.m, r, xs, o),
                3 => group_avx512::<3>(job.m, r, xs, o),
                4 => group_avx512::<4>(job.m, r, xs, o),
                5 => group_avx512::<5>(job.m, r, xs, o),
                6 => group_avx512::<6>(job.m, r, xs, o),
                7 => group_avx512::<7>(job.m, r, xs, o),
                _ => group_avx512::<8>(job.m, r, xs, o),
            }
            g0 += g;
        }
    }
}

/// Weight row `r` against `N` activation rows with the AVX-512 kernels. Unquantized rows get more accumulators
/// per activation row when there are few rows to interleave (latency hiding; see `avx512::f32_row`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn group_avx512<const N: usize>(m: &Matrix, r: usize, xs: &[f32], out: &mut [f32]) {
    let cols = m.cols;
    let nb = cols / QK;
    match &m.data {
        MatrixData::F32(w) => {
            let w = &w[r * cols..][..cols];
            match N {
                1 => avx512::f32_row::<N, 4>(w, xs, cols, out),
                2 | 3 => avx512::f32_row::<N, 2>(w, xs, cols, out),
                _ => avx512::f32_row::<N, 1>(w, xs, cols, out),
            }
        }
        MatrixData::BF16(w) => {
            let w = &w[r * cols..][..cols];
            match N {
                1 => avx512::bf16_row::<N, 4>(w, xs, cols, out),
                2 | 3 => avx512::bf16_row::<N, 2>(w, xs, cols, out),
                _ => avx512::bf16_row::<N, 1>(w, xs, cols, out),
            }
        }
        MatrixData::Q8_0(w) => avx512::q8_0_row::<N>(&w[r * nb..][..nb], xs, cols, out),
        MatrixData::Q4_1(w) => avx512::q4_1_row::<N>(&w[r * nb..][..nb], xs, cols, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(job: &Job, r0: usize, out: &mut [f32]) {
    rows_body(job, r0, out)
}

fn rows_portable(job: &Job, r0: usize, out: &mut [f32]) {
    rows_body(job, r0, out)
}

/// The kernel body: inlined into each target-feature wrapper above, so the compiler vectorises it for that ISA.
#[inline(always)]
fn rows_body(job: &Job, r0: usize, out: &mut [f32]) {
    let n = job.n;
    let cols = job.m.cols;
    for (k, o) in out.chunks_exact_mut(n).enumerate() {
        let r = r0 + k;
        let mut g0 = 0;
        while g0 < n {
            let g = GROUP.min(n - g0);
            let xs = &job.x[g0 * cols..(g0 + g) * cols];
            let sums = if job.xsums.is_empty() { &[][..] } else { &job.xsums[g0 * job.nb..(g0 + g) * job.nb] };
            let o = &mut o[g0..g0 + g];
            match g {
                1 => row_group::<1>(job.m, r, job.nb, xs, sums, o),
                2 => row_group::<2>(job.m, r, job.nb, xs, sums, o),
                3 => row_group::<3>(job.m, r, job.nb, xs, sums, o),
                4 => row_group::<4>(job.m, r, job.nb, xs, sums, o),
                5 => row_group::<5>(job.m, r, job.nb, xs, sums, o),
                6 => row_group::<6>(job.m, r, job.nb, xs, sums, o),
                7 => row_group::<7>(job.m, r, job.nb, xs, sums, o),
                _ => row_group::<8>(job.m, r, job.nb, xs, sums, o),
            }
            g0 += g;
        }
    }
}

/// Lanes of the partial sums (two AVX2 registers, one AVX-512 register).
const LANES: usize = 16;

/// Weight row `r` against `N` activation rows.
#[inline(always)]
fn row_group<const N: usize>(m: &Matrix, r: usize, nb: usize, xs: &[f32], xsums: &[f32], out: &mut [f32]) {
    let cols = m.cols;
    match &m.data {
        MatrixData::F32(w) => {
            let w = &w[r * cols..][..cols];
            plain_dot::<N, _>(w, cols, xs, out, |v| *v)
        }
        MatrixData::BF16(w) => {
            let w = &w[r * cols..][..cols];
            plain_dot::<N, _>(w, cols, xs, out, |v| f32::from_bits((v.to_bits() as u32) << 16))
        }
        MatrixData::Q8_0(w) => {
            let blocks = &w[r * nb..][..nb];
            let mut acc = [[0.0f32; LANES]; N];
            let mut q = [0.0f32; QK];
            for (b, blk) in blocks.iter().enumerate() {
                for (qv, &qi) in q.iter_mut().zip(&blk.qs) {
                    *qv = qi as f32;
                }
                let d = blk.d.to_f32();
                for i in 0..N {
                    block_fma(&mut acc[i], d, &q, &xs[i * cols + b * QK..][..QK]);
                }
            }
            for i in 0..N {
                out[i] = acc[i].iter().sum();
            }
        }
        MatrixData::Q4_1(w) => {
            let blocks = &w[r * nb..][..nb];
            let mut acc = [[0.0f32; LANES]; N];
            let mut offsets = [0.0f32; N];
            let mut q = [0.0f32; QK];
            for (b, blk) in blocks.iter().enumerate() {
                for j in 0..QK / 2 {
                    q[j] = (blk.qs[j] & 15) as f32;
                    q[j + QK / 2] = (blk.qs[j] >> 4) as f32;
                }
                let (d, mm) = (blk.d.to_f32(), blk.m.to_f32());
                for i in 0..N {
                    block_fma(&mut acc[i], d, &q, &xs[i * cols + b * QK..][..QK]);
                    offsets[i] += mm * xsums[i * nb + b];
                }
            }
            for i in 0..N {
                out[i] = acc[i].iter().sum::<f32>() + offsets[i];
            }
        }
    }
}

/// `acc += d * (q ⊙ x)` folded into `LANES` lanes: `Σ q x` of one block, scaled once by the block's `d`.
#[inline(always)]
fn block_fma(acc: &mut [f32; LANES], d: f32, q: &[f32; QK], x: &[f32]) {
    let mut part = [0.0f32; LANES];
    for c in 0..QK / LANES {
        for l in 0..LANES {
            part[l] += q[c * LANES + l] * x[c * LANES + l];
        }
    }
    for l in 0..LANES {
        acc[l] += d * part[l];
    }
}

/// Unquantized rows, in the same shape as the quantized kernels (which the compiler vectorises well for every
/// `N`): 32 weights widened into a stack block, then `LANES`-wide multiply-adds into each activation row's sums.
#[inline(always)]
fn plain_dot<const N: usize, W>(w: &[W], cols: usize, xs: &[f32], out: &mut [f32], widen: impl Fn(&W) -> f32) {
    let mut acc = [[0.0f32; LANES]; N];
    let body = cols / QK * QK;
    let mut q = [0.0f32; QK];
    for c0 in (0..body).step_by(QK) {
        for (qv, wv) in q.iter_mut().zip(&w[c0..c0 + QK]) {
            *qv = widen(wv);
        }
        for i in 0..N {
            block_fma(&mut acc[i], 1.0, &q, &xs[i * cols + c0..][..QK]);
        }
    }
    for i in 0..N {
        let mut s: f32 = acc[i].iter().sum();
        for c in body..cols {
            s += widen(&w[c]) * xs[i * cols + c];
        }
        out[i] = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0 - 0.5) * 2.0).collect()
    }

    /// `x · dequant(W)ᵀ` in f64: what every kernel must reproduce up to f32 rounding.
    fn reference(m: &Matrix, x: &[f32], n: usize) -> Vec<f32> {
        let w = m.dequantize();
        let (rows, cols) = (m.rows(), m.cols());
        let mut out = vec![0.0; n * rows];
        for i in 0..n {
            for r in 0..rows {
                out[i * rows + r] = (0..cols).map(|c| x[i * cols + c] as f64 * w[r * cols + c] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn every_format_and_kernel_matches_dequantize_then_matmul() {
        // 96 columns: three blocks, a 64-wide unrolled body plus a 32 tail for the AVX-512 f32/bf16 loops; 100
        // (unquantized only) also leaves a 4-column scalar tail.
        let shapes = [(67, 96, WeightFormat::F32), (67, 100, WeightFormat::F32), (67, 96, WeightFormat::BF16), (67, 100, WeightFormat::BF16)];
        let quantized = [(67, 96, WeightFormat::Q8_0), (67, 96, WeightFormat::Q4_1)];
        for (rows, cols, format) in shapes.into_iter().chain(quantized) {
            let m = Matrix::from_f32(values(rows * cols, 7), rows, cols, format).unwrap();
            for n in [1, 3, 8, 11, 16, 17, 40] {
                let x = values(n * cols, 99 + n as u32);
                let want = reference(&m, &x, n);
                for kernel in [KernelChoice::Generic, KernelChoice::Avx2, KernelChoice::Avx512] {
                    let mut got = vec![f32::NAN; n * rows];
                    m.matmul_t_with(kernel, &x, n, &mut got).unwrap();
                    for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{format:?} n={n} {kernel:?} [{j}]: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn concat_rows_stacks_blocks() {
        let a = Matrix::from_f32(values(2 * 64, 1), 2, 64, WeightFormat::Q4_1).unwrap();
        let b = Matrix::from_f32(values(3 * 64, 2), 3, 64, WeightFormat::Q4_1).unwrap();
        let (da, db) = (a.dequantize(), b.dequantize());
        let c = Matrix::concat_rows(vec![a, b]).unwrap();
        assert_eq!(c.rows(), 5);
        assert_eq!(c.dequantize(), [da, db].concat());
    }

    #[test]
    fn shape_errors_are_errors() {
        assert!(Matrix::from_f32(vec![0.0; 10], 2, 5, WeightFormat::Q8_0).is_err());
        let m = Matrix::from_f32(vec![0.0; 64], 2, 32, WeightFormat::F32).unwrap();
        assert!(m.matmul_t(&[0.0; 31], 1, &mut [0.0; 2]).is_err());
    }
}

#[cfg(test)]
mod throughput {
    use super::*;
    use std::time::Instant;

    /// Weight-streaming rate of the few-rows kernel on SmolLM2's gate_up shape (`cargo test -p ferrotune-infer
    /// --lib kernel_throughput -- --ignored --nocapture`); single thread, so other load matters less.
    #[test]
    #[ignore]
    fn kernel_throughput() {
        let (rows, cols) = (3072, 576);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        for format in [WeightFormat::F32, WeightFormat::BF16, WeightFormat::Q8_0, WeightFormat::Q4_1] {
            let m = Matrix::from_f32(w.clone(), rows, cols, format).unwrap();
            for n in [1, 8] {
                for kernel in [KernelChoice::Avx512, KernelChoice::Avx2, KernelChoice::Generic] {
                    let x = vec![0.5f32; n * cols];
                    let mut out = vec![0.0; n * rows];
                    // The fastest single call of many: on a shared machine most calls lose their core part way,
                    // the fastest ones did not, so this is the kernel's own speed, not the machine's load.
                    let best = pool.install(|| {
                        (0..400)
                            .map(|_| {
                                let t = Instant::now();
                                m.matmul_t_with(kernel, &x, n, &mut out).unwrap();
                                t.elapsed().as_secs_f64()
                            })
                            .fold(f64::MAX, f64::min)
                    });
                    println!(
                        "{:>5} n={n} {:>8}: {:>6.2} Gweights/s  {:>6.2} GB/s of weights  ({:.1} us)",
                        format.name(),
                        kernel.name(),
                        (rows * cols) as f64 / best / 1e9,
                        m.nbytes() as f64 / best / 1e9,
                        best * 1e6
                    );
                }
            }
        }
    }
}
