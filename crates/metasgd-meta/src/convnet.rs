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

// The per-channel loops index several buffers by (row, channel) at once;
// written with indices they read like the formulas they implement.
#![allow(clippy::needless_range_loop)]

use metasgd_kernels::Element;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, Array4, ArrayD, ArrayView2, ArrayViewMut2, Ix2, IxDyn};
use rand::{Rng, SeedableRng};

use crate::Objective;

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

/// Batch normalisation's epsilon (PyTorch's default).
const EPS: f64 = 1e-5;

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
    pub fn check_batch<A: Element>(&self, batch: &Classification<A>) -> Result<(), String> {
        let s = batch.x.shape();
        if s[1] != 1 || s[2] != self.side || s[3] != self.side {
            return Err(format!(
                "images of shape {s:?}, expected (N, 1, {}, {})",
                self.side, self.side
            ));
        }
        if batch.y.len() != s[0] {
            return Err(format!("{} labels for {} images", batch.y.len(), s[0]));
        }
        if let Some(c) = batch.y.iter().find(|&&c| c >= self.classes) {
            return Err(format!("class {c} of a {}-way network", self.classes));
        }
        if s[0] == 0 {
            return Err("an empty batch".into());
        }
        Ok(())
    }

    fn check_params<A: Element>(&self, params: &[ArrayD<A>]) {
        let shapes = self.shapes();
        assert_eq!(params.len(), shapes.len(), "parameter count of {self:?}");
        for (i, (p, s)) in params.iter().zip(&shapes).enumerate() {
            assert_eq!(p.shape(), s.as_slice(), "parameter {i} of {self:?}");
        }
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
    pub fn logits<A: Element>(
        &self,
        params: &[ArrayD<A>],
        x: &Array4<A>,
        norm: Norm<'_, A>,
    ) -> Array2<A> {
        self.check_params(params);
        let stats = match norm {
            Norm::Batch => None,
            Norm::From(support) => {
                let mut ws = ConvWorkspace::default();
                let bufs = ws.buffers(self, support.shape()[0]);
                self.forward(params, support, bufs, None);
                Some(
                    bufs.blocks
                        .iter()
                        .map(|b| (b.mu.clone(), b.s.clone()))
                        .collect::<Vec<_>>(),
                )
            }
        };
        let mut ws = ConvWorkspace::default();
        let bufs = ws.buffers(self, x.shape()[0]);
        self.forward(params, x, bufs, stats.as_deref());
        bufs.logits.clone()
    }

    /// The most likely class of every image of `x`.
    pub fn predict<A: Element>(
        &self,
        params: &[ArrayD<A>],
        x: &Array4<A>,
        norm: Norm<'_, A>,
    ) -> Vec<usize> {
        let logits = self.logits(params, x, norm);
        logits
            .rows()
            .into_iter()
            .map(|r| {
                let mut best = 0;
                for (j, &v) in r.iter().enumerate() {
                    if v > r[best] {
                        best = j;
                    }
                }
                best
            })
            .collect()
    }

    /// The forward pass into `bufs` (statistics from the batch, or fixed
    /// `(mean, 1/sqrt(var + eps))` per block); returns nothing, the loss is
    /// [`ConvNet::loss_into`]'s.
    fn forward<A: Element>(
        &self,
        params: &[ArrayD<A>],
        x: &Array4<A>,
        bufs: &mut Buffers<A>,
        fixed: Option<&[(Vec<A>, Vec<A>)]>,
    ) {
        let n = x.shape()[0];
        let f = self.filters;
        bufs.done = false;
        let mut input = std::mem::take(&mut bufs.input);
        input.clear();
        input.extend(x.iter().copied());
        for b in 0..self.blocks {
            let g = self.geometry(n, b);
            let (before, rest) = bufs.blocks.split_at_mut(b);
            let blk = &mut rest[0];
            let a_in: &[A] = if b == 0 { &input } else { &before[b - 1].a };
            im2col(a_in, &g, &mut blk.xcol);
            let w = weight_matrix(&params[3 * b], f, g.cin * 9);
            gemm(blk.xcol.view(), w.t(), A::ZERO, blk.z.view_mut());
            match fixed {
                None => batch_stats(&blk.z, &mut blk.mu, &mut blk.s),
                Some(stats) => {
                    blk.mu.clone_from(&stats[b].0);
                    blk.s.clone_from(&stats[b].1);
                }
            }
            let gamma = slice(&params[3 * b + 1]);
            let beta = slice(&params[3 * b + 2]);
            let z = flat(&blk.z);
            let zhat = flat_mut(&mut blk.zhat);
            let y = flat_mut(&mut blk.y);
            for ((z, zh), (y, a)) in z
                .chunks_exact(f)
                .zip(zhat.chunks_exact_mut(f))
                .zip(y.chunks_exact_mut(f).zip(blk.a.chunks_exact_mut(f)))
            {
                for c in 0..f {
                    let v = (z[c] - blk.mu[c]) * blk.s[c];
                    let out = gamma[c] * v + beta[c];
                    zh[c] = v;
                    y[c] = out;
                    a[c] = if out > A::ZERO { out } else { A::ZERO };
                }
            }
        }
        bufs.input = input;
        let last = &bufs.blocks[self.blocks - 1];
        let hw = last.positions_per_image;
        pool(&last.a, n, hw, f, &mut bufs.h);
        gemm(
            bufs.h.view(),
            matrix(&params[3 * self.blocks]),
            A::ZERO,
            bufs.logits.view_mut(),
        );
        let bias = slice(&params[3 * self.blocks + 1]);
        for mut row in bufs.logits.rows_mut() {
            for (o, &c) in row.iter_mut().zip(bias) {
                *o = *o + c;
            }
        }
    }

    /// Softmax probabilities into `bufs.p`, `dL/dlogits = (p - onehot) / N`
    /// into `bufs.g_logits`; returns the mean cross-entropy.
    fn loss_into<A: Element>(&self, y: &[usize], bufs: &mut Buffers<A>) -> A {
        let n = y.len();
        let inv_n = A::one() / A::from(n).unwrap_or(A::one());
        let mut loss = A::ZERO;
        for ((logits, mut p), (mut g, &label)) in bufs
            .logits
            .rows()
            .into_iter()
            .zip(bufs.p.rows_mut())
            .zip(bufs.g_logits.rows_mut().into_iter().zip(y))
        {
            let max = logits.iter().copied().fold(A::neg_infinity(), A::max);
            let mut sum = A::ZERO;
            for (q, &o) in p.iter_mut().zip(logits.iter()) {
                *q = (o - max).exp();
                sum = sum + *q;
            }
            for q in p.iter_mut() {
                *q = *q / sum;
            }
            loss = loss - (logits[label] - max - sum.ln());
            for (j, (gj, &q)) in g.iter_mut().zip(p.iter()).enumerate() {
                let t = if j == label { A::one() } else { A::ZERO };
                *gj = (q - t) * inv_n;
            }
        }
        loss * inv_n
    }

    /// The backward pass after [`ConvNet::forward`] and
    /// [`ConvNet::loss_into`]: every parameter's gradient into `grad`, and
    /// the per-block intermediates the R-operator reuses into `bufs`.
    fn backward<A: Element>(
        &self,
        params: &[ArrayD<A>],
        bufs: &mut Buffers<A>,
        grad: &mut [ArrayD<A>],
    ) {
        let f = self.filters;
        let nb = self.blocks;
        let n = bufs.h.nrows();
        // Classifier.
        gemm(
            bufs.h.view().t(),
            bufs.g_logits.view(),
            A::ZERO,
            matrix_mut(&mut grad[3 * nb]),
        );
        column_sums(&bufs.g_logits, slice_mut(&mut grad[3 * nb + 1]));
        gemm(
            bufs.g_logits.view(),
            matrix(&params[3 * nb]).t(),
            A::ZERO,
            bufs.g_h.view_mut(),
        );
        let hw = bufs.blocks[nb - 1].positions_per_image;
        unpool(&bufs.g_h, n, hw, f, &mut bufs.blocks[nb - 1].g_a);
        for b in (0..nb).rev() {
            let g = self.geometry(n, b);
            let (before, rest) = bufs.blocks.split_at_mut(b);
            let blk = &mut rest[0];
            let gamma = slice(&params[3 * b + 1]);
            bn_backward(blk, gamma, f);
            let (gg, gb) = {
                let (a, b2) = grad.split_at_mut(3 * b + 2);
                (slice_mut(&mut a[3 * b + 1]), slice_mut(&mut b2[0]))
            };
            gg.copy_from_slice(&blk.sum_gy_zhat);
            gb.copy_from_slice(&blk.sum_gy);
            let gw = weight_matrix_mut(&mut grad[3 * b], f, g.cin * 9);
            gemm(blk.g_z.view().t(), blk.xcol.view(), A::ZERO, gw);
            if b > 0 {
                let w = weight_matrix(&params[3 * b], f, g.cin * 9);
                gemm(blk.g_z.view(), w, A::ZERO, blk.g_xcol.view_mut());
                col2im(&blk.g_xcol, &g, &mut before[b - 1].g_a);
            }
        }
    }

    /// The R-operator pass for direction `v` after forward, loss and
    /// backward at the same parameters: `H v` into `hv`.
    fn r_pass<A: Element>(
        &self,
        params: &[ArrayD<A>],
        v: &[ArrayD<A>],
        bufs: &mut Buffers<A>,
        hv: &mut [ArrayD<A>],
    ) {
        let f = self.filters;
        let nb = self.blocks;
        let n = bufs.h.nrows();
        // R-forward through the blocks.
        for b in 0..nb {
            let g = self.geometry(n, b);
            let (before, rest) = bufs.blocks.split_at_mut(b);
            let blk = &mut rest[0];
            let w = weight_matrix(&params[3 * b], f, g.cin * 9);
            let vw = weight_matrix(&v[3 * b], f, g.cin * 9);
            // R z = R(xcol) W^T + xcol V^T.
            gemm(blk.xcol.view(), vw.t(), A::ZERO, blk.r_z.view_mut());
            if b > 0 {
                im2col(&before[b - 1].r_a, &g, &mut blk.r_xcol);
                gemm(blk.r_xcol.view(), w.t(), A::one(), blk.r_z.view_mut());
            }
            let gamma = slice(&params[3 * b + 1]);
            let (vg, vb) = (slice(&v[3 * b + 1]), slice(&v[3 * b + 2]));
            bn_r_forward(blk, gamma, vg, vb, f);
        }
        let last = &bufs.blocks[nb - 1];
        let hw = last.positions_per_image;
        pool(&last.r_a, n, hw, f, &mut bufs.r_h);
        // R logits = R h Wf + h Vf + Vb.
        gemm(
            bufs.r_h.view(),
            matrix(&params[3 * nb]),
            A::ZERO,
            bufs.r_logits.view_mut(),
        );
        gemm(
            bufs.h.view(),
            matrix(&v[3 * nb]),
            A::one(),
            bufs.r_logits.view_mut(),
        );
        let vb = slice(&v[3 * nb + 1]);
        let inv_n = A::one() / A::from(n).unwrap_or(A::one());
        for ((mut ro, p), mut rg) in bufs
            .r_logits
            .rows_mut()
            .into_iter()
            .zip(bufs.p.rows())
            .zip(bufs.r_g_logits.rows_mut())
        {
            for (o, &c) in ro.iter_mut().zip(vb) {
                *o = *o + c;
            }
            // R p = p (R o - sum p R o); R g = R p / N.
            let dot = p
                .iter()
                .zip(ro.iter())
                .fold(A::ZERO, |s, (&q, &r)| s + q * r);
            for ((g, &q), &r) in rg.iter_mut().zip(p.iter()).zip(ro.iter()) {
                *g = q * (r - dot) * inv_n;
            }
        }
        // R-backward: the classifier.
        {
            let (head, tail) = hv.split_at_mut(3 * nb + 1);
            let mut r_gw = matrix_mut(&mut head[3 * nb]);
            gemm(
                bufs.r_h.view().t(),
                bufs.g_logits.view(),
                A::ZERO,
                r_gw.view_mut(),
            );
            gemm(bufs.h.view().t(), bufs.r_g_logits.view(), A::one(), r_gw);
            column_sums(&bufs.r_g_logits, slice_mut(&mut tail[0]));
        }
        gemm(
            bufs.r_g_logits.view(),
            matrix(&params[3 * nb]).t(),
            A::ZERO,
            bufs.r_g_h.view_mut(),
        );
        gemm(
            bufs.g_logits.view(),
            matrix(&v[3 * nb]).t(),
            A::one(),
            bufs.r_g_h.view_mut(),
        );
        unpool(&bufs.r_g_h, n, hw, f, &mut bufs.blocks[nb - 1].r_g_a);
        for b in (0..nb).rev() {
            let g = self.geometry(n, b);
            let (before, rest) = bufs.blocks.split_at_mut(b);
            let blk = &mut rest[0];
            let gamma = slice(&params[3 * b + 1]);
            let vg = slice(&v[3 * b + 1]);
            bn_r_backward(blk, gamma, vg, f);
            {
                let (a, b2) = hv.split_at_mut(3 * b + 2);
                slice_mut(&mut a[3 * b + 1]).copy_from_slice(&blk.r_sum_gamma);
                slice_mut(&mut b2[0]).copy_from_slice(&blk.r_sum_beta);
            }
            let mut r_gw = weight_matrix_mut(&mut hv[3 * b], f, g.cin * 9);
            gemm(
                blk.r_g_z.view().t(),
                blk.xcol.view(),
                A::ZERO,
                r_gw.view_mut(),
            );
            if b > 0 {
                gemm(blk.g_z.view().t(), blk.r_xcol.view(), A::one(), r_gw);
                let w = weight_matrix(&params[3 * b], f, g.cin * 9);
                let vw = weight_matrix(&v[3 * b], f, g.cin * 9);
                gemm(blk.r_g_z.view(), w, A::ZERO, blk.g_xcol.view_mut());
                gemm(blk.g_z.view(), vw, A::one(), blk.g_xcol.view_mut());
                col2im(&blk.g_xcol, &g, &mut before[b - 1].r_g_a);
            }
        }
    }
}

/// One block's sizes.
struct Geometry {
    n: usize,
    side_in: usize,
    side_out: usize,
    cin: usize,
}

impl Geometry {
    fn positions(&self) -> usize {
        self.n * self.side_out * self.side_out
    }
}

/// Everything one block keeps for the backward and R passes.
#[derive(Clone, Debug)]
struct Block<A> {
    positions_per_image: usize,
    xcol: Array2<A>,
    z: Array2<A>,
    mu: Vec<A>,
    s: Vec<A>,
    zhat: Array2<A>,
    y: Array2<A>,
    a: Vec<A>,
    // Backward.
    g_a: Vec<A>,
    g_y: Array2<A>,
    g_zhat: Array2<A>,
    u: Array2<A>,
    m2: Vec<A>,
    g_z: Array2<A>,
    g_xcol: Array2<A>,
    sum_gy: Vec<A>,
    sum_gy_zhat: Vec<A>,
    // R-operator.
    r_xcol: Array2<A>,
    r_z: Array2<A>,
    r_zhat: Array2<A>,
    r_s: Vec<A>,
    r_a: Vec<A>,
    r_g_a: Vec<A>,
    r_g_z: Array2<A>,
    r_sum_gamma: Vec<A>,
    r_sum_beta: Vec<A>,
}

impl<A: Element> Block<A> {
    fn new(g: &Geometry, filters: usize) -> Self {
        let (p, k, f) = (g.positions(), g.cin * 9, filters);
        let m = |r, c| Array2::zeros((r, c));
        Self {
            positions_per_image: g.side_out * g.side_out,
            xcol: m(p, k),
            z: m(p, f),
            mu: vec![A::ZERO; f],
            s: vec![A::ZERO; f],
            zhat: m(p, f),
            y: m(p, f),
            a: vec![A::ZERO; p * f],
            g_a: vec![A::ZERO; p * f],
            g_y: m(p, f),
            g_zhat: m(p, f),
            u: m(p, f),
            m2: vec![A::ZERO; f],
            g_z: m(p, f),
            g_xcol: m(p, k),
            sum_gy: vec![A::ZERO; f],
            sum_gy_zhat: vec![A::ZERO; f],
            r_xcol: m(p, k),
            r_z: m(p, f),
            r_zhat: m(p, f),
            r_s: vec![A::ZERO; f],
            r_a: vec![A::ZERO; p * f],
            r_g_a: vec![A::ZERO; p * f],
            r_g_z: m(p, f),
            r_sum_gamma: vec![A::ZERO; f],
            r_sum_beta: vec![A::ZERO; f],
        }
    }
}

/// The buffers of one batch size.
#[derive(Clone, Debug)]
struct Buffers<A> {
    n: usize,
    /// Whether the buffers hold complete forward and backward passes at
    /// `done_params` on `done_batch`: a Hessian-vector product at the point
    /// of the last gradient (what the meta-learner asks for on a support
    /// set) reuses them. The copies keep their allocations across calls.
    done: bool,
    done_params: Vec<ArrayD<A>>,
    done_batch: Classification<A>,
    /// The batch's images in the order the first block reads them.
    input: Vec<A>,
    blocks: Vec<Block<A>>,
    h: Array2<A>,
    logits: Array2<A>,
    p: Array2<A>,
    g_logits: Array2<A>,
    g_h: Array2<A>,
    r_h: Array2<A>,
    r_logits: Array2<A>,
    r_g_logits: Array2<A>,
    r_g_h: Array2<A>,
}

impl<A: Element> Buffers<A> {
    /// Records that the buffers hold the passes at `params` on `batch`.
    fn remember(&mut self, params: &[ArrayD<A>], batch: &Classification<A>) {
        if self.done_params.len() == params.len() {
            for (d, p) in self.done_params.iter_mut().zip(params) {
                d.clone_from(p);
            }
        } else {
            self.done_params = params.to_vec();
        }
        self.done_batch.x.clone_from(&batch.x);
        self.done_batch.y.clone_from(&batch.y);
        self.done = true;
    }

    /// Whether the buffers hold the passes at `params` on `batch`.
    fn holds(&self, params: &[ArrayD<A>], batch: &Classification<A>) -> bool {
        let same =
            |a: &ArrayD<A>, b: &ArrayD<A>| a.shape() == b.shape() && same_bits(a.iter(), b.iter());
        self.done
            && self.done_params.len() == params.len()
            && self.done_params.iter().zip(params).all(|(a, b)| same(a, b))
            && self.done_batch.y == batch.y
            && self.done_batch.x.shape() == batch.x.shape()
            && same_bits(self.done_batch.x.iter(), batch.x.iter())
    }
}

/// Buffers a [`ConvNet`] reuses across evaluations (one per task of a
/// meta-batch, kept by the meta-learner), one set per batch size seen (a
/// task's support and query sets differ), at most four sizes.
#[derive(Clone, Debug)]
pub struct ConvWorkspace<A> {
    sets: Vec<Buffers<A>>,
}

impl<A> Default for ConvWorkspace<A> {
    fn default() -> Self {
        Self { sets: Vec::new() }
    }
}

impl<A: Element> ConvWorkspace<A> {
    fn buffers(&mut self, net: &ConvNet, n: usize) -> &mut Buffers<A> {
        if let Some(i) = self.sets.iter().position(|b| b.n == n) {
            return &mut self.sets[i];
        }
        if self.sets.len() >= 4 {
            self.sets.remove(0);
        }
        let f = net.filters;
        let m = |r, c| Array2::zeros((r, c));
        self.sets.push(Buffers {
            n,
            done: false,
            done_params: Vec::new(),
            done_batch: Classification {
                x: Array4::zeros((0, 1, 0, 0)),
                y: Vec::new(),
            },
            input: Vec::new(),
            blocks: (0..net.blocks)
                .map(|b| Block::new(&net.geometry(n, b), f))
                .collect(),
            h: m(n, f),
            logits: m(n, net.classes),
            p: m(n, net.classes),
            g_logits: m(n, net.classes),
            g_h: m(n, f),
            r_h: m(n, f),
            r_logits: m(n, net.classes),
            r_g_logits: m(n, net.classes),
            r_g_h: m(n, f),
        });
        self.sets.last_mut().expect("just pushed")
    }
}

impl<A: Element> Objective<A> for ConvNet {
    type Batch = Classification<A>;
    type Workspace = ConvWorkspace<A>;

    fn workspace(&self) -> ConvWorkspace<A> {
        ConvWorkspace::default()
    }

    /// # Panics
    /// If `params` do not fit the network or `batch` does not
    /// ([`ConvNet::check_batch`] says why without panicking).
    fn loss_grad_into(
        &self,
        params: &[ArrayD<A>],
        batch: &Classification<A>,
        ws: &mut ConvWorkspace<A>,
        grad: &mut [ArrayD<A>],
    ) -> A {
        self.check_params(params);
        if let Err(e) = self.check_batch(batch) {
            panic!("ConvNet: {e}");
        }
        let bufs = ws.buffers(self, batch.y.len());
        self.forward(params, &batch.x, bufs, None);
        let loss = self.loss_into(&batch.y, bufs);
        self.backward(params, bufs, grad);
        bufs.remember(params, batch);
        loss
    }

    fn hessian_vector_into(
        &self,
        params: &[ArrayD<A>],
        batch: &Classification<A>,
        v: &[ArrayD<A>],
        ws: &mut ConvWorkspace<A>,
        hv: &mut [ArrayD<A>],
    ) {
        self.check_params(params);
        self.check_params(v);
        if let Err(e) = self.check_batch(batch) {
            panic!("ConvNet: {e}");
        }
        let bufs = ws.buffers(self, batch.y.len());
        if !bufs.holds(params, batch) {
            self.forward(params, &batch.x, bufs, None);
            self.loss_into(&batch.y, bufs);
            // The gradient itself is not needed, only the intermediates:
            // hv serves as its scratch and is overwritten by the R pass.
            self.backward(params, bufs, hv);
            bufs.remember(params, batch);
        }
        self.r_pass(params, v, bufs, hv);
    }
}

// ------------------------------------------------------------- the layers

/// Whether two sequences hold the same values, bit for bit.
fn same_bits<'a, A: Element>(
    a: impl ExactSizeIterator<Item = &'a A>,
    b: impl ExactSizeIterator<Item = &'a A>,
) -> bool {
    a.len() == b.len() && a.zip(b).all(|(x, y)| x.bits() == y.bits())
}

fn slice<A: Element>(p: &ArrayD<A>) -> &[A] {
    p.as_slice().expect("a row-major parameter")
}

fn slice_mut<A: Element>(p: &mut ArrayD<A>) -> &mut [A] {
    p.as_slice_mut().expect("a row-major parameter")
}

fn matrix<A: Element>(p: &ArrayD<A>) -> ArrayView2<'_, A> {
    p.view().into_dimensionality::<Ix2>().expect("a matrix")
}

fn matrix_mut<A: Element>(p: &mut ArrayD<A>) -> ArrayViewMut2<'_, A> {
    p.view_mut().into_dimensionality::<Ix2>().expect("a matrix")
}

/// A convolution weight `(f, 3, 3, cin)` as the `(f, 9 * cin)` matrix.
fn weight_matrix<A: Element>(p: &ArrayD<A>, f: usize, k: usize) -> ArrayView2<'_, A> {
    ArrayView2::from_shape((f, k), slice(p)).expect("a convolution weight")
}

fn weight_matrix_mut<A: Element>(p: &mut ArrayD<A>, f: usize, k: usize) -> ArrayViewMut2<'_, A> {
    ArrayViewMut2::from_shape((f, k), slice_mut(p)).expect("a convolution weight")
}

/// `c = a b + beta c`, on the calling thread (ndarray's `general_mat_mul`:
/// matrixmultiply's packed AVX2/FMA kernels, chosen at run time). Each row
/// of `c` comes out the same whatever the number of rows, so an image's
/// logits do not depend on the batch it is classified in (with the support
/// set's statistics). The `gemm` crate was measured as an alternative: 7%
/// faster meta-iterations (0.152 against 0.163 s on 2 threads) but rows
/// that change in the last bit with the batch size.
fn gemm<A: Element>(
    a: ArrayView2<'_, A>,
    b: ArrayView2<'_, A>,
    beta: A,
    mut c: ArrayViewMut2<'_, A>,
) {
    general_mat_mul(A::one(), &a, &b, beta, &mut c);
}

/// Columns of `xcol` (one row per output position, `(kh, kw, c)` per
/// column, matching the weight's layout) from the NHWC input `a`.
fn im2col<A: Element>(a: &[A], g: &Geometry, xcol: &mut Array2<A>) {
    let (si, so, cin) = (g.side_in, g.side_out, g.cin);
    let cols = xcol.as_slice_mut().expect("a row-major buffer");
    let k = cin * 9;
    for n in 0..g.n {
        for oh in 0..so {
            for ow in 0..so {
                let row = &mut cols[((n * so + oh) * so + ow) * k..][..k];
                for kh in 0..3 {
                    let ih = (oh * 2 + kh) as isize - 1;
                    for kw in 0..3 {
                        let iw = (ow * 2 + kw) as isize - 1;
                        let dst = &mut row[(kh * 3 + kw) * cin..][..cin];
                        if ih >= 0 && iw >= 0 && (ih as usize) < si && (iw as usize) < si {
                            let base = ((n * si + ih as usize) * si + iw as usize) * cin;
                            dst.copy_from_slice(&a[base..base + cin]);
                        } else {
                            dst.fill(A::ZERO);
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: sums the columns back onto the NHWC input
/// positions they came from (in a fixed order), into `out` (overwritten).
fn col2im<A: Element>(xcol: &Array2<A>, g: &Geometry, out: &mut [A]) {
    let (si, so, cin) = (g.side_in, g.side_out, g.cin);
    let len = g.n * si * si * cin;
    out[..len].fill(A::ZERO);
    let cols = xcol.as_slice().expect("a row-major buffer");
    let k = cin * 9;
    for n in 0..g.n {
        for oh in 0..so {
            for ow in 0..so {
                let row = &cols[((n * so + oh) * so + ow) * k..][..k];
                for kh in 0..3 {
                    let ih = (oh * 2 + kh) as isize - 1;
                    for kw in 0..3 {
                        let iw = (ow * 2 + kw) as isize - 1;
                        if ih < 0 || iw < 0 || ih as usize >= si || iw as usize >= si {
                            continue;
                        }
                        let base = ((n * si + ih as usize) * si + iw as usize) * cin;
                        let src = &row[(kh * 3 + kw) * cin..][..cin];
                        for (o, &x) in out[base..base + cin].iter_mut().zip(src) {
                            *o = *o + x;
                        }
                    }
                }
            }
        }
    }
}

/// Per column: the mean and `1/sqrt(var + eps)` (biased variance) of `z`.
fn batch_stats<A: Element>(z: &Array2<A>, mu: &mut [A], s: &mut [A]) {
    let rows = A::from(z.nrows()).unwrap_or(A::one());
    let eps = A::from(EPS).unwrap_or(A::ZERO);
    mu.fill(A::ZERO);
    for row in z.rows() {
        for (m, &v) in mu.iter_mut().zip(row.iter()) {
            *m = *m + v;
        }
    }
    for m in mu.iter_mut() {
        *m = *m / rows;
    }
    s.fill(A::ZERO);
    for row in z.rows() {
        for ((q, &v), &m) in s.iter_mut().zip(row.iter()).zip(mu.iter()) {
            let d = v - m;
            *q = *q + d * d;
        }
    }
    for q in s.iter_mut() {
        *q = A::one() / (*q / rows + eps).sqrt();
    }
}

/// `out[j] = sum over rows of m[.., j]`, rows in order.
fn column_sums<A: Element>(m: &Array2<A>, out: &mut [A]) {
    out.fill(A::ZERO);
    for row in m.rows() {
        for (o, &x) in out.iter_mut().zip(row.iter()) {
            *o = *o + x;
        }
    }
}

/// The mean over each image's positions: `h[n, c]`.
fn pool<A: Element>(a: &[A], n: usize, hw: usize, f: usize, h: &mut Array2<A>) {
    let inv = A::one() / A::from(hw).unwrap_or(A::one());
    for (i, mut row) in h.rows_mut().into_iter().enumerate().take(n) {
        row.fill(A::ZERO);
        for pos in 0..hw {
            let src = &a[(i * hw + pos) * f..][..f];
            for (o, &x) in row.iter_mut().zip(src) {
                *o = *o + x;
            }
        }
        for o in row.iter_mut() {
            *o = *o * inv;
        }
    }
}

/// The adjoint of [`pool`]: `g_a[n, pos, c] = g_h[n, c] / hw`.
fn unpool<A: Element>(g_h: &Array2<A>, n: usize, hw: usize, f: usize, g_a: &mut [A]) {
    let inv = A::one() / A::from(hw).unwrap_or(A::one());
    for (i, row) in g_h.rows().into_iter().enumerate().take(n) {
        for pos in 0..hw {
            let dst = &mut g_a[(i * hw + pos) * f..][..f];
            for (o, &x) in dst.iter_mut().zip(row.iter()) {
                *o = x * inv;
            }
        }
    }
}

/// A row-major matrix's values.
fn flat<A: Element>(m: &Array2<A>) -> &[A] {
    m.as_slice().expect("a row-major buffer")
}

fn flat_mut<A: Element>(m: &mut Array2<A>) -> &mut [A] {
    m.as_slice_mut().expect("a row-major buffer")
}

/// Batch norm and ReLU backward for one block: `g_y`, `g_zhat`, `u`,
/// `g_z` and the parameter sums, from `g_a`.
fn bn_backward<A: Element>(blk: &mut Block<A>, gamma: &[A], f: usize) {
    let rows = blk.z.nrows();
    let inv = A::one() / A::from(rows).unwrap_or(A::one());
    blk.sum_gy.fill(A::ZERO);
    blk.sum_gy_zhat.fill(A::ZERO);
    let mut m1 = vec![A::ZERO; f];
    blk.m2.fill(A::ZERO);
    let (y, zhat) = (flat(&blk.y), flat(&blk.zhat));
    let (g_y, g_zhat) = (flat_mut(&mut blk.g_y), flat_mut(&mut blk.g_zhat));
    for r in 0..rows {
        let o = r * f;
        for c in 0..f {
            let gy = if y[o + c] > A::ZERO {
                blk.g_a[o + c]
            } else {
                A::ZERO
            };
            g_y[o + c] = gy;
            let zh = zhat[o + c];
            blk.sum_gy[c] = blk.sum_gy[c] + gy;
            blk.sum_gy_zhat[c] = blk.sum_gy_zhat[c] + gy * zh;
            let gzh = gamma[c] * gy;
            g_zhat[o + c] = gzh;
            m1[c] = m1[c] + gzh;
            blk.m2[c] = blk.m2[c] + gzh * zh;
        }
    }
    for c in 0..f {
        m1[c] = m1[c] * inv;
        blk.m2[c] = blk.m2[c] * inv;
    }
    let (u, g_z) = (flat_mut(&mut blk.u), flat_mut(&mut blk.g_z));
    for r in 0..rows {
        let o = r * f;
        for c in 0..f {
            let v = g_zhat[o + c] - m1[c] - zhat[o + c] * blk.m2[c];
            u[o + c] = v;
            g_z[o + c] = blk.s[c] * v;
        }
    }
}

/// The R-forward of batch norm and ReLU: `r_zhat`, `r_s`, `r_a` from `r_z`.
fn bn_r_forward<A: Element>(blk: &mut Block<A>, gamma: &[A], vg: &[A], vb: &[A], f: usize) {
    let rows = blk.z.nrows();
    let inv = A::one() / A::from(rows).unwrap_or(A::one());
    let mut r_mu = vec![A::ZERO; f];
    let mut q = vec![A::ZERO; f];
    let (zhat, y, r_z) = (flat(&blk.zhat), flat(&blk.y), flat(&blk.r_z));
    for r in 0..rows {
        let o = r * f;
        for c in 0..f {
            let rz = r_z[o + c];
            r_mu[c] = r_mu[c] + rz;
            q[c] = q[c] + zhat[o + c] * rz;
        }
    }
    for c in 0..f {
        r_mu[c] = r_mu[c] * inv;
        q[c] = q[c] * inv;
        // R s = -s^2 mean(zhat R z).
        blk.r_s[c] = -(blk.s[c] * blk.s[c]) * q[c];
    }
    let r_zhat = flat_mut(&mut blk.r_zhat);
    for r in 0..rows {
        let o = r * f;
        for c in 0..f {
            let zh = zhat[o + c];
            let rzh = blk.s[c] * (r_z[o + c] - r_mu[c] - zh * q[c]);
            r_zhat[o + c] = rzh;
            let ry = vg[c] * zh + gamma[c] * rzh + vb[c];
            blk.r_a[o + c] = if y[o + c] > A::ZERO { ry } else { A::ZERO };
        }
    }
}

/// The R-backward of ReLU and batch norm: `r_g_z` and the parameter sums'
/// R versions, from `r_g_a`.
fn bn_r_backward<A: Element>(blk: &mut Block<A>, gamma: &[A], vg: &[A], f: usize) {
    let rows = blk.z.nrows();
    let inv = A::one() / A::from(rows).unwrap_or(A::one());
    blk.r_sum_gamma.fill(A::ZERO);
    blk.r_sum_beta.fill(A::ZERO);
    let mut r_m1 = vec![A::ZERO; f];
    let mut r_m2 = vec![A::ZERO; f];
    let (zhat, r_zhat, y) = (flat(&blk.zhat), flat(&blk.r_zhat), flat(&blk.y));
    let (g_y, g_zhat, u) = (flat(&blk.g_y), flat(&blk.g_zhat), flat(&blk.u));
    // r_g_z first holds R g_zhat.
    let r_g_z = flat_mut(&mut blk.r_g_z);
    for r in 0..rows {
        let o = r * f;
        for c in 0..f {
            let r_gy = if y[o + c] > A::ZERO {
                blk.r_g_a[o + c]
            } else {
                A::ZERO
            };
            let (zh, rzh, gy) = (zhat[o + c], r_zhat[o + c], g_y[o + c]);
            blk.r_sum_gamma[c] = blk.r_sum_gamma[c] + r_gy * zh + gy * rzh;
            blk.r_sum_beta[c] = blk.r_sum_beta[c] + r_gy;
            let r_gzh = vg[c] * gy + gamma[c] * r_gy;
            r_g_z[o + c] = r_gzh;
            r_m1[c] = r_m1[c] + r_gzh;
            r_m2[c] = r_m2[c] + r_gzh * zh + g_zhat[o + c] * rzh;
        }
    }
    for c in 0..f {
        r_m1[c] = r_m1[c] * inv;
        r_m2[c] = r_m2[c] * inv;
    }
    for r in 0..rows {
        let o = r * f;
        for c in 0..f {
            let r_u = r_g_z[o + c] - r_m1[c] - r_zhat[o + c] * blk.m2[c] - zhat[o + c] * r_m2[c];
            r_g_z[o + c] = blk.r_s[c] * u[o + c] + blk.s[c] * r_u;
        }
    }
}
