//! The outer optimizer of meta-training: what moves the initialisation
//! (and Meta-SGD's rates) along the meta-gradient.

use metasgd_core::{Error, Result};
use metasgd_kernels::Element;
use metasgd_kernels::meta::{self, AdamStep};
use ndarray::ArrayD;

use crate::learner::{flat, slice_mut};

/// The outer optimizer of a [`crate::MetaLearner`]: Adam by default (as
/// MAML and Meta-SGD use), or plain SGD.
///
/// ```
/// use metasgd_meta::{MetaLearner, Mlp, Outer};
///
/// let net = Mlp::new(&[1, 8, 1]);
/// let learner = MetaLearner::meta_sgd(net.init::<f32>(0), 0.01)
///     .with_outer(Outer::adam(1e-3).with_betas(0.9, 0.99).with_eps(1e-7));
/// assert_eq!(learner.outer().lr(), 1e-3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Outer<A> {
    /// Adam (Kingma and Ba 2015) with bias correction.
    Adam {
        /// Step size.
        lr: A,
        /// Decay of the first moment, in `[0, 1)`.
        beta1: A,
        /// Decay of the second moment, in `[0, 1)`.
        beta2: A,
        /// Added to the root of the second moment, finite and `> 0`.
        eps: A,
    },
    /// Plain SGD: `theta -= lr * g`.
    Sgd {
        /// Step size.
        lr: A,
    },
}

impl<A: Element> Outer<A> {
    /// Adam with step size `lr`, `beta1 = 0.9`, `beta2 = 0.999`, `eps = 1e-8`.
    pub fn adam(lr: A) -> Self {
        let a = |x: f64| A::from(x).unwrap_or(A::ZERO);
        Outer::Adam {
            lr,
            beta1: a(0.9),
            beta2: a(0.999),
            eps: a(1e-8),
        }
    }

    /// Plain SGD with step size `lr`.
    pub fn sgd(lr: A) -> Self {
        Outer::Sgd { lr }
    }

    /// Sets Adam's decays (no effect on SGD).
    pub fn with_betas(mut self, b1: A, b2: A) -> Self {
        if let Outer::Adam { beta1, beta2, .. } = &mut self {
            (*beta1, *beta2) = (b1, b2);
        }
        self
    }

    /// Sets Adam's epsilon (no effect on SGD).
    pub fn with_eps(mut self, e: A) -> Self {
        if let Outer::Adam { eps, .. } = &mut self {
            *eps = e;
        }
        self
    }

    /// The step size.
    pub fn lr(&self) -> A {
        match *self {
            Outer::Adam { lr, .. } | Outer::Sgd { lr } => lr,
        }
    }

    /// The same optimizer with step size `new`.
    pub(crate) fn with_lr(mut self, new: A) -> Self {
        match &mut self {
            Outer::Adam { lr, .. } | Outer::Sgd { lr } => *lr = new,
        }
        self
    }

    /// Whether it keeps moments (one pair of arrays per parameter tensor).
    pub(crate) fn has_moments(&self) -> bool {
        matches!(self, Outer::Adam { .. })
    }

    /// Its settings, checked before a meta-step moves anything.
    pub(crate) fn check(&self) -> Result<()> {
        let bad = |name: &'static str, v: A, requirement: &'static str| {
            Err(Error::InvalidHyperparameter {
                name,
                value: v.to_f64().unwrap_or(f64::NAN),
                requirement,
            })
        };
        let lr = self.lr();
        if !(lr.is_finite() && lr >= A::ZERO) {
            return bad("outer_lr", lr, "finite and >= 0");
        }
        if let Outer::Adam {
            beta1, beta2, eps, ..
        } = *self
        {
            for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
                if !(b >= A::ZERO && b < A::one()) {
                    return bad(name, b, "in [0, 1)");
                }
            }
            if !(eps.is_finite() && eps > A::ZERO) {
                return bad("eps", eps, "finite and > 0");
            }
        }
        Ok(())
    }

    /// Update number `t` (from 1) of `params` along `grads`; `m` and `v`
    /// are Adam's moments (empty for SGD). Arrays are row-major.
    pub(crate) fn update(
        &self,
        t: u32,
        params: &mut [ArrayD<A>],
        m: &mut [ArrayD<A>],
        v: &mut [ArrayD<A>],
        grads: &[ArrayD<A>],
    ) {
        match *self {
            Outer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                let t = i32::try_from(t).unwrap_or(i32::MAX);
                let step = AdamStep {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    bias1: A::one() - beta1.powi(t),
                    bias2: A::one() - beta2.powi(t),
                };
                for (((p, m), v), g) in params.iter_mut().zip(m).zip(v).zip(grads) {
                    meta::adam(slice_mut(p), slice_mut(m), slice_mut(v), &flat(g), &step);
                }
            }
            Outer::Sgd { lr } => {
                for (p, g) in params.iter_mut().zip(grads) {
                    meta::sgd(slice_mut(p), &flat(g), lr);
                }
            }
        }
    }
}
