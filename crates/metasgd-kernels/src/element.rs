//! The element types the kernels accept.

use core::fmt::Debug;

use num_traits::Float;

pub(crate) mod sealed {
    /// Closes [`super::Element`] and names each type's SIMD packs.
    pub trait Sealed: Sized {
        /// `wide`'s vector of this element type.
        #[cfg(feature = "simd")]
        type Wide: crate::simd::pack::Pack<Self, Token = ()>;
        /// Lane array that fills one 256-bit register.
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        type Avx2: crate::simd::pack::Pack<Self, Token = crate::simd::avx2::Avx2>;
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        type Avx512: crate::simd::pack::Pack<Self, Token = crate::simd::avx512::Avx512>;
    }

    impl Sealed for f32 {
        #[cfg(feature = "simd")]
        type Wide = wide::f32x8;
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        type Avx2 = crate::simd::avx2::F32x8;
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        type Avx512 = crate::simd::avx512::F32x16;
    }

    impl Sealed for f64 {
        #[cfg(feature = "simd")]
        type Wide = wide::f64x4;
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        type Avx2 = crate::simd::avx2::F64x4;
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        type Avx512 = crate::simd::avx512::F64x8;
    }
}

/// A floating-point element type: `f32` or `f64`.
///
/// The clamp bounds are `A::from(1e-8)` and `A::from(10.0)`, converted from
/// `f64` exactly as `num_traits::NumCast` does, so the `f32` bounds are the
/// rounded `f32` values.
pub trait Element: Float + Debug + Send + Sync + bytemuck::Pod + 'static + sealed::Sealed {
    /// Lower clamp bound of the per-parameter learning rate.
    const LO: Self;
    /// Upper clamp bound of the per-parameter learning rate.
    const HI: Self;
    /// `+0.0`.
    const ZERO: Self;
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// The raw bits, widened to `u64` (for bitwise comparisons in tests and tools).
    fn bits(self) -> u64;
    /// The value with these raw bits (the low 32 for `f32`): the inverse of
    /// [`Element::bits`], NaN payloads included.
    fn from_bits(bits: u64) -> Self;
    /// The little-endian bytes of the value, `size_of::<Self>()` of them.
    fn write_le(self, out: &mut Vec<u8>);
    /// The value from `size_of::<Self>()` little-endian bytes; `None` if
    /// `bytes` has another length.
    fn read_le(bytes: &[u8]) -> Option<Self>;
}

impl Element for f32 {
    const LO: Self = 1e-8_f64 as f32;
    const HI: Self = 10.0_f64 as f32;
    const ZERO: Self = 0.0;
    const NAME: &'static str = "f32";
    #[inline]
    fn bits(self) -> u64 {
        u64::from(self.to_bits())
    }
    #[inline]
    fn from_bits(bits: u64) -> Self {
        f32::from_bits(bits as u32)
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn read_le(bytes: &[u8]) -> Option<Self> {
        Some(f32::from_le_bytes(bytes.try_into().ok()?))
    }
}

impl Element for f64 {
    const LO: Self = 1e-8;
    const HI: Self = 10.0;
    const ZERO: Self = 0.0;
    const NAME: &'static str = "f64";
    #[inline]
    fn bits(self) -> u64 {
        self.to_bits()
    }
    #[inline]
    fn from_bits(bits: u64) -> Self {
        f64::from_bits(bits)
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn read_le(bytes: &[u8]) -> Option<Self> {
        Some(f64::from_le_bytes(bytes.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_match_numcast() {
        let lo32: f32 = num_traits::NumCast::from(1e-8_f64).unwrap();
        let hi32: f32 = num_traits::NumCast::from(10.0_f64).unwrap();
        assert_eq!(f32::LO.to_bits(), lo32.to_bits());
        assert_eq!(f32::HI.to_bits(), hi32.to_bits());
        assert_eq!(f64::LO.to_bits(), 1e-8_f64.to_bits());
    }
}
