//! The distributed meta-learner on thread-backed ranks against one
//! process: after every meta-step the initialisation and the rates are the
//! one-process `MetaLearner`'s, bit for bit, for 1 to 5 ranks (more ranks
//! than tasks included), Meta-SGD, MAML and first-order MAML, f32 and f64,
//! Adam and SGD outside; a failing task fails every rank alike.

use metasgd_core::Error;
use metasgd_dist::{Collective, DistMetaLearner, ThreadCollective, ThreadGroup};
use metasgd_kernels::Element;
use metasgd_meta::{MetaLearner, Mlp, Objective, Order, Outer, Regression, Sinusoid, Task};
use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;

fn on_ranks<T: Send>(ranks: usize, body: impl Fn(ThreadCollective) -> T + Sync) -> Vec<T> {
    let group = ThreadGroup::new(ranks).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = group.into_iter().map(|c| s.spawn(|| body(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[derive(Clone, Copy, Debug)]
enum Method {
    MetaSgd,
    Maml,
    FirstOrder,
}

fn learner<A: Element>(net: &Mlp, method: Method, adam: bool) -> MetaLearner<A> {
    let a = |x: f64| A::from(x).unwrap();
    let l = match method {
        Method::MetaSgd => MetaLearner::meta_sgd(net.init::<A>(3), a(0.01)),
        Method::Maml => MetaLearner::maml(net.init::<A>(3), a(0.01)),
        Method::FirstOrder => MetaLearner::maml(net.init::<A>(3), a(0.01)).with_order(Order::First),
    };
    let outer = if adam {
        Outer::adam(a(1e-3))
    } else {
        Outer::sgd(a(1e-2))
    };
    l.with_inner_steps(2).with_outer(outer)
}

/// Three meta-batches of 4 tasks.
fn batches<A: Element>() -> Vec<Vec<Task<Regression<A>>>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    (0..3)
        .map(|_| {
            (0..4)
                .map(|_| Sinusoid::default().sample::<A, _>(&mut rng, 5, 7))
                .collect()
        })
        .collect()
}

fn bits<A: Element>(v: &[ArrayD<A>]) -> Vec<u64> {
    v.iter().flat_map(|a| a.iter().map(|x| x.bits())).collect()
}

/// The state after each meta-step: losses, parameters, rates.
type Trace = Vec<(u64, Vec<u64>, Vec<u64>)>;

fn one_process<A: Element>(net: &Mlp, method: Method, adam: bool) -> Trace {
    let mut l = learner::<A>(net, method, adam);
    batches::<A>()
        .iter()
        .map(|b| {
            let loss = l.meta_step(net, b).unwrap();
            (loss.bits(), bits(l.params()), bits(l.alphas()))
        })
        .collect()
}

fn check<A: Element>(method: Method, adam: bool) {
    let net = Mlp::new(&[1, 12, 1]);
    let want = one_process::<A>(&net, method, adam);
    for ranks in 1..=5 {
        let got = on_ranks(ranks, |comm| {
            let mut d = DistMetaLearner::new(comm, learner::<A>(&net, method, adam));
            batches::<A>()
                .iter()
                .map(|b| {
                    let loss = d.meta_step(&net, b).unwrap();
                    (
                        loss.bits(),
                        bits(d.learner().params()),
                        bits(d.learner().alphas()),
                    )
                })
                .collect::<Trace>()
        });
        for (rank, g) in got.iter().enumerate() {
            assert!(
                *g == want,
                "{method:?} adam={adam} {} {ranks} ranks, rank {rank}",
                A::NAME
            );
        }
    }
}

#[test]
fn every_method_precision_and_outer_optimizer_is_the_one_process_run() {
    for method in [Method::MetaSgd, Method::Maml, Method::FirstOrder] {
        for adam in [true, false] {
            check::<f32>(method, adam);
            check::<f64>(method, adam);
        }
    }
}

#[test]
fn shares_cover_the_meta_batch_in_order() {
    for (tasks, ranks) in [(4, 1), (4, 3), (3, 5), (32, 7), (0, 2)] {
        let shares: Vec<_> = (0..ranks)
            .map(|r| DistMetaLearner::<f32, ThreadCollective>::share_of(tasks, r, ranks))
            .collect();
        let flat: Vec<usize> = shares.iter().flat_map(|s| s.clone()).collect();
        assert_eq!(
            flat,
            (0..tasks).collect::<Vec<_>>(),
            "{tasks} tasks on {ranks}"
        );
        let sizes: Vec<usize> = shares.iter().map(|s| s.len()).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
    }
}

/// The sinusoid network, with a task that fails: its support batch is
/// marked bad, and the gradient it gives has the wrong shape.
struct Faulty(Mlp);

impl Objective<f64> for Faulty {
    type Batch = (Regression<f64>, bool);
    type Workspace = <Mlp as Objective<f64>>::Workspace;
    type Linearisation = ();
    fn workspace(&self) -> Self::Workspace {
        Objective::<f64>::workspace(&self.0)
    }
    fn linearisation(&self) {}
    fn loss_grad_into(
        &self,
        params: &[ArrayD<f64>],
        batch: &Self::Batch,
        ws: &mut Self::Workspace,
        grad: &mut [ArrayD<f64>],
    ) -> metasgd_core::Result<f64> {
        let loss = self.0.loss_grad_into(params, &batch.0, ws, grad)?;
        if batch.1 {
            grad[0] = ArrayD::zeros(IxDyn(&[1]));
        }
        Ok(loss)
    }
    fn linearise_into(
        &self,
        params: &[ArrayD<f64>],
        batch: &Self::Batch,
        ws: &mut Self::Workspace,
        grad: &mut [ArrayD<f64>],
        _: &mut (),
    ) -> metasgd_core::Result<f64> {
        self.loss_grad_into(params, batch, ws, grad)
    }
    fn hessian_vector_into(
        &self,
        params: &[ArrayD<f64>],
        batch: &Self::Batch,
        lin: &(),
        v: &[ArrayD<f64>],
        ws: &mut Self::Workspace,
        hv: &mut [ArrayD<f64>],
    ) -> metasgd_core::Result<()> {
        self.0.hessian_vector_into(params, &batch.0, lin, v, ws, hv)
    }
}

#[test]
fn a_failing_task_fails_every_rank_alike_and_changes_nothing() {
    let net = Mlp::new(&[1, 12, 1]);
    let obj = Faulty(net.clone());
    let tasks: Vec<Task<(Regression<f64>, bool)>> = batches::<f64>()[0]
        .iter()
        .enumerate()
        .map(|(i, t)| Task {
            support: (t.support.clone(), i == 2),
            query: (t.query.clone(), false),
        })
        .collect();
    for ranks in [1, 2, 3] {
        let out = on_ranks(ranks, |comm| {
            let mut d = DistMetaLearner::new(comm, learner::<f64>(&net, Method::MetaSgd, true));
            let before = (bits(d.learner().params()), bits(d.learner().alphas()));
            let e = d.meta_step(&obj, &tasks).unwrap_err();
            let after = (bits(d.learner().params()), bits(d.learner().alphas()));
            assert_eq!(before, after);
            assert_eq!(d.learner().meta_steps(), 0);
            e
        });
        let owner = (0..ranks)
            .find(|&r| DistMetaLearner::<f64, ThreadCollective>::share_of(4, r, ranks).contains(&2))
            .unwrap();
        for e in &out {
            assert_eq!(e, &out[0], "{ranks} ranks: the same error on every rank");
            assert!(
                matches!(e, Error::PeerFailed { rank, operation: "meta-step", .. } if *rank == owner),
                "{e}"
            );
        }
    }
}

#[test]
fn an_empty_meta_batch_is_an_error() {
    let net = Mlp::new(&[1, 4, 1]);
    let out = on_ranks(2, |comm| {
        let mut d = DistMetaLearner::new(comm, learner::<f32>(&net, Method::Maml, false));
        let r = d.meta_step(&net, &[]).is_err();
        (r, d.collective().rank())
    });
    assert!(out.iter().all(|(e, _)| *e));
}

/// Saved on 2 ranks after two meta-steps, resumed on 1 and on 3: the third
/// meta-step is the uninterrupted one-process run's, bit for bit; a damaged
/// file fails every rank alike.
#[test]
fn saved_on_two_ranks_resumes_on_any_rank_count() {
    let net = Mlp::new(&[1, 12, 1]);
    let want = one_process::<f32>(&net, Method::MetaSgd, true);
    let path = std::env::temp_dir().join(format!(
        "metasgd-dist-meta-{}.safetensors",
        std::process::id()
    ));
    let b = batches::<f32>();
    on_ranks(2, |comm| {
        let mut d = DistMetaLearner::new(comm, learner::<f32>(&net, Method::MetaSgd, true));
        for batch in &b[..2] {
            d.meta_step(&net, batch).unwrap();
        }
        d.save_state(&path).unwrap();
    });
    for ranks in [1, 3] {
        let got = on_ranks(ranks, |comm| {
            let mut d = DistMetaLearner::<f32, _>::load_state(comm, &path).unwrap();
            assert_eq!(d.learner().meta_steps(), 2);
            let loss = d.meta_step(&net, &b[2]).unwrap();
            (
                loss.bits(),
                bits(d.learner().params()),
                bits(d.learner().alphas()),
            )
        });
        for g in got {
            assert!(g == want[2], "resumed on {ranks} ranks");
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let errors = on_ranks(3, |comm| {
        DistMetaLearner::<f32, _>::load_state(comm, &path).err()
    });
    assert!(
        errors.iter().all(|e| e.is_some() && *e == errors[0]),
        "{errors:?}"
    );
    std::fs::remove_file(&path).unwrap();
}
