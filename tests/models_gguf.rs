//! GGUF loading: the reader and dequantization on files written here, hostile files (every one must be an
//! `Err`, never a panic), and the real SmolLM2-135M-Instruct Q4_1 file checked against transformers' own GGUF
//! loader (fixtures from scripts/golden/smollm2.py).
//!
//! The SmolLM2 tests need the model: `scripts/fetch-smollm2.sh` (or FERROTUNE_SMOLLM2_GGUF=path). Without it they
//! print how to get it and pass, unless FERROTUNE_REQUIRE_MODELS=1 (CI), where a missing model fails.

mod common;

use ferrotune_models::gguf::{self, reader, GgmlType, GgufValue, GgufValueType};
use ferrotune_models::{Architecture, LoadOptions, WeightDType};
use ferrotune_tensor::{bf16, f16, Tensor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------------------------
// A small GGUF writer (the spec's layout; see crates/models/src/gguf/reader.rs).
// ---------------------------------------------------------------------------------------------------------------

struct TensorSpec {
    name: String,
    /// ggml order: innermost first.
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    /// Explicit data offset (hostile files); `None` packs tensors at aligned offsets.
    offset: Option<u64>,
}

fn tensor(name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> TensorSpec {
    TensorSpec { name: name.into(), dims: dims.to_vec(), ty: ty.id(), data, offset: None }
}

struct Writer {
    buf: Vec<u8>,
    v1: bool,
}

impl Writer {
    fn count(&mut self, n: u64) {
        if self.v1 {
            self.buf.extend((n as u32).to_le_bytes());
        } else {
            self.buf.extend(n.to_le_bytes());
        }
    }
    fn string(&mut self, s: &str) {
        self.count(s.len() as u64);
        self.buf.extend(s.as_bytes());
    }
    fn value(&mut self, v: &GgufValue) {
        match v {
            GgufValue::U8(x) => self.buf.push(*x),
            GgufValue::I8(x) => self.buf.push(*x as u8),
            GgufValue::U16(x) => self.buf.extend(x.to_le_bytes()),
            GgufValue::I16(x) => self.buf.extend(x.to_le_bytes()),
            GgufValue::U32(x) => self.buf.extend(x.to_le_bytes()),
            GgufValue::I32(x) => self.buf.extend(x.to_le_bytes()),
            GgufValue::F32(x) => self.buf.extend(x.to_le_bytes()),
            GgufValue::Bool(x) => self.buf.push(*x as u8),
            GgufValue::String(s) => self.string(s),
            GgufValue::Array(t, items) => {
                self.buf.extend((*t as u32).to_le_bytes());
                self.count(items.len() as u64);
                for item in items {
                    self.value(item);
                }
            }
            GgufValue::U64(x) => self.buf.extend(x.to_le_bytes()),
            GgufValue::I64(x) => self.buf.extend(x.to_le_bytes()),
            GgufValue::F64(x) => self.buf.extend(x.to_le_bytes()),
        }
    }
}

fn type_id(v: &GgufValue) -> u32 {
    (match v {
        GgufValue::U8(_) => GgufValueType::U8,
        GgufValue::I8(_) => GgufValueType::I8,
        GgufValue::U16(_) => GgufValueType::U16,
        GgufValue::I16(_) => GgufValueType::I16,
        GgufValue::U32(_) => GgufValueType::U32,
        GgufValue::I32(_) => GgufValueType::I32,
        GgufValue::F32(_) => GgufValueType::F32,
        GgufValue::Bool(_) => GgufValueType::Bool,
        GgufValue::String(_) => GgufValueType::String,
        GgufValue::Array(..) => GgufValueType::Array,
        GgufValue::U64(_) => GgufValueType::U64,
        GgufValue::I64(_) => GgufValueType::I64,
        GgufValue::F64(_) => GgufValueType::F64,
    }) as u32
}

fn gguf_bytes(version: u32, kvs: &[(&str, GgufValue)], tensors: &[TensorSpec]) -> Vec<u8> {
    let alignment = kvs
        .iter()
        .find(|(k, _)| *k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .filter(|a| *a > 0)
        .unwrap_or(32);
    let mut w = Writer { buf: b"GGUF".to_vec(), v1: version == 1 };
    w.buf.extend(version.to_le_bytes());
    w.count(tensors.len() as u64);
    w.count(kvs.len() as u64);
    for (k, v) in kvs {
        w.string(k);
        w.buf.extend(type_id(v).to_le_bytes());
        w.value(v);
    }
    let mut offsets = Vec::new();
    let mut next = 0u64;
    for t in tensors {
        let off = t.offset.unwrap_or(next);
        offsets.push(off);
        next = off.saturating_add(t.data.len() as u64).div_ceil(alignment).saturating_mul(alignment);
    }
    for (t, off) in tensors.iter().zip(&offsets) {
        w.string(&t.name);
        w.buf.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            w.count(*d);
        }
        w.buf.extend(t.ty.to_le_bytes());
        w.buf.extend(off.to_le_bytes());
    }
    let data_start = (w.buf.len() as u64).div_ceil(alignment) * alignment;
    w.buf.resize(data_start as usize, 0);
    for (t, off) in tensors.iter().zip(&offsets) {
        // Hostile offsets far past the end are declared, not written.
        let Some(at) = data_start.checked_add(*off).filter(|a| a + (t.data.len() as u64) < 1 << 24) else { continue };
        let at = at as usize;
        if w.buf.len() < at + t.data.len() {
            w.buf.resize(at + t.data.len(), 0);
        }
        w.buf[at..at + t.data.len()].copy_from_slice(&t.data);
    }
    w.buf
}

fn temp_file(bytes: &[u8]) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "ferrotune-gguf-test-{}-{}.gguf",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn s(x: &str) -> GgufValue {
    GgufValue::String(x.into())
}
fn strings(xs: &[&str]) -> GgufValue {
    GgufValue::Array(GgufValueType::String, xs.iter().map(|x| s(x)).collect())
}
fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// A tiny llama GGUF: hidden 32, 2 heads of 16, 1 kv head, ffn 32, vocab 4, one layer, tied embeddings.
// ---------------------------------------------------------------------------------------------------------------

const H: usize = 32;
const HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const KV_HEADS: usize = 1;
const VOCAB: usize = 4;

fn tiny_kvs() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("general.architecture", s("llama")),
        ("general.name", s("tiny")),
        ("llama.context_length", GgufValue::U32(64)),
        ("llama.embedding_length", GgufValue::U32(H as u32)),
        ("llama.block_count", GgufValue::U32(1)),
        ("llama.feed_forward_length", GgufValue::U32(H as u32)),
        ("llama.attention.head_count", GgufValue::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", GgufValue::U32(KV_HEADS as u32)),
        ("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5)),
        ("llama.rope.freq_base", GgufValue::F32(100000.0)),
        ("llama.rope.dimension_count", GgufValue::U32(HEAD_DIM as u32)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("default")),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "ab", "<s>"])),
        ("tokenizer.ggml.token_type", GgufValue::Array(GgufValueType::I32, [1, 1, 1, 3].map(GgufValue::I32).to_vec())),
        ("tokenizer.ggml.merges", strings(&["a b"])),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(3)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(3)),
        ("tokenizer.chat_template", s("{{ messages }}")),
    ]
}

/// HF-order q/k weights: value = row * 1000 + col, so a row's identity is visible in every element.
fn hf_rows(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|i| ((i / cols) * 1000 + i % cols) as f32).collect()
}

/// convert_hf_to_gguf.py's LlamaModel.permute: `w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2)`.
fn llama_permute(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let hd = rows / n_head;
    let mut out = vec![0.0; w.len()];
    for h in 0..n_head {
        for j in 0..hd / 2 {
            for i in 0..2 {
                let dst = h * hd + 2 * j + i;
                let src = h * hd + i * hd / 2 + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Q8_0 blocks with d = 0.5 and qs[j] = (block + j) % 50 - 25.
fn q8_0_data(blocks: usize) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut values = Vec::new();
    for b in 0..blocks {
        bytes.extend(f16::from_f32(0.5).to_le_bytes());
        for j in 0..32 {
            let q = ((b + j) % 50) as i32 - 25;
            bytes.push(q as i8 as u8);
            values.push(q as f32 * 0.5);
        }
    }
    (bytes, values)
}

/// Q4_0 blocks with d = 0.25, low nibble j % 16, high nibble 15 - j % 16.
fn q4_0_data(blocks: usize) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut values = Vec::new();
    for _ in 0..blocks {
        bytes.extend(f16::from_f32(0.25).to_le_bytes());
        let mut block = [0f32; 32];
        for j in 0..16 {
            bytes.push(((15 - j as u8) << 4) | j as u8);
            block[j] = (j as f32 - 8.0) * 0.25;
            block[j + 16] = ((15 - j) as f32 - 8.0) * 0.25;
        }
        values.extend(block);
    }
    (bytes, values)
}

struct Tiny {
    bytes: Vec<u8>,
    q_hf: Vec<f32>,
    k_hf: Vec<f32>,
    embd: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

fn tiny_model(version: u32, extra_kvs: &[(&'static str, GgufValue)]) -> Tiny {
    let q_hf = hf_rows(HEADS * HEAD_DIM, H);
    let k_hf = hf_rows(KV_HEADS * HEAD_DIM, H);
    let (embd_bytes, embd) = q8_0_data(VOCAB * H / 32);
    let (gate_bytes, gate) = q4_0_data(H * H / 32);
    let up: Vec<f32> = (0..H * H).map(|i| (i as f32 - 500.0) / 64.0).collect();
    let down: Vec<f32> = (0..H * H).map(|i| (i as f32) / 128.0 - 3.0).collect();
    let up_bytes = up.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect();
    let down_bytes = down.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect();
    let ones = f32_bytes(&[1.0; H]);
    let square = |v: f32| f32_bytes(&vec![v; H * H]);
    let tensors = vec![
        tensor("token_embd.weight", &[H as u64, VOCAB as u64], GgmlType::Q8_0, embd_bytes),
        tensor("blk.0.attn_norm.weight", &[H as u64], GgmlType::F32, ones.clone()),
        tensor("blk.0.attn_q.weight", &[H as u64, H as u64], GgmlType::F32, f32_bytes(&llama_permute(&q_hf, HEADS, H))),
        tensor(
            "blk.0.attn_k.weight",
            &[H as u64, (KV_HEADS * HEAD_DIM) as u64],
            GgmlType::F32,
            f32_bytes(&llama_permute(&k_hf, KV_HEADS, H)),
        ),
        tensor("blk.0.attn_v.weight", &[H as u64, (KV_HEADS * HEAD_DIM) as u64], GgmlType::F32, f32_bytes(&k_hf)),
        tensor("blk.0.attn_output.weight", &[H as u64, H as u64], GgmlType::F32, square(0.5)),
        tensor("blk.0.ffn_norm.weight", &[H as u64], GgmlType::F32, ones.clone()),
        tensor("blk.0.ffn_gate.weight", &[H as u64, H as u64], GgmlType::Q4_0, gate_bytes),
        tensor("blk.0.ffn_up.weight", &[H as u64, H as u64], GgmlType::F16, up_bytes),
        tensor("blk.0.ffn_down.weight", &[H as u64, H as u64], GgmlType::BF16, down_bytes),
        tensor("output_norm.weight", &[H as u64], GgmlType::F32, ones),
    ];
    let mut kvs = tiny_kvs();
    kvs.extend(extra_kvs.iter().cloned());
    let down = down.iter().map(|x| bf16::from_f32(*x).to_f32()).collect();
    let up = up.iter().map(|x| f16::from_f32(*x).to_f32()).collect();
    Tiny { bytes: gguf_bytes(version, &kvs, &tensors), q_hf, k_hf, embd, gate, up, down }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(ferrotune_tensor::DType::F32).unwrap().to_vec::<f32>().unwrap()
}

#[test]
fn tiny_llama_loads_with_hf_names_shapes_and_unpermuted_qk() {
    for version in [1, 2, 3] {
        let tiny = tiny_model(version, &[]);
        let path = temp_file(&tiny.bytes);
        let m = gguf::load(&path, &LoadOptions::default()).unwrap_or_else(|e| panic!("v{version}: {e}"));
        std::fs::remove_file(&path).ok();
        let c = &m.config;
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!(
            (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim),
            (H, HEADS, KV_HEADS, HEAD_DIM)
        );
        assert_eq!(
            (c.vocab_size, c.num_hidden_layers, c.intermediate_size, c.max_position_embeddings),
            (VOCAB, 1, H, 64)
        );
        assert!(c.tie_word_embeddings);
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.bos_token_id, Some(3));
        let w = &m.weights;
        assert_eq!(w.len(), 11);
        let get = |n: &str| w.get(n).unwrap_or_else(|| panic!("missing {n}"));
        assert_eq!(get("model.embed_tokens.weight").shape(), &[VOCAB, H]);
        assert_eq!(get("model.layers.0.self_attn.k_proj.weight").shape(), &[KV_HEADS * HEAD_DIM, H]);
        assert_eq!(values(get("model.layers.0.self_attn.q_proj.weight")), tiny.q_hf, "q rows back in HF order");
        assert_eq!(values(get("model.layers.0.self_attn.k_proj.weight")), tiny.k_hf, "k rows back in HF order");
        assert_eq!(values(get("model.layers.0.self_attn.v_proj.weight")), tiny.k_hf, "v is never permuted");
        assert_eq!(values(get("model.embed_tokens.weight")), tiny.embd, "Q8_0");
        assert_eq!(values(get("model.layers.0.mlp.gate_proj.weight")), tiny.gate, "Q4_0");
        assert_eq!(values(get("model.layers.0.mlp.up_proj.weight")), tiny.up, "F16");
        assert_eq!(values(get("model.layers.0.mlp.down_proj.weight")), tiny.down, "BF16");
        assert!(w.contains("model.norm.weight") && w.contains("model.layers.0.post_attention_layernorm.weight"));
        assert!(!w.contains("lm_head.weight"));

        let t = &m.tokenizer;
        assert_eq!(t.bos_token.as_deref(), Some("<s>"));
        assert_eq!(t.chat_template.as_deref(), Some("{{ messages }}"));
        let ids = t.tokenizer.encode("<s>abab", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![3, 2, 2], "control token matched whole, then the a+b merge");
        assert_eq!(m.metadata.version, version);
    }
}

#[test]
fn bf16_weights_and_qwen2_is_not_unpermuted() {
    let tiny = tiny_model(3, &[]);
    let path = temp_file(&tiny.bytes);
    let m = gguf::load(&path, &LoadOptions { dtype: WeightDType::BF16 }).unwrap();
    let q = m.weights.get("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!(q.dtype(), ferrotune_tensor::DType::BF16);
    let want: Vec<f32> = tiny.q_hf.iter().map(|x| bf16::from_f32(*x).to_f32()).collect();
    assert_eq!(values(q), want);
    std::fs::remove_file(&path).ok();

    // The same file declared qwen2 (whose converter does not permute): rows stay as stored.
    let kvs: Vec<(&str, GgufValue)> = tiny_kvs()
        .into_iter()
        .map(|(k, v)| match (k, k.strip_prefix("llama.")) {
            ("general.architecture", _) => (k, s("qwen2")),
            (_, Some(rest)) => (Box::leak(format!("qwen2.{rest}").into_boxed_str()) as &str, v),
            _ => (k, v),
        })
        .collect();
    let tensors = vec![tensor("blk.0.attn_q.weight", &[H as u64, H as u64], GgmlType::F32, f32_bytes(&tiny.q_hf))];
    let path = temp_file(&gguf_bytes(3, &kvs, &tensors));
    let meta = gguf::inspect(&path).unwrap();
    let config = gguf::config::model_config(&meta).unwrap();
    assert_eq!(config.architecture, Architecture::Qwen2);
    let file = gguf::GgufFile::open(&path).unwrap();
    let w = gguf::load_weights(&file, &config, &LoadOptions::default()).unwrap();
    assert_eq!(values(w.get("model.layers.0.self_attn.q_proj.weight").unwrap()), tiny.q_hf);
    std::fs::remove_file(&path).ok();
}

/// Llama 3.1-style files carry `rope_freqs.weight` instead of scaling parameters; the loader recovers them.
#[test]
fn llama3_rope_freqs_become_llama3_scaling() {
    use ferrotune_tensor::ops::rope::RopeScaling;
    // convert_hf_to_gguf.py's rope factors for factor 8, low 1, high 4, original 8192 (theta 5e4, head_dim 16).
    let (factor, low, high, l) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    let freqs: Vec<f32> = (0..HEAD_DIM / 2)
        .map(|i| {
            let wavelen = 2.0 * std::f64::consts::PI * 50000f64.powf(2.0 * i as f64 / HEAD_DIM as f64);
            if wavelen < l / high {
                1.0
            } else if wavelen > l / low {
                factor as f32
            } else {
                let smooth = (l / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect();
    assert!(freqs.iter().any(|&f| f > 1.0 && f < 8.0), "the test covers the smooth band: {freqs:?}");
    let tiny = tiny_model(3, &[]);
    let mut meta = reader::parse(&tiny.bytes).unwrap();
    // Rebuild the file with one more tensor.
    let mut kvs = tiny_kvs();
    for (k, v) in kvs.iter_mut() {
        if *k == "llama.rope.freq_base" {
            *v = GgufValue::F32(50000.0);
        }
    }
    let file = gguf::GgufFile::open(&temp_file(&tiny.bytes)).unwrap();
    let mut tensors: Vec<TensorSpec> = meta
        .tensors
        .drain(..)
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dims: t.shape.iter().rev().map(|&d| d as u64).collect(),
            ty: t.ggml_type.id(),
            data: file.tensor_bytes(&t).unwrap().to_vec(),
            offset: None,
        })
        .collect();
    std::fs::remove_file(&file.path).ok();
    tensors.push(tensor("rope_freqs.weight", &[(HEAD_DIM / 2) as u64], GgmlType::F32, f32_bytes(&freqs)));
    let path = temp_file(&gguf_bytes(3, &kvs, &tensors));
    let m = gguf::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(
        m.config.rope_scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        }
    );
    assert!(!m.weights.contains("rope_freqs.weight"), "derived data is not a weight");
    let meta = gguf::inspect(&path).unwrap();
    assert!(gguf::config::model_config(&meta).unwrap_err().to_string().contains("rope_freqs"));
    std::fs::remove_file(&path).ok();

    // Factors that are not Llama 3.1's are refused, not guessed.
    let mut odd = freqs.clone();
    odd[HEAD_DIM / 2 - 1] = 3.0;
    tensors.pop();
    tensors.push(tensor("rope_freqs.weight", &[(HEAD_DIM / 2) as u64], GgmlType::F32, f32_bytes(&odd)));
    let path = temp_file(&gguf_bytes(3, &kvs, &tensors));
    assert!(gguf::load(&path, &LoadOptions::default()).unwrap_err().to_string().contains("rope_freqs.weight"));
    std::fs::remove_file(&path).ok();
}

#[test]
fn metadata_value_types_round_trip_with_nested_arrays_and_alignment() {
    let nested = GgufValue::Array(
        GgufValueType::Array,
        vec![
            GgufValue::Array(GgufValueType::U16, vec![GgufValue::U16(1), GgufValue::U16(65535)]),
            GgufValue::Array(GgufValueType::String, vec![s("x"), s("")]),
        ],
    );
    let kvs = vec![
        ("general.alignment", GgufValue::U32(64)),
        ("k.u8", GgufValue::U8(200)),
        ("k.i8", GgufValue::I8(-100)),
        ("k.u16", GgufValue::U16(60000)),
        ("k.i16", GgufValue::I16(-30000)),
        ("k.u32", GgufValue::U32(4_000_000_000)),
        ("k.i32", GgufValue::I32(-2_000_000_000)),
        ("k.f32", GgufValue::F32(1.5)),
        ("k.bool", GgufValue::Bool(true)),
        ("k.string", s("héllo")),
        ("k.u64", GgufValue::U64(u64::MAX)),
        ("k.i64", GgufValue::I64(i64::MIN)),
        ("k.f64", GgufValue::F64(-0.25)),
        ("k.nested", nested.clone()),
        ("k.empty", GgufValue::Array(GgufValueType::F32, vec![])),
    ];
    let tensors = vec![
        tensor("a", &[3], GgmlType::F32, f32_bytes(&[1.0, 2.0, 3.0])),
        tensor("b", &[2, 2], GgmlType::F32, f32_bytes(&[4.0, 5.0, 6.0, 7.0])),
    ];
    for version in [1, 2, 3] {
        let bytes = gguf_bytes(version, &kvs, &tensors);
        let meta = reader::parse(&bytes).unwrap();
        assert_eq!(meta.alignment, 64);
        assert_eq!(meta.data_offset % 64, 0);
        for (k, v) in &kvs {
            assert_eq!(meta.get(k), Some(v), "v{version} {k}");
        }
        assert_eq!(meta.tensors[1].offset, 64, "second tensor at the next 64-byte boundary");
        assert_eq!(meta.tensors[1].shape, vec![2, 2]);
        let path = temp_file(&bytes);
        let file = gguf::GgufFile::open(&path).unwrap();
        let b = gguf::dequant::dequantize::<f32>(GgmlType::F32, file.tensor_bytes(&meta.tensors[1]).unwrap()).unwrap();
        assert_eq!(b, vec![4.0, 5.0, 6.0, 7.0]);
        std::fs::remove_file(&path).ok();
    }
}

#[test]
fn every_block_format_matches_gguf_py() {
    let path = common::golden_path("smollm2_ggml_blocks");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/golden/smollm2.py --blocks-only", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let types = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];
    for ty in types {
        let blocks = st.tensor(&format!("blocks.{ty}")).unwrap();
        let want: Vec<f32> = st
            .tensor(&format!("values.{ty}"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let got: Vec<f32> = gguf::dequant::dequantize(ty, blocks.data()).unwrap();
        assert_eq!(got.len(), want.len(), "{ty}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{ty} weight {i}: {g} vs gguf-py {w}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Hostile files: each must be an error that says what is wrong, never a panic or a huge allocation.
// ---------------------------------------------------------------------------------------------------------------

fn parse_err(bytes: &[u8]) -> String {
    match reader::parse(bytes) {
        Ok(_) => panic!("a hostile file parsed"),
        Err(e) => e.to_string(),
    }
}

fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend(n_tensors.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b
}

fn kv_header(key: &str, ty: u32) -> Vec<u8> {
    let mut b = (key.len() as u64).to_le_bytes().to_vec();
    b.extend(key.as_bytes());
    b.extend(ty.to_le_bytes());
    b
}

#[test]
fn every_truncation_is_an_error() {
    let tiny = tiny_model(3, &[("k.nested", GgufValue::Array(GgufValueType::Array, vec![strings(&["p", "q"])]))]);
    let full = &tiny.bytes;
    assert!(reader::parse(full).is_ok());
    for len in 0..full.len() {
        assert!(reader::parse(&full[..len]).is_err(), "truncated at {len} of {} parsed", full.len());
    }
    // And through the file API, which names the file.
    let path = temp_file(&full[..full.len() - 1]);
    let e = gguf::load(&path, &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains(&path.display().to_string()) && e.contains("output_norm.weight"), "{e}");
    std::fs::remove_file(&path).ok();
}

#[test]
fn corrupting_any_header_byte_never_panics() {
    let tiny = tiny_model(3, &[]);
    let meta = reader::parse(&tiny.bytes).unwrap();
    let header_len = meta.data_offset as usize;
    for at in 0..header_len {
        for value in [0x00u8, 0xFF, 0x7F, 0x80] {
            let mut bytes = tiny.bytes.clone();
            bytes[at] = value;
            // Ok or Err are both fine; a panic or abort fails the test.
            let _ = reader::parse(&bytes);
        }
    }
}

#[test]
fn hostile_headers_are_errors_that_say_why() {
    // Bad magic, unsupported version.
    assert!(parse_err(b"GGML\x03\0\0\0").contains("not a GGUF file"));
    assert!(parse_err(&header(4, 0, 0)).contains("version 4"));
    // Counts far beyond the file.
    assert!(parse_err(&header(3, u64::MAX, 0)).contains("tensors"));
    assert!(parse_err(&header(3, 0, u64::MAX)).contains("key/value count"));
    assert!(parse_err(&header(3, 1 << 40, 1 << 40)).contains("count"));
    // A string length past the end of the file.
    let mut b = header(3, 0, 1);
    b.extend(u64::MAX.to_le_bytes());
    b.extend([0u8; 16]);
    let e = parse_err(&b);
    assert!(e.contains("metadata key length"), "{e}");
    // An array claiming 2^61 u64 elements (count * 8 overflows u64).
    let mut b = header(3, 0, 1);
    b.extend(kv_header("k", 9));
    b.extend(10u32.to_le_bytes());
    b.extend((1u64 << 61).to_le_bytes());
    let e = parse_err(&b);
    assert!(e.contains("\"k\"") && e.contains("array length"), "{e}");
    // Unknown value type, unknown array element type, bool that is not 0/1, invalid UTF-8.
    let mut b = header(3, 0, 1);
    b.extend(kv_header("k", 13));
    b.extend([0u8; 8]);
    assert!(parse_err(&b).contains("unknown value type 13"));
    let mut b = header(3, 0, 1);
    b.extend(kv_header("k", 9));
    b.extend(99u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    assert!(parse_err(&b).contains("unknown element type 99"));
    let mut b = header(3, 0, 1);
    b.extend(kv_header("k", 7));
    b.push(2);
    assert!(parse_err(&b).contains("not 0 or 1"));
    let mut b = header(3, 0, 1);
    b.extend(kv_header("k", 8));
    b.extend(2u64.to_le_bytes());
    b.extend([0xC3, 0x28]);
    assert!(parse_err(&b).contains("UTF-8"));
    // Arrays nested deeper than any real file, each level claiming one element: refused, no stack overflow.
    let mut b = header(3, 0, 1);
    b.extend(kv_header("k", 9));
    for _ in 0..10_000 {
        b.extend(9u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
    }
    b.extend(0u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    assert!(parse_err(&b).contains("nested"));
    // Duplicate keys.
    let b = gguf_bytes(3, &[("a", GgufValue::U8(1)), ("a", GgufValue::U8(2))], &[]);
    assert!(parse_err(&b).contains("twice"));
}

#[test]
fn hostile_alignment_and_tensor_infos_are_errors() {
    let one = || tensor("t", &[32], GgmlType::F32, vec![0; 128]);
    for bad in
        [GgufValue::U32(0), GgufValue::U32(3), GgufValue::U32(48), GgufValue::String("32".into()), GgufValue::U64(32)]
    {
        let b = gguf_bytes(3, &[("general.alignment", bad.clone())], &[one()]);
        assert!(parse_err(&b).contains("general.alignment"), "{bad:?}");
    }
    let with = |t: TensorSpec| gguf_bytes(3, &[], &[t]);
    let e = parse_err(&with(TensorSpec { dims: vec![1, 1, 1, 1, 1], ..one() }));
    assert!(e.contains("\"t\"") && e.contains("5 dimensions"), "{e}");
    let e = parse_err(&with(TensorSpec { dims: vec![u64::MAX / 2, 4], ..one() }));
    assert!(e.contains("overflow"), "{e}");
    let e = parse_err(&with(TensorSpec { dims: vec![0, u64::MAX / 4, 1 << 20], data: vec![], ..one() }));
    assert!(e.contains("overflow"), "a zero dimension does not excuse huge ones: {e}");
    let e = parse_err(&with(TensorSpec { ty: 99, ..one() }));
    assert!(e.contains("ggml type 99"), "{e}");
    let e = parse_err(&with(TensorSpec { ty: 16, ..one() }));
    assert!(e.contains("ggml type 16"), "IQ types are refused by name: {e}");
    let e = parse_err(&with(TensorSpec { ty: GgmlType::Q4_0.id(), dims: vec![48], data: vec![0; 36], ..one() }));
    assert!(e.contains("block size"), "{e}");
    let e = parse_err(&with(TensorSpec { offset: Some(1 << 40), ..one() }));
    assert!(e.contains("past the end"), "{e}");
    let e = parse_err(&with(TensorSpec { offset: Some(u64::MAX - 31), ..one() }));
    assert!(e.contains("past the end"), "{e}");
    let e = parse_err(&with(TensorSpec { offset: Some(4), ..one() }));
    assert!(e.contains("alignment"), "{e}");
    let overlapping = gguf_bytes(
        3,
        &[],
        &[
            one(),
            TensorSpec { name: "u".into(), offset: Some(96), ..one() },
            TensorSpec { name: "v".into(), offset: Some(256), ..one() },
        ],
    );
    let e = parse_err(&overlapping);
    assert!(e.contains("\"t\"") && e.contains("\"u\"") && e.contains("overlap"), "{e}");
    let e = parse_err(&gguf_bytes(3, &[], &[one(), TensorSpec { offset: Some(256), ..one() }]));
    assert!(e.contains("twice"), "{e}");
}

#[test]
fn hostile_model_metadata_is_an_error_naming_the_key() {
    let check = |extra: &[(&'static str, GgufValue)], want: &str| {
        let tiny = tiny_model(3, extra);
        let path = temp_file(&tiny.bytes);
        let e = gguf::load(&path, &LoadOptions::default()).unwrap_err().to_string();
        std::fs::remove_file(&path).ok();
        assert!(e.contains(want), "want {want:?} in: {e}");
    };
    // Later keys can't override earlier ones (duplicates are refused), so give alternative keys.
    check(&[("tokenizer.ggml.padding_token_id", GgufValue::U32(99))], "tokenizer.ggml.padding_token_id");
    check(&[("llama.rope.scaling.type", s("su"))], "rope.scaling.type");
    check(
        &[("tokenizer.ggml.scores", GgufValue::Array(GgufValueType::F32, vec![GgufValue::F32(0.0)]))],
        "tokenizer.ggml.scores",
    );
    check(&[("llama.attention.key_length", GgufValue::U32(8))], "rope.dimension_count");

    let mut kvs = tiny_kvs();
    kvs.retain(|(k, _)| *k != "llama.embedding_length");
    let path = temp_file(&gguf_bytes(3, &kvs, &[]));
    let e = gguf::load(&path, &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("llama.embedding_length") && e.contains(&path.display().to_string()), "{e}");
    std::fs::remove_file(&path).ok();

    let mut kvs = tiny_kvs();
    kvs[0] = ("general.architecture", s("gpt2"));
    let path = temp_file(&gguf_bytes(3, &kvs, &[]));
    assert!(gguf::load(&path, &LoadOptions::default()).unwrap_err().to_string().contains("\"gpt2\""));
    std::fs::remove_file(&path).ok();

    // A tensor this model does not have.
    let tensors = vec![tensor("blk.0.attn_qkv.weight", &[32], GgmlType::F32, vec![0; 128])];
    let path = temp_file(&gguf_bytes(3, &tiny_kvs(), &tensors));
    assert!(gguf::load(&path, &LoadOptions::default()).unwrap_err().to_string().contains("blk.0.attn_qkv.weight"));
    std::fs::remove_file(&path).ok();
}

#[test]
fn sentencepiece_vocabulary_merges_from_scores_and_byte_fallback() {
    // <unk> <s> </s> ▁ a b ▁a ab ▁ab <0xC3> <0xA9>; merges come from scores (higher merges first).
    let tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab", "<0xC3>", "<0xA9>"];
    let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -0.5, 0.0, 0.0];
    let types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 6];
    let mut kvs = tiny_kvs();
    kvs.retain(|(k, _)| !k.starts_with("tokenizer."));
    kvs.extend([
        ("tokenizer.ggml.model", s("llama")),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.scores", GgufValue::Array(GgufValueType::F32, scores.map(GgufValue::F32).to_vec())),
        ("tokenizer.ggml.token_type", GgufValue::Array(GgufValueType::I32, types.map(GgufValue::I32).to_vec())),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
        ("tokenizer.ggml.unknown_token_id", GgufValue::U32(0)),
    ]);
    let meta = reader::parse(&gguf_bytes(3, &kvs, &[])).unwrap();
    let t = gguf::tokenizer::model_tokenizer(&meta).unwrap();
    assert_eq!(
        (t.bos_token.as_deref(), t.eos_token.as_deref(), t.unk_token.as_deref()),
        (Some("<s>"), Some("</s>"), Some("<unk>"))
    );
    let enc = |s: &str, special: bool| t.tokenizer.encode(s, special).unwrap().get_ids().to_vec();
    // "ab" -> "▁ab": ▁ab (score -0.5) is reachable through ▁ + ab or ▁a + b; BOS added by default for SentencePiece.
    assert_eq!(enc("ab", true), vec![1, 8]);
    assert_eq!(enc("ab", false), vec![8]);
    // é is not in the vocabulary: its UTF-8 bytes C3 A9 fall back to byte tokens.
    assert_eq!(enc("é", false), vec![3, 9, 10]);
    assert_eq!(t.tokenizer.decode(&[8, 3, 9, 10], true).unwrap(), "ab é");
}

/// GPT-2's byte -> printable character map (tokenizers' `bytes_char`).
fn byte_level_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return b as char;
    }
    let shifted = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + shifted).unwrap()
}

/// Each `tokenizer.ggml.pre` splits digits its own way: with merges 1+2, 3+4, 12+3 (in that priority) "1234" is
/// one GPT-2 word ([12, 34]), one digit per word for smollm / qwen2, and "123" + "4" for Llama 3's \p{N}{1,3}.
#[test]
fn gpt2_pre_tokenizers_split_digits_their_own_way() {
    let chars: Vec<String> = (0..=255u8).map(|b| byte_level_char(b).to_string()).collect();
    let mut tokens: Vec<&str> = chars.iter().map(String::as_str).collect();
    tokens.extend(["12", "34", "123"]);
    let ids = |pre: &str| -> Result<Vec<u32>, String> {
        let kvs = vec![
            ("general.architecture", s("llama")),
            ("tokenizer.ggml.model", s("gpt2")),
            ("tokenizer.ggml.pre", s(pre)),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.merges", strings(&["1 2", "3 4", "12 3"])),
        ];
        let meta = reader::parse(&gguf_bytes(3, &kvs, &[])).unwrap();
        let t = gguf::tokenizer::model_tokenizer(&meta).map_err(|e| e.to_string())?;
        Ok(t.tokenizer.encode("1234", false).unwrap().get_ids().to_vec())
    };
    let digit = |c: char| c as u32;
    for pre in ["default", "gpt2"] {
        assert_eq!(ids(pre).unwrap(), vec![256, 257], "{pre}");
    }
    for pre in ["smollm", "starcoder", "qwen2"] {
        assert_eq!(ids(pre).unwrap(), vec![digit('1'), digit('2'), digit('3'), digit('4')], "{pre}");
    }
    assert_eq!(ids("llama-bpe").unwrap(), vec![258, digit('4')]);
    let e = ids("tekken").unwrap_err();
    assert!(e.contains("tekken") && e.contains("llama-bpe"), "{e}");
}

// ---------------------------------------------------------------------------------------------------------------
// The real SmolLM2-135M-Instruct Q4_1 file against transformers' GGUF loader.
// ---------------------------------------------------------------------------------------------------------------


/// Loaded once for all SmolLM2 tests (about 0.5 GB of f32 weights).
fn smollm2() -> Option<&'static gguf::GgufModel> {
    static MODEL: OnceLock<Option<gguf::GgufModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = common::smollm2_gguf()?;
            let start = std::time::Instant::now();
            let m = gguf::load(&path, &LoadOptions::default()).unwrap();
            eprintln!("loaded {} in {:.2?}", path.display(), start.elapsed());
            Some(m)
        })
        .as_ref()
}

#[test]
fn smollm2_inspect_is_cheap_and_complete() {
    let Some(path) = common::smollm2_gguf() else { return };
    let meta = gguf::inspect(&path).unwrap();
    assert_eq!(meta.version, 3);
    assert_eq!(meta.tensors.len(), 272);
    assert_eq!(meta.architecture(), Some("llama"));
    assert_eq!(meta.tensor("token_embd.weight").unwrap().ggml_type, GgmlType::Q8_0);
    assert_eq!(meta.tensor("blk.0.attn_q.weight").unwrap().ggml_type, GgmlType::Q4_1);
    assert_eq!(meta.tensor("blk.0.attn_k.weight").unwrap().shape, vec![192, 576]);
}

#[test]
fn smollm2_config() {
    let Some(m) = smollm2() else { return };
    let c = &m.config;
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!((c.num_hidden_layers, c.hidden_size, c.intermediate_size), (30, 576, 1536));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (9, 3, 64));
    assert_eq!((c.vocab_size, c.max_position_embeddings), (49152, 8192));
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.rms_norm_eps as f32, 1e-5);
    assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice(), c.pad_token_id), (Some(1), &[2u32][..], Some(2)));
    assert_eq!(c.num_parameters(), 134_515_008);
}

#[test]
fn smollm2_tokenizer_matches_transformers() {
    let Some(m) = smollm2() else { return };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/smollm2_tokenizer.json");
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let t = &m.tokenizer;
    let ids_of = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let strings = golden["strings"].as_array().unwrap();
    for (s, want) in strings.iter().zip(golden["ids"].as_array().unwrap()) {
        let s = s.as_str().unwrap();
        let got = t.tokenizer.encode(s, false).unwrap().get_ids().to_vec();
        assert_eq!(got, ids_of(want), "{s:?}");
        assert_eq!(t.tokenizer.decode(&got, false).unwrap(), s, "decode round trip");
    }
    let prompt = golden["chat_prompt"].as_str().unwrap();
    assert_eq!(t.tokenizer.encode(prompt, false).unwrap().get_ids(), ids_of(&golden["chat_ids"]).as_slice());
    // SmolLM2 says add_bos_token = false: add_special_tokens must not change the ids.
    assert_eq!(t.tokenizer.encode(prompt, true).unwrap().get_ids(), ids_of(&golden["chat_ids"]).as_slice());
    assert_eq!(
        (t.bos_token.as_deref(), t.eos_token.as_deref(), t.pad_token.as_deref()),
        (Some("<|im_start|>"), Some("<|im_end|>"), Some("<|im_end|>"))
    );
    assert_eq!(t.add_bos_token, Some(false));
    assert!(t.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    assert_eq!(t.tokenizer.get_vocab_size(true), 49152);
}

#[test]
fn smollm2_weights_have_hf_names_shapes_and_transformers_values() {
    let Some(m) = smollm2() else { return };
    let c = &m.config;
    let w = &m.weights;
    let (h, i, kv) = (c.hidden_size, c.intermediate_size, c.num_key_value_heads * c.head_dim);
    let mut expected =
        vec![("model.embed_tokens.weight".to_string(), vec![c.vocab_size, h]), ("model.norm.weight".into(), vec![h])];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        expected.extend([
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            (format!("{p}.self_attn.q_proj.weight"), vec![h, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, h]),
            (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
        ]);
    }
    assert_eq!(w.len(), expected.len(), "{:?}", w.names().collect::<Vec<_>>());
    for (name, shape) in &expected {
        let t = w.get(name).unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        assert_eq!(t.dtype(), ferrotune_tensor::DType::F32);
    }

    let (golden, meta) = common::load_golden("smollm2_forward");
    let rows: usize = meta["rows"].parse().unwrap();
    let mut checked = 0;
    for (key, want) in &golden {
        let Some(name) = key.strip_prefix("w.").and_then(|k| k.strip_suffix(".rows")) else { continue };
        let t = w.get(name).unwrap_or_else(|| panic!("missing {name}"));
        let got = if t.rank() == 2 { t.narrow(0, 0, rows).unwrap() } else { t.unsqueeze(0).unwrap() };
        common::assert_close(name, &got, want, 1e-6, 1e-6);
        checked += 1;
    }
    assert!(checked >= 6, "fixture holds weight slices ({checked} found)");
}
