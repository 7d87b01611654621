//! A real network on real data with candle: a small CNN on Fashion-MNIST
//! (60,000 training and 10,000 test images, 28x28), trained from the same
//! initialisation and in the same batch order with `metasgd_candle::MetaSGD`,
//! candle-nn's `AdamW` (default settings) and `SGD` (the best rate of a small
//! grid); test accuracy after every epoch; halfway, MetaSGD's run is saved
//! (model and optimizer in one checksummed file), resumed in a fresh model
//! and optimizer, and must end bitwise equal to the uninterrupted run.
//!
//! ```text
//! apt-get install dataset-fashion-mnist          # the four *-ubyte.gz files
//! cargo run --release -p metasgd-candle --example fashion_mnist_candle
//! cargo run --release -p metasgd-candle --example fashion_mnist_candle -- --smoke   # CI
//! ```
//!
//! The last line is machine-readable:
//! `test_accuracy metasgd=0.9xxx adamw=0.9xxx sgd=0.9xxx resumed_bitwise_equal=true`.

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Conv2d, Linear, Optimizer, VarBuilder, VarMap};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{ArrayD, IxDyn};

use metasgd_core::{MetaSGDConfig, Rule};
use metasgd_examples::fashion_mnist::{self as common, Common, Curve, SEED, Split};

/// Train a CNN on Fashion-MNIST with MetaSGD, AdamW and SGD (candle).
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    common: Common,
}

/// conv 3x3 (16) - ReLU - max-pool 2 - conv 3x3 (32) - ReLU - max-pool 2 -
/// linear (800 -> 10).
struct Cnn {
    c1: Conv2d,
    c2: Conv2d,
    fc: Linear,
}

impl Cnn {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let cfg = Default::default();
        Ok(Self {
            c1: candle_nn::conv2d(1, 16, 3, cfg, vb.pp("c1"))?,
            c2: candle_nn::conv2d(16, 32, 3, cfg, vb.pp("c2"))?,
            fc: candle_nn::linear(32 * 5 * 5, 10, vb.pp("fc"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.c1.forward(x)?.relu()?.max_pool2d(2)?;
        let x = self.c2.forward(&x)?.relu()?.max_pool2d(2)?;
        self.fc.forward(&x.flatten_from(1)?)
    }
}

/// A model whose vars start at `init` (name, values), in name order.
fn model(init: &[(String, Tensor)]) -> candle_core::Result<(Cnn, Vec<(String, Var)>)> {
    let map = VarMap::new();
    let net = Cnn::new(VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
    let mut vars: Vec<(String, Var)> = map
        .data()
        .lock()
        .expect("var map")
        .clone()
        .into_iter()
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for ((name, var), (n, t)) in vars.iter().zip(init) {
        assert_eq!(name, n, "the same parameters");
        var.set(t)?;
    }
    Ok((net, vars))
}

fn batch(split: &Split, idx: &[usize]) -> candle_core::Result<(Tensor, Tensor)> {
    let (x, y) = split.gather(idx);
    Ok((
        Tensor::from_vec(x, (idx.len(), 1, 28, 28), &Device::Cpu)?,
        Tensor::from_vec(y, idx.len(), &Device::Cpu)?,
    ))
}

fn accuracy(net: &Cnn, test: &Split) -> candle_core::Result<f64> {
    let mut correct = 0usize;
    let all: Vec<usize> = (0..test.len()).collect();
    for chunk in all.chunks(1000) {
        let (x, y) = batch(test, chunk)?;
        let pred = net.forward(&x)?.argmax(1)?;
        correct += pred
            .eq(&y)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
    }
    Ok(correct as f64 / test.len() as f64)
}

/// What every run reads.
struct Run<'a> {
    train: &'a Split,
    test: &'a Split,
    args: &'a Common,
    bar: ProgressBar,
}

/// Epochs `epochs` of `opt` on `net`; the test accuracy goes to `curve`
/// `evals_per_epoch` times per epoch, and `at_eval` runs at each evaluation
/// (no evaluation without a curve).
fn train<O: Optimizer>(
    run: &Run<'_>,
    net: &Cnn,
    opt: &mut O,
    epochs: std::ops::Range<usize>,
    mut curve: Option<&mut Curve>,
    mut at_eval: impl FnMut(&O, f64),
) -> candle_core::Result<()> {
    for e in epochs {
        let batches = common::order(run.train.len(), run.args.batch, e);
        let n = batches.len();
        for (b, idx) in batches.iter().enumerate() {
            let (x, y) = batch(run.train, idx)?;
            let loss = candle_nn::loss::cross_entropy(&net.forward(&x)?, &y)?;
            opt.backward_step(&loss)?;
            run.bar.inc(1);
            if let Some(c) = curve.as_deref_mut()
                && common::evaluate_after(b, n, run.args.evals_per_epoch)
            {
                let at = e as f64 + (b + 1) as f64 / n as f64;
                c.points.push((at, accuracy(net, run.test)?));
                at_eval(opt, at);
            }
        }
    }
    Ok(())
}

/// One layer's learned rates at one evaluation: the 5th, 25th, 50th, 75th
/// and 95th percentiles.
type Quantiles = [f64; 5];

/// Every layer's quantiles at each evaluation (its epoch).
type Snapshots = Vec<(f64, Vec<Quantiles>)>;

fn quantiles(rates: &ArrayD<f32>) -> Quantiles {
    let mut v: Vec<f32> = rates.iter().copied().filter(|r| !r.is_nan()).collect();
    v.sort_by(f32::total_cmp);
    let at = |q: f64| {
        let i = ((v.len().saturating_sub(1)) as f64 * q).round() as usize;
        v.get(i).map_or(f64::NAN, |&r| f64::from(r))
    };
    [at(0.05), at(0.25), at(0.5), at(0.75), at(0.95)]
}

/// How the learned rates spread over training: per layer, the median (line)
/// and the 5-95% band (shaded), on a log scale.
fn plot_rates(
    path: &std::path::Path,
    title: &str,
    layers: &[String],
    snapshots: &[(f64, Vec<Quantiles>)],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (860, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let all = snapshots
        .iter()
        .flat_map(|(_, q)| q.iter().flat_map(|q| [q[0], q[4]]));
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    let epochs = snapshots.last().map_or(1.0, |s| s.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..epochs, (lo * 0.8..hi * 1.25).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("learned rate (median, 5-95%)")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (j, (layer, &color)) in layers.iter().zip(colors.iter().cycle()).enumerate() {
        let band: Vec<(f64, f64)> = snapshots
            .iter()
            .map(|(e, q)| (*e, q[j][4]))
            .chain(snapshots.iter().rev().map(|(e, q)| (*e, q[j][0])))
            .collect();
        chart.draw_series(std::iter::once(Polygon::new(
            band,
            color.mix(0.15).filled(),
        )))?;
        let median: Vec<(f64, f64)> = snapshots.iter().map(|(e, q)| (*e, q[j][2])).collect();
        chart
            .draw_series(LineSeries::new(median, color.stroke_width(2)))?
            .label(layer.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// MetaSGD for candle's vars with the example's settings, `rule` and base
/// rate `lr`.
fn config(args: &Common, rule: Rule<f32>, lr: f64) -> MetaSGDConfig<f32> {
    MetaSGDConfig::new(lr as f32)
        .with_inner_steps(1)
        .with_alpha_lr(args.alpha_lr as f32)
        .with_rule(rule)
}

/// A whole MetaSGD run from `init` under `rule` from base rate `lr`; the
/// rates' quantiles per var at each evaluation.
fn metasgd_run(
    run: &Run<'_>,
    init: &[(String, Tensor)],
    (rule, lr): (Rule<f32>, f64),
    name: String,
) -> candle_core::Result<(Curve, Snapshots)> {
    let (net, vars) = model(init)?;
    let vars: Vec<Var> = vars.into_iter().map(|(_, v)| v).collect();
    let mut opt = metasgd_candle::MetaSGD::new(vars, config(run.args, rule, lr))?;
    let mut curve = Curve::new(name);
    let mut snapshots = Vec::new();
    run.bar.set_message(curve.name.clone());
    let epochs = 0..run.args.epochs.unwrap_or(1);
    train(run, &net, &mut opt, epochs, Some(&mut curve), |o, at| {
        snapshots.push((
            at,
            o.state().per_param_lrs().iter().map(quantiles).collect(),
        ));
    })?;
    Ok((curve, snapshots))
}

fn values(vars: &[(String, Var)]) -> candle_core::Result<Vec<(String, ArrayD<f32>)>> {
    vars.iter()
        .map(|(n, v)| {
            let t = v.as_tensor();
            let a = ArrayD::from_shape_vec(IxDyn(t.dims()), t.flatten_all()?.to_vec1::<f32>()?)
                .map_err(candle_core::Error::wrap)?;
            Ok((n.clone(), a))
        })
        .collect()
}

fn bits(vars: &[(String, Var)]) -> candle_core::Result<Vec<u32>> {
    let mut out = Vec::new();
    for (_, v) in vars {
        out.extend(
            v.as_tensor()
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|x| x.to_bits()),
        );
    }
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = Args::parse().common;
    let epochs = common::settle(&mut args, 2);
    args.epochs = Some(epochs);
    let (train_set, test) = common::load(&args);
    std::fs::create_dir_all(&args.out)?;
    let start = Instant::now();
    println!(
        "Fashion-MNIST: {} training and {} test images; CNN 16c3-pool-32c3-pool-fc10; batch {}, {} epochs, {} evaluations per epoch, seed {SEED}",
        train_set.len(),
        test.len(),
        args.batch,
        epochs,
        args.evals_per_epoch
    );
    // One initialisation for every run of this process (candle's CPU
    // generator cannot be seeded, so it changes from process to process).
    let init: Vec<(String, Tensor)> = {
        let map = VarMap::new();
        Cnn::new(VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
        let mut v: Vec<(String, Tensor)> = map
            .data()
            .lock()
            .expect("var map")
            .iter()
            .map(|(n, var)| (n.clone(), var.as_tensor().copy().expect("copy")))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let extra = common::robustness_runs(&args);
    let batches = train_set.len().div_ceil(args.batch) as u64;
    let runs = 3 + args.sgd_grid.len() as u64 + extra.len() as u64;
    let bar =
        ProgressBar::new(batches * (epochs as u64 * runs + epochs as u64 - epochs as u64 / 2));
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} batches {elapsed_precise} eta {eta} {msg}",
    )?);
    let run = Run {
        train: &train_set,
        test: &test,
        args: &args,
        bar: bar.clone(),
    };
    let vars_of = |vars: &[(String, Var)]| vars.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();

    // MetaSGD (the reference rule), uninterrupted, checkpointed (model and
    // optimizer, one file) halfway.
    let half = epochs / 2;
    let checkpoint = args.out.join("fashion-mnist-candle-metasgd.safetensors");
    let (net, vars) = model(&init)?;
    let mut opt =
        metasgd_candle::MetaSGD::new(vars_of(&vars), config(&args, Rule::Reference, args.base_lr))?;
    let mut reference = Curve::new(format!(
        "MetaSGD, reference rule (base rate {})",
        args.base_lr
    ));
    bar.set_message("metasgd");
    train(
        &run,
        &net,
        &mut opt,
        0..half,
        Some(&mut reference),
        |_, _| {},
    )?;
    let vals = values(&vars)?;
    let views: Vec<(&str, _)> = vals.iter().map(|(n, a)| (n.as_str(), a.view())).collect();
    opt.state().save_state_with_tensors(&checkpoint, &views)?;
    train(
        &run,
        &net,
        &mut opt,
        half..epochs,
        Some(&mut reference),
        |_, _| {},
    )?;
    let uninterrupted = bits(&vars)?;

    // Resumed from the checkpoint in a fresh model and optimizer.
    bar.set_message("resumed");
    let (core, tensors) = metasgd_core::MetaSGD::<f32>::load_state_with_tensors(&checkpoint)?;
    let saved: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, a)| {
            let t = Tensor::from_vec(
                a.iter().copied().collect::<Vec<f32>>(),
                a.shape(),
                &Device::Cpu,
            )?;
            Ok((n, t))
        })
        .collect::<candle_core::Result<_>>()?;
    let (net2, vars2) = model(&saved)?;
    let mut opt2 = metasgd_candle::MetaSGD::from_state(vars_of(&vars2), core)?;
    train(&run, &net2, &mut opt2, half..epochs, None, |_, _| {})?;
    let resumed_equal = bits(&vars2)? == uninterrupted;

    // AdamW with candle-nn's defaults.
    bar.set_message("adamw");
    let (net, vars) = model(&init)?;
    let mut adamw_opt = candle_nn::AdamW::new(vars_of(&vars), Default::default())?;
    let mut adamw = Curve::new("AdamW (candle-nn defaults)");
    train(
        &run,
        &net,
        &mut adamw_opt,
        0..epochs,
        Some(&mut adamw),
        |_, _| {},
    )?;

    // SGD, every rate of the grid; the best is reported.
    let mut best_sgd: Option<Curve> = None;
    for &lr in &args.sgd_grid {
        bar.set_message(format!("sgd {lr}"));
        let (net, vars) = model(&init)?;
        let mut sgd = candle_nn::SGD::new(vars_of(&vars), lr)?;
        let mut curve = Curve::new("");
        train(&run, &net, &mut sgd, 0..epochs, Some(&mut curve), |_, _| {})?;
        bar.suspend(|| common::keep_best(&mut best_sgd, lr, curve));
    }

    // The hypergradient rule from its default base rate (and how its rates
    // spread), then the table's runs.
    let name = format!(
        "MetaSGD, hypergradient rule (base rate {})",
        args.hypergradient_lr
    );
    let (hypergradient, snapshots) = metasgd_run(
        &run,
        &init,
        (Rule::hypergradient(), args.hypergradient_lr),
        name,
    )?;
    let mut done = Vec::new();
    for t in extra {
        let curve = metasgd_run(&run, &init, common::run_setting(t), common::run_name(t))?.0;
        bar.suspend(|| println!("  {}: final test accuracy {:.4}", curve.name, curve.last()));
        done.push((t, curve.last()));
    }
    bar.finish_and_clear();
    let mains = common::Mains {
        reference,
        adamw,
        best_sgd,
        hypergradient,
    };
    let svg = args.out.join("fashion-mnist-candle.svg");
    let title = "Fashion-MNIST, small CNN in candle: test accuracy";
    let (curves, robustness) = common::conclude(&args, done, mains, &svg, title)?;
    let rates_svg = args.out.join("fashion-mnist-candle-rates.svg");
    let layers: Vec<String> = init.iter().map(|(n, _)| n.clone()).collect();
    let title = format!(
        "learned rates of the hypergradient rule (base rate {}), per tensor",
        args.hypergradient_lr
    );
    plot_rates(&rates_svg, &title, &layers, &snapshots)?;
    for (e, q) in snapshots.iter().step_by(args.evals_per_epoch.max(1)) {
        let med: Vec<String> = layers
            .iter()
            .zip(q)
            .map(|(l, q)| format!("{l} {:.4}", q[2]))
            .collect();
        println!("  rates at epoch {e:.2}: median {}", med.join(", "));
    }
    println!(
        "wrote {}, {} and {}; {:.0} s",
        svg.display(),
        rates_svg.display(),
        checkpoint.display(),
        start.elapsed().as_secs_f64()
    );
    common::report(&curves, robustness, resumed_equal);
    Ok(())
}
