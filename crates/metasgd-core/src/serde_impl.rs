//! `Serialize`/`Deserialize` for [`MetaSGD`] (feature `serde`), so the
//! optimizer can live inside a user's own checkpoint struct.
//!
//! The representation mirrors the safetensors checkpoint and goes through
//! the same checks on the way in. Floats are exact in every format, whatever
//! the format's own float parser does: each is written as a string, the
//! shortest decimal that reads back to the same bits (`"0.01"`, `"1e-8"`),
//! or `"inf"`, `"-inf"`, `"nan:0x7fc00000"` (NaN with its payload), and read
//! back with Rust's correctly rounded parser. Hand-written documents may use
//! plain numbers too; those go through the format's parser.

use ndarray::{ArrayD, IxDyn};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use metasgd_kernels::Element;

use crate::MetaSGD;
use crate::checkpoint::{
    FORMAT_VERSION, State, backend_name, check_dtype, check_version, parse_backend, parse_policy,
    policy_name,
};

#[derive(Serialize, Deserialize)]
#[serde(rename = "MetaSGD", deny_unknown_fields)]
struct Repr {
    format_version: String,
    dtype: String,
    base_lr: Float,
    last_valid_lr: Option<Float>,
    alpha_lr: Float,
    inner_steps: u64,
    non_finite: String,
    backend: String,
    step_count: u64,
    skipped_steps: u64,
    slots: Vec<Slot>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Slot {
    shape: Vec<usize>,
    data: Vec<Float>,
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
        match self {
            Float::Number(v) => A::from(*v).ok_or_else(|| format!("{v} is not a number")),
            Float::Special(s) => match s.as_str() {
                "inf" => Ok(A::infinity()),
                "-inf" => Ok(A::neg_infinity()),
                _ if !s.starts_with("nan") => {
                    let x: Option<A> = if size_of::<A>() == 4 {
                        s.parse::<f32>().ok().and_then(A::from)
                    } else {
                        s.parse::<f64>().ok().and_then(A::from)
                    };
                    x.filter(|x| x.is_finite())
                        .ok_or_else(|| format!("{s:?} is not a finite {}", A::NAME))
                }
                _ => {
                    let hex = s.strip_prefix("nan:0x").ok_or_else(|| {
                        format!(
                            "{s:?} is not a float (a number, \"inf\", \"-inf\" or \"nan:0x...\")"
                        )
                    })?;
                    let bits = u64::from_str_radix(hex, 16).map_err(|e| format!("{s:?}: {e}"))?;
                    let x = A::from_bits(bits);
                    if x.is_nan() && x.bits() == bits {
                        Ok(x)
                    } else {
                        Err(format!("{s:?} is not the bit pattern of a {} NaN", A::NAME))
                    }
                }
            },
        }
    }
}

impl<A: Element> Serialize for MetaSGD<A> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let state = self.to_state();
        Repr {
            format_version: FORMAT_VERSION.to_string(),
            dtype: A::NAME.to_string(),
            base_lr: Float::of(state.base_lr),
            last_valid_lr: state.last_valid_lr.map(Float::of),
            alpha_lr: Float::of(state.alpha_lr),
            inner_steps: state.inner_steps,
            non_finite: policy_name(state.non_finite).to_string(),
            backend: backend_name(state.backend).to_string(),
            step_count: state.step_count,
            skipped_steps: state.skipped_steps,
            slots: state
                .slots
                .iter()
                .map(|a| Slot {
                    shape: a.shape().to_vec(),
                    data: a.iter().copied().map(Float::of).collect(),
                })
                .collect(),
        }
        .serialize(serializer)
    }
}

impl<'de, A: Element> Deserialize<'de> for MetaSGD<A> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let r = Repr::deserialize(deserializer)?;
        let e = |e: crate::Error| D::Error::custom(e);
        check_version(&r.format_version).map_err(e)?;
        check_dtype::<A>("dtype", &r.dtype).map_err(e)?;
        let float = |name: &str, f: &Float| {
            f.to::<A>()
                .map_err(|reason| D::Error::custom(crate::Error::invalid_checkpoint(name, reason)))
        };
        let mut slots = Vec::with_capacity(r.slots.len());
        for (j, slot) in r.slots.iter().enumerate() {
            let name = format!("alpha.{j}");
            let data = slot
                .data
                .iter()
                .map(|f| float(&name, f))
                .collect::<Result<Vec<A>, _>>()?;
            let alpha = ArrayD::from_shape_vec(IxDyn(&slot.shape), data).map_err(|err| {
                e(crate::Error::invalid_checkpoint(
                    &name,
                    format!("shape {:?} does not match its data: {err}", slot.shape),
                ))
            })?;
            slots.push(alpha);
        }
        State {
            base_lr: float("base_lr", &r.base_lr)?,
            last_valid_lr: r
                .last_valid_lr
                .as_ref()
                .map(|f| float("last_valid_lr", f))
                .transpose()?,
            alpha_lr: float("alpha_lr", &r.alpha_lr)?,
            inner_steps: r.inner_steps,
            backend: parse_backend(&r.backend).map_err(e)?,
            non_finite: parse_policy(&r.non_finite).map_err(e)?,
            slots,
            step_count: r.step_count,
            skipped_steps: r.skipped_steps,
        }
        .into_optimizer()
        .map_err(e)
    }
}
