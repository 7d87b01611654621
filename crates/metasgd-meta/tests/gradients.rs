//! Exactness: the MLP's gradient and Hessian-vector product, and the whole
//! meta-gradient, against central finite differences in f64; thread-count
//! independence of the meta-gradient, bit for bit.

use metasgd_core::Result;
use metasgd_meta::{MetaLearner, Mlp, Objective, Order, Regression, Sinusoid, Task};
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use rand::SeedableRng;
use rand::rngs::StdRng;

type P = Vec<ArrayD<f64>>;

fn norm(v: &[ArrayD<f64>]) -> f64 {
    v.iter()
        .flat_map(|a| a.iter())
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
}

fn rel_err(a: &[ArrayD<f64>], b: &[ArrayD<f64>]) -> f64 {
    let diff: P = a.iter().zip(b).map(|(x, y)| x - y).collect();
    norm(&diff) / norm(a).max(norm(b)).max(1e-300)
}

/// Central differences of `f` with respect to every element of `at`.
fn fd_grad(at: &P, f: &dyn Fn(&P) -> f64, eps: f64) -> P {
    let mut out: P = at.iter().map(|a| ArrayD::zeros(a.raw_dim())).collect();
    for j in 0..at.len() {
        for i in 0..at[j].len() {
            let mut plus = at.clone();
            let mut minus = at.clone();
            plus[j].as_slice_mut().unwrap()[i] += eps;
            minus[j].as_slice_mut().unwrap()[i] -= eps;
            out[j].as_slice_mut().unwrap()[i] = (f(&plus) - f(&minus)) / (2.0 * eps);
        }
    }
    out
}

fn batch(rng: &mut StdRng, n: usize) -> Regression<f64> {
    let s = Sinusoid::default();
    s.draw(rng).examples(rng, n, s.input)
}

fn random_like(p: &P, seed: u64) -> P {
    Mlp::new(&[1, 8, 8, 1])
        .init::<f64>(seed)
        .into_iter()
        .zip(p)
        .map(|(a, b)| {
            assert_eq!(a.shape(), b.shape());
            a
        })
        .collect()
}

#[test]
fn mlp_gradient_matches_finite_differences() {
    let net = Mlp::new(&[1, 8, 8, 1]);
    let mut rng = StdRng::seed_from_u64(1);
    for seed in 0..3 {
        let p = net.init::<f64>(seed);
        let data = batch(&mut rng, 10);
        let (_, g) = net.loss_grad(&p, &data).unwrap();
        let fd = fd_grad(&p, &|q| net.loss_grad(q, &data).unwrap().0, 1e-6);
        let e = rel_err(&g, &fd);
        assert!(e <= 1e-6, "seed {seed}: relative error {e:e}");
    }
}

#[test]
fn mlp_hessian_vector_matches_finite_differences() {
    let net = Mlp::new(&[1, 8, 8, 1]);
    let mut rng = StdRng::seed_from_u64(2);
    for seed in 0..3 {
        let p = net.init::<f64>(seed);
        let v = random_like(&p, 100 + seed);
        let data = batch(&mut rng, 10);
        let hv = net.hessian_vector(&p, &data, &v).unwrap();
        let eps = 1e-6;
        let shifted = |s: f64| -> P {
            let q: P = p
                .iter()
                .zip(&v)
                .map(|(a, d)| a + &d.mapv(|x| x * s))
                .collect();
            net.loss_grad(&q, &data).unwrap().1
        };
        let (gp, gm) = (shifted(eps), shifted(-eps));
        let fd: P = gp
            .iter()
            .zip(&gm)
            .map(|(a, b)| (a - b).mapv(|x| x / (2.0 * eps)))
            .collect();
        let e = rel_err(&hv, &fd);
        assert!(e <= 1e-6, "seed {seed}: relative error {e:e}");
    }
}

/// `0.5 x'Ax - b'x + c * sum(x^4)` over two tensors (flattened together):
/// a Hessian that changes with `x`, so every `H_k` of the sweep differs.
struct Quartic;

struct QBatch {
    a: Array2<f64>,
    b: Array1<f64>,
    c: f64,
}

fn flatten(p: &[ArrayD<f64>]) -> Array1<f64> {
    p.iter().flat_map(|a| a.iter().copied()).collect()
}

fn unflatten(v: &Array1<f64>, like: &[ArrayD<f64>]) -> P {
    let mut at = 0;
    like.iter()
        .map(|a| {
            let n = a.len();
            let out =
                ArrayD::from_shape_vec(a.raw_dim(), v.slice(ndarray::s![at..at + n]).to_vec())
                    .unwrap();
            at += n;
            out
        })
        .collect()
}

impl Objective<f64> for Quartic {
    type Batch = QBatch;
    type Workspace = ();
    type Linearisation = ();
    fn workspace(&self) {}
    fn linearisation(&self) {}
    fn linearise_into(
        &self,
        params: &[ArrayD<f64>],
        q: &QBatch,
        (): &mut (),
        grad: &mut [ArrayD<f64>],
        (): &mut (),
    ) -> Result<f64> {
        self.loss_grad_into(params, q, &mut (), grad)
    }
    fn loss_grad_into(
        &self,
        params: &[ArrayD<f64>],
        q: &QBatch,
        (): &mut (),
        grad: &mut [ArrayD<f64>],
    ) -> Result<f64> {
        let x = flatten(params);
        let ax = q.a.dot(&x);
        let loss = 0.5 * x.dot(&ax) - q.b.dot(&x) + q.c * x.mapv(|v| v.powi(4)).sum();
        let g = &ax - &q.b + x.mapv(|v| 4.0 * q.c * v.powi(3));
        for (out, g) in grad.iter_mut().zip(unflatten(&g, params)) {
            out.assign(&g);
        }
        Ok(loss)
    }
    fn hessian_vector_into(
        &self,
        params: &[ArrayD<f64>],
        q: &QBatch,
        (): &(),
        v: &[ArrayD<f64>],
        (): &mut (),
        out: &mut [ArrayD<f64>],
    ) -> Result<()> {
        let (x, v) = (flatten(params), flatten(v));
        let hv = q.a.dot(&v) + &(x.mapv(|t| 12.0 * q.c * t * t) * &v);
        for (o, h) in out.iter_mut().zip(unflatten(&hv, params)) {
            o.assign(&h);
        }
        Ok(())
    }
}

fn quartic_batch(seed: u64) -> QBatch {
    let mut rng = StdRng::seed_from_u64(seed);
    use rand::Rng;
    let m = Array2::from_shape_fn((7, 7), |_| rng.random_range(-1.0..1.0));
    QBatch {
        a: m.t().dot(&m) + Array2::<f64>::eye(7),
        b: Array1::from_shape_fn(7, |_| rng.random_range(-1.0..1.0)),
        c: 0.05,
    }
}

/// The meta-loss computed directly: adapt with `K` steps, score the query.
fn meta_loss<O: Objective<f64>>(
    obj: &O,
    tasks: &[Task<O::Batch>],
    theta: &P,
    alpha: &P,
    k: usize,
) -> f64 {
    let mut total = 0.0;
    for t in tasks {
        let mut th = theta.clone();
        for _ in 0..k {
            let (_, g) = obj.loss_grad(&th, &t.support).unwrap();
            th = th
                .iter()
                .zip(alpha)
                .zip(&g)
                .map(|((p, a), g)| p - &(a * g))
                .collect();
        }
        total += obj.loss_grad(&th, &t.query).unwrap().0;
    }
    total / tasks.len() as f64
}

fn check_meta_gradient<O: Objective<f64>>(
    obj: &O,
    tasks: &[Task<O::Batch>],
    theta: P,
    alpha: P,
    tol: f64,
) {
    for k in 1..=3 {
        for order in [Order::Second, Order::First] {
            let learner = MetaLearner::meta_sgd(theta.clone(), 0.0)
                .with_alphas(alpha.clone())
                .unwrap()
                .with_inner_steps(k)
                .with_order(order);
            let g = learner.meta_gradient(obj, tasks).unwrap();
            let want_loss = meta_loss(obj, tasks, &theta, &alpha, k);
            assert!(
                (g.loss - want_loss).abs() <= 1e-12 * want_loss.abs().max(1.0),
                "loss"
            );
            let fd_alpha = fd_grad(&alpha, &|a| meta_loss(obj, tasks, &theta, a, k), 1e-6);
            if order == Order::Second {
                let fd_theta = fd_grad(&theta, &|t| meta_loss(obj, tasks, t, &alpha, k), 1e-6);
                let (et, ea) = (rel_err(&g.theta, &fd_theta), rel_err(&g.alpha, &fd_alpha));
                assert!(
                    et <= tol && ea <= tol,
                    "K={k} second order: theta {et:e}, alpha {ea:e}"
                );
            } else if k == 1 {
                // First order keeps the exact rate gradient for one step.
                let ea = rel_err(&g.alpha, &fd_alpha);
                assert!(ea <= tol, "K=1 first order: alpha {ea:e}");
            }
            if order == Order::First {
                // dtheta is the query gradient at the adapted parameters, averaged.
                let mut want: P = theta.iter().map(|a| ArrayD::zeros(a.raw_dim())).collect();
                for t in tasks {
                    let adapted = learner.adapt(obj, &t.support).unwrap();
                    for (w, u) in want
                        .iter_mut()
                        .zip(obj.loss_grad(&adapted, &t.query).unwrap().1)
                    {
                        *w = &*w + &u;
                    }
                }
                let want: P = want
                    .into_iter()
                    .map(|w| w.mapv(|x| x / tasks.len() as f64))
                    .collect();
                assert!(rel_err(&g.theta, &want) <= 1e-14, "K={k} first order theta");
            }
        }
    }
}

#[test]
fn meta_gradient_matches_finite_differences_on_the_mlp() {
    let net = Mlp::new(&[1, 8, 8, 1]);
    let mut rng = StdRng::seed_from_u64(3);
    let tasks: Vec<_> = (0..2)
        .map(|_| Sinusoid::default().sample::<f64, _>(&mut rng, 5, 10))
        .collect();
    let theta = net.init::<f64>(7);
    let alpha: P = random_like(&theta, 8)
        .into_iter()
        .map(|a| a.mapv(|x| 0.02 + 0.01 * x))
        .collect();
    check_meta_gradient(&net, &tasks, theta, alpha, 1e-6);
}

#[test]
fn meta_gradient_matches_finite_differences_on_a_quartic() {
    let tasks: Vec<Task<QBatch>> = (0..2)
        .map(|i| Task {
            support: quartic_batch(10 + i),
            query: quartic_batch(20 + i),
        })
        .collect();
    let theta = vec![
        ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.3, -0.2, 0.5]).unwrap(),
        ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0.1, 0.4, -0.6, 0.2]).unwrap(),
    ];
    let alpha = vec![
        ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.05, 0.02, 0.08]).unwrap(),
        ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0.03, 0.06, 0.01, 0.04]).unwrap(),
    ];
    check_meta_gradient(&Quartic, &tasks, theta, alpha, 1e-6);
}

#[test]
fn maml_has_no_rate_gradient_and_a_fixed_rate() {
    let net = Mlp::new(&[1, 8, 1]);
    let mut rng = StdRng::seed_from_u64(4);
    let tasks: Vec<_> = (0..3)
        .map(|_| Sinusoid::default().sample::<f64, _>(&mut rng, 5, 10))
        .collect();
    let mut maml = MetaLearner::maml(net.init::<f64>(1), 0.01);
    assert!(maml.meta_gradient(&net, &tasks).unwrap().alpha.is_empty());
    let before = maml.params().to_vec();
    maml.meta_step(&net, &tasks).unwrap();
    assert!(maml.alphas().iter().all(|a| a.iter().all(|&r| r == 0.01)));
    assert_ne!(maml.params(), &before[..]);
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let net = Mlp::new(&[1, 40, 40, 1]);
    let mut rng = StdRng::seed_from_u64(5);
    let tasks: Vec<_> = (0..7)
        .map(|_| Sinusoid::default().sample::<f32, _>(&mut rng, 10, 10))
        .collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut l = MetaLearner::meta_sgd(net.init::<f32>(3), 0.01).with_inner_steps(2);
            for _ in 0..3 {
                l.meta_step(&net, &tasks).unwrap();
            }
            let bits = |v: &[ArrayD<f32>]| -> Vec<u32> {
                v.iter()
                    .flat_map(|a| a.iter().map(|x| x.to_bits()))
                    .collect()
            };
            (bits(l.params()), bits(l.alphas()))
        })
    };
    let one = run(1);
    for threads in [2, 3, 4] {
        assert!(run(threads) == one, "{threads} threads");
    }
}

#[test]
fn errors_change_nothing() {
    let net = Mlp::new(&[1, 8, 1]);
    let mut learner = MetaLearner::meta_sgd(net.init::<f64>(1), 0.01);
    let before = (learner.params().to_vec(), learner.alphas().to_vec());
    let empty: Vec<Task<Regression<f64>>> = Vec::new();
    assert!(learner.meta_step(&net, &empty).is_err());
    assert_eq!(
        (learner.params().to_vec(), learner.alphas().to_vec()),
        before
    );
    assert_eq!(learner.meta_steps(), 0);
    assert!(
        learner
            .clone()
            .with_alphas(vec![ArrayD::zeros(IxDyn(&[3]))])
            .is_err()
    );
}

/// An objective that replaces a gradient buffer with one of another shape.
struct WrongShape;

impl Objective<f64> for WrongShape {
    type Batch = ();
    type Workspace = ();
    type Linearisation = ();
    fn workspace(&self) {}
    fn linearisation(&self) {}
    fn linearise_into(
        &self,
        p: &[ArrayD<f64>],
        (): &(),
        (): &mut (),
        grad: &mut [ArrayD<f64>],
        (): &mut (),
    ) -> Result<f64> {
        self.loss_grad_into(p, &(), &mut (), grad)
    }
    fn loss_grad_into(
        &self,
        _: &[ArrayD<f64>],
        (): &(),
        (): &mut (),
        grad: &mut [ArrayD<f64>],
    ) -> Result<f64> {
        grad[0] = ArrayD::zeros(IxDyn(&[7]));
        Ok(0.0)
    }
    fn hessian_vector_into(
        &self,
        _: &[ArrayD<f64>],
        (): &(),
        (): &(),
        _: &[ArrayD<f64>],
        (): &mut (),
        _: &mut [ArrayD<f64>],
    ) -> Result<()> {
        Ok(())
    }
}

#[test]
fn an_objective_that_breaks_its_buffers_is_an_error() {
    let init = vec![ArrayD::zeros(IxDyn(&[2, 3]))];
    let mut learner = MetaLearner::meta_sgd(init, 0.01);
    let tasks = vec![Task {
        support: (),
        query: (),
    }];
    assert!(matches!(
        learner.meta_step(&WrongShape, &tasks),
        Err(metasgd_core::Error::ShapeMismatch { slot: 0, .. })
    ));
    assert_eq!(learner.meta_steps(), 0);
    // The learner's buffers survive an error: the next call rebuilds them.
    let net = Mlp::new(&[1, 4, 1]);
    let l = MetaLearner::meta_sgd(net.init::<f64>(0), 0.01);
    let mut rng = StdRng::seed_from_u64(9);
    let t: Vec<_> = (0..3)
        .map(|_| Sinusoid::default().sample::<f64, _>(&mut rng, 5, 5))
        .collect();
    let first = l.meta_gradient(&net, &t).unwrap();
    let again = l.meta_gradient(&net, &t).unwrap();
    assert_eq!(first, again, "reused buffers give the same meta-gradient");
}
