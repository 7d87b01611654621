//! The sinusoid benchmark of MAML and Meta-SGD (Finn et al. 2017, Li et al.
//! 2017), run by `cargo xtask meta`.
//!
//! Tasks `y = A sin(w x + b)` (`A` in [0.1, 5], `b` in [0, pi], `w` = 1 by
//! default, `x` in [-5, 5]); a 1-40-40-1 ReLU network; meta-batches of 4
//! tasks with 10 query points; Adam 1e-3. Evaluation: 1,000 fresh tasks, 100
//! query points each, MSE after one adaptation step, with a 95% interval.
//!
//! With `--checkpoint DIR` each run saves its whole state (the learner,
//! Adam's moments, the loss history) every `--checkpoint-every` iterations
//! and resumes from it when started again: the task stream is a function of
//! (seed, shots, iteration), so a resumed run is bitwise the uninterrupted
//! one. `--stop-after N` ends each run after N iterations (saved), as a
//! killed job would; the last line of each run prints a checksum of the
//! final parameters to compare runs by.
//!
//! ```text
//! cargo run --release -p metasgd-meta --example sinusoid -- --help
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use metasgd_examples::Method;
use metasgd_examples::plot::{Frame, Series, svg};
use metasgd_meta::{MetaLearner, Mlp, Regression, Sine, Sinusoid, Task};
use ndarray::{Array1, Array2};
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

/// The sinusoid meta-learning benchmark: Meta-SGD, MAML and first-order MAML.
#[derive(Parser, Debug)]
struct Args {
    /// A short run for CI (2,000 iterations, 100 evaluation tasks unless given).
    #[arg(long)]
    quick: bool,
    /// Support-set sizes to train and test with.
    #[arg(long, value_delimiter = ',', default_value = "5,10")]
    shots: Vec<usize>,
    /// Meta-iterations per run (default 60,000; 2,000 with --quick).
    #[arg(long)]
    iterations: Option<usize>,
    /// Methods to run.
    #[arg(long, value_delimiter = ',', default_value = "meta-sgd,maml,fomaml")]
    methods: Vec<Method>,
    /// Frequency range of the sine waves, LO:HI.
    #[arg(long, default_value = "1:1", value_parser = parse_range)]
    freq: (f64, f64),
    /// Seed of the initialisation and the task stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads for the tasks of a meta-batch (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Tasks in the final evaluation (default 1,000; 100 with --quick).
    #[arg(long)]
    eval_tasks: Option<usize>,
    /// Meta-SGD's initial per-parameter rate.
    #[arg(long, default_value_t = ALPHA_INIT)]
    alpha_init: f32,
    /// Save every run's state here, and resume from it when present.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Iterations between checkpoints.
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// End each run after this many iterations (saved), as a killed job would.
    #[arg(long)]
    stop_after: Option<usize>,
    /// Where the CSV and SVGs go.
    #[arg(long, default_value = "target/xtask-meta")]
    out: PathBuf,
}

fn parse_range(v: &str) -> Result<(f64, f64), String> {
    let (lo, hi) = v.split_once(':').ok_or("takes LO:HI")?;
    let num = |x: &str| x.trim().parse::<f64>().map_err(|e| format!("{x:?}: {e}"));
    Ok((num(lo)?, num(hi)?))
}

/// The settings of a run, after defaults.
struct Plan {
    iterations: usize,
    threads: usize,
    eval_tasks: usize,
}

impl Args {
    fn plan(&self) -> Result<Plan, String> {
        let plan = Plan {
            iterations: self
                .iterations
                .unwrap_or(if self.quick { 2000 } else { 60_000 }),
            threads: self
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            eval_tasks: self
                .eval_tasks
                .unwrap_or(if self.quick { 100 } else { 1000 }),
        };
        if self.shots.is_empty()
            || self.shots.contains(&0)
            || self.methods.is_empty()
            || plan.threads == 0
            || plan.iterations == 0
            || plan.eval_tasks == 0
            || self.checkpoint_every == 0
        {
            return Err(
                "shots, methods, threads, iterations, eval tasks and checkpoint-every must be non-empty and positive"
                    .into(),
            );
        }
        Ok(plan)
    }
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
    /// Meta-iterations run by this process (fewer than `losses` when resumed).
    ran: usize,
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
) -> Result<(f64, f64), metasgd_core::Error> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xE7A1_0000);
    let errs: Vec<f64> = (0..n)
        .map(|_| {
            let task: Task<Regression<f32>> = dist.sample(&mut rng, shots, EVAL_QUERY);
            let adapted = learner.adapt(net, &task.support)?;
            Ok(mse(&net.predict(&adapted, &task.query.x), &task.query.y))
        })
        .collect::<Result<_, metasgd_core::Error>>()?;
    let mean = errs.iter().sum::<f64>() / n as f64;
    let var = errs.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
    Ok((mean, 1.96 * (var / n as f64).sqrt()))
}

/// The tasks of iteration `it`: a function of (seed, shots, iteration)
/// only, so a resumed run draws what the uninterrupted one drew.
fn meta_batch(dist: &Sinusoid, seed: u64, shots: usize, it: usize) -> Vec<Task<Regression<f32>>> {
    let mut rng = StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((shots as u64) << 48) ^ it as u64,
    );
    (0..META_BATCH)
        .map(|_| dist.sample(&mut rng, shots, QUERY))
        .collect()
}

/// A run's checkpoint: the learner, and its loss history in the same file.
fn checkpoint_path(dir: &std::path::Path, method: Method, shots: usize) -> PathBuf {
    dir.join(format!("{}-{shots}shot.safetensors", method.name()))
}

fn save(path: &std::path::Path, learner: &MetaLearner<f32>, losses: &[f32]) -> Result<(), String> {
    let losses = Array1::from(losses.to_vec()).into_dyn();
    learner
        .save_state_with_tensors(path, &[("losses", losses.view())])
        .map_err(|e| format!("cannot save {}: {e}", path.display()))
}

/// A run's saved state: the learner and its loss history.
type Saved = (MetaLearner<f32>, Vec<f32>);

fn resume(path: &std::path::Path) -> Result<Option<Saved>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let (learner, tensors) = MetaLearner::<f32>::load_state_with_tensors(path)
        .map_err(|e| format!("cannot resume from {}: {e}", path.display()))?;
    let losses = match tensors.as_slice() {
        [(name, l)] if name == "losses" && l.len() == learner.meta_steps() as usize => {
            l.iter().copied().collect()
        }
        _ => {
            return Err(format!(
                "{} does not hold this program's loss history",
                path.display()
            ));
        }
    };
    Ok(Some((learner, losses)))
}

fn train(
    net: &Mlp,
    method: Method,
    shots: usize,
    a: &Args,
    plan: &Plan,
    dist: &Sinusoid,
    bar: &ProgressBar,
) -> Result<Option<Run>, String> {
    let path = a
        .checkpoint
        .as_ref()
        .map(|d| checkpoint_path(d, method, shots));
    let resumed = match &path {
        Some(p) => resume(p)?,
        None => None,
    };
    let (mut learner, mut losses) = resumed.unwrap_or_else(|| {
        (
            method
                .learner(net.init::<f32>(a.seed), a.alpha_init, MAML_LR)
                .with_outer_lr(OUTER_LR),
            Vec::with_capacity(plan.iterations),
        )
    });
    let start_at = losses.len();
    if start_at > plan.iterations {
        return Err(format!(
            "the checkpoint is at iteration {start_at}, past --iterations {}",
            plan.iterations
        ));
    }
    if start_at > 0 {
        bar.suspend(|| {
            eprintln!(
                "{} {shots}-shot: resumed at iteration {start_at}",
                method.name()
            )
        });
    }
    let stop = plan.iterations.min(a.stop_after.unwrap_or(usize::MAX));
    bar.set_position(start_at as u64);
    let start = Instant::now();
    for it in start_at..stop {
        let tasks = meta_batch(dist, a.seed, shots, it);
        let loss = learner
            .meta_step(net, &tasks)
            .map_err(|e| format!("meta-step {it}: {e}"))?;
        losses.push(loss);
        let done = it + 1;
        if let Some(p) = &path
            && (done % a.checkpoint_every == 0 || done == stop)
        {
            save(p, &learner, &losses)?;
        }
        if done % 100 == 0 || done == stop {
            let recent = &losses[losses.len().saturating_sub(500)..];
            let avg = recent.iter().sum::<f32>() / recent.len() as f32;
            bar.set_position(done as u64);
            bar.set_message(format!("meta-loss {avg:.3}"));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let ran = stop.saturating_sub(start_at);
    if stop < plan.iterations {
        bar.suspend(|| {
            eprintln!(
                "{} {shots}-shot: stopped after iteration {stop} (--stop-after); run again to resume",
                method.name()
            )
        });
        return Ok(None);
    }
    let (mse, ci95) = evaluate(net, &learner, dist, shots, plan.eval_tasks, a.seed)
        .map_err(|e| format!("evaluation: {e}"))?;
    Ok(Some(Run {
        method,
        shots,
        learner,
        losses,
        mse,
        ci95,
        seconds,
        ran,
    }))
}

fn learning_svg(path: &std::path::Path, runs: &[Run]) -> Result<(), Box<dyn std::error::Error>> {
    let iters = runs.iter().map(|r| r.losses.len()).max().unwrap_or(1);
    let window = (iters / 100).max(1);
    let series: Vec<Series> = (runs.iter().enumerate())
        .map(|(i, r)| {
            let means = r.losses.chunks(window).enumerate();
            let points = means.map(|(k, c)| {
                let mean = c.iter().sum::<f32>() / c.len() as f32;
                (((k + 1) * window) as f64, f64::from(mean))
            });
            Series::new(
                format!("{} {}-shot", r.method.name(), r.shots),
                points.collect(),
                i,
            )
        })
        .collect();
    let title = format!("sinusoid meta-training: query MSE (mean over {window} iterations)");
    let mut frame = Frame::covering(&title, "meta-iteration", "meta-loss", &series);
    frame.y.start = 0.0;
    svg(path, (900, 560), &[(frame, series)])
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
            let adapted = r.learner.adapt(net, &support)?;
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
    let a = Args::parse();
    let plan = match a.plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sinusoid: {e}");
            std::process::exit(2);
        }
    };
    if let Some(dir) = &a.checkpoint
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("sinusoid: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    let dist = Sinusoid {
        frequency: a.freq,
        ..Sinusoid::default()
    };
    let net = Mlp::new(&LAYERS);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(plan.threads)
        .build()
        .expect("thread pool");
    println!(
        "sinusoid regression: network {LAYERS:?}, meta-batch {META_BATCH}, {QUERY} query points, Adam {OUTER_LR}, {} iterations, alpha_init {}, MAML rate {MAML_LR}, frequency {:?}, {} threads, seed {}{}",
        plan.iterations,
        a.alpha_init,
        a.freq,
        plan.threads,
        a.seed,
        if a.quick { " (quick)" } else { "" }
    );
    let mut runs = Vec::new();
    for &shots in &a.shots {
        for &method in &a.methods {
            let bar = ProgressBar::with_draw_target(
                Some(plan.iterations as u64),
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
            let run = pool.install(|| train(&net, method, shots, &a, &plan, &dist, &bar));
            bar.finish_and_clear();
            let run = match run {
                Ok(Some(run)) => run,
                Ok(None) => continue,
                Err(e) => {
                    eprintln!("sinusoid: {e}");
                    std::process::exit(1);
                }
            };
            println!(
                "  {:<9} {:>2}-shot: mse {:.4} +- {:.4} ({} tasks), {} meta-iterations in {:.1} s ({:.0} meta-iterations/s), params_crc32c={}",
                method.name(),
                shots,
                run.mse,
                run.ci95,
                plan.eval_tasks,
                run.ran,
                run.seconds,
                run.ran as f64 / run.seconds.max(1e-9),
                run.learner.digest()
            );
            runs.push(run);
        }
    }
    if runs.is_empty() {
        return;
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
            plan.iterations,
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
            plan.iterations,
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
        eprintln!("sinusoid: cannot create {}: {e}", a.out.display());
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
            eprintln!("sinusoid: cannot write the results: {e}");
            std::process::exit(1);
        }
    }
}
