//! The loop every SIMD kernel runs: an element-wise operation ([`Lanewise`])
//! over packs of lanes, two packs (one 64-byte line of each stream) at a
//! time, and the scalar form of the same operation on the last few elements.

use super::pack::Pack;
use crate::{Element, Theta, Update};

/// An element-wise `(theta, g, alpha) -> (theta', alpha')`, written over
/// packs and over scalars; both must give the same bits.
pub(crate) trait Lanewise<A: Element>: Copy {
    /// The operation on packs.
    fn packs<P: Pack<A>>(self, tok: P::Token, theta: P, g: P, alpha: P) -> (P, P);
    /// The operation on one element (runs the tail).
    fn scalar(self, theta: A, g: A, alpha: A) -> (A, A);
}

// No software prefetch: the hardware prefetchers feed these streams. On the
// 2-core Zen 5 machines (2026-12-07, a prefetch 1, 2, 4 or 8 KB ahead
// against none, interleaved in one process, 4 runs at 16M elements) the
// 2 KB prefetch of earlier versions made f64 10-15% slower on 1 and 2
// threads (1.89-1.99 against 1.67-1.85 ns/element on 1 thread) and f32
// 0-3% faster; longer distances were slower for both, and on the machine
// before it measured within noise (0.339 against 0.354 ns/element, f32).
// A prefetch that misses holds one of the core's few L1 miss buffers for a
// whole memory latency, which the L2 streamer would otherwise use.

/// Runs `op` over `u`: packs of `P`, then the scalar form on the tail.
#[inline(always)]
pub(crate) fn sweep<A: Element, P: Pack<A>, O: Lanewise<A>>(
    tok: P::Token,
    u: Update<'_, A>,
    op: O,
    streaming: bool,
) {
    // The head up to the first 64-byte line of the written stream goes the
    // scalar way (see `ALIGN_MIN_LEN`).
    let head = if streaming || u.len() >= ALIGN_MIN_LEN {
        unaligned_head(&u)
    } else {
        0
    };
    let (head, u) = u.split_at(head);
    scalar(head, op);
    packs::<A, P, O>(tok, u, op, streaming);
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

/// Calls of at least this many elements start their packs on a 64-byte
/// line of theta (of the output for `Theta::Into`), the first few elements
/// going the scalar way. Arrays from the system allocator start 16 bytes
/// past a page (glibc's header), so without this every 64-byte AVX-512 load
/// (every other 32-byte AVX2 one) of all three streams spans two cache
/// lines. Measured on the 2-core Zen 5 machine (`kernel-compare table
/// --sizes 20,24`, interleaved runs of this against no alignment): see the
/// README's Performance section.
const ALIGN_MIN_LEN: usize = 256;

/// Elements before theta (the output, for `Theta::Into`) reaches a
/// 64-byte line (which streaming stores need, of 32 or 64 bytes).
fn unaligned_head<A>(u: &Update<'_, A>) -> usize {
    const LINE: usize = 64;
    let (addr, len) = match &u.theta {
        Theta::Into { dst, .. } => (dst.as_ptr() as usize, dst.len()),
        Theta::InPlace(t) => (t.as_ptr() as usize, t.len()),
    };
    ((LINE - addr % LINE) % LINE / size_of::<A>()).min(len)
}

#[inline(always)]
fn packs<A: Element, P: Pack<A>, O: Lanewise<A>>(
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
    let head = if streaming || u.len() >= ALIGN_MIN_LEN {
        unaligned_head(&u)
    } else {
        0
    };
    let (head, u) = u.split_at(head);
    scalar_prev(head, op);
    packs_prev::<A, P, O>(tok, u, op, streaming);
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
fn packs_prev<A: Element, P: Pack<A>, O: LanewisePrev<A>>(
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
    fn one<A: Element, P: Pack<A>, O: LanewisePrev<A>>(
        tok: P::Token,
        op: O,
        t: &[A],
        (a, g, p): (&mut [A], &[A], &mut [A]),
    ) -> P {
        let (t, g) = (P::load(tok, t), P::load(tok, g));
        let (nt, na, np) = op.packs(tok, t, g, P::load(tok, a), P::load(tok, p));
        na.store(a);
        np.store(p);
        nt
    }
    match theta {
        Theta::InPlace(theta) => {
            for (t, ((a, g), p)) in theta.chunks_exact_mut(lanes).zip(state) {
                one::<A, P, O>(tok, op, t, (a, g, p)).store(t);
            }
        }
        Theta::Into { src, dst } => {
            let theta = src.chunks_exact(lanes).zip(dst.chunks_exact_mut(lanes));
            for ((s, d), ((a, g), p)) in theta.zip(state) {
                let nt = one::<A, P, O>(tok, op, s, (a, g, p));
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
