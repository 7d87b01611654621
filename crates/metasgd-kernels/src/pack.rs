//! The contract's sequence written once over a pack of lanes.
//!
//! [`Pack`] is implemented by `wide`'s vectors (`simd.rs`) and by AVX
//! registers used under `#[target_feature]` (`avx2.rs`). Elements past the
//! last full pack go through the scalar reference, which computes the same bits.

use core::mem::MaybeUninit;

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
    /// Stores into the first `LANES` elements of `s`, initialising them.
    fn store_uninit(self, s: &mut [MaybeUninit<A>]);
    /// Like [`Self::store_uninit`], bypassing the cache where the pack can
    /// and `s` is aligned to [`STREAM_ALIGN`] bytes.
    #[inline(always)]
    fn store_stream(self, s: &mut [MaybeUninit<A>]) {
        self.store_uninit(s)
    }
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
#[inline(always)]
fn update<A: Element, P: Pack<A>>(
    theta: P,
    g: P,
    alpha: P,
    k: &Consts<A, P>,
    steps: usize,
) -> (P, P) {
    let d = alpha.mul(g);
    let mut t = theta;
    for _ in 0..steps {
        t = t.sub(d);
    }
    let mut c = match steps {
        1 => d,
        2 => d.mul(k.two),
        _ => d.mul(k.three),
    };
    for _ in 3..steps {
        c = c.add(d);
    }
    let m = g.mul(c);
    let a = alpha.sub(m.mul(k.beta));
    (t, a.clamp())
}

struct Consts<A, P> {
    beta: P,
    two: P,
    three: P,
    _a: core::marker::PhantomData<A>,
}

/// Runs one tensor through packs of `P`, then the scalar reference on the tail.
///
/// The usual inner-step counts get a loop of their own with `K` known at
/// compile time, so the chains are unrolled straight-line code.
#[inline(always)]
pub(crate) fn step<A: Element, P: Pack<A>>(u: Update<'_, A>, cfg: &Config<A>) {
    match cfg.inner_steps() {
        1 => step_k::<A, P, 1>(u, cfg),
        2 => step_k::<A, P, 2>(u, cfg),
        3 => step_k::<A, P, 3>(u, cfg),
        4 => step_k::<A, P, 4>(u, cfg),
        5 => step_k::<A, P, 5>(u, cfg),
        6 => step_k::<A, P, 6>(u, cfg),
        7 => step_k::<A, P, 7>(u, cfg),
        8 => step_k::<A, P, 8>(u, cfg),
        _ => step_k::<A, P, 0>(u, cfg),
    }
}

/// Alignment of the output that streaming stores need.
pub(crate) const STREAM_ALIGN: usize = 32;

/// Elements before a `Theta::Into` output reaches [`STREAM_ALIGN`].
fn unaligned_head<A>(u: &Update<'_, A>) -> usize {
    match &u.theta {
        Theta::Into { dst, .. } => {
            let misaligned = dst.as_ptr() as usize % STREAM_ALIGN;
            ((STREAM_ALIGN - misaligned) % STREAM_ALIGN / size_of::<A>()).min(dst.len())
        }
        Theta::InPlace(_) => 0,
    }
}

/// [`step`] with `K` inner steps, or `cfg.inner_steps()` when `K == 0`.
#[inline(always)]
fn step_k<A: Element, P: Pack<A>, const K: usize>(u: Update<'_, A>, cfg: &Config<A>) {
    let steps = if K == 0 { cfg.inner_steps() } else { K };
    let stream = cfg.streaming_stores();
    let u = if stream {
        // Streaming stores want an aligned output: the head goes the scalar way.
        let head = unaligned_head(&u);
        let (head, rest) = u.split_at(head);
        scalar::step(head, cfg);
        rest
    } else {
        u
    };
    let lanes = P::LANES;
    let body = u.len() - u.len() % lanes;
    let (main, tail) = u.split_at(body);
    let k = Consts {
        beta: P::splat(cfg.alpha_lr()),
        two: P::splat(A::one() + A::one()),
        three: P::splat(A::one() + A::one() + A::one()),
        _a: core::marker::PhantomData,
    };
    let Update { theta, alpha, grad } = main;
    let alpha = alpha.chunks_exact_mut(lanes);
    let grad = grad.chunks_exact(lanes);
    match theta {
        Theta::InPlace(theta) => {
            for ((t, a), g) in theta.chunks_exact_mut(lanes).zip(alpha).zip(grad) {
                let (nt, na) = update(P::load(t), P::load(g), P::load(a), &k, steps);
                nt.store(t);
                na.store(a);
            }
        }
        Theta::Into { src, dst } => {
            let theta = src.chunks_exact(lanes).zip(dst.chunks_exact_mut(lanes));
            for (((s, d), a), g) in theta.zip(alpha).zip(grad) {
                let (nt, na) = update(P::load(s), P::load(g), P::load(a), &k, steps);
                if stream {
                    nt.store_stream(d);
                } else {
                    nt.store_uninit(d);
                }
                na.store(a);
            }
        }
    }
    scalar::step(tail, cfg);
}
