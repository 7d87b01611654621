//! The contract's sequence written once over a pack of lanes.
//!
//! [`Pack`] is implemented by `wide`'s vectors (`simd.rs`) and by plain lane
//! arrays compiled under `#[target_feature]` (`avx2.rs`). Elements past the
//! last full pack go through the scalar reference, which computes the same bits.

use crate::{Config, Element, Theta, Update, scalar};

/// A fixed number of lanes of `A` with the few operations the update needs.
///
/// Implementations must round each lane exactly like the scalar operation
/// (no fused multiply-add) and clamp by compare-and-select.
pub trait Pack<A>: Copy {
    /// Number of lanes.
    const LANES: usize;
    /// Every lane set to `x`.
    fn splat(x: A) -> Self;
    /// Loads the first `LANES` elements of `s`.
    fn load(s: &[A]) -> Self;
    /// Stores into the first `LANES` elements of `s`.
    fn store(self, s: &mut [A]);
    /// Lane-wise `self + o`.
    fn add(self, o: Self) -> Self;
    /// Lane-wise `self - o`.
    fn sub(self, o: Self) -> Self;
    /// Lane-wise `self * o`.
    fn mul(self, o: Self) -> Self;
    /// Lane-wise `scalar::clamp`: compare and select against `A::LO` and
    /// `A::HI`, NaN lanes unchanged.
    fn clamp(self) -> Self;
}

/// The per-element sequence of `scalar::update`, lane-wise.
#[inline(always)]
fn update<A: Element, P: Pack<A>>(theta: P, g: P, alpha: P, k: &Consts<A, P>) -> (P, P) {
    let d = alpha.mul(g);
    let mut t = theta;
    let mut c = P::splat(A::ZERO);
    for _ in 0..k.inner_steps {
        t = t.sub(d);
        c = c.add(d);
    }
    let m = g.mul(c);
    let a = alpha.sub(m.mul(k.beta));
    (t, a.clamp())
}

struct Consts<A, P> {
    beta: P,
    inner_steps: usize,
    _a: core::marker::PhantomData<A>,
}

/// Runs one tensor through packs of `P`, then the scalar reference on the tail.
#[inline(always)]
pub(crate) fn step<A: Element, P: Pack<A>>(u: Update<'_, A>, cfg: &Config<A>) {
    let lanes = P::LANES;
    let body = u.len() - u.len() % lanes;
    let (main, tail) = u.split_at(body);
    let k = Consts {
        beta: P::splat(cfg.alpha_lr()),
        inner_steps: cfg.inner_steps(),
        _a: core::marker::PhantomData,
    };
    let Update { theta, alpha, grad } = main;
    let alpha = alpha.chunks_exact_mut(lanes);
    let grad = grad.chunks_exact(lanes);
    match theta {
        Theta::InPlace(theta) => {
            for ((t, a), g) in theta.chunks_exact_mut(lanes).zip(alpha).zip(grad) {
                let (nt, na) = update(P::load(t), P::load(g), P::load(a), &k);
                nt.store(t);
                na.store(a);
            }
        }
        Theta::Into { src, dst } => {
            let theta = src.chunks_exact(lanes).zip(dst.chunks_exact_mut(lanes));
            for (((s, d), a), g) in theta.zip(alpha).zip(grad) {
                let (nt, na) = update(P::load(s), P::load(g), P::load(a), &k);
                nt.store(d);
                na.store(a);
            }
        }
    }
    scalar::step(tail, cfg);
}
