//! `step_with_closure`: the inner loop of optirs-core 0.3.2, with a fresh
//! gradient at every inner iterate.

use metasgd_kernels::{Config, Element, scalar};
use ndarray::{Array, ArrayD, Dimension, Zip};

use crate::{Error, MetaSGD, Result, StateMismatch, Verdict};

impl<A: Element> MetaSGD<A> {
    /// One step that evaluates the gradient at every inner iterate: the
    /// exact inner loop of optirs-core 0.3.2's `step_with_closure`.
    ///
    /// With slot 0's `alpha` (created at `base_lr` on first use), `t =
    /// params` and `c = 0`, per element: `K` times `g = grad_fn(t)`, `d =
    /// alpha * g`, `c = c + d`, `t = t - d`; then, with the last gradient
    /// (evaluated at the iterate before the last update), `alpha' =
    /// clamp(alpha - (g * c) * alpha_lr)`. Returns the final `t`;
    /// `step_count` grows by one. The bits are the reference's.
    ///
    /// Prefer it to [`step`](crate::Optimizer::step) when the gradient is
    /// cheap to evaluate and the loss curves enough that reusing one
    /// gradient for all `K` inner updates overshoots; `step` evaluates the
    /// gradient once and costs one fused pass.
    ///
    /// Under [`Rule::Hypergradient`](crate::Rule::Hypergradient) each inner iteration is one step of the
    /// rule with its fresh gradient (the rate, then `t -= alpha * g`, then
    /// the gradient kept as the previous one): `K` inner iterations are `K`
    /// steps of `step` with `inner_steps = 1`, counted as one.
    ///
    /// Unlike the reference, nothing changes unless the whole step succeeds:
    /// a failing `grad_fn`, a gradient of the wrong shape, a non-finite
    /// gradient under [`crate::NonFinitePolicy::Error`] (or a skip under
    /// [`crate::NonFinitePolicy::Skip`], which only counts it) leave every alpha and
    /// counter as they were.
    ///
    /// ```
    /// use metasgd_core::MetaSGD;
    /// use ndarray::array;
    ///
    /// // Minimise 0.5 * |x|^2: the gradient at x is x.
    /// let mut opt = MetaSGD::new(0.1_f64).with_inner_steps(3);
    /// let x = array![1.0, -2.0];
    /// let next = opt.step_with_closure(&x, |t| Ok(t.clone()))?;
    /// // Three fresh gradients: x * 0.9^3, one rounding per operation.
    /// assert!((next[0] - 0.729).abs() < 1e-12);
    /// assert_eq!(opt.get_step_count(), 1);
    /// # Ok::<(), metasgd_core::Error>(())
    /// ```
    pub fn step_with_closure<D, F>(
        &mut self,
        params: &Array<A, D>,
        mut grad_fn: F,
    ) -> Result<Array<A, D>>
    where
        D: Dimension,
        F: FnMut(&Array<A, D>) -> Result<Array<A, D>>,
    {
        self.check_settings()?;
        if let Some(state) = self.slots.first()
            && state.shape() != params.shape()
        {
            return Err(Error::StateMismatch(StateMismatch::Shape {
                slot: 0,
                state: state.shape().to_vec(),
                params: params.shape().to_vec(),
            }));
        }
        if let Some(f) = scalar::Factors::of(self.config.rule.kernel_rule()) {
            return self.closure_hypergradient(params, grad_fn, &f);
        }
        let fresh: ArrayD<A>;
        let alpha = match self.slots.first() {
            Some(a) => a.view(),
            None => {
                fresh = ArrayD::from_elem(params.shape(), self.config.base_lr);
                fresh.view()
            }
        };
        // Same shape as `params` (checked above), so the same dimensionality.
        let alpha = alpha
            .into_dimensionality::<D>()
            .map_err(|_| shape_error(params.shape(), params.shape()))?;

        let mut t = params.clone();
        let mut c = Array::<A, D>::zeros(params.raw_dim());
        let mut g_last = None;
        for _ in 0..self.config.inner_steps {
            let Some(g) = self.evaluate(&mut grad_fn, &t)? else {
                self.skipped_steps += 1;
                return Ok(params.clone());
            };
            Zip::from(&mut t)
                .and(&mut c)
                .and(&alpha)
                .and(&g)
                .for_each(|t, c, &a, &g| (*t, *c) = scalar::closure_inner(*t, *c, a, g));
            g_last = Some(g);
        }
        // Nothing can fail past this point: commit.
        let beta = self.config.alpha_lr;
        let mut new_alpha = alpha.to_owned();
        if let Some(g) = &g_last {
            Zip::from(&mut new_alpha)
                .and(g)
                .and(&c)
                .for_each(|a, &g, &c| *a = scalar::closure_alpha(*a, g, c, beta));
        }
        let new_alpha = new_alpha.into_dyn();
        match self.slots.first_mut() {
            Some(slot) => slot.assign(&new_alpha),
            None => self.slots.push(new_alpha),
        }
        self.step_count += 1;
        Ok(t)
    }
}

impl<A: Element> MetaSGD<A> {
    /// [`MetaSGD::step_with_closure`] under the hypergradient rule (the
    /// settings and slot 0's shape already checked).
    fn closure_hypergradient<D, F>(
        &mut self,
        params: &Array<A, D>,
        mut grad_fn: F,
        f: &scalar::Factors<A>,
    ) -> Result<Array<A, D>>
    where
        D: Dimension,
        F: FnMut(&Array<A, D>) -> Result<Array<A, D>>,
    {
        let shape = params.shape();
        let base = self.config.base_lr;
        let owned = |a: Option<&ArrayD<A>>, fill: A| {
            let a = a.map_or_else(|| ArrayD::from_elem(shape, fill), |a| a.to_owned());
            a.into_dimensionality::<D>()
                .map_err(|_| shape_error(shape, shape))
        };
        let mut alpha = owned(self.slots.first(), base)?;
        let mut prev = owned(self.prev.first(), A::ZERO)?;
        let cfg = Config::new(self.config.alpha_lr, 1);
        let mut t = params.clone();
        for _ in 0..self.config.inner_steps {
            let Some(g) = self.evaluate(&mut grad_fn, &t)? else {
                self.skipped_steps += 1;
                return Ok(params.clone());
            };
            Zip::from(&mut t)
                .and(&mut alpha)
                .and(&mut prev)
                .and(&g)
                .for_each(|t, a, p, &g| {
                    (*t, *a, *p) = scalar::update_hypergradient(*t, g, *a, *p, f, &cfg);
                });
        }
        // Nothing can fail past this point: commit.
        match self.slots.first_mut() {
            Some(slot) => slot.assign(&alpha.into_dyn()),
            None => self.slots.push(alpha.into_dyn()),
        }
        self.init_rule_state();
        self.prev[0].assign(&prev.into_dyn());
        self.step_count += 1;
        Ok(t)
    }
}

impl<A: Element> MetaSGD<A> {
    /// The gradient at `t` as the closure step uses it: its shape checked,
    /// `None` when the step is skipped (the policy's verdict, or a
    /// non-finite norm under `Skip`), else the gradient, scaled by clipping's
    /// `min(1, c / ||g||)` when `max_grad_norm` is set (one rounding per
    /// element, as the kernels scale).
    fn evaluate<D, F>(&self, grad_fn: &mut F, t: &Array<A, D>) -> Result<Option<Array<A, D>>>
    where
        D: Dimension,
        F: FnMut(&Array<A, D>) -> Result<Array<A, D>>,
    {
        let g = grad_fn(t)?;
        if g.shape() != t.shape() {
            return Err(shape_error(t.shape(), g.shape()));
        }
        let verdict = self
            .config
            .non_finite
            .verdict(|| g.iter().position(|v| !v.is_finite()).map(|i| (0, i)))?;
        if verdict == Verdict::Skip {
            return Ok(None);
        }
        if self.config.max_grad_norm.is_none() {
            return Ok(Some(g));
        }
        let kernel = self.config.backend.kernel(g.len());
        let squared = crate::layout::squared_norm(&g.view(), kernel);
        Ok(self.config.clip_scale(squared)?.map(
            |s| {
                if s == A::one() { g } else { g.mapv(|x| x * s) }
            },
        ))
    }
}

fn shape_error(params: &[usize], gradients: &[usize]) -> Error {
    Error::ShapeMismatch {
        slot: 0,
        params: params.to_vec(),
        gradients: gradients.to_vec(),
    }
}
