//! Meta-SGD over ndarray: SGD with a learned learning rate per parameter,
//! bit for bit the numbers of optirs-core's `MetaSGD`, on fused SIMD and
//! multi-threaded kernels.
//!
//! ```
//! use metasgd::ndarray::array;
//! use metasgd::{MetaSGD, Optimizer};
//!
//! let mut opt = MetaSGD::new(0.01_f32);
//! let mut params = array![1.0_f32, 2.0, 3.0];
//! let grads = array![0.1_f32, -0.2, 0.3];
//! opt.step_inplace(params.view_mut(), grads.view())?;
//! assert!((params[0] - 0.995).abs() < 1e-6);
//! # Ok::<(), metasgd::Error>(())
//! ```
//!
//! # Worked example, by hand
//!
//! `MetaSGD::new(0.01)` on `theta = [1, 2, 3]`, `g = [0.1, -0.2, 0.3]`:
//! `alpha` starts at `0.01`, so `delta = 0.01 * g = [0.001, -0.002, 0.003]`.
//!
//! With one inner step, `theta - delta = [0.999, 2.002, 2.997]` and
//! `alpha - 0.001 * g * delta = 0.01 - 1e-5 * g^2 = [0.0099999, 0.0099996, 0.0099991]`:
//!
//! ```
//! use metasgd::ndarray::array;
//! use metasgd::{MetaSGD, Optimizer};
//!
//! let mut opt = MetaSGD::new(0.01_f64).with_inner_steps(1);
//! let theta = opt.step(&array![1.0, 2.0, 3.0], &array![0.1, -0.2, 0.3])?;
//! let alpha = opt.get_per_param_lr().unwrap();
//! let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
//! for (got, want) in theta.iter().zip([0.999, 2.002, 2.997]) {
//!     assert!(close(*got, want), "{got} vs {want}");
//! }
//! for (got, want) in alpha.iter().zip([0.0099999, 0.0099996, 0.0099991]) {
//!     assert!(close(*got, want), "{got} vs {want}");
//! }
//! # Ok::<(), metasgd::Error>(())
//! ```
//!
//! With the default five inner steps the same `delta` is taken five times:
//! `theta = [0.995, 2.01, 2.985]`, and the accumulated delta `5 * delta`
//! gives `alpha = 0.01 - 5e-5 * g^2 = [0.0099995, 0.009998, 0.0099955]`:
//!
//! ```
//! use metasgd::ndarray::array;
//! use metasgd::{MetaSGD, Optimizer};
//!
//! let mut opt = MetaSGD::new(0.01_f64);
//! let theta = opt.step(&array![1.0, 2.0, 3.0], &array![0.1, -0.2, 0.3])?;
//! let alpha = opt.get_per_param_lr().unwrap();
//! let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
//! for (got, want) in theta.iter().zip([0.995, 2.01, 2.985]) {
//!     assert!(close(*got, want), "{got} vs {want}");
//! }
//! for (got, want) in alpha.iter().zip([0.0099995, 0.009998, 0.0099955]) {
//!     assert!(close(*got, want), "{got} vs {want}");
//! }
//! # Ok::<(), metasgd::Error>(())
//! ```
//!
//! Migrating from optirs-core is a one-line change:
//! `use metasgd::optimizers::{MetaSGD, Optimizer};`.
//!
//! # Features
//! - `simd` (default): vectorised kernels; on x86-64 an AVX2 loop is chosen
//!   at run time wherever the CPU has AVX2, so a plain build gets it
//!   ([`simd_level`] says which); `wide` vectors on other targets.
//! - `parallel` (default): large steps are cut into chunks that run on the
//!   caller's rayon pool (`pool.install(...)` is honoured); list steps
//!   schedule the chunks of all tensors in one pass.
//!
//! - `serde` (off): `Serialize`/`Deserialize` for [`MetaSGD`], exact for
//!   every float, to embed the optimizer in your own checkpoint structs.
//! - `omniglot` (off): `meta::omniglot`, the Omniglot data set's readers,
//!   task sampler and Lake's one-shot evaluation (adds `zip` and `png`).
//!
//! Meta-learning (Li et al. 2017): [`meta::MetaLearner`] learns the
//! initialisation and the per-parameter rates across tasks;
//! [`meta::MetaLearner::to_optimizer`] hands the learned rates to [`MetaSGD`].
//!
//! Checkpoints: [`MetaSGD::save_state`] / [`MetaSGD::load_state`] write and
//! read the whole state as a safetensors file (atomically; the layout is in
//! the README). [`MetaSGD::step_with_closure`] is the reference's inner loop
//! with a fresh gradient per inner step.
//!
//! With `--no-default-features` everything works on the scalar reference;
//! asking for [`Backend::Simd`] or [`Backend::Parallel`] then returns
//! [`Error::BackendUnavailable`]. All backends give bitwise identical results.

pub use metasgd_core::kernels::{Element, SimdLevel, simd_level};
pub use metasgd_core::ndarray;
pub use metasgd_core::{
    Backend, Error, FORMAT_VERSION, Loaded, MAX_COUNT, MAX_INNER_STEPS, MetaSGD, MetaSGDConfig,
    NonFinitePolicy, OptimError, Optimizer, Result, Rule, StateMismatch, checkpoint, rescale_rates,
    valid_rate,
};

/// The slice kernels under [`MetaSGD`], for users who manage their own
/// buffers: pick a [`Kernel`](kernels::Kernel) (or let
/// [`auto`](kernels::auto) pick), describe each tensor as an
/// [`Update`](kernels::Update) and run [`step`](kernels::step) or
/// [`step_many`](kernels::step_many). The numbers are the optimizer's, bit
/// for bit; the per-parameter state is yours to keep.
///
/// ```
/// use metasgd::kernels::{self, Config, Theta, Update};
///
/// let (mut w, mut b) = (vec![0.5_f32; 1000], vec![0.0_f32; 10]);
/// let (mut alpha_w, mut alpha_b) = (vec![0.01_f32; 1000], vec![0.01_f32; 10]);
/// let (gw, gb) = (vec![0.1_f32; 1000], vec![-0.2_f32; 10]);
/// let cfg = Config::new(0.001, 5); // alpha_lr, inner steps
/// let updates = [
///     Update::new(Theta::InPlace(&mut w), &mut alpha_w, &gw),
///     Update::new(Theta::InPlace(&mut b), &mut alpha_b, &gb),
/// ];
/// kernels::step_many(kernels::auto(1010), updates, &cfg);
/// assert!(w[0] < 0.5 && b[0] > 0.0);
/// ```
pub mod kernels {
    pub use metasgd_core::kernels::{
        Config, Element, Kernel, PAR_THRESHOLD, RateRule, STREAM_MIN_BYTES, SimdLevel, Theta,
        Update, auto, norm, par, scalar, simd_level, step, step_many,
    };
}

/// Meta-learning across tasks: [`MetaLearner`](meta::MetaLearner) learns an
/// initialisation and per-parameter rates (Meta-SGD), or an initialisation
/// for a fixed rate (MAML, first-order MAML), with exact second-order
/// meta-gradients; [`Mlp`](meta::Mlp) and [`Sinusoid`](meta::Sinusoid) are
/// a ready network and task family. See the `metasgd_meta` crate docs.
pub mod meta {
    pub use metasgd_meta::*;
}

/// The README's example runs as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The reference crate's module path: `use metasgd::optimizers::{MetaSGD, Optimizer};`.
pub mod optimizers {
    pub use metasgd_core::{MetaSGD, Optimizer};
}
