//! safetensors (H2 fills this in).
