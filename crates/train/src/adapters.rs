//! What trains: LLaMA-Factory's `finetuning_type` (`lora`, `freeze`, `full`), and PEFT LoRA adapters on disk.
//!
//! - **full**: every parameter trains.
//! - **freeze** (`_setup_freeze_tuning`): a parameter trains when its HF name contains one of the patterns
//!   `.{layer}.{module}` (for each trainable layer id and each of `freeze_trainable_modules`, `all` giving
//!   `.{layer}.`) or one of `freeze_extra_modules`. Plain substring matching, as LLaMA-Factory does it (so
//!   `norm` among the extra modules also matches every `*_layernorm`).
//! - **lora** (`_setup_lora_tuning` + PEFT `get_peft_model`): base weights frozen, a [`LoraAdapter`] on every
//!   projection named by `lora_target`, `additional_target` modules fully trained (PEFT `modules_to_save`).
//!
//! Adapters are saved as PEFT writes them (`adapter_config.json` + `adapter_model.safetensors`, tensors named
//! `base_model.model.{module}.lora_A.weight`) and read back for resuming or inference (merged or not).

use ferrotune_autograd::Var;
use ferrotune_models::llama::{LlamaModel, LoraAdapter};
use ferrotune_models::safetensors::{save_safetensors, SafetensorsFile};
use ferrotune_models::{bail, Context, Error, Result};
use ferrotune_tensor::rng::mix64;
use ferrotune_tensor::{DType, Tensor};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The projections a Llama-family model has, in module order (LoRA's `all`).
pub const LINEAR_MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

pub const ADAPTER_CONFIG_NAME: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_NAME: &str = "adapter_model.safetensors";

/// LLaMA-Factory's freeze settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FreezeSettings {
    /// `freeze_trainable_layers`: +N trains the last N layers, -N the first N.
    pub trainable_layers: i64,
    /// `freeze_trainable_modules`: `all` or sub-module names of a layer (`mlp`, `self_attn`, ...).
    pub trainable_modules: Vec<String>,
    /// `freeze_extra_modules`: non-layer modules (`embed_tokens`, `norm`, `lm_head`).
    pub extra_modules: Vec<String>,
}

impl Default for FreezeSettings {
    fn default() -> Self {
        FreezeSettings { trainable_layers: 2, trainable_modules: vec!["all".into()], extra_modules: Vec::new() }
    }
}

/// LLaMA-Factory's LoRA settings (PEFT `LoraConfig` fields).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    /// `lora_rank` (PEFT `r`).
    pub rank: usize,
    /// `lora_alpha`; `None` is LLaMA-Factory's default `2 * rank`.
    pub alpha: Option<f64>,
    pub dropout: f64,
    /// `lora_target`: `all` or module names (`q_proj`, `self_attn.q_proj`, full names).
    pub target: Vec<String>,
    /// `additional_target` (PEFT `modules_to_save`): e.g. `embed_tokens`, `lm_head`.
    pub additional_target: Vec<String>,
    pub use_rslora: bool,
    /// Seed of the `lora_A` initialisation.
    pub seed: u64,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings {
            rank: 8,
            alpha: None,
            dropout: 0.0,
            target: vec!["all".into()],
            additional_target: Vec::new(),
            use_rslora: false,
            seed: 42,
        }
    }
}

impl LoraSettings {
    pub fn alpha_value(&self) -> f64 {
        self.alpha.unwrap_or(2.0 * self.rank as f64)
    }

    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA (PEFT `LoraLayer.update_layer`).
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha_value() / (self.rank as f64).sqrt()
        } else {
            self.alpha_value() / self.rank as f64
        }
    }
}

/// Every parameter trains (`finetuning_type: full`).
pub fn setup_full(model: &mut LlamaModel) {
    model.set_trainable(|_| true);
}

/// The non-layer module of an HF parameter name, as LLaMA-Factory reads it (`name.split(".")[-2]`).
fn second_last(name: &str) -> &str {
    let mut parts = name.rsplit('.');
    parts.next();
    parts.next().unwrap_or("")
}

/// `finetuning_type: freeze` (LLaMA-Factory `_setup_freeze_tuning`); returns the trainable parameter names.
pub fn setup_freeze(model: &mut LlamaModel, s: &FreezeSettings) -> Result<Vec<String>> {
    let num_layers = model.layers.len() as i64;
    let n = s.trainable_layers;
    let layer_ids: Vec<i64> = if n > 0 { ((num_layers - n).max(0)..num_layers).collect() } else { (0..(-n).min(num_layers)).collect() };
    let names: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    let mut hidden_modules = std::collections::BTreeSet::new();
    let mut non_hidden_modules = std::collections::BTreeSet::new();
    for name in &names {
        for marker in [".0.", ".1."] {
            if let Some((_, rest)) = name.split_once(marker) {
                hidden_modules.insert(rest.split('.').next().unwrap_or("").to_string());
            }
        }
        let has_layer_index = name.split('.').any(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !has_layer_index {
            non_hidden_modules.insert(second_last(name).to_string());
        }
    }
    let mut patterns = Vec::new();
    for module in &s.trainable_modules {
        if module != "all" && !hidden_modules.contains(module) {
            bail!("Module {module} is not found, please choose from {}", hidden_modules.iter().cloned().collect::<Vec<_>>().join(", "));
        }
        for idx in &layer_ids {
            patterns.push(format!(".{idx}.{}", if module == "all" { "" } else { module }));
        }
    }
    for module in &s.extra_modules {
        if !non_hidden_modules.contains(module) {
            bail!("Module {module} is not found, please choose from {}", non_hidden_modules.iter().cloned().collect::<Vec<_>>().join(", "));
        }
        patterns.push(module.clone());
    }
    model.set_trainable(|name| patterns.iter().any(|p| name.contains(p.as_str())));
    Ok(model.trainable_parameters().into_iter().map(|(n, _)| n).collect())
}

/// PEFT's `check_target_module_exists` for a list: the module name equals a target or ends with `.{target}`.
fn targets_module(targets: &[String], module: &str) -> bool {
    targets.iter().any(|t| module == t || module.ends_with(&format!(".{t}")))
}

/// `lora_target` resolved: `all` becomes every projection name (LLaMA-Factory `find_all_linear_modules`).
pub fn resolve_lora_targets(target: &[String]) -> Vec<String> {
    if target.iter().any(|t| t == "all") {
        LINEAR_MODULES.iter().map(|s| s.to_string()).collect()
    } else {
        target.to_vec()
    }
}

/// The parameter names a `modules_to_save` entry covers (`embed_tokens`, `lm_head`, `norm`, or any module
/// path), as PEFT wraps every module whose name ends with the entry.
fn modules_to_save_params(model: &LlamaModel, modules: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for m in modules {
        let hits: Vec<String> = model
            .parameters()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| {
                let module = n.rsplit_once('.').map(|(m, _)| m).unwrap_or("");
                module == m || module.ends_with(&format!(".{m}"))
            })
            .collect();
        if hits.is_empty() {
            if m == "lm_head" && model.config().tie_word_embeddings {
                bail!("additional_target lm_head: this model ties lm_head to embed_tokens and has no separate lm_head");
            }
            bail!("additional_target {m:?} names no module of this model (e.g. embed_tokens, lm_head, norm)");
        }
        if model.config().tie_word_embeddings && (m == "embed_tokens" || m.ends_with(".embed_tokens")) {
            bail!(
                "additional_target embed_tokens on a model with tied embeddings: PEFT would train a copy of the \
                 embedding while the lm_head keeps the original; ferrotune does not split tied weights, so train \
                 this model with finetuning_type full or freeze (freeze_extra_modules: embed_tokens) instead"
            );
        }
        out.extend(hits);
    }
    Ok(out)
}

/// `finetuning_type: lora` with fresh adapters (PEFT `get_peft_model`): freezes the base, attaches
/// `A ~ U(-1/sqrt(in), 1/sqrt(in))` (kaiming_uniform with a = sqrt(5)) and `B = 0` to every targeted
/// projection, and makes the `additional_target` parameters trainable. Returns the targeted module names.
pub fn setup_lora(model: &mut LlamaModel, s: &LoraSettings) -> Result<Vec<String>> {
    if s.rank == 0 {
        bail!("lora_rank must be at least 1");
    }
    if !(0.0..1.0).contains(&s.dropout) {
        bail!("lora_dropout must be in [0, 1), got {}", s.dropout);
    }
    let targets = resolve_lora_targets(&s.target);
    let save = modules_to_save_params(model, &s.additional_target)?;
    model.set_trainable(|name| save.iter().any(|n| n == name));
    let wide = if model.compute_dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let scaling = s.scaling();
    let mut attached = Vec::new();
    for (index, (name, lin)) in model.linears_mut().into_iter().enumerate() {
        if !targets_module(&targets, &name) {
            continue;
        }
        let (out_f, in_f) = (lin.out_features(), lin.in_features());
        let bound = 1.0 / (in_f as f64).sqrt();
        let salt = mix64(index as u64 + 1);
        let a = Tensor::rand_uniform(mix64(s.seed ^ salt), &[s.rank, in_f], -bound, bound, wide)?;
        let b = Tensor::zeros(&[out_f, s.rank], wide, ferrotune_tensor::Device::Cpu)?;
        lin.lora = Some(LoraAdapter { a: Var::param(a), b: Var::param(b), scaling, dropout: s.dropout, dropout_salt: salt });
        attached.push(name);
    }
    if attached.is_empty() {
        bail!(
            "lora_target {:?} matches no module of this model; use all or names among {}",
            s.target,
            LINEAR_MODULES.join(", ")
        );
    }
    Ok(attached)
}

/// The adapter's `adapter_config.json` as PEFT writes it (LoraConfig fields, defaults filled in).
pub fn adapter_config_json(s: &LoraSettings, base_model_name_or_path: &str) -> Value {
    let mut target_modules: Vec<String> = resolve_lora_targets(&s.target);
    target_modules.sort();
    target_modules.dedup();
    let modules_to_save = if s.additional_target.is_empty() { Value::Null } else { json!(s.additional_target) };
    let alpha = s.alpha_value();
    let alpha_json = if alpha.fract() == 0.0 && alpha.abs() < 1e15 { json!(alpha as i64) } else { json!(alpha) };
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "corda_config": null,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": alpha_json,
        "lora_bias": false,
        "lora_dropout": s.dropout,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": modules_to_save,
        "peft_type": "LORA",
        "r": s.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": target_modules,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": null,
        "use_dora": false,
        "use_rslora": s.use_rslora,
    })
}

/// The tensors of a PEFT adapter file: every LoRA matrix (`base_model.model.{module}.lora_A.weight`) and every
/// `modules_to_save` parameter (`base_model.model.{name}`), as PEFT's `get_peft_model_state_dict` names them.
pub fn adapter_tensors(model: &LlamaModel, s: &LoraSettings) -> Result<Vec<(String, Tensor)>> {
    let mut out: Vec<(String, Tensor)> =
        model.lora_parameters().into_iter().map(|(n, v)| (format!("base_model.model.{n}"), v.value().clone())).collect();
    for name in modules_to_save_params(model, &s.additional_target)? {
        if let Some((_, v)) = model.parameters().into_iter().find(|(n, _)| *n == name) {
            out.push((format!("base_model.model.{name}"), v.value().clone()));
        }
    }
    if out.is_empty() {
        bail!("the model has no LoRA adapter to save");
    }
    Ok(out)
}

/// Write `adapter_config.json` + `adapter_model.safetensors` into `dir` (PEFT `save_pretrained`).
pub fn save_adapter(dir: &Path, model: &LlamaModel, s: &LoraSettings, base_model_name_or_path: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tensors = adapter_tensors(model, s)?;
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_safetensors(&dir.join(ADAPTER_WEIGHTS_NAME), &refs, Some(&meta))?;
    let config = adapter_config_json(s, base_model_name_or_path);
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::msg(e.to_string()))? + "\n";
    ferrotune_args::logging::write_atomic(&dir.join(ADAPTER_CONFIG_NAME), text.as_bytes())
        .with_context(|| format!("cannot write {}", dir.join(ADAPTER_CONFIG_NAME).display()))
}

/// `adapter_config.json` read back: the settings that shape the adapter.
pub fn read_adapter_config(dir: &Path) -> Result<LoraSettings> {
    let path = dir.join(ADAPTER_CONFIG_NAME);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let shown = path.display();
    match v.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => bail!("{shown}: peft_type {other:?} is not LORA; only LoRA adapters are supported"),
    }
    for (key, ok) in [("use_dora", false), ("fan_in_fan_out", false)] {
        if v.get(key).and_then(Value::as_bool).unwrap_or(false) != ok {
            bail!("{shown}: {key} = true is not supported");
        }
    }
    if let Some(b) = v.get("bias").and_then(Value::as_str) {
        if b != "none" {
            bail!("{shown}: bias {b:?} is not supported (only \"none\")");
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if v.get(key).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
            bail!("{shown}: a non-empty {key} is not supported");
        }
    }
    let Some(rank) = v.get("r").and_then(Value::as_u64) else { bail!("{shown}: missing integer \"r\"") };
    let alpha = v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
    let target = match v.get("target_modules") {
        Some(Value::Array(items)) => items.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        Some(Value::String(s)) => bail!("{shown}: a regex target_modules ({s:?}) is not supported; list the modules"),
        _ => bail!("{shown}: missing target_modules"),
    };
    let additional_target = match v.get("modules_to_save") {
        Some(Value::Array(items)) => items.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    };
    Ok(LoraSettings {
        rank: rank as usize,
        alpha: Some(alpha),
        dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        target,
        additional_target,
        use_rslora: v.get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
        seed: 0,
    })
}

/// How a loaded adapter is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterMode {
    /// Folded into the base weights (`merge_and_unload`); nothing trainable is added.
    Merge,
    /// Kept as a separate branch, frozen (inference without merging).
    Frozen,
    /// Kept as a separate, trainable branch (resuming LoRA training).
    Trainable,
}

/// Load a PEFT LoRA adapter folder onto `model` (PEFT `PeftModel.from_pretrained`): each LoRA pair goes onto
/// its projection, each `modules_to_save` tensor replaces the base parameter. Every tensor must match a module
/// and its shape. Returns the settings read from `adapter_config.json`.
pub fn load_adapter(model: &mut LlamaModel, dir: &Path, mode: AdapterMode) -> Result<LoraSettings> {
    let s = read_adapter_config(dir)?;
    let path = dir.join(ADAPTER_WEIGHTS_NAME);
    if !path.is_file() {
        if dir.join("adapter_model.bin").is_file() {
            bail!("{}: adapter_model.bin (pickle) is not supported; save the adapter with safetensors", dir.display());
        }
        bail!("{}: no {ADAPTER_WEIGHTS_NAME}", dir.display());
    }
    let file = SafetensorsFile::open(&path)?;
    let wide = if model.compute_dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for info in file.tensors() {
        let name = info.name.as_str();
        let Some(stripped) = name.strip_prefix("base_model.model.") else {
            bail!("{}: tensor {name:?} does not start with base_model.model.", path.display());
        };
        tensors.insert(stripped.to_string(), file.read(name, None)?);
    }
    let scaling = s.scaling();
    let trainable = mode == AdapterMode::Trainable;
    let mut used = std::collections::BTreeSet::new();
    for (index, (name, lin)) in model.linears_mut().into_iter().enumerate() {
        let (ka, kb) = (format!("{name}.lora_A.weight"), format!("{name}.lora_B.weight"));
        let (a, b) = match (tensors.get(&ka), tensors.get(&kb)) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => continue,
            _ => bail!("{}: {name} has only one of lora_A / lora_B", path.display()),
        };
        let (out_f, in_f) = (lin.out_features(), lin.in_features());
        if a.shape() != [s.rank, in_f] || b.shape() != [out_f, s.rank] {
            bail!(
                "{}: {name}: lora_A {:?} / lora_B {:?} do not fit r={} on a [{out_f}, {in_f}] projection",
                path.display(),
                a.shape(),
                b.shape(),
                s.rank
            );
        }
        let mk = |t: &Tensor| -> Result<Var> {
            let t = t.to_dtype(wide)?;
            Ok(if trainable { Var::param(t) } else { Var::constant(t) })
        };
        lin.lora = Some(LoraAdapter {
            a: mk(a)?,
            b: mk(b)?,
            scaling,
            dropout: s.dropout,
            dropout_salt: mix64(index as u64 + 1),
        });
        used.insert(ka);
        used.insert(kb);
    }
    for (name, var) in model.parameters_mut() {
        if let Some(t) = tensors.get(&name) {
            if t.shape() != var.shape() {
                bail!("{}: {name} is {:?}, the model's is {:?}", path.display(), t.shape(), var.shape());
            }
            let t = t.to_dtype(var.value().dtype())?;
            *var = if trainable { Var::param(t) } else { Var::constant(t) };
            used.insert(name);
        }
    }
    let unused: Vec<&String> = tensors.keys().filter(|k| !used.contains(*k)).collect();
    if !unused.is_empty() {
        bail!("{}: {} tensor(s) match no module of this model: {:?}", path.display(), unused.len(), unused.iter().take(6).collect::<Vec<_>>());
    }
    if used.is_empty() {
        bail!("{}: the adapter holds no tensor", path.display());
    }
    if mode == AdapterMode::Merge {
        model.merge_lora()?;
    }
    Ok(s)
}
