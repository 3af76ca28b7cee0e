//! `tokenized_path`: tokenized splits saved to a folder and read back instead of re-tokenizing (LLaMA-Factory
//! saves with `datasets.save_to_disk`; ferrotune writes its own file, `tokenized.bin`, so folders are not
//! interchangeable between the two).
//!
//! Format (little-endian): `FTTOK001`, a u8 count of splits (1 = train, 2 = train + eval), then per split a u8
//! kind (0 examples, 1 packed rows, 2 preference pairs), a u64 item count and the items: an example is a u64
//! length, the ids (u32) and the labels (i64); a packed row adds its position ids (u32), a u64 count of
//! sequence lengths (u64 each), the u64 pad length and a u8 neat flag; a pair is two examples.

use crate::dataset::Encoded;
use crate::encode::{EncodedExample, PackedRow, PairedExample};
use crate::{bail, Context, Result};
use std::path::Path;

const MAGIC: &[u8; 8] = b"FTTOK001";
pub const FILE_NAME: &str = "tokenized.bin";

/// Whether `dir` holds tokenized data to load (LLaMA-Factory's `has_tokenized_data`: a non-empty folder).
pub fn has_tokenized_data(dir: &Path) -> bool {
    dir.is_dir()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
}

fn put_u64(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v as u64).to_le_bytes());
}

fn put_example(out: &mut Vec<u8>, e: &EncodedExample) {
    put_u64(out, e.input_ids.len());
    e.input_ids
        .iter()
        .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    e.labels
        .iter()
        .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

fn put_split(out: &mut Vec<u8>, data: &Encoded) {
    match data {
        Encoded::Examples(items) => {
            out.push(0);
            put_u64(out, items.len());
            items.iter().for_each(|e| put_example(out, e));
        }
        Encoded::Packed(rows) => {
            out.push(1);
            put_u64(out, rows.len());
            for r in rows {
                put_example(
                    out,
                    &EncodedExample {
                        input_ids: r.input_ids.clone(),
                        labels: r.labels.clone(),
                    },
                );
                r.position_ids
                    .iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                put_u64(out, r.sequence_lengths.len());
                r.sequence_lengths.iter().for_each(|&x| put_u64(out, x));
                put_u64(out, r.pad_len);
                out.push(u8::from(r.neat));
            }
        }
        Encoded::Pairs(pairs) => {
            out.push(2);
            put_u64(out, pairs.len());
            for p in pairs {
                put_example(out, &p.chosen);
                put_example(out, &p.rejected);
            }
        }
    }
}

/// Write the splits to `dir/tokenized.bin` (the folder is created; an existing non-empty folder is refused so
/// nothing is overwritten).
pub fn save(dir: &Path, train: &Encoded, eval: Option<&Encoded>) -> Result<()> {
    if has_tokenized_data(dir) {
        bail!(
            "tokenized_path {} is not empty; remove it or point tokenized_path elsewhere",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create tokenized_path {}", dir.display()))?;
    let mut out = MAGIC.to_vec();
    out.push(if eval.is_some() { 2 } else { 1 });
    put_split(&mut out, train);
    if let Some(e) = eval {
        put_split(&mut out, e);
    }
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    std::fs::write(&tmp, &out).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        match self.i.checked_add(n).filter(|&end| end <= self.b.len()) {
            Some(end) => {
                let s = &self.b[self.i..end];
                self.i = end;
                Ok(s)
            }
            None => bail!("truncated at byte {} (wanted {n} more bytes)", self.i),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<usize> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        usize::try_from(u64::from_le_bytes(a)).map_err(|_| crate::Error::msg("count too large"))
    }
    /// A length checked against the bytes left, so corrupt counts cannot ask for huge allocations.
    fn len(&mut self, bytes_each: usize) -> Result<usize> {
        let n = self.u64()?;
        if n.checked_mul(bytes_each)
            .is_none_or(|total| total > self.b.len() - self.i)
        {
            bail!("length {n} at byte {} exceeds the file", self.i - 8);
        }
        Ok(n)
    }
    fn u32s(&mut self, n: usize) -> Result<Vec<u32>> {
        Ok(self
            .take(n * 4)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn example(&mut self) -> Result<EncodedExample> {
        let n = self.len(12)?;
        let input_ids = self.u32s(n)?;
        let labels = self
            .take(n * 8)?
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok(EncodedExample { input_ids, labels })
    }
    fn split(&mut self) -> Result<Encoded> {
        let kind = self.u8()?;
        let count = self.len(8)?;
        Ok(match kind {
            0 => Encoded::Examples((0..count).map(|_| self.example()).collect::<Result<_>>()?),
            1 => Encoded::Packed(
                (0..count)
                    .map(|_| {
                        let e = self.example()?;
                        let position_ids = self.u32s(e.input_ids.len())?;
                        let k = self.len(8)?;
                        let sequence_lengths =
                            (0..k).map(|_| self.u64()).collect::<Result<Vec<_>>>()?;
                        let pad_len = self.u64()?;
                        let neat = self.u8()? != 0;
                        if sequence_lengths
                            .iter()
                            .try_fold(pad_len, |a, &b| a.checked_add(b))
                            != Some(e.input_ids.len())
                        {
                            bail!("packed row lengths do not add up to its tokens");
                        }
                        Ok(PackedRow {
                            input_ids: e.input_ids,
                            labels: e.labels,
                            position_ids,
                            sequence_lengths,
                            pad_len,
                            neat,
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            2 => Encoded::Pairs(
                (0..count)
                    .map(|_| {
                        Ok(PairedExample {
                            chosen: self.example()?,
                            rejected: self.example()?,
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            k => bail!("unknown split kind {k}"),
        })
    }
}

/// Read the splits [`save`] wrote.
pub fn load(dir: &Path) -> Result<(Encoded, Option<Encoded>)> {
    let path = dir.join(FILE_NAME);
    let bytes = std::fs::read(&path).with_context(|| {
        format!("tokenized_path {}: cannot read {FILE_NAME} (ferrotune reads only folders it wrote itself)", dir.display())
    })?;
    let parse = || -> Result<(Encoded, Option<Encoded>)> {
        let mut r = Reader { b: &bytes, i: 0 };
        if r.take(8)? != MAGIC {
            bail!("not a ferrotune tokenized file");
        }
        let splits = r.u8()?;
        let train = r.split()?;
        let eval = match splits {
            1 => None,
            2 => Some(r.split()?),
            n => bail!("bad split count {n}"),
        };
        if r.i != bytes.len() {
            bail!("{} trailing bytes", bytes.len() - r.i);
        }
        Ok((train, eval))
    };
    parse().with_context(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_corruption() {
        let dir = std::env::temp_dir().join(format!("ferrotune-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ex = EncodedExample {
            input_ids: vec![1, 2, 3],
            labels: vec![-100, 2, 3],
        };
        let row = PackedRow {
            input_ids: vec![1, 2, 0],
            labels: vec![-100, 2, -100],
            position_ids: vec![0, 1, 0],
            sequence_lengths: vec![2],
            pad_len: 1,
            neat: true,
        };
        let train = Encoded::Packed(vec![row]);
        let eval = Encoded::Pairs(vec![PairedExample {
            chosen: ex.clone(),
            rejected: ex,
        }]);
        save(&dir, &train, Some(&eval)).unwrap();
        assert!(save(&dir, &train, None).is_err(), "never overwrites");
        let (t, e) = load(&dir).unwrap();
        assert_eq!((t, e), (train, Some(eval)));
        let path = dir.join(FILE_NAME);
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 5, 9, 20, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(load(&dir).is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[10..18].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(load(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
