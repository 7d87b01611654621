//! Omniglot few-shot classification (Lake, Salakhutdinov and Tenenbaum,
//! Science 2015) for [`ConvNet`](crate::ConvNet): the data set's readers,
//! the meta-training task sampler and the evaluation on Lake's 20
//! within-alphabet, 20-way, 1-shot runs. Feature `omniglot`.
//!
//! Data: the Omniglot repository's `images_background_small1.zip`,
//! `images_background_small2.zip` (5 alphabets each; Greek and Latin are in
//! both and counted once: 8 alphabets) and `all_runs.zip` (Lake's 20 runs),
//! read directly from the zips. Every 105x105 image is turned into ink
//! (1 = stroke) and downsampled to 28x28 by area averaging (each output
//! pixel is the mean of the 3.75x3.75 source square it covers, partial
//! pixels weighted by their overlap: PIL's BOX filter), the same for
//! training and evaluation. The files are untrusted input: every count and
//! size is bounded before anything is allocated, and a damaged file is a
//! [`DataError`], never a panic.
//!
//! Meta-training ([`Sampler`]): tasks of 20 characters drawn within one
//! alphabet (all of an alphabet's characters when it has fewer), rotated by
//! a multiple of 90 degrees (a rotated alphabet counts as a new one), one
//! support and 5 query images per character (distinct drawers), each image
//! shifted by up to `shift` pixels. A meta-batch is a function of the seed
//! and the iteration only, so a resumed run sees the tasks the
//! uninterrupted one would. One background alphabet can be held out
//! ([`Background::validation_runs`]) to choose a checkpoint without looking
//! at Lake's runs.
//!
//! Scoring ([`score`]): adapt on a run's 20 training images, classify its
//! 20 test images; the primary figure normalises with the support set's
//! statistics (each test image is classified on its own), the test-batch
//! variant (MAML's papers) is kept beside it.
//!
//! ```no_run
//! use metasgd_meta::omniglot::{self, Background, Sampler};
//! use metasgd_meta::{ConvNet, MetaLearner};
//!
//! let dir = std::path::Path::new("../shared/data/omniglot");
//! let background = Background::load(dir)?;
//! let runs = omniglot::lake_runs(dir)?;
//! let held_out = background.alphabet("Early_Aramaic").expect("a background alphabet");
//! let sampler = Sampler::new(&background, Some(held_out), 2, 0)?;
//!
//! let net = ConvNet::new(omniglot::WAYS);
//! let mut learner = MetaLearner::meta_sgd(net.init::<f32>(0), 0.4).with_outer_lr(1e-3);
//! for it in 0..100 {
//!     learner.meta_step(&net, &sampler.meta_batch(it, 4))?;
//! }
//! let lake = omniglot::score(&net, &learner, &runs)?;
//! println!("Lake error {:.3}", lake.support_error());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod eval;
mod picture;
mod read;
mod tasks;

pub use eval::{Evaluation, Progress, Score, score};
pub use read::{Background, decode_png, lake_runs, runs_from_zip};
pub use tasks::{Sampler, rotate_shift};

use std::path::PathBuf;

use ndarray::Array4;

use crate::Classification;

/// The side of an image as the network sees it (28x28).
pub const SIDE: usize = 28;
/// The side of an image as the data set stores it (105x105).
pub const SOURCE_SIDE: usize = 105;
/// Classes of a task and of Lake's runs.
pub const WAYS: usize = 20;
/// Query images per class of a training task.
pub const QUERY_PER_CLASS: usize = 5;

/// Where a user gets the data.
pub const WHERE: &str = "the Omniglot repository, github.com/brendenlake/omniglot: python/images_background_small1.zip, \
python/images_background_small2.zip and python/one-shot-classification/all_runs.zip";

/// A 28x28 image of ink (1 = stroke), row-major.
pub type Image = Vec<f32>;

/// One of Lake's runs (or a validation run built like one): the training
/// images (class = index) and the test images with their class.
#[derive(Clone, Debug)]
pub struct Run {
    /// One image per class; the label is the index.
    pub support: Classification<f32>,
    /// The images to classify, with their classes.
    pub test: Classification<f32>,
}

/// A data file that cannot be read or is not what Omniglot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened or read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        message: String,
    },
    /// The content is not what the data set holds.
    Invalid {
        /// The file and entry.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

impl DataError {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io { path, message } => write!(
                f,
                "{}: {message}; the data comes from {WHERE}",
                path.display()
            ),
            Self::Invalid { what, reason } => write!(f, "{what}: {reason}"),
        }
    }
}

impl std::error::Error for DataError {}

/// A batch of `images` with their labels. Every image this module makes
/// is `SIDE * SIDE` ([`decode_png`], [`rotate_shift`]).
pub(crate) fn batch(images: &[&Image], labels: Vec<usize>) -> Classification<f32> {
    let mut data = Vec::with_capacity(images.len() * SIDE * SIDE);
    for img in images {
        data.extend_from_slice(img);
    }
    let x = Array4::from_shape_vec((images.len(), 1, SIDE, SIDE), data)
        .expect("every image of the module is SIDE x SIDE");
    Classification { x, y: labels }
}
