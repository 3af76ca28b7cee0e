//! The CUDA backend. Device memory lives behind a [`KernelTarget`]: today the only one is the host emulation
//! (`FERROTUNE_CUDA_EMULATE=1`: "device" buffers are plain host memory and every op launches the real
//! kernels/*.cu kernels through `ferrotune_kernels::host::launch`, the fiber emulation of the device), so the
//! backend's code path runs and is tested on a machine without a GPU. The cudarc target (caching allocator,
//! one stream per device) is not written yet: without emulation, `Device::Cuda` still returns
//! `Error::CudaUnavailable` saying why. Ops not wired yet return `CudaUnavailable` naming the op.
//! What works and what is left: DEVELOPERS.md ("State of the CUDA backend").

use crate::backend::{BackendStorage, BinaryOp, MatmulDims, ReduceOp, UnaryOp};
use crate::cpu::CpuStorage;
use crate::{DType, Device, Error, Layout, Result};
use ferrotune_kernels::LaunchConfig;
use std::any::Any;
use std::ffi::c_void;

pub(crate) mod fused;

/// Set to 1 to run `Device::Cuda` ops on the host emulation of the kernels (tests, machines without a GPU).
pub const EMULATE_ENV: &str = "FERROTUNE_CUDA_EMULATE";

/// Threads per block of the grid-stride kernels (fill, cast, strided copy) and the row reductions.
const BLOCK_THREADS: u32 = 256;
/// Grid-stride kernels need no more blocks than this to fill a GPU; the emulation spreads blocks over cores.
const MAX_BLOCKS: usize = 1024;
/// The strided-copy kernel takes exactly this many dims (kernels/elementwise.cu `StridedShape`).
const KERNEL_RANK: usize = 6;
/// kernels/elementwise.cu `ft_pointwise` op codes after the UnaryOp variants.
const POINTWISE_AFFINE: i32 = 15;
const POINTWISE_POWF: i32 = 16;
/// Output tile edge of the gemm_tiled kernels (kernels/elementwise.cu FT_GEMM_TILE).
const GEMM_TILE: usize = 16;
/// CUDA's limit on gridDim.z, where gemm_tiled puts the batch.
const GRID_Z_MAX: usize = 65535;

/// The error of `op` on `Device::Cuda` where the backend cannot run it: on the host emulation, that the op is
/// not wired yet; otherwise why CUDA is off.
pub fn unavailable<T>(op: &str) -> Result<T> {
    if emulated() {
        return not_wired(op);
    }
    Err(Error::CudaUnavailable(format!("{op} on device cuda: {}; run with device cpu", why_off())))
}

/// An op the backend does not implement yet (on any target): the error names it.
fn not_wired<T>(op: &str) -> Result<T> {
    Err(Error::CudaUnavailable(format!(
        "{op} is not implemented on device cuda yet (see DEVELOPERS.md, \"State of the CUDA backend\"); run with device cpu"
    )))
}

fn emulated() -> bool {
    std::env::var(EMULATE_ENV).is_ok_and(|v| v == "1")
}

/// Why CUDA cannot be used: no driver / no GPU / no compiled kernels, or, with all of those present, that the
/// GPU target of the backend is not written yet.
fn why_off() -> String {
    match ferrotune_kernels::cuda::driver_status() {
        Err(why) => why,
        Ok(_) if ferrotune_kernels::FATBINS.is_empty() => {
            "this build has no compiled CUDA kernels (nvcc was not found at build time; set NVCC or CUDA_HOME and rebuild)".to_string()
        }
        Ok(n) => format!(
            "{n} GPU(s) found, but the CUDA backend only runs on its host emulation so far ({EMULATE_ENV}=1), not on a GPU"
        ),
    }
}

/// Whether a usable CUDA device exists, and if not, why not (printed by `ferrotune env`).
pub fn availability() -> std::result::Result<usize, String> {
    Err(why_off())
}

/// Where a `CudaStorage`'s buffer lives and where its kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelTarget {
    /// Host memory; kernels run through the fiber emulation (`ferrotune_kernels::host`).
    HostEmulation,
}

impl KernelTarget {
    fn for_ordinal(ordinal: usize) -> Result<KernelTarget> {
        if !emulated() {
            return unavailable("allocation");
        }
        if ordinal != 0 {
            return Err(Error::CudaUnavailable(format!("the host emulation has one device, cuda:0; cuda:{ordinal} was asked for")));
        }
        Ok(KernelTarget::HostEmulation)
    }

    /// Launch kernel `name`. `args` holds one pointer per kernel parameter, pointing at its value.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list, and every buffer must cover what the kernel touches.
    unsafe fn launch(self, name: &str, config: LaunchConfig, args: &mut [*mut c_void]) -> Result<()> {
        match self {
            KernelTarget::HostEmulation => ferrotune_kernels::host::launch(name, config, args)
                .map_err(|e| Error::Msg(format!("cuda (host emulation): {e}"))),
        }
    }
}

/// Device memory of one dtype. On the host emulation the buffer is a host `Vec` (its address is the "device
/// pointer" the kernels get).
#[derive(Debug)]
pub struct CudaStorage {
    ordinal: usize,
    target: KernelTarget,
    buffer: CpuStorage,
}

/// The kernels' `StridedShape` (kernels/elementwise.cu): exactly six dims, strides in elements.
#[repr(C)]
#[derive(Clone, Copy)]
struct StridedShape {
    dims: [i64; KERNEL_RANK],
    strides: [i64; KERNEL_RANK],
    offset: i64,
}

fn grid_for(n: usize) -> LaunchConfig {
    LaunchConfig::linear(n.div_ceil(BLOCK_THREADS as usize).min(MAX_BLOCKS) as u32, BLOCK_THREADS)
}

/// Kernel name suffix for a dtype the elementwise kernels take, or an error naming the op.
fn kernel_dtype(op: &'static str, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => Err(Error::UnsupportedDType { op, dtype: other }),
    }
}

/// Kernel parameters in order, each kept alive here and passed by address, as cuLaunchKernel takes them.
#[derive(Default)]
struct KernelArgs(Vec<Box<dyn Any>>);

impl KernelArgs {
    fn val<T: Copy + 'static>(mut self, v: T) -> Self {
        self.0.push(Box::new(v));
        self
    }
    /// The device address of a storage's first element.
    fn buf(self, s: &CudaStorage) -> Self {
        self.raw(&s.buffer)
    }
    /// The device address of a raw device buffer's first element (one not yet wrapped in a `CudaStorage`).
    fn raw(self, buffer: &CpuStorage) -> Self {
        self.val(raw_ptr(buffer))
    }
    fn null(self) -> Self {
        self.val(std::ptr::null_mut::<c_void>())
    }
    /// Launch kernel `name` on `on`'s device with these parameters.
    ///
    /// # Safety
    /// The parameters must be the kernel's, in order, and every buffer must cover what the kernel touches.
    unsafe fn launch(mut self, on: &CudaStorage, name: &str, config: LaunchConfig) -> Result<()> {
        let mut args: Vec<*mut c_void> = self.0.iter_mut().map(|b| (&mut **b as *mut dyn Any) as *mut c_void).collect();
        // SAFETY: forwarded from the caller.
        unsafe { on.target.launch(name, config, &mut args) }
    }
}

/// The address of a buffer's first element, any dtype.
fn raw_ptr(buffer: &CpuStorage) -> *mut c_void {
    match buffer {
        CpuStorage::F32(v) => v.as_ptr() as *mut c_void,
        CpuStorage::F64(v) => v.as_ptr() as *mut c_void,
        CpuStorage::BF16(v) => v.as_ptr() as *mut c_void,
        CpuStorage::F16(v) => v.as_ptr() as *mut c_void,
        CpuStorage::I32(v) => v.as_ptr() as *mut c_void,
        CpuStorage::I64(v) => v.as_ptr() as *mut c_void,
        CpuStorage::U8(v) => v.as_ptr() as *mut c_void,
    }
}

impl CudaStorage {
    /// Allocate `len` zeroed elements on GPU `ordinal`.
    pub fn zeros(ordinal: usize, len: usize, dtype: DType) -> Result<CudaStorage> {
        let target = KernelTarget::for_ordinal(ordinal)?;
        let storage = CudaStorage { ordinal, target, buffer: CpuStorage::zeros(len, dtype) };
        if matches!(dtype, DType::F32 | DType::BF16) {
            // The emulated allocation is already zero; the fill still runs so the kernel path is the GPU's.
            storage.fill(0.0)?;
        }
        Ok(storage)
    }

    /// Copy host data to GPU `ordinal`.
    pub fn from_cpu(ordinal: usize, cpu: &CpuStorage) -> Result<CudaStorage> {
        let target = KernelTarget::for_ordinal(ordinal)?;
        Ok(CudaStorage { ordinal, target, buffer: cpu.clone() })
    }

    /// Copy device data back to the host.
    pub fn to_cpu(&self) -> Result<CpuStorage> {
        match self.target {
            KernelTarget::HostEmulation => Ok(self.buffer.clone()),
        }
    }

    fn with_buffer(&self, buffer: CpuStorage) -> CudaStorage {
        CudaStorage { ordinal: self.ordinal, target: self.target, buffer }
    }

    fn fill(&self, value: f32) -> Result<()> {
        let suffix = kernel_dtype("fill", self.dtype())?;
        let n = self.buffer.len();
        let args = KernelArgs::default().buf(self).val(n as i64).val(value);
        // SAFETY: fill_{f32,bf16}(T* out, int64_t n, float value); `out` holds n elements.
        unsafe { args.launch(self, &format!("fill_{suffix}"), grid_for(n)) }
    }

    /// A fresh contiguous copy of what `layout` selects, through the strided-copy kernel.
    fn contiguous(&self, layout: &Layout) -> Result<CudaStorage> {
        let out = CpuStorage::zeros(layout.elem_count(), self.dtype());
        self.copy_view_into(layout, &out, 0)?;
        Ok(self.with_buffer(out))
    }

    /// Copy what `layout` selects, in row-major order, into `out` from element `at` on (strided-copy kernel).
    fn copy_view_into(&self, layout: &Layout, out: &CpuStorage, at: usize) -> Result<()> {
        let suffix = kernel_dtype("copy_strided", self.dtype())?;
        let rank = layout.rank();
        if rank > KERNEL_RANK {
            return Err(Error::BadShape {
                op: "copy_strided",
                msg: format!("device cuda copies views of rank {KERNEL_RANK} at most, this one has rank {rank}"),
            });
        }
        let pad = KERNEL_RANK - rank;
        let mut shape = StridedShape { dims: [1; KERNEL_RANK], strides: [0; KERNEL_RANK], offset: layout.offset() as i64 };
        for d in 0..rank {
            shape.dims[pad + d] = layout.shape()[d] as i64;
            shape.strides[pad + d] = layout.strides()[d] as i64;
        }
        let n = layout.elem_count();
        if n == 0 {
            return Ok(());
        }
        assert!(at + n <= out.len() && out.dtype() == self.dtype(), "copy_view_into: destination too small or of another dtype");
        // SAFETY: `at + n <= out.len()` (asserted above), so the offset pointer stays inside `out`.
        let dst = unsafe { (raw_ptr(out) as *mut u8).add(at * self.dtype().size_in_bytes()) } as *mut c_void;
        let args = KernelArgs::default().buf(self).val(dst).val(shape);
        // SAFETY: copy_strided_T(const T* in, T* out, StridedShape s); the layout stays inside `self.buffer`
        // (a Tensor's layout never points past its storage) and `out` holds n elements from `at`.
        unsafe { args.launch(self, &format!("copy_strided_{suffix}"), grid_for(n)) }
    }

    /// The views `parts` joined end to end in one fresh buffer (`Tensor::cat`, which moves the joined dim first),
    /// each copied into its place by the strided-copy kernel.
    pub(crate) fn concat(parts: &[(&CudaStorage, &Layout)]) -> Result<CudaStorage> {
        let first = parts.first().ok_or_else(|| Error::Msg("cat: no tensors given".into()))?.0;
        let out = CpuStorage::zeros(parts.iter().map(|(_, l)| l.elem_count()).sum(), first.dtype());
        let mut at = 0;
        for (storage, layout) in parts {
            if storage.dtype() != first.dtype() {
                return Err(Error::DTypeMismatch { op: "cat", lhs: first.dtype(), rhs: storage.dtype() });
            }
            storage.copy_view_into(layout, &out, at)?;
            at += layout.elem_count();
        }
        Ok(first.with_buffer(out))
    }

    /// `ft_pointwise` op `op` (a UnaryOp index, or affine / powf with parameters `a`, `b`) on a contiguous buffer.
    fn pointwise(&self, op: i32, a: f32, b: f32) -> Result<CudaStorage> {
        let suffix = kernel_dtype("unary", self.dtype())?;
        let n = self.buffer.len();
        let out = CpuStorage::zeros(n, self.dtype());
        if n == 0 {
            return Ok(self.with_buffer(out));
        }
        let args = KernelArgs::default().buf(self).raw(&out).val(n as i64).val(op).val(a).val(b);
        // SAFETY: unary_T(const T* in, T* out, int64_t n, int op, float a, float b); both hold n elements.
        unsafe { args.launch(self, &format!("unary_{suffix}"), grid_for(n))? };
        Ok(self.with_buffer(out))
    }

    /// Cast a contiguous buffer between f32 and bf16 through the cast kernels.
    fn cast(&self, dtype: DType) -> Result<CudaStorage> {
        let from = kernel_dtype("to_dtype", self.dtype())?;
        let to = kernel_dtype("to_dtype", dtype)?;
        if from == to {
            return Ok(self.with_buffer(self.buffer.clone()));
        }
        let n = self.buffer.len();
        let out = CpuStorage::zeros(n, dtype);
        let args = KernelArgs::default().buf(self).raw(&out).val(n as i64);
        // SAFETY: cast_From_To(const From* in, To* out, int64_t n); both buffers hold n elements.
        unsafe { args.launch(self, &format!("cast_{from}_{to}"), grid_for(n))? };
        Ok(self.with_buffer(out))
    }
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        self.buffer.dtype()
    }
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
    fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        self.contiguous(layout)?.cast(dtype)
    }
    fn copy_strided(&self, layout: &Layout) -> Result<Self> {
        self.contiguous(layout)
    }
    /// Sum and max (min through max): the reduced dims are moved last by a strided copy, then one block per output element
    /// reduces its row in f32 (reduce_rows); bf16 results are rounded back once.
    fn reduce(&self, layout: &Layout, dims: &[usize], op: ReduceOp) -> Result<Self> {
        let op_code: i32 = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            // min(x) = -max(-x): both negations are exact.
            ReduceOp::Min => return self.unary(layout, UnaryOp::Neg)?.reduce(&Layout::contiguous(layout.shape()), dims, ReduceOp::Max)?.pointwise(UnaryOp::Neg as i32, 0.0, 0.0),
        };
        let suffix = kernel_dtype("reduce", self.dtype())?;
        let rank = layout.rank();
        if let Some(&d) = dims.iter().find(|&&d| d >= rank) {
            return Err(Error::DimOutOfRange { op: "reduce", dim: d, rank });
        }
        let kept: Vec<usize> = (0..rank).filter(|d| !dims.contains(d)).collect();
        let order: Vec<usize> = kept.iter().copied().chain((0..rank).filter(|d| dims.contains(d))).collect();
        let rows: usize = kept.iter().map(|&d| layout.shape()[d]).product();
        let cols: usize = (0..rank).filter(|d| dims.contains(d)).map(|d| layout.shape()[d]).product();
        let moved = self.contiguous(&layout.permute(&order)?)?;
        let out = CpuStorage::zeros(rows, DType::F32);
        if rows > 0 {
            let args = KernelArgs::default().buf(&moved).raw(&out).val(cols as i64).val(op_code);
            let config = LaunchConfig::linear(rows as u32, BLOCK_THREADS);
            // SAFETY: reduce_rows_T(const T* in, float* out, int64_t cols, int op); `moved` is contiguous
            // [rows, cols], `out` holds rows floats.
            unsafe { args.launch(self, &format!("reduce_rows_{suffix}"), config)? };
        }
        self.with_buffer(out).cast(self.dtype())
    }
    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self> {
        // The kernel numbers UnaryOp's variants in declaration order (kernels/elementwise.cu ft_pointwise).
        self.contiguous(layout)?.pointwise(op as i32, 0.0, 0.0)
    }
    fn affine(&self, layout: &Layout, mul: f64, add: f64) -> Result<Self> {
        self.contiguous(layout)?.pointwise(POINTWISE_AFFINE, mul as f32, add as f32)
    }
    fn powf(&self, layout: &Layout, exponent: f64) -> Result<Self> {
        self.contiguous(layout)?.pointwise(POINTWISE_POWF, exponent as f32, 0.0)
    }
    /// Both sides are gathered to contiguous buffers first (broadcast views included), then combined.
    fn binary(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, op: BinaryOp) -> Result<Self> {
        if self.dtype() != rhs.dtype() {
            return Err(Error::DTypeMismatch { op: "binary", lhs: self.dtype(), rhs: rhs.dtype() });
        }
        let suffix = kernel_dtype("binary", self.dtype())?;
        let (lhs, rhs) = (self.contiguous(layout)?, rhs.contiguous(rhs_layout)?);
        let n = lhs.buffer.len();
        let out = CpuStorage::zeros(n, self.dtype());
        if n == 0 {
            return Ok(self.with_buffer(out));
        }
        // The kernel numbers BinaryOp's variants in declaration order.
        let args = KernelArgs::default().buf(&lhs).buf(&rhs).raw(&out).val(n as i64).val(op as i32);
        // SAFETY: binary_T(const T* lhs, const T* rhs, T* out, int64_t n, int op); all three hold n elements.
        unsafe { args.launch(self, &format!("binary_{suffix}"), grid_for(n))? };
        Ok(self.with_buffer(out))
    }
    /// Both operands are gathered to contiguous `[batch, m, k]` / `[batch, k, n]` (or `[k, n]`) buffers (transposed and
    /// broadcast views included), then the tiled GEMM kernel runs; cuBLASLt is for the GPU target.
    fn matmul(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, dims: MatmulDims) -> Result<Self> {
        if self.dtype() != rhs.dtype() {
            return Err(Error::DTypeMismatch { op: "matmul", lhs: self.dtype(), rhs: rhs.dtype() });
        }
        let suffix = kernel_dtype("matmul", self.dtype())?;
        let MatmulDims { batch, m, n, k } = dims;
        if batch > GRID_Z_MAX {
            return Err(Error::BadShape { op: "matmul", msg: format!("device cuda runs at most {GRID_Z_MAX} products in one batch, got {batch}") });
        }
        let (a, b) = (self.contiguous(layout)?, rhs.contiguous(rhs_layout)?);
        let out = CpuStorage::zeros(batch * m * n, self.dtype());
        if batch * m * n == 0 {
            return Ok(self.with_buffer(out));
        }
        if k == 0 {
            return Ok(self.with_buffer(out)); // empty sums: zeros, as the CPU backend returns
        }
        // A rank-2 rhs (a weight) is shared by every product of the batch.
        let b_batch_stride = if rhs_layout.rank() == 2 { 0 } else { (k * n) as i64 };
        let args = KernelArgs::default().buf(&a).buf(&b).raw(&out).val(m as i64).val(n as i64).val(k as i64).val(b_batch_stride);
        let tiles = |x: usize| x.div_ceil(GEMM_TILE) as u32;
        let config = LaunchConfig {
            grid: [tiles(n), tiles(m), batch as u32],
            block: [GEMM_TILE as u32, GEMM_TILE as u32, 1],
            dynamic_shared: 0,
        };
        // SAFETY: gemm_tiled_T(const T* a, const T* b, T* c, int64_t m, int64_t n, int64_t k, int64_t
        // b_batch_stride); a holds batch*m*k, b batch*k*n (k*n when shared) and c batch*m*n elements.
        unsafe { args.launch(self, &format!("gemm_tiled_{suffix}"), config)? };
        Ok(self.with_buffer(out))
    }
    fn index_select(&self, layout: &Layout, ids: &Self, ids_layout: &Layout) -> Result<Self> {
        if layout.rank() != 2 {
            return Err(Error::BadShape { op: "index_select", msg: format!("table must be 2-D, got {:?}", layout.shape()) });
        }
        let (rows, cols) = (layout.shape()[0], layout.shape()[1]);
        let table = self.contiguous(layout)?;
        let out = CpuStorage::zeros(ids_layout.elem_count() * cols, self.dtype());
        self.embedding("index_select", "embedding_forward", &table.buffer, ids, ids_layout, &out, rows, cols)?;
        Ok(self.with_buffer(out))
    }
    /// Accumulates in f32 (atomics) and rounds back once to the source dtype, as the CPU backend does.
    fn index_add(&self, layout: &Layout, ids: &Self, ids_layout: &Layout, rows: usize) -> Result<Self> {
        let n_ids = ids_layout.elem_count();
        let cols = layout.shape().last().copied().unwrap_or(1);
        if layout.elem_count() != n_ids * cols {
            return Err(Error::BadShape {
                op: "index_add",
                msg: format!("source {:?} does not hold one row per id ({n_ids} ids)", layout.shape()),
            });
        }
        let src = self.contiguous(layout)?;
        let out = CudaStorage::zeros(self.ordinal, rows * cols, DType::F32)?;
        self.embedding("index_add", "embedding_backward", &src.buffer, ids, ids_layout, &out.buffer, rows, cols)?;
        out.cast(self.dtype())
    }
}

impl CudaStorage {
    /// A fused elementwise kernel `{kernel}_{dtype}(const T* in.., T* out.., int64_t n)` (swiglu's): the inputs,
    /// of one dtype and element count, are gathered contiguous; returns `outputs` fresh buffers of that dtype.
    pub(crate) fn fused_elementwise(
        op: &'static str,
        kernel: &str,
        inputs: &[(&CudaStorage, &Layout)],
        outputs: usize,
    ) -> Result<Vec<CudaStorage>> {
        let first = inputs[0].0;
        let n = inputs[0].1.elem_count();
        for (storage, layout) in inputs {
            if storage.dtype() != first.dtype() {
                return Err(Error::DTypeMismatch { op, lhs: first.dtype(), rhs: storage.dtype() });
            }
            if layout.elem_count() != n {
                return Err(Error::ShapeMismatch { op, lhs: inputs[0].1.shape().to_vec(), rhs: layout.shape().to_vec() });
            }
        }
        let suffix = kernel_dtype(op, first.dtype())?;
        let gathered = inputs.iter().map(|(s, l)| s.contiguous(l)).collect::<Result<Vec<_>>>()?;
        let outs: Vec<CudaStorage> = (0..outputs).map(|_| first.with_buffer(CpuStorage::zeros(n, first.dtype()))).collect();
        if n == 0 {
            return Ok(outs);
        }
        let args = gathered.iter().chain(&outs).fold(KernelArgs::default(), KernelArgs::buf).val(n as i64);
        // SAFETY: the kernel takes the inputs, then the outputs, then n; every buffer holds n elements.
        unsafe { args.launch(first, &format!("{kernel}_{suffix}"), grid_for(n))? };
        Ok(outs)
    }

    /// Launch `{kernel}_{dtype}(const T* src, const int64_t* ids, out, n_ids, rows, cols, int* bad_id)`; ids
    /// outside `[0, rows)` come back as `IndexOutOfRange` naming `op` and the first such id.
    #[allow(clippy::too_many_arguments)]
    fn embedding(
        &self,
        op: &'static str,
        kernel: &str,
        src: &CpuStorage,
        ids: &CudaStorage,
        ids_layout: &Layout,
        out: &CpuStorage,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let suffix = kernel_dtype(op, self.dtype())?;
        let id_slice = match (&ids.buffer, ids_layout.contiguous_range()) {
            (CpuStorage::I64(v), Some(range)) => &v[range],
            (CpuStorage::I64(_), None) => {
                return Err(Error::Msg(format!("{op}: ids on device cuda must be contiguous; call contiguous() first")))
            }
            (other, _) => return Err(Error::UnsupportedDType { op, dtype: other.dtype() }),
        };
        let n_ids = id_slice.len();
        if n_ids == 0 || cols == 0 {
            return Ok(());
        }
        let mut bad = vec![0i32; 1];
        let args = KernelArgs::default()
            .raw(src)
            .val(id_slice.as_ptr() as *mut c_void)
            .raw(out)
            .val(n_ids as i64)
            .val(rows as i64)
            .val(cols as i64)
            .val(bad.as_mut_ptr() as *mut c_void);
        let config = LaunchConfig::linear(n_ids.min(MAX_BLOCKS) as u32, 128);
        // SAFETY: the embedding kernels' parameter lists (kernels/embedding.cu); src holds n_ids (backward) or
        // rows (forward) rows of `cols`, out the other, ids n_ids int64s, bad one int.
        unsafe { args.launch(self, &format!("{kernel}_{suffix}"), config)? };
        if bad[0] != 0 {
            // Error path only: read the ids back to name the first bad one, as the CPU backend does.
            let index = id_slice.iter().copied().find(|&i| i < 0 || i as usize >= rows).unwrap_or(-1);
            return Err(Error::IndexOutOfRange { op, index, size: rows });
        }
        Ok(())
    }
}
