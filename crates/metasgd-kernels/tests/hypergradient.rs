//! The hypergradient rule ([`RateRule::Hypergradient`]) on every kernel
//! against the scalar reference, compared with `to_bits()`: parameters,
//! rates and the stored previous gradient, in place and into a new buffer,
//! on every instruction set, thread count and chunk boundary.

use metasgd_kernels::par::PAR_CHUNK;
use metasgd_kernels::{
    Config, Element, Kernel, RateRule, Theta, Update, scalar, step_many, step_many_avx2,
    step_many_portable,
};
use proptest::prelude::*;

type Runner<A> = fn(Update<'_, A>, &Config<A>);

fn runners<A: Element>() -> Vec<(&'static str, Runner<A>)> {
    vec![
        ("scalar", |u, c| step_many(Kernel::Scalar, [u], c)),
        ("simd", |u, c| step_many(Kernel::Simd, [u], c)),
        ("parallel", |u, c| step_many(Kernel::Parallel, [u], c)),
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

/// One tensor's inputs: theta, g, alpha, prev.
type Case<A> = (Vec<A>, Vec<A>, Vec<A>, Vec<A>);

/// The reference: the rule's per-element formula, written out here.
fn reference<A: Element>((t, g, a, p): &Case<A>, cfg: &Config<A>) -> [Vec<u64>; 3] {
    let RateRule::Hypergradient {
        up,
        down,
        smoothing,
    } = cfg.rule()
    else {
        panic!("a hypergradient config")
    };
    let (mut t, mut a, mut p) = (t.clone(), a.clone(), p.clone());
    for i in 0..t.len() {
        let h = g[i] * p[i];
        let f = if h > A::zero() {
            up
        } else if h < A::zero() {
            down
        } else {
            A::one()
        };
        a[i] = scalar::clamp(a[i] * f);
        let d = a[i] * g[i];
        for _ in 0..cfg.inner_steps() {
            t[i] = t[i] - d;
        }
        p[i] = if smoothing == A::zero() {
            g[i]
        } else {
            p[i] * smoothing + g[i] * (A::one() - smoothing)
        };
    }
    [bits(&t), bits(&a), bits(&p)]
}

fn check<A: Element>(case: &Case<A>, cfg: &Config<A>) {
    let want = reference(case, cfg);
    let (theta, grad, alpha, prev) = case;
    let n = theta.len();
    for (name, run) in runners::<A>() {
        let (mut t, mut a, mut p) = (theta.clone(), alpha.clone(), prev.clone());
        run(
            Update::new(Theta::InPlace(&mut t), &mut a, grad).with_prev(&mut p),
            cfg,
        );
        assert_eq!(
            [bits(&t), bits(&a), bits(&p)],
            want,
            "{name} in place, n = {n}"
        );
        for (offset, streaming) in [(0, false), (0, true), (1, true), (3, true)] {
            let cfg = &cfg.with_streaming_stores(streaming);
            let mut buf = metasgd_kernels::output::uninit_slice::<A>(n + offset);
            let (mut a, mut p) = (alpha.clone(), prev.clone());
            let th = Theta::Into {
                src: theta,
                dst: &mut buf[offset..],
            };
            run(Update::new(th, &mut a, grad).with_prev(&mut p), cfg);
            // SAFETY: every kernel writes every element of a `Theta::Into` output.
            let out: Vec<A> = buf[offset..]
                .iter()
                .map(|x| unsafe { x.assume_init() })
                .collect();
            assert_eq!(
                [bits(&out), bits(&a), bits(&p)],
                want,
                "{name} into (offset {offset}, streaming {streaming}), n = {n}"
            );
        }
    }
}

fn value<A: Element>() -> impl Strategy<Value = A> {
    let specials = metasgd_kernels::testdata::specials::<A>();
    prop_oneof![
        6 => (-4.0f64..4.0).prop_map(|x| A::from(x).unwrap()),
        1 => (0..specials.len()).prop_map(move |i| specials[i]),
    ]
}

fn case<A: Element>() -> impl Strategy<Value = (Case<A>, (A, A, A), usize)> {
    let n = prop_oneof![0usize..20, Just(31), Just(32), Just(33), 20usize..300];
    n.prop_flat_map(|n| {
        let v = || prop::collection::vec(value::<A>(), n);
        let alpha = prop::collection::vec((1e-9f64..12.0).prop_map(|x| A::from(x).unwrap()), n);
        (
            (v(), v(), alpha, v()),
            (
                (1.0f64..3.0).prop_map(|x| A::from(x).unwrap()),
                (0.01f64..1.0).prop_map(|x| A::from(x).unwrap()),
                prop_oneof![Just(0.0), Just(0.9), 0.0f64..1.0].prop_map(|x| A::from(x).unwrap()),
            ),
            1usize..6,
        )
    })
}

fn config<A: Element>((up, down, smoothing): (A, A, A), k: usize) -> Config<A> {
    let rule = RateRule::Hypergradient {
        up,
        down,
        smoothing,
    };
    Config::new(A::from(0.001).unwrap(), k).with_rule(rule)
}

fn factors<A: Element>(up: f64, down: f64, smoothing: f64) -> (A, A, A) {
    let a = |x: f64| A::from(x).unwrap();
    (a(up), a(down), a(smoothing))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn f32_kernels_agree((c, f, k) in case::<f32>()) {
        check(&c, &config(f, k));
    }

    #[test]
    fn f64_kernels_agree((c, f, k) in case::<f64>()) {
        check(&c, &config(f, k));
    }
}

fn filled<A: Element>(n: usize, seed: u64) -> Vec<A> {
    metasgd_kernels::testdata::values(n, seed, 61)
}

fn filled_case<A: Element>(n: usize, seed: u64) -> Case<A> {
    let a = filled::<A>(n, seed + 2).iter().map(|x| x.abs()).collect();
    (filled(n, seed), filled(n, seed + 1), a, filled(n, seed + 3))
}

/// Signed zeros, NaN and infinities in the gradient and the previous
/// gradient: `h` is then a zero, NaN or infinite, and the factor must be 1,
/// `up` or `down` exactly as the scalar sign test says.
#[test]
fn special_products() {
    fn run<A: Element>() {
        let v = [
            A::zero(),
            -A::zero(),
            A::one(),
            -A::one(),
            A::nan(),
            A::infinity(),
            A::neg_infinity(),
            A::min_positive_value(),
        ];
        let mut case: Case<A> = Default::default();
        for &g in &v {
            for &p in &v {
                for a in [A::LO, A::one(), A::HI] {
                    case.0.push(A::one());
                    case.1.push(g);
                    case.2.push(a);
                    case.3.push(p);
                }
            }
        }
        for k in 1..=3 {
            for smoothing in [0.0, 0.5] {
                check(&case, &config(factors(1.5, 0.5, smoothing), k));
            }
        }
    }
    run::<f32>();
    run::<f64>();
}

#[test]
fn chunk_boundaries_and_thread_counts() {
    for n in [PAR_CHUNK - 1, PAR_CHUNK + 1, 3 * PAR_CHUNK + 3] {
        check(
            &filled_case::<f32>(n, 1),
            &config(factors(1.1, 0.7, 0.0), 1),
        );
        check(
            &filled_case::<f64>(n, 5),
            &config(factors(1.1, 0.7, 0.9), 2),
        );
    }
    let n = 5 * PAR_CHUNK + 13;
    let c = filled_case::<f32>(n, 9);
    let cfg = config(factors(1.05, 0.9, 0.9), 1);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let (mut t, mut a, mut p) = (c.0.clone(), c.2.clone(), c.3.clone());
        pool.install(|| {
            let (t1, t2) = t.split_at_mut(n / 3);
            let (a1, a2) = a.split_at_mut(n / 3);
            let (p1, p2) = p.split_at_mut(n / 3);
            let (g1, g2) = c.1.split_at(n / 3);
            let ups = [
                Update::new(Theta::InPlace(t1), a1, g1).with_prev(p1),
                Update::new(Theta::InPlace(t2), a2, g2).with_prev(p2),
            ];
            step_many(Kernel::Parallel, ups, &cfg);
        });
        [bits(&t), bits(&a), bits(&p)]
    };
    let want = reference(&c, &cfg);
    for threads in [1, 2, 3] {
        assert_eq!(run(threads), want, "{threads} threads");
    }
}
