//! The state rules of the contract: errors change nothing, slots, validation,
//! rescaling, non-finite policies.

mod common;

use common::*;
use metasgd::Element;
use metasgd::kernels::scalar::clamp;
use metasgd::ndarray::{
    Array, Array1, Array2, ArrayView1, ArrayViewMut1, Ix1, IxDyn, ShapeBuilder, array,
};
use metasgd::{Error, MetaSGD, NonFinitePolicy, Optimizer, StateMismatch};

/// Runs `call`, which must fail with an error matching `expect`, and checks
/// that neither the optimizer nor the parameters changed.
fn assert_untouched(
    opt: &mut MetaSGD<f32>,
    params: &mut [Array1<f32>],
    call: impl FnOnce(&mut MetaSGD<f32>, &mut [Array1<f32>]) -> metasgd::Result<()>,
    expect: impl Fn(&Error) -> bool,
) {
    let before: (Snapshot, Vec<Vec<u64>>) = (
        snapshot(opt),
        params.iter().map(|p| bits(p.iter())).collect(),
    );
    let err = call(opt, params).expect_err("the call must fail");
    assert!(expect(&err), "unexpected error: {err}");
    let after = (
        snapshot(opt),
        params.iter().map(|p| bits(p.iter())).collect::<Vec<_>>(),
    );
    assert_eq!(after, before, "a failed call changed state ({err})");
}

fn list_inplace(
    opt: &mut MetaSGD<f32>,
    params: &mut [Array1<f32>],
    grads: &[Array1<f32>],
) -> metasgd::Result<()> {
    let mut views: Vec<ArrayViewMut1<f32>> = params.iter_mut().map(|p| p.view_mut()).collect();
    let gv: Vec<ArrayView1<f32>> = grads.iter().map(|g| g.view()).collect();
    opt.step_list_inplace(&mut views, &gv)
}

fn two_slot_optimizer(
    policy: NonFinitePolicy,
) -> (MetaSGD<f32>, Vec<Array1<f32>>, Vec<Array1<f32>>) {
    let mut opt = MetaSGD::new(0.1_f32)
        .with_alpha_lr(0.2)
        .with_non_finite(policy);
    let mut params = vec![
        Array1::from(finite::<f32>(9, 1)),
        Array1::from(finite::<f32>(11, 2)),
    ];
    let grads = vec![
        Array1::from(finite::<f32>(9, 3)),
        Array1::from(finite::<f32>(11, 4)),
    ];
    list_inplace(&mut opt, &mut params, &grads).unwrap();
    (opt, params, grads)
}

#[test]
fn every_error_changes_nothing() {
    for policy in [
        NonFinitePolicy::Propagate,
        NonFinitePolicy::Skip,
        NonFinitePolicy::Error,
    ] {
        let (mut opt, mut params, grads) = two_slot_optimizer(policy);
        assert_eq!(opt.per_param_lrs().len(), 2);

        // A list longer than the slots.
        let mut extra_p = params.clone();
        extra_p.push(array![1.0]);
        let mut extra_g = grads.clone();
        extra_g.push(array![1.0]);
        assert_untouched(
            &mut opt,
            &mut extra_p,
            |o, p| list_inplace(o, p, &extra_g),
            |e| {
                matches!(
                    e,
                    Error::StateMismatch(StateMismatch::SlotCount {
                        slots: 2,
                        arrays: 3
                    })
                )
            },
        );

        // Slot 1 with another shape (params and gradients agree with each other).
        let mut p = vec![params[0].clone(), Array1::zeros(12)];
        let g = vec![grads[0].clone(), Array1::zeros(12)];
        assert_untouched(
            &mut opt,
            &mut p,
            |o, p| list_inplace(o, p, &g),
            |e| {
                matches!(
                    e,
                    Error::StateMismatch(StateMismatch::Shape { slot: 1, .. })
                )
            },
        );

        // Gradients of another shape than their parameters, in the last array.
        let g = vec![grads[0].clone(), Array1::zeros(10)];
        assert_untouched(
            &mut opt,
            &mut params,
            |o, p| list_inplace(o, p, &g),
            |e| matches!(e, Error::ShapeMismatch { slot: 1, .. }),
        );

        // Lists of different lengths.
        let g = vec![grads[0].clone()];
        assert_untouched(
            &mut opt,
            &mut params,
            |o, p| list_inplace(o, p, &g),
            |e| {
                matches!(
                    e,
                    Error::LengthMismatch {
                        params: 2,
                        gradients: 1
                    }
                )
            },
        );

        // `step` on slot 0 with a shape that slot 0 does not have.
        let mut p = vec![Array1::zeros(4)];
        assert_untouched(
            &mut opt,
            &mut p,
            |o, p| o.step_inplace(p[0].view_mut(), Array1::zeros(4).view()),
            |e| {
                matches!(
                    e,
                    Error::StateMismatch(StateMismatch::Shape { slot: 0, .. })
                )
            },
        );

        // Invalid hyperparameters, on the allocating path too.
        for (bad_lr, name) in [
            (-1.0_f32, "base_lr"),
            (0.0, "base_lr"),
            (f32::NAN, "base_lr"),
            (f32::INFINITY, "base_lr"),
        ] {
            let mut o2 = opt.clone();
            Optimizer::<f32, Ix1>::set_learning_rate(&mut o2, bad_lr);
            assert_eq!(
                snapshot(&o2),
                snapshot(&opt),
                "an invalid rate must not touch alpha"
            );
            assert_untouched(
                &mut o2,
                &mut params,
                |o, p| list_inplace(o, p, &grads),
                |e| matches!(e, Error::InvalidHyperparameter { name: n, .. } if *n == name),
            );
            let plist: Vec<&Array1<f32>> = params.iter().collect();
            let glist: Vec<&Array1<f32>> = grads.iter().collect();
            assert!(o2.step_list(&plist, &glist).is_err());
            assert_eq!(snapshot(&o2), snapshot(&opt));
        }
        for bad in [-1e-3_f32, f32::NAN, f32::NEG_INFINITY] {
            let mut o2 = opt.clone().with_alpha_lr(bad);
            assert_untouched(
                &mut o2,
                &mut params,
                |o, p| list_inplace(o, p, &grads),
                |e| {
                    matches!(
                        e,
                        Error::InvalidHyperparameter {
                            name: "alpha_lr",
                            ..
                        }
                    )
                },
            );
        }
    }
}

#[test]
fn error_policy_names_slot_and_logical_index() {
    let (mut opt, mut params, mut grads) = two_slot_optimizer(NonFinitePolicy::Error);
    // Index 10 of 11: past the last full SIMD pack (8 lanes), in the tail.
    grads[1][10] = f32::NAN;
    assert_untouched(
        &mut opt,
        &mut params,
        |o, p| list_inplace(o, p, &grads),
        |e| *e == Error::NonFiniteGradient { slot: 1, index: 10 },
    );
    grads[1][10] = 1.0;
    grads[1][3] = f32::NEG_INFINITY;
    grads[1][9] = f32::INFINITY;
    assert_untouched(
        &mut opt,
        &mut params,
        |o, p| list_inplace(o, p, &grads),
        |e| *e == Error::NonFiniteGradient { slot: 1, index: 3 },
    );

    // The index is row-major whatever the memory order.
    let mut o = MetaSGD::new(0.1_f64).with_non_finite(NonFinitePolicy::Error);
    let mut g = Array2::<f64>::zeros((3, 4).f());
    g[[1, 2]] = f64::NAN;
    let p = Array2::<f64>::zeros((3, 4));
    assert_eq!(
        o.step(&p, &g).unwrap_err(),
        Error::NonFiniteGradient { slot: 0, index: 6 }
    );
    assert!(o.get_per_param_lr().is_none());
    assert_eq!(o.get_step_count(), 0);
}

#[test]
fn skip_policy_counts_and_changes_nothing() {
    let (mut opt, mut params, mut grads) = two_slot_optimizer(NonFinitePolicy::Skip);
    let (slots, steps, skipped) = snapshot(&opt);
    assert_eq!((steps, skipped), (1, 0));
    let before: Vec<Vec<u64>> = params.iter().map(|p| bits(p.iter())).collect();
    grads[1][10] = f32::INFINITY; // last array, SIMD tail
    list_inplace(&mut opt, &mut params, &grads).unwrap();
    assert_eq!(snapshot(&opt), (slots.clone(), 1, 1));
    assert_eq!(
        params.iter().map(|p| bits(p.iter())).collect::<Vec<_>>(),
        before
    );

    let plist: Vec<&Array1<f32>> = params.iter().collect();
    let glist: Vec<&Array1<f32>> = grads.iter().collect();
    let out = opt.step_list(&plist, &glist).unwrap();
    assert_eq!(
        out.iter().map(|p| bits(p.iter())).collect::<Vec<_>>(),
        before
    );
    assert_eq!(snapshot(&opt), (slots, 1, 2));

    // A clean step goes through again.
    grads[1][10] = 0.5;
    list_inplace(&mut opt, &mut params, &grads).unwrap();
    assert_eq!((opt.get_step_count(), opt.skipped_steps()), (2, 2));
}

#[test]
fn propagate_keeps_nan_in_alpha() {
    let mut opt = MetaSGD::new(0.1_f32);
    let mut p = Array1::from(vec![1.0_f32; 10]);
    let mut g = Array1::from(vec![0.5_f32; 10]);
    g[9] = f32::NAN;
    g[2] = f32::INFINITY;
    opt.step_inplace(p.view_mut(), g.view()).unwrap();
    g.fill(0.5);
    opt.step_inplace(p.view_mut(), g.view()).unwrap();
    let alpha = opt.get_per_param_lr().unwrap();
    assert!(
        alpha[9].is_nan() && p[9].is_nan(),
        "the clamp must not hide NaN"
    );
    // +inf: theta runs to -inf and alpha - inf * beta to -inf, clamped to LO.
    assert_eq!((p[2], alpha[2]), (f32::NEG_INFINITY, f32::LO));
    assert!(alpha[0].is_finite() && alpha[0] >= f32::LO);
}

#[test]
fn lists_keep_one_alpha_per_slot() {
    let shapes: [&[usize]; 3] = [&[3], &[2, 5], &[4, 1, 2]];
    let params: Vec<Array<f64, IxDyn>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Array::from_shape_vec(IxDyn(s), finite(s.iter().product(), i as u64)).unwrap()
        })
        .collect();
    let grads: Vec<Array<f64, IxDyn>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Array::from_shape_vec(IxDyn(s), finite(s.iter().product(), 9 + i as u64)).unwrap()
        })
        .collect();
    let mut opt = MetaSGD::new(0.3_f64).with_alpha_lr(0.7).with_inner_steps(3);
    let mut cur = params.clone();
    for _ in 0..3 {
        let pl: Vec<&Array<f64, IxDyn>> = cur.iter().collect();
        let gl: Vec<&Array<f64, IxDyn>> = grads.iter().collect();
        cur = opt.step_list(&pl, &gl).unwrap();
    }
    assert_eq!(
        opt.get_step_count(),
        3,
        "one step per call, whatever the list length"
    );
    assert_eq!(opt.per_param_lrs().len(), 3);
    for (j, s) in shapes.iter().enumerate() {
        // Each slot evolves exactly like its own single-array optimizer.
        let mut single = MetaSGD::new(0.3_f64).with_alpha_lr(0.7).with_inner_steps(3);
        let mut p = params[j].clone();
        for _ in 0..3 {
            p = single.step(&p, &grads[j]).unwrap();
        }
        assert_eq!(opt.per_param_lrs()[j].shape(), *s);
        assert_eq!(bits(cur[j].iter()), bits(p.iter()), "slot {j}");
        assert_eq!(
            bits(opt.per_param_lrs()[j].iter()),
            bits(single.get_per_param_lr().unwrap().iter())
        );
    }
    assert_eq!(opt.get_per_param_lr().unwrap(), &opt.per_param_lrs()[0]);
}

#[test]
fn reset_lets_the_next_step_start_over() {
    let mut opt = MetaSGD::new(0.1_f32).with_alpha_lr(1.0);
    let mut p = Array1::from(vec![1.0_f32; 6]);
    opt.step_inplace(p.view_mut(), Array1::from(vec![2.0_f32; 6]).view())
        .unwrap();
    assert_ne!(opt.get_per_param_lr().unwrap()[0], 0.1);
    opt.reset_per_param_lr();
    assert!(opt.get_per_param_lr().is_none());
    let mut q = Array1::from(vec![1.0_f32; 4]);
    opt.step_inplace(q.view_mut(), Array1::zeros(4).view())
        .unwrap();
    assert_eq!(
        bits(opt.get_per_param_lr().unwrap().iter()),
        bits([0.1_f32; 4].iter())
    );
    assert_eq!(opt.get_step_count(), 2);
}

#[test]
fn set_learning_rate_rescales_from_the_last_valid_rate() {
    let mut opt = MetaSGD::new(0.1_f32).with_alpha_lr(0.5);
    let mut p = Array1::from(finite::<f32>(13, 1));
    let mut g = Array1::from(finite::<f32>(13, 2));
    g[12] = f32::NAN; // one NaN alpha must stay NaN through rescaling
    opt.step_inplace(p.view_mut(), g.view()).unwrap();
    let alpha0 = opt.get_per_param_lr().unwrap().clone();

    let set = |o: &mut MetaSGD<f32>, v: f32| Optimizer::<f32, Ix1>::set_learning_rate(o, v);
    set(&mut opt, f32::NAN);
    assert!(
        Optimizer::<f32, Ix1>::get_learning_rate(&opt).is_nan(),
        "the invalid value is stored"
    );
    assert_eq!(
        bits(opt.get_per_param_lr().unwrap().iter()),
        bits(alpha0.iter())
    );
    set(&mut opt, 0.37);
    let f = 0.37_f32 / 0.1_f32; // from the last valid rate, computed once
    let want: Vec<f32> = alpha0.iter().map(|&a| clamp(a * f)).collect();
    assert_eq!(
        bits(opt.get_per_param_lr().unwrap().iter()),
        bits(want.iter())
    );
    assert!(opt.get_per_param_lr().unwrap()[12].is_nan());
    assert_eq!(opt.get_base_lr(), 0.37);

    // A huge factor hits the upper clamp, a tiny one the lower clamp.
    set(&mut opt, 1e30);
    assert!(
        opt.get_per_param_lr()
            .unwrap()
            .iter()
            .take(12)
            .all(|&a| a == f32::HI)
    );
    set(&mut opt, 1e-30);
    assert!(
        opt.get_per_param_lr()
            .unwrap()
            .iter()
            .take(12)
            .all(|&a| a == f32::LO)
    );
}

#[test]
fn defaults_and_builder() {
    let opt = MetaSGD::new(0.01_f64);
    assert_eq!(opt.get_alpha_lr(), 0.001);
    assert_eq!(opt.get_inner_steps(), 5);
    assert_eq!(opt.get_base_lr(), 0.01);
    assert_eq!(opt.get_backend(), metasgd::Backend::Auto);
    assert_eq!(opt.get_non_finite(), NonFinitePolicy::Propagate);
    assert_eq!(
        MetaSGD::new(0.01_f32).with_inner_steps(0).get_inner_steps(),
        1
    );
    assert_eq!(Optimizer::<f64, Ix1>::get_learning_rate(&opt), 0.01);
    // `inner_steps(0)` behaves exactly as 1.
    let (p, g) = (array![1.0_f64, -2.0], array![0.25_f64, 4.0]);
    let a = MetaSGD::new(0.1).with_inner_steps(0).step(&p, &g).unwrap();
    let b = MetaSGD::new(0.1).with_inner_steps(1).step(&p, &g).unwrap();
    assert_eq!(bits(a.iter()), bits(b.iter()));
}

#[test]
fn migration_path_compiles() {
    use metasgd::optimizers::{MetaSGD as M, Optimizer as O};
    let mut opt: M<f32> = M::new(0.01);
    let out = O::step(&mut opt, &array![1.0_f32], &array![0.1_f32]).unwrap();
    let d = 0.01_f32 * 0.1;
    assert_eq!(out[0].to_bits(), (1.0 - d - d - d - d - d).to_bits());
}
