//! ferrotune's data layer: LLaMA-Factory datasets (`dataset_info.json`, alpaca / sharegpt / openai), chat
//! templates, tokenization with LLaMA-Factory's masking and truncation rules, packing and batching.
