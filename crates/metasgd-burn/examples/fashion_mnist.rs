//! A real network on real data with burn: a small CNN on Fashion-MNIST
//! (60,000 training and 10,000 test images, 28x28) on the Flex CPU backend,
//! trained from the same initialisation and in the same batch order with
//! `metasgd_burn::MetaSGD`, burn's `AdamW` (default settings, lr 1e-3) and
//! `Sgd` (the best rate of a small grid); test accuracy after every epoch;
//! halfway, MetaSGD's run is saved with burn's own records (the model's and
//! the optimizer's burnpack files), resumed in a fresh model and optimizer,
//! and must end bitwise equal to the uninterrupted run.
//!
//! ```text
//! apt-get install dataset-fashion-mnist          # the four *-ubyte.gz files
//! cargo run --release -p metasgd-burn --example fashion_mnist
//! cargo run --release -p metasgd-burn --example fashion_mnist -- --smoke   # CI
//! ```
//!
//! The last line is machine-readable:
//! `test_accuracy metasgd=0.9xxx adamw=0.9xxx sgd=0.9xxx resumed_bitwise_equal=true`.

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

#[path = "../../../examples/common/fashion_mnist.rs"]
mod common;
use common::{Common, Curve, SEED, Split};

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
    batch: usize,
    device: Device,
    bar: ProgressBar,
}

/// One epoch (number `e`) of `optim` at rate `lr` on `net`.
fn epoch(run: &Run<'_>, mut net: Cnn, optim: &mut ModuleOptimizer, lr: f64, e: usize) -> Cnn {
    let (train, device, bar) = (run.train, &run.device, &run.bar);
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    for idx in common::order(train.len(), run.batch, e) {
        let (x, y) = batch(train, &idx, device);
        let loss = loss_fn.forward(net.forward(x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(lr, net, grads);
        bar.inc(1);
    }
    net
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
    let (train, test) = common::load(&args);
    std::fs::create_dir_all(&args.out)?;
    let start = Instant::now();
    println!(
        "Fashion-MNIST: {} training and {} test images; CNN 16c3-pool-32c3-pool-fc10 (burn, Flex); batch {}, {} epochs, seed {SEED}",
        train.len(),
        test.len(),
        args.batch,
        epochs
    );
    let device = Device::flex().autodiff();
    device.seed(SEED);
    let init = Cnn::new(&device);

    let batches = train.len().div_ceil(args.batch) as u64;
    let runs = 2 + args.sgd_grid.len() as u64;
    let bar =
        ProgressBar::new(batches * (epochs as u64 * runs + epochs as u64 - epochs as u64 / 2));
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} batches {elapsed_precise} eta {eta} {msg}",
    )?);
    let run = Run {
        train: &train,
        batch: args.batch,
        device: device.clone(),
        bar: bar.clone(),
    };
    let mut curves = Vec::new();

    // MetaSGD, uninterrupted; model and optimizer saved halfway with burn's records.
    let half = epochs / 2;
    let model_file = args.out.join("fashion-mnist-burn-model.bpk");
    let optim_file = args.out.join("fashion-mnist-burn-metasgd.bpk");
    let meta = metasgd_burn::MetaSGD::new(
        metasgd_core::MetaSGDConfig::<f64>::default()
            .with_inner_steps(1)
            .with_alpha_lr(args.alpha_lr),
    );
    let mut optim = meta.init();
    let mut net = init.clone();
    let mut acc = Vec::new();
    for e in 0..epochs {
        if e == half {
            net.clone().save_file(&model_file)?;
            optim.save(&optim_file)?;
        }
        bar.set_message(format!("metasgd epoch {}", e + 1));
        net = epoch(&run, net, &mut optim, args.base_lr, e);
        acc.push(accuracy(&net, &test, &device));
    }
    let errors = meta.take_errors();
    if !errors.is_empty() {
        return Err(format!("MetaSGD refused steps: {errors:?}").into());
    }
    let uninterrupted = bits(&net);
    curves.push(Curve {
        name: "MetaSGD".into(),
        acc,
    });

    // Resumed from the files in a fresh model and optimizer.
    let mut net2 = Cnn::new(&device).try_load_file(&model_file)?;
    let mut optim2 = meta.init().load(&optim_file)?;
    for e in half..epochs {
        bar.set_message(format!("resumed epoch {}", e + 1));
        net2 = epoch(&run, net2, &mut optim2, args.base_lr, e);
    }
    let resumed_equal = bits(&net2) == uninterrupted && meta.take_errors().is_empty();

    // AdamW with burn's defaults.
    let mut adamw = AdamWConfig::new().init();
    let mut net = init.clone();
    let mut acc = Vec::new();
    for e in 0..epochs {
        bar.set_message(format!("adamw epoch {}", e + 1));
        net = epoch(&run, net, &mut adamw, adamw_lr, e);
        acc.push(accuracy(&net, &test, &device));
    }
    curves.push(Curve {
        name: format!("AdamW (defaults, lr {adamw_lr})"),
        acc,
    });

    // SGD, every rate of the grid; the best is reported.
    let mut best_sgd: Option<Curve> = None;
    for &lr in &args.sgd_grid {
        let mut sgd = SgdConfig::new().init();
        let mut net = init.clone();
        let mut acc = Vec::new();
        for e in 0..epochs {
            bar.set_message(format!("sgd {lr} epoch {}", e + 1));
            net = epoch(&run, net, &mut sgd, lr, e);
            acc.push(accuracy(&net, &test, &device));
        }
        bar.suspend(|| common::keep_best(&mut best_sgd, lr, acc));
    }
    bar.finish_and_clear();
    curves.extend(best_sgd);

    let svg = args.out.join("fashion-mnist-burn.svg");
    common::plot(
        &svg,
        "Fashion-MNIST, small CNN in burn (Flex): test accuracy",
        &curves,
    )?;
    println!(
        "wrote {}, {} and {}; {:.0} s",
        svg.display(),
        model_file.display(),
        optim_file.display(),
        start.elapsed().as_secs_f64()
    );
    common::report(&curves, resumed_equal);
    Ok(())
}
