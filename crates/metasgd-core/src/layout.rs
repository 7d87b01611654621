//! ndarray glue: arrays in, kernel slices out.
//!
//! Like ndarray's own `map_inplace`, the fast path asks for memory-order
//! slices first: when parameters, gradients and learning rates are contiguous
//! with the same strides, element `i` of each slice is the same logical
//! element, so the kernels run on the slices whatever the memory order. Other
//! layouts run here: row by row on the kernel when rows are contiguous, and
//! element by element through `Zip` and the scalar reference otherwise; all
//! compute the same bits.

use core::mem::MaybeUninit;

use metasgd_kernels::scalar::{self, Factors};
use metasgd_kernels::{Config, Element, Kernel, RateRule, Theta, Update};
use ndarray::{Array, ArrayD, ArrayView, ArrayViewMut, Axis, Dimension, ShapeBuilder, Zip};

/// One slot's parameters: updated in place, or read from `src` into `dst`
/// (uninitialised memory, written once, element by element).
pub(crate) enum Target<'a, A, D: Dimension> {
    InPlace(ArrayViewMut<'a, A, D>),
    Into {
        src: ArrayView<'a, A, D>,
        dst: ArrayViewMut<'a, MaybeUninit<A>, D>,
    },
}

/// One slot's learned state: its rates, and the rule's previous gradient
/// (under the hypergradient rule).
pub(crate) type Rates<'a, A> = (&'a mut ArrayD<A>, Option<&'a mut ArrayD<A>>);

/// One slot as a kernel [`Update`] when its arrays are contiguous with the
/// same strides; otherwise the slot is updated here, on the strided
/// fallback, and `None` is returned.
pub(crate) fn contiguous_or_strided<'a, A: Element, D: Dimension>(
    target: Target<'a, A, D>,
    grad: ArrayView<'a, A, D>,
    (alpha, prev): Rates<'a, A>,
    kernel: Kernel,
    cfg: &Config<A>,
) -> Option<Update<'a, A>> {
    let strides = grad.strides();
    let like = |a: &ArrayD<A>| a.strides() == strides && a.as_slice_memory_order().is_some();
    let aligned = like(alpha)
        && prev.as_deref().is_none_or(like)
        && grad.as_slice_memory_order().is_some()
        && match &target {
            Target::InPlace(t) => t.strides() == strides && t.as_slice_memory_order().is_some(),
            Target::Into { src, dst } => {
                src.strides() == strides
                    && dst.strides() == strides
                    && src.as_slice_memory_order().is_some()
                    && dst.as_slice_memory_order().is_some()
            }
        };
    match (aligned, prev, cfg.rule()) {
        (true, prev, _) => {
            let u = slices(target, grad, alpha)?;
            match prev {
                Some(p) => Some(u.with_prev(p.as_slice_memory_order_mut()?)),
                None => Some(u),
            }
        }
        (false, Some(prev), rule @ RateRule::Hypergradient { .. }) => {
            let f = Factors::of(rule).expect("a hypergradient rule");
            strided_hypergradient(target, grad, (alpha, prev), &f, cfg);
            None
        }
        _ => {
            strided(target, grad, alpha, kernel, cfg);
            None
        }
    }
}

/// Any other layout under the hypergradient rule: `Zip` visits the logical
/// elements and the scalar reference updates them.
fn strided_hypergradient<A: Element, D: Dimension>(
    target: Target<'_, A, D>,
    grad: ArrayView<'_, A, D>,
    (alpha, prev): (&mut ArrayD<A>, &mut ArrayD<A>),
    f: &Factors<A>,
    cfg: &Config<A>,
) {
    let grad = grad.into_dyn();
    let state = Zip::from(&grad).and(alpha).and(prev);
    let step = |t: A, g: A, a: &mut A, p: &mut A| {
        let nt;
        (nt, *a, *p) = scalar::update_hypergradient(t, g, *a, *p, f, cfg);
        nt
    };
    match target {
        Target::InPlace(theta) => state
            .and(theta.into_dyn())
            .for_each(|&g, a, p, t| *t = step(*t, g, a, p)),
        Target::Into { src, dst } => {
            state
                .and(src.into_dyn())
                .and(dst.into_dyn())
                .for_each(|&g, a, p, &t, o| {
                    o.write(step(t, g, a, p));
                })
        }
    }
}

/// The memory-order slices of a slot; `None` if one of them is not contiguous.
fn slices<'a, A: Element, D: Dimension>(
    target: Target<'a, A, D>,
    grad: ArrayView<'a, A, D>,
    alpha: &'a mut ArrayD<A>,
) -> Option<Update<'a, A>> {
    let theta = match target {
        Target::InPlace(t) => Theta::InPlace(t.into_slice_memory_order()?),
        Target::Into { src, dst } => Theta::Into {
            src: src.to_slice_memory_order()?,
            dst: dst.into_slice_memory_order()?,
        },
    };
    let grad = grad.to_slice_memory_order()?;
    let alpha = alpha.as_slice_memory_order_mut()?;
    Some(Update::new(theta, alpha, grad))
}

/// Any other layout. When the last axis is contiguous in every array (a view
/// of some columns of a matrix, say), the rows go to `kernel` as updates, all
/// in one call; otherwise `Zip` visits the logical elements and the scalar
/// reference updates them. Both compute the contract's bits.
fn strided<A: Element, D: Dimension>(
    target: Target<'_, A, D>,
    grad: ArrayView<'_, A, D>,
    alpha: &mut ArrayD<A>,
    kernel: Kernel,
    cfg: &Config<A>,
) {
    let grad = grad.into_dyn();
    let n = grad.ndim();
    let rows = |strides: &[&[isize]]| {
        n >= 1 && grad.shape()[n - 1] >= 2 && strides.iter().all(|s| s[n - 1] == 1)
    };
    let axis = Axis(n.saturating_sub(1));
    match target {
        Target::InPlace(theta) => {
            let mut theta = theta.into_dyn();
            if rows(&[theta.strides(), grad.strides(), alpha.strides()]) {
                let updates = theta
                    .lanes_mut(axis)
                    .into_iter()
                    .zip(grad.lanes(axis))
                    .zip(alpha.lanes_mut(axis))
                    .map(|((t, g), a)| {
                        let t = Theta::InPlace(t.into_slice().expect(ROWS));
                        Update::new(t, a.into_slice().expect(ROWS), g.to_slice().expect(ROWS))
                    });
                metasgd_kernels::step_many(kernel, updates, cfg);
            } else {
                Zip::from(theta)
                    .and(&grad)
                    .and(alpha)
                    .for_each(|t, &g, a| (*t, *a) = scalar::update(*t, g, *a, cfg));
            }
        }
        Target::Into { src, dst } => {
            let (src, mut dst) = (src.into_dyn(), dst.into_dyn());
            if rows(&[
                src.strides(),
                dst.strides(),
                grad.strides(),
                alpha.strides(),
            ]) {
                let updates = dst
                    .lanes_mut(axis)
                    .into_iter()
                    .zip(src.lanes(axis))
                    .zip(grad.lanes(axis))
                    .zip(alpha.lanes_mut(axis))
                    .map(|(((o, t), g), a)| {
                        let theta = Theta::Into {
                            src: t.to_slice().expect(ROWS),
                            dst: o.into_slice().expect(ROWS),
                        };
                        Update::new(
                            theta,
                            a.into_slice().expect(ROWS),
                            g.to_slice().expect(ROWS),
                        )
                    });
                metasgd_kernels::step_many(kernel, updates, cfg);
            } else {
                Zip::from(dst)
                    .and(&src)
                    .and(&grad)
                    .and(alpha)
                    .for_each(|o, &t, &g, a| {
                        let (nt, na) = scalar::update(t, g, *a, cfg);
                        o.write(nt);
                        *a = na;
                    });
            }
        }
    }
}

/// Why the row slices exist: `strided` checked unit stride on the last axis.
const ROWS: &str = "rows with unit stride are contiguous slices";

/// The allocating step's result, before and after the step writes it: room
/// for every element, laid out like the parameters (C or Fortran order) so
/// that the fast path applies.
pub(crate) struct Output<A, D> {
    data: Box<[MaybeUninit<A>]>,
    dim: D,
    fortran: bool,
}

impl<A: Element, D: Dimension> Output<A, D> {
    pub(crate) fn like(params: &ArrayView<'_, A, D>) -> Self {
        Self {
            data: metasgd_kernels::output::uninit_slice(params.len()),
            dim: params.raw_dim(),
            fortran: !params.is_standard_layout() && params.t().is_standard_layout(),
        }
    }

    /// The view the step writes through.
    pub(crate) fn view_mut(&mut self) -> ArrayViewMut<'_, MaybeUninit<A>, D> {
        let dim = self.dim.clone();
        let shaped = if self.fortran {
            ArrayViewMut::from_shape(dim.f(), &mut self.data)
        } else {
            ArrayViewMut::from_shape(dim, &mut self.data)
        };
        shaped.expect("the buffer holds exactly the shape's elements")
    }

    /// The finished array.
    ///
    /// # Safety
    /// Every element must have been written: [`Self::view_mut`] was the
    /// `dst` of a [`Target::Into`] that went through
    /// [`contiguous_or_strided`] and then, if it returned an update, through
    /// a kernel: every path writes every element.
    pub(crate) unsafe fn assume_init(self) -> Array<A, D> {
        // SAFETY: the caller guarantees every element was written.
        let data = unsafe { self.data.assume_init() }.into_vec();
        let shaped = if self.fortran {
            Array::from_shape_vec(self.dim.f(), data)
        } else {
            Array::from_shape_vec(self.dim, data)
        };
        shaped.expect("the buffer holds exactly the shape's elements")
    }
}

/// The squared L2 norm of `g` in logical (row-major) order, summed in the
/// fixed order of [`metasgd_kernels::norm`] (a copy for other layouts).
pub(crate) fn squared_norm<A: Element, D: Dimension>(g: &ArrayView<'_, A, D>, kernel: Kernel) -> A {
    match g.as_slice() {
        Some(s) => metasgd_kernels::norm::squared_norm(kernel, s),
        None => {
            let v: Vec<A> = g.iter().copied().collect();
            metasgd_kernels::norm::squared_norm(kernel, &v)
        }
    }
}

/// Row-major index of the first NaN or infinity, if any.
pub(crate) fn first_non_finite<A: Element, D: Dimension>(g: &ArrayView<'_, A, D>) -> Option<usize> {
    match g.as_slice() {
        Some(s) => scalar::first_non_finite(s),
        None => g.iter().position(|v| !v.is_finite()),
    }
}
