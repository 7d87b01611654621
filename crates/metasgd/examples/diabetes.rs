//! A real model on real data: a 10-32-1 ReLU network (`metasgd::meta::Mlp`) regressing disease
//! progression on the diabetes data set (442 patients, 10 features; shipped
//! inside `linfa-datasets`, nothing is downloaded), trained with `MetaSGD`
//! and, from the same initialisation, with plain SGD at the same base rate.
//!
//! Halfway, the MetaSGD run is checkpointed: the optimizer, the model's
//! tensors and the epoch in one atomic, checksummed file
//! (`save_state_with_tensors`), so a crash can never pair a model of one
//! epoch with an optimizer of another. A fresh model and optimizer are
//! loaded from it and finish the run; the resumed run must end bitwise equal
//! to the uninterrupted one. The loss curves go to `target/examples/diabetes-loss.svg`.
//!
//! ```text
//! cargo run --release -p metasgd --example diabetes            # 600 epochs
//! cargo run --release -p metasgd --example diabetes -- --smoke # 40 epochs (CI)
//! cargo run --release -p metasgd --example diabetes -- --robustness # + the base-rate table
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use metasgd::meta::{Mlp, Objective, Regression};
use metasgd::ndarray::{Array2, ArrayD, Axis, IxDyn};
use metasgd::{MetaSGD, Optimizer, Rule};
use metasgd_examples::plot::{Frame, Series, svg};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const SEED: u64 = 42;
const HIDDEN: usize = 32;
const BASE_LR: f32 = 0.01;
const BATCH: usize = 32;
const TEST_FRACTION: f64 = 0.2;

/// Standardised features and targets, split once with a fixed seed.
struct Data {
    train_x: Array2<f32>,
    train_y: Array2<f32>,
    test_x: Array2<f32>,
    test_y: Array2<f32>,
    /// Standard deviation of the training targets: MSEs are reported in the
    /// data set's own units (squared), not the standardised ones.
    y_scale: f32,
}

fn load() -> Data {
    let ds = linfa_datasets::diabetes();
    // linfa's ndarray may differ from ours: go through plain vectors.
    let (n, d) = (ds.records().nrows(), ds.records().ncols());
    let x: Vec<f64> = ds.records().iter().copied().collect();
    let y: Vec<f64> = ds.targets().iter().copied().collect();
    let x =
        Array2::from_shape_vec((n, d), x.into_iter().map(|v| v as f32).collect()).expect("records");
    let y =
        Array2::from_shape_vec((n, 1), y.into_iter().map(|v| v as f32).collect()).expect("targets");

    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(SEED));
    let n_test = (n as f64 * TEST_FRACTION).round() as usize;
    let (test_idx, train_idx) = order.split_at(n_test);
    let pick = |a: &Array2<f32>, idx: &[usize]| a.select(Axis(0), idx);
    let (mut train_x, mut test_x) = (pick(&x, train_idx), pick(&x, test_idx));
    let (mut train_y, mut test_y) = (pick(&y, train_idx), pick(&y, test_idx));

    // Statistics of the training part only.
    let mean = train_x.mean_axis(Axis(0)).expect("rows");
    let std = train_x
        .std_axis(Axis(0), 0.0)
        .mapv(|s| if s > 0.0 { s } else { 1.0 });
    for x in [&mut train_x, &mut test_x] {
        *x = (&*x - &mean) / &std;
    }
    let y_mean = train_y.mean().expect("rows");
    let y_scale = train_y.std(0.0);
    for y in [&mut train_y, &mut test_y] {
        y.mapv_inplace(|v| (v - y_mean) / y_scale);
    }
    Data {
        train_x,
        train_y,
        test_x,
        test_y,
        y_scale,
    }
}

/// The network's tensors: W1 (10x32), b1 (32), W2 (32x1), b2 (1).
type Params = Vec<ArrayD<f32>>;

fn init(inputs: usize) -> Params {
    let mut rng = StdRng::seed_from_u64(SEED + 1);
    let mut he = |fan_in: usize, shape: &[usize]| {
        let scale = (2.0 / fan_in as f32).sqrt();
        let n: usize = shape.iter().product();
        // Uniform with the He variance: sqrt(3) * scale bounds.
        let v = (0..n)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale * 3f32.sqrt())
            .collect();
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape")
    };
    vec![
        he(inputs, &[inputs, HIDDEN]),
        ArrayD::zeros(IxDyn(&[HIDDEN])),
        he(HIDDEN, &[HIDDEN, 1]),
        ArrayD::zeros(IxDyn(&[1])),
    ]
}

/// The network: `metasgd::meta::Mlp` computes the forward pass and the
/// exact gradient (the same code that meta-learning differentiates).
fn net(inputs: usize) -> Mlp {
    Mlp::new(&[inputs, HIDDEN, 1])
}

/// Mean squared error of the network on `(x, y)` and, if asked, its gradient.
fn loss(p: &Params, x: &Array2<f32>, y: &Array2<f32>, grad: bool) -> (f32, Option<Params>) {
    let net = net(x.ncols());
    if grad {
        let batch = Regression {
            x: x.to_owned(),
            y: y.to_owned(),
        };
        let (mse, g) = net
            .loss_grad(p, &batch)
            .expect("the network is built for these inputs");
        return (mse, Some(g));
    }
    let err = net.predict(p, x) - y;
    (err.mapv(|e| e * e).sum() / x.nrows() as f32, None)
}

/// How a run updates the parameters.
enum Trainer {
    MetaSgd(MetaSGD<f32>),
    /// Plain SGD at this rate.
    Sgd(f32),
    /// Adam with PyTorch's defaults (`lr = 0.001`, betas 0.9 and 0.999,
    /// `eps = 1e-8`): its moments and step count.
    Adam(Params, Params, i32),
}

impl Trainer {
    fn adam() -> Self {
        let zeros = init(10).iter().map(|p| p.mapv(|_| 0.0)).collect::<Params>();
        Trainer::Adam(zeros.clone(), zeros, 0)
    }

    fn step(&mut self, params: &mut Params, grads: &Params) {
        match self {
            Trainer::MetaSgd(opt) => {
                let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
                let gv: Vec<_> = grads.iter().map(|g| g.view()).collect();
                opt.step_list_inplace(&mut views, &gv)
                    .expect("shapes match");
            }
            Trainer::Sgd(lr) => {
                for (p, g) in params.iter_mut().zip(grads) {
                    p.zip_mut_with(g, |p, &g| *p -= *lr * g);
                }
            }
            Trainer::Adam(m, v, t) => {
                let (b1, b2, lr, eps) = (0.9_f32, 0.999_f32, 1e-3_f32, 1e-8_f32);
                *t += 1;
                let (c1, c2) = (1.0 - b1.powi(*t), 1.0 - b2.powi(*t));
                for (((p, g), m), v) in params.iter_mut().zip(grads).zip(m).zip(v) {
                    m.zip_mut_with(g, |m, &g| *m = b1 * *m + (1.0 - b1) * g);
                    v.zip_mut_with(g, |v, &g| *v = b2 * *v + (1.0 - b2) * g * g);
                    let step = m.mapv(|m| m / c1) / (v.mapv(|v| (v / c2).sqrt()) + eps);
                    p.zip_mut_with(&step, |p, &s| *p -= lr * s);
                }
            }
        }
    }
}

/// The base rates of the robustness table: two decades around the default.
const BASE_RATES: [f32; 3] = [0.001, 0.01, 0.1];
/// SGD's grid for the best-SGD figure.
const SGD_GRID: [f32; 4] = [0.001, 0.01, 0.03, 0.1];

/// MetaSGD with inner steps 1 and `alpha_lr = 0.05` at `base_lr`, under `rule`.
fn metasgd(base_lr: f32, rule: Rule<f32>) -> MetaSGD<f32> {
    MetaSGD::new(base_lr)
        .with_inner_steps(1)
        .with_alpha_lr(0.05)
        .with_rule(rule)
}

/// The robustness table: final test MSE of the hypergradient rule and the
/// reference rule from each base rate, the best SGD of the grid, and Adam
/// with its defaults, all from the same initialisation and batch order.
fn robustness(data: &Data, epochs: usize, bar: &ProgressBar) -> String {
    let run = |name: String, trainer: Trainer| {
        let mut curve = Curve::new();
        let (p, _) = train(
            init(data.train_x.ncols()),
            trainer,
            data,
            0..epochs,
            &mut curve,
            bar,
            &name,
        );
        (name, evaluate(&p, data).1)
    };
    let mut fields = Vec::new();
    for (label, rule) in [
        ("hypergradient", Rule::hypergradient()),
        ("reference", Rule::Reference),
    ] {
        for lr in BASE_RATES {
            fields.push(run(
                format!("{label}_{lr}"),
                Trainer::MetaSgd(metasgd(lr, rule)),
            ));
        }
    }
    let sgd = SGD_GRID.map(|lr| run(format!("sgd_{lr}"), Trainer::Sgd(lr)).1);
    fields.push((
        "sgd_best".into(),
        sgd.iter().copied().fold(f32::INFINITY, f32::min),
    ));
    fields.push(run("adam".into(), Trainer::adam()));
    let line: Vec<String> = fields.iter().map(|(n, v)| format!("{n}={v:.2}")).collect();
    let grid: Vec<String> = SGD_GRID
        .iter()
        .zip(sgd)
        .map(|(lr, v)| format!("{lr}: {v:.2}"))
        .collect();
    println!("sgd grid (test MSE): {}", grid.join(", "));
    format!("base_rate_robustness {}", line.join(" "))
}

/// One epoch of mini-batch training; the batch order depends only on the
/// seed and the epoch number, so a resumed run sees the same batches.
fn epoch(params: &mut Params, trainer: &mut Trainer, data: &Data, e: usize) {
    let n = data.train_x.nrows();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(SEED ^ (e as u64 + 1) << 8));
    for batch in order.chunks(BATCH) {
        let x = data.train_x.select(Axis(0), batch);
        let y = data.train_y.select(Axis(0), batch);
        let (_, g) = loss(params, &x, &y, true);
        trainer.step(params, &g.expect("gradient"));
    }
}

/// Train and test MSE in the data set's units.
fn evaluate(params: &Params, data: &Data) -> (f32, f32) {
    let scale = data.y_scale * data.y_scale;
    let train = loss(params, &data.train_x, &data.train_y, false).0 * scale;
    let test = loss(params, &data.test_x, &data.test_y, false).0 * scale;
    (train, test)
}

/// The optimizer, the model's tensors and the epoch reached, in one file.
fn save_checkpoint(
    opt: &MetaSGD<f32>,
    params: &Params,
    epoch: usize,
    path: &Path,
) -> metasgd::Result<()> {
    // Epoch counts stay far below 2^24, where f32 is exact.
    let epoch = ArrayD::from_elem(IxDyn(&[]), epoch as f32);
    let names: Vec<String> = (0..params.len()).map(|j| format!("param.{j}")).collect();
    let mut tensors: Vec<(&str, _)> = names
        .iter()
        .zip(params)
        .map(|(n, p)| (n.as_str(), p.view()))
        .collect();
    tensors.push(("epoch", epoch.view()));
    opt.save_state_with_tensors(path, &tensors)
}

fn load_checkpoint(
    path: &Path,
) -> Result<(MetaSGD<f32>, Params, usize), Box<dyn std::error::Error>> {
    let (opt, tensors) = MetaSGD::<f32>::load_state_with_tensors(path)?;
    let mut params = Vec::new();
    let mut epoch = None;
    for (name, t) in tensors {
        match name.as_str() {
            "epoch" => epoch = t.iter().next().map(|&e| e as usize),
            _ => params.push(t),
        }
    }
    let epoch = epoch.ok_or("no epoch in the checkpoint")?;
    if params.len() != 4 {
        return Err(format!(
            "{} model tensors in the checkpoint, expected 4",
            params.len()
        )
        .into());
    }
    Ok((opt, params, epoch))
}

/// Loss per epoch of one run: (train, test).
type Curve = Vec<(f32, f32)>;

fn train(
    mut params: Params,
    mut trainer: Trainer,
    data: &Data,
    epochs: std::ops::Range<usize>,
    curve: &mut Curve,
    bar: &ProgressBar,
    name: &str,
) -> (Params, Trainer) {
    for e in epochs {
        epoch(&mut params, &mut trainer, data, e);
        let (tr, te) = evaluate(&params, data);
        curve.push((tr, te));
        bar.inc(1);
        bar.set_message(format!(
            "{name}: epoch {} train {tr:.0} test {te:.0}",
            e + 1
        ));
    }
    (params, trainer)
}

/// Train (thin) and test (thick) MSE per epoch, one colour per optimizer.
fn plot(path: &Path, curves: &[(&str, &Curve)]) -> Result<(), Box<dyn std::error::Error>> {
    let mut series = Vec::new();
    for (i, (name, curve)) in curves.iter().enumerate() {
        let at = |pick: fn(&(f32, f32)) -> f32| -> Vec<(f64, f64)> {
            let epochs = curve.iter().enumerate();
            epochs
                .map(|(e, p)| ((e + 1) as f64, f64::from(pick(p))))
                .collect()
        };
        series.push(Series::new(format!("{name} train"), at(|p| p.0), i).with_width(1));
        series.push(Series::new(format!("{name} test"), at(|p| p.1), i).with_width(3));
    }
    let title = "diabetes, 10-32-1 ReLU MLP: MSE per epoch";
    let mut frame = Frame::covering(title, "epoch", "MSE (target units squared)", &series);
    // The first epochs' losses are far above the rest: cut at 4x the best.
    let values = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = (
        values().fold(f64::MAX, f64::min),
        values().fold(0.0, f64::max),
    );
    frame.y = lo * 0.9..hi.min(lo * 4.0) * 1.05;
    svg(path, (900, 560), &[(frame, series)])
}

/// `<target>/examples`: the example binary lives in `<target>/<profile>/examples/`.
fn output_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("examples")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let robust = std::env::args().any(|a| a == "--robustness");
    let epochs = if smoke { 40 } else { 600 };
    let start = Instant::now();
    let data = load();
    let mean_predictor =
        data.test_y.mapv(|v| v * v).mean().unwrap_or(f32::NAN) * data.y_scale * data.y_scale;
    println!(
        "diabetes: {} train / {} test patients, {} features; {epochs} epochs, batch {BATCH}, base rate {BASE_LR}",
        data.train_x.nrows(),
        data.test_x.nrows(),
        data.train_x.ncols()
    );
    let out = output_dir();
    std::fs::create_dir_all(&out)?;
    let checkpoint = out.join("diabetes-checkpoint.safetensors");

    let runs = if robust { 11 } else { 0 };
    let bar = ProgressBar::new((3 + runs) * epochs as u64 - epochs as u64 / 2);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} epochs {msg}",
    )?);
    let init = init(data.train_x.ncols());
    let make_opt = || metasgd(BASE_LR, Rule::Reference);
    let half = epochs / 2;

    // MetaSGD, uninterrupted, checkpointed halfway.
    let (mut meta_curve, mut sgd_curve) = (Curve::new(), Curve::new());
    let (p, t) = train(
        init.clone(),
        Trainer::MetaSgd(make_opt()),
        &data,
        0..half,
        &mut meta_curve,
        &bar,
        "metasgd",
    );
    let Trainer::MetaSgd(opt) = &t else {
        unreachable!("a MetaSGD run")
    };
    save_checkpoint(opt, &p, half, &checkpoint)?;
    let (meta_params, t) = train(p, t, &data, half..epochs, &mut meta_curve, &bar, "metasgd");
    let Trainer::MetaSgd(meta_opt) = t else {
        unreachable!("a MetaSGD run")
    };

    // Resumed from disk in a fresh model and optimizer.
    let (opt, p, from) = load_checkpoint(&checkpoint)?;
    let mut resumed_curve = meta_curve[..from].to_vec();
    let (resumed_params, t) = train(
        p,
        Trainer::MetaSgd(opt),
        &data,
        from..epochs,
        &mut resumed_curve,
        &bar,
        "resumed",
    );
    let Trainer::MetaSgd(resumed_opt) = t else {
        unreachable!("a MetaSGD run")
    };
    let same = |a: &[ArrayD<f32>], b: &[ArrayD<f32>]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| x.iter().zip(y).all(|(u, v)| u.to_bits() == v.to_bits()))
    };
    let resumed_equal = same(&meta_params, &resumed_params)
        && same(meta_opt.per_param_lrs(), resumed_opt.per_param_lrs())
        && meta_opt.get_step_count() == resumed_opt.get_step_count();

    // Plain SGD from the same initialisation.
    let (sgd_params, _) = train(
        init,
        Trainer::Sgd(BASE_LR),
        &data,
        0..epochs,
        &mut sgd_curve,
        &bar,
        "sgd",
    );
    let table = robust.then(|| robustness(&data, epochs, &bar));
    bar.finish_and_clear();

    for e in (0..epochs).filter(|e| (e + 1) % (epochs / 10).max(1) == 0) {
        println!(
            "epoch {:>4}: metasgd train {:>7.1} test {:>7.1} | sgd train {:>7.1} test {:>7.1}",
            e + 1,
            meta_curve[e].0,
            meta_curve[e].1,
            sgd_curve[e].0,
            sgd_curve[e].1
        );
    }
    let svg = out.join("diabetes-loss.svg");
    plot(&svg, &[("MetaSGD", &meta_curve), ("SGD", &sgd_curve)])?;
    let alphas: Vec<f32> = meta_opt
        .per_param_lrs()
        .iter()
        .flat_map(|a| a.iter().copied())
        .collect();
    let (lo, hi) = alphas
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &a| (l.min(a), h.max(a)));
    println!(
        "learned per-parameter rates: {} of them, from {lo:.5} to {hi:.5} (all started at {BASE_LR})",
        alphas.len()
    );
    println!("checkpoint (optimizer and model): {}", checkpoint.display());
    println!("loss curves written to {}", svg.display());
    println!("run time {:.2} s", start.elapsed().as_secs_f64());
    if let Some(table) = table {
        println!("{table}");
    }
    let meta_mse = evaluate(&meta_params, &data).1;
    let sgd_mse = evaluate(&sgd_params, &data).1;
    println!(
        "test_mse metasgd={meta_mse:.2} sgd={sgd_mse:.2} mean_predictor={mean_predictor:.2} resumed_bitwise_equal={resumed_equal}"
    );
    if !resumed_equal {
        std::process::exit(1);
    }
    Ok(())
}
