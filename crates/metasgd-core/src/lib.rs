//! The `Optimizer` trait, the `MetaSGD` state, errors and the ndarray glue of
//! [metasgd](https://docs.rs/metasgd). Most users want the `metasgd` facade.
//!
//! # Features
//! - `simd` (default): vectorised kernels.
//! - `parallel` (default): multi-threaded kernels on the caller's rayon pool.
//! - `serde`: `Serialize`/`Deserialize` for `MetaSGD` and `MetaSGDConfig`,
//!   exact for every float.

mod backend;
pub mod checkpoint;
mod closure;
mod config;
mod error;
mod layout;
mod metasgd;
mod optimizer;
#[cfg(feature = "serde")]
mod serde_impl;
mod slices;

pub use backend::{Backend, NonFinitePolicy, Verdict};
pub use checkpoint::{FORMAT_VERSION, Loaded};
pub use config::{MAX_COUNT, MAX_INNER_STEPS, MetaSGDConfig, Rule, rescale_rates, valid_rate};
pub use error::{Error, OptimError, Result, StateMismatch};
pub use metasgd::MetaSGD;
pub use optimizer::Optimizer;
pub use slices::{SlicePlan, SliceStep};

pub use metasgd_kernels as kernels;
pub use ndarray;
