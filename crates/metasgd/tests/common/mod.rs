//! Shared helpers: an element-wise oracle, value generators, bit snapshots.
#![allow(dead_code, unused_imports, unreachable_pub)]

use metasgd::kernels::{Config, Element, scalar};
use metasgd::ndarray::{ArrayD, ArrayView, Dimension};
use metasgd::{Backend, MetaSGD};

/// Backends this build should accept.
pub fn available_backends() -> Vec<Backend> {
    let mut b = vec![Backend::Auto, Backend::Scalar];
    if cfg!(feature = "simd") {
        b.push(Backend::Simd);
    }
    if cfg!(feature = "parallel") {
        b.push(Backend::Parallel);
    }
    b
}

/// Backends this build should refuse.
pub fn missing_backends() -> Vec<Backend> {
    let mut b = vec![];
    if !cfg!(feature = "simd") {
        b.push(Backend::Simd);
    }
    if !cfg!(feature = "parallel") {
        b.push(Backend::Parallel);
    }
    b
}

/// The contract applied element by element in logical order: the oracle.
pub fn oracle<A: Element, D: Dimension>(
    theta: &ArrayView<'_, A, D>,
    grad: &ArrayView<'_, A, D>,
    alpha: &ArrayD<A>,
    alpha_lr: A,
    k: usize,
) -> (Vec<A>, Vec<A>) {
    let cfg = Config::new(alpha_lr, k);
    let (mut t, mut a) = (vec![], vec![]);
    for ((&th, &g), &al) in theta.iter().zip(grad.iter()).zip(alpha.iter()) {
        let (nt, na) = scalar::update(th, g, al, &cfg);
        t.push(nt);
        a.push(na);
    }
    (t, a)
}

/// Logical-order bits of any array.
pub fn bits<'a, A: Element + 'a>(v: impl IntoIterator<Item = &'a A>) -> Vec<u64> {
    v.into_iter().map(|x| x.bits()).collect()
}

/// Slot shapes and bits, step count, skipped steps.
pub type Snapshot = (Vec<(Vec<usize>, Vec<u64>)>, usize, usize);

/// Everything observable about an optimizer's state, as bits.
pub fn snapshot<A: Element>(opt: &MetaSGD<A>) -> Snapshot {
    let slots = opt
        .per_param_lrs()
        .iter()
        .map(|a| (a.shape().to_vec(), bits(a.iter())))
        .collect();
    (slots, opt.get_step_count(), opt.skipped_steps())
}

/// Seeded values in `[-2, 2)` with special values sprinkled in.
pub fn filled<A: Element>(n: usize, seed: u64) -> Vec<A> {
    metasgd_kernels::testdata::values(n, seed, 53)
}

/// Seeded finite values in `[-2, 2)`.
pub fn finite<A: Element>(n: usize, seed: u64) -> Vec<A> {
    metasgd_kernels::testdata::values(n, seed, 0)
}

pub use metasgd_kernels::testdata::specials;
