//! `Serialize`/`Deserialize` for [`MetaSGD`] (feature `serde`), so the
//! optimizer can live inside a user's own checkpoint struct; the settings,
//! [`crate::MetaSGDConfig`], derive theirs.
//!
//! The representation is `format_version`, `dtype`, `config` (the derived
//! settings), the counters and `slots`; it goes through the same checks as
//! a checkpoint on the way in ([`MetaSGD::from_stored`]). Floats are exact
//! in every format, whatever the format's own float parser does: each is
//! written as a string, the shortest decimal that reads back to the same
//! bits (`"0.01"`, `"1e-8"`), or `"inf"`, `"-inf"`, `"nan:0x7fc00000"` (NaN
//! with its payload), and read back with Rust's correctly rounded parser.
//! Hand-written documents may use plain numbers too; those go through the
//! format's parser.

use ndarray::{ArrayD, IxDyn};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use metasgd_kernels::Element;

use crate::checkpoint::FORMAT_VERSION;
use crate::checkpoint::container::parse_version;
use crate::checkpoint::state::check_dtype;
use crate::{Error, MetaSGD, MetaSGDConfig};

/// `#[serde(with = "exact")]`: one float field, written exactly.
pub(crate) mod exact {
    use super::*;

    pub(crate) fn serialize<A: Element, S: Serializer>(x: &A, s: S) -> Result<S::Ok, S::Error> {
        Float::of(*x).serialize(s)
    }

    pub(crate) fn deserialize<'de, A: Element, D: Deserializer<'de>>(d: D) -> Result<A, D::Error> {
        Float::deserialize(d)?.to().map_err(D::Error::custom)
    }
}

/// `#[serde(with = "exact_opt")]`: an optional float field, written exactly
/// (`null` when absent).
pub(crate) mod exact_opt {
    use super::*;

    pub(crate) fn serialize<A: Element, S: Serializer>(
        x: &Option<A>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        x.map(Float::of).serialize(s)
    }

    pub(crate) fn deserialize<'de, A: Element, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<A>, D::Error> {
        let f = Option::<Float>::deserialize(d)?;
        f.map(|f| f.to().map_err(D::Error::custom)).transpose()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Slot {
    shape: Vec<usize>,
    data: Vec<Float>,
}

impl Slot {
    fn of<A: Element>(a: &ArrayD<A>) -> Self {
        Slot {
            shape: a.shape().to_vec(),
            data: a.iter().copied().map(Float::of).collect(),
        }
    }

    fn to<A: Element>(&self, j: usize) -> Result<ArrayD<A>, Error> {
        let name = format!("alpha.{j}");
        let data = self
            .data
            .iter()
            .map(|f| f.to().map_err(|r| Error::invalid_checkpoint(&name, r)))
            .collect::<Result<Vec<A>, _>>()?;
        ArrayD::from_shape_vec(IxDyn(&self.shape), data).map_err(|e| {
            let why = format!("shape {:?} does not match its data: {e}", self.shape);
            Error::invalid_checkpoint(&name, why)
        })
    }
}

/// One float: a string when written by us (exact), a number when hand-written.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Float {
    Number(f64),
    Special(String),
}

impl Float {
    fn of<A: Element>(x: A) -> Self {
        if x.is_nan() {
            Float::Special(format!(
                "nan:{:#0w$x}",
                x.bits(),
                w = 2 + 2 * size_of::<A>()
            ))
        } else if x.is_infinite() {
            Float::Special(if x > A::ZERO { "inf" } else { "-inf" }.to_string())
        } else {
            // `Debug` prints the shortest decimal that parses back to `x`.
            Float::Special(format!("{x:?}"))
        }
    }

    fn to<A: Element>(&self) -> Result<A, String> {
        let s = match self {
            Float::Number(v) => return A::from(*v).ok_or_else(|| format!("{v} is not a number")),
            Float::Special(s) => s.as_str(),
        };
        let bad = || {
            let kinds = "a finite decimal, \"inf\", \"-inf\", or \"nan:0x\" and a NaN's bits";
            format!("{s:?} is not a float of type {} ({kinds})", A::NAME)
        };
        let finite = |x: Option<A>| x.filter(|x| x.is_finite());
        match (s, s.strip_prefix("nan:0x")) {
            ("inf", _) => Some(A::infinity()),
            ("-inf", _) => Some(A::neg_infinity()),
            (_, Some(hex)) => u64::from_str_radix(hex, 16).ok().and_then(|bits| {
                let x = A::from_bits(bits);
                (x.is_nan() && x.bits() == bits).then_some(x)
            }),
            _ if size_of::<A>() == 4 => finite(s.parse::<f32>().ok().and_then(A::from)),
            _ => finite(s.parse::<f64>().ok().and_then(A::from)),
        }
        .ok_or_else(bad)
    }
}

/// The serde form of a [`MetaSGD`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, bound = "", rename = "MetaSGD")]
struct Repr<A: Element> {
    format_version: String,
    dtype: String,
    config: MetaSGDConfig<A>,
    last_valid_lr: Option<Float>,
    step_count: u64,
    skipped_steps: u64,
    slots: Vec<Slot>,
    /// The rule's state (the hypergradient rule's previous gradients).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    prev: Vec<Slot>,
}

impl<A: Element> Serialize for MetaSGD<A> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Repr {
            format_version: FORMAT_VERSION.to_string(),
            dtype: A::NAME.to_string(),
            config: self.config,
            last_valid_lr: self.last_valid_lr.map(Float::of),
            step_count: self.step_count as u64,
            skipped_steps: self.skipped_steps as u64,
            slots: self.slots.iter().map(Slot::of).collect(),
            prev: self.prev.iter().map(Slot::of).collect(),
        }
        .serialize(serializer)
    }
}

impl<'de, A: Element> Deserialize<'de> for MetaSGD<A> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let r = Repr::<A>::deserialize(deserializer)?;
        let e = D::Error::custom;
        parse_version(&r.format_version).map_err(e)?;
        check_dtype::<A>("dtype", &r.dtype).map_err(e)?;
        let last_valid_lr = r.last_valid_lr.map(|f| f.to::<A>()).transpose();
        let last_valid_lr =
            last_valid_lr.map_err(|why| e(Error::invalid_checkpoint("last_valid_lr", why)))?;
        let arrays = |v: &[Slot]| v.iter().enumerate().map(|(j, s)| s.to(j)).collect();
        let slots: Result<Vec<_>, Error> = arrays(&r.slots);
        let prev: Result<Vec<_>, Error> = arrays(&r.prev);
        let state = [slots.map_err(e)?, prev.map_err(e)?];
        MetaSGD::from_stored(
            r.config,
            last_valid_lr,
            [r.step_count, r.skipped_steps],
            state,
        )
        .map_err(e)
    }
}
