//! The burn adapter against the core optimizer: the same bits, the same
//! buffers, burn's records, and bad input refused with nothing changed.

use burn::backend::Flex;
use burn::module::Param;
use burn::optim::{
    GradientsParams, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource,
};
use burn::tensor::{DType, Device, Tensor, TensorData};
use metasgd_burn::{Error, MetaSGD};
use metasgd_core::{NonFinitePolicy, Optimizer as _, Verdict};
use ndarray::{ArrayD, IxDyn};

mod common;
use common::*;

/// The same steps with `metasgd_core::MetaSGD::step_list_inplace` on ndarray
/// copies of the same numbers; `lrs` are the base rates of each step (a
/// change goes through `set_learning_rate`).
fn core_run<A: metasgd_kernels::Element + burn::tensor::Element>(
    dtype: DType,
    lrs: &[f64],
    config: metasgd_core::MetaSGD<A>,
) -> (Vec<Vec<A>>, Vec<Vec<A>>, usize)
where
    metasgd_core::MetaSGD<A>: metasgd_core::Optimizer<A, IxDyn>,
{
    let n = net(dtype);
    let shapes: [Vec<usize>; 3] = [vec![7, 5], vec![5], vec![2, 3, 4]];
    let mut ps: Vec<ArrayD<A>> = params::<A>(&n)
        .into_iter()
        .zip(&shapes)
        .map(|(v, s)| ArrayD::from_shape_vec(IxDyn(s), v).unwrap())
        .collect();
    let mut opt = config;
    opt.set_learning_rate(A::from(lrs[0]).unwrap());
    for (step, lr) in lrs.iter().enumerate() {
        opt.set_learning_rate(A::from(*lr).unwrap());
        let g = grads(&n, step as u64, dtype);
        let gs: Vec<ArrayD<A>> = ids(&n)
            .iter()
            .zip(&shapes)
            .map(|(id, s)| {
                let v: Vec<A> = match s.len() {
                    2 => flat(g.get::<2>(*id).unwrap()),
                    1 => flat(g.get::<1>(*id).unwrap()),
                    _ => flat(g.get::<3>(*id).unwrap()),
                };
                ArrayD::from_shape_vec(IxDyn(s), v).unwrap()
            })
            .collect();
        let mut views: Vec<_> = ps.iter_mut().map(|p| p.view_mut()).collect();
        let gv: Vec<_> = gs.iter().map(|g| g.view()).collect();
        opt.step_list_inplace(&mut views, &gv).unwrap();
    }
    let rates = opt
        .per_param_lrs()
        .iter()
        .map(|a| a.iter().copied().collect())
        .collect();
    let out = ps.iter().map(|p| p.iter().copied().collect()).collect();
    (out, rates, opt.get_step_count())
}

fn burn_run(meta: &MetaSGD, dtype: DType, lrs: &[f64]) -> (Net, ModuleOptimizer) {
    let mut n = net(dtype);
    let mut optim = meta.init();
    for (step, lr) in lrs.iter().enumerate() {
        let g = grads(&n, step as u64, dtype);
        n = optim.step(*lr, n, g);
    }
    (n, optim)
}

/// The same steps through the trait's per-tensor `step` directly (what
/// `ModuleOptimizer` calls), keeping the states: (parameters, rates, steps).
fn direct_run<A: burn::tensor::Element + Copy>(
    meta: &MetaSGD,
    dtype: DType,
    lrs: &[f64],
) -> (Vec<Vec<A>>, Vec<Vec<A>>, Vec<u64>) {
    let n = net(dtype);
    let (mut w, mut b, mut s) = (n.w.val().inner(), n.b.val().inner(), n.s.val().inner());
    let (mut sw, mut sb, mut ss) = (None, None, None);
    for (step, lr) in lrs.iter().enumerate() {
        let g = grads(&n, step as u64, dtype);
        (w, sw) = Optimizer::step(meta, *lr, w, g.get::<2>(n.w.id).unwrap(), sw);
        (b, sb) = Optimizer::step(meta, *lr, b, g.get::<1>(n.b.id).unwrap(), sb);
        (s, ss) = Optimizer::step(meta, *lr, s, g.get::<3>(n.s.id).unwrap(), ss);
    }
    let (sw, sb, ss) = (sw.unwrap(), sb.unwrap(), ss.unwrap());
    (
        vec![flat(w), flat(b), flat(s)],
        vec![flat(sw.rates), flat(sb.rates), flat(ss.rates)],
        vec![sw.steps, sb.steps, ss.steps],
    )
}

fn check_bitwise<A>(dtype: DType)
where
    A: metasgd_kernels::Element + burn::tensor::Element,
    metasgd_core::MetaSGD<A>: metasgd_core::Optimizer<A, IxDyn>,
{
    check_bitwise_under::<A>(dtype, metasgd_core::Rule::Reference);
}

/// Burn's module step and its per-tensor step against the core optimizer
/// under `rule`, with a schedule that changes the rate.
fn check_bitwise_under<A>(dtype: DType, rule: metasgd_core::Rule<f64>)
where
    A: metasgd_kernels::Element + burn::tensor::Element,
    metasgd_core::MetaSGD<A>: metasgd_core::Optimizer<A, IxDyn>,
{
    // Three inner steps, a schedule that halves the rate after two steps.
    let lrs = [0.05, 0.05, 0.025, 0.025, 0.1];
    let settings = metasgd_core::MetaSGDConfig::<f64>::default()
        .with_alpha_lr(0.01)
        .with_inner_steps(3)
        .with_rule(rule);
    let meta = MetaSGD::new(settings);
    let config = metasgd_core::MetaSGD::from_config(
        settings.cast::<A>().with_base_lr(A::from(lrs[0]).unwrap()),
    );
    let (want, want_rates, steps) = core_run::<A>(dtype, &lrs, config);
    assert_eq!(steps, lrs.len());
    let (n, _) = burn_run(&meta, dtype, &lrs);
    assert_eq!(bits(&params::<A>(&n)), bits(&want));
    let (p, rates, counts) = direct_run::<A>(&meta, dtype, &lrs);
    assert_eq!(bits(&p), bits(&want));
    assert_eq!(bits(&rates), bits(&want_rates));
    assert_eq!(counts, [lrs.len() as u64; 3]);
    assert!(meta.take_errors().is_empty());
}

#[test]
fn the_hypergradient_rule_is_bitwise_the_core_optimizers() {
    let rule = metasgd_core::Rule::Hypergradient {
        up: 1.25,
        down: 0.5,
        smoothing: 0.0,
    };
    check_bitwise_under::<f32>(DType::F32, rule);
    check_bitwise_under::<f64>(DType::F64, rule);
}

#[test]
fn bitwise_equal_to_the_core_optimizer_f32() {
    check_bitwise::<f32>(DType::F32);
}

#[test]
fn bitwise_equal_to_the_core_optimizer_f64() {
    check_bitwise::<f64>(DType::F64);
}

fn address<const D: usize>(t: &Tensor<D>) -> usize {
    let p = t.clone().inner().try_into_primitive::<Flex>().unwrap();
    p.bytes().as_ptr() as usize
}

#[test]
fn flex_parameters_are_updated_in_their_own_buffers() {
    let meta = MetaSGD::new(metasgd_core::MetaSGDConfig::<f64>::default());
    let mut optim = meta.init();
    let mut n = net(DType::F32);
    for step in 0..3 {
        let before = [address(&n.w.val()), address(&n.b.val())];
        let g = grads(&n, step, DType::F32);
        let old = params::<f32>(&n);
        n = optim.step(0.01, n, g);
        assert_ne!(params::<f32>(&n), old, "step {step} changed nothing");
        assert_eq!([address(&n.w.val()), address(&n.b.val())], before);
    }
    assert!(meta.take_errors().is_empty());
}

#[test]
fn a_record_saved_with_burn_reloads_to_the_same_next_steps() {
    record_round_trip(metasgd_core::Rule::Reference, "reference");
}

#[test]
fn a_record_carries_the_hypergradient_rules_state() {
    let rule = metasgd_core::Rule::Hypergradient {
        up: 1.25,
        down: 0.5,
        smoothing: 0.75,
    };
    record_round_trip(rule, "hypergradient");
}

/// Three steps under `rule`, burn's record saved and loaded into a fresh
/// optimizer: the next steps are bitwise those of the original.
fn record_round_trip(rule: metasgd_core::Rule<f64>, tag: &str) {
    let meta = MetaSGD::new(
        metasgd_core::MetaSGDConfig::<f64>::default()
            .with_alpha_lr(0.05)
            .with_inner_steps(2)
            .with_rule(rule),
    );
    let (n, optim) = burn_run(&meta, DType::F32, &[0.1, 0.1, 0.05]);
    let dir = std::env::temp_dir().join(format!("metasgd-burn-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("optim.bpk");
    optim.save(&path).unwrap();
    let copy = Net {
        w: Param::initialized(n.w.id, n.w.val()),
        b: Param::initialized(n.b.id, n.b.val()),
        s: Param::initialized(n.s.id, n.s.val()),
    };
    let mut loaded = meta.init().load(&path).unwrap();
    let mut original = optim;
    let (mut a, mut b) = (n, copy);
    for step in 3..6 {
        let (ga, gb) = (grads(&a, step, DType::F32), grads(&b, step, DType::F32));
        a = original.step(0.05, a, ga);
        b = loaded.step(0.05, b, gb);
        assert_eq!(bits(&params::<f32>(&a)), bits(&params::<f32>(&b)));
    }
    // Without the record the next steps differ (the rates were learned).
    let mut fresh = meta.init();
    let c = fresh.step(0.05, b.clone(), grads(&b, 6, DType::F32));
    let g = grads(&b, 6, DType::F32);
    let b = loaded.step(0.05, b, g);
    assert_ne!(bits(&params::<f32>(&c)), bits(&params::<f32>(&b)));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Steps one bad input (parameter `bad`) and checks that `check` refuses
/// the whole step, that burn's step leaves that parameter unchanged (the
/// others step: burn steps one parameter at a time) and that the error says
/// why.
fn refused(n: Net, g: GradientsParams, bad: usize, expect: &str) {
    let meta = MetaSGD::new(metasgd_core::MetaSGDConfig::<f64>::default());
    let mut optim = meta.init();
    let before = bits(&params::<f32>(&n));
    let err = meta.check(0.01, &n, &g).unwrap_err();
    assert!(err.to_string().contains(expect), "{err}");
    let n = optim.step(0.01, n, g);
    let errors = meta.take_errors();
    assert!(
        errors.iter().any(|e| e.to_string().contains(expect)),
        "{errors:?}"
    );
    let after = bits(&params::<f32>(&n));
    for (j, (a, b)) in after.iter().zip(&before).enumerate() {
        assert_eq!(a == b, j == bad, "parameter {j}");
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    // A gradient of another shape.
    let n = net(DType::F32);
    let mut g = grads(&n, 0, DType::F32);
    g.remove::<1>(n.b.id);
    g.register(n.b.id, tensor([4], 9, DType::F32));
    refused(n, g, 1, "the gradient has shape [4], the parameter [5]");

    // A gradient of another dtype.
    let n = net(DType::F32);
    let mut g = grads(&n, 0, DType::F32);
    g.remove::<2>(n.w.id);
    g.register(n.w.id, tensor([7, 5], 9, DType::F64));
    refused(n, g, 0, "the gradient has dtype F64, the parameter F32");

    // Half precision parameters (the adapter steps f32 and f64).
    let meta = MetaSGD::new(metasgd_core::MetaSGDConfig::<f64>::default());
    let mut optim = meta.init();
    let n = net(DType::F16);
    let g = grads(&n, 0, DType::F16);
    let before: Vec<u64> = flat::<f32, 2>(n.w.val().cast(DType::F32))
        .iter()
        .map(|x| x.to_bits() as u64)
        .collect();
    assert!(
        meta.check(0.01, &n, &g)
            .unwrap_err()
            .to_string()
            .contains("dtype F16")
    );
    let n = optim.step(0.01, n, g);
    let after: Vec<u64> = flat::<f32, 2>(n.w.val().cast(DType::F32))
        .iter()
        .map(|x| x.to_bits() as u64)
        .collect();
    assert_eq!(before, after);
    assert_eq!(meta.take_errors().len(), 3);
    assert!(optim.to_record().is_empty(), "a refused step created state");
}

#[test]
fn invalid_settings_and_rates_are_refused() {
    let n = net(DType::F32);
    let before = bits(&params::<f32>(&n));
    let meta = MetaSGD::new(metasgd_core::MetaSGDConfig::<f64>::default().with_alpha_lr(-1.0));
    let mut optim = meta.init();
    let g = grads(&n, 0, DType::F32);
    assert!(matches!(meta.check(0.01, &n, &g), Err(Error::Step { .. })));
    let n = optim.step(0.01, n, g);
    assert_eq!(bits(&params::<f32>(&n)), before);
    assert!(meta.take_errors()[0].to_string().contains("alpha_lr"));

    // A zero base rate from a scheduler is refused; the learned rates stay:
    // the next valid step is the one of a run that never saw it.
    let meta = MetaSGD::new(metasgd_core::MetaSGDConfig::<f64>::default());
    let (n, mut optim) = burn_run(&meta, DType::F32, &[0.01]);
    let p = params::<f32>(&n);
    let g = grads(&n, 1, DType::F32);
    let n = optim.step(0.0, n, g);
    assert_eq!(bits(&params::<f32>(&n)), bits(&p));
    assert_eq!(meta.take_errors().len(), 3);
    let g = grads(&n, 1, DType::F32);
    let n = optim.step(0.01, n, g);
    let (want, _) = burn_run(&meta, DType::F32, &[0.01, 0.01]);
    assert_eq!(bits(&params::<f32>(&n)), bits(&params::<f32>(&want)));
}

/// A state flattened as burn's record does, with `edit` applied to its
/// leaves, rebuilt as burn's loader does.
fn reloaded(
    state: &metasgd_burn::MetaSGDState<2>,
    edit: impl FnOnce(&mut StateSink),
) -> Option<metasgd_burn::MetaSGDState<2>> {
    let mut sink = StateSink::default();
    state.state_flatten("7", &mut sink);
    edit(&mut sink);
    let mut source = StateSource::new(sink.scalars.into_iter().collect());
    for (name, data) in sink.tensors {
        source.insert_tensor(name, data);
    }
    RecordState::state_unflatten("7", &mut source, &Device::flex())
}

/// A change to a flattened state.
type Edit = Box<dyn FnOnce(&mut StateSink)>;

#[test]
fn a_corrupt_record_is_refused_not_reset() {
    let meta = MetaSGD::new(metasgd_core::MetaSGDConfig::<f64>::default());
    let n = net(DType::F32);
    let g = grads(&n, 0, DType::F32);
    let (w, state) = Optimizer::step(
        &meta,
        0.01,
        n.w.val().inner(),
        g.get::<2>(n.w.id).unwrap(),
        None,
    );
    let state = state.unwrap();

    // Unchanged, it comes back and steps as the original.
    let same = reloaded(&state, |_| {}).unwrap();
    let g1 = g.get::<2>(n.w.id).unwrap();
    let (a, _) = Optimizer::step(&meta, 0.01, w.clone(), g1.clone(), Some(state.clone()));
    let (b, _) = Optimizer::step(&meta, 0.01, w.clone(), g1.clone(), Some(same));
    assert_eq!(bits(&[flat::<f32, 2>(a)]), bits(&[flat::<f32, 2>(b)]));

    // Nothing recorded under the prefix: no state, as burn expects.
    let mut source = StateSource::default();
    assert!(
        <metasgd_burn::MetaSGDState<2> as RecordState>::state_unflatten(
            "7",
            &mut source,
            &Device::flex()
        )
        .is_none()
    );

    let corruptions: Vec<(Edit, &str)> = vec![
        (
            Box::new(|sink: &mut StateSink| {
                let mut v = sink.tensors[0].1.clone().try_to_vec::<f32>().unwrap();
                v[3] = 50.0; // outside the clamp range: no step can produce it
                sink.tensors[0].1 = TensorData::new(v, [7, 5]);
            }),
            "rate 50 at flat index 3",
        ),
        (
            Box::new(|sink: &mut StateSink| drop(sink.tensors.pop())),
            "the record lacks one of 7.{rates",
        ),
        (
            Box::new(|sink: &mut StateSink| {
                sink.tensors[0].1 = TensorData::new(vec![0.01_f32; 35], [35])
            }),
            "rates of rank 1, expected 2",
        ),
        (
            Box::new(|sink: &mut StateSink| sink.scalars[0].1 = (-1.0_f64).into()),
            "base rate -1 is not finite and > 0",
        ),
        (
            Box::new(|sink: &mut StateSink| sink.scalars[1].1 = (1_u64 << 60).into()),
            "exceed MAX_COUNT",
        ),
    ];
    for (edit, expect) in corruptions {
        let broken = reloaded(&state, edit).expect("a broken state is kept, not dropped");
        let (after, kept) = Optimizer::step(&meta, 0.01, w.clone(), g1.clone(), Some(broken));
        let errors = meta.take_errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains(expect),
            "{} (want {expect})",
            errors[0]
        );
        assert!(kept.is_some());
        assert_eq!(
            bits(&[flat::<f32, 2>(after)]),
            bits(&[flat::<f32, 2>(w.clone())])
        );
    }
}

#[test]
fn non_finite_gradients_follow_the_policy() {
    let bad = |n: &Net| {
        let mut g = grads(n, 0, DType::F32);
        g.remove::<1>(n.b.id);
        let mut v = values(5, 4);
        v[2] = f64::NAN;
        let t = Tensor::<1>::from_data(
            TensorData::new(v, [5]).convert_dtype(DType::F32),
            (&Device::flex(), DType::F32),
        );
        g.register(n.b.id, t);
        g
    };
    let n = net(DType::F32);
    let before = bits(&params::<f32>(&n));

    let error = MetaSGD::new(
        metasgd_core::MetaSGDConfig::<f64>::default().with_non_finite(NonFinitePolicy::Error),
    );
    let err = error.check(0.01, &n, &bad(&n)).unwrap_err();
    assert!(
        err.to_string().contains("not finite at flat index 2"),
        "{err}"
    );

    let skip = MetaSGD::new(
        metasgd_core::MetaSGDConfig::<f64>::default().with_non_finite(NonFinitePolicy::Skip),
    );
    assert_eq!(skip.check(0.01, &n, &bad(&n)).unwrap(), Verdict::Skip);
    assert_eq!(
        skip.check(0.01, &n, &grads(&n, 0, DType::F32)).unwrap(),
        Verdict::Step
    );
    // Inside burn's step the policy is per parameter: b is skipped and counted.
    let mut optim = skip.init();
    let g = bad(&n);
    let n = optim.step(0.01, n, g);
    let after = bits(&params::<f32>(&n));
    assert_eq!(after[1], before[1]);
    assert_ne!(after[0], before[0]);
    let g = bad(&n).get::<1>(n.b.id).unwrap();
    let (b, state) = Optimizer::step(&skip, 0.01, n.b.val().inner(), g, None);
    let state = state.unwrap();
    assert_eq!((state.steps, state.skipped), (0, 1));
    assert_eq!(
        bits(&[flat::<f32, 1>(b)]),
        bits(&[params::<f32>(&n)[1].clone()])
    );
    assert!(skip.take_errors().is_empty());

    // Under the error policy inside burn's step: b refused, recorded.
    let mut optim = error.init();
    let g = bad(&n);
    let n = optim.step(0.01, n, g);
    let errs = error.take_errors();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].to_string().contains("non-finite gradient"),
        "{}",
        errs[0]
    );
    assert_eq!(bits(&params::<f32>(&n))[1], before[1]);
}

#[test]
fn a_parameter_without_gradient_keeps_values_and_state() {
    let meta = MetaSGD::new(metasgd_core::MetaSGDConfig::<f64>::default());
    let mut optim = meta.init();
    let mut n = net(DType::F32);
    let s0 = params::<f32>(&n)[2].clone();
    for step in 0..3 {
        let mut g = grads(&n, step, DType::F32);
        if step == 1 {
            g.remove::<3>(n.s.id);
        }
        let before = params::<f32>(&n);
        n = optim.step(0.01, n, g);
        if step == 1 {
            assert_eq!(bits(&params::<f32>(&n))[2], bits(&before)[2]);
        }
    }
    // s stepped at steps 0 and 2 only, with its state carried across step 1.
    let start = net(DType::F32);
    let mut s = start.s.val().inner();
    let mut state = None;
    for step in [0, 2] {
        let g = grads(&start, step, DType::F32)
            .get::<3>(start.s.id)
            .unwrap();
        (s, state) = Optimizer::step(&meta, 0.01, s, g, state);
    }
    assert_eq!(state.unwrap().steps, 2);
    assert_eq!(
        bits(&[flat::<f32, 3>(s)]),
        bits(&[params::<f32>(&n)[2].clone()])
    );
    assert_ne!(bits(&[s0]), bits(&[params::<f32>(&n)[2].clone()]));
    assert!(meta.take_errors().is_empty());
}
