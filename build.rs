//! Build script of the `ferrotune` binary. Records what `ferrotune env` reports about the build (git commit,
//! target, profile). The CUDA kernels in kernels/ will be compiled here once the CUDA backend lands.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=FERROTUNE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=FERROTUNE_TARGET={}", std::env::var("TARGET").unwrap_or_default());
    println!("cargo:rustc-env=FERROTUNE_PROFILE={}", std::env::var("PROFILE").unwrap_or_default());
    // Rebuild when the commit changes: HEAD names a branch ref, whose file changes on every commit.
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Some(branch_ref) = std::fs::read_to_string(".git/HEAD").ok().and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_string())) {
        println!("cargo:rerun-if-changed=.git/{branch_ref}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
