//! Every kernel against the scalar reference, compared with `to_bits()`.

use metasgd_kernels::par::PAR_CHUNK;
use metasgd_kernels::{
    Config, Element, Kernel, Theta, Update, scalar, step, step_many_avx2, step_many_portable,
};
use proptest::prelude::*;

/// A kernel under test, applied to one tensor.
type Runner<A> = fn(Update<'_, A>, &Config<A>);

/// Every kernel, on the instruction set this CPU gets (AVX-512 or AVX2 on
/// x86-64), on the AVX2 loop (where the CPU has it) and on the portable
/// `wide` path that other targets run.
fn runners<A: Element>() -> Vec<(&'static str, Runner<A>)> {
    vec![
        ("simd", |u, c| step(Kernel::Simd, u, c)),
        ("parallel", |u, c| step(Kernel::Parallel, u, c)),
        ("simd portable", |u, c| {
            step_many_portable(Kernel::Simd, [u], c)
        }),
        ("parallel portable", |u, c| {
            step_many_portable(Kernel::Parallel, [u], c)
        }),
        ("simd avx2", |u, c| step_many_avx2(Kernel::Simd, [u], c)),
        ("parallel avx2", |u, c| {
            step_many_avx2(Kernel::Parallel, [u], c)
        }),
    ]
}

fn bits<A: Element>(v: &[A]) -> Vec<u64> {
    v.iter().map(|x| x.bits()).collect()
}

/// Runs the reference and every runner, in place and into a new buffer, and
/// asserts identical theta and alpha bits.
fn check<A: Element>(theta: &[A], grad: &[A], alpha: &[A], cfg: &Config<A>) {
    let (mut t_ref, mut a_ref) = (theta.to_vec(), alpha.to_vec());
    scalar::step(
        Update::new(Theta::InPlace(&mut t_ref), &mut a_ref, grad),
        cfg,
    );
    for (name, run) in runners::<A>() {
        let (mut t, mut a) = (theta.to_vec(), alpha.to_vec());
        run(Update::new(Theta::InPlace(&mut t), &mut a, grad), cfg);
        assert_eq!(
            bits(&t),
            bits(&t_ref),
            "{name} in place: theta, n = {}",
            theta.len()
        );
        assert_eq!(
            bits(&a),
            bits(&a_ref),
            "{name} in place: alpha, n = {}",
            theta.len()
        );

        // Into a new buffer, with cached and streaming stores, the output
        // starting at every 4-byte offset from a 32-byte boundary.
        let n = theta.len();
        for (offset, streaming) in [(0, false), (0, true), (1, true), (3, true), (7, true)] {
            let cfg = &cfg.with_streaming_stores(streaming);
            let mut buf = metasgd_kernels::output::uninit_slice::<A>(n + offset);
            let mut a = alpha.to_vec();
            let th = Theta::Into {
                src: theta,
                dst: &mut buf[offset..],
            };
            run(Update::new(th, &mut a, grad), cfg);
            // SAFETY: every kernel writes every element of a `Theta::Into`
            // output; `buf[..offset]` is never read.
            let out: Vec<A> = buf[offset..]
                .iter()
                .map(|x| unsafe { x.assume_init() })
                .collect();
            assert_eq!(
                bits(&out),
                bits(&t_ref),
                "{name} into (offset {offset}, streaming {streaming}): theta, n = {n}"
            );
            assert_eq!(
                bits(&a),
                bits(&a_ref),
                "{name} into (offset {offset}, streaming {streaming}): alpha, n = {n}"
            );
        }
    }
}

/// Values: mostly ordinary, with special values forced in.
fn value<A: Element>() -> impl Strategy<Value = A> {
    let specials = metasgd_kernels::testdata::specials::<A>();
    prop_oneof![
        6 => (-4.0f64..4.0).prop_map(|x| A::from(x).unwrap()),
        1 => (0..specials.len()).prop_map(move |i| specials[i]),
    ]
}

fn alpha_value<A: Element>() -> impl Strategy<Value = A> {
    prop_oneof![
        3 => (1e-9f64..12.0).prop_map(|x| A::from(x).unwrap()),
        1 => value::<A>(),
    ]
}

fn alpha_lr<A: Element>() -> impl Strategy<Value = A> {
    prop_oneof![
        Just(0.0),
        Just(1e-3),
        Just(0.5),
        Just(1e3),
        Just(1e30),
        0.0f64..2.0
    ]
    .prop_map(|x| A::from(x).unwrap())
}

/// Lengths around every lane count (4 and 8), and beyond.
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..20, Just(31), Just(32), Just(33), 20usize..300]
}

/// A gradient scale as clipping sets it: 1 (none, the usual case), 0 (an
/// infinite norm) or in between.
fn grad_scale<A: Element>() -> impl Strategy<Value = A> {
    prop_oneof![2 => Just(1.0), 1 => Just(0.0), 2 => 0.0f64..1.0].prop_map(|x| A::from(x).unwrap())
}

/// Inputs and a config: `K` from 1 to 11 covers the kernels' compile-time
/// counts (1 to 8) and the form that reads `K` at run time.
fn case<A: Element>() -> impl Strategy<Value = (Vec<A>, Vec<A>, Vec<A>, Config<A>)> {
    length().prop_flat_map(|n| {
        (
            prop::collection::vec(value::<A>(), n),
            prop::collection::vec(value::<A>(), n),
            prop::collection::vec(alpha_value::<A>(), n),
            (alpha_lr::<A>(), 1usize..12, grad_scale::<A>())
                .prop_map(|(lr, k, s)| Config::new(lr, k).with_grad_scale(s)),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn f32_kernels_agree((t, g, a, cfg) in case::<f32>()) {
        check(&t, &g, &a, &cfg);
    }

    #[test]
    fn f64_kernels_agree((t, g, a, cfg) in case::<f64>()) {
        check(&t, &g, &a, &cfg);
    }
}

fn filled<A: Element>(n: usize, seed: u64) -> Vec<A> {
    metasgd_kernels::testdata::values(n, seed, 61)
}

#[test]
fn chunk_boundaries() {
    for n in [
        PAR_CHUNK - 1,
        PAR_CHUNK,
        PAR_CHUNK + 1,
        2 * PAR_CHUNK + 7,
        3 * PAR_CHUNK + 3,
    ] {
        let (t, g) = (filled::<f32>(n, 1), filled::<f32>(n, 2));
        let a: Vec<f32> = filled::<f32>(n, 3).iter().map(|x| x.abs()).collect();
        check(&t, &g, &a, &Config::new(0.5, 5));
        let (t, g) = (filled::<f64>(n, 4), filled::<f64>(n, 5));
        check(
            &t,
            &g,
            &a.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
            &Config::new(1e-3, 3),
        );
    }
}

#[test]
fn thread_count_does_not_change_bits() {
    let n = 5 * PAR_CHUNK + 13;
    let (t0, g) = (filled::<f32>(n, 7), filled::<f32>(n, 8));
    let a0: Vec<f32> = filled::<f32>(n, 9).iter().map(|x| x.abs()).collect();
    let cfg = Config::new(0.25, 5);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let (mut t, mut a) = (t0.clone(), a0.clone());
        pool.install(|| {
            // Two tensors in one pass, cut at an odd point.
            let (t1, t2) = t.split_at_mut(n / 3);
            let (a1, a2) = a.split_at_mut(n / 3);
            let (g1, g2) = g.split_at(n / 3);
            let ups = [
                Update::new(Theta::InPlace(t1), a1, g1),
                Update::new(Theta::InPlace(t2), a2, g2),
            ];
            metasgd_kernels::step_many(Kernel::Parallel, ups, &cfg);
        });
        (bits(&t), bits(&a))
    };
    let one = run(1);
    for threads in [2, 3, 4] {
        assert_eq!(run(threads), one, "{threads} threads");
    }
}

#[test]
fn parallel_runs_on_the_callers_pool() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    assert_eq!(
        pool.install(metasgd_kernels::par::current_num_threads),
        if cfg!(feature = "parallel") { 3 } else { 1 }
    );
}

/// Signed zeros in every operand that can produce a zero `delta`, with every
/// kind of `alpha_lr`, for each `K`: the case the accumulator shortcut in
/// `simd/metasgd.rs` argues about.
#[test]
fn signed_zero_deltas() {
    fn run<A: Element>() {
        let z = [A::zero(), -A::zero()];
        let values = [z[0], z[1], A::one(), -A::one(), A::LO, A::HI, A::nan()];
        let mut theta = Vec::new();
        let mut grad = Vec::new();
        let mut alpha = Vec::new();
        for &a in &values {
            for &g in &values {
                for &t in &z {
                    alpha.push(a);
                    grad.push(g);
                    theta.push(t);
                }
            }
        }
        let lrs = [
            0.0,
            -0.0,
            1e-3,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for lr in lrs {
            for k in 1..=9 {
                check(&theta, &grad, &alpha, &Config::new(A::from(lr).unwrap(), k));
            }
        }
    }
    run::<f32>();
    run::<f64>();
}

/// On a CPU with AVX2 the SIMD kernel must run the AVX2 loop (a default
/// build finds it at run time); elsewhere the portable path.
#[test]
fn simd_level_follows_the_cpu() {
    use metasgd_kernels::{SimdLevel, simd_level};
    let level = simd_level();
    if !cfg!(feature = "simd") {
        assert_eq!(level, SimdLevel::Scalar);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        let want = if cfg!(target_feature = "avx512f") {
            SimdLevel::Avx512Compiled
        } else {
            SimdLevel::Avx512Runtime
        };
        assert_eq!(level, want);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        let want = if cfg!(target_feature = "avx2") {
            SimdLevel::Avx2Compiled
        } else {
            SimdLevel::Avx2Runtime
        };
        assert_eq!(level, want);
        return;
    }
    assert_eq!(level, SimdLevel::Wide);
}

/// Many tensors of mixed sizes in one parallel pass (more than one stack
/// batch of the scheduler), against the scalar reference.
#[test]
fn long_lists_in_one_parallel_pass() {
    let sizes: Vec<usize> = (0..150)
        .map(|i| (i * 7919) % (3 * PAR_CHUNK) + i % 3)
        .collect();
    let cfg = Config::new(0.01_f32, 5);
    let grads: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| filled(n, i as u64))
        .collect();
    let theta0: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| filled(n, 1000 + i as u64))
        .collect();
    let alpha0: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.01; n]).collect();
    let run = |threads: usize, kernel: Kernel| {
        let (mut t, mut a) = (theta0.clone(), alpha0.clone());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let ups = t
                .iter_mut()
                .zip(a.iter_mut())
                .zip(&grads)
                .map(|((t, a), g)| Update::new(Theta::InPlace(t), a, g));
            metasgd_kernels::step_many(kernel, ups, &cfg);
        });
        (
            t.iter().map(|v| bits(v)).collect::<Vec<_>>(),
            a.iter().map(|v| bits(v)).collect::<Vec<_>>(),
        )
    };
    let want = run(1, Kernel::Scalar);
    for threads in [1, 2, 3] {
        assert_eq!(run(threads, Kernel::Parallel), want, "{threads} threads");
    }
}
