//! The sinusoid regression tasks of MAML and Meta-SGD.

use metasgd_kernels::Element;
use ndarray::Array2;
use rand::Rng;

use crate::{Regression, Task};

/// A distribution of tasks `y = A sin(w x + b)`: amplitude, phase and
/// frequency drawn uniformly from their ranges, inputs uniform over `input`.
///
/// The default is the benchmark of MAML and Meta-SGD's papers' reproductions:
/// `A` in `[0.1, 5]`, `b` in `[0, pi]`, `w = 1`, `x` in `[-5, 5]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sinusoid {
    /// Range of the amplitude `A`.
    pub amplitude: (f64, f64),
    /// Range of the phase `b`.
    pub phase: (f64, f64),
    /// Range of the frequency `w`.
    pub frequency: (f64, f64),
    /// Range of the inputs `x`.
    pub input: (f64, f64),
}

impl Default for Sinusoid {
    fn default() -> Self {
        Self {
            amplitude: (0.1, 5.0),
            phase: (0.0, std::f64::consts::PI),
            frequency: (1.0, 1.0),
            input: (-5.0, 5.0),
        }
    }
}

/// One sine: `amplitude * sin(frequency * x + phase)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sine {
    /// `A`.
    pub amplitude: f64,
    /// `b`.
    pub phase: f64,
    /// `w`.
    pub frequency: f64,
}

impl Sine {
    /// The value at `x`.
    pub fn at(&self, x: f64) -> f64 {
        self.amplitude * (self.frequency * x + self.phase).sin()
    }

    /// `n` examples with inputs uniform over `input`.
    pub fn examples<A: Element, R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        n: usize,
        input: (f64, f64),
    ) -> Regression<A> {
        let xs: Vec<f64> = (0..n).map(|_| uniform(rng, input)).collect();
        let cast = |v: f64| A::from(v).unwrap_or(A::ZERO);
        Regression {
            x: Array2::from_shape_fn((n, 1), |(i, _)| cast(xs[i])),
            y: Array2::from_shape_fn((n, 1), |(i, _)| cast(self.at(xs[i]))),
        }
    }
}

fn uniform<R: Rng + ?Sized>(rng: &mut R, (lo, hi): (f64, f64)) -> f64 {
    if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    }
}

impl Sinusoid {
    /// Draws a sine from the distribution.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> Sine {
        Sine {
            amplitude: uniform(rng, self.amplitude),
            phase: uniform(rng, self.phase),
            frequency: uniform(rng, self.frequency),
        }
    }

    /// A task: `shots` support examples and `query` query examples of one sine.
    pub fn sample<A: Element, R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        shots: usize,
        query: usize,
    ) -> Task<Regression<A>> {
        let sine = self.draw(rng);
        Task {
            support: sine.examples(rng, shots, self.input),
            query: sine.examples(rng, query, self.input),
        }
    }
}
