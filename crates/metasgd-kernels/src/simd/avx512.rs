//! The AVX-512 path: [`Avx512`], the proof that the CPU has AVX-512F, and
//! the 512-bit registers as [`Pack`]s (16 `f32` or 8 `f64` lanes).
//!
//! The same rules as the AVX2 path (`avx2.rs`): the CPU is asked once, the
//! token is the proof, and the packs are the same code (`x86.rs`) over
//! 512-bit registers, compares giving masks. AVX-512F includes FMA. On Zen 5 and recent Intel cores a 512-bit operation costs
//! about what a 256-bit one does, so each element needs half the
//! instructions: what the loop is bound by in cache.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

use super::WithPacks;
use super::pack::Pack;
use super::x86::x86_pack;
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

x86_pack!(
    F32x16,
    Avx512,
    f32,
    16,
    STREAM_ALIGN_512,
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
x86_pack!(
    F64x8,
    Avx512,
    f64,
    8,
    STREAM_ALIGN_512,
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
