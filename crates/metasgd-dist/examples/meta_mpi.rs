//! The distributed meta-learner under MPI: Omniglot's meta-training set-up
//! (ConvNet, 20-way 1-shot, 5 queries per class, meta-batch 4, second-order
//! Meta-SGD, f32) on random images, so that no data set is needed.
//!
//! ```text
//! mpirun -n 2 meta_mpi 12   # seconds per meta-iteration (after 2 warm-up), bytes per rank
//! ```
//!
//! `cargo xtask mpi --meta-speed` runs it on 2 ranks of one thread against 1
//! process of two threads, interleaved. (Exactness across rank counts and
//! resumes is checked on the real data by `cargo xtask mpi`, with the
//! Omniglot example.)

use std::time::Instant;

use metasgd_dist::{Collective, DistMetaLearner, MpiCollective};
use metasgd_meta::{Classification, ConvNet, MetaLearner, Task};
use ndarray::Array4;
use rand::{Rng, SeedableRng};

const WAYS: usize = 20;
const QUERIES: usize = 5;
const META_BATCH: usize = 4;

/// One random task: a support image per class, `QUERIES` queries per class.
fn task(net: &ConvNet, rng: &mut rand::rngs::StdRng) -> Task<Classification<f32>> {
    let side = net.side();
    let mut batch = |n: usize| Classification {
        x: Array4::from_shape_fn((n, 1, side, side), |_| rng.random_range(-1.0..1.0)),
        y: (0..n).map(|i| i % WAYS).collect(),
    };
    let support = batch(WAYS);
    Task {
        support,
        query: batch(WAYS * QUERIES),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let universe = mpi::initialize().ok_or("MPI was initialised twice")?;
    let comm = MpiCollective::new(universe.world());
    let (rank, ranks) = (comm.rank(), comm.size());
    let net = ConvNet::new(WAYS);
    let learner = MetaLearner::meta_sgd(net.init::<f32>(0), 0.1).with_outer_lr(1e-3);
    let mut d = DistMetaLearner::new(comm, learner);
    // Every rank draws the same meta-batches (the same seed) and computes its share.
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let batches: Vec<Vec<_>> = (0..iterations)
        .map(|_| (0..META_BATCH).map(|_| task(&net, &mut rng)).collect())
        .collect();
    let warm_up = 2.min(iterations);
    let mut start = Instant::now();
    for (i, batch) in batches.iter().enumerate() {
        if i == warm_up {
            start = Instant::now();
        }
        d.meta_step(&net, batch)?;
    }
    let seconds = start.elapsed().as_secs_f64() / (iterations - warm_up).max(1) as f64;
    // The collective alone, with the meta-step's message size: for the
    // scaling model's communication term.
    let bytes = d.bytes_per_step(META_BATCH);
    let send = vec![0u8; bytes];
    let mut recv = vec![0u8; bytes * ranks];
    let t = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        d.collective().all_gather(&send, &mut recv);
    }
    let gather_ms = t.elapsed().as_secs_f64() * 1e3 / rounds as f64;
    if rank == 0 {
        let threads = rayon::current_num_threads();
        println!(
            "meta_speed ranks={ranks} threads={threads} s_per_iteration={seconds:.4} bytes_per_rank={bytes} all_gather_ms={gather_ms:.3}"
        );
    }
    Ok(())
}
