//! What the passes keep, named for what it holds: a block's forward values
//! (what inference needs), its backward values (the gradient pass), its
//! tangents (the R-operator pass); the linearisation a gradient pass leaves
//! for Hessian-vector products; the workspace's scratch.

use metasgd_kernels::Element;
use ndarray::Array2;

use super::ConvNet;

/// One block's sizes.
pub(super) struct Geometry {
    /// Images.
    pub(super) n: usize,
    pub(super) side_in: usize,
    pub(super) side_out: usize,
    /// Input channels.
    pub(super) cin: usize,
}

impl Geometry {
    /// Output positions over the batch (rows of the block's matrices).
    pub(super) fn positions(&self) -> usize {
        self.n * self.side_out * self.side_out
    }
}

fn matrix<A: Element>(rows: usize, cols: usize) -> Array2<A> {
    Array2::zeros((rows, cols))
}

fn zeros<A: Element>(n: usize) -> Vec<A> {
    vec![A::ZERO; n]
}

/// One block's forward values: rows are output positions, columns channels.
#[derive(Clone, Debug)]
pub(super) struct BlockForward<A> {
    pub(super) positions_per_image: usize,
    /// The input's 3x3 patches (im2col), one row per output position.
    pub(super) patches: Array2<A>,
    /// The convolution's output.
    pub(super) conv: Array2<A>,
    /// Batch norm's per-channel mean and `1/sqrt(var + eps)`.
    pub(super) mean: Vec<A>,
    pub(super) inv_std: Vec<A>,
    /// `(conv - mean) * inv_std`.
    pub(super) normalised: Array2<A>,
    /// `gamma * normalised + beta`, before the ReLU.
    pub(super) pre_relu: Array2<A>,
    /// The block's output, `relu(pre_relu)`.
    pub(super) out: Vec<A>,
}

impl<A: Element> BlockForward<A> {
    fn new(g: &Geometry, f: usize) -> Self {
        let (p, k) = (g.positions(), g.cin * 9);
        Self {
            positions_per_image: g.side_out * g.side_out,
            patches: matrix(p, k),
            conv: matrix(p, f),
            mean: zeros(f),
            inv_std: zeros(f),
            normalised: matrix(p, f),
            pre_relu: matrix(p, f),
            out: zeros(p * f),
        }
    }
}

/// One block's backward values (`g_` = the loss's gradient with respect to).
#[derive(Clone, Debug)]
pub(super) struct BlockBackward<A> {
    pub(super) g_out: Vec<A>,
    pub(super) g_pre_relu: Array2<A>,
    pub(super) g_normalised: Array2<A>,
    /// Per channel: the means of `g_normalised` and of `g_normalised * normalised`.
    pub(super) mean_g_normalised: Vec<A>,
    pub(super) mean_g_normalised_normalised: Vec<A>,
    /// `g_normalised - mean_g_normalised - normalised * mean_g_normalised_normalised`
    /// (`g_conv` before the scale by `inv_std`).
    pub(super) centred: Array2<A>,
    pub(super) g_conv: Array2<A>,
    pub(super) g_patches: Array2<A>,
    /// The batch norm parameters' gradients.
    pub(super) g_gamma: Vec<A>,
    pub(super) g_beta: Vec<A>,
}

impl<A: Element> BlockBackward<A> {
    fn new(g: &Geometry, f: usize) -> Self {
        let (p, k) = (g.positions(), g.cin * 9);
        Self {
            g_out: zeros(p * f),
            g_pre_relu: matrix(p, f),
            g_normalised: matrix(p, f),
            mean_g_normalised: zeros(f),
            mean_g_normalised_normalised: zeros(f),
            centred: matrix(p, f),
            g_conv: matrix(p, f),
            g_patches: matrix(p, k),
            g_gamma: zeros(f),
            g_beta: zeros(f),
        }
    }
}

/// One block's tangents along the direction `v` (`r_` = Pearlmutter's R).
#[derive(Clone, Debug)]
pub(super) struct BlockTangent<A> {
    pub(super) r_patches: Array2<A>,
    pub(super) r_conv: Array2<A>,
    pub(super) r_mean: Vec<A>,
    /// Per channel: the mean of `normalised * r_conv`.
    pub(super) mean_normalised_r_conv: Vec<A>,
    pub(super) r_inv_std: Vec<A>,
    pub(super) r_normalised: Array2<A>,
    pub(super) r_out: Vec<A>,
    pub(super) r_g_out: Vec<A>,
    pub(super) r_mean_g_normalised: Vec<A>,
    pub(super) r_mean_g_normalised_normalised: Vec<A>,
    pub(super) r_g_conv: Array2<A>,
    pub(super) r_g_gamma: Vec<A>,
    pub(super) r_g_beta: Vec<A>,
}

impl<A: Element> BlockTangent<A> {
    fn new(g: &Geometry, f: usize) -> Self {
        let (p, k) = (g.positions(), g.cin * 9);
        Self {
            r_patches: matrix(p, k),
            r_conv: matrix(p, f),
            r_mean: zeros(f),
            mean_normalised_r_conv: zeros(f),
            r_inv_std: zeros(f),
            r_normalised: matrix(p, f),
            r_out: zeros(p * f),
            r_g_out: zeros(p * f),
            r_mean_g_normalised: zeros(f),
            r_mean_g_normalised_normalised: zeros(f),
            r_g_conv: matrix(p, f),
            r_g_gamma: zeros(f),
            r_g_beta: zeros(f),
        }
    }
}

/// A forward pass over a batch of `n` images: what inference needs.
#[derive(Clone, Debug)]
pub(super) struct Forward<A> {
    pub(super) n: usize,
    /// The images, in the order the first block reads them.
    pub(super) input: Vec<A>,
    pub(super) blocks: Vec<BlockForward<A>>,
    /// The last block's output averaged over each image's positions.
    pub(super) pooled: Array2<A>,
    pub(super) logits: Array2<A>,
}

impl<A: Element> Forward<A> {
    pub(super) fn new(net: &ConvNet, n: usize) -> Self {
        Self {
            n,
            input: Vec::new(),
            blocks: (0..net.blocks)
                .map(|b| BlockForward::new(&net.geometry(n, b), net.filters))
                .collect(),
            pooled: matrix(n, net.filters),
            logits: matrix(n, net.classes),
        }
    }
}

/// A backward pass over a batch of `n` images.
#[derive(Clone, Debug)]
pub(super) struct Backward<A> {
    pub(super) blocks: Vec<BlockBackward<A>>,
    /// Softmax probabilities.
    pub(super) probs: Array2<A>,
    pub(super) g_logits: Array2<A>,
    pub(super) g_pooled: Array2<A>,
}

impl<A: Element> Backward<A> {
    fn new(net: &ConvNet, n: usize) -> Self {
        Self {
            blocks: (0..net.blocks)
                .map(|b| BlockBackward::new(&net.geometry(n, b), net.filters))
                .collect(),
            probs: matrix(n, net.classes),
            g_logits: matrix(n, net.classes),
            g_pooled: matrix(n, net.filters),
        }
    }
}

/// The R-operator pass's values over a batch of `n` images.
#[derive(Clone, Debug)]
pub(super) struct Tangent<A> {
    pub(super) n: usize,
    pub(super) blocks: Vec<BlockTangent<A>>,
    pub(super) r_pooled: Array2<A>,
    pub(super) r_logits: Array2<A>,
    pub(super) r_g_logits: Array2<A>,
    pub(super) r_g_pooled: Array2<A>,
}

impl<A: Element> Tangent<A> {
    fn new(net: &ConvNet, n: usize) -> Self {
        Self {
            n,
            blocks: (0..net.blocks)
                .map(|b| BlockTangent::new(&net.geometry(n, b), net.filters))
                .collect(),
            r_pooled: matrix(n, net.filters),
            r_logits: matrix(n, net.classes),
            r_g_logits: matrix(n, net.classes),
            r_g_pooled: matrix(n, net.filters),
        }
    }
}

/// A gradient pass's forward and backward values.
#[derive(Clone, Debug)]
pub(super) struct Pass<A> {
    pub(super) forward: Forward<A>,
    pub(super) backward: Backward<A>,
}

impl<A: Element> Pass<A> {
    fn new(net: &ConvNet, n: usize) -> Self {
        Self {
            forward: Forward::new(net, n),
            backward: Backward::new(net, n),
        }
    }
}

/// What [`ConvNet`]'s gradient pass leaves for Hessian-vector products at
/// the same point (its `Objective::Linearisation`): every block's forward
/// and backward values on the batch. Empty until a gradient pass fills it;
/// its buffers are kept across calls.
#[derive(Clone, Debug)]
pub struct ConvLinearisation<A> {
    pub(super) pass: Option<Pass<A>>,
    /// Whether `pass` holds a complete gradient pass.
    pub(super) filled: bool,
}

impl<A> Default for ConvLinearisation<A> {
    fn default() -> Self {
        Self {
            pass: None,
            filled: false,
        }
    }
}

impl<A: Element> ConvLinearisation<A> {
    /// The pass's buffers for `n` images (kept when the size is the same),
    /// marked not filled.
    pub(super) fn reset(&mut self, net: &ConvNet, n: usize) -> &mut Pass<A> {
        self.filled = false;
        if self.pass.as_ref().is_none_or(|p| p.forward.n != n) {
            self.pass = Some(Pass::new(net, n));
        }
        self.pass.as_mut().expect("just sized")
    }
}

/// Buffers a [`ConvNet`] reuses across evaluations (one per task of a
/// meta-batch, kept by the meta-learner): the scratch of gradient passes
/// that leave no linearisation (a task's query set) and of R-operator
/// passes, one set per batch size seen, at most four sizes each.
#[derive(Clone, Debug)]
pub struct ConvWorkspace<A> {
    passes: Vec<Pass<A>>,
    tangents: Vec<Tangent<A>>,
}

impl<A> Default for ConvWorkspace<A> {
    fn default() -> Self {
        Self {
            passes: Vec::new(),
            tangents: Vec::new(),
        }
    }
}

/// The set of `sets` for `n` (made by `make` the first time; the oldest
/// goes past four sizes).
fn sized<T>(
    sets: &mut Vec<T>,
    n: usize,
    size: impl Fn(&T) -> usize,
    make: impl FnOnce() -> T,
) -> &mut T {
    let i = match sets.iter().position(|s| size(s) == n) {
        Some(i) => i,
        None => {
            if sets.len() >= 4 {
                sets.remove(0);
            }
            sets.push(make());
            sets.len() - 1
        }
    };
    &mut sets[i]
}

impl<A: Element> ConvWorkspace<A> {
    pub(super) fn pass(&mut self, net: &ConvNet, n: usize) -> &mut Pass<A> {
        sized(&mut self.passes, n, |p| p.forward.n, || Pass::new(net, n))
    }

    pub(super) fn tangent(&mut self, net: &ConvNet, n: usize) -> &mut Tangent<A> {
        sized(&mut self.tangents, n, |t| t.n, || Tangent::new(net, n))
    }
}
