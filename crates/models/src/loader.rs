//! One entry point that loads a model from whatever the user names, and the inverse that writes an HF folder.
//!
//! `load_model` accepts, in this order:
//! 1. an existing path: an HF folder (`config.json` + safetensors weights + tokenizer files), a `.gguf` file, or a
//!    folder holding exactly one `.gguf` (and no `config.json`);
//! 2. a hub id `org/name` (downloaded into the HF cache by [`crate::hub`], or found there), or
//!    `org/name/path/file.gguf` for one GGUF file of a repo.
//!
//! Anything else is an error that says it is neither a local path nor a hub id.

use crate::hub::{self, HubOptions};
use crate::safetensors::{self, write_atomically, DEFAULT_MAX_SHARD_BYTES};
use crate::{bail, Context, Error, ModelConfig, ModelTokenizer, Result};
use crate::weights::{LoadOptions, WeightMap};
use ferrotune_tensor::{DType, Tensor};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A model as loaded from disk or the hub: its config, its weights under HF names, and what sits next to them.
#[derive(Debug)]
pub struct LoadedModel {
    pub config: ModelConfig,
    pub weights: WeightMap,
    /// `None` for an HF folder without `tokenizer.json`.
    pub tokenizer: Option<ModelTokenizer>,
    /// The folder or file the model was read from (a hub snapshot folder for hub ids).
    pub source: PathBuf,
    /// `generation_config.json`, when present.
    pub generation_config: Option<Value>,
}

/// Load `name_or_path` (see the module docs for what it may be).
pub fn load_model(name_or_path: &str, opts: &LoadOptions, hub_opts: &HubOptions) -> Result<LoadedModel> {
    let path = Path::new(name_or_path);
    if path.exists() {
        return load_local(path, opts);
    }
    if let Some((repo, file)) = hub::split_repo_file(name_or_path) {
        if file.ends_with(".gguf") {
            let local = hub::download_file(repo, file, hub_opts)?;
            return load_gguf(&local, opts);
        }
    }
    if hub::looks_like_repo_id(name_or_path) {
        let snapshot = hub::download_model(name_or_path, hub_opts)?;
        return load_local(&snapshot, opts);
    }
    bail!(
        "{name_or_path:?} is not an existing file or folder, and not a hub id (org/name, or org/name/file.gguf); \
         check the path"
    )
}

fn load_local(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    if path.is_file() {
        if has_extension(path, "gguf") {
            return load_gguf(path, opts);
        }
        if has_extension(path, "safetensors") {
            bail!(
                "{}: a bare safetensors file has no config; point at the folder that holds it and config.json",
                path.display()
            );
        }
        bail!("{}: not a model (expected an HF folder with config.json, or a .gguf file)", path.display());
    }
    if path.join("config.json").is_file() {
        return load_hf_folder(path, opts);
    }
    let entries = std::fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?;
    let mut ggufs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file() && has_extension(p, "gguf")).collect();
    ggufs.sort();
    match ggufs.as_slice() {
        [one] => load_gguf(one, opts),
        [] => bail!("{}: neither config.json (an HF model folder) nor a .gguf file is here", path.display()),
        many => bail!(
            "{}: holds {} .gguf files ({}); name the one to load",
            path.display(),
            many.len(),
            many.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// An HF folder: `config.json`, safetensors weights (single or sharded), tokenizer, `generation_config.json`.
pub fn load_hf_folder(dir: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let mut weights = safetensors::load_hf_weights(dir, opts)?;
    // transformers ties lm_head to the embeddings and ignores a stored copy; do the same so the model never sees
    // two heads.
    if config.tie_word_embeddings {
        if let Some(shape) = weights.get("lm_head.weight").map(|t| t.shape().to_vec()) {
            weights.take("lm_head.weight", &shape)?;
        }
    }
    let tokenizer = if dir.join("tokenizer.json").is_file() { Some(ModelTokenizer::from_folder(dir)?) } else { None };
    let generation_path = dir.join("generation_config.json");
    let generation_config = if generation_path.is_file() {
        let text = std::fs::read_to_string(&generation_path).with_context(|| format!("cannot read {}", generation_path.display()))?;
        Some(serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", generation_path.display()))?)
    } else {
        None
    };
    Ok(LoadedModel { config, weights, tokenizer, source: dir.to_path_buf(), generation_config })
}

fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let model = crate::gguf::load(path, opts)?;
    Ok(LoadedModel {
        config: model.config,
        weights: model.weights,
        tokenizer: Some(model.tokenizer),
        source: path.to_path_buf(),
        generation_config: None,
    })
}

/// Write an HF folder transformers loads with `AutoModelForCausalLM.from_pretrained(dir)` /
/// `AutoTokenizer.from_pretrained(dir)`: `config.json` (with `torch_dtype` set to the weights' float dtype),
/// `model.safetensors` (sharded past transformers' default 5 GB, with the index), `tokenizer.json` +
/// `tokenizer_config.json`, and `generation_config.json` (the one given, else bos/eos/pad from the config, as
/// transformers derives it). `lm_head.weight` is left out when the embeddings are tied, as transformers does.
pub fn save_hf_folder(
    dir: &Path,
    config: &ModelConfig,
    weights: &WeightMap,
    tokenizer: Option<&ModelTokenizer>,
    generation_config: Option<&Value>,
) -> Result<()> {
    save_hf_folder_sharded(dir, config, weights, tokenizer, generation_config, DEFAULT_MAX_SHARD_BYTES)
}

/// [`save_hf_folder`] with shards of at most `max_shard_bytes` (transformers' `max_shard_size`; LLaMA-Factory's
/// `export_size` GB is `export_size * 10^9` bytes).
pub fn save_hf_folder_sharded(
    dir: &Path,
    config: &ModelConfig,
    weights: &WeightMap,
    tokenizer: Option<&ModelTokenizer>,
    generation_config: Option<&Value>,
    max_shard_bytes: u64,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tensors: Vec<(&str, &Tensor)> =
        weights.iter().filter(|(name, _)| !(config.tie_word_embeddings && *name == "lm_head.weight")).collect();

    let mut config_json = config.to_hf_json();
    let float_dtype = tensors.iter().map(|(_, t)| t.dtype()).find(|d| d.is_float());
    if let Some(d) = float_dtype {
        let name = match d {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            DType::F64 => "float64",
            _ => "float32",
        };
        config_json["torch_dtype"] = Value::from(name);
    }
    write_json(&dir.join("config.json"), &config_json)?;

    safetensors::save_hf_weights(dir, &tensors, max_shard_bytes)?;

    if let Some(tok) = tokenizer {
        tok.save_to_folder(dir)?;
    }
    let generation = match generation_config {
        Some(g) => g.clone(),
        None => {
            let mut g = serde_json::Map::new();
            if let Some(b) = config.bos_token_id {
                g.insert("bos_token_id".into(), Value::from(b));
            }
            match config.eos_token_ids.as_slice() {
                [] => {}
                [one] => {
                    g.insert("eos_token_id".into(), Value::from(*one));
                }
                many => {
                    g.insert("eos_token_id".into(), Value::from(many.to_vec()));
                }
            }
            if let Some(p) = config.pad_token_id {
                g.insert("pad_token_id".into(), Value::from(p));
            }
            Value::Object(g)
        }
    };
    write_json(&dir.join("generation_config.json"), &generation)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::msg(e.to_string()))? + "\n";
    write_atomically(path, |out| out.write_all(text.as_bytes())).with_context(|| format!("cannot write {}", path.display()))
}
