//! The sharded optimizer on thread-backed ranks against one process that
//! sums the ranks' gradients in rank order, divides, and steps a MetaSGD:
//! bit for bit, for every rank count, tensor size, dtype and policy.

use metasgd_core::{Error, MetaSGD, NonFinitePolicy, Optimizer};
use metasgd_dist::{Collective, ShardedMetaSGD, ThreadCollective, ThreadGroup};
use metasgd_kernels::Element;
use ndarray::{ArrayD, IxDyn};

use metasgd_dist::reference::{self, test_grads as grads, test_params as init};

fn template<A: Element>(policy: NonFinitePolicy) -> MetaSGD<A> {
    MetaSGD::new(A::from(0.05).unwrap())
        .with_alpha_lr(A::from(0.3).unwrap())
        .with_inner_steps(3)
        .with_non_finite(policy)
}

fn bits<A: Element>(v: &[ArrayD<A>]) -> Vec<u64> {
    v.iter().flat_map(|a| a.iter().map(|x| x.bits())).collect()
}

/// Final parameters, the optimizer, and each step's result.
type Outcome<A> = (Vec<ArrayD<A>>, MetaSGD<A>, Vec<Result<(), Error>>);

/// One process: every rank's gradients averaged in rank order, then step_list_inplace.
fn reference<A: Element>(
    shapes: &[Vec<usize>],
    ranks: usize,
    steps: usize,
    policy: NonFinitePolicy,
    poison: Option<(usize, usize, usize, usize)>,
) -> Outcome<A>
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let mut params = init::<A>(shapes);
    let mut opt = template::<A>(policy);
    let results = (0..steps)
        .map(|step| {
            let p = poison.filter(|p| p.0 == step).map(|p| (p.1, p.2, p.3));
            let per_rank: Vec<_> = (0..ranks).map(|r| grads::<A>(shapes, r, step, p)).collect();
            reference::step(&mut opt, &mut params, &per_rank)
        })
        .collect();
    (params, opt, results)
}

/// Runs `body` on every rank of a thread group, returning the ranks' results in order.
fn on_ranks<T: Send>(ranks: usize, body: impl Fn(ThreadCollective) -> T + Sync) -> Vec<T> {
    let group = ThreadGroup::new(ranks).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = group.into_iter().map(|c| s.spawn(|| body(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn check<A: Element>(
    shapes: &[Vec<usize>],
    ranks: usize,
    policy: NonFinitePolicy,
    poison: Option<(usize, usize, usize, usize)>,
) where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    // One bucket per call, and buckets of a few elements (many calls per
    // step); parameters held transposed (not contiguous: the copied path).
    check_buckets::<A>(shapes, ranks, policy, poison, usize::MAX, false);
    check_buckets::<A>(shapes, ranks, policy, poison, 3 * ranks, false);
    check_buckets::<A>(shapes, ranks, policy, poison, usize::MAX, true);
}

fn check_buckets<A: Element>(
    shapes: &[Vec<usize>],
    ranks: usize,
    policy: NonFinitePolicy,
    poison: Option<(usize, usize, usize, usize)>,
    bucket: usize,
    transposed: bool,
) where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let steps = 4;
    let (want_params, want_opt, want_results) =
        reference::<A>(shapes, ranks, steps, policy, poison);
    // The poison must land (or the policy cases would pass without a NaN).
    let poisoned = want_results.iter().any(Result::is_err) || want_opt.skipped_steps() > 0;
    let expect_poison = poison.is_some() && policy != NonFinitePolicy::Propagate;
    assert_eq!(
        poisoned, expect_poison,
        "poison {poison:?} under {policy:?}"
    );
    let got = on_ranks(ranks, |comm| {
        let rank = comm.rank();
        let mut opt = ShardedMetaSGD::new(comm, *template::<A>(policy).config(), shapes.to_vec())
            .unwrap()
            .with_bucket_elements(bucket);
        // Transposed storage: the views below have the logical shapes but
        // reversed strides.
        let mut store: Vec<ArrayD<A>> = init::<A>(shapes)
            .into_iter()
            .map(|p| {
                if transposed {
                    p.t().as_standard_layout().into_owned()
                } else {
                    p
                }
            })
            .collect();
        let mut results = Vec::new();
        for step in 0..steps {
            let p = poison.filter(|p| p.0 == step).map(|p| (p.1, p.2, p.3));
            let g = grads::<A>(shapes, rank, step, p);
            let mut views: Vec<_> = store
                .iter_mut()
                .map(|p| {
                    if transposed {
                        p.view_mut().reversed_axes()
                    } else {
                        p.view_mut()
                    }
                })
                .collect();
            let gv: Vec<_> = g.iter().map(|g| g.view()).collect();
            results.push(opt.step(&mut views, &gv));
        }
        let params: Vec<ArrayD<A>> = store
            .iter()
            .map(|p| {
                if transposed {
                    p.t().to_owned()
                } else {
                    p.clone()
                }
            })
            .collect();
        let alphas = opt.gather_alphas();
        (
            bits(&params),
            bits(&alphas),
            opt.get_step_count(),
            opt.skipped_steps(),
            results,
        )
    });
    let want_alphas: Vec<ArrayD<A>> = if want_opt.per_param_lrs().is_empty() {
        shapes
            .iter()
            .map(|s| ArrayD::from_elem(IxDyn(s), want_opt.get_base_lr()))
            .collect()
    } else {
        want_opt.per_param_lrs().to_vec()
    };
    let what = format!(
        "{} ranks={ranks} shapes={shapes:?} {policy:?} poison={poison:?} bucket={bucket} transposed={transposed}",
        A::NAME
    );
    for (rank, (p, a, steps_done, skipped, results)) in got.into_iter().enumerate() {
        assert_eq!(p, bits(&want_params), "params, rank {rank}, {what}");
        assert_eq!(a, bits(&want_alphas), "alphas, rank {rank}, {what}");
        assert_eq!(
            (steps_done, skipped),
            (want_opt.get_step_count(), want_opt.skipped_steps()),
            "counters, {what}"
        );
        assert_eq!(results, want_results, "results, rank {rank}, {what}");
    }
}

fn shape_sets() -> Vec<Vec<Vec<usize>>> {
    vec![
        vec![vec![7, 5], vec![3], vec![], vec![0, 4], vec![2, 1, 3]],
        vec![vec![1]],
        vec![vec![], vec![]],
        vec![vec![0]],
        vec![vec![1000], vec![17]],
    ]
}

#[test]
fn bitwise_equal_to_one_process() {
    for ranks in 1..=5 {
        for shapes in shape_sets() {
            check::<f32>(&shapes, ranks, NonFinitePolicy::Propagate, None);
            check::<f64>(&shapes, ranks, NonFinitePolicy::Propagate, None);
        }
    }
}

#[test]
fn policies_agree_across_ranks() {
    let shapes = vec![vec![7, 5], vec![3], vec![], vec![2, 1, 3]];
    for ranks in [1, 2, 3, 4] {
        for policy in [
            NonFinitePolicy::Propagate,
            NonFinitePolicy::Skip,
            NonFinitePolicy::Error,
        ] {
            // A NaN on the last rank, in the last tensor, at step 1: it lands in
            // one rank's shard; every rank must skip or fail alike.
            check::<f32>(&shapes, ranks, policy, Some((1, ranks - 1, 3, 4)));
            check::<f64>(&shapes, ranks, policy, Some((2, 0, 0, 33)));
        }
    }
}

#[test]
fn a_bad_input_on_one_rank_fails_every_rank_and_changes_nothing() {
    let shapes = vec![vec![4, 3], vec![5]];
    let out = on_ranks(3, |comm| {
        let rank = comm.rank();
        let mut opt = ShardedMetaSGD::new(
            comm,
            *template::<f32>(NonFinitePolicy::Propagate).config(),
            shapes.clone(),
        )
        .unwrap();
        let mut params = init::<f32>(&shapes);
        let before = bits(&params);
        let mut g = grads::<f32>(&shapes, rank, 0, None);
        if rank == 1 {
            g[1] = ArrayD::zeros(IxDyn(&[6]));
        }
        let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
        let gv: Vec<_> = g.iter().map(|g| g.view()).collect();
        let r = opt.step(&mut views, &gv);
        let alphas = opt.gather_alphas();
        (
            r,
            bits(&params) == before,
            opt.get_step_count(),
            alphas.iter().all(|a| a.iter().all(|&x| x == 0.05)),
        )
    });
    for (rank, (r, unchanged, steps, fresh)) in out.into_iter().enumerate() {
        assert!(unchanged && steps == 0 && fresh, "rank {rank}");
        match (rank, r) {
            (1, Err(Error::ShapeMismatch { slot: 1, .. })) => {}
            (1, other) => panic!("rank 1: {other:?}"),
            (
                _,
                Err(Error::PeerFailed {
                    rank: 1,
                    operation: "step",
                    cause,
                }),
            ) if cause.contains("shape mismatch") => {}
            (_, other) => panic!("rank {rank}: {other:?}"),
        }
    }
}

#[test]
fn memory_is_split() {
    let shapes = vec![vec![1000, 10], vec![10]];
    let sizes = on_ranks(4, |comm| {
        let opt = ShardedMetaSGD::new(
            comm,
            metasgd_core::MetaSGDConfig::new(0.01_f32),
            shapes.clone(),
        )
        .unwrap();
        opt.alpha_bytes()
    });
    assert_eq!(sizes, vec![4 * 2503; 4]);
}

/// Saves on `from` ranks after `first` steps, loads on `to` ranks, runs the
/// rest: equal to the one-process run over the same averaged gradients.
fn reshard<A: Element>(from: usize, to: usize, policy: NonFinitePolicy)
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let shapes = vec![vec![7, 5], vec![3], vec![], vec![0, 4], vec![2, 1, 3]];
    let dir = std::env::temp_dir().join(format!(
        "metasgd-reshard-{}-{from}-{to}-{}",
        std::process::id(),
        A::NAME
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (first, total) = (2, 5);
    // The reference: steps 0..first averaged over `from` ranks, then over `to`.
    let mut params = init::<A>(&shapes);
    let mut opt = template::<A>(policy);
    for step in 0..total {
        let ranks = if step < first { from } else { to };
        let per_rank: Vec<_> = (0..ranks)
            .map(|r| grads::<A>(&shapes, r, step, None))
            .collect();
        reference::step(&mut opt, &mut params, &per_rank).unwrap();
    }
    let mid = on_ranks(from, |comm| {
        let rank = comm.rank();
        let mut o =
            ShardedMetaSGD::new(comm, *template::<A>(policy).config(), shapes.clone()).unwrap();
        let mut p = init::<A>(&shapes);
        for step in 0..first {
            let g = grads::<A>(&shapes, rank, step, None);
            let mut views: Vec<_> = p.iter_mut().map(|p| p.view_mut()).collect();
            o.step(&mut views, &g.iter().map(|g| g.view()).collect::<Vec<_>>())
                .unwrap();
        }
        o.save_state(&dir).unwrap();
        p
    });
    let got = on_ranks(to, |comm| {
        let rank = comm.rank();
        let mut o = ShardedMetaSGD::<A, _>::load_state(comm, &dir, shapes.clone()).unwrap();
        let mut p = mid[0].clone();
        for step in first..total {
            let g = grads::<A>(&shapes, rank, step, None);
            let mut views: Vec<_> = p.iter_mut().map(|p| p.view_mut()).collect();
            o.step(&mut views, &g.iter().map(|g| g.view()).collect::<Vec<_>>())
                .unwrap();
        }
        (bits(&p), bits(&o.gather_alphas()), o.get_step_count())
    });
    for (rank, (p, a, steps)) in got.into_iter().enumerate() {
        assert_eq!(p, bits(&params), "params, {from} -> {to}, rank {rank}");
        assert_eq!(
            a,
            bits(opt.per_param_lrs()),
            "alphas, {from} -> {to}, rank {rank}"
        );
        assert_eq!(steps, total);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoints_reshard() {
    for (from, to) in [(4, 2), (2, 3), (1, 4), (3, 1), (5, 5)] {
        reshard::<f32>(from, to, NonFinitePolicy::Propagate);
        reshard::<f64>(from, to, NonFinitePolicy::Skip);
    }
}

#[test]
fn loading_needs_every_shard() {
    let shapes = vec![vec![40]];
    let dir = std::env::temp_dir().join(format!("metasgd-missing-shard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    on_ranks(3, |comm| {
        let rank = comm.rank();
        let mut o = ShardedMetaSGD::new(
            comm,
            metasgd_core::MetaSGDConfig::new(0.01_f32),
            shapes.clone(),
        )
        .unwrap();
        let mut p = init::<f32>(&shapes);
        let g = grads::<f32>(&shapes, rank, 0, None);
        let mut views: Vec<_> = p.iter_mut().map(|p| p.view_mut()).collect();
        o.step(&mut views, &g.iter().map(|g| g.view()).collect::<Vec<_>>())
            .unwrap();
        o.save_state(&dir).unwrap();
    });
    std::fs::remove_file(dir.join("gen-00000001/shard-00001-of-00003.safetensors")).unwrap();
    let errs = on_ranks(2, |comm| {
        ShardedMetaSGD::<f32, _>::load_state(comm, &dir, shapes.clone()).err()
    });
    assert!(errs.iter().all(Option::is_some), "{errs:?}");
    // Loaded on 3 ranks, only rank 1 reads that shard: every rank says so.
    let errs = on_ranks(3, |comm| {
        ShardedMetaSGD::<f32, _>::load_state(comm, &dir, shapes.clone()).err()
    });
    for (rank, e) in errs.iter().enumerate() {
        match (rank, e) {
            (1, Some(Error::Io { message, .. })) => {
                assert!(message.contains("shard-00001"), "{message}")
            }
            (
                _,
                Some(Error::PeerFailed {
                    rank: 1,
                    operation: "load",
                    cause,
                }),
            ) => {
                assert!(cause.contains("shard-00001"), "{cause}")
            }
            other => panic!("{other:?}"),
        }
    }
    // Wrong shapes are refused too.
    let errs = on_ranks(1, |comm| {
        ShardedMetaSGD::<f32, _>::load_state(comm, &dir, vec![vec![41]]).err()
    });
    assert!(errs[0].is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generations_are_kept_and_pre_commit_layouts_still_load() {
    let shapes = vec![vec![30], vec![4]];
    let base = std::env::temp_dir().join(format!("metasgd-sets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (a, b) = (base.join("a"), base.join("b"));
    std::fs::create_dir_all(&b).unwrap();
    let train = |ranks: usize, steps: usize, dir: &std::path::Path, keep: usize| {
        on_ranks(ranks, |comm| {
            let rank = comm.rank();
            let mut o = ShardedMetaSGD::new(
                comm,
                metasgd_core::MetaSGDConfig::new(0.01_f32),
                shapes.clone(),
            )
            .unwrap()
            .with_keep_last(keep);
            let mut p = init::<f32>(&shapes);
            for step in 0..steps {
                let g = grads::<f32>(&shapes, rank, step, None);
                let mut views: Vec<_> = p.iter_mut().map(|p| p.view_mut()).collect();
                o.step(&mut views, &g.iter().map(|g| g.view()).collect::<Vec<_>>())
                    .unwrap();
            }
            o.save_state(dir).unwrap();
        });
    };
    let files = |dir: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    train(3, 1, &a, 2);
    train(2, 2, &a, 2);
    assert_eq!(files(&a), ["COMMIT", "gen-00000001", "gen-00000002"]);
    assert_eq!(
        files(&a.join("gen-00000002")),
        [
            "shard-00000-of-00002.safetensors",
            "shard-00001-of-00002.safetensors"
        ]
    );
    train(2, 3, &a, 2);
    assert_eq!(files(&a), ["COMMIT", "gen-00000002", "gen-00000003"]);
    train(1, 4, &a, 1);
    assert_eq!(files(&a), ["COMMIT", "gen-00000004"]);
    // The layout before the commit protocol (shards in the directory, no
    // record): an interrupted save could leave two complete sets, and the
    // one with more steps loads.
    train(3, 1, &base.join("c"), 2);
    for (dir, gen_dir) in [(&base.join("c"), "gen-00000001"), (&a, "gen-00000004")] {
        for f in files(&dir.join(gen_dir)) {
            std::fs::copy(dir.join(gen_dir).join(&f), b.join(&f)).unwrap();
        }
    }
    let steps = on_ranks(2, |comm| {
        ShardedMetaSGD::<f32, _>::load_state(comm, &b, shapes.clone())
            .unwrap()
            .get_step_count()
    });
    assert_eq!(steps, vec![4, 4]);
    std::fs::remove_dir_all(&base).unwrap();
}
