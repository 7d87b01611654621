//! The hypergradient rule sharded: on 1 to 3 thread-backed ranks, bitwise
//! equal to one process stepping the averaged gradients (parameters, rates,
//! counters); saved on one rank count and resumed on another, bitwise equal
//! to the uninterrupted run, the previous gradients re-partitioned with the
//! rates.

use metasgd_core::{MetaSGD, MetaSGDConfig, Optimizer, Rule};
use metasgd_dist::reference::{self, test_grads as grads, test_params as init};
use metasgd_dist::{Collective, ShardedMetaSGD, ThreadCollective, ThreadGroup};
use metasgd_kernels::Element;
use ndarray::{ArrayD, IxDyn};

fn config<A: Element>() -> MetaSGDConfig<A> {
    MetaSGDConfig::new(A::from(0.05).unwrap())
        .with_inner_steps(2)
        .with_rule(Rule::Hypergradient {
            up: A::from(1.25).unwrap(),
            down: A::from(0.5).unwrap(),
            smoothing: A::from(0.75).unwrap(),
        })
}

fn shapes() -> Vec<Vec<usize>> {
    vec![vec![9, 5], vec![3], vec![], vec![0, 2], vec![2, 1, 3]]
}

fn bits<A: Element>(v: &[ArrayD<A>]) -> Vec<u64> {
    v.iter().flat_map(|a| a.iter().map(|x| x.bits())).collect()
}

fn on_ranks<T: Send>(ranks: usize, body: impl Fn(ThreadCollective) -> T + Sync) -> Vec<T> {
    let group = ThreadGroup::new(ranks).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = group.into_iter().map(|c| s.spawn(|| body(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn step<A: Element, C: Collective>(o: &mut ShardedMetaSGD<A, C>, p: &mut [ArrayD<A>], s: usize) {
    let g = grads::<A>(&shapes(), o.rank(), s, None);
    let mut views: Vec<_> = p.iter_mut().map(|p| p.view_mut()).collect();
    o.step(&mut views, &g.iter().map(|g| g.view()).collect::<Vec<_>>())
        .unwrap();
}

/// One process, the first `switch` steps averaging `before` ranks and the
/// rest `after` ranks: parameters and rates after `total` steps.
fn one_process<A: Element>(
    before: usize,
    after: usize,
    switch: usize,
    total: usize,
) -> [Vec<u64>; 2]
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let shapes = shapes();
    let mut params = init::<A>(&shapes);
    let mut opt = MetaSGD::from_config(config::<A>());
    for s in 0..total {
        let ranks = if s < switch { before } else { after };
        let per_rank: Vec<_> = (0..ranks)
            .map(|r| grads::<A>(&shapes, r, s, None))
            .collect();
        reference::step(&mut opt, &mut params, &per_rank).unwrap();
    }
    [bits(&params), bits(opt.per_param_lrs())]
}

fn sharded_equals_one_process<A: Element>()
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    for ranks in 1..=3 {
        let want = one_process::<A>(ranks, ranks, 0, 4);
        let got = on_ranks(ranks, |comm| {
            let mut o = ShardedMetaSGD::new(comm, config::<A>(), shapes()).unwrap();
            let mut p = init::<A>(&shapes());
            for s in 0..4 {
                step(&mut o, &mut p, s);
            }
            [bits(&p), bits(&o.gather_alphas())]
        });
        for (rank, g) in got.iter().enumerate() {
            assert!(*g == want, "{ranks} ranks, rank {rank}");
        }
    }
}

#[test]
fn sharded_equals_one_process_f32() {
    sharded_equals_one_process::<f32>();
}

#[test]
fn sharded_equals_one_process_f64() {
    sharded_equals_one_process::<f64>();
}

#[test]
fn resumed_on_another_rank_count_is_the_uninterrupted_run() {
    for (before, after) in [(2, 3), (3, 1)] {
        let dir = std::env::temp_dir().join(format!(
            "metasgd-rule-{before}-{after}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let saved: Vec<Vec<ArrayD<f32>>> = on_ranks(before, |comm| {
            let mut o = ShardedMetaSGD::new(comm, config::<f32>(), shapes()).unwrap();
            let mut p = init::<f32>(&shapes());
            for s in 0..3 {
                step(&mut o, &mut p, s);
            }
            o.save_state(&dir).unwrap();
            p
        });
        let got = on_ranks(after, |comm| {
            let mut o = ShardedMetaSGD::<f32, _>::load_state(comm, &dir, shapes()).unwrap();
            assert!(matches!(
                o.shard_optimizer().config().rule,
                Rule::Hypergradient { .. }
            ));
            let mut p = saved[0].clone();
            for s in 3..6 {
                step(&mut o, &mut p, s);
            }
            [bits(&p), bits(&o.gather_alphas())]
        });
        let want = one_process::<f32>(before, after, 3, 6);
        for g in got {
            assert!(g == want, "{before} -> {after} ranks");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
