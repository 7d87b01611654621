//! The optimizer's checkpoint: [`MetaSGD`]'s state in the container.
//!
//! Layout (`format` = `metasgd`, `format_version` 2), readable by any
//! safetensors reader; [`MetaSGD::state_bytes_with`] and
//! [`MetaSGD::from_state_bytes_with`] are its one mapping:
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

use metasgd_kernels::Element;
use ndarray::{ArrayD, ArrayViewD};

use super::{Reader, Writer};
use crate::backend::Named;
use crate::config::{MAX_COUNT, MAX_INNER_STEPS, valid_base_lr, valid_rate};
use crate::{Backend, Error, MetaSGD, MetaSGDConfig, NonFinitePolicy, Result, Rule, StateMismatch};

const FORMAT: &str = "metasgd";

/// The float settings, stored as 0-d tensors of `A` (the last two only when set).
const FLOATS: [&str; 4] = ["base_lr", "alpha_lr", "last_valid_lr", "max_grad_norm"];
/// The counters, stored as 0-d `U64` tensors.
const COUNTS: [&str; 3] = ["inner_steps", "step_count", "skipped_steps"];
/// The choices, stored by name in `__metadata__` (`rule` only when it is
/// not the reference rule, so reference files are as they always were).
const CHOICES: [&str; 3] = ["non_finite", "backend", "rule"];
/// The hypergradient rule's settings, 0-d tensors of `A`.
const RULE_FLOATS: [&str; 3] = ["rule_up", "rule_down", "rule_smoothing"];

/// The caller's tensors as a checkpoint gives them back: each name with its
/// array, in the order they were saved.
pub type NamedTensors<A> = Vec<(String, ArrayD<A>)>;

/// The format's own `__metadata__` keys besides the choices.
const OWN_KEYS: [&str; 2] = ["dtype", "slots"];

/// Prefix of the caller's tensors.
pub(super) const TENSOR_PREFIX: &str = "tensor.";

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
            if OWN_KEYS.contains(k) || CHOICES.contains(k) {
                let key = format!("__metadata__.{k}");
                return Err(Error::invalid_checkpoint(key, "is the format's own key"));
            }
            w.metadata(k, v.clone())?;
        }
        let c = &self.config;
        w.metadata("dtype", A::NAME)?;
        w.metadata("slots", self.slots.len().to_string())?;
        w.metadata("non_finite", c.non_finite.name())?;
        w.metadata("backend", c.backend.name())?;
        w.float("base_lr", c.base_lr)?;
        w.float("alpha_lr", c.alpha_lr)?;
        if let Some(lr) = self.last_valid_lr {
            w.float("last_valid_lr", lr)?;
        }
        if let Some(c) = c.max_grad_norm {
            w.float("max_grad_norm", c)?;
        }
        let counts = [c.inner_steps, self.step_count, self.skipped_steps];
        for (name, n) in COUNTS.iter().zip(counts) {
            w.count(name, n as u64)?;
        }
        for (j, alpha) in self.slots.iter().enumerate() {
            w.floats(&format!("alpha.{j}"), alpha.view())?;
        }
        if let Rule::Hypergradient {
            up,
            down,
            smoothing,
        } = c.rule
        {
            w.metadata("rule", "hypergradient")?;
            for (name, x) in RULE_FLOATS.iter().zip([up, down, smoothing]) {
                w.float(name, x)?;
            }
            for (j, alpha) in self.slots.iter().enumerate() {
                // Before the first step the state is the zeros the step would create.
                let zeros = ArrayD::zeros(alpha.raw_dim());
                let prev = self.prev.get(j).unwrap_or(&zeros);
                w.floats(&format!("prev.{j}"), prev.view())?;
            }
        }
        w.caller_tensors(tensors)?;
        w.to_bytes()
    }

    /// Everything a checkpoint holds: the optimizer, the caller's tensors,
    /// and the extra `__metadata__` keys in `extra_keys` (each required;
    /// any other unknown key is refused).
    pub fn from_state_bytes_with(bytes: &[u8], extra_keys: &[&str]) -> Result<Loaded<A>> {
        let r = Reader::open(bytes, FORMAT, true)?;
        check_dtype::<A>("__metadata__.dtype", r.metadata("dtype")?)?;
        let allowed: Vec<&str> = CHOICES
            .into_iter()
            .chain(OWN_KEYS)
            .chain(extra_keys.iter().copied())
            .collect();
        r.only_metadata(&allowed)?;
        let text = r.metadata("slots")?;
        let why = || format!("{text:?} is not a count of the file's tensors");
        let slots = text.parse().ok().filter(|&n: &usize| n <= r.len());
        let slots = slots.ok_or_else(|| Error::invalid_checkpoint("__metadata__.slots", why()))?;
        let hypergradient = match r.metadata("rule").ok() {
            None => false,
            Some("hypergradient") => true,
            Some(other) => {
                let why = format!("unknown value {other:?} (absent: reference, or hypergradient)");
                return Err(Error::invalid_checkpoint("__metadata__.rule", why));
            }
        };
        let floats = FLOATS
            .iter()
            .filter(|f| matches!(**f, "base_lr" | "alpha_lr") || r.has(f));
        let rule_floats = RULE_FLOATS.iter().filter(|_| hypergradient);
        let floats = floats.chain(rule_floats).chain(&COUNTS);
        let mut expected: BTreeSet<String> = floats.map(|f| f.to_string()).collect();
        expected.extend((0..slots).map(|j| format!("alpha.{j}")));
        let prev_names = (0..slots)
            .filter(|_| hypergradient)
            .map(|j| format!("prev.{j}"));
        expected.extend(prev_names.clone());
        let caller = r.caller_names(&mut expected)?;
        r.only_tensors(&expected)?;

        let config = MetaSGDConfig {
            base_lr: r.float("base_lr")?,
            alpha_lr: r.float("alpha_lr")?,
            inner_steps: usize::try_from(r.count("inner_steps")?).unwrap_or(usize::MAX),
            backend: Backend::from_name("backend", r.metadata("backend")?)?,
            non_finite: NonFinitePolicy::from_name("non_finite", r.metadata("non_finite")?)?,
            max_grad_norm: r
                .has("max_grad_norm")
                .then(|| r.float("max_grad_norm"))
                .transpose()?,
            rule: match hypergradient {
                true => Rule::Hypergradient {
                    up: r.float(RULE_FLOATS[0])?,
                    down: r.float(RULE_FLOATS[1])?,
                    smoothing: r.float(RULE_FLOATS[2])?,
                },
                false => Rule::Reference,
            },
        };
        let last_valid_lr = r.has("last_valid_lr").then(|| r.float("last_valid_lr"));
        let last_valid_lr = last_valid_lr.transpose()?;
        let counts = [r.count("step_count")?, r.count("skipped_steps")?];
        let alphas = (0..slots).map(|j| r.floats(&format!("alpha.{j}")));
        let alphas = alphas.collect::<Result<Vec<_>>>()?;
        let prev = prev_names
            .map(|name| r.floats(&name))
            .collect::<Result<Vec<_>>>()?;
        let optimizer = MetaSGD::from_stored(config, last_valid_lr, counts, [alphas, prev])?;
        let tensors = r.caller_tensors(caller)?;
        let metadata = extra_keys
            .iter()
            .map(|k| Ok((k.to_string(), r.metadata(k)?.to_string())))
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Loaded {
            optimizer,
            tensors,
            metadata,
        })
    }

    /// An optimizer from stored state (a checkpoint, a serde document),
    /// checked as a checkpoint is: `inner_steps` in `1..=MAX_INNER_STEPS`,
    /// the counters (`step_count`, `skipped_steps`) at most [`MAX_COUNT`],
    /// `last_valid_lr` a valid rate, every rate within the rate rule, the
    /// rule's state one array per slot of its shape (none for the
    /// reference rule). The
    /// other settings are stored as they are (an invalid `base_lr` is
    /// reported by the next step, as `set_learning_rate` documents).
    pub(crate) fn from_stored(
        config: MetaSGDConfig<A>,
        last_valid_lr: Option<A>,
        [step_count, skipped_steps]: [u64; 2],
        [slots, prev]: [Vec<ArrayD<A>>; 2],
    ) -> Result<Self> {
        let want = if matches!(config.rule, Rule::Reference) {
            0
        } else {
            slots.len()
        };
        let shapes_differ = slots.iter().zip(&prev).any(|(a, p)| a.shape() != p.shape());
        if prev.len() != want || shapes_differ {
            let why = format!(
                "{} arrays for {} slots, or of other shapes",
                prev.len(),
                want
            );
            return Err(Error::invalid_checkpoint("prev", why));
        }
        if !(1..=MAX_INNER_STEPS).contains(&config.inner_steps) {
            let why = format!("{} is outside [1, {MAX_INNER_STEPS}]", config.inner_steps);
            return Err(Error::invalid_checkpoint("inner_steps", why));
        }
        let count = |name: &str, n: u64| {
            let fits = Some(n).filter(|n| *n <= MAX_COUNT);
            let why = || format!("{n} is outside [0, {MAX_COUNT}] or this platform's usize");
            let fits = fits.and_then(|n| usize::try_from(n).ok());
            fits.ok_or_else(|| Error::invalid_checkpoint(name, why()))
        };
        if let Some(lr) = last_valid_lr.filter(|lr| !valid_base_lr(*lr)) {
            let why = format!("{lr:?} is not a valid learning rate (finite and > 0)");
            return Err(Error::invalid_checkpoint("last_valid_lr", why));
        }
        let opt = Self {
            config,
            last_valid_lr,
            step_count: count("step_count", step_count)?,
            skipped_steps: count("skipped_steps", skipped_steps)?,
            slots: Vec::new(),
            prev,
        };
        opt.with_state_slots(slots)
    }

    /// Replaces the rule's state (under [`Rule::Hypergradient`], each slot's
    /// previous gradient) with `prev`: one array per slot, of its shape, or
    /// none (zeros at the next step); none under [`Rule::Reference`]. For
    /// layered state such as a rank's shard; call it after
    /// [`MetaSGD::with_state_slots`].
    pub fn with_rule_state(mut self, prev: Vec<ArrayD<A>>) -> Result<Self> {
        let want = match self.config.rule {
            Rule::Reference => 0,
            _ if prev.is_empty() => 0,
            _ => self.slots.len(),
        };
        if prev.len() != want {
            let (slots, arrays) = (want, prev.len());
            return Err(Error::StateMismatch(StateMismatch::SlotCount {
                slots,
                arrays,
            }));
        }
        for (slot, (a, p)) in self.slots.iter().zip(&prev).enumerate() {
            if a.shape() != p.shape() {
                let (state, params) = (p.shape().to_vec(), a.shape().to_vec());
                return Err(Error::StateMismatch(StateMismatch::Shape {
                    slot,
                    state,
                    params,
                }));
            }
        }
        self.prev = prev;
        Ok(self)
    }

    /// Replaces every slot's learning rates with `slots`, checked as a
    /// checkpoint's are (the one rate rule: within `[1e-8, 10]`, or NaN):
    /// for layered state such as a rank's shard. The rule's state is kept
    /// if it still fits the slots, and dropped otherwise.
    pub fn with_state_slots(mut self, slots: Vec<ArrayD<A>>) -> Result<Self> {
        check_rates(&slots)?;
        let fits = |p: &ArrayD<A>, a: &ArrayD<A>| p.shape() == a.shape();
        if self.prev.len() != slots.len() || !self.prev.iter().zip(&slots).all(|(p, a)| fits(p, a))
        {
            self.prev.clear();
        }
        self.slots = slots;
        Ok(self)
    }
}

/// The stored dtype (field `what`) is `A`'s (checkpoint and serde alike).
pub(crate) fn check_dtype<A: Element>(what: &str, dtype: &str) -> Result<()> {
    if dtype == A::NAME {
        return Ok(());
    }
    let why = format!(
        "the checkpoint holds {dtype}, this optimizer is MetaSGD<{}>",
        A::NAME
    );
    Err(Error::invalid_checkpoint(what, why))
}

/// Every rate follows the one rule ([`valid_rate`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's state table lists exactly the entries this mapping
    /// writes (and each choice's names), so the documentation cannot
    /// drift from the code.
    #[test]
    fn readme_table_matches_the_mapping() {
        let readme = include_str!("../../../../README.md");
        let rows: Vec<(&str, &str)> = readme
            .lines()
            .skip_while(|l| !l.starts_with("<!-- state-table -->"))
            .skip(3)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let mut cells = l.split('|').skip(1).map(str::trim);
                let name = cells.next().unwrap_or("").trim_matches('`');
                (name, cells.nth(1).unwrap_or(""))
            })
            .collect();
        let mut names: Vec<&str> = rows.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let all = FLOATS
            .into_iter()
            .chain(COUNTS)
            .chain(CHOICES)
            .chain(RULE_FLOATS);
        let mut want: Vec<&str> = all.collect();
        want.sort_unstable();
        assert_eq!(names, want, "README state table vs the checkpoint mapping");
        let bounds = |name: &str| rows.iter().find(|(n, _)| *n == name).map(|(_, b)| *b);
        for (name, all) in [
            (
                "backend",
                Backend::NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ),
            (
                "non_finite",
                NonFinitePolicy::NAMES.iter().map(|(n, _)| *n).collect(),
            ),
        ] {
            let listed = bounds(name).unwrap_or("");
            for n in all {
                assert!(
                    listed.contains(&format!("`{n}`")),
                    "{name}: {n} not in the README"
                );
            }
        }
    }

    #[test]
    fn stored_counts_are_bounded() {
        let config = MetaSGDConfig::new(0.1_f32);
        let load = |inner: usize, counts: [u64; 2]| {
            let mut c = config;
            c.inner_steps = inner;
            MetaSGD::from_stored(c, None, counts, Default::default())
        };
        for (inner, ok) in [
            (0, false),
            (1, true),
            (MAX_INNER_STEPS, true),
            (MAX_INNER_STEPS + 1, false),
        ] {
            assert_eq!(load(inner, [0, 0]).is_ok(), ok, "inner_steps {inner}");
        }
        assert!(load(1, [MAX_COUNT, MAX_COUNT]).is_ok());
        assert!(load(1, [MAX_COUNT + 1, 0]).is_err());
        assert!(load(1, [0, MAX_COUNT + 1]).is_err());
        assert!(MetaSGD::from_stored(config, Some(0.0), [0, 0], Default::default()).is_err());
    }

    /// serde derives the choices' names; the checkpoint stores them by
    /// its own table: both must be the same names.
    #[cfg(feature = "serde")]
    #[test]
    fn serde_and_checkpoint_name_choices_alike() {
        for (name, b) in Backend::NAMES {
            assert_eq!(serde_json::to_string(b).unwrap(), format!("\"{name}\""));
        }
        for (name, p) in NonFinitePolicy::NAMES {
            assert_eq!(serde_json::to_string(p).unwrap(), format!("\"{name}\""));
        }
    }
}
