//! Builds the kernels in `kernels/*.cu` (the workspace root's `kernels/` folder) two ways:
//!
//! 1. Always: with the host C++ compiler (through `cc`) against the CPU emulation in `kernels/device.cuh`, into
//!    a static library the harness (`ferrotune_kernels::host`) launches kernels from by name.
//! 2. When nvcc is found (`NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on `PATH`): one fatbin per .cu with
//!    PTX for compute_80 (any newer GPU JIT-compiles it) and cubins for sm_86, sm_89 and sm_90, embedded in the
//!    crate (`ferrotune_kernels::FATBINS`). ptxas runs with `-v`, and any register spill or stack frame (local
//!    memory) in a kernel fails the build, except in the few `COLD_KERNELS` that run once per configuration.
//!    `FERROTUNE_NVCC=0` skips this step even where nvcc exists.
//!
//! Without nvcc the build still succeeds: `FATBINS` is empty and the CUDA backend reports that the build has no
//! compiled kernels. The sources are embedded either way (`ferrotune_kernels::SOURCES`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// PTX target (forward compatible) and the cubin targets compiled ahead of time.
const PTX_ARCH: &str = "compute_80";
const CUBIN_ARCHS: [&str; 3] = ["sm_86", "sm_89", "sm_90"];
/// Kernels allowed a stack frame: run once per configuration, off the hot path. `rope_table` evaluates cos/sin
/// in f64, whose argument reduction for large angles (Payne-Hanek) keeps a small array on the stack.
const COLD_KERNELS: [&str; 1] = ["rope_table"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let kernels_dir = manifest.join("../../kernels").canonicalize().expect("kernels/ next to crates/");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels_dir)
        .expect("read kernels/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    println!("cargo:rerun-if-changed={}", kernels_dir.display());
    for p in sources.iter().chain([&kernels_dir.join("device.cuh"), &kernels_dir.join("host/emulation.cpp")]) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    for var in ["NVCC", "CUDA_HOME", "PATH", "FERROTUNE_NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    build_host_harness(&kernels_dir, &sources, &out_dir);

    let mut embedded = String::new();
    writeln!(embedded, "/// `(file stem, source)` of every kernel file, and the header they share.").unwrap();
    writeln!(embedded, "pub static SOURCES: &[(&str, &str)] = &[").unwrap();
    for p in sources.iter().chain([&kernels_dir.join("device.cuh")]) {
        writeln!(embedded, "    ({:?}, include_str!({:?})),", file_name(p), p.display().to_string()).unwrap();
    }
    writeln!(embedded, "];").unwrap();
    let nvcc = if std::env::var("FERROTUNE_NVCC").is_ok_and(|v| v == "0") { None } else { find_nvcc() };
    writeln!(embedded, "/// `(file stem, fatbin)` per kernel file: PTX {PTX_ARCH} + cubins {CUBIN_ARCHS:?}; empty without nvcc.").unwrap();
    writeln!(embedded, "pub static FATBINS: &[(&str, &[u8])] = &[").unwrap();
    if let Some(nvcc) = &nvcc {
        for src in &sources {
            let fatbin = compile_fatbin(nvcc, src, &kernels_dir, &out_dir);
            writeln!(embedded, "    ({:?}, include_bytes!({:?})),", stem(src), fatbin.display().to_string()).unwrap();
        }
    } else {
        println!("cargo:warning=nvcc not found (NVCC, CUDA_HOME, PATH): building without compiled CUDA kernels");
    }
    writeln!(embedded, "];").unwrap();
    writeln!(embedded, "/// The nvcc that built `FATBINS`, if any.").unwrap();
    writeln!(embedded, "pub static NVCC: Option<&str> = {:?};", nvcc.as_ref().map(|p| p.display().to_string())).unwrap();
    std::fs::write(out_dir.join("embedded.rs"), embedded).unwrap();
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

/// One translation unit: the emulation runtime plus every kernel, so FT_EXPORT's static registrations live in
/// the object the harness's entry point is in and the linker keeps them.
fn build_host_harness(kernels_dir: &Path, sources: &[PathBuf], out_dir: &Path) {
    let mut unit = String::new();
    for p in std::iter::once(kernels_dir.join("host/emulation.cpp")).chain(sources.iter().cloned()) {
        writeln!(unit, "#include {:?}", p.display().to_string()).unwrap();
    }
    let unit_path = out_dir.join("all_kernels.cpp");
    std::fs::write(&unit_path, unit).unwrap();
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .file(&unit_path)
        .include(kernels_dir)
        .opt_level(2)
        .warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        // `#pragma unroll` is for nvcc.
        .flag_if_supported("-Wno-unknown-pragmas")
        .compile("ferrotune_kernels_host");
}

fn find_nvcc() -> Option<PathBuf> {
    let works = |p: &Path| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
    if let Some(p) = std::env::var_os("NVCC").map(PathBuf::from) {
        if works(&p) {
            return Some(p);
        }
        println!("cargo:warning=NVCC={} does not run; looking for nvcc elsewhere", p.display());
    }
    if let Some(home) = std::env::var_os("CUDA_HOME").map(PathBuf::from) {
        let p = home.join("bin/nvcc");
        if works(&p) {
            return Some(p);
        }
    }
    let p = PathBuf::from("nvcc");
    works(&p).then_some(p)
}

/// `nvcc -fatbin` for every target, failing the build on spills or local memory reported by `ptxas -v`.
fn compile_fatbin(nvcc: &Path, src: &Path, kernels_dir: &Path, out_dir: &Path) -> PathBuf {
    let out = out_dir.join(format!("{}.fatbin", stem(src)));
    let mut cmd = Command::new(nvcc);
    cmd.args(["-fatbin", "-O3", "-std=c++17", "--use_fast_math", "-Xptxas", "-v", "-Werror", "all-warnings"])
        .arg(format!("-gencode=arch={PTX_ARCH},code={PTX_ARCH}"));
    for arch in CUBIN_ARCHS {
        let num = &arch[3..];
        cmd.arg(format!("-gencode=arch=compute_{num},code={arch}"));
    }
    cmd.arg("-I").arg(kernels_dir).arg("-o").arg(&out).arg(src);
    let output = cmd.output().unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
    let log = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        panic!("nvcc failed on {}:\n{log}", src.display());
    }
    std::fs::write(out_dir.join(format!("{}.ptxas.log", stem(src))), &log).unwrap();
    let offenders = spills_and_local_memory(&log);
    if !offenders.is_empty() {
        panic!(
            "{}: register spills or local memory (ptxas -v); keep hot kernels in registers and shared memory:\n{}",
            src.display(),
            offenders.join("\n")
        );
    }
    out
}

/// The `ptxas -v` lines that report a non-zero stack frame, spill or local-memory use, with the function
/// they belong to. ptxas prints, per function and target:
/// `ptxas info    : Function properties for NAME` then `N bytes stack frame, N bytes spill stores, N bytes
/// spill loads`, and `ptxas info    : Used N registers, ... N bytes lmem ...`.
fn spills_and_local_memory(log: &str) -> Vec<String> {
    let mut function = String::new();
    let mut offenders = Vec::new();
    for line in log.lines() {
        if let Some(name) = line.split("Function properties for ").nth(1) {
            function = name.trim().to_string();
        } else if let Some(name) = line.split("Compiling entry function '").nth(1) {
            function = name.trim_end_matches(['\'', ' ']).split('\'').next().unwrap_or("").to_string();
        }
        let nonzero = |what: &str| {
            line.split(',').any(|part| {
                let part = part.trim();
                part.ends_with(what) && part.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > 0)
            })
        };
        if COLD_KERNELS.contains(&function.as_str()) {
            continue;
        }
        if nonzero("bytes stack frame") || nonzero("bytes spill stores") || nonzero("bytes spill loads") || nonzero("bytes lmem") {
            offenders.push(format!("  {function}: {}", line.trim()));
        }
    }
    offenders
}
