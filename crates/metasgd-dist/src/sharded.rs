//! The sharded optimizer.

use metasgd_core::{Error, MetaSGD, MetaSGDConfig, Optimizer, Result, StateMismatch, Verdict};
use metasgd_kernels::Element;
use ndarray::{ArrayD, ArrayView, ArrayViewMut, Dimension, IxDyn};

use crate::agree::agree;
use crate::{Collective, Partition};

/// MetaSGD with its per-parameter learning rates sharded across the ranks
/// of a [`Collective`] (ZeRO stage 1). See the crate docs for one step.
pub struct ShardedMetaSGD<A: Element, C: Collective> {
    pub(crate) comm: C,
    /// This rank's optimizer: one slot, the shard (padding included).
    pub(crate) inner: MetaSGD<A>,
    pub(crate) shapes: Vec<Vec<usize>>,
    pub(crate) offsets: Vec<usize>,
    pub(crate) part: Partition,
    /// Committed checkpoint generations kept on disk (at least 1).
    pub(crate) keep_last: usize,
    /// Elements of each rank's shard moved per collective call.
    bucket: usize,
    /// One bucket from or for every rank (`ranks * bucket` elements).
    send: Vec<A>,
    recv: Vec<A>,
    /// This rank's averaged gradient (`shard_len`).
    grad: Vec<A>,
    /// The parameters of the padding past the last real element (stepped
    /// with a zero gradient, never read back).
    pad: Vec<A>,
    /// A copy of the shard, only for tensors that are not contiguous.
    theta: Vec<A>,
}

/// Committed generations kept on disk by default.
pub(crate) const KEEP_LAST: usize = 2;

/// Elements moved per collective call, all ranks together: the transient
/// buffers hold two such buckets (8 MiB in f32), whatever the model size.
pub const BUCKET_ELEMENTS: usize = 1 << 20;

/// The rate the padding past the last real element holds: never read back,
/// so any rate the rate rule accepts; the base rate clamped, as a fresh
/// shard's first step would leave it.
pub(crate) fn padding_rate<A: Element>(opt: &MetaSGD<A>) -> A {
    metasgd_kernels::scalar::clamp(opt.get_base_lr())
}

/// Rank `rank`'s shard of the flat values `flat` (all tensors, in order),
/// `pad` past the last real element.
fn shard_of<A: Element>(flat: &[A], part: &Partition, rank: usize, pad: A) -> ArrayD<A> {
    let shard = part
        .shard(rank)
        .map(|i| flat.get(i).copied().unwrap_or(pad))
        .collect();
    ArrayD::from_shape_vec(IxDyn(&[part.shard_len]), shard).expect("1-d")
}

/// Where each tensor starts in the flat buffer, and the total length.
pub(crate) fn offsets(shapes: &[Vec<usize>]) -> (Vec<usize>, usize) {
    let mut at = 0;
    let offsets = shapes
        .iter()
        .map(|s| {
            let start = at;
            at += s.iter().product::<usize>();
            start
        })
        .collect();
    (offsets, at)
}

impl<A: Element, C: Collective> ShardedMetaSGD<A, C> {
    /// A sharded optimizer for tensors of `shapes` (the same on every rank,
    /// in the same order) with these settings; the rates start at
    /// `base_lr` on the first step.
    ///
    /// Collective: every rank calls it.
    pub fn new(comm: C, config: MetaSGDConfig<A>, shapes: Vec<Vec<usize>>) -> Result<Self> {
        Self::from_state(comm, MetaSGD::from_config(config), shapes)
    }

    /// A sharded optimizer that goes on from `template`'s state: its
    /// settings and counters and, if it has learned rates (one slot per
    /// shape, such as rates learned by `metasgd::meta::MetaLearner`), this
    /// rank's shard of them.
    ///
    /// Collective: every rank calls it. Errors (a template whose slots do
    /// not match `shapes`) are reported on every rank.
    pub fn from_state(comm: C, template: MetaSGD<A>, shapes: Vec<Vec<usize>>) -> Result<Self> {
        let (offsets, total) = offsets(&shapes);
        let part = Partition::new(total, comm.size());
        let local = match template.config().max_grad_norm {
            // The norm would need every rank's shard in the fixed order.
            Some(c) => Err(Error::InvalidHyperparameter {
                name: "max_grad_norm",
                value: c.to_f64().unwrap_or(f64::NAN),
                requirement: "unset: ShardedMetaSGD does not clip (clip the gradients before the step)",
            }),
            None => Self::shard_of_template(&template, &shapes, &part, comm.rank()),
        };
        agree(&comm, "setup", local.as_ref().err())?;
        let inner = match local? {
            Some(shard) => {
                let flat: Vec<A> = template
                    .previous_gradients()
                    .iter()
                    .flatten()
                    .copied()
                    .collect();
                let prev = (!flat.is_empty()).then(|| shard_of(&flat, &part, comm.rank(), A::ZERO));
                template
                    .with_state_slots(vec![shard])?
                    .with_rule_state(prev.into_iter().collect())?
            }
            None => template,
        };
        Ok(Self::assemble(comm, inner, shapes, offsets, part))
    }

    pub(crate) fn assemble(
        comm: C,
        inner: MetaSGD<A>,
        shapes: Vec<Vec<usize>>,
        offsets: Vec<usize>,
        part: Partition,
    ) -> Self {
        let bucket = (BUCKET_ELEMENTS / part.ranks).clamp(1, part.shard_len.max(1));
        Self {
            comm,
            inner,
            shapes,
            offsets,
            part,
            keep_last: KEEP_LAST,
            bucket,
            send: vec![A::ZERO; part.ranks * bucket],
            recv: vec![A::ZERO; part.ranks * bucket],
            grad: vec![A::ZERO; part.shard_len],
            pad: Vec::new(),
            theta: Vec::new(),
        }
    }

    /// This rank's shard of the template's rates, `None` if it has none.
    fn shard_of_template(
        template: &MetaSGD<A>,
        shapes: &[Vec<usize>],
        part: &Partition,
        rank: usize,
    ) -> Result<Option<ArrayD<A>>> {
        let slots = template.per_param_lrs();
        if slots.is_empty() {
            return Ok(None);
        }
        if slots.len() != shapes.len() {
            return Err(Error::StateMismatch(StateMismatch::SlotCount {
                slots: slots.len(),
                arrays: shapes.len(),
            }));
        }
        for (slot, (a, s)) in slots.iter().zip(shapes).enumerate() {
            if a.shape() != s.as_slice() {
                return Err(Error::StateMismatch(StateMismatch::Shape {
                    slot,
                    state: a.shape().to_vec(),
                    params: s.clone(),
                }));
            }
        }
        let flat: Vec<A> = slots.iter().flat_map(|a| a.iter().copied()).collect();
        Ok(Some(shard_of(&flat, part, rank, padding_rate(template))))
    }

    /// Moves about `elements` elements (all ranks together, at least one
    /// per rank) per collective call instead of [`BUCKET_ELEMENTS`]: smaller
    /// buckets hold less transient memory, larger ones make fewer calls. The
    /// results are the same bits. Every rank must use the same value.
    pub fn with_bucket_elements(mut self, elements: usize) -> Self {
        let ranks = self.part.ranks;
        self.bucket = (elements / ranks).clamp(1, self.part.shard_len.max(1));
        self.send = vec![A::ZERO; ranks * self.bucket];
        self.recv = vec![A::ZERO; ranks * self.bucket];
        self
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// How the flat buffer is cut.
    pub fn partition(&self) -> Partition {
        self.part
    }

    /// Elements of this rank's shard (padding included): the number of
    /// learning rates it keeps.
    pub fn shard_len(&self) -> usize {
        self.part.shard_len
    }

    /// Bytes of learning rates this rank keeps (`shard_len` elements).
    pub fn alpha_bytes(&self) -> usize {
        self.part.shard_len * size_of::<A>()
    }

    /// The tensor shapes.
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// This rank's optimizer: its single slot is the shard's rates.
    pub fn shard_optimizer(&self) -> &MetaSGD<A> {
        &self.inner
    }

    /// Successful steps (the same on every rank).
    pub fn get_step_count(&self) -> usize {
        self.inner.get_step_count()
    }

    /// Steps skipped under [`metasgd_core::NonFinitePolicy::Skip`] (the same on every rank).
    pub fn skipped_steps(&self) -> usize {
        self.inner.skipped_steps()
    }

    /// Sets the base rate and rescales this rank's rates, as
    /// [`MetaSGD`]'s `set_learning_rate` does (call it on every rank).
    pub fn set_learning_rate(&mut self, lr: A) {
        Optimizer::<A, ndarray::Ix1>::set_learning_rate(&mut self.inner, lr);
    }

    /// The collective.
    pub fn collective(&self) -> &C {
        &self.comm
    }

    /// Gives the collective back (the shard's state is dropped).
    pub fn into_collective(self) -> C {
        self.comm
    }

    fn check_inputs<D: Dimension>(
        &self,
        params: &[ArrayViewMut<'_, A, D>],
        grads: &[ArrayView<'_, A, D>],
    ) -> Result<()> {
        self.inner.validate_settings()?;
        if params.len() != grads.len() {
            return Err(Error::LengthMismatch {
                params: params.len(),
                gradients: grads.len(),
            });
        }
        if params.len() != self.shapes.len() {
            return Err(Error::StateMismatch(StateMismatch::SlotCount {
                slots: self.shapes.len(),
                arrays: params.len(),
            }));
        }
        for (slot, ((p, g), s)) in params.iter().zip(grads).zip(&self.shapes).enumerate() {
            if p.shape() != g.shape() {
                return Err(Error::ShapeMismatch {
                    slot,
                    params: p.shape().to_vec(),
                    gradients: g.shape().to_vec(),
                });
            }
            if p.shape() != s.as_slice() {
                return Err(Error::StateMismatch(StateMismatch::Shape {
                    slot,
                    state: s.clone(),
                    params: p.shape().to_vec(),
                }));
            }
        }
        Ok(())
    }

    /// The tensor holding flat element `i` and the index inside it.
    fn locate(&self, i: usize) -> (usize, usize) {
        let slot = self.offsets.partition_point(|&o| o <= i).saturating_sub(1);
        // Skip empty tensors that share the offset.
        let slot = (slot..self.shapes.len())
            .find(|&j| i < self.offsets[j] + self.shapes[j].iter().product::<usize>())
            .unwrap_or(slot);
        (slot, i - self.offsets[slot])
    }

    /// One data-parallel step: `grads` are this rank's local gradients;
    /// afterwards every rank's `params` hold the same updated values.
    ///
    /// It reads as its phases: the ranks agree the inputs are valid; a
    /// reduce-scatter gives each rank the averaged gradient of its shard;
    /// the ranks agree on the non-finite verdict; each rank steps its shard
    /// in place inside `params`; an all-gather gives every rank the others'
    /// shards. On one rank there is nothing to exchange: the step runs on
    /// `params` and `grads` directly, with no copy. (Tensors that are not
    /// contiguous go through a copy of the shard.)
    ///
    /// Collective: every rank calls it with tensors of the registered shapes.
    /// An error on any rank (bad shapes, invalid hyperparameters, a
    /// non-finite averaged gradient under `NonFinitePolicy::Error`) fails
    /// the step on every rank and changes nothing anywhere; the other ranks
    /// report [`Error::PeerFailed`] or the same non-finite error.
    pub fn step<D: Dimension>(
        &mut self,
        params: &mut [ArrayViewMut<'_, A, D>],
        grads: &[ArrayView<'_, A, D>],
    ) -> Result<()> {
        let local = self.check_inputs(params, grads);
        agree(&self.comm, "step", local.as_ref().err())?;
        let contiguous = params.iter().all(|p| p.is_standard_layout())
            && grads.iter().all(|g| g.is_standard_layout());
        if self.part.ranks == 1 && contiguous {
            return self.step_alone(params, grads);
        }
        self.reduce_scatter(grads);
        let verdict = self.agree_verdict()?;
        if contiguous {
            self.local_step_in_place(params, verdict)?;
        } else {
            self.local_step_copied(params, verdict)?;
        }
        if verdict == Verdict::Skip {
            return Ok(());
        }
        self.all_gather(params);
        Ok(())
    }

    /// One rank: the averaged gradient is the rank's own (divided by 1,
    /// which changes no bit that the update reads), so the optimizer steps
    /// `params` with `grads` as they are.
    fn step_alone<D: Dimension>(
        &mut self,
        params: &mut [ArrayViewMut<'_, A, D>],
        grads: &[ArrayView<'_, A, D>],
    ) -> Result<()> {
        let verdict = self.inner.get_non_finite().verdict(|| {
            grads.iter().enumerate().find_map(|(j, g)| {
                let s = g.as_slice().expect("standard layout");
                metasgd_kernels::scalar::first_non_finite(s).map(|i| (j, i))
            })
        })?;
        let mut pieces: Vec<(&mut [A], &[A])> = params
            .iter_mut()
            .zip(grads)
            .map(|(p, g)| {
                (
                    p.as_slice_mut().expect("standard layout"),
                    g.as_slice().expect("standard layout"),
                )
            })
            .collect();
        self.inner.step_pieces_decided(&mut pieces, verdict)
    }

    /// Reduce-scatter: this rank's shard of every rank's gradient, summed in
    /// rank order and divided by the rank count, into `self.grad`; bucket by
    /// bucket, so the average does not depend on the transport.
    fn reduce_scatter<D: Dimension>(&mut self, grads: &[ArrayView<'_, A, D>]) {
        let (sl, ranks) = (self.part.shard_len, self.part.ranks);
        let n = A::from(ranks).unwrap_or(A::one());
        for k in (0..sl).step_by(self.bucket) {
            let len = self.bucket.min(sl - k);
            for r in 0..ranks {
                let out = &mut self.send[r * len..(r + 1) * len];
                read_range(out, r * sl + k, grads, &self.offsets, &self.shapes);
            }
            self.comm.all_to_all(
                bytemuck::cast_slice(&self.send[..ranks * len]),
                bytemuck::cast_slice_mut(&mut self.recv[..ranks * len]),
            );
            let grad = &mut self.grad[k..k + len];
            grad.copy_from_slice(&self.recv[..len]);
            for r in 1..ranks {
                for (s, &g) in grad.iter_mut().zip(&self.recv[r * len..(r + 1) * len]) {
                    *s = *s + g;
                }
            }
            grad.iter_mut().for_each(|s| *s = *s / n);
        }
    }

    /// The non-finite policy (the optimizer's one rule) on the averaged
    /// gradient, agreed by all: every rank learns the first bad element.
    fn agree_verdict(&self) -> Result<Verdict> {
        self.inner.get_non_finite().verdict(|| {
            let real = self.part.real(self.comm.rank());
            let first = self.grad[..real.len()]
                .iter()
                .position(|v| !v.is_finite())
                .map_or(u64::MAX, |i| (real.start + i) as u64);
            let worst = self
                .comm
                .all_gather_u64(first)
                .into_iter()
                .min()
                .unwrap_or(u64::MAX);
            (worst != u64::MAX).then(|| self.locate(worst as usize))
        })
    }

    /// Steps this rank's shard where it lies: the pieces of `params` in its
    /// range, then the padding (a scratch buffer whose results are dropped).
    fn local_step_in_place<D: Dimension>(
        &mut self,
        params: &mut [ArrayViewMut<'_, A, D>],
        verdict: Verdict,
    ) -> Result<()> {
        let me = self.comm.rank();
        let (shard, real) = (self.part.shard(me), self.part.real(me));
        let pad = shard.len() - real.len();
        self.pad.resize(pad, A::ZERO);
        let mut pieces: Vec<(&mut [A], &[A])> = Vec::with_capacity(params.len() + 1);
        for ((p, &at), s) in params.iter_mut().zip(&self.offsets).zip(&self.shapes) {
            let n: usize = s.iter().product();
            let (lo, hi) = (at.max(real.start), (at + n).min(real.end));
            if lo < hi {
                let slice = p.as_slice_mut().expect("standard layout");
                pieces.push((
                    &mut slice[lo - at..hi - at],
                    &self.grad[lo - shard.start..hi - shard.start],
                ));
            }
        }
        pieces.push((&mut self.pad[..], &self.grad[real.len()..]));
        self.inner.step_pieces_decided(&mut pieces, verdict)
    }

    /// [`Self::local_step_in_place`] for tensors that are not contiguous:
    /// the shard is copied out, stepped, and copied back by the all-gather.
    fn local_step_copied<D: Dimension>(
        &mut self,
        params: &mut [ArrayViewMut<'_, A, D>],
        verdict: Verdict,
    ) -> Result<()> {
        let shard = self.part.shard(self.comm.rank());
        self.theta.resize(self.part.shard_len, A::ZERO);
        let views: Vec<ArrayView<'_, A, D>> = params.iter().map(|p| p.view()).collect();
        read_range(
            &mut self.theta,
            shard.start,
            &views,
            &self.offsets,
            &self.shapes,
        );
        let mut pieces = [(&mut self.theta[..], &self.grad[..])];
        self.inner.step_pieces_decided(&mut pieces, verdict)?;
        write_range(
            params,
            shard.start,
            &self.theta,
            &self.offsets,
            &self.shapes,
        );
        Ok(())
    }

    /// All-gather: every rank receives every other rank's updated shard,
    /// bucket by bucket, into `params` (its own is already in place).
    fn all_gather<D: Dimension>(&mut self, params: &mut [ArrayViewMut<'_, A, D>]) {
        let (sl, ranks, me) = (self.part.shard_len, self.part.ranks, self.comm.rank());
        for k in (0..sl).step_by(self.bucket) {
            let len = self.bucket.min(sl - k);
            {
                let views: Vec<ArrayView<'_, A, D>> = params.iter().map(|p| p.view()).collect();
                let mine = &mut self.send[..len];
                read_range(mine, me * sl + k, &views, &self.offsets, &self.shapes);
            }
            self.comm.all_gather(
                bytemuck::cast_slice(&self.send[..len]),
                bytemuck::cast_slice_mut(&mut self.recv[..ranks * len]),
            );
            for r in (0..ranks).filter(|&r| r != me) {
                let piece = &self.recv[r * len..(r + 1) * len];
                write_range(params, r * sl + k, piece, &self.offsets, &self.shapes);
            }
        }
    }

    /// Every tensor's learning rates, assembled from all ranks (collective:
    /// every rank calls it). Before the first step they are `base_lr`.
    /// (It allocates the full rate vector: a diagnostic, not for every step.)
    pub fn gather_alphas(&self) -> Vec<ArrayD<A>> {
        let base = self.inner.get_base_lr();
        let mine: Vec<A> = match self.inner.per_param_lrs().first() {
            Some(a) => a.iter().copied().collect(),
            None => vec![base; self.part.shard_len],
        };
        let mut all = vec![A::ZERO; self.part.padded_len()];
        self.comm.all_gather(
            bytemuck::cast_slice(&mine),
            bytemuck::cast_slice_mut(&mut all),
        );
        self.shapes
            .iter()
            .zip(&self.offsets)
            .map(|(s, &at)| {
                let n: usize = s.iter().product();
                ArrayD::from_shape_vec(IxDyn(s), all[at..at + n].to_vec()).expect("shape")
            })
            .collect()
    }
}

/// `out` receives flat elements `[start, start + out.len())` of the
/// tensors, in logical (row-major) order; zeros past the end (the padding).
fn read_range<A: Element, D: Dimension>(
    out: &mut [A],
    start: usize,
    tensors: &[ArrayView<'_, A, D>],
    offsets: &[usize],
    shapes: &[Vec<usize>],
) {
    out.fill(A::ZERO);
    let end = start + out.len();
    for ((t, &at), s) in tensors.iter().zip(offsets).zip(shapes) {
        let n: usize = s.iter().product();
        let (lo, hi) = (at.max(start), (at + n).min(end));
        if lo >= hi {
            continue;
        }
        let dst = &mut out[lo - start..hi - start];
        match t.as_slice() {
            Some(src) => dst.copy_from_slice(&src[lo - at..hi - at]),
            None => dst
                .iter_mut()
                .zip(t.iter().skip(lo - at))
                .for_each(|(d, &v)| *d = v),
        }
    }
}

/// Flat elements `[start, start + src.len())` of the tensors, in logical
/// order, become `src` (positions past the end, the padding, are dropped).
fn write_range<A: Element, D: Dimension>(
    tensors: &mut [ArrayViewMut<'_, A, D>],
    start: usize,
    src: &[A],
    offsets: &[usize],
    shapes: &[Vec<usize>],
) {
    let end = start + src.len();
    for ((t, &at), s) in tensors.iter_mut().zip(offsets).zip(shapes) {
        let n: usize = s.iter().product();
        let (lo, hi) = (at.max(start), (at + n).min(end));
        if lo >= hi {
            continue;
        }
        let piece = &src[lo - start..hi - start];
        match t.as_slice_mut() {
            Some(dst) => dst[lo - at..hi - at].copy_from_slice(piece),
            None => t
                .iter_mut()
                .skip(lo - at)
                .zip(piece)
                .for_each(|(d, &v)| *d = v),
        }
    }
}
