//! ferrotune's data layer: LLaMA-Factory datasets (`dataset_info.json`, alpaca / sharegpt / openai), chat
//! templates, tokenization with LLaMA-Factory's masking and truncation rules, packing and batching.
//!
//! Pipeline (LLaMA-Factory `data/loader.py::get_dataset`):
//! 1. [`info`]: `dataset_info.json` entries ([`DatasetAttr`]) and local files (json / jsonl / csv / txt, or a
//!    folder of them);
//! 2. [`convert`]: records into the aligned format ([`Example`]: prompt, response, system, tools);
//! 3. [`dataset`]: `max_samples`, mixing, `val_size` split;
//! 4. [`template`]: chat templates as data, or the tokenizer's jinja template; the tokenizer is fixed up
//!    (eos / pad / stop words) as LLaMA-Factory does;
//! 5. [`encode`]: supervised / pretrain processors, `infer_seqlen`, packing;
//! 6. [`batch`]: packed, padding-free batches for `ferrotune_models::llama::Batch`.
//!
//! [`load_dataset`] runs 1-5.

pub mod batch;
pub mod cache;
pub mod convert;
pub mod dataset;
pub mod encode;
pub mod info;
pub mod jinja;
pub mod numpy_rng;
pub mod options;
pub mod pyjson;
pub mod template;
pub mod tools;

pub use batch::{make_batches, PackedBatch};
pub use convert::{Example, Message, Role};
pub use dataset::{load_dataset, DatasetModule, Encoded};
pub use encode::{EncodedExample, PackedRow, PairedExample, PromptExample, IGNORE_INDEX};
pub use ferrotune_models::{bail, Context, Error, Result};
pub use info::{DatasetAttr, Formatting};
pub use options::{DataOptions, MixStrategy, Stage, ValSize};
pub use template::{get_template_and_fix_tokenizer, Template, TEMPLATE_NAMES};
