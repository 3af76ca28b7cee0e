//! Llama-family model (H3 fills this in).
