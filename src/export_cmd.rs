//! `ferrotune export cfg.yaml [key=value ...]`: LLaMA-Factory's `llamafactory-cli export` (`export_model`).
//!
//! Loads `model_name_or_path` (HF folder, GGUF file or hub id), merges every adapter in `adapter_name_or_path`
//! in order (PEFT's `merge_and_unload`), and writes an HF folder to `export_dir` that transformers, PEFT,
//! llama.cpp's converter and ferrotune itself load: config.json, `model*.safetensors` in shards of at most
//! `export_size` GB (10^9 bytes, transformers' `max_shard_size`), the tokenizer as the template fixed it,
//! generation_config.json, and the Ollama `Modelfile` for `ollama create`.
//!
//! Output dtype, as upstream: `infer_dtype` when set; with `auto` the model config's dtype, where float32 would
//! try half precision first, which upstream only does on a GPU/NPU: on the CPU it stays float32, and so here.
//! GPTQ export quantization and the legacy `.bin` format are rejected by the argument parser (SUPPORT.md).

use crate::model_source;
use ferrotune_args::{InferArgs, Stage};
use ferrotune_models::llama::LlamaModel;
use ferrotune_models::loader::save_hf_folder_sharded;
use ferrotune_models::{bail, load_model, Context, LoadOptions, Result, WeightDType, WeightMap};
use ferrotune_tensor::DType;
use ferrotune_train::adapters::{self, AdapterMode};
use std::path::Path;
use std::time::Instant;

/// Value-head files a reward model keeps next to its weights (LLaMA-Factory's `V_HEAD_*_WEIGHTS_NAME`).
const VALUE_HEAD_FILES: [&str; 2] = ["value_head.safetensors", "value_head.bin"];

pub fn run(args: &[String]) -> std::result::Result<(), String> {
    let a = ferrotune_args::parse_infer_args(args).map_err(|e| e.to_string())?;
    for note in &a.notes {
        eprintln!("note: {note}");
    }
    export(&a).map_err(|e| e.to_string())
}

fn export(a: &InferArgs) -> Result<()> {
    let m = &a.model;
    let Some(export_dir) = m.export_dir.as_deref() else {
        bail!("Please specify `export_dir` to save model (the folder the merged HF model is written to).")
    };
    let Some(name) = m.model_name_or_path.as_deref() else {
        bail!("model_name_or_path is required: an HF folder, a .gguf file or a hub id (org/name)")
    };
    if m.export_size < 1 {
        bail!("export_size {}: the shard size is in GB and must be at least 1", m.export_size);
    }
    let export_dir = Path::new(export_dir);
    if export_dir.join("config.json").exists() {
        bail!(
            "{}: already holds a model (config.json); choose another export_dir or remove it first",
            export_dir.display()
        );
    }

    let t0 = Instant::now();
    let loaded = load_model(name, &LoadOptions { dtype: WeightDType::F32 }, &model_source::hub_options(m))?;
    let Some(mut tokenizer) = loaded.tokenizer else {
        bail!("{}: no tokenizer (tokenizer.json) next to the model; export writes one", loaded.source.display())
    };
    let template = crate::model_source::template_for(&a.data, &mut tokenizer)?;

    let output_dtype = output_dtype(&m.infer_dtype, loaded.config.torch_dtype.as_deref())?;
    let mut model = LlamaModel::from_weights(loaded.config, loaded.weights)?;
    let adapter_dirs = model_source::adapter_dirs(m);
    for dir in &adapter_dirs {
        adapters::load_adapter(&mut model, dir, AdapterMode::Merge).with_context(|| format!("cannot merge the adapter in {}", dir.display()))?;
        println!("merged adapter {}", dir.display());
    }

    let mut weights = WeightMap::new(export_dir.display().to_string());
    for (tensor_name, t) in model.named_tensors() {
        let t = if t.dtype().is_float() && t.dtype() != output_dtype { t.to_dtype(output_dtype)? } else { t };
        weights.insert(tensor_name, t)?;
    }
    // config.json's torch_dtype follows the weights' dtype (save_hf_folder sets it).
    save_hf_folder_sharded(
        export_dir,
        model.config(),
        &weights,
        Some(&tokenizer),
        loaded.generation_config.as_ref(),
        m.export_size as u64 * 1_000_000_000,
    )?;

    if a.finetuning.stage == Stage::Rm {
        // The value head travels with the last adapter (or the model folder) as upstream copies it.
        let vhead_dir = adapter_dirs.last().cloned().unwrap_or_else(|| loaded.source.clone());
        if let Some(file) = VALUE_HEAD_FILES.iter().map(|f| vhead_dir.join(f)).find(|p| p.is_file()) {
            let to = export_dir.join(file.file_name().unwrap());
            std::fs::copy(&file, &to).with_context(|| format!("cannot copy {} to {}", file.display(), to.display()))?;
            println!("copied the value head to {}", to.display());
        }
    }

    let modelfile = export_dir.join("Modelfile");
    std::fs::write(&modelfile, template.ollama_modelfile(&tokenizer)?).with_context(|| format!("cannot write {}", modelfile.display()))?;
    println!(
        "exported {name} as {} to {} in {:.1} s (Ollama modelfile: {})",
        dtype_name(output_dtype),
        export_dir.display(),
        t0.elapsed().as_secs_f64(),
        modelfile.display()
    );
    Ok(())
}

/// `export_model`'s dtype choice on a CPU (see the module docs).
fn output_dtype(infer_dtype: &str, config_dtype: Option<&str>) -> Result<DType> {
    let name = if infer_dtype == "auto" { config_dtype.unwrap_or("float32") } else { infer_dtype };
    Ok(match name {
        "float32" => DType::F32,
        "bfloat16" => DType::BF16,
        "float16" => DType::F16,
        other => bail!("infer_dtype / config torch_dtype {other:?}: export writes float32, bfloat16 or float16"),
    })
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}
