//! The embedded kernels on an NVIDIA GPU through the CUDA driver API (cudarc, with libcuda loaded at run time:
//! a binary built with this feature starts on machines without a driver, and [`driver_status`] says why the GPU
//! is off). Launches take the same cuLaunchKernel-shaped arguments as [`crate::host::launch`], so code written
//! against one runs against the other; this module is what the kernel tests and `scripts/gpu-check.sh` use on a
//! GPU, and what the tensor backend's CUDA storage is to be built on.
//!
//! Everything runs on the primary context of one device and its default stream, synchronously: this is the
//! checking path, not yet the training path (no caching allocator, no per-device stream; see DEVELOPERS.md).

use crate::{LaunchConfig, FATBINS};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};

/// Why no GPU can be used, or the number of devices the driver reports. Never panics: a missing libcuda is
/// detected before any driver call.
pub fn driver_status() -> Result<usize, String> {
    // SAFETY: only probes for the library file.
    if !unsafe { sys::is_culib_present() } {
        return Err("no NVIDIA driver: libcuda.so could not be loaded".to_string());
    }
    result::init().map_err(|e| format!("the NVIDIA driver failed to initialise: {e:?}"))?;
    let count = result::device::get_count().map_err(|e| format!("cuDeviceGetCount failed: {e:?}"))?;
    if count <= 0 {
        return Err("the NVIDIA driver reports no GPU".to_string());
    }
    Ok(count as usize)
}

/// The kernel modules loaded on one GPU.
pub struct CudaKernels {
    device: sys::CUdevice,
    context: sys::CUcontext,
    modules: Vec<(String, sys::CUmodule)>,
    functions: std::sync::Mutex<HashMap<String, sys::CUfunction>>,
}

// SAFETY: the handles are plain driver handles, usable from any thread once the context is made current
// (every method does that first).
unsafe impl Send for CudaKernels {}
unsafe impl Sync for CudaKernels {}

impl CudaKernels {
    /// Retain the primary context of GPU `ordinal` and load every embedded fatbin into it.
    pub fn new(ordinal: usize) -> Result<CudaKernels, String> {
        driver_status()?;
        if FATBINS.is_empty() {
            return Err("this build has no compiled CUDA kernels (nvcc was not found at build time; set NVCC or CUDA_HOME and rebuild)".to_string());
        }
        let device = result::device::get(ordinal as i32).map_err(|e| format!("GPU {ordinal}: {e:?}"))?;
        // SAFETY: device comes from the driver; the primary context lives until released (never, here: one per
        // process, as the runtime API does).
        let context = unsafe { result::primary_ctx::retain(device) }.map_err(|e| format!("GPU {ordinal}: retaining its context: {e:?}"))?;
        let mut kernels = CudaKernels { device, context, modules: Vec::new(), functions: Default::default() };
        kernels.make_current()?;
        for (name, fatbin) in FATBINS {
            // cuModuleLoadData wants the image aligned as the fatbin header demands (8 bytes); include_bytes
            // gives no alignment guarantee, so load from an aligned copy.
            let aligned: Vec<u64> = fatbin.chunks(8).map(|c| { let mut w = [0u8; 8]; w[..c.len()].copy_from_slice(c); u64::from_le_bytes(w) }).collect();
            // SAFETY: a fatbin written by nvcc, kept alive for the call.
            let module = unsafe { result::module::load_data(aligned.as_ptr() as *const c_void) }
                .map_err(|e| format!("loading kernels/{name}.cu's fatbin on GPU {ordinal}: {e:?} (a driver older than the nvcc that built it?)"))?;
            kernels.modules.push((name.to_string(), module));
        }
        Ok(kernels)
    }

    /// The GPU's name as the driver reports it ("NVIDIA H200", ...).
    pub fn device_name(&self) -> String {
        result::device::get_name(self.device).unwrap_or_else(|e| format!("unknown ({e:?})"))
    }

    /// Zero-filled device memory of `bytes` bytes.
    pub fn zeros(&self, bytes: usize) -> Result<DeviceBuffer, String> {
        self.upload(&vec![0u8; bytes])
    }

    fn make_current(&self) -> Result<(), String> {
        // SAFETY: a retained primary context.
        unsafe { result::ctx::set_current(self.context) }.map_err(|e| format!("cuCtxSetCurrent: {e:?}"))
    }

    fn function(&self, name: &str) -> Result<sys::CUfunction, String> {
        let mut functions = self.functions.lock().unwrap();
        if let Some(&f) = functions.get(name) {
            return Ok(f);
        }
        let c_name = CString::new(name).map_err(|_| format!("kernel name {name:?} has a NUL byte"))?;
        for (_, module) in &self.modules {
            // SAFETY: a loaded module.
            if let Ok(f) = unsafe { result::module::get_function(*module, c_name.clone()) } {
                functions.insert(name.to_string(), f);
                return Ok(f);
            }
        }
        Err(format!("no kernel named {name:?} in the embedded fatbins"))
    }

    /// Launch kernel `name` and wait for it. `args` as for [`crate::host::launch`], with device pointers.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters, and every device buffer must cover what the kernel touches.
    pub unsafe fn launch(&self, name: &str, config: LaunchConfig, args: &mut [*mut c_void]) -> Result<(), String> {
        self.make_current()?;
        let f = self.function(name)?;
        if config.dynamic_shared > 48 * 1024 {
            // Above 48 KiB a kernel must opt in (sm_80+: up to 163-227 KiB per block).
            result::function::set_function_attribute(
                f,
                sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                config.dynamic_shared as i32,
            )
            .map_err(|e| format!("{name}: {} bytes of dynamic shared memory: {e:?}", config.dynamic_shared))?;
        }
        let [gx, gy, gz] = config.grid;
        let [bx, by, bz] = config.block;
        result::launch_kernel(f, (gx, gy, gz), (bx, by, bz), config.dynamic_shared as u32, std::ptr::null_mut(), args)
            .map_err(|e| format!("launching {name}: {e:?}"))?;
        result::ctx::synchronize().map_err(|e| format!("{name} failed on the GPU: {e:?}"))
    }

    /// A device copy of `bytes`.
    pub fn upload(&self, bytes: &[u8]) -> Result<DeviceBuffer, String> {
        self.make_current()?;
        // SAFETY: a fresh allocation of the copied size (at least 1 byte, so empty buffers get a valid pointer).
        unsafe {
            let ptr = result::malloc_sync(bytes.len().max(1)).map_err(|e| format!("cuMemAlloc {} bytes: {e:?}", bytes.len()))?;
            let buffer = DeviceBuffer { ptr, len: bytes.len() };
            result::memcpy_htod_sync(ptr, bytes).map_err(|e| format!("copy to GPU: {e:?}"))?;
            Ok(buffer)
        }
    }

    /// Copy `buffer` back into `out` (same length).
    pub fn download(&self, buffer: &DeviceBuffer, out: &mut [u8]) -> Result<(), String> {
        assert_eq!(out.len(), buffer.len, "download: length");
        self.make_current()?;
        // SAFETY: the buffer holds `len` bytes.
        unsafe { result::memcpy_dtoh_sync(out, buffer.ptr) }.map_err(|e| format!("copy from GPU: {e:?}"))
    }
}

/// Device memory, freed on drop.
pub struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    len: usize,
}

impl DeviceBuffer {
    /// The device address, as a kernel parameter takes it.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_sync, freed once.
        unsafe {
            let _ = result::free_sync(self.ptr);
        }
    }
}
