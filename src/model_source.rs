//! Where a command's model comes from, read off LLaMA-Factory's model arguments the same way by `train`,
//! `export` and the inference commands: hub access (`cache_dir`, `hf_hub_token`, `model_revision` over the
//! HF_* environment) and the adapter folders (`adapter_name_or_path`, each under `adapter_folder` when set).

use ferrotune_args::{DataArguments, ModelArguments};
use ferrotune_data::{get_template_and_fix_tokenizer, DataOptions, Template};
use ferrotune_models::ModelTokenizer;
use ferrotune_models::hub::HubOptions;
use std::path::{Path, PathBuf};

/// Hub options: the environment's (HF_ENDPOINT, HF_HOME, HF_TOKEN, HF_HUB_OFFLINE, ...) with the model
/// arguments' `cache_dir`, `hf_hub_token` and `model_revision` on top.
pub fn hub_options(m: &ModelArguments) -> HubOptions {
    let mut hub = HubOptions::from_env();
    if let Some(dir) = &m.cache_dir {
        hub.cache_dir = Some(PathBuf::from(dir));
    }
    if let Some(token) = &m.hf_hub_token {
        hub.token = Some(token.clone());
    }
    hub.revision = m.model_revision.clone();
    hub
}

/// `adapter_name_or_path` as folders, in the order they are applied.
pub fn adapter_dirs(m: &ModelArguments) -> Vec<PathBuf> {
    let Some(list) = &m.adapter_name_or_path else { return Vec::new() };
    list.0.iter().map(|p| m.adapter_folder.as_ref().map_or_else(|| PathBuf::from(p), |dir| Path::new(dir).join(p))).collect()
}

/// The chat template for inference-side commands (`chat`, `api`, `export`): LLaMA-Factory's
/// `get_template_and_fix_tokenizer` with the data arguments that shape a template (`template` — else the
/// tokenizer's chat_template, else `empty` — `default_system`, thinking and `tool_format`); the tokenizer gets the
/// template's special tokens.
pub fn template_for(d: &DataArguments, tokenizer: &mut ModelTokenizer) -> ferrotune_models::Result<Template> {
    let options = DataOptions {
        template: d.template.clone(),
        default_system: d.default_system.clone(),
        enable_thinking: d.enable_thinking,
        preserve_thinking: d.preserve_thinking,
        tool_format: d.tool_format.clone(),
        ..DataOptions::default()
    };
    get_template_and_fix_tokenizer(tokenizer, &options)
}
