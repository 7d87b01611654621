//! The scalar reference: the contract's per-element sequence, written to read like it.
//!
//! Every other kernel is tested bit for bit against this one.

use crate::{Config, Element, RateRule, Theta, Update};

/// The clamp of the contract: compare and select, so a NaN stays NaN.
#[inline(always)]
pub fn clamp<A: Element>(a: A) -> A {
    if a < A::LO {
        A::LO
    } else if a > A::HI {
        A::HI
    } else {
        a
    }
}

/// One element: returns `(theta', alpha')`. Every operation is rounded on its
/// own: no fused multiply-add, no `K * d` shortcut. A gradient scale
/// ([`Config::with_grad_scale`]) multiplies `g` first.
#[inline(always)]
pub fn update<A: Element>(theta: A, g: A, alpha: A, cfg: &Config<A>) -> (A, A) {
    let g = cfg.scaled(g);
    let d = alpha * g;
    let mut t = theta;
    let mut c = A::ZERO;
    for _ in 0..cfg.inner_steps() {
        t = t - d;
        c = c + d;
    }
    let m = g * c;
    let a = alpha - m * cfg.alpha_lr();
    (t, clamp(a))
}

/// `pos` if `h > 0`, `neg` if `h < 0`, `other` for zeros and NaN: the
/// sign test of the hypergradient rule.
#[inline(always)]
pub fn by_sign<A: Element>(h: A, pos: A, neg: A, other: A) -> A {
    if h > A::ZERO {
        pos
    } else if h < A::ZERO {
        neg
    } else {
        other
    }
}

/// The hypergradient rule's factors as a kernel uses them: `up`, `down`,
/// the state's smoothing and `1 - smoothing` (computed once per step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Factors<A> {
    /// Factor where the gradient agrees with the state.
    pub up: A,
    /// Factor where it disagrees.
    pub down: A,
    /// The share of the state a step keeps.
    pub keep: A,
    /// `1 - keep`, the share of the new gradient.
    pub take: A,
}

impl<A: Element> Factors<A> {
    /// The factors of a rule (`None` for the reference rule).
    pub fn of(rule: RateRule<A>) -> Option<Self> {
        match rule {
            RateRule::Reference => None,
            RateRule::Hypergradient {
                up,
                down,
                smoothing,
            } => Some(Self {
                up,
                down,
                keep: smoothing,
                take: A::one() - smoothing,
            }),
        }
    }
}

/// One element under [`RateRule::Hypergradient`]: returns `(theta', alpha',
/// p')`.
///
/// `h = g * p` (`p`: the state, the smoothed previous gradients; `-h` is the
/// derivative of the loss with respect to the previous rate); `alpha' =
/// clamp(alpha * f)` with `f = up` if `h > 0`, `down` if `h < 0`, `1`
/// otherwise (zeros and NaN); `d = alpha' * g`; `theta' = theta - d` repeated
/// `K` times; `p' = g` if `keep` is 0, else `p * keep + g * take`.
#[inline(always)]
pub fn update_hypergradient<A: Element>(
    theta: A,
    g: A,
    alpha: A,
    p: A,
    f: &Factors<A>,
    cfg: &Config<A>,
) -> (A, A, A) {
    let g = cfg.scaled(g);
    let factor = by_sign(g * p, f.up, f.down, A::one());
    let a = clamp(alpha * factor);
    let d = a * g;
    let mut t = theta;
    for _ in 0..cfg.inner_steps() {
        t = t - d;
    }
    let p = if f.keep == A::ZERO {
        g
    } else {
        p * f.keep + g * f.take
    };
    (t, a, p)
}

/// One inner iteration of the closure step (optirs-core 0.3.2's
/// `step_with_closure`) for one element, with `g` the gradient evaluated at
/// the current `t`: `d = alpha * g`, `c = c + d`, `t = t - d`. Returns `(t, c)`.
#[inline(always)]
pub fn closure_inner<A: Element>(t: A, c: A, alpha: A, g: A) -> (A, A) {
    let d = alpha * g;
    (t - d, c + d)
}

/// The closure step's learning-rate update for one element, after the
/// inner iterations: `m = g_last * c`, `alpha' = clamp(alpha - m * beta)`.
#[inline(always)]
pub fn closure_alpha<A: Element>(alpha: A, g_last: A, c: A, beta: A) -> A {
    let m = g_last * c;
    clamp(alpha - m * beta)
}

/// Applies [`update`] (or the hypergradient rule's
/// [`update_hypergradient`], as `cfg` says) to every element of one tensor.
pub fn step<A: Element>(u: Update<'_, A>, cfg: &Config<A>) {
    if let Some(f) = Factors::of(cfg.rule()) {
        return step_hypergradient(u, &f, cfg);
    }
    let Update {
        theta, alpha, grad, ..
    } = u;
    match theta {
        Theta::InPlace(theta) => {
            for ((t, a), &g) in theta.iter_mut().zip(alpha.iter_mut()).zip(grad) {
                (*t, *a) = update(*t, g, *a, cfg);
            }
        }
        Theta::Into { src, dst } => {
            for (((o, &t), a), &g) in dst.iter_mut().zip(src).zip(alpha.iter_mut()).zip(grad) {
                let (nt, na) = update(t, g, *a, cfg);
                o.write(nt);
                *a = na;
            }
        }
    }
}

fn step_hypergradient<A: Element>(u: Update<'_, A>, f: &Factors<A>, cfg: &Config<A>) {
    let Update {
        theta,
        alpha,
        grad,
        prev,
    } = u;
    let prev = prev.expect("the hypergradient rule's update carries the previous gradient");
    let state = alpha.iter_mut().zip(prev.iter_mut()).zip(grad);
    match theta {
        Theta::InPlace(theta) => {
            for (t, ((a, p), &g)) in theta.iter_mut().zip(state) {
                (*t, *a, *p) = update_hypergradient(*t, g, *a, *p, f, cfg);
            }
        }
        Theta::Into { src, dst } => {
            for ((o, &t), ((a, p), &g)) in dst.iter_mut().zip(src).zip(state) {
                let (nt, na, np) = update_hypergradient(t, g, *a, *p, f, cfg);
                o.write(nt);
                (*a, *p) = (na, np);
            }
        }
    }
}

/// `alpha' = clamp(alpha * factor)` for every element: the rescaling done by
/// `set_learning_rate`.
pub fn rescale<A: Element>(alpha: &mut [A], factor: A) {
    for a in alpha {
        *a = clamp(*a * factor);
    }
}

/// Flat index of the first NaN or infinite element, if any.
pub fn first_non_finite<A: Element>(values: &[A]) -> Option<usize> {
    values.iter().position(|v| !v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k1_matches_documented_algorithm() {
        let cfg = Config::new(0.001_f64, 1);
        let (t, a) = update(1.0, 0.1, 0.01, &cfg);
        let delta: f64 = 0.01 * 0.1;
        assert_eq!(t.to_bits(), (1.0_f64 - delta).to_bits());
        assert_eq!(
            a.to_bits(),
            (0.01_f64 - 0.1 * (0.0 + delta) * 0.001).to_bits()
        );
    }

    #[test]
    fn clamp_keeps_nan_and_hits_bounds() {
        assert!(clamp(f32::NAN).is_nan());
        assert_eq!(clamp(-1.0_f32), f32::LO);
        assert_eq!(clamp(f32::INFINITY), f32::HI);
        assert_eq!(clamp(0.5_f64), 0.5);
    }

    #[test]
    fn negative_zero_delta_accumulates_to_positive_zero() {
        // c starts at +0.0 and +0.0 + -0.0 == +0.0: m = g * c must see +0.0.
        let cfg = Config::new(1.0_f64, 1);
        let (t, a) = update(-0.0, -0.0, 1.0, &cfg);
        assert_eq!(t.to_bits(), (-0.0_f64 - -0.0).to_bits());
        assert_eq!(a.to_bits(), 1.0_f64.to_bits());
    }
}
