//! One tensor's step with rates the caller keeps: the entry point of a
//! framework that holds optimizer state per tensor (burn).

use metasgd_kernels::{Element, Theta, Update};

use crate::{Error, MetaSGDConfig, Result, Rule, StateMismatch, Verdict};

impl<A: Element> MetaSGDConfig<A> {
    /// One step of one flat tensor whose rates the caller keeps, for a
    /// framework that holds optimizer state per tensor (burn's
    /// `Optimizer::State`): these settings checked ([`Self::validate`]), the
    /// non-finite policy applied to `grad` alone, the kernel the backend
    /// picks for `theta.len()` elements. The bits are those of
    /// [`MetaSGD::step_inplace`](crate::MetaSGD) with `alpha` as slot 0
    /// (`base_lr` is not used: the rates are the caller's).
    ///
    /// Returns [`Verdict::Skip`] when the policy skips the step (nothing
    /// changed). An error (settings, lengths, the policy) changes nothing;
    /// slot 0 names the tensor. The rates are the caller's to keep within
    /// the one rate rule, [`valid_rate`](crate::valid_rate) (the steps keep them there; check
    /// what you load): they are not scanned here, so a step reads each
    /// array once.
    ///
    /// ```
    /// use metasgd_core::{MetaSGDConfig, Verdict};
    ///
    /// let config = MetaSGDConfig::new(0.1_f32).with_inner_steps(1);
    /// let (mut theta, mut alpha) = (vec![1.0_f32, 2.0], vec![0.1_f32; 2]);
    /// assert_eq!(config.step_slices(&mut theta, &mut alpha, &[1.0, -1.0])?, Verdict::Step);
    /// assert_eq!(theta, [1.0 - 0.1, 2.0 + 0.1]);
    /// # Ok::<(), metasgd_core::Error>(())
    /// ```
    ///
    /// With `max_grad_norm` set, this tensor's gradient is clipped to that
    /// norm on its own (a per-tensor step sees one tensor).
    ///
    /// Under [`Rule::Hypergradient`] the rule's state is the caller's too:
    /// use [`Self::step_slices_with_prev`]; this one then refuses the step.
    pub fn step_slices(&self, theta: &mut [A], alpha: &mut [A], grad: &[A]) -> Result<Verdict> {
        self.step_slices_with(theta, alpha, None, grad)
    }

    /// [`Self::step_slices`] with the rule's state, `prev` (the previous
    /// gradient, zeros before the first step; replaced by `grad` when the
    /// step runs), as [`Rule::Hypergradient`] needs; under
    /// [`Rule::Reference`] `prev` is neither read nor written.
    ///
    /// ```
    /// use metasgd_core::{MetaSGDConfig, Rule};
    ///
    /// let config = MetaSGDConfig::new(0.1_f32).with_inner_steps(1).with_rule(Rule::hypergradient());
    /// let (mut theta, mut alpha, mut prev) = (vec![1.0_f32], vec![0.1_f32], vec![0.5_f32]);
    /// config.step_slices_with_prev(&mut theta, &mut alpha, &mut prev, &[1.0])?;
    /// let Rule::Hypergradient { up, smoothing, .. } = config.rule else { unreachable!() };
    /// assert_eq!(alpha[0], 0.1 * up); // the same sign as the history: up
    /// assert_eq!(prev[0], 0.5 * smoothing + 1.0 * (1.0 - smoothing)); // the history moves
    /// # Ok::<(), metasgd_core::Error>(())
    /// ```
    pub fn step_slices_with_prev(
        &self,
        theta: &mut [A],
        alpha: &mut [A],
        prev: &mut [A],
        grad: &[A],
    ) -> Result<Verdict> {
        self.step_slices_with(theta, alpha, Some(prev), grad)
    }

    fn step_slices_with(
        &self,
        theta: &mut [A],
        alpha: &mut [A],
        prev: Option<&mut [A]>,
        grad: &[A],
    ) -> Result<Verdict> {
        self.step_slice_list(&mut [SliceStep {
            theta,
            alpha,
            prev,
            grad,
        }])
    }

    /// One step of several flat tensors whose rates (and rule state) the
    /// caller keeps, in one multi-tensor pass: what a framework that lends
    /// every parameter's buffer at once runs (burn's `ModuleMetaSGD`). The
    /// bits are those of [`MetaSGD::step_list_inplace`](crate::MetaSGD) with
    /// `tensors[j].alpha` as slot `j`: the settings checked, every length
    /// checked, the non-finite policy applied to all gradients together
    /// (slot `j` names the tensor), `max_grad_norm` clipping by the norm of
    /// all of them (squared norms added in list order), and the kernel the
    /// backend picks for the total element count. An error changes nothing.
    ///
    /// ```
    /// use metasgd_core::{MetaSGDConfig, SliceStep, Verdict};
    ///
    /// let config = MetaSGDConfig::new(0.1_f32).with_inner_steps(1);
    /// let (mut w, mut w_rates) = (vec![1.0_f32, 2.0], vec![0.1_f32; 2]);
    /// let (mut b, mut b_rates) = (vec![0.5_f32], vec![0.1_f32]);
    /// let mut list = [
    ///     SliceStep { theta: &mut w, alpha: &mut w_rates, prev: None, grad: &[1.0, -1.0] },
    ///     SliceStep { theta: &mut b, alpha: &mut b_rates, prev: None, grad: &[2.0] },
    /// ];
    /// assert_eq!(config.step_slice_list(&mut list)?, Verdict::Step);
    /// assert_eq!((w[0], b[0]), (1.0 - 0.1, 0.5 - 0.1 * 2.0));
    /// # Ok::<(), metasgd_core::Error>(())
    /// ```
    pub fn step_slice_list(&self, tensors: &mut [SliceStep<'_, A>]) -> Result<Verdict> {
        let plan = self.plan_slice_list(tensors)?;
        self.run_slice_list(plan, tensors)
    }

    /// Everything [`Self::step_slice_list`] checks and decides, without
    /// changing anything: the settings, the lengths, the non-finite policy
    /// and the clipping scale. A caller that steps several lists (groups of
    /// settings, dtypes) plans them all first, so that a refusal of any
    /// leaves every list as it was, then runs each with
    /// [`Self::run_slice_list`].
    pub fn plan_slice_list(&self, tensors: &[SliceStep<'_, A>]) -> Result<SlicePlan<A>> {
        self.validate()?;
        let mut total = 0usize;
        for (slot, t) in tensors.iter().enumerate() {
            self.check_slice(slot, t)?;
            total += t.theta.len();
        }
        let verdict = self.non_finite.verdict(|| {
            tensors.iter().enumerate().find_map(|(j, t)| {
                metasgd_kernels::scalar::first_non_finite(t.grad).map(|i| (j, i))
            })
        })?;
        if verdict == Verdict::Skip {
            return Ok(SlicePlan { run: None });
        }
        let kernel = self.backend.kernel(total);
        let scale = match self.max_grad_norm {
            None => A::one(),
            Some(_) => {
                let squared = tensors.iter().fold(A::ZERO, |s, t| {
                    s + metasgd_kernels::norm::squared_norm(kernel, t.grad)
                });
                match self.clip_scale(squared)? {
                    Some(s) => s,
                    None => return Ok(SlicePlan { run: None }),
                }
            }
        };
        Ok(SlicePlan {
            run: Some((kernel, scale)),
        })
    }

    /// Runs what [`Self::plan_slice_list`] decided for `tensors` (the same
    /// list: lengths are checked again, an error changes nothing).
    pub fn run_slice_list(
        &self,
        plan: SlicePlan<A>,
        tensors: &mut [SliceStep<'_, A>],
    ) -> Result<Verdict> {
        for (slot, t) in tensors.iter().enumerate() {
            self.check_slice(slot, t)?;
        }
        let Some((kernel, scale)) = plan.run else {
            return Ok(Verdict::Skip);
        };
        let hypergradient = matches!(self.rule, Rule::Hypergradient { .. });
        let updates = tensors.iter_mut().map(|t| {
            let update = Update::new(Theta::InPlace(&mut *t.theta), &mut *t.alpha, t.grad);
            match (t.prev.as_deref_mut(), hypergradient) {
                (Some(p), true) => update.with_prev(p),
                _ => update,
            }
        });
        metasgd_kernels::step_many(
            kernel,
            updates,
            &self.kernel_config().with_grad_scale(scale),
        );
        Ok(Verdict::Step)
    }

    /// The lengths of one tensor of a list, and the rule's state.
    fn check_slice(&self, slot: usize, t: &SliceStep<'_, A>) -> Result<()> {
        let n = t.theta.len();
        if t.prev.is_none() && !matches!(self.rule, Rule::Reference) {
            return Err(Error::InvalidHyperparameter {
                name: "rule",
                value: f64::NAN,
                requirement: "the hypergradient rule keeps the previous gradient: step_slices_with_prev, or prev in step_slice_list",
            });
        }
        let state = |len: usize| StateMismatch::Shape {
            slot,
            state: vec![len],
            params: vec![n],
        };
        if let Some(p) = t.prev.as_deref()
            && p.len() != n
        {
            return Err(Error::StateMismatch(state(p.len())));
        }
        if t.grad.len() != n {
            return Err(Error::ShapeMismatch {
                slot,
                params: vec![n],
                gradients: vec![t.grad.len()],
            });
        }
        if t.alpha.len() != n {
            return Err(Error::StateMismatch(state(t.alpha.len())));
        }
        Ok(())
    }
}

/// What [`MetaSGDConfig::plan_slice_list`] decided: run (with the kernel
/// and the clipping scale) or skip.
#[derive(Clone, Copy, Debug)]
pub struct SlicePlan<A> {
    run: Option<(metasgd_kernels::Kernel, A)>,
}

impl<A> SlicePlan<A> {
    /// [`Verdict::Skip`] when the non-finite policy skips the step.
    pub fn verdict(&self) -> Verdict {
        match self.run {
            Some(_) => Verdict::Step,
            None => Verdict::Skip,
        }
    }
}

/// One tensor of [`MetaSGDConfig::step_slice_list`]: the parameter, its
/// rates, the rule's state (the previous gradient, under
/// [`Rule::Hypergradient`]; `None` under [`Rule::Reference`]) and its
/// gradient, all flat and of one length.
#[derive(Debug)]
pub struct SliceStep<'a, A> {
    /// The parameter's values, updated in place.
    pub theta: &'a mut [A],
    /// Its learned rates, updated in place.
    pub alpha: &'a mut [A],
    /// The rule's state, replaced by the gradient when the step runs.
    pub prev: Option<&'a mut [A]>,
    /// The gradient.
    pub grad: &'a [A],
}
