//! The Meta-SGD optimizer state.

use metasgd_kernels::{Config, Element, Kernel};
use ndarray::{Array, ArrayD, ArrayView, ArrayViewMut, Dimension, IxDyn};

use crate::config::{rescale_rates, valid_base_lr, valid_rate};
use crate::layout::{self, Output, Target};
use crate::{
    Backend, Error, MetaSGDConfig, NonFinitePolicy, Optimizer, Result, Rule, StateMismatch, Verdict,
};

/// Meta-SGD: SGD with a learned learning rate per parameter.
///
/// Each step, per element (see [`docs/semantics.md`](https://github.com/metasgd/metasgd/blob/main/docs/semantics.md)
/// for the exact rounding):
/// `delta = alpha * g`; `theta -= delta` repeated `inner_steps` times with the
/// same gradient; `alpha -= alpha_lr * g * (accumulated delta)`, clamped to
/// `[1e-8, 10]`. `alpha` starts at `base_lr` the first time a slot is touched.
///
/// # Examples
///
/// One inner step (`K = 1`) is the textbook update:
///
/// ```
/// use metasgd_core::{MetaSGD, Optimizer};
/// use ndarray::array;
///
/// let mut opt = MetaSGD::new(0.01_f64).with_inner_steps(1);
/// let params = array![1.0, 2.0, 3.0];
/// let grads = array![0.1, -0.2, 0.3];
/// let new = opt.step(&params, &grads).unwrap();
///
/// // delta = 0.01 * g; theta -= delta; alpha -= 0.001 * g * delta
/// for i in 0..3 {
///     let delta = 0.01 * grads[i];
///     assert_eq!(new[i].to_bits(), (params[i] - delta).to_bits());
///     let alpha = 0.01 - grads[i] * (0.0 + delta) * 0.001;
///     assert_eq!(opt.get_per_param_lr().unwrap()[i].to_bits(), alpha.to_bits());
/// }
/// assert_eq!(opt.get_step_count(), 1);
/// ```
///
/// The default five inner steps reuse the gradient (the reference crate's
/// behaviour), subtracting `delta` five times, one rounding at a time:
///
/// ```
/// use metasgd_core::{MetaSGD, Optimizer};
/// use ndarray::array;
///
/// let mut opt = MetaSGD::new(0.01_f32);
/// assert_eq!(opt.get_inner_steps(), 5);
/// let params = array![1.0_f32, 2.0, 3.0];
/// let grads = array![0.1_f32, -0.2, 0.3];
/// let new = opt.step(&params, &grads).unwrap();
///
/// for i in 0..3 {
///     let d = 0.01 * grads[i];
///     let (t, c) = (params[i] - d - d - d - d - d, 0.0 + d + d + d + d + d);
///     assert_eq!(new[i].to_bits(), t.to_bits());
///     let alpha = 0.01 - grads[i] * c * 0.001;
///     assert_eq!(opt.get_per_param_lr().unwrap()[i].to_bits(), alpha.to_bits());
/// }
/// // 1 - 5 * (0.01 * 0.1) is 0.995, up to rounding:
/// assert!((new[0] - 0.995).abs() < 1e-6);
/// ```
#[derive(Clone, Debug)]
pub struct MetaSGD<A: Element> {
    /// The settings.
    pub(crate) config: MetaSGDConfig<A>,
    /// The last `base_lr` that passed validation, which
    /// `set_learning_rate` rescales from (absent before any).
    pub(crate) last_valid_lr: Option<A>,
    /// Successful steps.
    pub(crate) step_count: usize,
    /// Steps skipped under [`NonFinitePolicy::Skip`].
    pub(crate) skipped_steps: usize,
    /// One array of per-parameter learning rates per slot.
    pub(crate) slots: Vec<ArrayD<A>>,
    /// The rule's state: under [`Rule::Hypergradient`] each slot's previous
    /// gradient (laid out like the slot; empty until a step creates it at
    /// zero), empty under [`Rule::Reference`].
    pub(crate) prev: Vec<ArrayD<A>>,
}

/// Which slots a call uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slots {
    /// `step`: slot 0 only.
    First,
    /// `step_list`: slot `j` for array `j`, and as many slots as arrays.
    List,
}

/// What validation decided: the kernel and the gradient scale (clipping's
/// `min(1, c / ||g||)`, 1 without clipping), or a skip.
enum Plan<A> {
    Run(Kernel, A),
    Skip,
}

impl<A: Element> MetaSGD<A> {
    /// A new optimizer with base learning rate `base_lr`, `alpha_lr = 0.001`,
    /// `inner_steps = 5`, [`Backend::Auto`] and [`NonFinitePolicy::Propagate`].
    ///
    /// An invalid `base_lr` (not finite, or `<= 0`) is reported by the first step.
    pub fn new(base_lr: A) -> Self {
        Self::from_config(MetaSGDConfig::new(base_lr))
    }

    /// A new optimizer with these settings, no step taken, no rates learned
    /// (an invalid setting is reported by the first step).
    pub fn from_config(config: MetaSGDConfig<A>) -> Self {
        Self {
            config,
            last_valid_lr: valid_base_lr(config.base_lr).then_some(config.base_lr),
            step_count: 0,
            skipped_steps: 0,
            slots: Vec::new(),
            prev: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &MetaSGDConfig<A> {
        &self.config
    }

    /// Whether every setting and counter (everything but the rates) of the
    /// two optimizers is equal, bit for bit: how the shards of a sharded
    /// checkpoint are checked against each other.
    pub fn same_settings(&self, other: &Self) -> bool {
        self.config.same_bits(&other.config)
            && self.last_valid_lr.map(Element::bits) == other.last_valid_lr.map(Element::bits)
            && self.step_count == other.step_count
            && self.skipped_steps == other.skipped_steps
    }

    /// Sets the learning rate of the per-parameter learning rates (finite, `>= 0`).
    pub fn with_alpha_lr(mut self, alpha_lr: A) -> Self {
        self.config = self.config.with_alpha_lr(alpha_lr);
        self
    }

    /// Sets the number of inner updates per step; 0 is stored as 1, and
    /// more than [`MAX_INNER_STEPS`](crate::MAX_INNER_STEPS) is reported by the next step.
    pub fn with_inner_steps(mut self, inner_steps: usize) -> Self {
        self.config = self.config.with_inner_steps(inner_steps);
        self
    }

    /// Chooses the kernel. A backend whose feature is compiled out makes every
    /// step return [`Error::BackendUnavailable`].
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.config = self.config.with_backend(backend);
        self
    }

    /// Chooses what a step does with NaN or infinite gradients.
    pub fn with_non_finite(mut self, policy: NonFinitePolicy) -> Self {
        self.config = self.config.with_non_finite(policy);
        self
    }

    /// Clips each step's gradients to L2 norm `c`
    /// ([`MetaSGDConfig::with_max_grad_norm`]): every array of a list step
    /// together is scaled by `min(1, c / ||g||_2)` before the update, the
    /// norm summed in one fixed order (the same bits on every backend and
    /// thread count).
    ///
    /// ```
    /// use metasgd_core::{MetaSGD, Optimizer};
    /// use ndarray::array;
    ///
    /// let mut opt = MetaSGD::new(0.1_f64).with_inner_steps(1).with_max_grad_norm(1.0);
    /// let mut w = array![0.0, 0.0];
    /// opt.step_inplace(w.view_mut(), array![3.0, 4.0].view())?; // norm 5: scaled by 1/5
    /// assert_eq!(w, array![-0.1 * (3.0 * 0.2), -0.1 * (4.0 * 0.2)]);
    /// # Ok::<(), metasgd_core::Error>(())
    /// ```
    pub fn with_max_grad_norm(mut self, c: A) -> Self {
        self.config = self.config.with_max_grad_norm(c);
        self
    }

    /// Chooses how the rates learn ([`Rule::Reference`], the default, or
    /// [`Rule::Hypergradient`]). The learned rates are kept; the rule's
    /// state (the previous gradients) starts afresh.
    pub fn with_rule(mut self, rule: Rule<A>) -> Self {
        self.config = self.config.with_rule(rule);
        self.prev.clear();
        self
    }

    /// The rule's state: under [`Rule::Hypergradient`], each slot's previous
    /// gradient (empty before the first step); empty under
    /// [`Rule::Reference`].
    pub fn previous_gradients(&self) -> &[ArrayD<A>] {
        &self.prev
    }

    /// The base learning rate (the initial value of every `alpha`).
    pub fn get_base_lr(&self) -> A {
        self.config.base_lr
    }

    /// The learning rate of the per-parameter learning rates.
    pub fn get_alpha_lr(&self) -> A {
        self.config.alpha_lr
    }

    /// Inner updates per step.
    pub fn get_inner_steps(&self) -> usize {
        self.config.inner_steps
    }

    /// The backend chosen on the builder.
    pub fn get_backend(&self) -> Backend {
        self.config.backend
    }

    /// The non-finite gradient policy chosen on the builder.
    pub fn get_non_finite(&self) -> NonFinitePolicy {
        self.config.non_finite
    }

    /// Successful steps so far (one per `step`/`step_list` call, whatever the list length).
    pub fn get_step_count(&self) -> usize {
        self.step_count
    }

    /// Steps skipped under [`NonFinitePolicy::Skip`].
    pub fn skipped_steps(&self) -> usize {
        self.skipped_steps
    }

    /// The per-parameter learning rates of slot 0, once a step has created them.
    pub fn get_per_param_lr(&self) -> Option<&Array<A, IxDyn>> {
        self.slots.first()
    }

    /// The per-parameter learning rates of every slot.
    pub fn per_param_lrs(&self) -> &[Array<A, IxDyn>] {
        &self.slots
    }

    /// Starts the slots at the given per-parameter learning rates (one array
    /// per slot, in list order) instead of `base_lr`: for rates learned
    /// elsewhere, such as by `metasgd::meta::MetaLearner`.
    ///
    /// Every rate must follow the one rate rule: within the clamp range
    /// `[1e-8, 10]`, or NaN (a state training reaches under
    /// [`NonFinitePolicy::Propagate`]); [`Error::InvalidPerParamLr`] names
    /// the slot and element otherwise.
    ///
    /// ```
    /// use metasgd_core::{MetaSGD, Optimizer};
    /// use ndarray::{ArrayD, IxDyn, array};
    ///
    /// let rates = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.5_f32, 0.01]).unwrap();
    /// let mut opt = MetaSGD::new(0.1_f32).with_per_param_lrs(vec![rates])?;
    /// let mut w = array![1.0_f32, 1.0];
    /// opt.step_inplace(w.view_mut(), array![1.0, 1.0].view())?;
    /// assert!(w[0] < w[1]); // the first parameter moved with the larger rate
    /// # Ok::<(), metasgd_core::Error>(())
    /// ```
    pub fn with_per_param_lrs(mut self, lrs: Vec<ArrayD<A>>) -> Result<Self> {
        for (j, a) in lrs.iter().enumerate() {
            if let Some((i, v)) = a.iter().enumerate().find(|(_, v)| !valid_rate(**v)) {
                return Err(Error::InvalidPerParamLr {
                    slot: j,
                    index: i,
                    value: v.to_f64().unwrap_or(f64::NAN),
                });
            }
        }
        self.slots = lrs;
        self.prev.clear();
        Ok(self)
    }

    /// One step of slot 0 seen as one flat buffer laid over `pieces`, in
    /// order (each piece: parameters and their gradient, same length; the
    /// lengths add up to the slot's, which a first step creates), for a
    /// caller that applied the non-finite policy itself with
    /// [`NonFinitePolicy::verdict`]: the sharded optimizer steps its shard in
    /// place inside the caller's tensors this way, deciding on the averaged
    /// gradient of all ranks. Everything else is validated as
    /// `step_list_inplace` validates it (the gradient is not scanned);
    /// [`Verdict::Skip`] counts a skipped step. The bits are those of
    /// `step_inplace` on the concatenated pieces.
    pub fn step_pieces_decided(
        &mut self,
        pieces: &mut [(&mut [A], &[A])],
        verdict: Verdict,
    ) -> Result<()> {
        self.check_settings()?;
        let mut total = 0;
        for (p, g) in pieces.iter() {
            if p.len() != g.len() {
                return Err(Error::ShapeMismatch {
                    slot: 0,
                    params: vec![p.len()],
                    gradients: vec![g.len()],
                });
            }
            total += p.len();
        }
        if self.slots.len() > 1 {
            return Err(Error::StateMismatch(StateMismatch::SlotCount {
                slots: self.slots.len(),
                arrays: 1,
            }));
        }
        if let Some(alpha) = self.slots.first()
            && alpha.shape() != [total]
        {
            return Err(Error::StateMismatch(StateMismatch::Shape {
                slot: 0,
                state: alpha.shape().to_vec(),
                params: vec![total],
            }));
        }
        if self.config.max_grad_norm.is_some() {
            return Err(Error::InvalidHyperparameter {
                name: "max_grad_norm",
                value: f64::NAN,
                requirement: "unset here: a sharded step does not clip (clip the gradients first)",
            });
        }
        let Some((kernel, _)) = self.admit(Ok(self.plan(verdict, total)))? else {
            return Ok(());
        };
        let base = self.config.base_lr;
        if self.slots.is_empty() {
            self.slots.push(ArrayD::from_elem(IxDyn(&[total]), base));
        }
        for slot in self.slots.iter_mut().chain(&mut self.prev) {
            if slot.as_slice().is_none() {
                *slot = slot.as_standard_layout().into_owned();
            }
        }
        self.init_rule_state();
        let cfg = self.kernel_config();
        self.step_count += 1;
        let one_slice = "a standard-layout slot is one slice";
        let mut alpha = self.slots[0].as_slice_mut().expect(one_slice);
        let mut prev = self
            .prev
            .first_mut()
            .map(|p| p.as_slice_mut().expect(one_slice));
        let updates = pieces.iter_mut().map(|(p, g)| {
            let n = p.len();
            let (here, rest) = core::mem::take(&mut alpha).split_at_mut(n);
            alpha = rest;
            let u = metasgd_kernels::Update::new(metasgd_kernels::Theta::InPlace(p), here, g);
            match prev.take() {
                Some(all) => {
                    let (here, rest) = all.split_at_mut(n);
                    prev = Some(rest);
                    u.with_prev(here)
                }
                None => u,
            }
        });
        metasgd_kernels::step_many(kernel, updates, &cfg);
        Ok(())
    }

    /// One step of one flat tensor whose rates the caller keeps: the
    /// settings' [`MetaSGDConfig::step_slices`] (the slots and counters of
    /// `self` are neither used nor changed).
    ///
    /// ```
    /// use metasgd_core::{MetaSGD, Verdict};
    ///
    /// let opt = MetaSGD::new(0.1_f32).with_inner_steps(1);
    /// let (mut theta, mut alpha) = (vec![1.0_f32, 2.0], vec![0.1_f32; 2]);
    /// assert_eq!(opt.step_slices(&mut theta, &mut alpha, &[1.0, -1.0])?, Verdict::Step);
    /// assert_eq!(theta, [1.0 - 0.1, 2.0 + 0.1]);
    /// # Ok::<(), metasgd_core::Error>(())
    /// ```
    pub fn step_slices(&self, theta: &mut [A], alpha: &mut [A], grad: &[A]) -> Result<Verdict> {
        self.config.step_slices(theta, alpha, grad)
    }

    /// Forgets every slot's learning rates; the next step starts them at `base_lr`.
    pub fn reset_per_param_lr(&mut self) {
        self.slots.clear();
        self.prev.clear();
    }

    pub(crate) fn kernel_config(&self) -> Config<A> {
        self.config.kernel_config()
    }

    /// Checks the settings as every step does ([`MetaSGDConfig::validate`]):
    /// lets a caller that coordinates several optimizers (the sharded one)
    /// refuse a step before anything moves.
    pub fn validate_settings(&self) -> Result<()> {
        self.check_settings()
    }

    /// The settings, checked before every step.
    pub(crate) fn check_settings(&self) -> Result<()> {
        self.config.validate()
    }

    /// Everything that can fail, checked before anything changes: the one
    /// validation of the ndarray entry points (the non-finite policy through
    /// [`NonFinitePolicy::verdict`]).
    ///
    /// `param_shape(j)` and `grad(j)` give array `j` of `n`.
    fn validate<'g, D: Dimension + 'g>(
        &self,
        slots: Slots,
        n: usize,
        n_grads: usize,
        param_shape: impl Fn(usize) -> &'g [usize],
        grad: impl Fn(usize) -> ArrayView<'g, A, D>,
    ) -> Result<Plan<A>> {
        self.check_settings()?;
        if n != n_grads {
            return Err(Error::LengthMismatch {
                params: n,
                gradients: n_grads,
            });
        }
        if slots == Slots::List && !self.slots.is_empty() && self.slots.len() != n {
            return Err(Error::StateMismatch(StateMismatch::SlotCount {
                slots: self.slots.len(),
                arrays: n,
            }));
        }
        let mut total = 0;
        for j in 0..n {
            let (p, g) = (param_shape(j), grad(j));
            if p != g.shape() {
                return Err(Error::ShapeMismatch {
                    slot: j,
                    params: p.to_vec(),
                    gradients: g.shape().to_vec(),
                });
            }
            if let Some(state) = self.slots.get(j)
                && state.shape() != p
            {
                return Err(Error::StateMismatch(StateMismatch::Shape {
                    slot: j,
                    state: state.shape().to_vec(),
                    params: p.to_vec(),
                }));
            }
            total += p.iter().product::<usize>();
        }
        let verdict = self
            .config
            .non_finite
            .verdict(|| (0..n).find_map(|j| layout::first_non_finite(&grad(j)).map(|i| (j, i))))?;
        let plan = self.plan(verdict, total);
        let (Plan::Run(kernel, _), Some(_)) = (&plan, self.config.max_grad_norm) else {
            return Ok(plan);
        };
        // Clipping: the squared norms of the arrays, added in list order.
        let squared = (0..n).fold(A::ZERO, |s, j| s + layout::squared_norm(&grad(j), *kernel));
        Ok(match self.config.clip_scale(squared)? {
            Some(scale) => Plan::Run(*kernel, scale),
            None => Plan::Skip,
        })
    }

    /// What a validated call of `total` elements runs: the kernel, or a skip.
    fn plan(&self, verdict: Verdict, total: usize) -> Plan<A> {
        match verdict {
            Verdict::Step => Plan::Run(self.config.backend.kernel(total), A::one()),
            Verdict::Skip => Plan::Skip,
        }
    }

    /// The kernel and gradient scale to run a validated call with, or `None`
    /// for a step skipped under [`NonFinitePolicy::Skip`] (counted here).
    fn admit(&mut self, plan: Result<Plan<A>>) -> Result<Option<(Kernel, A)>> {
        match plan? {
            Plan::Run(kernel, scale) => Ok(Some((kernel, scale))),
            Plan::Skip => {
                self.skipped_steps += 1;
                Ok(None)
            }
        }
    }

    /// Creates missing slots, each laid out like its parameters, and lays
    /// out again a slot whose memory order differs from its contiguous
    /// parameters (a loaded checkpoint is row-major; Fortran-order
    /// parameters would otherwise take the strided path on every step).
    /// Values are unchanged; only the first step after a change allocates.
    fn init_slots<'p, D: Dimension + 'p>(
        &mut self,
        params: impl Iterator<Item = ArrayView<'p, A, D>>,
    ) {
        if self.slots.is_empty() {
            let base = self.config.base_lr;
            self.slots
                .extend(params.map(|p| p.map(|_| base).into_dyn()));
        } else {
            for (alpha, p) in self.slots.iter_mut().zip(params) {
                let p = p.into_dyn();
                if alpha.strides() != p.strides() && p.as_slice_memory_order().is_some() {
                    let mut like = p.map(|_| A::ZERO);
                    like.assign(alpha);
                    *alpha = like;
                }
            }
        }
        self.init_rule_state();
    }

    /// Under [`Rule::Hypergradient`], gives every slot its previous
    /// gradient (zero before the first step: `g * 0` leaves the rate as it
    /// is), laid out like the slot. Values are unchanged; only a first step
    /// or a change of layout allocates.
    pub(crate) fn init_rule_state(&mut self) {
        if matches!(self.config.rule, Rule::Reference) {
            self.prev.clear();
        } else if self.prev.len() != self.slots.len() {
            self.prev = self.slots.iter().map(|a| a.map(|_| A::ZERO)).collect();
        } else {
            for (prev, alpha) in self.prev.iter_mut().zip(&self.slots) {
                if prev.strides() != alpha.strides() {
                    let mut like = alpha.map(|_| A::ZERO);
                    like.assign(prev);
                    *prev = like;
                }
            }
        }
    }

    /// Runs a validated step on `targets` (one per slot, in order).
    ///
    /// `output_bytes` is the size of new arrays the call writes (0 in place):
    /// past [`metasgd_kernels::STREAM_MIN_BYTES`] they get streaming stores.
    fn apply<'a, D: Dimension + 'a>(
        &'a mut self,
        (kernel, scale): (Kernel, A),
        output_bytes: usize,
        targets: impl Iterator<Item = (Target<'a, A, D>, ArrayView<'a, A, D>)>,
    ) {
        let cfg = self
            .kernel_config()
            .with_grad_scale(scale)
            .with_streaming_stores(output_bytes >= metasgd_kernels::STREAM_MIN_BYTES);
        self.step_count += 1;
        let prev = self
            .prev
            .iter_mut()
            .map(Some)
            .chain(core::iter::repeat_with(|| None));
        let updates = targets.zip(self.slots.iter_mut()).zip(prev).filter_map(
            |(((target, grad), alpha), prev)| {
                layout::contiguous_or_strided(target, grad, (alpha, prev), kernel, &cfg)
            },
        );
        metasgd_kernels::step_many(kernel, updates, &cfg);
    }
}

impl<A: Element, D: Dimension> Optimizer<A, D> for MetaSGD<A> {
    /// One fused pass from `params` into a new array (same memory order).
    fn step(&mut self, params: &Array<A, D>, gradients: &Array<A, D>) -> Result<Array<A, D>> {
        let plan = self.validate(Slots::First, 1, 1, |_| params.shape(), |_| gradients.view());
        let Some(run) = self.admit(plan)? else {
            return Ok(params.clone());
        };
        self.init_slots(core::iter::once(params.view()));
        let src = params.view();
        let mut out = Output::like(&src);
        let target = Target::Into {
            src,
            dst: out.view_mut(),
        };
        let bytes = params.len() * size_of::<A>();
        self.apply(run, bytes, core::iter::once((target, gradients.view())));
        // SAFETY: `apply` ran the step through `out.view_mut()`, writing every element.
        Ok(unsafe { out.assume_init() })
    }

    fn step_list(
        &mut self,
        params_list: &[&Array<A, D>],
        gradients_list: &[&Array<A, D>],
    ) -> Result<Vec<Array<A, D>>> {
        let plan = self.validate(
            Slots::List,
            params_list.len(),
            gradients_list.len(),
            |j| params_list[j].shape(),
            |j| gradients_list[j].view(),
        );
        let Some(run) = self.admit(plan)? else {
            return Ok(params_list.iter().map(|p| (*p).clone()).collect());
        };
        self.init_slots(params_list.iter().map(|p| p.view()));
        let mut outs: Vec<Output<A, D>> = params_list
            .iter()
            .map(|p| Output::like(&p.view()))
            .collect();
        let targets = params_list
            .iter()
            .zip(outs.iter_mut())
            .map(|(p, o)| Target::Into {
                src: p.view(),
                dst: o.view_mut(),
            });
        let bytes = params_list.iter().map(|p| p.len() * size_of::<A>()).sum();
        self.apply(
            run,
            bytes,
            targets.zip(gradients_list.iter().map(|g| g.view())),
        );
        // SAFETY: `apply` ran the step through each `view_mut()`, writing every element.
        Ok(outs
            .into_iter()
            .map(|o| unsafe { o.assume_init() })
            .collect())
    }

    fn step_inplace(
        &mut self,
        params: ArrayViewMut<'_, A, D>,
        gradients: ArrayView<'_, A, D>,
    ) -> Result<()> {
        let plan = self.validate(Slots::First, 1, 1, |_| params.shape(), |_| gradients.view());
        let Some(run) = self.admit(plan)? else {
            return Ok(());
        };
        self.init_slots(core::iter::once(params.view()));
        self.apply(
            run,
            0,
            core::iter::once((Target::InPlace(params), gradients)),
        );
        Ok(())
    }

    fn step_list_inplace(
        &mut self,
        params: &mut [ArrayViewMut<'_, A, D>],
        gradients: &[ArrayView<'_, A, D>],
    ) -> Result<()> {
        let plan = self.validate(
            Slots::List,
            params.len(),
            gradients.len(),
            |j| params[j].shape(),
            |j| gradients[j].view(),
        );
        let Some(run) = self.admit(plan)? else {
            return Ok(());
        };
        self.init_slots(params.iter().map(|p| p.view()));
        let targets = params.iter_mut().map(|p| Target::InPlace(p.view_mut()));
        self.apply(run, 0, targets.zip(gradients.iter().map(|g| g.view())));
        Ok(())
    }

    fn get_learning_rate(&self) -> A {
        self.config.base_lr
    }

    /// Sets `base_lr` and rescales every learned `alpha` by `new / old`
    /// (`old` = the last valid `base_lr`), clamped to `[1e-8, 10]`, so a
    /// schedule scales what was learned instead of erasing it.
    ///
    /// A value that is not finite or not `> 0` leaves every `alpha` as it is;
    /// it is stored, and the next step reports it as
    /// [`Error::InvalidHyperparameter`].
    ///
    /// ```
    /// use metasgd_core::{MetaSGD, Optimizer};
    /// use ndarray::array;
    ///
    /// let mut opt = MetaSGD::new(0.1_f64).with_alpha_lr(0.0);
    /// opt.step(&array![1.0, 2.0], &array![0.5, 0.5]).unwrap();
    /// Optimizer::<f64, ndarray::Ix1>::set_learning_rate(&mut opt, 0.05);
    /// let alpha = opt.get_per_param_lr().unwrap();
    /// assert_eq!(alpha[0], 0.1 * (0.05 / 0.1));
    /// ```
    fn set_learning_rate(&mut self, learning_rate: A) {
        self.config.base_lr = learning_rate;
        if !valid_base_lr(learning_rate) {
            return;
        }
        if let Some(old) = self.last_valid_lr {
            for alpha in &mut self.slots {
                if alpha.as_slice_memory_order().is_none() {
                    *alpha = alpha.as_standard_layout().into_owned();
                }
                let rates = alpha.as_slice_memory_order_mut().expect("contiguous");
                rescale_rates(rates, old, learning_rate);
            }
        }
        self.last_valid_lr = Some(learning_rate);
    }
}
