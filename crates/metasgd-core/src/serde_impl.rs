//! `Serialize`/`Deserialize` for [`MetaSGD`] (feature `serde`), so the
//! optimizer can live inside a user's own checkpoint struct.
//!
//! The representation is derived from the schema (`schema.rs`): one field
//! per row of the table, between `format_version`/`dtype` and `slots`, and
//! it goes through the same checks as a checkpoint on the way in. Floats are
//! exact in every format, whatever the format's own float parser does: each
//! is written as a string, the shortest decimal that reads back to the same
//! bits (`"0.01"`, `"1e-8"`), or `"inf"`, `"-inf"`, `"nan:0x7fc00000"` (NaN
//! with its payload), and read back with Rust's correctly rounded parser.
//! Hand-written documents may use plain numbers too; those go through the
//! format's parser.

use std::fmt;
use std::marker::PhantomData;

use ndarray::{ArrayD, IxDyn};
use serde::de::{self, Error as _, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use metasgd_kernels::Element;

use crate::MetaSGD;
use crate::checkpoint::FORMAT_VERSION;
use crate::schema::{FIELDS, Kind, SERDE_FIELDS, Settings, Value};

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
        let mut s = serializer.serialize_struct("MetaSGD", SERDE_FIELDS.len())?;
        s.serialize_field("format_version", &FORMAT_VERSION.to_string())?;
        s.serialize_field("dtype", A::NAME)?;
        for (f, v) in FIELDS.iter().zip(self.settings.values()) {
            match v {
                Value::Float(x) => s.serialize_field(f.name, &Float::of(x))?,
                Value::MaybeFloat(x) => s.serialize_field(f.name, &x.map(Float::of))?,
                Value::Count(n) => s.serialize_field(f.name, &n)?,
                Value::Name(n) => s.serialize_field(f.name, n)?,
            }
        }
        let slots: Vec<Slot> = self
            .slots
            .iter()
            .map(|a| Slot {
                shape: a.shape().to_vec(),
                data: a.iter().copied().map(Float::of).collect(),
            })
            .collect();
        s.serialize_field("slots", &slots)?;
        s.end()
    }
}

/// One field's value as read, before the schema checks it.
enum Raw {
    Text(String),
    Float(Float),
    MaybeFloat(Option<Float>),
    Count(u64),
    Slots(Vec<Slot>),
}

/// The fields read so far, in [`SERDE_FIELDS`] order.
struct Fields(Vec<Option<Raw>>);

impl Fields {
    fn new() -> Self {
        Self(SERDE_FIELDS.iter().map(|_| None).collect())
    }

    /// Reads the value of field `i` with the type its row says.
    fn read<E: de::Error>(
        &mut self,
        i: usize,
        next: impl FnOnce(Kindish) -> Result<Raw, E>,
    ) -> Result<(), E> {
        if self.0[i].is_some() {
            return Err(E::duplicate_field(SERDE_FIELDS[i]));
        }
        let kind = match SERDE_FIELDS[i] {
            "format_version" | "dtype" => Kindish::Text,
            "slots" => Kindish::Slots,
            name => match FIELDS.iter().find(|f| f.name == name).map(|f| f.kind) {
                Some(Kind::Float) => Kindish::Float,
                Some(Kind::MaybeRate) => Kindish::MaybeFloat,
                Some(Kind::Count { .. }) => Kindish::Count,
                _ => Kindish::Text,
            },
        };
        self.0[i] = Some(next(kind)?);
        Ok(())
    }

    fn into_optimizer<A: Element, E: de::Error>(mut self) -> Result<MetaSGD<A>, E> {
        let mut take = |name: &'static str| {
            let i = SERDE_FIELDS.iter().position(|n| *n == name).unwrap_or(0);
            self.0[i].take().ok_or_else(|| E::missing_field(name))
        };
        let e = |e: crate::Error| E::custom(e);
        let text = |r: Raw| match r {
            Raw::Text(t) => Ok(t),
            _ => Err(E::custom("expected a string")),
        };
        let version = text(take("format_version")?)?;
        match version.parse::<u32>() {
            Ok(1..=FORMAT_VERSION) => {}
            Ok(n) if n > FORMAT_VERSION => {
                return Err(E::custom(crate::Error::invalid_checkpoint(
                    "format_version",
                    format!(
                        "{n} was written by a newer metasgd; this one reads versions up to {FORMAT_VERSION}"
                    ),
                )));
            }
            _ => {
                return Err(E::custom(crate::Error::invalid_checkpoint(
                    "format_version",
                    format!("{version:?} is not a known version"),
                )));
            }
        }
        let dtype = text(take("dtype")?)?;
        if dtype != A::NAME {
            return Err(E::custom(crate::Error::invalid_checkpoint(
                "dtype",
                format!(
                    "the checkpoint holds {dtype}, this optimizer is MetaSGD<{}>",
                    A::NAME
                ),
            )));
        }
        let float = |name: &str, f: &Float| {
            f.to::<A>()
                .map_err(|reason| E::custom(crate::Error::invalid_checkpoint(name, reason)))
        };
        let settings = Settings::from_values(|f| {
            let raw = take(f.name)
                .map_err(|err: E| crate::Error::invalid_checkpoint(f.name, err.to_string()))?;
            let bad = || f.error("stored as the wrong kind of value");
            Ok(match (raw, f.kind) {
                (Raw::Float(x), Kind::Float) => Value::Float(x.to::<A>().map_err(|r| f.error(r))?),
                (Raw::MaybeFloat(x), Kind::MaybeRate) => {
                    Value::MaybeFloat(x.map(|x| x.to::<A>().map_err(|r| f.error(r))).transpose()?)
                }
                (Raw::Count(n), Kind::Count { .. }) => Value::Count(n),
                (Raw::Text(t), Kind::Choice(names)) => {
                    let name = names.iter().find(|n| **n == t).ok_or_else(|| {
                        f.error(format!("unknown value {t:?} ({})", names.join(", ")))
                    })?;
                    Value::Name(name)
                }
                _ => return Err(bad()),
            })
        })
        .map_err(e)?;
        let Raw::Slots(raw_slots) = take("slots")? else {
            return Err(E::custom("slots: expected a list"));
        };
        let mut slots = Vec::with_capacity(raw_slots.len());
        for (j, slot) in raw_slots.iter().enumerate() {
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
        MetaSGD::from_parts(settings, Vec::new())
            .with_state_slots(slots)
            .map_err(e)
    }
}

/// Which Rust type a field is read as.
#[derive(Clone, Copy)]
enum Kindish {
    Text,
    Float,
    MaybeFloat,
    Count,
    Slots,
}

struct MetaSGDVisitor<A>(PhantomData<A>);

impl<'de, A: Element> Visitor<'de> for MetaSGDVisitor<A> {
    type Value = MetaSGD<A>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MetaSGD state")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut fields = Fields::new();
        while let Some(key) = map.next_key::<String>()? {
            let i = SERDE_FIELDS
                .iter()
                .position(|n| *n == key)
                .ok_or_else(|| M::Error::unknown_field(&key, SERDE_FIELDS))?;
            fields.read(i, |kind| {
                Ok(match kind {
                    Kindish::Text => Raw::Text(map.next_value()?),
                    Kindish::Float => Raw::Float(map.next_value()?),
                    Kindish::MaybeFloat => Raw::MaybeFloat(map.next_value()?),
                    Kindish::Count => Raw::Count(map.next_value()?),
                    Kindish::Slots => Raw::Slots(map.next_value()?),
                })
            })?;
        }
        fields.into_optimizer()
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let mut fields = Fields::new();
        for i in 0..SERDE_FIELDS.len() {
            let missing = || S::Error::invalid_length(i, &"every field of a MetaSGD state");
            fields.read(i, |kind| {
                Ok(match kind {
                    Kindish::Text => Raw::Text(seq.next_element()?.ok_or_else(missing)?),
                    Kindish::Float => Raw::Float(seq.next_element()?.ok_or_else(missing)?),
                    Kindish::MaybeFloat => {
                        Raw::MaybeFloat(seq.next_element()?.ok_or_else(missing)?)
                    }
                    Kindish::Count => Raw::Count(seq.next_element()?.ok_or_else(missing)?),
                    Kindish::Slots => Raw::Slots(seq.next_element()?.ok_or_else(missing)?),
                })
            })?;
        }
        fields.into_optimizer()
    }
}

impl<'de, A: Element> Deserialize<'de> for MetaSGD<A> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("MetaSGD", SERDE_FIELDS, MetaSGDVisitor(PhantomData))
    }
}
