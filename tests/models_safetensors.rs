//! safetensors: round trips for every dtype (byte-identical to the `safetensors` crate's writer, readable by its
//! reader), hostile files that must fail with an error naming the file and tensor (never a panic or a huge
//! allocation), sharded HF folders, `save_hf_folder` -> `load_model`, and (ignored, run by hand) the peak RSS of
//! loading a 135M-parameter f32 model.

use ferrotune_models::hub::HubOptions;
use ferrotune_models::loader::{load_model, save_hf_folder};
use ferrotune_models::safetensors::{load_hf_weights, load_safetensors, save_hf_weights, save_safetensors, SafetensorsFile};
use ferrotune_models::{LoadOptions, ModelConfig, ModelTokenizer, WeightDType, WeightMap};
use ferrotune_tensor::{DType, Tensor};
use half::{bf16, f16};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrotune-st-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One tensor of every dtype ferrotune writes, including a scalar and an empty tensor.
fn every_dtype() -> Vec<(String, Tensor)> {
    let values: Vec<f64> = (0..24).map(|i| (i as f64 - 11.5) * 0.37).collect();
    vec![
        ("f32".into(), Tensor::from_vec(values.iter().map(|&x| x as f32).collect::<Vec<_>>(), &[2, 3, 4]).unwrap()),
        ("f64".into(), Tensor::from_vec(values.clone(), &[4, 6]).unwrap()),
        ("bf16".into(), Tensor::from_vec(values.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>(), &[24]).unwrap()),
        ("f16".into(), Tensor::from_vec(values.iter().map(|&x| f16::from_f64(x)).collect::<Vec<_>>(), &[3, 8]).unwrap()),
        ("i32".into(), Tensor::from_vec((0..6).map(|i| i * -7).collect::<Vec<i32>>(), &[6]).unwrap()),
        ("i64".into(), Tensor::from_vec(vec![i64::MIN, -1, 0, i64::MAX], &[2, 2]).unwrap()),
        ("u8".into(), Tensor::from_vec((0..10u8).collect::<Vec<_>>(), &[10]).unwrap()),
        ("scalar".into(), Tensor::scalar(3.5f32)),
        ("empty".into(), Tensor::from_vec(Vec::<f32>::new(), &[0, 5]).unwrap()),
    ]
}

fn as_refs(tensors: &[(String, Tensor)]) -> Vec<(&str, &Tensor)> {
    tensors.iter().map(|(n, t)| (n.as_str(), t)).collect()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == b.dtype() && a.shape() == b.shape() && a.to_vec_f64().unwrap() == b.to_vec_f64().unwrap()
}

/// The safetensors crate's view of a tensor.
struct View<'a>(&'a Tensor, Vec<u8>);

impl safetensors::View for &View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.0.dtype() {
            DType::F32 => safetensors::Dtype::F32,
            DType::F64 => safetensors::Dtype::F64,
            DType::BF16 => safetensors::Dtype::BF16,
            DType::F16 => safetensors::Dtype::F16,
            DType::I32 => safetensors::Dtype::I32,
            DType::I64 => safetensors::Dtype::I64,
            DType::U8 => safetensors::Dtype::U8,
        }
    }
    fn shape(&self) -> &[usize] {
        self.0.shape()
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.1)
    }
    fn data_len(&self) -> usize {
        self.1.len()
    }
}

fn le_bytes(t: &Tensor) -> Vec<u8> {
    match t.dtype() {
        DType::F32 => t.to_vec::<f32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F64 => t.to_vec::<f64>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec::<bf16>().unwrap().iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        DType::F16 => t.to_vec::<f16>().unwrap().iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        DType::I32 => t.to_vec::<i32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::I64 => t.to_vec::<i64>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::U8 => t.to_vec::<u8>().unwrap(),
    }
}

#[test]
fn round_trip_every_dtype_byte_identical_to_the_safetensors_crate() {
    let dir = scratch_dir("roundtrip");
    let tensors = every_dtype();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string()), ("note".to_string(), "a \"quoted\" ü".to_string())]);
    let path = dir.join("all.safetensors");
    save_safetensors(&path, &as_refs(&tensors), Some(&metadata)).unwrap();

    // Our reader gives back every tensor exactly, in its own dtype.
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.metadata(), &metadata);
    assert_eq!(file.tensors().len(), tensors.len());
    for (name, t) in &tensors {
        let back = file.read(name, None).unwrap();
        assert!(same(&back, t), "{name}: {back:?} vs {t:?}");
    }

    // The safetensors crate writes the very same bytes...
    let views: Vec<(String, View)> = tensors.iter().map(|(n, t)| (n.clone(), View(t, le_bytes(t)))).collect();
    let theirs = safetensors::serialize(
        views.iter().map(|(n, v)| (n.as_str(), v)),
        Some(metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>()),
    )
    .unwrap();
    let ours = std::fs::read(&path).unwrap();
    // (metadata is a HashMap there, so with two keys compare header structure and data rather than raw bytes)
    let (their_len, their_meta) = safetensors::SafeTensors::read_metadata(&theirs).unwrap();
    let (our_len, our_meta) = safetensors::SafeTensors::read_metadata(&ours).unwrap();
    assert_eq!(their_len, our_len, "same padded header length");
    assert_eq!(their_meta.offset_keys(), our_meta.offset_keys(), "same tensor order");
    assert_eq!(&theirs[8 + their_len..], &ours[8 + our_len..], "same data bytes");
    // ...and byte for byte with a single metadata key (no map ordering in play).
    let one = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(&path, &as_refs(&tensors), Some(&one)).unwrap();
    let theirs = safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), Some(HashMap::from([("format".into(), "pt".into())]))).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), theirs, "byte-identical file");

    // ...and its reader reads ours.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, t) in &tensors {
        let view = st.tensor(name).unwrap();
        assert_eq!(view.shape(), t.shape(), "{name}");
        assert_eq!(view.data(), le_bytes(t).as_slice(), "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn narrow_integer_types_from_the_safetensors_crate_widen() {
    let dir = scratch_dir("narrow");
    let path = dir.join("narrow.safetensors");
    let i8s: Vec<u8> = [-128i8, -1, 0, 127].iter().map(|&x| x as u8).collect();
    let i16s: Vec<u8> = [-32768i16, 5].iter().flat_map(|x| x.to_le_bytes()).collect();
    let u16s: Vec<u8> = [65535u16, 1].iter().flat_map(|x| x.to_le_bytes()).collect();
    let u32s: Vec<u8> = [u32::MAX].iter().flat_map(|x| x.to_le_bytes()).collect();
    let bools = vec![1u8, 0, 1];
    let data = [
        ("i8", safetensors::Dtype::I8, vec![4], &i8s),
        ("i16", safetensors::Dtype::I16, vec![2], &i16s),
        ("u16", safetensors::Dtype::U16, vec![2], &u16s),
        ("u32", safetensors::Dtype::U32, vec![1], &u32s),
        ("bool", safetensors::Dtype::BOOL, vec![3], &bools),
    ];
    let views: Vec<(&str, safetensors::tensor::TensorView)> =
        data.iter().map(|(n, d, s, b)| (*n, safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    let read = |n: &str| file.read(n, Some(DType::F32)).unwrap();
    assert_eq!(read("i8").to_vec::<i32>().unwrap(), vec![-128, -1, 0, 127]);
    assert_eq!(read("i16").to_vec::<i32>().unwrap(), vec![-32768, 5]);
    assert_eq!(read("u16").to_vec::<i32>().unwrap(), vec![65535, 1]);
    assert_eq!(read("u32").to_vec::<i64>().unwrap(), vec![u32::MAX as i64]);
    assert_eq!(read("bool").to_vec::<u8>().unwrap(), vec![1, 0, 1]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn float_tensors_convert_to_the_requested_dtype() {
    let dir = scratch_dir("convert");
    let path = dir.join("c.safetensors");
    let tensors = every_dtype();
    save_safetensors(&path, &as_refs(&tensors), None).unwrap();
    let as_f32 = load_safetensors(&path, &LoadOptions { dtype: WeightDType::F32 }).unwrap();
    let as_bf16 = load_safetensors(&path, &LoadOptions { dtype: WeightDType::BF16 }).unwrap();
    for (name, t) in &tensors {
        let (a, b) = (as_f32.get(name).unwrap(), as_bf16.get(name).unwrap());
        if t.dtype().is_float() {
            assert_eq!((a.dtype(), b.dtype()), (DType::F32, DType::BF16), "{name}");
            // One rounding from the stored value, whatever the source dtype.
            let want_f32: Vec<f64> = t.to_vec_f64().unwrap().iter().map(|&x| x as f32 as f64).collect();
            let want_bf16: Vec<f64> = t.to_vec_f64().unwrap().iter().map(|&x| bf16::from_f64(x).to_f64()).collect();
            assert_eq!(a.to_vec_f64().unwrap(), want_f32, "{name}");
            assert_eq!(b.to_vec_f64().unwrap(), want_bf16, "{name}");
        } else {
            assert!(same(a, t) && same(b, t), "{name}: integer tensors keep their dtype");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- hostile files ------------------------------------------------------------------------------------------

/// A file made of an explicit 8-byte header length, header bytes and data bytes.
fn raw_file(dir: &Path, name: &str, header_len: u64, header: &[u8], data: &[u8]) -> PathBuf {
    let path = dir.join(format!("{name}.safetensors"));
    let mut bytes = header_len.to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(data);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn with_header(dir: &Path, name: &str, header: &str, data_len: usize) -> PathBuf {
    raw_file(dir, name, header.len() as u64, header.as_bytes(), &vec![0u8; data_len])
}

/// Opening must fail, the message must name the file and contain every `expected` fragment.
fn rejects(path: &Path, expected: &[&str]) {
    let result = std::panic::catch_unwind(|| SafetensorsFile::open(path));
    let Ok(result) = result else { panic!("{}: the reader panicked", path.display()) };
    let e = result.expect_err(&format!("{} must be rejected", path.display())).to_string();
    assert!(e.contains(&path.display().to_string()), "error does not name the file: {e}");
    for want in expected {
        assert!(e.contains(want), "error lacks {want:?}: {e}");
    }
    // load_safetensors reports the same.
    assert!(load_safetensors(path, &LoadOptions::default()).is_err());
}

#[test]
fn hostile_files_are_errors_naming_file_and_tensor() {
    let dir = scratch_dir("hostile");
    let f32_entry = |name: &str, shape: &str, begin: u64, end: u64| {
        format!(r#""{name}":{{"dtype":"F32","shape":{shape},"data_offsets":[{begin},{end}]}}"#)
    };

    std::fs::write(dir.join("empty.safetensors"), b"").unwrap();
    rejects(&dir.join("empty.safetensors"), &["too short"]);
    rejects(&raw_file(&dir, "len_past_end", 1000, b"{}", b""), &["past the end"]);
    rejects(&raw_file(&dir, "len_2_63", 1u64 << 63, b"{}", b""), &["exceeds"]);
    rejects(&raw_file(&dir, "len_max", u64::MAX, b"{}", b""), &["exceeds"]);
    rejects(&with_header(&dir, "not_json", "{\"a\": nope}", 0), &["not valid JSON"]);
    rejects(&with_header(&dir, "not_object", "[1, 2, 3]", 0), &["start with"]);
    rejects(&raw_file(&dir, "not_utf8", 4, b"{\"\xff}", b""), &["UTF-8"]);
    rejects(&with_header(&dir, "overlap", &format!("{{{},{}}}", f32_entry("a", "[4]", 0, 16), f32_entry("b", "[4]", 8, 24)), 24), &["\"b\"", "overlap", "\"a\""]);
    rejects(&with_header(&dir, "past_eof", &format!("{{{}}}", f32_entry("w", "[4]", 0, 16)), 8), &["\"w\"", "past the end"]);
    rejects(
        &with_header(&dir, "shape_overflow", &format!("{{{}}}", f32_entry("huge", "[4294967296,4294967296,4294967296]", 0, 16)), 16),
        &["\"huge\"", "overflows"],
    );
    rejects(
        &with_header(&dir, "shape_overflow_bytes", &format!("{{{}}}", f32_entry("huge", "[4611686018427387904]", 0, 16)), 16),
        &["\"huge\"", "overflows"],
    );
    rejects(&with_header(&dir, "size_mismatch", &format!("{{{}}}", f32_entry("m", "[2,2]", 0, 8)), 8), &["\"m\"", "needs 16"]);
    rejects(
        &with_header(&dir, "reversed", &format!("{{{}}}", f32_entry("r", "[2]", 8, 0)), 8),
        &["\"r\""],
    );
    rejects(
        &with_header(&dir, "unknown_dtype", r#"{"q":{"dtype":"Q4","shape":[2],"data_offsets":[0,1]}}"#, 1),
        &["\"q\"", "unknown dtype \"Q4\""],
    );
    rejects(
        &with_header(&dir, "fp8_dtype", r#"{"q":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}"#, 2),
        &["\"q\"", "F8_E4M3", "cannot load"],
    );
    rejects(&with_header(&dir, "duplicate", &format!("{{{},{}}}", f32_entry("d", "[1]", 0, 4), f32_entry("d", "[1]", 4, 8)), 8), &["\"d\"", "twice"]);
    rejects(&with_header(&dir, "gap", &format!("{{{}}}", f32_entry("g", "[1]", 4, 8)), 8), &["\"g\"", "gap"]);
    rejects(&with_header(&dir, "trailing", &format!("{{{}}}", f32_entry("t", "[1]", 0, 4)), 12), &["not covered"]);
    rejects(&with_header(&dir, "negative", r#"{"n":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, 4), &["\"n\"", "shape"]);
    rejects(&with_header(&dir, "bad_metadata", r#"{"__metadata__":{"k":1}}"#, 0), &["__metadata__"]);
    rejects(&with_header(&dir, "missing_offsets", r#"{"x":{"dtype":"F32","shape":[1]}}"#, 4), &["\"x\"", "data_offsets"]);

    // Sanity: the header layout used above is valid when the numbers are right.
    let ok = with_header(&dir, "ok", &format!("{{{},{}}}", f32_entry("a", "[2]", 0, 8), f32_entry("b", "[]", 8, 12)), 12);
    let file = SafetensorsFile::open(&ok).unwrap();
    assert_eq!(file.read("b", None).unwrap().shape(), &[] as &[usize]);
    let e = file.read("zzz", None).unwrap_err().to_string();
    assert!(e.contains("zzz") && e.contains("ok.safetensors"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- sharded folders, save_hf_folder -> load_model ----------------------------------------------------------

fn tiny_config(tied: bool) -> ModelConfig {
    ModelConfig::from_hf_json(&json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 700, "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied,
        "bos_token_id": 0, "eos_token_id": 3, "hidden_act": "silu"
    }))
    .unwrap()
}

/// HF-named random weights for `config` (plus lm_head even when tied, to check it is dropped).
fn random_weights(config: &ModelConfig, dtype: DType) -> WeightMap {
    let h = config.hidden_size;
    let (q, kv, inter) = (config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim, config.intermediate_size);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![config.vocab_size, h]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![config.vocab_size, h]),
    ];
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![inter, h]),
            ("mlp.up_proj.weight", vec![inter, h]),
            ("mlp.down_proj.weight", vec![h, inter]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            shapes.push((format!("{p}.{n}"), s));
        }
    }
    let mut weights = WeightMap::new("random");
    for (i, (name, shape)) in shapes.into_iter().enumerate() {
        weights.insert(name, Tensor::randn(i as u64 + 1, &shape, 0.0, 0.02, dtype).unwrap()).unwrap();
    }
    weights
}

#[test]
fn sharded_folder_round_trip_and_missing_shard() {
    let dir = scratch_dir("sharded");
    let config = tiny_config(false);
    let weights = random_weights(&config, DType::F32);
    let tensors: Vec<(&str, &Tensor)> = weights.iter().collect();
    // ~45 kB per embedding: a 50 kB limit forces several shards.
    let written = save_hf_weights(&dir, &tensors, 50_000).unwrap();
    assert!(written.len() > 3, "{written:?}");
    assert!(dir.join("model.safetensors.index.json").is_file() && !dir.join("model.safetensors").exists());
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
    let total: usize = weights.iter().map(|(_, t)| t.elem_count() * 4).sum();
    assert_eq!(index["metadata"]["total_size"], json!(total));
    // Tensors fill shards in name order: lm_head first, the embeddings do not fit next to it.
    let shards = written.len() - 1;
    assert_eq!(index["weight_map"]["lm_head.weight"], json!(format!("model-00001-of-{shards:05}.safetensors")));
    assert_eq!(index["weight_map"]["model.embed_tokens.weight"], json!(format!("model-00002-of-{shards:05}.safetensors")));

    let loaded = load_hf_weights(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.len(), weights.len());
    for (name, t) in weights.iter() {
        assert!(same(loaded.get(name).unwrap(), t), "{name}");
    }

    // Re-saving below the limit replaces the shards with one file (no stale index left behind).
    save_hf_weights(&dir, &tensors, u64::MAX).unwrap();
    assert!(dir.join("model.safetensors").is_file() && !dir.join("model.safetensors.index.json").exists());
    assert!(!dir.join("model-00001-of-00002.safetensors").exists());

    save_hf_weights(&dir, &tensors, 50_000).unwrap();
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
    let victim = dir.join(index["weight_map"]["model.norm.weight"].as_str().unwrap());
    std::fs::remove_file(&victim).unwrap();
    let e = load_hf_weights(&dir, &LoadOptions::default()).unwrap_err().to_string();
    let victim_name = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(e.contains(&victim_name) && e.contains("model.safetensors.index.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn save_hf_folder_round_trips_through_load_model() {
    let tokenizer_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers/bytelevel_bpe");
    let tokenizer = ModelTokenizer::from_folder(&tokenizer_dir).unwrap();
    for (tied, dtype, load_dtype) in [(true, DType::F32, WeightDType::F32), (false, DType::BF16, WeightDType::BF16)] {
        let dir = scratch_dir(&format!("hf-folder-{tied}"));
        let config = tiny_config(tied);
        let weights = random_weights(&config, dtype);
        let generation = json!({"bos_token_id": 0, "eos_token_id": [3, 1], "do_sample": true, "temperature": 0.7});
        save_hf_folder(&dir, &config, &weights, Some(&tokenizer), Some(&generation)).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
            assert!(dir.join(file).is_file(), "{file} written");
        }
        let file = SafetensorsFile::open(&dir.join("model.safetensors")).unwrap();
        assert_eq!(file.metadata().get("format").map(String::as_str), Some("pt"), "transformers needs format=pt");

        let loaded = load_model(dir.to_str().unwrap(), &LoadOptions { dtype: load_dtype }, &HubOptions::default()).unwrap();
        let mut want_config = config.clone();
        want_config.torch_dtype = Some(if dtype == DType::BF16 { "bfloat16" } else { "float32" }.into());
        assert_eq!(loaded.config, want_config);
        assert_eq!(loaded.source, dir);
        assert_eq!(loaded.generation_config, Some(generation));
        assert_eq!(loaded.weights.contains("lm_head.weight"), !tied, "lm_head is dropped exactly when tied");
        assert_eq!(loaded.weights.len(), weights.len() - usize::from(tied));
        for (name, t) in loaded.weights.iter() {
            assert!(same(t, weights.get(name).unwrap()), "{name}");
        }
        let tok = loaded.tokenizer.expect("tokenizer saved and loaded");
        assert_eq!(tok.chat_template, tokenizer.chat_template);
        assert_eq!(tok.encode("Hello world!", true).unwrap(), tokenizer.encode("Hello world!", true).unwrap());
        // FERROTUNE_KEEP_HF_FOLDER=<dir> keeps the folders, to load them with transformers by hand.
        match std::env::var_os("FERROTUNE_KEEP_HF_FOLDER") {
            Some(keep) => {
                let kept = PathBuf::from(keep).join(format!("tied-{tied}"));
                let _ = std::fs::remove_dir_all(&kept);
                std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
                std::fs::rename(&dir, &kept).unwrap();
            }
            None => {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

#[test]
fn load_model_explains_what_it_could_not_find() {
    let hub = HubOptions { offline: true, cache_dir: Some(scratch_dir("nohub")), ..HubOptions::default() };
    let e = load_model("/definitely/not/here", &LoadOptions::default(), &hub).unwrap_err().to_string();
    assert!(e.contains("not an existing file or folder") && e.contains("hub id"), "{e}");
    let e = load_model("no-such-model-dir", &LoadOptions::default(), &hub).unwrap_err().to_string();
    assert!(e.contains("not an existing file or folder"), "{e}");

    let dir = scratch_dir("two-ggufs");
    std::fs::write(dir.join("a.gguf"), b"x").unwrap();
    std::fs::write(dir.join("b.gguf"), b"x").unwrap();
    let e = load_model(dir.to_str().unwrap(), &LoadOptions::default(), &hub).unwrap_err().to_string();
    assert!(e.contains("a.gguf") && e.contains("b.gguf"), "{e}");
    std::fs::remove_file(dir.join("b.gguf")).unwrap();
    // One .gguf in the folder: it is handed to the GGUF reader, which rejects this one-byte file.
    let e = load_model(dir.to_str().unwrap(), &LoadOptions::default(), &hub).unwrap_err().to_string();
    assert!(e.contains("a.gguf"), "{e}");
    std::fs::write(dir.join("w.safetensors"), b"x").unwrap();
    let e = load_model(dir.join("w.safetensors").to_str().unwrap(), &LoadOptions::default(), &hub).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- peak memory of a 135M f32 load (run by hand) -----------------------------------------------------------

fn rss_model_path() -> PathBuf {
    std::env::var_os("FERROTUNE_RSS_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ferrotune-smollm2-135m-random-f32.safetensors"))
}

/// Writes a random f32 checkpoint with SmolLM2-135M's shapes (538 MB) for `peak_rss_loading_135m_f32`.
#[test]
#[ignore = "writes a 538 MB file; run by peak_rss_loading_135m_f32"]
fn write_135m_f32_checkpoint() {
    let config = ModelConfig::from_hf_json(&json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": true
    }))
    .unwrap();
    let mut weights = random_weights(&config, DType::F32);
    weights.take("lm_head.weight", &[49152, 576]).unwrap();
    let tensors: Vec<(&str, &Tensor)> = weights.iter().collect();
    save_safetensors(&rss_model_path(), &tensors, None).unwrap();
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

/// `cargo test --release --test models_safetensors -- --ignored peak_rss --nocapture`: the file is written by a
/// child process so this process's peak RSS is the load alone.
#[test]
#[ignore = "needs ~1.6 GB of disk and memory; run by hand"]
fn peak_rss_loading_135m_f32() {
    let path = rss_model_path();
    if !path.is_file() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "write_135m_f32_checkpoint"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let file_bytes = std::fs::metadata(&path).unwrap().len();
    let before = peak_rss_kib();
    let started = std::time::Instant::now();
    let weights = load_safetensors(&path, &LoadOptions::default()).unwrap();
    let elapsed = started.elapsed();
    let peak = peak_rss_kib();
    println!(
        "loaded {} tensors, {} bytes (file {file_bytes}) in {elapsed:.2?}; peak RSS {:.0} MiB (before load {:.0} MiB)",
        weights.len(),
        weights.nbytes(),
        peak as f64 / 1024.0,
        before as f64 / 1024.0
    );
    assert!(peak * 1024 < 1 << 30, "peak RSS {peak} KiB must stay under 1 GiB for a 538 MB model");
}
