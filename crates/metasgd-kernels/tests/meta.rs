//! The meta-learning kernels against their scalar references, bit for bit,
//! on the detected instruction set (AVX2 here) and on the portable path.

use metasgd_kernels::Element;
use metasgd_kernels::meta::{self, AdamStep, reference};
use proptest::prelude::*;

fn bits<A: Element>(v: &[A]) -> Vec<u64> {
    v.iter().map(|x| x.bits()).collect()
}

fn value<A: Element>() -> impl Strategy<Value = A> {
    let specials = metasgd_kernels::testdata::specials::<A>();
    prop_oneof![
        8 => (-4.0f64..4.0).prop_map(|x| A::from(x).unwrap()),
        1 => (0..specials.len()).prop_map(move |i| specials[i]),
    ]
}

fn vectors<A: Element>(k: usize) -> impl Strategy<Value = Vec<Vec<A>>> {
    prop_oneof![0usize..20, Just(31), Just(32), Just(33), 20usize..200]
        .prop_flat_map(move |n| prop::collection::vec(prop::collection::vec(value::<A>(), n), k))
}

/// Adam's constants at step `t`, as the meta-learner computes them.
fn adam_step<A: Element>(t: u32) -> AdamStep<A> {
    let a = |x: f64| A::from(x).unwrap();
    let (beta1, beta2) = (a(0.9), a(0.999));
    let t = i32::try_from(t).unwrap();
    AdamStep {
        lr: a(1e-3),
        beta1,
        beta2,
        eps: a(1e-8),
        bias1: A::one() - beta1.powi(t),
        bias2: A::one() - beta2.powi(t),
    }
}

/// `out = f(a, b, c)`, element-wise.
type Ternary<A> = fn(&mut [A], &[A], &[A], &[A]);
/// One Adam update.
type AdamFn<A> = fn(&mut [A], &mut [A], &mut [A], &[A], &AdamStep<A>);

/// Every operation of one instruction set, as function pointers.
struct Ops<A> {
    adapt: Ternary<A>,
    alpha_grad: fn(&mut [A], &[A], &[A]),
    mul: fn(&mut [A], &[A], &[A]),
    sub_assign: fn(&mut [A], &[A]),
    adam: AdamFn<A>,
    sgd: fn(&mut [A], &[A], A),
}

fn detected<A: Element>() -> Ops<A> {
    Ops {
        adapt: meta::adapt,
        alpha_grad: meta::alpha_grad,
        mul: meta::mul,
        sub_assign: meta::sub_assign,
        adam: meta::adam,
        sgd: meta::sgd,
    }
}

fn portable<A: Element>() -> Ops<A> {
    Ops {
        adapt: meta::portable::adapt,
        alpha_grad: meta::portable::alpha_grad,
        mul: meta::portable::mul,
        sub_assign: meta::portable::sub_assign,
        adam: meta::portable::adam,
        sgd: meta::portable::sgd,
    }
}

/// The AVX2 loop where the CPU has it (what AVX2-only CPUs run).
fn avx2<A: Element>() -> Ops<A> {
    Ops {
        adapt: meta::avx2::adapt,
        alpha_grad: meta::avx2::alpha_grad,
        mul: meta::avx2::mul,
        sub_assign: meta::avx2::sub_assign,
        adam: meta::avx2::adam,
        sgd: meta::avx2::sgd,
    }
}

fn check<A: Element>(v: &[Vec<A>], t: u32) {
    check_ops(detected(), v, t);
    check_ops(avx2(), v, t);
    check_ops(portable(), v, t);
}

fn check_ops<A: Element>(ops: Ops<A>, v: &[Vec<A>], t: u32) {
    let n = v[0].len();
    let (theta, alpha, g, lambda) = (&v[0], &v[1], &v[2], &v[3]);

    let mut out = vec![A::zero(); n];
    (ops.adapt)(&mut out, theta, alpha, g);
    let want: Vec<A> = (0..n)
        .map(|i| reference::adapt(theta[i], alpha[i], g[i]))
        .collect();
    assert_eq!(bits(&out), bits(&want), "adapt");

    let mut d = v[4].clone();
    (ops.alpha_grad)(&mut d, g, lambda);
    let want: Vec<A> = (0..n)
        .map(|i| reference::alpha_grad(v[4][i], g[i], lambda[i]))
        .collect();
    assert_eq!(bits(&d), bits(&want), "alpha_grad");

    (ops.mul)(&mut out, alpha, lambda);
    let want: Vec<A> = (0..n)
        .map(|i| reference::mul(alpha[i], lambda[i]))
        .collect();
    assert_eq!(bits(&out), bits(&want), "mul");

    let mut l = lambda.clone();
    (ops.sub_assign)(&mut l, g);
    let want: Vec<A> = (0..n).map(|i| reference::sub(lambda[i], g[i])).collect();
    assert_eq!(bits(&l), bits(&want), "sub_assign");

    let c = adam_step::<A>(t);
    let (mut th, mut m) = (theta.clone(), alpha.clone());
    let mut s: Vec<A> = v[4].iter().map(|x| x.abs()).collect();
    let s0 = s.clone();
    (ops.adam)(&mut th, &mut m, &mut s, g, &c);
    for i in 0..n {
        let (wt, wm, wv) = reference::adam(theta[i], alpha[i], s0[i], g[i], &c);
        assert_eq!(
            [th[i].bits(), m[i].bits(), s[i].bits()],
            [wt.bits(), wm.bits(), wv.bits()],
            "adam at {i}"
        );
    }

    let mut th = theta.clone();
    let lr = lambda.first().copied().unwrap_or(A::one());
    (ops.sgd)(&mut th, g, lr);
    let want: Vec<A> = (0..n).map(|i| reference::sgd(theta[i], g[i], lr)).collect();
    assert_eq!(bits(&th), bits(&want), "sgd");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn f32_meta_kernels_agree(v in vectors::<f32>(5), t in 1u32..2000) {
        check(&v, t);
    }

    #[test]
    fn f64_meta_kernels_agree(v in vectors::<f64>(5), t in 1u32..2000) {
        check(&v, t);
    }
}

#[test]
fn adam_bias_corrections() {
    let c = adam_step::<f64>(1);
    assert_eq!(c.bias1.to_bits(), (1.0_f64 - 0.9).to_bits());
    assert_eq!(c.bias2.to_bits(), (1.0_f64 - 0.999).to_bits());
    // The first update moves by about lr in the gradient's direction.
    let (mut th, mut m, mut v) = ([1.0_f64], [0.0], [0.0]);
    meta::adam(&mut th, &mut m, &mut v, &[0.5], &c);
    assert!((th[0] - (1.0 - 1e-3)).abs() < 1e-9, "{}", th[0]);
}
