//! Helpers shared by the integration tests: golden files written by PyTorch (scripts/golden/*.py) and
//! tolerance checks that say which element failed.
#![allow(dead_code)]

use ferrotune_tensor::{DType, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.safetensors"))
}

/// Every tensor of `tests/golden/<name>.safetensors`, plus its string metadata.
pub fn load_golden(name: &str) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let path = golden_path(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; regenerate with scripts/golden/", path.display()));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("golden header");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("golden file");
    let mut out = HashMap::new();
    for (key, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            safetensors::Dtype::F64 => Tensor::from_vec(cast::<f64, 8>(data, f64::from_le_bytes), &shape),
            safetensors::Dtype::F32 => Tensor::from_vec(cast::<f32, 4>(data, f32::from_le_bytes), &shape),
            safetensors::Dtype::I64 => Tensor::from_vec(cast::<i64, 8>(data, i64::from_le_bytes), &shape),
            safetensors::Dtype::I32 => Tensor::from_vec(cast::<i32, 4>(data, i32::from_le_bytes), &shape),
            safetensors::Dtype::BF16 => Tensor::from_vec(
                cast::<u16, 2>(data, u16::from_le_bytes).into_iter().map(ferrotune_tensor::bf16::from_bits).collect(),
                &shape,
            ),
            safetensors::Dtype::F16 => Tensor::from_vec(
                cast::<u16, 2>(data, u16::from_le_bytes).into_iter().map(ferrotune_tensor::f16::from_bits).collect(),
                &shape,
            ),
            other => panic!("golden {name}: tensor {key} has unsupported dtype {other:?}"),
        }
        .unwrap();
        out.insert(key, t);
    }
    let meta = meta.metadata().clone().unwrap_or_default();
    (out, meta)
}

fn cast<T, const N: usize>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|c| f(c.try_into().unwrap())).collect()
}

/// Assert `|actual - expected| <= atol + rtol * |expected|` elementwise, naming the worst element on failure.
#[track_caller]
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    let a = actual.to_vec_f64().unwrap();
    let e = expected.to_vec_f64().unwrap();
    let mut worst = (0usize, 0.0f64);
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        let excess = (x - y).abs() - (atol + rtol * y.abs());
        if !(excess <= worst.1) && (excess > 0.0 || x.is_nan() != y.is_nan()) {
            worst = (i, if excess.is_nan() { f64::INFINITY } else { excess });
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!("{what}: element {i} is {} but expected {} (atol {atol}, rtol {rtol}); shape {:?}", a[i], e[i], actual.shape());
    }
}

/// Convert a golden tensor to the dtype under test.
pub fn as_dtype(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap()
}

/// What a test that needs a downloaded model or dataset does when it is missing: skip with `msg` (a line on
/// stderr), or fail when FERROTUNE_REQUIRE_MODELS=1 (CI sets it, so CI cannot skip the real-model checks).
pub fn skip_or_fail(msg: &str) {
    if std::env::var("FERROTUNE_REQUIRE_MODELS").as_deref() == Ok("1") {
        panic!("{msg} (FERROTUNE_REQUIRE_MODELS=1)");
    }
    eprintln!("skipping: {msg}");
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF: FERROTUNE_SMOLLM2_GGUF, else `.cache/models/` where
/// scripts/fetch-smollm2.sh puts it; `None` when absent (see [`skip_or_fail`]).
pub fn smollm2_gguf() -> Option<PathBuf> {
    let path = std::env::var_os("FERROTUNE_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if path.is_file() {
        return Some(path);
    }
    skip_or_fail(&format!(
        "SmolLM2 GGUF not found at {}: run scripts/fetch-smollm2.sh (or set FERROTUNE_SMOLLM2_GGUF)",
        path.display()
    ));
    None
}
