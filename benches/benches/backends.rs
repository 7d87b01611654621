//! One `step_inplace` per backend and size, f32 and f64, on the default pool.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use metasgd::kernels::{self, Element};
use metasgd::ndarray::{Array1, Ix1};
use metasgd::{Backend, MetaSGD, Optimizer};
use std::hint::black_box;

const SIZES: [usize; 4] = [1 << 10, 1 << 16, 1 << 20, 1 << 24];

fn bench_type<A: Element>(c: &mut Criterion, name: &str)
where
    MetaSGD<A>: Optimizer<A, Ix1>,
{
    let mut group = c.benchmark_group(format!("step_inplace_{name}"));
    for &n in &SIZES {
        group.throughput(Throughput::Bytes(
            (metasgd_benches::bytes_per_element::<A>() * n) as u64,
        ));
        if n >= 1 << 24 {
            group.sample_size(10);
        }
        let mut theta = Array1::from(metasgd_kernels::testdata::values::<A>(n, 1, 0));
        let grad = Array1::from(metasgd_kernels::testdata::values::<A>(n, 2, 0));
        for backend in [
            Backend::Scalar,
            Backend::Simd,
            Backend::Parallel,
            Backend::Auto,
        ] {
            let mut opt = MetaSGD::new(A::from(0.01).unwrap()).with_backend(backend);
            group.bench_with_input(BenchmarkId::new(format!("{backend:?}"), n), &n, |b, _| {
                b.iter(|| {
                    opt.step_inplace(theta.view_mut(), black_box(grad.view()))
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

fn backends(c: &mut Criterion) {
    println!(
        "simd level: {}, threads: {}",
        kernels::simd_level().name(),
        kernels::par::current_num_threads()
    );
    bench_type::<f32>(c, "f32");
    bench_type::<f64>(c, "f64");
}

criterion_group!(benches, backends);
criterion_main!(benches);
