//! Scoring a meta-learner on runs, and a run's evaluations kept across
//! restarts.

use metasgd_core::Result;

use super::{DataError, Run};
use crate::{ConvNet, Extras, MetaLearner, Norm};

/// Wrong answers on a set of runs, with the two normalisations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Score {
    /// Wrong with the support set's statistics (each test image on its own).
    pub wrong_support: u64,
    /// Wrong with the test batch's statistics.
    pub wrong_batch: u64,
    /// Test images.
    pub total: u64,
}

impl Score {
    /// The error with the support set's statistics (the primary figure).
    pub fn support_error(&self) -> f64 {
        self.wrong_support as f64 / self.total.max(1) as f64
    }

    /// The error with the test batch's statistics (MAML's papers).
    pub fn batch_error(&self) -> f64 {
        self.wrong_batch as f64 / self.total.max(1) as f64
    }
}

/// Adapts `learner` once on each run's training images and classifies its
/// test images (both normalisations). Over runs of equal size, as Lake's
/// are, the errors are the mean of the runs' errors.
///
/// Errors: a learner whose parameters do not fit `net`.
pub fn score(net: &ConvNet, learner: &MetaLearner<f32>, runs: &[Run]) -> Result<Score> {
    let mut s = Score::default();
    for run in runs {
        let adapted = learner.adapt(net, &run.support)?;
        let wrong = |norm| -> Result<u64> {
            let pred = net.predict(&adapted, &run.test.x, norm)?;
            Ok(pred.iter().zip(&run.test.y).filter(|(p, y)| p != y).count() as u64)
        };
        s.wrong_support += wrong(Norm::From(&run.support.x))?;
        s.wrong_batch += wrong(Norm::Batch)?;
        s.total += run.test.y.len() as u64;
    }
    Ok(s)
}

/// One evaluation during meta-training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// Meta-iterations done.
    pub iterations: u64,
    /// Milliseconds of meta-training done (evaluations excluded).
    pub millis: u64,
    /// On the held-out alphabet's runs.
    pub validation: Score,
    /// On Lake's runs.
    pub lake: Score,
}

impl Evaluation {
    /// Scores `learner` on the held-out alphabet's runs (`validation`) and
    /// Lake's, after `millis` of meta-training.
    pub fn measure(
        net: &ConvNet,
        learner: &MetaLearner<f32>,
        validation: &[Run],
        lake: &[Run],
        millis: u64,
    ) -> Result<Self> {
        Ok(Self {
            iterations: u64::from(learner.meta_steps()),
            millis,
            validation: score(net, learner, validation)?,
            lake: score(net, learner, lake)?,
        })
    }
}

impl std::fmt::Display for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6.1} min {:>6} it: held-out {:.3}, Lake {:.3} (support statistics), {:.3} (test batch)",
            self.millis as f64 / 6e4,
            self.iterations,
            self.validation.support_error(),
            self.lake.support_error(),
            self.lake.batch_error()
        )
    }
}

/// A meta-training run's evaluations and elapsed time, stored as integer
/// counters in the learner's checkpoint ([`Extras`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every evaluation so far, in order.
    pub evaluations: Vec<Evaluation>,
    /// Milliseconds of meta-training done (evaluations excluded).
    pub millis: u64,
}

/// The counters' names, in the order [`Progress::to_extras`] writes them.
const COLUMNS: [&str; 8] = [
    "eval_iterations",
    "eval_millis",
    "eval_validation_wrong_support",
    "eval_validation_wrong_batch",
    "eval_validation_total",
    "eval_lake_wrong_support",
    "eval_lake_wrong_batch",
    "eval_lake_total",
];

impl Progress {
    fn columns(e: &Evaluation) -> [u64; 8] {
        [
            e.iterations,
            e.millis,
            e.validation.wrong_support,
            e.validation.wrong_batch,
            e.validation.total,
            e.lake.wrong_support,
            e.lake.wrong_batch,
            e.lake.total,
        ]
    }

    /// The counters to save beside the learner.
    pub fn to_extras(&self) -> Extras<f32> {
        let mut counters: Vec<(String, Vec<u64>)> = COLUMNS
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let column = self.evaluations.iter().map(|e| Self::columns(e)[c]);
                (name.to_string(), column.collect())
            })
            .collect();
        counters.push(("millis".to_string(), vec![self.millis]));
        Extras {
            tensors: Vec::new(),
            counters,
        }
    }

    /// What [`Progress::to_extras`] wrote; refuses anything else (another
    /// program's checkpoint, columns of different lengths, a count past its
    /// total, evaluations out of order).
    pub fn from_extras(extras: &Extras<f32>) -> std::result::Result<Self, DataError> {
        let bad = |reason: String| DataError::invalid("the checkpoint's progress counters", reason);
        let mut names: Vec<&str> = COLUMNS.to_vec();
        names.push("millis");
        let found: Vec<&str> = extras.counters.iter().map(|(n, _)| n.as_str()).collect();
        if found != names || !extras.tensors.is_empty() {
            return Err(bad(format!(
                "{found:?}, expected {names:?}: not this program's checkpoint"
            )));
        }
        let column = |c: usize| extras.counters[c].1.as_slice();
        let rows = column(0).len();
        if (0..COLUMNS.len()).any(|c| column(c).len() != rows) || column(8).len() != 1 {
            return Err(bad("columns of different lengths".into()));
        }
        let at = |c: usize, r: usize| column(c)[r];
        let evaluations: Vec<Evaluation> = (0..rows)
            .map(|r| Evaluation {
                iterations: at(0, r),
                millis: at(1, r),
                validation: Score {
                    wrong_support: at(2, r),
                    wrong_batch: at(3, r),
                    total: at(4, r),
                },
                lake: Score {
                    wrong_support: at(5, r),
                    wrong_batch: at(6, r),
                    total: at(7, r),
                },
            })
            .collect();
        let millis = column(8)[0];
        for (r, e) in evaluations.iter().enumerate() {
            let scores_ok = [e.validation, e.lake]
                .iter()
                .all(|s| s.wrong_support <= s.total && s.wrong_batch <= s.total);
            let ordered = r == 0
                || (evaluations[r - 1].iterations <= e.iterations
                    && evaluations[r - 1].millis <= e.millis);
            if !scores_ok || !ordered || e.millis > millis {
                return Err(bad(format!("evaluation {r} is inconsistent: {e:?}")));
            }
        }
        Ok(Self {
            evaluations,
            millis,
        })
    }

    /// The evaluation with the lowest validation error (the first of equals).
    pub fn best(&self) -> Option<&Evaluation> {
        self.evaluations.iter().fold(None, |best, e| match best {
            Some(b) if b.validation.support_error() <= e.validation.support_error() => Some(b),
            _ => Some(e),
        })
    }
}
