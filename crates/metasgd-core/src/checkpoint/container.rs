//! The checksummed safetensors container every checkpoint of this project
//! is written in.
//!
//! A file is a plain safetensors file (any reader can open it) whose
//! `__metadata__` carries, besides the format's own keys:
//! - `format` and `format_version`;
//! - `tensor_crc32c`: a JSON object, tensor name -> CRC32C (8 hex digits)
//!   of that tensor's bytes;
//! - `header_crc32c`: the CRC32C of the whole header (the JSON text,
//!   padding included) computed with this value's own 8 digits read as
//!   `00000000`.
//!
//! The header checksum covers every tensor's dtype, shape and offsets, every
//! metadata value and the tensor checksums; the tensor checksums cover every
//! data byte. [`Reader::open`] verifies the header checksum before it parses
//! the header, and every tensor checksum before it returns: a file that
//! does not match is refused before any value is decoded.
//!
//! Version 1 files (written before checksums existed) carry neither key;
//! they load, unchecked, where the format allows it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use metasgd_kernels::Element;
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::{Error, Result};

/// The `format_version` this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 2;

/// The longest tensor name or metadata key a checkpoint may hold, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// safetensors' own bound on the header.
const MAX_HEADER: u64 = 100_000_000;

/// Keys the container owns; formats may not use them. `tensors` lists the
/// caller's tensors ([`Writer::caller_tensors`]), `counters` the caller's
/// integer counters ([`Writer::caller_counters`]).
pub(crate) const CONTAINER_KEYS: [&str; 6] = [
    "format",
    "format_version",
    "tensor_crc32c",
    "header_crc32c",
    "tensors",
    "counters",
];

/// Prefix of the caller's tensors.
const CALLER_PREFIX: &str = "tensor.";
/// Prefix of the caller's counters.
const COUNTER_PREFIX: &str = "counter.";

const HEADER_KEY: &[u8] = b"\"header_crc32c\":\"";
const PLACEHOLDER: &[u8; 8] = b"00000000";

/// Builds the bytes of one checkpoint file.
#[derive(Debug)]
pub struct Writer {
    metadata: HashMap<String, String>,
    tensors: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Entry {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Checks a tensor name or metadata key: non-empty, at most
/// [`MAX_NAME_LEN`] bytes, no control characters (`what` names the field
/// in the error).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(Error::invalid_checkpoint(
            what,
            format!(
                "{:?} is not a valid name (1 to {MAX_NAME_LEN} bytes, no control characters)",
                name.chars().take(40).collect::<String>()
            ),
        ));
    }
    Ok(())
}

pub(crate) fn dtype_of<A: Element>() -> Dtype {
    if size_of::<A>() == 4 {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

impl Writer {
    /// An empty file of the named format.
    pub fn new(format: &str) -> Self {
        Self {
            metadata: HashMap::from([
                ("format".to_string(), format.to_string()),
                ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ]),
            tensors: Vec::new(),
        }
    }

    /// Adds a `__metadata__` entry. The container's own keys and names
    /// already used are refused.
    pub fn metadata(&mut self, key: &str, value: impl Into<String>) -> Result<()> {
        check_name("__metadata__", key)?;
        if CONTAINER_KEYS.contains(&key) || self.metadata.contains_key(key) {
            return Err(Error::invalid_checkpoint(
                format!("__metadata__.{key}"),
                "is written twice (or is the container's own key)",
            ));
        }
        self.metadata.insert(key.to_string(), value.into());
        Ok(())
    }

    fn push(&mut self, name: &str, dtype: Dtype, shape: &[usize], data: Vec<u8>) -> Result<()> {
        check_name("tensor", name)?;
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::invalid_checkpoint(name, "is written twice"));
        }
        self.tensors.push(Entry {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            data,
        });
        Ok(())
    }

    /// Adds a tensor of `A` (written row-major, whatever `a`'s layout).
    pub fn floats<A: Element>(&mut self, name: &str, a: ArrayViewD<'_, A>) -> Result<()> {
        let mut data = Vec::with_capacity(a.len() * size_of::<A>());
        match a.as_slice() {
            Some(s) if cfg!(target_endian = "little") => {
                data.extend_from_slice(bytemuck::cast_slice(s));
            }
            _ => a.iter().for_each(|v| v.write_le(&mut data)),
        }
        self.push(name, dtype_of::<A>(), a.shape(), data)
    }

    /// Adds a 0-d tensor of `A`.
    pub fn float<A: Element>(&mut self, name: &str, v: A) -> Result<()> {
        let mut data = Vec::with_capacity(size_of::<A>());
        v.write_le(&mut data);
        self.push(name, dtype_of::<A>(), &[], data)
    }

    /// Adds a 0-d `U64` tensor.
    pub fn count(&mut self, name: &str, v: u64) -> Result<()> {
        self.push(name, Dtype::U64, &[], v.to_le_bytes().to_vec())
    }

    /// Adds the caller's tensors (a model's parameters, an experiment's own
    /// state) as `tensor.{name}`, and their names in order as the
    /// `__metadata__` key `tensors` (a JSON list, written even when empty).
    /// Names are checked with [`check_name`] and must differ.
    pub fn caller_tensors<A: Element>(
        &mut self,
        tensors: &[(&str, ArrayViewD<'_, A>)],
    ) -> Result<()> {
        let mut names = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            check_name("tensor", name)?;
            self.floats(&format!("{CALLER_PREFIX}{name}"), t.view())?;
            names.push(*name);
        }
        let names = serde_json::to_string(&names)
            .map_err(|e| Error::invalid_checkpoint("tensors", e.to_string()))?;
        self.metadata.insert("tensors".into(), names);
        Ok(())
    }

    /// Adds the caller's integer counters (an experiment's iteration
    /// numbers, its elapsed milliseconds) as 1-d `U64` tensors
    /// `counter.{name}`, and their names in order as the `__metadata__` key
    /// `counters` (a JSON list, written only when there are counters, so a
    /// file without them is what earlier versions wrote). Names are checked
    /// with [`check_name`] and must differ.
    pub fn caller_counters(&mut self, counters: &[(&str, &[u64])]) -> Result<()> {
        if counters.is_empty() {
            return Ok(());
        }
        let mut names = Vec::with_capacity(counters.len());
        for (name, values) in counters {
            check_name("counter", name)?;
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.push(
                &format!("{COUNTER_PREFIX}{name}"),
                Dtype::U64,
                &[values.len()],
                data,
            )?;
            names.push(*name);
        }
        let names = serde_json::to_string(&names)
            .map_err(|e| Error::invalid_checkpoint("counters", e.to_string()))?;
        self.metadata.insert("counters".into(), names);
        Ok(())
    }

    /// The file's bytes, checksums included.
    pub fn to_bytes(mut self) -> Result<Vec<u8>> {
        let crcs: BTreeMap<&str, String> = self
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), format!("{:08x}", crc32c::crc32c(&t.data))))
            .collect();
        let crcs = serde_json::to_string(&crcs)
            .map_err(|e| Error::invalid_checkpoint("tensor_crc32c", e.to_string()))?;
        self.metadata.insert("tensor_crc32c".into(), crcs);
        self.metadata.insert(
            "header_crc32c".into(),
            String::from_utf8_lossy(PLACEHOLDER).into_owned(),
        );
        let mut bytes = safetensors::serialize(
            self.tensors.iter().map(|t| (t.name.as_str(), t)),
            Some(self.metadata),
        )
        .map_err(|e| Error::invalid_checkpoint("file", format!("cannot encode: {e}")))?;
        let header = header_of(&bytes)?;
        let at = match find_unique(header, HEADER_KEY)? {
            Some(at) if header.get(at..at + 8) == Some(PLACEHOLDER) => at,
            _ => {
                return Err(Error::invalid_checkpoint(
                    "header_crc32c",
                    "cannot place the header checksum",
                ));
            }
        };
        let crc = format!("{:08x}", header_crc(header, at));
        bytes[8 + at..8 + at + 8].copy_from_slice(crc.as_bytes());
        Ok(bytes)
    }
}

/// A stored `format_version`: `1..=FORMAT_VERSION` (the checkpoint's and
/// serde's one rule).
pub(crate) fn parse_version(text: &str) -> Result<u32> {
    match text.parse::<u32>() {
        Ok(n @ 1..=FORMAT_VERSION) => Ok(n),
        Ok(n @ 1..) => Err(Error::invalid_checkpoint(
            "format_version",
            format!(
                "{n} was written by a newer metasgd; this one reads versions up to {FORMAT_VERSION}"
            ),
        )),
        _ => Err(Error::invalid_checkpoint(
            "format_version",
            format!("{text:?} is not a known version"),
        )),
    }
}

/// The header's bytes (after the 8-byte length), bounds checked.
fn header_of(bytes: &[u8]) -> Result<&[u8]> {
    let len: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::invalid_checkpoint("file", "shorter than 8 bytes"))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n > (bytes.len() - 8) as u64 {
        return Err(Error::invalid_checkpoint(
            "file",
            format!(
                "header length {n} exceeds the file ({} bytes) or the 100 MB bound",
                bytes.len()
            ),
        ));
    }
    Ok(&bytes[8..8 + n as usize])
}

/// Where the value after `needle` starts, if `needle` occurs exactly once.
fn find_unique(hay: &[u8], needle: &[u8]) -> Result<Option<usize>> {
    let mut hits = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i + needle.len());
    let first = hits.next();
    if hits.next().is_some() {
        return Err(Error::invalid_checkpoint(
            "header_crc32c",
            "appears more than once",
        ));
    }
    Ok(first)
}

/// CRC32C of `header` with the 8 digits at `at` read as `00000000`.
fn header_crc(header: &[u8], at: usize) -> u32 {
    let crc = crc32c::crc32c(&header[..at]);
    let crc = crc32c::crc32c_append(crc, PLACEHOLDER);
    crc32c::crc32c_append(crc, &header[at + 8..])
}

fn parse_hex(field: &str, text: &[u8]) -> Result<u32> {
    let ok = text.len() == 8 && text.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let value = ok
        .then(|| std::str::from_utf8(text).ok())
        .flatten()
        .and_then(|s| u32::from_str_radix(s, 16).ok());
    value.ok_or_else(|| {
        Error::invalid_checkpoint(field, "is not a checksum (8 lowercase hex digits)")
    })
}

fn mismatch(field: &str, stored: u32, computed: u32) -> Error {
    Error::invalid_checkpoint(
        field,
        format!(
            "checksum mismatch: stored {stored:08x}, computed {computed:08x} (the file is corrupt)"
        ),
    )
}

/// A checkpoint file, verified: checksums first, then its structure.
pub struct Reader<'a> {
    file: SafeTensors<'a>,
    metadata: HashMap<String, String>,
    version: u32,
}

impl std::fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("version", &self.version)
            .field("tensors", &self.file.names())
            .finish_non_exhaustive()
    }
}

impl<'a> Reader<'a> {
    /// Opens `bytes` as a file of `format`: the header checksum is verified
    /// before the header is parsed, then the safetensors structure, the
    /// format and its version, then every tensor's checksum. Version 1
    /// files (no checksums) are accepted only when `unchecked_v1` is true.
    pub fn open(bytes: &'a [u8], format: &str, unchecked_v1: bool) -> Result<Self> {
        let header = header_of(bytes)?;
        let checked = match find_unique(header, HEADER_KEY)? {
            Some(at) => {
                let stored = parse_hex("header_crc32c", header.get(at..at + 8).unwrap_or(&[]))?;
                if header.get(at + 8) != Some(&b'"') {
                    return Err(Error::invalid_checkpoint(
                        "header_crc32c",
                        "is not a checksum (8 lowercase hex digits)",
                    ));
                }
                let computed = header_crc(header, at);
                if stored != computed {
                    return Err(mismatch("header", stored, computed));
                }
                true
            }
            None => false,
        };
        let invalid = |e: safetensors::SafeTensorError| {
            Error::invalid_checkpoint("file", format!("not a valid safetensors file: {e}"))
        };
        let file = SafeTensors::deserialize(bytes).map_err(invalid)?;
        let (_, md) = SafeTensors::read_metadata(bytes).map_err(invalid)?;
        let metadata = md
            .metadata()
            .clone()
            .ok_or_else(|| Error::invalid_checkpoint("__metadata__", "missing"))?;
        let key = |k: &str| {
            metadata
                .get(k)
                .map(String::as_str)
                .ok_or_else(|| Error::invalid_checkpoint(format!("__metadata__.{k}"), "missing"))
        };
        if key("format")? != format {
            return Err(Error::invalid_checkpoint(
                "__metadata__.format",
                format!("{:?}, expected {format:?}", key("format")?),
            ));
        }
        let version = parse_version(key("format_version")?)?;
        match (checked, version) {
            (true, 1) => {
                return Err(Error::invalid_checkpoint(
                    "format_version",
                    "1 has no checksums, but the file carries header_crc32c",
                ));
            }
            (false, 1) if !unchecked_v1 => {
                return Err(Error::invalid_checkpoint(
                    "format_version",
                    format!("1 does not exist for {format:?}"),
                ));
            }
            (false, 2..) => {
                return Err(Error::invalid_checkpoint(
                    "header_crc32c",
                    "missing (a version 2 file always has one)",
                ));
            }
            _ => {}
        }
        if checked {
            let crcs: BTreeMap<String, String> = serde_json::from_str(key("tensor_crc32c")?)
                .map_err(|e| Error::invalid_checkpoint("tensor_crc32c", e.to_string()))?;
            let names: BTreeSet<&str> = file.names().into_iter().collect();
            let listed: BTreeSet<&str> = crcs.keys().map(String::as_str).collect();
            if let Some(n) = names.symmetric_difference(&listed).next() {
                return Err(Error::invalid_checkpoint(
                    *n,
                    "is not both a tensor and listed in tensor_crc32c",
                ));
            }
            for (name, crc) in &crcs {
                let stored = parse_hex(name, crc.as_bytes())?;
                let data = file
                    .tensor(name)
                    .map_err(|e| Error::invalid_checkpoint(name, e.to_string()))?
                    .data();
                let computed = crc32c::crc32c(data);
                if stored != computed {
                    return Err(mismatch(name, stored, computed));
                }
            }
        }
        Ok(Self {
            file,
            metadata,
            version,
        })
    }

    /// The file's `format_version` (1: unchecked, 2: checksummed).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// A `__metadata__` value ([`Error::InvalidCheckpoint`] when missing).
    pub fn metadata(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::invalid_checkpoint(format!("__metadata__.{key}"), "missing"))
    }

    /// Refuses a `__metadata__` key that is neither the container's nor in `allowed`.
    pub fn only_metadata(&self, allowed: &[&str]) -> Result<()> {
        match self
            .metadata
            .keys()
            .find(|k| !CONTAINER_KEYS.contains(&k.as_str()) && !allowed.contains(&k.as_str()))
        {
            Some(k) => Err(Error::invalid_checkpoint(
                format!("__metadata__.{k}"),
                "unknown key",
            )),
            None => Ok(()),
        }
    }

    /// Refuses a file whose tensors are not exactly `expected`.
    pub fn only_tensors(&self, expected: &BTreeSet<String>) -> Result<()> {
        let names: BTreeSet<&str> = self.file.names().into_iter().collect();
        if let Some(missing) = expected.iter().find(|n| !names.contains(n.as_str())) {
            return Err(Error::invalid_checkpoint(missing.clone(), "missing"));
        }
        if let Some(extra) = names.iter().find(|n| !expected.contains(**n)) {
            return Err(Error::invalid_checkpoint(*extra, "unexpected tensor"));
        }
        Ok(())
    }

    /// The names of the caller's tensors ([`Writer::caller_tensors`]), in
    /// order, each added to `expected` as the tensor it names (a version 1
    /// file has none). Refuses a list longer than the file, a bad or
    /// repeated name.
    pub fn caller_names(&self, expected: &mut BTreeSet<String>) -> Result<Vec<String>> {
        let Some(text) = self.metadata.get("tensors") else {
            return if self.version >= 2 {
                Err(Error::invalid_checkpoint("__metadata__.tensors", "missing"))
            } else {
                Ok(Vec::new())
            };
        };
        if self.version < 2 {
            return Err(Error::invalid_checkpoint(
                "__metadata__.tensors",
                "version 1 files have no caller tensors",
            ));
        }
        let names: Vec<String> = serde_json::from_str(text)
            .map_err(|e| Error::invalid_checkpoint("__metadata__.tensors", e.to_string()))?;
        if names.len() > self.len() {
            return Err(Error::invalid_checkpoint(
                "__metadata__.tensors",
                "lists more names than the file has tensors",
            ));
        }
        for name in &names {
            check_name("__metadata__.tensors", name)?;
            if !expected.insert(format!("{CALLER_PREFIX}{name}")) {
                return Err(Error::invalid_checkpoint(
                    "__metadata__.tensors",
                    format!("{name:?} is listed twice"),
                ));
            }
        }
        Ok(names)
    }

    /// The names of the caller's counters ([`Writer::caller_counters`]), in
    /// order, each added to `expected` (none when the key is absent).
    /// Refuses a list longer than the file, a bad or repeated name.
    pub fn caller_counter_names(&self, expected: &mut BTreeSet<String>) -> Result<Vec<String>> {
        let Some(text) = self.metadata.get("counters") else {
            return Ok(Vec::new());
        };
        let names: Vec<String> = serde_json::from_str(text)
            .map_err(|e| Error::invalid_checkpoint("__metadata__.counters", e.to_string()))?;
        if names.len() > self.len() {
            return Err(Error::invalid_checkpoint(
                "__metadata__.counters",
                "lists more names than the file has tensors",
            ));
        }
        for name in &names {
            check_name("__metadata__.counters", name)?;
            if !expected.insert(format!("{COUNTER_PREFIX}{name}")) {
                return Err(Error::invalid_checkpoint(
                    "__metadata__.counters",
                    format!("{name:?} is listed twice"),
                ));
            }
        }
        Ok(names)
    }

    /// The caller's counters named by [`Reader::caller_counter_names`], in
    /// order.
    pub fn caller_counters(&self, names: Vec<String>) -> Result<Vec<(String, Vec<u64>)>> {
        names
            .into_iter()
            .map(|name| {
                let entry = format!("{COUNTER_PREFIX}{name}");
                let t = self
                    .file
                    .tensor(&entry)
                    .map_err(|e| Error::invalid_checkpoint(&entry, e.to_string()))?;
                if t.dtype() != Dtype::U64 || t.shape().len() != 1 {
                    let reason = format!(
                        "dtype {:?} shape {:?}, expected a 1-d U64 tensor",
                        t.dtype(),
                        t.shape()
                    );
                    return Err(Error::invalid_checkpoint(&entry, reason));
                }
                let values = t
                    .data()
                    .chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                    .collect();
                Ok((name, values))
            })
            .collect()
    }

    /// The caller's tensors named by [`Reader::caller_names`], in order.
    pub fn caller_tensors<A: Element>(
        &self,
        names: Vec<String>,
    ) -> Result<Vec<(String, ArrayD<A>)>> {
        names
            .into_iter()
            .map(|name| {
                let t = self.floats(&format!("{CALLER_PREFIX}{name}"))?;
                Ok((name, t))
            })
            .collect()
    }

    /// Whether the file has a tensor of this name.
    pub fn has(&self, name: &str) -> bool {
        self.file.names().contains(&name)
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.file.len()
    }

    /// Whether the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// A tensor of `A`, as a row-major array.
    pub fn floats<A: Element>(&self, name: &str) -> Result<ArrayD<A>> {
        let t = self
            .file
            .tensor(name)
            .map_err(|e| Error::invalid_checkpoint(name, e.to_string()))?;
        if t.dtype() != dtype_of::<A>() {
            return Err(Error::invalid_checkpoint(
                name,
                format!(
                    "dtype {:?}, expected {:?} ({})",
                    t.dtype(),
                    dtype_of::<A>(),
                    A::NAME
                ),
            ));
        }
        let values: Vec<A> = t
            .data()
            .chunks_exact(size_of::<A>())
            .filter_map(A::read_le)
            .collect();
        ArrayD::from_shape_vec(IxDyn(t.shape()), values).map_err(|e| {
            Error::invalid_checkpoint(
                name,
                format!("shape {:?} does not match its data: {e}", t.shape()),
            )
        })
    }

    fn scalar(&self, name: &str, dtype: Dtype) -> Result<&'a [u8]> {
        let t = self
            .file
            .tensor(name)
            .map_err(|e| Error::invalid_checkpoint(name, e.to_string()))?;
        if t.dtype() != dtype {
            let reason = format!("dtype {:?}, expected {dtype:?}", t.dtype());
            return Err(Error::invalid_checkpoint(name, reason));
        }
        if !t.shape().is_empty() {
            return Err(Error::invalid_checkpoint(
                name,
                format!("shape {:?}, expected a 0-d tensor []", t.shape()),
            ));
        }
        Ok(t.data())
    }

    /// A 0-d tensor of `A`.
    pub fn float<A: Element>(&self, name: &str) -> Result<A> {
        A::read_le(self.scalar(name, dtype_of::<A>())?)
            .ok_or_else(|| Error::invalid_checkpoint(name, "wrong byte count"))
    }

    /// A 0-d `U64` tensor.
    pub fn count(&self, name: &str) -> Result<u64> {
        let bytes: [u8; 8] = self
            .scalar(name, Dtype::U64)?
            .try_into()
            .map_err(|_| Error::invalid_checkpoint(name, "wrong byte count"))?;
        Ok(u64::from_le_bytes(bytes))
    }
}

/// CRC32C of `bytes` as the container writes it (8 lowercase hex digits),
/// for records built on this format (the sharded commit record).
pub fn crc32c_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32c::crc32c(bytes))
}
