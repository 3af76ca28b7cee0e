//! The `ferrotune` binary as a user runs it.

use std::process::Command;

fn ferrotune(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferrotune")).args(args).output().expect("run ferrotune")
}

#[test]
fn env_reports_build_cpu_threads_and_cuda() {
    let out = ferrotune(&["env"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for field in ["ferrotune ", "git commit:", "cpu features:", "gemm kernel:", "threads:", "cuda:"] {
        assert!(text.contains(field), "missing {field:?} in:\n{text}");
    }
}

#[test]
fn bench_gemm_json_is_one_object_per_line() {
    let out = ferrotune(&["bench", "gemm", "--shapes", "64x48x32,33x17x9", "--threads", "1,2", "--min-time", "0.01", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect(l)).collect();
    assert_eq!(rows.len(), 4, "{text}");
    for row in &rows {
        assert_eq!(row["bench"], "gemm");
        assert!(row["gflops"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["threads"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn bad_arguments_are_clear_errors_not_panics() {
    let out = ferrotune(&["bench", "gemm", "--shapes", "12xbanana"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("12xbanana"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = ferrotune(&["--threads", "0", "env"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));
}
