//! ZeRO stage 1 for MetaSGD: the per-parameter learning rates split across
//! the ranks of a data-parallel job, each rank keeping 1/N of them.
//!
//! MetaSGD's update is element-wise, so it shards perfectly. The parameter
//! tensors are flattened into one logical buffer, padded to a multiple of
//! the rank count, and cut into contiguous shards, one per rank (as
//! DeepSpeed's ZeRO-1 does). One [`ShardedMetaSGD::step`]:
//!
//! 1. every rank checks its inputs and the ranks agree that all are valid;
//! 2. an all-to-all sends each rank the gradients of its shard from every
//!    rank; they are summed in rank order and divided by the rank count, so
//!    the average never depends on the MPI library's reduction order (in
//!    buckets of [`BUCKET_ELEMENTS`], so the transient buffers stay small);
//! 3. the non-finite policy is applied to the averaged shard and agreed on
//!    (a skip or an error on one rank's shard skips or fails the step on
//!    every rank, with nothing changed anywhere);
//! 4. each rank steps its shard with the MetaSGD kernels;
//! 5. an all-gather gives every rank the full updated parameters.
//!
//! The result is bitwise equal to one process that sums the ranks' local
//! gradients in rank order (`sum = g_0; sum = sum + g_1; ...`), divides by
//! the rank count and calls `step_list_inplace` on a `MetaSGD` with the same
//! settings: for any rank count, any tensor sizes (smaller than the rank
//! count, 0-d, empty), f32 and f64, every non-finite policy.
//!
//! The transport is a [`Collective`]: [`ThreadGroup`] runs ranks as threads
//! of one process (the tests, and machines without MPI); with the `mpi`
//! feature, `MpiCollective` runs them as MPI processes (rsmpi over Open MPI
//! or any MPI library), across machines.
//!
//! Checkpoints are per rank ([`ShardedMetaSGD::save_state`]): each rank
//! writes its shard in `metasgd`'s safetensors format plus its place; loading
//! on another rank count re-partitions, and the resumed run is bitwise equal
//! to an uninterrupted one.
//!
//! ```
//! use metasgd_dist::{ShardedMetaSGD, ThreadGroup};
//! use metasgd_core::MetaSGDConfig;
//! use ndarray::{ArrayD, IxDyn};
//!
//! let shapes = vec![vec![3, 4], vec![4], vec![]];
//! let ranks = ThreadGroup::new(3).unwrap();
//! std::thread::scope(|s| {
//!     for comm in ranks {
//!         let shapes = shapes.clone();
//!         s.spawn(move || {
//!             let rank = comm.rank_index();
//!             let mut opt = ShardedMetaSGD::new(comm, MetaSGDConfig::new(0.01_f32), shapes.clone()).unwrap();
//!             let mut params: Vec<ArrayD<f32>> =
//!                 shapes.iter().map(|s| ArrayD::from_elem(IxDyn(s), 1.0)).collect();
//!             // Each rank's gradients from its own data.
//!             let grads: Vec<ArrayD<f32>> =
//!                 shapes.iter().map(|s| ArrayD::from_elem(IxDyn(s), rank as f32)).collect();
//!             let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
//!             let gv: Vec<_> = grads.iter().map(|g| g.view()).collect();
//!             opt.step(&mut views, &gv).unwrap();
//!             // Every rank now holds the same updated parameters, and 1/3 of the rates.
//!             assert_eq!(opt.shard_len(), 6);
//!         });
//!     }
//! });
//! ```

mod agree;
mod checkpoint;
mod collective;
mod meta;
#[cfg(feature = "mpi")]
mod mpi_collective;
mod partition;
pub mod reference;
mod sharded;
#[cfg(feature = "testing")]
pub mod testing;
mod threads;

pub use checkpoint::{COMMIT_FILE, CommitRecord};
pub use collective::Collective;
pub use meta::DistMetaLearner;
#[cfg(feature = "mpi")]
pub use mpi_collective::MpiCollective;
pub use partition::Partition;
pub use sharded::{BUCKET_ELEMENTS, ShardedMetaSGD};
pub use threads::{ThreadCollective, ThreadGroup};
