//! The one-process computation a sharded step equals, bit for bit, and
//! (feature `testing`) deterministic per-rank data to check it with.
//!
//! [`ShardedMetaSGD::step`](crate::ShardedMetaSGD::step) on `R` ranks gives
//! exactly the parameters, rates and counters of [`step`] here on one
//! process, fed every rank's local gradients.

use metasgd_core::{MetaSGD, Optimizer, Result};
use metasgd_kernels::Element;
#[cfg(feature = "testing")]
use metasgd_kernels::testdata;
use ndarray::{ArrayD, IxDyn};

/// The ranks' local gradients averaged as the sharded step averages them:
/// `sum = g_0`, then `sum = sum + g_r` for `r = 1, 2, ...` in rank order,
/// then `sum / R`, each operation rounded on its own.
///
/// # Panics
/// With no ranks, or ranks whose gradient lists differ in shape.
pub fn average<A: Element>(per_rank: &[Vec<ArrayD<A>>]) -> Vec<ArrayD<A>> {
    let (first, rest) = per_rank.split_first().expect("at least one rank");
    let mut sum = first.clone();
    for grads in rest {
        for (s, g) in sum.iter_mut().zip(grads) {
            s.zip_mut_with(g, |s, &g| *s = *s + g);
        }
    }
    let n = A::from(per_rank.len()).unwrap_or(A::one());
    sum.into_iter().map(|s| s.mapv(|v| v / n)).collect()
}

/// One data-parallel step on one process: [`average`], then
/// `step_list_inplace` on `opt`.
pub fn step<A: Element>(
    opt: &mut MetaSGD<A>,
    params: &mut [ArrayD<A>],
    per_rank: &[Vec<ArrayD<A>>],
) -> Result<()>
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let avg = average(per_rank);
    let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
    let gv: Vec<_> = avg.iter().map(|g| g.view()).collect();
    opt.step_list_inplace(&mut views, &gv)
}

/// Deterministic local gradients of `rank` at `step` (values in [-2, 2)),
/// with a NaN at `(rank, tensor, index)` when `poison` names this rank.
#[cfg(feature = "testing")]
pub fn test_grads<A: Element>(
    shapes: &[Vec<usize>],
    rank: usize,
    step: usize,
    poison: Option<(usize, usize, usize)>,
) -> Vec<ArrayD<A>> {
    shapes
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let n: usize = s.iter().product();
            let mut v: Vec<A> = testdata::values(n, ((rank * 1000 + step) * 100 + j) as u64, 0);
            if let Some((r, pj, pi)) = poison
                && (r, pj) == (rank, j)
                && pi < n
            {
                v[pi] = A::nan();
            }
            ArrayD::from_shape_vec(IxDyn(s), v).expect("shape and data agree")
        })
        .collect()
}

/// Deterministic initial parameters.
#[cfg(feature = "testing")]
pub fn test_params<A: Element>(shapes: &[Vec<usize>]) -> Vec<ArrayD<A>> {
    shapes
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let n: usize = s.iter().product();
            ArrayD::from_shape_vec(IxDyn(s), testdata::values(n, 7_777_777 + j as u64, 0))
                .expect("shape and data agree")
        })
        .collect()
}
