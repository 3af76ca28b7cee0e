//! RMSNorm, RoPE, SwiGLU, softmax and log-softmax against PyTorch / HF transformers 5.6.0
//! (goldens written by scripts/golden/ops_basic.py): outputs and input/weight gradients in f64, f32 and bf16,
//! and the RoPE frequency tables of every rope_type.

mod common;

use common::{assert_close, load_golden};
use ferrotune_tensor::ops::{self, RopeScaling, RopeTable};
use ferrotune_tensor::{DType, Tensor};
use serde_json::Value;
use std::collections::HashMap;

/// `|actual - expected| <= atol + rtol * |expected|`, with atol relative to the largest |expected| of the tensor
/// (bf16 errors scale with the operands, not with each output).
#[derive(Clone, Copy)]
struct Tolerance {
    atol_of_max: f64,
    rtol: f64,
}

fn check(what: &str, actual: &Tensor, expected: &Tensor, tol: Tolerance) {
    let max = expected.to_vec_f64().unwrap().iter().fold(0f64, |m, v| m.max(v.abs()));
    assert_eq!(actual.dtype(), expected.dtype(), "{what}: dtype");
    assert_close(what, actual, expected, tol.atol_of_max * max, tol.rtol);
}

fn scaling_from_hf(p: &Value) -> RopeScaling {
    let f = |k: &str| p[k].as_f64();
    let original = || p["original_max_position_embeddings"].as_u64().unwrap() as usize;
    match p["rope_type"].as_str().unwrap() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: f("factor").unwrap() },
        // HF's dynamic NTK measures growth against config.max_position_embeddings (see RopeScaling::Dynamic).
        "dynamic" => unreachable!("built by table_for, which knows max_position_embeddings"),
        "llama3" => RopeScaling::Llama3 {
            factor: f("factor").unwrap(),
            low_freq_factor: f("low_freq_factor").unwrap(),
            high_freq_factor: f("high_freq_factor").unwrap(),
            original_max_position_embeddings: original(),
        },
        "yarn" => RopeScaling::Yarn {
            factor: f("factor").unwrap(),
            original_max_position_embeddings: original(),
            beta_fast: f("beta_fast").unwrap_or(32.0),
            beta_slow: f("beta_slow").unwrap_or(1.0),
            mscale: f("mscale"),
            mscale_all_dim: f("mscale_all_dim"),
            attention_factor: f("attention_factor"),
        },
        other => panic!("rope_type {other} has no golden"),
    }
}

fn table_for(case: &Value) -> RopeTable {
    let p = &case["rope_parameters"];
    let max_pos = case["max_position_embeddings"].as_u64().unwrap() as usize;
    let scaling = if p["rope_type"] == "dynamic" {
        RopeScaling::Dynamic { factor: p["factor"].as_f64().unwrap(), original_max_position_embeddings: max_pos }
    } else {
        scaling_from_hf(p)
    };
    let head_dim = case["head_dim"].as_u64().unwrap() as usize;
    let seq_len = case["seq_len"].as_u64().unwrap() as usize;
    RopeTable::new(head_dim, p["rope_theta"].as_f64().unwrap(), &scaling, max_pos, seq_len).unwrap()
}

fn rope_cases() -> (HashMap<String, Tensor>, serde_json::Map<String, Value>) {
    let (tensors, meta) = load_golden("ops_basic_rope_tables");
    let cases: Value = serde_json::from_str(&meta["cases"]).unwrap();
    (tensors, cases.as_object().unwrap().clone())
}

#[test]
fn rope_tables_match_transformers() {
    let (g, cases) = rope_cases();
    assert_eq!(cases.len(), 8, "every rope_type variant of the generator is checked");
    for (name, case) in &cases {
        let table = table_for(case);
        let get = |k: &str| &g[&format!("{name}.{k}")];
        let inv_freq = Tensor::from_slice(table.inv_freq(), &[table.inv_freq().len()]).unwrap();
        // Same formulas in f64 on both sides; only libm's pow/ln rounding can differ (an ulp or two).
        assert_close(&format!("{name} inv_freq vs f64 transcription"), &inv_freq, get("inv_freq_f64"), 0.0, 1e-13);
        // HF evaluates in f32: base**(2i/dim) and the scaling arithmetic each round to 2^-24, a few ulps total.
        assert_close(&format!("{name} inv_freq vs HF f32"), &inv_freq, &get("hf_inv_freq").to_dtype(DType::F64).unwrap(), 0.0, 1e-6);
        let scaling = get("attention_scaling").to_vec_f64().unwrap()[0];
        assert!((table.attention_scaling() - scaling).abs() < 1e-14, "{name}: attention scaling");
        for (positions, cos, sin, atol) in [
            // The f32 table is the f64 value rounded once: 2^-24 * |value| <= 2^-24 * 1.5.
            ("f64_positions", "cos_f64", "sin_f64", 1e-7),
            // HF forms angles in f32 (inv_freq and position * inv_freq each rounded): at positions < 100 the
            // angle is off by up to 100 * 3 * 2^-24 = 1.8e-5, times attention scaling <= 1.5.
            ("hf_positions", "hf_cos", "hf_sin", 3e-5),
        ] {
            let rows = get(positions);
            let (want_cos, want_sin) = (get(cos).to_dtype(DType::F32).unwrap(), get(sin).to_dtype(DType::F32).unwrap());
            assert_close(&format!("{name} cos at {positions}"), &table.cos().index_select(rows).unwrap(), &want_cos, atol, 0.0);
            assert_close(&format!("{name} sin at {positions}"), &table.sin().index_select(rows).unwrap(), &want_sin, atol, 0.0);
        }
    }
}

/// Run every op of `ops_basic_<tag>` in `dtype` and compare outputs and gradients with PyTorch's.
fn check_ops(tag: &str, dtype: DType, tol: Tolerance) {
    let (g, meta) = load_golden(&format!("ops_basic_{tag}"));
    let get = |k: &str| -> &Tensor {
        let t = &g[k];
        assert_eq!(t.dtype(), dtype, "{k}: golden dtype");
        t
    };
    let cmp = |k: &str, actual: &Tensor| check(&format!("{tag} {k}"), actual, get(k), tol);

    let eps: f64 = meta["rms_norm.eps"].parse().unwrap();
    let (x, w, go) = (get("rms_norm.x"), get("rms_norm.weight"), get("rms_norm.grad_out"));
    cmp("rms_norm.y", &ops::rms_norm(x, w, eps).unwrap());
    let (gx, gw) = ops::rms_norm_backward(x, w, eps, go).unwrap();
    cmp("rms_norm.grad_x", &gx);
    cmp("rms_norm.grad_weight", &gw);

    let (_, cases) = rope_cases();
    let table = table_for(&cases[&meta["rope.case"]]);
    let (x, positions, go) = (get("rope.x"), &g["rope.positions"], get("rope.grad_out"));
    cmp("rope.y", &ops::rope(x, &table, positions).unwrap());
    cmp("rope.grad_x", &ops::rope_backward(go, &table, positions).unwrap());

    let (gate, up, go) = (get("swiglu.gate"), get("swiglu.up"), get("swiglu.grad_out"));
    cmp("swiglu.y", &ops::swiglu(gate, up).unwrap());
    let (gg, gu) = ops::swiglu_backward(gate, up, go).unwrap();
    cmp("swiglu.grad_gate", &gg);
    cmp("swiglu.grad_up", &gu);

    let (x, go) = (get("softmax.x"), get("softmax.grad_out"));
    let y = ops::softmax_last(x).unwrap();
    cmp("softmax.y", &y);
    cmp("softmax.grad_x", &ops::softmax_last_backward(&y, go).unwrap());

    let (x, go) = (get("log_softmax.x"), get("log_softmax.grad_out"));
    let y = ops::log_softmax_last(x).unwrap();
    cmp("log_softmax.y", &y);
    cmp("log_softmax.grad_x", &ops::log_softmax_last_backward(&y, go).unwrap());
}

// Tolerances. Observed worst cases (torch 2.15 CPU) are noted next to each bound.

/// Same formulas in f64 on both sides (the f64 goldens drop HF's f32 casts); only summation order and libm
/// differ. Observed: 7e-15 relative, 3e-16 of the largest element.
#[test]
fn ops_match_pytorch_f64() {
    check_ops("f64", DType::F64, Tolerance { atol_of_max: 1e-12, rtol: 1e-12 });
}

/// f32 rounding is 2^-24 = 6e-8 per operation; sums of up to 48 terms and HF's f32 RoPE angles (positions
/// <= 12, three roundings: 12 * 3 * 2^-24 = 2.1e-6 of the operands) bound the error by ~2e-6 of the largest
/// element; elements that cancel to near zero are covered by that absolute part. Observed: 1.6e-7 of the
/// largest element.
#[test]
fn ops_match_pytorch_f32() {
    check_ops("f32", DType::F32, Tolerance { atol_of_max: 2e-6, rtol: 1e-5 });
}

/// HF runs these ops natively in bf16, rounding intermediates (RMSNorm rounds the normalised value before the
/// weight multiply, RoPE rounds cos/sin to bf16, SwiGLU rounds silu(gate) before the product, autograd rounds
/// every gradient step); ferrotune computes in f32 and rounds once. bf16 keeps 8 significant bits, so one ulp
/// is 2^-8..2^-7 relative: rtol 2^-6 allows two ulps of each element, and atol one ulp (2^-7) of the largest
/// element covers outputs that cancel (x*cos - y*sin, the RMSNorm gradient's difference of terms).
/// Observed: 7.8e-3 relative on elements away from cancellation (one ulp), 5.0e-3 of the largest element.
#[test]
fn ops_match_pytorch_bf16() {
    check_ops("bf16", DType::BF16, Tolerance { atol_of_max: 2f64.powi(-7), rtol: 2f64.powi(-6) });
}
