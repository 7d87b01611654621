//! The network's passes over the buffers: forward (inference and the
//! gradient pass), the loss, backward, and the R-operator pass (forward
//! through the blocks, the head, backward through the blocks) that gives
//! `H v` from a gradient pass's values.

use metasgd_kernels::Element;
use ndarray::{Array4, ArrayD};

use super::ConvNet;
use super::buffers::{Backward, Forward, Pass, Tangent};
use super::layers::{
    batch_stats, bn_backward, bn_r_backward, bn_r_forward, bn_relu, col2im, column_sums, gemm,
    im2col, im2col_images, matrix, matrix_mut, pool, slice, slice_mut, unpool, weight_matrix,
    weight_matrix_mut,
};

/// The bytes of patches one im2col-and-product chunk of the forward pass
/// makes (half the 1 MiB L2 of the machines we measure on).
const CHUNK_BYTES: usize = 512 << 10;

/// Batch norm statistics fixed from elsewhere (a support set), per block:
/// `(mean, 1/sqrt(var + eps))`.
pub(super) type Stats<A> = [(Vec<A>, Vec<A>)];

impl ConvNet {
    /// The forward pass of `x` into `fwd` (statistics from the batch, or
    /// `fixed`), up to the logits.
    pub(super) fn forward<A: Element>(
        &self,
        params: &[ArrayD<A>],
        x: &Array4<A>,
        fwd: &mut Forward<A>,
        fixed: Option<&Stats<A>>,
    ) {
        let (n, f) = (fwd.n, self.filters);
        fwd.input.clear();
        fwd.input.extend(x.iter().copied());
        for b in 0..self.blocks {
            let g = self.geometry(n, b);
            let (before, rest) = fwd.blocks.split_at_mut(b);
            let blk = &mut rest[0];
            let a_in: &[A] = if b == 0 {
                &fwd.input
            } else {
                &before[b - 1].out
            };
            let w = weight_matrix(&params[3 * b], f, g.cin * 9);
            // In chunks of images whose patches stay in the core's cache
            // between im2col writing them and the product reading them
            // (each row of the product is the same whatever the chunk).
            let per_image = g.side_out * g.side_out;
            let chunk = (CHUNK_BYTES / (per_image * g.cin * 9 * size_of::<A>())).max(1);
            for first in (0..n).step_by(chunk) {
                let images = first..(first + chunk).min(n);
                im2col_images(a_in, &g, images.clone(), &mut blk.patches);
                let rows = ndarray::s![images.start * per_image..images.end * per_image, ..];
                gemm(
                    blk.patches.slice(rows),
                    w.t(),
                    A::ZERO,
                    blk.conv.slice_mut(rows),
                );
            }
            match fixed {
                None => batch_stats(&blk.conv, &mut blk.mean, &mut blk.inv_std),
                Some(stats) => {
                    blk.mean.clone_from(&stats[b].0);
                    blk.inv_std.clone_from(&stats[b].1);
                }
            }
            bn_relu(blk, slice(&params[3 * b + 1]), slice(&params[3 * b + 2]), f);
        }
        let last = &fwd.blocks[self.blocks - 1];
        pool(&last.out, n, last.positions_per_image, f, &mut fwd.pooled);
        let head = matrix(&params[3 * self.blocks]);
        gemm(fwd.pooled.view(), head, A::ZERO, fwd.logits.view_mut());
        let bias = slice(&params[3 * self.blocks + 1]);
        for mut row in fwd.logits.rows_mut() {
            for (o, &c) in row.iter_mut().zip(bias) {
                *o = *o + c;
            }
        }
    }

    /// Softmax probabilities into `bwd.probs`, `dL/dlogits = (p - onehot) / N`
    /// into `bwd.g_logits`; returns the mean cross-entropy.
    pub(super) fn loss<A: Element>(
        &self,
        y: &[usize],
        fwd: &Forward<A>,
        bwd: &mut Backward<A>,
    ) -> A {
        let n = y.len();
        let inv_n = A::one() / A::from(n).unwrap_or(A::one());
        let mut loss = A::ZERO;
        let rows = fwd.logits.rows().into_iter().zip(bwd.probs.rows_mut());
        for ((logits, mut p), (mut g, &label)) in
            rows.zip(bwd.g_logits.rows_mut().into_iter().zip(y))
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

    /// The backward pass after [`ConvNet::forward`] and [`ConvNet::loss`]:
    /// every parameter's gradient into `grad`, every block's backward
    /// values into `pass.backward`.
    pub(super) fn backward<A: Element>(
        &self,
        params: &[ArrayD<A>],
        pass: &mut Pass<A>,
        grad: &mut [ArrayD<A>],
    ) {
        let (f, nb) = (self.filters, self.blocks);
        let Pass {
            forward: fwd,
            backward: bwd,
        } = pass;
        let n = fwd.n;
        // The classifier.
        let g_logits = bwd.g_logits.view();
        gemm(
            fwd.pooled.view().t(),
            g_logits,
            A::ZERO,
            matrix_mut(&mut grad[3 * nb]),
        );
        column_sums(&bwd.g_logits, slice_mut(&mut grad[3 * nb + 1]));
        let head = matrix(&params[3 * nb]);
        gemm(
            bwd.g_logits.view(),
            head.t(),
            A::ZERO,
            bwd.g_pooled.view_mut(),
        );
        let hw = fwd.blocks[nb - 1].positions_per_image;
        unpool(&bwd.g_pooled, n, hw, f, &mut bwd.blocks[nb - 1].g_out);
        for b in (0..nb).rev() {
            let g = self.geometry(n, b);
            let (before, rest) = bwd.blocks.split_at_mut(b);
            let (blk, back) = (&fwd.blocks[b], &mut rest[0]);
            bn_backward(blk, back, slice(&params[3 * b + 1]), f);
            let (gamma_beta, _) = grad[3 * b + 1..].split_at_mut(2);
            slice_mut(&mut gamma_beta[0]).copy_from_slice(&back.g_gamma);
            slice_mut(&mut gamma_beta[1]).copy_from_slice(&back.g_beta);
            let gw = weight_matrix_mut(&mut grad[3 * b], f, g.cin * 9);
            gemm(back.g_conv.view().t(), blk.patches.view(), A::ZERO, gw);
            if b > 0 {
                let w = weight_matrix(&params[3 * b], f, g.cin * 9);
                gemm(back.g_conv.view(), w, A::ZERO, back.g_patches.view_mut());
                col2im(&back.g_patches, &g, &mut before[b - 1].g_out);
            }
        }
    }

    /// `H v` into `hv` from a gradient pass's values at `params` (`pass`).
    pub(super) fn r_pass<A: Element>(
        &self,
        params: &[ArrayD<A>],
        v: &[ArrayD<A>],
        pass: &Pass<A>,
        tan: &mut Tangent<A>,
        hv: &mut [ArrayD<A>],
    ) {
        self.r_forward(params, v, &pass.forward, tan);
        self.r_head(params, v, pass, tan, hv);
        self.r_backward(params, v, pass, tan, hv);
    }

    /// The R-forward through the blocks: every block's `r_out`.
    fn r_forward<A: Element>(
        &self,
        params: &[ArrayD<A>],
        v: &[ArrayD<A>],
        fwd: &Forward<A>,
        tan: &mut Tangent<A>,
    ) {
        let f = self.filters;
        for b in 0..self.blocks {
            let g = self.geometry(fwd.n, b);
            let (before, rest) = tan.blocks.split_at_mut(b);
            let (blk, t) = (&fwd.blocks[b], &mut rest[0]);
            let w = weight_matrix(&params[3 * b], f, g.cin * 9);
            let vw = weight_matrix(&v[3 * b], f, g.cin * 9);
            // R conv = R(patches) W^T + patches V^T.
            gemm(blk.patches.view(), vw.t(), A::ZERO, t.r_conv.view_mut());
            if b > 0 {
                im2col(&before[b - 1].r_out, &g, &mut t.r_patches);
                gemm(t.r_patches.view(), w.t(), A::one(), t.r_conv.view_mut());
            }
            let v_gamma_beta = (slice(&v[3 * b + 1]), slice(&v[3 * b + 2]));
            bn_r_forward(blk, t, slice(&params[3 * b + 1]), v_gamma_beta, f);
        }
    }

    /// The head: R logits, R of their gradient, the classifier's `H v`
    /// rows, and `r_g_out` of the last block.
    fn r_head<A: Element>(
        &self,
        params: &[ArrayD<A>],
        v: &[ArrayD<A>],
        pass: &Pass<A>,
        tan: &mut Tangent<A>,
        hv: &mut [ArrayD<A>],
    ) {
        let (f, nb) = (self.filters, self.blocks);
        let (fwd, bwd) = (&pass.forward, &pass.backward);
        let n = fwd.n;
        let hw = fwd.blocks[nb - 1].positions_per_image;
        pool(&tan.blocks[nb - 1].r_out, n, hw, f, &mut tan.r_pooled);
        // R logits = R h Wf + h Vf + Vb.
        let (head, v_head) = (matrix(&params[3 * nb]), matrix(&v[3 * nb]));
        gemm(tan.r_pooled.view(), head, A::ZERO, tan.r_logits.view_mut());
        gemm(fwd.pooled.view(), v_head, A::one(), tan.r_logits.view_mut());
        let v_bias = slice(&v[3 * nb + 1]);
        let inv_n = A::one() / A::from(n).unwrap_or(A::one());
        let rows = tan.r_logits.rows_mut().into_iter().zip(bwd.probs.rows());
        for ((mut ro, p), mut rg) in rows.zip(tan.r_g_logits.rows_mut()) {
            for (o, &c) in ro.iter_mut().zip(v_bias) {
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
        // R-backward through the classifier.
        let (weights, bias) = hv[3 * nb..].split_at_mut(1);
        let mut r_gw = matrix_mut(&mut weights[0]);
        gemm(
            tan.r_pooled.view().t(),
            bwd.g_logits.view(),
            A::ZERO,
            r_gw.view_mut(),
        );
        gemm(fwd.pooled.view().t(), tan.r_g_logits.view(), A::one(), r_gw);
        column_sums(&tan.r_g_logits, slice_mut(&mut bias[0]));
        gemm(
            tan.r_g_logits.view(),
            head.t(),
            A::ZERO,
            tan.r_g_pooled.view_mut(),
        );
        gemm(
            bwd.g_logits.view(),
            v_head.t(),
            A::one(),
            tan.r_g_pooled.view_mut(),
        );
        unpool(&tan.r_g_pooled, n, hw, f, &mut tan.blocks[nb - 1].r_g_out);
    }

    /// The R-backward through the blocks: their rows of `H v`.
    fn r_backward<A: Element>(
        &self,
        params: &[ArrayD<A>],
        v: &[ArrayD<A>],
        pass: &Pass<A>,
        tan: &mut Tangent<A>,
        hv: &mut [ArrayD<A>],
    ) {
        let f = self.filters;
        let (fwd, bwd) = (&pass.forward, &pass.backward);
        for b in (0..self.blocks).rev() {
            let g = self.geometry(fwd.n, b);
            let (before, rest) = tan.blocks.split_at_mut(b);
            let (blk, back, t) = (&fwd.blocks[b], &bwd.blocks[b], &mut rest[0]);
            let gamma = slice(&params[3 * b + 1]);
            bn_r_backward((blk, back), t, gamma, slice(&v[3 * b + 1]), f);
            let (gamma_beta, _) = hv[3 * b + 1..].split_at_mut(2);
            slice_mut(&mut gamma_beta[0]).copy_from_slice(&t.r_g_gamma);
            slice_mut(&mut gamma_beta[1]).copy_from_slice(&t.r_g_beta);
            let mut r_gw = weight_matrix_mut(&mut hv[3 * b], f, g.cin * 9);
            gemm(
                t.r_g_conv.view().t(),
                blk.patches.view(),
                A::ZERO,
                r_gw.view_mut(),
            );
            if b > 0 {
                gemm(back.g_conv.view().t(), t.r_patches.view(), A::one(), r_gw);
                let w = weight_matrix(&params[3 * b], f, g.cin * 9);
                let vw = weight_matrix(&v[3 * b], f, g.cin * 9);
                // r_patches has been read: it now holds R(g_patches).
                gemm(t.r_g_conv.view(), w, A::ZERO, t.r_patches.view_mut());
                gemm(back.g_conv.view(), vw, A::one(), t.r_patches.view_mut());
                col2im(&t.r_patches, &g, &mut before[b - 1].r_g_out);
            }
        }
    }
}
