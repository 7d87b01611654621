//! Slice kernels for the Meta-SGD update.
//!
//! Slices in, slices out; no ndarray. Every kernel computes, per element, the
//! sequence of the contract
//! ([`docs/semantics.md`](https://github.com/metasgd/metasgd/blob/main/docs/semantics.md),
//! written out as [`scalar::update`]) and all of them give bitwise identical results:
//!
//! | kernel | what it is |
//! |---|---|
//! | [`Kernel::Scalar`] | the reference ([`scalar`]), written to read like the spec |
//! | [`Kernel::Simd`] | the update over SIMD packs: AVX2 where the CPU has it (found once at run time), `wide` vectors elsewhere ([`simd_level`] says which) |
//! | [`Kernel::Parallel`] | the chunks of all tensors on the caller's rayon pool, each run by the SIMD loop |
//!
//! One call reads straight down: [`step_many`] takes the kernel (chosen once,
//! by the caller or [`auto`]) and the updates, asks for the instruction set
//! once (a cached answer), and runs the loop.
//!
//! # Features
//! - `simd` (default): the SIMD loop. Without it [`Kernel::Simd`] runs the
//!   scalar form of the same operation.
//! - `parallel` (default): the rayon kernel. Without it [`Kernel::Parallel`]
//!   runs the same chunks on the calling thread.
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
//! metasgd_kernels::step(metasgd_kernels::auto(3), u, &cfg);
//! assert_eq!(theta[0], 1.0 - 0.01 * 0.1);
//! ```

mod config;
mod element;
pub mod meta;
pub mod norm;
pub mod output;
pub mod par;
pub mod scalar;
mod simd;
#[cfg(feature = "testing")]
pub mod testdata;
mod update;

pub use config::{Config, RateRule, inner_steps};
pub use element::Element;
pub use simd::{SimdLevel, simd_level};
pub use update::{Theta, Update};

use simd::Isa;

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
#[non_exhaustive]
pub enum Kernel {
    /// The scalar reference.
    Scalar,
    /// The SIMD loop on the calling thread.
    Simd,
    /// Chunks on the current rayon pool, each run by the SIMD loop.
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
    step_many(kernel, [u], cfg)
}

/// Runs several tensors' updates on `kernel`; [`Kernel::Parallel`] schedules
/// the chunks of all of them together. Nothing is allocated.
pub fn step_many<'a, A: Element>(
    kernel: Kernel,
    updates: impl IntoIterator<Item = Update<'a, A>>,
    cfg: &Config<A>,
) {
    run_many(Isa::detect(), kernel, updates, cfg)
}

fn run_many<'a, A: Element>(
    isa: Isa,
    kernel: Kernel,
    updates: impl IntoIterator<Item = Update<'a, A>>,
    cfg: &Config<A>,
) {
    match kernel {
        Kernel::Scalar => updates.into_iter().for_each(|u| scalar::step(u, cfg)),
        Kernel::Simd => updates.into_iter().for_each(|u| isa.step(u, cfg)),
        Kernel::Parallel => par::for_each_chunk(updates, |u| isa.step(u, cfg)),
    }
}

/// [`step_many`] on the portable SIMD path (`wide`) whatever the CPU has, so
/// that tests on an AVX2 machine also cover what other targets run
/// (feature `testing`).
#[cfg(feature = "testing")]
pub fn step_many_portable<'a, A: Element>(
    kernel: Kernel,
    updates: impl IntoIterator<Item = Update<'a, A>>,
    cfg: &Config<A>,
) {
    run_many(Isa::portable(), kernel, updates, cfg)
}

/// [`step_many`] on the AVX2 loop where the CPU has AVX2 (else the portable
/// path), whatever else it has, so that tests on an AVX-512 machine also
/// cover what AVX2-only CPUs run (feature `testing`).
#[cfg(feature = "testing")]
pub fn step_many_avx2<'a, A: Element>(
    kernel: Kernel,
    updates: impl IntoIterator<Item = Update<'a, A>>,
    cfg: &Config<A>,
) {
    run_many(Isa::avx2_or_portable(), kernel, updates, cfg)
}

/// The benchmarks' roofline: `theta += g; alpha -= g` (with a previous
/// gradient, [`Update::with_prev`]: `alpha -= prev; prev = g`) through the same
/// instruction set, loop, loads, stores and scheduling as [`step_many`]
/// (feature `testing`).
#[cfg(feature = "testing")]
pub fn traffic_many<'a, A: Element>(
    kernel: Kernel,
    updates: impl IntoIterator<Item = Update<'a, A>>,
) {
    let isa = Isa::detect();
    match kernel {
        Kernel::Scalar => updates.into_iter().for_each(|u| {
            if u.prev.is_some() {
                simd::sweep::scalar_prev(u, simd::traffic::Traffic)
            } else {
                simd::sweep::scalar(u, simd::traffic::Traffic)
            }
        }),
        Kernel::Simd => updates.into_iter().for_each(|u| isa.traffic(u)),
        Kernel::Parallel => par::for_each_chunk(updates, |u| isa.traffic(u)),
    }
}
