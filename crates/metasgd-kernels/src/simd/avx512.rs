//! The AVX-512 path: [`Avx512`], the proof that the CPU has AVX-512F, and
//! the 512-bit registers as [`Pack`]s (16 `f32` or 8 `f64` lanes).
//!
//! The same rules as the AVX2 path (`avx2.rs`): the CPU is asked once, the
//! token is the proof, and only operations that round each lane as the
//! scalar operation does are used (add, subtract, multiply, divide, square
//! root, min and max in the contract's operand order, ordered compares into
//! masks and masked blends); `add_on_fma` multiplies by an opaque 1. AVX-512F
//! includes FMA. On Zen 5 and recent Intel cores a 512-bit operation costs
//! about what a 256-bit one does, so each element needs half the
//! instructions: what the loop is bound by in cache.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

use super::WithPacks;
use super::pack::Pack;
use crate::Element;

/// Proof that this CPU runs AVX-512F: only [`Avx512::try_new`] makes one.
#[derive(Clone, Copy, Debug)]
pub struct Avx512 {
    _private: (),
}

impl Avx512 {
    /// The token, if this CPU has AVX-512F. The answer is cached.
    #[inline]
    pub(crate) fn try_new() -> Option<Self> {
        if cfg!(target_feature = "avx512f") {
            return Some(Self { _private: () });
        }
        // 0: not yet asked, 1: no AVX-512F, 2: AVX-512F.
        static CACHE: AtomicU8 = AtomicU8::new(0);
        let has = match CACHE.load(Ordering::Relaxed) {
            0 => {
                let has = std::is_x86_feature_detected!("avx512f");
                CACHE.store(if has { 2 } else { 1 }, Ordering::Relaxed);
                has
            }
            known => known == 2,
        };
        has.then_some(Self { _private: () })
    }

    /// Runs `op` in 512-bit registers.
    #[inline]
    pub(crate) fn dispatch<A: Element, O: WithPacks<A>>(self, op: O) {
        // SAFETY: `self` exists only if `try_new` found AVX-512F on this CPU.
        unsafe { dispatch_avx512::<A, O>(self, op) }
    }
}

/// Every operation's loop, compiled for AVX-512F (the operation is inlined into it).
#[target_feature(enable = "avx512f")]
fn dispatch_avx512<A: Element, O: WithPacks<A>>(tok: Avx512, op: O) {
    op.packs::<A::Avx512>(tok);
}

/// Sixteen `f32` lanes in one 512-bit register.
#[derive(Clone, Copy)]
pub struct F32x16(__m512);

/// Eight `f64` lanes in one 512-bit register.
#[derive(Clone, Copy)]
pub struct F64x8(__m512d);

/// The alignment a 512-bit non-temporal store needs.
const STREAM_ALIGN_512: usize = 64;

// SAFETY (every `unsafe` block in these impls): a pack is built only by
// `splat` or `load`, which take an [`Avx512`] token, and the token exists
// only where `Avx512::try_new` saw AVX-512F on this CPU; so every intrinsic
// below runs on a CPU with AVX-512F. Loads and stores go through slices
// re-sliced to exactly `LANES` elements, so they stay in bounds.
macro_rules! avx512_pack {
    ($pack:ident, $a:ty, $n:literal, $set1:ident, $loadu:ident, $storeu:ident, $stream:ident,
     $add:ident, $sub:ident, $mul:ident, $fmadd:ident, $div:ident, $sqrt:ident, $min:ident, $max:ident,
     $cmp:ident, $blend:ident, $zero:ident) => {
        impl Pack<$a> for $pack {
            type Token = Avx512;
            const LANES: usize = $n;
            #[inline(always)]
            fn splat(_: Avx512, x: $a) -> Self {
                // SAFETY: see the note above the macro.
                $pack(unsafe { $set1(x) })
            }
            #[inline(always)]
            fn load(_: Avx512, s: &[$a]) -> Self {
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
                if p as usize % STREAM_ALIGN_512 == 0 {
                    // SAFETY: see the note above the macro; `s` holds `$n`
                    // elements and `p` is 64-byte aligned, as the
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
                // SAFETY: see the note above the macro. As in the AVX2 path:
                // `min(hi, x)` then `max(lo, y)`, the second operand (the NaN
                // lane) returned unchanged.
                unsafe {
                    let below_hi = $min($set1(<$a>::HI), self.0);
                    $pack($max($set1(<$a>::LO), below_hi))
                }
            }
            #[inline(always)]
            fn by_sign(self, pos: Self, neg: Self, other: Self) -> Self {
                // SAFETY: see the note above the macro. Ordered, quiet
                // compares into masks: a NaN lane is neither above nor below
                // zero. `blend(k, a, b)` takes `b` where `k` is set.
                unsafe {
                    let above = $cmp::<_CMP_GT_OQ>(self.0, $zero());
                    let below = $cmp::<_CMP_LT_OQ>(self.0, $zero());
                    $pack($blend(above, $blend(below, other.0, neg.0), pos.0))
                }
            }
        }
    };
}

avx512_pack!(
    F32x16,
    f32,
    16,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_stream_ps,
    _mm512_add_ps,
    _mm512_sub_ps,
    _mm512_mul_ps,
    _mm512_fmadd_ps,
    _mm512_div_ps,
    _mm512_sqrt_ps,
    _mm512_min_ps,
    _mm512_max_ps,
    _mm512_cmp_ps_mask,
    _mm512_mask_blend_ps,
    _mm512_setzero_ps
);
avx512_pack!(
    F64x8,
    f64,
    8,
    _mm512_set1_pd,
    _mm512_loadu_pd,
    _mm512_storeu_pd,
    _mm512_stream_pd,
    _mm512_add_pd,
    _mm512_sub_pd,
    _mm512_mul_pd,
    _mm512_fmadd_pd,
    _mm512_div_pd,
    _mm512_sqrt_pd,
    _mm512_min_pd,
    _mm512_max_pd,
    _mm512_cmp_pd_mask,
    _mm512_mask_blend_pd,
    _mm512_setzero_pd
);
