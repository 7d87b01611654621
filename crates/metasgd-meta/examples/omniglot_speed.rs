//! Seconds per Omniglot meta-iteration on random data, timed the way
//! `../shared/peers/torch_omniglot_speed.py` times PyTorch: `ConvNet` (4
//! blocks of 64 filters, 28x28, 20 classes), f32, meta-batch 4 of 20-way
//! 1-shot tasks with 5 queries per class, binary images (pixel 1 with
//! probability 0.2), one adaptation step, second order, Adam outside;
//! `--batches` distinct meta-batches made before any timing and cycled;
//! `--warmup` untimed meta-iterations, then `--rounds` rounds of `--iters`.
//!
//! ```text
//! cargo run --release -p metasgd-meta --example omniglot_speed -- --method meta-sgd --threads 2
//! ```
//!
//! Prints `metasgd method=... rounds_s_per_it=a,b,c median_s_per_it=X`
//! (`cargo xtask meta --omniglot-speed` runs it interleaved with the
//! PyTorch script when `python3` has torch).

use std::time::Instant;

use clap::Parser;
use metasgd_examples::Method;
use metasgd_meta::{Classification, ConvNet, Task};
use ndarray::Array4;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WAYS: usize = 20;
const QUERY_PER_CLASS: usize = 5;
const META_BATCH: usize = 4;
const INNER_LR: f32 = 0.4;
const OUTER_LR: f32 = 1e-3;

/// Seconds per Omniglot meta-iteration on random data.
#[derive(Parser, Debug)]
struct Args {
    /// The meta-learning method.
    #[arg(long, value_enum, default_value = "meta-sgd")]
    method: Method,
    /// Untimed meta-iterations first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed meta-iterations per round.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Threads of the rayon pool (the tasks of a meta-batch).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Distinct meta-batches, cycled.
    #[arg(long, default_value_t = 4)]
    batches: usize,
    /// Seed of the parameters and the images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn images(rng: &mut StdRng, n: usize) -> Array4<f32> {
    Array4::from_shape_fn((n, 1, 28, 28), |_| {
        f32::from(u8::from(rng.random_bool(0.2)))
    })
}

fn task(rng: &mut StdRng) -> Task<Classification<f32>> {
    Task {
        support: Classification {
            x: images(rng, WAYS),
            y: (0..WAYS).collect(),
        },
        query: Classification {
            x: images(rng, WAYS * QUERY_PER_CLASS),
            y: (0..WAYS * QUERY_PER_CLASS)
                .map(|i| i / QUERY_PER_CLASS)
                .collect(),
        },
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build()?;
    let net = ConvNet::new(WAYS);
    let mut rng = StdRng::seed_from_u64(a.seed);
    let batches: Vec<Vec<_>> = (0..a.batches.max(1))
        .map(|_| (0..META_BATCH).map(|_| task(&mut rng)).collect())
        .collect();
    let init = net.init::<f32>(a.seed);
    let mut learner = a
        .method
        .learner(init, INNER_LR, INNER_LR)
        .with_inner_steps(1)
        .with_outer_lr(OUTER_LR);
    let mut it = 0;
    let mut step = |n: usize| -> Result<f64, metasgd_core::Error> {
        let start = Instant::now();
        for _ in 0..n {
            pool.install(|| learner.meta_step(&net, &batches[it % batches.len()]))?;
            it += 1;
        }
        Ok(start.elapsed().as_secs_f64() / n.max(1) as f64)
    };
    step(a.warmup)?;
    let mut rounds: Vec<f64> = (0..a.rounds.max(1))
        .map(|_| step(a.iters))
        .collect::<Result<_, _>>()?;
    let listed: Vec<String> = rounds.iter().map(|s| format!("{s:.4}")).collect();
    rounds.sort_by(f64::total_cmp);
    println!(
        "metasgd method={} rounds_s_per_it={} median_s_per_it={:.4}",
        a.method.name(),
        listed.join(","),
        rounds[rounds.len() / 2]
    );
    Ok(())
}
