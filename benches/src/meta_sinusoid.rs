//! `meta-sinusoid`: the sinusoid benchmark of MAML and Meta-SGD, run by
//! `cargo xtask meta`.
//!
//! Tasks `y = A sin(w x + b)` (`A` in [0.1, 5], `b` in [0, pi], `w` = 1 by
//! default, `x` in [-5, 5]); a 1-40-40-1 ReLU network; meta-batches of 4
//! tasks with 10 query points; Adam 1e-3. Evaluation: 1,000 fresh tasks, 100
//! query points each, MSE after one adaptation step, with a 95% interval.
//!
//! ```text
//! meta-sinusoid [--quick] [--shots 5,10] [--iterations N] [--methods meta-sgd,maml,fomaml]
//!               [--freq LO:HI] [--seed S] [--threads T] [--alpha-init A] [--eval-tasks N] [--out DIR]
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use metasgd::meta::{MetaLearner, Mlp, Order, Regression, Sine, Sinusoid, Task};
use metasgd::ndarray::{Array2, ArrayD};
use plotters::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const LAYERS: [usize; 4] = [1, 40, 40, 1];
const META_BATCH: usize = 4;
const QUERY: usize = 10;
/// Meta-SGD's rates start here (the paper draws them from [0.005, 0.1]).
const ALPHA_INIT: f32 = 0.1;
const MAML_LR: f32 = 0.01;
const OUTER_LR: f32 = 1e-3;
const EVAL_QUERY: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    MetaSgd,
    Maml,
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

    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "meta-sgd" => Ok(Method::MetaSgd),
            "maml" => Ok(Method::Maml),
            "fomaml" => Ok(Method::FoMaml),
            other => Err(format!("unknown method {other:?} (meta-sgd, maml, fomaml)")),
        }
    }

    fn learner(self, init: Vec<ArrayD<f32>>, alpha_init: f32) -> MetaLearner<f32> {
        let l = match self {
            Method::MetaSgd => MetaLearner::meta_sgd(init, alpha_init),
            Method::Maml => MetaLearner::maml(init, MAML_LR),
            Method::FoMaml => MetaLearner::maml(init, MAML_LR).with_order(Order::First),
        };
        l.with_outer_lr(OUTER_LR)
    }
}

struct Args {
    quick: bool,
    shots: Vec<usize>,
    iterations: usize,
    methods: Vec<Method>,
    freq: (f64, f64),
    seed: u64,
    threads: usize,
    eval_tasks: usize,
    alpha_init: f32,
    out: PathBuf,
}

/// A number given to `flag`.
fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{flag}: cannot read {v:?}"))
}

/// A comma-separated list.
fn list<T>(v: &str, each: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    v.split(',')
        .map(|s| each(s.trim()))
        .collect::<Result<_, _>>()
}

fn parse() -> Result<Args, String> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let quick = raw.iter().any(|a| a == "--quick");
    let mut a = Args {
        quick,
        shots: vec![5, 10],
        iterations: if quick { 2000 } else { 60_000 },
        methods: vec![Method::MetaSgd, Method::Maml, Method::FoMaml],
        freq: (1.0, 1.0),
        seed: 1,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        eval_tasks: if quick { 100 } else { 1000 },
        alpha_init: ALPHA_INIT,
        out: PathBuf::from("target/xtask-meta"),
    };
    let mut i = 0;
    while i < raw.len() {
        let flag = raw[i].as_str();
        if flag == "--quick" {
            i += 1;
            continue;
        }
        let v = raw
            .get(i + 1)
            .ok_or_else(|| format!("{flag} needs a value"))?;
        match flag {
            "--shots" => a.shots = list(v, |s| num(flag, s))?,
            "--iterations" => a.iterations = num(flag, v)?,
            "--methods" => a.methods = list(v, Method::parse)?,
            "--freq" => {
                let (lo, hi) = v.split_once(':').ok_or("--freq takes LO:HI")?;
                a.freq = (num(flag, lo)?, num(flag, hi)?);
            }
            "--seed" => a.seed = num(flag, v)?,
            "--threads" => a.threads = num(flag, v)?,
            "--eval-tasks" => a.eval_tasks = num(flag, v)?,
            "--alpha-init" => a.alpha_init = num(flag, v)?,
            "--out" => a.out = PathBuf::from(v),
            other => return Err(format!("unknown argument {other}")),
        }
        i += 2;
    }
    if a.shots.is_empty()
        || a.shots.contains(&0)
        || a.methods.is_empty()
        || a.threads == 0
        || a.iterations == 0
    {
        return Err("shots, methods, threads and iterations must be non-empty and positive".into());
    }
    Ok(a)
}

/// One trained configuration.
struct Run {
    method: Method,
    shots: usize,
    learner: MetaLearner<f32>,
    losses: Vec<f32>,
    mse: f64,
    ci95: f64,
    seconds: f64,
}

fn mse(pred: &Array2<f32>, y: &Array2<f32>) -> f64 {
    pred.iter()
        .zip(y)
        .map(|(p, t)| f64::from(p - t).powi(2))
        .sum::<f64>()
        / y.len() as f64
}

/// Mean query MSE after adaptation on `n` fresh tasks (seeded apart from
/// training), with a 95% normal interval.
fn evaluate(
    net: &Mlp,
    learner: &MetaLearner<f32>,
    dist: &Sinusoid,
    shots: usize,
    n: usize,
    seed: u64,
) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xE7A1_0000);
    let errs: Vec<f64> = (0..n)
        .map(|_| {
            let task: Task<Regression<f32>> = dist.sample(&mut rng, shots, EVAL_QUERY);
            let adapted = learner.adapt(net, &task.support);
            mse(&net.predict(&adapted, &task.query.x), &task.query.y)
        })
        .collect();
    let mean = errs.iter().sum::<f64>() / n as f64;
    let var = errs.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
    (mean, 1.96 * (var / n as f64).sqrt())
}

fn train(
    net: &Mlp,
    method: Method,
    shots: usize,
    a: &Args,
    dist: &Sinusoid,
    bar: &ProgressBar,
) -> Run {
    let mut learner = method.learner(net.init::<f32>(a.seed), a.alpha_init);
    let mut rng = StdRng::seed_from_u64(a.seed.wrapping_mul(1000) + shots as u64);
    let mut losses = Vec::with_capacity(a.iterations);
    let start = Instant::now();
    for it in 0..a.iterations {
        let tasks: Vec<Task<Regression<f32>>> = (0..META_BATCH)
            .map(|_| dist.sample(&mut rng, shots, QUERY))
            .collect();
        let loss = learner
            .meta_step(net, &tasks)
            .expect("the network's shapes are consistent");
        losses.push(loss);
        if it % 100 == 99 || it + 1 == a.iterations {
            let recent = &losses[losses.len().saturating_sub(500)..];
            let avg = recent.iter().sum::<f32>() / recent.len() as f32;
            bar.set_position(it as u64 + 1);
            bar.set_message(format!("meta-loss {avg:.3}"));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let (mse, ci95) = evaluate(net, &learner, dist, shots, a.eval_tasks, a.seed);
    Run {
        method,
        shots,
        learner,
        losses,
        mse,
        ci95,
        seconds,
    }
}

fn learning_svg(path: &std::path::Path, runs: &[Run]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let iters = runs.iter().map(|r| r.losses.len()).max().unwrap_or(1);
    let window = (iters / 100).max(1);
    let smooth = |l: &[f32]| -> Vec<(usize, f32)> {
        l.chunks(window)
            .enumerate()
            .map(|(i, c)| ((i + 1) * window, c.iter().sum::<f32>() / c.len() as f32))
            .collect()
    };
    let top = runs
        .iter()
        .flat_map(|r| smooth(&r.losses))
        .map(|p| p.1)
        .fold(0.0_f32, f32::max)
        .max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("sinusoid meta-training: query MSE (mean over {window} iterations)"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0..iters, 0.0_f32..top * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("meta-iteration")
        .y_desc("meta-loss")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, r) in runs.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(smooth(&r.losses), c.stroke_width(2)))?
            .label(format!("{} {}-shot", r.method.name(), r.shots))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn sinusoid_svg(
    path: &std::path::Path,
    net: &Mlp,
    runs: &[Run],
    dist: &Sinusoid,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let shots = runs[0].shots;
    let shown: Vec<&Run> = runs
        .iter()
        .filter(|r| r.shots == shots && r.method != Method::FoMaml)
        .collect();
    let root = SVGBackend::new(path, (1200, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED);
    let grid: Vec<f32> = (0..=200).map(|i| -5.0 + 10.0 * i as f32 / 200.0).collect();
    let x = Array2::from_shape_fn((grid.len(), 1), |(i, _)| grid[i]);
    for (p, panel) in panels.iter().enumerate() {
        let sine: Sine = dist.draw(&mut rng);
        let support: Regression<f32> = sine.examples(&mut rng, shots, dist.input);
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "task {}: A={:.2} b={:.2}, {shots} shots",
                    p + 1,
                    sine.amplitude,
                    sine.phase
                ),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(-5.0_f32..5.0, -5.5_f32..5.5)?;
        chart.configure_mesh().draw()?;
        let truth: Vec<(f32, f32)> = grid
            .iter()
            .map(|&g| (g, sine.at(f64::from(g)) as f32))
            .collect();
        chart
            .draw_series(LineSeries::new(truth, BLACK.stroke_width(2)))?
            .label("truth")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        let colors = [BLUE, RED];
        for (r, c) in shown.iter().zip(colors) {
            let before = net.predict(r.learner.params(), &x);
            let adapted = r.learner.adapt(net, &support);
            let after = net.predict(&adapted, &x);
            let name = r.method.name();
            chart
                .draw_series(LineSeries::new(
                    grid.iter().zip(before.iter()).map(|(&g, &v)| (g, v)),
                    c.mix(0.4).stroke_width(1),
                ))?
                .label(format!("{name} before"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.mix(0.4).stroke_width(1))
                });
            chart
                .draw_series(LineSeries::new(
                    grid.iter().zip(after.iter()).map(|(&g, &v)| (g, v)),
                    c.stroke_width(2),
                ))?
                .label(format!("{name} after 1 step"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart.draw_series(
            support
                .x
                .iter()
                .zip(support.y.iter())
                .map(|(&x, &y)| Circle::new((x, y), 4, BLACK.filled())),
        )?;
        if p == 0 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("meta-sinusoid: {e}");
            std::process::exit(2);
        }
    };
    let dist = Sinusoid {
        frequency: a.freq,
        ..Sinusoid::default()
    };
    let net = Mlp::new(&LAYERS);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build()
        .expect("thread pool");
    println!(
        "sinusoid regression: network {LAYERS:?}, meta-batch {META_BATCH}, {QUERY} query points, Adam {OUTER_LR}, {} iterations, alpha_init {}, MAML rate {MAML_LR}, frequency {:?}, {} threads, seed {}{}",
        a.iterations,
        a.alpha_init,
        a.freq,
        a.threads,
        a.seed,
        if a.quick { " (quick)" } else { "" }
    );
    let mut runs = Vec::new();
    for &shots in &a.shots {
        for &method in &a.methods {
            let bar = ProgressBar::with_draw_target(
                Some(a.iterations as u64),
                ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>16} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("{} {shots}-shot", method.name()));
            let run = pool.install(|| train(&net, method, shots, &a, &dist, &bar));
            bar.finish_and_clear();
            println!(
                "  {:<9} {:>2}-shot: mse {:.4} +- {:.4} ({} tasks), {:.1} s",
                method.name(),
                shots,
                run.mse,
                run.ci95,
                a.eval_tasks,
                run.seconds
            );
            runs.push(run);
        }
    }
    println!();
    println!(
        "{:<9} {:>11} {:>10} {:>8} {:>8} {:>10} {:>8}",
        "method", "train_shots", "test_shots", "mse", "ci95", "iterations", "seconds"
    );
    let mut csv = String::from("method,train_shots,test_shots,mse,ci95,iterations,seconds\n");
    for r in &runs {
        println!(
            "{:<9} {:>11} {:>10} {:>8.4} {:>8.4} {:>10} {:>8.1}",
            r.method.name(),
            r.shots,
            r.shots,
            r.mse,
            r.ci95,
            a.iterations,
            r.seconds
        );
        let _ = writeln!(
            csv,
            "{},{},{},{:.6},{:.6},{},{:.2}",
            r.method.name(),
            r.shots,
            r.shots,
            r.mse,
            r.ci95,
            a.iterations,
            r.seconds
        );
    }
    // Targets of the default run.
    println!();
    for &shots in &a.shots {
        let find = |m: Method| runs.iter().find(|r| r.method == m && r.shots == shots);
        if let (Some(ms), Some(maml)) = (find(Method::MetaSgd), find(Method::Maml)) {
            let below = 1.0 - ms.mse / maml.mse;
            println!(
                "  {shots}-shot: Meta-SGD {:.4} vs MAML {:.4}: {:.0}% below",
                ms.mse,
                maml.mse,
                100.0 * below
            );
        }
        if let Some(ms) = find(Method::MetaSgd) {
            let alphas: Vec<f32> = ms
                .learner
                .alphas()
                .iter()
                .flat_map(|a| a.iter().copied())
                .collect();
            let mean = alphas.iter().sum::<f32>() / alphas.len() as f32;
            let (lo, hi) = alphas
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            println!(
                "  {shots}-shot Meta-SGD learned rates: mean {mean:.4}, from {lo:.4} to {hi:.4} (started at {})",
                a.alpha_init
            );
        }
    }
    if let Err(e) = std::fs::create_dir_all(&a.out) {
        eprintln!("meta-sinusoid: cannot create {}: {e}", a.out.display());
        std::process::exit(1);
    }
    let results = a.out.join("results.csv");
    let learning = a.out.join("learning.svg");
    let sinusoid = a.out.join("sinusoid.svg");
    let written = std::fs::write(&results, csv)
        .map_err(|e| e.to_string())
        .and_then(|()| learning_svg(&learning, &runs).map_err(|e| e.to_string()))
        .and_then(|()| {
            sinusoid_svg(&sinusoid, &net, &runs, &dist, a.seed).map_err(|e| e.to_string())
        });
    match written {
        Ok(()) => println!(
            "\nwrote {}, {}, {}",
            results.display(),
            learning.display(),
            sinusoid.display()
        ),
        Err(e) => {
            eprintln!("meta-sinusoid: cannot write the results: {e}");
            std::process::exit(1);
        }
    }
}
