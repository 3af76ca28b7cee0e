//! Parser tests: LLaMA-Factory's example configs (reference §1), overrides, typos, rejections, round trips.

use super::*;
use std::path::PathBuf;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrotune-args-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const STRICT: ParseOptions = ParseOptions {
    allow_extra_args: false,
};

fn train(args: &[String]) -> Result<TrainArgs> {
    parse_train_args_with(args, STRICT)
}

fn infer(args: &[String]) -> Result<InferArgs> {
    parse_infer_args_with(args, STRICT)
}

/// `examples/train_lora/qwen3_lora_sft.yaml`.
const QWEN3_LORA_SFT: &str = "\
### model
model_name_or_path: Qwen/Qwen3-4B-Instruct-2507
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: qwen3_nothink
cutoff_len: 2048
max_samples: 1000
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/qwen3-4b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null

### eval
# eval_dataset: alpaca_en_demo
# val_size: 0.1
# per_device_eval_batch_size: 1
# eval_strategy: steps
# eval_steps: 500
";

#[test]
fn canonical_lora_sft_parses_with_exact_values() {
    let d = tmpdir("sft");
    let cfg = write(&d, "qwen3_lora_sft.yaml", QWEN3_LORA_SFT);
    let a = train(&argv(&[&cfg])).unwrap();
    assert_eq!(
        a.model.model_name_or_path.as_deref(),
        Some("Qwen/Qwen3-4B-Instruct-2507")
    );
    assert!(a.model.trust_remote_code);
    assert_eq!(a.finetuning.stage, Stage::Sft);
    assert_eq!(a.finetuning.finetuning_type, FinetuningType::Lora);
    assert_eq!(a.finetuning.lora_rank, 8);
    assert_eq!(a.finetuning.lora_alpha, None);
    assert_eq!(a.finetuning.lora_alpha_value(), 16);
    assert_eq!(*a.finetuning.lora_target, vec!["all".to_string()]);
    assert_eq!(
        a.data.dataset.as_deref().map(|d| d.to_vec()),
        Some(vec!["identity".into(), "alpaca_en_demo".into()])
    );
    assert_eq!(a.data.template.as_deref(), Some("qwen3_nothink"));
    assert_eq!(a.data.cutoff_len, 2048);
    assert_eq!(a.data.max_samples, Some(1000));
    assert_eq!(a.training.learning_rate, 1.0e-4);
    assert_eq!(a.training.num_train_epochs, 3.0);
    assert_eq!(a.training.lr_scheduler_type, SchedulerType::Cosine);
    assert_eq!(a.training.warmup_ratio, Some(0.1));
    assert_eq!(a.training.warmup_steps_for(100), 10);
    assert_eq!(a.training.per_device_train_batch_size, 1);
    assert_eq!(a.training.gradient_accumulation_steps, 8);
    assert!(a.training.bf16 && a.training.do_train && a.training.overwrite_output_dir);
    assert_eq!(a.training.report_to, vec!["none".to_string()]);
    assert_eq!(a.training.ddp_timeout, 180_000_000);
    assert_eq!(a.training.resume_from_checkpoint, None);
    assert!(a.finetuning.plot_loss);
    assert_eq!(a.compute_dtype(), ComputeDtype::Bf16);
    assert!(!a.packing());
    assert_eq!(a.training.optimizer(), Some(Optimizer::AdamW));
    // The launcher/dataloader knobs are accepted, and said to do nothing.
    for k in [
        "trust_remote_code",
        "preprocessing_num_workers",
        "dataloader_num_workers",
        "ddp_timeout",
    ] {
        assert!(
            a.notes.iter().any(|n| n.contains(&format!("`{k}`"))),
            "no note for {k}: {:?}",
            a.notes
        );
    }
}

#[test]
fn overrides_win_and_are_typed() {
    let d = tmpdir("over");
    let cfg = write(&d, "c.yaml", QWEN3_LORA_SFT);
    let a = train(&argv(&[
        &cfg,
        "learning_rate=1e-5",
        "lora_rank=16",
        "dataset=alpaca_en_demo",
        "output_dir=out/x",
        "bf16=false",
        "max_steps=20",
        "lr_scheduler_kwargs.min_lr=1e-6",
        "lr_scheduler_type=cosine_with_min_lr",
    ]))
    .unwrap();
    assert_eq!(a.training.learning_rate, 1e-5);
    assert_eq!(a.finetuning.lora_rank, 16);
    assert_eq!(a.finetuning.lora_alpha_value(), 32);
    assert_eq!(a.data.dataset.as_ref().map(|d| d.len()), Some(1));
    assert_eq!(a.training.output_dir(), "out/x");
    assert!(!a.training.bf16);
    assert_eq!(a.training.max_steps, 20);
    assert_eq!(a.training.total_steps(1000), 20);
    assert_eq!(
        a.training.lr_scheduler_kwargs,
        Value::Map(vec![("min_lr".into(), Value::Float(1e-6))])
    );
}

#[test]
fn json_config_and_flags_match_yaml() {
    let d = tmpdir("json");
    let json = r#"{"model_name_or_path": "m", "stage": "sft", "do_train": true, "dataset": "alpaca_en_demo",
        "template": "llama3", "output_dir": "o", "learning_rate": 0.0001, "num_train_epochs": 1, "lora_rank": 4}"#;
    let cfg = write(&d, "c.json", json);
    let a = train(&argv(&[&cfg, "lora_rank=2"])).unwrap();
    assert_eq!(a.finetuning.lora_rank, 2);
    assert_eq!(a.training.num_train_epochs, 1.0);
    let b = train(&argv(&[
        "--model_name_or_path",
        "m",
        "--stage",
        "sft",
        "--do_train",
        "--dataset",
        "alpaca_en_demo",
        "--template",
        "llama3",
        "--output_dir",
        "o",
        "--learning_rate",
        "1e-4",
        "--num_train_epochs",
        "1",
        "--lora_rank",
        "2",
    ]))
    .unwrap();
    assert_eq!(a, b);
    let c = train(&argv(&[
        "--model_name_or_path=m",
        "--do_train",
        "true",
        "--dataset",
        "alpaca_en_demo",
        "--no_use_fast_tokenizer",
        "--report_to",
        "none",
        "--max_steps",
        "-1",
        "--num_train_epochs",
        "2",
    ]))
    .unwrap();
    assert!(c.training.do_train && !c.model.use_fast_tokenizer);
    assert_eq!(c.training.max_steps, -1);
}

#[test]
fn typos_suggest_the_right_key() {
    let d = tmpdir("typo");
    for (typo, want) in [
        ("learnig_rate: 1.0e-4", "learning_rate"),
        ("lora_targets: all", "lora_target"),
        ("num_train_epoch: 3", "num_train_epochs"),
        (
            "per_device_train_batchsize: 2",
            "per_device_train_batch_size",
        ),
        ("gradient_accumulation: 4", "gradient_accumulation_steps"),
    ] {
        let cfg = write(
            &d,
            "t.yaml",
            &format!("model_name_or_path: m\ndataset: a\n{typo}\n"),
        );
        let err = train(&argv(&[&cfg])).unwrap_err();
        match &err {
            ArgsError::UnknownKey { suggestion, .. } => {
                assert_eq!(suggestion.as_deref(), Some(want), "{typo}")
            }
            other => panic!("{typo}: {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("did you mean `{want}`")), "{msg}");
    }
    // ALLOW_EXTRA_ARGS turns the error into a list of ignored keys.
    let cfg = write(&d, "t.yaml", "model_name_or_path: m\nlearnig_rate: 1\n");
    let a = parse_train_args_with(
        &argv(&[&cfg]),
        ParseOptions {
            allow_extra_args: true,
        },
    )
    .unwrap();
    assert_eq!(a.ignored, vec!["learnig_rate".to_string()]);
    // A training key in a chat config is named as such.
    let cfg = write(
        &d,
        "chat.yaml",
        "model_name_or_path: m\ntemplate: llama3\nlearning_rate: 1.0e-4\n",
    );
    let msg = infer(&argv(&[&cfg])).unwrap_err().to_string();
    assert!(msg.contains("training argument"), "{msg}");
}

#[test]
fn values_are_typed_with_errors_naming_key_value_and_type() {
    let d = tmpdir("types");
    let cases = [
        ("learning_rate: fast", "learning_rate", "a number"),
        ("lora_rank: 8.5", "lora_rank", "an integer"),
        ("do_train: maybe", "do_train", "a boolean"),
        (
            "lr_scheduler_type: cosine_annealing",
            "lr_scheduler_type",
            "one of linear, cosine",
        ),
        ("flash_attn: fa4", "flash_attn", "one of auto, disabled"),
        ("template: true", "template", "a string"),
        ("optim: adam", "optim", "one of adamw_torch"),
    ];
    for (line, key, expected) in cases {
        let cfg = write(&d, "t.yaml", &format!("model_name_or_path: m\n{line}\n"));
        let err = train(&argv(&[&cfg])).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ArgsError::BadValue { .. }), "{line}: {msg}");
        assert!(
            msg.contains(&format!("`{key}`")) && msg.contains(expected),
            "{line}: {msg}"
        );
        let value = line.split_once(": ").unwrap().1;
        assert!(msg.contains(value), "{line}: {msg}");
    }
    // YAML 1.1 booleans, nulls and floats as OmegaConf reads them.
    let cfg = write(&d, "t.yaml", "model_name_or_path: m\ndataset: a\ndo_train: yes\nbf16: on\nlearning_rate: 5e-5\nmax_samples: ~\n");
    let a = train(&argv(&[&cfg])).unwrap();
    assert!(a.training.do_train && a.training.bf16);
    assert_eq!(a.training.learning_rate, 5e-5);
    assert_eq!(a.data.max_samples, None);
}

fn expect_not_implemented(cfg_text: &str, key: &str, why: &str) {
    let d = tmpdir(&format!("ni-{key}"));
    let cfg = write(&d, "t.yaml", cfg_text);
    let err = train(&argv(&[&cfg])).unwrap_err();
    let msg = err.to_string();
    match &err {
        ArgsError::NotImplemented { key: k, .. } => assert_eq!(k, key, "{msg}"),
        other => panic!("expected `{key}` to be rejected, got: {other}"),
    }
    assert!(msg.contains(why), "{msg}");
}

#[test]
fn reference_examples_of_unimplemented_features_are_rejected_with_reasons() {
    // LoRA DPO (examples/train_lora/qwen3_lora_dpo.yaml).
    expect_not_implemented(
        "model_name_or_path: Qwen/Qwen3-4B-Instruct-2507\ntrust_remote_code: true\nstage: dpo\ndo_train: true\n\
         finetuning_type: lora\nlora_rank: 8\nlora_target: all\npref_beta: 0.1\npref_loss: sigmoid\n\
         dataset: dpo_en_demo\ntemplate: qwen3_nothink\ncutoff_len: 2048\nmax_samples: 1000\n\
         output_dir: saves/qwen3-4b/lora/dpo\nlogging_steps: 10\nsave_steps: 500\nplot_loss: true\n\
         per_device_train_batch_size: 1\ngradient_accumulation_steps: 8\nlearning_rate: 5.0e-6\n\
         num_train_epochs: 3.0\nlr_scheduler_type: cosine\nwarmup_ratio: 0.1\nbf16: true\nddp_timeout: 180000000\n",
        "stage",
        "rm, ppo, dpo and kto are not yet",
    );
    // KTO, reward model, PPO (v0.9.3).
    expect_not_implemented(
        "model_name_or_path: m\nstage: kto\ndo_train: true\ndataset: kto_en_demo\npref_beta: 0.1\n",
        "stage",
        "kto",
    );
    expect_not_implemented(
        "model_name_or_path: m\nstage: rm\ndo_train: true\ndataset: dpo_en_demo\n",
        "stage",
        "rm",
    );
    expect_not_implemented(
        "model_name_or_path: m\nreward_model: saves/reward\nstage: ppo\ndo_train: true\nfinetuning_type: lora\n\
         dataset: identity\nmax_new_tokens: 512\ntop_k: 0\ntop_p: 0.9\n",
        "stage",
        "ppo",
    );
    // QLoRA (examples/train_qlora/qwen3_lora_sft_otfq.yaml).
    expect_not_implemented(
        "model_name_or_path: Qwen/Qwen3-4B-Instruct-2507\nquantization_bit: 4\nquantization_method: bnb\n\
         trust_remote_code: true\nstage: sft\ndo_train: true\nfinetuning_type: lora\nlora_rank: 8\nlora_target: all\n\
         dataset: identity,alpaca_en_demo\ntemplate: qwen3_nothink\n",
        "quantization_bit",
        "QLoRA",
    );
    // Full SFT on DeepSpeed ZeRO-3 (examples/train_full/qwen3_full_sft.yaml).
    expect_not_implemented(
        "model_name_or_path: Qwen/Qwen3-4B-Instruct-2507\nstage: sft\ndo_train: true\nfinetuning_type: full\n\
         deepspeed: examples/deepspeed/ds_z3_config.json\ndataset: identity,alpaca_en_demo\ntemplate: qwen3_nothink\n\
         learning_rate: 1.0e-5\ngradient_accumulation_steps: 2\n",
        "deepspeed",
        "DeepSpeed",
    );
    // LLaMA Pro freeze (examples/extras/llama_pro/llama3_freeze_sft.yaml).
    expect_not_implemented(
        "model_name_or_path: models/llama3-8b-pro\nstage: sft\ndo_train: true\nfinetuning_type: freeze\n\
         freeze_trainable_layers: 8\nfreeze_trainable_modules: all\nuse_llama_pro: true\ndataset: identity\n",
        "use_llama_pro",
        "LLaMA Pro",
    );
    // Preprocess only (examples/train_lora/qwen3_preprocess.yaml).
    expect_not_implemented(
        "model_name_or_path: m\nstage: sft\ndo_train: true\nfinetuning_type: lora\ndataset: identity\n\
         tokenized_path: saves/qwen3-4b/dataset/sft\n",
        "tokenized_path",
        "tokenized",
    );
    // GaLore / BAdam / DoRA / trackers.
    expect_not_implemented(
        "model_name_or_path: m\ndataset: a\nfinetuning_type: full\nuse_galore: true\n",
        "use_galore",
        "GaLore",
    );
    expect_not_implemented(
        "model_name_or_path: m\ndataset: a\nfinetuning_type: full\nuse_badam: true\n",
        "use_badam",
        "BAdam",
    );
    expect_not_implemented(
        "model_name_or_path: m\ndataset: a\nuse_dora: true\n",
        "use_dora",
        "DoRA",
    );
    expect_not_implemented(
        "model_name_or_path: m\ndataset: a\nreport_to: wandb\n",
        "report_to",
        "trackers",
    );
    expect_not_implemented(
        "model_name_or_path: m\ndataset: a\noptim: adamw_8bit\n",
        "optim",
        "adamw_torch",
    );
    expect_not_implemented("model_name_or_path: m\ndataset: a\nlr_scheduler_type: greedy\neval_strategy: steps\nval_size: 0.1\n", "lr_scheduler_type", "schedule");
    expect_not_implemented(
        "model_name_or_path: m\ndataset: a\nfinetuning_type: oft\n",
        "finetuning_type",
        "OFT",
    );
}

#[test]
fn rejected_keys_at_their_default_are_accepted() {
    let d = tmpdir("dflt");
    let cfg = write(
        &d,
        "t.yaml",
        "model_name_or_path: m\ndataset: a\ndo_train: true\nstage: sft\nquantization_bit: null\nuse_galore: false\n\
         deepspeed: null\ninfer_backend: huggingface\nreport_to: [none]\npref_beta: 0.1\n",
    );
    let a = train(&argv(&[&cfg])).unwrap();
    assert!(a.notes.is_empty(), "{:?}", a.notes);
}

#[test]
fn pretrain_predict_and_freeze_examples() {
    let d = tmpdir("more");
    // examples/train_lora/qwen3_lora_pretrain.yaml
    let cfg = write(
        &d,
        "pt.yaml",
        "model_name_or_path: Qwen/Qwen3-4B-Instruct-2507\ntrust_remote_code: true\nstage: pt\ndo_train: true\n\
         finetuning_type: lora\nlora_rank: 8\nlora_target: all\ndataset: c4_demo\ncutoff_len: 2048\nmax_samples: 1000\n\
         preprocessing_num_workers: 16\ndataloader_num_workers: 4\noutput_dir: saves/qwen3-4b/lora/pretrain\n\
         logging_steps: 10\nsave_steps: 500\nplot_loss: true\noverwrite_output_dir: true\nsave_only_model: false\n\
         report_to: none\nper_device_train_batch_size: 1\ngradient_accumulation_steps: 8\nlearning_rate: 1.0e-4\n\
         num_train_epochs: 3.0\nlr_scheduler_type: cosine\nwarmup_ratio: 0.1\nbf16: true\nddp_timeout: 180000000\n",
    );
    let a = train(&argv(&[&cfg])).unwrap();
    assert_eq!(a.finetuning.stage, Stage::Pt);
    assert!(a.packing());
    assert_eq!(a.data.effective_cutoff_len(), 2048);
    // examples/extras/nlg_eval/llama3_lora_predict.yaml
    let cfg = write(
        &d,
        "predict.yaml",
        "model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\nadapter_name_or_path: saves/llama3-8b/lora/sft\n\
         stage: sft\ndo_predict: true\nfinetuning_type: lora\neval_dataset: identity,alpaca_en_demo\n\
         template: llama3\ncutoff_len: 2048\nmax_samples: 50\noverwrite_cache: true\npreprocessing_num_workers: 16\n\
         output_dir: saves/llama3-8b/lora/predict\noverwrite_output_dir: true\nper_device_eval_batch_size: 1\n\
         predict_with_generate: true\nddp_timeout: 180000000\n",
    );
    let a = train(&argv(&[&cfg])).unwrap();
    assert!(a.training.do_predict && a.training.predict_with_generate && !a.training.do_train);
    // Freeze tuning.
    let cfg = write(
        &d,
        "freeze.yaml",
        "model_name_or_path: m\nstage: sft\ndo_train: true\nfinetuning_type: freeze\nfreeze_trainable_layers: 8\n\
         freeze_trainable_modules: mlp,self_attn\nfreeze_extra_modules: embed_tokens\ndataset: identity\n\
         neat_packing: true\n",
    );
    let a = train(&argv(&[&cfg])).unwrap();
    assert_eq!(
        a.finetuning.freeze_trainable_modules.to_vec(),
        vec!["mlp".to_string(), "self_attn".into()]
    );
    assert!(a.packing());
    assert_eq!(a.data.effective_cutoff_len(), 2047);
}

#[test]
fn inference_and_export_examples_parse() {
    let d = tmpdir("infer");
    // examples/inference/qwen3_lora_sft.yaml
    let cfg = write(
        &d,
        "inf.yaml",
        "model_name_or_path: Qwen/Qwen3-4B-Instruct-2507\nadapter_name_or_path: saves/qwen3-4b/lora/sft\n\
         template: qwen3_nothink\ninfer_backend: huggingface  # choices: [huggingface, vllm, sglang, ktransformers]\n\
         trust_remote_code: true\n",
    );
    let a = infer(&argv(&[&cfg])).unwrap();
    assert_eq!(
        a.model.adapter_name_or_path.as_ref().map(|x| x.len()),
        Some(1)
    );
    assert_eq!(a.generating.temperature, 0.95);
    assert_eq!(a.generating.top_p, 0.7);
    assert_eq!(a.generating.top_k, 50);
    assert_eq!(a.generating.token_limit(), (1024, true));
    // examples/merge_lora/qwen3_lora_sft.yaml
    let cfg = write(
        &d,
        "merge.yaml",
        "model_name_or_path: Qwen/Qwen3-4B-Instruct-2507\nadapter_name_or_path: saves/qwen3-4b/lora/sft\n\
         template: qwen3_nothink\ntrust_remote_code: true\nexport_dir: saves/qwen3_sft_merged\nexport_size: 5\n\
         export_device: cpu  # choices: [cpu, auto]\nexport_legacy_format: false\n",
    );
    let a = infer(&argv(&[&cfg])).unwrap();
    assert_eq!(
        a.model.export_dir.as_deref(),
        Some("saves/qwen3_sft_merged")
    );
    // examples/merge_lora/qwen3_gptq.yaml
    let cfg = write(
        &d,
        "gptq.yaml",
        "model_name_or_path: Qwen/Qwen3-4B-Instruct-2507\ntemplate: qwen3_nothink\ntrust_remote_code: true\n\
         export_dir: saves/qwen3_gptq\nexport_quantization_bit: 4\nexport_quantization_dataset: data/c4_demo.jsonl\n\
         export_size: 5\nexport_device: cpu\nexport_legacy_format: false\n",
    );
    match parse_infer_args_with(&argv(&[&cfg]), STRICT).unwrap_err() {
        ArgsError::NotImplemented { key, .. } => assert_eq!(key, "export_quantization_bit"),
        other => panic!("{other}"),
    }
    // vLLM is refused with the reason.
    let cfg = write(
        &d,
        "vllm.yaml",
        "model_name_or_path: m\ninfer_backend: vllm\n",
    );
    let msg = infer(&argv(&[&cfg])).unwrap_err().to_string();
    assert!(
        msg.contains("infer_backend") && msg.contains("vLLM"),
        "{msg}"
    );
}

#[test]
fn cross_argument_rules_use_llamafactory_reasons() {
    let d = tmpdir("cross");
    let base = "model_name_or_path: m\ndataset: a\ndo_train: true\n";
    let cases = [
        (
            "train_on_prompt: true\nmask_history: true\n",
            "`mask_history` is incompatible with `train_on_prompt`.",
        ),
        (
            "bf16: true\nfp16: true\n",
            "At most one of fp16 and bf16 can be True, but not both",
        ),
        (
            "val_size: 0.1\neval_dataset: b\n",
            "Cannot specify `val_size` if `eval_dataset` is not None.",
        ),
        (
            "do_eval: true\n",
            "Please make sure eval_dataset be provided or val_size >1e-6",
        ),
        (
            "eval_strategy: steps\n",
            "Please make sure eval_dataset be provided or val_size >1e-6",
        ),
        (
            "stage: pt\nneat_packing: true\n",
            "`neat_packing` cannot be set as True except SFT.",
        ),
        (
            "stage: pt\ntrain_on_prompt: true\n",
            "`train_on_prompt` or `mask_history` cannot be set as True except SFT.",
        ),
        (
            "do_predict: true\neval_dataset: b\n",
            "Please enable `predict_with_generate` to save model predictions.",
        ),
        (
            "predict_with_generate: true\ncompute_accuracy: true\neval_dataset: b\n",
            "Cannot use `predict_with_generate` and `compute_accuracy` together.",
        ),
        (
            "predict_with_generate: true\nval_size: 0.1\n",
            "Cannot use `predict_with_generate` if `eval_dataset` is None.",
        ),
        (
            "finetuning_type: full\nadapter_name_or_path: x\n",
            "Adapter is only valid for the LoRA method.",
        ),
        (
            "finetuning_type: freeze\nuse_rslora: true\n",
            "`use_rslora` is only valid for LoRA training.",
        ),
        (
            "finetuning_type: full\nloraplus_lr_ratio: 16\n",
            "`loraplus_lr_ratio` is only valid for LoRA training.",
        ),
        (
            "lr_scheduler_type: reduce_lr_on_plateau\n",
            "lr_scheduler_type reduce_lr_on_plateau requires an eval strategy",
        ),
        (
            "logging_steps: 2.5\n",
            "--logging_steps must be an integer if bigger than 1: 2.5",
        ),
        (
            "mix_strategy: concat\ninterleave_probs: 0.5,0.5\n",
            "`interleave_probs` is only valid for interleaved mixing.",
        ),
        ("num_train_epochs: 0\n", "nothing to train"),
        (
            "dataloader_prefetch_factor: 2\n",
            "--dataloader_prefetch_factor can only be set",
        ),
        (
            "warmup_ratio: 1.5\n",
            "warmup_ratio must lie in range [0,1]",
        ),
    ];
    for (extra, want) in cases {
        let cfg = write(&d, "t.yaml", &format!("{base}{extra}"));
        let msg = match train(&argv(&[&cfg])) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {extra}"),
        };
        assert!(msg.contains(want), "{extra}: {msg}");
    }
    let cfg = write(&d, "t.yaml", "dataset: a\n");
    assert!(train(&argv(&[&cfg]))
        .unwrap_err()
        .to_string()
        .contains("Please provide `model_name_or_path`."));
    let cfg = write(&d, "t.yaml", "model_name_or_path: m\ndo_train: true\n");
    assert!(train(&argv(&[&cfg]))
        .unwrap_err()
        .to_string()
        .contains("Please specify dataset for training."));
    // eval_strategy turns do_eval on, as in HF.
    let cfg = write(
        &d,
        "t.yaml",
        &format!("{base}eval_strategy: steps\nval_size: 0.1\neval_steps: 50\n"),
    );
    let a = train(&argv(&[&cfg])).unwrap();
    assert!(a.training.do_eval);
    assert_eq!(a.training.eval_steps_value(), 50.0);
}

#[test]
fn to_yaml_round_trips() {
    let d = tmpdir("yaml");
    let cfg = write(&d, "c.yaml", QWEN3_LORA_SFT);
    let mut a = train(&argv(&[
        &cfg,
        "default_system='You are: \"helpful\" # really'",
        "lr_scheduler_kwargs={min_lr: 1.0e-6, note: 'a,b'}",
        "lr_scheduler_type=cosine_with_min_lr",
        "hf_hub_token=secret",
        "template=yes_please",
        "interleave_probs=0.5,0.5",
        "mix_strategy=interleave_under",
    ]))
    .unwrap();
    let yaml = a.to_yaml();
    assert!(
        yaml.starts_with("### model\nmodel_name_or_path: Qwen/Qwen3-4B-Instruct-2507\n"),
        "{yaml}"
    );
    assert!(
        !yaml.contains("secret"),
        "tokens must not be written: {yaml}"
    );
    assert!(
        yaml.contains("dataset: identity,alpaca_en_demo\n"),
        "{yaml}"
    );
    assert!(yaml.contains("learning_rate: 0.0001\n"), "{yaml}");
    let out = write(&d, "training_args.yaml", &yaml);
    let b = train(&argv(&[&out])).unwrap();
    a.model.hf_hub_token = None;
    assert_eq!(a.model, b.model);
    assert_eq!(a.data, b.data);
    assert_eq!(a.training, b.training);
    assert_eq!(a.finetuning, b.finetuning);
    assert_eq!(a.generating, b.generating);
}

#[test]
fn support_table_covers_every_key_once() {
    let groups: [&[&str]; 5] = [
        ModelArguments::KEYS,
        DataArguments::KEYS,
        TrainingArguments::KEYS,
        FinetuningArguments::KEYS,
        GeneratingArguments::KEYS,
    ];
    let mut all: Vec<&str> = groups.iter().flat_map(|g| g.iter().copied()).collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "a key is in two groups");
    let mut table: Vec<&str> = support::SUPPORT.iter().map(|(k, _)| *k).collect();
    table.sort_unstable();
    assert_eq!(table, all, "the support table and the groups differ");
    let (s, noop, ny, vals) = support::support_counts();
    assert_eq!(s + noop + ny + vals, n);
    // Value-restricted keys always accept their default.
    for (key, sup) in support::SUPPORT {
        if let Support::Values(allowed, _) = sup {
            let d = TrainArgs::default().get(key).unwrap();
            let texts: Vec<String> = match &d {
                Value::List(items) => items.iter().filter_map(Value::scalar_text).collect(),
                other => other.scalar_text().into_iter().collect(),
            };
            assert!(
                texts.iter().all(|t| allowed.contains(&t.as_str())),
                "{key}: default {d} not allowed"
            );
        }
    }
}

#[test]
fn defaults_match_llamafactory() {
    let a = TrainArgs::default();
    assert_eq!(a.data.cutoff_len, 2048);
    assert_eq!(a.data.dataset_dir, "data");
    assert_eq!(a.data.enable_thinking, Some(true));
    assert_eq!(a.finetuning.stage, Stage::Sft);
    assert_eq!(a.finetuning.finetuning_type, FinetuningType::Lora);
    assert_eq!(a.finetuning.lora_rank, 8);
    assert_eq!(a.finetuning.freeze_trainable_layers, 2);
    assert_eq!(a.finetuning.loraplus_lr_embedding, 1e-6);
    assert_eq!(a.training.learning_rate, 5e-5);
    assert_eq!(a.training.per_device_train_batch_size, 8);
    assert_eq!(a.training.num_train_epochs, 3.0);
    assert_eq!(a.training.lr_scheduler_type, SchedulerType::Linear);
    assert_eq!(a.training.logging_steps, 500.0);
    assert_eq!(a.training.seed, 42);
    assert_eq!(a.training.optim, "adamw_torch");
    assert_eq!(a.training.ddp_timeout, 1800);
    assert_eq!(a.training.adam_epsilon, 1e-8);
    assert_eq!(a.generating.max_new_tokens, 1024);
    assert_eq!(a.generating.repetition_penalty, 1.0);
    assert!(a.generating.do_sample && a.generating.skip_special_tokens);
    assert_eq!(a.model.image_max_pixels, 768 * 768);
    assert_eq!(a.model.flash_attn, "auto");
    assert_eq!(a.model.infer_backend, "huggingface");
}

#[test]
fn auto_resume_picks_the_last_checkpoint() {
    let d = tmpdir("resume");
    let out = d.join("out");
    std::fs::create_dir_all(out.join("checkpoint-50")).unwrap();
    std::fs::create_dir_all(out.join("checkpoint-100")).unwrap();
    std::fs::create_dir_all(out.join("checkpoint-x")).unwrap();
    let cfg = write(
        &d,
        "c.yaml",
        &format!(
            "model_name_or_path: m\ndataset: a\ndo_train: true\noutput_dir: {}\n",
            out.display()
        ),
    );
    let mut a = train(&argv(&[&cfg])).unwrap();
    assert_eq!(
        a.resolve_resume().unwrap(),
        Some(out.join("checkpoint-100"))
    );
    let mut b = train(&argv(&[&cfg, "overwrite_output_dir=true"])).unwrap();
    assert_eq!(b.resolve_resume().unwrap(), None);
    let out2 = d.join("weights");
    std::fs::create_dir_all(&out2).unwrap();
    std::fs::write(out2.join("adapter_model.safetensors"), b"x").unwrap();
    let mut c = train(&argv(&[&cfg, &format!("output_dir={}", out2.display())])).unwrap();
    assert!(c
        .resolve_resume()
        .unwrap_err()
        .to_string()
        .contains("Please set `overwrite_output_dir`"));
}

#[test]
fn usage_errors() {
    assert!(matches!(train(&[]), Err(ArgsError::Usage(_))));
    let d = tmpdir("usage");
    let cfg = write(&d, "c.yaml", "model_name_or_path: m\n");
    assert!(matches!(
        train(&argv(&[&cfg, "--learning_rate", "1"])),
        Err(ArgsError::Usage(_))
    ));
    assert!(matches!(
        train(&argv(&["/nonexistent/x.yaml"])),
        Err(ArgsError::File { .. })
    ));
    let bad = write(&d, "bad.yaml", "- a\n- b\n");
    assert!(train(&argv(&[&bad]))
        .unwrap_err()
        .to_string()
        .contains("mapping"));
    let dup = write(
        &d,
        "dup.yaml",
        "model_name_or_path: m\nmodel_name_or_path: n\n",
    );
    assert!(train(&argv(&[&dup]))
        .unwrap_err()
        .to_string()
        .contains("duplicate key"));
}

#[test]
fn support_doc_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("SUPPORT.md");
    let text = support::support_markdown();
    if std::env::var("FERROTUNE_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "crates/args/SUPPORT.md is out of date: run FERROTUNE_BLESS=1 cargo test -p ferrotune-args support_doc"
    );
}

#[test]
fn strategy_no_and_scheduler_kwargs() {
    let d = tmpdir("strat");
    let cfg = write(
        &d,
        "t.yaml",
        "model_name_or_path: m\ndataset: a\nsave_strategy: no\neval_strategy: no\n",
    );
    let a = train(&argv(&[&cfg])).unwrap();
    assert_eq!(a.training.save_strategy, SaveStrategy::No);
    assert_eq!(a.training.eval_strategy, IntervalStrategy::No);
    let cfg = write(
        &d,
        "t.yaml",
        "model_name_or_path: m\ndataset: a\nlr_scheduler_kwargs: 3\n",
    );
    let msg = train(&argv(&[&cfg])).unwrap_err().to_string();
    assert!(
        msg.contains("lr_scheduler_kwargs") && msg.contains("mapping"),
        "{msg}"
    );
    let cfg = write(
        &d,
        "t.yaml",
        "model_name_or_path: m\ndataset: a\nlr_scheduler_kwargs: '{\"num_cycles\": 2}'\n",
    );
    let a = train(&argv(&[&cfg])).unwrap();
    assert_eq!(
        a.training.lr_scheduler_kwargs,
        Value::Map(vec![("num_cycles".into(), Value::Int(2))])
    );
}
