//! Data-parallel meta-training: the tasks of a meta-batch spread over the
//! ranks of a [`Collective`], bitwise equal to one process.
//!
//! One [`DistMetaLearner::meta_step`] reads as its phases:
//! 1. **compute**: this rank's share of the meta-batch (tasks assigned by
//!    index in contiguous blocks, [`DistMetaLearner::share`]; uneven shares
//!    and ranks without a task are fine) through
//!    `MetaLearner::for_each_task_gradient`, each task's loss and
//!    meta-gradient written to its row of a send buffer;
//! 2. **agree**: if a task failed on any rank, every rank returns the same
//!    error ([`metasgd_core::Error::PeerFailed`] naming the first failing
//!    rank and its error), and nothing changed anywhere;
//! 3. **gather**: one all-gather of every rank's rows (each rank sends
//!    `ceil(tasks / ranks)` rows of `1 + params` values, `1 + 2 * params`
//!    for Meta-SGD);
//! 4. **sum in task order and update**: every rank adds the rows in task
//!    order, exactly as the one-process `MetaLearner::meta_gradient` does,
//!    averages, and runs the outer optimizer on its replica.
//!
//! Checkpoints ([`DistMetaLearner::save_state_with`]): the replicas are
//! equal, so rank 0 alone writes `MetaLearner`'s checksummed file (the
//! caller's extras in it too), in two phases: a temporary file synced, every
//! rank's agreement, then the rename over the last file, which is the
//! commit (issue 13's protocol with one record: rank 0's, written last). A
//! process killed at any moment leaves the previous complete file or the
//! new one; there is no set of per-rank files to keep consistent, so no
//! generation directory is needed. [`DistMetaLearner::load_state`] reads it
//! on every rank (shared storage), on any rank count.
//!
//! So the initialisation, the rates and the outer optimizer's state after
//! every meta-step are those of the one-process `MetaLearner` on the same
//! meta-batch, bit for bit, on any rank count. The outer optimizer's state is
//! replicated, not sharded: it is as large as the parameters (0.45 MB for
//! Omniglot's ConvNet in f32), and its update takes microseconds next to a
//! task's meta-gradient; sharding it (ZeRO-1) would add an all-gather of the
//! parameters to every step and save nothing that matters.

use std::ops::Range;
use std::path::Path;

use metasgd_core::checkpoint::{NamedTensors, Staged};
use metasgd_core::{Error, Result};
use metasgd_kernels::Element;
use metasgd_meta::{Extras, MetaGradient, MetaLearner, Objective, Task};
use ndarray::ArrayViewD;

use crate::Collective;
use crate::agree::agree_uniform;

/// A [`MetaLearner`] whose meta-batches are spread over the ranks of `C`.
/// See the module docs.
///
/// ```
/// use metasgd_dist::{Collective, DistMetaLearner, ThreadGroup};
/// use metasgd_meta::{MetaLearner, Mlp, Sinusoid};
/// use rand::SeedableRng;
///
/// let net = Mlp::new(&[1, 8, 1]);
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let tasks: Vec<_> = (0..3).map(|_| Sinusoid::default().sample::<f64, _>(&mut rng, 5, 5)).collect();
/// // One process.
/// let mut one = MetaLearner::meta_sgd(net.init::<f64>(0), 0.01);
/// one.meta_step(&net, &tasks)?;
/// // Two ranks (threads here; MPI processes with the `mpi` feature).
/// let ranks = ThreadGroup::new(2).expect("two ranks");
/// let learners: Vec<_> = std::thread::scope(|s| {
///     let handles: Vec<_> = ranks
///         .into_iter()
///         .map(|comm| {
///             let (net, tasks) = (&net, &tasks);
///             s.spawn(move || {
///                 let mut d = DistMetaLearner::new(comm, MetaLearner::meta_sgd(net.init::<f64>(0), 0.01));
///                 d.meta_step(net, tasks).unwrap();
///                 d.into_learner()
///             })
///         })
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// for l in &learners {
///     assert_eq!(l.params(), one.params()); // bit for bit
///     assert_eq!(l.alphas(), one.alphas());
/// }
/// # Ok::<(), metasgd_core::Error>(())
/// ```
pub struct DistMetaLearner<A: Element, C: Collective> {
    comm: C,
    learner: MetaLearner<A>,
    /// This rank's rows, and every rank's (reused between steps).
    send: Vec<A>,
    recv: Vec<A>,
}

impl<A: Element, C: Collective> DistMetaLearner<A, C> {
    /// A distributed meta-learner from every rank's replica of the same
    /// learner (the same initialisation, settings and state on every rank).
    pub fn new(comm: C, learner: MetaLearner<A>) -> Self {
        Self {
            comm,
            learner,
            send: Vec::new(),
            recv: Vec::new(),
        }
    }

    /// Saves the meta-training state and the caller's [`Extras`] (rank 0's
    /// are written, the others' ignored) to `path`, in two phases: rank 0
    /// writes and syncs a temporary file beside `path`; every rank agrees
    /// that it did (and that no rank died); rank 0 renames it over `path`,
    /// which is the commit; every rank agrees on the outcome. Collective:
    /// every rank calls it with the same path. On error every rank returns
    /// the same error; a rank that dies before the commit leaves the
    /// previous file at `path`.
    pub fn save_state_with(&self, path: impl AsRef<Path>, extras: &Extras<A>) -> Result<()> {
        let path = path.as_ref();
        let staged = if self.comm.rank() == 0 {
            Some(
                self.learner
                    .state_bytes_with_extras(extras)
                    .and_then(|bytes| Staged::write(path, &bytes)),
            )
        } else {
            None
        };
        let local = staged.as_ref().and_then(|s| s.as_ref().err());
        agree_uniform(&self.comm, "save", local)?;
        let committed = staged.and_then(|s| s.ok()).map(Staged::commit);
        agree_uniform(&self.comm, "save", committed.and_then(Result::err).as_ref())
    }

    /// [`Self::save_state_with`] with tensors only.
    pub fn save_state_with_tensors(
        &self,
        path: impl AsRef<Path>,
        tensors: &[(&str, ArrayViewD<'_, A>)],
    ) -> Result<()> {
        self.save_state_with(path, &Extras::from_tensors(tensors))
    }

    /// [`Self::save_state_with`] without extras.
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_state_with(path, &Extras::default())
    }

    /// Every rank reads the state [`Self::save_state_with`] wrote (checksums
    /// first), on any rank count; returns the learner and the caller's
    /// extras. Collective: on error on any rank every rank returns the same
    /// error.
    pub fn load_state_with(comm: C, path: impl AsRef<Path>) -> Result<(Self, Extras<A>)> {
        let local = MetaLearner::<A>::load_state_with(path);
        agree_uniform(&comm, "load", local.as_ref().err())?;
        let (learner, extras) = local?;
        Ok((Self::new(comm, learner), extras))
    }

    /// [`Self::load_state_with`] of a file with tensors only.
    pub fn load_state_with_tensors(
        comm: C,
        path: impl AsRef<Path>,
    ) -> Result<(Self, NamedTensors<A>)> {
        let local = MetaLearner::<A>::load_state_with_tensors(path);
        agree_uniform(&comm, "load", local.as_ref().err())?;
        let (learner, tensors) = local?;
        Ok((Self::new(comm, learner), tensors))
    }

    /// [`Self::load_state_with`] of a file without extras.
    pub fn load_state(comm: C, path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::load_state_with_tensors(comm, path)?.0)
    }

    /// This rank's replica.
    pub fn learner(&self) -> &MetaLearner<A> {
        &self.learner
    }

    /// The replica, leaving the group.
    pub fn into_learner(self) -> MetaLearner<A> {
        self.learner
    }

    /// The collective.
    pub fn collective(&self) -> &C {
        &self.comm
    }

    /// The tasks of a meta-batch of `tasks` that rank `rank` computes:
    /// `[tasks * rank / ranks, tasks * (rank + 1) / ranks)`, contiguous, in
    /// order, shares differing by at most one.
    pub fn share_of(tasks: usize, rank: usize, ranks: usize) -> Range<usize> {
        tasks * rank / ranks..tasks * (rank + 1) / ranks
    }

    /// This rank's share of a meta-batch of `tasks` ([`Self::share_of`]).
    pub fn share(&self, tasks: usize) -> Range<usize> {
        Self::share_of(tasks, self.comm.rank(), self.comm.size())
    }

    /// Bytes this rank sends in one meta-step over `tasks` tasks (the
    /// all-gather of its rows; the agreement adds 8 bytes).
    pub fn bytes_per_step(&self, tasks: usize) -> usize {
        tasks.div_ceil(self.comm.size()) * self.row_len() * size_of::<A>()
    }

    /// Values per task row: the loss, theta's gradient, the rates' (Meta-SGD).
    fn row_len(&self) -> usize {
        let params: usize = self.learner.params().iter().map(|p| p.len()).sum();
        1 + params * if self.learner.learns_rates() { 2 } else { 1 }
    }

    /// One meta-update over `tasks`, the whole meta-batch (the same on every
    /// rank): this rank computes its share, the ranks exchange the tasks'
    /// meta-gradients, and every rank applies their sum in task order. Returns
    /// the mean query loss before the update, as `MetaLearner::meta_step`.
    ///
    /// Collective: every rank calls it with the same meta-batch. On error
    /// (an empty meta-batch, a failing task on any rank, the outer
    /// optimizer's settings) every rank returns the same error and no
    /// replica changes.
    pub fn meta_step<O: Objective<A>>(&mut self, obj: &O, tasks: &[Task<O::Batch>]) -> Result<A> {
        if tasks.is_empty() {
            return Err(Error::LengthMismatch {
                params: self.learner.params().len(),
                gradients: 0,
            });
        }
        let (n, ranks) = (tasks.len(), self.comm.size());
        let (rows, row) = (n.div_ceil(ranks), self.row_len());
        let params = (row - 1) / if self.learner.learns_rates() { 2 } else { 1 };
        let mine = self.share(n);
        self.send.clear();
        self.send.resize(rows * row, A::ZERO);
        let send = &mut self.send;
        let local = self
            .learner
            .for_each_task_gradient(obj, &tasks[mine.clone()], |i, loss, theta, alpha| {
                let out = &mut send[i * row..(i + 1) * row];
                out[0] = loss;
                let mut at = 1;
                for a in theta.iter().chain(alpha) {
                    for (o, &v) in out[at..at + a.len()].iter_mut().zip(a.iter()) {
                        *o = v;
                    }
                    at += a.len();
                }
            })
            .map_err(|e| {
                let task = mine.start;
                Error::PeerFailed {
                    rank: self.comm.rank(),
                    operation: "meta-step",
                    cause: format!("a task of {task}..{} failed: {e}", mine.end),
                }
            });
        agree_uniform(&self.comm, "meta-step", local.as_ref().err())?;
        self.recv.clear();
        self.recv.resize(ranks * rows * row, A::ZERO);
        self.comm.all_gather(
            bytemuck::cast_slice(&self.send),
            bytemuck::cast_slice_mut(&mut self.recv),
        );
        let mut sum = MetaGradient::zeros(self.learner.params(), self.learner.learns_rates());
        for r in 0..ranks {
            for k in 0..Self::share_of(n, r, ranks).len() {
                let at = (r * rows + k) * row;
                let task = &self.recv[at..at + row];
                let (theta, alpha) = task[1..].split_at(params);
                sum.add_task_flat(task[0], theta, alpha);
            }
        }
        let g = sum.average(n);
        self.learner.apply_meta_gradient(&g)?;
        Ok(g.loss)
    }
}
