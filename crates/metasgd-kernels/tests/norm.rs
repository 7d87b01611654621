//! The squared norm of gradient clipping: every kernel, instruction set and
//! thread count gives the bits of the fixed order written out here.

use metasgd_kernels::norm::{NORM_BLOCK, squared_norm, squared_norm_portable};
use metasgd_kernels::{Element, Kernel};
use proptest::prelude::*;

/// The fixed order, written out: blocks, eight lanes, the pairwise tree.
fn oracle<A: Element>(x: &[A]) -> A {
    let mut total = A::zero();
    for block in x.chunks(NORM_BLOCK) {
        let mut l = [A::zero(); 8];
        for (i, &v) in block.iter().enumerate() {
            l[i % 8] = l[i % 8] + v * v;
        }
        total = total + (((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])));
    }
    total
}

fn check<A: Element>(x: &[A]) {
    let want = oracle(x).bits();
    for kernel in [Kernel::Scalar, Kernel::Simd, Kernel::Parallel] {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (got, portable) =
                pool.install(|| (squared_norm(kernel, x), squared_norm_portable(kernel, x)));
            assert_eq!(got.bits(), want, "{kernel:?} {threads}T n={}", x.len());
            assert_eq!(
                portable.bits(),
                want,
                "portable {kernel:?} {threads}T n={}",
                x.len()
            );
        }
    }
}

fn values<A: Element>(n: usize, seed: u64) -> Vec<A> {
    metasgd_kernels::testdata::values(n, seed, 0)
}

#[test]
fn block_and_lane_boundaries() {
    for n in [
        0,
        1,
        3,
        4,
        7,
        8,
        9,
        15,
        17,
        NORM_BLOCK - 1,
        NORM_BLOCK,
        NORM_BLOCK + 5,
        3 * NORM_BLOCK + 11,
    ] {
        check(&values::<f32>(n, n as u64));
        check(&values::<f64>(n, n as u64 + 1));
    }
}

/// Past the parallel threshold, blocks are computed on the pool: the same
/// bits on 1, 2 and 3 threads.
#[test]
fn parallel_blocks_add_in_order() {
    let n = 20 * NORM_BLOCK + 13;
    check(&values::<f32>(n, 9));
    check(&values::<f64>(n, 10));
}

#[test]
fn non_finite_values_propagate() {
    let mut x = values::<f32>(100, 3);
    x[50] = f32::INFINITY;
    assert_eq!(squared_norm(Kernel::Simd, &x), f32::INFINITY);
    x[60] = f32::NAN;
    assert!(squared_norm(Kernel::Simd, &x).is_nan());
    check(&x);
    // Squares that overflow although every value is finite.
    check(&[1e30_f32; 20]);
    assert_eq!(squared_norm(Kernel::Simd, &[1e30_f32; 20]), f32::INFINITY);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn random_lengths_and_values(v in prop::collection::vec(-1e3f64..1e3, 0..600)) {
        check(&v);
        check(&v.iter().map(|&x| x as f32).collect::<Vec<_>>());
    }
}
