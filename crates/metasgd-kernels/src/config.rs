//! Hyperparameters of one update and the views it works on.

use core::mem::MaybeUninit;

use crate::Element;

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
            inner_steps: inner_steps.max(1),
            streaming: false,
        }
    }

    /// Writes [`Theta::Into`] outputs with non-temporal (streaming) stores
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

/// Where the updated parameters go.
#[derive(Debug)]
pub enum Theta<'a, A> {
    /// Read and overwrite the parameters in place.
    InPlace(&'a mut [A]),
    /// Read `src`, write the result to `dst` (the allocating step: one fused
    /// pass into memory nobody has initialised). Every kernel writes every
    /// element of `dst`, so once the update has run, `dst` is initialised.
    Into {
        /// Current parameters.
        src: &'a [A],
        /// Receives the updated parameters.
        dst: &'a mut [MaybeUninit<A>],
    },
}

impl<'a, A> Theta<'a, A> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Theta::InPlace(t) => t.len(),
            Theta::Into { src, .. } => src.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits at `mid`, like `slice::split_at_mut`.
    pub fn split_at(self, mid: usize) -> (Theta<'a, A>, Theta<'a, A>) {
        match self {
            Theta::InPlace(t) => {
                let (l, r) = t.split_at_mut(mid);
                (Theta::InPlace(l), Theta::InPlace(r))
            }
            Theta::Into { src, dst } => {
                let (sl, sr) = src.split_at(mid);
                let (dl, dr) = dst.split_at_mut(mid);
                (
                    Theta::Into { src: sl, dst: dl },
                    Theta::Into { src: sr, dst: dr },
                )
            }
        }
    }
}

/// One tensor's update: parameters, its per-parameter learning rates and its gradient.
///
/// All three have the same length (checked by [`Update::new`]).
#[derive(Debug)]
pub struct Update<'a, A> {
    pub(crate) theta: Theta<'a, A>,
    pub(crate) alpha: &'a mut [A],
    pub(crate) grad: &'a [A],
}

impl<'a, A> Update<'a, A> {
    /// Bundles one tensor's slices.
    ///
    /// # Panics
    /// If the lengths differ (a caller bug; `metasgd-core` checks shapes first).
    pub fn new(theta: Theta<'a, A>, alpha: &'a mut [A], grad: &'a [A]) -> Self {
        let n = theta.len();
        if let Theta::Into { dst, .. } = &theta {
            assert_eq!(dst.len(), n, "output length differs from parameters");
        }
        assert_eq!(alpha.len(), n, "alpha length differs from parameters");
        assert_eq!(grad.len(), n, "gradient length differs from parameters");
        Self { theta, alpha, grad }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.grad.len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.grad.is_empty()
    }

    /// The parts: parameters, learning rates, gradient.
    pub fn into_parts(self) -> (Theta<'a, A>, &'a mut [A], &'a [A]) {
        (self.theta, self.alpha, self.grad)
    }

    /// Splits at `mid` into two independent updates.
    pub fn split_at(self, mid: usize) -> (Update<'a, A>, Update<'a, A>) {
        let (tl, tr) = self.theta.split_at(mid);
        let (al, ar) = self.alpha.split_at_mut(mid);
        let (gl, gr) = self.grad.split_at(mid);
        (
            Update {
                theta: tl,
                alpha: al,
                grad: gl,
            },
            Update {
                theta: tr,
                alpha: ar,
                grad: gr,
            },
        )
    }
}
