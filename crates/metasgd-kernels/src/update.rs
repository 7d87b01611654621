//! One tensor's update: the slices a kernel reads and writes.

use core::mem::MaybeUninit;

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
    /// The previous gradient, read and replaced by `grad` (the
    /// hypergradient rule's state; `None` under the reference rule).
    pub(crate) prev: Option<&'a mut [A]>,
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
        Self {
            theta,
            alpha,
            grad,
            prev: None,
        }
    }

    /// Adds the previous gradient, which the hypergradient rule reads and
    /// overwrites with this step's gradient ([`crate::RateRule::Hypergradient`]).
    ///
    /// # Panics
    /// If its length differs (a caller bug; `metasgd-core` checks shapes first).
    pub fn with_prev(mut self, prev: &'a mut [A]) -> Self {
        assert_eq!(prev.len(), self.len(), "previous gradient length differs");
        self.prev = Some(prev);
        self
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
        let (pl, pr) = match self.prev {
            Some(p) => {
                let (l, r) = p.split_at_mut(mid);
                (Some(l), Some(r))
            }
            None => (None, None),
        };
        (
            Update {
                theta: tl,
                alpha: al,
                grad: gl,
                prev: pl,
            },
            Update {
                theta: tr,
                alpha: ar,
                grad: gr,
                prev: pr,
            },
        )
    }
}
