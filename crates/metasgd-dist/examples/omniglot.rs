//! Few-shot classification on real data: Meta-SGD (or MAML, first-order
//! MAML) with `ConvNet` on Omniglot, scored on Lake's 20 within-alphabet,
//! 20-way, 1-shot runs; the data, tasks and scoring are
//! `metasgd_meta::omniglot` (its docs give the protocol). Meta-batches of 4
//! tasks, one adaptation step, Adam outside. The checkpoint reported is the
//! one with the lowest error on runs built from a held-out background
//! alphabet (`--val-alphabet`), never chosen on Lake's runs.
//!
//! ```text
//! cargo run --release -p metasgd-dist --example omniglot -- --data ../shared/data/omniglot --minutes 30
//! # the meta-batch over MPI ranks, bitwise the same run:
//! cargo build --release -p metasgd-dist --example omniglot --features mpi
//! mpirun -n 2 target/release/examples/omniglot --data ../shared/data/omniglot --minutes 30
//! ```
//!
//! Every rank reads the data itself; rank 0 alone evaluates, prints and
//! writes, under `--out`: `omniglot-curves.csv` (every evaluation of every
//! method run so far), `omniglot-lake-error.svg` (Lake error against
//! minutes and iterations), `omniglot-run01.png` (run 1's training images
//! and a few test images with the predicted character). The last two lines
//! are `omniglot_params method=.. ranks=N iterations=N crc32c=XXXXXXXX` and
//! `lake_error method=meta-sgd error=0.xxx iterations=N minutes=M seconds_per_iteration=S`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use metasgd_dist::testing::Dying;
use metasgd_dist::{Collective, DistMetaLearner};
use metasgd_examples::plot::{Frame, Series, svg};
use metasgd_examples::{Method, curves};
use metasgd_meta::omniglot::{self, Background, Evaluation, Progress, Run, Sampler};
use metasgd_meta::{ConvNet, MetaLearner, Norm};

const META_BATCH: usize = 4;

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
    /// Stop at this many meta-iterations in all (a resumed run counts the
    /// ones before), or at --minutes, whichever comes first.
    #[arg(long)]
    max_iterations: Option<u64>,
    /// A short run for CI: 12 meta-iterations, an evaluation every 6.
    #[arg(long)]
    smoke: bool,
    /// Test only: rank 0 dies in the middle of save number N (after its
    /// file is staged, before the commit), as a killed process would.
    #[arg(long, hide = true)]
    die_mid_save: Option<usize>,
}

fn main() {
    if let Err(e) = start() {
        eprintln!("omniglot: {e}");
        std::process::exit(2);
    }
}

/// One process, or (feature `mpi`) this process's rank of the MPI job.
fn start() -> Result<()> {
    let args = Args::parse();
    #[cfg(feature = "mpi")]
    {
        let universe = mpi::initialize().ok_or("MPI was initialised twice")?;
        if let Err(e) = train(&args, metasgd_dist::MpiCollective::new(universe.world())) {
            // Exit without finalising MPI, so that mpirun ends every rank
            // (the others may wait in a collective for this one).
            eprintln!("omniglot: {e}");
            std::process::exit(2);
        }
        Ok(())
    }
    #[cfg(not(feature = "mpi"))]
    {
        let one = metasgd_dist::ThreadGroup::new(1).and_then(|mut g| g.pop());
        train(&args, one.ok_or("cannot make a group of one rank")?)
    }
}

fn die_mid_save(rank: usize) -> ! {
    eprintln!("rank {rank}: killed mid-save (--die-mid-save)");
    std::process::exit(17)
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The data every rank reads: the background set, Lake's runs, the
/// validation runs of the held-out alphabet (its index).
fn load(a: &Args) -> Result<(Background, Vec<Run>, Vec<Run>, usize)> {
    let hint = |e: omniglot::DataError| format!("{e}; pass their directory with --data DIR");
    let bg = Background::load(&a.data).map_err(hint)?;
    let runs = omniglot::lake_runs(&a.data).map_err(hint)?;
    let val = bg.alphabet(&a.val_alphabet).ok_or_else(|| {
        let names = bg.names().join(", ");
        format!(
            "--val-alphabet {}: not a background alphabet ({names})",
            a.val_alphabet
        )
    })?;
    let val_runs = bg.validation_runs(val, a.seed)?;
    Ok((bg, runs, val_runs, val))
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()).into())
}

/// The checkpoint's and the best learner's files (`--checkpoint`).
fn checkpoint_files(a: &Args) -> Result<Option<(PathBuf, PathBuf)>> {
    let Some(dir) = &a.checkpoint else {
        return Ok(None);
    };
    mkdir(dir)?;
    let file = |s: &str| dir.join(format!("omniglot-{}{s}.safetensors", a.method.name()));
    Ok(Some((file(""), file("-best"))))
}

/// The learner, its progress and the best learner so far.
type State<C> = (DistMetaLearner<f32, C>, Progress, Option<MetaLearner<f32>>);

/// The state from the checkpoint when there is one (every rank reads it),
/// else a fresh one.
fn resume<C: Collective>(
    a: &Args,
    comm: C,
    net: &ConvNet,
    files: &Option<(PathBuf, PathBuf)>,
) -> Result<State<C>> {
    let Some((main, best)) = files.as_ref().filter(|(main, _)| main.exists()) else {
        let init = a
            .method
            .learner(net.init::<f32>(a.seed), a.inner_lr, a.inner_lr);
        let init = init.with_inner_steps(1).with_outer_lr(a.outer_lr);
        return Ok((DistMetaLearner::new(comm, init), Progress::default(), None));
    };
    let (d, extras) = DistMetaLearner::load_state_with(comm, main)?;
    let progress = Progress::from_extras(&extras)?;
    let best = MetaLearner::<f32>::load_state(best)?;
    Ok((d, progress, Some(best)))
}

fn train<C: Collective>(a: &Args, comm: C) -> Result<()> {
    let (rank, ranks) = (comm.rank(), comm.size());
    let (bg, runs, val_runs, val) = load(a)?;
    let sampler = Sampler::new(&bg, Some(val), a.shift, a.seed)?;
    let net = ConvNet::new(omniglot::WAYS);
    mkdir(&a.out)?;
    let files = checkpoint_files(a)?;
    let (mut d, mut progress, mut best) = resume(a, Dying::new(comm, die_mid_save), &net, &files)
        .map_err(|e| format!("cannot resume: {e}"))?;
    let (it, minutes) = (d.learner().meta_steps(), progress.millis as f64 / 6e4);
    if rank == 0 {
        println!("Omniglot: {}; {ranks} rank(s)", bg.describe(Some(val)));
        println!("starting at iteration {it} ({minutes:.1} minutes of meta-training done)");
    }
    let (budget, eval_every, max_iterations) = match a.smoke {
        true => (f64::INFINITY, f64::INFINITY, 12),
        false => (
            a.minutes * 60.0,
            a.eval_every * 60.0,
            a.max_iterations.unwrap_or(u64::MAX),
        ),
    };
    let bar = match rank {
        0 => ProgressBar::new(if a.smoke { 12 } else { budget as u64 }),
        _ => ProgressBar::hidden(),
    };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")?);
    let mut seconds = progress.millis as f64 / 1e3;
    let (start_seconds, mut next_eval, mut ran, mut saves) =
        (seconds, seconds + eval_every, 0u64, 0);
    let mut scored_at = progress.evaluations.last().map(|e| e.iterations);
    // Rank 0's clock decides when to evaluate and to stop; every rank follows.
    let decide = |d: &DistMetaLearner<f32, Dying<C>>, yes: bool| {
        d.collective().all_gather_u64(u64::from(yes))[0] == 1
    };
    let mut it = u64::from(d.learner().meta_steps());
    let mut stop = decide(&d, seconds >= budget || it >= max_iterations);
    let mut clock = Instant::now();
    loop {
        if !stop {
            let tasks = sampler.meta_batch(it, META_BATCH);
            let loss = d
                .meta_step(&net, &tasks)
                .map_err(|e| format!("meta-step {it}: {e}"))?;
            (ran, it) = (ran + 1, it + 1);
            seconds += clock.elapsed().as_secs_f64();
            bar.set_position(if a.smoke { it } else { seconds as u64 });
            let per = (seconds - start_seconds) / ran as f64;
            bar.set_message(format!("it {it} loss {loss:.3} {per:.2} s/it"));
            stop = decide(&d, seconds >= budget || it >= max_iterations);
        }
        let due = seconds >= next_eval || (a.smoke && it.is_multiple_of(6));
        if (stop || decide(&d, due)) && scored_at != Some(it) {
            progress.millis = (seconds * 1e3) as u64;
            if rank == 0 {
                let e = Evaluation::measure(&net, d.learner(), &val_runs, &runs, progress.millis)?;
                bar.suspend(|| println!("  {e}"));
                let error = |e: &Evaluation| e.validation.support_error();
                if progress.best().is_none_or(|b| error(&e) < error(b)) {
                    let b = best.insert(d.learner().clone());
                    if let Some((_, path)) = &files {
                        b.save_state(path)?;
                    }
                }
                progress.evaluations.push(e);
            }
            if let Some((main, _)) = &files {
                saves += 1;
                if rank == 0 && a.die_mid_save == Some(saves) {
                    d.collective().arm(1);
                }
                d.save_state_with(main, &progress.to_extras())?;
            }
            (scored_at, next_eval) = (Some(it), seconds + eval_every);
        }
        if stop {
            break;
        }
        clock = Instant::now();
    }
    bar.finish_and_clear();
    if rank == 0 {
        outputs(
            a,
            &net,
            &runs,
            &progress,
            best.as_ref().unwrap_or(d.learner()),
            d.learner(),
            ranks,
        )?;
    }
    Ok(())
}

/// The CSV, the plot, the picture and the summary lines.
fn outputs(
    a: &Args,
    net: &ConvNet,
    runs: &[Run],
    progress: &Progress,
    chosen: &MetaLearner<f32>,
    last: &MetaLearner<f32>,
    ranks: usize,
) -> Result<()> {
    let csv = a.out.join("omniglot-curves.csv");
    let rows = progress.evaluations.iter().map(|e| {
        let (minutes, iterations) = (e.millis as f64 / 6e4, e.iterations as f64);
        let (val, lake) = (e.validation.support_error(), e.lake.support_error());
        vec![minutes, iterations, val, lake, e.lake.batch_error()]
    });
    let header = "method,minutes,iterations,val_error,lake_error_support,lake_error_batch";
    let all = curves::replace(
        &csv,
        header,
        &[3, 0, 4, 4, 4],
        a.method.name(),
        rows.collect(),
    )?;
    let svg_path = a.out.join("omniglot-lake-error.svg");
    // Against minutes (column 0) and against iterations (column 1).
    let panel = |x: usize, title: &str, x_desc: &str| {
        let series: Vec<Series> = (all.iter().enumerate())
            .map(|(i, (name, rows))| {
                let points = rows.iter().map(|r| (r[x], r[3])).collect();
                Series::new(name.clone(), points, i).with_markers()
            })
            .collect();
        let mut frame = Frame::covering(title, x_desc, "error (support-set statistics)", &series);
        frame.y = 0.0..1.0;
        (frame, series)
    };
    let panels = [
        panel(
            0,
            "Lake's 20 runs: error against minutes",
            "minutes of meta-training",
        ),
        panel(1, "... against meta-iterations", "meta-iterations"),
    ];
    svg(&svg_path, (1100, 460), &panels)
        .map_err(|e| format!("cannot draw {}: {e}", svg_path.display()))?;
    let best = progress.best().ok_or("no evaluation ran")?;
    let end = progress.evaluations.last().ok_or("no evaluation ran")?;
    let adapted = chosen.adapt(net, &runs[0].support)?;
    let pred = net.predict(&adapted, &runs[0].test.x, Norm::From(&runs[0].support.x))?;
    let pic = a.out.join("omniglot-run01.png");
    runs[0].picture(&pred, &pic)?;
    println!(
        "{}: chosen on the held-out alphabet: {best}",
        a.method.name()
    );
    println!("{}: at the end: {end}", a.method.name());
    println!(
        "wrote {}, {} and {}",
        csv.display(),
        svg_path.display(),
        pic.display()
    );
    let (iterations, seconds) = (last.meta_steps(), progress.millis as f64 / 1e3);
    let name = a.method.name();
    println!(
        "omniglot_params method={name} ranks={ranks} iterations={iterations} crc32c={}",
        last.digest()
    );
    println!(
        "lake_error method={name} error={:.3} iterations={iterations} minutes={:.1} seconds_per_iteration={:.3}",
        best.lake.support_error(),
        seconds / 60.0,
        seconds / f64::from(iterations)
    );
    Ok(())
}
