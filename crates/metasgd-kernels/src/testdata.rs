//! Deterministic inputs for tests and benchmarks: the special values every
//! kernel must handle, and a cheap seeded generator that mixes them in.

use crate::Element;

/// 0, -0, 1, -1, NaN, +/-Inf, MAX, MIN, two subnormals, the clamp bounds and a huge value.
pub fn specials<A: Element>() -> Vec<A> {
    let from = |x: f64| A::from(x).unwrap_or(A::ZERO);
    vec![
        A::zero(),
        -A::zero(),
        A::one(),
        -A::one(),
        A::nan(),
        A::infinity(),
        A::neg_infinity(),
        A::max_value(),
        A::min_value(),
        A::min_positive_value() / from(8.0),
        -A::min_positive_value() / from(3.0),
        A::LO,
        A::HI,
        from(1e30),
    ]
}

/// `n` values from a seeded xorshift: uniform in `[-2, 2)`, and, when
/// `special_every > 0`, about one in `special_every` replaced by a value of
/// [`specials`].
pub fn values<A: Element>(n: usize, seed: u64, special_every: u64) -> Vec<A> {
    let specials = specials::<A>();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if special_every > 0 && s.is_multiple_of(special_every) {
                specials[(s >> 8) as usize % specials.len()]
            } else {
                let unit = (s >> 11) as f64 / (1u64 << 53) as f64;
                A::from(unit * 4.0 - 2.0).unwrap_or(A::ZERO)
            }
        })
        .collect()
}
