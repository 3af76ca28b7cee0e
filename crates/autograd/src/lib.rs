//! Minimal reverse-mode autograd over `ferrotune_tensor::Tensor`.
//!
//! A [`Var`] is a tensor plus, when it was computed from variables that require gradients, the backward rule
//! of the op that made it and handles to its inputs. The graph is built eagerly as ops run (define-by-run,
//! like PyTorch) and walked in reverse topological order by [`Var::backward`].
//!
//! - Leaves made with [`Var::param`] require gradients; their gradients *accumulate* across `backward` calls
//!   (gradient accumulation) until [`Var::zero_grad`].
//! - [`no_grad`] runs a closure without recording anything (inference, optimizer updates).
//! - Fused blocks supply their own hand-written backward through [`Var::from_op`] and the [`BackwardOp`] trait;
//!   every built-in op uses the same door, so there is one mechanism.

mod gradcheck;
mod nn;
mod ops;

pub use gradcheck::{check_gradients, GradCheckReport};
pub use ferrotune_tensor::{Result, Tensor};

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record the graph.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Run `f` without recording the graph; restores the previous mode afterwards (also on panic unwinding).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(false)));
    f()
}

/// The backward rule of one op: given the gradient of the op's output, the gradients of its inputs (in the
/// order the inputs were passed to [`Var::from_op`]; `None` where an input gets no gradient).
/// Implementations keep whatever forward results they need (save only what backward needs).
pub trait BackwardOp {
    fn name(&self) -> &'static str;
    fn backward(&self, grad_out: &Tensor) -> Result<Vec<Option<Tensor>>>;
}

/// Any closure can be a backward rule.
struct FnBackward<F> {
    name: &'static str,
    f: F,
}

impl<F: Fn(&Tensor) -> Result<Vec<Option<Tensor>>>> BackwardOp for FnBackward<F> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn backward(&self, grad_out: &Tensor) -> Result<Vec<Option<Tensor>>> {
        (self.f)(grad_out)
    }
}

struct Node {
    id: usize,
    value: Tensor,
    requires_grad: bool,
    /// The op that produced this node and its inputs; `None` for leaves.
    grad_fn: Option<(Box<dyn BackwardOp>, Vec<Var>)>,
    /// Accumulated gradient (leaves only).
    grad: RefCell<Option<Tensor>>,
}

/// Dropping the last handle to a long chain would recurse once per node and overflow the stack; unlink the
/// inputs iteratively instead.
impl Drop for Node {
    fn drop(&mut self) {
        let mut stack: Vec<Var> = self.grad_fn.take().map(|(_, inputs)| inputs).unwrap_or_default();
        while let Some(var) = stack.pop() {
            if let Ok(mut node) = Rc::try_unwrap(var.0) {
                if let Some((_, inputs)) = node.grad_fn.take() {
                    stack.extend(inputs);
                }
            }
        }
    }
}

/// A tensor in the autograd graph. Cloning is cheap (shared handle).
#[derive(Clone)]
pub struct Var(Rc<Node>);

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = self.0.grad_fn.as_ref().map(|(op, _)| op.name()).unwrap_or("leaf");
        write!(f, "Var({:?}, requires_grad={}, op={op})", self.0.value, self.0.requires_grad)
    }
}

fn next_id() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Var {
    fn new_node(value: Tensor, requires_grad: bool, grad_fn: Option<(Box<dyn BackwardOp>, Vec<Var>)>) -> Var {
        Var(Rc::new(Node { id: next_id(), value, requires_grad, grad_fn, grad: RefCell::new(None) }))
    }

    /// A trainable leaf: its gradient is accumulated by `backward`.
    pub fn param(value: Tensor) -> Var {
        Var::new_node(value, true, None)
    }

    /// A constant: no gradient flows into it.
    pub fn constant(value: Tensor) -> Var {
        Var::new_node(value, false, None)
    }

    /// The result of an op with a hand-written backward. Records the node only when grad mode is on and some
    /// input requires a gradient; otherwise returns a constant and drops `backward` (and what it saved).
    pub fn from_op(value: Tensor, inputs: &[&Var], backward: impl BackwardOp + 'static) -> Var {
        if is_grad_enabled() && inputs.iter().any(|v| v.requires_grad()) {
            let inputs = inputs.iter().map(|v| (*v).clone()).collect();
            Var::new_node(value, true, Some((Box::new(backward), inputs)))
        } else {
            Var::constant(value)
        }
    }

    /// `from_op` with a closure as the backward rule.
    pub fn from_fn(
        value: Tensor,
        inputs: &[&Var],
        name: &'static str,
        backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        Var::from_op(value, inputs, FnBackward { name, f: backward })
    }

    pub fn value(&self) -> &Tensor {
        &self.0.value
    }
    pub fn shape(&self) -> &[usize] {
        self.0.value.shape()
    }
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }
    pub fn is_leaf(&self) -> bool {
        self.0.grad_fn.is_none()
    }
    /// The accumulated gradient of a leaf, if any backward reached it.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.borrow().clone()
    }
    pub fn zero_grad(&self) {
        *self.0.grad.borrow_mut() = None;
    }
    /// A constant holding the same value: cuts the graph here.
    pub fn detach(&self) -> Var {
        Var::constant(self.0.value.clone())
    }

    /// Backpropagate from this scalar: `d self / d leaf` is added to every leaf that requires a gradient.
    pub fn backward(&self) -> Result<()> {
        if self.0.value.elem_count() != 1 {
            return Err(ferrotune_tensor::Error::BadShape {
                op: "backward",
                msg: format!("backward needs a scalar (one element), got {:?}; reduce first or use backward_with", self.shape()),
            });
        }
        let seed = Tensor::ones(self.shape(), self.0.value.dtype(), self.0.value.device())?;
        self.backward_with(seed)
    }

    /// Backpropagate an explicit output gradient (same shape as this variable).
    pub fn backward_with(&self, grad: Tensor) -> Result<()> {
        if grad.shape() != self.shape() {
            return Err(ferrotune_tensor::Error::ShapeMismatch {
                op: "backward_with",
                lhs: self.shape().to_vec(),
                rhs: grad.shape().to_vec(),
            });
        }
        if !self.requires_grad() {
            return Ok(());
        }
        let order = self.topological_order();
        let mut pending: HashMap<usize, Tensor> = HashMap::new();
        pending.insert(self.0.id, grad);
        // Reverse topological order: every node's gradient is complete before it is propagated.
        for node in order.iter().rev() {
            let Some(g) = pending.remove(&node.0.id) else { continue };
            match &node.0.grad_fn {
                None => {
                    let mut slot = node.0.grad.borrow_mut();
                    *slot = Some(match slot.take() {
                        Some(acc) => acc.add(&g)?,
                        None => g,
                    });
                }
                Some((op, inputs)) => {
                    let grads = op.backward(&g)?;
                    if grads.len() != inputs.len() {
                        return Err(ferrotune_tensor::Error::Msg(format!(
                            "autograd: backward of {} returned {} gradients for {} inputs",
                            op.name(),
                            grads.len(),
                            inputs.len()
                        )));
                    }
                    for (input, g) in inputs.iter().zip(grads) {
                        let Some(g) = g else { continue };
                        if !input.requires_grad() {
                            continue;
                        }
                        if g.shape() != input.shape() {
                            return Err(ferrotune_tensor::Error::Msg(format!(
                                "autograd: backward of {} gave a gradient of shape {:?} for an input of shape {:?}",
                                op.name(),
                                g.shape(),
                                input.shape()
                            )));
                        }
                        let entry = match pending.remove(&input.0.id) {
                            Some(acc) => acc.add(&g)?,
                            None => g,
                        };
                        pending.insert(input.0.id, entry);
                    }
                }
            }
        }
        Ok(())
    }

    /// Nodes reachable from `self` through inputs that require gradients, inputs before outputs. Iterative, so
    /// deep graphs (30-layer models, long accumulation chains) cannot overflow the stack.
    fn topological_order(&self) -> Vec<Var> {
        let mut order = Vec::new();
        let mut visited = std::collections::HashSet::new();
        let mut stack: Vec<(Var, bool)> = vec![(self.clone(), false)];
        while let Some((var, children_done)) = stack.pop() {
            if children_done {
                order.push(var);
                continue;
            }
            if !visited.insert(var.0.id) {
                continue;
            }
            stack.push((var.clone(), true));
            if let Some((_, inputs)) = &var.0.grad_fn {
                for input in inputs.iter().filter(|v| v.requires_grad() && !visited.contains(&v.0.id)) {
                    stack.push((input.clone(), false));
                }
            }
        }
        order
    }
}
