//! Every backend through the public API against the element-wise oracle, bit for bit.

mod common;

use common::*;
use metasgd::Element;
use metasgd::ndarray::{Array1, ArrayD};
use metasgd::{Error, MetaSGD, Optimizer};
use proptest::prelude::*;

fn value<A: Element>() -> impl Strategy<Value = A> {
    let s = specials::<A>();
    prop_oneof![
        8 => (-4.0f64..4.0).prop_map(|x| A::from(x).unwrap()),
        1 => (0..s.len()).prop_map(move |i| s[i]),
    ]
}

fn length() -> impl Strategy<Value = usize> {
    // 0, 1, lanes - 1, lanes, lanes + 1 for 4 and 8 lanes, and longer.
    prop_oneof![0usize..18, Just(31), Just(32), Just(33), 18usize..200]
}

fn alpha_lr() -> impl Strategy<Value = f64> {
    // 0 and tiny keep alpha put; 1e3 and 1e30 drive it to both clamps.
    prop_oneof![
        Just(0.0),
        Just(1e-3),
        Just(0.7),
        Just(1e3),
        Just(1e30),
        0.0f64..3.0
    ]
}

/// Three steps of every backend, allocating and in place, against the oracle.
fn check<A: Element>(t: Vec<A>, g1: Vec<A>, g2: Vec<A>, base: f64, lr: f64, k: usize)
where
    MetaSGD<A>: Optimizer<A, metasgd::ndarray::Ix1>,
{
    let (base, lr) = (A::from(base).unwrap(), A::from(lr).unwrap());
    let theta0 = Array1::from(t);
    let grads = [Array1::from(g1.clone()), Array1::from(g2), Array1::from(g1)];

    // Oracle: three steps.
    let mut want_t = theta0.clone();
    let mut want_a: ArrayD<A> = ArrayD::from_elem(vec![theta0.len()], base);
    for g in &grads {
        let (t, a) = oracle(&want_t.view(), &g.view(), &want_a, lr, k);
        want_t = Array1::from(t);
        want_a = ArrayD::from_shape_vec(vec![theta0.len()], a).unwrap();
    }

    for backend in available_backends() {
        let mk = || {
            MetaSGD::new(base)
                .with_alpha_lr(lr)
                .with_inner_steps(k)
                .with_backend(backend)
        };
        let (mut alloc, mut inplace) = (mk(), mk());
        let mut a_t = theta0.clone();
        let mut i_t = theta0.clone();
        for g in &grads {
            a_t = alloc.step(&a_t, g).unwrap();
            inplace.step_inplace(i_t.view_mut(), g.view()).unwrap();
        }
        for (name, t, opt) in [("step", &a_t, &alloc), ("step_inplace", &i_t, &inplace)] {
            assert_eq!(
                bits(t.iter()),
                bits(want_t.iter()),
                "{backend:?} {name}: theta"
            );
            let alpha = opt.get_per_param_lr().unwrap();
            assert_eq!(
                bits(alpha.iter()),
                bits(want_a.iter()),
                "{backend:?} {name}: alpha"
            );
            assert_eq!(opt.get_step_count(), 3);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn f32_backends_match_oracle(
        (t, g1, g2) in length().prop_flat_map(|n| (
            prop::collection::vec(value::<f32>(), n),
            prop::collection::vec(value::<f32>(), n),
            prop::collection::vec(value::<f32>(), n),
        )),
        base in prop_oneof![Just(1e-9f64), Just(0.01), Just(9.5), 1e-4f64..2.0],
        lr in alpha_lr(),
        k in 1usize..8,
    ) {
        check::<f32>(t, g1, g2, base, lr, k);
    }

    #[test]
    fn f64_backends_match_oracle(
        (t, g1, g2) in length().prop_flat_map(|n| (
            prop::collection::vec(value::<f64>(), n),
            prop::collection::vec(value::<f64>(), n),
            prop::collection::vec(value::<f64>(), n),
        )),
        base in prop_oneof![Just(1e-9f64), Just(0.01), Just(9.5), 1e-4f64..2.0],
        lr in alpha_lr(),
        k in 1usize..8,
    ) {
        check::<f64>(t, g1, g2, base, lr, k);
    }
}

#[test]
fn large_arrays_cross_parallel_chunks() {
    // Above the parallel threshold, across several chunks, with a ragged tail.
    let n = 4 * metasgd::kernels::par::PAR_CHUNK + 5;
    check::<f32>(filled(n, 1), filled(n, 2), filled(n, 3), 0.05, 0.5, 5);
    check::<f64>(filled(n, 4), filled(n, 5), filled(n, 6), 0.05, 1e3, 2);
}

#[test]
fn compiled_out_backends_are_clear_errors() {
    for backend in missing_backends() {
        let mut opt = MetaSGD::new(0.1_f32).with_backend(backend);
        let mut p = Array1::from(vec![1.0_f32; 4]);
        let before = p.clone();
        let err = opt.step_inplace(p.view_mut(), Array1::from(vec![0.5_f32; 4]).view());
        assert!(matches!(err, Err(Error::BackendUnavailable { backend: b, .. }) if b == backend));
        assert_eq!(p, before);
        assert_eq!(opt.get_step_count(), 0);
        assert!(opt.get_per_param_lr().is_none());
    }
}
