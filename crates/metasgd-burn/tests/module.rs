//! `ModuleMetaSGD` (one multi-tensor pass over a module) against MetaSGD in
//! burn's `ModuleOptimizer` (one tensor at a time): the same bits, the same
//! records both ways, the same groups and clipping; and a step that cannot
//! run changes nothing at all.

mod common;
use common::*;

use std::ops::Range;

use burn::module::{Param, ParamGroup, ParamId};
use burn::optim::grad_clipping::GradientClipping;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{DType, Tensor};
use metasgd_burn::{MetaSGD, ModuleMetaSGD};
use metasgd_core::{MetaSGDConfig, NonFinitePolicy, Rule};

fn meta(k: usize, rule: Rule<f64>) -> MetaSGD {
    MetaSGD::new(
        MetaSGDConfig::<f64>::default()
            .with_alpha_lr(0.05)
            .with_inner_steps(k)
            .with_rule(rule),
    )
}

/// Base rates of a schedule that changes the rate (the rates are rescaled).
const LRS: [f64; 4] = [0.1, 0.1, 0.05, 0.05];

/// Steps `steps` of the schedule with `ModuleOptimizer`.
fn per_tensor(optim: &mut ModuleOptimizer, mut n: Net, steps: Range<usize>, dtype: DType) -> Net {
    for step in steps {
        let g = grads(&n, step as u64, dtype);
        n = optim.step(LRS[step], n, g);
    }
    n
}

/// Steps `steps` of the schedule with `ModuleMetaSGD`.
fn module(optim: &mut ModuleMetaSGD, mut n: Net, steps: Range<usize>, dtype: DType) -> Net {
    for step in steps {
        let g = grads(&n, step as u64, dtype);
        n = optim.step(LRS[step], n, g);
    }
    n
}

/// Every parameter's rates and counters, read through a `ModuleMetaSGD`
/// that loaded `optim`'s record (which also checks that it can).
fn states<A: metasgd_burn::BurnElement>(optim: &ModuleOptimizer, n: &Net) -> Vec<State> {
    let loaded = ModuleMetaSGD::new(meta(1, Rule::Reference))
        .load_record(optim.to_record())
        .unwrap();
    module_states::<A>(&loaded, n)
}

/// One parameter's rates (as bits) and counters, if it has a state.
type State = Option<(Vec<u64>, (u64, u64))>;

fn module_states<A: metasgd_burn::BurnElement>(optim: &ModuleMetaSGD, n: &Net) -> Vec<State> {
    ids(n)
        .iter()
        .map(|id| {
            let rates = optim.rates::<A>(*id)?;
            let bits = rates
                .iter()
                .map(|x| num_traits::ToPrimitive::to_f64(x).unwrap().to_bits())
                .collect();
            Some((bits, optim.counters(*id)?))
        })
        .collect()
}

fn check_same_bits<A: metasgd_burn::BurnElement>(dtype: DType, rule: Rule<f64>) {
    let m = meta(3, rule);
    let mut burn = m.init();
    let a = per_tensor(&mut burn, net(dtype), 0..LRS.len(), dtype);
    let mut ours = ModuleMetaSGD::new(m.clone());
    let b = module(&mut ours, net(dtype), 0..LRS.len(), dtype);
    assert_eq!(bits(&params::<A>(&a)), bits(&params::<A>(&b)), "{dtype:?}");
    assert_ne!(bits(&params::<A>(&b)), bits(&params::<A>(&net(dtype))));
    let want = states::<A>(&burn, &a);
    assert!(want.iter().all(Option::is_some));
    assert_eq!(want, module_states::<A>(&ours, &b));
    assert!(m.take_errors().is_empty());
}

#[test]
fn one_pass_gives_the_bits_of_the_per_tensor_optimizer() {
    check_same_bits::<f32>(DType::F32, Rule::Reference);
    check_same_bits::<f64>(DType::F64, Rule::Reference);
    check_same_bits::<f32>(DType::F32, Rule::hypergradient());
}

fn address<const D: usize>(t: &Tensor<D>) -> usize {
    let p = t
        .clone()
        .inner()
        .try_into_primitive::<burn::backend::Flex>()
        .unwrap();
    p.bytes().as_ptr() as usize
}

#[test]
fn parameters_stay_in_their_own_buffers() {
    let mut optim = ModuleMetaSGD::new(meta(1, Rule::Reference));
    let mut n = net(DType::F32);
    for step in 0..3 {
        let before = [address(&n.w.val()), address(&n.b.val())];
        let old = params::<f32>(&n);
        let g = grads(&n, step, DType::F32);
        n = optim.step(0.01, n, g);
        assert_ne!(params::<f32>(&n), old, "step {step} changed nothing");
        assert_eq!([address(&n.w.val()), address(&n.b.val())], before);
        assert!(n.w.val().is_require_grad(), "the parameter stays trainable");
    }
    assert!(optim.take_errors().is_empty());
}

/// Two steps by one optimizer, its record loaded by the other, two more:
/// the same bits as four steps by either.
#[test]
fn records_load_both_ways() {
    for rule in [Rule::Reference, Rule::hypergradient()] {
        let m = meta(2, rule);
        let dtype = DType::F32;
        let mut whole = ModuleMetaSGD::new(m.clone());
        let want = bits(&params::<f32>(&module(
            &mut whole,
            net(dtype),
            0..LRS.len(),
            dtype,
        )));

        let mut first = m.init();
        let half = per_tensor(&mut first, net(dtype), 0..2, dtype);
        let mut second = ModuleMetaSGD::new(m.clone())
            .load_record(first.to_record())
            .unwrap();
        let got = module(&mut second, half, 2..LRS.len(), dtype);
        assert_eq!(bits(&params::<f32>(&got)), want, "burn -> ours, {rule:?}");

        let mut first = ModuleMetaSGD::new(m.clone());
        let half = module(&mut first, net(dtype), 0..2, dtype);
        let dir = std::env::temp_dir().join(format!("metasgd-burn-module-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("optim.bpk");
        first.save(&path).unwrap();
        let mut second = m.init().load(&path).unwrap();
        let got = per_tensor(&mut second, half, 2..LRS.len(), dtype);
        assert_eq!(bits(&params::<f32>(&got)), want, "ours -> burn, {rule:?}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(m.take_errors().is_empty());
    }
}

#[test]
fn groups_and_clipping_as_in_burn() {
    let (all, fast) = (meta(2, Rule::Reference), meta(1, Rule::Reference));
    let dtype = DType::F32;
    let n = net(dtype);
    let group = || ParamGroup::from_path("b");
    let clip = || GradientClipping::Value(0.5);
    let mut burn = ModuleOptimizer::from(all.clone())
        .with_grad_clipping(clip())
        .with_group(group(), fast.clone(), None);
    let a = per_tensor(&mut burn, n, 0..LRS.len(), dtype);
    let mut ours = ModuleMetaSGD::new(all.clone())
        .with_grad_clipping(clip())
        .with_group(group(), fast, None);
    let b = module(&mut ours, net(dtype), 0..LRS.len(), dtype);
    assert_eq!(bits(&params::<f32>(&a)), bits(&params::<f32>(&b)));
    // The group took effect: with every parameter in the first group, `b`
    // (K = 2 instead of 1) ends elsewhere.
    let mut single = ModuleMetaSGD::new(all).with_grad_clipping(clip());
    let c = module(&mut single, net(dtype), 0..LRS.len(), dtype);
    assert_eq!(bits(&params::<f32>(&c))[0], bits(&params::<f32>(&b))[0]);
    assert_ne!(bits(&params::<f32>(&c))[1], bits(&params::<f32>(&b))[1]);
}

/// A copy of `n` (the same ids, values of its own).
fn copy(n: &Net) -> Net {
    Net {
        w: Param::initialized(n.w.id, n.w.val()),
        b: Param::initialized(n.b.id, n.b.val()),
        s: Param::initialized(n.s.id, n.s.val()),
    }
}

/// `g` steps nothing: the module comes back with its values, every state
/// keeps its counters and rates, and one error says `expect`.
fn refused(optim: &mut ModuleMetaSGD, n: Net, g: GradientsParams, expect: &str) -> Net {
    let before = (bits(&params::<f32>(&n)), module_states::<f32>(optim, &n));
    let n = optim.step(0.05, n, g);
    let errors = optim.take_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].to_string().contains(expect), "{}", errors[0]);
    assert_eq!(bits(&params::<f32>(&n)), before.0, "{expect}");
    assert_eq!(module_states::<f32>(optim, &n), before.1, "{expect}");
    n
}

#[test]
fn a_step_that_cannot_run_changes_nothing() {
    let dtype = DType::F32;
    let mut optim = ModuleMetaSGD::new(meta(1, Rule::Reference));
    let n = module(&mut optim, net(dtype), 0..2, dtype);

    // A gradient of another shape, another dtype, for the last parameter:
    // the first two are not stepped either.
    let mut g = grads(&n, 7, dtype);
    g.remove::<3>(n.s.id);
    g.register(n.s.id, tensor([2, 3, 5], 9, dtype));
    let n = refused(&mut optim, n, g, "the gradient has shape [2, 3, 5]");
    let mut g = grads(&n, 7, dtype);
    g.remove::<3>(n.s.id);
    g.register(n.s.id, tensor([2, 3, 4], 9, DType::F64));
    let n = refused(&mut optim, n, g, "the gradient has dtype F64");

    // Settings a step refuses.
    let bad = MetaSGD::new(MetaSGDConfig::<f64>::default().with_alpha_lr(-1.0));
    let mut fresh = ModuleMetaSGD::new(bad);
    let g = grads(&n, 7, dtype);
    let n = refused(&mut fresh, n, g, "alpha_lr");
    assert_eq!(fresh.counters(n.w.id), None, "no state was made");

    // The error policy over the whole module: a NaN in the last gradient.
    let strict =
        MetaSGD::new(MetaSGDConfig::<f64>::default().with_non_finite(NonFinitePolicy::Error));
    let mut strict = ModuleMetaSGD::new(strict)
        .load_record(optim.to_record().unwrap())
        .unwrap();
    let mut g = grads(&n, 7, dtype);
    g.remove::<3>(n.s.id);
    let mut nan = values(24, 9);
    nan[5] = f64::NAN;
    let nan = burn::tensor::TensorData::new(nan, [2, 3, 4]).convert_dtype(dtype);
    g.register(
        n.s.id,
        Tensor::<3>::from_data(nan, (&burn::tensor::Device::flex(), dtype)),
    );
    let n = refused(&mut strict, n, g, "non-finite gradient");

    // The records' optimizer then steps normally.
    let g = grads(&n, 8, dtype);
    let stepped = optim.step(0.05, copy(&n), g);
    assert!(optim.take_errors().is_empty());
    assert_ne!(bits(&params::<f32>(&stepped)), bits(&params::<f32>(&n)));
}

#[test]
fn the_skip_policy_skips_the_whole_group() {
    let dtype = DType::F32;
    let skip = MetaSGD::new(MetaSGDConfig::<f64>::default().with_non_finite(NonFinitePolicy::Skip));
    let mut optim = ModuleMetaSGD::new(skip);
    let n = module(&mut optim, net(dtype), 0..1, dtype);
    let before = bits(&params::<f32>(&n));
    let mut g = grads(&n, 7, dtype);
    g.remove::<1>(n.b.id);
    g.register(
        n.b.id,
        Tensor::<1>::from_data(
            burn::tensor::TensorData::new(vec![f32::INFINITY; 5], [5]),
            (&burn::tensor::Device::flex(), dtype),
        ),
    );
    let n = optim.step(0.1, n, g);
    assert!(optim.take_errors().is_empty());
    assert_eq!(bits(&params::<f32>(&n)), before);
    for id in ids(&n) {
        assert_eq!(optim.counters(id), Some((1, 1)), "{id:?}");
    }
}

#[test]
fn a_parameter_without_gradient_is_left_alone() {
    let dtype = DType::F32;
    let mut optim = ModuleMetaSGD::new(meta(1, Rule::Reference));
    let n = net(dtype);
    let before = bits(&params::<f32>(&n));
    let mut g = grads(&n, 1, dtype);
    g.remove::<1>(n.b.id);
    let n = optim.step(0.1, n, g);
    let after = bits(&params::<f32>(&n));
    assert_eq!(after[1], before[1]);
    assert_ne!(after[0], before[0]);
    assert_eq!(optim.counters(n.b.id), None);
    assert_eq!(optim.counters(n.w.id), Some((1, 0)));
    let _: ParamId = n.b.id;
}

/// A burnpack record of one state for parameter `id` (rank 2), written as
/// `ModuleOptimizer` writes it.
fn record_of(id: ParamId, rates: Vec<f32>, lr: f64) -> burn::optim::OptimizerRecord {
    let data = burn::tensor::TensorData::new(rates, [7, 5]);
    let (bytes, shape, dtype) = data.into_parts();
    let p = id.val();
    let t = burn_pack::Tensor::new(format!("{p}.rates"), dtype, shape, Some(p), bytes);
    let writer = burn_pack::Writer::new(vec![t])
        .with_scalar(&format!("{p}.lr"), lr.into())
        .with_scalar(&format!("{p}.steps"), 3_u64.into())
        .with_scalar(&format!("{p}.skipped"), 0_u64.into())
        .with_scalar(&format!("{p}.__rank"), 2_usize.into());
    burn::optim::OptimizerRecord::from_bytes(writer.into_bytes().unwrap()).unwrap()
}

#[test]
fn a_broken_record_is_kept_and_its_steps_refused() {
    let dtype = DType::F32;
    let n = net(dtype);
    let good = ModuleMetaSGD::new(meta(1, Rule::Reference))
        .load_record(record_of(n.w.id, vec![0.02; 35], 0.02))
        .unwrap();
    assert_eq!(good.counters(n.w.id), Some((3, 0)));
    assert_eq!(good.rates::<f32>(n.w.id).unwrap(), &[0.02_f32; 35][..]);

    let mut rates = vec![0.02_f32; 35];
    rates[3] = 50.0; // outside the clamp range: no step can produce it
    for (record, expect) in [
        (record_of(n.w.id, rates, 0.02), "rate 50 at flat index 3"),
        (record_of(n.w.id, vec![0.02; 35], -1.0), "base rate -1"),
    ] {
        let mut optim = ModuleMetaSGD::new(meta(1, Rule::Reference))
            .load_record(record)
            .unwrap();
        let mut n = copy(&n);
        for _ in 0..2 {
            // Refused every time: never silently restarted.
            let g = grads(&n, 1, dtype);
            n = refused(&mut optim, n, g, expect);
        }
    }

    // Bytes that are not a record.
    let junk = burn::tensor::Bytes::from_bytes_vec(vec![7_u8; 64]);
    assert!(burn::optim::OptimizerRecord::from_bytes(junk).is_err());
}
