//! Shared pieces of the benchmarks: workloads, the baselines every
//! measurement is compared with, and an interleaved timer.
//!
//! Baselines:
//! - [`roofline`]: the same memory traffic as the update (read theta, g and
//!   alpha, write theta and alpha in place) with trivial arithmetic, run by
//!   the kernels' own loop and scheduling, so its speed is what memory
//!   allows; [`Simple`] loops are measured beside it to show none is faster.
//! - [`naive_step`]: the update as a user would first write it with ndarray,
//!   one temporary array per operation.

use std::hint::black_box;
use std::time::{Duration, Instant};

use metasgd::kernels::{self, Element, Kernel, Theta, Update};
use metasgd::ndarray::{Array1, ArrayD, Zip};

/// Bytes moved per element by one in-place step: three reads, two writes.
pub fn bytes_per_element<A>() -> usize {
    5 * size_of::<A>()
}

/// The parameter-tensor sizes of ResNet-50 (torchvision layout): 53
/// convolutions, 53 batch-norm scales and 53 shifts, the classifier weight and
/// bias; 161 tensors, 25,557,032 parameters, from 64 to 2,359,296 elements.
pub fn resnet50_sizes() -> Vec<usize> {
    resnet50_shapes()
        .iter()
        .map(|s| s.iter().product())
        .collect()
}

/// The shapes of ResNet-50's 161 trainable tensors (torchvision's order:
/// each convolution's weight, then its batch norm's weight and bias; the
/// classifier's weight and bias last), 25,557,032 parameters.
pub fn resnet50_shapes() -> Vec<Vec<usize>> {
    let mut shapes = Vec::new();
    let mut conv_bn = |cin: usize, cout: usize, k: usize| {
        shapes.push(vec![cout, cin, k, k]);
        shapes.push(vec![cout]);
        shapes.push(vec![cout]);
    };
    conv_bn(3, 64, 7);
    let mut inplanes = 64;
    for (blocks, planes) in [(3, 64), (4, 128), (6, 256), (3, 512)] {
        for b in 0..blocks {
            conv_bn(inplanes, planes, 1);
            conv_bn(planes, planes, 3);
            conv_bn(planes, planes * 4, 1);
            if b == 0 {
                conv_bn(inplanes, planes * 4, 1);
            }
            inplanes = planes * 4;
        }
    }
    shapes.push(vec![1000, 2048]);
    shapes.push(vec![1000]);
    shapes
}

/// The roofline baseline: `theta += g; alpha -= g` through the kernels' own
/// instruction set, loop, loads, stores, prefetch and scheduling for
/// `kernel` ([`metasgd_kernels::traffic_many`]), so its speed is what memory
/// allows the update.
pub fn roofline<A: Element>(kernel: Kernel, theta: &mut [A], alpha: &mut [A], grad: &[A]) {
    let u = Update::new(Theta::InPlace(theta), alpha, grad);
    metasgd_kernels::traffic_many(kernel, [u]);
}

/// The hypergradient rule's roofline: its traffic (read theta, g, alpha and
/// the previous gradient; write theta, alpha and the previous gradient)
/// through the same loop, loads, stores and scheduling as the rule's kernel.
pub fn roofline_prev<A: Element>(
    kernel: Kernel,
    theta: &mut [A],
    alpha: &mut [A],
    prev: &mut [A],
    grad: &[A],
) {
    let u = Update::new(Theta::InPlace(theta), alpha, grad).with_prev(prev);
    metasgd_kernels::traffic_many(kernel, [u]);
}

/// Simpler loops with the roofline's traffic, which must not beat it (else
/// the roofline flatters the update).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simple {
    /// `t += g; a -= g` as a plain iterator loop, vectorised by the compiler
    /// for the build's target.
    Plain,
    /// The same loop compiled for AVX2 (`#[target_feature]`), where the CPU has it.
    PlainAvx2,
    /// The same loop compiled for AVX-512F, where the CPU has it.
    PlainAvx512,
    /// A STREAM-style triad with the same traffic: `t = t + s * g; a = a - g`.
    Triad,
}

impl Simple {
    /// All of them, those this CPU can run.
    pub fn all() -> Vec<Simple> {
        let mut v = vec![Simple::Plain, Simple::Triad];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            v.push(Simple::PlainAvx2);
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            v.push(Simple::PlainAvx512);
        }
        v
    }

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Simple::Plain => "plain loop",
            Simple::PlainAvx2 => "plain loop (avx2)",
            Simple::PlainAvx512 => "plain loop (avx512)",
            Simple::Triad => "stream triad",
        }
    }

    /// Runs the loop over the arrays, cut into `threads * 8` rayon tasks when `threads > 1`.
    pub fn run<A: Element>(self, threads: usize, theta: &mut [A], alpha: &mut [A], grad: &[A]) {
        use rayon::prelude::*;
        let body = |t: &mut [A], a: &mut [A], g: &[A]| match self {
            Simple::Plain => plain(t, a, g),
            Simple::PlainAvx2 => plain_avx2(t, a, g),
            Simple::PlainAvx512 => plain_avx512(t, a, g),
            Simple::Triad => triad(t, a, g),
        };
        if threads <= 1 {
            body(theta, alpha, grad);
        } else {
            let c = theta.len().div_ceil(threads * 8).max(1);
            theta
                .par_chunks_mut(c)
                .zip(alpha.par_chunks_mut(c))
                .zip(grad.par_chunks(c))
                .for_each(|((t, a), g)| body(t, a, g));
        }
    }
}

#[inline(always)]
fn plain<A: Element>(theta: &mut [A], alpha: &mut [A], grad: &[A]) {
    for ((t, a), &g) in theta.iter_mut().zip(alpha.iter_mut()).zip(grad) {
        *t = *t + g;
        *a = *a - g;
    }
}

/// `$name`: [`plain`] compiled with `#[target_feature(enable = $feature)]`,
/// run where the CPU has it (else the plain build).
macro_rules! plain_for {
    ($name:ident, $feature:tt) => {
        fn $name<A: Element>(theta: &mut [A], alpha: &mut [A], grad: &[A]) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = $feature)]
                fn inner<A: Element>(theta: &mut [A], alpha: &mut [A], grad: &[A]) {
                    plain(theta, alpha, grad)
                }
                if std::is_x86_feature_detected!($feature) {
                    // SAFETY: the CPU has the feature, checked just above.
                    return unsafe { inner(theta, alpha, grad) };
                }
            }
            plain(theta, alpha, grad)
        }
    };
}

plain_for!(plain_avx2, "avx2");
plain_for!(plain_avx512, "avx512f");

fn triad<A: Element>(theta: &mut [A], alpha: &mut [A], grad: &[A]) {
    let s = A::from(0.5).unwrap_or(A::ZERO);
    for ((t, a), &g) in theta.iter_mut().zip(alpha.iter_mut()).zip(grad) {
        *t = *t + s * g;
        *a = *a - g;
    }
}

/// The update written the way a first ndarray version looks: one allocation
/// per operation. Computes the same bits as the library.
pub fn naive_step<A: Element>(
    theta: &Array1<A>,
    alpha: &Array1<A>,
    grad: &Array1<A>,
    alpha_lr: A,
    inner_steps: usize,
) -> (Array1<A>, Array1<A>) {
    let delta = alpha * grad;
    let mut t = theta.clone();
    let mut acc = Array1::from_elem(theta.len(), A::ZERO);
    for _ in 0..inner_steps {
        t = &t - &delta;
        acc = &acc + &delta;
    }
    let meta_grad = grad * &acc;
    let a = alpha - &meta_grad.mapv(|m| m * alpha_lr);
    let a = a.mapv(kernels::scalar::clamp);
    (t, a)
}

/// Bitwise equality of two arrays of any shape.
pub fn same_bits<A: Element>(a: &ArrayD<A>, b: &ArrayD<A>) -> bool {
    a.shape() == b.shape() && Zip::from(a).and(b).all(|x, y| x.bits() == y.bits())
}

/// Median time of one call of each of several routines, measured in
/// interleaved rounds so that drifts of the machine hit all of them alike.
pub struct Interleaved<'f> {
    routines: Vec<Routine<'f>>,
}

/// A routine, the calls per timed batch, and the per-call samples in ns.
type Routine<'f> = (Box<dyn FnMut() + 'f>, u32, Vec<f64>);

impl<'f> Interleaved<'f> {
    /// No routines yet.
    pub fn new() -> Self {
        Self {
            routines: Vec::new(),
        }
    }

    /// Adds a routine; returns its index for [`Self::median_ns`].
    pub fn add(&mut self, f: impl FnMut() + 'f) -> usize {
        self.routines.push((Box::new(f), 1, Vec::new()));
        self.routines.len() - 1
    }

    /// Calibrates each routine to batches of at least `batch`, then runs
    /// `rounds` rounds, every routine once per round.
    pub fn run(&mut self, rounds: usize, batch: Duration) {
        for (f, reps, _) in &mut self.routines {
            f(); // warm caches, fault in pages
            let start = Instant::now();
            f();
            let once = start.elapsed().max(Duration::from_nanos(20));
            *reps = (batch.as_secs_f64() / once.as_secs_f64())
                .ceil()
                .clamp(1.0, 1e7) as u32;
        }
        for _ in 0..rounds {
            for (f, reps, samples) in &mut self.routines {
                let start = Instant::now();
                for _ in 0..*reps {
                    f();
                }
                samples.push(start.elapsed().as_secs_f64() * 1e9 / f64::from(*reps));
            }
        }
    }

    /// Median nanoseconds per call of routine `i`.
    pub fn median_ns(&self, i: usize) -> f64 {
        median(&self.routines[i].2)
    }
}

impl Default for Interleaved<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// Median of a non-empty sample.
pub fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Keeps a value alive past the optimizer.
pub fn sink<T>(x: T) {
    black_box(x);
}
