//! llama.cpp tensor names -> HF names, and the Q/K row order llama.cpp's converter uses -> HF's.
//!
//! ```text
//! token_embd.weight              model.embed_tokens.weight
//! output_norm.weight             model.norm.weight
//! output.weight                  lm_head.weight                  (absent when embeddings are tied)
//! blk.N.attn_norm.weight         model.layers.N.input_layernorm.weight
//! blk.N.ffn_norm.weight          model.layers.N.post_attention_layernorm.weight
//! blk.N.attn_{q,k,v}.{weight,bias}  model.layers.N.self_attn.{q,k,v}_proj.{weight,bias}
//! blk.N.attn_output.{weight,bias}   model.layers.N.self_attn.o_proj.{weight,bias}
//! blk.N.ffn_{gate,up,down}.{weight,bias} model.layers.N.mlp.{gate,up,down}_proj.{weight,bias}
//! ```
//!
//! Q/K permutation. For `llama` (and `mistral`) files, convert_hf_to_gguf.py rewrites q_proj / k_proj rows from
//! HF's half-split RoPE order into ggml's interleaved order, per head (n_head for q, n_head_kv for k):
//!
//! ```text
//! gguf = hf.reshape(n_head, 2, head_dim/2, cols).swapaxes(1, 2)      # LlamaModel.permute
//! gguf row  h*hd + 2*j + i   holds   hf row  h*hd + i*hd/2 + j        (i in {0,1}, j < hd/2)
//! ```
//!
//! [`unpermute_rows`] inverts it. `qwen2` files use NeoX-style RoPE (already half-split) and are not permuted by
//! the converter, so they are copied as they are.

use crate::{bail, Result};

/// What a GGUF tensor becomes on the HF side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// An HF tensor name.
    Hf(String),
    /// Data llama.cpp derives from the config and HF does not store (`rope_freqs.weight`): skipped.
    Derived,
}

/// Map one llama.cpp tensor name to its HF name. Unknown names are an error: a file with tensors this model does
/// not have is not a Llama-family checkpoint, and silently dropping weights would make a wrong model.
pub fn hf_name(gguf: &str) -> Result<Mapped> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        "rope_freqs.weight" => return Ok(Mapped::Derived),
        _ => None,
    };
    if let Some(name) = fixed {
        return Ok(Mapped::Hf(name.to_string()));
    }
    let unknown =
        || format!("tensor {gguf:?} is not a Llama-family tensor (expected token_embd, output_norm, output, blk.N.*)");
    let Some(rest) = gguf.strip_prefix("blk.") else { bail!("{}", unknown()) };
    let Some((layer, rest)) = rest.split_once('.') else { bail!("{}", unknown()) };
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || layer.len() > 9 {
        bail!("{}", unknown());
    }
    let Some((part, suffix)) = rest.rsplit_once('.') else { bail!("{}", unknown()) };
    if suffix != "weight" && suffix != "bias" {
        bail!("{}", unknown());
    }
    let module = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => bail!("{}", unknown()),
    };
    // Keep the layer number's spelling canonical ("007" is not a layer HF would name).
    let layer: usize = layer.parse().map_err(|_| crate::Error::msg(unknown()))?;
    Ok(Mapped::Hf(format!("model.layers.{layer}.{module}.{suffix}")))
}

/// Which RoPE row permutation to undo for a GGUF tensor: `Some(heads)` for q (n_head) and k (n_head_kv) weights
/// and biases of files whose converter permuted them.
pub fn permuted_heads(gguf: &str, permuted_arch: bool, n_head: usize, n_head_kv: usize) -> Option<usize> {
    if !permuted_arch {
        return None;
    }
    let part = gguf.strip_prefix("blk.")?.split_once('.')?.1;
    match part {
        "attn_q.weight" | "attn_q.bias" => Some(n_head),
        "attn_k.weight" | "attn_k.bias" => Some(n_head_kv),
        _ => None,
    }
}

/// Undo llama.cpp's interleaved-RoPE row order in place: `data` is row-major `[rows, cols]` with
/// `rows = n_heads * head_dim`. Within each head, row `2*j + i` moves to `i*head_dim/2 + j`.
pub fn unpermute_rows<T: Copy>(data: &mut [T], rows: usize, cols: usize, n_heads: usize) -> Result<()> {
    if n_heads == 0 || !rows.is_multiple_of(n_heads) || !(rows / n_heads).is_multiple_of(2) {
        bail!("cannot undo the RoPE row permutation: {rows} rows do not split into {n_heads} heads of even size");
    }
    if rows.checked_mul(cols) != Some(data.len()) {
        bail!("cannot undo the RoPE row permutation: {} values are not {rows} x {cols}", data.len());
    }
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let head_len = head_dim * cols;
    if head_len == 0 {
        return Ok(());
    }
    let mut scratch = data[..head_len].to_vec();
    for head in data.chunks_exact_mut(head_len) {
        scratch.copy_from_slice(head);
        for j in 0..half {
            for i in 0..2 {
                let from = (2 * j + i) * cols;
                let to = (i * half + j) * cols;
                head[to..to + cols].copy_from_slice(&scratch[from..from + cols]);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        let hf = |s: &str| match hf_name(s).unwrap() {
            Mapped::Hf(n) => n,
            Mapped::Derived => "derived".into(),
        };
        assert_eq!(hf("token_embd.weight"), "model.embed_tokens.weight");
        assert_eq!(hf("blk.12.attn_q.weight"), "model.layers.12.self_attn.q_proj.weight");
        assert_eq!(hf("blk.0.attn_k.bias"), "model.layers.0.self_attn.k_proj.bias");
        assert_eq!(hf("blk.3.ffn_down.weight"), "model.layers.3.mlp.down_proj.weight");
        assert_eq!(hf("blk.3.attn_norm.weight"), "model.layers.3.input_layernorm.weight");
        assert_eq!(hf("blk.3.ffn_norm.weight"), "model.layers.3.post_attention_layernorm.weight");
        assert_eq!(hf("output_norm.weight"), "model.norm.weight");
        assert_eq!(hf("output.weight"), "lm_head.weight");
        assert_eq!(hf("rope_freqs.weight"), "derived");
        for bad in
            ["blk.x.attn_q.weight", "blk.1.attn_qq.weight", "blk.1.attn_q.scale", "pos_embd.weight", "blk..a.weight"]
        {
            assert!(hf_name(bad).is_err(), "{bad}");
        }
    }

    /// The converter's permutation, written the way convert_hf_to_gguf.py does, then inverted.
    #[test]
    fn unpermute_inverts_llama_permute() {
        let (heads, head_dim, cols) = (3, 8, 2);
        let rows = heads * head_dim;
        let hf: Vec<usize> = (0..rows * cols).collect();
        // gguf[h, j, i, :] = hf[h, i, j, :]  (reshape(n_head, 2, hd/2, cols).swapaxes(1, 2))
        let mut gguf = vec![0; rows * cols];
        for h in 0..heads {
            for j in 0..head_dim / 2 {
                for i in 0..2 {
                    for c in 0..cols {
                        gguf[((h * head_dim + 2 * j + i) * cols) + c] =
                            hf[((h * head_dim + i * head_dim / 2 + j) * cols) + c];
                    }
                }
            }
        }
        assert_ne!(gguf, hf);
        unpermute_rows(&mut gguf, rows, cols, heads).unwrap();
        assert_eq!(gguf, hf);
        assert!(unpermute_rows(&mut gguf, rows, cols, 5).is_err());
    }
}
