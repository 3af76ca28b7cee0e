//! Every basic op's backward against central finite differences in f64.
//!
//! Tolerance: relative error 1e-6 (`|analytic - numeric| / max(1, |numeric|)`). With h = 1e-6 in f64 the central
//! difference has truncation error ~h^2 * f''' ~ 1e-12 and rounding error ~eps * |f| / h ~ 1e-10, so 1e-6
//! leaves four orders of margin while still catching any wrong term (those show up at 1e-2 or worse).

use ferrotune_autograd::{check_gradients, Var};
use ferrotune_tensor::{DType, Result, Tensor, UnaryOp};

const H: f64 = 1e-6;
const TOL: f64 = 1e-6;

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    Tensor::randn(seed, shape, 0.0, 1.0, DType::F64).unwrap()
}

/// Values in [lo, hi): for ops defined only on part of the line (log, sqrt) or with kinks (abs, relu at 0).
fn uniform(seed: u64, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    Tensor::rand_uniform(seed, shape, lo, hi, DType::F64).unwrap()
}

#[track_caller]
fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Var]) -> Result<Var>) {
    let report = check_gradients(inputs, H, f).unwrap();
    assert!(report.max_error < TOL, "{name}: gradient mismatch {report:?}");
}

#[test]
fn binary_ops_with_broadcasting() {
    let a = randn(1, &[2, 3, 4]);
    let b = randn(2, &[3, 1]);
    check("add", &[a.clone(), b.clone()], |v| v[0].add(&v[1]));
    check("sub", &[a.clone(), b.clone()], |v| v[0].sub(&v[1]));
    check("mul", &[a.clone(), b.clone()], |v| v[0].mul(&v[1]));
    let away_from_zero = uniform(3, &[3, 1], 0.5, 2.0);
    check("div", &[a.clone(), away_from_zero], |v| v[0].div(&v[1]));
    check("affine", &[a.clone()], |v| v[0].affine(-1.5, 0.25));
}

#[test]
fn unary_ops() {
    let x = randn(4, &[3, 5]);
    let positive = uniform(5, &[3, 5], 0.2, 3.0);
    // Kinked ops are checked away from the kink, where the derivative is defined.
    let off_kink = uniform(6, &[3, 5], 0.1, 1.0).mul(&Tensor::from_vec(vec![1.0f64, -1.0, 1.0, -1.0, 1.0], &[5]).unwrap()).unwrap();
    for op in [UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Sqr, UnaryOp::Tanh, UnaryOp::Sin, UnaryOp::Cos, UnaryOp::Sigmoid, UnaryOp::Silu] {
        check(&format!("{op:?}"), &[x.clone()], move |v| v[0].unary(op));
    }
    for op in [UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Recip] {
        check(&format!("{op:?}"), &[positive.clone()], move |v| v[0].unary(op));
    }
    for op in [UnaryOp::Abs, UnaryOp::Relu] {
        check(&format!("{op:?}"), &[off_kink.clone()], move |v| v[0].unary(op));
    }
    check("powf", &[positive.clone()], |v| v[0].powf(1.7));
}

#[test]
fn matmul_batched_shared_and_transposed() {
    let a = randn(7, &[2, 3, 4]);
    let b = randn(8, &[2, 4, 5]);
    let w = randn(9, &[4, 5]);
    check("bmm", &[a.clone(), b], |v| v[0].matmul(&v[1]));
    check("matmul shared rhs", &[a.clone(), w.clone()], |v| v[0].matmul(&v[1]));
    // x W^T with W stored [out, in], as every Linear layer does.
    let w_out_in = randn(10, &[5, 4]);
    check("matmul transposed rhs", &[a, w_out_in], |v| v[0].matmul(&v[1].t()?));
}

#[test]
fn shape_ops() {
    let x = randn(11, &[2, 3, 4]);
    check("reshape", &[x.clone()], |v| v[0].reshape(&[6, 4])?.mul(&v[0].reshape(&[6, 4])?));
    check("transpose", &[x.clone()], |v| v[0].transpose(0, 2)?.contiguous());
    check("permute", &[x.clone()], |v| v[0].permute(&[2, 0, 1])?.sqr());
    check("narrow", &[x.clone()], |v| v[0].narrow(1, 1, 2)?.sqr());
    check("unsqueeze/squeeze", &[x.clone()], |v| v[0].unsqueeze(1)?.squeeze(1)?.exp());
    check("broadcast_as", &[randn(12, &[3, 1])], |v| v[0].broadcast_as(&[2, 3, 4]));
    check("cat", &[x.clone(), randn(13, &[2, 2, 4])], |v| Var::cat(&[&v[0], &v[1]], 1));
}

/// A cast cannot be checked by finite differences (an f32 round trip swallows a 1e-6 step), so check the rule
/// directly: the gradient of a cast is the output gradient cast back.
#[test]
fn cast_gradient_is_cast_back() {
    let x = Var::param(randn(16, &[3]));
    x.to_dtype(DType::F32).unwrap().scale(2.0).unwrap().sum_all().unwrap().backward().unwrap();
    let g = x.grad().unwrap();
    assert_eq!(g.dtype(), DType::F64);
    assert_eq!(g.to_vec::<f64>().unwrap(), vec![2.0; 3]);
}

#[test]
fn reductions() {
    let x = randn(14, &[2, 3, 4]);
    check("sum_all", &[x.clone()], |v| v[0].sqr()?.sum_all());
    check("mean_all", &[x.clone()], |v| v[0].sqr()?.mean_all());
    check("sum_keepdim", &[x.clone()], |v| v[0].sum_keepdim(&[0, 2])?.sqr());
}

#[test]
fn embedding_with_repeated_ids() {
    let table = randn(15, &[6, 4]);
    let ids = Tensor::from_vec(vec![1i64, 3, 1, 5, 0, 1], &[2, 3]).unwrap();
    check("embedding", &[table], move |v| v[0].embedding(&ids)?.sqr());
}

#[test]
fn gradients_accumulate_until_zeroed_and_no_grad_records_nothing() {
    let w = Var::param(Tensor::from_vec(vec![1.0f64, 2.0], &[2]).unwrap());
    for _ in 0..3 {
        w.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    }
    // d/dw sum(w^2) = 2w, three times.
    assert_eq!(w.grad().unwrap().to_vec::<f64>().unwrap(), vec![6.0, 12.0]);
    w.zero_grad();
    assert!(w.grad().is_none());

    let y = ferrotune_autograd::no_grad(|| w.sqr().unwrap());
    assert!(!y.requires_grad());
    assert!(ferrotune_autograd::is_grad_enabled());
}

#[test]
fn a_deep_chain_does_not_overflow_the_stack() {
    let x = Var::param(Tensor::from_vec(vec![1.0f64], &[1]).unwrap());
    let mut y = x.clone();
    for _ in 0..20_000 {
        y = y.affine(1.0, 0.0).unwrap();
    }
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![1.0]);
}

#[test]
fn backward_needs_a_scalar() {
    let x = Var::param(Tensor::zeros(&[2], DType::F64, Default::default()).unwrap());
    let err = x.sqr().unwrap().backward().unwrap_err();
    assert!(err.to_string().contains("scalar"), "{err}");
}
