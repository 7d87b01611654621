//! The error type of every fallible call.

use core::fmt;

use crate::Backend;

/// What went wrong in a call. A call that returns an error changes nothing:
/// parameters, per-parameter learning rates, step count and counters are as
/// they were before it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A hyperparameter is out of its domain (`base_lr` must be finite and
    /// `> 0`, `alpha_lr` finite and `>= 0`).
    #[error("invalid hyperparameter {name} = {value}: must be {requirement}")]
    InvalidHyperparameter {
        /// `"base_lr"` or `"alpha_lr"`.
        name: &'static str,
        /// The offending value, widened to `f64`.
        value: f64,
        /// The rule it breaks.
        requirement: &'static str,
    },
    /// Parameters and gradients of one slot have different shapes.
    #[error("shape mismatch in slot {slot}: parameters {params:?}, gradients {gradients:?}")]
    ShapeMismatch {
        /// Index in the list (0 for `step`).
        slot: usize,
        /// Shape of the parameters.
        params: Vec<usize>,
        /// Shape of the gradients.
        gradients: Vec<usize>,
    },
    /// The parameter and gradient lists have different lengths.
    #[error("list length mismatch: {params} parameter arrays, {gradients} gradient arrays")]
    LengthMismatch {
        /// Length of the parameter list.
        params: usize,
        /// Length of the gradient list.
        gradients: usize,
    },
    /// The input does not match the optimizer's per-parameter state. Call
    /// `reset_per_param_lr()` to start over on purpose.
    #[error("state mismatch: {0}")]
    StateMismatch(StateMismatch),
    /// A gradient element is NaN or infinite under [`crate::NonFinitePolicy::Error`].
    #[error("non-finite gradient in slot {slot} at flat index {index}")]
    NonFiniteGradient {
        /// Index in the list (0 for `step`).
        slot: usize,
        /// Row-major (logical) index of the first bad element.
        index: usize,
    },
    /// With gradient clipping, the gradients' norm is not finite (a square
    /// overflowed) under [`crate::NonFinitePolicy::Error`].
    #[error("the gradients' L2 norm is {norm} (not finite); clipping needs a finite norm")]
    NonFiniteGradNorm {
        /// The norm, widened to `f64`.
        norm: f64,
    },
    /// A per-parameter learning rate handed to `with_per_param_lrs` is not
    /// finite or lies outside the clamp range `[1e-8, 10]`.
    #[error(
        "per-parameter learning rate {value} in slot {slot} at flat index {index}: must be finite and within [1e-8, 10]"
    )]
    InvalidPerParamLr {
        /// The slot (list position).
        slot: usize,
        /// Row-major index of the element.
        index: usize,
        /// The value, widened to `f64`.
        value: f64,
    },
    /// Another rank of a sharded optimizer failed a collective operation
    /// (a step, a save, a load); every rank reports it, and the operation
    /// changed nothing (a failed save leaves the last committed checkpoint).
    #[error("rank {rank} failed the {operation}: {cause}")]
    PeerFailed {
        /// The first rank that failed.
        rank: usize,
        /// `"step"`, `"save"`, `"load"` or `"setup"`.
        operation: &'static str,
        /// That rank's own error, as text.
        cause: String,
    },
    /// Reading or writing a checkpoint failed in the operating system.
    #[error("I/O error ({kind:?}): {message}")]
    Io {
        /// What kind of failure.
        kind: std::io::ErrorKind,
        /// The operating system's message, with the path where one is known.
        message: String,
    },
    /// A checkpoint's bytes are not a valid `metasgd` state: malformed
    /// safetensors, a missing, extra or mistyped tensor, a value out of range.
    #[error("invalid checkpoint: {field}: {reason}")]
    InvalidCheckpoint {
        /// The tensor or metadata key at fault (`"file"` for the container itself).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A meta-learning objective refused its input: a batch that does not
    /// fit the model (image shape, label count, a class out of range, an
    /// empty batch), parameters of the wrong shapes, or a Hessian-vector
    /// product asked for without the gradient pass it builds on. The
    /// meta-learner fills in the task's index.
    #[error("task {}: {reason}", task.map_or("?".to_string(), |t| t.to_string()))]
    InvalidTask {
        /// The task's index in its meta-batch (`None` where the objective
        /// was called on its own).
        task: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// The requested backend was compiled out.
    #[error("backend {backend:?} is not available: build with the `{feature}` feature")]
    BackendUnavailable {
        /// The backend asked for.
        backend: Backend,
        /// The cargo feature that provides it.
        feature: &'static str,
    },
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl Error {
    /// An [`Error::Io`] naming the file it happened on (for formats built
    /// on this one, such as sharded checkpoints).
    pub fn io_at(path: &std::path::Path, e: &std::io::Error) -> Self {
        Error::Io {
            kind: e.kind(),
            message: format!("{}: {e}", path.display()),
        }
    }

    /// An [`Error::InvalidTask`] with no task index yet (for objectives).
    pub fn invalid_task(reason: impl Into<String>) -> Self {
        Error::InvalidTask {
            task: None,
            reason: reason.into(),
        }
    }

    /// `self`, naming task `index` if it is an [`Error::InvalidTask`].
    pub fn at_task(self, index: usize) -> Self {
        match self {
            Error::InvalidTask { reason, .. } => Error::InvalidTask {
                task: Some(index),
                reason,
            },
            other => other,
        }
    }

    /// An [`Error::InvalidCheckpoint`] (for formats built on this one).
    pub fn invalid_checkpoint(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidCheckpoint {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// How an input disagrees with the stored per-parameter learning rates.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateMismatch {
    /// A parameter array's shape differs from its slot's learning rates.
    Shape {
        /// The slot.
        slot: usize,
        /// Shape of the stored learning rates.
        state: Vec<usize>,
        /// Shape of the parameters passed in.
        params: Vec<usize>,
    },
    /// A list's length differs from the number of slots.
    SlotCount {
        /// Slots held by the optimizer.
        slots: usize,
        /// Arrays in the list passed in.
        arrays: usize,
    },
}

impl fmt::Display for StateMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateMismatch::Shape {
                slot,
                state,
                params,
            } => write!(
                f,
                "slot {slot} holds learning rates of shape {state:?}, parameters have shape {params:?}"
            ),
            StateMismatch::SlotCount { slots, arrays } => write!(
                f,
                "the optimizer holds {slots} slots, the list has {arrays} arrays"
            ),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

/// The reference crate's name for the error type.
pub type OptimError = Error;
