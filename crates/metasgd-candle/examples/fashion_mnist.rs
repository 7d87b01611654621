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

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Conv2d, Linear, Optimizer, VarBuilder, VarMap};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{ArrayD, IxDyn};
use plotters::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;

const SEED: u64 = 7;

/// Train a CNN on Fashion-MNIST with MetaSGD, AdamW and SGD.
#[derive(Parser, Debug)]
struct Args {
    /// The directory with the four `*-ubyte.gz` files.
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    data: PathBuf,
    /// Epochs per run.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// MetaSGD's base rate (every per-parameter rate starts here).
    #[arg(long, default_value_t = 0.1)]
    base_lr: f64,
    /// MetaSGD's rate of the rates.
    #[arg(long, default_value_t = 0.01)]
    alpha_lr: f64,
    /// SGD's rates to try; the best test accuracy is reported.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.03,0.1")]
    sgd_grid: Vec<f64>,
    /// A short run for CI: 3,000 training and 1,000 test images, one epoch.
    #[arg(long)]
    smoke: bool,
    /// Where the SVG and the checkpoint go.
    #[arg(long, default_value = "target/examples")]
    out: PathBuf,
}

/// Images as `[n, 1, 28, 28]` floats in [0, 1] and labels as `u32`.
struct Split {
    images: Vec<f32>,
    labels: Vec<u32>,
}

impl Split {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn truncate(&mut self, n: usize) {
        self.labels.truncate(n);
        self.images.truncate(n * 784);
    }
}

const HOW_TO_GET: &str = "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist: \
/usr/share/datasets/fashion-mnist), or download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist \
into a directory and pass --data DIR";

/// A gzipped IDX file's bytes, checked: magic `0x0000_08_dd` (unsigned
/// bytes, `dims` dimensions), the dimensions, and exactly that many bytes.
fn read_idx(path: &Path, dims: u8) -> Result<(Vec<usize>, Vec<u8>), String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("{}: {e}; {HOW_TO_GET}", path.display()))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .take(64 << 20)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: not a gzip file ({e})", path.display()))?;
    let bad = |why: String| {
        format!(
            "{}: not an IDX file of Fashion-MNIST: {why}",
            path.display()
        )
    };
    if bytes.len() < 4 || bytes[..4] != [0, 0, 0x08, dims] {
        return Err(bad(format!(
            "magic {:02x?}, expected [0, 0, 8, {dims}]",
            &bytes[..bytes.len().min(4)]
        )));
    }
    let header = 4 + 4 * dims as usize;
    if bytes.len() < header {
        return Err(bad("truncated header".into()));
    }
    let shape: Vec<usize> = (0..dims as usize)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let n: usize = shape.iter().product();
    if bytes.len() != header + n {
        return Err(bad(format!(
            "{} data bytes for shape {shape:?}",
            bytes.len() - header
        )));
    }
    bytes.drain(..header);
    Ok((shape, bytes))
}

fn load_split(dir: &Path, prefix: &str) -> Result<Split, String> {
    let (ishape, pixels) = read_idx(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")), 3)?;
    let (lshape, labels) = read_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), 1)?;
    if ishape[1..] != [28, 28] || ishape[0] != lshape[0] {
        return Err(format!("{prefix}: {ishape:?} images for {lshape:?} labels"));
    }
    if let Some(l) = labels.iter().find(|&&l| l > 9) {
        return Err(format!("{prefix}: label {l} (expected 0-9)"));
    }
    Ok(Split {
        images: pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        labels: labels.iter().map(|&l| u32::from(l)).collect(),
    })
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
    let mut x = Vec::with_capacity(idx.len() * 784);
    for &i in idx {
        x.extend_from_slice(&split.images[i * 784..(i + 1) * 784]);
    }
    let y: Vec<u32> = idx.iter().map(|&i| split.labels[i]).collect();
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

/// The batches of epoch `e`: a shuffle that depends only on the seed and `e`.
fn order(n: usize, batch: usize, e: usize) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
        SEED ^ (e as u64 + 1) << 16,
    ));
    idx.chunks(batch).map(<[usize]>::to_vec).collect()
}

/// One epoch of `opt` on `net`.
fn epoch<O: Optimizer>(
    net: &Cnn,
    opt: &mut O,
    train: &Split,
    args: &Args,
    e: usize,
    bar: &ProgressBar,
) -> candle_core::Result<f32> {
    let mut last = 0.0;
    for idx in order(train.len(), args.batch, e) {
        let (x, y) = batch(train, &idx)?;
        let loss = candle_nn::loss::cross_entropy(&net.forward(&x)?, &y)?;
        opt.backward_step(&loss)?;
        last = loss.to_scalar::<f32>()?;
        bar.inc(1);
    }
    Ok(last)
}

/// A run's test accuracy after every epoch.
struct Curve {
    name: String,
    acc: Vec<f64>,
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

fn config(args: &Args) -> metasgd_core::MetaSGD<f32> {
    metasgd_core::MetaSGD::new(args.base_lr as f32)
        .with_inner_steps(1)
        .with_alpha_lr(args.alpha_lr as f32)
}

fn plot(path: &Path, curves: &[Curve]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let epochs = curves.iter().map(|c| c.acc.len()).max().unwrap_or(1);
    let lo = curves
        .iter()
        .flat_map(|c| c.acc.iter().copied())
        .fold(1.0_f64, f64::min)
        .min(0.85);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Fashion-MNIST, small CNN in candle: test accuracy",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(1..epochs.max(2), (lo - 0.01)..1.0)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("test accuracy")
        .draw()?;
    for (c, color) in curves.iter().zip([BLUE, RED, GREEN, MAGENTA, CYAN, BLACK]) {
        let pts: Vec<(usize, f64)> = c.acc.iter().enumerate().map(|(i, &a)| (i + 1, a)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(c.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = Args::parse();
    let (mut train, mut test) = match (
        load_split(&args.data, "train"),
        load_split(&args.data, "t10k"),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("fashion_mnist: {e}");
            std::process::exit(2);
        }
    };
    if args.smoke {
        train.truncate(3000);
        test.truncate(1000);
        args.epochs = 1;
        args.sgd_grid.truncate(1);
    }
    std::fs::create_dir_all(&args.out)?;
    let start = Instant::now();
    println!(
        "Fashion-MNIST: {} training and {} test images; CNN 16c3-pool-32c3-pool-fc10; batch {}, {} epochs, seed {SEED}",
        train.len(),
        test.len(),
        args.batch,
        args.epochs
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
    let bar = ProgressBar::new(
        batches * (args.epochs as u64 * runs + args.epochs as u64 - args.epochs as u64 / 2),
    );
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} batches {elapsed_precise} eta {eta} {msg}",
    )?);
    let mut curves = Vec::new();

    // MetaSGD, uninterrupted, checkpointed (model and optimizer, one file) halfway.
    let half = args.epochs / 2;
    let checkpoint = args.out.join("fashion-mnist-candle-metasgd.safetensors");
    let (net, vars) = model(&init)?;
    let mut opt =
        metasgd_candle::MetaSGD::new(vars.iter().map(|(_, v)| v.clone()).collect(), config(&args))?;
    let mut acc = Vec::new();
    for e in 0..args.epochs {
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
        metasgd_candle::MetaSGD::new(vars2.iter().map(|(_, v)| v.clone()).collect(), core)?;
    for e in half..args.epochs {
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
    for e in 0..args.epochs {
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
        for e in 0..args.epochs {
            bar.set_message(format!("sgd {lr} epoch {}", e + 1));
            epoch(&net, &mut sgd, &train, &args, e, &bar)?;
            acc.push(accuracy(&net, &test)?);
        }
        let last = acc.last().copied().unwrap_or(0.0);
        bar.suspend(|| {
            println!("  SGD lr {lr}: test accuracy per epoch {acc:.4?}, last {last:.4}")
        });
        let better = best_sgd.as_ref().is_none_or(|b| acc.last() > b.acc.last());
        if better {
            best_sgd = Some(Curve {
                name: format!("SGD (lr {lr}, best of the grid)"),
                acc,
            });
        }
    }
    bar.finish_and_clear();
    curves.extend(best_sgd);

    for c in &curves {
        let per_epoch: Vec<String> = c.acc.iter().map(|a| format!("{a:.4}")).collect();
        println!(
            "  {:<32} test accuracy per epoch: {}",
            c.name,
            per_epoch.join(" ")
        );
    }
    let svg = args.out.join("fashion-mnist-candle.svg");
    plot(&svg, &curves)?;
    println!(
        "wrote {} and {}; {:.0} s",
        svg.display(),
        checkpoint.display(),
        start.elapsed().as_secs_f64()
    );
    let last = |i: usize| {
        curves
            .get(i)
            .and_then(|c| c.acc.last().copied())
            .unwrap_or(f64::NAN)
    };
    println!(
        "test_accuracy metasgd={:.4} adamw={:.4} sgd={:.4} resumed_bitwise_equal={resumed_equal}",
        last(0),
        last(1),
        last(2)
    );
    if !resumed_equal {
        std::process::exit(1);
    }
    Ok(())
}
