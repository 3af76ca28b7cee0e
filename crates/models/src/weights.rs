//! `WeightMap`: the loaded tensors of one model under their HF names and in HF layout ([out, in] linear
//! weights, half-split RoPE rows in q/k), whatever file they came from. Loaders (`safetensors`, `gguf`) fill it;
//! models take tensors out of it, so each weight lives once.

use crate::{bail, Result};
use ferrotune_tensor::{DType, Tensor};
use std::collections::BTreeMap;

/// The dtype weights are held in after loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDType {
    /// f32: exact training and reference checks (4 bytes per parameter).
    #[default]
    F32,
    /// Keep bf16 storage (2 bytes per parameter; compute still widens to f32). f16/f32 files are rounded to bf16.
    BF16,
}

impl WeightDType {
    pub fn dtype(self) -> DType {
        match self {
            WeightDType::F32 => DType::F32,
            WeightDType::BF16 => DType::BF16,
        }
    }
}

/// Options every loader honours.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub dtype: WeightDType,
}

#[derive(Debug, Default)]
pub struct WeightMap {
    /// Where the tensors came from, for error messages ("model.safetensors", "x.gguf", a folder).
    source: String,
    tensors: BTreeMap<String, Tensor>,
}

impl WeightMap {
    pub fn new(source: impl Into<String>) -> WeightMap {
        WeightMap { source: source.into(), tensors: BTreeMap::new() }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Add a tensor; a second tensor under the same name is an error (a corrupt or doubly-listed checkpoint).
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Result<()> {
        let name = name.into();
        if self.tensors.contains_key(&name) {
            bail!("{}: tensor {name:?} appears twice", self.source);
        }
        self.tensors.insert(name, tensor);
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Take a tensor out, checking its shape; errors name the source file, the tensor and both shapes.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let Some(t) = self.tensors.remove(name) else {
            bail!("{}: tensor {name:?} is missing (the checkpoint does not match config.json, or is truncated)", self.source);
        };
        if t.shape() != shape {
            bail!(
                "{}: tensor {name:?} has shape {:?}, config.json implies {shape:?}; the checkpoint and config disagree",
                self.source,
                t.shape()
            );
        }
        Ok(t)
    }

    /// Take a tensor if present (optional biases, an untied lm_head).
    pub fn take_optional(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.tensors.contains_key(name) { self.take(name, shape).map(Some) } else { Ok(None) }
    }

    /// Tensors nobody took: models call this last so unexpected weights are reported, not silently ignored.
    pub fn into_remaining(self) -> Vec<String> {
        self.tensors.into_keys().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Total bytes held.
    pub fn nbytes(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
    }
}
