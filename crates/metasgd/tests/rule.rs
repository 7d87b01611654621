//! The hypergradient rule through the optimizer: every backend, thread
//! count, layout and entry point (list, allocating, closure, per-tensor
//! slices) gives the bits of the rule's formula written out here; the
//! non-finite policies, `set_learning_rate`, checkpoints (round trip, resume,
//! single-bit flips, one rule never loading as the other) and serde.

mod common;

use common::*;
use metasgd::ndarray::{Array2, ArrayD, IxDyn, ShapeBuilder};
use metasgd::{Backend, Element, Error, MetaSGD, MetaSGDConfig, NonFinitePolicy, Optimizer, Rule};

fn rule<A: Element>() -> Rule<A> {
    Rule::Hypergradient {
        up: A::from(1.25).unwrap(),
        down: A::from(0.5).unwrap(),
        smoothing: A::from(0.75).unwrap(),
    }
}

/// The rule's formula, element by element (the oracle): `(theta, alpha, prev)`
/// after one step.
fn oracle<A: Element>(t: &[A], g: &[A], a: &[A], p: &[A], k: usize) -> [Vec<u64>; 3] {
    let Rule::Hypergradient {
        up,
        down,
        smoothing,
    } = rule::<A>()
    else {
        unreachable!()
    };
    let (mut t, mut a, mut p) = (t.to_vec(), a.to_vec(), p.to_vec());
    for i in 0..t.len() {
        let h = g[i] * p[i];
        let f = if h > A::zero() {
            up
        } else if h < A::zero() {
            down
        } else {
            A::one()
        };
        a[i] = metasgd::kernels::scalar::clamp(a[i] * f);
        let d = a[i] * g[i];
        for _ in 0..k {
            t[i] = t[i] - d;
        }
        p[i] = p[i] * smoothing + g[i] * (A::one() - smoothing);
    }
    [bits_of(&t), bits_of(&a), bits_of(&p)]
}

fn bits_of<A: Element>(v: &[A]) -> Vec<u64> {
    v.iter().map(|x| x.bits()).collect()
}

fn arr<A: Element>(shape: &[usize], seed: u64) -> ArrayD<A> {
    let n = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), finite::<A>(n, seed)).unwrap()
}

const SHAPES: [&[usize]; 4] = [&[3, 5], &[], &[70_001], &[0, 4]];

/// Three list steps on `backend` in a pool of `threads`: the state after each.
fn run_list<A: Element>(backend: Backend, threads: usize) -> Vec<[Vec<u64>; 3]>
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut opt = MetaSGD::new(A::from(0.01).unwrap())
        .with_inner_steps(2)
        .with_backend(backend)
        .with_rule(rule());
    let mut params: Vec<ArrayD<A>> = SHAPES.iter().map(|s| arr(s, 1)).collect();
    let mut out = Vec::new();
    for step in 0..3 {
        // Some gradients keep their sign from step to step, some flip.
        let grads: Vec<ArrayD<A>> = SHAPES
            .iter()
            .map(|s| arr::<A>(s, 10 + step % 2).mapv(|x| if step == 2 { -x } else { x }))
            .collect();
        pool.install(|| {
            let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
            let gv: Vec<_> = grads.iter().map(|g| g.view()).collect();
            opt.step_list_inplace(&mut views, &gv).unwrap();
        });
        let flat = |v: &[ArrayD<A>]| v.iter().flat_map(|a| a.iter().map(|x| x.bits())).collect();
        out.push([
            flat(&params),
            flat(opt.per_param_lrs()),
            flat(opt.previous_gradients()),
        ]);
    }
    out
}

fn oracle_list<A: Element>() -> Vec<[Vec<u64>; 3]> {
    let mut t: Vec<A> = SHAPES
        .iter()
        .flat_map(|s| arr::<A>(s, 1).into_iter())
        .collect();
    let mut a = vec![A::from(0.01).unwrap(); t.len()];
    let mut p = vec![A::zero(); t.len()];
    let mut out = Vec::new();
    for step in 0..3 {
        let g: Vec<A> = SHAPES
            .iter()
            .flat_map(|s| arr::<A>(s, 10 + step % 2).into_iter())
            .map(|x| if step == 2 { -x } else { x })
            .collect();
        let [nt, na, np] = oracle(&t, &g, &a, &p, 2);
        t = nt.iter().map(|&b| A::from_bits(b)).collect();
        a = na.iter().map(|&b| A::from_bits(b)).collect();
        p = np.iter().map(|&b| A::from_bits(b)).collect();
        out.push([nt, na, np]);
    }
    out
}

#[test]
fn every_backend_and_thread_count_is_the_formula() {
    fn run<A: Element>()
    where
        MetaSGD<A>: Optimizer<A, IxDyn>,
    {
        let want = oracle_list::<A>();
        for backend in available_backends() {
            for threads in [1, 2] {
                assert!(
                    run_list::<A>(backend, threads) == want,
                    "{backend:?} {threads} threads"
                );
            }
        }
    }
    run::<f32>();
    run::<f64>();
}

/// Fortran order, a strided view (every other column), the allocating step
/// and the closure step: the same bits as the contiguous in-place step.
#[test]
fn layouts_and_entry_points_agree() {
    let g = Array2::from_shape_vec((4, 6), finite::<f64>(24, 3)).unwrap();
    let t0 = Array2::from_shape_vec((4, 6), finite::<f64>(24, 4)).unwrap();
    let config = MetaSGDConfig::new(0.05)
        .with_inner_steps(1)
        .with_rule(rule());
    let contiguous = {
        let mut opt = MetaSGD::from_config(config);
        let mut t = t0.clone();
        for _ in 0..3 {
            opt.step_inplace(t.view_mut(), g.view()).unwrap();
        }
        (t, opt.per_param_lrs()[0].clone())
    };
    // Fortran order.
    let mut tf = Array2::zeros((4, 6).f());
    tf.assign(&t0);
    let mut gf = Array2::zeros((4, 6).f());
    gf.assign(&g);
    let mut opt = MetaSGD::from_config(config);
    for _ in 0..3 {
        opt.step_inplace(tf.view_mut(), gf.view()).unwrap();
    }
    assert_eq!(bits(tf.view()), bits(contiguous.0.view()));
    assert_eq!(
        bits(opt.per_param_lrs()[0].view()),
        bits(contiguous.1.view())
    );
    // Every other column of a wider matrix (the strided fallback), NaN around it.
    let mut wide = Array2::from_elem((4, 12), f64::NAN);
    let mut gw = Array2::from_elem((4, 12), f64::NAN);
    let cols = metasgd::ndarray::s![.., ..;2];
    wide.slice_mut(cols).assign(&t0);
    gw.slice_mut(cols).assign(&g);
    let mut opt = MetaSGD::from_config(config);
    for _ in 0..3 {
        opt.step_inplace(wide.slice_mut(cols), gw.slice(cols))
            .unwrap();
    }
    assert_eq!(bits(wide.slice(cols)), bits(contiguous.0.view()));
    assert!(
        wide.slice(metasgd::ndarray::s![.., 1..;2])
            .iter()
            .all(|x| x.is_nan())
    );
    // The allocating step.
    let mut opt = MetaSGD::from_config(config);
    let mut t = t0.clone();
    for _ in 0..3 {
        t = opt.step(&t, &g).unwrap();
    }
    assert_eq!(bits(t.view()), bits(contiguous.0.view()));
    // The closure step: 3 inner iterations with the same gradient are 3 steps.
    let mut opt = MetaSGD::from_config(config.with_inner_steps(3));
    let t = opt.step_with_closure(&t0, |_| Ok(g.clone())).unwrap();
    assert_eq!(bits(t.view()), bits(contiguous.0.view()));
    assert_eq!(
        bits(opt.per_param_lrs()[0].view()),
        bits(contiguous.1.view())
    );
    assert_eq!(opt.get_step_count(), 1);
    // The per-tensor slices of an adapter: the rule needs its state there.
    let (mut th, mut al) = (vec![1.0_f64; 3], vec![0.1; 3]);
    assert!(config.step_slices(&mut th, &mut al, &[1.0; 3]).is_err());
    assert_eq!(th, [1.0; 3]);
}

#[test]
fn non_finite_policies_keep_the_rule_state() {
    let shape = [5];
    let mut bad = arr::<f32>(&shape, 5);
    bad[[2]] = f32::NAN;
    for policy in [NonFinitePolicy::Skip, NonFinitePolicy::Error] {
        let mut opt = MetaSGD::new(0.1_f32)
            .with_rule(rule())
            .with_non_finite(policy);
        let mut t = arr::<f32>(&shape, 1);
        opt.step_inplace(t.view_mut(), arr::<f32>(&shape, 2).view())
            .unwrap();
        let before = (
            opt.per_param_lrs().to_vec(),
            opt.previous_gradients().to_vec(),
            t.clone(),
        );
        let r = opt.step_inplace(t.view_mut(), bad.view());
        assert_eq!(r.is_err(), policy == NonFinitePolicy::Error);
        let after = (
            opt.per_param_lrs().to_vec(),
            opt.previous_gradients().to_vec(),
            t.clone(),
        );
        assert_eq!(bits_all(&before), bits_all(&after), "{policy:?}");
    }
    // Propagate: the NaN element's rate stays, its parameter and previous
    // gradient become NaN, and the next step's factor there is 1.
    let mut opt = MetaSGD::new(0.1_f32).with_inner_steps(1).with_rule(rule());
    let mut t = arr::<f32>(&shape, 1);
    opt.step_inplace(t.view_mut(), bad.view()).unwrap();
    assert!(t[[2]].is_nan() && opt.previous_gradients()[0][[2]].is_nan());
    assert_eq!(opt.per_param_lrs()[0][[2]], 0.1);
    opt.step_inplace(t.view_mut(), arr::<f32>(&shape, 2).view())
        .unwrap();
    assert_eq!(opt.per_param_lrs()[0][[2]], 0.1);
}

fn bits_all(s: &(Vec<ArrayD<f32>>, Vec<ArrayD<f32>>, ArrayD<f32>)) -> Vec<u64> {
    s.0.iter()
        .chain(&s.1)
        .chain([&s.2])
        .flat_map(|a| a.iter().map(|x| x.bits()))
        .collect()
}

#[test]
fn set_learning_rate_rescales_rates_not_state() {
    let mut opt = MetaSGD::new(0.1_f64).with_rule(rule());
    let mut t = arr::<f64>(&[4], 1);
    opt.step_inplace(t.view_mut(), arr::<f64>(&[4], 2).view())
        .unwrap();
    let (rates, prev) = (
        opt.per_param_lrs()[0].clone(),
        opt.previous_gradients()[0].clone(),
    );
    Optimizer::<f64, IxDyn>::set_learning_rate(&mut opt, 0.2);
    let mut want = rates.clone();
    metasgd::rescale_rates(want.as_slice_mut().unwrap(), 0.1, 0.2);
    assert_eq!(opt.per_param_lrs()[0], want);
    assert_eq!(opt.previous_gradients()[0], prev);
}

#[test]
fn checkpoints_resume_bitwise_and_refuse_damage() {
    let shapes: [&[usize]; 2] = [&[3, 2], &[5]];
    let grads = |s: u64| -> Vec<ArrayD<f32>> { shapes.iter().map(|sh| arr(sh, s)).collect() };
    let step = |opt: &mut MetaSGD<f32>, params: &mut Vec<ArrayD<f32>>, s: u64| {
        let g = grads(s);
        let mut v: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
        let gv: Vec<_> = g.iter().map(|g| g.view()).collect();
        opt.step_list_inplace(&mut v, &gv).unwrap();
    };
    let mut opt = MetaSGD::new(0.02_f32).with_rule(rule());
    let mut params: Vec<ArrayD<f32>> = shapes.iter().map(|s| arr(s, 1)).collect();
    step(&mut opt, &mut params, 2);
    let bytes = opt.state_bytes();
    let mut resumed = MetaSGD::<f32>::from_state_bytes(&bytes).unwrap();
    assert_eq!(resumed.config(), opt.config());
    let mut params2 = params.clone();
    for s in [3, 4] {
        step(&mut opt, &mut params, s);
        step(&mut resumed, &mut params2, s);
    }
    assert_eq!(params, params2);
    assert_eq!(resumed.per_param_lrs(), opt.per_param_lrs());
    assert_eq!(resumed.previous_gradients(), opt.previous_gradients());
    // Every single-bit flip is refused or loads as the very same state.
    for i in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[i / 8] ^= 1 << (i % 8);
        if let Ok(o) = MetaSGD::<f32>::from_state_bytes(&b) {
            assert!(
                o.same_settings(&MetaSGD::<f32>::from_state_bytes(&bytes).unwrap()),
                "bit {i}"
            );
            assert_eq!(o.previous_gradients().len(), 2, "bit {i}");
        }
    }
    // A reference file has no rule entries; the hypergradient file loads
    // with its rule, never as the reference.
    let reference = MetaSGD::<f32>::new(0.02).state_bytes();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&reference).unwrap();
    assert!(!meta.metadata().as_ref().unwrap().contains_key("rule"));
    let loaded = MetaSGD::<f32>::from_state_bytes(&bytes).unwrap();
    assert!(matches!(loaded.config().rule, Rule::Hypergradient { .. }));
}

#[test]
fn bad_rule_settings_are_refused_before_anything_moves() {
    let bad = [
        (0.9, 0.5, 0.0),
        (1.1, 0.0, 0.0),
        (1.1, 1.5, 0.0),
        (f64::NAN, 0.5, 0.0),
        (11.0, 0.05, 0.0),
        (1.1, 0.95, 0.0),
        (1.1, 0.5, 1.0),
        (1.1, 0.5, -0.1),
    ];
    for (up, down, smoothing) in bad {
        let rule = Rule::Hypergradient {
            up,
            down,
            smoothing,
        };
        let mut opt = MetaSGD::new(0.1_f64).with_rule(rule);
        let mut t = arr::<f64>(&[3], 1);
        let before = t.clone();
        let e = opt
            .step_inplace(t.view_mut(), arr::<f64>(&[3], 2).view())
            .unwrap_err();
        assert!(matches!(e, Error::InvalidHyperparameter { .. }), "{e}");
        assert_eq!(t, before);
        assert!(opt.per_param_lrs().is_empty());
    }
}

/// Gradient clipping: one list step equals the unclipped step on gradients
/// scaled by hand by `c / ||g||` (the norm in the documented order), on every
/// backend and thread count, under both rules.
#[test]
fn clipping_is_the_scaled_step() {
    use metasgd::kernels::Kernel;
    let shapes: [&[usize]; 3] = [&[5, 7], &[40_000], &[3]];
    let grads: Vec<ArrayD<f32>> = shapes.iter().map(|s| arr(s, 21)).collect();
    let params0: Vec<ArrayD<f32>> = shapes.iter().map(|s| arr(s, 22)).collect();
    let norm = grads
        .iter()
        .fold(0.0_f32, |s, g| {
            s + metasgd::kernels::norm::squared_norm(Kernel::Scalar, g.as_slice().unwrap())
        })
        .sqrt();
    let c = norm / 3.0;
    let scale = c / norm;
    for rule in [Rule::Reference, rule::<f32>()] {
        let base = MetaSGDConfig::new(0.05_f32)
            .with_rule(rule)
            .with_inner_steps(2);
        let run = |config: MetaSGDConfig<f32>, g: &[ArrayD<f32>], backend, threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut opt = MetaSGD::from_config(config.with_backend(backend));
            let mut p = params0.clone();
            for _ in 0..2 {
                pool.install(|| {
                    let mut v: Vec<_> = p.iter_mut().map(|p| p.view_mut()).collect();
                    let gv: Vec<_> = g.iter().map(|g| g.view()).collect();
                    opt.step_list_inplace(&mut v, &gv).unwrap();
                });
            }
            let flat = |v: &[ArrayD<f32>]| -> Vec<u64> {
                v.iter().flat_map(|a| a.iter().map(|x| x.bits())).collect()
            };
            [flat(&p), flat(opt.per_param_lrs())]
        };
        let scaled: Vec<ArrayD<f32>> = grads.iter().map(|g| g.mapv(|x| x * scale)).collect();
        let want = run(base, &scaled, Backend::Scalar, 1);
        for backend in available_backends() {
            for threads in [1, 2] {
                let got = run(base.with_max_grad_norm(c), &grads, backend, threads);
                assert!(got == want, "{rule:?} {backend:?} {threads}T");
            }
        }
        // A norm under the bound leaves the gradients as they are.
        let big = run(
            base.with_max_grad_norm(norm * 2.0),
            &grads,
            Backend::Auto,
            2,
        );
        assert!(
            big == run(base, &grads, Backend::Auto, 2),
            "{rule:?}: under the bound"
        );
    }
}

#[test]
fn clipping_follows_the_non_finite_policy() {
    // Finite gradients whose squares overflow: an infinite norm.
    let g = ArrayD::from_elem(IxDyn(&[4]), 1e30_f32);
    let config = MetaSGDConfig::new(0.1_f32).with_max_grad_norm(1.0);
    let mut opt = MetaSGD::from_config(config.with_non_finite(NonFinitePolicy::Error));
    let mut t = arr::<f32>(&[4], 1);
    let before = t.clone();
    let e = opt.step_inplace(t.view_mut(), g.view()).unwrap_err();
    assert!(matches!(e, Error::NonFiniteGradNorm { .. }), "{e}");
    assert_eq!(t, before);
    let mut opt = MetaSGD::from_config(config.with_non_finite(NonFinitePolicy::Skip));
    opt.step_inplace(t.view_mut(), g.view()).unwrap();
    assert_eq!((opt.skipped_steps(), opt.get_step_count()), (1, 0));
    assert_eq!(t, before);
    // Propagate: scaled by c / inf = 0, nothing moves but the count.
    let mut opt = MetaSGD::from_config(config);
    opt.step_inplace(t.view_mut(), g.view()).unwrap();
    assert_eq!(t, before);
    assert_eq!(opt.get_step_count(), 1);
    // A bound that is not finite and > 0 is refused.
    let mut opt = MetaSGD::new(0.1_f32).with_max_grad_norm(0.0);
    assert!(opt.step_inplace(t.view_mut(), g.view()).is_err());
}

#[test]
fn clipping_is_saved_and_loaded() {
    let opt = MetaSGD::new(0.1_f64)
        .with_max_grad_norm(2.5)
        .with_rule(rule());
    let back = MetaSGD::<f64>::from_state_bytes(&opt.state_bytes()).unwrap();
    assert_eq!(back.config(), opt.config());
    assert!(back.same_settings(&opt));
}
