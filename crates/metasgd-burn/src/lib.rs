//! MetaSGD for [burn](https://burn.dev) 0.22: a per-tensor
//! [`burn::optim::Optimizer`] whose state, the learned rates of one
//! parameter and its counters, is a hand-written [`RecordState`], so burn's
//! own optimizer records (`ModuleOptimizer::save` / `load`) carry it.
//!
//! ```
//! use burn::module::Param;
//! use burn::optim::{GradientsParams, ModuleOptimizer};
//! use burn::tensor::{Device, Tensor};
//! use metasgd_burn::MetaSGD;
//!
//! let device = Device::flex().autodiff();
//! let w = Param::from_tensor(Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device));
//! let meta = MetaSGD::new(metasgd_core::MetaSGDConfig::<f32>::default().with_inner_steps(1));
//! let mut optim: ModuleOptimizer = meta.clone().into();
//! let grads = w.val().powf_scalar(2.0).sum().backward(); // d/dw = 2w
//! let grads = GradientsParams::from_grads(grads, &w);
//! let w = optim.step(0.01, w, grads);
//! let after: Vec<f32> = w.val().into_data().to_vec().unwrap();
//! assert_eq!(after[0], 1.0 - 0.01 * 2.0);
//! assert!(meta.take_errors().is_empty());
//! ```
//!
//! # What a step does
//! Per parameter, with its gradient and its state: the contract of
//! `docs/semantics.md`, computed by [`metasgd_core::MetaSGD::step_slices`]
//! (the fused kernels), so the bits are those of `metasgd_core::MetaSGD` on
//! the same numbers. The base rate is burn's `lr` of the step: the rates are
//! created at it, and when a scheduler changes it they are rescaled by
//! `new / old` as [`metasgd_core::Optimizer::set_learning_rate`] does (a
//! schedule scales what was learned). Settings are `f64` and converted to
//! the tensor's dtype (`f32` or `f64`).
//!
//! On the Flex backend (burn's CPU backend) the parameter's and the rates'
//! buffers are updated in place, no copy, when burn holds them only once
//! (the case inside `ModuleOptimizer::step`; a caller that keeps a clone of
//! the parameter's tensor gets one copy, burn's copy-on-write), and the
//! gradient is read where it lies. A non-contiguous tensor is first made
//! contiguous (one copy). On every other backend the values take the data
//! route: `into_data`, the update on the host, `from_data` (a download and
//! an upload of the parameter and the rates per step).
//!
//! # Bad input
//! [`burn::optim::Optimizer::step`] cannot return an error. A step that
//! cannot run (a dtype other than `f32`/`f64`, a gradient of another dtype
//! or shape, an invalid rate or setting, a state that did not load, a
//! non-finite gradient under [`NonFinitePolicy::Error`]) leaves the
//! parameter and its state exactly as they were and records an [`Error`],
//! which [`MetaSGD::take_errors`] returns (the optimizer's clones share the
//! list). Since burn steps one parameter at a time, other parameters of the
//! same module step normally; [`MetaSGD::check`] checks a whole step first
//! and applies the non-finite policy to all gradients at once, as
//! `metasgd_core`'s list step does, so that nothing at all changes:
//!
//! ```
//! # use burn::module::Param;
//! # use burn::optim::{GradientsParams, ModuleOptimizer};
//! # use burn::tensor::{Device, Tensor};
//! use metasgd_burn::MetaSGD;
//! use metasgd_core::{MetaSGDConfig, NonFinitePolicy, Verdict};
//!
//! # let device = Device::flex().autodiff();
//! # let w = Param::from_tensor(Tensor::<1>::from_floats([1.0, 2.0], &device));
//! let meta = MetaSGD::new(MetaSGDConfig::<f32>::default().with_non_finite(NonFinitePolicy::Error));
//! let mut optim: ModuleOptimizer = meta.clone().into();
//! let grads = w.val().log().sum().mul_scalar(0.0).backward(); // finite
//! let grads = GradientsParams::from_grads(grads, &w);
//! let w = if meta.check(0.1, &w, &grads)? == Verdict::Step {
//!     optim.step(0.1, w, grads)
//! } else {
//!     w // a non-finite gradient under NonFinitePolicy::Skip: no step
//! };
//! # Ok::<(), metasgd_burn::Error>(())
//! ```
//!
//! A parameter without a gradient is not visited by burn: its values, rates
//! and counters stay as they are. Counters are per parameter
//! ([`MetaSGDState::steps`], [`MetaSGDState::skipped`]); under
//! [`NonFinitePolicy::Skip`] inside `step`, a parameter whose own gradient
//! is not finite is skipped and counts it.

use std::sync::{Arc, Mutex, PoisonError};

mod module;
pub use module::ModuleMetaSGD;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{
    GradientsParams, LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource,
};
use burn::tensor::{DType, Device, Tensor, TensorData};
use metasgd_core::{MAX_COUNT, MetaSGDConfig, NonFinitePolicy, Rule, Verdict};
use metasgd_kernels::Element;

/// At most this many errors are kept between two [`MetaSGD::take_errors`]
/// (a loop that never reads them cannot grow memory); later ones are counted.
pub const MAX_KEPT_ERRORS: usize = 64;

/// Why a parameter was not stepped, or why [`MetaSGD::check`] refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is not one MetaSGD can step.
    #[error("metasgd: {tensor}: {problem}")]
    Input {
        /// Which tensor: its parameter id (from `check`) or its shape.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// The core optimizer refused the step.
    #[error("metasgd: {tensor}: {source}")]
    Step {
        /// Which tensor.
        tensor: String,
        /// The core's reason.
        #[source]
        source: metasgd_core::Error,
    },
    /// A record could not be written or read ([`ModuleMetaSGD::to_record`],
    /// [`ModuleMetaSGD::load_record`]).
    #[error("metasgd: optimizer record: {0}")]
    Record(String),
    /// More errors happened than [`MAX_KEPT_ERRORS`]; this many were dropped.
    #[error("metasgd: {0} more errors were not kept")]
    Dropped(usize),
}

impl Error {
    fn record(e: impl std::fmt::Display) -> Self {
        Error::Record(e.to_string())
    }
}

/// A parameter step that could not run: the parameter and its state as
/// they came, and why.
type Refused<const D: usize> = Box<(Tensor<D>, Option<MetaSGDState<D>>, Error)>;

/// `f32` or `f64`: an element both burn and metasgd compute in.
pub trait BurnElement: Element + burn::tensor::Element + bytemuck::Pod {}
impl BurnElement for f32 {}
impl BurnElement for f64 {}

/// MetaSGD as burn's per-tensor optimizer. See the crate docs.
///
/// Clones share the error list: keep one to read [`MetaSGD::take_errors`]
/// after handing the other to a [`ModuleOptimizer`].
#[derive(Clone, Debug)]
pub struct MetaSGD {
    /// The settings, in `f64` (a tensor's step converts them to its dtype;
    /// `f32` settings round-trip exactly). `base_lr` is not used: burn's
    /// `lr` of each step is the base rate.
    config: MetaSGDConfig<f64>,
    errors: Arc<Mutex<Errors>>,
}

#[derive(Debug, Default)]
struct Errors {
    kept: Vec<Error>,
    dropped: usize,
}

impl Default for MetaSGD {
    /// [`MetaSGDConfig::default`]'s settings.
    fn default() -> Self {
        Self::new(MetaSGDConfig::<f64>::default())
    }
}

impl MetaSGD {
    /// An optimizer with these settings (`alpha_lr`, inner steps, backend,
    /// non-finite policy; the base rate is burn's `lr` of each step, so
    /// `config.base_lr` is not used). Settings are checked by every step
    /// ([`MetaSGDConfig::validate`]); a step they refuse is recorded.
    pub fn new<A: Element>(config: MetaSGDConfig<A>) -> Self {
        Self {
            config: config.cast(),
            errors: Arc::default(),
        }
    }

    /// The settings (in `f64`).
    pub fn config(&self) -> &MetaSGDConfig<f64> {
        &self.config
    }

    /// A [`ModuleOptimizer`] running this optimizer on every parameter.
    pub fn init(&self) -> ModuleOptimizer {
        self.clone().into()
    }

    /// The errors of the steps since the last call (a step that recorded one
    /// left its parameter and state unchanged), oldest first.
    pub fn take_errors(&self) -> Vec<Error> {
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = std::mem::take(&mut errors.dropped);
        let mut kept = std::mem::take(&mut errors.kept);
        if dropped > 0 {
            kept.push(Error::Dropped(dropped));
        }
        kept
    }

    fn record(&self, error: Error) {
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.kept.len() < MAX_KEPT_ERRORS {
            errors.kept.push(error);
        } else {
            errors.dropped += 1;
        }
    }

    /// The settings in `A` at base rate `lr` (a copy of a few numbers).
    fn config_as<A: Element>(&self, lr: f64) -> MetaSGDConfig<A> {
        self.config.with_base_lr(lr).cast()
    }

    /// Checks a whole step of `module` before it is taken: every parameter
    /// that has a gradient is `f32` or `f64` with a gradient of its dtype and
    /// shape, the settings and `lr` are valid, and the non-finite policy over
    /// all gradients together (the first bad element is named by parameter
    /// id). Returns [`Verdict::Skip`] when [`NonFinitePolicy::Skip`] finds a
    /// non-finite gradient: do not step. Reads each gradient once (through
    /// `to_data`, a copy on every backend).
    pub fn check<M: Module>(
        &self,
        lr: LearningRate,
        module: &M,
        grads: &GradientsParams,
    ) -> Result<Verdict, Error> {
        let policy = self.config.non_finite;
        self.config_as::<f64>(lr)
            .validate()
            .map_err(|source| Error::Step {
                tensor: "settings".into(),
                source,
            })?;
        let mut checker = Checker {
            grads,
            policy,
            first: Ok(None),
        };
        module.visit(&mut checker);
        match checker.first? {
            Some(_) if policy == NonFinitePolicy::Skip => Ok(Verdict::Skip),
            _ => Ok(Verdict::Step),
        }
    }

    /// One parameter's step in `A` (the parameter's dtype).
    fn step_as<A: BurnElement, const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<MetaSGDState<D>>,
    ) -> Result<(Tensor<D>, MetaSGDState<D>), Refused<D>> {
        let dims = tensor.dims();
        let name = || format!("a tensor of shape {dims:?}");
        let fail = |problem: String| Error::Input {
            tensor: name(),
            problem,
        };
        let config = self.config_as::<A>(lr);
        let mut problem = config.validate().err().map(|source| Error::Step {
            tensor: name(),
            source,
        });
        if problem.is_none() {
            problem = input_problem::<A, D>(&tensor, &grad).map(fail);
        }
        if problem.is_none()
            && let Some(s) = &state
        {
            problem = s.problem::<A>(&dims).map(fail);
        }
        if let Some(e) = problem {
            return Err(Box::new((tensor, state, e)));
        }
        let step_error = |source| Error::Step {
            tensor: name(),
            source,
        };
        let not_a = || fail(format!("a buffer is not of dtype {:?}", A::dtype()));
        let grad = Lent::new(grad);
        let verdict = match grad.values::<A>() {
            Some(g) => config
                .non_finite
                .verdict(|| metasgd_kernels::scalar::first_non_finite(g).map(|i| (0, i)))
                .map_err(step_error),
            None => Err(not_a()),
        };
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => return Err(Box::new((tensor, state, e))),
        };
        let device = tensor.device();
        let a_lr = A::from(lr).unwrap_or_else(A::nan);
        let mut state = match state {
            Some(s) => s,
            None => MetaSGDState {
                rates: Tensor::full(
                    dims,
                    num_traits::ToPrimitive::to_f64(&a_lr).unwrap_or(f64::NAN),
                    (&device, A::dtype()),
                ),
                lr,
                steps: 0,
                skipped: 0,
                prev: None,
                problem: None,
            },
        };
        // The rule's state: the previous gradient under the hypergradient
        // rule (zeros before the first step), none under the reference rule.
        let prev = match config.rule {
            Rule::Reference => None,
            _ => Some(
                state
                    .prev
                    .take()
                    .unwrap_or_else(|| Tensor::zeros(dims, (&device, A::dtype()))),
            ),
        };
        let mut prev = prev.map(Lent::new);
        let mut rates = Lent::new(state.rates);
        let mut theta = Lent::new(tensor);
        let prev_values = prev.as_mut().map(|p| p.values_mut::<A>());
        let buffers = (
            theta.values_mut::<A>(),
            rates.values_mut::<A>(),
            grad.values::<A>(),
        );
        let outcome = match (buffers, prev_values) {
            ((Some(t), Some(a), Some(g)), None) => Ok((t, a, g, None)),
            ((Some(t), Some(a), Some(g)), Some(Some(p))) => Ok((t, a, g, Some(p))),
            _ => Err(not_a()),
        };
        let outcome = outcome.and_then(|(t, a, g, p)| {
            if state.lr != lr {
                let old = A::from(state.lr).unwrap_or_else(A::nan);
                metasgd_core::rescale_rates(a, old, a_lr);
                state.lr = lr;
            }
            if verdict == Verdict::Skip {
                state.skipped += 1;
                return Ok(());
            }
            // The policy was applied above; the kernels run unconditionally.
            // An error is not reached: everything the core checks was checked.
            let config = config.with_non_finite(NonFinitePolicy::Propagate);
            match p {
                Some(p) => config.step_slices_with_prev(t, a, p, g),
                None => config.step_slices(t, a, g),
            }
            .map(|_| state.steps += 1)
            .map_err(step_error)
        });
        state.rates = rates.into_tensor(&device);
        state.prev = prev.map(|p| p.into_tensor(&device));
        let theta = theta.into_tensor(&device);
        match outcome {
            Ok(()) => Ok((theta, state)),
            Err(e) => Err(Box::new((theta, Some(state), e))),
        }
    }
}

/// Why `tensor` and `grad` cannot be stepped as `A`, if they cannot.
fn input_problem<A: BurnElement, const D: usize>(
    tensor: &Tensor<D>,
    grad: &Tensor<D>,
) -> Option<String> {
    if tensor.dtype() != A::dtype() {
        return Some(format!(
            "dtype {:?}; MetaSGD steps f32 and f64 tensors",
            tensor.dtype()
        ));
    }
    if grad.dtype() != tensor.dtype() {
        return Some(format!(
            "the gradient has dtype {:?}, the parameter {:?}",
            grad.dtype(),
            tensor.dtype()
        ));
    }
    if grad.dims() != tensor.dims() {
        return Some(format!(
            "the gradient has shape {:?}, the parameter {:?}",
            grad.dims(),
            tensor.dims()
        ));
    }
    None
}

/// [`MetaSGD::check`]'s walk over a module's parameters.
struct Checker<'g> {
    grads: &'g GradientsParams,
    policy: NonFinitePolicy,
    /// The first error, or the first non-finite element found (parameter id, index).
    first: Result<Option<(u64, usize)>, Error>,
}

impl ModuleVisitor for Checker<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !matches!(self.first, Ok(None)) {
            return;
        }
        let Some(grad) = self.grads.get::<D>(param.id) else {
            return;
        };
        let tensor = param.val();
        let id = param.id.val();
        let name = || format!("parameter {id} (shape {:?})", tensor.dims());
        let problem = match tensor.dtype() {
            DType::F32 => input_problem::<f32, D>(&tensor, &grad),
            DType::F64 => input_problem::<f64, D>(&tensor, &grad),
            other => Some(format!(
                "dtype {other:?}; MetaSGD steps f32 and f64 tensors"
            )),
        };
        if let Some(problem) = problem {
            self.first = Err(Error::Input {
                tensor: name(),
                problem,
            });
            return;
        }
        if self.policy == NonFinitePolicy::Propagate {
            return;
        }
        let data = grad.to_data();
        let bad = match tensor.dtype() {
            DType::F32 => data
                .as_slice::<f32>()
                .ok()
                .and_then(metasgd_kernels::scalar::first_non_finite),
            _ => data
                .as_slice::<f64>()
                .ok()
                .and_then(metasgd_kernels::scalar::first_non_finite),
        };
        if let Some(index) = bad {
            self.first = match self.policy {
                NonFinitePolicy::Skip => Ok(Some((id, index))),
                _ => Err(Error::Input {
                    tensor: name(),
                    problem: format!("the gradient is not finite at flat index {index}"),
                }),
            };
        }
    }
}

impl Optimizer for MetaSGD {
    type State<const D: usize> = MetaSGDState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let stepped = match tensor.dtype() {
            DType::F32 => self.step_as::<f32, D>(lr, tensor, grad, state),
            DType::F64 => self.step_as::<f64, D>(lr, tensor, grad, state),
            other => {
                let tensor_name = format!("a tensor of shape {:?}", tensor.dims());
                Err(Box::new((
                    tensor,
                    state,
                    Error::Input {
                        tensor: tensor_name,
                        problem: format!("dtype {other:?}; MetaSGD steps f32 and f64 tensors"),
                    },
                )))
            }
        };
        match stepped {
            Ok((tensor, state)) => (tensor, Some(state)),
            Err(refused) => {
                let (tensor, state, error) = *refused;
                self.record(error);
                (tensor, state)
            }
        }
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.rates = state.rates.to_device(device);
        state.prev = state.prev.map(|p| p.to_device(device));
        state
    }
}

/// One parameter's state: its learned rates (same shape and dtype as the
/// parameter), the base rate they belong to, and its counters.
#[derive(Clone, Debug)]
pub struct MetaSGDState<const D: usize> {
    /// The per-element learning rates.
    pub rates: Tensor<D>,
    /// The base rate (`lr`) the rates were last scaled for: a step with
    /// another `lr` rescales them by `new / old` first.
    pub lr: f64,
    /// Steps taken.
    pub steps: u64,
    /// Steps skipped under [`NonFinitePolicy::Skip`].
    pub skipped: u64,
    /// The rule's state: under [`Rule::Hypergradient`], the previous
    /// gradient (same shape and dtype as the parameter); `None` under
    /// [`Rule::Reference`] (and before a first step).
    pub prev: Option<Tensor<D>>,
    /// Why a loaded state cannot be used (its steps are refused and
    /// recorded, never silently restarted).
    problem: Option<String>,
}

impl<const D: usize> MetaSGDState<D> {
    /// Why this state cannot step a parameter of shape `dims` in `A`.
    fn problem<A: BurnElement>(&self, dims: &[usize; D]) -> Option<String> {
        if let Some(p) = &self.problem {
            return Some(format!("its optimizer state did not load: {p}"));
        }
        if self.rates.dims() != *dims || self.rates.dtype() != A::dtype() {
            return Some(format!(
                "its rates are {:?} of shape {:?}, the parameter {:?} of shape {dims:?}",
                self.rates.dtype(),
                self.rates.dims(),
                A::dtype()
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

    /// Checks what [`RecordState::state_unflatten`] read.
    fn validate(rates: &TensorData, lr: f64, steps: u64, skipped: u64) -> Result<(), String> {
        if rates.rank() != D {
            return Err(format!("rates of rank {}, expected {D}", rates.rank()));
        }
        let bad = match rates.dtype() {
            DType::F32 => first_invalid(rates.as_slice::<f32>().map_err(|e| e.to_string())?),
            DType::F64 => first_invalid(rates.as_slice::<f64>().map_err(|e| e.to_string())?),
            other => return Err(format!("rates of dtype {other:?}")),
        };
        if let Some((i, v)) = bad {
            return Err(format!(
                "rate {v} at flat index {i} breaks the rate rule (within [{}, {}], or NaN)",
                f64::LO,
                f64::HI
            ));
        }
        if !(lr.is_finite() && lr > 0.0) {
            return Err(format!("base rate {lr} is not finite and > 0"));
        }
        if steps > MAX_COUNT || skipped > MAX_COUNT {
            return Err(format!(
                "counters {steps}/{skipped} exceed MAX_COUNT (2^53)"
            ));
        }
        Ok(())
    }
}

fn first_invalid<A: Element>(rates: &[A]) -> Option<(usize, f64)> {
    rates
        .iter()
        .position(|a| !metasgd_core::valid_rate(*a))
        .map(|i| {
            (
                i,
                num_traits::ToPrimitive::to_f64(&rates[i]).unwrap_or(f64::NAN),
            )
        })
}

const RATES: &str = "rates";
const LR: &str = "lr";
const STEPS: &str = "steps";
const SKIPPED: &str = "skipped";
const PREV: &str = "prev";

impl<const D: usize> RecordState for MetaSGDState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(prefix, RATES, self.rates.to_data());
        out.push_scalar(prefix, LR, self.lr.into());
        out.push_scalar(prefix, STEPS, self.steps.into());
        out.push_scalar(prefix, SKIPPED, self.skipped.into());
        if let Some(p) = &self.prev {
            out.push_tensor(prefix, PREV, p.to_data());
        }
    }

    /// Rebuilds a state, checking it first (the rank, every rate against
    /// the one rate rule, the base rate, the counters). Nothing recorded
    /// under `prefix` is no state (burn starts the parameter afresh); a
    /// state recorded but broken (a leaf missing, a wrong value) is kept as
    /// a state whose steps are refused with the reason, never a silent reset.
    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        if !src.has_under(prefix) {
            return None;
        }
        let rates = src.take_tensor(prefix, RATES);
        let scalar = |src: &mut StateSource, leaf| src.take_scalar(prefix, leaf);
        let lr = scalar(src, LR).and_then(|s| f64::try_from(s).ok());
        let steps = scalar(src, STEPS).and_then(|s| u64::try_from(s).ok());
        let skipped = scalar(src, SKIPPED).and_then(|s| u64::try_from(s).ok());
        let prev = src.take_tensor(prefix, PREV);
        let problem = match (&rates, lr, steps, skipped) {
            (Some(r), Some(lr), Some(steps), Some(skipped)) => {
                Self::validate(r, lr, steps, skipped).err().or_else(|| {
                    let other = |p: &&TensorData| p.shape() != r.shape() || p.dtype() != r.dtype();
                    prev.as_ref().filter(other).map(|p| {
                        format!(
                            "{PREV} is {:?} of shape {:?}, unlike the rates",
                            p.dtype(),
                            p.shape()
                        )
                    })
                })
            }
            _ => Some(format!(
                "the record lacks one of {prefix}.{{{RATES}, {LR}, {STEPS}, {SKIPPED}}} or holds the wrong kind"
            )),
        };
        let rates = match (rates, &problem) {
            (Some(r), None) => {
                let dtype = r.dtype();
                Tensor::from_data(r, (device, dtype))
            }
            _ => Tensor::zeros([0; D], device),
        };
        let prev = prev.filter(|_| problem.is_none()).map(|p| {
            let dtype = p.dtype();
            Tensor::from_data(p, (device, dtype))
        });
        Some(Self {
            rates,
            lr: lr.unwrap_or(f64::NAN),
            steps: steps.unwrap_or(0),
            skipped: skipped.unwrap_or(0),
            prev,
            problem,
        })
    }
}

/// A tensor's values lent to the kernels: the Flex primitive itself (in
/// place), or its data on the host (the data route of other backends).
#[derive(Debug)]
enum Lent {
    Flex(FlexTensor),
    Data(TensorData),
}

impl Lent {
    fn new<const D: usize>(tensor: Tensor<D>) -> Self {
        // A clone to probe the backend: `try_into_primitive` consumes what it
        // is given. The original is dropped before the buffer is used, so a
        // buffer held once stays held once.
        match tensor.clone().try_into_primitive::<Flex>() {
            Ok(p) => {
                drop(tensor);
                if p.is_contiguous() && p.layout().start_offset() == 0 {
                    Lent::Flex(p)
                } else {
                    Lent::Flex(FlexTensor::from_data(p.into_data()))
                }
            }
            Err(_) => Lent::Data(tensor.into_data()),
        }
    }

    /// The values as `A`; `None` if the buffer holds another dtype.
    fn values<A: BurnElement>(&self) -> Option<&[A]> {
        match self {
            Lent::Flex(p) if p.dtype() == A::dtype() => {
                Some(&p.storage::<A>()[..p.layout().num_elements()])
            }
            Lent::Flex(_) => None,
            Lent::Data(d) => d.as_slice::<A>().ok(),
        }
    }

    /// The values as `A`, mutably; `None` if the buffer holds another dtype.
    fn values_mut<A: BurnElement>(&mut self) -> Option<&mut [A]> {
        match self {
            Lent::Flex(p) if p.dtype() == A::dtype() => {
                let n = p.layout().num_elements();
                Some(&mut p.storage_mut::<A>()[..n])
            }
            Lent::Flex(_) => None,
            Lent::Data(d) => d.as_mut_slice::<A>().ok(),
        }
    }

    /// A copy of the values, for a record.
    fn to_data(&self) -> TensorData {
        match self {
            Lent::Flex(p) => p.clone().into_data(),
            Lent::Data(d) => d.clone(),
        }
    }

    fn into_tensor<const D: usize>(self, device: &Device) -> Tensor<D> {
        match self {
            Lent::Flex(p) => Tensor::from_primitive::<Flex>(p),
            Lent::Data(d) => {
                let dtype = d.dtype();
                Tensor::from_data(d, (device, dtype))
            }
        }
    }
}
