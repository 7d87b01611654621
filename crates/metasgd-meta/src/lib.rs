//! Meta-SGD as its authors defined it (Li, Zhou, Chen, Li 2017, "Meta-SGD:
//! Learning to Learn Quickly for Few-Shot Learning"): over a distribution of
//! tasks, learn both the initial parameters `theta` and a learning rate per
//! parameter `alpha`, so that `K` adaptation steps `theta' = theta - alpha *
//! grad L_support(theta)` give a low loss on each task's query set. MAML
//! (one fixed scalar rate) and first-order MAML come out of the same code.
//!
//! Meta-gradients are exact, second order included, with no autodiff
//! framework: the inner iterates are stored and a reverse sweep runs
//! `lambda_K = grad L_query(theta_K)`; for `k = K-1 .. 0`: `dalpha -= g_k *
//! lambda_{k+1}`, `lambda_k = lambda_{k+1} - H_k (alpha * lambda_{k+1})`;
//! `dtheta = lambda_0`. The Hessian-vector products come from the
//! [`Objective`]; [`Mlp`] computes them exactly with Pearlmutter's
//! R-operator. The element-wise pieces are the fused kernels of
//! `metasgd_kernels::meta`. Tasks of a meta-batch run in parallel on the
//! caller's rayon pool, and the result does not depend on the thread count.
//!
//! Features: `simd` and `parallel` (default: the kernels' vector and
//! threaded paths); `omniglot` (off: the `omniglot` module, the Omniglot
//! data set's readers, task sampler and Lake's evaluation; adds `zip` and
//! `png`).
//!
//! ```
//! use metasgd_meta::{MetaLearner, Mlp, Sinusoid};
//! use rand::SeedableRng;
//!
//! let net = Mlp::new(&[1, 40, 40, 1]);
//! let mut learner = MetaLearner::meta_sgd(net.init::<f32>(0), 0.01);
//! let tasks = Sinusoid::default();
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! for _ in 0..20 {
//!     let batch: Vec<_> = (0..4).map(|_| tasks.sample::<f32, _>(&mut rng, 5, 10)).collect();
//!     learner.meta_step(&net, &batch)?;
//! }
//! // Adapt to a new task from 5 examples, then hand the learned rates to MetaSGD.
//! let task = tasks.sample::<f32, _>(&mut rng, 5, 100);
//! let adapted = learner.adapt(&net, &task.support)?;
//! let _prediction = net.predict(&adapted, &task.query.x);
//! let _online = learner.to_optimizer(0.01);
//! # Ok::<(), metasgd_core::Error>(())
//! ```

mod checkpoint;
mod convnet;
mod learner;
mod mlp;
#[cfg(feature = "omniglot")]
pub mod omniglot;
mod outer;
mod sinusoid;

pub use checkpoint::Extras;
pub use convnet::{Classification, ConvLinearisation, ConvNet, ConvWorkspace, Norm};
pub use learner::{MetaGradient, MetaLearner, Order};
pub use mlp::{Mlp, MlpWorkspace};
pub use outer::Outer;
pub use sinusoid::{Sine, Sinusoid};

use metasgd_core::Result;
use metasgd_kernels::Element;
use ndarray::{Array2, ArrayD};

/// A loss over parameter tensors, with its gradient and Hessian-vector product.
///
/// The methods write into buffers the caller owns (`grad`, `hv`: one
/// row-major array per parameter tensor, of its shape, overwritten) and may
/// keep scratch data in a [`Objective::Workspace`]: the meta-learner keeps
/// one workspace and one set of buffers per task of a meta-batch and reuses
/// them across meta-iterations, so the inner loop allocates nothing once
/// they are sized. `loss_grad` and `hessian_vector` are allocating
/// conveniences on top.
///
/// **What a Hessian-vector product reuses is explicit.** A gradient pass
/// that will be followed by Hessian-vector products at the same point is
/// [`Objective::linearise_into`]: besides the loss and the gradient it
/// leaves in a [`Objective::Linearisation`] what the products reuse (for
/// [`ConvNet`], every layer's forward and backward intermediates), and
/// [`Objective::hessian_vector_into`] takes that linearisation with the
/// same `params` and `batch`. A product asked for with a linearisation no
/// gradient pass filled, or filled on another batch size, is an
/// [`metasgd_core::Error::InvalidTask`]; nothing is copied or compared
/// bit by bit to find the point again. The meta-learner keeps one
/// linearisation per inner step, next to that step's parameters.
///
/// Every method returns a `Result`: a batch or parameters that do not fit
/// the model are an [`metasgd_core::Error::InvalidTask`] (the meta-learner
/// adds the task's index), never a panic.
///
/// `Sync` so that the tasks of a meta-batch can run on several threads.
pub trait Objective<A: Element>: Sync {
    /// One task's data (a support or a query set).
    type Batch: Sync;
    /// Scratch buffers one evaluation reuses (`()` if none).
    type Workspace: Send + 'static;
    /// What a gradient pass leaves for Hessian-vector products at the same
    /// point (`()` for an objective that recomputes everything).
    type Linearisation: Send + 'static;
    /// A fresh workspace.
    fn workspace(&self) -> Self::Workspace;
    /// An empty linearisation (filled by [`Objective::linearise_into`]).
    fn linearisation(&self) -> Self::Linearisation;
    /// Loss on `batch` at `params`; its gradient into `grad`.
    fn loss_grad_into(
        &self,
        params: &[ArrayD<A>],
        batch: &Self::Batch,
        ws: &mut Self::Workspace,
        grad: &mut [ArrayD<A>],
    ) -> Result<A>;
    /// [`Objective::loss_grad_into`], leaving in `lin` what Hessian-vector
    /// products at `params` on `batch` reuse.
    fn linearise_into(
        &self,
        params: &[ArrayD<A>],
        batch: &Self::Batch,
        ws: &mut Self::Workspace,
        grad: &mut [ArrayD<A>],
        lin: &mut Self::Linearisation,
    ) -> Result<A>;
    /// The Hessian of the loss on `batch` at `params`, times `v`, into `hv`,
    /// from `lin`, which [`Objective::linearise_into`] filled at these
    /// `params` on this `batch` (needed for second order).
    fn hessian_vector_into(
        &self,
        params: &[ArrayD<A>],
        batch: &Self::Batch,
        lin: &Self::Linearisation,
        v: &[ArrayD<A>],
        ws: &mut Self::Workspace,
        hv: &mut [ArrayD<A>],
    ) -> Result<()>;
    /// Loss on `batch` and its gradient, in new arrays.
    fn loss_grad(&self, params: &[ArrayD<A>], batch: &Self::Batch) -> Result<(A, Vec<ArrayD<A>>)> {
        let mut grad = zeros_like(params);
        let loss = self.loss_grad_into(params, batch, &mut self.workspace(), &mut grad)?;
        Ok((loss, grad))
    }
    /// Hessian times `v`, in new arrays (a gradient pass, then the product).
    fn hessian_vector(
        &self,
        params: &[ArrayD<A>],
        batch: &Self::Batch,
        v: &[ArrayD<A>],
    ) -> Result<Vec<ArrayD<A>>> {
        let (mut ws, mut lin) = (self.workspace(), self.linearisation());
        let mut hv = zeros_like(params);
        self.linearise_into(params, batch, &mut ws, &mut hv, &mut lin)?;
        self.hessian_vector_into(params, batch, &lin, v, &mut ws, &mut hv)?;
        Ok(hv)
    }
}

/// Zeros of the shapes of `params`, row-major.
pub(crate) fn zeros_like<A: Element>(params: &[ArrayD<A>]) -> Vec<ArrayD<A>> {
    params.iter().map(|p| ArrayD::zeros(p.raw_dim())).collect()
}

/// One task: the examples to adapt on and the examples to score the adaptation.
#[derive(Clone, Debug)]
pub struct Task<B> {
    /// Adaptation examples.
    pub support: B,
    /// Evaluation examples.
    pub query: B,
}

/// A regression batch: inputs `x` (rows are examples) and targets `y`.
#[derive(Clone, Debug)]
pub struct Regression<A> {
    /// Inputs, one example per row.
    pub x: Array2<A>,
    /// Targets, one example per row.
    pub y: Array2<A>,
}
