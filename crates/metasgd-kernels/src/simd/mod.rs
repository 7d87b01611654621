//! The SIMD kernel: which instruction set runs it, decided once per process,
//! and the one dispatch to it.
//!
//! [`Isa::detect`] is the only place that asks the CPU. On x86-64 it returns
//! the AVX-512 token wherever the CPU has AVX-512F (`avx512.rs`), else the
//! AVX2 token wherever it has AVX2 (`avx2.rs`), so a default build and a
//! `-C target-cpu=native` build run the same loop; `wide` vectors
//! (`wide.rs`) serve every other target; without the `simd` feature the
//! scalar form of each operation runs. Each operation is written once over
//! packs ([`sweep::Lanewise`]) and every instruction set runs the same loop
//! ([`sweep::sweep`]).

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
pub(crate) mod avx2;
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
pub(crate) mod avx512;
pub(crate) mod hypergradient;
pub(crate) mod metasgd;
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
mod x86;
// Without the `simd` feature only the scalar forms run; the pack loop stays
// compiled (and type-checked) but unused.
#[cfg_attr(not(feature = "simd"), allow(dead_code))]
pub(crate) mod pack;
#[cfg_attr(not(feature = "simd"), allow(dead_code))]
pub(crate) mod sweep;
#[cfg(feature = "testing")]
pub(crate) mod traffic;
#[cfg(feature = "simd")]
mod wide;

use std::sync::OnceLock;

use crate::{Config, Element, Update};
use pack::Pack;
use sweep::Lanewise;

/// An element-wise operation written once over packs of any instruction
/// set, and over scalars: what [`Isa::dispatch`] runs. The Meta-SGD update
/// ([`Sweep`]) and every operation of [`crate::meta`] are such operations,
/// so all of them run on the one CPU decision and the same packs.
pub(crate) trait WithPacks<A: Element> {
    /// The operation on packs of `P` (the tail of a slice that does not
    /// fill a pack runs the scalar form, inside).
    #[cfg_attr(not(feature = "simd"), allow(dead_code))]
    fn packs<P: Pack<A>>(self, tok: P::Token);
    /// The operation on scalars, for builds without the `simd` feature.
    fn scalars(self);
}

/// The Meta-SGD update (or the roofline's operation) over one update, as
/// [`sweep::sweep`] runs it.
struct Sweep<'a, A, O> {
    u: Update<'a, A>,
    op: O,
    #[cfg_attr(not(feature = "simd"), allow(dead_code))]
    streaming: bool,
}

impl<A: Element, O: Lanewise<A>> WithPacks<A> for Sweep<'_, A, O> {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, tok: P::Token) {
        sweep::sweep::<A, P, O>(tok, self.u, self.op, self.streaming);
        if self.streaming {
            P::fence();
        }
    }

    #[inline(always)]
    fn scalars(self) {
        sweep::scalar(self.u, self.op);
    }
}

/// An update whose operation also reads and replaces the previous
/// gradient, as [`sweep::sweep_prev`] runs it.
struct SweepPrev<'a, A, O> {
    u: Update<'a, A>,
    op: O,
    #[cfg_attr(not(feature = "simd"), allow(dead_code))]
    streaming: bool,
}

impl<A: Element, O: sweep::LanewisePrev<A>> WithPacks<A> for SweepPrev<'_, A, O> {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, tok: P::Token) {
        sweep::sweep_prev::<A, P, O>(tok, self.u, self.op, self.streaming);
        if self.streaming {
            P::fence();
        }
    }

    #[inline(always)]
    fn scalars(self) {
        sweep::scalar_prev(self.u, self.op);
    }
}

/// Whether this build has the SIMD kernel (the `simd` feature).
pub(crate) const AVAILABLE: bool = cfg!(feature = "simd");

/// The instruction set behind [`crate::Kernel::Simd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SimdLevel {
    /// The `simd` feature is off: the scalar reference runs.
    Scalar,
    /// `wide` with the instruction set the build targets (SSE2 on plain
    /// x86-64, NEON on aarch64).
    Wide,
    /// The build targets AVX2 (`-C target-cpu=native` or similar): the AVX2
    /// loop, no check needed.
    Avx2Compiled,
    /// The build does not target AVX2 but the CPU has it: the AVX2 loop,
    /// found at run time.
    Avx2Runtime,
    /// The build targets AVX-512F: the AVX-512 loop, no check needed.
    Avx512Compiled,
    /// The CPU has AVX-512F (found at run time): the AVX-512 loop.
    Avx512Runtime,
}

impl SimdLevel {
    /// A human-readable name, printed by the benchmarks.
    pub const fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar (simd feature off)",
            SimdLevel::Wide => "wide (compile-time instruction set)",
            SimdLevel::Avx2Compiled => "avx2 (compiled in)",
            SimdLevel::Avx2Runtime => "avx2 (runtime dispatch)",
            SimdLevel::Avx512Compiled => "avx512 (compiled in)",
            SimdLevel::Avx512Runtime => "avx512 (runtime dispatch)",
        }
    }
}

/// The instruction set [`crate::Kernel::Simd`] runs in this process.
pub fn simd_level() -> SimdLevel {
    Isa::detect().level()
}

/// The instruction set a SIMD kernel runs; a variant that needs a CPU
/// feature carries its proof.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Isa {
    /// The scalar form of each operation (the `simd` feature is off).
    #[cfg_attr(feature = "simd", allow(dead_code))]
    Scalar,
    /// `wide` vectors, as compiled.
    #[cfg(feature = "simd")]
    Wide,
    /// The AVX2 loop; the token proves the CPU has it.
    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
    Avx2(avx2::Avx2),
    /// The AVX-512 loop; the token proves the CPU has it.
    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
    Avx512(avx512::Avx512),
}

impl Isa {
    /// The best instruction set of this CPU, found once and cached.
    #[inline]
    pub(crate) fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            if let Some(tok) = avx512::Avx512::try_new() {
                return Isa::Avx512(tok);
            }
            Isa::avx2_or_portable()
        })
    }

    /// The AVX2 loop where the CPU has it, else the portable path: what
    /// runs on a CPU without AVX-512 (the tests run it on every CPU).
    pub(crate) fn avx2_or_portable() -> Isa {
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        if let Some(tok) = avx2::Avx2::try_new() {
            return Isa::Avx2(tok);
        }
        Isa::portable()
    }

    /// The portable path: `wide`, or the scalar form without the `simd` feature.
    pub(crate) const fn portable() -> Isa {
        #[cfg(feature = "simd")]
        {
            Isa::Wide
        }
        #[cfg(not(feature = "simd"))]
        {
            Isa::Scalar
        }
    }

    pub(crate) fn level(self) -> SimdLevel {
        match self {
            Isa::Scalar => SimdLevel::Scalar,
            #[cfg(feature = "simd")]
            Isa::Wide => SimdLevel::Wide,
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Isa::Avx2(_) if cfg!(target_feature = "avx2") => SimdLevel::Avx2Compiled,
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Isa::Avx2(_) => SimdLevel::Avx2Runtime,
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Isa::Avx512(_) if cfg!(target_feature = "avx512f") => SimdLevel::Avx512Compiled,
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Isa::Avx512(_) => SimdLevel::Avx512Runtime,
        }
    }

    /// Runs `op` on this instruction set: the one dispatch of every
    /// element-wise operation.
    #[inline]
    pub(crate) fn dispatch<A: Element, O: WithPacks<A>>(self, op: O) {
        match self {
            Isa::Scalar => op.scalars(),
            #[cfg(feature = "simd")]
            Isa::Wide => op.packs::<A::Wide>(()),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Isa::Avx2(tok) => tok.dispatch(op),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Isa::Avx512(tok) => tok.dispatch(op),
        }
    }

    /// Runs the lane-wise `op` over one update.
    #[inline]
    pub(crate) fn run<A: Element, O: Lanewise<A>>(self, u: Update<'_, A>, op: O, streaming: bool) {
        self.dispatch(Sweep { u, op, streaming });
    }

    /// The Meta-SGD update of one tensor, under the rate rule of `cfg`.
    #[inline]
    pub(crate) fn step<A: Element>(self, u: Update<'_, A>, cfg: &Config<A>) {
        let streaming = cfg.streaming_stores();
        match crate::scalar::Factors::of(cfg.rule()) {
            None => metasgd::with_metasgd!(*cfg, |op| self.run(u, op, streaming)),
            Some(f) => {
                let op = hypergradient::Hypergradient { cfg: *cfg, f };
                self.dispatch(SweepPrev { u, op, streaming })
            }
        }
    }

    /// The roofline's trivial operation over one tensor.
    #[cfg(feature = "testing")]
    #[inline]
    pub(crate) fn traffic<A: Element>(self, u: Update<'_, A>) {
        if u.prev.is_some() {
            let op = traffic::Traffic;
            return self.dispatch(SweepPrev {
                u,
                op,
                streaming: false,
            });
        }
        self.run(u, traffic::Traffic, false)
    }
}
