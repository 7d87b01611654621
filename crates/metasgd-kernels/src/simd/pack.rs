//! [`Pack`]: a fixed number of lanes with the few operations the kernels use.
//!
//! Implemented by `wide`'s vectors (`wide.rs`) and by AVX registers used
//! under `#[target_feature]` (`avx2.rs`). Every operation rounds each lane
//! exactly like the scalar operation (no fused multiply-add) and the clamp
//! compares and selects, so a loop over packs computes the scalar bits.

use core::mem::MaybeUninit;

/// Alignment of the output that streaming stores need.
pub(crate) const STREAM_ALIGN: usize = 32;

/// A fixed number of lanes of `A`.
///
/// Packs are made only by [`Pack::splat`] and [`Pack::load`], which take the
/// instruction set's [`Pack::Token`]: holding a pack proves the CPU runs its
/// instructions.
// `pub` (in a private module) because `Element`'s sealed supertrait names
// the pack types; without the `simd` feature nothing names it.
#[cfg_attr(not(feature = "simd"), allow(unreachable_pub))]
pub trait Pack<A>: Copy {
    /// Proof that the CPU has the instructions (`()` for `wide`, which uses
    /// only what the build targets).
    type Token: Copy;
    /// Number of lanes.
    const LANES: usize;
    /// Every lane set to `x`.
    fn splat(tok: Self::Token, x: A) -> Self;
    /// Loads the first `LANES` elements of `s`.
    fn load(tok: Self::Token, s: &[A]) -> Self;
    /// Stores into the first `LANES` elements of `s`.
    fn store(self, s: &mut [A]);
    /// Stores into the first `LANES` elements of `s`, initialising them.
    fn store_uninit(self, s: &mut [MaybeUninit<A>]);
    /// Like [`Self::store_uninit`], bypassing the cache where the pack can
    /// and `s` is aligned to [`STREAM_ALIGN`] bytes.
    #[inline(always)]
    fn store_stream(self, s: &mut [MaybeUninit<A>]) {
        self.store_uninit(s)
    }
    /// Orders the streaming stores made so far before later stores (they
    /// are weakly ordered): run after a loop that used [`Self::store_stream`],
    /// before anyone (another thread, after a join) reads the output.
    #[inline(always)]
    fn fence() {}
    /// Lane-wise `self + o`.
    fn add(self, o: Self) -> Self;
    /// Lane-wise `self + o`, the same bits as [`Self::add`], computed where
    /// the instruction set can on the multiply-add units (`self * one + o`,
    /// one rounding) to spare the adders. `one` must hold 1 in every lane,
    /// made opaque (`black_box`) so that the compiler does not turn the
    /// multiply-add back into an add. Only for sums whose operands cannot be
    /// two different NaNs: which NaN a fused multiply-add returns depends on
    /// the instruction form the compiler picks.
    #[inline(always)]
    fn add_on_fma(self, one: Self, o: Self) -> Self {
        let _ = one;
        self.add(o)
    }
    /// Lane-wise `self - o`.
    fn sub(self, o: Self) -> Self;
    /// Lane-wise `self * o`.
    fn mul(self, o: Self) -> Self;
    /// Lane-wise `self / o` (correctly rounded).
    fn div(self, o: Self) -> Self;
    /// Lane-wise square root (correctly rounded).
    fn sqrt(self) -> Self;
    /// Lane-wise [`crate::scalar::clamp`]: compare and select against `A::LO`
    /// and `A::HI`, NaN lanes unchanged.
    fn clamp(self) -> Self;
    /// Lane-wise [`crate::scalar::by_sign`]: `pos` where `self > 0`, `neg`
    /// where `self < 0`, `other` elsewhere (zeros and NaN).
    fn by_sign(self, pos: Self, neg: Self, other: Self) -> Self;
}
