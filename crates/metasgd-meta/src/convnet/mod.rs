//! The few-shot image classifier of MAML and Meta-SGD (Finn et al. 2017,
//! Li et al. 2017) on Omniglot: four blocks of 3x3 convolution (stride 2,
//! padding 1), batch normalisation with batch statistics and ReLU; global
//! average pooling; a linear layer; softmax cross-entropy. Exact gradients
//! by backpropagation and exact Hessian-vector products by Pearlmutter's
//! R-operator through every layer.
//!
//! Convolutions are im2col followed by one matrix product (ndarray's
//! `general_mat_mul`, which runs matrixmultiply's packed kernels on the
//! calling thread), so a task's numbers never depend on the thread count.
//!
//! Activations are stored as matrices with one row per (image, row, column)
//! position and one column per channel (NHWC), so that every convolution,
//! its gradient and their R-operator versions are plain matrix products.
//!
//! Files by job: this one is the model (its parameter layout, inference,
//! the `Objective`); `buffers.rs` what the passes keep (and the
//! linearisation a gradient pass leaves); `passes.rs` the forward, loss,
//! backward and R-operator passes; `layers.rs` the layers' arithmetic.

mod buffers;
mod layers;
mod passes;

pub use buffers::{ConvLinearisation, ConvWorkspace};

use metasgd_core::{Error, Result};
use metasgd_kernels::Element;
use ndarray::{Array2, Array4, ArrayD, IxDyn};
use rand::{Rng, SeedableRng};

use crate::Objective;
use buffers::{Forward, Geometry};

/// A classification batch: images `x` of shape `(N, 1, side, side)` and
/// their class indices `y` (`N` of them, each below the network's class
/// count).
#[derive(Clone, Debug)]
pub struct Classification<A> {
    /// Images, one per row of the first axis, one channel.
    pub x: Array4<A>,
    /// Class indices.
    pub y: Vec<usize>,
}

/// The convolutional few-shot classifier; see the module docs.
///
/// Parameters, in order: for each block `W` `(filters, 3, 3, channels_in)`
/// (each filter's rows, columns, then input channels: im2col copies whole
/// channel runs),
/// the batch norm's scale `gamma` and shift `beta` `(filters,)`; then the
/// classifier's weight `(filters, classes)` and bias `(classes,)`. The
/// convolutions have no bias: batch normalisation removes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvNet {
    classes: usize,
    filters: usize,
    blocks: usize,
    side: usize,
}

/// How batch normalisation gets its statistics at prediction time.
#[derive(Clone, Copy, Debug)]
pub enum Norm<'a, A> {
    /// From the batch being classified (what MAML's papers do on test
    /// batches; information flows between the images of the batch).
    Batch,
    /// From these images (a task's support set): every image is then
    /// classified on its own.
    From(&'a Array4<A>),
}

impl ConvNet {
    /// Four blocks of 64 filters on 28x28 images, `classes` outputs.
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            filters: 64,
            blocks: 4,
            side: 28,
        }
    }

    /// Another number of filters per block (64 by default).
    pub fn with_filters(mut self, filters: usize) -> Self {
        self.filters = filters;
        self
    }

    /// Another number of blocks (4 by default).
    pub fn with_blocks(mut self, blocks: usize) -> Self {
        self.blocks = blocks;
        self
    }

    /// Another input side (28 by default).
    pub fn with_side(mut self, side: usize) -> Self {
        self.side = side;
        self
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The input side.
    pub fn side(&self) -> usize {
        self.side
    }

    /// Parameter shapes, in order.
    pub fn shapes(&self) -> Vec<Vec<usize>> {
        let mut shapes = Vec::new();
        let mut cin = 1;
        for _ in 0..self.blocks {
            shapes.push(vec![self.filters, 3, 3, cin]);
            shapes.push(vec![self.filters]);
            shapes.push(vec![self.filters]);
            cin = self.filters;
        }
        shapes.push(vec![self.filters, self.classes]);
        shapes.push(vec![self.classes]);
        shapes
    }

    /// Parameters drawn as PyTorch does by default (convolution and linear
    /// weights and the linear bias uniform in `+-1/sqrt(fan_in)`; batch
    /// norm scale 1, shift 0), from a seeded generator.
    pub fn init<A: Element>(&self, seed: u64) -> Vec<ArrayD<A>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = Vec::new();
        let shapes = self.shapes();
        for (i, shape) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let block_part = if i < 3 * self.blocks { i % 3 } else { 3 };
            let values: Vec<A> = match block_part {
                1 => vec![A::one(); n],
                2 => vec![A::ZERO; n],
                _ => {
                    let fan_in = match shape.len() {
                        4 => shape[3] * 9,
                        2 => shape[0],
                        _ => self.filters,
                    };
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    (0..n)
                        .map(|_| A::from(rng.random_range(-bound..bound)).unwrap_or(A::ZERO))
                        .collect()
                }
            };
            out.push(ArrayD::from_shape_vec(IxDyn(shape), values).expect("shape and data agree"));
        }
        out
    }

    /// Why `batch` does not fit this network, if it does not.
    pub fn check_batch<A: Element>(
        &self,
        batch: &Classification<A>,
    ) -> std::result::Result<(), String> {
        self.check_images(&batch.x)?;
        let n = batch.x.shape()[0];
        if batch.y.len() != n {
            return Err(format!("{} labels for {n} images", batch.y.len()));
        }
        if let Some(c) = batch.y.iter().find(|&&c| c >= self.classes) {
            return Err(format!("class {c} of a {}-way network", self.classes));
        }
        Ok(())
    }

    /// Why images `x` do not fit this network, if they do not.
    fn check_images<A: Element>(&self, x: &Array4<A>) -> std::result::Result<(), String> {
        let s = x.shape();
        if s[1] != 1 || s[2] != self.side || s[3] != self.side {
            return Err(format!(
                "images of shape {s:?}, expected (N, 1, {}, {})",
                self.side, self.side
            ));
        }
        if s[0] == 0 {
            return Err("an empty batch".into());
        }
        Ok(())
    }

    /// Why `params` (or a direction) do not fit this network, if they do not.
    fn check_params<A: Element>(&self, what: &str, params: &[ArrayD<A>]) -> Result<()> {
        let shapes = self.shapes();
        let fits = params.len() == shapes.len()
            && params
                .iter()
                .zip(&shapes)
                .all(|(p, s)| p.shape() == s.as_slice());
        if !fits {
            let got: Vec<&[usize]> = params.iter().map(|p| p.shape()).collect();
            return Err(Error::invalid_task(format!(
                "{what} of shapes {got:?}, {self:?} has {shapes:?}"
            )));
        }
        // The passes read every tensor as one row-major slice.
        match params.iter().position(|p| !p.is_standard_layout()) {
            Some(i) => Err(Error::invalid_task(format!(
                "{what}: tensor {i} is not row-major (as_standard_layout() makes a copy that is)"
            ))),
            None => Ok(()),
        }
    }

    /// [`ConvNet::check_batch`] as an [`Error::InvalidTask`].
    fn check<A: Element>(&self, params: &[ArrayD<A>], batch: &Classification<A>) -> Result<()> {
        self.check_params("parameters", params)?;
        self.check_batch(batch).map_err(Error::invalid_task)
    }

    /// The spatial side after block `b` (0-based).
    fn side_after(&self, b: usize) -> usize {
        (0..=b).fold(self.side, |s, _| (s - 1) / 2 + 1)
    }

    fn geometry(&self, n: usize, b: usize) -> Geometry {
        let side_in = if b == 0 {
            self.side
        } else {
            self.side_after(b - 1)
        };
        Geometry {
            n,
            side_in,
            side_out: self.side_after(b),
            cin: if b == 0 { 1 } else { self.filters },
        }
    }

    /// Logits `(N, classes)` for images `x`, normalising as `norm` says.
    /// Only the forward pass's buffers are made.
    ///
    /// Errors: parameters or images that do not fit the network
    /// ([`Error::InvalidTask`]).
    pub fn logits<A: Element>(
        &self,
        params: &[ArrayD<A>],
        x: &Array4<A>,
        norm: Norm<'_, A>,
    ) -> Result<Array2<A>> {
        self.check_params("parameters", params)?;
        let images = |x: &Array4<A>| self.check_images(x).map_err(Error::invalid_task);
        images(x)?;
        let stats = match norm {
            Norm::Batch => None,
            Norm::From(support) => {
                images(support)?;
                let mut fwd = Forward::new(self, support.shape()[0]);
                self.forward(params, support, &mut fwd, None);
                let blocks = fwd.blocks.into_iter();
                Some(blocks.map(|b| (b.mean, b.inv_std)).collect::<Vec<_>>())
            }
        };
        let mut fwd = Forward::new(self, x.shape()[0]);
        self.forward(params, x, &mut fwd, stats.as_deref());
        Ok(fwd.logits)
    }

    /// The most likely class of every image of `x` (see [`ConvNet::logits`]).
    pub fn predict<A: Element>(
        &self,
        params: &[ArrayD<A>],
        x: &Array4<A>,
        norm: Norm<'_, A>,
    ) -> Result<Vec<usize>> {
        let logits = self.logits(params, x, norm)?;
        let best = |r: ndarray::ArrayView1<'_, A>| {
            let mut best = 0;
            for (j, &v) in r.iter().enumerate() {
                if v > r[best] {
                    best = j;
                }
            }
            best
        };
        Ok(logits.rows().into_iter().map(best).collect())
    }
}

/// The gradient pass leaves every layer's forward and backward values in a
/// [`ConvLinearisation`]; the Hessian-vector product runs only the
/// R-operator pass over them (one forward-and-backward's worth of work
/// instead of two).
impl<A: Element> Objective<A> for ConvNet {
    type Batch = Classification<A>;
    type Workspace = ConvWorkspace<A>;
    type Linearisation = ConvLinearisation<A>;

    fn workspace(&self) -> ConvWorkspace<A> {
        ConvWorkspace::default()
    }

    fn linearisation(&self) -> ConvLinearisation<A> {
        ConvLinearisation::default()
    }

    fn loss_grad_into(
        &self,
        params: &[ArrayD<A>],
        batch: &Classification<A>,
        ws: &mut ConvWorkspace<A>,
        grad: &mut [ArrayD<A>],
    ) -> Result<A> {
        self.check(params, batch)?;
        self.check_params("gradient buffers", grad)?;
        Ok(self.gradient_pass(params, batch, ws.pass(self, batch.y.len()), grad))
    }

    fn linearise_into(
        &self,
        params: &[ArrayD<A>],
        batch: &Classification<A>,
        _: &mut ConvWorkspace<A>,
        grad: &mut [ArrayD<A>],
        lin: &mut ConvLinearisation<A>,
    ) -> Result<A> {
        self.check(params, batch)?;
        self.check_params("gradient buffers", grad)?;
        let loss = self.gradient_pass(params, batch, lin.reset(self, batch.y.len()), grad);
        lin.filled = true;
        Ok(loss)
    }

    fn hessian_vector_into(
        &self,
        params: &[ArrayD<A>],
        batch: &Classification<A>,
        lin: &ConvLinearisation<A>,
        v: &[ArrayD<A>],
        ws: &mut ConvWorkspace<A>,
        hv: &mut [ArrayD<A>],
    ) -> Result<()> {
        self.check(params, batch)?;
        self.check_params("the direction", v)?;
        self.check_params("the product's buffers", hv)?;
        let n = batch.y.len();
        let pass = match &lin.pass {
            Some(pass) if lin.filled && pass.forward.n == n => pass,
            _ => {
                return Err(Error::invalid_task(format!(
                    "a Hessian-vector product on {n} images needs the linearisation of a gradient pass on them (linearise_into)"
                )));
            }
        };
        self.r_pass(params, v, pass, ws.tangent(self, n), hv);
        Ok(())
    }
}

impl ConvNet {
    /// Forward, loss and backward on `batch` into `pass`; the gradient into
    /// `grad`; returns the loss.
    fn gradient_pass<A: Element>(
        &self,
        params: &[ArrayD<A>],
        batch: &Classification<A>,
        pass: &mut buffers::Pass<A>,
        grad: &mut [ArrayD<A>],
    ) -> A {
        self.forward(params, &batch.x, &mut pass.forward, None);
        let loss = self.loss(&batch.y, &pass.forward, &mut pass.backward);
        self.backward(params, pass, grad);
        loss
    }
}
