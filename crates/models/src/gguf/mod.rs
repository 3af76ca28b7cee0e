//! GGUF (llama.cpp's model format, versions 1-3) into ferrotune's HF-shaped world: the config, the weights under
//! HF names in HF layout (dequantized), and the tokenizer, all from one file.
//!
//! - [`reader`]: the container, memory-mapped and bounds-checked.
//! - [`dequant`]: ggml block formats -> f32 / bf16.
//! - [`names`]: llama.cpp tensor names -> HF names; undoing the converter's q/k RoPE row permutation.
//! - [`config`]: `ModelConfig` from `{arch}.*` metadata.
//! - [`tokenizer`]: a `tokenizers::Tokenizer` from `tokenizer.ggml.*`.
//!
//! [`load`] reads everything; [`inspect`] only the header, metadata and tensor list.

pub mod config;
pub mod dequant;
pub mod names;
pub mod reader;
pub mod tokenizer;

pub use dequant::GgmlType;
pub use reader::{GgufFile, GgufMetadata, GgufTensorInfo, GgufValue, GgufValueType};

use crate::{bail, Context, LoadOptions, ModelConfig, ModelTokenizer, Result, WeightDType, WeightMap};
use ferrotune_tensor::{bf16, Tensor};
use std::path::Path;

/// A GGUF model converted to what the rest of ferrotune reads.
#[derive(Debug)]
pub struct GgufModel {
    pub config: ModelConfig,
    /// HF names (`model.layers.N.self_attn.q_proj.weight`, ...), PyTorch shapes, `opts.dtype`.
    pub weights: WeightMap,
    pub tokenizer: ModelTokenizer,
    /// Header, metadata and the file's own tensor list (GGUF names, ggml types), for `inspect`-style output.
    pub metadata: GgufMetadata,
}

/// Read header, metadata and tensor infos only (no tensor data is touched).
pub fn inspect(path: &Path) -> Result<GgufMetadata> {
    Ok(GgufFile::open(path)?.metadata)
}

/// Load config, tokenizer and weights. Weights are dequantized tensor by tensor straight into their final
/// buffers (f32, or bf16 when `opts.dtype` asks for it), so peak memory is the weights plus one tensor.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<GgufModel> {
    let file = GgufFile::open(path)?;
    let where_ = path.display().to_string();
    let config = config::model_config_from_file(&file).with_context(|| where_.clone())?;
    let tokenizer = tokenizer::model_tokenizer(&file.metadata).with_context(|| where_.clone())?;
    let weights = load_weights(&file, &config, opts)?;
    let GgufFile { metadata, .. } = file;
    Ok(GgufModel { config, weights, tokenizer, metadata })
}

/// Every tensor of `file` under its HF name, dequantized to `opts.dtype`, q/k rows in HF order.
pub fn load_weights(file: &GgufFile, config: &ModelConfig, opts: &LoadOptions) -> Result<WeightMap> {
    let where_ = file.path.display().to_string();
    let (_, permuted) = config::architecture(&file.metadata).with_context(|| where_.clone())?;
    let mut weights = WeightMap::new(where_.clone());
    for info in &file.metadata.tensors {
        let hf = match names::hf_name(&info.name).with_context(|| where_.clone())? {
            names::Mapped::Hf(name) => name,
            names::Mapped::Derived => continue,
        };
        let heads = names::permuted_heads(&info.name, permuted, config.num_attention_heads, config.num_key_value_heads);
        let tensor = match opts.dtype {
            WeightDType::F32 => dequantize_tensor::<f32>(file, info, heads),
            WeightDType::BF16 => dequantize_tensor::<bf16>(file, info, heads),
        }
        .with_context(|| format!("{where_}: tensor {:?} ({}, shape {:?})", info.name, info.ggml_type, info.shape))?;
        file.release_tensor_pages(info);
        weights.insert(hf, tensor)?;
    }
    Ok(weights)
}

fn dequantize_tensor<T>(file: &GgufFile, info: &GgufTensorInfo, permuted_heads: Option<usize>) -> Result<Tensor>
where
    T: dequant::DequantTarget + ferrotune_tensor::Element,
{
    let bytes = file.tensor_bytes(info)?;
    let mut values = vec![T::default(); info.elem_count()];
    dequant::dequantize_into(info.ggml_type, bytes, &mut values)?;
    if let Some(heads) = permuted_heads {
        let rows = info.shape.first().copied().unwrap_or(1);
        let cols = values.len().checked_div(rows).unwrap_or(0);
        if info.shape.len() > 2 {
            bail!("a q/k projection must be 1-D or 2-D");
        }
        names::unpermute_rows(&mut values, rows, cols, heads)?;
    }
    Ok(Tensor::from_vec(values, &info.shape)?)
}
