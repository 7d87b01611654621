//! `mpi-check`: the sharded optimizer on MPI ranks against one process,
//! run by `cargo xtask mpi` under `mpirun`.
//!
//! ```text
//! mpirun -n R mpi-check run --elements N --steps S
//! mpirun -n R1 mpi-check reshard-save   --dir D --steps S1
//! mpirun -n R2 mpi-check reshard-resume --dir D --from R1 --steps S1 --total S
//! mpirun -n R1 mpi-check kill-save --dir D --steps S1 --more S2 --kill-rank K
//! ```
//!
//! `kill-save` trains S1 steps and saves (a committed generation), trains S2
//! more and saves again, with rank K exiting at its third collective call of
//! that save (after its shard is written, before every rank has reported):
//! the job dies, and `reshard-resume --steps S1` must find the first
//! generation and resume it bitwise.
//!
//! Every rank derives its local gradients from (rank, step), so every rank
//! can also compute the one-process reference (sum in rank order, divide,
//! `step_list_inplace`) and count the elements where the sharded result
//! differs. Rank 0 prints one line per run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use metasgd_core::{Error, MetaSGD, NonFinitePolicy, Optimizer};
use metasgd_dist::reference;
use metasgd_dist::testing::Dying;
use metasgd_dist::{Collective, MpiCollective, ShardedMetaSGD};
use metasgd_kernels::Element;
use mpi::traits::CommunicatorCollectives;
use ndarray::{ArrayD, IxDyn};

/// Tensors of every awkward kind around one large one: `elements` in all.
fn shapes(elements: usize) -> Vec<Vec<usize>> {
    let small = vec![vec![3, 5], vec![], vec![0, 4], vec![2], vec![1, 1, 3]];
    let rest: usize = small.iter().map(|s| s.iter().product::<usize>()).sum();
    let mut v = vec![vec![elements.saturating_sub(rest)]];
    v.extend(small);
    v
}

/// Rank `rank`'s gradients at `step`; `nan = (rank, tensor)` poisons element 5 of that tensor.
fn grads<A: Element>(
    shapes: &[Vec<usize>],
    rank: usize,
    step: usize,
    nan: Option<(usize, usize)>,
) -> Vec<ArrayD<A>> {
    reference::test_grads(shapes, rank, step, nan.map(|(r, j)| (r, j, 5)))
}

fn template<A: Element>(policy: NonFinitePolicy) -> MetaSGD<A> {
    MetaSGD::new(A::from(0.01).unwrap_or(A::ZERO))
        .with_alpha_lr(A::from(0.1).unwrap_or(A::ZERO))
        .with_non_finite(policy)
}

/// The one-process run: `ranks_at(step)` ranks' gradients averaged per step.
fn one_process<A: Element>(
    shapes: &[Vec<usize>],
    steps: std::ops::Range<usize>,
    ranks_at: impl Fn(usize) -> usize,
    params: &mut [ArrayD<A>],
    opt: &mut MetaSGD<A>,
    nan: Option<(usize, usize, usize)>,
) -> Vec<Result<(), Error>>
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    steps
        .map(|step| {
            let poison = nan.filter(|p| p.0 == step).map(|p| (p.1, p.2));
            let per_rank: Vec<_> = (0..ranks_at(step))
                .map(|r| grads::<A>(shapes, r, step, poison))
                .collect();
            reference::step(opt, params, &per_rank)
        })
        .collect()
}

fn differing<A: Element>(a: &[ArrayD<A>], b: &[ArrayD<A>]) -> u64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            x.iter()
                .zip(y)
                .filter(|(u, v)| u.bits() != v.bits())
                .count() as u64
        })
        .sum()
}

fn rates<A: Element>(opt: &MetaSGD<A>, shapes: &[Vec<usize>]) -> Vec<ArrayD<A>> {
    if opt.per_param_lrs().is_empty() {
        shapes
            .iter()
            .map(|s| ArrayD::from_elem(IxDyn(s), opt.get_base_lr()))
            .collect()
    } else {
        opt.per_param_lrs().to_vec()
    }
}

/// Runs `steps` sharded steps (timing them, and with `plain_baseline` the
/// plain data-parallel step in the same rounds), compares with the
/// reference; returns (mismatches on this rank, median step ms, median plain
/// step ms, alpha bytes).
fn run_case<A: Element + mpi::datatype::Equivalence>(
    comm: MpiCollective,
    shapes: &[Vec<usize>],
    steps: usize,
    policy: NonFinitePolicy,
    nan: Option<(usize, usize, usize)>,
    bucket: usize,
    plain_baseline: bool,
) -> (u64, f64, Option<f64>, usize, MpiCollective)
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let (rank, ranks) = (comm.rank(), comm.size());
    let mut sharded = ShardedMetaSGD::new(comm, *template::<A>(policy).config(), shapes.to_vec())
        .expect("same shapes on every rank")
        .with_bucket_elements(bucket);
    let mut params = reference::test_params::<A>(shapes);
    let mut times = Vec::with_capacity(steps);
    let mut results = Vec::with_capacity(steps);
    // What a user writes without ZeRO, timed in the same rounds: an
    // all-reduce of every gradient into a reused buffer, a division, then
    // `step_list_inplace` on every rank.
    let mut plain = plain_baseline.then(|| {
        (
            reference::test_params::<A>(shapes),
            template::<A>(policy),
            shapes
                .iter()
                .map(|s| ArrayD::<A>::zeros(IxDyn(s)))
                .collect::<Vec<_>>(),
            Vec::with_capacity(steps),
        )
    });
    for step in 0..steps {
        let poison = nan.filter(|p| p.0 == step).map(|p| (p.1, p.2));
        let g = grads::<A>(shapes, rank, step, poison);
        let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
        let gv: Vec<_> = g.iter().map(|g| g.view()).collect();
        let start = Instant::now();
        results.push(sharded.step(&mut views, &gv));
        times.push(start.elapsed().as_secs_f64() * 1e3);
        if let Some((p, opt, sums, plain_times)) = &mut plain {
            let world = sharded.collective().communicator();
            let start = Instant::now();
            let n = A::from(ranks).unwrap_or(A::one());
            for (local, sum) in g.iter().zip(sums.iter_mut()) {
                world.all_reduce_into(
                    local.as_slice().expect("standard layout"),
                    sum.as_slice_mut().expect("standard layout"),
                    mpi::collective::SystemOperation::sum(),
                );
                sum.mapv_inplace(|v| v / n);
            }
            let mut pv: Vec<_> = p.iter_mut().map(|p| p.view_mut()).collect();
            let sv: Vec<_> = sums.iter().map(|s| s.view()).collect();
            opt.step_list_inplace(&mut pv, &sv).expect("plain step");
            plain_times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let alphas = sharded.gather_alphas();
    let mut ref_params = reference::test_params::<A>(shapes);
    let mut ref_opt = template::<A>(policy);
    let want = one_process(
        shapes,
        0..steps,
        |_| ranks,
        &mut ref_params,
        &mut ref_opt,
        nan,
    );
    let mut mismatches =
        differing(&params, &ref_params) + differing(&alphas, &rates(&ref_opt, shapes));
    mismatches += results.iter().zip(&want).filter(|(a, b)| a != b).count() as u64;
    mismatches += u64::from(sharded.get_step_count() != ref_opt.get_step_count());
    mismatches += u64::from(sharded.skipped_steps() != ref_opt.skipped_steps());
    // A NaN under Skip or Error must have skipped or failed a step (else the
    // policy cases would compare runs that never saw it).
    let landed = want.iter().any(Result::is_err) || ref_opt.skipped_steps() > 0;
    mismatches += u64::from(landed != (nan.is_some() && policy != NonFinitePolicy::Propagate));
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t.get(t.len() / 2).copied().unwrap_or(0.0)
    };
    let plain_ms = plain.map(|(_, _, _, t)| median(t));
    let bytes = sharded.alpha_bytes();
    (
        mismatches,
        median(times),
        plain_ms,
        bytes,
        sharded.into_collective(),
    )
}

/// Saves the optimizer with the replicated model (stored once, by rank 0).
fn save<C: Collective>(sharded: &ShardedMetaSGD<f32, C>, dir: &Path, params: &[ArrayD<f32>]) {
    let names: Vec<String> = (0..params.len()).map(|j| format!("param.{j}")).collect();
    let tensors: Vec<(&str, _)> = names
        .iter()
        .map(String::as_str)
        .zip(params.iter().map(|p| p.view()))
        .collect();
    sharded
        .save_state_with_tensors(dir, &tensors)
        .expect("save");
}

/// A process's death mid-save: exit without finalising MPI, as a killed
/// process would (mpirun then ends the job).
fn exit_rank(rank: usize) -> ! {
    eprintln!("rank {rank}: killed mid-save (test)");
    std::process::exit(17)
}

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num(args: &[String], flag: &str, default: usize) -> usize {
    arg(args, flag)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let universe = mpi::initialize().expect("MPI initialises once");
    let comm = MpiCollective::new(universe.world());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (rank, ranks) = (comm.rank(), comm.size());
    match args.first().map(String::as_str) {
        Some("run") => {
            let elements = num(&args, "--elements", 1 << 20);
            let steps = num(&args, "--steps", 20);
            let shapes = shapes(elements);
            let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
            // The timed case (f32, default policy, default buckets), then every
            // policy with a NaN on the last rank's gradient, f64 in buckets of
            // 16 elements and f32 in one, on small tensors.
            let (mut bad, ms, plain_ms, bytes, comm) = run_case::<f32>(
                comm,
                &shapes,
                steps,
                NonFinitePolicy::Propagate,
                None,
                metasgd_dist::BUCKET_ELEMENTS,
                true,
            );
            let small = self::shapes(103);
            let mut comm = comm;
            for policy in [
                NonFinitePolicy::Propagate,
                NonFinitePolicy::Skip,
                NonFinitePolicy::Error,
            ] {
                let nan = Some((1, ranks - 1, 0));
                let (b, _, _, _, c) = run_case::<f64>(comm, &small, 3, policy, nan, 16, false);
                bad += b;
                let (b, _, _, _, c) = run_case::<f32>(c, &small, 3, policy, nan, usize::MAX, false);
                bad += b;
                comm = c;
            }
            let all: u64 = comm.all_gather_u64(bad).into_iter().sum();
            if rank == 0 {
                let plain_ms = plain_ms.unwrap_or(f64::NAN);
                println!(
                    "ranks={ranks} elements={total} steps={steps} mismatches={all} alpha_bytes_per_rank={bytes} step_ms={ms:.3} plain_allreduce_ms={plain_ms:.3} sharded_vs_plain={:.3}",
                    ms / plain_ms
                );
            }
        }
        Some("reshard-save") => {
            let dir = PathBuf::from(arg(&args, "--dir").expect("--dir"));
            let steps = num(&args, "--steps", 3);
            let shapes = shapes(num(&args, "--elements", 1000));
            let mut sharded = ShardedMetaSGD::new(
                comm,
                *template::<f32>(NonFinitePolicy::Skip).config(),
                shapes.clone(),
            )
            .expect("shapes");
            let mut params = reference::test_params::<f32>(&shapes);
            for step in 0..steps {
                let g = grads::<f32>(&shapes, rank, step, None);
                let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
                sharded
                    .step(&mut views, &g.iter().map(|g| g.view()).collect::<Vec<_>>())
                    .expect("step");
            }
            save(&sharded, &dir, &params);
        }
        Some("kill-save") => {
            let dir = PathBuf::from(arg(&args, "--dir").expect("--dir"));
            let steps = num(&args, "--steps", 3);
            let more = num(&args, "--more", 2);
            let kill = num(&args, "--kill-rank", 1);
            let shapes = shapes(num(&args, "--elements", 1000));
            let comm = Dying::new(comm, exit_rank);
            let mut sharded = ShardedMetaSGD::new(
                comm,
                *template::<f32>(NonFinitePolicy::Skip).config(),
                shapes.clone(),
            )
            .expect("shapes");
            let mut params = reference::test_params::<f32>(&shapes);
            for step in 0..steps + more {
                let g = grads::<f32>(&shapes, rank, step, None);
                let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
                sharded
                    .step(&mut views, &g.iter().map(|g| g.view()).collect::<Vec<_>>())
                    .expect("step");
                if step + 1 == steps {
                    save(&sharded, &dir, &params);
                }
            }
            if rank == kill {
                sharded.collective().arm(3);
            }
            save(&sharded, &dir, &params);
            eprintln!("rank {rank}: the save completed, but rank {kill} should have died");
            std::process::exit(3);
        }
        Some("reshard-resume") => {
            let dir = PathBuf::from(arg(&args, "--dir").expect("--dir"));
            let from = num(&args, "--from", 1);
            let first = num(&args, "--steps", 3);
            let total = num(&args, "--total", 6);
            let shapes = shapes(num(&args, "--elements", 1000));
            let (mut sharded, tensors) =
                match ShardedMetaSGD::<f32, _>::load_state_with_tensors(comm, &dir, shapes.clone())
                {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("rank {rank}: cannot load: {e}");
                        std::process::exit(1);
                    }
                };
            // The model was committed with the optimizer, by rank 0.
            let mut params: Vec<ArrayD<f32>> = tensors.into_iter().map(|(_, t)| t).collect();
            if sharded.get_step_count() != first {
                eprintln!(
                    "rank {rank}: loaded step {}, expected the generation of step {first}",
                    sharded.get_step_count()
                );
                std::process::exit(1);
            }
            for step in first..total {
                let g = grads::<f32>(&shapes, rank, step, None);
                let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
                sharded
                    .step(&mut views, &g.iter().map(|g| g.view()).collect::<Vec<_>>())
                    .expect("step");
            }
            let alphas = sharded.gather_alphas();
            let mut ref_params = reference::test_params::<f32>(&shapes);
            let mut ref_opt = template::<f32>(NonFinitePolicy::Skip);
            one_process(
                &shapes,
                0..total,
                |s| if s < first { from } else { ranks },
                &mut ref_params,
                &mut ref_opt,
                None,
            );
            let mut bad =
                differing(&params, &ref_params) + differing(&alphas, &rates(&ref_opt, &shapes));
            bad += u64::from(sharded.get_step_count() != ref_opt.get_step_count());
            let all: u64 = sharded.collective().all_gather_u64(bad).into_iter().sum();
            if rank == 0 {
                println!("reshard from={from} to={ranks} mismatches={all}");
            }
        }
        _ => {
            if rank == 0 {
                eprintln!(
                    "usage: mpi-check (run [--elements N] [--steps S] | reshard-save --dir D [--steps S] | reshard-resume --dir D --from R --steps S --total T | kill-save --dir D --steps S --more M --kill-rank K)"
                );
            }
            std::process::exit(2);
        }
    }
}
