//! The batch representation the decoder runs on: packed, unpadded sequences.
//!
//! A [`Batch`] is **one row of `N` tokens** holding one or more sequences back to back (no padding tokens, no
//! attention mask tensor):
//!
//! - `input_ids [N]`: token ids;
//! - `position_ids [N]`: RoPE positions, restarting at 0 for each packed sequence;
//! - `segment_ids [1, N]` (optional): which sequence each token belongs to. With segment ids a token attends only
//!   to earlier tokens of its own sequence (LLaMA-Factory's `neat_packing`, HF's varlen flash-attention), and the
//!   label shift stops at every sequence boundary. Without them the row is one sequence as far as attention and
//!   the loss are concerned (HF's plain `packing`: the examples see each other).
//!
//! Attention runs on `[1, N, heads, head_dim]` with these segment ids, so a batch of B sequences costs what
//! their total length costs, whatever their lengths.

use crate::{bail, Result};
use ferrotune_tensor::ops::IGNORE_INDEX;
use ferrotune_tensor::{Device, Tensor};

/// Packed sequences ready for [`super::LlamaModel`]; see the module docs for the layout.
#[derive(Debug, Clone)]
pub struct Batch {
    tokens: Vec<u32>,
    input_ids: Tensor,
    position_ids: Tensor,
    segment_ids: Option<Tensor>,
    /// Lengths of the attention spans (the sequences when segment ids are given, else the whole row).
    sequence_lengths: Vec<usize>,
    max_position: usize,
}

impl Batch {
    /// Pack whole sequences: positions `0..len` for each, and segment ids when there is more than one sequence
    /// so they neither attend to nor predict each other. Empty sequences are skipped.
    pub fn from_sequences<S: AsRef<[u32]>>(sequences: &[S]) -> Result<Batch> {
        let sequences: Vec<&[u32]> = sequences.iter().map(|s| s.as_ref()).filter(|s| !s.is_empty()).collect();
        let tokens: Vec<u32> = sequences.iter().flat_map(|s| s.iter().copied()).collect();
        let positions: Vec<u32> = sequences.iter().flat_map(|s| 0..s.len() as u32).collect();
        let segments: Option<Vec<i64>> = (sequences.len() > 1).then(|| {
            sequences.iter().enumerate().flat_map(|(i, s)| std::iter::repeat_n(i as i64, s.len())).collect()
        });
        Batch::packed(&tokens, &positions, segments.as_deref())
    }

    /// A packed row as a data collator makes it. `segment_ids`, when given, must hold each sequence as one
    /// contiguous run (`[0, 0, 0, 1, 1, 2, ...]`; the values themselves are arbitrary), since the loss shifts
    /// labels within each run.
    pub fn packed(input_ids: &[u32], position_ids: &[u32], segment_ids: Option<&[i64]>) -> Result<Batch> {
        let n = input_ids.len();
        if n == 0 {
            bail!("batch has no tokens; a packed batch needs at least one sequence of one token");
        }
        if position_ids.len() != n {
            bail!("batch has {n} input ids but {} position ids; they must be the same length", position_ids.len());
        }
        let sequence_lengths = match segment_ids {
            None => vec![n],
            Some(segments) => {
                if segments.len() != n {
                    bail!("batch has {n} input ids but {} segment ids; they must be the same length", segments.len());
                }
                let mut lengths = Vec::new();
                let mut seen = std::collections::HashSet::new();
                let mut start = 0;
                for i in 1..=n {
                    if i == n || segments[i] != segments[start] {
                        if !seen.insert(segments[start]) {
                            bail!(
                                "segment id {} appears in two separate runs (ending at token {}); each packed sequence \
                                 must be one contiguous run of equal segment ids",
                                segments[start],
                                i - 1
                            );
                        }
                        lengths.push(i - start);
                        start = i;
                    }
                }
                lengths
            }
        };
        let to_i64 = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<i64>>();
        Ok(Batch {
            tokens: input_ids.to_vec(),
            input_ids: Tensor::from_vec(to_i64(input_ids), &[n])?,
            position_ids: Tensor::from_vec(to_i64(position_ids), &[n])?,
            segment_ids: segment_ids.map(|s| Tensor::from_vec(s.to_vec(), &[1, n])).transpose()?,
            sequence_lengths,
            max_position: position_ids.iter().copied().max().unwrap_or(0) as usize,
        })
    }

    /// This batch with its id tensors on `device` (where the model's parameters are; see
    /// [`super::LlamaModel::to_device`]).
    pub fn to_device(&self, device: Device) -> Result<Batch> {
        Ok(Batch {
            input_ids: self.input_ids.to_device(device)?,
            position_ids: self.position_ids.to_device(device)?,
            segment_ids: self.segment_ids.as_ref().map(|s| s.to_device(device)).transpose()?,
            ..self.clone()
        })
    }

    /// Number of tokens `N`.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Always false: a batch has at least one token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// `[N]` i64.
    pub fn input_ids(&self) -> &Tensor {
        &self.input_ids
    }

    /// `[N]` i64.
    pub fn position_ids(&self) -> &Tensor {
        &self.position_ids
    }

    /// `[1, N]` i64, or `None` when the row is a single attention span.
    pub fn segment_ids(&self) -> Option<&Tensor> {
        self.segment_ids.as_ref()
    }

    /// Lengths of the attention spans, in order; they sum to `N`.
    pub fn sequence_lengths(&self) -> &[usize] {
        &self.sequence_lengths
    }

    /// The largest position id.
    pub fn max_position(&self) -> usize {
        self.max_position
    }

    /// HF's causal-LM shift, per sequence: `targets[t] = labels[t + 1]` when `t + 1` is in the same sequence,
    /// else [`IGNORE_INDEX`]. `labels` are aligned with `input_ids` (as LLaMA-Factory's collators give them), so
    /// the last token of each sequence predicts nothing, exactly as HF's `ForCausalLMLoss` pads the shifted
    /// labels of each row.
    pub fn shift_labels(&self, labels: &[i64]) -> Result<Vec<i64>> {
        if labels.len() != self.len() {
            bail!("labels have {} entries but the batch has {} tokens; labels are aligned with input_ids", labels.len(), self.len());
        }
        let mut targets = Vec::with_capacity(labels.len());
        let mut start = 0;
        for &len in &self.sequence_lengths {
            targets.extend_from_slice(&labels[start + 1..start + len]);
            targets.push(IGNORE_INDEX);
            start += len;
        }
        Ok(targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_sequences_restarts_positions_and_shifts_within_sequences() {
        let b = Batch::from_sequences(&[vec![5, 6, 7], vec![], vec![8, 9]]).unwrap();
        assert_eq!(b.len(), 5);
        assert_eq!(b.position_ids().to_vec::<i64>().unwrap(), [0, 1, 2, 0, 1]);
        assert_eq!(b.segment_ids().unwrap().to_vec::<i64>().unwrap(), [0, 0, 0, 1, 1]);
        assert_eq!(b.sequence_lengths(), [3, 2]);
        assert_eq!(b.shift_labels(&[-100, 6, 7, -100, 9]).unwrap(), [6, 7, -100, 9, -100]);
        let single = Batch::from_sequences(&[[1u32, 2]]).unwrap();
        assert!(single.segment_ids().is_none());
    }

    #[test]
    fn bad_batches_are_errors() {
        assert!(Batch::from_sequences::<Vec<u32>>(&[]).is_err());
        assert!(Batch::packed(&[1, 2], &[0], None).is_err());
        let e = Batch::packed(&[1, 2, 3], &[0, 0, 0], Some(&[0, 1, 0])).unwrap_err().to_string();
        assert!(e.contains("segment id 0"), "{e}");
        let b = Batch::packed(&[1, 2], &[0, 1], None).unwrap();
        assert!(b.shift_labels(&[1]).is_err());
    }
}
