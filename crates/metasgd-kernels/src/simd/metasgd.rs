//! The Meta-SGD update as a [`Lanewise`] operation, with `K` known at
//! compile time for the usual inner-step counts.

use super::pack::Pack;
use super::sweep::Lanewise;
use crate::{Config, Element, scalar};

/// The contract's per-element sequence with `K` inner steps (`K == 0`: read
/// from the config), lane-wise.
///
/// The loop is bound by floating-point instruction throughput, so the
/// accumulator `c = ((0 + d) + d) + ...` is formed with fewer instructions
/// that provably give the same `theta'` and `alpha'` bits:
///
/// - `c2 = (0 + d) + d` is `2 * d` and `c3 = c2 + d` is `3 * d`: `2 * d` is
///   exact, so `c2 + d` rounds the exact `3 * d` once, as the product does.
///   Overflow gives the same infinity, infinities and NaN pass through alike,
///   subnormals are exact.
/// - The products can differ from the sums only in the sign of a zero: when
///   `d = -0`, `0 + d` is `+0` while `2 * d` and `3 * d` are `-0`. Then `m = g
///   * c` is a zero of either sign (`g` is finite, since `d = -0`), `m * beta`
///   is a zero or the same NaN, and `alpha - (+-0)` equals `alpha` unless
///   `alpha` is itself a zero, in which case both results are zeros and the
///   clamp maps them to `LO`. `theta` never reads `c`.
///
/// So `c = d`, `2 * d` or `3 * d` for `K` = 1, 2, 3, and later sums are plain
/// additions (they add to a rounded value; no identity holds). The theta
/// chain is the spec's, untouched. `tests/agree.rs` checks every kernel
/// against the scalar reference bit for bit, signed zeros included.
///
/// `SCALED` says whether the config has a gradient scale other than 1: the
/// test is made once per call, not once per pack.
#[derive(Clone, Copy)]
pub(crate) struct MetaSgd<A, const K: usize, const SCALED: bool> {
    pub(crate) cfg: Config<A>,
    /// 1, hidden from the optimiser (see [`Pack::add_on_fma`]).
    pub(crate) one: A,
}

impl<A: Element, const K: usize, const SCALED: bool> Lanewise<A> for MetaSgd<A, K, SCALED> {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, tok: P::Token, theta: P, g: P, alpha: P) -> (P, P) {
        let steps = if K == 0 { self.cfg.inner_steps() } else { K };
        let two = A::one() + A::one();
        let g = if SCALED {
            g.mul(P::splat(tok, self.cfg.grad_scale()))
        } else {
            g
        };
        let d = alpha.mul(g);
        let mut t = theta;
        for _ in 0..steps {
            t = t.sub(d);
        }
        let mut c = match steps {
            1 => d,
            2 => d.mul(P::splat(tok, two)),
            _ => d.mul(P::splat(tok, two + A::one())),
        };
        for _ in 3..steps {
            // `c` is `3 * d` plus copies of `d`: a NaN in it is `d`'s own.
            c = d.add_on_fma(P::splat(tok, self.one), c);
        }
        let m = g.mul(c);
        let a = alpha.sub(m.mul(P::splat(tok, self.cfg.alpha_lr())));
        (t, a.clamp())
    }

    #[inline(always)]
    fn scalar(self, theta: A, g: A, alpha: A) -> (A, A) {
        scalar::update(theta, g, alpha, &self.cfg)
    }
}

/// Calls `$run(op)` with the [`MetaSgd`] op for `$cfg`, `K` a compile-time
/// constant for 1..=8 (the chains become straight-line code) when the
/// gradient is read unscaled; with a gradient scale (clipping), one form
/// with `K` read from the config.
macro_rules! with_metasgd {
    ($cfg:expr, |$op:ident| $run:expr) => {{
        use $crate::simd::metasgd::MetaSgd;
        let cfg = $cfg;
        let one = core::hint::black_box(num_traits::One::one());
        let scaled = cfg.grad_scale() != num_traits::One::one();
        match if scaled { 0 } else { cfg.inner_steps() } {
            1 => {
                let $op = MetaSgd::<_, 1, false> { cfg, one };
                $run
            }
            2 => {
                let $op = MetaSgd::<_, 2, false> { cfg, one };
                $run
            }
            3 => {
                let $op = MetaSgd::<_, 3, false> { cfg, one };
                $run
            }
            4 => {
                let $op = MetaSgd::<_, 4, false> { cfg, one };
                $run
            }
            5 => {
                let $op = MetaSgd::<_, 5, false> { cfg, one };
                $run
            }
            6 => {
                let $op = MetaSgd::<_, 6, false> { cfg, one };
                $run
            }
            7 => {
                let $op = MetaSgd::<_, 7, false> { cfg, one };
                $run
            }
            8 => {
                let $op = MetaSgd::<_, 8, false> { cfg, one };
                $run
            }
            _ if scaled => {
                let $op = MetaSgd::<_, 0, true> { cfg, one };
                $run
            }
            _ => {
                let $op = MetaSgd::<_, 0, false> { cfg, one };
                $run
            }
        }
    }};
}
pub(crate) use with_metasgd;
