//! The roofline's operation: the update's memory traffic (read theta, g and
//! alpha; write theta and alpha; with the hypergradient rule's state, also
//! read and write the previous gradient) with one add and one subtract, the
//! least arithmetic that still needs every input.

use super::pack::Pack;
use super::sweep::{Lanewise, LanewisePrev};
use crate::Element;

/// `theta' = theta + g`, `alpha' = alpha - g`.
#[derive(Clone, Copy)]
pub(crate) struct Traffic;

impl<A: Element> Lanewise<A> for Traffic {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, _: P::Token, theta: P, g: P, alpha: P) -> (P, P) {
        (theta.add(g), alpha.sub(g))
    }

    #[inline(always)]
    fn scalar(self, theta: A, g: A, alpha: A) -> (A, A) {
        (theta + g, alpha - g)
    }
}

/// The hypergradient rule's traffic: the same, plus reading `prev` (used,
/// so the load is not dropped) and writing `g` into it.
impl<A: Element> LanewisePrev<A> for Traffic {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, _: P::Token, theta: P, g: P, alpha: P, prev: P) -> (P, P, P) {
        (theta.add(g), alpha.sub(prev), g)
    }

    #[inline(always)]
    fn scalar(self, theta: A, g: A, alpha: A, prev: A) -> (A, A, A) {
        (theta + g, alpha - prev, g)
    }
}
