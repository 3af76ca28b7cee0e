//! GGUF v2/v3 (H1 fills this in).
