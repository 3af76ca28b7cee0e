//! The `ferrotune` binary as a user runs it.

mod common;

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

#[test]
fn model_info_and_convert_a_gguf_to_an_hf_folder_that_loads_back() {
    let Some(gguf) = common::smollm2_gguf() else { return };
    let gguf = gguf.to_str().unwrap();
    let out = ferrotune(&["model", "info", gguf]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for field in ["LlamaForCausalLM", "30 layers, hidden 576", "134515008", "chat template yes", "peak memory (RSS)"] {
        assert!(text.contains(field), "missing {field:?} in:\n{text}");
    }
    // Loading for training in f32 must stay under 1 GB resident (weights alone are 538 MB).
    let rss_mb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("peak memory (RSS): "))
        .and_then(|v| v.trim_end_matches(" MB").parse().ok())
        .expect("peak RSS line");
    assert!(rss_mb < 1000.0, "loading SmolLM2 in f32 peaked at {rss_mb} MB");

    let dir = std::env::temp_dir().join(format!("ferrotune-cli-convert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = ferrotune(&["model", "convert", gguf, dir.to_str().unwrap(), "--dtype", "bf16"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(dir.join(file).is_file(), "convert did not write {file}");
    }
    let out = ferrotune(&["model", "info", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("134515008"));
    // A second convert into the same folder refuses instead of overwriting.
    let out = ferrotune(&["model", "convert", gguf, dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a model"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn model_info_on_a_missing_path_says_what_it_expected() {
    let out = ferrotune(&["model", "info", "/nonexistent/model/dir"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model/dir") && !err.contains("panicked"), "{err}");
}
