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
//! cargo run --release -p metasgd-candle --example fashion_mnist
//! cargo run --release -p metasgd-candle --example fashion_mnist -- --smoke   # CI
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

#[path = "../../../examples/common/fashion_mnist.rs"]
mod common;
use common::{Common, Curve, SEED, Split};

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

/// One epoch of `opt` on `net`.
fn epoch<O: Optimizer>(
    net: &Cnn,
    opt: &mut O,
    train: &Split,
    args: &Common,
    e: usize,
    bar: &ProgressBar,
) -> candle_core::Result<f32> {
    let mut last = 0.0;
    for idx in common::order(train.len(), args.batch, e) {
        let (x, y) = batch(train, &idx)?;
        let loss = candle_nn::loss::cross_entropy(&net.forward(&x)?, &y)?;
        opt.backward_step(&loss)?;
        last = loss.to_scalar::<f32>()?;
        bar.inc(1);
    }
    Ok(last)
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

fn config(args: &Common) -> metasgd_core::MetaSGDConfig<f32> {
    metasgd_core::MetaSGDConfig::new(args.base_lr as f32)
        .with_inner_steps(1)
        .with_alpha_lr(args.alpha_lr as f32)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = Args::parse().common;
    let epochs = common::settle(&mut args, 2);
    let (train, test) = common::load(&args);
    std::fs::create_dir_all(&args.out)?;
    let start = Instant::now();
    println!(
        "Fashion-MNIST: {} training and {} test images; CNN 16c3-pool-32c3-pool-fc10; batch {}, {} epochs, seed {SEED}",
        train.len(),
        test.len(),
        args.batch,
        epochs
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
    let batches = train.len().div_ceil(args.batch) as u64;
    let runs = 2 + args.sgd_grid.len() as u64;
    let bar =
        ProgressBar::new(batches * (epochs as u64 * runs + epochs as u64 - epochs as u64 / 2));
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} batches {elapsed_precise} eta {eta} {msg}",
    )?);
    let mut curves = Vec::new();

    // MetaSGD, uninterrupted, checkpointed (model and optimizer, one file) halfway.
    let half = epochs / 2;
    let checkpoint = args.out.join("fashion-mnist-candle-metasgd.safetensors");
    let (net, vars) = model(&init)?;
    let mut opt =
        metasgd_candle::MetaSGD::new(vars.iter().map(|(_, v)| v.clone()).collect(), config(&args))?;
    let mut acc = Vec::new();
    for e in 0..epochs {
        if e == half {
            let vals = values(&vars)?;
            let views: Vec<(&str, _)> = vals.iter().map(|(n, a)| (n.as_str(), a.view())).collect();
            opt.state().save_state_with_tensors(&checkpoint, &views)?;
        }
        bar.set_message(format!("metasgd epoch {}", e + 1));
        epoch(&net, &mut opt, &train, &args, e, &bar)?;
        acc.push(accuracy(&net, &test)?);
    }
    let uninterrupted = bits(&vars)?;
    curves.push(Curve {
        name: "MetaSGD".into(),
        acc,
    });

    // Resumed from the checkpoint in a fresh model and optimizer.
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
    let mut opt2 =
        metasgd_candle::MetaSGD::from_state(vars2.iter().map(|(_, v)| v.clone()).collect(), core)?;
    for e in half..epochs {
        bar.set_message(format!("resumed epoch {}", e + 1));
        epoch(&net2, &mut opt2, &train, &args, e, &bar)?;
    }
    let resumed_equal = bits(&vars2)? == uninterrupted;

    // AdamW with candle-nn's defaults.
    let (net, vars) = model(&init)?;
    let mut adamw = candle_nn::AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        Default::default(),
    )?;
    let mut acc = Vec::new();
    for e in 0..epochs {
        bar.set_message(format!("adamw epoch {}", e + 1));
        epoch(&net, &mut adamw, &train, &args, e, &bar)?;
        acc.push(accuracy(&net, &test)?);
    }
    curves.push(Curve {
        name: "AdamW (defaults)".into(),
        acc,
    });

    // SGD, every rate of the grid; the best is reported.
    let mut best_sgd: Option<Curve> = None;
    for &lr in &args.sgd_grid {
        let (net, vars) = model(&init)?;
        let mut sgd = candle_nn::SGD::new(vars.iter().map(|(_, v)| v.clone()).collect(), lr)?;
        let mut acc = Vec::new();
        for e in 0..epochs {
            bar.set_message(format!("sgd {lr} epoch {}", e + 1));
            epoch(&net, &mut sgd, &train, &args, e, &bar)?;
            acc.push(accuracy(&net, &test)?);
        }
        bar.suspend(|| common::keep_best(&mut best_sgd, lr, acc));
    }
    bar.finish_and_clear();
    curves.extend(best_sgd);

    let svg = args.out.join("fashion-mnist-candle.svg");
    common::plot(
        &svg,
        "Fashion-MNIST, small CNN in candle: test accuracy",
        &curves,
    )?;
    println!(
        "wrote {} and {}; {:.0} s",
        svg.display(),
        checkpoint.display(),
        start.elapsed().as_secs_f64()
    );
    common::report(&curves, resumed_equal);
    Ok(())
}
