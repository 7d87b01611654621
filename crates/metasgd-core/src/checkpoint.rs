//! Checkpoints: the whole optimizer state as a safetensors file.
//!
//! Layout (`format_version` 1), readable by any safetensors reader:
//!
//! | tensor | dtype | shape | what |
//! |---|---|---|---|
//! | `alpha.0` ... `alpha.{n-1}` | `A` | the slot's | per-parameter learning rates, row-major |
//! | `base_lr`, `alpha_lr` | `A` | `[]` | hyperparameters, exact bits |
//! | `last_valid_lr` | `A` | `[]` | present when there is one |
//! | `inner_steps`, `step_count`, `skipped_steps` | `U64` | `[]` | counters |
//!
//! `__metadata__`: `format` = `metasgd`, `format_version` = `1`, `dtype` =
//! `f32`/`f64`, `non_finite` = `propagate`/`skip`/`error`, `backend` =
//! `auto`/`scalar`/`simd`/`parallel`, `slots` = the number of slots.
//!
//! Loading checks everything before it builds anything: a file either gives
//! an optimizer identical to the saved one or an [`Error::InvalidCheckpoint`]
//! that names the field at fault.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use metasgd_kernels::Element;
use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::metasgd::valid_base_lr;
use crate::{Backend, Error, MetaSGD, NonFinitePolicy, Result};

/// The `format_version` this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The optimizer's state as plain values: what a checkpoint holds, checked
/// by [`State::into_optimizer`] whichever way it was read.
pub(crate) struct State<A> {
    pub(crate) base_lr: A,
    pub(crate) last_valid_lr: Option<A>,
    pub(crate) alpha_lr: A,
    pub(crate) inner_steps: u64,
    pub(crate) backend: Backend,
    pub(crate) non_finite: NonFinitePolicy,
    pub(crate) slots: Vec<ArrayD<A>>,
    pub(crate) step_count: u64,
    pub(crate) skipped_steps: u64,
}

impl<A: Element> MetaSGD<A> {
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn to_state(&self) -> State<A> {
        State {
            base_lr: self.base_lr,
            last_valid_lr: self.last_valid_lr,
            alpha_lr: self.alpha_lr,
            inner_steps: self.inner_steps as u64,
            backend: self.backend,
            non_finite: self.non_finite,
            slots: self.slots.clone(),
            step_count: self.step_count as u64,
            skipped_steps: self.skipped_steps as u64,
        }
    }

    /// The state as the bytes of a safetensors file (the layout is in the
    /// README and in [`MetaSGD::save_state`]).
    ///
    /// # Panics
    /// If the header would exceed safetensors' 100 MB limit, which takes
    /// more than a million slots; [`MetaSGD::save_state`] reports it as an
    /// error instead.
    pub fn state_bytes(&self) -> Vec<u8> {
        match self.encode() {
            Ok(bytes) => bytes,
            Err(e) => panic!("cannot encode the optimizer state: {e}"),
        }
    }

    /// An optimizer from the bytes of a checkpoint ([`MetaSGD::state_bytes`]
    /// or a file written by another tool in the same layout).
    ///
    /// Every field is checked before anything is built: malformed or
    /// truncated bytes, another dtype than `A`, missing or extra tensors,
    /// counters out of range and versions from the future are
    /// [`Error::InvalidCheckpoint`] errors naming the field.
    pub fn from_state_bytes(bytes: &[u8]) -> Result<Self> {
        decode(bytes)?.into_optimizer()
    }

    /// Writes the state to `path` as a safetensors file, atomically: the
    /// bytes go to a temporary file in the same directory, which is synced
    /// and then renamed over `path` (and the directory synced). A process
    /// killed at any moment leaves either the previous file or the new one,
    /// never a torn one.
    ///
    /// ```
    /// use metasgd_core::{MetaSGD, Optimizer};
    /// use ndarray::array;
    ///
    /// let dir = std::env::temp_dir().join(format!("metasgd-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("opt.safetensors");
    ///
    /// let mut opt = MetaSGD::new(0.01_f32);
    /// let mut params = array![1.0_f32, 2.0];
    /// opt.step_inplace(params.view_mut(), array![0.5, -0.5].view())?;
    /// opt.save_state(&path)?;
    ///
    /// let loaded = MetaSGD::<f32>::load_state(&path)?;
    /// assert_eq!(loaded.get_step_count(), 1);
    /// assert_eq!(loaded.per_param_lrs(), opt.per_param_lrs());
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Layout: tensors `alpha.0` ... `alpha.{n-1}` (dtype of `A`, each
    /// slot's shape, row-major), 0-d `base_lr`, `alpha_lr` and, when there
    /// is one, `last_valid_lr` (dtype of `A`), 0-d `U64` `inner_steps`,
    /// `step_count`, `skipped_steps`; `__metadata__` with `format`,
    /// `format_version`, `dtype`, `non_finite`, `backend`, `slots`.
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.encode()?;
        write_atomically(path, &bytes)
    }

    /// Reads a checkpoint written by [`MetaSGD::save_state`] (or any tool
    /// following its layout). See [`MetaSGD::from_state_bytes`] for what is
    /// checked; failures to read the file are [`Error::Io`].
    pub fn load_state(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io_at(path, &e))?;
        Self::from_state_bytes(&bytes).map_err(|e| match e {
            Error::InvalidCheckpoint { field, reason } => Error::InvalidCheckpoint {
                field,
                reason: format!("{reason} (in {})", path.display()),
            },
            other => other,
        })
    }

    /// [`MetaSGD::state_bytes`] with extra `__metadata__` entries, for
    /// formats built on this one (the sharded checkpoints of `metasgd-dist`
    /// add the shard's place). The extra keys must not be the format's own.
    pub fn state_bytes_with_metadata(&self, extra: &[(&str, String)]) -> Result<Vec<u8>> {
        if let Some((k, _)) = extra.iter().find(|(k, _)| META_KEYS.contains(k)) {
            return Err(Error::invalid_checkpoint(
                format!("__metadata__.{k}"),
                "is the format's own key",
            ));
        }
        self.encode_with(extra)
    }

    /// [`MetaSGD::save_state`] with extra `__metadata__` entries (see
    /// [`MetaSGD::state_bytes_with_metadata`]), written as atomically.
    pub fn save_state_with_metadata(
        &self,
        path: impl AsRef<Path>,
        extra: &[(&str, String)],
    ) -> Result<()> {
        let bytes = self.state_bytes_with_metadata(extra)?;
        write_atomically(path.as_ref(), &bytes)
    }

    /// [`MetaSGD::from_state_bytes`] that also accepts the `__metadata__`
    /// keys in `extra_keys` (required: each must be present) and returns them.
    pub fn from_state_bytes_with_metadata(
        bytes: &[u8],
        extra_keys: &[&str],
    ) -> Result<(Self, HashMap<String, String>)> {
        let (state, extra) = decode_with(bytes, extra_keys)?;
        Ok((state.into_optimizer()?, extra))
    }

    /// Replaces every slot's learning rates with `slots`, checked as a
    /// checkpoint's are (each finite and `> 0`, or NaN, which training can
    /// produce): for layered state such as a rank's shard.
    pub fn with_state_slots(mut self, slots: Vec<ArrayD<A>>) -> Result<Self> {
        check_slots(&slots)?;
        self.slots = slots;
        Ok(self)
    }

    fn encode(&self) -> Result<Vec<u8>> {
        self.encode_with(&[])
    }

    fn encode_with(&self, extra: &[(&str, String)]) -> Result<Vec<u8>> {
        let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(self.slots.len() + 6);
        for (j, alpha) in self.slots.iter().enumerate() {
            tensors.push((
                format!("alpha.{j}"),
                Tensor::floats(alpha.shape(), alpha.iter().copied()),
            ));
        }
        tensors.push(("base_lr".into(), Tensor::floats(&[], [self.base_lr])));
        tensors.push(("alpha_lr".into(), Tensor::floats(&[], [self.alpha_lr])));
        if let Some(lr) = self.last_valid_lr {
            tensors.push(("last_valid_lr".into(), Tensor::floats(&[], [lr])));
        }
        for (name, v) in [
            ("inner_steps", self.inner_steps),
            ("step_count", self.step_count),
            ("skipped_steps", self.skipped_steps),
        ] {
            tensors.push((name.into(), Tensor::u64(v as u64)));
        }
        let mut metadata = HashMap::from([
            ("format".to_string(), "metasgd".to_string()),
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("dtype".to_string(), A::NAME.to_string()),
            (
                "non_finite".to_string(),
                policy_name(self.non_finite).to_string(),
            ),
            (
                "backend".to_string(),
                backend_name(self.backend).to_string(),
            ),
            ("slots".to_string(), self.slots.len().to_string()),
        ]);
        metadata.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
            .map_err(|e| Error::invalid_checkpoint("file", format!("cannot encode: {e}")))
    }
}

impl<A: Element> State<A> {
    /// Checks the values and builds the optimizer.
    pub(crate) fn into_optimizer(self) -> Result<MetaSGD<A>> {
        if self.inner_steps == 0 {
            return Err(Error::invalid_checkpoint(
                "inner_steps",
                "is 0, must be at least 1",
            ));
        }
        let count = |name: &str, v: u64| {
            usize::try_from(v).map_err(|_| {
                Error::invalid_checkpoint(name, format!("{v} does not fit this platform's usize"))
            })
        };
        let inner_steps = count("inner_steps", self.inner_steps)?;
        let step_count = count("step_count", self.step_count)?;
        let skipped_steps = count("skipped_steps", self.skipped_steps)?;
        if let Some(lr) = self.last_valid_lr
            && !valid_base_lr(lr)
        {
            return Err(Error::invalid_checkpoint(
                "last_valid_lr",
                format!("{lr:?} is not a valid learning rate (finite and > 0)"),
            ));
        }
        check_slots(&self.slots)?;
        Ok(MetaSGD {
            base_lr: self.base_lr,
            last_valid_lr: self.last_valid_lr,
            alpha_lr: self.alpha_lr,
            inner_steps,
            backend: self.backend,
            non_finite: self.non_finite,
            slots: self.slots,
            step_count,
            skipped_steps,
        })
    }
}

/// Every learning rate is NaN or finite and `> 0`.
fn check_slots<A: Element>(slots: &[ArrayD<A>]) -> Result<()> {
    for (j, alpha) in slots.iter().enumerate() {
        if let Some((i, a)) = alpha
            .iter()
            .enumerate()
            .find(|(_, a)| !(a.is_nan() || (a.is_finite() && **a > A::ZERO)))
        {
            return Err(Error::invalid_checkpoint(
                format!("alpha.{j}"),
                format!("element {i} is {a:?}; a learning rate is finite and > 0 (or NaN)"),
            ));
        }
    }
    Ok(())
}

/// The format's own `__metadata__` keys.
const META_KEYS: [&str; 6] = [
    "format",
    "format_version",
    "dtype",
    "non_finite",
    "backend",
    "slots",
];

/// One tensor to write: little-endian bytes.
struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Tensor {
    fn floats<A: Element>(shape: &[usize], values: impl IntoIterator<Item = A>) -> Self {
        let mut data = Vec::with_capacity(shape.iter().product::<usize>() * size_of::<A>());
        values.into_iter().for_each(|v| v.write_le(&mut data));
        Tensor {
            dtype: dtype_of::<A>(),
            shape: shape.to_vec(),
            data,
        }
    }

    fn u64(v: u64) -> Self {
        Tensor {
            dtype: Dtype::U64,
            shape: Vec::new(),
            data: v.to_le_bytes().to_vec(),
        }
    }
}

impl View for &Tensor {
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

fn dtype_of<A: Element>() -> Dtype {
    if size_of::<A>() == 4 {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

pub(crate) fn policy_name(p: NonFinitePolicy) -> &'static str {
    match p {
        NonFinitePolicy::Propagate => "propagate",
        NonFinitePolicy::Skip => "skip",
        NonFinitePolicy::Error => "error",
    }
}

pub(crate) fn parse_policy(s: &str) -> Result<NonFinitePolicy> {
    match s {
        "propagate" => Ok(NonFinitePolicy::Propagate),
        "skip" => Ok(NonFinitePolicy::Skip),
        "error" => Ok(NonFinitePolicy::Error),
        other => Err(Error::invalid_checkpoint(
            "non_finite",
            format!("unknown policy {other:?} (propagate, skip or error)"),
        )),
    }
}

pub(crate) fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Auto => "auto",
        Backend::Scalar => "scalar",
        Backend::Simd => "simd",
        Backend::Parallel => "parallel",
    }
}

pub(crate) fn parse_backend(s: &str) -> Result<Backend> {
    match s {
        "auto" => Ok(Backend::Auto),
        "scalar" => Ok(Backend::Scalar),
        "simd" => Ok(Backend::Simd),
        "parallel" => Ok(Backend::Parallel),
        other => Err(Error::invalid_checkpoint(
            "backend",
            format!("unknown backend {other:?} (auto, scalar, simd or parallel)"),
        )),
    }
}

/// Checks the `format_version` string: this version or an older one.
pub(crate) fn check_version(v: &str) -> Result<()> {
    match v.parse::<u32>() {
        Ok(n) if n == FORMAT_VERSION => Ok(()),
        Ok(n) if n > FORMAT_VERSION => Err(Error::invalid_checkpoint(
            "format_version",
            format!("{n} was written by a newer metasgd; this one reads version {FORMAT_VERSION}"),
        )),
        _ => Err(Error::invalid_checkpoint(
            "format_version",
            format!("{v:?} is not a known version"),
        )),
    }
}

/// Checks a dtype name against `A`.
pub(crate) fn check_dtype<A: Element>(field: &str, found: &str) -> Result<()> {
    if found == A::NAME {
        Ok(())
    } else {
        Err(Error::invalid_checkpoint(
            field,
            format!(
                "the checkpoint holds {found}, this optimizer is MetaSGD<{}>",
                A::NAME
            ),
        ))
    }
}

fn decode<A: Element>(bytes: &[u8]) -> Result<State<A>> {
    decode_with(bytes, &[]).map(|(state, _)| state)
}

fn decode_with<A: Element>(
    bytes: &[u8],
    extra_keys: &[&str],
) -> Result<(State<A>, HashMap<String, String>)> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| {
        Error::invalid_checkpoint("file", format!("not a valid safetensors file: {e}"))
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
        Error::invalid_checkpoint("file", format!("not a valid safetensors file: {e}"))
    })?;
    let meta = header
        .metadata()
        .as_ref()
        .ok_or_else(|| Error::invalid_checkpoint("__metadata__", "missing"))?;
    let key = |k: &str| {
        meta.get(k)
            .map(String::as_str)
            .ok_or_else(|| Error::invalid_checkpoint(format!("__metadata__.{k}"), "missing"))
    };
    if key("format")? != "metasgd" {
        return Err(Error::invalid_checkpoint(
            "__metadata__.format",
            format!("{:?}, expected \"metasgd\"", key("format")?),
        ));
    }
    check_version(key("format_version")?)?;
    check_dtype::<A>("__metadata__.dtype", key("dtype")?)?;
    let non_finite = parse_policy(key("non_finite")?)?;
    let backend = parse_backend(key("backend")?)?;
    let slots: usize = key("slots")?.parse().map_err(|_| {
        Error::invalid_checkpoint(
            "__metadata__.slots",
            format!("{:?} is not a count", key("slots").unwrap_or_default()),
        )
    })?;
    if let Some(extra) = meta
        .keys()
        .find(|k| !META_KEYS.contains(&k.as_str()) && !extra_keys.contains(&k.as_str()))
    {
        return Err(Error::invalid_checkpoint(
            format!("__metadata__.{extra}"),
            "unknown key",
        ));
    }
    let mut extra = HashMap::new();
    for k in extra_keys {
        extra.insert(k.to_string(), key(k)?.to_string());
    }

    // Exactly the expected tensors, none missing, none extra.
    let mut expected: BTreeSet<String> = [
        "base_lr",
        "alpha_lr",
        "inner_steps",
        "step_count",
        "skipped_steps",
    ]
    .map(String::from)
    .into();
    let names: BTreeSet<String> = file.names().into_iter().map(String::from).collect();
    if names.len() > slots.saturating_add(6) {
        return Err(Error::invalid_checkpoint(
            "file",
            format!("{} tensors for {slots} slots: too many", names.len()),
        ));
    }
    expected.extend((0..slots).map(|j| format!("alpha.{j}")));
    if names.contains("last_valid_lr") {
        expected.insert("last_valid_lr".into());
    }
    if let Some(missing) = expected.difference(&names).next() {
        return Err(Error::invalid_checkpoint(missing.clone(), "missing"));
    }
    if let Some(extra) = names.difference(&expected).next() {
        return Err(Error::invalid_checkpoint(
            extra.clone(),
            format!("unexpected tensor (the metadata says {slots} slots)"),
        ));
    }

    let float = |name: &str| -> Result<A> {
        let t = file
            .tensor(name)
            .map_err(|e| Error::invalid_checkpoint(name, e.to_string()))?;
        scalar_of(name, &t, dtype_of::<A>())?;
        A::read_le(t.data()).ok_or_else(|| Error::invalid_checkpoint(name, "wrong byte count"))
    };
    let counter = |name: &str| -> Result<u64> {
        let t = file
            .tensor(name)
            .map_err(|e| Error::invalid_checkpoint(name, e.to_string()))?;
        scalar_of(name, &t, Dtype::U64)?;
        let bytes: [u8; 8] = t
            .data()
            .try_into()
            .map_err(|_| Error::invalid_checkpoint(name, "wrong byte count"))?;
        Ok(u64::from_le_bytes(bytes))
    };
    let mut alphas = Vec::with_capacity(slots);
    for j in 0..slots {
        let name = format!("alpha.{j}");
        let t = file
            .tensor(&name)
            .map_err(|e| Error::invalid_checkpoint(&name, e.to_string()))?;
        if t.dtype() != dtype_of::<A>() {
            return Err(dtype_error::<A>(&name, t.dtype()));
        }
        let values: Vec<A> = t
            .data()
            .chunks_exact(size_of::<A>())
            .filter_map(A::read_le)
            .collect();
        let alpha = ArrayD::from_shape_vec(IxDyn(t.shape()), values).map_err(|e| {
            Error::invalid_checkpoint(
                &name,
                format!("shape {:?} does not match its data: {e}", t.shape()),
            )
        })?;
        alphas.push(alpha);
    }
    let state = State {
        base_lr: float("base_lr")?,
        last_valid_lr: names
            .contains("last_valid_lr")
            .then(|| float("last_valid_lr"))
            .transpose()?,
        alpha_lr: float("alpha_lr")?,
        inner_steps: counter("inner_steps")?,
        backend,
        non_finite,
        slots: alphas,
        step_count: counter("step_count")?,
        skipped_steps: counter("skipped_steps")?,
    };
    Ok((state, extra))
}

fn dtype_error<A: Element>(name: &str, found: Dtype) -> Error {
    Error::invalid_checkpoint(
        name,
        format!(
            "dtype {found:?}, this optimizer is MetaSGD<{}> ({:?})",
            A::NAME,
            dtype_of::<A>()
        ),
    )
}

/// Checks that a tensor is a 0-d value of `dtype`.
fn scalar_of(name: &str, t: &safetensors::tensor::TensorView<'_>, dtype: Dtype) -> Result<()> {
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
    Ok(())
}

/// Writes `bytes` to a fresh temporary file next to `path`, syncs it and
/// renames it over `path`; on any failure the temporary file is removed.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| Error::Io {
        kind: std::io::ErrorKind::InvalidInput,
        message: format!("{}: not a file path", path.display()),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = File::create_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io_at(path, &e));
    }
    // The rename is durable once the directory entry is (not needed, and
    // not possible this way, on Windows).
    #[cfg(unix)]
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io_at(&dir, &e))?;
    Ok(())
}
