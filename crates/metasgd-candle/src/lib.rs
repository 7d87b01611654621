//! MetaSGD for [candle](https://github.com/huggingface/candle): a
//! [`candle_nn::Optimizer`] shaped like candle-nn's own (`AdamW`, `SGD`):
//! `MetaSGD::new(vars, config)`, then `step(&grads)` or
//! `backward_step(&loss)`.
//!
//! The adapter owns no math: it lends every `Var`'s CPU buffer and its
//! gradient's buffer to [`metasgd_core::MetaSGD::step_list_inplace`], so one
//! step updates all vars in place (the same buffers before and after, no copy
//! of parameters or gradients) in one multi-tensor pass of the fused kernels
//! (parallel above the threshold), bitwise equal to the ndarray path on the
//! same numbers. Slot `j` of the core optimizer is var `j`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use candle_nn::Optimizer;
//! use metasgd_candle::MetaSGD;
//!
//! # fn main() -> candle_core::Result<()> {
//! let w = Var::from_tensor(&Tensor::new(&[1.0_f32, 2.0, 3.0], &Device::Cpu)?)?;
//! let config = metasgd_core::MetaSGDConfig::new(0.01_f32).with_inner_steps(1);
//! let mut opt = MetaSGD::new(vec![w.clone()], config)?;
//! let loss = w.as_tensor().sqr()?.sum_all()?; // d/dw = 2w
//! opt.backward_step(&loss)?;
//! let after = w.as_tensor().to_vec1::<f32>()?;
//! assert_eq!(after[0], 1.0 - 0.01 * 2.0);
//! assert_eq!(opt.state().get_step_count(), 1);
//! # Ok(()) }
//! ```
//!
//! What a step checks, before anything changes (a failed step changes no var,
//! no rate and no counter): every var is on the CPU and of dtype `A` (checked
//! by `MetaSGD::new` too, with the same var listed twice), every gradient
//! is on the CPU, of dtype `A` and of its var's shape, and everything the core
//! optimizer checks (hyperparameters, the non-finite policy, the state's
//! shapes). A var that received no gradient is stepped with a zero gradient,
//! which under the contract leaves its values and its rates bitwise as they
//! were (`d = alpha * 0 = 0`); the step still counts once, for all vars, and
//! a var's rates are created at `base_lr` on the first step like every
//! other's. The zero gradient is a temporary buffer for that var only.

use std::cell::RefCell;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor, Var, WithDType};
use metasgd_core::{Optimizer as _, Result as CoreResult};
use metasgd_kernels::Element;
use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn, ShapeBuilder};

/// `f32` or `f64`: an element both candle and metasgd compute in.
pub trait CandleElement: Element + WithDType {
    /// The values of a CPU storage of this dtype, mutably.
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    /// The values of a CPU storage of this dtype.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
}

impl CandleElement for f32 {
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl CandleElement for f64 {
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
}

/// MetaSGD over candle `Var`s. See the crate docs.
#[derive(Debug)]
pub struct MetaSGD<A: CandleElement> {
    vars: Vec<Var>,
    opt: metasgd_core::MetaSGD<A>,
}

fn err(msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("metasgd: {msg}"))
}

/// Checks that `t` can be lent to the kernels as `A` on the CPU.
fn check_tensor<A: CandleElement>(what: &str, t: &Tensor) -> candle_core::Result<()> {
    if !t.device().is_cpu() {
        return Err(err(format!(
            "{what} is on {:?}; MetaSGD updates CPU tensors in place",
            t.device().location()
        )));
    }
    if t.dtype() != A::DTYPE {
        return Err(err(format!(
            "{what} has dtype {:?}; this optimizer is MetaSGD<{}> ({:?})",
            t.dtype(),
            A::NAME,
            A::DTYPE
        )));
    }
    Ok(())
}

fn check_vars<A: CandleElement>(vars: &[Var]) -> candle_core::Result<()> {
    for (j, v) in vars.iter().enumerate() {
        check_tensor::<A>(&format!("var {j}"), v.as_tensor())?;
        if let Some(i) = vars[..j].iter().position(|u| u.id() == v.id()) {
            return Err(err(format!("var {j} is var {i} listed again")));
        }
    }
    Ok(())
}

/// The core optimizer's slots must be empty or one per var, of its shape.
fn check_slots<A: CandleElement>(
    vars: &[Var],
    opt: &metasgd_core::MetaSGD<A>,
) -> candle_core::Result<()> {
    let slots = opt.per_param_lrs();
    if slots.is_empty() {
        return Ok(());
    }
    if slots.len() != vars.len() {
        return Err(err(format!(
            "the optimizer holds rates for {} tensors, there are {} vars",
            slots.len(),
            vars.len()
        )));
    }
    for (j, (a, v)) in slots.iter().zip(vars).enumerate() {
        if a.shape() != v.dims() {
            return Err(err(format!(
                "slot {j} holds rates of shape {:?}, var {j} has shape {:?}",
                a.shape(),
                v.dims()
            )));
        }
    }
    Ok(())
}

impl<A: CandleElement> candle_nn::Optimizer for MetaSGD<A>
where
    metasgd_core::MetaSGD<A>: metasgd_core::Optimizer<A, IxDyn>,
{
    /// The settings (base rate, `alpha_lr`, inner steps, non-finite
    /// policy, backend): the rates start at the base rate on the first step.
    /// Rates learned elsewhere go through [`MetaSGD::from_state`].
    type Config = metasgd_core::MetaSGDConfig<A>;

    fn new(vars: Vec<Var>, config: Self::Config) -> candle_core::Result<Self> {
        Self::from_state(vars, metasgd_core::MetaSGD::from_config(config))
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        let mut pairs = Vec::with_capacity(self.vars.len());
        for (j, v) in self.vars.iter().enumerate() {
            let g = match grads.get(v.as_tensor()) {
                Some(g) => {
                    check_tensor::<A>(&format!("the gradient of var {j}"), g)?;
                    if g.dims() != v.dims() {
                        return Err(err(format!(
                            "the gradient of var {j} has shape {:?}, the var {:?}",
                            g.dims(),
                            v.dims()
                        )));
                    }
                    g.clone()
                }
                None => v.as_tensor().zeros_like()?,
            };
            pairs.push((v.as_tensor().clone(), g));
        }
        let failed = RefCell::new(None);
        lend(&pairs, Vec::new(), &mut self.opt, &failed)?;
        match failed.into_inner() {
            Some(e) => Err(candle_core::Error::wrap(e)),
            None => Ok(()),
        }
    }

    fn learning_rate(&self) -> f64 {
        WithDType::to_f64(self.opt.get_base_lr())
    }

    /// Sets the base rate and rescales every learned rate by `new / old`, as
    /// [`metasgd_core::Optimizer::set_learning_rate`] does (a schedule scales
    /// what was learned instead of erasing it).
    fn set_learning_rate(&mut self, lr: f64) {
        let lr = A::from(lr).unwrap_or_else(A::nan);
        metasgd_core::Optimizer::<A, IxDyn>::set_learning_rate(&mut self.opt, lr);
    }
}

impl<A: CandleElement> MetaSGD<A> {
    /// An optimizer for `vars` that goes on from a core optimizer's state:
    /// its settings, counters and, if it has any, its rates (one slot per
    /// var, of its shape, checked here), such as rates learned by
    /// `metasgd::meta::MetaLearner` or loaded from a checkpoint.
    ///
    /// ```
    /// use candle_core::{Device, Tensor, Var};
    /// use metasgd_candle::MetaSGD;
    /// use ndarray::{ArrayD, IxDyn};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let w = Var::from_tensor(&Tensor::new(&[1.0_f32, 2.0], &Device::Cpu)?)?;
    /// let rates = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.5_f32, 0.01])?;
    /// let state = metasgd_core::MetaSGD::new(0.1_f32).with_per_param_lrs(vec![rates])?;
    /// let opt = MetaSGD::from_state(vec![w], state)?;
    /// assert_eq!(opt.state().per_param_lrs()[0][0], 0.5);
    /// # Ok(()) }
    /// ```
    pub fn from_state(
        vars: Vec<Var>,
        state: metasgd_core::MetaSGD<A>,
    ) -> candle_core::Result<Self> {
        check_vars::<A>(&vars)?;
        check_slots(&vars, &state)?;
        Ok(Self { vars, opt: state })
    }

    /// The core optimizer: its settings, counters and rates (slot `j` is var `j`).
    pub fn state(&self) -> &metasgd_core::MetaSGD<A> {
        &self.opt
    }

    /// The vars, in slot order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Writes the optimizer's state in metasgd's checkpoint format
    /// (checksummed, atomic): the same file [`metasgd_core::MetaSGD::load_state`]
    /// reads. The vars' values are the model's to save.
    pub fn save_state(&self, path: impl AsRef<Path>) -> CoreResult<()> {
        self.opt.save_state(path)
    }

    /// An optimizer for `vars` from a checkpoint written by
    /// [`MetaSGD::save_state`] (or by `metasgd_core::MetaSGD::save_state`):
    /// the rates must be one slot per var, of its shape (or none yet).
    pub fn load_state(vars: Vec<Var>, path: impl AsRef<Path>) -> candle_core::Result<Self> {
        let opt = metasgd_core::MetaSGD::<A>::load_state(path).map_err(candle_core::Error::wrap)?;
        Self::from_state(vars, opt)
    }
}

/// A var's buffer and its gradient's, lent to the kernels.
type Lent<'v, A> = (ArrayViewMutD<'v, A>, ArrayViewD<'v, A>);

/// Lends the buffers of `pairs` (var, gradient), one at a time through
/// candle's in-place op (which holds each var's storage lock while its
/// closure runs), collecting views; with every buffer lent, runs one
/// `step_list_inplace` over all of them. A failure of the step is left in
/// `failed` (candle's op can only return candle's error).
fn lend<'v, A: CandleElement>(
    pairs: &[(Tensor, Tensor)],
    views: Vec<Lent<'v, A>>,
    opt: &mut metasgd_core::MetaSGD<A>,
    failed: &RefCell<Option<metasgd_core::Error>>,
) -> candle_core::Result<()>
where
    metasgd_core::MetaSGD<A>: metasgd_core::Optimizer<A, IxDyn>,
{
    let Some(((var, grad), rest)) = pairs.split_first() else {
        let (mut params, grads): (Vec<_>, Vec<_>) = views.into_iter().unzip();
        if let Err(e) = opt.step_list_inplace(&mut params, &grads) {
            *failed.borrow_mut() = Some(e);
        }
        return Ok(());
    };
    let op = Lend {
        rest,
        views: RefCell::new(Some(views)),
        opt: RefCell::new(Some(opt)),
        failed,
    };
    var.inplace_op2(grad, &op)
}

/// One link of [`lend`]'s chain: the op candle runs on one var.
struct Lend<'p, 'v, 'o, A: CandleElement> {
    rest: &'p [(Tensor, Tensor)],
    views: RefCell<Option<Vec<Lent<'v, A>>>>,
    opt: RefCell<Option<&'o mut metasgd_core::MetaSGD<A>>>,
    failed: &'p RefCell<Option<metasgd_core::Error>>,
}

/// The view of a candle buffer described by `layout`: row-major when the
/// layout is contiguous (empty tensors included), else with its strides.
fn view_of<'s, A: CandleElement>(
    data: &'s [A],
    layout: &Layout,
) -> candle_core::Result<ArrayViewD<'s, A>> {
    let view = match layout.contiguous_offsets() {
        Some((start, end)) => ArrayViewD::from_shape(IxDyn(layout.dims()), &data[start..end]),
        None => {
            let shape = IxDyn(layout.dims()).strides(IxDyn(layout.stride()));
            ArrayViewD::from_shape(shape, &data[layout.start_offset()..])
        }
    };
    view.map_err(|e| err(e.to_string()))
}

/// [`view_of`], mutably.
fn view_mut_of<'s, A: CandleElement>(
    data: &'s mut [A],
    layout: &Layout,
) -> candle_core::Result<ArrayViewMutD<'s, A>> {
    let view = match layout.contiguous_offsets() {
        Some((start, end)) => {
            ArrayViewMutD::from_shape(IxDyn(layout.dims()), &mut data[start..end])
        }
        None => {
            let shape = IxDyn(layout.dims()).strides(IxDyn(layout.stride()));
            ArrayViewMutD::from_shape(shape, &mut data[layout.start_offset()..])
        }
    };
    view.map_err(|e| err(e.to_string()))
}

impl<A: CandleElement> InplaceOp2 for Lend<'_, '_, '_, A>
where
    metasgd_core::MetaSGD<A>: metasgd_core::Optimizer<A, IxDyn>,
{
    fn name(&self) -> &'static str {
        "metasgd-lend"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let dtype_error = || err(format!("expected {:?} storage", A::DTYPE));
        let param = view_mut_of(A::slice_mut(s1).ok_or_else(dtype_error)?, l1)?;
        let grad = view_of(A::slice(s2).ok_or_else(dtype_error)?, l2)?;
        let mut views = self.views.borrow_mut().take().unwrap_or_default();
        views.push((param, grad));
        let opt = self
            .opt
            .borrow_mut()
            .take()
            .ok_or_else(|| err("the optimizer was lent twice"))?;
        lend(self.rest, views, opt, self.failed)
    }
}
