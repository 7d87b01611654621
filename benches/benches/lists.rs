//! `step_list_inplace` over ResNet-50's 161 tensors against one flat array of
//! the same total size (the baseline, measured in the same run).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use metasgd::kernels;
use metasgd::ndarray::{Array1, ArrayView1, ArrayViewMut1};
use metasgd::{MetaSGD, Optimizer};

fn lists(c: &mut Criterion) {
    println!(
        "simd level: {}, threads: {}",
        kernels::simd_level().name(),
        kernels::par::current_num_threads()
    );
    let sizes = metasgd_benches::resnet50_sizes();
    let total: usize = sizes.iter().sum();
    let data =
        |n: usize, seed: u64| Array1::from(metasgd_kernels::testdata::values::<f32>(n, seed, 0));
    let mut tensors: Vec<Array1<f32>> = sizes.iter().map(|&n| data(n, 1)).collect();
    let grads: Vec<Array1<f32>> = sizes.iter().map(|&n| data(n, 2)).collect();
    let (mut flat, flat_grad) = (data(total, 1), data(total, 2));

    let mut group = c.benchmark_group("resnet50_f32");
    group.sample_size(20);
    group.throughput(Throughput::Elements(total as u64));
    let mut opt = MetaSGD::new(0.01_f32);
    group.bench_function("step_list_inplace_161_tensors", |b| {
        b.iter(|| {
            let mut views: Vec<ArrayViewMut1<f32>> =
                tensors.iter_mut().map(|t| t.view_mut()).collect();
            let gv: Vec<ArrayView1<f32>> = grads.iter().map(|g| g.view()).collect();
            opt.step_list_inplace(&mut views, &gv).unwrap()
        })
    });
    let mut flat_opt = MetaSGD::new(0.01_f32);
    group.bench_function("step_inplace_flat_baseline", |b| {
        b.iter(|| {
            flat_opt
                .step_inplace(flat.view_mut(), flat_grad.view())
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, lists);
criterion_main!(benches);
