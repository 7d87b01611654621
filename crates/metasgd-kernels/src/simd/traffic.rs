//! The roofline's operation: the update's memory traffic (read theta, g and
//! alpha; write theta and alpha) with one add and one subtract, the least
//! arithmetic that still needs every input.

use super::pack::Pack;
use super::sweep::Lanewise;
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
