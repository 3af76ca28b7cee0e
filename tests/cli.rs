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

/// `ferrotune export` merges a PEFT LoRA adapter (written here by hand in PEFT's own layout) into SmolLM2 and
/// writes an HF folder plus LLaMA-Factory's Ollama Modelfile. The merged q_proj of layer 0 must equal
/// PEFT's `W + (lora_alpha / r) * B @ A`, computed here in f64 from the loaded base weights.
#[test]
fn export_merges_a_lora_adapter_into_an_hf_folder_with_an_ollama_modelfile() {
    use ferrotune_models::{hub::HubOptions, load_model, LoadOptions, WeightDType};
    let Some(gguf) = common::smollm2_gguf() else { return };
    let root = std::env::temp_dir().join(format!("ferrotune-cli-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let adapter = root.join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();

    let (rank, alpha, hidden) = (4usize, 8.0f64, 576usize);
    let lora_a: Vec<f32> = (0..rank * hidden).map(|i| ((i * 7 % 13) as f32 - 6.0) * 1e-3).collect();
    let lora_b: Vec<f32> = (0..hidden * rank).map(|i| ((i * 5 % 11) as f32 - 5.0) * 1e-3).collect();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (a_bytes, b_bytes) = (bytes(&lora_a), bytes(&lora_b));
    let prefix = "base_model.model.model.layers.0.self_attn.q_proj";
    let views = vec![
        (format!("{prefix}.lora_A.weight"), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rank, hidden], &a_bytes).unwrap()),
        (format!("{prefix}.lora_B.weight"), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![hidden, rank], &b_bytes).unwrap()),
    ];
    safetensors::serialize_to_file(views, None, &adapter.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        adapter.join("adapter_config.json"),
        serde_json::json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
            "lora_dropout": 0.0, "target_modules": ["q_proj"], "bias": "none", "fan_in_fan_out": false,
            "use_rslora": false, "modules_to_save": null, "base_model_name_or_path": gguf.to_str().unwrap()})
        .to_string(),
    )
    .unwrap();

    let out_dir = root.join("merged");
    let (gguf_arg, adapter_arg, out_arg) = (gguf.display().to_string(), adapter.display().to_string(), out_dir.display().to_string());
    let args = [
        "export", "--model_name_or_path", &gguf_arg, "--adapter_name_or_path", &adapter_arg, "--template", "smollm2",
        "--infer_dtype", "float32", "--export_dir", &out_arg,
    ];
    let out = ferrotune(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "Modelfile"] {
        assert!(out_dir.join(file).is_file(), "export did not write {file}");
    }
    let golden: serde_json::Value = serde_json::from_slice(&std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ollama_modelfile.json")).unwrap()).unwrap();
    assert_eq!(std::fs::read_to_string(out_dir.join("Modelfile")).unwrap(), golden["smollm2"].as_str().unwrap());

    let base = load_model(gguf.to_str().unwrap(), &LoadOptions { dtype: WeightDType::F32 }, &HubOptions::default()).unwrap();
    let w: Vec<f32> = base.weights.get("model.layers.0.self_attn.q_proj.weight").unwrap().to_vec().unwrap();
    let merged = load_model(out_dir.to_str().unwrap(), &LoadOptions { dtype: WeightDType::F32 }, &HubOptions::default()).unwrap();
    let m: Vec<f32> = merged.weights.get("model.layers.0.self_attn.q_proj.weight").unwrap().to_vec().unwrap();
    let scale = alpha / rank as f64;
    for (idx, (&got, &base_w)) in m.iter().zip(&w).enumerate() {
        let (row, col) = (idx / hidden, idx % hidden);
        let delta: f64 = (0..rank).map(|k| lora_b[row * rank + k] as f64 * lora_a[k * hidden + col] as f64).sum();
        let want = base_w as f64 + scale * delta;
        // f32 storage of the merged weight: one rounding of a value below 1 in magnitude.
        assert!((got as f64 - want).abs() <= 1e-6, "q_proj[{row}, {col}]: {got} vs {want}");
    }
    // An untouched projection is the base weight bit for bit.
    let k_base: Vec<f32> = base.weights.get("model.layers.0.self_attn.k_proj.weight").unwrap().to_vec().unwrap();
    let k_merged: Vec<f32> = merged.weights.get("model.layers.0.self_attn.k_proj.weight").unwrap().to_vec().unwrap();
    assert_eq!(k_base, k_merged);

    // Exporting over an existing model refuses; a missing export_dir names the key.
    let out = ferrotune(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a model"));
    let out = ferrotune(&["export", "--model_name_or_path", &gguf_arg]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("export_dir"), "{}", String::from_utf8_lossy(&out.stderr));
    // key=value without a config file is upstream's usage error too; the message says how to write it.
    let out = ferrotune(&["export", &format!("model_name_or_path={gguf_arg}")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model_name_or_path value"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&root).unwrap();
}
