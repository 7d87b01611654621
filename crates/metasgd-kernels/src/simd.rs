//! The SIMD kernel: `wide` vectors, with an AVX2 path chosen at run time.
//!
//! `wide` picks its instructions when it is compiled: in a default x86-64
//! build its `f32x8` is two SSE halves. [`step`] therefore checks the CPU once
//! (see [`crate::simd_level`]) and runs `avx2.rs` wherever AVX2 exists, so a
//! default build and a `-C target-cpu=native` build run the same loop; `wide`
//! serves every other target (SSE2, NEON, ...).

use core::mem::MaybeUninit;

use wide::{f32x8, f64x4};

use crate::pack::{self, Pack};
use crate::{Config, Element, SimdLevel, Update, simd_level};

/// Whether this build has the SIMD kernel.
pub const AVAILABLE: bool = true;

macro_rules! wide_pack {
    ($v:ty, $a:ty, $n:literal) => {
        impl Pack<$a> for $v {
            const LANES: usize = $n;
            #[inline(always)]
            fn splat(x: $a) -> Self {
                <$v>::splat(x)
            }
            #[inline(always)]
            fn load(s: &[$a]) -> Self {
                <$v>::new(s[..$n].try_into().unwrap())
            }
            #[inline(always)]
            fn store(self, s: &mut [$a]) {
                s[..$n].copy_from_slice(self.as_array());
            }
            #[inline(always)]
            fn store_uninit(self, s: &mut [MaybeUninit<$a>]) {
                for (d, &x) in s[..$n].iter_mut().zip(self.as_array()) {
                    d.write(x);
                }
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self + o
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self - o
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self * o
            }
            #[inline(always)]
            fn clamp(self) -> Self {
                let (lo, hi) = (<$v>::splat(<$a>::LO), <$v>::splat(<$a>::HI));
                let above = self.simd_gt(hi).select(hi, self);
                self.simd_lt(lo).select(lo, above)
            }
        }
    };
}
wide_pack!(f32x8, f32, 8);
wide_pack!(f64x4, f64, 4);

/// The `wide` kernel with the instruction set chosen at compile time.
pub fn step_wide<A: Element>(u: Update<'_, A>, cfg: &Config<A>) {
    pack::step::<A, A::Wide>(u, cfg)
}

/// The best SIMD kernel for this CPU (see [`crate::simd_level`]).
pub fn step<A: Element>(u: Update<'_, A>, cfg: &Config<A>) {
    match simd_level() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2Runtime | SimdLevel::Avx2Compiled => crate::avx2::step(u, cfg),
        _ => step_wide(u, cfg),
    }
}
