//! `ferrotune env`: what this binary is and what it found on this machine, for bug reports and benchmarks.

/// CPU features the kernels dispatch on, as detected at run time.
pub fn cpu_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { found.push($f); } )* };
        }
        probe!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512bf16", "avx512fp16");
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($f) { found.push($f); } )* };
        }
        probe!("neon", "fp16", "bf16", "sve");
    }
    found
}

pub fn run() -> Result<(), String> {
    println!("ferrotune {}", env!("CARGO_PKG_VERSION"));
    println!("git commit:    {}", env!("FERROTUNE_GIT_COMMIT"));
    println!("target:        {} ({} build)", env!("FERROTUNE_TARGET"), env!("FERROTUNE_PROFILE"));
    println!("os:            {} {}", std::env::consts::OS, std::env::consts::ARCH);
    println!("cpu features:  {}", cpu_features().join(" "));
    println!("gemm kernel:   {} (force with FERROTUNE_GEMM_KERNEL=avx512|avx2|generic)", ferrotune_tensor::cpu::gemm::selected_kernel());
    println!("threads:       {} (set with --threads or RAYON_NUM_THREADS)", rayon::current_num_threads());
    println!(
        "cores:         {}",
        std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_else(|_| "unknown".into())
    );
    match ferrotune_tensor::cuda::availability() {
        Ok(n) => println!("cuda:          available, {n} device(s)"),
        Err(why) => println!("cuda:          off ({why})"),
    }
    Ok(())
}
