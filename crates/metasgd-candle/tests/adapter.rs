//! The candle adapter against the core optimizer: bitwise the same numbers
//! as `step_list_inplace`, in the vars' own buffers; bad input refused with
//! nothing changed; checkpoints shared with the core.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Storage, Tensor, Var};
use candle_nn::Optimizer as _;
use metasgd_candle::{CandleElement, MetaSGD};
use metasgd_core::{NonFinitePolicy, Optimizer};
use metasgd_kernels::Element;
use ndarray::{ArrayD, IxDyn};

fn shapes() -> Vec<Vec<usize>> {
    vec![vec![7, 5], vec![5], vec![], vec![2, 3, 4], vec![0, 3]]
}

/// Deterministic values in [-2, 2) (the kernels' test data), a NaN at one
/// place when `nan`.
fn values<A: Element>(n: usize, seed: u64, nan: bool) -> Vec<A> {
    let mut v = metasgd_kernels::testdata::values(n, seed, 0);
    if nan && n > 3 {
        v[3] = A::nan();
    }
    v
}

fn tensor<A: CandleElement>(shape: &[usize], v: Vec<A>) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn bits<A: CandleElement>(t: &Tensor) -> Vec<u64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<A>()
        .unwrap()
        .iter()
        .map(|x| x.bits())
        .collect()
}

/// The address of a var's CPU buffer.
fn buffer(t: &Tensor) -> usize {
    let (s, _) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => match c {
            candle_core::CpuStorage::F32(v) => v.as_ptr() as usize,
            candle_core::CpuStorage::F64(v) => v.as_ptr() as usize,
            _ => 0,
        },
        _ => 0,
    }
}

fn config<A: CandleElement>() -> metasgd_core::MetaSGDConfig<A> {
    metasgd_core::MetaSGDConfig::new(A::from(0.05).unwrap())
        .with_alpha_lr(A::from(0.3).unwrap())
        .with_inner_steps(3)
}

fn same_numbers<A: CandleElement>()
where
    metasgd_core::MetaSGD<A>: Optimizer<A, IxDyn>,
{
    same_numbers_with(config::<A>());
}

/// The adapter against `step_list_inplace` with the same settings, in the
/// vars' own buffers, NaN gradient included.
fn same_numbers_with<A: CandleElement>(config: metasgd_core::MetaSGDConfig<A>)
where
    metasgd_core::MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let shapes = shapes();
    let init: Vec<Vec<A>> = shapes
        .iter()
        .enumerate()
        .map(|(j, s)| values(s.iter().product(), j as u64 + 1, false))
        .collect();
    let vars: Vec<Var> = shapes
        .iter()
        .zip(&init)
        .map(|(s, v)| Var::from_tensor(&tensor::<A>(s, v.clone())).unwrap())
        .collect();
    let before: Vec<usize> = vars.iter().map(|v| buffer(v.as_tensor())).collect();
    let mut opt = MetaSGD::new(vars.clone(), config).unwrap();
    // The same numbers through the ndarray path.
    let mut params: Vec<ArrayD<A>> = shapes
        .iter()
        .zip(&init)
        .map(|(s, v)| ArrayD::from_shape_vec(IxDyn(s), v.clone()).unwrap())
        .collect();
    let mut core = metasgd_core::MetaSGD::from_config(config);
    for step in 0..4 {
        let mut grads = GradStore::default();
        let mut nd = Vec::new();
        for (j, (v, s)) in vars.iter().zip(&shapes).enumerate() {
            let g = values::<A>(
                s.iter().product(),
                100 * step + j as u64,
                step == 2 && j == 0,
            );
            grads.insert(v.as_tensor(), tensor::<A>(s, g.clone()));
            nd.push(ArrayD::from_shape_vec(IxDyn(s), g).unwrap());
        }
        opt.step(&grads).unwrap();
        let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
        let gv: Vec<_> = nd.iter().map(|g| g.view()).collect();
        core.step_list_inplace(&mut views, &gv).unwrap();
    }
    for (j, (v, p)) in vars.iter().zip(&params).enumerate() {
        let want: Vec<u64> = p.iter().map(|x| x.bits()).collect();
        assert_eq!(bits::<A>(v.as_tensor()), want, "var {j}");
        assert_eq!(buffer(v.as_tensor()), before[j], "var {j} kept its buffer");
    }
    let all_bits = |v: &[ArrayD<A>]| -> Vec<Vec<u64>> {
        v.iter()
            .map(|a| a.iter().map(|x| x.bits()).collect())
            .collect()
    };
    assert_eq!(
        all_bits(opt.state().per_param_lrs()),
        all_bits(core.per_param_lrs())
    );
    assert_eq!(opt.state().get_step_count(), 4);
    assert_eq!(
        all_bits(opt.state().previous_gradients()),
        all_bits(core.previous_gradients())
    );
}

#[test]
fn the_hypergradient_rule_is_bitwise_the_core_optimizers() {
    let r64 = metasgd_core::Rule::Hypergradient {
        up: 1.25,
        down: 0.5,
        smoothing: 0.0,
    };
    same_numbers_with(config::<f64>().with_rule(r64));
    let r32 = metasgd_core::Rule::Hypergradient {
        up: 1.25_f32,
        down: 0.5,
        smoothing: 0.75,
    };
    same_numbers_with(config::<f32>().with_rule(r32));
}

#[test]
fn clipping_is_one_norm_over_all_vars_as_in_the_core() {
    same_numbers_with(config::<f32>().with_max_grad_norm(0.25));
    same_numbers_with(config::<f64>().with_max_grad_norm(0.25));
}

#[test]
fn bitwise_equal_to_step_list_inplace_in_the_vars_own_buffers() {
    same_numbers::<f32>();
    same_numbers::<f64>();
}

#[test]
fn backward_step_trains() {
    // Fit w to 3: loss (w - 3)^2, gradient from candle's autograd.
    let w = Var::from_tensor(&Tensor::new(&[0.0_f32, 1.0], &Device::Cpu).unwrap()).unwrap();
    let mut opt =
        MetaSGD::new(vec![w.clone()], metasgd_core::MetaSGDConfig::new(0.05_f32)).unwrap();
    for _ in 0..50 {
        let loss = (w.as_tensor() - 3.0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        opt.backward_step(&loss).unwrap();
    }
    for x in w.as_tensor().to_vec1::<f32>().unwrap() {
        assert!((x - 3.0).abs() < 1e-3, "{x}");
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let f32_var = || Var::from_tensor(&tensor::<f32>(&[3], vec![1.0, 2.0, 3.0])).unwrap();
    // dtypes other than A: bf16, f16, f64 into MetaSGD<f32>, and mixed lists.
    for dtype in [DType::BF16, DType::F16, DType::F64] {
        let v = Var::from_tensor(
            &tensor::<f32>(&[3], vec![1.0, 2.0, 3.0])
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
        let e = MetaSGD::new(vec![f32_var(), v], config::<f32>()).unwrap_err();
        assert!(e.to_string().contains("dtype"), "{dtype:?}: {e}");
    }
    // The same var twice.
    let v = f32_var();
    let e = MetaSGD::new(vec![v.clone(), v], config::<f32>()).unwrap_err();
    assert!(e.to_string().contains("listed again"), "{e}");
    // Rates of another shape in the state to go on from.
    let with_rates = metasgd_core::MetaSGD::from_config(config::<f32>())
        .with_per_param_lrs(vec![ArrayD::from_elem(IxDyn(&[4]), 0.1_f32)])
        .unwrap();
    assert!(MetaSGD::from_state(vec![f32_var()], with_rates).is_err());

    // A gradient of another shape or dtype, or a NaN under the Error
    // policy: an error, and no var, rate or counter moves.
    let (a, b) = (f32_var(), f32_var());
    let template = config::<f32>().with_non_finite(NonFinitePolicy::Error);
    let mut opt = MetaSGD::new(vec![a.clone(), b.clone()], template).unwrap();
    let mut good = GradStore::default();
    good.insert(a.as_tensor(), tensor::<f32>(&[3], vec![0.1, 0.2, 0.3]));
    good.insert(b.as_tensor(), tensor::<f32>(&[3], vec![0.1, 0.2, 0.3]));
    opt.step(&good).unwrap();
    let snapshot = |opt: &MetaSGD<f32>| {
        (
            bits::<f32>(a.as_tensor()),
            bits::<f32>(b.as_tensor()),
            opt.state().per_param_lrs().to_vec(),
            opt.state().get_step_count(),
        )
    };
    let before = snapshot(&opt);
    let cases: Vec<(&str, Tensor)> = vec![
        ("shape", tensor::<f32>(&[4], vec![0.0; 4])),
        (
            "dtype",
            tensor::<f32>(&[3], vec![0.0; 3])
                .to_dtype(DType::F64)
                .unwrap(),
        ),
        ("non-finite", tensor::<f32>(&[3], vec![0.0, f32::NAN, 0.0])),
    ];
    for (what, bad) in cases {
        let mut grads = GradStore::default();
        grads.insert(a.as_tensor(), tensor::<f32>(&[3], vec![0.1, 0.2, 0.3]));
        grads.insert(b.as_tensor(), bad);
        let e = opt.step(&grads).unwrap_err();
        assert!(
            e.to_string().contains(what)
                || (what == "non-finite" && e.to_string().contains("non-finite")),
            "{what}: {e}"
        );
        assert!(snapshot(&opt) == before, "{what}: something changed");
    }
}

#[test]
fn a_var_without_a_gradient_is_left_as_it_is() {
    let a = Var::from_tensor(&tensor::<f64>(&[2], vec![1.0, -0.0])).unwrap();
    let b = Var::from_tensor(&tensor::<f64>(&[2], vec![1.0, 2.0])).unwrap();
    let mut opt = MetaSGD::new(vec![a.clone(), b.clone()], config::<f64>()).unwrap();
    let mut grads = GradStore::default();
    grads.insert(b.as_tensor(), tensor::<f64>(&[2], vec![0.5, 0.5]));
    let before = bits::<f64>(a.as_tensor());
    opt.step(&grads).unwrap();
    opt.step(&grads).unwrap();
    assert_eq!(bits::<f64>(a.as_tensor()), before, "values, -0.0 included");
    let rates_a = &opt.state().per_param_lrs()[0];
    assert!(
        rates_a.iter().all(|r| r.to_bits() == 0.05_f64.to_bits()),
        "{rates_a}"
    );
    assert_eq!(opt.state().get_step_count(), 2);
    assert_ne!(
        bits::<f64>(b.as_tensor()),
        vec![1.0_f64.to_bits(), 2.0_f64.to_bits()]
    );
}

#[test]
fn checkpoints_are_the_core_format_and_rates_rescale() {
    let dir = std::env::temp_dir().join(format!("metasgd-candle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("opt.safetensors");
    let w = Var::from_tensor(&tensor::<f32>(&[4], vec![1.0, 2.0, 3.0, 4.0])).unwrap();
    let mut opt = MetaSGD::new(vec![w.clone()], config::<f32>()).unwrap();
    let mut grads = GradStore::default();
    grads.insert(
        w.as_tensor(),
        tensor::<f32>(&[4], vec![0.4, -0.3, 0.2, -0.1]),
    );
    opt.step(&grads).unwrap();
    opt.save_state(&path).unwrap();
    // The core reads it, and writes what the adapter reads.
    let core = metasgd_core::MetaSGD::<f32>::load_state(&path).unwrap();
    assert_eq!(core.per_param_lrs(), opt.state().per_param_lrs());
    core.save_state(&path).unwrap();
    let w2 = Var::from_tensor(w.as_tensor()).unwrap();
    let mut resumed = MetaSGD::<f32>::load_state(vec![w2.clone()], &path).unwrap();
    let mut g2 = GradStore::default();
    g2.insert(
        w2.as_tensor(),
        tensor::<f32>(&[4], vec![0.4, -0.3, 0.2, -0.1]),
    );
    opt.step(&grads).unwrap();
    resumed.step(&g2).unwrap();
    assert_eq!(bits::<f32>(w.as_tensor()), bits::<f32>(w2.as_tensor()));
    // Loading for vars of other shapes is refused.
    let other = Var::from_tensor(&tensor::<f32>(&[5], vec![0.0; 5])).unwrap();
    assert!(MetaSGD::<f32>::load_state(vec![other], &path).is_err());
    // A learning-rate schedule rescales the learned rates.
    let rates: Vec<f32> = opt.state().per_param_lrs()[0].iter().copied().collect();
    opt.set_learning_rate(0.025);
    assert_eq!(opt.learning_rate(), 0.025_f32 as f64);
    for (r, new) in rates.iter().zip(opt.state().per_param_lrs()[0].iter()) {
        assert_eq!(
            new.to_bits(),
            metasgd_kernels::scalar::clamp(r * (0.025_f32 / 0.05)).to_bits()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn many_vars_large_and_strided_gradients() {
    // 161 tensors like ResNet-50's list (small here) plus one past the
    // parallel threshold; every other gradient transposed (not contiguous).
    let mut shapes: Vec<Vec<usize>> = (0..160).map(|j| vec![1 + j % 7, 1 + j % 5]).collect();
    shapes.push(vec![300, 200]);
    let init: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(j, s)| values(s.iter().product(), j as u64 + 7, false))
        .collect();
    let vars: Vec<Var> = shapes
        .iter()
        .zip(&init)
        .map(|(s, v)| Var::from_tensor(&tensor::<f32>(s, v.clone())).unwrap())
        .collect();
    let mut opt = MetaSGD::new(vars.clone(), config::<f32>()).unwrap();
    let mut grads = GradStore::default();
    let mut nd = Vec::new();
    for (j, (v, s)) in vars.iter().zip(&shapes).enumerate() {
        let g = values::<f32>(s.iter().product(), 1000 + j as u64, false);
        let logical = ArrayD::from_shape_vec(IxDyn(s), g.clone()).unwrap();
        let t = if j % 2 == 0 {
            // The same logical values, stored transposed.
            let stored: Vec<f32> = logical.t().iter().copied().collect();
            tensor::<f32>(&[s[1], s[0]], stored).t().unwrap()
        } else {
            tensor::<f32>(s, g)
        };
        if s[0] > 1 && s[1] > 1 {
            assert_eq!(t.is_contiguous(), j % 2 == 1, "gradient {j}");
        }
        grads.insert(v.as_tensor(), t);
        nd.push(logical);
    }
    opt.step(&grads).unwrap();
    let mut params: Vec<ArrayD<f32>> = shapes
        .iter()
        .zip(&init)
        .map(|(s, v)| ArrayD::from_shape_vec(IxDyn(s), v.clone()).unwrap())
        .collect();
    let mut core = metasgd_core::MetaSGD::from_config(config::<f32>());
    let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
    let gv: Vec<_> = nd.iter().map(|g| g.view()).collect();
    core.step_list_inplace(&mut views, &gv).unwrap();
    for (j, (v, p)) in vars.iter().zip(&params).enumerate() {
        let want: Vec<u64> = p.iter().map(|x| x.bits()).collect();
        assert_eq!(bits::<f32>(v.as_tensor()), want, "var {j}");
    }
}
