//! Core tensor ops against PyTorch (tests/golden/tensor_ops.safetensors, written by
//! scripts/golden/tensor_ops.py).
//!
//! Tolerances, per dtype, and why:
//! - f64: atol 1e-14, rtol 1e-12. Both sides are correctly rounded or within an ulp or two of libm; 1e-12 is
//!   ~4500 f64 ulps, far below any real bug and above libm differences.
//! - f32: atol 1e-6, rtol 2e-6 (~16 f32 ulps). PyTorch's vectorised transcendental functions (SLEEF) are
//!   accurate to 1-3.5 ulps and Rust's libm to about 1; the sum of both errors fits with margin.
//! - bf16: atol 1e-2, rtol 2^-7 (2 bf16 ulps). Both compute in f32 and round once at the end; PyTorch rounds
//!   intermediate results of composite expressions (x * 0.5 + 1.25 is two bf16 ops there, one fused op here),
//!   so results may land on the neighbouring bf16 value.
//! - Reductions in f32: atol 1e-5: ferrotune accumulates sums in f64, PyTorch in f32 with pairwise summation;
//!   the f32 side is off by a few ulps of the partial sums.
//! - Casts and gathers: exact.

mod common;

use common::{assert_close, load_golden};
use ferrotune_tensor::{DType, Tensor, UnaryOp};

fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-14, 1e-12),
        DType::F32 => (1e-6, 2e-6),
        _ => (1e-2, 1.0 / 128.0),
    }
}

const DTYPES: [(DType, &str); 3] = [(DType::F64, "f64"), (DType::F32, "f32"), (DType::BF16, "bf16")];

#[test]
fn unary_ops_match_pytorch() {
    let (g, _) = load_golden("tensor_ops");
    let ops = [
        ("neg", UnaryOp::Neg, "x"),
        ("exp", UnaryOp::Exp, "x"),
        ("tanh", UnaryOp::Tanh, "x"),
        ("sin", UnaryOp::Sin, "x"),
        ("cos", UnaryOp::Cos, "x"),
        ("sigmoid", UnaryOp::Sigmoid, "x"),
        ("silu", UnaryOp::Silu, "x"),
        ("relu", UnaryOp::Relu, "x"),
        ("abs", UnaryOp::Abs, "x"),
        ("sqr", UnaryOp::Sqr, "x"),
        ("log", UnaryOp::Log, "pos"),
        ("sqrt", UnaryOp::Sqrt, "pos"),
        ("recip", UnaryOp::Recip, "pos"),
    ];
    for (dtype, tag) in DTYPES {
        let (atol, rtol) = tol(dtype);
        for (name, op, input) in ops {
            let x = g[input].to_dtype(dtype).unwrap();
            let y = x.unary(op).unwrap();
            assert_eq!(y.dtype(), dtype);
            assert_close(&format!("{name} {tag}"), &y, &g[&format!("unary.{name}.{tag}")], atol, rtol);
        }
        let pos = g["pos"].to_dtype(dtype).unwrap();
        assert_close(&format!("powf {tag}"), &pos.powf(1.7).unwrap(), &g[&format!("powf.{tag}")], atol, rtol);
        let x = g["x"].to_dtype(dtype).unwrap();
        assert_close(&format!("affine {tag}"), &x.affine(0.5, 1.25).unwrap(), &g[&format!("affine.{tag}")], atol, rtol);
    }
}

#[test]
fn broadcast_binary_ops_match_pytorch() {
    let (g, _) = load_golden("tensor_ops");
    for (dtype, tag) in DTYPES {
        let (atol, rtol) = tol(dtype);
        let a = g["a"].to_dtype(dtype).unwrap();
        let b = g["b"].to_dtype(dtype).unwrap();
        let divisor = b.unary(UnaryOp::Abs).unwrap().affine(1.0, 0.5).unwrap();
        let cases = [
            ("add", a.add(&b)),
            ("sub", a.sub(&b)),
            ("mul", a.mul(&b)),
            ("div", a.div(&divisor)),
            ("maximum", a.maximum(&b)),
            ("minimum", a.minimum(&b)),
        ];
        for (name, y) in cases {
            assert_close(&format!("{name} {tag}"), &y.unwrap(), &g[&format!("binary.{name}.{tag}")], atol, rtol);
        }
    }
}

#[test]
fn reductions_match_pytorch() {
    let (g, _) = load_golden("tensor_ops");
    let r = &g["r"];
    assert_close("sum over 0,2", &r.sum_keepdim(&[0, 2]).unwrap(), &g["reduce.sum_0_2"], 1e-5, 1e-6);
    assert_close("sum all", &r.sum_all().unwrap(), &g["reduce.sum_all"], 1e-5, 1e-6);
    assert_close("mean all", &r.mean_all().unwrap(), &g["reduce.mean_all"], 1e-6, 1e-6);
    assert_close("max over 1", &r.max_keepdim(1).unwrap(), &g["reduce.max_1"], 0.0, 0.0);
    let min = r.reduce_keepdim(&[2], ferrotune_tensor::ReduceOp::Min).unwrap();
    assert_close("min over 2", &min, &g["reduce.min_2"], 0.0, 0.0);
}

#[test]
fn layout_ops_match_pytorch() {
    let (g, _) = load_golden("tensor_ops");
    let r = &g["r"];
    assert_close("permute", &r.permute(&[2, 0, 1]).unwrap().contiguous().unwrap(), &g["layout.permute_201"], 0.0, 0.0);
    let narrowed = r.narrow(1, 1, 3).unwrap();
    assert!(narrowed.same_storage(r), "narrow must be a view");
    assert_close("narrow", &narrowed.contiguous().unwrap(), &g["layout.narrow_1_1_3"], 0.0, 0.0);
    let chained = r.transpose(0, 2).unwrap().narrow(0, 2, 4).unwrap().reshape(&[4, 15]).unwrap();
    assert_close("transpose+narrow+reshape", &chained, &g["layout.transpose_narrow_reshape"], 0.0, 0.0);
    let doubled = r.narrow(1, 0, 2).unwrap().scale(2.0).unwrap();
    assert_close("cat", &Tensor::cat(&[r, &doubled], 1).unwrap(), &g["layout.cat_1"], 0.0, 0.0);
}

#[test]
fn casts_round_like_pytorch() {
    let (g, _) = load_golden("tensor_ops");
    let src = &g["cast.src"];
    for (dtype, key) in [(DType::BF16, "cast.bf16"), (DType::F16, "cast.f16")] {
        let ours = src.to_dtype(dtype).unwrap();
        let theirs = &g[key];
        assert_eq!(ours.dtype(), theirs.dtype());
        let (a, b) = (ours.to_vec_f64().unwrap(), theirs.to_vec_f64().unwrap());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(x == y || (x.is_nan() && y.is_nan()), "{key}[{i}]: {x} vs {y} (source {})", src.to_vec_f64().unwrap()[i]);
        }
    }
}

#[test]
fn embedding_gather_and_scatter_add_match_pytorch() {
    let (g, _) = load_golden("tensor_ops");
    let (table, ids) = (&g["emb.table"], &g["emb.ids"]);
    assert_close("embedding", &table.index_select(ids).unwrap(), &g["emb.out"], 0.0, 0.0);
    let grad = g["emb.grad_out"].index_add_rows(ids, 10).unwrap();
    assert_close("embedding grad", &grad, &g["emb.grad_table"], 1e-15, 1e-15);
    let bad_ids = Tensor::from_vec(vec![10i64], &[1]).unwrap();
    let err = table.index_select(&bad_ids).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
}
