//! Pools of 1, 2, 3 and 4 threads give identical bits, and `pool.install` is honoured.

mod common;

use common::*;
use metasgd::ndarray::{Array1, ArrayView1, ArrayViewMut1};
use metasgd::{Backend, MetaSGD, Optimizer};

fn run(threads: usize, backend: Backend) -> Vec<Vec<u64>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let sizes = [300_000, 17, 70_001];
    let mut params: Vec<Array1<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| Array1::from(finite(n, i as u64)))
        .collect();
    let grads: Vec<Array1<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| Array1::from(filled(n, 10 + i as u64)))
        .collect();
    let mut opt = MetaSGD::new(0.02_f32)
        .with_alpha_lr(0.5)
        .with_backend(backend);
    pool.install(|| {
        for _ in 0..2 {
            let mut views: Vec<ArrayViewMut1<f32>> =
                params.iter_mut().map(|p| p.view_mut()).collect();
            let gv: Vec<ArrayView1<f32>> = grads.iter().map(|g| g.view()).collect();
            opt.step_list_inplace(&mut views, &gv).unwrap();
        }
        let big = opt.step(&params[0], &grads[0]).unwrap();
        params[0] = big;
    });
    let mut out: Vec<Vec<u64>> = params.iter().map(|p| bits(p.iter())).collect();
    out.extend(opt.per_param_lrs().iter().map(|a| bits(a.iter())));
    out
}

#[test]
fn thread_count_does_not_change_bits() {
    for backend in available_backends() {
        let one = run(1, backend);
        for threads in [2, 3, 4] {
            assert!(
                run(threads, backend) == one,
                "{backend:?} on {threads} threads"
            );
        }
        if backend != Backend::Scalar {
            assert!(run(1, Backend::Scalar) == one, "{backend:?} vs scalar");
        }
    }
}

#[test]
fn parallel_backend_uses_the_callers_pool() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let seen = pool.install(metasgd::kernels::par::current_num_threads);
    assert_eq!(seen, if cfg!(feature = "parallel") { 3 } else { 1 });
}
