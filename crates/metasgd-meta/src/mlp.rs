//! A dense ReLU network with mean squared error: exact gradients by
//! backpropagation, exact Hessian-vector products by Pearlmutter's
//! R-operator (forward mode over the backward pass).

use metasgd_core::{Error, Result};
use metasgd_kernels::Element;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayD, ArrayView1, ArrayView2, ArrayViewMut2, Ix1, Ix2, IxDyn, Zip, s};
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
        let mut ws = MlpWorkspace::default();
        self.forward_into(params, x, &mut ws);
        ws.pre[self.layers() - 1]
            .slice(s![..x.nrows(), ..])
            .to_owned()
    }

    /// Why `params` (or a direction) and `batch` do not fit this network,
    /// if they do not.
    fn fits<A: Element>(&self, params: &[ArrayD<A>], batch: &Regression<A>) -> Result<()> {
        let shapes = (0..self.layers()).flat_map(|l| {
            [
                vec![self.sizes[l], self.sizes[l + 1]],
                vec![self.sizes[l + 1]],
            ]
        });
        let shapes: Vec<Vec<usize>> = shapes.collect();
        if params.len() != shapes.len()
            || params
                .iter()
                .zip(&shapes)
                .any(|(p, s)| p.shape() != s.as_slice())
        {
            return Err(Error::invalid_task(format!(
                "parameters of shapes {:?}, the {:?} network has {shapes:?}",
                params.iter().map(|p| p.shape()).collect::<Vec<_>>(),
                self.sizes
            )));
        }
        let (n, inputs, outputs) = (batch.x.nrows(), self.sizes[0], self.sizes[self.layers()]);
        if batch.x.ncols() != inputs || batch.y.dim() != (n, outputs) {
            return Err(Error::invalid_task(format!(
                "a batch of x {:?} and y {:?}, expected (N, {inputs}) and (N, {outputs})",
                batch.x.dim(),
                batch.y.dim()
            )));
        }
        Ok(())
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
}

/// Buffers an [`Mlp`] reuses across evaluations (one per task of a
/// meta-batch, kept by the meta-learner): every layer's activations,
/// pre-activations and deltas and their R-pass versions, sized for the
/// largest batch seen so far.
#[derive(Clone, Debug)]
pub struct MlpWorkspace<A> {
    /// `a_l` for the hidden layers (`a_0` is the batch itself).
    acts: Vec<Array2<A>>,
    /// `z_l`.
    pre: Vec<Array2<A>>,
    /// `dL/dz_l`.
    delta: Vec<Array2<A>>,
    /// `R(a_l)`, `R(z_l)`, `R(dL/dz_l)`.
    r_acts: Vec<Array2<A>>,
    r_pre: Vec<Array2<A>>,
    r_delta: Vec<Array2<A>>,
}

impl<A> Default for MlpWorkspace<A> {
    fn default() -> Self {
        Self {
            acts: Vec::new(),
            pre: Vec::new(),
            delta: Vec::new(),
            r_acts: Vec::new(),
            r_pre: Vec::new(),
            r_delta: Vec::new(),
        }
    }
}

/// An empty buffer (sized by [`rows`] on first use).
fn empty<A: Element>() -> Array2<A> {
    Array2::zeros((0, 0))
}

/// The first `n` rows of `buf`, which is made `(n, width)` (zeros) when it
/// is too small or of another width. Rows of a row-major array are one
/// contiguous block, so the view is row-major too.
fn rows<A: Element>(buf: &mut Array2<A>, n: usize, width: usize) -> ArrayViewMut2<'_, A> {
    if buf.nrows() < n || buf.ncols() != width {
        *buf = Array2::zeros((n, width));
    }
    buf.slice_mut(s![..n, ..])
}

/// `g` (a row-major `(n, m)` tensor) as a matrix view.
fn as_matrix<A: Element>(g: &mut ArrayD<A>) -> ArrayViewMut2<'_, A> {
    g.view_mut()
        .into_dimensionality::<Ix2>()
        .expect("a weight-shaped tensor")
}

/// `out[j] = sum over rows of d[.., j]`, rows added in order.
fn column_sums<A: Element>(d: &ArrayView2<'_, A>, out: &mut ArrayD<A>) {
    out.fill(A::ZERO);
    let out = out.as_slice_mut().expect("a row-major bias-shaped tensor");
    for row in d.rows() {
        for (o, &x) in out.iter_mut().zip(row.iter()) {
            *o = *o + x;
        }
    }
}

/// `d` where `z > 0`, else 0 (the ReLU's derivative).
fn mask_view<A: Element>(d: &mut ArrayViewMut2<'_, A>, z: &ArrayView2<'_, A>) {
    Zip::from(d).and(z).for_each(|d, &z| {
        if z <= A::ZERO {
            *d = A::ZERO;
        }
    });
}

impl Mlp {
    /// The forward pass into `ws`: `pre[l]` and `acts[l]` hold the first
    /// `n` rows of every layer.
    fn forward_into<A: Element>(
        &self,
        params: &[ArrayD<A>],
        x: &Array2<A>,
        ws: &mut MlpWorkspace<A>,
    ) {
        self.check(params);
        let (n, layers) = (x.nrows(), self.layers());
        ws.pre.resize_with(layers, empty);
        ws.acts.resize_with(layers.saturating_sub(1), empty);
        for l in 0..layers {
            let width = self.sizes[l + 1];
            let hidden = ws.acts.len();
            let (before, after) = ws.acts.split_at_mut(l.min(hidden));
            let input = if l == 0 {
                x.view()
            } else {
                before[l - 1].slice(s![..n, ..])
            };
            let mut z = rows(&mut ws.pre[l], n, width);
            general_mat_mul(A::one(), &input, &w(&params[2 * l]), A::ZERO, &mut z);
            z.zip_mut_with(&b(&params[2 * l + 1]), |z, &c| *z = *z + c);
            if l + 1 < layers {
                let mut a = rows(&mut after[0], n, width);
                Zip::from(&mut a)
                    .and(&z)
                    .for_each(|a, &z| *a = if z > A::ZERO { z } else { A::ZERO });
            }
        }
    }

    /// `2 (out - y) / N` into `delta`, and the loss `sum (out - y)^2 / N`.
    fn output_delta_into<A: Element>(
        out: &ArrayView2<'_, A>,
        y: &Array2<A>,
        delta: &mut ArrayViewMut2<'_, A>,
    ) -> A {
        let n = A::from(out.len().max(1)).unwrap_or(A::one());
        let scale = A::from(2.0).unwrap_or(A::ZERO) / n;
        let mut loss = A::ZERO;
        Zip::from(delta).and(out).and(y).for_each(|d, &o, &t| {
            let e = o - t;
            loss = loss + e * e;
            *d = e * scale;
        });
        loss / n
    }
}

/// The MLP's Hessian-vector product recomputes its forward pass (it costs
/// as much as reading a stored one at these sizes), so its linearisation
/// holds nothing.
impl<A: Element> Objective<A> for Mlp {
    type Batch = Regression<A>;
    type Workspace = MlpWorkspace<A>;
    type Linearisation = ();

    fn workspace(&self) -> MlpWorkspace<A> {
        MlpWorkspace::default()
    }

    fn linearisation(&self) {}

    fn linearise_into(
        &self,
        params: &[ArrayD<A>],
        batch: &Regression<A>,
        ws: &mut MlpWorkspace<A>,
        grad: &mut [ArrayD<A>],
        _: &mut (),
    ) -> Result<A> {
        self.loss_grad_into(params, batch, ws, grad)
    }

    fn loss_grad_into(
        &self,
        params: &[ArrayD<A>],
        batch: &Regression<A>,
        ws: &mut MlpWorkspace<A>,
        grad: &mut [ArrayD<A>],
    ) -> Result<A> {
        self.fits(params, batch)?;
        self.forward_into(params, &batch.x, ws);
        let (n, layers) = (batch.x.nrows(), self.layers());
        ws.delta.resize_with(layers, empty);
        let last = layers - 1;
        let loss = {
            let out = ws.pre[last].slice(s![..n, ..]);
            let mut d = rows(&mut ws.delta[last], n, self.sizes[layers]);
            Self::output_delta_into(&out, &batch.y, &mut d)
        };
        for l in (0..layers).rev() {
            let (lower, upper) = ws.delta.split_at_mut(l);
            let d = upper[0].slice(s![..n, ..]);
            let a = if l == 0 {
                batch.x.view()
            } else {
                ws.acts[l - 1].slice(s![..n, ..])
            };
            general_mat_mul(
                A::one(),
                &a.t(),
                &d,
                A::ZERO,
                &mut as_matrix(&mut grad[2 * l]),
            );
            column_sums(&d, &mut grad[2 * l + 1]);
            if l > 0 {
                let mut next = rows(&mut lower[l - 1], n, self.sizes[l]);
                general_mat_mul(A::one(), &d, &w(&params[2 * l]).t(), A::ZERO, &mut next);
                mask_view(&mut next, &ws.pre[l - 1].slice(s![..n, ..]));
            }
        }
        Ok(loss)
    }

    fn hessian_vector_into(
        &self,
        params: &[ArrayD<A>],
        batch: &Regression<A>,
        _: &(),
        v: &[ArrayD<A>],
        ws: &mut MlpWorkspace<A>,
        hv: &mut [ArrayD<A>],
    ) -> Result<()> {
        self.fits(params, batch)?;
        self.fits(v, batch)?;
        self.forward_into(params, &batch.x, ws);
        let (n, layers) = (batch.x.nrows(), self.layers());
        let MlpWorkspace {
            acts,
            pre,
            delta,
            r_acts,
            r_pre,
            r_delta,
        } = ws;
        for bufs in [&mut *delta, &mut *r_pre, &mut *r_delta] {
            bufs.resize_with(layers, empty);
        }
        r_acts.resize_with(layers.saturating_sub(1), empty);
        let input = |l: usize| {
            if l == 0 {
                batch.x.view()
            } else {
                acts[l - 1].slice(s![..n, ..])
            }
        };
        // Forward R-pass: R(a_0) = 0; R(z_l) = a_l V_l + c_l + R(a_l) W_l;
        // R(a_{l+1}) = R(z_l) masked (the ReLU is piecewise linear).
        for l in 0..layers {
            let width = self.sizes[l + 1];
            let mut rz = rows(&mut r_pre[l], n, width);
            general_mat_mul(A::one(), &input(l), &w(&v[2 * l]), A::ZERO, &mut rz);
            rz.zip_mut_with(&b(&v[2 * l + 1]), |z, &c| *z = *z + c);
            if l > 0 {
                general_mat_mul(
                    A::one(),
                    &r_acts[l - 1].slice(s![..n, ..]),
                    &w(&params[2 * l]),
                    A::one(),
                    &mut rz,
                );
            }
            if l + 1 < layers {
                let mut ra = rows(&mut r_acts[l], n, width);
                ra.assign(&rz);
                mask_view(&mut ra, &pre[l].slice(s![..n, ..]));
            }
        }
        // Backward pass and its R-pass together.
        let last = layers - 1;
        let out_width = self.sizes[layers];
        {
            let out = pre[last].slice(s![..n, ..]);
            let mut d = rows(&mut delta[last], n, out_width);
            Self::output_delta_into(&out, &batch.y, &mut d);
            let scale =
                A::from(2.0).unwrap_or(A::ZERO) / A::from(out.len().max(1)).unwrap_or(A::one());
            let mut rd = rows(&mut r_delta[last], n, out_width);
            Zip::from(&mut rd)
                .and(&r_pre[last].slice(s![..n, ..]))
                .for_each(|rd, &rz| *rd = rz * scale);
        }
        for l in (0..layers).rev() {
            let (d_lo, d_hi) = delta.split_at_mut(l);
            let (rd_lo, rd_hi) = r_delta.split_at_mut(l);
            let d = d_hi[0].slice(s![..n, ..]);
            let rd = rd_hi[0].slice(s![..n, ..]);
            let mut hw = as_matrix(&mut hv[2 * l]);
            general_mat_mul(A::one(), &input(l).t(), &rd, A::ZERO, &mut hw);
            if l > 0 {
                general_mat_mul(
                    A::one(),
                    &r_acts[l - 1].slice(s![..n, ..]).t(),
                    &d,
                    A::one(),
                    &mut hw,
                );
            }
            column_sums(&rd, &mut hv[2 * l + 1]);
            if l > 0 {
                let wt = w(&params[2 * l]);
                let z = pre[l - 1].slice(s![..n, ..]);
                let mut next = rows(&mut d_lo[l - 1], n, self.sizes[l]);
                general_mat_mul(A::one(), &d, &wt.t(), A::ZERO, &mut next);
                mask_view(&mut next, &z);
                let mut r_next = rows(&mut rd_lo[l - 1], n, self.sizes[l]);
                general_mat_mul(A::one(), &rd, &wt.t(), A::ZERO, &mut r_next);
                general_mat_mul(A::one(), &d, &w(&v[2 * l]).t(), A::one(), &mut r_next);
                mask_view(&mut r_next, &z);
            }
        }
        Ok(())
    }
}
