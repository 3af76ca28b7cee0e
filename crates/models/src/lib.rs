//! ferrotune-models: everything between files on disk and a model that runs.
//!
//! - [`config`]: `ModelConfig` from HF `config.json` (and back), the supported architectures.
//! - [`weights`]: `WeightMap`, tensors under HF names in HF layout, whatever file they came from.
//! - [`safetensors`]: memory-mapped, validated safetensors files and sharded HF folders.
//! - [`gguf`]: GGUF v2/v3 reader, block dequantization, HF name mapping, tokenizer rebuilt from metadata.
//! - [`tokenizer`]: `tokenizer.json` + `tokenizer_config.json` (special tokens, chat_template).
//! - [`hub`]: Hugging Face hub download into the HF cache layout (HF_ENDPOINT, HF_HOME, resume).
//! - [`loader`]: `load_model` (HF folder, GGUF file, hub id) and `save_hf_folder`.
//! - [`llama`]: the Llama-family decoder (Llama, Qwen2, Mistral, SmolLM) over autograd, on packed varlen batches.

pub mod config;
pub mod error;
pub mod gguf;
pub mod hub;
pub mod llama;
pub mod loader;
pub mod safetensors;
pub mod tokenizer;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use error::{Context, Error, Result};
pub use llama::{Batch, LlamaModel};
pub use loader::{load_model, LoadedModel};
pub use tokenizer::ModelTokenizer;
pub use weights::{LoadOptions, WeightDType, WeightMap};
