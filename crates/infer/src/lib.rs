//! ferrotune's inference engine: the Llama-family decoder on plain tensors (no autograd graph) with a
//! preallocated KV cache per sequence, weights in f32, bf16 or GGUF's Q8_0 / Q4_1 blocks computed on directly,
//! transformers' sampling rules, streaming text, and continuous batching.
//!
//! - [`quant`]: weight formats and the GGUF block layouts / quantizers.
//! - [`matrix`]: `x · Wᵀ` for every format: a weight-streaming kernel for few rows (decode), the packed GEMM for
//!   many (prefill), AVX-512 / AVX2 / portable builds chosen at run time.
//! - [`model`]: [`InferenceModel`] (from a `WeightMap`, a GGUF file, or a training `LlamaModel`), [`KvCache`],
//!   and one `forward` over segments that serves prefill, decode and both at once.
//! - [`sampling`]: repetition penalty, temperature, top-k, top-p, seeded draws; greedy.
//! - [`generate`]: stop rules and UTF-8-safe streaming ([`Sequence`], [`TextStream`]), one request
//!   ([`Generator`]) or many ([`BatchEngine`]).

pub mod generate;
mod lazy_buffer;
pub mod matrix;
pub mod model;
pub mod quant;
pub mod sampling;

pub use generate::{BatchEngine, Event, FinishReason, Generation, GenerationConfig, Generator, RequestId, Sequence, TextStream, Timings};
pub use matrix::{KernelChoice, Matrix, MatrixData};
pub use model::{InferenceModel, KvCache, Segment};
pub use quant::WeightFormat;
pub use sampling::{argmax, Sampler, SamplingParams};
