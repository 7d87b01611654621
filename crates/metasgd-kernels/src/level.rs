//! Which instruction set the SIMD kernel runs, decided once per process.

/// The instruction set behind [`crate::Kernel::Simd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// The `simd` feature is off: the scalar reference runs.
    Scalar,
    /// `wide` with the instruction set the build targets (SSE2 on plain x86-64).
    Wide,
    /// The build targets AVX2 (`-C target-cpu=native` or similar): the AVX2 loop, no check needed.
    Avx2Compiled,
    /// The build does not target AVX2 but the CPU has it: the runtime-dispatched AVX2 loop.
    Avx2Runtime,
}

impl SimdLevel {
    /// A human-readable name, printed by the benchmarks.
    pub const fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar (simd feature off)",
            SimdLevel::Wide => "wide (compile-time instruction set)",
            SimdLevel::Avx2Compiled => "avx2 (compiled in)",
            SimdLevel::Avx2Runtime => "avx2 (runtime dispatch)",
        }
    }
}

/// The SIMD level of this process; the CPU is queried once and the answer cached.
pub fn simd_level() -> SimdLevel {
    if !crate::simd::AVAILABLE {
        SimdLevel::Scalar
    } else if cfg!(target_feature = "avx2") {
        SimdLevel::Avx2Compiled
    } else {
        detected()
    }
}

#[cfg(target_arch = "x86_64")]
fn detected() -> SimdLevel {
    use std::sync::atomic::{AtomicU8, Ordering};
    // 0: not yet asked, 1: no AVX2, 2: AVX2.
    static CACHE: AtomicU8 = AtomicU8::new(0);
    match CACHE.load(Ordering::Relaxed) {
        1 => SimdLevel::Wide,
        2 => SimdLevel::Avx2Runtime,
        _ => {
            let avx2 = std::is_x86_feature_detected!("avx2");
            CACHE.store(if avx2 { 2 } else { 1 }, Ordering::Relaxed);
            if avx2 {
                SimdLevel::Avx2Runtime
            } else {
                SimdLevel::Wide
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detected() -> SimdLevel {
    SimdLevel::Wide
}
