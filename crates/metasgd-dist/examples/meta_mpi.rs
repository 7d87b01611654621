//! The distributed meta-learner under MPI: Omniglot's meta-training set-up
//! (ConvNet, 20-way 1-shot, 5 queries per class, meta-batch 4, second-order
//! Meta-SGD, f32) on random images, so that no data set is needed.
//!
//! ```text
//! mpirun -n 2 meta_mpi speed 12         # seconds per meta-iteration, bytes per rank
//! mpirun -n 3 meta_mpi check 12         # a checksum of the parameters after 12 meta-iterations
//! mpirun -n 2 meta_mpi check 12 ckpt 6  # saving every 4 iterations to `ckpt`, dies after the 6th
//! mpirun -n 2 meta_mpi check 12 ckpt    # resumes from `ckpt` (written on any rank count)
//! ```
//!
//! `cargo xtask mpi --meta-speed` runs `speed` on 2 ranks of one thread
//! against 1 process of two threads, interleaved; `cargo xtask mpi` runs
//! `check` on 1, 2 and 3 ranks and compares the checksums.

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("speed");
    let iterations: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(12);
    let universe = mpi::initialize().ok_or("MPI was initialised twice")?;
    let comm = MpiCollective::new(universe.world());
    let (rank, ranks) = (comm.rank(), comm.size());
    let net = ConvNet::new(WAYS);
    let checkpoint = args.get(2).map(std::path::PathBuf::from);
    let die_after: Option<usize> = args.get(3).and_then(|s| s.parse().ok());
    let mut d = match &checkpoint {
        Some(path) if path.exists() => DistMetaLearner::load_state(comm, path)?,
        _ => {
            let learner = MetaLearner::meta_sgd(net.init::<f32>(0), 0.1).with_outer_lr(1e-3);
            DistMetaLearner::new(comm, learner)
        }
    };
    let first = d.learner().meta_steps() as usize;
    // Every rank draws the same meta-batches (the same seed) and computes its share.
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let batches: Vec<Vec<_>> = (0..iterations)
        .map(|_| (0..META_BATCH).map(|_| task(&net, &mut rng)).collect())
        .collect();
    let warm_up = if mode == "speed" {
        2.min(iterations)
    } else {
        0
    };
    let mut start = Instant::now();
    for (i, batch) in batches.iter().enumerate().skip(first) {
        if i == warm_up {
            start = Instant::now();
        }
        d.meta_step(&net, batch)?;
        if let Some(path) = &checkpoint
            && (i + 1) % 4 == 0
        {
            d.save_state(path)?;
        }
        if die_after == Some(i + 1) {
            // Killed: the last save is the one to resume from.
            std::process::exit(17);
        }
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
        match mode {
            "speed" => println!(
                "meta_speed ranks={ranks} threads={threads} s_per_iteration={seconds:.4} bytes_per_rank={bytes} all_gather_ms={gather_ms:.3}"
            ),
            _ => {
                let mut bytes = Vec::new();
                for p in d.learner().params().iter().chain(d.learner().alphas()) {
                    bytes.extend(p.iter().flat_map(|x| x.to_le_bytes()));
                }
                println!(
                    "meta_check ranks={ranks} iterations={iterations} params_crc32c={:08x}",
                    crc32c::crc32c(&bytes)
                );
            }
        }
    }
    Ok(())
}
