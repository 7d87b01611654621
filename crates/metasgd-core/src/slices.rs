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
        self.validate()?;
        let has_rule_state = matches!(self.rule, Rule::Reference) || prev.is_some();
        if !has_rule_state {
            return Err(Error::InvalidHyperparameter {
                name: "rule",
                value: f64::NAN,
                requirement: "the hypergradient rule keeps the previous gradient: step_slices_with_prev",
            });
        }
        if let Some(p) = prev.as_deref()
            && p.len() != theta.len()
        {
            return Err(Error::StateMismatch(StateMismatch::Shape {
                slot: 0,
                state: vec![p.len()],
                params: vec![theta.len()],
            }));
        }
        if theta.len() != grad.len() {
            return Err(Error::ShapeMismatch {
                slot: 0,
                params: vec![theta.len()],
                gradients: vec![grad.len()],
            });
        }
        if alpha.len() != theta.len() {
            return Err(Error::StateMismatch(StateMismatch::Shape {
                slot: 0,
                state: vec![alpha.len()],
                params: vec![theta.len()],
            }));
        }
        let verdict = self
            .non_finite
            .verdict(|| metasgd_kernels::scalar::first_non_finite(grad).map(|i| (0, i)))?;
        if verdict == Verdict::Skip {
            return Ok(verdict);
        }
        let kernel = self.backend.kernel(theta.len());
        let scale = match self.max_grad_norm {
            None => A::one(),
            Some(_) => {
                let squared = metasgd_kernels::norm::squared_norm(kernel, grad);
                match self.clip_scale(squared)? {
                    Some(s) => s,
                    None => return Ok(Verdict::Skip),
                }
            }
        };
        let update = Update::new(Theta::InPlace(theta), alpha, grad);
        let update = match (prev, self.rule) {
            (Some(p), Rule::Hypergradient { .. }) => update.with_prev(p),
            _ => update,
        };
        metasgd_kernels::step(kernel, update, &self.kernel_config().with_grad_scale(scale));
        Ok(verdict)
    }
}
