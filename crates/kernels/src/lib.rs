//! ferrotune's CUDA kernels (`kernels/*.cu` at the workspace root) as the rest of the workspace sees them:
//!
//! - [`FATBINS`]: the kernels compiled by nvcc at build time (PTX compute_80 + cubins sm_86/89/90 per file),
//!   empty when the build machine had no nvcc (see `build.rs`);
//! - [`SOURCES`]: the .cu sources and `device.cuh`, embedded for run-time compilation;
//! - [`host`]: the same kernels compiled by the host C++ compiler against the CPU emulation of the device
//!   primitives, launched by name with cuLaunchKernel-shaped arguments. Tests run every kernel through it
//!   against the CPU backend (the kernels' twins), and a launcher that targets it lets backend code run on a
//!   machine without a GPU.

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// Grid and block shape of a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory per block, bytes.
    pub dynamic_shared: usize,
}

impl LaunchConfig {
    /// `grid` blocks of `threads` threads along x.
    pub fn linear(grid: u32, threads: u32) -> LaunchConfig {
        LaunchConfig { grid: [grid.max(1), 1, 1], block: [threads, 1, 1], dynamic_shared: 0 }
    }
}

#[cfg(feature = "cuda")]
pub mod cuda;

pub mod host {
    //! The host emulation harness (kernels/host/emulation.cpp): each block's threads run as fibers that meet at
    //! barriers; blocks of a launch spread over worker threads (`FERROTUNE_EMULATION_THREADS`, default: all
    //! cores). What it cannot catch is listed in docs/CUDA.md.

    use super::LaunchConfig;
    use std::ffi::{c_void, CString};

    extern "C" {
        fn ft_host_launch(
            name: *const std::ffi::c_char,
            grid_x: u32,
            grid_y: u32,
            grid_z: u32,
            block_x: u32,
            block_y: u32,
            block_z: u32,
            dynamic_shared: usize,
            args: *mut *mut c_void,
        ) -> i32;
    }

    /// Runs kernel `name` on the CPU. `args` holds one pointer per kernel parameter, pointing at the parameter's
    /// value (a device pointer parameter: a pointer to the pointer), exactly as `cuLaunchKernel` takes them.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in count and types, and every buffer the kernel touches
    /// must be valid for the extent the kernel reads or writes, as on a GPU.
    pub unsafe fn launch(name: &str, config: LaunchConfig, args: &mut [*mut c_void]) -> Result<(), String> {
        let c_name = CString::new(name).map_err(|_| format!("kernel name {name:?} has a NUL byte"))?;
        let [gx, gy, gz] = config.grid;
        let [bx, by, bz] = config.block;
        match ft_host_launch(c_name.as_ptr(), gx, gy, gz, bx, by, bz, config.dynamic_shared, args.as_mut_ptr()) {
            0 => Ok(()),
            -2 => Err(format!("no kernel named {name:?} in kernels/*.cu (is it FT_EXPORTed?)")),
            _ => Err(format!("emulated launch of {name:?} failed (see stderr)")),
        }
    }
}
