//! What the Fashion-MNIST examples of the framework adapters share
//! (`crates/metasgd-candle/examples/fashion_mnist_candle.rs` and
//! `crates/metasgd-burn/examples/fashion_mnist_burn.rs`): the flags, the IDX
//! reader, the batch order, the curves, the plot and the summary lines.

use std::io::Read;
use std::path::{Path, PathBuf};

use plotters::prelude::SeriesLabelPosition;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::plot::{Frame, Series, svg};

/// The seed of the batch order (and of burn's initialisation).
pub const SEED: u64 = 7;

/// Flags both examples take.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// The directory with the four `*-ubyte.gz` files.
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    pub data: PathBuf,
    /// Epochs per run (each example has its default: what its framework
    /// runs within the 10-minute budget on 2 cores).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// MetaSGD's base rate under the reference rule (every per-parameter
    /// rate starts here).
    #[arg(long, default_value_t = 0.1)]
    pub base_lr: f64,
    /// The base rate of the run with the hypergradient rule (its default:
    /// the middle of the two decades it is measured over).
    #[arg(long, default_value_t = 0.01)]
    pub hypergradient_lr: f64,
    /// Also run the base-rate table: the hypergradient rule and the
    /// reference rule from 0.001, 0.01 and 0.1 (prints `base_rate_robustness ...`).
    #[arg(long)]
    pub robustness: bool,
    /// Test-set evaluations per epoch (the curves' points).
    #[arg(long, default_value_t = 4)]
    pub evals_per_epoch: usize,
    /// MetaSGD's rate of the rates.
    #[arg(long, default_value_t = 0.01)]
    pub alpha_lr: f64,
    /// SGD's rates to try; the best final test accuracy is reported.
    #[arg(long, value_delimiter = ',', default_value = "0.001,0.01,0.03,0.1")]
    pub sgd_grid: Vec<f64>,
    /// A short run for CI: 3,000 training and 1,000 test images, one epoch,
    /// the last rate of the SGD grid, two evaluations.
    #[arg(long)]
    pub smoke: bool,
    /// Where the SVG and the checkpoint go.
    #[arg(long, default_value = "target/examples")]
    pub out: PathBuf,
}

/// Images as `[n, 1, 28, 28]` floats, standardised with the training set's
/// mean and standard deviation, and labels 0-9.
pub struct Split {
    /// `n * 784` standardised pixels.
    pub images: Vec<f32>,
    /// `n` labels, 0-9.
    pub labels: Vec<u32>,
}

impl Split {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn truncate(&mut self, n: usize) {
        self.labels.truncate(n);
        self.images.truncate(n * 784);
    }

    /// The images and labels of `idx`, in that order.
    pub fn gather(&self, idx: &[usize]) -> (Vec<f32>, Vec<u32>) {
        let mut x = Vec::with_capacity(idx.len() * 784);
        for &i in idx {
            x.extend_from_slice(&self.images[i * 784..(i + 1) * 784]);
        }
        (x, idx.iter().map(|&i| self.labels[i]).collect())
    }
}

const HOW_TO_GET: &str = "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist: \
/usr/share/datasets/fashion-mnist), or download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist \
into a directory and pass --data DIR";

/// The most bytes an IDX file may unpack to (Fashion-MNIST's largest: 47 MB).
const MAX_IDX_BYTES: u64 = 64 << 20;

/// A gzipped IDX file's shape and bytes ([`parse_idx`]).
fn read_idx(path: &Path, dims: u8) -> Result<(Vec<usize>, Vec<u8>), String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("{}: {e}; {HOW_TO_GET}", path.display()))?;
    parse_idx(file, dims).map_err(|e| format!("{}: {e}", path.display()))
}

/// A gzipped IDX stream's shape and bytes, checked: magic `0x0000_08_dd`
/// (unsigned bytes, `dims` dimensions), the dimensions, and exactly that
/// many bytes (at most 64 MiB unpacked, read no further).
pub fn parse_idx(gzipped: impl Read, dims: u8) -> Result<(Vec<usize>, Vec<u8>), String> {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .take(MAX_IDX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("not a gzip file ({e})"))?;
    let bad = |why: String| format!("not an IDX file of Fashion-MNIST: {why}");
    if bytes.len() as u64 > MAX_IDX_BYTES {
        return Err(bad(format!("more than {MAX_IDX_BYTES} bytes unpacked")));
    }
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
    let shape: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let n = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if bytes.len() - header != n {
        return Err(bad(format!(
            "{} data bytes for shape {shape:?}",
            bytes.len() - header
        )));
    }
    bytes.drain(..header);
    Ok((shape, bytes))
}

/// Pixels in [0, 1] and labels of one split.
fn load_split(dir: &Path, prefix: &str) -> Result<(Vec<f32>, Vec<u32>), String> {
    let (ishape, pixels) = read_idx(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")), 3)?;
    let (lshape, labels) = read_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), 1)?;
    if ishape[1..] != [28, 28] || ishape[0] != lshape[0] {
        return Err(format!("{prefix}: {ishape:?} images for {lshape:?} labels"));
    }
    if let Some(l) = labels.iter().find(|&&l| l > 9) {
        return Err(format!("{prefix}: label {l} (expected 0-9)"));
    }
    Ok((
        pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        labels.iter().map(|&l| u32::from(l)).collect(),
    ))
}

/// The training and test sets (cut down under `--smoke`), standardised with
/// the training pixels' mean and standard deviation; on a missing or
/// malformed file, says which and where the data comes from, and exits 2.
pub fn load(args: &Common) -> (Split, Split) {
    let (train, test) = match (
        load_split(&args.data, "train"),
        load_split(&args.data, "t10k"),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("fashion_mnist: {e}");
            std::process::exit(2);
        }
    };
    let n = train.0.len() as f64;
    let mean = train.0.iter().map(|&p| f64::from(p)).sum::<f64>() / n;
    let var = train
        .0
        .iter()
        .map(|&p| (f64::from(p) - mean).powi(2))
        .sum::<f64>()
        / n;
    let (mean, std) = (mean as f32, var.sqrt() as f32);
    let standardise = |(pixels, labels): (Vec<f32>, Vec<u32>)| Split {
        images: pixels.into_iter().map(|p| (p - mean) / std).collect(),
        labels,
    };
    let (mut train, mut test) = (standardise(train), standardise(test));
    if args.smoke {
        train.truncate(3000);
        test.truncate(1000);
    }
    (train, test)
}

/// The run's epochs (`default` unless `--epochs`; 1 under `--smoke`), and
/// `--smoke`'s one-rate SGD grid and two evaluations.
pub fn settle(args: &mut Common, default: usize) -> usize {
    args.evals_per_epoch = args.evals_per_epoch.max(1);
    if args.smoke {
        args.sgd_grid = args
            .sgd_grid
            .split_off(args.sgd_grid.len().saturating_sub(1));
        args.evals_per_epoch = 2;
        return 1;
    }
    args.epochs.unwrap_or(default)
}

/// The batches of epoch `e`: a shuffle that depends only on the seed and `e`.
pub fn order(n: usize, batch: usize, e: usize) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
        SEED ^ ((e as u64 + 1) << 16),
    ));
    idx.chunks(batch).map(<[usize]>::to_vec).collect()
}

/// Whether the test set is evaluated after batch `b` (0-based) of `batches`:
/// `evals` times per epoch, evenly, the last after the epoch's last batch.
pub fn evaluate_after(b: usize, batches: usize, evals: usize) -> bool {
    (1..=evals).any(|k| (k * batches).div_ceil(evals) == b + 1)
}

/// A run's test accuracy at its evaluation points: `(epoch, accuracy)`,
/// the epoch fractional (1.25 = a quarter into the second epoch).
pub struct Curve {
    /// The legend's label.
    pub name: String,
    /// `(epoch, accuracy)` at each evaluation.
    pub points: Vec<(f64, f64)>,
}

impl Curve {
    /// A curve with no point yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            points: Vec::new(),
        }
    }

    /// The final test accuracy (NaN before any evaluation).
    pub fn last(&self) -> f64 {
        self.points.last().map_or(f64::NAN, |p| p.1)
    }
}

/// Keeps the better of two SGD runs (by final accuracy); returns the run's
/// final accuracy.
pub fn keep_best(best: &mut Option<Curve>, lr: f64, mut curve: Curve) -> f64 {
    let last = curve.last();
    println!("  SGD lr {lr}: final test accuracy {last:.4}");
    curve.name = format!("SGD (lr {lr}, best of the grid)");
    if best.as_ref().is_none_or(|b| last > b.last()) {
        *best = Some(curve);
    }
    last
}

/// One run of the base-rate table: the hypergradient rule (`true`) or the
/// reference rule, and its base rate.
pub type TableRun = (bool, f64);

/// The runs of the base-rate table besides the main ones (under
/// `--robustness`): the hypergradient and the reference rule from each of
/// 0.001, 0.01 and 0.1 not run already.
pub fn robustness_runs(args: &Common) -> Vec<TableRun> {
    if !args.robustness {
        return Vec::new();
    }
    let rates = [0.001, 0.01, 0.1];
    let hyper = rates.iter().filter(|&&lr| lr != args.hypergradient_lr);
    let reference = rates.iter().filter(|&&lr| lr != args.base_lr);
    hyper
        .map(|&lr| (true, lr))
        .chain(reference.map(|&lr| (false, lr)))
        .collect()
}

/// A table run's rule and base rate.
pub fn run_setting<A: metasgd_core::kernels::Element>(
    (hypergradient, lr): TableRun,
) -> (metasgd_core::Rule<A>, f64) {
    let rule = if hypergradient {
        metasgd_core::Rule::hypergradient()
    } else {
        metasgd_core::Rule::Reference
    };
    (rule, lr)
}

/// A table run's name.
pub fn run_name((hypergradient, lr): TableRun) -> String {
    let label = if hypergradient {
        "hypergradient"
    } else {
        "reference"
    };
    format!("{label} rule from {lr}")
}

/// The base-rate table's line (under `--robustness`): the final test
/// accuracy of each rule from each base rate (the table's runs, `done`, and
/// the main runs of both rules), the best SGD and AdamW.
pub fn robustness_line(
    args: &Common,
    mut done: Vec<(TableRun, f64)>,
    [hypergradient, reference, sgd_best, adamw]: [f64; 4],
) -> Option<String> {
    if !args.robustness {
        return None;
    }
    done.push(((true, args.hypergradient_lr), hypergradient));
    done.push(((false, args.base_lr), reference));
    done.sort_by(|a, b| b.0.0.cmp(&a.0.0).then(a.0.1.total_cmp(&b.0.1)));
    let mut line = String::from("base_rate_robustness");
    for ((hyper, lr), acc) in done {
        let label = if hyper { "hypergradient" } else { "reference" };
        line += &format!(" {label}_{lr}={acc:.4}");
    }
    Some(line + &format!(" sgd_best={sgd_best:.4} adamw={adamw:.4}"))
}

/// The main runs of a Fashion-MNIST example.
pub struct Mains {
    /// MetaSGD under the reference rule.
    pub reference: Curve,
    /// The framework's AdamW.
    pub adamw: Curve,
    /// The best SGD of the grid (none if the grid was empty).
    pub best_sgd: Option<Curve>,
    /// MetaSGD under the hypergradient rule.
    pub hypergradient: Curve,
}

/// The base-rate table's line (from the table's runs `done`, under
/// `--robustness`) and the accuracy plot at `svg`; returns the curves in
/// the order [`report`] reads them, and the line.
pub fn conclude(
    args: &Common,
    done: Vec<(TableRun, f64)>,
    mains: Mains,
    svg: &Path,
    title: &str,
) -> Result<(Vec<Curve>, Option<String>), Box<dyn std::error::Error>> {
    let sgd_best = mains.best_sgd.as_ref().map_or(f64::NAN, Curve::last);
    let finals = [
        mains.hypergradient.last(),
        mains.reference.last(),
        sgd_best,
        mains.adamw.last(),
    ];
    let robustness = robustness_line(args, done, finals);
    let mut curves = vec![mains.reference, mains.adamw];
    curves.extend(mains.best_sgd);
    curves.push(mains.hypergradient);
    plot(svg, title, &curves)?;
    Ok((curves, robustness))
}

/// Test accuracy against epochs, one line (with a dot per evaluation) per curve.
pub fn plot(path: &Path, title: &str, curves: &[Curve]) -> Result<(), Box<dyn std::error::Error>> {
    let series: Vec<Series> = curves
        .iter()
        .enumerate()
        .map(|(i, c)| Series::new(c.name.clone(), c.points.clone(), i).with_markers())
        .collect();
    let mut frame = Frame::covering(title, "epoch", "test accuracy", &series);
    frame.y = (frame.y.start.clamp(0.5, 0.85) - 0.01)..0.95;
    frame.legend = SeriesLabelPosition::LowerRight;
    svg(path, (860, 500), &[(frame, series)])
}

/// Prints every curve's final accuracy, the base-rate table's line (when it
/// ran) and the machine-readable last line (MetaSGD, AdamW, the best SGD and
/// the hypergradient rule, in that order in `curves`); exits 1 when the
/// resumed run differed.
pub fn report(curves: &[Curve], robustness: Option<String>, resumed_equal: bool) {
    for c in curves {
        let per: Vec<String> = c
            .points
            .iter()
            .map(|(e, a)| format!("{e:.2}:{a:.4}"))
            .collect();
        println!(
            "  {:<34} test accuracy (epoch:acc) {}",
            c.name,
            per.join(" ")
        );
    }
    let last = |i: usize| curves.get(i).map_or(f64::NAN, Curve::last);
    if let Some(line) = robustness {
        println!("{line}");
    }
    println!(
        "test_accuracy metasgd={:.4} adamw={:.4} sgd={:.4} hypergradient={:.4} resumed_bitwise_equal={resumed_equal}",
        last(0),
        last(1),
        last(2),
        last(3)
    );
    if !resumed_equal {
        std::process::exit(1);
    }
}
