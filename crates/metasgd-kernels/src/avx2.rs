//! The AVX2 path, for every x86-64 CPU with AVX2: found at run time in a
//! default build, compiled in with `-C target-cpu=native`.
//!
//! The loop is the shared `pack::step` over `__m256`/`__m256d` packs, compiled
//! inside a `#[target_feature(enable = "avx2")]` function that [`step`] enters
//! only when [`simd_level`] has confirmed AVX2. Only add, subtract, multiply,
//! min and max (in the operand order that matches the contract's
//! compare-and-select) are used; nothing is fused, so the bits equal the
//! scalar reference.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use crate::pack::{self, Pack};
use crate::{Config, Element, SimdLevel, Update, simd_level};

/// Eight `f32` lanes in one AVX register.
#[derive(Clone, Copy)]
pub struct F32x8(__m256);

/// Four `f64` lanes in one AVX register.
#[derive(Clone, Copy)]
pub struct F64x4(__m256d);

// SAFETY (every `unsafe` block in these impls): the pack types are private to
// this crate and only built inside `step_avx2`, a `#[target_feature(enable =
// "avx2")]` function that `step` calls after checking `simd_level()` (a cached
// `is_x86_feature_detected!("avx2")`); once inlined there, each intrinsic runs
// on a CPU with AVX. Loads and stores go through slices re-sliced to exactly
// `LANES` elements, so they stay in bounds.
macro_rules! avx_pack {
    ($pack:ident, $a:ty, $n:literal, $set1:ident, $loadu:ident, $storeu:ident, $stream:ident,
     $add:ident, $sub:ident, $mul:ident, $min:ident, $max:ident) => {
        impl Pack<$a> for $pack {
            const LANES: usize = $n;
            #[inline(always)]
            fn splat(x: $a) -> Self {
                // SAFETY: see the note above the macro.
                $pack(unsafe { $set1(x) })
            }
            #[inline(always)]
            fn load(s: &[$a]) -> Self {
                let s = &s[..$n];
                // SAFETY: see the note above the macro; `s` holds `$n` elements.
                $pack(unsafe { $loadu(s.as_ptr()) })
            }
            #[inline(always)]
            fn store(self, s: &mut [$a]) {
                let s = &mut s[..$n];
                // SAFETY: see the note above the macro; `s` holds `$n` elements.
                unsafe { $storeu(s.as_mut_ptr(), self.0) }
            }
            #[inline(always)]
            fn store_uninit(self, s: &mut [MaybeUninit<$a>]) {
                let s = &mut s[..$n];
                // SAFETY: see the note above the macro; `s` holds `$n`
                // elements, and `MaybeUninit<$a>` has the layout of `$a`.
                unsafe { $storeu(s.as_mut_ptr().cast::<$a>(), self.0) }
            }
            #[inline(always)]
            fn store_stream(self, s: &mut [MaybeUninit<$a>]) {
                let s = &mut s[..$n];
                let p = s.as_mut_ptr().cast::<$a>();
                if p as usize % pack::STREAM_ALIGN == 0 {
                    // SAFETY: see the note above the macro; `s` holds `$n`
                    // elements and `p` is 32-byte aligned, as the
                    // non-temporal store requires.
                    unsafe { $stream(p, self.0) }
                } else {
                    self.store_uninit(s)
                }
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                // SAFETY: see the note above the macro.
                $pack(unsafe { $add(self.0, o.0) })
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                // SAFETY: see the note above the macro.
                $pack(unsafe { $sub(self.0, o.0) })
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                // SAFETY: see the note above the macro.
                $pack(unsafe { $mul(self.0, o.0) })
            }
            #[inline(always)]
            fn clamp(self) -> Self {
                // SAFETY: see the note above the macro. `min(hi, x)` is
                // `hi < x ? hi : x` and `max(lo, y)` is `lo > y ? lo : y`: the
                // contract's compare-and-select, which returns the NaN lane
                // (the second operand) unchanged.
                unsafe {
                    let below_hi = $min($set1(<$a>::HI), self.0);
                    $pack($max($set1(<$a>::LO), below_hi))
                }
            }
        }
    };
}

avx_pack!(
    F32x8,
    f32,
    8,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_stream_ps,
    _mm256_add_ps,
    _mm256_sub_ps,
    _mm256_mul_ps,
    _mm256_min_ps,
    _mm256_max_ps
);
avx_pack!(
    F64x4,
    f64,
    4,
    _mm256_set1_pd,
    _mm256_loadu_pd,
    _mm256_storeu_pd,
    _mm256_stream_pd,
    _mm256_add_pd,
    _mm256_sub_pd,
    _mm256_mul_pd,
    _mm256_min_pd,
    _mm256_max_pd
);

#[target_feature(enable = "avx2")]
fn step_avx2<A: Element>(u: Update<'_, A>, cfg: &Config<A>) {
    pack::step::<A, A::Avx2>(u, cfg);
    if cfg.streaming_stores() {
        // Non-temporal stores are weakly ordered: fence them before whoever
        // reads the output (another thread, after rayon's join) can look.
        _mm_sfence();
    }
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
