//! The hyperparameters a kernel needs.

use crate::Element;

/// The contract's one rule for the number of inner steps `K`: 0 means 1.
/// Every builder that takes `K` (the optimizer, the kernels' [`Config`], the
/// meta-learner) stores it through here.
#[inline]
pub fn inner_steps(k: usize) -> usize {
    k.max(1)
}

/// The hyperparameters a kernel needs: `beta = alpha_lr` and `K = inner_steps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config<A> {
    alpha_lr: A,
    inner_steps: usize,
    streaming: bool,
}

impl<A: Element> Config<A> {
    /// A configuration; `inner_steps == 0` is stored as 1, as the contract says.
    pub fn new(alpha_lr: A, inner_steps: usize) -> Self {
        Self {
            alpha_lr,
            inner_steps: crate::inner_steps(inner_steps),
            streaming: false,
        }
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
