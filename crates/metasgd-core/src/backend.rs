//! Choices made on the builder: which kernel runs, and what to do with NaN.

use metasgd_kernels::Kernel;

use crate::{Error, Result};

/// Which kernel runs a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
#[non_exhaustive]
pub enum Backend {
    /// Picks per call: parallel above a measured size when the current rayon
    /// pool has several threads, else SIMD, else scalar.
    #[default]
    Auto,
    /// The scalar reference.
    Scalar,
    /// The SIMD kernel on the calling thread (`simd` feature).
    Simd,
    /// Chunks on the caller's rayon pool (`parallel` feature).
    Parallel,
}

/// A choice stored by name (a checkpoint's `__metadata__`; serde derives
/// the same lowercase names, which a test checks).
pub(crate) trait Named: Copy + PartialEq + Sized + 'static {
    /// Every value with its name.
    const NAMES: &'static [(&'static str, Self)];

    /// This value's name.
    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }

    /// The value named `text`, or why there is none (for field `what`).
    fn from_name(what: &str, text: &str) -> Result<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == text)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let all: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
                Error::invalid_checkpoint(
                    what,
                    format!("unknown value {text:?} ({})", all.join(", ")),
                )
            })
    }
}

impl Named for Backend {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("auto", Backend::Auto),
        ("scalar", Backend::Scalar),
        ("simd", Backend::Simd),
        ("parallel", Backend::Parallel),
    ];
}

impl Named for NonFinitePolicy {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("propagate", NonFinitePolicy::Propagate),
        ("skip", NonFinitePolicy::Skip),
        ("error", NonFinitePolicy::Error),
    ];
}

impl Backend {
    /// Errors if this build lacks the backend's feature.
    pub(crate) fn check(self) -> Result<()> {
        let (kernel, feature) = match self {
            Backend::Auto | Backend::Scalar => return Ok(()),
            Backend::Simd => (Kernel::Simd, "simd"),
            Backend::Parallel => (Kernel::Parallel, "parallel"),
        };
        if kernel.is_available() {
            Ok(())
        } else {
            Err(Error::BackendUnavailable {
                backend: self,
                feature,
            })
        }
    }

    /// The kernel for a call touching `total_len` elements (after [`Self::check`]).
    pub(crate) fn kernel(self, total_len: usize) -> Kernel {
        match self {
            Backend::Auto => metasgd_kernels::auto(total_len),
            Backend::Scalar => Kernel::Scalar,
            Backend::Simd => Kernel::Simd,
            Backend::Parallel => Kernel::Parallel,
        }
    }
}

/// What a step does when a gradient holds NaN or an infinity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
#[non_exhaustive]
pub enum NonFinitePolicy {
    /// Compute as usual: NaN flows into the parameters and learning rates.
    #[default]
    Propagate,
    /// Change nothing, leave the step count as it is, count a skipped step.
    Skip,
    /// Change nothing and return [`Error::NonFiniteGradient`].
    Error,
}

/// What the non-finite policy decided for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Run the update.
    Step,
    /// Change nothing; count a skipped step.
    Skip,
}

impl NonFinitePolicy {
    /// The policy, written once and applied by every entry point (the
    /// plain and list steps, the closure step, the sharded step): given the
    /// first NaN or infinite gradient element of the call, as `(slot, flat
    /// index)` (asked for only when the policy needs it), run the update,
    /// skip it, or refuse it with [`Error::NonFiniteGradient`].
    ///
    /// ```
    /// use metasgd_core::{NonFinitePolicy, Verdict};
    ///
    /// let bad = || Some((0, 3));
    /// assert_eq!(NonFinitePolicy::Propagate.verdict(bad), Ok(Verdict::Step));
    /// assert_eq!(NonFinitePolicy::Skip.verdict(bad), Ok(Verdict::Skip));
    /// assert!(NonFinitePolicy::Error.verdict(bad).is_err());
    /// assert_eq!(NonFinitePolicy::Error.verdict(|| None), Ok(Verdict::Step));
    /// ```
    pub fn verdict(self, first_bad: impl FnOnce() -> Option<(usize, usize)>) -> Result<Verdict> {
        if self == NonFinitePolicy::Propagate {
            return Ok(Verdict::Step);
        }
        match (self, first_bad()) {
            (_, None) => Ok(Verdict::Step),
            (NonFinitePolicy::Skip, Some(_)) => Ok(Verdict::Skip),
            (_, Some((slot, index))) => Err(Error::NonFiniteGradient { slot, index }),
        }
    }
}
