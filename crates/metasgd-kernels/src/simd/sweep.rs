//! The loop every SIMD kernel runs: an element-wise operation ([`Lanewise`])
//! over packs of lanes, two packs (one 64-byte line of each stream) at a
//! time, with software prefetch on large inputs, and the scalar form of the
//! same operation on the last few elements.

use super::pack::{Pack, STREAM_ALIGN};
use crate::{Element, Theta, Update};

/// An element-wise `(theta, g, alpha) -> (theta', alpha')`, written over
/// packs and over scalars; both must give the same bits.
pub(crate) trait Lanewise<A: Element>: Copy {
    /// The operation on packs.
    fn packs<P: Pack<A>>(self, tok: P::Token, theta: P, g: P, alpha: P) -> (P, P);
    /// The operation on one element (runs the tail).
    fn scalar(self, theta: A, g: A, alpha: A) -> (A, A);
}

/// How far ahead of the loop the three input streams are prefetched.
///
/// On the 2-core Zen 5 machine (`kernel-compare table --sizes 20,24
/// --rows-only`, this constant against no prefetch at all) it is within
/// the run-to-run noise at 16M elements (f32, 1 thread: 0.339 against
/// 0.354 ns/element), where the hardware prefetchers already keep up; it is
/// kept for cores whose prefetchers fall behind the loop.
pub(crate) const PREFETCH_BYTES: usize = 2048;

/// Calls smaller than this (all streams together: the 32 MiB L3 of the
/// machines we measure on) run the loop without prefetch: their data comes
/// from cache, where a prefetch only costs instructions. Measured with
/// `kernel-compare table --sizes 20,24 --rows-only`: prefetching every call
/// made f32 at 1M elements on 2 threads drop from 0.86 to 0.69 of the
/// roofline; a 1 MiB floor instead of this one gave 1M f64 0.78-0.80 (1
/// thread) and 0.78-0.83 (2 threads) against 0.76-0.82 and 0.87 here, with
/// 16M (always prefetched) unchanged.
const PREFETCH_MIN_BYTES: usize = 32 << 20;

/// Runs `op` over `u`: packs of `P`, then the scalar form on the tail.
#[inline(always)]
pub(crate) fn sweep<A: Element, P: Pack<A>, O: Lanewise<A>>(
    tok: P::Token,
    u: Update<'_, A>,
    op: O,
    streaming: bool,
) {
    let u = if streaming {
        // Streaming stores want an aligned output: the head goes the scalar way.
        let head = unaligned_head(&u);
        let (head, rest) = u.split_at(head);
        scalar(head, op);
        rest
    } else {
        u
    };
    if 3 * u.len() * size_of::<A>() >= PREFETCH_MIN_BYTES {
        packs::<A, P, O, true>(tok, u, op, streaming);
    } else {
        packs::<A, P, O, false>(tok, u, op, streaming);
    }
}

/// The scalar form of `op` over every element.
#[inline(always)]
pub(crate) fn scalar<A: Element, O: Lanewise<A>>(u: Update<'_, A>, op: O) {
    let Update {
        theta, alpha, grad, ..
    } = u;
    match theta {
        Theta::InPlace(theta) => {
            for ((t, a), &g) in theta.iter_mut().zip(alpha.iter_mut()).zip(grad) {
                (*t, *a) = op.scalar(*t, g, *a);
            }
        }
        Theta::Into { src, dst } => {
            for (((o, &t), a), &g) in dst.iter_mut().zip(src).zip(alpha.iter_mut()).zip(grad) {
                let (nt, na) = op.scalar(t, g, *a);
                o.write(nt);
                *a = na;
            }
        }
    }
}

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

/// Prefetches the line `PREFETCH_BYTES` ahead of `s` (a hint: the address
/// may lie past the end of the slice; nothing is read there).
#[inline(always)]
fn ahead<A: Element, P: Pack<A>>(s: &[A]) {
    P::prefetch(s.as_ptr().wrapping_add(PREFETCH_BYTES / size_of::<A>()));
}

#[inline(always)]
fn packs<A: Element, P: Pack<A>, O: Lanewise<A>, const PREFETCH: bool>(
    tok: P::Token,
    u: Update<'_, A>,
    op: O,
    streaming: bool,
) {
    let lanes = P::LANES;
    let line = 2 * lanes;
    let body = u.len() - u.len() % lanes;
    let (main, tail) = u.split_at(body);
    let Update {
        theta, alpha, grad, ..
    } = main;
    // A function, not a closure: a closure would be compiled without the
    // caller's `#[target_feature]`, and the intrinsics would not inline.
    #[inline(always)]
    fn load3<A: Element, P: Pack<A>, O: Lanewise<A>>(
        tok: P::Token,
        op: O,
        t: &[A],
        g: &[A],
        a: &[A],
    ) -> (P, P) {
        op.packs(tok, P::load(tok, t), P::load(tok, g), P::load(tok, a))
    }
    match theta {
        Theta::InPlace(theta) => {
            let (t2, t1) = theta.split_at_mut(body - body % line);
            let (a2, a1) = alpha.split_at_mut(t2.len());
            let (g2, g1) = grad.split_at(t2.len());
            for ((t, a), g) in t2
                .chunks_exact_mut(line)
                .zip(a2.chunks_exact_mut(line))
                .zip(g2.chunks_exact(line))
            {
                if PREFETCH {
                    ahead::<A, P>(t);
                    ahead::<A, P>(g);
                    ahead::<A, P>(a);
                }
                let (nt0, na0) = load3::<A, P, O>(tok, op, t, g, a);
                let (nt1, na1) = load3::<A, P, O>(tok, op, &t[lanes..], &g[lanes..], &a[lanes..]);
                nt0.store(t);
                na0.store(a);
                nt1.store(&mut t[lanes..]);
                na1.store(&mut a[lanes..]);
            }
            if !t1.is_empty() {
                let (nt, na) = load3::<A, P, O>(tok, op, t1, g1, a1);
                nt.store(t1);
                na.store(a1);
            }
        }
        Theta::Into { src, dst } => {
            let theta = src.chunks_exact(lanes).zip(dst.chunks_exact_mut(lanes));
            for (((s, d), a), g) in theta
                .zip(alpha.chunks_exact_mut(lanes))
                .zip(grad.chunks_exact(lanes))
            {
                if PREFETCH {
                    ahead::<A, P>(s);
                    ahead::<A, P>(g);
                    ahead::<A, P>(a);
                }
                let (nt, na) = load3::<A, P, O>(tok, op, s, g, a);
                if streaming {
                    nt.store_stream(d);
                } else {
                    nt.store_uninit(d);
                }
                na.store(a);
            }
        }
    }
    scalar(tail, op);
}

/// An element-wise `(theta, g, alpha, prev) -> (theta', alpha', prev')`
/// (the hypergradient rule), written over packs and over scalars; both must
/// give the same bits.
pub(crate) trait LanewisePrev<A: Element>: Copy {
    /// The operation on packs.
    fn packs<P: Pack<A>>(self, tok: P::Token, theta: P, g: P, alpha: P, prev: P) -> (P, P, P);
    /// The operation on one element (runs the tail).
    fn scalar(self, theta: A, g: A, alpha: A, prev: A) -> (A, A, A);
}

/// Runs `op` over `u` (which carries `prev`): packs of `P`, then the scalar
/// form on the tail.
#[inline(always)]
pub(crate) fn sweep_prev<A: Element, P: Pack<A>, O: LanewisePrev<A>>(
    tok: P::Token,
    u: Update<'_, A>,
    op: O,
    streaming: bool,
) {
    let u = if streaming {
        let head = unaligned_head(&u);
        let (head, rest) = u.split_at(head);
        scalar_prev(head, op);
        rest
    } else {
        u
    };
    if 4 * u.len() * size_of::<A>() >= PREFETCH_MIN_BYTES {
        packs_prev::<A, P, O, true>(tok, u, op, streaming);
    } else {
        packs_prev::<A, P, O, false>(tok, u, op, streaming);
    }
}

/// The scalar form of `op` over every element of `u` (which carries `prev`).
#[inline(always)]
pub(crate) fn scalar_prev<A: Element, O: LanewisePrev<A>>(u: Update<'_, A>, op: O) {
    let Update {
        theta,
        alpha,
        grad,
        prev,
    } = u;
    let prev = prev.expect("an update of a rule with state carries the previous gradient");
    let state = alpha.iter_mut().zip(prev.iter_mut()).zip(grad);
    match theta {
        Theta::InPlace(theta) => {
            for (t, ((a, p), &g)) in theta.iter_mut().zip(state) {
                (*t, *a, *p) = op.scalar(*t, g, *a, *p);
            }
        }
        Theta::Into { src, dst } => {
            for ((o, &t), ((a, p), &g)) in dst.iter_mut().zip(src).zip(state) {
                let (nt, na, np) = op.scalar(t, g, *a, *p);
                o.write(nt);
                (*a, *p) = (na, np);
            }
        }
    }
}

#[inline(always)]
fn packs_prev<A: Element, P: Pack<A>, O: LanewisePrev<A>, const PREFETCH: bool>(
    tok: P::Token,
    u: Update<'_, A>,
    op: O,
    streaming: bool,
) {
    let lanes = P::LANES;
    let body = u.len() - u.len() % lanes;
    let (main, tail) = u.split_at(body);
    let Update {
        theta,
        alpha,
        grad,
        prev,
    } = main;
    let prev = prev.expect("an update of a rule with state carries the previous gradient");
    let state = alpha
        .chunks_exact_mut(lanes)
        .zip(grad.chunks_exact(lanes))
        .zip(prev.chunks_exact_mut(lanes));
    // A function, not a closure: a closure would be compiled without the
    // caller's `#[target_feature]`, and the intrinsics would not inline.
    #[inline(always)]
    fn one<A: Element, P: Pack<A>, O: LanewisePrev<A>, const PREFETCH: bool>(
        tok: P::Token,
        op: O,
        t: &[A],
        (a, g, p): (&mut [A], &[A], &mut [A]),
    ) -> P {
        if PREFETCH {
            for s in [t, g, a, p] {
                ahead::<A, P>(s);
            }
        }
        let (t, g) = (P::load(tok, t), P::load(tok, g));
        let (nt, na, np) = op.packs(tok, t, g, P::load(tok, a), P::load(tok, p));
        na.store(a);
        np.store(p);
        nt
    }
    match theta {
        Theta::InPlace(theta) => {
            for (t, ((a, g), p)) in theta.chunks_exact_mut(lanes).zip(state) {
                one::<A, P, O, PREFETCH>(tok, op, t, (a, g, p)).store(t);
            }
        }
        Theta::Into { src, dst } => {
            let theta = src.chunks_exact(lanes).zip(dst.chunks_exact_mut(lanes));
            for ((s, d), ((a, g), p)) in theta.zip(state) {
                let nt = one::<A, P, O, PREFETCH>(tok, op, s, (a, g, p));
                if streaming {
                    nt.store_stream(d);
                } else {
                    nt.store_uninit(d);
                }
            }
        }
    }
    scalar_prev(tail, op);
}
