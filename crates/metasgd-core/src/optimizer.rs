//! The optimizer interface.

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension};

use crate::Result;

/// A first-order optimizer over ndarray arrays.
///
/// The allocating methods mirror optirs-core's `Optimizer`; the in-place ones
/// update views (any layout, any strides) without allocating after the first
/// step.
pub trait Optimizer<A, D: Dimension> {
    /// One step: returns the updated parameters, leaves `params` untouched.
    fn step(&mut self, params: &Array<A, D>, gradients: &Array<A, D>) -> Result<Array<A, D>>;

    /// One step over a list of arrays (slot `j` for the `j`-th array).
    fn step_list(
        &mut self,
        params_list: &[&Array<A, D>],
        gradients_list: &[&Array<A, D>],
    ) -> Result<Vec<Array<A, D>>>;

    /// One step, writing the updated parameters into `params`.
    fn step_inplace(
        &mut self,
        params: ArrayViewMut<'_, A, D>,
        gradients: ArrayView<'_, A, D>,
    ) -> Result<()>;

    /// One step over a list of arrays, in place.
    fn step_list_inplace(
        &mut self,
        params: &mut [ArrayViewMut<'_, A, D>],
        gradients: &[ArrayView<'_, A, D>],
    ) -> Result<()>;

    /// The base learning rate.
    fn get_learning_rate(&self) -> A;

    /// Sets the base learning rate (see the implementor for what happens to
    /// learned state).
    fn set_learning_rate(&mut self, learning_rate: A);
}
