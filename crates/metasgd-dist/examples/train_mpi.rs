//! Data-parallel training with the sharded optimizer on MPI.
//!
//! Each rank fits the same linear model `y = x W + b` to its own slice of a
//! synthetic data set; the per-parameter learning rates are split across
//! the ranks (ZeRO-1). A checkpoint (the optimizer's shards and the
//! replicated model, committed together) is written every 50 steps; a run
//! started again resumes from the last committed one, on any number of
//! ranks.
//!
//! ```text
//! cargo build --release -p metasgd-dist --features mpi --example train_mpi
//! mpirun -n 4 target/release/examples/train_mpi /tmp/train-mpi-ckpt 200
//! mpirun --host a,b -n 2 target/release/examples/train_mpi /shared/ckpt 200   # two machines
//! ```

use std::path::PathBuf;

use metasgd_core::MetaSGDConfig;
use metasgd_dist::{Collective, MpiCollective, ShardedMetaSGD};
use ndarray::{Array2, ArrayD, Axis, IxDyn};

const FEATURES: usize = 64;
const OUTPUTS: usize = 8;
const ROWS_PER_RANK: usize = 256;

/// The shapes of the model: W (FEATURES x OUTPUTS) and b (OUTPUTS).
fn shapes() -> Vec<Vec<usize>> {
    vec![vec![FEATURES, OUTPUTS], vec![OUTPUTS]]
}

/// This rank's data: inputs from a fixed pattern, targets from a hidden model.
fn data(rank: usize) -> (Array2<f32>, Array2<f32>) {
    let x = Array2::from_shape_fn((ROWS_PER_RANK, FEATURES), |(i, j)| {
        (((rank * ROWS_PER_RANK + i) * 31 + j * 17) % 97) as f32 / 97.0 - 0.5
    });
    let w_true = Array2::from_shape_fn((FEATURES, OUTPUTS), |(j, k)| {
        ((j * 7 + k * 3) % 11) as f32 / 11.0 - 0.5
    });
    let y = x.dot(&w_true);
    (x, y)
}

/// Mean squared error on this rank's data, and its gradient.
fn loss_grad(params: &[ArrayD<f32>], x: &Array2<f32>, y: &Array2<f32>) -> (f32, Vec<ArrayD<f32>>) {
    let w = params[0]
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .expect("matrix");
    let b = params[1]
        .view()
        .into_dimensionality::<ndarray::Ix1>()
        .expect("vector");
    let err = x.dot(&w) + b - y;
    let n = err.len() as f32;
    let d = err.mapv(|e| 2.0 * e / n);
    let loss = err.mapv(|e| e * e).sum() / n;
    (
        loss,
        vec![x.t().dot(&d).into_dyn(), d.sum_axis(Axis(0)).into_dyn()],
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = mpi::initialize().ok_or("MPI was initialised twice")?;
    let comm = MpiCollective::new(universe.world());
    let (rank, ranks) = (comm.rank(), comm.size());
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "train-mpi-checkpoint".into()));
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    std::fs::create_dir_all(&dir)?;

    // Resume if a committed checkpoint exists (written on any number of
    // ranks), else start fresh.
    let (mut opt, mut params) = if dir.join(metasgd_dist::COMMIT_FILE).exists() {
        let (opt, tensors) =
            ShardedMetaSGD::<f32, _>::load_state_with_tensors(comm, &dir, shapes())?;
        // The model is replicated: rank 0 stored it once, every rank reads it.
        let p: Vec<ArrayD<f32>> = tensors.into_iter().map(|(_, t)| t).collect();
        if p.len() != shapes().len() {
            return Err(format!(
                "{} model tensors in the checkpoint, expected {}",
                p.len(),
                shapes().len()
            )
            .into());
        }
        (opt, p)
    } else {
        let config = MetaSGDConfig::new(0.05_f32)
            .with_inner_steps(1)
            .with_alpha_lr(0.01);
        let p = shapes().iter().map(|s| ArrayD::zeros(IxDyn(s))).collect();
        (ShardedMetaSGD::new(comm, config, shapes())?, p)
    };
    let (x, y) = data(rank);
    let start = opt.get_step_count();
    for step in start..steps {
        let (loss, grads) = loss_grad(&params, &x, &y);
        let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
        let gv: Vec<_> = grads.iter().map(|g| g.view()).collect();
        opt.step(&mut views, &gv)?;
        if (step + 1) % 50 == 0 || step + 1 == steps {
            // The model and the optimizer in one commit: never one without the other.
            let names = ["weight", "bias"];
            let tensors: Vec<(&str, _)> = names
                .iter()
                .copied()
                .zip(params.iter().map(|p| p.view()))
                .collect();
            opt.save_state_with_tensors(&dir, &tensors)?;
            if rank == 0 {
                println!(
                    "step {:>4}: loss on rank 0's data {loss:.6}; checkpoint in {}",
                    step + 1,
                    dir.display()
                );
            }
        }
    }
    if rank == 0 {
        println!(
            "{ranks} ranks: each keeps {} of the {} learning rates ({} bytes)",
            opt.shard_len(),
            opt.partition().global_len,
            opt.alpha_bytes()
        );
    }
    Ok(())
}
