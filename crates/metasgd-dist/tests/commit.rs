//! The commit protocol of sharded checkpoints: a rank that dies at any
//! point of a save leaves the last committed generation, which loads on any
//! rank count and resumes bitwise equal to an uninterrupted run; every
//! single-bit flip of a shard file is refused or harmless.

use std::path::{Path, PathBuf};

use metasgd_core::{Error, MetaSGD, NonFinitePolicy, Optimizer};
use metasgd_dist::reference::{self, test_grads as grads, test_params as init};
use metasgd_dist::{Collective, ShardedMetaSGD, ThreadCollective, ThreadGroup};
use metasgd_kernels::Element;
use ndarray::{ArrayD, ArrayViewD, IxDyn};

/// A thread rank's death: a panic (the group then breaks).
fn panic_rank(rank: usize) -> ! {
    panic!("rank {rank} killed (test)")
}

type Dying = metasgd_dist::testing::Dying<ThreadCollective>;

/// Runs `body` on every rank; a rank that panicked gives `None`.
fn on_ranks<T: Send>(ranks: usize, body: impl Fn(Dying) -> T + Sync) -> Vec<Option<T>> {
    let group = ThreadGroup::new(ranks).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|inner| {
                let body = &body;
                s.spawn(move || body(Dying::new(inner, panic_rank)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    })
}

fn template<A: Element>() -> MetaSGD<A> {
    MetaSGD::new(A::from(0.05).unwrap())
        .with_alpha_lr(A::from(0.3).unwrap())
        .with_inner_steps(2)
        .with_non_finite(NonFinitePolicy::Skip)
}

fn bits<A: Element>(v: &[ArrayD<A>]) -> Vec<u64> {
    v.iter().flat_map(|a| a.iter().map(|x| x.bits())).collect()
}

fn shapes() -> Vec<Vec<usize>> {
    vec![vec![9, 5], vec![3], vec![], vec![0, 2], vec![2, 1, 3]]
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("metasgd-commit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn step<A: Element, C: Collective>(o: &mut ShardedMetaSGD<A, C>, p: &mut [ArrayD<A>], step: usize) {
    let g = grads::<A>(&shapes(), o.rank(), step, None);
    let mut views: Vec<_> = p.iter_mut().map(|p| p.view_mut()).collect();
    o.step(&mut views, &g.iter().map(|g| g.view()).collect::<Vec<_>>())
        .unwrap();
}

fn named<A: Element>(p: &[ArrayD<A>]) -> Vec<(String, ArrayViewD<'_, A>)> {
    p.iter()
        .enumerate()
        .map(|(j, t)| (format!("param.{j}"), t.view()))
        .collect()
}

fn save_with_params<A: Element, C: Collective>(
    o: &ShardedMetaSGD<A, C>,
    dir: &Path,
    p: &[ArrayD<A>],
) {
    let n = named(p);
    let t: Vec<(&str, ArrayViewD<'_, A>)> =
        n.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    o.save_state_with_tensors(dir, &t).unwrap();
}

/// Trains 2 ranks for 2 steps, saves (generation 1), trains 2 more, and
/// saves again with `rank` dying at its `call`-th collective call of that
/// save; `tamper` then changes the files as a stalled machine would leave
/// them. Loads on 3 ranks, runs to step 6, and compares with the
/// uninterrupted one-process run whose first `committed` steps average 2
/// ranks.
fn crash_and_resume<A: Element>(rank: usize, call: usize, committed: usize, tamper: impl Fn(&Path))
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let dir = temp(&format!("{rank}-{call}-{}", A::NAME));
    let shapes = shapes();
    let out = on_ranks(2, |comm| {
        let me = comm.rank();
        let mut o = ShardedMetaSGD::new(comm, *template::<A>().config(), shapes.clone()).unwrap();
        let mut p = init::<A>(&shapes);
        for s in 0..2 {
            step(&mut o, &mut p, s);
        }
        save_with_params(&o, &dir, &p);
        for s in 2..4 {
            step(&mut o, &mut p, s);
        }
        if me == rank {
            o.collective().arm(call);
        }
        save_with_params(&o, &dir, &p);
    });
    assert!(out.iter().all(Option::is_none), "the job died: {out:?}");
    tamper(&dir);
    // The next save takes the number after every generation on disk.
    let next = if dir.join("gen-00000002").exists() {
        "gen-00000003"
    } else {
        "gen-00000002"
    };

    let total = 6;
    let mut params = init::<A>(&shapes);
    let mut opt = template::<A>();
    for s in 0..total {
        let ranks = if s < committed { 2 } else { 3 };
        let per_rank: Vec<_> = (0..ranks)
            .map(|r| grads::<A>(&shapes, r, s, None))
            .collect();
        reference::step(&mut opt, &mut params, &per_rank).unwrap();
    }
    let got = on_ranks(3, |comm| {
        let (mut o, tensors) =
            ShardedMetaSGD::<A, _>::load_state_with_tensors(comm, &dir, shapes.clone()).unwrap();
        assert_eq!(
            o.get_step_count(),
            committed,
            "the last committed generation"
        );
        let mut p: Vec<ArrayD<A>> = tensors.into_iter().map(|(_, t)| t).collect();
        for s in committed..total {
            step(&mut o, &mut p, s);
        }
        let alphas = o.gather_alphas();
        save_with_params(&o, &dir, &p);
        (bits(&p), bits(&alphas))
    });
    for (r, g) in got.into_iter().enumerate() {
        let (p, a) = g.expect("the resumed job runs");
        assert_eq!(
            p,
            bits(&params),
            "params, rank {r} (kill rank {rank} at call {call})"
        );
        assert_eq!(a, bits(opt.per_param_lrs()), "rates, rank {r}");
    }
    // The resumed run's save commits a new generation and clears the
    // interrupted one.
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let committed_gen = if committed == 4 {
        "gen-00000002"
    } else {
        "gen-00000001"
    };
    assert_eq!(
        left,
        ["COMMIT", committed_gen, next],
        "kill rank {rank} at call {call}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_rank_dying_before_it_writes_leaves_the_previous_generation() {
    crash_and_resume::<f32>(1, 1, 2, |_| {});
}

#[test]
fn a_rank_dying_after_every_shard_is_written_but_before_the_commit() {
    crash_and_resume::<f32>(1, 3, 2, |_| {});
    crash_and_resume::<f64>(0, 3, 2, |_| {});
}

#[test]
fn a_rank_stalled_mid_write_leaves_a_torn_generation_that_is_never_read() {
    // Rank 1 never finished its shard (only a temporary file) and rank 0's
    // shard of the new generation is complete: the record still names
    // generation 1.
    crash_and_resume::<f32>(1, 3, 2, |dir| {
        let g = dir.join("gen-00000002");
        std::fs::remove_file(g.join("shard-00001-of-00002.safetensors")).unwrap();
        std::fs::write(g.join(".shard-00001-of-00002.safetensors.tmp-1-0"), b"torn").unwrap();
    });
}

#[test]
fn a_rank_dying_after_the_commit_resumes_from_the_new_generation() {
    // Rank 0 wrote the record, then died before the clean-up.
    crash_and_resume::<f32>(0, 5, 4, |_| {});
}

#[test]
fn a_corrupt_shard_is_a_load_error_on_every_rank() {
    let dir = temp("corrupt");
    let shapes = shapes();
    on_ranks(2, |comm| {
        let mut o = ShardedMetaSGD::new(comm, *template::<f32>().config(), shapes.clone()).unwrap();
        let mut p = init::<f32>(&shapes);
        step(&mut o, &mut p, 0);
        o.save_state(&dir).unwrap();
    });
    let path = dir.join("gen-00000001/shard-00001-of-00002.safetensors");
    let mut b = std::fs::read(&path).unwrap();
    let last = b.len() - 1;
    b[last] ^= 4;
    std::fs::write(&path, b).unwrap();
    let errs = on_ranks(2, |comm| {
        ShardedMetaSGD::<f32, _>::load_state(comm, &dir, shapes.clone()).err()
    });
    match (&errs[0], &errs[1]) {
        (
            Some(Some(Error::PeerFailed {
                rank: 1,
                operation: "load",
                cause,
            })),
            Some(Some(Error::InvalidCheckpoint { reason, .. })),
        ) => {
            assert!(
                cause.contains("corrupt") && reason.contains("corrupt"),
                "{cause} / {reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// splitmix64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn every_single_bit_flip_of_a_shard_is_refused_or_harmless() {
    const KEYS: [&str; 5] = [
        "shard_rank",
        "shard_ranks",
        "shard_offset",
        "global_len",
        "shapes",
    ];
    let dir = temp("flips");
    let mut flips = 0;
    for seed in 0..20u64 {
        let ranks = 1 + (mix(seed) % 3) as usize;
        let shapes: Vec<Vec<usize>> = (0..1 + mix(seed + 100) % 3)
            .map(|j| vec![1 + (mix(seed * 7 + j) % 6) as usize])
            .collect();
        let d = dir.join(seed.to_string());
        on_ranks(ranks, |comm| {
            let rank = comm.rank();
            let mut o =
                ShardedMetaSGD::new(comm, *template::<f32>().config(), shapes.clone()).unwrap();
            let mut p = init::<f32>(&shapes);
            for s in 0..(seed % 3) as usize {
                let g = grads::<f32>(&shapes, rank, s, None);
                let mut views: Vec<_> = p.iter_mut().map(|p| p.view_mut()).collect();
                o.step(&mut views, &g.iter().map(|g| g.view()).collect::<Vec<_>>())
                    .unwrap();
            }
            save_with_params(&o, &d, &p);
        });
        let rank = (mix(seed + 5) % ranks as u64) as usize;
        let file = d.join(format!(
            "gen-00000001/shard-{rank:05}-of-{ranks:05}.safetensors"
        ));
        let bytes = std::fs::read(&file).unwrap();
        let want = MetaSGD::<f32>::from_state_bytes_with(&bytes, &KEYS).unwrap();
        let observe = |l: &metasgd_core::Loaded<f32>| {
            (
                bits(l.optimizer.per_param_lrs()),
                l.optimizer.same_settings(&want.optimizer),
                l.tensors
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shape().to_vec(), bits(std::slice::from_ref(t))))
                    .collect::<Vec<_>>(),
                l.metadata.clone(),
            )
        };
        let want_obs = observe(&want);
        let mut b = bytes.clone();
        for i in 0..b.len() {
            for bit in 0..8 {
                b[i] ^= 1 << bit;
                flips += 1;
                match MetaSGD::<f32>::from_state_bytes_with(&b, &KEYS) {
                    Err(Error::InvalidCheckpoint { .. }) => {}
                    Err(e) => panic!("seed {seed}: {e}"),
                    Ok(l) => assert_eq!(observe(&l), want_obs, "seed {seed} byte {i} bit {bit}"),
                }
                b[i] ^= 1 << bit;
            }
        }
    }
    assert!(flips > 100_000, "{flips}");
    std::fs::remove_dir_all(&dir).unwrap();
}
