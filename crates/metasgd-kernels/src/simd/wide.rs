//! `wide`'s vectors as [`Pack`]s: the portable SIMD path (SSE2 in a default
//! x86-64 build, NEON on aarch64, plain arrays elsewhere). `wide` picks its
//! instructions when it is compiled, so on x86-64 the AVX2 path
//! (`avx2.rs`) replaces it wherever the CPU has AVX2.

use core::mem::MaybeUninit;

use wide::{f32x8, f64x4};

use super::pack::Pack;
use crate::Element;

macro_rules! wide_pack {
    ($v:ty, $a:ty, $n:literal) => {
        impl Pack<$a> for $v {
            type Token = ();
            const LANES: usize = $n;
            #[inline(always)]
            fn splat((): (), x: $a) -> Self {
                <$v>::splat(x)
            }
            #[inline(always)]
            fn load((): (), s: &[$a]) -> Self {
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
            fn div(self, o: Self) -> Self {
                self / o
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$v>::sqrt(self)
            }
            #[inline(always)]
            fn clamp(self) -> Self {
                let (lo, hi) = (<$v>::splat(<$a>::LO), <$v>::splat(<$a>::HI));
                let above = self.simd_gt(hi).select(hi, self);
                self.simd_lt(lo).select(lo, above)
            }
            #[inline(always)]
            fn by_sign(self, pos: Self, neg: Self, other: Self) -> Self {
                let zero = <$v>::splat(0.0);
                let below = self.simd_lt(zero).select(neg, other);
                self.simd_gt(zero).select(pos, below)
            }
        }
    };
}
wide_pack!(f32x8, f32, 8);
wide_pack!(f64x4, f64, 4);
