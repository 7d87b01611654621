//! A dense ReLU network with mean squared error: exact gradients by
//! backpropagation, exact Hessian-vector products by Pearlmutter's
//! R-operator (forward mode over the backward pass).

use metasgd_kernels::Element;
use ndarray::{Array2, ArrayD, ArrayView1, ArrayView2, Axis, Ix1, Ix2, IxDyn};
use rand::{Rng, SeedableRng};

use crate::{Objective, Regression};

/// A fully connected network, ReLU between layers, linear output.
///
/// Parameters are `[W_1, b_1, W_2, b_2, ...]` with `W_l` of shape
/// `(inputs, outputs)` and `b_l` of shape `(outputs,)`; a batch's inputs are
/// rows. As an [`Objective`] its loss is the mean squared error over all
/// outputs of all examples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mlp {
    sizes: Vec<usize>,
}

/// What the forward pass keeps for the backward pass.
struct Tape<A> {
    /// `a_0 = x`, then every hidden activation.
    inputs: Vec<Array2<A>>,
    /// Pre-activations of every layer; the last is the output.
    pre: Vec<Array2<A>>,
}

fn w<A: Element>(p: &ArrayD<A>) -> ArrayView2<'_, A> {
    p.view()
        .into_dimensionality::<Ix2>()
        .expect("a weight matrix (inputs, outputs)")
}

fn b<A: Element>(p: &ArrayD<A>) -> ArrayView1<'_, A> {
    p.view()
        .into_dimensionality::<Ix1>()
        .expect("a bias vector (outputs,)")
}

fn relu<A: Element>(z: &Array2<A>) -> Array2<A> {
    z.mapv(|v| if v > A::ZERO { v } else { A::ZERO })
}

/// Zeroes `d` where the unit was off (`z <= 0`): the ReLU's derivative.
fn mask<A: Element>(d: &mut Array2<A>, z: &Array2<A>) {
    d.zip_mut_with(z, |d, &z| {
        if z <= A::ZERO {
            *d = A::ZERO;
        }
    });
}

impl Mlp {
    /// A network with these layer widths, input first: `Mlp::new(&[1, 40, 40, 1])`.
    ///
    /// # Panics
    /// With fewer than two sizes or a zero width.
    pub fn new(sizes: &[usize]) -> Self {
        assert!(
            sizes.len() >= 2,
            "a network needs an input and an output size"
        );
        assert!(
            sizes.iter().all(|&s| s > 0),
            "layer widths must be positive"
        );
        Self {
            sizes: sizes.to_vec(),
        }
    }

    /// The layer widths.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    fn layers(&self) -> usize {
        self.sizes.len() - 1
    }

    /// Parameters drawn as PyTorch's `nn.Linear` does by default: weights
    /// and biases uniform in `+-1/sqrt(inputs)`, from a seeded generator.
    pub fn init<A: Element>(&self, seed: u64) -> Vec<ArrayD<A>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut params = Vec::with_capacity(2 * self.layers());
        for l in 0..self.layers() {
            let (fan_in, fan_out) = (self.sizes[l], self.sizes[l + 1]);
            let bound = 1.0 / (fan_in as f64).sqrt();
            let mut draw = |shape: &[usize]| {
                let n = shape.iter().product();
                let v = (0..n)
                    .map(|_| A::from(rng.random_range(-bound..bound)).unwrap_or(A::ZERO))
                    .collect();
                ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape and data agree")
            };
            params.push(draw(&[fan_in, fan_out]));
            params.push(draw(&[fan_out]));
        }
        params
    }

    /// The network's output for inputs `x` (one example per row).
    ///
    /// # Panics
    /// If `params` does not fit the network's sizes.
    pub fn predict<A: Element>(&self, params: &[ArrayD<A>], x: &Array2<A>) -> Array2<A> {
        let mut tape = self.forward(params, x);
        tape.pre.pop().expect("at least one layer")
    }

    fn check<A: Element>(&self, params: &[ArrayD<A>]) {
        assert_eq!(
            params.len(),
            2 * self.layers(),
            "parameter count for {:?}",
            self.sizes
        );
        for l in 0..self.layers() {
            assert_eq!(
                params[2 * l].shape(),
                [self.sizes[l], self.sizes[l + 1]],
                "W_{}",
                l + 1
            );
            assert_eq!(
                params[2 * l + 1].shape(),
                [self.sizes[l + 1]],
                "b_{}",
                l + 1
            );
        }
    }

    fn forward<A: Element>(&self, params: &[ArrayD<A>], x: &Array2<A>) -> Tape<A> {
        self.check(params);
        let mut inputs = vec![x.to_owned()];
        let mut pre = Vec::with_capacity(self.layers());
        for l in 0..self.layers() {
            let z = inputs[l].dot(&w(&params[2 * l])) + b(&params[2 * l + 1]);
            if l + 1 < self.layers() {
                inputs.push(relu(&z));
            }
            pre.push(z);
        }
        Tape { inputs, pre }
    }

    /// `2 / N`: the mean squared error's derivative is `(out - y)` times it.
    fn delta_scale<A: Element>(out: &Array2<A>) -> A {
        A::from(2.0).unwrap_or(A::ZERO) / A::from(out.len().max(1)).unwrap_or(A::one())
    }

    /// `2 (out - y) / N`, the loss's derivative with respect to the output.
    fn output_delta<A: Element>(out: &Array2<A>, y: &Array2<A>) -> Array2<A> {
        let scale = Self::delta_scale(out);
        let mut d = out - y;
        d.mapv_inplace(|e| e * scale);
        d
    }
}

impl<A: Element> Objective<A> for Mlp {
    type Batch = Regression<A>;

    fn loss_grad(&self, params: &[ArrayD<A>], batch: &Regression<A>) -> (A, Vec<ArrayD<A>>) {
        let tape = self.forward(params, &batch.x);
        let out = tape.pre.last().expect("at least one layer");
        let n = A::from(out.len().max(1)).unwrap_or(A::one());
        let loss = (out - &batch.y).mapv(|e| e * e).sum() / n;
        let mut delta = Self::output_delta(out, &batch.y);
        let mut grads = vec![ArrayD::zeros(IxDyn(&[])); params.len()];
        for l in (0..self.layers()).rev() {
            grads[2 * l] = tape.inputs[l].t().dot(&delta).into_dyn();
            grads[2 * l + 1] = delta.sum_axis(Axis(0)).into_dyn();
            if l > 0 {
                let mut next = delta.dot(&w(&params[2 * l]).t());
                mask(&mut next, &tape.pre[l - 1]);
                delta = next;
            }
        }
        (loss, grads)
    }

    fn hessian_vector(
        &self,
        params: &[ArrayD<A>],
        batch: &Regression<A>,
        v: &[ArrayD<A>],
    ) -> Vec<ArrayD<A>> {
        self.check(v);
        let tape = self.forward(params, &batch.x);
        let layers = self.layers();
        // Forward R-pass: R(a_0) = 0; R(z_l) = R(a_l) W_l + a_l V_l + c_l;
        // R(a_{l+1}) = R(z_l) masked (the ReLU is piecewise linear).
        let mut r_inputs: Vec<Array2<A>> = vec![Array2::zeros(batch.x.raw_dim())];
        let mut r_pre: Vec<Array2<A>> = Vec::with_capacity(layers);
        for l in 0..layers {
            let mut rz = tape.inputs[l].dot(&w(&v[2 * l])) + b(&v[2 * l + 1]);
            if l > 0 {
                rz = rz + r_inputs[l].dot(&w(&params[2 * l]));
            }
            if l + 1 < layers {
                let mut ra = rz.clone();
                mask(&mut ra, &tape.pre[l]);
                r_inputs.push(ra);
            }
            r_pre.push(rz);
        }
        // Backward pass and its R-pass together.
        let out = tape.pre.last().expect("at least one layer");
        let mut delta = Self::output_delta(out, &batch.y);
        let scale = Self::delta_scale(out);
        let mut r_delta = r_pre[layers - 1].mapv(|e| e * scale);
        let mut hv = vec![ArrayD::zeros(IxDyn(&[])); params.len()];
        for l in (0..layers).rev() {
            let mut r_gw = tape.inputs[l].t().dot(&r_delta);
            if l > 0 {
                r_gw = r_gw + r_inputs[l].t().dot(&delta);
            }
            hv[2 * l] = r_gw.into_dyn();
            hv[2 * l + 1] = r_delta.sum_axis(Axis(0)).into_dyn();
            if l > 0 {
                let wt = w(&params[2 * l]);
                let mut next = delta.dot(&wt.t());
                let mut r_next = r_delta.dot(&wt.t()) + delta.dot(&w(&v[2 * l]).t());
                mask(&mut next, &tape.pre[l - 1]);
                mask(&mut r_next, &tape.pre[l - 1]);
                delta = next;
                r_delta = r_next;
            }
        }
        hv
    }
}
