//! GGUF container parsing: header, metadata key/values, tensor infos, data section. Versions 1-3.
//!
//! ```text
//! offset 0   "GGUF"  u32 version  n_tensors  n_kv        (counts are u64 in v2/v3, u32 in v1)
//!            n_kv x { string key, u32 value_type, value }
//!            n_tensors x { string name, u32 n_dims, n_dims x dim, u32 ggml_type, u64 offset }
//!            zero padding up to a multiple of `general.alignment` (u32, default 32)
//! data       tensor bytes; each tensor at data + offset (offset a multiple of the alignment)
//! string  =  length (u64; u32 in v1) + UTF-8 bytes, no NUL
//! array   =  u32 element type, count (u64; u32 in v1), elements (arrays nest)
//! dims    =  innermost (contiguous) dimension first: ggml ne[0] is PyTorch's last dimension
//! ```
//!
//! The file comes from users and the network, so every length and count is checked against the bytes that are
//! actually left before anything is allocated, all arithmetic is overflow-checked, and tensors must lie inside the
//! data section without overlapping. Errors name the file, the key or tensor, and what is wrong.

use super::dequant::GgmlType;
use crate::{bail, Context, Error, Result};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The metadata value types of the GGUF spec, by their on-disk id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufValueType {
    fn from_id(id: u32) -> Option<GgufValueType> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type occupies: an array claiming `count` elements needs at least
    /// `count * min_size` bytes left, which bounds hostile counts before anything is allocated.
    fn min_size(self, wide_counts: bool) -> usize {
        use GgufValueType::*;
        let count = if wide_counts { 8 } else { 4 };
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
            String => count,
            Array => 4 + count,
        }
    }
}

/// One metadata value. Arrays keep their element type so an empty array still says what it holds.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufValueType, Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Any integer type that holds a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// Any integer type, signed.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    /// f32 or f64 (integers too: a converter may write `rope.freq_base` as an integer).
    /// f32 values come back as the shortest decimal that rounds to them (`1e-5`, not `9.99999974e-6`):
    /// converters wrote them from Python floats, and configs written back should carry the original number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.to_string().parse().unwrap_or(v as f64)),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(_, items) => Some(items),
            _ => None,
        }
    }
    /// A short description for error messages and `inspect` output (arrays show their length, not contents).
    pub fn type_name(&self) -> String {
        match self {
            GgufValue::U8(_) => "u8".into(),
            GgufValue::I8(_) => "i8".into(),
            GgufValue::U16(_) => "u16".into(),
            GgufValue::I16(_) => "i16".into(),
            GgufValue::U32(_) => "u32".into(),
            GgufValue::I32(_) => "i32".into(),
            GgufValue::F32(_) => "f32".into(),
            GgufValue::Bool(_) => "bool".into(),
            GgufValue::String(_) => "string".into(),
            GgufValue::Array(t, items) => format!("array<{t:?}>[{}]", items.len()),
            GgufValue::U64(_) => "u64".into(),
            GgufValue::I64(_) => "i64".into(),
            GgufValue::F64(_) => "f64".into(),
        }
    }
}

impl fmt::Display for GgufValue {
    /// Scalars print their value; strings are quoted and cut at 80 characters; arrays print type and length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufValue::U8(v) => write!(f, "{v}"),
            GgufValue::I8(v) => write!(f, "{v}"),
            GgufValue::U16(v) => write!(f, "{v}"),
            GgufValue::I16(v) => write!(f, "{v}"),
            GgufValue::U32(v) => write!(f, "{v}"),
            GgufValue::I32(v) => write!(f, "{v}"),
            GgufValue::F32(v) => write!(f, "{v}"),
            GgufValue::Bool(v) => write!(f, "{v}"),
            GgufValue::U64(v) => write!(f, "{v}"),
            GgufValue::I64(v) => write!(f, "{v}"),
            GgufValue::F64(v) => write!(f, "{v}"),
            GgufValue::String(s) if s.chars().count() > 80 => {
                write!(f, "{:?}... ({} bytes)", s.chars().take(80).collect::<String>(), s.len())
            }
            GgufValue::String(s) => write!(f, "{s:?}"),
            GgufValue::Array(..) => f.write_str(&self.type_name()),
        }
    }
}

/// Where one tensor lives and what it is, as listed in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// PyTorch order (outermost first): the file's dims reversed.
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
    /// Bytes the tensor occupies (`elements / block_size * type_size`).
    pub size: u64,
}

impl GgufTensorInfo {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Everything in a GGUF file except the tensor bytes: cheap to read, and what `inspect` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufMetadata {
    pub version: u32,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    pub file_size: u64,
    pub kv: BTreeMap<String, GgufValue>,
    /// In file order.
    pub tensors: Vec<GgufTensorInfo>,
}

impl GgufMetadata {
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv.get(key)
    }
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
    /// `general.architecture`, the prefix of the model's hyperparameter keys.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(GgufValue::as_str)
    }
}

/// A memory-mapped GGUF file with its parsed metadata; tensor bytes are read lazily from the map.
pub struct GgufFile {
    pub path: PathBuf,
    pub metadata: GgufMetadata,
    mmap: Mmap,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).field("metadata", &self.metadata).finish()
    }
}

/// Nested arrays deeper than this are refused: real files use depth 1, and unbounded recursion would let a
/// hostile file overflow the stack.
const MAX_ARRAY_NESTING: usize = 8;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// The alignment when `general.alignment` is absent (GGUF_DEFAULT_ALIGNMENT).
pub const DEFAULT_ALIGNMENT: u64 = 32;

impl GgufFile {
    /// Memory-map and parse `path`. Only the header, metadata and tensor infos are read.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open GGUF file {}", path.display()))?;
        // SAFETY: the map is read-only; as with every mmap-based loader, the file must not be truncated while
        // it is mapped (a concurrent writer is outside what a model file supports).
        let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot memory-map {}", path.display()))?;
        let metadata = parse(&mmap).with_context(|| format!("{}", path.display()))?;
        Ok(GgufFile { path: path.to_path_buf(), metadata, mmap })
    }

    /// The raw bytes of one tensor (bounds were checked when the file was opened).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        let start = self.metadata.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.size));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.mmap.len() as u64 => Ok(&self.mmap[s as usize..e as usize]),
            _ => bail!("{}: tensor {:?} lies outside the file", self.path.display(), info.name),
        }
    }

    /// Tell the OS we are done with one tensor's mapped pages, so a loader that walks the file once does not
    /// keep the whole file resident next to the dequantized weights. Advice only: failure changes nothing but
    /// memory use.
    pub fn release_tensor_pages(&self, info: &GgufTensorInfo) {
        #[cfg(unix)]
        {
            let start = self.metadata.data_offset.saturating_add(info.offset);
            if start.saturating_add(info.size) <= self.mmap.len() as u64 && info.size > 0 {
                // SAFETY: the map is read-only and file-backed, so MADV_DONTNEED only drops clean pages, which the
                // kernel reads back from the file on the next access; no slice into these pages is alive here
                // (the caller has finished with the tensor's bytes).
                let _ = unsafe {
                    self.mmap.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start as usize,
                        info.size as usize,
                    )
                };
            }
        }
    }
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// v2/v3 counts and string lengths are u64; v1 used u32.
    wide_counts: bool,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            bail!(
                "{what} needs {n} bytes at offset {} but the file ends after {} bytes (truncated file?)",
                self.pos,
                self.bytes.len()
            );
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count or length: u64 (u32 in v1).
    fn count(&mut self, what: &str) -> Result<u64> {
        if self.wide_counts {
            self.u64(what)
        } else {
            Ok(self.u32(what)? as u64)
        }
    }

    /// A count that claims `count` items of at least `min_item` bytes each: refuse it unless they fit in what is
    /// left of the file, so a hostile count never turns into a huge allocation.
    fn bounded_count(&mut self, min_item: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let count = self.count(what)?;
        let need = count.checked_mul(min_item as u64);
        match need {
            Some(need) if need <= self.remaining() as u64 => Ok(count as usize),
            _ => bail!(
                "{what} is {count} at offset {at}, but only {} bytes follow (at least {min_item} per item); \
                 the file is corrupt or truncated",
                self.remaining()
            ),
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.bounded_count(1, &format!("{what} length"))?;
        let at = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| Error::msg(format!("{what} at offset {at} is not valid UTF-8: {e}")))
    }

    fn value(&mut self, ty: GgufValueType, depth: usize) -> Result<GgufValue> {
        use GgufValueType as T;
        Ok(match ty {
            T::U8 => GgufValue::U8(self.array::<1>("u8 value")?[0]),
            T::I8 => GgufValue::I8(self.array::<1>("i8 value")?[0] as i8),
            T::U16 => GgufValue::U16(u16::from_le_bytes(self.array("u16 value")?)),
            T::I16 => GgufValue::I16(i16::from_le_bytes(self.array("i16 value")?)),
            T::U32 => GgufValue::U32(self.u32("u32 value")?),
            T::I32 => GgufValue::I32(i32::from_le_bytes(self.array("i32 value")?)),
            T::F32 => GgufValue::F32(f32::from_le_bytes(self.array("f32 value")?)),
            T::U64 => GgufValue::U64(self.u64("u64 value")?),
            T::I64 => GgufValue::I64(i64::from_le_bytes(self.array("i64 value")?)),
            T::F64 => GgufValue::F64(f64::from_le_bytes(self.array("f64 value")?)),
            T::Bool => {
                let at = self.pos;
                match self.array::<1>("bool value")?[0] {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => bail!("bool value at offset {at} is {b}, not 0 or 1"),
                }
            }
            T::String => GgufValue::String(self.string("string value")?),
            T::Array => {
                if depth >= MAX_ARRAY_NESTING {
                    bail!("arrays nested more than {MAX_ARRAY_NESTING} deep at offset {}", self.pos);
                }
                let at = self.pos;
                let elem_id = self.u32("array element type")?;
                let elem = GgufValueType::from_id(elem_id)
                    .ok_or_else(|| Error::msg(format!("array at offset {at} has unknown element type {elem_id}")))?;
                let n = self.bounded_count(elem.min_size(self.wide_counts), "array length")?;
                let mut items = Vec::with_capacity(n);
                for i in 0..n {
                    items.push(self.value(elem, depth + 1).with_context(|| format!("array element {i}"))?);
                }
                GgufValue::Array(elem, items)
            }
        })
    }
}

/// Parse header, metadata and tensor infos of a whole GGUF file held in `bytes`.
pub fn parse(bytes: &[u8]) -> Result<GgufMetadata> {
    let mut c = Cursor { bytes, pos: 0, wide_counts: true };
    let magic = c.array::<4>("the GGUF magic").context("not a GGUF file")?;
    if &magic != b"GGUF" {
        bail!("not a GGUF file: it starts with {magic:02x?}, not \"GGUF\" (47 47 55 46)");
    }
    let version = c.u32("the version")?;
    match version {
        1 => c.wide_counts = false,
        2 | 3 => {}
        v => bail!("GGUF version {v} is not supported (ferrotune reads versions 1, 2 and 3)"),
    }
    // Each tensor info needs at least: name length, n_dims, ggml type, offset.
    let count_bytes = if c.wide_counts { 8 } else { 4 };
    let tensor_count = c.count("tensor count")?;
    let kv_at = c.pos;
    // Each key/value needs at least a key length, a type and one byte of value.
    let kv_count = c.bounded_count(count_bytes + 4 + 1, "metadata key/value count")?;
    let min_tensor_info = (count_bytes + 4 + 4 + 8) as u64;
    if tensor_count.checked_mul(min_tensor_info).is_none_or(|n| n > (bytes.len() - kv_at) as u64) {
        bail!(
            "the header claims {tensor_count} tensors, which cannot fit in a {}-byte file; the file is corrupt",
            bytes.len()
        );
    }

    let mut kv = BTreeMap::new();
    for i in 0..kv_count {
        let key = c.string("metadata key").with_context(|| format!("metadata entry {i}"))?;
        let type_at = c.pos;
        let ty_id = c.u32("value type").with_context(|| format!("metadata key {key:?}"))?;
        let ty = GgufValueType::from_id(ty_id).ok_or_else(|| {
            Error::msg(format!("metadata key {key:?}: unknown value type {ty_id} at offset {type_at} (known: 0-12)"))
        })?;
        let value = c.value(ty, 0).with_context(|| format!("metadata key {key:?}"))?;
        if kv.insert(key.clone(), value).is_some() {
            bail!("metadata key {key:?} appears twice");
        }
    }

    let alignment = match kv.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if *a > 0 && a.is_power_of_two() => *a as u64,
        Some(v) => bail!("metadata key \"general.alignment\" must be a u32 power of two, got {} ({v})", v.type_name()),
    };

    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(tensor_count as usize);
    for i in 0..tensor_count as usize {
        let name = c.string("tensor name").with_context(|| format!("tensor info {i}"))?;
        let info = tensor_info(&mut c, name.clone(), alignment).with_context(|| format!("tensor {name:?}"))?;
        tensors.push(info);
    }
    let mut seen = std::collections::HashSet::with_capacity(tensors.len());
    for t in &tensors {
        if !seen.insert(t.name.as_str()) {
            bail!("tensor {:?} is listed twice", t.name);
        }
    }

    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_size = bytes.len() as u64;
    let data_len = file_size.saturating_sub(data_offset);
    if data_offset > file_size && tensors.iter().any(|t| t.size > 0) {
        bail!("the data section would start at offset {data_offset}, past the end of the {file_size}-byte file (truncated)");
    }
    for t in &tensors {
        match t.offset.checked_add(t.size) {
            Some(end) if end <= data_len => {}
            _ => bail!(
                "tensor {:?} ({} bytes at data offset {}) runs past the end of the data section ({data_len} bytes); \
                 the file is truncated or corrupt",
                t.name,
                t.size,
                t.offset
            ),
        }
    }
    let mut by_offset: Vec<&GgufTensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if pair[0].offset + pair[0].size > pair[1].offset {
            bail!(
                "tensors {:?} (bytes {}..{}) and {:?} (from byte {}) overlap in the data section",
                pair[0].name,
                pair[0].offset,
                pair[0].offset + pair[0].size,
                pair[1].name,
                pair[1].offset
            );
        }
    }
    Ok(GgufMetadata { version, alignment, data_offset, file_size, kv, tensors })
}

fn tensor_info(c: &mut Cursor, name: String, alignment: u64) -> Result<GgufTensorInfo> {
    let n_dims = c.u32("n_dims")?;
    if n_dims > MAX_DIMS {
        bail!("has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}");
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        // v1 wrote dims as u32.
        dims.push(c.count("dimension")?);
    }
    let type_at = c.pos;
    let type_id = c.u32("ggml type")?;
    let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
        Error::msg(format!(
            "has ggml type {type_id} at offset {type_at}, which ferrotune does not know (supported: {})",
            GgmlType::supported_list()
        ))
    })?;
    let offset = c.u64("data offset")?;
    // Zero-sized dimensions count as 1 here, so a zero can't hide huge neighbours whose strides would overflow.
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d.max(1)))
        .filter(|&n| n <= usize::MAX as u64 / 4)
        .ok_or_else(|| Error::msg(format!("dimensions {dims:?} overflow")))?;
    let elements: u64 = dims.iter().product();
    let block = ggml_type.block_size() as u64;
    // ggml quantizes along rows: the innermost dimension must hold whole blocks.
    let inner = dims.first().copied().unwrap_or(1);
    if inner % block != 0 {
        bail!("innermost dimension {inner} is not a multiple of the {ggml_type} block size {block}");
    }
    let size = (elements / block)
        .checked_mul(ggml_type.type_size() as u64)
        .ok_or_else(|| Error::msg(format!("byte size of dimensions {dims:?} overflows")))?;
    if offset % alignment != 0 {
        bail!("data offset {offset} is not a multiple of the alignment {alignment}");
    }
    let shape = dims.iter().rev().map(|&d| d as usize).collect();
    Ok(GgufTensorInfo { name, shape, ggml_type, offset, size })
}
