//! `adapter-compare`: the measurements behind `cargo xtask bench --adapters`
//! (feature `adapters`).
//!
//! One optimizer step over ResNet-50's 161 f32 tensors (25.6M parameters),
//! on 1 and 2 threads, medians of interleaved rounds, per framework:
//!
//! | variant | what it is |
//! |---|---|
//! | `adapter` | the framework's MetaSGD adapter: `metasgd_candle::MetaSGD`; for burn `metasgd_burn::ModuleMetaSGD` (the whole module in one multi-tensor pass) |
//! | `per_tensor` | burn only: `metasgd_burn::MetaSGD` in burn's `ModuleOptimizer` (one tensor at a time) |
//! | `tensor_ops` | the same update written with the framework's tensor ops, as its users write it (`d = alpha * g`, the `K` subtractions, `alpha - beta * g * c`, the clamp) |
//! | `framework_sgd` | the framework's own SGD step (candle-nn's `SGD`, burn's `Sgd`) |
//! | `ndarray` | `metasgd::MetaSGD::step_list_inplace` on ndarray arrays of the same sizes |
//!
//! ```text
//! adapter-compare [--quick] [--csv PATH] [--inner-steps K] [--only candle|burn]
//! ```
//!
//! Prints the table, the targets and writes the CSV
//! `framework,threads,variant,ms_per_step`. The targets are what memory
//! traffic allows: candle's tensor ops allocate a new tensor per operation
//! (adapter >= 10x `tensor_ops`, >= 1.5x `framework_sgd`, >= 0.9x
//! `ndarray`); burn's update in place, so against MetaSGD in burn tensor
//! ops the bound is the traffic ratio (about 16 arrays against 5: >= 3x)
//! and against burn's own in-place SGD parity (>= 1.0x); >= 0.95x
//! `ndarray`.

use std::fmt::Write as _;
use std::time::Duration;

use burn::module::{Module, Param};
use burn::optim::{
    GradientsParams, LearningRate, ModuleOptimizer, Optimizer as BurnOptimizer, RecordState,
    SgdConfig, StateSink, StateSource,
};
use burn::tensor::{Device as BurnDevice, Tensor as BurnTensor};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::Optimizer as _;
use metasgd::ndarray::{ArrayD, IxDyn};
use metasgd_benches::{Interleaved, resnet50_shapes};

/// The settings every variant computes with: `K` inner steps (1 unless
/// `--inner-steps`, the published Meta-SGD setting), `beta = 0.001`, base
/// rate 0.01.
const BETA: f64 = 0.001;
const LR: f64 = 0.01;
const LO: f64 = 1e-8;
const HI: f64 = 10.0;

fn values(n: usize, seed: u64) -> Vec<f32> {
    metasgd_kernels::testdata::values(n, seed, 0)
}

fn config(k: usize) -> metasgd::MetaSGDConfig<f32> {
    metasgd::MetaSGDConfig::new(LR as f32)
        .with_alpha_lr(BETA as f32)
        .with_inner_steps(k)
}

/// A named routine to time.
type Named<'f> = (&'static str, Box<dyn FnMut() + 'f>);

/// Median milliseconds per step of each routine, in `names` order.
fn measure(routines: Vec<Named<'_>>, rounds: usize) -> Vec<(&'static str, f64)> {
    let mut runs = Interleaved::new();
    let names: Vec<&str> = routines.iter().map(|(n, _)| *n).collect();
    for (_, f) in routines {
        runs.add(f);
    }
    runs.run(rounds, Duration::ZERO);
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, runs.median_ns(i) / 1e6))
        .collect()
}

/// The ndarray baseline: `step_list_inplace` over arrays of the shapes.
struct NdarrayRun {
    params: Vec<ArrayD<f32>>,
    grads: Vec<ArrayD<f32>>,
    opt: metasgd::MetaSGD<f32>,
}

impl NdarrayRun {
    fn new(shapes: &[Vec<usize>], k: usize) -> Self {
        let arr = |s: &Vec<usize>, seed| {
            ArrayD::from_shape_vec(IxDyn(s), values(s.iter().product(), seed)).expect("shape")
        };
        Self {
            params: shapes
                .iter()
                .enumerate()
                .map(|(i, s)| arr(s, i as u64))
                .collect(),
            grads: shapes
                .iter()
                .enumerate()
                .map(|(i, s)| arr(s, 1000 + i as u64))
                .collect(),
            opt: metasgd::MetaSGD::from_config(config(k)),
        }
    }

    fn step(&mut self) {
        let mut views: Vec<_> = self.params.iter_mut().map(|p| p.view_mut()).collect();
        let grads: Vec<_> = self.grads.iter().map(|g| g.view()).collect();
        metasgd::Optimizer::step_list_inplace(&mut self.opt, &mut views, &grads).expect("step");
    }
}

// ---------------------------------------------------------------- candle

fn candle_vars(shapes: &[Vec<usize>], seed: u64) -> Vec<Var> {
    shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let t = Tensor::from_vec(
                values(s.iter().product(), seed + i as u64),
                s.as_slice(),
                &Device::Cpu,
            )
            .expect("tensor");
            Var::from_tensor(&t).expect("var")
        })
        .collect()
}

fn candle_grads(vars: &[Var], grads: &[Tensor]) -> GradStore {
    let mut store = GradStore::default();
    for (v, g) in vars.iter().zip(grads) {
        store.insert(v.as_tensor(), g.clone());
    }
    store
}

/// MetaSGD in candle tensor ops, as a candle user writes it.
struct CandleTensorOps {
    vars: Vec<Var>,
    alphas: Vec<Option<Tensor>>,
    k: usize,
}

impl CandleTensorOps {
    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        for (var, alpha) in self.vars.iter().zip(&mut self.alphas) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let a = match alpha.take() {
                Some(a) => a,
                None => (var.as_tensor().ones_like()? * LR)?,
            };
            let d = (&a * g)?;
            let mut t = (var.as_tensor() - &d)?;
            let mut c = d.clone();
            for _ in 1..self.k {
                t = (t - &d)?;
                c = (c + &d)?;
            }
            let m = (g * c)?;
            let a = (a - (m * BETA)?)?;
            *alpha = Some(a.clamp(LO, HI)?);
            var.set(&t)?;
        }
        Ok(())
    }
}

fn candle_rows(shapes: &[Vec<usize>], k: usize, rounds: usize) -> Vec<(&'static str, f64)> {
    let grads: Vec<Tensor> = candle_vars(shapes, 1000)
        .into_iter()
        .map(|v| v.as_tensor().clone())
        .collect();
    let adapter_vars = candle_vars(shapes, 0);
    let ops_vars = candle_vars(shapes, 0);
    let sgd_vars = candle_vars(shapes, 0);
    let (g_adapter, g_ops, g_sgd) = (
        candle_grads(&adapter_vars, &grads),
        candle_grads(&ops_vars, &grads),
        candle_grads(&sgd_vars, &grads),
    );
    let mut adapter = metasgd_candle::MetaSGD::new(adapter_vars, config(k)).expect("adapter");
    let mut ops = CandleTensorOps {
        alphas: vec![None; ops_vars.len()],
        vars: ops_vars,
        k,
    };
    let mut sgd = candle_nn::SGD::new(sgd_vars, LR).expect("sgd");
    let mut nd = NdarrayRun::new(shapes, k);
    measure(
        vec![
            (
                "adapter",
                Box::new(|| adapter.step(&g_adapter).expect("step")),
            ),
            ("tensor_ops", Box::new(|| ops.step(&g_ops).expect("step"))),
            (
                "framework_sgd",
                Box::new(|| sgd.step(&g_sgd).expect("step")),
            ),
            ("ndarray", Box::new(|| nd.step())),
        ],
        rounds,
    )
}

// ------------------------------------------------------------------ burn

/// ResNet-50's tensors as a burn module.
#[derive(Module, Debug)]
struct Resnet {
    convs: Vec<Param<BurnTensor<4>>>,
    vectors: Vec<Param<BurnTensor<1>>>,
    fc: Param<BurnTensor<2>>,
}

fn burn_tensor<const D: usize>(shape: &[usize], seed: u64) -> BurnTensor<D> {
    let data = burn::tensor::TensorData::new(values(shape.iter().product(), seed), shape.to_vec());
    BurnTensor::from_data(data, &BurnDevice::flex())
}

fn burn_model(shapes: &[Vec<usize>]) -> Resnet {
    let param = |t| Param::from_tensor(BurnTensor::from_inner(t));
    let mut convs = Vec::new();
    let mut vectors = Vec::new();
    let mut fc = None;
    for (i, s) in shapes.iter().enumerate() {
        match s.len() {
            4 => convs.push(param(burn_tensor::<4>(s, i as u64))),
            1 => vectors.push(Param::from_tensor(BurnTensor::from_inner(
                burn_tensor::<1>(s, i as u64),
            ))),
            _ => {
                fc = Some(Param::from_tensor(BurnTensor::from_inner(
                    burn_tensor::<2>(s, i as u64),
                )))
            }
        }
    }
    Resnet {
        convs,
        vectors,
        fc: fc.expect("the classifier"),
    }
}

/// One gradient per parameter of `model` (cheap clones of `pool`'s buffers).
struct BurnGrads {
    convs: Vec<BurnTensor<4>>,
    vectors: Vec<BurnTensor<1>>,
    fc: BurnTensor<2>,
}

impl BurnGrads {
    fn new(shapes: &[Vec<usize>]) -> Self {
        let (mut convs, mut vectors, mut fc) = (Vec::new(), Vec::new(), None);
        for (i, s) in shapes.iter().enumerate() {
            let seed = 1000 + i as u64;
            match s.len() {
                4 => convs.push(burn_tensor::<4>(s, seed)),
                1 => vectors.push(burn_tensor::<1>(s, seed)),
                _ => fc = Some(burn_tensor::<2>(s, seed)),
            }
        }
        Self {
            convs,
            vectors,
            fc: fc.expect("the classifier"),
        }
    }

    fn for_model(&self, m: &Resnet) -> GradientsParams {
        let mut g = GradientsParams::new();
        for (p, t) in m.convs.iter().zip(&self.convs) {
            g.register(p.id, t.clone());
        }
        for (p, t) in m.vectors.iter().zip(&self.vectors) {
            g.register(p.id, t.clone());
        }
        g.register(m.fc.id, self.fc.clone());
        g
    }
}

/// MetaSGD in burn tensor ops, as a burn user writes a per-tensor optimizer.
#[derive(Clone)]
struct BurnTensorOps {
    k: usize,
}

/// Its state: the rates.
#[derive(Clone)]
struct BurnTensorOpsState<const D: usize> {
    alpha: BurnTensor<D>,
}

impl<const D: usize> RecordState for BurnTensorOpsState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(prefix, "alpha", self.alpha.to_data());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &BurnDevice) -> Option<Self> {
        let alpha = src.take_tensor(prefix, "alpha")?;
        Some(Self {
            alpha: BurnTensor::from_data(alpha, device),
        })
    }
}

impl BurnOptimizer for BurnTensorOps {
    type State<const D: usize> = BurnTensorOpsState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: BurnTensor<D>,
        grad: BurnTensor<D>,
        state: Option<Self::State<D>>,
    ) -> (BurnTensor<D>, Option<Self::State<D>>) {
        let alpha = match state {
            Some(s) => s.alpha,
            None => tensor.ones_like().mul_scalar(lr),
        };
        let d = alpha.clone() * grad.clone();
        let mut t = tensor - d.clone();
        let mut c = d.clone();
        for _ in 1..self.k {
            t = t - d.clone();
            c = c + d.clone();
        }
        let alpha = (alpha - (grad * c).mul_scalar(BETA)).clamp(LO, HI);
        (t, Some(BurnTensorOpsState { alpha }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &BurnDevice) -> Self::State<D> {
        BurnTensorOpsState {
            alpha: state.alpha.to_device(device),
        }
    }
}

/// An optimizer that returns every parameter as it is: what burn's
/// `ModuleOptimizer` costs by itself (the floor under any per-tensor
/// optimizer).
#[derive(Clone)]
struct BurnNoop;

impl BurnOptimizer for BurnNoop {
    type State<const D: usize> = ();

    fn step<const D: usize>(
        &self,
        _lr: LearningRate,
        tensor: BurnTensor<D>,
        _grad: BurnTensor<D>,
        _state: Option<Self::State<D>>,
    ) -> (BurnTensor<D>, Option<Self::State<D>>) {
        (tensor, None)
    }

    fn to_device<const D: usize>(state: Self::State<D>, _device: &BurnDevice) -> Self::State<D> {
        state
    }
}

/// A module and the optimizer that steps it.
struct BurnRun {
    model: Option<Resnet>,
    optim: ModuleOptimizer,
}

impl BurnRun {
    fn step(&mut self, grads: &BurnGrads) {
        let model = self.model.take().expect("the model");
        let g = grads.for_model(&model);
        self.model = Some(self.optim.step(LR, model, g));
    }
}

fn burn_rows(shapes: &[Vec<usize>], k: usize, rounds: usize) -> Vec<(&'static str, f64)> {
    let grads = BurnGrads::new(shapes);
    let meta = metasgd_burn::MetaSGD::new(config(k));
    let mut module = metasgd_burn::ModuleMetaSGD::new(meta.clone());
    let mut model = Some(burn_model(shapes));
    let mut adapter = || {
        let m = model.take().expect("the model");
        let g = grads.for_model(&m);
        model = Some(module.step(LR, m, g));
    };
    let mut per_tensor = BurnRun {
        model: Some(burn_model(shapes)),
        optim: meta.init(),
    };
    let mut ops = BurnRun {
        model: Some(burn_model(shapes)),
        optim: BurnTensorOps { k }.into(),
    };
    let mut sgd = BurnRun {
        model: Some(burn_model(shapes)),
        optim: SgdConfig::new().init(),
    };
    let mut noop = BurnRun {
        model: Some(burn_model(shapes)),
        optim: BurnNoop.into(),
    };
    let mut nd = NdarrayRun::new(shapes, k);
    let rows = measure(
        vec![
            ("adapter", Box::new(&mut adapter)),
            ("per_tensor", Box::new(|| per_tensor.step(&grads))),
            ("tensor_ops", Box::new(|| ops.step(&grads))),
            ("framework_sgd", Box::new(|| sgd.step(&grads))),
            ("ndarray", Box::new(|| nd.step())),
            ("framework_floor", Box::new(|| noop.step(&grads))),
        ],
        rounds,
    );
    let errors = meta.take_errors();
    assert!(errors.is_empty(), "the adapter refused steps: {errors:?}");
    rows
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let csv_path = args
        .iter()
        .position(|a| a == "--csv")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let rounds = if quick { 3 } else { 9 };
    let k = args
        .iter()
        .position(|a| a == "--inner-steps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let shapes = resnet50_shapes();
    let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    println!(
        "one optimizer step, ResNet-50 shapes: {} f32 tensors, {:.1}M parameters; K = {k}; median of {rounds} interleaved rounds",
        shapes.len(),
        total as f64 / 1e6
    );
    let mut csv = String::from("framework,threads,variant,ms_per_step\n");
    let mut misses = Vec::new();
    println!(
        "{:<8} {:>7} {:>9} {:>11} {:>14} {:>9}   {:>9} {:>9} {:>9}",
        "",
        "threads",
        "adapter",
        "tensor_ops",
        "framework_sgd",
        "ndarray",
        "vs ops",
        "vs sgd",
        "vs nd"
    );
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool");
        for framework in ["candle", "burn"] {
            if only.as_deref().is_some_and(|o| o != framework) {
                continue;
            }
            let rows = pool.install(|| match framework {
                "candle" => candle_rows(&shapes, k, rounds),
                _ => burn_rows(&shapes, k, rounds),
            });
            let ms = |v: &str| rows.iter().find(|(n, _)| *n == v).map_or(f64::NAN, |r| r.1);
            for (v, t) in rows
                .iter()
                .filter(|(v, _)| !matches!(*v, "framework_floor" | "per_tensor"))
            {
                writeln!(csv, "{framework},{threads},{v},{t:.3}").expect("a string");
            }
            let floor = ms("framework_floor");
            let (a, o, s, n) = (
                ms("adapter"),
                ms("tensor_ops"),
                ms("framework_sgd"),
                ms("ndarray"),
            );
            println!(
                "{framework:<8} {threads:>7} {a:>9.2} {o:>11.2} {s:>14.2} {n:>9.2}   {:>8.1}x {:>8.2}x {:>8.2}x",
                o / a,
                s / a,
                n / a
            );
            let per_tensor = ms("per_tensor");
            if per_tensor.is_finite() {
                writeln!(csv, "{framework},{threads},per_tensor,{per_tensor:.3}")
                    .expect("a string");
                println!(
                    "{:<8} {threads:>7} (per tensor, MetaSGD in burn's ModuleOptimizer: {per_tensor:.2} ms, {:.2}x of ndarray; ModuleOptimizer with an optimizer that changes nothing: {floor:.2} ms)",
                    "",
                    n / per_tensor
                );
            }
            let targets = match framework {
                "candle" => [10.0, 1.5, 0.9],
                _ => [3.0, 1.0, 0.95],
            };
            for (name, got, want) in [
                ("tensor_ops", o / a, targets[0]),
                ("framework_sgd", s / a, targets[1]),
                ("ndarray", n / a, targets[2]),
            ] {
                if got < want {
                    misses.push(format!(
                        "{framework} {threads}T: adapter {got:.2}x of {name} (target >= {want}x)"
                    ));
                }
            }
        }
    }
    println!(
        "(ms per step; vs: the variant's time over the adapter's, higher is faster for the adapter)"
    );
    if misses.is_empty() {
        println!(
            "targets: all met (candle >= 10x tensor_ops, >= 1.5x framework_sgd, >= 0.9x ndarray; burn >= 3x, >= 1.0x, >= 0.95x)"
        );
    } else {
        for m in &misses {
            println!("target missed: {m}");
        }
    }
    if let Some(path) = csv_path {
        std::fs::write(&path, csv).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
        println!("wrote {path}");
    }
}
