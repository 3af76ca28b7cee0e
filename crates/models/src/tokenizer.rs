//! `ModelTokenizer`: a `tokenizers::Tokenizer` plus what LLaMA-Factory and generation read next to it
//! (special tokens, `chat_template`), whether it came from `tokenizer.json` + `tokenizer_config.json` or was
//! rebuilt from GGUF metadata (`gguf::tokenizer`).

/// A loaded tokenizer and its chat metadata.
#[derive(Clone)]
pub struct ModelTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    /// `bos_token` / `eos_token` / `pad_token` / `unk_token` as strings (tokenizer_config.json spelling).
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    /// The Jinja chat template, when the model ships one.
    pub chat_template: Option<String>,
    /// `add_bos_token` / `add_eos_token` when the tokenizer config states them.
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    /// `model_max_length` from tokenizer_config.json.
    pub model_max_length: Option<usize>,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("pad_token", &self.pad_token)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}
