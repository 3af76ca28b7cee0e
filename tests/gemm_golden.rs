//! Tensor::matmul (the packed GEMM underneath) against torch.matmul (tests/golden/gemm.safetensors, written by
//! scripts/golden/gemm.py; its docstring lists the cases). Transposed operands are passed as views, so they
//! reach the GEMM as strided inputs exactly as the backward pass produces them.
//!
//! Tolerances, per element, with S = (|A| @ |B|)_ij the sum of |a_ip * b_pj| and u the unit roundoff:
//! - f32: |ours - torch| <= 2 * k * u32 * S. Each side's f32 dot product, in whatever summation order its
//!   blocking chooses, is within k * u32 * S of the exact value (the standard bound for recursive summation
//!   with FMAs); the two may err in opposite directions, hence the factor 2.
//! - f64: the same bound with u64.
//! - bf16 (bf16 in, bf16 out): the inputs are exact in f32, both sides accumulate in f32 (the bound above) and
//!   round the result to bf16 once; two roundings of nearly equal values land at most one bf16 ulp apart, so
//!   2^-7 * |torch| on top of the f32 bound. The f32 product of the same bf16 inputs is checked at f32 tolerance.

mod common;

use common::load_golden;
use ferrotune_tensor::{DType, Tensor, UnaryOp};
use std::collections::HashMap;

fn get<'a>(t: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    t.get(key).unwrap_or_else(|| panic!("golden gemm: missing {key}"))
}

/// Assert `|actual - expected| <= rel * |expected| + abs_factor * (|a| @ |b|)` elementwise.
#[track_caller]
fn assert_within_bound(what: &str, actual: &Tensor, expected: &Tensor, a: &Tensor, b: &Tensor, abs_factor: f64, rel: f64) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    let abs = |t: &Tensor| t.to_dtype(DType::F64).unwrap().unary(UnaryOp::Abs).unwrap();
    let magnitude = abs(a).matmul(&abs(b)).unwrap().to_vec_f64().unwrap();
    let (got, want) = (actual.to_vec_f64().unwrap(), expected.to_vec_f64().unwrap());
    for (i, ((x, y), s)) in got.iter().zip(&want).zip(&magnitude).enumerate() {
        let tol = rel * y.abs() + abs_factor * s;
        assert!((x - y).abs() <= tol, "{what}: element {i} is {x}, torch says {y} (tolerance {tol:e})");
    }
}

const U32: f64 = f32::EPSILON as f64 / 2.0;
const U64: f64 = f64::EPSILON / 2.0;

#[test]
fn matmul_matches_torch() {
    let (t, _) = load_golden("gemm");

    let (a, b) = (get(&t, "nn.a"), get(&t, "nn.b"));
    assert_within_bound("nn f32", &a.matmul(b).unwrap(), get(&t, "nn.out"), a, b, 2.0 * 300.0 * U32, 0.0);

    let (a, bt) = (get(&t, "nt.a"), get(&t, "nt.bt"));
    let b = bt.t().unwrap();
    assert_within_bound("nt f32 (B transposed view)", &a.matmul(&b).unwrap(), get(&t, "nt.out"), a, &b, 2.0 * 50.0 * U32, 0.0);

    let (at, b) = (get(&t, "tn.at"), get(&t, "tn.b"));
    let a = at.t().unwrap();
    assert_within_bound("tn f32 (A transposed view)", &a.matmul(b).unwrap(), get(&t, "tn.out"), &a, b, 2.0 * 50.0 * U32, 0.0);

    let (a, b) = (get(&t, "batched.a"), get(&t, "batched.b"));
    let ours = a.matmul(b).unwrap();
    let expected = get(&t, "batched.out");
    for i in 0..2 {
        let (ai, oi, ei) = (a.narrow(0, i, 1).unwrap(), ours.narrow(0, i, 1).unwrap(), expected.narrow(0, i, 1).unwrap());
        let (ai, oi, ei) = (ai.squeeze(0).unwrap(), oi.squeeze(0).unwrap(), ei.squeeze(0).unwrap());
        assert_within_bound("batched f32", &oi, &ei, &ai, b, 2.0 * 31.0 * U32, 0.0);
    }

    let (a, b) = (get(&t, "f64.a"), get(&t, "f64.b"));
    assert_within_bound("f64", &a.matmul(b).unwrap(), get(&t, "f64.out"), a, b, 2.0 * 40.0 * U64, 0.0);
}

#[test]
fn bf16_matmul_matches_torch() {
    let (t, _) = load_golden("gemm");
    let (a, b) = (get(&t, "bf16.a"), get(&t, "bf16.b"));
    assert_eq!(a.dtype(), DType::BF16);
    let ours = a.matmul(b).unwrap();
    assert_eq!(ours.dtype(), DType::BF16, "a bf16 product stays bf16");
    assert_within_bound("bf16", &ours, get(&t, "bf16.out"), a, b, 2.0 * 64.0 * U32, 2f64.powi(-7));

    // The same bf16 inputs widened to f32: the GEMM widens while packing, so this is an f32-accurate product.
    let (a32, b32) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
    assert_within_bound("bf16 inputs, f32 product", &a32.matmul(&b32).unwrap(), get(&t, "bf16.out_f32"), a, b, 2.0 * 64.0 * U32, 0.0);
}
