//! Few-shot classification on real data: Meta-SGD (or MAML, first-order
//! MAML) with [`ConvNet`] on Omniglot, scored on the 20 within-alphabet,
//! 20-way, 1-shot runs of Lake, Salakhutdinov and Tenenbaum (Science 2015).
//!
//! Data: the Omniglot repository's `images_background_small1.zip`,
//! `images_background_small2.zip` (5 alphabets each; Greek and Latin are in
//! both and counted once: 8 alphabets) and `all_runs.zip` (Lake's 20 runs),
//! read directly from the zips (`zip`, PNGs decoded with `png`). Every
//! 105x105 image is turned into ink (1 = stroke) and downsampled to 28x28
//! by area averaging (each output pixel is the mean of the 3.75x3.75 source
//! square it covers, partial pixels weighted by their overlap: PIL's BOX
//! filter), the same for training and evaluation.
//!
//! Meta-training: tasks of 20 characters drawn within one alphabet (all of
//! an alphabet's characters when it has fewer), rotated by a multiple of
//! 90 degrees (a rotated alphabet counts as a new one), one support and 5
//! query images per character (distinct drawers), each image shifted by up
//! to `--shift` pixels; meta-batches of 4 tasks; one adaptation step; Adam
//! outside. One background alphabet (`--val-alphabet`, Early Aramaic by
//! default) is held out: the checkpoint reported is the one with the lowest
//! error on 20 fixed runs built from it like Lake's, never chosen on Lake's
//! runs, which are only scored.
//!
//! Scoring Lake's runs as their protocol does: adapt on a run's 20 training
//! images, classify its 20 test images, mean error over the runs. The
//! primary number normalises with the support set's statistics (each test
//! image is classified on its own); the test-batch variant (MAML's papers)
//! is reported too.
//!
//! ```text
//! cargo run --release -p metasgd-meta --example omniglot -- --data ../shared/data/omniglot --method meta-sgd --minutes 30
//! ```
//!
//! Writes, under `--out`: `omniglot-curves.csv` (every evaluation of every
//! method run so far), `omniglot-lake-error.svg` (Lake error against
//! minutes and iterations, one curve per method), `omniglot-run01.png` (run
//! 1's training images and a few test images with the predicted
//! character). The last line is
//! `lake_error method=meta-sgd error=0.xxx iterations=N minutes=M seconds_per_iteration=S`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use metasgd_meta::{Classification, ConvNet, MetaLearner, Norm, Order, Task};
use ndarray::{Array2, Array4, ArrayD};
use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const SIDE: usize = 28;
const SOURCE: usize = 105;
const WAYS: usize = 20;
const QUERY_PER_CLASS: usize = 5;
const META_BATCH: usize = 4;
/// Where a user gets the data.
const WHERE: &str = "the Omniglot repository, github.com/brendenlake/omniglot: python/images_background_small1.zip, \
python/images_background_small2.zip and python/one-shot-classification/all_runs.zip; pass their directory with --data DIR";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Method {
    #[value(name = "meta-sgd")]
    MetaSgd,
    Maml,
    #[value(name = "fomaml")]
    FoMaml,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::MetaSgd => "meta-sgd",
            Method::Maml => "maml",
            Method::FoMaml => "fomaml",
        }
    }
}

/// Meta-SGD on Omniglot, scored on Lake's 20 one-shot runs.
#[derive(Parser, Debug)]
struct Args {
    /// The directory with the three zips.
    #[arg(long, default_value = "../shared/data/omniglot")]
    data: PathBuf,
    /// The meta-learning method.
    #[arg(long, value_enum, default_value = "meta-sgd")]
    method: Method,
    /// Wall-clock budget of meta-training, in minutes (evaluations excluded).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Minutes of meta-training between evaluations.
    #[arg(long, default_value_t = 3.0)]
    eval_every: f64,
    /// Meta-SGD's initial per-parameter rate; MAML's fixed inner rate.
    #[arg(long, default_value_t = 0.4)]
    inner_lr: f32,
    /// Adam's rate (outer loop).
    #[arg(long, default_value_t = 1e-3)]
    outer_lr: f32,
    /// The largest shift of an augmented image, in pixels.
    #[arg(long, default_value_t = 2)]
    shift: usize,
    /// The background alphabet held out to choose the checkpoint.
    #[arg(long, default_value = "Early_Aramaic")]
    val_alphabet: String,
    /// Seed of the initialisation and the task stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save (every evaluation) and resume the run here.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Where the CSV, the SVG and the picture go.
    #[arg(long, default_value = "target/examples/omniglot")]
    out: PathBuf,
    /// Stop after this many meta-iterations (whichever of this and
    /// --minutes comes first).
    #[arg(long)]
    max_iterations: Option<usize>,
    /// A short run for CI: 12 meta-iterations, an evaluation every 6.
    #[arg(long)]
    smoke: bool,
}

// ------------------------------------------------------------------ data

/// A 28x28 image of ink (1 = stroke), row-major.
type Image = Vec<f32>;

/// Every background alphabet: name, then its characters' drawings.
struct Background {
    alphabets: Vec<(String, Vec<Vec<Image>>)>,
}

/// One of Lake's runs: 20 training images (class = index) and 20 test
/// images with their class.
struct Run {
    support: Classification<f32>,
    test: Classification<f32>,
}

fn open_zip(path: &Path) -> Result<zip::ZipArchive<File>, String> {
    let file = File::open(path)
        .map_err(|e| format!("{}: {e}; the data comes from {WHERE}", path.display()))?;
    zip::ZipArchive::new(file).map_err(|e| {
        format!(
            "{}: not a readable zip ({e}); the data comes from {WHERE}",
            path.display()
        )
    })
}

/// The bytes of entry `i`, at most 1 MiB (an Omniglot PNG is about 1 KB).
fn entry_bytes(
    zip: &mut zip::ZipArchive<File>,
    i: usize,
    path: &Path,
) -> Result<(String, Vec<u8>), String> {
    let mut entry = zip
        .by_index(i)
        .map_err(|e| format!("{}: entry {i}: {e}", path.display()))?;
    let name = entry
        .name()
        .map_err(|e| format!("{}: entry {i}: {e}", path.display()))?
        .to_string();
    if entry.size() > 1 << 20 {
        return Err(format!(
            "{}: {name} is {} bytes, too large for an Omniglot image",
            path.display(),
            entry.size()
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    (&mut entry)
        .take(1 << 20)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {name}: {e}", path.display()))?;
    Ok((name, bytes))
}

/// A 105x105 PNG as ink, downsampled to 28x28 by area averaging.
fn decode(bytes: &[u8], what: &str) -> Result<Image, String> {
    let mut decoder =
        png::Decoder::new_with_limits(std::io::Cursor::new(bytes), png::Limits { bytes: 1 << 20 });
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("{what}: not a PNG ({e})"))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| format!("{what}: image too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("{what}: {e}"))?;
    if (info.width, info.height) != (SOURCE as u32, SOURCE as u32) {
        return Err(format!(
            "{what}: {}x{} pixels, expected {SOURCE}x{SOURCE}",
            info.width, info.height
        ));
    }
    let channels = info.color_type.samples();
    let colour = match info.color_type {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => 1,
        png::ColorType::Rgb | png::ColorType::Rgba => 3,
        png::ColorType::Indexed => {
            return Err(format!("{what}: an indexed PNG that did not expand"));
        }
    };
    let mut ink = vec![0f32; SOURCE * SOURCE];
    for (i, px) in buf[..SOURCE * SOURCE * channels]
        .chunks(channels)
        .enumerate()
    {
        let grey =
            px[..colour].iter().map(|&v| f32::from(v)).sum::<f32>() / (255.0 * colour as f32);
        ink[i] = 1.0 - grey;
    }
    Ok(downsample(&ink))
}

/// Area averaging from 105x105 to 28x28.
fn downsample(src: &[f32]) -> Image {
    let scale = SOURCE as f64 / SIDE as f64;
    // The overlap of output cell `o` with source pixel `s` along one axis.
    let overlap = |o: usize, s: usize| -> f64 {
        let (lo, hi) = (o as f64 * scale, (o + 1) as f64 * scale);
        ((s + 1) as f64).min(hi) - (s as f64).max(lo)
    };
    let mut out = vec![0f32; SIDE * SIDE];
    for oy in 0..SIDE {
        let ys =
            (oy as f64 * scale) as usize..(((oy + 1) as f64 * scale).ceil() as usize).min(SOURCE);
        for ox in 0..SIDE {
            let xs = (ox as f64 * scale) as usize
                ..(((ox + 1) as f64 * scale).ceil() as usize).min(SOURCE);
            let mut sum = 0.0;
            for y in ys.clone() {
                let wy = overlap(oy, y);
                for x in xs.clone() {
                    sum += wy * overlap(ox, x) * f64::from(src[y * SOURCE + x]);
                }
            }
            out[oy * SIDE + ox] = (sum / (scale * scale)) as f32;
        }
    }
    out
}

/// The background alphabets of both zips (an alphabet in both counted once).
fn load_background(dir: &Path) -> Result<Background, String> {
    let mut alphabets: BTreeMap<String, BTreeMap<String, Vec<Image>>> = BTreeMap::new();
    for file in [
        "images_background_small1.zip",
        "images_background_small2.zip",
    ] {
        let path = dir.join(file);
        let mut zip = open_zip(&path)?;
        if zip.len() > 20_000 {
            return Err(format!(
                "{}: {} entries, more than an Omniglot set holds",
                path.display(),
                zip.len()
            ));
        }
        let mut here: BTreeMap<String, BTreeMap<String, Vec<Image>>> = BTreeMap::new();
        for i in 0..zip.len() {
            let (name, bytes) = entry_bytes(&mut zip, i, &path)?;
            let parts: Vec<&str> = name.split('/').collect();
            if !name.ends_with(".png") {
                continue;
            }
            let [_, alphabet, character, _file] = parts[..] else {
                return Err(format!("{}: unexpected entry {name}", path.display()));
            };
            let image = decode(&bytes, &format!("{}: {name}", path.display()))?;
            here.entry(alphabet.to_string())
                .or_default()
                .entry(character.to_string())
                .or_default()
                .push(image);
        }
        for (alphabet, chars) in here {
            alphabets.entry(alphabet).or_insert(chars);
        }
    }
    let alphabets: Vec<(String, Vec<Vec<Image>>)> = alphabets
        .into_iter()
        .map(|(a, chars)| (a, chars.into_values().collect()))
        .collect();
    if alphabets.is_empty()
        || alphabets
            .iter()
            .any(|(_, c)| c.is_empty() || c.iter().any(|d| d.len() < 1 + QUERY_PER_CLASS))
    {
        return Err(format!(
            "{}: the background sets hold no usable alphabets; the data comes from {WHERE}",
            dir.display()
        ));
    }
    Ok(Background { alphabets })
}

fn batch(images: &[&Image], labels: Vec<usize>) -> Classification<f32> {
    let mut x = Array4::zeros((images.len(), 1, SIDE, SIDE));
    for (i, img) in images.iter().enumerate() {
        x.slice_mut(ndarray::s![i, 0, .., ..])
            .as_slice_mut()
            .expect("row-major")
            .copy_from_slice(img);
    }
    Classification { x, y: labels }
}

/// Lake's 20 runs.
fn load_runs(dir: &Path) -> Result<Vec<Run>, String> {
    let path = dir.join("all_runs.zip");
    let mut zip = open_zip(&path)?;
    if zip.len() > 2_000 {
        return Err(format!(
            "{}: {} entries, more than the 20 runs hold",
            path.display(),
            zip.len()
        ));
    }
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..zip.len() {
        let (name, bytes) = entry_bytes(&mut zip, i, &path)?;
        if !name.ends_with('/') {
            files.insert(name, bytes);
        }
    }
    let mut runs = Vec::new();
    for r in 1..=20 {
        let run = format!("run{r:02}");
        let get = |name: &str| {
            files.get(&format!("{run}/{name}")).ok_or_else(|| {
                format!(
                    "{}: {run}/{name} is missing; the data comes from {WHERE}",
                    path.display()
                )
            })
        };
        let labels = String::from_utf8_lossy(get("class_labels.txt")?).to_string();
        let training: Vec<Image> = (1..=WAYS)
            .map(|c| {
                decode(
                    get(&format!("training/class{c:02}.png"))?,
                    &format!("{run}/training/class{c:02}.png"),
                )
            })
            .collect::<Result<_, _>>()?;
        let mut tests = Vec::new();
        for line in labels.lines().filter(|l| !l.trim().is_empty()) {
            let bad = || {
                format!(
                    "{}: {run}/class_labels.txt: unexpected line {line:?}",
                    path.display()
                )
            };
            let (item, class) = line
                .trim()
                .split_once(char::is_whitespace)
                .ok_or_else(bad)?;
            let item = item.strip_prefix(&format!("{run}/")).ok_or_else(bad)?;
            let class = class
                .trim()
                .strip_prefix(&format!("{run}/training/class"))
                .and_then(|c| c.strip_suffix(".png"))
                .ok_or_else(bad)?;
            let class: usize = class.parse().map_err(|_| bad())?;
            if !(1..=WAYS).contains(&class) || !item.starts_with("test/item") {
                return Err(bad());
            }
            tests.push((decode(get(item)?, &format!("{run}/{item}"))?, class - 1));
        }
        if tests.len() != WAYS {
            return Err(format!(
                "{}: {run} lists {} test images, expected {WAYS}",
                path.display(),
                tests.len()
            ));
        }
        let support = batch(&training.iter().collect::<Vec<_>>(), (0..WAYS).collect());
        let test = batch(
            &tests.iter().map(|(i, _)| i).collect::<Vec<_>>(),
            tests.iter().map(|(_, c)| *c).collect(),
        );
        runs.push(Run { support, test });
    }
    Ok(runs)
}

// ----------------------------------------------------------------- tasks

/// `img` rotated by `quarter` quarter turns and shifted by `(dy, dx)`
/// (pixels moved off the side are lost, the space left is empty).
fn transform(img: &Image, quarter: usize, dy: isize, dx: isize) -> Image {
    let mut out = vec![0f32; SIDE * SIDE];
    let n = SIDE as isize;
    for y in 0..n {
        for x in 0..n {
            let (sy, sx) = (y - dy, x - dx);
            if sy < 0 || sx < 0 || sy >= n || sx >= n {
                continue;
            }
            let (ry, rx) = match quarter % 4 {
                0 => (sy, sx),
                1 => (sx, n - 1 - sy),
                2 => (n - 1 - sy, n - 1 - sx),
                _ => (n - 1 - sx, sy),
            };
            out[(y * n + x) as usize] = img[(ry * n + rx) as usize];
        }
    }
    out
}

/// One training task from alphabet `alphabet`: up to 20 characters, one
/// support and 5 query drawings each, rotated and shifted.
fn task(
    bg: &Background,
    alphabet: usize,
    shift: usize,
    rng: &mut StdRng,
) -> Task<Classification<f32>> {
    let chars = &bg.alphabets[alphabet].1;
    let quarter = rng.random_range(0..4);
    let mut pick: Vec<usize> = (0..chars.len()).collect();
    pick.shuffle(rng);
    pick.truncate(WAYS);
    let s = shift.min(SIDE) as i32;
    let jitter = |img: &Image, rng: &mut StdRng| {
        let (dy, dx) = (rng.random_range(-s..=s), rng.random_range(-s..=s));
        transform(img, quarter, dy as isize, dx as isize)
    };
    let (mut sup, mut sup_y, mut qry, mut qry_y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (label, &c) in pick.iter().enumerate() {
        let mut drawers: Vec<usize> = (0..chars[c].len()).collect();
        drawers.shuffle(rng);
        sup.push(jitter(&chars[c][drawers[0]], rng));
        sup_y.push(label);
        for &d in &drawers[1..=QUERY_PER_CLASS] {
            qry.push(jitter(&chars[c][d], rng));
            qry_y.push(label);
        }
    }
    Task {
        support: batch(&sup.iter().collect::<Vec<_>>(), sup_y),
        query: batch(&qry.iter().collect::<Vec<_>>(), qry_y),
    }
}

/// Meta-batch `it`: a function of the seed and the iteration only, so a
/// resumed run sees the tasks the uninterrupted one would.
fn meta_batch(
    bg: &Background,
    train: &[usize],
    shift: usize,
    seed: u64,
    it: usize,
) -> Vec<Task<Classification<f32>>> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ it as u64);
    (0..META_BATCH)
        .map(|_| {
            let a = train[rng.random_range(0..train.len())];
            task(bg, a, shift, &mut rng)
        })
        .collect()
}

/// 20 fixed runs like Lake's from the held-out alphabet: every character
/// (up to 20) with one training and one test drawing by different drawers.
fn validation_runs(bg: &Background, alphabet: usize, seed: u64) -> Vec<Run> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5A5A_0F0F);
    let chars = &bg.alphabets[alphabet].1;
    (0..20)
        .map(|_| {
            let mut pick: Vec<usize> = (0..chars.len()).collect();
            pick.shuffle(&mut rng);
            pick.truncate(WAYS);
            let (mut sup, mut test) = (Vec::new(), Vec::new());
            for &c in &pick {
                let mut drawers: Vec<usize> = (0..chars[c].len()).collect();
                drawers.shuffle(&mut rng);
                sup.push(&chars[c][drawers[0]]);
                test.push(&chars[c][drawers[1]]);
            }
            let ways = pick.len();
            Run {
                support: batch(&sup, (0..ways).collect()),
                test: batch(&test, (0..ways).collect()),
            }
        })
        .collect()
}

// ------------------------------------------------------------ evaluation

/// Mean errors over `runs` after adapting once on each run's training
/// images: (with the support set's statistics, with the test batch's).
fn errors(net: &ConvNet, learner: &MetaLearner<f32>, runs: &[Run]) -> (f64, f64) {
    let mut sums = (0.0, 0.0);
    for run in runs {
        let adapted = learner.adapt(net, &run.support);
        let wrong = |norm| {
            let pred = net.predict(&adapted, &run.test.x, norm);
            let wrong = pred.iter().zip(&run.test.y).filter(|(p, y)| p != y).count();
            wrong as f64 / run.test.y.len() as f64
        };
        sums.0 += wrong(Norm::From(&run.support.x));
        sums.1 += wrong(Norm::Batch);
    }
    (sums.0 / runs.len() as f64, sums.1 / runs.len() as f64)
}

/// One evaluation: when, and the three errors.
#[derive(Clone, Copy, Debug)]
struct Point {
    minutes: f64,
    iterations: usize,
    val: f64,
    lake_support: f64,
    lake_batch: f64,
}

impl Point {
    fn row(&self) -> [f32; 5] {
        [
            self.minutes as f32,
            self.iterations as f32,
            self.val as f32,
            self.lake_support as f32,
            self.lake_batch as f32,
        ]
    }
}

// --------------------------------------------------------------- outputs

const CSV_HEADER: &str = "method,minutes,iterations,val_error,lake_error_support,lake_error_batch";

/// Replaces `method`'s rows of the curves file with `points`; returns every
/// method's points.
fn write_curves(
    path: &Path,
    method: Method,
    points: &[Point],
) -> Result<BTreeMap<String, Vec<Point>>, String> {
    let mut all: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 6 || f[0] == method.name() {
                continue;
            }
            let num = |i: usize| f[i].parse::<f64>().unwrap_or(f64::NAN);
            all.entry(f[0].to_string()).or_default().push(Point {
                minutes: num(1),
                iterations: num(2) as usize,
                val: num(3),
                lake_support: num(4),
                lake_batch: num(5),
            });
        }
    }
    all.insert(method.name().to_string(), points.to_vec());
    let mut text = format!("{CSV_HEADER}\n");
    for (m, pts) in &all {
        for p in pts {
            text.push_str(&format!(
                "{m},{:.3},{},{:.4},{:.4},{:.4}\n",
                p.minutes, p.iterations, p.val, p.lake_support, p.lake_batch
            ));
        }
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(all)
}

fn plot(path: &Path, all: &BTreeMap<String, Vec<Point>>) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let max_min = all
        .values()
        .flatten()
        .map(|p| p.minutes)
        .fold(1.0, f64::max);
    let max_it = all
        .values()
        .flatten()
        .map(|p| p.iterations as f64)
        .fold(1.0, f64::max);
    for (area, by_minutes) in [(left, true), (right, false)] {
        let xmax = if by_minutes { max_min } else { max_it };
        let mut chart = ChartBuilder::on(&area)
            .caption(
                if by_minutes {
                    "Lake's 20 runs: error against minutes"
                } else {
                    "... against meta-iterations"
                },
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..xmax * 1.02, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc(if by_minutes {
                "minutes of meta-training"
            } else {
                "meta-iterations"
            })
            .y_desc("error (support-set statistics)")
            .draw()?;
        for ((name, pts), color) in all.iter().zip([BLUE, RED, GREEN, MAGENTA]) {
            let line: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| {
                    (
                        if by_minutes {
                            p.minutes
                        } else {
                            p.iterations as f64
                        },
                        p.lake_support,
                    )
                })
                .collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Run 1's 20 training images on top; below, 8 test images, each beside
/// the training image it was classified as (green frame: right, red: wrong).
fn picture(path: &Path, run: &Run, pred: &[usize]) -> Result<(), String> {
    let cell = SIDE + 4;
    let (w, h) = (WAYS * cell, 3 * cell + 24);
    let mut rgb = vec![255u8; w * h * 3];
    let mut put = |img: &[f32], x0: usize, y0: usize, frame: Option<[u8; 3]>| {
        for y in 0..cell {
            for x in 0..cell {
                let (px, py) = (x0 + x, y0 + y);
                if px >= w || py >= h {
                    continue;
                }
                let inside = (2..SIDE + 2).contains(&x) && (2..SIDE + 2).contains(&y);
                let colour = if inside {
                    let v = (255.0 * (1.0 - img[(y - 2) * SIDE + (x - 2)].clamp(0.0, 1.0))) as u8;
                    [v, v, v]
                } else if let Some(f) = frame {
                    f
                } else {
                    continue;
                };
                rgb[(py * w + px) * 3..][..3].copy_from_slice(&colour);
            }
        }
    };
    let image = |b: &Classification<f32>, i: usize| -> Vec<f32> {
        b.x.slice(ndarray::s![i, 0, .., ..])
            .iter()
            .copied()
            .collect()
    };
    for c in 0..WAYS {
        put(&image(&run.support, c), c * cell, 0, None);
    }
    for (t, &predicted) in pred.iter().enumerate().take(8) {
        let (x0, y0) = ((t % 4) * 5 * cell, cell + 8 + (t / 4) * (cell + 8));
        let right = predicted == run.test.y[t];
        let frame = if right { [0, 170, 0] } else { [210, 0, 0] };
        put(&image(&run.test, t), x0, y0, None);
        put(
            &image(&run.support, pred[t]),
            x0 + cell + 4,
            y0,
            Some(frame),
        );
    }
    let file = File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&rgb).map_err(|e| e.to_string())
}

// ------------------------------------------------------------------ main

fn learner(method: Method, net: &ConvNet, a: &Args) -> MetaLearner<f32> {
    let init = net.init::<f32>(a.seed);
    let l = match method {
        Method::MetaSgd => MetaLearner::meta_sgd(init, a.inner_lr),
        Method::Maml => MetaLearner::maml(init, a.inner_lr),
        Method::FoMaml => MetaLearner::maml(init, a.inner_lr).with_order(Order::First),
    };
    l.with_inner_steps(1).with_outer_lr(a.outer_lr)
}

/// What a checkpoint holds besides the learner: the evaluations so far and
/// the training seconds, as one tensor of rows `[minutes, iterations, val,
/// lake_support, lake_batch]` (the last row: `[seconds, 0, 0, 0, 0]`).
fn history_tensor(points: &[Point], seconds: f64) -> ArrayD<f32> {
    let mut rows: Vec<[f32; 5]> = points.iter().map(Point::row).collect();
    rows.push([seconds as f32, 0.0, 0.0, 0.0, 0.0]);
    Array2::from_shape_vec((rows.len(), 5), rows.concat())
        .expect("rows of 5")
        .into_dyn()
}

fn from_history(t: &ArrayD<f32>) -> Option<(Vec<Point>, f64)> {
    let m = t.view().into_dimensionality::<ndarray::Ix2>().ok()?;
    if m.ncols() != 5 || m.nrows() == 0 {
        return None;
    }
    let n = m.nrows() - 1;
    let points = (0..n)
        .map(|i| Point {
            minutes: f64::from(m[[i, 0]]),
            iterations: m[[i, 1]] as usize,
            val: f64::from(m[[i, 2]]),
            lake_support: f64::from(m[[i, 3]]),
            lake_batch: f64::from(m[[i, 4]]),
        })
        .collect();
    Some((points, f64::from(m[[n, 0]])))
}

fn run() -> Result<(), String> {
    let a = Args::parse();
    let bg = load_background(&a.data)?;
    let runs = load_runs(&a.data)?;
    let val = bg
        .alphabets
        .iter()
        .position(|(n, _)| *n == a.val_alphabet)
        .ok_or_else(|| {
            let names: Vec<&str> = bg.alphabets.iter().map(|(n, _)| n.as_str()).collect();
            format!(
                "--val-alphabet {}: not a background alphabet ({})",
                a.val_alphabet,
                names.join(", ")
            )
        })?;
    let train: Vec<usize> = (0..bg.alphabets.len()).filter(|&i| i != val).collect();
    let val_runs = validation_runs(&bg, val, a.seed);
    let names: Vec<String> = train
        .iter()
        .map(|&i| format!("{} ({})", bg.alphabets[i].0, bg.alphabets[i].1.len()))
        .collect();
    println!(
        "Omniglot: {} background alphabets, training on {} with rotations, {} ({} characters) held out; Lake's {} runs",
        bg.alphabets.len(),
        names.join(", "),
        a.val_alphabet,
        bg.alphabets[val].1.len(),
        runs.len()
    );
    std::fs::create_dir_all(&a.out)
        .map_err(|e| format!("cannot create {}: {e}", a.out.display()))?;
    let net = ConvNet::new(WAYS);
    let method = a.method;

    // Resume when a checkpoint is there.
    let ckpt = a
        .checkpoint
        .as_ref()
        .map(|d| d.join(format!("omniglot-{}.safetensors", method.name())));
    let best_path = a
        .checkpoint
        .as_ref()
        .map(|d| d.join(format!("omniglot-{}-best.safetensors", method.name())));
    let (mut learner, mut points, mut seconds) = (learner(method, &net, &a), Vec::new(), 0.0);
    let mut best: Option<(f64, MetaLearner<f32>)> = None;
    if let (Some(p), Some(bp)) = (&ckpt, &best_path)
        && p.exists()
    {
        let (l, tensors) = MetaLearner::<f32>::load_state_with_tensors(p)
            .map_err(|e| format!("cannot resume: {e}"))?;
        let history = match tensors.as_slice() {
            [(name, t)] if name == "history" => from_history(t),
            _ => None,
        };
        let (pts, secs) =
            history.ok_or_else(|| format!("{}: not this program's checkpoint", p.display()))?;
        let b = MetaLearner::<f32>::load_state(bp).map_err(|e| format!("cannot resume: {e}"))?;
        let best_val = pts.iter().map(|q| q.val).fold(f64::INFINITY, f64::min);
        println!(
            "resumed {} at iteration {} ({:.1} minutes)",
            p.display(),
            l.meta_steps(),
            secs / 60.0
        );
        learner = l;
        points = pts;
        seconds = secs;
        best = Some((best_val, b));
    }
    if let Some(dir) = &a.checkpoint {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }

    let (budget, eval_every, max_iterations) = if a.smoke {
        (f64::INFINITY, f64::INFINITY, 12)
    } else {
        (
            a.minutes * 60.0,
            a.eval_every * 60.0,
            a.max_iterations.unwrap_or(usize::MAX),
        )
    };
    let bar = ProgressBar::new(if a.smoke {
        12
    } else {
        (a.minutes * 60.0) as u64
    });
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").map_err(|e| e.to_string())?,
    );
    let mut next_eval = seconds + eval_every;
    let evaluate = |learner: &MetaLearner<f32>,
                    seconds: f64,
                    points: &mut Vec<Point>,
                    best: &mut Option<(f64, MetaLearner<f32>)>|
     -> Result<(), String> {
        let lake = errors(&net, learner, &runs);
        let p = Point {
            minutes: seconds / 60.0,
            iterations: learner.meta_steps() as usize,
            val: errors(&net, learner, &val_runs).0,
            lake_support: lake.0,
            lake_batch: lake.1,
        };
        bar.suspend(|| {
            println!(
                "  {:>6.1} min {:>6} it: held-out {:.3}, Lake {:.3} (support statistics), {:.3} (test batch)",
                p.minutes, p.iterations, p.val, p.lake_support, p.lake_batch
            )
        });
        if best.as_ref().is_none_or(|(v, _)| p.val < *v) {
            *best = Some((p.val, learner.clone()));
        }
        points.push(p);
        if let (Some(c), Some(b)) = (&ckpt, &best_path) {
            let h = history_tensor(points, seconds);
            learner
                .save_state_with_tensors(c, &[("history", h.view())])
                .map_err(|e| e.to_string())?;
            if let Some((_, bl)) = best {
                bl.save_state(b).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    };
    let mut ran = 0usize;
    let mut clock = Instant::now();
    let start_seconds = seconds;
    loop {
        let it = learner.meta_steps() as usize;
        if seconds >= budget || ran >= max_iterations {
            break;
        }
        let tasks = meta_batch(&bg, &train, a.shift, a.seed, it);
        let loss = learner
            .meta_step(&net, &tasks)
            .map_err(|e| format!("meta-step {it}: {e}"))?;
        ran += 1;
        seconds += clock.elapsed().as_secs_f64();
        clock = Instant::now();
        bar.set_position(if a.smoke { ran as u64 } else { seconds as u64 });
        bar.set_message(format!(
            "it {} loss {loss:.3} {:.2} s/it",
            it + 1,
            (seconds - start_seconds) / ran as f64
        ));
        if seconds >= next_eval || (a.smoke && ran.is_multiple_of(6)) {
            evaluate(&learner, seconds, &mut points, &mut best)?;
            next_eval = seconds + eval_every;
            clock = Instant::now();
        }
    }
    if points
        .last()
        .is_none_or(|p| p.iterations != learner.meta_steps() as usize)
    {
        evaluate(&learner, seconds, &mut points, &mut best)?;
    }
    bar.finish_and_clear();

    let curves = a.out.join("omniglot-curves.csv");
    let all = write_curves(&curves, method, &points)?;
    let svg = a.out.join("omniglot-lake-error.svg");
    plot(&svg, &all).map_err(|e| format!("cannot draw {}: {e}", svg.display()))?;
    let (best_val, chosen) = best.ok_or("no evaluation ran")?;
    let chosen_point = points
        .iter()
        .find(|p| p.val == best_val && p.iterations == chosen.meta_steps() as usize)
        .copied()
        .unwrap_or(*points.last().expect("evaluated"));
    let adapted = chosen.adapt(&net, &runs[0].support);
    let pred = net.predict(&adapted, &runs[0].test.x, Norm::From(&runs[0].support.x));
    let pic = a.out.join("omniglot-run01.png");
    picture(&pic, &runs[0], &pred)?;
    let last = points.last().expect("evaluated");
    println!(
        "{}: chosen on the held-out alphabet at {} iterations ({:.1} min): Lake error {:.3} with support-set statistics, {:.3} with test-batch statistics; at the end ({} it): {:.3} / {:.3}",
        method.name(),
        chosen_point.iterations,
        chosen_point.minutes,
        chosen_point.lake_support,
        chosen_point.lake_batch,
        last.iterations,
        last.lake_support,
        last.lake_batch
    );
    println!(
        "wrote {}, {} and {}",
        curves.display(),
        svg.display(),
        pic.display()
    );
    let iterations = learner.meta_steps() as usize;
    println!(
        "lake_error method={} error={:.3} iterations={} minutes={:.1} seconds_per_iteration={:.3}",
        method.name(),
        chosen_point.lake_support,
        iterations,
        seconds / 60.0,
        if iterations > 0 {
            seconds / iterations as f64
        } else {
            f64::NAN
        }
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("omniglot: {e}");
        std::process::exit(2);
    }
}
