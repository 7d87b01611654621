//! `step_with_closure` against a transcription of optirs-core 0.3.2's, and
//! its promise that a failed step changes nothing.

mod common;

use common::*;
use metasgd::ndarray::{Array, ArrayD, IxDyn, ScalarOperand};
use metasgd::{Element, Error, MetaSGD, NonFinitePolicy, Optimizer, StateMismatch};

/// optirs-core 0.3.2's `MetaSGD::step_with_closure`, operation for
/// operation with ndarray arithmetic (one temporary per operation): `K`
/// fresh gradients, `delta = lr * g`, `cumulative += delta`, `params -=
/// delta`; then `meta = g_last * cumulative`, `lr' = clamp(lr - meta *
/// alpha_lr)`. Returns `(params', lr')`.
fn reference<A: Element + ScalarOperand>(
    params: &ArrayD<A>,
    lr: &ArrayD<A>,
    alpha_lr: A,
    k: usize,
    grad_fn: &dyn Fn(&ArrayD<A>) -> ArrayD<A>,
) -> (ArrayD<A>, ArrayD<A>) {
    let (lo, hi) = (A::from(1e-8).unwrap(), A::from(10.0).unwrap());
    let mut adapted = params.clone();
    let mut cumulative = Array::<A, IxDyn>::zeros(params.raw_dim());
    let mut last = None;
    for _ in 0..k {
        let g = grad_fn(&adapted);
        let delta = lr * &g;
        cumulative = &cumulative + &delta;
        adapted = &adapted - &delta;
        last = Some(g);
    }
    let meta = &last.unwrap() * &cumulative;
    let updated = lr - &(&meta * alpha_lr);
    let clamped = updated.mapv(|v| {
        if v < lo {
            lo
        } else if v > hi {
            hi
        } else {
            v
        }
    });
    (adapted, clamped)
}

/// A non-linear gradient with special values of its own: `g(t) = sin(3t) * w + b`.
fn gradient<A: Element>(w: ArrayD<A>, b: ArrayD<A>) -> impl Fn(&ArrayD<A>) -> ArrayD<A> {
    move |t: &ArrayD<A>| {
        let three = A::from(3.0).unwrap();
        let mut g = t.mapv(|x| (x * three).sin());
        g.zip_mut_with(&w, |g, &w| *g = *g * w);
        g.zip_mut_with(&b, |g, &b| *g = *g + b);
        g
    }
}

fn matches_reference<A: Element + ScalarOperand>()
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    for (shape, seed) in [
        (vec![37usize], 1u64),
        (vec![4, 9], 2),
        (vec![], 3),
        (vec![0, 5], 4),
        (vec![3, 2, 5], 5),
    ] {
        let n: usize = shape.iter().product();
        let arr = |s: u64| ArrayD::from_shape_vec(IxDyn(&shape), filled::<A>(n, s)).unwrap();
        let grad = gradient(arr(seed + 10), arr(seed + 20));
        for (base, alpha_lr, k) in [
            (0.01, 0.001, 5),
            (0.3, 0.7, 1),
            (9.0, 1e3, 3),
            (1e-3, 0.0, 8),
            (20.0, 0.5, 2),
        ] {
            let a = |x: f64| A::from(x).unwrap();
            let mut opt = MetaSGD::new(a(base))
                .with_alpha_lr(a(alpha_lr))
                .with_inner_steps(k);
            let mut theta = arr(seed);
            let mut lr = ArrayD::from_elem(IxDyn(&shape), a(base));
            for step in 1..=3 {
                let got = opt.step_with_closure(&theta, |t| Ok(grad(t))).unwrap();
                let (want, want_lr) = reference(&theta, &lr, a(alpha_lr), k, &grad);
                let what = format!("{} shape {shape:?} K {k} step {step}", A::NAME);
                assert_eq!(bits(got.iter()), bits(want.iter()), "theta, {what}");
                assert_eq!(
                    bits(opt.get_per_param_lr().unwrap().iter()),
                    bits(want_lr.iter()),
                    "alpha, {what}"
                );
                assert_eq!(opt.get_step_count(), step);
                (theta, lr) = (got, want_lr);
            }
        }
    }
}

#[test]
fn matches_the_reference_f32() {
    matches_reference::<f32>();
}

#[test]
fn matches_the_reference_f64() {
    matches_reference::<f64>();
}

#[test]
fn evaluates_the_gradient_k_times_never_at_the_end() {
    let mut opt = MetaSGD::new(0.1_f64).with_inner_steps(4);
    let x = ArrayD::from_elem(IxDyn(&[3]), 1.0);
    let mut seen = Vec::new();
    let out = opt
        .step_with_closure(&x, |t| {
            seen.push(t[0]);
            Ok(t.clone())
        })
        .unwrap();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0], 1.0);
    assert!(
        !seen.contains(&out[0]),
        "the gradient was evaluated at the final iterate"
    );
}

/// Runs a failing call and asserts nothing changed.
fn unchanged_after(
    opt: &mut MetaSGD<f32>,
    params: &ArrayD<f32>,
    f: impl FnMut(&ArrayD<f32>) -> metasgd::Result<ArrayD<f32>>,
) -> Error {
    let before = snapshot(opt);
    let e = opt.step_with_closure(params, f).unwrap_err();
    assert_eq!(snapshot(opt), before, "{e}");
    e
}

#[test]
fn failures_change_nothing() {
    let x = ArrayD::from_elem(IxDyn(&[2, 3]), 0.5_f32);
    let mut opt = MetaSGD::new(0.1_f32).with_inner_steps(3);
    opt.step_with_closure(&x, |t| Ok(t.clone())).unwrap();
    let alphas = snapshot(&opt);

    // The closure fails on its third call, after two inner updates.
    let mut calls = 0;
    let e = unchanged_after(&mut opt, &x, |t| {
        calls += 1;
        if calls == 3 {
            Err(Error::LengthMismatch {
                params: 0,
                gradients: 1,
            })
        } else {
            Ok(t.clone())
        }
    });
    assert_eq!(
        e,
        Error::LengthMismatch {
            params: 0,
            gradients: 1
        }
    );
    // A gradient of the wrong shape, on the second call.
    let mut calls = 0;
    let e = unchanged_after(&mut opt, &x, |t| {
        calls += 1;
        Ok(if calls == 2 {
            ArrayD::zeros(IxDyn(&[3, 2]))
        } else {
            t.clone()
        })
    });
    assert!(matches!(e, Error::ShapeMismatch { slot: 0, .. }), "{e:?}");
    // Parameters whose shape differs from slot 0's learning rates.
    let e = unchanged_after(&mut opt, &ArrayD::zeros(IxDyn(&[6])), |t| Ok(t.clone()));
    assert!(
        matches!(
            e,
            Error::StateMismatch(StateMismatch::Shape { slot: 0, .. })
        ),
        "{e:?}"
    );
    // An invalid learning rate set through the trait.
    Optimizer::<f32, IxDyn>::set_learning_rate(&mut opt, f32::NAN);
    let e = unchanged_after(&mut opt, &x, |t| Ok(t.clone()));
    assert!(
        matches!(
            e,
            Error::InvalidHyperparameter {
                name: "base_lr",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(snapshot(&opt), alphas);

    // A fresh optimizer keeps no state from a failed first call.
    let mut fresh = MetaSGD::new(0.1_f32);
    unchanged_after(&mut fresh, &x, |_| {
        Err(Error::LengthMismatch {
            params: 1,
            gradients: 2,
        })
    });
    assert!(fresh.per_param_lrs().is_empty());
}

#[test]
fn non_finite_gradients_follow_the_policy() {
    let x = ArrayD::from_elem(IxDyn(&[4]), 0.5_f32);
    let bad = |t: &ArrayD<f32>| {
        let mut g = t.clone();
        g[2] = f32::INFINITY;
        Ok(g)
    };
    let mut refuse = MetaSGD::new(0.1_f32).with_non_finite(NonFinitePolicy::Error);
    let e = unchanged_after(&mut refuse, &x, bad);
    assert_eq!(e, Error::NonFiniteGradient { slot: 0, index: 2 });

    let mut skip = MetaSGD::new(0.1_f32).with_non_finite(NonFinitePolicy::Skip);
    let out = skip.step_with_closure(&x, bad).unwrap();
    assert_eq!(out, x);
    assert_eq!((skip.get_step_count(), skip.skipped_steps()), (0, 1));
    assert!(skip.per_param_lrs().is_empty());

    let mut propagate = MetaSGD::new(0.1_f32);
    let out = propagate.step_with_closure(&x, bad).unwrap();
    // t = 0.5 - inf - ... = -inf; alpha = 0.1 - inf * inf * beta = -inf, clamped.
    assert_eq!(out[2], f32::NEG_INFINITY);
    assert_eq!(propagate.get_per_param_lr().unwrap()[2], f32::LO);
    assert_eq!(propagate.get_step_count(), 1);
}

#[test]
fn shares_slot_zero_with_step() {
    // `step_with_closure` with a constant gradient is `step` with K reuses.
    let x = ArrayD::from_shape_vec(IxDyn(&[5]), finite::<f64>(5, 1)).unwrap();
    let g = ArrayD::from_shape_vec(IxDyn(&[5]), finite::<f64>(5, 2)).unwrap();
    let mut a = MetaSGD::new(0.2_f64).with_inner_steps(4);
    let mut b = a.clone();
    for _ in 0..3 {
        let ra = a.step(&x, &g).unwrap();
        let rb = b.step_with_closure(&x, |_| Ok(g.clone())).unwrap();
        assert_eq!(bits(ra.iter()), bits(rb.iter()));
        assert_eq!(snapshot(&a), snapshot(&b));
    }
}
