//! The hyperparameters a kernel needs.

use crate::Element;

/// The contract's one rule for the number of inner steps `K`: 0 means 1.
/// Every builder that takes `K` (the optimizer, the kernels' [`Config`], the
/// meta-learner) stores it through here.
#[inline]
pub fn inner_steps(k: usize) -> usize {
    k.max(1)
}

/// How a kernel updates the per-parameter rates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RateRule<A> {
    /// The reference rule: `alpha -= alpha_lr * g * (accumulated delta)`,
    /// after the parameters ([`crate::scalar::update`]).
    Reference,
    /// The sign of the hypergradient, before the parameters: each rate is
    /// multiplied by `up` where this gradient agrees in sign with the
    /// smoothed previous gradients, by `down` where it disagrees
    /// ([`crate::scalar::update_hypergradient`]). Every [`crate::Update`]
    /// then carries that state ([`crate::Update::with_prev`]).
    Hypergradient {
        /// Factor on agreement (`>= 1`).
        up: A,
        /// Factor on disagreement (in `(0, 1]`).
        down: A,
        /// How much of the state a step keeps (`0 <= smoothing < 1`): the
        /// state becomes `p * smoothing + g * (1 - smoothing)`, or `g`
        /// itself when it is 0.
        smoothing: A,
    },
}

/// The hyperparameters a kernel needs: `beta = alpha_lr`, `K = inner_steps`
/// and the rate rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config<A> {
    alpha_lr: A,
    inner_steps: usize,
    streaming: bool,
    rule: RateRule<A>,
    grad_scale: A,
}

impl<A: Element> Config<A> {
    /// A configuration; `inner_steps == 0` is stored as 1, as the contract says.
    pub fn new(alpha_lr: A, inner_steps: usize) -> Self {
        Self {
            alpha_lr,
            inner_steps: crate::inner_steps(inner_steps),
            streaming: false,
            rule: RateRule::Reference,
            grad_scale: A::one(),
        }
    }

    /// Multiplies every gradient element by `scale` as it is read (gradient
    /// clipping: `min(1, c / ||g||)`); 1, the default, reads it as it is.
    /// The step then computes with `g * scale`, one rounding, in place of `g`.
    pub fn with_grad_scale(mut self, scale: A) -> Self {
        self.grad_scale = scale;
        self
    }

    /// The gradient scale ([`Self::with_grad_scale`]).
    #[inline]
    pub fn grad_scale(&self) -> A {
        self.grad_scale
    }

    /// `g` as the step reads it: `g * scale` when a scale is set.
    #[inline(always)]
    pub fn scaled(&self, g: A) -> A {
        if self.grad_scale == A::one() {
            g
        } else {
            g * self.grad_scale
        }
    }

    /// Chooses the rate rule ([`RateRule::Reference`] by default).
    pub fn with_rule(mut self, rule: RateRule<A>) -> Self {
        self.rule = rule;
        self
    }

    /// The rate rule.
    #[inline]
    pub fn rule(&self) -> RateRule<A> {
        self.rule
    }

    /// Writes [`Theta::Into`](crate::Theta::Into) outputs with non-temporal (streaming) stores
    /// where the instruction set has them: for outputs far larger than the
    /// cache, this saves reading every output line before overwriting it.
    /// See [`crate::STREAM_MIN_BYTES`]. The bits are the same either way.
    pub fn with_streaming_stores(mut self, on: bool) -> Self {
        self.streaming = on;
        self
    }

    /// Whether [`Self::with_streaming_stores`] is on.
    #[inline]
    pub fn streaming_stores(&self) -> bool {
        self.streaming
    }

    /// `beta`, the learning rate of the per-parameter learning rates.
    #[inline]
    pub fn alpha_lr(&self) -> A {
        self.alpha_lr
    }

    /// `K`, the number of inner updates (at least 1).
    #[inline]
    pub fn inner_steps(&self) -> usize {
        self.inner_steps
    }
}
