//! The AVX2 path: [`Avx2`], the proof that the CPU has AVX2, and the AVX
//! registers as [`Pack`]s.
//!
//! `Avx2::try_new` is the one place that asks the CPU (once per process; not
//! at all in a build that targets AVX2). Holding the token is the proof:
//! [`Avx2::run`] enters the loop compiled with `#[target_feature(enable =
//! "avx2")]`, and packs can only be made with the token. The packs are the
//! x86 code the AVX-512 path shares (`x86.rs`), over 256-bit registers.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

use super::WithPacks;
use super::pack::{Pack, STREAM_ALIGN};
use super::x86::x86_pack;
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

/// `b` where the compare mask `k` is set, else `a` (the argument order of
/// AVX-512's masked blend, which the shared pack code uses).
///
/// # Safety
/// The CPU must have AVX (callers hold an [`Avx2`] token).
#[inline(always)]
unsafe fn blend_ps(k: __m256, a: __m256, b: __m256) -> __m256 {
    // SAFETY: the caller's token proves AVX.
    unsafe { _mm256_blendv_ps(a, b, k) }
}

/// [`blend_ps`] for `f64` lanes.
///
/// # Safety
/// The CPU must have AVX (callers hold an [`Avx2`] token).
#[inline(always)]
unsafe fn blend_pd(k: __m256d, a: __m256d, b: __m256d) -> __m256d {
    // SAFETY: the caller's token proves AVX.
    unsafe { _mm256_blendv_pd(a, b, k) }
}

x86_pack!(
    F32x8,
    Avx2,
    f32,
    8,
    STREAM_ALIGN,
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
    blend_ps,
    _mm256_setzero_ps
);
x86_pack!(
    F64x4,
    Avx2,
    f64,
    4,
    STREAM_ALIGN,
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
    blend_pd,
    _mm256_setzero_pd
);
