//! [`ModuleMetaSGD`]: MetaSGD over a whole burn module in one multi-tensor
//! pass.
//!
//! burn's [`ModuleOptimizer`](burn::optim::ModuleOptimizer) hands its
//! per-tensor [`Optimizer`](burn::optim::Optimizer) one parameter at a time,
//! so every large tensor is its own parallel region and every parameter pays
//! the per-call checks. [`ModuleMetaSGD::step`] instead walks the module
//! once to lend every parameter's buffer (and its gradient), checks the
//! whole step, runs one [`step_slice_list`](metasgd_core::MetaSGDConfig::step_slice_list)
//! pass per group of settings and dtype (the chunks of all tensors scheduled
//! together, as `metasgd_core::MetaSGD::step_list_inplace` does), and walks
//! the module again to give the buffers back.

mod record;

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param, ParamGroup, ParamId};
use burn::optim::GradientsParams;
use burn::optim::grad_clipping::GradientClipping;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::tensor::{DType, Device, GradientCheckpointingStrategy, Tensor, TensorData};
use metasgd_core::{Rule, SlicePlan, SliceStep, Verdict};

use crate::{BurnElement, Error, Lent, MetaSGD};

/// MetaSGD over a whole module: one multi-tensor pass per step, the same
/// bits as [`MetaSGD`] in a [`ModuleOptimizer`](burn::optim::ModuleOptimizer),
/// and records either can load.
///
/// ```
/// use burn::module::{Module, Param};
/// use burn::optim::GradientsParams;
/// use burn::tensor::{Device, Tensor};
/// use metasgd_burn::{MetaSGD, ModuleMetaSGD};
/// use metasgd_core::MetaSGDConfig;
///
/// #[derive(Module, Debug)]
/// struct Net {
///     w: Param<Tensor<2>>,
///     b: Param<Tensor<1>>,
/// }
///
/// let device = Device::flex().autodiff();
/// let net = Net {
///     w: Param::from_tensor(Tensor::from_floats([[1.0, 2.0], [3.0, 4.0]], &device)),
///     b: Param::from_tensor(Tensor::from_floats([0.5, -0.5], &device)),
/// };
/// let meta = MetaSGD::new(MetaSGDConfig::<f32>::default().with_inner_steps(1));
/// let mut optim = ModuleMetaSGD::new(meta.clone());
/// let loss = net.w.val().sum() + net.b.val().powf_scalar(2.0).sum();
/// let grads = GradientsParams::from_grads(loss.backward(), &net);
/// let net = optim.step(0.1, net, grads); // every parameter, one pass
/// let b: Vec<f32> = net.b.val().into_data().to_vec().unwrap();
/// assert_eq!(b, [0.5 - 0.1 * 1.0, -0.5 + 0.1 * 1.0]);
/// assert!(optim.take_errors().is_empty());
///
/// // burn's records: save, load (into this type or a ModuleOptimizer).
/// let record = optim.to_record()?;
/// let optim = ModuleMetaSGD::new(meta).load_record(record)?;
/// # Ok::<(), metasgd_burn::Error>(())
/// ```
///
/// # What a step does
/// [`ModuleMetaSGD::step`] takes what [`ModuleOptimizer::step`](burn::optim::ModuleOptimizer::step)
/// takes: a learning rate (a number, or a [`ModuleLearningRate`] with
/// rates per parameter group, as an `LrScheduler` gives it), the module and
/// its gradients. Per parameter with a gradient: the gradient is clipped by
/// its group's [`GradientClipping`] (burn's own), the rates are created at
/// the parameter's `lr` or rescaled by `new / old` when it changed, and the
/// contract's update runs. Parameters without a gradient are left alone.
///
/// Groups ([`Self::with_group`]) give parameters other settings; as in
/// burn, the last group that matches a parameter is its group. Each group
/// and dtype is one pass; `max_grad_norm` clips by the norm of all the
/// gradients of that pass (the per-tensor [`MetaSGD`] can only clip each
/// tensor by its own norm).
///
/// # All or nothing
/// Everything is checked before anything changes: dtypes, gradient shapes,
/// settings, loaded states, and every group's non-finite policy over all
/// its gradients. A step that cannot run changes no parameter and no state;
/// the module comes back as it was and the error is recorded
/// ([`Self::take_errors`]). Under [`NonFinitePolicy::Skip`](metasgd_core::NonFinitePolicy::Skip) a group with a
/// non-finite gradient skips (its counters say so).
pub struct ModuleMetaSGD {
    groups: Vec<Group>,
    slots: HashMap<ParamId, Slot>,
}

#[derive(Clone)]
struct Group {
    group: ParamGroup,
    meta: MetaSGD,
    clipping: Option<GradientClipping>,
}

/// One parameter's state, rank-erased: its rates (and the rule's state)
/// kept as lent buffers, so a step neither converts nor copies them.
#[derive(Debug)]
struct Slot {
    rates: Lent,
    prev: Option<Lent>,
    lr: f64,
    steps: u64,
    skipped: u64,
    dims: Vec<usize>,
    dtype: DType,
    path: String,
    problem: Option<String>,
}

impl std::fmt::Debug for ModuleMetaSGD {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleMetaSGD")
            .field("settings", &self.groups[0].meta.config())
            .field("groups", &self.groups.len())
            .field("states", &self.slots.len())
            .finish()
    }
}

impl ModuleMetaSGD {
    /// Every parameter stepped with `meta`'s settings; errors go to
    /// `meta`'s list (its clones share it).
    pub fn new(meta: MetaSGD) -> Self {
        Self {
            groups: vec![Group {
                group: ParamGroup::all(),
                meta,
                clipping: None,
            }],
            slots: HashMap::new(),
        }
    }

    /// Clips every gradient of the first group (the fallback of all
    /// parameters) with burn's [`GradientClipping`], as
    /// [`ModuleOptimizer::with_grad_clipping`](burn::optim::ModuleOptimizer::with_grad_clipping).
    pub fn with_grad_clipping(mut self, clipping: GradientClipping) -> Self {
        self.groups[0].clipping = Some(clipping);
        self
    }

    /// Other settings (and clipping) for the parameters of `group`, as
    /// [`ModuleOptimizer::with_group`](burn::optim::ModuleOptimizer::with_group):
    /// the last group added that matches a parameter wins, and the states of
    /// the parameters it matches start afresh. Errors of every group go to
    /// the list of the optimizer given to [`Self::new`].
    pub fn with_group(
        mut self,
        group: ParamGroup,
        meta: MetaSGD,
        clipping: Option<GradientClipping>,
    ) -> Self {
        self.slots
            .retain(|id, slot| !group.matches(id, Some(&slot.path)));
        self.groups.push(Group {
            group,
            meta,
            clipping,
        });
        self
    }

    /// The errors of the steps since the last call, oldest first (a step
    /// that recorded one changed nothing).
    pub fn take_errors(&self) -> Vec<Error> {
        self.groups[0].meta.take_errors()
    }

    /// The state of parameter `id`: its steps and skipped steps, if it has one.
    pub fn counters(&self, id: ParamId) -> Option<(u64, u64)> {
        self.slots.get(&id).map(|s| (s.steps, s.skipped))
    }

    /// The learned rates of parameter `id` (flat, in its dtype), if it has them.
    pub fn rates<A: BurnElement>(&self, id: ParamId) -> Option<&[A]> {
        self.slots.get(&id).and_then(|s| s.rates.values::<A>())
    }

    /// One step of every parameter of `module` that has a gradient in
    /// `grads`, in one multi-tensor pass (see the type's docs). A step that
    /// cannot run returns the module unchanged and records why.
    pub fn step<M: Module>(
        &mut self,
        lr: impl Into<ModuleLearningRate>,
        module: M,
        mut grads: GradientsParams,
    ) -> M {
        let lr = lr.into();
        let mut lend = Lend {
            path: Vec::new(),
            grads: &mut grads,
            groups: &self.groups,
            lr: &lr,
            lent: Vec::new(),
        };
        let module = module.map(&mut lend);
        let mut lent = lend.lent;
        if let Err(e) = self.run(&mut lent) {
            self.groups[0].meta.record(e);
        }
        module.map(&mut Restore {
            lent: lent.into_iter().map(|l| (l.id, l)).collect(),
        })
    }

    /// Checks every lent parameter, plans every pass, then runs them; on
    /// an error nothing has changed (a parameter's state that did not exist
    /// is not kept).
    fn run(&mut self, lent: &mut [Lending]) -> Result<(), Error> {
        for l in lent.iter() {
            let config = self.groups[l.group].meta.config_as::<f64>(l.lr);
            config.validate().map_err(|source| Error::Step {
                tensor: l.name(),
                source,
            })?;
            if let Some(p) = l.problem() {
                return Err(l.input(p));
            }
            if let Some(p) = self.slots.get(&l.id).and_then(|s| s.problem(l)) {
                return Err(l.input(p));
            }
        }
        let mut slots: Vec<(Slot, bool)> = lent
            .iter()
            .map(|l| {
                let rule = !matches!(self.groups[l.group].meta.config.rule, Rule::Reference);
                let (mut slot, fresh) = match self.slots.remove(&l.id) {
                    Some(s) => (s, false),
                    None => (Slot::new(l), true),
                };
                if rule && slot.prev.is_none() {
                    // The rule's state before a first step: zeros, as the
                    // per-tensor optimizer starts it.
                    slot.prev = Some(filled(&l.theta, &l.dims, l.dtype, 0.0));
                }
                (slot, fresh)
            })
            .collect();
        let result = self
            .passes(lent, &mut slots)
            .map_err(|(i, source)| Error::Step {
                tensor: lent[i].name(),
                source,
            });
        for (l, (slot, fresh)) in lent.iter().zip(slots) {
            if result.is_ok() || !fresh {
                self.slots.insert(l.id, slot);
            }
        }
        result
    }

    /// Plans one pass per group and dtype, then runs them all: an error in
    /// any plan (the lent index and the core's reason) leaves every buffer
    /// as it was.
    fn passes(
        &self,
        lent: &mut [Lending],
        slots: &mut [(Slot, bool)],
    ) -> Result<(), (usize, metasgd_core::Error)> {
        let mut f32s: Vec<Pass<'_, f32>> = Vec::new();
        let mut f64s: Vec<Pass<'_, f64>> = Vec::new();
        for (i, (l, (slot, _))) in lent.iter_mut().zip(slots.iter_mut()).enumerate() {
            match l.dtype {
                DType::F32 => Pass::add(&mut f32s, i, l, slot),
                _ => Pass::add(&mut f64s, i, l, slot),
            }
        }
        let plans32 = self.plan_all(&f32s)?;
        let plans64 = self.plan_all(&f64s)?;
        for (pass, plan) in f32s.iter_mut().zip(plans32) {
            pass.run(&self.groups[pass.group].meta, plan)?;
        }
        for (pass, plan) in f64s.iter_mut().zip(plans64) {
            pass.run(&self.groups[pass.group].meta, plan)?;
        }
        Ok(())
    }

    fn plan_all<A: BurnElement>(
        &self,
        passes: &[Pass<'_, A>],
    ) -> Result<Vec<SlicePlan<A>>, (usize, metasgd_core::Error)> {
        passes
            .iter()
            .map(|p| {
                let config = self.groups[p.group].meta.config_as::<A>(p.lr);
                config
                    .plan_slice_list(&p.list)
                    .map_err(|e| (p.lent_index(&e), e))
            })
            .collect()
    }
}

/// One pass: the parameters of one group and dtype, their buffers lent.
struct Pass<'a, A> {
    group: usize,
    /// The base rate the pass's settings are built at (the first member's;
    /// the kernels do not read it, each member's rates are rescaled to its own).
    lr: f64,
    list: Vec<SliceStep<'a, A>>,
    members: Vec<Member<'a>>,
}

/// What a pass changes of one parameter's state besides its buffers.
struct Member<'a> {
    index: usize,
    lr: f64,
    slot_lr: &'a mut f64,
    steps: &'a mut u64,
    skipped: &'a mut u64,
}

impl<'a, A: BurnElement> Pass<'a, A> {
    /// Adds parameter `index` to the pass of its group (made if new).
    fn add(passes: &mut Vec<Self>, index: usize, l: &'a mut Lending, slot: &'a mut Slot) {
        let (Some(theta), Some(alpha), Some(grad)) = (
            l.theta.values_mut::<A>(),
            slot.rates.values_mut::<A>(),
            l.grad.values::<A>(),
        ) else {
            unreachable!("dtypes were checked before the pass")
        };
        let prev = slot.prev.as_mut().and_then(|p| p.values_mut::<A>());
        let pass = match passes.iter().position(|p| p.group == l.group) {
            Some(i) => &mut passes[i],
            None => {
                passes.push(Pass {
                    group: l.group,
                    lr: l.lr,
                    list: Vec::new(),
                    members: Vec::new(),
                });
                passes.last_mut().expect("just pushed")
            }
        };
        pass.list.push(SliceStep {
            theta,
            alpha,
            prev,
            grad,
        });
        pass.members.push(Member {
            index,
            lr: l.lr,
            slot_lr: &mut slot.lr,
            steps: &mut slot.steps,
            skipped: &mut slot.skipped,
        });
    }

    /// The lent index an error of the core names (its slot), or the first.
    fn lent_index(&self, e: &metasgd_core::Error) -> usize {
        let slot = match e {
            metasgd_core::Error::ShapeMismatch { slot, .. } => Some(*slot),
            metasgd_core::Error::NonFiniteGradient { slot, .. } => Some(*slot),
            _ => None,
        };
        self.members[slot.unwrap_or(0).min(self.members.len() - 1)].index
    }

    /// Rescales the rates whose base rate changed, then runs the plan.
    fn run(
        &mut self,
        meta: &MetaSGD,
        plan: SlicePlan<A>,
    ) -> Result<(), (usize, metasgd_core::Error)> {
        for (t, m) in self.list.iter_mut().zip(&mut self.members) {
            if *m.slot_lr != m.lr {
                let old = A::from(*m.slot_lr).unwrap_or_else(A::nan);
                let new = A::from(m.lr).unwrap_or_else(A::nan);
                metasgd_core::rescale_rates(t.alpha, old, new);
                *m.slot_lr = m.lr;
            }
        }
        // The plan applied the non-finite policy and clipping; the run
        // reads only the kernel's settings.
        let verdict = meta
            .config_as::<A>(self.lr)
            .run_slice_list(plan, &mut self.list)
            .map_err(|e| (self.lent_index(&e), e))?;
        for m in &mut self.members {
            match verdict {
                Verdict::Step => *m.steps += 1,
                Verdict::Skip => *m.skipped += 1,
            }
        }
        Ok(())
    }
}

/// A parameter lent for a step: its buffer, its gradient's, and what is
/// needed to give it back as it came.
#[derive(Debug)]
struct Lending {
    id: ParamId,
    path: String,
    group: usize,
    lr: f64,
    dims: Vec<usize>,
    dtype: DType,
    grad_dims: Vec<usize>,
    grad_dtype: DType,
    device: Device,
    context: Context,
    theta: Lent,
    grad: Lent,
}

impl Lending {
    fn name(&self) -> String {
        format!(
            "parameter {} ({}, shape {:?})",
            self.id.val(),
            if self.path.is_empty() {
                "-"
            } else {
                &self.path
            },
            self.dims
        )
    }

    fn input(&self, problem: String) -> Error {
        Error::Input {
            tensor: self.name(),
            problem,
        }
    }

    /// Why this parameter and its gradient cannot be stepped, if they cannot.
    fn problem(&self) -> Option<String> {
        if !matches!(self.dtype, DType::F32 | DType::F64) {
            return Some(format!(
                "dtype {:?}; MetaSGD steps f32 and f64 tensors",
                self.dtype
            ));
        }
        if self.grad_dtype != self.dtype {
            return Some(format!(
                "the gradient has dtype {:?}, the parameter {:?}",
                self.grad_dtype, self.dtype
            ));
        }
        if self.grad_dims != self.dims {
            return Some(format!(
                "the gradient has shape {:?}, the parameter {:?}",
                self.grad_dims, self.dims
            ));
        }
        None
    }
}

impl Slot {
    /// A first step's state: rates at the parameter's base rate.
    fn new(l: &Lending) -> Self {
        Self {
            rates: filled(&l.theta, &l.dims, l.dtype, l.lr),
            prev: None,
            lr: l.lr,
            steps: 0,
            skipped: 0,
            dims: l.dims.clone(),
            dtype: l.dtype,
            path: l.path.clone(),
            problem: None,
        }
    }

    /// Why this state cannot step `l`, if it cannot.
    fn problem(&self, l: &Lending) -> Option<String> {
        if let Some(p) = &self.problem {
            return Some(format!("its optimizer state did not load: {p}"));
        }
        if self.dims != l.dims || self.dtype != l.dtype {
            return Some(format!(
                "its rates are {:?} of shape {:?}, the parameter {:?} of shape {:?}",
                self.dtype, self.dims, l.dtype, l.dims
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Some(format!(
                "its rates' base rate {} is not finite and > 0",
                self.lr
            ));
        }
        None
    }
}

/// A buffer of `dims` in `dtype` (`f32` or `f64`, checked before), every
/// element `value`, where `like` lives (a Flex buffer, or host data for the
/// data route). Made in its dtype directly, as burn's `Tensor::full` makes it.
fn filled(like: &Lent, dims: &[usize], dtype: DType, value: f64) -> Lent {
    let n = dims.iter().product();
    let data = match dtype {
        DType::F32 => TensorData::new(vec![value as f32; n], dims.to_vec()),
        _ => TensorData::new(vec![value; n], dims.to_vec()),
    };
    match like {
        Lent::Flex(_) => Lent::Flex(burn::backend::flex::FlexTensor::from_data(data)),
        Lent::Data(_) => Lent::Data(data),
    }
}

/// The autodiff state a parameter carries (as burn's `ModuleOptimizer`
/// keeps it): lifted off before its buffer is lent, put back on the
/// returned value.
#[derive(Debug)]
struct Context {
    require_grad: bool,
    distributed: bool,
    checkpointing: Option<GradientCheckpointingStrategy>,
}

impl Context {
    fn capture<const D: usize>(t: &Tensor<D>) -> Self {
        Self {
            require_grad: t.is_require_grad(),
            distributed: t.is_distributed(),
            checkpointing: t.gradient_checkpointing_strategy(),
        }
    }

    fn restore<const D: usize>(&self, inner: Tensor<D>, id: ParamId) -> Tensor<D> {
        let mut t = Tensor::from_inner(inner);
        if let Some(strategy) = self.checkpointing {
            t = t.with_gradient_checkpointing_strategy(strategy);
        }
        if self.require_grad {
            t = t.require_grad();
        }
        if self.distributed {
            t = t.set_distributed(id);
        }
        t
    }
}

/// The first walk: takes every parameter that has a gradient out of the
/// module (an empty placeholder stays), its buffer and gradient lent.
struct Lend<'a> {
    path: Vec<String>,
    grads: &'a mut GradientsParams,
    groups: &'a [Group],
    lr: &'a ModuleLearningRate,
    lent: Vec<Lending>,
}

impl ModuleMapper for Lend<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let path = self.path.join(".");
        let group = self
            .groups
            .iter()
            .rposition(|g| g.group.matches(&id, Some(&path)))
            .unwrap_or(0);
        let grad = match &self.groups[group].clipping {
            Some(c) => c.clip_gradient(grad),
            None => grad,
        };
        let device = grad.device();
        let tensor = if tensor.device() == device {
            tensor
        } else {
            tensor.to_device(&device)
        };
        let placeholder = Tensor::<D>::empty([0; D], &device);
        let context = Context::capture(&tensor);
        let lr = self.lr.lr_from_param(id, Some(&path));
        self.lent.push(Lending {
            id,
            path,
            group,
            lr,
            dims: tensor.dims().to_vec(),
            dtype: tensor.dtype(),
            grad_dims: grad.dims().to_vec(),
            grad_dtype: grad.dtype(),
            device,
            context,
            theta: Lent::new(tensor.inner()),
            grad: Lent::new(grad),
        });
        Param::from_mapped_value(id, placeholder, mapper)
    }
}

/// The second walk: every lent parameter back in its place.
struct Restore {
    lent: HashMap<ParamId, Lending>,
}

impl ModuleMapper for Restore {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.lent.remove(&id) {
            Some(l) => l.context.restore(l.theta.into_tensor::<D>(&l.device), id),
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}
