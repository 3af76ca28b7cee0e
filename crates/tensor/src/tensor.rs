//! `Tensor`: a shared, immutable storage plus a strided `Layout`. Cloning a tensor or taking a view shares the
//! storage; every op returns a new tensor.

use crate::backend::{BinaryOp, MatmulDims, ReduceOp, UnaryOp};
use crate::cpu::CpuStorage;
use crate::cuda::CudaStorage;
use crate::element::Element;
use crate::layout::broadcast_shape;
use crate::storage::Storage;
use crate::{DType, Device, Error, Layout, Result};
use std::sync::Arc;

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{:?}, {}, {}]", self.shape(), self.dtype(), self.device())
    }
}

impl Tensor {
    pub(crate) fn from_storage(storage: Storage, shape: &[usize]) -> Tensor {
        Tensor { storage: Arc::new(storage), layout: Layout::contiguous(shape) }
    }

    fn view(&self, layout: Layout) -> Tensor {
        Tensor { storage: self.storage.clone(), layout }
    }

    // ---- construction -------------------------------------------------------------------------------------

    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::BadShape { op: "from_vec", msg: format!("{} elements do not fill shape {shape:?}", data.len()) });
        }
        Ok(Tensor::from_storage(Storage::Cpu(T::into_storage(data)), shape))
    }

    pub fn from_slice<T: Element>(data: &[T], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }

    pub fn scalar<T: Element>(value: T) -> Tensor {
        Tensor::from_storage(Storage::Cpu(T::into_storage(vec![value])), &[])
    }

    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let n = shape.iter().product();
        let storage = match device {
            Device::Cpu => Storage::Cpu(CpuStorage::zeros(n, dtype)),
            Device::Cuda(i) => Storage::Cuda(CudaStorage::zeros(i, n, dtype)?),
        };
        Ok(Tensor::from_storage(storage, shape))
    }

    pub fn full(value: f64, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::zeros(shape, dtype, Device::Cpu)?.affine(0.0, value)?.to_device(device)
    }

    pub fn ones(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }

    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape(), self.dtype(), self.device())
    }

    /// `0, 1, ..., n-1` as `dtype`.
    pub fn arange(n: usize, dtype: DType) -> Result<Tensor> {
        Tensor::from_vec((0..n).map(|i| i as f64).collect::<Vec<_>>(), &[n])?.to_dtype(dtype)
    }

    /// Normal(mean, std) samples from a seeded generator (same seed, same tensor, on every machine).
    pub fn randn(seed: u64, shape: &[usize], mean: f64, std: f64, dtype: DType) -> Result<Tensor> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| mean + std * rng.normal()).collect();
        Tensor::from_vec(v, shape)?.to_dtype(dtype)
    }

    /// Uniform[lo, hi) samples from a seeded generator.
    pub fn rand_uniform(seed: u64, shape: &[usize], lo: f64, hi: f64, dtype: DType) -> Result<Tensor> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect();
        Tensor::from_vec(v, shape)?.to_dtype(dtype)
    }

    // ---- accessors ----------------------------------------------------------------------------------------

    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }
    pub fn rank(&self) -> usize {
        self.layout.rank()
    }
    pub fn elem_count(&self) -> usize {
        self.layout.elem_count()
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    pub fn device(&self) -> Device {
        self.storage.device()
    }
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }
    /// Size of dimension `d`; negative `d` is not accepted (use `rank() - 1`).
    pub fn dim(&self, d: usize) -> Result<usize> {
        self.layout.dim("dim", d)
    }
    /// Whether two tensors share one storage allocation (views of each other).
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// The elements as a contiguous CPU slice (copying only when the layout is strided or the data is on a GPU).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if self.dtype() != T::DTYPE {
            return Err(Error::DTypeMismatch { op: "to_vec", lhs: self.dtype(), rhs: T::DTYPE });
        }
        let t = self.to_device(Device::Cpu)?.contiguous()?;
        Ok(t.cpu_slice::<T>()?.to_vec())
    }

    /// The elements converted to f64 (any dtype, any device: converted on the host): handy for tests and printing.
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        self.to_device(Device::Cpu)?.to_dtype(DType::F64)?.to_vec::<f64>()
    }

    pub fn to_scalar<T: Element>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::BadShape { op: "to_scalar", msg: format!("shape {:?} is not one element", self.shape()) });
        }
        Ok(self.to_vec::<T>()?[0])
    }

    /// The elements of a contiguous CPU tensor, without copying. Errors on strided or GPU tensors.
    pub fn cpu_slice<T: Element>(&self) -> Result<&[T]> {
        let cpu = self.storage.as_cpu().ok_or(Error::DeviceMismatch { op: "cpu_slice", lhs: self.device(), rhs: Device::Cpu })?;
        let range = self.layout.contiguous_range().ok_or_else(|| Error::Msg("cpu_slice: tensor is strided; call contiguous() first".into()))?;
        Ok(&cpu.as_slice::<T>()?[range])
    }

    // ---- layout ops (views where possible) ----------------------------------------------------------------

    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        Ok(Tensor::from_storage(self.storage.copy_strided(&self.layout)?, self.shape()))
    }

    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.elem_count() {
            return Err(Error::BadShape {
                op: "reshape",
                msg: format!("cannot reshape {:?} ({} elements) to {shape:?}", self.shape(), self.elem_count()),
            });
        }
        match self.layout.reshape_view(shape) {
            Some(l) => Ok(self.view(l)),
            None => self.contiguous()?.reshape(shape),
        }
    }

    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(&[self.elem_count()])
    }

    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        Ok(self.view(self.layout.transpose(d0, d1)?))
    }

    /// Swap the last two dimensions.
    pub fn t(&self) -> Result<Tensor> {
        let r = self.rank();
        if r < 2 {
            return Err(Error::BadShape { op: "t", msg: format!("needs rank >= 2, got {:?}", self.shape()) });
        }
        self.transpose(r - 2, r - 1)
    }

    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        Ok(self.view(self.layout.permute(dims)?))
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        Ok(self.view(self.layout.narrow(dim, start, len)?))
    }

    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange { op: "unsqueeze", dim, rank: self.rank() });
        }
        let mut shape = self.shape().to_vec();
        let mut strides = self.layout.strides().to_vec();
        let s = if dim < self.rank() { strides[dim] * shape[dim] } else { 1 };
        shape.insert(dim, 1);
        strides.insert(dim, s);
        Ok(self.view(Layout::new(shape, strides, self.layout.offset())))
    }

    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        if self.dim(dim)? != 1 {
            return Err(Error::BadShape { op: "squeeze", msg: format!("dimension {dim} of {:?} is not 1", self.shape()) });
        }
        let mut shape = self.shape().to_vec();
        let mut strides = self.layout.strides().to_vec();
        shape.remove(dim);
        strides.remove(dim);
        Ok(self.view(Layout::new(shape, strides, self.layout.offset())))
    }

    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.view(self.layout.broadcast_as(shape)?))
    }

    /// Concatenate along `dim`. All inputs share dtype, device and every other dimension.
    pub fn cat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = *tensors.first().ok_or_else(|| Error::Msg("cat: no tensors given".into()))?;
        let mut shape = first.shape().to_vec();
        first.dim(dim)?;
        shape[dim] = 0;
        for t in tensors {
            if t.rank() != first.rank() || t.dtype() != first.dtype() {
                return Err(Error::ShapeMismatch { op: "cat", lhs: first.shape().to_vec(), rhs: t.shape().to_vec() });
            }
            for d in 0..t.rank() {
                if d != dim && t.shape()[d] != first.shape()[d] {
                    return Err(Error::ShapeMismatch { op: "cat", lhs: first.shape().to_vec(), rhs: t.shape().to_vec() });
                }
            }
            shape[dim] += t.shape()[dim];
        }
        // Move `dim` to the front, stack the contiguous blocks, move it back.
        let mut perm: Vec<usize> = (0..first.rank()).collect();
        perm.remove(dim);
        perm.insert(0, dim);
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        let parts: Vec<Tensor> = tensors.iter().map(|t| t.permute(&perm)?.contiguous()).collect::<Result<_>>()?;
        let mut moved_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        moved_shape[0] = shape[dim];
        let storage = cat_storages(&parts)?;
        Tensor::from_storage(storage, &moved_shape).permute(&inv)?.contiguous()
    }

    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        Ok(Tensor::from_storage(self.storage.to_dtype(&self.layout, dtype)?, self.shape()))
    }

    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let storage = match (&*self.storage, device) {
            (Storage::Cpu(_), Device::Cuda(i)) => {
                let cpu = self.contiguous()?;
                Storage::Cuda(CudaStorage::from_cpu(i, cpu.storage.as_cpu().expect("cpu"))?)
            }
            (Storage::Cuda(_), Device::Cpu) => {
                let t = self.contiguous()?;
                match &*t.storage {
                    Storage::Cuda(s) => Storage::Cpu(s.to_cpu()?),
                    Storage::Cpu(_) => unreachable!("contiguous keeps the device"),
                }
            }
            (Storage::Cuda(_), Device::Cuda(_)) => self.to_device(Device::Cpu)?.to_device(device)?.storage_owned(),
            (Storage::Cpu(_), Device::Cpu) => unreachable!("same device handled above"),
        };
        Ok(Tensor::from_storage(storage, self.shape()))
    }

    fn storage_owned(self) -> Storage {
        match Arc::try_unwrap(self.storage) {
            Ok(s) => s,
            Err(arc) => match &*arc {
                Storage::Cpu(c) => Storage::Cpu(c.clone()),
                Storage::Cuda(_) => unreachable!("fresh transfers are uniquely owned"),
            },
        }
    }

    // ---- elementwise --------------------------------------------------------------------------------------

    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        Ok(Tensor::from_storage(self.storage.unary(&self.layout, op)?, self.shape()))
    }
    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Recip)
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqr)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }

    /// `self * mul + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        Ok(Tensor::from_storage(self.storage.affine(&self.layout, mul, add)?, self.shape()))
    }
    pub fn scale(&self, s: f64) -> Result<Tensor> {
        self.affine(s, 0.0)
    }
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        Ok(Tensor::from_storage(self.storage.powf(&self.layout, e)?, self.shape()))
    }

    /// Elementwise op with NumPy broadcasting.
    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let shape = broadcast_shape("binary", self.shape(), rhs.shape())?;
        let (l, r) = (self.layout.broadcast_as(&shape)?, rhs.layout.broadcast_as(&shape)?);
        Ok(Tensor::from_storage(self.storage.binary(&l, &rhs.storage, &r, op)?, &shape))
    }
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div)
    }
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Maximum)
    }
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Minimum)
    }

    // ---- reductions ---------------------------------------------------------------------------------------

    /// Reduce over `dims`, keeping them as size-1 dims.
    pub fn reduce_keepdim(&self, dims: &[usize], op: ReduceOp) -> Result<Tensor> {
        for &d in dims {
            self.layout.dim("reduce", d)?;
        }
        let shape: Vec<usize> =
            self.shape().iter().enumerate().map(|(d, &n)| if dims.contains(&d) { 1 } else { n }).collect();
        Ok(Tensor::from_storage(self.storage.reduce(&self.layout, dims, op)?, &shape))
    }
    pub fn sum_keepdim(&self, dims: &[usize]) -> Result<Tensor> {
        self.reduce_keepdim(dims, ReduceOp::Sum)
    }
    /// Sum over one dimension, removing it.
    pub fn sum(&self, dim: usize) -> Result<Tensor> {
        self.sum_keepdim(&[dim])?.squeeze(dim)
    }
    pub fn sum_all(&self) -> Result<Tensor> {
        let dims: Vec<usize> = (0..self.rank()).collect();
        self.sum_keepdim(&dims)?.reshape(&[])
    }
    pub fn mean_all(&self) -> Result<Tensor> {
        self.sum_all()?.scale(1.0 / self.elem_count().max(1) as f64)
    }
    pub fn max_keepdim(&self, dim: usize) -> Result<Tensor> {
        self.reduce_keepdim(&[dim], ReduceOp::Max)
    }

    /// Sum a broadcast result back down to `shape` (the gradient of a broadcast).
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let extra = self.rank().checked_sub(shape.len()).ok_or_else(|| Error::ShapeMismatch {
            op: "sum_to_shape",
            lhs: self.shape().to_vec(),
            rhs: shape.to_vec(),
        })?;
        let mut dims: Vec<usize> = (0..extra).collect();
        for (i, &n) in shape.iter().enumerate() {
            if n == 1 && self.shape()[extra + i] != 1 {
                dims.push(extra + i);
            } else if n != self.shape()[extra + i] {
                return Err(Error::ShapeMismatch { op: "sum_to_shape", lhs: self.shape().to_vec(), rhs: shape.to_vec() });
            }
        }
        self.sum_keepdim(&dims)?.reshape(shape)
    }

    // ---- matmul -------------------------------------------------------------------------------------------

    /// `[.., m, k] x [.., k, n] -> [.., m, n]`. The rhs may be 2-D (shared by every batch). Transposed views
    /// go straight to the GEMM, which packs from any strides. The result has the lhs dtype.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let (ra, rb) = (self.rank(), rhs.rank());
        let bad = || Error::ShapeMismatch { op: "matmul", lhs: self.shape().to_vec(), rhs: rhs.shape().to_vec() };
        if ra < 2 || rb < 2 {
            return Err(bad());
        }
        let (m, k) = (self.shape()[ra - 2], self.shape()[ra - 1]);
        let (k2, n) = (rhs.shape()[rb - 2], rhs.shape()[rb - 1]);
        if k != k2 || (rb > 2 && self.shape()[..ra - 2] != rhs.shape()[..rb - 2]) {
            return Err(bad());
        }
        let batch: usize = self.shape()[..ra - 2].iter().product();
        let mut out_shape = self.shape()[..ra - 2].to_vec();
        out_shape.extend([m, n]);
        let dims = MatmulDims { batch, m, n, k };
        Ok(Tensor::from_storage(self.storage.matmul(&self.layout, &rhs.storage, &rhs.layout, dims)?, &out_shape))
    }

    // ---- indexing -----------------------------------------------------------------------------------------

    /// Embedding lookup: rows of the 2-D table `self` at integer `ids` of any shape -> `[ids.., cols]`.
    pub fn index_select(&self, ids: &Tensor) -> Result<Tensor> {
        let mut shape = ids.shape().to_vec();
        shape.push(self.dim(1)?);
        Ok(Tensor::from_storage(self.storage.index_select(&self.layout, &ids.storage, &ids.layout)?, &shape))
    }

    /// Scatter-add rows of `self` (`[ids.., cols]`) into a zero `[rows, cols]` table at `ids` (the embedding
    /// gradient; repeated ids accumulate).
    pub fn index_add_rows(&self, ids: &Tensor, rows: usize) -> Result<Tensor> {
        let cols = *self.shape().last().ok_or_else(|| Error::BadShape { op: "index_add_rows", msg: "scalar source".into() })?;
        Ok(Tensor::from_storage(self.storage.index_add(&self.layout, &ids.storage, &ids.layout, rows)?, &[rows, cols]))
    }

    // ---- comparisons for tests ----------------------------------------------------------------------------

    /// Largest absolute elementwise difference (both converted to f64).
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f64> {
        if self.shape() != other.shape() {
            return Err(Error::ShapeMismatch { op: "max_abs_diff", lhs: self.shape().to_vec(), rhs: other.shape().to_vec() });
        }
        let (a, b) = (self.to_vec_f64()?, other.to_vec_f64()?);
        Ok(a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max))
    }
}

fn cat_storages(parts: &[Tensor]) -> Result<Storage> {
    if let Some(gpu) = parts.iter().find(|t| t.device() != Device::Cpu) {
        let on_gpu = parts
            .iter()
            .map(|t| match &*t.storage {
                Storage::Cuda(s) if t.device() == gpu.device() => Ok((s, &t.layout)),
                _ => Err(Error::DeviceMismatch { op: "cat", lhs: gpu.device(), rhs: t.device() }),
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(Storage::Cuda(CudaStorage::concat(&on_gpu)?));
    }
    let cpu: Vec<&CpuStorage> = parts.iter().map(|t| t.storage.as_cpu().expect("all on the cpu")).collect();
    macro_rules! join {
        ($variant:ident) => {{
            let mut out = Vec::new();
            for (t, s) in parts.iter().zip(&cpu) {
                match s {
                    CpuStorage::$variant(v) => out.extend_from_slice(&v[t.layout.contiguous_range().expect("contiguous")]),
                    _ => unreachable!("dtypes checked by cat"),
                }
            }
            CpuStorage::$variant(out)
        }};
    }
    Ok(Storage::Cpu(match cpu[0] {
        CpuStorage::F32(_) => join!(F32),
        CpuStorage::F64(_) => join!(F64),
        CpuStorage::BF16(_) => join!(BF16),
        CpuStorage::F16(_) => join!(F16),
        CpuStorage::I32(_) => join!(I32),
        CpuStorage::I64(_) => join!(I64),
        CpuStorage::U8(_) => join!(U8),
    }))
}
