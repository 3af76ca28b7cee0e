//! safetensors files: a validating reader over a memory map, an atomic writer, and HF folders
//! (`model.safetensors`, or shards routed by `model.safetensors.index.json`).
//!
//! The reader trusts nothing in the file: the header length, the JSON, every dtype, shape and offset are checked
//! (with checked arithmetic) before a single tensor byte is touched, and every error names the file and, where
//! there is one, the tensor. Layout rules follow the `safetensors` crate 0.8: 8-byte little-endian header length,
//! a JSON header of at most 100 MB, tensors covering the data buffer exactly (no overlap, no gap, nothing after
//! the last tensor), no duplicate keys.
//!
//! Loading copies each tensor once, from the mapping straight into its final `Vec` (converting dtype on the way),
//! then tells the kernel to drop the mapped pages it just read, so peak memory is the loaded weights plus about
//! one tensor, not weights + file.

use crate::weights::{LoadOptions, WeightMap};
use crate::{bail, Context, Error, Result};
use ferrotune_tensor::{DType, Device, Tensor};
use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The `safetensors` crate's `MAX_HEADER_SIZE`: larger headers are refused before they are read.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The single-file name transformers writes and reads.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// transformers' default `max_shard_size` ("5GB", decimal).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Element types ferrotune reads from safetensors files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileDType {
    Bool,
    U8,
    I8,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
}

/// Valid safetensors dtypes that ferrotune does not load, so the error can say "valid but unsupported".
const KNOWN_UNSUPPORTED: &[&str] =
    &["F4", "F6_E2M3", "F6_E3M2", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64", "U64"];

impl FileDType {
    const ALL: [FileDType; 12] = [
        FileDType::Bool,
        FileDType::U8,
        FileDType::I8,
        FileDType::I16,
        FileDType::U16,
        FileDType::F16,
        FileDType::BF16,
        FileDType::I32,
        FileDType::U32,
        FileDType::F32,
        FileDType::F64,
        FileDType::I64,
    ];

    /// The header spelling ("F32", "BF16", ...).
    pub fn name(self) -> &'static str {
        match self {
            FileDType::Bool => "BOOL",
            FileDType::U8 => "U8",
            FileDType::I8 => "I8",
            FileDType::I16 => "I16",
            FileDType::U16 => "U16",
            FileDType::F16 => "F16",
            FileDType::BF16 => "BF16",
            FileDType::I32 => "I32",
            FileDType::U32 => "U32",
            FileDType::F32 => "F32",
            FileDType::F64 => "F64",
            FileDType::I64 => "I64",
        }
    }

    pub fn parse(name: &str) -> Option<FileDType> {
        FileDType::ALL.into_iter().find(|d| d.name() == name)
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            FileDType::Bool | FileDType::U8 | FileDType::I8 => 1,
            FileDType::I16 | FileDType::U16 | FileDType::F16 | FileDType::BF16 => 2,
            FileDType::I32 | FileDType::U32 | FileDType::F32 => 4,
            FileDType::F64 | FileDType::I64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, FileDType::F16 | FileDType::BF16 | FileDType::F32 | FileDType::F64)
    }

    /// The tensor dtype this file dtype loads as when no conversion is asked for. Integer types ferrotune's
    /// tensors lack are widened to the next one that holds every value (BOOL is 0/1 in a U8).
    pub fn natural_dtype(self) -> DType {
        match self {
            FileDType::Bool | FileDType::U8 => DType::U8,
            FileDType::I8 | FileDType::I16 | FileDType::U16 | FileDType::I32 => DType::I32,
            FileDType::U32 | FileDType::I64 => DType::I64,
            FileDType::F16 => DType::F16,
            FileDType::BF16 => DType::BF16,
            FileDType::F32 => DType::F32,
            FileDType::F64 => DType::F64,
        }
    }

    /// How a tensor of `dtype` is stored.
    pub fn of_tensor(dtype: DType) -> FileDType {
        match dtype {
            DType::F32 => FileDType::F32,
            DType::F64 => FileDType::F64,
            DType::BF16 => FileDType::BF16,
            DType::F16 => FileDType::F16,
            DType::I32 => FileDType::I32,
            DType::I64 => FileDType::I64,
            DType::U8 => FileDType::U8,
        }
    }

    /// Position in the `safetensors` crate's `Dtype` enum, whose order its writer sorts by (largest first).
    fn writer_rank(self) -> u8 {
        match self {
            FileDType::Bool => 0,
            FileDType::U8 => 4,
            FileDType::I8 => 5,
            FileDType::I16 => 11,
            FileDType::U16 => 12,
            FileDType::F16 => 13,
            FileDType::BF16 => 14,
            FileDType::I32 => 15,
            FileDType::U32 => 16,
            FileDType::F32 => 17,
            FileDType::F64 => 19,
            FileDType::I64 => 20,
        }
    }
}

/// One tensor's header entry. Offsets are relative to the start of the data buffer, end exclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: FileDType,
    pub shape: Vec<usize>,
    pub data_offsets: (usize, usize),
}

/// An open, fully validated safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data buffer in the file (8 + header length).
    data_start: usize,
    /// Sorted by data offset, so reading them in order walks the file front to back.
    tensors: Vec<TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

impl SafetensorsFile {
    /// Open and validate `path`. Nothing is allocated in proportion to what the header claims.
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let shown = path.display();
        let file = File::open(path).with_context(|| format!("cannot open {shown}"))?;
        let file_len = file.metadata().with_context(|| format!("cannot stat {shown}"))?.len();
        if file_len < 8 {
            bail!(
                "{shown}: {file_len} bytes is too short for a safetensors file (8-byte header length + JSON header); \
                 the file is empty or truncated, re-download or re-save it"
            );
        }
        // SAFETY: the mapping is read-only. Like every mmap-based loader we rely on the file not being truncated
        // or rewritten while it is open; all bounds are validated against the length seen here.
        let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot memory-map {shown}"))?;
        let header_len = u64::from_le_bytes(mmap[..8].try_into().map_err(|_| Error::msg("unreachable"))?);
        if header_len > MAX_HEADER_BYTES {
            bail!(
                "{shown}: header length {header_len} exceeds the safetensors limit of {MAX_HEADER_BYTES} bytes; \
                 the file is corrupt or not a safetensors file"
            );
        }
        if 8 + header_len > file_len {
            bail!(
                "{shown}: header length {header_len} runs past the end of the file ({file_len} bytes); \
                 the file is truncated or not a safetensors file"
            );
        }
        let data_start = 8 + header_len as usize;
        let header = std::str::from_utf8(&mmap[8..data_start]).map_err(|e| {
            Error::msg(format!("{shown}: header is not UTF-8 (invalid byte at header offset {})", e.valid_up_to()))
        })?;
        if !header.starts_with('{') {
            bail!("{shown}: header does not start with '{{'; not a safetensors file");
        }
        let (tensors, metadata) =
            parse_header(header, (file_len - data_start as u64) as usize).with_context(|| format!("{shown}"))?;
        #[cfg(unix)]
        {
            // Tensors are read front to back; ask for aggressive read-ahead. Advisory only.
            let _ = mmap.advise(memmap2::Advice::Sequential);
        }
        Ok(SafetensorsFile { path: path.to_path_buf(), mmap, data_start, tensors, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` string map (empty when absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Read one tensor. `float_dtype`: the dtype float tensors are converted to (`None` keeps the file's);
    /// integer tensors always load as [`FileDType::natural_dtype`].
    pub fn read(&self, name: &str, float_dtype: Option<DType>) -> Result<Tensor> {
        let info = self
            .info(name)
            .ok_or_else(|| Error::msg(format!("{}: no tensor named {name:?}", self.path.display())))?;
        self.read_info(info, float_dtype)
    }

    fn read_info(&self, info: &TensorInfo, float_dtype: Option<DType>) -> Result<Tensor> {
        let (begin, end) = (self.data_start + info.data_offsets.0, self.data_start + info.data_offsets.1);
        let bytes = &self.mmap[begin..end];
        let target = match float_dtype {
            Some(d) if info.dtype.is_float() && d.is_float() => d,
            _ => info.dtype.natural_dtype(),
        };
        let tensor = decode_tensor(bytes, info.dtype, target, &info.shape)
            .with_context(|| format!("{}: tensor {:?}", self.path.display(), info.name))?;
        self.drop_pages(begin, end - begin);
        Ok(tensor)
    }

    /// Release the mapped pages of a range already copied out, so the file does not stay resident next to the
    /// loaded copy. Advisory: a failure only costs memory.
    fn drop_pages(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        if len > 0 {
            // SAFETY: the mapping is a read-only shared file mapping and no slice into this range is alive past
            // this point (the tensor has been copied out). MADV_DONTNEED on such a mapping only drops the page
            // table entries; a later access faults the same file bytes back in. memmap2 aligns the start down to
            // a page; a neighbouring tensor's shared boundary page is simply re-read if needed.
            unsafe {
                let _ = self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len);
            }
        }
        #[cfg(not(unix))]
        let _ = (offset, len);
    }

    /// Read the tensors `keep` accepts into `weights`, floats converted to `opts.dtype`, in file order.
    pub fn load_into(&self, weights: &mut WeightMap, opts: &LoadOptions, keep: impl Fn(&str) -> bool) -> Result<()> {
        for info in &self.tensors {
            if keep(&info.name) {
                let t = self.read_info(info, Some(opts.dtype.dtype()))?;
                weights.insert(info.name.clone(), t)?;
            }
        }
        Ok(())
    }
}

/// Every tensor of one safetensors file, floats converted to `opts.dtype`.
pub fn load_safetensors(path: &Path, opts: &LoadOptions) -> Result<WeightMap> {
    let file = SafetensorsFile::open(path)?;
    let mut weights = WeightMap::new(path.display().to_string());
    file.load_into(&mut weights, opts, |_| true)?;
    Ok(weights)
}

// ---- header parsing ---------------------------------------------------------------------------------------

fn parse_header(header: &str, data_len: usize) -> Result<(Vec<TensorInfo>, BTreeMap<String, String>)> {
    let value: Value = serde_json::from_str(header).map_err(|e| Error::msg(format!("header is not valid JSON: {e}")))?;
    // serde_json keeps the last of two equal keys silently; the format forbids them, so look for them ourselves.
    if let Some(key) = find_duplicate_key(header) {
        bail!("header lists the key {key:?} twice (duplicate keys are not allowed)");
    }
    let Value::Object(entries) = value else { bail!("header is not a JSON object") };
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        if name == "__metadata__" {
            let Value::Object(m) = entry else { bail!("__metadata__ must be an object of strings") };
            for (k, v) in m {
                let Value::String(s) = v else { bail!("__metadata__[{k:?}] must be a string, got {v}") };
                metadata.insert(k, s);
            }
            continue;
        }
        tensors.push(parse_entry(&name, &entry).with_context(|| format!("tensor {name:?}"))?);
    }
    // Exact coverage, as the safetensors crate requires: sorted by offset, each tensor starts where the last ended.
    tensors.sort_by_key(|t| t.data_offsets);
    let mut covered = 0usize;
    let mut previous: Option<&TensorInfo> = None;
    for t in &tensors {
        let (begin, end) = t.data_offsets;
        if end > data_len {
            bail!(
                "tensor {:?}: data_offsets [{begin}, {end}] run past the end of the data ({data_len} bytes after the \
                 header); the file is truncated",
                t.name
            );
        }
        if begin < covered {
            let other = previous.map(|p| format!("{:?} {:?}", p.name, p.data_offsets)).unwrap_or_default();
            bail!("tensor {:?}: data_offsets [{begin}, {end}] overlap tensor {other}", t.name);
        }
        if begin > covered {
            bail!("tensor {:?}: data_offsets [{begin}, {end}] leave a gap of {} bytes before it", t.name, begin - covered);
        }
        covered = end;
        previous = Some(t);
    }
    if covered != data_len {
        bail!("{} bytes after the last tensor are not covered by any tensor; the file is corrupt", data_len - covered);
    }
    Ok((tensors, metadata))
}

fn parse_entry(name: &str, entry: &Value) -> Result<TensorInfo> {
    let Value::Object(fields) = entry else { bail!("entry must be an object with dtype, shape, data_offsets") };
    let dtype_name = fields.get("dtype").and_then(Value::as_str).ok_or_else(|| Error::msg("\"dtype\" missing or not a string"))?;
    let dtype = match FileDType::parse(dtype_name) {
        Some(d) => d,
        None if KNOWN_UNSUPPORTED.contains(&dtype_name) => bail!(
            "dtype {dtype_name} is valid safetensors but ferrotune cannot load it (supported: {})",
            supported_dtypes()
        ),
        None => bail!("unknown dtype {dtype_name:?} (supported: {})", supported_dtypes()),
    };
    let shape = fields
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::msg("\"shape\" missing or not a list"))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| Error::msg("\"shape\" must hold non-negative integers"))?;
    let offsets = fields
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|o| o.len() == 2)
        .ok_or_else(|| Error::msg("\"data_offsets\" missing or not [begin, end]"))?;
    let offset = |i: usize| {
        offsets[i]
            .as_u64()
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| Error::msg("\"data_offsets\" must be non-negative integers"))
    };
    let (begin, end) = (offset(0)?, offset(1)?);
    let nbytes = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
        .ok_or_else(|| Error::msg(format!("shape {shape:?} of {dtype_name} overflows the address space")))?;
    if end < begin || end - begin != nbytes {
        bail!("data_offsets [{begin}, {end}] hold {} bytes but shape {shape:?} of {dtype_name} needs {nbytes}", end.wrapping_sub(begin) as isize);
    }
    Ok(TensorInfo { name: name.to_string(), dtype, shape, data_offsets: (begin, end) })
}

fn supported_dtypes() -> String {
    FileDType::ALL.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
}

/// The first key that appears twice in one object of `json`, which must already be valid JSON. Walks the text
/// once, keeping a key set per open object; keys are unescaped with serde_json so `"a"` and `"\u0061"` match.
pub(crate) fn find_duplicate_key(json: &str) -> Option<String> {
    enum Frame {
        Object { keys: HashSet<String>, expect_key: bool },
        Array,
    }
    let bytes = json.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => stack.push(Frame::Object { keys: HashSet::new(), expect_key: true }),
            b'[' => stack.push(Frame::Array),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = true;
                }
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Frame::Object { keys, expect_key }) = stack.last_mut() {
                    if *expect_key {
                        *expect_key = false;
                        let raw = json.get(start..=i.min(bytes.len() - 1))?;
                        let key: String = serde_json::from_str(raw).ok()?;
                        if !keys.insert(key.clone()) {
                            return Some(key);
                        }
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

// ---- decoding ---------------------------------------------------------------------------------------------

/// A little-endian scalar in a file.
trait LeScalar: Copy + Send + Sync {
    const SIZE: usize;
    fn from_le(bytes: &[u8]) -> Self;
}

macro_rules! le_scalar {
    ($($t:ty),*) => {$(
        impl LeScalar for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            #[inline(always)]
            fn from_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
        }
    )*};
}
le_scalar!(u8, i8, i16, u16, i32, u32, i64, f32, f64);

/// Decode `bytes` as `S` values, converting each, straight into the output `Vec` (split across threads).
fn decode<S: LeScalar, D: Send>(bytes: &[u8], convert: impl Fn(S) -> D + Sync + Send) -> Vec<D> {
    let mut out = Vec::new();
    bytes.par_chunks_exact(S::SIZE).with_min_len(1 << 16).map(|b| convert(S::from_le(b))).collect_into_vec(&mut out);
    out
}

/// Decode a float tensor into `D`, given how to make a `D` from an f32 and from an f64 (each source value is
/// rounded once).
fn decode_float<D: Send>(
    bytes: &[u8],
    src: FileDType,
    from_f32: impl Fn(f32) -> D + Sync + Send + Copy,
    from_f64: impl Fn(f64) -> D + Sync + Send,
) -> Vec<D> {
    match src {
        FileDType::F64 => decode::<f64, D>(bytes, from_f64),
        FileDType::BF16 => decode::<u16, D>(bytes, move |b| from_f32(bf16::from_bits(b).to_f32())),
        FileDType::F16 => decode::<u16, D>(bytes, move |b| from_f32(f16::from_bits(b).to_f32())),
        _ => decode::<f32, D>(bytes, from_f32),
    }
}

fn decode_tensor(bytes: &[u8], src: FileDType, target: DType, shape: &[usize]) -> Result<Tensor> {
    let t = match (src, target) {
        (_, DType::F32) if src.is_float() => Tensor::from_vec(decode_float(bytes, src, |x| x, |x| x as f32), shape),
        (_, DType::F64) if src.is_float() => Tensor::from_vec(decode_float(bytes, src, |x| x as f64, |x| x), shape),
        (_, DType::BF16) if src.is_float() => Tensor::from_vec(decode_float(bytes, src, bf16::from_f32, bf16::from_f64), shape),
        (_, DType::F16) if src.is_float() => Tensor::from_vec(decode_float(bytes, src, f16::from_f32, f16::from_f64), shape),
        (FileDType::Bool | FileDType::U8, DType::U8) => Tensor::from_vec(bytes.to_vec(), shape),
        (FileDType::I8, DType::I32) => Tensor::from_vec(decode::<i8, i32>(bytes, i32::from), shape),
        (FileDType::I16, DType::I32) => Tensor::from_vec(decode::<i16, i32>(bytes, i32::from), shape),
        (FileDType::U16, DType::I32) => Tensor::from_vec(decode::<u16, i32>(bytes, i32::from), shape),
        (FileDType::I32, DType::I32) => Tensor::from_vec(decode::<i32, i32>(bytes, |x| x), shape),
        (FileDType::U32, DType::I64) => Tensor::from_vec(decode::<u32, i64>(bytes, i64::from), shape),
        (FileDType::I64, DType::I64) => Tensor::from_vec(decode::<i64, i64>(bytes, |x| x), shape),
        _ => bail!("cannot load {} data as {target:?}", src.name()),
    };
    Ok(t?)
}

// ---- writing ----------------------------------------------------------------------------------------------

/// Write `tensors` to `path` as the `safetensors` crate does (same header bytes: `__metadata__` first, tensors
/// sorted by dtype then name, header padded with spaces to a multiple of 8). Atomic: the data goes to a
/// temporary file in the same folder, is fsynced, then renamed over `path`, so a crash never leaves a torn file.
pub fn save_safetensors(path: &Path, tensors: &[(&str, &Tensor)], metadata: Option<&BTreeMap<String, String>>) -> Result<()> {
    let shown = path.display();
    let mut order: Vec<(&str, &Tensor, FileDType)> =
        tensors.iter().map(|&(name, t)| (name, t, FileDType::of_tensor(t.dtype()))).collect();
    order.sort_by(|a, b| b.2.writer_rank().cmp(&a.2.writer_rank()).then(a.0.cmp(b.0)));
    for pair in order.windows(2) {
        if pair[0].0 == pair[1].0 {
            bail!("{shown}: tensor {:?} is given twice", pair[0].0);
        }
    }
    if order.iter().any(|t| t.0 == "__metadata__") {
        bail!("{shown}: \"__metadata__\" is reserved and cannot name a tensor");
    }

    let mut header = String::from("{");
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    if let Some(m) = metadata {
        header.push_str("\"__metadata__\":{");
        let entries: Vec<String> = m.iter().map(|(k, v)| format!("{}:{}", quote(k), quote(v))).collect();
        header.push_str(&entries.join(","));
        header.push('}');
        if !order.is_empty() {
            header.push(',');
        }
    }
    let mut offset = 0usize;
    for (i, (name, t, dtype)) in order.iter().enumerate() {
        let nbytes = t.elem_count() * dtype.size_in_bytes();
        let shape: Vec<String> = t.shape().iter().map(usize::to_string).collect();
        header.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            quote(name),
            dtype.name(),
            shape.join(","),
            offset + nbytes
        ));
        if i + 1 < order.len() {
            header.push(',');
        }
        offset += nbytes;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }

    write_atomically(path, |out| {
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(header.as_bytes())?;
        for (name, t, _) in &order {
            write_tensor_bytes(out, t).map_err(|e| std::io::Error::other(format!("tensor {name:?}: {e}")))?;
        }
        Ok(())
    })
    .with_context(|| format!("cannot write {shown}"))
}

/// Write through a temporary file next to `path`, fsync it, rename it over `path`, then fsync the folder.
pub(crate) fn write_atomically(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        fill(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // Persist the rename itself; not every platform can open a folder, so this is best effort.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A tensor's elements as little-endian bytes, in row-major order, a chunk at a time.
fn write_tensor_bytes(out: &mut dyn Write, t: &Tensor) -> std::io::Result<()> {
    let io = |e: ferrotune_tensor::Error| std::io::Error::other(e.to_string());
    let t = t.to_device(Device::Cpu).map_err(io)?.contiguous().map_err(io)?;
    fn put<T: ferrotune_tensor::Element, const N: usize>(
        out: &mut dyn Write,
        t: &Tensor,
        to_le: impl Fn(T) -> [u8; N],
    ) -> std::io::Result<()> {
        let data = t.cpu_slice::<T>().map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut buf = Vec::with_capacity(N * 16384);
        for chunk in data.chunks(16384) {
            buf.clear();
            for &x in chunk {
                buf.extend_from_slice(&to_le(x));
            }
            out.write_all(&buf)?;
        }
        Ok(())
    }
    match t.dtype() {
        DType::F32 => put::<f32, 4>(out, &t, f32::to_le_bytes),
        DType::F64 => put::<f64, 8>(out, &t, f64::to_le_bytes),
        DType::BF16 => put::<bf16, 2>(out, &t, |x| x.to_bits().to_le_bytes()),
        DType::F16 => put::<f16, 2>(out, &t, |x| x.to_bits().to_le_bytes()),
        DType::I32 => put::<i32, 4>(out, &t, i32::to_le_bytes),
        DType::I64 => put::<i64, 8>(out, &t, i64::to_le_bytes),
        DType::U8 => put::<u8, 1>(out, &t, |x| [x]),
    }
}

// ---- HF folders -------------------------------------------------------------------------------------------

/// Whether `dir` holds safetensors weights transformers would load (`model.safetensors` or the index).
pub fn has_hf_weights(dir: &Path) -> bool {
    dir.join(INDEX_FILE).is_file() || dir.join(SINGLE_FILE).is_file()
}

/// The `weight_map` of `model.safetensors.index.json`: tensor name -> shard file name.
pub fn read_index(index_path: &Path) -> Result<BTreeMap<String, String>> {
    let shown = index_path.display();
    let text = std::fs::read_to_string(index_path).with_context(|| format!("cannot read {shown}"))?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("{shown} is not valid JSON"))?;
    let Some(Value::Object(map)) = value.get("weight_map") else {
        bail!("{shown}: no \"weight_map\" object (expected {{\"weight_map\": {{tensor name: shard file}}}})");
    };
    let mut routing = BTreeMap::new();
    for (name, file) in map {
        let Value::String(file) = file else { bail!("{shown}: weight_map[{name:?}] must be a file name, got {file}") };
        // Shards live next to the index; refuse paths that would read elsewhere.
        if file.contains('/') || file.contains('\\') || file == ".." || file.is_empty() {
            bail!("{shown}: weight_map[{name:?}] = {file:?} is not a file name in the same folder");
        }
        routing.insert(name.clone(), file.clone());
    }
    Ok(routing)
}

/// The weights of an HF folder: shards routed by `model.safetensors.index.json`, else `model.safetensors`.
pub fn load_hf_weights(dir: &Path, opts: &LoadOptions) -> Result<WeightMap> {
    let index_path = dir.join(INDEX_FILE);
    if index_path.is_file() {
        let routing = read_index(&index_path)?;
        let mut shards: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
        for (name, file) in &routing {
            shards.entry(file.as_str()).or_default().insert(name.as_str());
        }
        let mut weights = WeightMap::new(dir.display().to_string());
        for (file, names) in shards {
            let shard_path = dir.join(file);
            if !shard_path.is_file() {
                bail!(
                    "{}: shard {file} is missing (listed in {} for {} tensors); re-download the model",
                    dir.display(),
                    index_path.display(),
                    names.len()
                );
            }
            let shard = SafetensorsFile::open(&shard_path)?;
            for name in &names {
                if shard.info(name).is_none() {
                    bail!("{}: tensor {name:?} is not in shard {file} although {INDEX_FILE} routes it there", dir.display());
                }
            }
            shard.load_into(&mut weights, opts, |n| names.contains(n))?;
        }
        return Ok(weights);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return load_safetensors(&single, opts);
    }
    let legacy = ["pytorch_model.bin", "pytorch_model.bin.index.json"].iter().find(|f| dir.join(f).exists());
    match legacy {
        Some(f) => bail!(
            "{}: only {f} (PyTorch pickle) is present; ferrotune reads safetensors. Convert it once with \
             transformers (`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir)`)",
            dir.display()
        ),
        None => bail!("{}: neither {SINGLE_FILE} nor {INDEX_FILE} is present", dir.display()),
    }
}

/// Write `tensors` as HF does: one `model.safetensors` when the total fits in `max_shard_bytes`, else
/// `model-0000i-of-0000n.safetensors` shards (a new shard starts when the next tensor would overflow the
/// current one) plus `model.safetensors.index.json`. Metadata `{"format": "pt"}` as transformers requires.
/// Returns the files written.
pub fn save_hf_weights(dir: &Path, tensors: &[(&str, &Tensor)], max_shard_bytes: u64) -> Result<Vec<PathBuf>> {
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let size = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
    let total: u64 = tensors.iter().map(|(_, t)| size(t)).sum();
    // A stale index next to a fresh single file (or the reverse) would make loaders pick the wrong weights.
    let remove_stale = |keep_index: bool| -> Result<()> {
        let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let is_shard = name.starts_with("model-") && name.ends_with(".safetensors");
            if (name == INDEX_FILE && !keep_index) || (name == SINGLE_FILE && keep_index) || is_shard {
                std::fs::remove_file(entry.path()).with_context(|| format!("cannot remove stale {}", entry.path().display()))?;
            }
        }
        Ok(())
    };
    if total <= max_shard_bytes {
        remove_stale(false)?;
        let path = dir.join(SINGLE_FILE);
        save_safetensors(&path, tensors, Some(&metadata))?;
        return Ok(vec![path]);
    }
    let mut shards: Vec<Vec<(&str, &Tensor)>> = vec![Vec::new()];
    let mut current = 0u64;
    for &(name, t) in tensors {
        let last = shards.last().map_or(0, Vec::len);
        if last > 0 && current + size(t) > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        current += size(t);
        if let Some(s) = shards.last_mut() {
            s.push((name, t));
        }
    }
    remove_stale(true)?;
    let count = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut written = Vec::with_capacity(count + 1);
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        let path = dir.join(&file);
        save_safetensors(&path, shard, Some(&metadata))?;
        for (name, _) in shard {
            weight_map.insert(name.to_string(), Value::String(file.clone()));
        }
        written.push(path);
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let index_path = dir.join(INDEX_FILE);
    let text = serde_json::to_string_pretty(&index).map_err(|e| Error::msg(e.to_string()))? + "\n";
    write_atomically(&index_path, |out| out.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", index_path.display()))?;
    written.push(index_path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::find_duplicate_key;

    #[test]
    fn duplicate_keys_found_at_any_depth_and_through_escapes() {
        assert_eq!(find_duplicate_key(r#"{"a":1,"b":{"x":[1,{"y":2}],"y":3}}"#), None);
        assert_eq!(find_duplicate_key(r#"{"a":1,"a":2}"#).as_deref(), Some("a"));
        assert_eq!(find_duplicate_key(r#"{"a":{"d":1,"d":2}}"#).as_deref(), Some("d"));
        assert_eq!(find_duplicate_key(r#"{"ab":1,"a\u0062":2}"#).as_deref(), Some("ab"));
        assert_eq!(find_duplicate_key(r#"{"k":"a\"b","v":["k","k"]}"#), None);
    }
}
