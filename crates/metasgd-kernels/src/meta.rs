//! The element-wise pieces of meta-learning (`metasgd::meta`): the
//! adaptation step, the learning-rate gradient, the reverse sweep's
//! bookkeeping and the outer optimizers' updates (Adam, SGD). Each has a
//! scalar reference ([`reference`](mod@reference)) and runs, like the
//! Meta-SGD update, on the one instruction-set decision of the crate (AVX2
//! where the CPU has it, `wide` elsewhere, the reference without the `simd`
//! feature), computing the same bits everywhere: every operation is a
//! separately rounded IEEE add, subtract, multiply, divide or square root;
//! nothing is fused.
//!
//! All slices of one call have the same length.
//!
//! ```
//! use metasgd_kernels::meta;
//!
//! let (theta, alpha, g) = ([1.0_f32, 2.0], [0.1_f32, 0.2], [0.5_f32, -1.0]);
//! let mut adapted = [0.0_f32; 2];
//! meta::adapt(&mut adapted, &theta, &alpha, &g);
//! assert_eq!(adapted, [1.0 - 0.1 * 0.5, 2.0 - 0.2 * -1.0]);
//! ```

use crate::Element;
use crate::simd::pack::Pack;
use crate::simd::{Isa, WithPacks};

/// The constants of one Adam update (the optimizer itself, its settings
/// and step counter, belong to the meta-learner): step size, decays,
/// epsilon, and step `t`'s bias corrections `1 - beta1^t`, `1 - beta2^t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep<A> {
    /// Step size.
    pub lr: A,
    /// Decay of the first moment.
    pub beta1: A,
    /// Decay of the second moment.
    pub beta2: A,
    /// Added to the root of the second moment.
    pub eps: A,
    /// `1 - beta1^t`.
    pub bias1: A,
    /// `1 - beta2^t`.
    pub bias2: A,
}

/// The scalar references, one element at a time.
pub mod reference {
    use super::AdamStep;
    use crate::Element;

    /// `theta - alpha * g`.
    #[inline(always)]
    pub fn adapt<A: Element>(theta: A, alpha: A, g: A) -> A {
        theta - alpha * g
    }

    /// `dalpha - g * lambda`: accumulates `-g * lambda` (negation is exact).
    #[inline(always)]
    pub fn alpha_grad<A: Element>(dalpha: A, g: A, lambda: A) -> A {
        dalpha - g * lambda
    }

    /// `a * b`.
    #[inline(always)]
    pub fn mul<A: Element>(a: A, b: A) -> A {
        a * b
    }

    /// `lambda - hv`.
    #[inline(always)]
    pub fn sub<A: Element>(lambda: A, hv: A) -> A {
        lambda - hv
    }

    /// One Adam update of one element: returns `(theta', m', v')` with
    /// `m' = b1*m + (1-b1)*g`, `v' = b2*v + (1-b2)*(g*g)`,
    /// `theta' = theta - lr * (m'/bias1) / (sqrt(v'/bias2) + eps)`.
    #[inline(always)]
    pub fn adam<A: Element>(theta: A, m: A, v: A, g: A, c: &AdamStep<A>) -> (A, A, A) {
        let one = A::one();
        let m = c.beta1 * m + (one - c.beta1) * g;
        let v = c.beta2 * v + (one - c.beta2) * (g * g);
        let m_hat = m / c.bias1;
        let v_hat = v / c.bias2;
        (theta - c.lr * m_hat / (v_hat.sqrt() + c.eps), m, v)
    }

    /// `theta - lr * g`: one plain gradient step.
    #[inline(always)]
    pub fn sgd<A: Element>(theta: A, g: A, lr: A) -> A {
        theta - lr * g
    }
}

/// Runs `$pack` at every pack offset `$i` of `0..$n` with packs of `$p`,
/// then `$one` at every element of the tail. A macro, not a closure: the
/// body must be compiled inside the caller's `#[target_feature]` function.
macro_rules! lanes {
    ($p:ty, $n:expr, |$i:ident| $pack:block, |$j:ident| $one:block) => {{
        let n = $n;
        let body = n - n % <$p as Pack<A>>::LANES;
        let mut $i = 0;
        while $i < body {
            $pack
            $i += <$p as Pack<A>>::LANES;
        }
        for $j in body..n {
            $one
        }
    }};
}

fn same_len(n: usize, others: &[usize]) {
    assert!(
        others.iter().all(|&m| m == n),
        "slice lengths differ: {n} vs {others:?}"
    );
}

struct Adapt<'a, A> {
    out: &'a mut [A],
    theta: &'a [A],
    alpha: &'a [A],
    g: &'a [A],
}

impl<A: Element> WithPacks<A> for Adapt<'_, A> {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, tok: P::Token) {
        let Adapt {
            out,
            theta,
            alpha,
            g,
        } = self;
        lanes!(
            P,
            out.len(),
            |i| {
                P::load(tok, &theta[i..])
                    .sub(P::load(tok, &alpha[i..]).mul(P::load(tok, &g[i..])))
                    .store(&mut out[i..]);
            },
            |i| {
                out[i] = reference::adapt(theta[i], alpha[i], g[i]);
            }
        );
    }
    fn scalars(self) {
        for i in 0..self.out.len() {
            self.out[i] = reference::adapt(self.theta[i], self.alpha[i], self.g[i]);
        }
    }
}

struct AlphaGrad<'a, A> {
    dalpha: &'a mut [A],
    g: &'a [A],
    lambda: &'a [A],
}

impl<A: Element> WithPacks<A> for AlphaGrad<'_, A> {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, tok: P::Token) {
        let AlphaGrad { dalpha, g, lambda } = self;
        lanes!(
            P,
            dalpha.len(),
            |i| {
                P::load(tok, &dalpha[i..])
                    .sub(P::load(tok, &g[i..]).mul(P::load(tok, &lambda[i..])))
                    .store(&mut dalpha[i..]);
            },
            |i| {
                dalpha[i] = reference::alpha_grad(dalpha[i], g[i], lambda[i]);
            }
        );
    }
    fn scalars(self) {
        for i in 0..self.dalpha.len() {
            self.dalpha[i] = reference::alpha_grad(self.dalpha[i], self.g[i], self.lambda[i]);
        }
    }
}

struct Mul<'a, A> {
    out: &'a mut [A],
    a: &'a [A],
    b: &'a [A],
}

impl<A: Element> WithPacks<A> for Mul<'_, A> {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, tok: P::Token) {
        let Mul { out, a, b } = self;
        lanes!(
            P,
            out.len(),
            |i| {
                P::load(tok, &a[i..])
                    .mul(P::load(tok, &b[i..]))
                    .store(&mut out[i..]);
            },
            |i| {
                out[i] = reference::mul(a[i], b[i]);
            }
        );
    }
    fn scalars(self) {
        for i in 0..self.out.len() {
            self.out[i] = reference::mul(self.a[i], self.b[i]);
        }
    }
}

struct SubAssign<'a, A> {
    lambda: &'a mut [A],
    hv: &'a [A],
}

impl<A: Element> WithPacks<A> for SubAssign<'_, A> {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, tok: P::Token) {
        let SubAssign { lambda, hv } = self;
        lanes!(
            P,
            lambda.len(),
            |i| {
                P::load(tok, &lambda[i..])
                    .sub(P::load(tok, &hv[i..]))
                    .store(&mut lambda[i..]);
            },
            |i| {
                lambda[i] = reference::sub(lambda[i], hv[i]);
            }
        );
    }
    fn scalars(self) {
        for i in 0..self.lambda.len() {
            self.lambda[i] = reference::sub(self.lambda[i], self.hv[i]);
        }
    }
}

struct Adam<'a, A> {
    theta: &'a mut [A],
    m: &'a mut [A],
    v: &'a mut [A],
    g: &'a [A],
    c: AdamStep<A>,
}

impl<A: Element> WithPacks<A> for Adam<'_, A> {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, tok: P::Token) {
        let Adam { theta, m, v, g, c } = self;
        let one = A::one();
        let (b1, nb1) = (P::splat(tok, c.beta1), P::splat(tok, one - c.beta1));
        let (b2, nb2) = (P::splat(tok, c.beta2), P::splat(tok, one - c.beta2));
        let (bias1, bias2) = (P::splat(tok, c.bias1), P::splat(tok, c.bias2));
        let (lr, eps) = (P::splat(tok, c.lr), P::splat(tok, c.eps));
        lanes!(
            P,
            theta.len(),
            |i| {
                let gi = P::load(tok, &g[i..]);
                let mi = b1.mul(P::load(tok, &m[i..])).add(nb1.mul(gi));
                let vi = b2.mul(P::load(tok, &v[i..])).add(nb2.mul(gi.mul(gi)));
                let m_hat = mi.div(bias1);
                let v_hat = vi.div(bias2);
                let step = lr.mul(m_hat).div(v_hat.sqrt().add(eps));
                P::load(tok, &theta[i..]).sub(step).store(&mut theta[i..]);
                mi.store(&mut m[i..]);
                vi.store(&mut v[i..]);
            },
            |i| {
                (theta[i], m[i], v[i]) = reference::adam(theta[i], m[i], v[i], g[i], &c);
            }
        );
    }
    fn scalars(self) {
        let Adam { theta, m, v, g, c } = self;
        for i in 0..theta.len() {
            (theta[i], m[i], v[i]) = reference::adam(theta[i], m[i], v[i], g[i], &c);
        }
    }
}

struct Sgd<'a, A> {
    theta: &'a mut [A],
    g: &'a [A],
    lr: A,
}

impl<A: Element> WithPacks<A> for Sgd<'_, A> {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, tok: P::Token) {
        let Sgd { theta, g, lr } = self;
        let lr_p = P::splat(tok, lr);
        lanes!(
            P,
            theta.len(),
            |i| {
                P::load(tok, &theta[i..])
                    .sub(lr_p.mul(P::load(tok, &g[i..])))
                    .store(&mut theta[i..]);
            },
            |i| {
                theta[i] = reference::sgd(theta[i], g[i], lr);
            }
        );
    }
    fn scalars(self) {
        for i in 0..self.theta.len() {
            self.theta[i] = reference::sgd(self.theta[i], self.g[i], self.lr);
        }
    }
}

/// The public entry points, on the instruction set `$isa` gives.
macro_rules! entry_points {
    ($isa:expr) => {
        /// `out = theta - alpha * g`: one adaptation step.
        pub fn adapt<A: Element>(out: &mut [A], theta: &[A], alpha: &[A], g: &[A]) {
            same_len(out.len(), &[theta.len(), alpha.len(), g.len()]);
            $isa.dispatch(Adapt {
                out,
                theta,
                alpha,
                g,
            });
        }

        /// `dalpha -= g * lambda`: the learning-rate gradient of one inner step.
        pub fn alpha_grad<A: Element>(dalpha: &mut [A], g: &[A], lambda: &[A]) {
            same_len(dalpha.len(), &[g.len(), lambda.len()]);
            $isa.dispatch(AlphaGrad { dalpha, g, lambda });
        }

        /// `out = a * b` (the direction `alpha * lambda` of a Hessian-vector product).
        pub fn mul<A: Element>(out: &mut [A], a: &[A], b: &[A]) {
            same_len(out.len(), &[a.len(), b.len()]);
            $isa.dispatch(Mul { out, a, b });
        }

        /// `lambda -= hv`: one step of the reverse sweep.
        pub fn sub_assign<A: Element>(lambda: &mut [A], hv: &[A]) {
            same_len(lambda.len(), &[hv.len()]);
            $isa.dispatch(SubAssign { lambda, hv });
        }

        /// One Adam update of `theta` with gradient `g`, moments `m` and `v`.
        pub fn adam<A: Element>(
            theta: &mut [A],
            m: &mut [A],
            v: &mut [A],
            g: &[A],
            c: &AdamStep<A>,
        ) {
            same_len(theta.len(), &[m.len(), v.len(), g.len()]);
            $isa.dispatch(Adam {
                theta,
                m,
                v,
                g,
                c: *c,
            });
        }

        /// One plain gradient step: `theta -= lr * g`.
        pub fn sgd<A: Element>(theta: &mut [A], g: &[A], lr: A) {
            same_len(theta.len(), &[g.len()]);
            $isa.dispatch(Sgd { theta, g, lr });
        }
    };
}

entry_points!(Isa::detect());

/// The same operations on the portable path (`wide`) whatever the CPU has,
/// so that tests on an AVX2 machine also cover what other targets run
/// (feature `testing`).
#[cfg(feature = "testing")]
pub mod portable {
    use super::*;

    entry_points!(Isa::portable());
}

/// The same operations on the AVX2 loop where the CPU has AVX2 (else the
/// portable path), so that tests on an AVX-512 machine also cover what
/// AVX2-only CPUs run (feature `testing`).
#[cfg(feature = "testing")]
pub mod avx2 {
    use super::*;

    entry_points!(Isa::avx2_or_portable());
}
