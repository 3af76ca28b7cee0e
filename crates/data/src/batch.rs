//! Batching without padding: a batch of B items is one packed row (see `ferrotune_models::llama::Batch`)
//! with a segment per attention span. Labels stay aligned with `input_ids`; `Batch::shift_labels` shifts
//! them inside each segment, so the last token of a segment predicts nothing.

use crate::dataset::{Encoded, Rng};
use crate::encode::{EncodedExample, PackedRow};
use crate::{bail, Result};
use ferrotune_models::llama::Batch;

/// One packed batch, ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedBatch {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub position_ids: Vec<u32>,
    /// One id per token; each attention span is one contiguous run.
    pub segment_ids: Vec<i64>,
    /// How many dataset items (examples or packed rows) went in.
    pub num_items: usize,
}

impl PackedBatch {
    /// The model's [`Batch`] (segment ids only when there is more than one span).
    pub fn to_model_batch(&self) -> Result<Batch> {
        let multi = self
            .segment_ids
            .first()
            .is_some_and(|&f| self.segment_ids.iter().any(|&s| s != f));
        Batch::packed(
            &self.input_ids,
            &self.position_ids,
            multi.then_some(self.segment_ids.as_slice()),
        )
    }

    /// Tokens whose (shifted) label is trained on.
    pub fn num_target_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != crate::IGNORE_INDEX)
            .count()
    }

    fn push_span(
        &mut self,
        ids: &[u32],
        labels: &[i64],
        positions: impl Iterator<Item = u32>,
        segment: i64,
    ) {
        self.input_ids.extend_from_slice(ids);
        self.labels.extend_from_slice(labels);
        self.position_ids.extend(positions);
        self.segment_ids
            .extend(std::iter::repeat_n(segment, ids.len()));
    }
}

fn add_example(b: &mut PackedBatch, ex: &EncodedExample, next_segment: &mut i64) {
    if ex.input_ids.is_empty() {
        return;
    }
    b.push_span(
        &ex.input_ids,
        &ex.labels,
        0..ex.input_ids.len() as u32,
        *next_segment,
    );
    *next_segment += 1;
}

/// A packed row's spans: with `neat`, each sequence its own segment; without, the sequences (without the
/// padding) one segment whose positions restart per sequence, as LLaMA-Factory gives position ids. The pad
/// tail is dropped: its labels are all ignored.
fn add_row(b: &mut PackedBatch, row: &PackedRow, next_segment: &mut i64) {
    let mut start = 0;
    for &len in &row.sequence_lengths {
        let end = start + len;
        b.push_span(
            &row.input_ids[start..end],
            &row.labels[start..end],
            row.position_ids[start..end].iter().copied(),
            *next_segment,
        );
        if row.neat {
            *next_segment += 1;
        }
        start = end;
    }
    if !row.neat && start > 0 {
        *next_segment += 1;
    }
}

/// Group the items of `data` into batches of `batch_size` items, in order or shuffled by `shuffle_seed`.
/// The last batch may be smaller.
pub fn make_batches(
    data: &Encoded,
    batch_size: usize,
    shuffle_seed: Option<u64>,
) -> Result<Vec<PackedBatch>> {
    if batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let n = data.len();
    let order: Vec<usize> = match shuffle_seed {
        Some(seed) => Rng::new(seed).permutation(n),
        None => (0..n).collect(),
    };
    let mut out = Vec::new();
    for chunk in order.chunks(batch_size) {
        let mut b = PackedBatch {
            input_ids: Vec::new(),
            labels: Vec::new(),
            position_ids: Vec::new(),
            segment_ids: Vec::new(),
            num_items: chunk.len(),
        };
        let mut seg = 0i64;
        for &i in chunk {
            match data {
                Encoded::Examples(e) => add_example(&mut b, &e[i], &mut seg),
                Encoded::Packed(p) => add_row(&mut b, &p[i], &mut seg),
                Encoded::Pairs(p) => add_example(&mut b, &p[i].chosen, &mut seg),
            }
        }
        // Preference batches: the chosen sequences, then the rejected ones in the same order (segment k and
        // segment k + B are a pair), as DPO trainers concatenate them.
        if let Encoded::Pairs(p) = data {
            for &i in chunk {
                add_example(&mut b, &p[i].rejected, &mut seg);
            }
        }
        if !b.input_ids.is_empty() {
            out.push(b);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_become_segments_and_labels_shift_within_them() {
        let data = Encoded::Examples(vec![
            EncodedExample {
                input_ids: vec![1, 2, 3],
                labels: vec![-100, 2, 3],
            },
            EncodedExample {
                input_ids: vec![4, 5],
                labels: vec![-100, 5],
            },
            EncodedExample {
                input_ids: vec![6],
                labels: vec![6],
            },
        ]);
        let batches = make_batches(&data, 2, None).unwrap();
        assert_eq!(batches.len(), 2);
        let b = &batches[0];
        assert_eq!(b.segment_ids, [0, 0, 0, 1, 1]);
        assert_eq!(b.position_ids, [0, 1, 2, 0, 1]);
        let mb = b.to_model_batch().unwrap();
        assert_eq!(mb.shift_labels(&b.labels).unwrap(), [2, 3, -100, 5, -100]);
        assert!(batches[1].to_model_batch().unwrap().segment_ids().is_none());
        assert!(make_batches(&data, 0, None).is_err());
    }

    #[test]
    fn packed_rows_drop_padding_and_keep_neat_boundaries() {
        let row = PackedRow {
            input_ids: vec![1, 2, 3, 4, 5, 0, 0],
            labels: vec![-100, 2, -100, 4, 5, -100, -100],
            position_ids: vec![0, 1, 0, 1, 2, 0, 0],
            sequence_lengths: vec![2, 3],
            pad_len: 2,
            neat: true,
        };
        let b = &make_batches(&Encoded::Packed(vec![row.clone()]), 4, None).unwrap()[0];
        assert_eq!(b.segment_ids, [0, 0, 1, 1, 1]);
        assert_eq!(b.position_ids, [0, 1, 0, 1, 2]);
        assert_eq!(row.attention_mask(), [1, 1, 2, 2, 2, 0, 0]);
        let plain = PackedRow { neat: false, ..row };
        let b = &make_batches(&Encoded::Packed(vec![plain.clone(), plain]), 4, None).unwrap()[0];
        assert_eq!(b.segment_ids, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
    }
}
