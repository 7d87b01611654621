//! ndarray glue: arrays in, kernel slices out.
//!
//! Like ndarray's own `map_inplace`, the fast path asks for memory-order
//! slices first: when parameters, gradients and learning rates are contiguous
//! with the same strides, element `i` of each slice is the same logical
//! element, so the kernels run on the slices whatever the memory order. Every
//! other layout is walked by `Zip` with the scalar reference, which computes
//! the same bits.

use metasgd_kernels::{Config, Element, Theta, Update, scalar};
use ndarray::{ArrayD, ArrayView, ArrayViewMut, Dimension, Zip};

/// One slot's parameters: updated in place, or read from `src` into `dst`.
pub(crate) enum Target<'a, A, D: Dimension> {
    InPlace(ArrayViewMut<'a, A, D>),
    Into {
        src: ArrayView<'a, A, D>,
        dst: ArrayViewMut<'a, A, D>,
    },
}

/// Gives one slot to `fast` as a kernel [`Update`] when the layouts allow,
/// otherwise updates it here, element by element.
pub(crate) fn dispatch<'a, A: Element, D: Dimension>(
    target: Target<'a, A, D>,
    grad: ArrayView<'a, A, D>,
    alpha: &'a mut ArrayD<A>,
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
        strided(target, grad, alpha, cfg);
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

/// Any layout: `Zip` visits the logical elements, the scalar reference updates them.
fn strided<A: Element, D: Dimension>(
    target: Target<'_, A, D>,
    grad: ArrayView<'_, A, D>,
    alpha: &mut ArrayD<A>,
    cfg: &Config<A>,
) {
    let grad = grad.into_dyn();
    match target {
        Target::InPlace(theta) => Zip::from(theta.into_dyn())
            .and(&grad)
            .and(alpha)
            .for_each(|t, &g, a| (*t, *a) = scalar::update(*t, g, *a, cfg)),
        Target::Into { src, dst } => Zip::from(dst.into_dyn())
            .and(&src.into_dyn())
            .and(&grad)
            .and(alpha)
            .for_each(|o, &t, &g, a| (*o, *a) = scalar::update(t, g, *a, cfg)),
    }
}

/// An array to receive the allocating step's result, laid out like `like`
/// (C or Fortran order) so that the fast path applies.
pub(crate) fn output_like<A: Element, D: Dimension>(
    like: &ArrayView<'_, A, D>,
) -> ndarray::Array<A, D> {
    use ndarray::ShapeBuilder;
    let data = metasgd_kernels::alloc::zeroed_vec(like.len());
    let fortran = !like.is_standard_layout() && like.t().is_standard_layout();
    let shaped = if fortran {
        ndarray::Array::from_shape_vec(like.raw_dim().f(), data)
    } else {
        ndarray::Array::from_shape_vec(like.raw_dim(), data)
    };
    // The length is the shape's size, so the shape always fits.
    shaped.unwrap_or_else(|_| ndarray::Array::zeros(like.raw_dim()))
}

/// Row-major index of the first NaN or infinity, if any.
pub(crate) fn first_non_finite<A: Element, D: Dimension>(g: &ArrayView<'_, A, D>) -> Option<usize> {
    match g.as_slice() {
        Some(s) => scalar::first_non_finite(s),
        None => g.iter().position(|v| !v.is_finite()),
    }
}
