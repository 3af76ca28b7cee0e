//! What the trainer reads: micro-batches as packed rows, one epoch at a time.

use ferrotune_models::llama::Batch;
use ferrotune_models::{bail, Result};
use ferrotune_tensor::ops::IGNORE_INDEX;
use ferrotune_tensor::rng::SplitMix64;

/// One micro-batch: `per_device_train_batch_size` dataset items packed into one row (segment ids keep them
/// apart), with `labels` aligned to `input_ids` (-100 where no loss is wanted; the loss shifts them).
#[derive(Debug, Clone)]
pub struct MicroBatch {
    pub batch: Batch,
    pub labels: Vec<i64>,
    /// Dataset items (examples or packed rows) inside.
    pub num_items: usize,
}

impl MicroBatch {
    /// HF's `num_items_in_batch` contribution: labels that are not -100 (counted before the shift, as
    /// transformers 5.6's `_get_num_items_in_batch` counts them).
    pub fn num_label_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// Pack `items` (token ids with aligned labels) into one micro-batch; empty items are skipped.
    pub fn pack(items: &[(&[u32], &[i64])]) -> Result<MicroBatch> {
        let mut seqs: Vec<&[u32]> = Vec::new();
        let mut labels = Vec::new();
        for (ids, lab) in items {
            if ids.len() != lab.len() {
                bail!("an item has {} input ids but {} labels", ids.len(), lab.len());
            }
            if ids.is_empty() {
                continue;
            }
            seqs.push(ids);
            labels.extend_from_slice(lab);
        }
        Ok(MicroBatch { batch: Batch::from_sequences(&seqs)?, labels, num_items: items.len() })
    }
}

/// A dataset as the trainer sees it: a fixed number of micro-batches per epoch, each epoch's order a pure
/// function of the epoch number (so a resumed run replays exactly the batches an uninterrupted one sees).
pub trait BatchSource {
    /// Micro-batches per epoch (HF `len(train_dataloader)`).
    fn num_batches(&self) -> usize;
    /// Dataset items per epoch (HF `num_examples`).
    fn num_items(&self) -> usize;
    /// The micro-batches of `epoch`, in training order.
    fn epoch_batches(&self, epoch: usize) -> Result<Vec<MicroBatch>>;
}

/// Tokenized items in memory, batched `batch_size` at a time, reshuffled each epoch from `seed + epoch` unless
/// `shuffle` is off (LLaMA-Factory `disable_shuffling`); `drop_last` drops a smaller final batch.
#[derive(Debug, Clone)]
pub struct ItemSource {
    pub items: Vec<(Vec<u32>, Vec<i64>)>,
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
}

impl ItemSource {
    fn order(&self, epoch: usize) -> Vec<usize> {
        let n = self.items.len();
        let mut order: Vec<usize> = (0..n).collect();
        if self.shuffle {
            let mut rng = SplitMix64::new(ferrotune_tensor::rng::mix64(self.seed.wrapping_add(epoch as u64)));
            for i in (1..n).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
        }
        order
    }
}

impl BatchSource for ItemSource {
    fn num_batches(&self) -> usize {
        let bs = self.batch_size.max(1);
        if self.drop_last {
            self.items.len() / bs
        } else {
            self.items.len().div_ceil(bs)
        }
    }

    fn num_items(&self) -> usize {
        self.items.len()
    }

    fn epoch_batches(&self, epoch: usize) -> Result<Vec<MicroBatch>> {
        if self.batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        let order = self.order(epoch);
        let mut out = Vec::new();
        for chunk in order.chunks(self.batch_size) {
            if self.drop_last && chunk.len() < self.batch_size {
                break;
            }
            let items: Vec<(&[u32], &[i64])> = chunk.iter().map(|&i| (self.items[i].0.as_slice(), self.items[i].1.as_slice())).collect();
            if items.iter().all(|(ids, _)| ids.is_empty()) {
                bail!("a batch holds only empty items");
            }
            out.push(MicroBatch::pack(&items)?);
        }
        Ok(out)
    }
}
