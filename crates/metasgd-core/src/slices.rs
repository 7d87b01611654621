//! One tensor's step with rates the caller keeps: the entry point of a
//! framework that holds optimizer state per tensor (burn).

use metasgd_kernels::{Element, Theta, Update};

use crate::{Error, MetaSGDConfig, Result, StateMismatch, Verdict};

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
    pub fn step_slices(&self, theta: &mut [A], alpha: &mut [A], grad: &[A]) -> Result<Verdict> {
        self.validate()?;
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
        if verdict == Verdict::Step {
            let kernel = self.backend.kernel(theta.len());
            let update = Update::new(Theta::InPlace(theta), alpha, grad);
            metasgd_kernels::step(kernel, update, &self.kernel_config());
        }
        Ok(verdict)
    }
}
