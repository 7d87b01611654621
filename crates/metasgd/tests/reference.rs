//! The library against a transcription of the reference crate's step.
//!
//! `reference_step` restates optirs-core 0.3.1's `MetaSGD::step`
//! (src/optimizers/meta_sgd.rs, Apache-2.0) operation for operation with
//! ndarray arithmetic: the same operand order, one temporary per operation,
//! delta recomputed in every inner step. It shares no code with the kernels,
//! so it checks the scalar reference as well as the fast paths.

mod common;

use common::*;
use metasgd::Element;
use metasgd::ndarray::{Array, ArrayD, IxDyn};
use metasgd::{MetaSGD, Optimizer};

/// One optirs-core step: returns `(params', per_param_lr')`.
fn reference_step<A: Element + metasgd::ndarray::ScalarOperand>(
    params: &ArrayD<A>,
    gradients: &ArrayD<A>,
    per_param_lr: &ArrayD<A>,
    alpha_lr: A,
    inner_steps: usize,
) -> (ArrayD<A>, ArrayD<A>) {
    let min_lr = A::from(1e-8).unwrap();
    let max_lr = A::from(10.0).unwrap();
    let mut adapted_params = params.clone();
    let mut cumulative_delta = Array::<A, IxDyn>::zeros(params.raw_dim());
    for _ in 0..inner_steps {
        let delta = per_param_lr * gradients;
        cumulative_delta = &cumulative_delta + &delta;
        adapted_params = &adapted_params - &delta;
    }
    let meta_gradient = gradients * &cumulative_delta;
    let mut updated_lr = per_param_lr - &(&meta_gradient * alpha_lr);
    updated_lr.mapv_inplace(|v| {
        if v < min_lr {
            min_lr
        } else if v > max_lr {
            max_lr
        } else {
            v
        }
    });
    (adapted_params, updated_lr)
}

fn check<A: Element + metasgd::ndarray::ScalarOperand>(shape: &[usize], seed: u64)
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let n: usize = shape.iter().product();
    let arr = |s: u64| Array::from_shape_vec(IxDyn(shape), filled::<A>(n, s)).unwrap();
    let theta0 = arr(seed);
    let grads = [arr(seed + 1), arr(seed + 2), arr(seed + 3)];
    for (base, lr, k) in [
        (0.01, 0.001, 5),
        (0.3, 0.7, 1),
        (9.0, 1e3, 3),
        (1e-3, 0.0, 8),
        (20.0, 0.5, 2),
    ] {
        let (base, lr) = (A::from(base).unwrap(), A::from(lr).unwrap());
        let mut want_t = theta0.clone();
        let mut want_a = Array::from_elem(IxDyn(shape), base);
        for g in &grads {
            (want_t, want_a) = reference_step(&want_t, g, &want_a, lr, k);
        }
        for backend in available_backends() {
            let mut opt = MetaSGD::new(base)
                .with_alpha_lr(lr)
                .with_inner_steps(k)
                .with_backend(backend);
            let mut t = theta0.clone();
            for g in &grads {
                t = opt.step(&t, g).unwrap();
            }
            let what = format!("{backend:?}, shape {shape:?}, K = {k}");
            assert_eq!(bits(t.iter()), bits(want_t.iter()), "theta, {what}");
            assert_eq!(
                bits(opt.get_per_param_lr().unwrap().iter()),
                bits(want_a.iter()),
                "alpha, {what}"
            );
        }
    }
}

#[test]
fn matches_the_reference_transcription() {
    for (i, shape) in [
        &[0][..],
        &[1],
        &[7],
        &[8],
        &[9],
        &[3, 5],
        &[2, 3, 37],
        &[70_001],
    ]
    .iter()
    .enumerate()
    {
        check::<f32>(shape, 10 * i as u64);
        check::<f64>(shape, 10 * i as u64 + 5);
    }
}
