//! Slice kernels for the Meta-SGD update.
//!
//! Slices in, slices out; no ndarray. Every kernel computes, per element, the
//! sequence of the contract (`shared/SEMANTICS.md`, mirrored by
//! [`scalar::update`]) and all of them give bitwise identical results:
//!
//! | kernel | module | what it is |
//! |---|---|---|
//! | [`Kernel::Scalar`] | [`scalar`] | the reference, written to read like the spec |
//! | [`Kernel::Simd`] | [`simd`] | AVX2 (`avx2.rs`) where the CPU has it, found at run time; `wide` vectors elsewhere |
//! | [`Kernel::Parallel`] | [`par`] | rayon chunks of all tensors in one pass, each run by the SIMD kernel |
//!
//! [`auto`] picks one by size, features and pool size; [`simd_level`] tells
//! which instruction set the SIMD kernel runs.
//!
//! # Features
//! - `simd` (default): the SIMD kernel. Without it [`simd`] is the scalar reference.
//! - `parallel` (default): the rayon kernel. Without it [`par`] runs serially.
//!
//! # Example
//! ```
//! use metasgd_kernels::{Config, Kernel, Theta, Update};
//!
//! let mut theta = vec![1.0_f32, 2.0, 3.0];
//! let mut alpha = vec![0.01_f32; 3];
//! let grad = [0.1_f32, -0.2, 0.3];
//! let cfg = Config::new(0.001, 1);
//! let u = Update::new(Theta::InPlace(&mut theta), &mut alpha, &grad);
//! metasgd_kernels::step(Kernel::Simd, u, &cfg);
//! assert_eq!(theta[0], 1.0 - 0.01 * 0.1);
//! ```

pub mod alloc;
mod config;
mod element;
pub mod scalar;

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
pub mod avx2;
#[cfg(feature = "simd")]
mod pack;
#[cfg(feature = "simd")]
pub mod simd;
#[cfg(not(feature = "simd"))]
#[path = "simd_off.rs"]
pub mod simd;

#[cfg(feature = "parallel")]
pub mod par;
#[cfg(not(feature = "parallel"))]
#[path = "par_off.rs"]
pub mod par;

mod level;
pub mod testdata;

pub use config::{Config, Theta, Update};
pub use element::Element;
pub use level::{SimdLevel, simd_level};

/// Below this many elements in one call, [`auto`] stays on one thread: handing
/// work to the pool costs more than it saves. Measured with
/// `kernel-compare threshold` (2 threads, f32, AVX2): parallel / serial time
/// 1.03 at 16K elements, 0.64 at 32K, 0.59 at 64K.
pub const PAR_THRESHOLD: usize = 32 * 1024;

/// Outputs of at least this many bytes in one allocating call are worth
/// streaming stores ([`Config::with_streaming_stores`]): far past the 32 MiB
/// L3 of the machines we measure on, reading each output line before
/// overwriting it costs more than bypassing the cache. Below, the output
/// stays in cache for whoever reads it next.
pub const STREAM_MIN_BYTES: usize = 32 << 20;

/// Which kernel runs an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// The scalar reference.
    Scalar,
    /// The SIMD kernel on the calling thread.
    Simd,
    /// Chunks on the current rayon pool, each run by the SIMD kernel.
    Parallel,
}

impl Kernel {
    /// Whether this build has the kernel (`simd` / `parallel` features).
    pub const fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            Kernel::Simd => simd::AVAILABLE,
            Kernel::Parallel => par::AVAILABLE,
        }
    }

    /// A short lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Simd => "simd",
            Kernel::Parallel => "parallel",
        }
    }
}

/// The kernel for a call touching `total_len` elements: parallel when
/// available, above [`PAR_THRESHOLD`] and the current pool has more than one
/// thread; else SIMD when available; else scalar.
pub fn auto(total_len: usize) -> Kernel {
    if par::AVAILABLE && total_len >= PAR_THRESHOLD && par::current_num_threads() > 1 {
        Kernel::Parallel
    } else if simd::AVAILABLE {
        Kernel::Simd
    } else {
        Kernel::Scalar
    }
}

/// Runs one tensor's update on `kernel`.
pub fn step<A: Element>(kernel: Kernel, u: Update<'_, A>, cfg: &Config<A>) {
    match kernel {
        Kernel::Scalar => scalar::step(u, cfg),
        Kernel::Simd => simd::step(u, cfg),
        Kernel::Parallel => par::for_each_chunk([u], |u| simd::step(u, cfg)),
    }
}

/// Runs several tensors' updates on `kernel`; [`Kernel::Parallel`] schedules
/// the chunks of all of them in one parallel pass.
pub fn step_many<'a, A: Element>(
    kernel: Kernel,
    updates: impl IntoIterator<Item = Update<'a, A>>,
    cfg: &Config<A>,
) {
    match kernel {
        Kernel::Scalar => updates.into_iter().for_each(|u| scalar::step(u, cfg)),
        Kernel::Simd => updates.into_iter().for_each(|u| simd::step(u, cfg)),
        Kernel::Parallel => par::for_each_chunk(updates, |u| simd::step(u, cfg)),
    }
}
