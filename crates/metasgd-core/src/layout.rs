//! ndarray glue: arrays in, kernel slices out.
//!
//! Like ndarray's own `map_inplace`, the fast path asks for memory-order
//! slices first: when parameters, gradients and learning rates are contiguous
//! with the same strides, element `i` of each slice is the same logical
//! element, so the kernels run on the slices whatever the memory order. Other
//! layouts go row by row to the serial kernel when rows are contiguous, and
//! element by element through `Zip` and the scalar reference otherwise; all
//! compute the same bits.

use core::mem::MaybeUninit;

use metasgd_kernels::{Config, Element, Kernel, Theta, Update, scalar};
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

/// Gives one slot to `fast` as a kernel [`Update`] when the layouts allow,
/// otherwise updates it here, element by element.
pub(crate) fn dispatch<'a, A: Element, D: Dimension>(
    target: Target<'a, A, D>,
    grad: ArrayView<'a, A, D>,
    alpha: &'a mut ArrayD<A>,
    kernel: Kernel,
    cfg: &Config<A>,
    fast: impl FnOnce(Update<'a, A>),
) {
    let strides = grad.strides();
    let aligned = alpha.strides() == strides
        && alpha.as_slice_memory_order().is_some()
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
    if aligned {
        // `aligned` tested exactly what the conversions need (contiguity).
        fast(slices(target, grad, alpha).expect("contiguity checked above"));
    } else {
        strided(target, grad, alpha, kernel, cfg);
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
/// of some columns of a matrix, say), each row goes to the serial kernel as
/// slices; otherwise `Zip` visits the logical elements and the scalar
/// reference updates them. Both compute the contract's bits.
fn strided<A: Element, D: Dimension>(
    target: Target<'_, A, D>,
    grad: ArrayView<'_, A, D>,
    alpha: &mut ArrayD<A>,
    kernel: Kernel,
    cfg: &Config<A>,
) {
    let serial = if kernel == Kernel::Scalar {
        Kernel::Scalar
    } else {
        Kernel::Simd
    };
    let grad = grad.into_dyn();
    let rows = |strides: &[&[isize]]| {
        let n = grad.ndim();
        n >= 1 && grad.shape()[n - 1] >= 2 && strides.iter().all(|s| s[n - 1] == 1)
    };
    match target {
        Target::InPlace(theta) => {
            let mut theta = theta.into_dyn();
            if rows(&[theta.strides(), grad.strides(), alpha.strides()]) {
                let axis = Axis(grad.ndim() - 1);
                Zip::from(theta.lanes_mut(axis))
                    .and(grad.lanes(axis))
                    .and(alpha.lanes_mut(axis))
                    .for_each(|t, g, a| row_in_place(t, g, a, serial, cfg));
            } else {
                row_in_place(theta, grad.view(), alpha.view_mut(), Kernel::Scalar, cfg);
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
                let axis = Axis(grad.ndim() - 1);
                Zip::from(dst.lanes_mut(axis))
                    .and(src.lanes(axis))
                    .and(grad.lanes(axis))
                    .and(alpha.lanes_mut(axis))
                    .for_each(|o, t, g, a| row_into(o, t, g, a, serial, cfg));
            } else {
                row_into(
                    dst,
                    src.view(),
                    grad.view(),
                    alpha.view_mut(),
                    Kernel::Scalar,
                    cfg,
                );
            }
        }
    }
}

/// Slices to `kernel` when all are contiguous, else element by element.
fn row_in_place<A: Element, D: Dimension>(
    mut theta: ArrayViewMut<'_, A, D>,
    grad: ArrayView<'_, A, D>,
    mut alpha: ArrayViewMut<'_, A, D>,
    kernel: Kernel,
    cfg: &Config<A>,
) {
    if kernel != Kernel::Scalar
        && let (Some(t), Some(g), Some(a)) =
            (theta.as_slice_mut(), grad.as_slice(), alpha.as_slice_mut())
    {
        metasgd_kernels::step(kernel, Update::new(Theta::InPlace(t), a, g), cfg);
        return;
    }
    Zip::from(theta)
        .and(grad)
        .and(alpha)
        .for_each(|t, &g, a| (*t, *a) = scalar::update(*t, g, *a, cfg));
}

/// [`row_in_place`] for the allocating step.
fn row_into<A: Element, D: Dimension>(
    mut dst: ArrayViewMut<'_, MaybeUninit<A>, D>,
    src: ArrayView<'_, A, D>,
    grad: ArrayView<'_, A, D>,
    mut alpha: ArrayViewMut<'_, A, D>,
    kernel: Kernel,
    cfg: &Config<A>,
) {
    if kernel != Kernel::Scalar
        && let (Some(o), Some(t), Some(g), Some(a)) = (
            dst.as_slice_mut(),
            src.as_slice(),
            grad.as_slice(),
            alpha.as_slice_mut(),
        )
    {
        let theta = Theta::Into { src: t, dst: o };
        metasgd_kernels::step(kernel, Update::new(theta, a, g), cfg);
        return;
    }
    Zip::from(dst)
        .and(src)
        .and(grad)
        .and(alpha)
        .for_each(|o, &t, &g, a| {
            let (nt, na) = scalar::update(t, g, *a, cfg);
            o.write(nt);
            *a = na;
        });
}

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
            data: metasgd_kernels::alloc::uninit_slice(params.len()),
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
    /// `dst` of a [`Target::Into`] that went through [`dispatch`], whose
    /// kernel and strided paths both write every element.
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

/// Row-major index of the first NaN or infinity, if any.
pub(crate) fn first_non_finite<A: Element, D: Dimension>(g: &ArrayView<'_, A, D>) -> Option<usize> {
    match g.as_slice() {
        Some(s) => scalar::first_non_finite(s),
        None => g.iter().position(|v| !v.is_finite()),
    }
}
