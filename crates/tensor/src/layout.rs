//! Shapes and strided layouts. A `Layout` maps a multi-index to an element offset in storage:
//! `offset + sum(index[d] * strides[d])`. Views (transpose, narrow, broadcast, reshape of contiguous data) only
//! build a new `Layout` over the same storage; nothing is copied.

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major strides for a shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1;
    for d in (0..shape.len()).rev() {
        strides[d] = acc;
        acc *= shape[d];
    }
    strides
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }

    pub fn new(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        assert_eq!(shape.len(), strides.len(), "layout: shape and strides differ in rank");
        Layout { shape, strides, offset }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the elements are laid out row-major without gaps (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for d in (0..self.shape.len()).rev() {
            if self.shape[d] != 1 && self.strides[d] != expected {
                return false;
            }
            expected *= self.shape[d];
        }
        true
    }

    /// The contiguous range of storage this layout covers, when it is contiguous.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous().then(|| self.offset..self.offset + self.elem_count())
    }

    /// One past the largest storage index this layout can reach (for bounds checks).
    pub fn storage_extent(&self) -> usize {
        if self.elem_count() == 0 {
            return self.offset;
        }
        self.offset + self.shape.iter().zip(&self.strides).map(|(&n, &s)| (n - 1) * s).sum::<usize>() + 1
    }

    pub fn dim(&self, op: &'static str, dim: usize) -> Result<usize> {
        self.shape.get(dim).copied().ok_or(Error::DimOutOfRange { op, dim, rank: self.rank() })
    }

    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Layout> {
        let rank = self.rank();
        for d in [d0, d1] {
            if d >= rank {
                return Err(Error::DimOutOfRange { op: "transpose", dim: d, rank });
            }
        }
        let mut l = self.clone();
        l.shape.swap(d0, d1);
        l.strides.swap(d0, d1);
        Ok(l)
    }

    pub fn permute(&self, dims: &[usize]) -> Result<Layout> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        if dims.len() != rank {
            return Err(Error::BadShape { op: "permute", msg: format!("{dims:?} is not a permutation of {rank} dims") });
        }
        for &d in dims {
            if d >= rank || seen[d] {
                return Err(Error::BadShape { op: "permute", msg: format!("{dims:?} is not a permutation of {rank} dims") });
            }
            seen[d] = true;
        }
        Ok(Layout {
            shape: dims.iter().map(|&d| self.shape[d]).collect(),
            strides: dims.iter().map(|&d| self.strides[d]).collect(),
            offset: self.offset,
        })
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        let size = self.dim("narrow", dim)?;
        if start + len > size {
            return Err(Error::BadShape {
                op: "narrow",
                msg: format!("range {start}..{} is past dimension {dim} of size {size}", start + len),
            });
        }
        let mut l = self.clone();
        l.shape[dim] = len;
        l.offset += start * self.strides[dim];
        Ok(l)
    }

    /// A view with stride 0 along broadcast dimensions. Follows NumPy rules: leading dims are added, size-1 dims
    /// stretch.
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Layout> {
        if shape.len() < self.rank() {
            return Err(Error::ShapeMismatch { op: "broadcast_as", lhs: self.shape.clone(), rhs: shape.to_vec() });
        }
        let extra = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (d, &target) in shape.iter().enumerate().skip(extra) {
            let (n, s) = (self.shape[d - extra], self.strides[d - extra]);
            strides[d] = if n == target {
                s
            } else if n == 1 {
                0
            } else {
                return Err(Error::ShapeMismatch { op: "broadcast_as", lhs: self.shape.clone(), rhs: shape.to_vec() });
            };
        }
        Ok(Layout { shape: shape.to_vec(), strides, offset: self.offset })
    }

    /// Reshape without copying. Returns `None` when the strides cannot express the new shape (then the caller
    /// copies to contiguous first). Old dims are grouped into chunks that are contiguous with each other; each
    /// chunk must split exactly into a run of new dims (the rule PyTorch's `view` uses).
    pub fn reshape_view(&self, shape: &[usize]) -> Option<Layout> {
        if shape.iter().product::<usize>() != self.elem_count() {
            return None;
        }
        if self.is_contiguous() {
            return Some(Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: self.offset });
        }
        let (old_shape, old_strides) = (&self.shape, &self.strides);
        let mut new_strides = vec![0; shape.len()];
        let mut view_d = shape.len() as isize - 1;
        let mut chunk_base_stride = *old_strides.last()?;
        let (mut tensor_numel, mut view_numel) = (1usize, 1usize);
        for tensor_d in (0..old_shape.len()).rev() {
            tensor_numel *= old_shape[tensor_d];
            let chunk_ends = tensor_d == 0
                || (old_shape[tensor_d - 1] != 1 && old_strides[tensor_d - 1] != tensor_numel * chunk_base_stride);
            if chunk_ends {
                while view_d >= 0 && (view_numel < tensor_numel || shape[view_d as usize] == 1) {
                    new_strides[view_d as usize] = view_numel * chunk_base_stride;
                    view_numel *= shape[view_d as usize];
                    view_d -= 1;
                }
                if view_numel != tensor_numel {
                    return None;
                }
                if tensor_d > 0 {
                    chunk_base_stride = old_strides[tensor_d - 1];
                    tensor_numel = 1;
                    view_numel = 1;
                }
            }
        }
        (view_d == -1).then(|| Layout { shape: shape.to_vec(), strides: new_strides, offset: self.offset })
    }

    /// Storage offsets of every element in row-major order.
    pub fn offsets(&self) -> StridedOffsets<'_> {
        StridedOffsets::new(self)
    }
}

/// Iterates storage offsets of a strided layout in row-major order. The innermost dimension is walked with a
/// plain add, so the cost per element is one compare and one add in the common case.
pub struct StridedOffsets<'a> {
    layout: &'a Layout,
    index: Vec<usize>,
    next: usize,
    remaining: usize,
}

impl<'a> StridedOffsets<'a> {
    fn new(layout: &'a Layout) -> Self {
        StridedOffsets { layout, index: vec![0; layout.rank()], next: layout.offset, remaining: layout.elem_count() }
    }
}

impl Iterator for StridedOffsets<'_> {
    type Item = usize;
    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let current = self.next;
        let (shape, strides) = (&self.layout.shape, &self.layout.strides);
        for d in (0..shape.len()).rev() {
            self.index[d] += 1;
            self.next += strides[d];
            if self.index[d] < shape[d] {
                break;
            }
            self.next -= strides[d] * shape[d];
            self.index[d] = 0;
        }
        Some(current)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for StridedOffsets<'_> {}

/// The shape two shapes broadcast to under NumPy rules.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(Error::ShapeMismatch { op, lhs: a.to_vec(), rhs: b.to_vec() }),
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn materialise(l: &Layout) -> Vec<usize> {
        l.offsets().collect()
    }

    #[test]
    fn transpose_and_narrow_are_views() {
        let l = Layout::contiguous(&[2, 3]);
        let t = l.transpose(0, 1).unwrap();
        assert_eq!(materialise(&t), vec![0, 3, 1, 4, 2, 5]);
        let n = l.narrow(1, 1, 2).unwrap();
        assert_eq!(materialise(&n), vec![1, 2, 4, 5]);
        assert!(!n.is_contiguous());
    }

    #[test]
    fn reshape_view_of_strided() {
        // [4, 6] narrowed to columns 0..6 step is contiguous rows; transpose then reshape must refuse.
        let l = Layout::contiguous(&[4, 6]);
        let r = l.reshape_view(&[2, 2, 3, 2]).unwrap();
        assert_eq!(materialise(&r), (0..24).collect::<Vec<_>>());
        let t = l.transpose(0, 1).unwrap();
        assert!(t.reshape_view(&[24]).is_none());
        // A narrow along dim 0 of a 3-D tensor keeps the inner two dims mergeable.
        let l3 = Layout::contiguous(&[4, 3, 2]).narrow(0, 1, 2).unwrap();
        let r3 = l3.reshape_view(&[2, 6]).unwrap();
        assert_eq!(materialise(&r3), materialise(&l3));
        let r4 = l3.reshape_view(&[2, 3, 2, 1]).unwrap();
        assert_eq!(materialise(&r4), materialise(&l3));
        // Narrow along the last dim cannot be flattened.
        let l4 = Layout::contiguous(&[3, 4]).narrow(1, 0, 2).unwrap();
        assert!(l4.reshape_view(&[6]).is_none());
        assert_eq!(materialise(&l4.reshape_view(&[3, 2, 1]).unwrap()), materialise(&l4));
    }

    #[test]
    fn broadcast() {
        let l = Layout::contiguous(&[3, 1]);
        let b = l.broadcast_as(&[2, 3, 4]).unwrap();
        assert_eq!(b.strides(), &[0, 1, 0]);
        assert_eq!(broadcast_shape("t", &[3, 1], &[2, 1, 4]).unwrap(), vec![2, 3, 4]);
        assert!(broadcast_shape("t", &[3], &[4]).is_err());
    }
}
