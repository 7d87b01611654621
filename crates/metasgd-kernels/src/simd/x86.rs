//! What the x86 paths share: the one implementation of [`Pack`] over an x86
//! vector register, instantiated for AVX2's 256-bit registers (`avx2.rs`)
//! and AVX-512's 512-bit ones (`avx512.rs`). Only operations that round each
//! lane as the scalar operation does are used (add, subtract, multiply,
//! divide, square root, min and max in the operand order of the contract's
//! compare-and-select, ordered compares and blends); `add_on_fma` multiplies
//! by an opaque 1. So every instantiation computes the scalar reference's
//! bits.

/// Implements [`Pack`](super::pack::Pack) for one x86 register type with
/// its intrinsics: `$tok` is the token that proves the CPU has them,
/// `$align` the alignment its non-temporal store needs, `$blend(k, a, b)`
/// takes `b` in the lanes where the compare result `k` is set.
///
/// SAFETY (every `unsafe` block of the impl): a pack is built only by
/// `splat` or `load`, which take a `$tok` token, and the token exists only
/// where its `try_new` saw the instruction set on this CPU; so every
/// intrinsic runs on a CPU that has it. Loads and stores go through slices
/// re-sliced to exactly `LANES` elements, so they stay in bounds.
macro_rules! x86_pack {
    ($pack:ident, $tok:ty, $a:ty, $n:literal, $align:expr, $set1:ident, $loadu:ident,
     $storeu:ident, $stream:ident, $add:ident, $sub:ident, $mul:ident, $fmadd:ident, $div:ident,
     $sqrt:ident, $min:ident, $max:ident, $cmp:ident, $blend:path, $zero:ident) => {
        impl Pack<$a> for $pack {
            type Token = $tok;
            const LANES: usize = $n;
            #[inline(always)]
            fn splat(_: $tok, x: $a) -> Self {
                // SAFETY: see the note above the macro.
                $pack(unsafe { $set1(x) })
            }
            #[inline(always)]
            fn load(_: $tok, s: &[$a]) -> Self {
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
                if p as usize % $align == 0 {
                    // SAFETY: see the note above the macro; `s` holds `$n`
                    // elements and `p` is aligned as the non-temporal store
                    // requires.
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
                    $pack($blend(above, $blend(below, other.0, neg.0), pos.0))
                }
            }
        }
    };
}
pub(crate) use x86_pack;
