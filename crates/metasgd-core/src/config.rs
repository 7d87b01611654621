//! The settings of a [`MetaSGD`](crate::MetaSGD): one plain type, its
//! bounds and its one validation. Every entry point (the plain, list,
//! closure and sharded steps, the candle and burn adapters) takes this
//! type; none keeps a copy of its fields or rules.

use metasgd_kernels::{Element, RateRule};

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

/// The one rule for rates when the base rate changes from `old` to `new`
/// (`set_learning_rate`, a burn scheduler): every rate is multiplied by
/// `new / old` and clamped to `[1e-8, 10]` (NaN stays NaN), so a schedule
/// scales what was learned instead of erasing it.
///
/// ```
/// let mut rates = [0.02_f32, 8.0, f32::NAN];
/// metasgd_core::rescale_rates(&mut rates, 0.1, 0.2);
/// assert_eq!(rates[..2], [0.02 * (0.2 / 0.1), 10.0]);
/// assert!(rates[2].is_nan());
/// ```
pub fn rescale_rates<A: Element>(rates: &mut [A], old: A, new: A) {
    metasgd_kernels::scalar::rescale(rates, new / old);
}

/// A base learning rate a step accepts: finite and `> 0`.
pub(crate) fn valid_base_lr<A: Element>(lr: A) -> bool {
    lr.is_finite() && lr > A::ZERO
}

/// How the per-parameter rates learn: a setting ([`MetaSGDConfig::rule`]).
///
/// The exact per-element formulas, their state and their NaN behaviour are
/// in `docs/semantics.md`.
///
/// ```
/// use metasgd_core::{MetaSGD, Optimizer, Rule};
/// use ndarray::array;
///
/// // Gradients that keep their sign: the rates grow by `up` each step.
/// let mut opt = MetaSGD::new(0.01_f64).with_inner_steps(1).with_rule(Rule::hypergradient());
/// let mut w = array![1.0, -1.0];
/// for _ in 0..3 {
///     let g = w.mapv(f64::signum);
///     opt.step_inplace(w.view_mut(), g.view())?;
/// }
/// let Rule::Hypergradient { up, .. } = opt.config().rule else { unreachable!() };
/// assert_eq!(opt.get_per_param_lr().unwrap()[0], 0.01 * up * up); // the first step has no previous gradient
/// # Ok::<(), metasgd_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase", bound = "", deny_unknown_fields)
)]
#[non_exhaustive]
pub enum Rule<A: Element> {
    /// The reference crate's rule, `alpha -= alpha_lr * g * (accumulated
    /// delta)` after the parameters: it can only shrink a rate.
    #[default]
    Reference,
    /// The sign of the per-element hypergradient (Baydin et al. 2018: the
    /// derivative of the loss with respect to the previous rate is
    /// `-g(t) * g(t-1)`), multiplicative and scale-free, before the
    /// parameters, with the previous gradients smoothed as in Jacobs'
    /// delta-bar-delta: each rate is multiplied by `up` where this gradient
    /// has the sign of the smoothed previous gradients, by `down` where it
    /// has the other sign, then clamped; then `theta -= alpha * g`. The state
    /// is the smoothed gradient. `alpha_lr` is not used.
    Hypergradient {
        /// Factor where the gradient agrees with the state (`1 <= up <= 10`).
        #[cfg_attr(feature = "serde", serde(with = "crate::serde_impl::exact"))]
        up: A,
        /// Factor where it disagrees (`0 < down <= 1` and `up * down <= 1`,
        /// so that gradients of random sign never grow a rate on average).
        #[cfg_attr(feature = "serde", serde(with = "crate::serde_impl::exact"))]
        down: A,
        /// How much of the state a step keeps (`0 <= smoothing < 1`): the
        /// state becomes `p * smoothing + g * (1 - smoothing)`; with 0 it is
        /// the previous gradient itself.
        #[cfg_attr(feature = "serde", serde(with = "crate::serde_impl::exact"))]
        smoothing: A,
    },
}

impl<A: Element> Rule<A> {
    /// [`Rule::Hypergradient`] with its default factors, `up = 1.05`,
    /// `down = 0.95` and `smoothing = 0.9` (chosen on validation splits of
    /// the diabetes MLP and the burn CNN; see the README's robustness tables).
    pub fn hypergradient() -> Self {
        let f = |x: f64| A::from(x).unwrap_or_else(A::one);
        Rule::Hypergradient {
            up: f(1.05),
            down: f(0.95),
            smoothing: f(0.9),
        }
    }

    fn check(&self) -> Result<()> {
        if let Rule::Hypergradient {
            up,
            down,
            smoothing,
        } = *self
        {
            let ten = A::from(10.0).unwrap_or_else(A::one);
            if !(up >= A::one() && up <= ten) {
                return Err(invalid("rule.up", up, "in [1, 10]"));
            }
            if !(down > A::ZERO && down <= A::one()) {
                return Err(invalid("rule.down", down, "in (0, 1]"));
            }
            if up * down > A::one() {
                let why = "at most 1 / up: gradients of random sign must not grow a rate";
                return Err(invalid("rule.down", down, why));
            }
            if !(smoothing >= A::ZERO && smoothing < A::one()) {
                return Err(invalid("rule.smoothing", smoothing, "in [0, 1)"));
            }
        }
        Ok(())
    }

    fn cast<B: Element>(&self) -> Rule<B> {
        let to = |x: A| x.to_f64().and_then(B::from).unwrap_or_else(B::nan);
        match *self {
            Rule::Reference => Rule::Reference,
            Rule::Hypergradient {
                up,
                down,
                smoothing,
            } => Rule::Hypergradient {
                up: to(up),
                down: to(down),
                smoothing: to(smoothing),
            },
        }
    }

    fn bits(&self) -> Option<[u64; 3]> {
        match *self {
            Rule::Reference => None,
            Rule::Hypergradient {
                up,
                down,
                smoothing,
            } => Some([up.bits(), down.bits(), smoothing.bits()]),
        }
    }

    /// The kernels' form of the rule.
    pub(crate) fn kernel_rule(&self) -> RateRule<A> {
        match *self {
            Rule::Reference => RateRule::Reference,
            Rule::Hypergradient {
                up,
                down,
                smoothing,
            } => RateRule::Hypergradient {
                up,
                down,
                smoothing,
            },
        }
    }
}

/// The settings of a [`MetaSGD`](crate::MetaSGD): everything but its
/// counters and learned rates.
///
/// Plain data with public fields, [`Default`], builders and one
/// [`validate`](Self::validate); with the `serde` feature it derives
/// `Serialize`/`Deserialize`, every float exact (written as the shortest
/// decimal that reads back to the same bits).
///
/// ```
/// use metasgd_core::{Backend, MetaSGD, MetaSGDConfig, Optimizer};
/// use ndarray::array;
///
/// let config = MetaSGDConfig::new(0.01_f32).with_inner_steps(1).with_backend(Backend::Scalar);
/// config.validate()?;
/// let mut opt = MetaSGD::from_config(config);
/// let mut w = array![1.0_f32, 2.0];
/// opt.step_inplace(w.view_mut(), array![0.5, -0.5].view())?;
/// assert_eq!(opt.config(), &config);
/// // The reference crate's builders are the same settings:
/// let same = MetaSGD::new(0.01_f32).with_inner_steps(1).with_backend(Backend::Scalar);
/// assert_eq!(same.config(), &config);
/// # Ok::<(), metasgd_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(deny_unknown_fields, bound = "")
)]
pub struct MetaSGDConfig<A: Element> {
    /// Base learning rate: every `alpha` starts here (a step checks it is
    /// finite and `> 0`).
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_impl::exact"))]
    pub base_lr: A,
    /// Learning rate of the learning rates, `beta` (finite and `>= 0`).
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_impl::exact"))]
    pub alpha_lr: A,
    /// Inner updates per step, `K` (`1..=`[`MAX_INNER_STEPS`]).
    pub inner_steps: usize,
    /// Which kernel runs a step.
    pub backend: Backend,
    /// What a step does with NaN or infinite gradients.
    pub non_finite: NonFinitePolicy,
    /// How the rates learn ([`Rule::Reference`] by default; absent in a
    /// serde document written before rules existed).
    #[cfg_attr(feature = "serde", serde(default))]
    pub rule: Rule<A>,
    /// Gradient clipping: the gradients of one step (every array of a list
    /// step together) are scaled by `min(1, c / ||g||_2)` before the update
    /// (`None`, the default: no clipping). The norm's summation order is fixed
    /// (`docs/semantics.md`), so the bits do not depend on the backend or the
    /// thread count.
    #[cfg_attr(
        feature = "serde",
        serde(default, with = "crate::serde_impl::exact_opt")
    )]
    pub max_grad_norm: Option<A>,
}

impl<A: Element> Default for MetaSGDConfig<A> {
    /// `base_lr = 0.01` and the defaults of [`MetaSGDConfig::new`].
    fn default() -> Self {
        Self::new(A::from(0.01).unwrap_or(A::LO))
    }
}

impl<A: Element> MetaSGDConfig<A> {
    /// Settings with base learning rate `base_lr`, `alpha_lr = 0.001`,
    /// `inner_steps = 5` (the reference crate's defaults), [`Backend::Auto`]
    /// and [`NonFinitePolicy::Propagate`].
    pub fn new(base_lr: A) -> Self {
        Self {
            base_lr,
            alpha_lr: A::from(0.001).unwrap_or(A::ZERO),
            inner_steps: 5,
            backend: Backend::Auto,
            non_finite: NonFinitePolicy::Propagate,
            rule: Rule::Reference,
            max_grad_norm: None,
        }
    }

    /// Sets the base learning rate.
    pub fn with_base_lr(mut self, base_lr: A) -> Self {
        self.base_lr = base_lr;
        self
    }

    /// Sets the learning rate of the per-parameter learning rates.
    pub fn with_alpha_lr(mut self, alpha_lr: A) -> Self {
        self.alpha_lr = alpha_lr;
        self
    }

    /// Sets the inner updates per step; 0 is stored as 1 (the contract's rule).
    pub fn with_inner_steps(mut self, inner_steps: usize) -> Self {
        self.inner_steps = metasgd_kernels::inner_steps(inner_steps);
        self
    }

    /// Chooses the kernel.
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Chooses what a step does with NaN or infinite gradients.
    pub fn with_non_finite(mut self, policy: NonFinitePolicy) -> Self {
        self.non_finite = policy;
        self
    }

    /// Chooses how the rates learn.
    pub fn with_rule(mut self, rule: Rule<A>) -> Self {
        self.rule = rule;
        self
    }

    /// Clips the gradients of each step to L2 norm `c` (finite, `> 0`):
    /// they are scaled by `min(1, c / ||g||_2)` before the update.
    pub fn with_max_grad_norm(mut self, c: A) -> Self {
        self.max_grad_norm = Some(c);
        self
    }

    /// The one check of the settings, run before every step: `base_lr`
    /// finite and `> 0`, `alpha_lr` finite and `>= 0`, `inner_steps` in
    /// `1..=`[`MAX_INNER_STEPS`], the rule's factors in their ranges, the
    /// backend compiled in. The error names
    /// the setting ([`Error::InvalidHyperparameter`],
    /// [`Error::BackendUnavailable`]).
    ///
    /// ```
    /// use metasgd_core::MetaSGDConfig;
    /// assert!(MetaSGDConfig::new(0.1_f32).validate().is_ok());
    /// assert!(MetaSGDConfig::new(f32::NAN).validate().is_err());
    /// assert!(MetaSGDConfig::new(0.1_f64).with_alpha_lr(-1.0).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        if !valid_base_lr(self.base_lr) {
            return Err(invalid("base_lr", self.base_lr, "finite and > 0"));
        }
        if !(self.alpha_lr.is_finite() && self.alpha_lr >= A::ZERO) {
            return Err(invalid("alpha_lr", self.alpha_lr, "finite and >= 0"));
        }
        if !(1..=MAX_INNER_STEPS).contains(&self.inner_steps) {
            return Err(Error::InvalidHyperparameter {
                name: "inner_steps",
                value: self.inner_steps as f64,
                requirement: "in 1..=MAX_INNER_STEPS (1000)",
            });
        }
        self.rule.check()?;
        if let Some(c) = self.max_grad_norm.filter(|c| !valid_base_lr(*c)) {
            return Err(invalid("max_grad_norm", c, "finite and > 0"));
        }
        self.backend.check()
    }

    /// Whether every setting is equal bit for bit (NaN payloads included).
    pub fn same_bits(&self, other: &Self) -> bool {
        self.base_lr.bits() == other.base_lr.bits()
            && self.alpha_lr.bits() == other.alpha_lr.bits()
            && self.inner_steps == other.inner_steps
            && self.backend == other.backend
            && self.non_finite == other.non_finite
            && self.rule.bits() == other.rule.bits()
            && self.max_grad_norm.map(Element::bits) == other.max_grad_norm.map(Element::bits)
    }

    /// The same settings in another float type (each float converted,
    /// rounded to nearest; `f32` to `f64` is exact).
    pub fn cast<B: Element>(&self) -> MetaSGDConfig<B> {
        let to = |x: A| x.to_f64().and_then(B::from).unwrap_or_else(B::nan);
        MetaSGDConfig {
            base_lr: to(self.base_lr),
            alpha_lr: to(self.alpha_lr),
            inner_steps: self.inner_steps,
            backend: self.backend,
            non_finite: self.non_finite,
            rule: self.rule.cast(),
            max_grad_norm: self.max_grad_norm.map(to),
        }
    }

    /// The gradient scale of clipping for gradients whose squared L2 norm is
    /// `squared` (summed in the fixed order): `c / sqrt(squared)` where the
    /// norm exceeds `c`, else 1. A non-finite norm follows the non-finite
    /// policy: `Skip` skips the step, `Error` refuses it, `Propagate` computes
    /// on (a NaN norm scales by 1, an infinite one by 0).
    pub(crate) fn clip_scale(&self, squared: A) -> Result<Option<A>> {
        let Some(c) = self.max_grad_norm else {
            return Ok(Some(A::one()));
        };
        let norm = squared.sqrt();
        if !norm.is_finite() {
            match self.non_finite {
                NonFinitePolicy::Skip => return Ok(None),
                NonFinitePolicy::Error => {
                    let norm = norm.to_f64().unwrap_or(f64::NAN);
                    return Err(Error::NonFiniteGradNorm { norm });
                }
                _ => {}
            }
        }
        Ok(Some(if norm > c { c / norm } else { A::one() }))
    }

    /// The kernels' view of the settings.
    pub(crate) fn kernel_config(&self) -> metasgd_kernels::Config<A> {
        metasgd_kernels::Config::new(self.alpha_lr, self.inner_steps)
            .with_rule(self.rule.kernel_rule())
    }
}

fn invalid<A: Element>(name: &'static str, value: A, requirement: &'static str) -> Error {
    Error::InvalidHyperparameter {
        name,
        value: value.to_f64().unwrap_or(f64::NAN),
        requirement,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn validate_names_the_setting() {
        let name = |c: MetaSGDConfig<f32>| match c.validate() {
            Err(Error::InvalidHyperparameter { name, .. }) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(name(MetaSGDConfig::new(0.0)), "base_lr");
        assert_eq!(
            name(MetaSGDConfig::new(0.1).with_alpha_lr(f32::NAN)),
            "alpha_lr"
        );
        let mut c = MetaSGDConfig::new(0.1);
        c.inner_steps = 0;
        assert_eq!(name(c), "inner_steps");
        c.inner_steps = MAX_INNER_STEPS + 1;
        assert_eq!(name(c), "inner_steps");
        c.inner_steps = MAX_INNER_STEPS;
        assert!(c.validate().is_ok());
        assert_eq!(
            MetaSGDConfig::<f64>::new(0.1)
                .with_inner_steps(0)
                .inner_steps,
            1
        );
    }
}
