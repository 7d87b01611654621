//! Stand-in for the SIMD kernel when the `simd` feature is off: the scalar
//! reference under the same names, so call sites carry no `cfg`.

use crate::{Config, Element, Update, scalar};

/// Whether this build has the SIMD kernel.
pub const AVAILABLE: bool = false;

/// The scalar reference (the `simd` feature is off).
pub fn step<A: Element>(u: Update<'_, A>, cfg: &Config<A>) {
    scalar::step(u, cfg)
}
