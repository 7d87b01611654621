//! The AVX2 path for builds whose target does not enable AVX2.
//!
//! The loop is the shared `pack::step` over plain lane arrays; compiled inside a
//! `#[target_feature(enable = "avx2")]` function, each array operation becomes
//! one 256-bit instruction. Rust never contracts `a * b + c` into an FMA, so
//! the bits equal the scalar reference.

use crate::pack::{self, Pack};
use crate::{Config, Element, SimdLevel, Update, scalar, simd_level};

/// `N` lanes of `A` as a plain array.
#[derive(Clone, Copy)]
pub struct Lanes<A, const N: usize>([A; N]);

impl<A: Element, const N: usize> Pack<A> for Lanes<A, N> {
    const LANES: usize = N;
    #[inline(always)]
    fn splat(x: A) -> Self {
        Lanes([x; N])
    }
    #[inline(always)]
    fn load(s: &[A]) -> Self {
        Lanes(s[..N].try_into().unwrap())
    }
    #[inline(always)]
    fn store(self, s: &mut [A]) {
        s[..N].copy_from_slice(&self.0);
    }
    #[inline(always)]
    fn add(mut self, o: Self) -> Self {
        for i in 0..N {
            self.0[i] = self.0[i] + o.0[i];
        }
        self
    }
    #[inline(always)]
    fn sub(mut self, o: Self) -> Self {
        for i in 0..N {
            self.0[i] = self.0[i] - o.0[i];
        }
        self
    }
    #[inline(always)]
    fn mul(mut self, o: Self) -> Self {
        for i in 0..N {
            self.0[i] = self.0[i] * o.0[i];
        }
        self
    }
    #[inline(always)]
    fn clamp(mut self) -> Self {
        for i in 0..N {
            self.0[i] = scalar::clamp(self.0[i]);
        }
        self
    }
}

#[target_feature(enable = "avx2")]
fn step_avx2<A: Element>(u: Update<'_, A>, cfg: &Config<A>) {
    pack::step::<A, A::Avx2>(u, cfg)
}

/// Runs the AVX2 kernel.
///
/// # Panics
/// If the CPU has no AVX2 (check [`simd_level`] first).
pub fn step<A: Element>(u: Update<'_, A>, cfg: &Config<A>) {
    assert!(
        matches!(
            simd_level(),
            SimdLevel::Avx2Runtime | SimdLevel::Avx2Compiled
        ),
        "AVX2 kernel called on a CPU without AVX2"
    );
    // SAFETY: the assert above (a cached `is_x86_feature_detected!("avx2")`,
    // or AVX2 enabled at compile time) guarantees the CPU runs AVX2.
    unsafe { step_avx2(u, cfg) }
}
