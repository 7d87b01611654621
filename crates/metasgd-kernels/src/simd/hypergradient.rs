//! The hypergradient rule ([`crate::RateRule::Hypergradient`]) as a
//! [`LanewisePrev`] operation.

use super::pack::Pack;
use super::sweep::LanewisePrev;
use crate::scalar::{self, Factors};
use crate::{Config, Element};

/// [`scalar::update_hypergradient`], lane-wise: the same operations in the
/// same order, so the same bits.
#[derive(Clone, Copy)]
pub(crate) struct Hypergradient<A> {
    pub(crate) cfg: Config<A>,
    pub(crate) f: Factors<A>,
}

impl<A: Element> LanewisePrev<A> for Hypergradient<A> {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, tok: P::Token, theta: P, g: P, alpha: P, prev: P) -> (P, P, P) {
        let scale = self.cfg.grad_scale();
        let g = if scale == A::one() {
            g
        } else {
            g.mul(P::splat(tok, scale))
        };
        let (up, down) = (P::splat(tok, self.f.up), P::splat(tok, self.f.down));
        let f = g.mul(prev).by_sign(up, down, P::splat(tok, A::one()));
        let a = alpha.mul(f).clamp();
        let d = a.mul(g);
        let mut t = theta;
        for _ in 0..self.cfg.inner_steps() {
            t = t.sub(d);
        }
        let p = if self.f.keep == A::ZERO {
            g
        } else {
            let (keep, take) = (P::splat(tok, self.f.keep), P::splat(tok, self.f.take));
            prev.mul(keep).add(g.mul(take))
        };
        (t, a, p)
    }

    #[inline(always)]
    fn scalar(self, theta: A, g: A, alpha: A, prev: A) -> (A, A, A) {
        scalar::update_hypergradient(theta, g, alpha, prev, &self.f, &self.cfg)
    }
}
