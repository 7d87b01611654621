//! The element-wise pieces of meta-learning (`metasgd::meta`): the
//! adaptation step, the learning-rate gradient, the reverse sweep's
//! bookkeeping and Adam. Each has a scalar reference ([`reference`](mod@reference)) and a
//! SIMD version over `wide` packs that computes the same bits (every
//! operation is a separately rounded IEEE add, subtract, multiply, divide or
//! square root; nothing is fused).
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
#[cfg(feature = "simd")]
use crate::simd::pack::Pack;

/// Adam's settings for one update, with step `t`'s bias corrections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam<A> {
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

impl<A: Element> Adam<A> {
    /// Settings for update number `t` (from 1).
    pub fn new(lr: A, beta1: A, beta2: A, eps: A, t: u32) -> Self {
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        Self {
            lr,
            beta1,
            beta2,
            eps,
            bias1: A::one() - beta1.powi(t),
            bias2: A::one() - beta2.powi(t),
        }
    }
}

/// The scalar references, one element at a time.
pub mod reference {
    use super::Adam;
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
    pub fn adam<A: Element>(theta: A, m: A, v: A, g: A, c: &Adam<A>) -> (A, A, A) {
        let one = A::one();
        let m = c.beta1 * m + (one - c.beta1) * g;
        let v = c.beta2 * v + (one - c.beta2) * (g * g);
        let m_hat = m / c.bias1;
        let v_hat = v / c.bias2;
        (theta - c.lr * m_hat / (v_hat.sqrt() + c.eps), m, v)
    }
}

/// Elements handled by packs (the rest by the reference); `A` picks the
/// pack width, which without the `simd` feature does not exist.
#[cfg_attr(not(feature = "simd"), allow(clippy::extra_unused_type_parameters))]
#[inline(always)]
fn body<A: Element>(n: usize) -> usize {
    #[cfg(feature = "simd")]
    {
        n - n % <A::Wide as Pack<A>>::LANES
    }
    #[cfg(not(feature = "simd"))]
    {
        let _ = n;
        0
    }
}

#[cfg(feature = "simd")]
#[inline(always)]
fn load<A: Element>(s: &[A], i: usize) -> A::Wide {
    <A::Wide as Pack<A>>::load((), &s[i..])
}

macro_rules! lanes {
    ($n:expr, |$i:ident| $simd:block) => {{
        #[cfg(feature = "simd")]
        {
            let lanes = <A::Wide as Pack<A>>::LANES;
            let mut $i = 0;
            while $i < body::<A>($n) {
                $simd
                $i += lanes;
            }
        }
    }};
}

fn same_len(n: usize, others: &[usize]) {
    assert!(
        others.iter().all(|&m| m == n),
        "slice lengths differ: {n} vs {others:?}"
    );
}

/// `out = theta - alpha * g`: one adaptation step.
pub fn adapt<A: Element>(out: &mut [A], theta: &[A], alpha: &[A], g: &[A]) {
    let n = out.len();
    same_len(n, &[theta.len(), alpha.len(), g.len()]);
    lanes!(n, |i| {
        load::<A>(theta, i)
            .sub(load::<A>(alpha, i).mul(load::<A>(g, i)))
            .store(&mut out[i..]);
    });
    for i in body::<A>(n)..n {
        out[i] = reference::adapt(theta[i], alpha[i], g[i]);
    }
}

/// `dalpha -= g * lambda`: the learning-rate gradient of one inner step.
pub fn alpha_grad<A: Element>(dalpha: &mut [A], g: &[A], lambda: &[A]) {
    let n = dalpha.len();
    same_len(n, &[g.len(), lambda.len()]);
    lanes!(n, |i| {
        let d = load::<A>(dalpha, i).sub(load::<A>(g, i).mul(load::<A>(lambda, i)));
        d.store(&mut dalpha[i..]);
    });
    for i in body::<A>(n)..n {
        dalpha[i] = reference::alpha_grad(dalpha[i], g[i], lambda[i]);
    }
}

/// `out = a * b` (the direction `alpha * lambda` of a Hessian-vector product).
pub fn mul<A: Element>(out: &mut [A], a: &[A], b: &[A]) {
    let n = out.len();
    same_len(n, &[a.len(), b.len()]);
    lanes!(n, |i| {
        load::<A>(a, i).mul(load::<A>(b, i)).store(&mut out[i..]);
    });
    for i in body::<A>(n)..n {
        out[i] = reference::mul(a[i], b[i]);
    }
}

/// `lambda -= hv`: one step of the reverse sweep.
pub fn sub_assign<A: Element>(lambda: &mut [A], hv: &[A]) {
    let n = lambda.len();
    same_len(n, &[hv.len()]);
    lanes!(n, |i| {
        load::<A>(lambda, i)
            .sub(load::<A>(hv, i))
            .store(&mut lambda[i..]);
    });
    for i in body::<A>(n)..n {
        lambda[i] = reference::sub(lambda[i], hv[i]);
    }
}

/// One Adam update of `theta` with gradient `g`, moments `m` and `v`.
pub fn adam<A: Element>(theta: &mut [A], m: &mut [A], v: &mut [A], g: &[A], c: &Adam<A>) {
    let n = theta.len();
    same_len(n, &[m.len(), v.len(), g.len()]);
    lanes!(n, |i| {
        let splat = |x: A| <A::Wide as Pack<A>>::splat((), x);
        let one = A::one();
        let gi = load::<A>(g, i);
        let mi = splat(c.beta1)
            .mul(load::<A>(m, i))
            .add(splat(one - c.beta1).mul(gi));
        let vi = splat(c.beta2)
            .mul(load::<A>(v, i))
            .add(splat(one - c.beta2).mul(gi.mul(gi)));
        let m_hat = mi.div(splat(c.bias1));
        let v_hat = vi.div(splat(c.bias2));
        let step = splat(c.lr).mul(m_hat).div(v_hat.sqrt().add(splat(c.eps)));
        load::<A>(theta, i).sub(step).store(&mut theta[i..]);
        mi.store(&mut m[i..]);
        vi.store(&mut v[i..]);
    });
    for i in body::<A>(n)..n {
        (theta[i], m[i], v[i]) = reference::adam(theta[i], m[i], v[i], g[i], c);
    }
}
