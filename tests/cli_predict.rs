//! `ferrotune train` with `do_predict` + `predict_with_generate` on a tiny random model: the files LLaMA-Factory
//! writes (generated_predictions.jsonl, predict_results.json, all_results.json) with its layout and keys, after
//! training (the model in memory) and from the saved adapter alone (do_train false). The scores themselves are
//! checked against the Python packages in tests/predict_metrics.rs.

use ferrotune_models::llama::RandomInit;
use ferrotune_models::{LlamaModel, ModelConfig, ModelTokenizer, WeightMap};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrotune_cli_predict_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An HF folder: the llama_tied fixture's shape with the byte-level BPE fixture tokenizer's vocabulary, random
/// weights.
fn tiny_model(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tok = ModelTokenizer::from_folder(&root.join("tokenizers/bytelevel_bpe")).unwrap();
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(root.join("models/llama_tied/config.json")).unwrap()).unwrap();
    json["vocab_size"] = tok.vocab_size().into();
    json["max_position_embeddings"] = 128.into();
    let config = ModelConfig::from_hf_json(&json).unwrap();
    let model = LlamaModel::random(config.clone(), &RandomInit { seed: 7, ..RandomInit::default() }).unwrap();
    let mut weights = WeightMap::new("tiny");
    for (name, t) in model.named_tensors() {
        weights.insert(name, t).unwrap();
    }
    ferrotune_models::loader::save_hf_folder(dir, &config, &weights, Some(&tok), None).unwrap();
}

const DATA: &str = r#"[
  {"instruction": "Say hello.", "input": "", "output": "Hello there!"},
  {"instruction": "用中文问好。", "input": "", "output": "你好，世界。"},
  {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
]"#;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrotune")).args(args).output().expect("run ferrotune");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ferrotune {args:?} failed:\n{text}");
    text
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The prediction lines: exactly {"prompt", "predict", "label"} in that order, labels the dataset's outputs.
fn check_predictions(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("generated_predictions.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "one line per eval example:\n{text}");
    // The response as the chatml template encodes it (`content<|im_end|>\n`), decoded without special tokens.
    let labels = ["Hello there!\\n", "你好，世界。\\n", "5\\n"];
    for (line, label) in lines.iter().zip(labels) {
        // json.dumps(..., ensure_ascii=False): ", " / ": " separators, non-ASCII as is.
        assert!(line.starts_with("{\"prompt\": \"<|im_start|>"), "{line}");
        assert!(line.contains("\", \"predict\": \"") && line.ends_with(&format!("\", \"label\": \"{label}\"}}")), "{line}");
        let v: Value = serde_json::from_str(line).unwrap();
        let prompt = v["prompt"].as_str().unwrap();
        // The prompt is decoded with its special tokens and ends where the response would start.
        assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
        assert!(!prompt.contains(label.trim_end_matches("\\n")), "the prompt holds no response: {prompt:?}");
    }
    text.lines().map(str::to_string).collect()
}

fn check_metrics(dir: &Path, preparation: bool) {
    let results = read_json(&dir.join("predict_results.json"));
    let mut keys: Vec<&str> = results.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    let mut want = vec![
        "predict_bleu-4",
        "predict_rouge-1",
        "predict_rouge-2",
        "predict_rouge-l",
        "predict_runtime",
        "predict_samples_per_second",
        "predict_steps_per_second",
    ];
    if preparation {
        want.push("predict_model_preparation_time");
        want.sort();
    }
    assert_eq!(keys, want);
    for k in ["predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l"] {
        let x = results[k].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&x), "{k} = {x}");
    }
    // HF save_metrics: sorted keys, indent 4.
    let text = std::fs::read_to_string(dir.join("predict_results.json")).unwrap();
    assert!(text.starts_with("{\n    \"predict_bleu-4\": "), "{text}");
    let all = read_json(&dir.join("all_results.json"));
    for k in want {
        assert_eq!(all[k], results[k], "all_results.json has {k}");
    }
}

#[test]
fn predict_after_training_and_from_the_saved_adapter() {
    let root = tmp("run");
    let model = root.join("model");
    tiny_model(&model);
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("dataset_info.json"), r#"{"tiny": {"file_name": "tiny.json"}}"#).unwrap();
    std::fs::write(data.join("tiny.json"), DATA).unwrap();
    let trained = root.join("trained");
    let common = format!(
        "model_name_or_path: {}\nstage: sft\nfinetuning_type: lora\nlora_target: all\ntemplate: chatml\n\
         dataset_dir: {}\neval_dataset: tiny\ncutoff_len: 48\npredict_with_generate: true\ndo_predict: true\n\
         per_device_eval_batch_size: 2\nmax_new_tokens: 6\ndo_sample: false\nreport_to: none\n",
        model.display(),
        data.display()
    );
    let cfg = root.join("train.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{common}do_train: true\ndataset: tiny\noutput_dir: {}\nmax_steps: 2\nlearning_rate: 1.0e-2\n\
             per_device_train_batch_size: 1\nlogging_steps: 1\noverwrite_output_dir: true\n",
            trained.display()
        ),
    )
    .unwrap();
    let log = run(&["train", cfg.to_str().unwrap()]);
    assert!(log.contains("***** predict metrics *****"), "{log}");
    let after_training = check_predictions(&trained);
    check_metrics(&trained, false);
    let all = read_json(&trained.join("all_results.json"));
    assert!(all.get("train_loss").is_some(), "train and predict metrics share all_results.json: {all}");

    // Predict only: the base model plus the adapter just saved (llamafactory-cli train with do_train false).
    let predicted = root.join("predicted");
    let cfg = root.join("predict.yaml");
    std::fs::write(&cfg, format!("{common}do_train: false\nadapter_name_or_path: {}\noutput_dir: {}\n", trained.display(), predicted.display())).unwrap();
    run(&["train", cfg.to_str().unwrap()]);
    let from_adapter = check_predictions(&predicted);
    check_metrics(&predicted, true);
    // Greedy decoding of the same weights (LoRA merged in memory vs. merged from the saved adapter).
    let predicts = |lines: &[String]| -> Vec<Value> { lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["predict"].clone()).collect() };
    assert_eq!(predicts(&after_training), predicts(&from_adapter));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn predict_without_generate_or_eval_dataset_is_refused_as_llamafactory_does() {
    let root = tmp("refused");
    let cfg = root.join("bad.yaml");
    for (extra, want) in [
        ("do_predict: true\neval_dataset: x\n", "Please enable `predict_with_generate`"),
        ("do_predict: true\npredict_with_generate: true\nval_size: 0.1\ndataset: x\n", "Cannot use `predict_with_generate` if `eval_dataset` is None."),
    ] {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama_tied");
        std::fs::write(&cfg, format!("model_name_or_path: {}\nstage: sft\ndo_train: false\n{extra}", model.display())).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ferrotune")).args(["train", cfg.to_str().unwrap()]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{extra}: {err}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
