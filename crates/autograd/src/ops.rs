//! Differentiable versions of the tensor ops. Each op computes its value with `Tensor`, then records a backward
//! rule that captures only what that rule needs.

use crate::Var;
use ferrotune_tensor::{DType, Result, Tensor, UnaryOp};

impl Var {
    // ---- elementwise with broadcasting --------------------------------------------------------------------

    /// `a + b`; the gradient of a broadcast input is summed back to its shape.
    pub fn add(&self, rhs: &Var) -> Result<Var> {
        let (sa, sb) = (self.shape().to_vec(), rhs.shape().to_vec());
        Ok(Var::from_fn(self.value().add(rhs.value())?, &[self, rhs], "add", move |g| {
            Ok(vec![Some(g.sum_to_shape(&sa)?), Some(g.sum_to_shape(&sb)?)])
        }))
    }

    pub fn sub(&self, rhs: &Var) -> Result<Var> {
        let (sa, sb) = (self.shape().to_vec(), rhs.shape().to_vec());
        Ok(Var::from_fn(self.value().sub(rhs.value())?, &[self, rhs], "sub", move |g| {
            Ok(vec![Some(g.sum_to_shape(&sa)?), Some(g.neg()?.sum_to_shape(&sb)?)])
        }))
    }

    /// `a * b`: da = g * b, db = g * a.
    pub fn mul(&self, rhs: &Var) -> Result<Var> {
        let (a, b) = (self.value().clone(), rhs.value().clone());
        let (ra, rb) = (self.requires_grad(), rhs.requires_grad());
        Ok(Var::from_fn(a.mul(&b)?, &[self, rhs], "mul", move |g| {
            let ga = if ra { Some(g.mul(&b)?.sum_to_shape(a.shape())?) } else { None };
            let gb = if rb { Some(g.mul(&a)?.sum_to_shape(b.shape())?) } else { None };
            Ok(vec![ga, gb])
        }))
    }

    /// `a / b`: da = g / b, db = -g * a / b^2.
    pub fn div(&self, rhs: &Var) -> Result<Var> {
        let (a, b) = (self.value().clone(), rhs.value().clone());
        let rb = rhs.requires_grad();
        Ok(Var::from_fn(a.div(&b)?, &[self, rhs], "div", move |g| {
            let ga = g.div(&b)?.sum_to_shape(a.shape())?;
            let gb = if rb { Some(g.mul(&a)?.div(&b.sqr()?)?.neg()?.sum_to_shape(b.shape())?) } else { None };
            Ok(vec![Some(ga), gb])
        }))
    }

    /// `self * mul + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Var> {
        Ok(Var::from_fn(self.value().affine(mul, add)?, &[self], "affine", move |g| Ok(vec![Some(g.scale(mul)?)])))
    }

    pub fn scale(&self, s: f64) -> Result<Var> {
        self.affine(s, 0.0)
    }

    pub fn neg(&self) -> Result<Var> {
        self.affine(-1.0, 0.0)
    }

    /// Elementwise unary op; each backward is written in terms of the input x and output y.
    pub fn unary(&self, op: UnaryOp) -> Result<Var> {
        let x = self.value().clone();
        let y = x.unary(op)?;
        let y_saved = y.clone();
        Ok(Var::from_fn(y, &[self], "unary", move |g| {
            let (x, y) = (&x, &y_saved);
            let dx = match op {
                UnaryOp::Neg => g.neg()?,
                UnaryOp::Exp => g.mul(y)?,                            // d e^x = e^x
                UnaryOp::Log => g.div(x)?,                            // d ln x = 1/x
                UnaryOp::Sqrt => g.div(&y.scale(2.0)?)?,              // d sqrt x = 1 / (2 sqrt x)
                UnaryOp::Recip => g.mul(&y.sqr()?)?.neg()?,           // d 1/x = -1/x^2
                UnaryOp::Sqr => g.mul(&x.scale(2.0)?)?,               // d x^2 = 2x
                UnaryOp::Abs => g.mul(&x.unary(UnaryOp::Sign)?)?,       // sign(x), 0 at 0 as in PyTorch
                UnaryOp::Tanh => g.mul(&y.sqr()?.affine(-1.0, 1.0)?)?, // 1 - tanh^2
                UnaryOp::Sin => g.mul(&x.unary(UnaryOp::Cos)?)?,
                UnaryOp::Cos => g.mul(&x.unary(UnaryOp::Sin)?)?.neg()?,
                UnaryOp::Sigmoid => g.mul(&y.mul(&y.affine(-1.0, 1.0)?)?)?, // s (1 - s)
                UnaryOp::Silu => {
                    // d/dx x s(x) = s + x s (1 - s) = s (1 + x (1 - s))
                    let s = x.sigmoid()?;
                    g.mul(&s.mul(&x.mul(&s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?)?
                }
                UnaryOp::Relu => g.mul(&x.unary(UnaryOp::Step)?)?,      // 1 where x > 0, 0 at 0 as in PyTorch
                UnaryOp::Step | UnaryOp::Sign => g.zeros_like()?,      // piecewise constant
            };
            Ok(vec![Some(dx)])
        }))
    }

    pub fn exp(&self) -> Result<Var> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Var> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Var> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn sqr(&self) -> Result<Var> {
        self.unary(UnaryOp::Sqr)
    }
    pub fn recip(&self) -> Result<Var> {
        self.unary(UnaryOp::Recip)
    }
    pub fn tanh(&self) -> Result<Var> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn sigmoid(&self) -> Result<Var> {
        self.unary(UnaryOp::Sigmoid)
    }
    pub fn silu(&self) -> Result<Var> {
        self.unary(UnaryOp::Silu)
    }

    /// `x^e`: d = e x^(e-1).
    pub fn powf(&self, e: f64) -> Result<Var> {
        let x = self.value().clone();
        Ok(Var::from_fn(x.powf(e)?, &[self], "powf", move |g| Ok(vec![Some(g.mul(&x.powf(e - 1.0)?.scale(e)?)?)])))
    }

    // ---- matmul -------------------------------------------------------------------------------------------

    /// `[.., m, k] x [.., k, n]` (rhs may be 2-D, shared by the batch): dA = G B^T, dB = A^T G (summed over the
    /// batch when B is shared). The transposes are views; the GEMM packs from them directly. Each gradient comes
    /// back in its input's dtype (f32 activations times a bf16 weight give the weight a bf16 gradient, as in
    /// PyTorch), so gradients from different uses of one leaf can be summed.
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        let (a, b) = (self.value().clone(), rhs.value().clone());
        let (ra, rb) = (self.requires_grad(), rhs.requires_grad());
        Ok(Var::from_fn(a.matmul(&b)?, &[self, rhs], "matmul", move |g| {
            let ga = if ra { Some(g.matmul(&b.t()?)?.to_dtype(a.dtype())?) } else { None };
            let gb = if !rb {
                None
            } else if b.rank() == 2 && a.rank() > 2 {
                let k = a.shape()[a.rank() - 1];
                let n = g.shape()[g.rank() - 1];
                let a2 = a.reshape(&[a.elem_count() / k, k])?;
                let g2 = g.reshape(&[g.elem_count() / n, n])?;
                Some(a2.t()?.matmul(&g2)?.to_dtype(b.dtype())?)
            } else {
                Some(a.t()?.matmul(g)?.to_dtype(b.dtype())?)
            };
            Ok(vec![ga, gb])
        }))
    }

    // ---- shape ops ----------------------------------------------------------------------------------------

    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let old = self.shape().to_vec();
        Ok(Var::from_fn(self.value().reshape(shape)?, &[self], "reshape", move |g| Ok(vec![Some(g.reshape(&old)?)])))
    }

    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Var> {
        Ok(Var::from_fn(self.value().transpose(d0, d1)?, &[self], "transpose", move |g| {
            Ok(vec![Some(g.transpose(d0, d1)?)])
        }))
    }

    pub fn t(&self) -> Result<Var> {
        let r = self.value().rank();
        if r < 2 {
            return Err(ferrotune_tensor::Error::BadShape { op: "t", msg: format!("needs rank >= 2, got {:?}", self.shape()) });
        }
        self.transpose(r - 2, r - 1)
    }

    pub fn permute(&self, dims: &[usize]) -> Result<Var> {
        let mut inverse = vec![0; dims.len()];
        for (i, &d) in dims.iter().enumerate() {
            if d < inverse.len() {
                inverse[d] = i;
            }
        }
        Ok(Var::from_fn(self.value().permute(dims)?, &[self], "permute", move |g| Ok(vec![Some(g.permute(&inverse)?)])))
    }

    /// A slice along `dim`; backward places the gradient back into zeros of the input's shape.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Var> {
        let shape = self.shape().to_vec();
        let dtype = self.value().dtype();
        let device = self.value().device();
        Ok(Var::from_fn(self.value().narrow(dim, start, len)?, &[self], "narrow", move |g| {
            let mut parts = Vec::new();
            let mut before = shape.clone();
            before[dim] = start;
            let mut after = shape.clone();
            after[dim] = shape[dim] - start - len;
            let zb = Tensor::zeros(&before, dtype, device)?;
            let za = Tensor::zeros(&after, dtype, device)?;
            if start > 0 {
                parts.push(&zb);
            }
            parts.push(g);
            if after[dim] > 0 {
                parts.push(&za);
            }
            Ok(vec![Some(Tensor::cat(&parts, dim)?)])
        }))
    }

    pub fn unsqueeze(&self, dim: usize) -> Result<Var> {
        let old = self.shape().to_vec();
        Ok(Var::from_fn(self.value().unsqueeze(dim)?, &[self], "unsqueeze", move |g| Ok(vec![Some(g.reshape(&old)?)])))
    }

    pub fn squeeze(&self, dim: usize) -> Result<Var> {
        let old = self.shape().to_vec();
        Ok(Var::from_fn(self.value().squeeze(dim)?, &[self], "squeeze", move |g| Ok(vec![Some(g.reshape(&old)?)])))
    }

    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Var> {
        let old = self.shape().to_vec();
        Ok(Var::from_fn(self.value().broadcast_as(shape)?, &[self], "broadcast_as", move |g| {
            Ok(vec![Some(g.sum_to_shape(&old)?)])
        }))
    }

    pub fn contiguous(&self) -> Result<Var> {
        Ok(Var::from_fn(self.value().contiguous()?, &[self], "contiguous", |g| Ok(vec![Some(g.clone())])))
    }

    /// Concatenate along `dim`; each input's gradient is its slice of the output gradient.
    pub fn cat(vars: &[&Var], dim: usize) -> Result<Var> {
        let values: Vec<&Tensor> = vars.iter().map(|v| v.value()).collect();
        let sizes: Vec<usize> = vars.iter().map(|v| v.shape().get(dim).copied().unwrap_or(0)).collect();
        Ok(Var::from_fn(Tensor::cat(&values, dim)?, vars, "cat", move |g| {
            let mut start = 0;
            sizes
                .iter()
                .map(|&n| {
                    let part = g.narrow(dim, start, n)?.contiguous()?;
                    start += n;
                    Ok(Some(part))
                })
                .collect()
        }))
    }

    /// Cast; the gradient is cast back to the input dtype.
    pub fn to_dtype(&self, dtype: DType) -> Result<Var> {
        let old = self.value().dtype();
        Ok(Var::from_fn(self.value().to_dtype(dtype)?, &[self], "to_dtype", move |g| Ok(vec![Some(g.to_dtype(old)?)])))
    }

    // ---- reductions ---------------------------------------------------------------------------------------

    pub fn sum_all(&self) -> Result<Var> {
        let shape = self.shape().to_vec();
        Ok(Var::from_fn(self.value().sum_all()?, &[self], "sum_all", move |g| {
            Ok(vec![Some(g.reshape(&vec![1; shape.len()])?.broadcast_as(&shape)?.contiguous()?)])
        }))
    }

    pub fn mean_all(&self) -> Result<Var> {
        let n = self.value().elem_count().max(1);
        self.sum_all()?.scale(1.0 / n as f64)
    }

    /// Sum over `dims`, keeping them as size-1 dims.
    pub fn sum_keepdim(&self, dims: &[usize]) -> Result<Var> {
        let shape = self.shape().to_vec();
        Ok(Var::from_fn(self.value().sum_keepdim(dims)?, &[self], "sum_keepdim", move |g| {
            Ok(vec![Some(g.broadcast_as(&shape)?.contiguous()?)])
        }))
    }

    // ---- lookup -------------------------------------------------------------------------------------------

    /// Embedding: rows of the `[vocab, hidden]` table `self` at `ids`. Backward scatter-adds the output gradient
    /// into a `[vocab, hidden]` gradient (repeated ids accumulate).
    pub fn embedding(&self, ids: &Tensor) -> Result<Var> {
        let vocab = self.shape().first().copied().unwrap_or(0);
        let ids_saved = ids.clone();
        Ok(Var::from_fn(self.value().index_select(ids)?, &[self], "embedding", move |g| {
            Ok(vec![Some(g.index_add_rows(&ids_saved, vocab)?)])
        }))
    }
}
