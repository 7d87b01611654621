//! The meta-learner: exact meta-gradients over a meta-batch, an outer
//! optimizer ([`Outer`], Adam by default) outside.

use metasgd_core::{Error, MAX_INNER_STEPS, MetaSGD, Result};
use metasgd_kernels::meta;
use metasgd_kernels::{Element, scalar};
use ndarray::ArrayD;

use crate::{Objective, Outer, Task, zeros_like};

/// How much of the meta-gradient to compute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Order {
    /// Drop the Hessian terms (first-order MAML): `dtheta` is the query
    /// gradient at the adapted parameters. The rate gradient is still exact
    /// for one inner step.
    First,
    /// The exact meta-gradient, Hessian-vector products included.
    #[default]
    Second,
}

/// A meta-gradient, averaged over the tasks of a meta-batch.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaGradient<A> {
    /// Mean query loss after adaptation.
    pub loss: A,
    /// Gradient with respect to the initial parameters.
    pub theta: Vec<ArrayD<A>>,
    /// Gradient with respect to the per-parameter rates (empty for MAML,
    /// whose rate is fixed).
    pub alpha: Vec<ArrayD<A>>,
}

impl<A: Element> MetaGradient<A> {
    /// Zero sums shaped like the parameters `like`, with the rates' when
    /// `rates` (Meta-SGD).
    pub fn zeros(like: &[ArrayD<A>], rates: bool) -> Self {
        Self {
            loss: A::ZERO,
            theta: zeros_like(like),
            alpha: if rates { zeros_like(like) } else { Vec::new() },
        }
    }

    /// Adds one task's loss and meta-gradient (`s = s + g`, element by
    /// element): the meta-batch's sum, taken in task order.
    pub fn add_task(&mut self, loss: A, theta: &[ArrayD<A>], alpha: &[ArrayD<A>]) {
        self.loss = self.loss + loss;
        for (sum, g) in self
            .theta
            .iter_mut()
            .zip(theta)
            .chain(self.alpha.iter_mut().zip(alpha))
        {
            sum.zip_mut_with(g, |s, &g| *s = *s + g);
        }
    }

    /// [`MetaGradient::add_task`] with the task's gradients as one flat
    /// slice per part (each tensor's elements in row-major order, tensor
    /// after tensor): the same bits.
    pub fn add_task_flat(&mut self, loss: A, theta: &[A], alpha: &[A]) {
        self.loss = self.loss + loss;
        for (sums, flat) in [(&mut self.theta, theta), (&mut self.alpha, alpha)] {
            let mut at = 0;
            for sum in sums.iter_mut() {
                let n = sum.len();
                for (s, &g) in sum.iter_mut().zip(&flat[at..at + n]) {
                    *s = *s + g;
                }
                at += n;
            }
        }
    }

    /// The mean over `n` tasks: every sum divided by `n`.
    pub fn average(mut self, n: usize) -> Self {
        let n = A::from(n).unwrap_or(A::one());
        for sum in self.theta.iter_mut().chain(self.alpha.iter_mut()) {
            sum.mapv_inplace(|s| s / n);
        }
        self.loss = self.loss / n;
        self
    }
}

/// Learns an initialisation and (for Meta-SGD) per-parameter learning rates.
///
/// Meta-SGD: [`MetaLearner::meta_sgd`]; MAML: [`MetaLearner::maml`] (one
/// fixed rate), first-order MAML with `.with_order(Order::First)`.
#[derive(Clone, Debug)]
pub struct MetaLearner<A: Element> {
    pub(crate) theta: Vec<ArrayD<A>>,
    pub(crate) alpha: Vec<ArrayD<A>>,
    pub(crate) learn_alpha: bool,
    pub(crate) inner_steps: usize,
    pub(crate) order: Order,
    /// The outer optimizer; `m_*`/`v_*` are its moments (empty for SGD).
    pub(crate) outer: Outer<A>,
    pub(crate) step: u32,
    pub(crate) m_theta: Vec<ArrayD<A>>,
    pub(crate) v_theta: Vec<ArrayD<A>>,
    pub(crate) m_alpha: Vec<ArrayD<A>>,
    pub(crate) v_alpha: Vec<ArrayD<A>>,
    /// Every task's buffers, kept across meta-iterations (not part of the
    /// state: a clone or a loaded learner starts without them).
    pub(crate) buffers: Buffers,
}

/// One task's buffers: the objective's workspace, the inner iterates and
/// gradients, and the reverse sweep's vectors. Sized once, reused by every
/// meta-iteration.
pub(crate) struct TaskBuffers<A, W, L> {
    ws: W,
    /// The objective's linearisation at `theta_0 .. theta_{K-1}` on the
    /// support set (second order only), for the reverse sweep's products.
    lins: Vec<L>,
    /// `theta_1 .. theta_K` (`theta_0` is the learner's).
    iterates: Vec<Vec<ArrayD<A>>>,
    /// `g_0 .. g_{K-1}`.
    grads: Vec<Vec<ArrayD<A>>>,
    /// The query gradient, then the sweep's `lambda`: the task's `dtheta`.
    lambda: Vec<ArrayD<A>>,
    /// The task's `dalpha` (empty for MAML).
    dalpha: Vec<ArrayD<A>>,
    /// `alpha * lambda`, and the Hessian times it.
    direction: Vec<ArrayD<A>>,
    hv: Vec<ArrayD<A>>,
}

impl<A: Element, W, L> TaskBuffers<A, W, L> {
    fn new(ws: W, lins: Vec<L>, like: &[ArrayD<A>], k: usize, learn_alpha: bool) -> Self {
        Self {
            ws,
            lins,
            iterates: (0..k).map(|_| zeros_like(like)).collect(),
            grads: (0..k).map(|_| zeros_like(like)).collect(),
            lambda: zeros_like(like),
            dalpha: if learn_alpha {
                zeros_like(like)
            } else {
                Vec::new()
            },
            direction: zeros_like(like),
            hv: zeros_like(like),
        }
    }

    /// Whether these buffers serve a learner of these shapes and settings.
    fn fits(&self, like: &[ArrayD<A>], k: usize, lins: usize, learn_alpha: bool) -> bool {
        self.iterates.len() == k
            && self.lins.len() == lins
            && self.dalpha.is_empty() != learn_alpha
            && self.lambda.len() == like.len()
            && self
                .lambda
                .iter()
                .zip(like)
                .all(|(a, b)| a.shape() == b.shape())
    }
}

/// The task buffers of the last meta-iteration, whatever the objective's
/// workspace type (taken out while a meta-gradient runs).
#[derive(Default)]
pub(crate) struct Buffers(std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>);

impl Buffers {
    /// The kept buffers if they are of this type, else none.
    fn take<T: Send + 'static>(&self) -> Vec<T> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        kept.and_then(|b| b.downcast::<Vec<T>>().ok())
            .map(|b| *b)
            .unwrap_or_default()
    }

    fn put<T: Send + 'static>(&self, v: Vec<T>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(v));
    }
}

impl Clone for Buffers {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Buffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Buffers")
    }
}

/// An array made here (row-major) as one slice.
pub(crate) fn slice_mut<A: Element>(a: &mut ArrayD<A>) -> &mut [A] {
    a.as_slice_mut().expect("arrays made here are row-major")
}

/// The elements of `a` in logical (row-major) order, borrowed when it is
/// already laid out that way.
pub(crate) fn flat<A: Element>(a: &ArrayD<A>) -> std::borrow::Cow<'_, [A]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().copied().collect()),
    }
}

impl<A: Element> MetaLearner<A> {
    fn new(init: Vec<ArrayD<A>>, alpha: A, learn_alpha: bool) -> Self {
        let init: Vec<ArrayD<A>> = init
            .into_iter()
            .map(|a| a.as_standard_layout().into_owned())
            .collect();
        let alphas = init
            .iter()
            .map(|a| ArrayD::from_elem(a.raw_dim(), alpha))
            .collect();
        Self {
            m_theta: zeros_like(&init),
            v_theta: zeros_like(&init),
            m_alpha: if learn_alpha {
                zeros_like(&init)
            } else {
                Vec::new()
            },
            v_alpha: if learn_alpha {
                zeros_like(&init)
            } else {
                Vec::new()
            },
            theta: init,
            alpha: alphas,
            learn_alpha,
            inner_steps: 1,
            order: Order::Second,
            outer: Outer::adam(A::from(1e-3).unwrap_or(A::ZERO)),
            step: 0,
            buffers: Buffers::default(),
        }
    }

    /// Meta-SGD: the initialisation `init` and a rate per parameter, starting at `alpha_init`, both learned.
    pub fn meta_sgd(init: Vec<ArrayD<A>>, alpha_init: A) -> Self {
        Self::new(init, alpha_init, true)
    }

    /// MAML: the initialisation is learned, the rate is `inner_lr` everywhere and fixed.
    pub fn maml(init: Vec<ArrayD<A>>, inner_lr: A) -> Self {
        Self::new(init, inner_lr, false)
    }

    /// Adaptation steps per task (default 1; 0 is stored as 1; more than
    /// [`metasgd_core::MAX_INNER_STEPS`] is reported by the next meta-step).
    pub fn with_inner_steps(mut self, k: usize) -> Self {
        self.inner_steps = metasgd_kernels::inner_steps(k);
        self
    }

    /// The outer optimizer (default: Adam, step size `1e-3`, decays `0.9`
    /// and `0.999`, epsilon `1e-8`). Its settings are checked by the next
    /// meta-step. Changing its kind starts its moments afresh.
    pub fn with_outer(mut self, outer: Outer<A>) -> Self {
        if outer.has_moments() != self.outer.has_moments() {
            let moments =
                |on: bool, like: &[ArrayD<A>]| if on { zeros_like(like) } else { Vec::new() };
            let (adam, alpha) = (outer.has_moments(), self.learn_alpha);
            self.m_theta = moments(adam, &self.theta);
            self.v_theta = moments(adam, &self.theta);
            self.m_alpha = moments(adam && alpha, &self.theta);
            self.v_alpha = moments(adam && alpha, &self.theta);
        }
        self.outer = outer;
        self
    }

    /// The outer optimizer.
    pub fn outer(&self) -> Outer<A> {
        self.outer
    }

    /// First or second order (default [`Order::Second`]).
    pub fn with_order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// The outer optimizer's step size (default `1e-3`).
    pub fn with_outer_lr(mut self, lr: A) -> Self {
        self.outer = self.outer.with_lr(lr);
        self
    }

    /// Replaces the per-parameter rates (one array per parameter tensor, same
    /// shapes): to resume a meta-training run or to start from rates of your
    /// own. Errors with [`Error::ShapeMismatch`] or [`Error::LengthMismatch`].
    pub fn with_alphas(mut self, alphas: Vec<ArrayD<A>>) -> Result<Self> {
        self.check_shapes(&alphas)?;
        self.alpha = alphas
            .into_iter()
            .map(|a| a.as_standard_layout().into_owned())
            .collect();
        Ok(self)
    }

    /// The learned initialisation.
    pub fn params(&self) -> &[ArrayD<A>] {
        &self.theta
    }

    /// The per-parameter rates (for MAML: filled with its fixed rate).
    pub fn alphas(&self) -> &[ArrayD<A>] {
        &self.alpha
    }

    /// CRC32C (8 hex digits) of every parameter's and rate's bits, in
    /// order: equal digests, equal learners. Compares runs across rank
    /// counts and resumes without writing them out.
    pub fn digest(&self) -> String {
        let mut bytes = Vec::new();
        for a in self.theta.iter().chain(&self.alpha) {
            a.iter().for_each(|v| v.write_le(&mut bytes));
        }
        metasgd_core::checkpoint::crc32c_hex(&bytes)
    }

    /// Meta-updates done so far.
    pub fn meta_steps(&self) -> u32 {
        self.step
    }

    /// Adapts the initialisation to one task's support set:
    /// `K` steps of `theta - alpha * grad`.
    ///
    /// Errors: what the objective says of the support set
    /// ([`Error::InvalidTask`]), or gradients of other shapes than the
    /// parameters.
    pub fn adapt<O: Objective<A>>(&self, obj: &O, support: &O::Batch) -> Result<Vec<ArrayD<A>>> {
        let mut ws = obj.workspace();
        let mut g = zeros_like(&self.theta);
        let mut theta = self.theta.clone();
        let mut next = zeros_like(&self.theta);
        for _ in 0..self.inner_steps {
            obj.loss_grad_into(&theta, support, &mut ws, &mut g)?;
            self.check_shapes(&g)?;
            self.adapt_into(&theta, &g, &mut next);
            std::mem::swap(&mut theta, &mut next);
        }
        Ok(theta)
    }

    /// `out = theta - alpha * g`, tensor by tensor.
    fn adapt_into(&self, theta: &[ArrayD<A>], g: &[ArrayD<A>], out: &mut [ArrayD<A>]) {
        for (((t, a), g), o) in theta.iter().zip(&self.alpha).zip(g).zip(out) {
            meta::adapt(slice_mut(o), &flat(t), &flat(a), &flat(g));
        }
    }

    fn check_shapes(&self, g: &[ArrayD<A>]) -> Result<()> {
        if g.len() != self.theta.len() {
            return Err(Error::LengthMismatch {
                params: self.theta.len(),
                gradients: g.len(),
            });
        }
        for (slot, (t, g)) in self.theta.iter().zip(g).enumerate() {
            if t.shape() != g.shape() || !g.is_standard_layout() {
                return Err(Error::ShapeMismatch {
                    slot,
                    params: t.shape().to_vec(),
                    gradients: g.shape().to_vec(),
                });
            }
        }
        Ok(())
    }

    /// One task's query loss; its meta-gradient is left in `buf.lambda`
    /// (theta) and `buf.dalpha` (the rates).
    fn task_gradient<O: Objective<A>>(
        &self,
        obj: &O,
        task: &Task<O::Batch>,
        buf: &mut TaskBuffers<A, O::Workspace, O::Linearisation>,
    ) -> Result<A> {
        let k = self.inner_steps;
        let second = self.order == Order::Second;
        let TaskBuffers {
            ws,
            lins,
            iterates,
            grads,
            lambda,
            dalpha,
            direction,
            hv,
        } = buf;
        // theta_0 = theta; theta_{s+1} = theta_s - alpha * g_s.
        for step in 0..k {
            let (done, rest) = iterates.split_at_mut(step);
            let at: &[ArrayD<A>] = if step == 0 {
                &self.theta
            } else {
                &done[step - 1]
            };
            if second {
                obj.linearise_into(at, &task.support, ws, &mut grads[step], &mut lins[step])?;
            } else {
                obj.loss_grad_into(at, &task.support, ws, &mut grads[step])?;
            }
            self.check_shapes(&grads[step])?;
            self.adapt_into(at, &grads[step], &mut rest[0]);
        }
        let last: &[ArrayD<A>] = if k == 0 {
            &self.theta
        } else {
            &iterates[k - 1]
        };
        let loss = obj.loss_grad_into(last, &task.query, ws, lambda)?;
        self.check_shapes(lambda)?;
        // The reverse sweep.
        for d in dalpha.iter_mut() {
            d.fill(A::ZERO);
        }
        for step in (0..k).rev() {
            for (d, (g, l)) in dalpha.iter_mut().zip(grads[step].iter().zip(lambda.iter())) {
                meta::alpha_grad(slice_mut(d), &flat(g), &flat(l));
            }
            if second {
                for ((out, a), l) in direction.iter_mut().zip(&self.alpha).zip(lambda.iter()) {
                    meta::mul(slice_mut(out), &flat(a), &flat(l));
                }
                let at: &[ArrayD<A>] = if step == 0 {
                    &self.theta
                } else {
                    &iterates[step - 1]
                };
                obj.hessian_vector_into(at, &task.support, &lins[step], direction, ws, hv)?;
                self.check_shapes(hv)?;
                for (l, h) in lambda.iter_mut().zip(hv.iter()) {
                    meta::sub_assign(slice_mut(l), &flat(h));
                }
            }
        }
        Ok(loss)
    }

    /// The meta-gradient over `tasks`: each task's query loss after
    /// adaptation and its exact gradient (see [`Order`]), averaged. Tasks
    /// run in parallel on the current rayon pool (feature `parallel`); the
    /// sum is taken in task order, so the bits do not depend on the thread
    /// count.
    ///
    /// Errors: an empty meta-batch ([`Error::LengthMismatch`]), or an
    /// objective whose gradients do not match the parameters' shapes
    /// ([`Error::ShapeMismatch`]).
    pub fn meta_gradient<O: Objective<A>>(
        &self,
        obj: &O,
        tasks: &[Task<O::Batch>],
    ) -> Result<MetaGradient<A>> {
        if tasks.is_empty() {
            return Err(Error::LengthMismatch {
                params: self.theta.len(),
                gradients: 0,
            });
        }
        let mut sum = MetaGradient::zeros(&self.theta, self.learn_alpha);
        self.for_each_task_gradient(obj, tasks, |_, loss, theta, alpha| {
            sum.add_task(loss, theta, alpha);
        })?;
        Ok(sum.average(tasks.len()))
    }

    /// Each task's query loss and meta-gradient (theta's, then the rates';
    /// none for MAML), handed to `visit` in task order once every task has
    /// succeeded: the pieces [`MetaLearner::meta_gradient`] sums, for a
    /// caller that sums them elsewhere (the ranks of `metasgd-dist`'s
    /// `DistMetaLearner`). Tasks run in parallel on the current rayon pool
    /// (feature `parallel`). A failing task is an error (the first in task
    /// order) and nothing is visited.
    pub fn for_each_task_gradient<O: Objective<A>>(
        &self,
        obj: &O,
        tasks: &[Task<O::Batch>],
        mut visit: impl FnMut(usize, A, &[ArrayD<A>], &[ArrayD<A>]),
    ) -> Result<()> {
        if self.inner_steps > MAX_INNER_STEPS {
            return Err(Error::InvalidHyperparameter {
                name: "inner_steps",
                value: self.inner_steps as f64,
                requirement: "at most MAX_INNER_STEPS (1000)",
            });
        }
        let mut pool = self
            .buffers
            .take::<TaskBuffers<A, O::Workspace, O::Linearisation>>();
        let lins = if self.order == Order::Second {
            self.inner_steps
        } else {
            0
        };
        pool.retain(|b| b.fits(&self.theta, self.inner_steps, lins, self.learn_alpha));
        pool.resize_with(tasks.len().max(pool.len()), || {
            TaskBuffers::new(
                obj.workspace(),
                (0..lins).map(|_| obj.linearisation()).collect(),
                &self.theta,
                self.inner_steps,
                self.learn_alpha,
            )
        });
        #[cfg(feature = "parallel")]
        let per_task: Vec<Result<A>> = {
            use rayon::prelude::*;
            tasks
                .par_iter()
                .zip(pool.par_iter_mut())
                .enumerate()
                .map(|(i, (t, b))| self.task_gradient(obj, t, b).map_err(|e| e.at_task(i)))
                .collect()
        };
        #[cfg(not(feature = "parallel"))]
        let per_task: Vec<Result<A>> = tasks
            .iter()
            .zip(pool.iter_mut())
            .enumerate()
            .map(|(i, (t, b))| self.task_gradient(obj, t, b).map_err(|e| e.at_task(i)))
            .collect();
        let outcome = match per_task.iter().find_map(|r| r.as_ref().err()) {
            Some(e) => Err(e.clone()),
            None => {
                for (i, (r, b)) in per_task.iter().zip(&pool).enumerate() {
                    let alpha: &[ArrayD<A>] = if self.learn_alpha { &b.dalpha } else { &[] };
                    visit(i, *r.as_ref().unwrap_or(&A::ZERO), &b.lambda, alpha);
                }
                Ok(())
            }
        };
        self.buffers.put(pool);
        outcome
    }

    /// Whether the rates are learned (Meta-SGD) or fixed (MAML).
    pub fn learns_rates(&self) -> bool {
        self.learn_alpha
    }

    /// The outer update with a meta-gradient computed elsewhere (the sum of
    /// the tasks' pieces of [`MetaLearner::for_each_task_gradient`], averaged):
    /// what [`MetaLearner::meta_step`] does after its meta-gradient. On error
    /// (the outer optimizer's settings, the step counter's bound, shapes that
    /// are not the parameters') nothing changes.
    pub fn apply_meta_gradient(&mut self, g: &MetaGradient<A>) -> Result<()> {
        self.outer.check()?;
        if self.step == u32::MAX {
            return Err(Error::InvalidHyperparameter {
                name: "step",
                value: f64::from(self.step),
                requirement: "below 2^32 - 1",
            });
        }
        let want_alpha = if self.learn_alpha {
            self.theta.len()
        } else {
            0
        };
        let shapes_match = g.theta.len() == self.theta.len()
            && g.alpha.len() == want_alpha
            && g.theta
                .iter()
                .chain(&g.alpha)
                .zip(self.theta.iter().chain(&self.theta))
                .all(|(a, b)| a.shape() == b.shape());
        if !shapes_match {
            return Err(Error::LengthMismatch {
                params: self.theta.len(),
                gradients: g.theta.len(),
            });
        }
        self.step += 1;
        self.outer.update(
            self.step,
            &mut self.theta,
            &mut self.m_theta,
            &mut self.v_theta,
            &g.theta,
        );
        self.outer.update(
            self.step,
            &mut self.alpha,
            &mut self.m_alpha,
            &mut self.v_alpha,
            &g.alpha,
        );
        Ok(())
    }

    /// One meta-update: the meta-gradient over `tasks`, then the outer
    /// optimizer on the initialisation and (Meta-SGD) the rates. Returns
    /// the mean query loss before the update. On error nothing changes.
    pub fn meta_step<O: Objective<A>>(&mut self, obj: &O, tasks: &[Task<O::Batch>]) -> Result<A> {
        self.outer.check()?;
        let g = self.meta_gradient(obj, tasks)?;
        self.apply_meta_gradient(&g)?;
        Ok(g.loss)
    }

    /// A [`MetaSGD`] whose slots start at the learned rates, for online
    /// training from the learned initialisation ([`MetaLearner::params`]).
    ///
    /// Rates are clamped to MetaSGD's range `[1e-8, 10]` (a learned rate
    /// can be negative or large); a non-finite rate starts at `base_lr`.
    pub fn to_optimizer(&self, base_lr: A) -> MetaSGD<A> {
        let fallback = if base_lr.is_finite() {
            scalar::clamp(base_lr)
        } else {
            A::LO
        };
        let rates = self
            .alpha
            .iter()
            .map(|a| {
                a.mapv(|r| {
                    if r.is_finite() {
                        scalar::clamp(r)
                    } else {
                        fallback
                    }
                })
            })
            .collect();
        MetaSGD::new(base_lr)
            .with_per_param_lrs(rates)
            .unwrap_or_else(|_| MetaSGD::new(base_lr))
    }
}
