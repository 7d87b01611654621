//! The optimizer's checkpoint: [`MetaSGD`]'s state in the container.
//!
//! Layout (`format` = `metasgd`, `format_version` 2), derived from the
//! schema (`schema.rs`), readable by any safetensors reader:
//!
//! | entry | where | what |
//! |---|---|---|
//! | float fields (`base_lr`, `alpha_lr`, `last_valid_lr` when set) | 0-d tensors of `A` | exact bits |
//! | counters (`inner_steps`, `step_count`, `skipped_steps`) | 0-d `U64` tensors | bounded (see `docs/semantics.md`) |
//! | choices (`non_finite`, `backend`) | `__metadata__` | their names |
//! | `alpha.0` ... `alpha.{n-1}` | tensors of `A` | each slot's rates, row-major |
//! | `tensor.{name}` | tensors of `A` | the caller's tensors ([`MetaSGD::save_state_with_tensors`]) |
//! | `dtype`, `slots`, `tensors` | `__metadata__` | `f32`/`f64`, the slot count, the caller's names in order (JSON) |
//!
//! plus the container's checksums. Version 1 files (the same layout without
//! checksums or caller tensors) still load, unchecked.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use metasgd_kernels::Element;
use ndarray::{ArrayD, ArrayViewD};

use super::{Reader, Writer, at_path, write_atomically};
use crate::schema::{FIELDS, Kind, Settings, Value, valid_rate};
use crate::{Error, MetaSGD, Result};

const FORMAT: &str = "metasgd";

/// The caller's tensors as a checkpoint gives them back: each name with its
/// array, in the order they were saved.
pub type NamedTensors<A> = Vec<(String, ArrayD<A>)>;

/// The format's own `__metadata__` keys besides the schema's choices.
const OWN_KEYS: [&str; 2] = ["dtype", "slots"];

/// Prefix of the caller's tensors.
const TENSOR_PREFIX: &str = "tensor.";

/// What a checkpoint holds besides the optimizer: see
/// [`MetaSGD::from_state_bytes_with`].
#[derive(Clone, Debug)]
pub struct Loaded<A: Element> {
    /// The optimizer.
    pub optimizer: MetaSGD<A>,
    /// The caller's tensors, in the order they were saved.
    pub tensors: NamedTensors<A>,
    /// The extra `__metadata__` entries that were asked for.
    pub metadata: HashMap<String, String>,
}

impl<A: Element> MetaSGD<A> {
    /// The state as the bytes of a checkpoint file (see [`MetaSGD::save_state`]).
    ///
    /// # Panics
    /// If the header would exceed safetensors' 100 MB limit, which takes
    /// more than a million slots; [`MetaSGD::save_state`] reports it as an
    /// error instead.
    pub fn state_bytes(&self) -> Vec<u8> {
        match self.state_bytes_with(&[], &[]) {
            Ok(bytes) => bytes,
            Err(e) => panic!("cannot encode the optimizer state: {e}"),
        }
    }

    /// An optimizer from the bytes of a checkpoint ([`MetaSGD::state_bytes`],
    /// [`MetaSGD::save_state`], or another tool writing the same layout).
    ///
    /// The checksums are verified first, then every field: corrupt,
    /// malformed or truncated bytes, another dtype than `A`, missing or
    /// extra tensors, counters out of their bounds and versions from the
    /// future are [`Error::InvalidCheckpoint`] errors naming the field. A
    /// file with caller tensors is refused here: use
    /// [`MetaSGD::from_state_bytes_with`].
    pub fn from_state_bytes(bytes: &[u8]) -> Result<Self> {
        let loaded = Self::from_state_bytes_with(bytes, &[])?;
        if let Some((name, _)) = loaded.tensors.first() {
            return Err(Error::invalid_checkpoint(
                format!("{TENSOR_PREFIX}{name}"),
                "the file also holds the caller's tensors: load it with load_state_with_tensors",
            ));
        }
        Ok(loaded.optimizer)
    }

    /// Writes the state to `path` atomically: the bytes go to a temporary
    /// file in the same directory, which is synced and then renamed over
    /// `path` (and the directory synced). A process killed at any moment
    /// leaves either the previous file or the new one, never a torn one.
    ///
    /// The file is safetensors with a CRC32C of its header and of every
    /// tensor (the layout is in the README); [`MetaSGD::load_state`]
    /// verifies them before it decodes anything.
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
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_state_with_tensors(path, &[])
    }

    /// Reads a checkpoint written by [`MetaSGD::save_state`]. See
    /// [`MetaSGD::from_state_bytes`] for what is checked; failures to read
    /// the file are [`Error::Io`].
    pub fn load_state(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io_at(path, &e))?;
        Self::from_state_bytes(&bytes).map_err(|e| at_path(path, e))
    }

    /// Saves the optimizer and the caller's tensors (the model's
    /// parameters, anything else of type `A`) in one atomic write, so that
    /// a crash can never leave a model of one step beside an optimizer of
    /// another. Names are 1 to 256 bytes, no control characters, each once.
    ///
    /// ```
    /// use metasgd_core::{MetaSGD, Optimizer};
    /// use ndarray::array;
    ///
    /// let dir = std::env::temp_dir().join(format!("metasgd-doc-t-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("run.safetensors");
    ///
    /// let mut opt = MetaSGD::new(0.01_f32);
    /// let mut w = array![[1.0_f32, 2.0], [3.0, 4.0]];
    /// opt.step_inplace(w.view_mut(), array![[0.5, -0.5], [0.1, 0.0]].view())?;
    /// opt.save_state_with_tensors(&path, &[("w", w.view().into_dyn())])?;
    ///
    /// let (opt2, tensors) = MetaSGD::<f32>::load_state_with_tensors(&path)?;
    /// assert_eq!(opt2.get_step_count(), 1);
    /// assert_eq!(tensors[0].0, "w");
    /// assert_eq!(tensors[0].1, w.into_dyn());
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_state_with_tensors(
        &self,
        path: impl AsRef<Path>,
        tensors: &[(&str, ArrayViewD<'_, A>)],
    ) -> Result<()> {
        let bytes = self.state_bytes_with(&[], tensors)?;
        write_atomically(path.as_ref(), &bytes)
    }

    /// Loads what [`MetaSGD::save_state_with_tensors`] wrote: the optimizer
    /// and the caller's tensors in the order they were saved (none for a
    /// file written by [`MetaSGD::save_state`]).
    pub fn load_state_with_tensors(path: impl AsRef<Path>) -> Result<(Self, NamedTensors<A>)> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io_at(path, &e))?;
        let loaded = Self::from_state_bytes_with(&bytes, &[]).map_err(|e| at_path(path, e))?;
        Ok((loaded.optimizer, loaded.tensors))
    }

    /// The checkpoint bytes with the caller's tensors and extra
    /// `__metadata__` entries (for formats built on this one: the sharded
    /// checkpoints of `metasgd-dist` add the shard's place). Extra keys may
    /// not be the format's own.
    pub fn state_bytes_with(
        &self,
        extra: &[(&str, String)],
        tensors: &[(&str, ArrayViewD<'_, A>)],
    ) -> Result<Vec<u8>> {
        let mut w = Writer::new(FORMAT);
        for (k, v) in extra {
            if OWN_KEYS.contains(k) || FIELDS.iter().any(|f| f.name == *k) {
                return Err(Error::invalid_checkpoint(
                    format!("__metadata__.{k}"),
                    "is the format's own key",
                ));
            }
            w.metadata(k, v.clone())?;
        }
        w.metadata("dtype", A::NAME)?;
        w.metadata("slots", self.slots.len().to_string())?;
        for (f, v) in FIELDS.iter().zip(self.settings.values()) {
            match v {
                Value::Float(x) | Value::MaybeFloat(Some(x)) => w.float(f.name, x)?,
                Value::MaybeFloat(None) => {}
                Value::Count(n) => w.count(f.name, n)?,
                Value::Name(s) => w.metadata(f.name, s)?,
            }
        }
        for (j, alpha) in self.slots.iter().enumerate() {
            w.floats(&format!("alpha.{j}"), alpha.view())?;
        }
        w.caller_tensors(tensors)?;
        w.to_bytes()
    }

    /// Everything a checkpoint holds: the optimizer, the caller's tensors,
    /// and the extra `__metadata__` keys in `extra_keys` (each required;
    /// any other unknown key is refused).
    pub fn from_state_bytes_with(bytes: &[u8], extra_keys: &[&str]) -> Result<Loaded<A>> {
        let r = Reader::open(bytes, FORMAT, true)?;
        let dtype = r.metadata("dtype")?;
        if dtype != A::NAME {
            return Err(Error::invalid_checkpoint(
                "__metadata__.dtype",
                format!(
                    "the checkpoint holds {dtype}, this optimizer is MetaSGD<{}>",
                    A::NAME
                ),
            ));
        }
        let allowed: Vec<&str> = FIELDS
            .iter()
            .filter(|f| matches!(f.kind, Kind::Choice(_)))
            .map(|f| f.name)
            .chain(OWN_KEYS)
            .chain(extra_keys.iter().copied())
            .collect();
        r.only_metadata(&allowed)?;
        let slots_text = r.metadata("slots")?;
        let slots: usize = slots_text
            .parse()
            .ok()
            .filter(|&n: &usize| n <= r.len())
            .ok_or_else(|| {
                Error::invalid_checkpoint(
                    "__metadata__.slots",
                    format!("{slots_text:?} is not a count of the file's tensors"),
                )
            })?;
        let mut expected: BTreeSet<String> = BTreeSet::new();
        for f in FIELDS {
            let stored = match f.kind {
                Kind::Float | Kind::Count { .. } => true,
                Kind::MaybeRate => r.has(f.name),
                Kind::Choice(_) => false,
            };
            if stored {
                expected.insert(f.name.to_string());
            }
        }
        expected.extend((0..slots).map(|j| format!("alpha.{j}")));
        let caller = r.caller_names(&mut expected)?;
        r.only_tensors(&expected)?;

        let settings = Settings::from_values(|f| {
            Ok(match f.kind {
                Kind::Float => Value::Float(r.float(f.name)?),
                Kind::MaybeRate => {
                    Value::MaybeFloat(r.has(f.name).then(|| r.float(f.name)).transpose()?)
                }
                Kind::Count { .. } => Value::Count(r.count(f.name)?),
                Kind::Choice(names) => {
                    let text = r.metadata(f.name)?;
                    let name = names.iter().find(|n| **n == text).ok_or_else(|| {
                        f.error(format!("unknown value {text:?} ({})", names.join(", ")))
                    })?;
                    Value::Name(name)
                }
            })
        })?;
        let mut alphas = Vec::with_capacity(slots);
        for j in 0..slots {
            alphas.push(r.floats(&format!("alpha.{j}"))?);
        }
        check_rates(&alphas)?;
        let tensors = r.caller_tensors(caller)?;
        let metadata = extra_keys
            .iter()
            .map(|k| Ok((k.to_string(), r.metadata(k)?.to_string())))
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Loaded {
            optimizer: MetaSGD::from_parts(settings, alphas),
            tensors,
            metadata,
        })
    }

    /// Replaces every slot's learning rates with `slots`, checked as a
    /// checkpoint's are (the one rate rule: within `[1e-8, 10]`, or NaN):
    /// for layered state such as a rank's shard.
    pub fn with_state_slots(mut self, slots: Vec<ArrayD<A>>) -> Result<Self> {
        check_rates(&slots)?;
        self.slots = slots;
        Ok(self)
    }
}

/// Every rate follows the one rule (`schema::valid_rate`).
fn check_rates<A: Element>(slots: &[ArrayD<A>]) -> Result<()> {
    for (j, alpha) in slots.iter().enumerate() {
        if let Some((i, a)) = alpha.iter().enumerate().find(|(_, a)| !valid_rate(**a)) {
            return Err(Error::invalid_checkpoint(
                format!("alpha.{j}"),
                format!("element {i} is {a:?}; a learning rate is within [1e-8, 10] (or NaN)"),
            ));
        }
    }
    Ok(())
}
