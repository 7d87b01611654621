//! The one description of a [`MetaSGD`](crate::MetaSGD)'s state: every
//! setting and counter with its type, its bounds and its name.
//!
//! The checkpoint (`checkpoint/state.rs`), serde (`serde_impl.rs`), the
//! sharded metadata (`metasgd-dist`, through [`crate::MetaSGD::same_settings`])
//! and the README's table all derive from the table in [`schema!`] below:
//! adding a field is one line there (plus its builder and getter, if users
//! should set or see it).

use metasgd_kernels::Element;

use crate::{Backend, Error, NonFinitePolicy, Result};

/// The most inner steps (`K`) a step runs. Each inner step is one pass over
/// every element (about 0.1 ns per element here), so this bounds one step
/// of a 10^8-parameter model at seconds; a corrupt or hostile checkpoint
/// cannot make the next step run for hours. Published Meta-SGD and the
/// reference crate use 1 to 5.
pub const MAX_INNER_STEPS: usize = 1000;

/// The largest `step_count` or `skipped_steps` a checkpoint may hold:
/// 2^53, the largest count every reader (JSON numbers, `f64`) holds exactly.
pub const MAX_COUNT: u64 = 1 << 53;

/// The smallest and largest per-parameter learning rate (the clamp range),
/// and the one rule for a stored rate: within `[A::LO, A::HI]`, or NaN.
///
/// NaN is allowed because the contract makes it a reachable state: under
/// [`NonFinitePolicy::Propagate`] a NaN gradient turns `alpha` into NaN and
/// it stays NaN (`docs/semantics.md`), so a checkpoint of that run must load
/// as that run. Every other value outside the range is unreachable: each
/// step, `set_learning_rate` and the sharded padding clamp.
///
/// ```
/// assert!(metasgd_core::valid_rate(0.01_f32) && metasgd_core::valid_rate(f64::NAN));
/// assert!(!metasgd_core::valid_rate(0.0_f32) && !metasgd_core::valid_rate(11.0_f64));
/// ```
pub fn valid_rate<A: Element>(a: A) -> bool {
    a.is_nan() || (a >= A::LO && a <= A::HI)
}

/// One field's value as every format stores it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value<A> {
    /// A float (a 0-d tensor of `A`; a string in serde).
    Float(A),
    /// An optional float (a tensor that may be absent; `null` in serde).
    MaybeFloat(Option<A>),
    /// A counter (a 0-d `U64` tensor; a number in serde).
    Count(u64),
    /// One of a few names (a `__metadata__` key; a string in serde).
    Name(&'static str),
}

impl<A: Element> Value<A> {
    /// Equal bit for bit (NaN payloads included).
    pub(crate) fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Float(a), Value::Float(b)) => a.bits() == b.bits(),
            (Value::MaybeFloat(a), Value::MaybeFloat(b)) => {
                a.map(Element::bits) == b.map(Element::bits)
            }
            (Value::Count(a), Value::Count(b)) => a == b,
            (Value::Name(a), Value::Name(b)) => a == b,
            _ => false,
        }
    }
}

/// How a field is stored, and which values it may take.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// Any float, stored as it is (`base_lr` may hold an invalid value that
    /// the next step reports, as `set_learning_rate` documents).
    Float,
    /// Absent, or a valid learning rate (finite and `> 0`).
    MaybeRate,
    /// An integer in `[min, max]`.
    Count {
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// One of these names.
    Choice(&'static [&'static str]),
}

/// One row of the table.
#[derive(Debug)]
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) doc: &'static str,
}

impl Field {
    pub(crate) fn error(&self, reason: impl Into<String>) -> Error {
        Error::invalid_checkpoint(self.name, reason)
    }
}

/// An enum stored by name.
pub(crate) trait Named: Copy + PartialEq + 'static {
    const NAMES: &'static [(&'static str, Self)];
    const ALL: &'static [&'static str];
}

impl Named for NonFinitePolicy {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("propagate", NonFinitePolicy::Propagate),
        ("skip", NonFinitePolicy::Skip),
        ("error", NonFinitePolicy::Error),
    ];
    const ALL: &'static [&'static str] = &["propagate", "skip", "error"];
}

impl Named for Backend {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("auto", Backend::Auto),
        ("scalar", Backend::Scalar),
        ("simd", Backend::Simd),
        ("parallel", Backend::Parallel),
    ];
    const ALL: &'static [&'static str] = &["auto", "scalar", "simd", "parallel"];
}

/// Per kind: the Rust value to a [`Value`] and back, with the bounds checked.
pub(crate) mod codec {
    use super::*;

    fn mismatch(field: &Field) -> Error {
        field.error("stored as the wrong kind of value")
    }

    pub(crate) mod float {
        use super::*;
        pub(crate) fn encode<A: Element>(v: &A) -> Value<A> {
            Value::Float(*v)
        }
        pub(crate) fn decode<A: Element>(v: Value<A>, f: &Field) -> Result<A> {
            match v {
                Value::Float(x) => Ok(x),
                _ => Err(mismatch(f)),
            }
        }
    }

    pub(crate) mod maybe_rate {
        use super::*;
        pub(crate) fn encode<A: Element>(v: &Option<A>) -> Value<A> {
            Value::MaybeFloat(*v)
        }
        pub(crate) fn decode<A: Element>(v: Value<A>, f: &Field) -> Result<Option<A>> {
            match v {
                Value::MaybeFloat(Some(x)) if !(x.is_finite() && x > A::ZERO) => Err(f.error(
                    format!("{x:?} is not a valid learning rate (finite and > 0)"),
                )),
                Value::MaybeFloat(x) => Ok(x),
                _ => Err(mismatch(f)),
            }
        }
    }

    pub(crate) mod count {
        use super::*;
        pub(crate) fn encode<A: Element>(v: &usize) -> Value<A> {
            Value::Count(*v as u64)
        }
        pub(crate) fn decode<A: Element>(v: Value<A>, f: &Field) -> Result<usize> {
            let (Value::Count(n), Kind::Count { min, max }) = (v, f.kind) else {
                return Err(mismatch(f));
            };
            if n < min || n > max {
                return Err(f.error(format!("{n} is outside [{min}, {max}]")));
            }
            usize::try_from(n)
                .map_err(|_| f.error(format!("{n} does not fit this platform's usize")))
        }
    }

    pub(crate) mod choice {
        use super::*;
        pub(crate) fn encode<A: Element, T: Named>(v: &T) -> Value<A> {
            let name = T::NAMES
                .iter()
                .find(|(_, x)| x == v)
                .map_or("?", |(n, _)| n);
            Value::Name(name)
        }
        pub(crate) fn decode<A: Element, T: Named>(v: Value<A>, f: &Field) -> Result<T> {
            let Value::Name(name) = v else {
                return Err(mismatch(f));
            };
            T::NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, x)| *x)
                .ok_or_else(|| f.error(format!("unknown value {name:?} ({})", T::ALL.join(", "))))
        }
    }
}

/// Declares the settings struct and its table from one list: each line is
/// a doc comment, the name, the Rust type, the codec and the kind (bounds).
macro_rules! schema {
    ($( #[doc = $doc:literal] $name:ident: $ty:ty, $codec:ident, $kind:expr; )*) => {
        /// Every setting and counter of a [`crate::MetaSGD`] but its rates.
        #[derive(Clone, Debug)]
        pub(crate) struct Settings<A> {
            $( #[doc = $doc] pub(crate) $name: $ty, )*
        }

        /// The serde representation's fields, in order.
        #[cfg(feature = "serde")]
        pub(crate) const SERDE_FIELDS: &[&str] =
            &["format_version", "dtype", $(stringify!($name),)* "slots"];

        /// The table: one row per field of [`Settings`], in order.
        pub(crate) const FIELDS: &[Field] = &[
            $( Field { name: stringify!($name), kind: $kind, doc: $doc }, )*
        ];

        impl<A: Element> Settings<A> {
            /// Every field's value, in [`FIELDS`] order.
            pub(crate) fn values(&self) -> Vec<Value<A>> {
                vec![ $( codec::$codec::encode(&self.$name), )* ]
            }

            /// The settings from each field's stored value (`get` is asked
            /// once per row of [`FIELDS`], in order); bounds are checked.
            pub(crate) fn from_values(
                mut get: impl FnMut(&'static Field) -> Result<Value<A>>,
            ) -> Result<Self> {
                let mut rows = FIELDS.iter();
                Ok(Self { $( $name: {
                    let f = rows.next().expect("one row per field");
                    codec::$codec::decode(get(f)?, f)?
                }, )* })
            }
        }
    };
}

schema! {
    /// Base learning rate: every `alpha` starts here (any float; a step checks it is finite and > 0).
    base_lr: A, float, Kind::Float;
    /// The last `base_lr` that passed validation, which `set_learning_rate` rescales from (absent before any).
    last_valid_lr: Option<A>, maybe_rate, Kind::MaybeRate;
    /// Learning rate of the learning rates (any float; a step checks it is finite and >= 0).
    alpha_lr: A, float, Kind::Float;
    /// Inner updates per step, `K`.
    inner_steps: usize, count, Kind::Count { min: 1, max: MAX_INNER_STEPS as u64 };
    /// What a step does with NaN or infinite gradients.
    non_finite: NonFinitePolicy, choice, Kind::Choice(NonFinitePolicy::ALL);
    /// Which kernel runs a step.
    backend: Backend, choice, Kind::Choice(Backend::ALL);
    /// Successful steps.
    step_count: usize, count, Kind::Count { min: 0, max: MAX_COUNT };
    /// Steps skipped under `NonFinitePolicy::Skip`.
    skipped_steps: usize, count, Kind::Count { min: 0, max: MAX_COUNT };
}

impl<A: Element> Settings<A> {
    /// Bit-for-bit equality of every field.
    pub(crate) fn same(&self, other: &Self) -> bool {
        self.values()
            .iter()
            .zip(other.values().iter())
            .all(|(a, b)| a.same(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's state table lists exactly the fields of the schema, in
    /// order, so the documentation cannot drift from the code.
    #[test]
    fn readme_table_matches_the_schema() {
        let readme = include_str!("../../../README.md");
        let rows: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("<!-- state-table -->"))
            .skip(3)
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.split('|').nth(1).unwrap_or("").trim().trim_matches('`'))
            .collect();
        let names: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
        assert_eq!(rows, names, "README state table vs schema");
        for f in FIELDS {
            assert!(!f.doc.is_empty(), "{} has no doc", f.name);
        }
    }

    #[test]
    fn counts_are_bounded() {
        let f = &FIELDS[3];
        assert_eq!(f.name, "inner_steps");
        for (n, ok) in [(0, false), (1, true), (1000, true), (1001, false)] {
            let r = codec::count::decode::<f32>(Value::Count(n), f);
            assert_eq!(r.is_ok(), ok, "{n}");
        }
        assert!(codec::count::decode::<f32>(Value::Count(MAX_COUNT + 1), &FIELDS[6]).is_err());
    }

    #[test]
    fn one_rate_rule() {
        for (a, ok) in [
            (f32::NAN, true),
            (1e-8_f64 as f32, true),
            (10.0, true),
            (0.0, false),
            (1e-9, false),
            (10.5, false),
            (f32::INFINITY, false),
            (-1.0, false),
        ] {
            assert_eq!(valid_rate(a), ok, "{a}");
        }
    }
}
