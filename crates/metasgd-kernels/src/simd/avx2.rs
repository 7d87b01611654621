//! The AVX2 path: [`Avx2`], the proof that the CPU has AVX2, and the AVX
//! registers as [`Pack`]s.
//!
//! `Avx2::try_new` is the one place that asks the CPU (once per process; not
//! at all in a build that targets AVX2). Holding the token is the proof:
//! [`Avx2::run`] enters the loop compiled with `#[target_feature(enable =
//! "avx2")]`, and packs can only be made with the token. Only add, subtract,
//! multiply, min and max (in the operand order that matches the contract's
//! compare-and-select), compares and blends are used; nothing is fused, so the bits equal the
//! scalar reference.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

use super::WithPacks;
use super::pack::{Pack, STREAM_ALIGN};
use crate::Element;

/// Proof that this CPU runs AVX2: only [`Avx2::try_new`] makes one.
#[derive(Clone, Copy, Debug)]
pub struct Avx2 {
    _private: (),
}

impl Avx2 {
    /// The token, if this CPU has AVX2. The answer is cached: the CPU is asked once.
    #[inline]
    pub(crate) fn try_new() -> Option<Self> {
        if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
            return Some(Self { _private: () });
        }
        // 0: not yet asked, 1: no AVX2, 2: AVX2.
        static CACHE: AtomicU8 = AtomicU8::new(0);
        let has = match CACHE.load(Ordering::Relaxed) {
            0 => {
                let has =
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
                CACHE.store(if has { 2 } else { 1 }, Ordering::Relaxed);
                has
            }
            known => known == 2,
        };
        has.then_some(Self { _private: () })
    }

    /// Runs `op` in AVX registers.
    #[inline]
    pub(crate) fn dispatch<A: Element, O: WithPacks<A>>(self, op: O) {
        // SAFETY: `self` exists only if `try_new` found AVX2 on this CPU.
        unsafe { dispatch_avx2::<A, O>(self, op) }
    }
}

/// Every operation's loop, compiled for AVX2 (the operation is inlined into it).
#[target_feature(enable = "avx2,fma")]
fn dispatch_avx2<A: Element, O: WithPacks<A>>(tok: Avx2, op: O) {
    op.packs::<A::Avx2>(tok);
}

/// Eight `f32` lanes in one AVX register.
#[derive(Clone, Copy)]
pub struct F32x8(__m256);

/// Four `f64` lanes in one AVX register.
#[derive(Clone, Copy)]
pub struct F64x4(__m256d);

// SAFETY (every `unsafe` block in these impls): a pack is built only by
// `splat` or `load`, which take an [`Avx2`] token, and the token exists only
// where `Avx2::try_new` saw AVX2 on this CPU; so every intrinsic below runs on
// a CPU with AVX2. Loads and stores go through slices re-sliced to exactly
// `LANES` elements, so they stay in bounds.
macro_rules! avx_pack {
    ($pack:ident, $a:ty, $n:literal, $set1:ident, $loadu:ident, $storeu:ident, $stream:ident,
     $add:ident, $sub:ident, $mul:ident, $fmadd:ident, $div:ident, $sqrt:ident, $min:ident, $max:ident,
     $cmp:ident, $blendv:ident, $zero:ident) => {
        impl Pack<$a> for $pack {
            type Token = Avx2;
            const LANES: usize = $n;
            #[inline(always)]
            fn splat(_: Avx2, x: $a) -> Self {
                // SAFETY: see the note above the macro.
                $pack(unsafe { $set1(x) })
            }
            #[inline(always)]
            fn load(_: Avx2, s: &[$a]) -> Self {
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
                if p as usize % STREAM_ALIGN == 0 {
                    // SAFETY: see the note above the macro; `s` holds `$n`
                    // elements and `p` is 32-byte aligned, as the
                    // non-temporal store requires.
                    unsafe { $stream(p, self.0) }
                } else {
                    self.store_uninit(s)
                }
            }
            #[inline(always)]
            fn fence() {
                // SAFETY: see the note above the macro (SSE is part of x86-64).
                // Non-temporal stores are weakly ordered: this orders them.
                unsafe { _mm_sfence() }
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                // SAFETY: see the note above the macro.
                $pack(unsafe { $add(self.0, o.0) })
            }
            #[inline(always)]
            fn add_on_fma(self, one: Self, o: Self) -> Self {
                // SAFETY: see the note above the macro. `self * 1` is exact,
                // so the one rounding of `self * 1 + o` is that of `self + o`.
                $pack(unsafe { $fmadd(self.0, one.0, o.0) })
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
            fn div(self, o: Self) -> Self {
                // SAFETY: see the note above the macro.
                $pack(unsafe { $div(self.0, o.0) })
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                // SAFETY: see the note above the macro.
                $pack(unsafe { $sqrt(self.0) })
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
            #[inline(always)]
            fn by_sign(self, pos: Self, neg: Self, other: Self) -> Self {
                // SAFETY: see the note above the macro. Ordered, quiet
                // compares: a NaN lane is neither above nor below zero.
                unsafe {
                    let above = $cmp::<_CMP_GT_OQ>(self.0, $zero());
                    let below = $cmp::<_CMP_LT_OQ>(self.0, $zero());
                    $pack($blendv($blendv(other.0, neg.0, below), pos.0, above))
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
    _mm256_fmadd_ps,
    _mm256_div_ps,
    _mm256_sqrt_ps,
    _mm256_min_ps,
    _mm256_max_ps,
    _mm256_cmp_ps,
    _mm256_blendv_ps,
    _mm256_setzero_ps
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
    _mm256_fmadd_pd,
    _mm256_div_pd,
    _mm256_sqrt_pd,
    _mm256_min_pd,
    _mm256_max_pd,
    _mm256_cmp_pd,
    _mm256_blendv_pd,
    _mm256_setzero_pd
);
