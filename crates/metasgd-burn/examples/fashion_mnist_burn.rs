//! A real network on real data with burn: a small CNN on Fashion-MNIST
//! (60,000 training and 10,000 test images, 28x28) on the Flex CPU backend,
//! trained from the same initialisation and in the same batch order with
//! `metasgd_burn::MetaSGD` (the reference rule from base rate 0.1, the
//! hypergradient rule from 0.01), burn's `AdamW` (default settings, lr 1e-3)
//! and `Sgd` (the best rate of 0.001, 0.01, 0.03, 0.1); test accuracy four
//! times per epoch; `--robustness` adds both rules from 0.001, 0.01 and 0.1;
//! halfway, MetaSGD's run is saved with burn's own records (the model's and
//! the optimizer's burnpack files), resumed in a fresh model and optimizer,
//! and must end bitwise equal to the uninterrupted run.
//!
//! ```text
//! apt-get install dataset-fashion-mnist          # the four *-ubyte.gz files
//! cargo run --release -p metasgd-burn --example fashion_mnist_burn
//! cargo run --release -p metasgd-burn --example fashion_mnist_burn -- --smoke   # CI
//! cargo run --release -p metasgd-burn --example fashion_mnist_burn -- --robustness
//! ```
//!
//! The last line is machine-readable:
//! `test_accuracy metasgd=0.9xxx adamw=0.9xxx sgd=0.9xxx hypergradient=0.9xxx resumed_bitwise_equal=true`,
//! after `base_rate_robustness hypergradient_0.001=.. .. sgd_best=.. adamw=..` under `--robustness`.

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use metasgd_core::{MetaSGDConfig, Rule};
use metasgd_examples::fashion_mnist::{self as common, Common, Curve, SEED, Split};

/// Train a CNN on Fashion-MNIST with MetaSGD, AdamW and SGD (burn, Flex).
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// AdamW's learning rate (burn passes the rate to every step; 1e-3 is
    /// the customary default).
    #[arg(long, default_value_t = 1e-3)]
    adamw_lr: f64,
}

/// conv 3x3 (16) - ReLU - max-pool 2 - conv 3x3 (32) - ReLU - max-pool 2 -
/// linear (800 -> 10): the candle example's network.
#[derive(Module, Debug)]
struct Cnn {
    c1: Conv2d,
    c2: Conv2d,
    pool: MaxPool2d,
    fc: Linear,
}

impl Cnn {
    fn new(device: &Device) -> Self {
        Self {
            c1: Conv2dConfig::new([1, 16], [3, 3]).init(device),
            c2: Conv2dConfig::new([16, 32], [3, 3]).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc: LinearConfig::new(32 * 5 * 5, 10).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(relu(self.c1.forward(x)));
        let x = self.pool.forward(relu(self.c2.forward(x)));
        self.fc.forward(x.flatten(1, 3))
    }
}

fn batch(split: &Split, idx: &[usize], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let (x, y) = split.gather(idx);
    let y: Vec<i64> = y.into_iter().map(i64::from).collect();
    (
        Tensor::from_data(TensorData::new(x, [idx.len(), 1, 28, 28]), device),
        Tensor::from_data(TensorData::new(y, [idx.len()]), device),
    )
}

fn accuracy(net: &Cnn, test: &Split, device: &Device) -> f64 {
    let net = net.valid();
    let inner = device.clone().inner();
    let mut correct = 0i64;
    let all: Vec<usize> = (0..test.len()).collect();
    for chunk in all.chunks(1000) {
        let (x, y) = batch(test, chunk, &inner);
        let pred = net.forward(x).argmax(1).flatten::<1>(0, 1);
        correct += pred.equal(y).int().sum().into_scalar::<i64>();
    }
    correct as f64 / test.len() as f64
}

/// What every epoch reads.
struct Run<'a> {
    train: &'a Split,
    test: &'a Split,
    batch: usize,
    evals: usize,
    device: Device,
    bar: ProgressBar,
}

/// Epochs `epochs` of `optim` at rate `lr` on `net`; the test accuracy goes
/// to `curve` `run.evals` times per epoch (no evaluation without a curve).
fn train(
    run: &Run<'_>,
    mut net: Cnn,
    optim: &mut ModuleOptimizer,
    lr: f64,
    epochs: std::ops::Range<usize>,
    mut curve: Option<&mut Curve>,
) -> Cnn {
    let (device, bar) = (&run.device, &run.bar);
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    for e in epochs {
        let batches = common::order(run.train.len(), run.batch, e);
        let n = batches.len();
        for (b, idx) in batches.iter().enumerate() {
            let (x, y) = batch(run.train, idx, device);
            let loss = loss_fn.forward(net.forward(x), y);
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(lr, net, grads);
            bar.inc(1);
            if let Some(c) = curve.as_deref_mut()
                && common::evaluate_after(b, n, run.evals)
            {
                let at = e as f64 + (b + 1) as f64 / n as f64;
                c.points.push((at, accuracy(&net, run.test, device)));
            }
        }
    }
    net
}

/// MetaSGD for burn with the example's settings and `rule`.
fn metasgd(args: &Common, rule: Rule<f64>) -> metasgd_burn::MetaSGD {
    metasgd_burn::MetaSGD::new(
        MetaSGDConfig::<f64>::default()
            .with_inner_steps(1)
            .with_alpha_lr(args.alpha_lr)
            .with_rule(rule),
    )
}

/// A whole run of MetaSGD under `rule` from base rate `lr`, checking that
/// burn recorded no refused step.
fn metasgd_run(
    run: &Run<'_>,
    args: &Common,
    init: &Cnn,
    (rule, lr): (Rule<f64>, f64),
    epochs: usize,
    name: String,
) -> Result<Curve, String> {
    let meta = metasgd(args, rule);
    let mut curve = Curve::new(name);
    run.bar.set_message(curve.name.clone());
    train(
        run,
        init.clone(),
        &mut meta.init(),
        lr,
        0..epochs,
        Some(&mut curve),
    );
    match meta.take_errors() {
        e if e.is_empty() => Ok(curve),
        e => Err(format!("MetaSGD refused steps: {e:?}")),
    }
}

/// The bits of every parameter, in the module's order.
#[derive(Default)]
struct Bits(Vec<u32>);

impl ModuleVisitor for Bits {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let values: Vec<f32> = param.val().into_data().try_to_vec().unwrap_or_default();
        self.0.extend(values.iter().map(|x| x.to_bits()));
    }
}

fn bits(net: &Cnn) -> Vec<u32> {
    let mut bits = Bits::default();
    net.visit(&mut bits);
    bits.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let parsed = Args::parse();
    let adamw_lr = parsed.adamw_lr;
    let mut args = parsed.common;
    let epochs = common::settle(&mut args, 4);
    let (train_set, test) = common::load(&args);
    std::fs::create_dir_all(&args.out)?;
    let start = Instant::now();
    println!(
        "Fashion-MNIST: {} training and {} test images; CNN 16c3-pool-32c3-pool-fc10 (burn, Flex); batch {}, {} epochs, {} evaluations per epoch, seed {SEED}",
        train_set.len(),
        test.len(),
        args.batch,
        epochs,
        args.evals_per_epoch
    );
    let device = Device::flex().autodiff();
    device.seed(SEED);
    let init = Cnn::new(&device);

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
        batch: args.batch,
        evals: args.evals_per_epoch,
        device: device.clone(),
        bar: bar.clone(),
    };

    // MetaSGD (the reference rule), uninterrupted; model and optimizer saved
    // halfway with burn's records.
    let half = epochs / 2;
    let model_file = args.out.join("fashion-mnist-burn-model.bpk");
    let optim_file = args.out.join("fashion-mnist-burn-metasgd.bpk");
    let meta = metasgd(&args, Rule::Reference);
    let mut optim = meta.init();
    let mut reference = Curve::new(format!(
        "MetaSGD, reference rule (base rate {})",
        args.base_lr
    ));
    bar.set_message("metasgd");
    let net = train(
        &run,
        init.clone(),
        &mut optim,
        args.base_lr,
        0..half,
        Some(&mut reference),
    );
    net.clone().save_file(&model_file)?;
    optim.save(&optim_file)?;
    let net = train(
        &run,
        net,
        &mut optim,
        args.base_lr,
        half..epochs,
        Some(&mut reference),
    );
    if let errors @ [_, ..] = &meta.take_errors()[..] {
        return Err(format!("MetaSGD refused steps: {errors:?}").into());
    }
    let uninterrupted = bits(&net);

    // Resumed from the files in a fresh model and optimizer.
    bar.set_message("resumed");
    let net2 = Cnn::new(&device).try_load_file(&model_file)?;
    let mut optim2 = meta.init().load(&optim_file)?;
    let net2 = train(&run, net2, &mut optim2, args.base_lr, half..epochs, None);
    let resumed_equal = bits(&net2) == uninterrupted && meta.take_errors().is_empty();

    // AdamW with burn's defaults.
    bar.set_message("adamw");
    let mut adamw = Curve::new(format!("AdamW (defaults, lr {adamw_lr})"));
    train(
        &run,
        init.clone(),
        &mut AdamWConfig::new().init(),
        adamw_lr,
        0..epochs,
        Some(&mut adamw),
    );

    // SGD, every rate of the grid; the best is reported.
    let mut best_sgd: Option<Curve> = None;
    for &lr in &args.sgd_grid {
        bar.set_message(format!("sgd {lr}"));
        let mut curve = Curve::new("");
        train(
            &run,
            init.clone(),
            &mut SgdConfig::new().init(),
            lr,
            0..epochs,
            Some(&mut curve),
        );
        bar.suspend(|| common::keep_best(&mut best_sgd, lr, curve));
    }

    // The hypergradient rule from its default base rate, then the table's runs.
    let default_rule = (Rule::hypergradient(), args.hypergradient_lr);
    let name = format!(
        "MetaSGD, hypergradient rule (base rate {})",
        args.hypergradient_lr
    );
    let hypergradient = metasgd_run(&run, &args, &init, default_rule, epochs, name)?;
    let mut done = Vec::new();
    for t in extra {
        let curve = metasgd_run(
            &run,
            &args,
            &init,
            common::run_setting(t),
            epochs,
            common::run_name(t),
        )?;
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
    let svg = args.out.join("fashion-mnist-burn.svg");
    let title = "Fashion-MNIST, small CNN in burn (Flex): test accuracy";
    let (curves, robustness) = common::conclude(&args, done, mains, &svg, title)?;
    println!(
        "wrote {}, {} and {}; {:.0} s",
        svg.display(),
        model_file.display(),
        optim_file.display(),
        start.elapsed().as_secs_f64()
    );
    common::report(&curves, robustness, resumed_equal);
    Ok(())
}
