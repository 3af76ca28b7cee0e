//! Minimal reverse-mode autograd over ferrotune-tensor.
