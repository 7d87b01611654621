//! The convolutional classifier's gradients and Hessian-vector products
//! against central differences in f64, through every layer.

use metasgd_core::Error;
use metasgd_meta::{Classification, ConvNet, MetaLearner, Norm, Objective, Task};
use ndarray::{Array4, ArrayD};
use rand::{Rng, SeedableRng};

fn batch<A: metasgd_kernels::Element>(net: &ConvNet, n: usize, seed: u64) -> Classification<A> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let side = net.side();
    let x = Array4::from_shape_fn((n, 1, side, side), |_| {
        A::from(rng.random_range(-1.0..1.0)).unwrap()
    });
    let y = (0..n).map(|i| i % net.classes()).collect();
    Classification { x, y }
}

/// A direction of the parameters' shapes, drawn uniformly in [-1, 1] and
/// scaled to unit length (so that a finite-difference step of `h` moves
/// the parameters by `h`, whatever their number, and stays clear of the
/// ReLUs' kinks).
fn direction(params: &[ArrayD<f64>], seed: u64) -> Vec<ArrayD<f64>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<ArrayD<f64>> = params
        .iter()
        .map(|p| p.mapv(|_| rng.random_range(-1.0..1.0)))
        .collect();
    let norm = dot(&v, &v).sqrt();
    v.into_iter().map(|d| d / norm).collect()
}

fn axpy(params: &[ArrayD<f64>], t: f64, v: &[ArrayD<f64>]) -> Vec<ArrayD<f64>> {
    params.iter().zip(v).map(|(p, d)| p + &(d * t)).collect()
}

fn dot(a: &[ArrayD<f64>], b: &[ArrayD<f64>]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x * y).sum()).sum()
}

/// The directional derivative of the loss and of the gradient along `v`
/// by central differences, against `grad . v` and `H v`.
fn check(net: &ConvNet, n: usize, seed: u64) {
    let params = net.init::<f64>(seed);
    // Move batch norm's scale and shift and the classifier's bias off their
    // initial values, so that their terms are exercised.
    let shift = direction(&params, seed + 1);
    let params = axpy(&params, 0.1 * (params.len() as f64), &shift);
    let data = batch::<f64>(net, n, seed + 2);
    let v = direction(&params, seed + 3);
    let (_, grad) = net.loss_grad(&params, &data).unwrap();
    let hv = net.hessian_vector(&params, &data, &v).unwrap();

    let h = 1e-5;
    let loss_at = |t: f64| net.loss_grad(&axpy(&params, t, &v), &data).unwrap().0;
    let fd = (loss_at(h) - loss_at(-h)) / (2.0 * h);
    let analytic = dot(&grad, &v);
    assert!(
        (fd - analytic).abs() <= 1e-6 * analytic.abs().max(1.0),
        "grad . v: {analytic} against {fd}"
    );

    let (_, gp) = net.loss_grad(&axpy(&params, h, &v), &data).unwrap();
    let (_, gm) = net.loss_grad(&axpy(&params, -h, &v), &data).unwrap();
    for (i, ((a, p), m)) in hv.iter().zip(&gp).zip(&gm).enumerate() {
        let fd = (p - m) / (2.0 * h);
        let scale = fd.iter().fold(1e-3_f64, |s, x| s.max(x.abs()));
        let err = (a - &fd).iter().fold(0.0_f64, |s, x| s.max(x.abs()));
        assert!(
            err <= 1e-5 * scale,
            "H v, parameter {i} ({:?}): max error {err} at scale {scale}",
            a.shape()
        );
    }

    // Every coordinate of the gradient of a few tensors (the first
    // convolution, a batch norm scale, the classifier's bias).
    for &i in &[0, 1, 2, params.len() - 1] {
        for j in 0..params[i].len().min(12) {
            let mut e: Vec<ArrayD<f64>> = params.iter().map(|p| p.mapv(|_| 0.0)).collect();
            e[i].as_slice_mut().unwrap()[j] = 1.0;
            let fd = (net.loss_grad(&axpy(&params, h, &e), &data).unwrap().0
                - net.loss_grad(&axpy(&params, -h, &e), &data).unwrap().0)
                / (2.0 * h);
            let g = grad[i].as_slice().unwrap()[j];
            assert!(
                (fd - g).abs() <= 1e-6 * g.abs().max(1.0),
                "d loss / d p[{i}][{j}]: {g} against {fd}"
            );
        }
    }
}

#[test]
fn small_network_gradients_and_hessian_vector_products() {
    check(
        &ConvNet::new(3).with_filters(4).with_blocks(2).with_side(9),
        5,
        1,
    );
    check(
        &ConvNet::new(5).with_filters(3).with_blocks(3).with_side(12),
        7,
        2,
    );
}

#[test]
fn the_omniglot_network_gradients_and_hessian_vector_products() {
    check(&ConvNet::new(20), 4, 3);
}

#[test]
fn f32_follows_f64() {
    let net = ConvNet::new(4).with_filters(8).with_blocks(3).with_side(14);
    let p64 = net.init::<f64>(5);
    let p32: Vec<ArrayD<f32>> = p64.iter().map(|p| p.mapv(|x| x as f32)).collect();
    let b64 = batch::<f64>(&net, 6, 6);
    let b32 = Classification {
        x: b64.x.mapv(|x| x as f32),
        y: b64.y.clone(),
    };
    let v64 = direction(&p64, 7);
    let v32: Vec<ArrayD<f32>> = v64.iter().map(|p| p.mapv(|x| x as f32)).collect();
    let (l64, g64) = net.loss_grad(&p64, &b64).unwrap();
    let (l32, g32) = net.loss_grad(&p32, &b32).unwrap();
    assert!((f64::from(l32) - l64).abs() < 1e-5 * l64.abs().max(1.0));
    let h64 = net.hessian_vector(&p64, &b64, &v64).unwrap();
    let h32 = net.hessian_vector(&p32, &b32, &v32).unwrap();
    for (pairs, what) in [((&g64, &g32), "gradient"), ((&h64, &h32), "H v")] {
        for (a, b) in pairs.0.iter().zip(pairs.1.iter()) {
            let scale = a.iter().fold(1e-2_f64, |s, x| s.max(x.abs()));
            let err = a
                .iter()
                .zip(b.iter())
                .fold(0.0_f64, |s, (x, y)| s.max((x - f64::from(*y)).abs()));
            assert!(err <= 1e-3 * scale, "{what}: {err} at scale {scale}");
        }
    }
}

#[test]
fn support_statistics_classify_each_image_on_its_own() {
    let net = ConvNet::new(5).with_filters(6).with_blocks(3).with_side(14);
    let params = net.init::<f32>(8);
    let support = batch::<f32>(&net, 5, 9);
    let test = batch::<f32>(&net, 4, 10);
    let together = net
        .logits(&params, &test.x, Norm::From(&support.x))
        .unwrap();
    for i in 0..4 {
        let one = test.x.slice(ndarray::s![i..i + 1, .., .., ..]).to_owned();
        let alone = net.logits(&params, &one, Norm::From(&support.x)).unwrap();
        let a: Vec<u32> = alone.iter().map(|x| x.to_bits()).collect();
        let b: Vec<u32> = together.row(i).iter().map(|x| x.to_bits()).collect();
        assert_eq!(a, b, "test image {i}");
    }
    // With the test batch's own statistics the images do depend on each other.
    let batch_norm = net.logits(&params, &test.x, Norm::Batch).unwrap();
    assert_ne!(batch_norm, together);
}

#[test]
fn a_hessian_vector_product_takes_the_linearisation_of_its_gradient_pass() {
    let net = ConvNet::new(4).with_filters(6).with_blocks(3).with_side(14);
    let params = net.init::<f32>(12);
    let support = batch::<f32>(&net, 5, 13);
    let query = batch::<f32>(&net, 7, 14);
    let v: Vec<ArrayD<f32>> = params.iter().map(|p| p.mapv(|x| x * 0.5 + 0.01)).collect();
    let fresh = net.hessian_vector(&params, &support, &v).unwrap();
    let bits =
        |h: &[ArrayD<f32>]| -> Vec<u32> { h.iter().flatten().map(|x| x.to_bits()).collect() };
    let (mut ws, mut lin) = (net.workspace(), net.linearisation());
    let mut g: Vec<ArrayD<f32>> = params.iter().map(|p| p.mapv(|_| 0.0)).collect();
    let mut hv = g.clone();
    // Without a gradient pass there is nothing to linearise around: an error.
    let e = net
        .hessian_vector_into(&params, &support, &lin, &v, &mut ws, &mut hv)
        .unwrap_err();
    assert!(e.to_string().contains("linearise_into"), "{e}");
    // The gradient pass's linearisation gives the fresh product, bit for bit,
    // and the same gradient as a plain gradient pass.
    let loss = net
        .linearise_into(&params, &support, &mut ws, &mut g, &mut lin)
        .unwrap();
    let (plain_loss, plain_g) = net.loss_grad(&params, &support).unwrap();
    assert_eq!(
        (loss.to_bits(), bits(&g)),
        (plain_loss.to_bits(), bits(&plain_g))
    );
    net.hessian_vector_into(&params, &support, &lin, &v, &mut ws, &mut hv)
        .unwrap();
    assert_eq!(bits(&hv), bits(&fresh));
    // A gradient pass on another batch (the query set) does not touch it.
    net.loss_grad_into(&params, &query, &mut ws, &mut g)
        .unwrap();
    net.hessian_vector_into(&params, &support, &lin, &v, &mut ws, &mut hv)
        .unwrap();
    assert_eq!(bits(&hv), bits(&fresh));
    // A linearisation of another batch size is refused.
    assert!(
        net.hessian_vector_into(&params, &query, &lin, &v, &mut ws, &mut hv)
            .is_err()
    );
    // Linearised again at other parameters: the product there.
    let moved: Vec<ArrayD<f32>> = params.iter().map(|p| p.mapv(|x| x * 1.01)).collect();
    net.linearise_into(&moved, &support, &mut ws, &mut g, &mut lin)
        .unwrap();
    net.hessian_vector_into(&moved, &support, &lin, &v, &mut ws, &mut hv)
        .unwrap();
    assert_eq!(
        bits(&hv),
        bits(&net.hessian_vector(&moved, &support, &v).unwrap())
    );
}

#[test]
fn a_bad_batch_is_an_error_naming_its_task_and_changes_nothing() {
    let net = ConvNet::new(3).with_filters(4).with_blocks(2).with_side(10);
    let mut tasks: Vec<Task<Classification<f32>>> = (0..4)
        .map(|t| Task {
            support: batch(&net, 3, 300 + t),
            query: batch(&net, 6, 400 + t),
        })
        .collect();
    tasks[2].query.y[4] = 3;
    let mut learner = MetaLearner::meta_sgd(net.init::<f32>(1), 0.1);
    let before = learner.clone();
    match learner.meta_step(&net, &tasks) {
        Err(Error::InvalidTask { task, reason }) => {
            assert_eq!(task, Some(2));
            assert!(reason.contains("class 3 of a 3-way network"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(learner.params(), before.params());
    assert_eq!(learner.meta_steps(), 0);
    // Parameters of the wrong shapes, and images of the wrong size.
    let e = net
        .loss_grad(&before.params()[1..], &tasks[0].support)
        .unwrap_err();
    assert!(e.to_string().contains("parameters of shapes"), "{e}");
    let small = Array4::<f32>::zeros((1, 1, 9, 9));
    assert!(net.predict(before.params(), &small, Norm::Batch).is_err());
    // A parameter that is not row-major (here a matrix stored transposed).
    let mut columns = before.params().to_vec();
    let last = columns.len() - 2;
    let transposed = columns[last].t().as_standard_layout().into_owned();
    columns[last] = transposed.reversed_axes();
    assert_eq!(columns[last], before.params()[last]);
    assert!(!columns[last].is_standard_layout());
    let e = net.loss_grad(&columns, &tasks[0].support).unwrap_err();
    assert!(e.to_string().contains("not row-major"), "{e}");
    tasks[2].query.y[4] = 0;
    tasks[1].support.x = Array4::zeros((3, 1, 10, 11));
    let e = learner.meta_step(&net, &tasks).unwrap_err();
    assert!(e.to_string().starts_with("task 1: images of shape"), "{e}");
}

#[test]
fn bad_batches_are_described() {
    let net = ConvNet::new(5).with_side(14);
    let mut b = batch::<f32>(&net, 3, 0);
    assert!(net.check_batch(&b).is_ok());
    b.y[1] = 5;
    assert!(
        net.check_batch(&b)
            .unwrap_err()
            .contains("class 5 of a 5-way")
    );
    b.y.pop();
    assert!(
        net.check_batch(&b)
            .unwrap_err()
            .contains("2 labels for 3 images")
    );
    let wrong = Classification {
        x: Array4::<f32>::zeros((2, 1, 28, 28)),
        y: vec![0, 1],
    };
    assert!(
        net.check_batch(&wrong)
            .unwrap_err()
            .contains("expected (N, 1, 14, 14)")
    );
}

#[test]
fn meta_steps_do_not_depend_on_the_thread_count() {
    let net = ConvNet::new(3).with_filters(8).with_blocks(3).with_side(14);
    let tasks: Vec<Task<Classification<f32>>> = (0..4)
        .map(|t| Task {
            support: batch(&net, 3, 100 + t),
            query: batch(&net, 6, 200 + t),
        })
        .collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut learner = MetaLearner::meta_sgd(net.init::<f32>(11), 0.1);
            for _ in 0..3 {
                learner.meta_step(&net, &tasks).unwrap();
            }
            learner
                .params()
                .iter()
                .chain(learner.alphas())
                .flat_map(|p| p.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
                .collect::<Vec<u32>>()
        })
    };
    assert_eq!(run(1), run(2));
}
