//! The CPU backend: plain `Vec` storage, rayon for parallelism, a hand-written SIMD GEMM (`gemm`) and fused
//! neural-network kernels (`kernels`). It is also the reference every other backend is checked against.
//!
//! Float math runs in f32 (or f64 for f64 tensors); bf16 and f16 are widened to f32 on entry and rounded back on
//! exit, so a bf16 op returns what PyTorch's CPU bf16 op returns up to the final rounding.

pub mod gemm;
pub mod kernels;

use crate::backend::{BackendStorage, BinaryOp, MatmulDims, ReduceOp, UnaryOp};
use crate::element::{Element, Float};
use crate::{bail, DType, Device, Error, Layout, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// Below this many elements an elementwise op runs on the calling thread: spawning costs more than it saves.
pub const PAR_THRESHOLD: usize = 1 << 15;

#[derive(Debug, Clone, PartialEq)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
}

/// Run `$body` with `$v` bound to the typed Vec of any variant.
macro_rules! with_vec {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            CpuStorage::F32($v) => $body,
            CpuStorage::F64($v) => $body,
            CpuStorage::BF16($v) => $body,
            CpuStorage::F16($v) => $body,
            CpuStorage::I32($v) => $body,
            CpuStorage::I64($v) => $body,
            CpuStorage::U8($v) => $body,
        }
    };
}

impl CpuStorage {
    pub fn zeros(len: usize, dtype: DType) -> CpuStorage {
        match dtype {
            DType::F32 => CpuStorage::F32(vec![0.0; len]),
            DType::F64 => CpuStorage::F64(vec![0.0; len]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; len]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; len]),
            DType::I32 => CpuStorage::I32(vec![0; len]),
            DType::I64 => CpuStorage::I64(vec![0; len]),
            DType::U8 => CpuStorage::U8(vec![0; len]),
        }
    }

    pub fn len(&self) -> usize {
        with_vec!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        T::slice_of(self).ok_or(Error::DTypeMismatch { op: "as_slice", lhs: self.dtype(), rhs: T::DTYPE })
    }

    /// Widen to the compute type: f64 stays f64, everything else becomes f32.
    fn to_compute(&self, layout: &Layout) -> Result<CpuStorage> {
        match self {
            CpuStorage::F32(_) | CpuStorage::F64(_) => self.copy_strided(layout),
            _ => self.to_dtype(layout, DType::F32),
        }
    }
}

/// Map a strided view elementwise into a new contiguous Vec, in parallel when large.
pub fn map_strided<S: Copy + Sync, D: Send>(data: &[S], layout: &Layout, f: impl Fn(S) -> D + Sync) -> Vec<D> {
    if let Some(range) = layout.contiguous_range() {
        let src = &data[range];
        if src.len() >= PAR_THRESHOLD {
            src.par_iter().map(|&x| f(x)).collect()
        } else {
            src.iter().map(|&x| f(x)).collect()
        }
    } else {
        layout.offsets().map(|o| f(data[o])).collect()
    }
}

/// Combine two same-shape strided views elementwise.
pub fn zip_strided<A: Copy + Sync, B: Copy + Sync, D: Send>(
    a: &[A],
    la: &Layout,
    b: &[B],
    lb: &Layout,
    f: impl Fn(A, B) -> D + Sync,
) -> Vec<D> {
    match (la.contiguous_range(), lb.contiguous_range()) {
        (Some(ra), Some(rb)) => {
            let (a, b) = (&a[ra], &b[rb]);
            if a.len() >= PAR_THRESHOLD {
                a.par_iter().zip(b.par_iter()).map(|(&x, &y)| f(x, y)).collect()
            } else {
                a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
            }
        }
        _ => la.offsets().zip(lb.offsets()).map(|(i, j)| f(a[i], b[j])).collect(),
    }
}

fn convert<S: Element, D: Element>(src: &[S], layout: &Layout) -> Vec<D> {
    map_strided(src, layout, |x| D::from_f64(x.to_f64()))
}

/// Cast any storage to `dtype`. The common float paths avoid the f64 detour.
fn cast(s: &CpuStorage, l: &Layout, dtype: DType) -> CpuStorage {
    use CpuStorage as S;
    match (s, dtype) {
        (S::F32(v), DType::F32) => S::F32(map_strided(v, l, |x| x)),
        (S::F32(v), DType::BF16) => S::BF16(map_strided(v, l, bf16::from_f32)),
        (S::F32(v), DType::F16) => S::F16(map_strided(v, l, f16::from_f32)),
        (S::BF16(v), DType::F32) => S::F32(map_strided(v, l, bf16::to_f32)),
        (S::F16(v), DType::F32) => S::F32(map_strided(v, l, f16::to_f32)),
        (S::F64(v), DType::F32) => S::F32(map_strided(v, l, |x| x as f32)),
        (S::F32(v), DType::F64) => S::F64(map_strided(v, l, |x| x as f64)),
        _ => with_vec!(s, v => match dtype {
            DType::F32 => S::F32(convert(v, l)),
            DType::F64 => S::F64(convert(v, l)),
            DType::BF16 => S::BF16(convert(v, l)),
            DType::F16 => S::F16(convert(v, l)),
            DType::I32 => S::I32(convert(v, l)),
            DType::I64 => S::I64(convert(v, l)),
            DType::U8 => S::U8(convert(v, l)),
        }),
    }
}

fn unary_fn<T: Float>(op: UnaryOp) -> impl Fn(T) -> T + Sync {
    move |x: T| match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Recip => x.recip(),
        UnaryOp::Sqr => x * x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Sigmoid => x.sigmoid(),
        UnaryOp::Silu => x * x.sigmoid(),
        UnaryOp::Relu => x.max(T::ZERO),
        UnaryOp::Step => if x > T::ZERO { T::ONE } else { T::ZERO },
        UnaryOp::Sign => if x > T::ZERO { T::ONE } else if x < T::ZERO { -T::ONE } else { T::ZERO },
    }
}

fn binary_fn<T: Float>(op: BinaryOp) -> impl Fn(T, T) -> T + Sync {
    move |a: T, b: T| match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Maximum => a.max(b),
        BinaryOp::Minimum => a.min(b),
    }
}

impl CpuStorage {
    /// Apply a float map in the compute type and return the input's dtype.
    fn float_map(
        &self,
        op: &'static str,
        layout: &Layout,
        f32_fn: impl Fn(f32) -> f32 + Sync,
        f64_fn: impl Fn(f64) -> f64 + Sync,
    ) -> Result<CpuStorage> {
        let dtype = self.dtype();
        Ok(match self {
            CpuStorage::F32(v) => CpuStorage::F32(map_strided(v, layout, f32_fn)),
            CpuStorage::F64(v) => CpuStorage::F64(map_strided(v, layout, f64_fn)),
            CpuStorage::BF16(v) => CpuStorage::BF16(map_strided(v, layout, |x| bf16::from_f32(f32_fn(x.to_f32())))),
            CpuStorage::F16(v) => CpuStorage::F16(map_strided(v, layout, |x| f16::from_f32(f32_fn(x.to_f32())))),
            _ => return Err(Error::UnsupportedDType { op, dtype }),
        })
    }
}

/// Split a layout into the part that is kept and the part that is reduced over `dims`.
fn split_reduce_layout(layout: &Layout, dims: &[usize]) -> (Layout, Layout) {
    let (mut ks, mut kt, mut rs, mut rt) = (vec![], vec![], vec![], vec![]);
    for d in 0..layout.rank() {
        if dims.contains(&d) {
            rs.push(layout.shape()[d]);
            rt.push(layout.strides()[d]);
        } else {
            ks.push(layout.shape()[d]);
            kt.push(layout.strides()[d]);
        }
    }
    (Layout::new(ks, kt, layout.offset()), Layout::new(rs, rt, 0))
}

fn reduce_typed<T: Float>(data: &[T], layout: &Layout, dims: &[usize], op: ReduceOp) -> Vec<T> {
    let (kept, reduced) = split_reduce_layout(layout, dims);
    let inner: Vec<usize> = reduced.offsets().collect();
    let outer: Vec<usize> = kept.offsets().collect();
    let reduce_one = |base: usize| -> T {
        match op {
            // Sums accumulate in f64 so long reductions of f32 do not drift.
            ReduceOp::Sum => T::from_f64(inner.iter().map(|&o| data[base + o].to_f64()).sum::<f64>()),
            ReduceOp::Max => inner.iter().fold(T::NEG_INFINITY, |m, &o| m.max(data[base + o])),
            ReduceOp::Min => inner.iter().fold(-T::NEG_INFINITY, |m, &o| m.min(data[base + o])),
        }
    };
    if outer.len() * inner.len() >= PAR_THRESHOLD {
        outer.par_iter().map(|&b| reduce_one(b)).collect()
    } else {
        outer.iter().map(|&b| reduce_one(b)).collect()
    }
}

fn ids_to_usize(ids: &CpuStorage, layout: &Layout, size: usize, op: &'static str) -> Result<Vec<usize>> {
    let raw: Vec<i64> = match ids {
        CpuStorage::I64(v) => map_strided(v, layout, |x| x),
        CpuStorage::I32(v) => map_strided(v, layout, |x| x as i64),
        CpuStorage::U8(v) => map_strided(v, layout, |x| x as i64),
        other => return Err(Error::UnsupportedDType { op, dtype: other.dtype() }),
    };
    raw.into_iter()
        .map(|i| if i >= 0 && (i as usize) < size { Ok(i as usize) } else { Err(Error::IndexOutOfRange { op, index: i, size }) })
        .collect()
}

/// Run `gemm_one` for each matrix of a batched product, writing the row-major output matrices one after another.
fn batched_gemm<A, B, C>(
    a: &[A],
    la: &Layout,
    b: &[B],
    lb: &Layout,
    dims: MatmulDims,
    out: &mut [C],
    gemm_one: impl Fn(gemm::MatRef<A>, gemm::MatRef<B>, gemm::MatMut<C>),
) -> Result<()> {
    let batches = batch_offsets(la, dims.batch)?.into_iter().zip(batch_offsets(lb, dims.batch)?);
    for ((oa, ob), c) in batches.zip(out.chunks_mut((dims.m * dims.n).max(1))) {
        let am = gemm::MatRef::new(a, oa, dims.m, dims.k, stride(la, 2), stride(la, 1))?;
        let bm = gemm::MatRef::new(b, ob, dims.k, dims.n, stride(lb, 2), stride(lb, 1))?;
        gemm_one(am, bm, gemm::MatMut::new(c, 0, dims.m, dims.n, dims.n)?);
    }
    Ok(())
}

/// f32-accumulating product of any two GEMM input types.
fn matmul_f32<A: gemm::GemmInput, B: gemm::GemmInput>(
    a: &[A],
    la: &Layout,
    b: &[B],
    lb: &Layout,
    dims: MatmulDims,
    out: &mut [f32],
) -> Result<()> {
    batched_gemm(a, la, b, lb, dims, out, |x, y, c| gemm::sgemm(1.0, x, y, 0.0, c))
}

/// Stride of the `from_end`-th dim counted from the end (1 = last).
fn stride(l: &Layout, from_end: usize) -> usize {
    l.strides()[l.rank() - from_end]
}

/// Storage offsets of each matrix in a batched layout (rank 2 => one matrix, repeated `batch` times).
fn batch_offsets(l: &Layout, batch: usize) -> Result<Vec<usize>> {
    let r = l.rank();
    let batch_layout = Layout::new(l.shape()[..r - 2].to_vec(), l.strides()[..r - 2].to_vec(), l.offset());
    let offsets: Vec<usize> = batch_layout.offsets().collect();
    match offsets.len() {
        n if n == batch => Ok(offsets),
        1 => Ok(vec![offsets[0]; batch]),
        n => bail!("matmul: batch of {n} does not match {batch}"),
    }
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::I32(_) => DType::I32,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::U8(_) => DType::U8,
        }
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        Ok(cast(self, layout, dtype))
    }

    fn copy_strided(&self, layout: &Layout) -> Result<Self> {
        Ok(with_vec!(self, v => Element::into_storage(map_strided(v, layout, |x| x))))
    }

    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self> {
        self.float_map("unary", layout, unary_fn::<f32>(op), unary_fn::<f64>(op))
    }

    fn affine(&self, layout: &Layout, mul: f64, add: f64) -> Result<Self> {
        let (m32, a32) = (mul as f32, add as f32);
        self.float_map("affine", layout, move |x| x * m32 + a32, move |x| x * mul + add)
    }

    fn powf(&self, layout: &Layout, e: f64) -> Result<Self> {
        let e32 = e as f32;
        self.float_map("powf", layout, move |x| x.powf(e32), move |x| x.powf(e))
    }

    fn binary(&self, layout: &Layout, rhs: &Self, rl: &Layout, op: BinaryOp) -> Result<Self> {
        use CpuStorage as S;
        Ok(match (self, rhs) {
            (S::F32(a), S::F32(b)) => S::F32(zip_strided(a, layout, b, rl, binary_fn::<f32>(op))),
            (S::F64(a), S::F64(b)) => S::F64(zip_strided(a, layout, b, rl, binary_fn::<f64>(op))),
            (S::BF16(a), S::BF16(b)) => {
                let f = binary_fn::<f32>(op);
                S::BF16(zip_strided(a, layout, b, rl, |x, y| bf16::from_f32(f(x.to_f32(), y.to_f32()))))
            }
            (S::F16(a), S::F16(b)) => {
                let f = binary_fn::<f32>(op);
                S::F16(zip_strided(a, layout, b, rl, |x, y| f16::from_f32(f(x.to_f32(), y.to_f32()))))
            }
            (a, b) if a.dtype() != b.dtype() => {
                return Err(Error::DTypeMismatch { op: "binary", lhs: a.dtype(), rhs: b.dtype() })
            }
            (a, _) => return Err(Error::UnsupportedDType { op: "binary", dtype: a.dtype() }),
        })
    }

    fn reduce(&self, layout: &Layout, dims: &[usize], op: ReduceOp) -> Result<Self> {
        Ok(match self {
            CpuStorage::F32(v) => CpuStorage::F32(reduce_typed(v, layout, dims, op)),
            CpuStorage::F64(v) => CpuStorage::F64(reduce_typed(v, layout, dims, op)),
            CpuStorage::BF16(_) | CpuStorage::F16(_) => {
                let wide = self.to_compute(layout)?;
                let l = Layout::contiguous(layout.shape());
                wide.reduce(&l, dims, op)?.to_dtype(&Layout::contiguous(&[wide_len_after(layout, dims)]), self.dtype())?
            }
            other => return Err(Error::UnsupportedDType { op: "reduce", dtype: other.dtype() }),
        })
    }

    fn matmul(&self, layout: &Layout, rhs: &Self, rl: &Layout, dims: MatmulDims) -> Result<Self> {
        use CpuStorage as S;
        let len = dims.batch * dims.m * dims.n;
        if let (S::F64(a), S::F64(b)) = (self, rhs) {
            let mut out = vec![0f64; len];
            batched_gemm(a, layout, b, rl, dims, &mut out, |x, y, c| gemm::dgemm(1.0, x, y, 0.0, c))?;
            return Ok(S::F64(out));
        }
        let mut out = vec![0f32; len];
        match (self, rhs) {
            (S::F32(a), S::F32(b)) => matmul_f32(a, layout, b, rl, dims, &mut out)?,
            (S::F32(a), S::BF16(b)) => matmul_f32(a, layout, b, rl, dims, &mut out)?,
            (S::F32(a), S::F16(b)) => matmul_f32(a, layout, b, rl, dims, &mut out)?,
            (S::BF16(a), S::BF16(b)) => matmul_f32(a, layout, b, rl, dims, &mut out)?,
            (S::BF16(a), S::F32(b)) => matmul_f32(a, layout, b, rl, dims, &mut out)?,
            (S::F16(a), S::F16(b)) => matmul_f32(a, layout, b, rl, dims, &mut out)?,
            (S::F16(a), S::F32(b)) => matmul_f32(a, layout, b, rl, dims, &mut out)?,
            (a, b) => return Err(Error::DTypeMismatch { op: "matmul", lhs: a.dtype(), rhs: b.dtype() }),
        }
        let out = S::F32(out);
        match self.dtype() {
            DType::F32 => Ok(out),
            dt => out.to_dtype(&Layout::contiguous(&[len]), dt),
        }
    }

    fn index_select(&self, layout: &Layout, ids: &Self, il: &Layout) -> Result<Self> {
        if layout.rank() != 2 {
            return Err(Error::BadShape { op: "index_select", msg: format!("table must be 2-D, got {:?}", layout.shape()) });
        }
        let (rows, cols) = (layout.shape()[0], layout.shape()[1]);
        let ids = ids_to_usize(ids, il, rows, "index_select")?;
        let (rs, cs, off) = (layout.strides()[0], layout.strides()[1], layout.offset());
        Ok(with_vec!(self, v => {
            let mut out = Vec::with_capacity(ids.len() * cols);
            for &r in &ids {
                let base = off + r * rs;
                out.extend((0..cols).map(|c| v[base + c * cs]));
            }
            Element::into_storage(out)
        }))
    }

    fn index_add(&self, layout: &Layout, ids: &Self, il: &Layout, rows: usize) -> Result<Self> {
        let n_ids = il.elem_count();
        let cols = layout.shape().last().copied().unwrap_or(1);
        if layout.elem_count() != n_ids * cols {
            return Err(Error::BadShape {
                op: "index_add",
                msg: format!("source {:?} does not hold one row per id ({n_ids} ids)", layout.shape()),
            });
        }
        let ids = ids_to_usize(ids, il, rows, "index_add")?;
        let src = self.to_compute(layout)?;
        fn scatter<T: Float>(src: &[T], ids: &[usize], rows: usize, cols: usize) -> Vec<T> {
            let mut out = vec![T::ZERO; rows * cols];
            for (i, &r) in ids.iter().enumerate() {
                for (o, &s) in out[r * cols..(r + 1) * cols].iter_mut().zip(&src[i * cols..(i + 1) * cols]) {
                    *o += s;
                }
            }
            out
        }
        let out = match &src {
            CpuStorage::F32(v) => CpuStorage::F32(scatter(v, &ids, rows, cols)),
            CpuStorage::F64(v) => CpuStorage::F64(scatter(v, &ids, rows, cols)),
            other => return Err(Error::UnsupportedDType { op: "index_add", dtype: other.dtype() }),
        };
        if out.dtype() == self.dtype() {
            Ok(out)
        } else {
            out.to_dtype(&Layout::contiguous(&[rows * cols]), self.dtype())
        }
    }
}

/// Element count of a reduction's output.
fn wide_len_after(layout: &Layout, dims: &[usize]) -> usize {
    (0..layout.rank()).filter(|d| !dims.contains(d)).map(|d| layout.shape()[d]).product()
}
