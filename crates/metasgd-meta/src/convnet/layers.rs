//! The layers' arithmetic on slices and matrices: the convolution as
//! im2col and one matrix product, batch normalisation and ReLU forward,
//! backward and in their R-operator forms, global average pooling. Every
//! sum runs in a fixed order, so the bits never depend on the thread count.

// The per-channel loops index several buffers by (row, channel) at once;
// written with indices they read like the formulas they implement.
#![allow(clippy::needless_range_loop)]

use metasgd_kernels::Element;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewMut2, Ix2};

use super::buffers::{BlockBackward, BlockForward, BlockTangent, Geometry};

/// Batch normalisation's epsilon (PyTorch's default).
const EPS: f64 = 1e-5;

pub(super) fn slice<A: Element>(p: &ArrayD<A>) -> &[A] {
    p.as_slice().expect("a row-major parameter")
}

pub(super) fn slice_mut<A: Element>(p: &mut ArrayD<A>) -> &mut [A] {
    p.as_slice_mut().expect("a row-major parameter")
}

pub(super) fn matrix<A: Element>(p: &ArrayD<A>) -> ArrayView2<'_, A> {
    p.view().into_dimensionality::<Ix2>().expect("a matrix")
}

pub(super) fn matrix_mut<A: Element>(p: &mut ArrayD<A>) -> ArrayViewMut2<'_, A> {
    p.view_mut().into_dimensionality::<Ix2>().expect("a matrix")
}

/// A convolution weight `(f, 3, 3, cin)` as the `(f, 9 * cin)` matrix.
pub(super) fn weight_matrix<A: Element>(p: &ArrayD<A>, f: usize, k: usize) -> ArrayView2<'_, A> {
    ArrayView2::from_shape((f, k), slice(p)).expect("a convolution weight")
}

pub(super) fn weight_matrix_mut<A: Element>(
    p: &mut ArrayD<A>,
    f: usize,
    k: usize,
) -> ArrayViewMut2<'_, A> {
    ArrayViewMut2::from_shape((f, k), slice_mut(p)).expect("a convolution weight")
}

/// A row-major matrix's values.
pub(super) fn flat<A: Element>(m: &Array2<A>) -> &[A] {
    m.as_slice().expect("a row-major buffer")
}

pub(super) fn flat_mut<A: Element>(m: &mut Array2<A>) -> &mut [A] {
    m.as_slice_mut().expect("a row-major buffer")
}

/// `c = a b + beta c`, on the calling thread (ndarray's `general_mat_mul`:
/// matrixmultiply's packed AVX2/FMA kernels, chosen at run time). Each row
/// of `c` comes out the same whatever the number of rows, so an image's
/// logits do not depend on the batch it is classified in (with the support
/// set's statistics). The `gemm` crate was measured as an alternative: 7%
/// faster meta-iterations (0.152 against 0.163 s on 2 threads) but rows
/// that change in the last bit with the batch size.
pub(super) fn gemm<A: Element>(
    a: ArrayView2<'_, A>,
    b: ArrayView2<'_, A>,
    beta: A,
    mut c: ArrayViewMut2<'_, A>,
) {
    general_mat_mul(A::one(), &a, &b, beta, &mut c);
}

/// The input position a 3x3, stride 2, padding 1 kernel tap reads, if it is
/// inside the image.
fn tap(out: usize, k: usize, side_in: usize) -> Option<usize> {
    (out * 2 + k).checked_sub(1).filter(|&i| i < side_in)
}

/// The patches of the NHWC input `a`: one row per output position,
/// `(kh, kw, c)` per column, matching the weight's layout.
pub(super) fn im2col<A: Element>(a: &[A], g: &Geometry, patches: &mut Array2<A>) {
    let (si, so, cin) = (g.side_in, g.side_out, g.cin);
    let cols = flat_mut(patches);
    let k = cin * 9;
    for n in 0..g.n {
        for oh in 0..so {
            for ow in 0..so {
                let row = &mut cols[((n * so + oh) * so + ow) * k..][..k];
                for kh in 0..3 {
                    for kw in 0..3 {
                        let dst = &mut row[(kh * 3 + kw) * cin..][..cin];
                        match (tap(oh, kh, si), tap(ow, kw, si)) {
                            (Some(ih), Some(iw)) => {
                                let base = ((n * si + ih) * si + iw) * cin;
                                dst.copy_from_slice(&a[base..base + cin]);
                            }
                            _ => dst.fill(A::ZERO),
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: sums the patches back onto the NHWC input
/// positions they came from (in a fixed order), into `out` (overwritten).
pub(super) fn col2im<A: Element>(patches: &Array2<A>, g: &Geometry, out: &mut [A]) {
    let (si, so, cin) = (g.side_in, g.side_out, g.cin);
    out[..g.n * si * si * cin].fill(A::ZERO);
    let cols = flat(patches);
    let k = cin * 9;
    for n in 0..g.n {
        for oh in 0..so {
            for ow in 0..so {
                let row = &cols[((n * so + oh) * so + ow) * k..][..k];
                for kh in 0..3 {
                    for kw in 0..3 {
                        let (Some(ih), Some(iw)) = (tap(oh, kh, si), tap(ow, kw, si)) else {
                            continue;
                        };
                        let base = ((n * si + ih) * si + iw) * cin;
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
pub(super) fn batch_stats<A: Element>(z: &Array2<A>, mean: &mut [A], inv_std: &mut [A]) {
    let rows = A::from(z.nrows()).unwrap_or(A::one());
    let eps = A::from(EPS).unwrap_or(A::ZERO);
    mean.fill(A::ZERO);
    for row in z.rows() {
        for (m, &v) in mean.iter_mut().zip(row.iter()) {
            *m = *m + v;
        }
    }
    for m in mean.iter_mut() {
        *m = *m / rows;
    }
    inv_std.fill(A::ZERO);
    for row in z.rows() {
        for ((q, &v), &m) in inv_std.iter_mut().zip(row.iter()).zip(mean.iter()) {
            let d = v - m;
            *q = *q + d * d;
        }
    }
    for q in inv_std.iter_mut() {
        *q = A::one() / (*q / rows + eps).sqrt();
    }
}

/// Batch norm (with the block's statistics) and ReLU: `normalised`,
/// `pre_relu` and `out` from `conv`.
pub(super) fn bn_relu<A: Element>(blk: &mut BlockForward<A>, gamma: &[A], beta: &[A], f: usize) {
    let conv = flat(&blk.conv);
    let normalised = flat_mut(&mut blk.normalised);
    let pre_relu = flat_mut(&mut blk.pre_relu);
    let rows = conv
        .chunks_exact(f)
        .zip(normalised.chunks_exact_mut(f))
        .zip(
            pre_relu
                .chunks_exact_mut(f)
                .zip(blk.out.chunks_exact_mut(f)),
        );
    for ((z, zh), (y, a)) in rows {
        for c in 0..f {
            let v = (z[c] - blk.mean[c]) * blk.inv_std[c];
            let out = gamma[c] * v + beta[c];
            zh[c] = v;
            y[c] = out;
            a[c] = if out > A::ZERO { out } else { A::ZERO };
        }
    }
}

/// `out[j] = sum over rows of m[.., j]`, rows in order.
pub(super) fn column_sums<A: Element>(m: &Array2<A>, out: &mut [A]) {
    out.fill(A::ZERO);
    for row in m.rows() {
        for (o, &x) in out.iter_mut().zip(row.iter()) {
            *o = *o + x;
        }
    }
}

/// The mean over each image's positions: `h[n, c]`.
pub(super) fn pool<A: Element>(a: &[A], n: usize, hw: usize, f: usize, h: &mut Array2<A>) {
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
pub(super) fn unpool<A: Element>(g_h: &Array2<A>, n: usize, hw: usize, f: usize, g_a: &mut [A]) {
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

/// Batch norm and ReLU backward for one block: `g_pre_relu`,
/// `g_normalised`, `centred`, `g_conv` and the parameters' gradients, from
/// `g_out`.
pub(super) fn bn_backward<A: Element>(
    fwd: &BlockForward<A>,
    bwd: &mut BlockBackward<A>,
    gamma: &[A],
    f: usize,
) {
    let rows = fwd.conv.nrows();
    let inv = A::one() / A::from(rows).unwrap_or(A::one());
    bwd.g_beta.fill(A::ZERO);
    bwd.g_gamma.fill(A::ZERO);
    bwd.mean_g_normalised.fill(A::ZERO);
    bwd.mean_g_normalised_normalised.fill(A::ZERO);
    let (y, zhat) = (flat(&fwd.pre_relu), flat(&fwd.normalised));
    let (m1, m2) = (
        &mut bwd.mean_g_normalised,
        &mut bwd.mean_g_normalised_normalised,
    );
    let (g_y, g_zhat) = (
        flat_mut(&mut bwd.g_pre_relu),
        flat_mut(&mut bwd.g_normalised),
    );
    for r in 0..rows {
        let o = r * f;
        for c in 0..f {
            let gy = if y[o + c] > A::ZERO {
                bwd.g_out[o + c]
            } else {
                A::ZERO
            };
            g_y[o + c] = gy;
            let zh = zhat[o + c];
            bwd.g_beta[c] = bwd.g_beta[c] + gy;
            bwd.g_gamma[c] = bwd.g_gamma[c] + gy * zh;
            let gzh = gamma[c] * gy;
            g_zhat[o + c] = gzh;
            m1[c] = m1[c] + gzh;
            m2[c] = m2[c] + gzh * zh;
        }
    }
    for c in 0..f {
        m1[c] = m1[c] * inv;
        m2[c] = m2[c] * inv;
    }
    let (u, g_z) = (flat_mut(&mut bwd.centred), flat_mut(&mut bwd.g_conv));
    for r in 0..rows {
        let o = r * f;
        for c in 0..f {
            let v = g_zhat[o + c] - m1[c] - zhat[o + c] * m2[c];
            u[o + c] = v;
            g_z[o + c] = fwd.inv_std[c] * v;
        }
    }
}

/// The R-forward of batch norm and ReLU: `r_normalised`, `r_inv_std` and
/// `r_out` from `r_conv`, along `(v_gamma, v_beta)`.
pub(super) fn bn_r_forward<A: Element>(
    fwd: &BlockForward<A>,
    tan: &mut BlockTangent<A>,
    gamma: &[A],
    (v_gamma, v_beta): (&[A], &[A]),
    f: usize,
) {
    let rows = fwd.conv.nrows();
    let inv = A::one() / A::from(rows).unwrap_or(A::one());
    let (r_mu, q) = (&mut tan.r_mean, &mut tan.mean_normalised_r_conv);
    r_mu.fill(A::ZERO);
    q.fill(A::ZERO);
    let (zhat, y, r_z) = (
        flat(&fwd.normalised),
        flat(&fwd.pre_relu),
        flat(&tan.r_conv),
    );
    for r in 0..rows {
        let o = r * f;
        for c in 0..f {
            let rz = r_z[o + c];
            r_mu[c] = r_mu[c] + rz;
            q[c] = q[c] + zhat[o + c] * rz;
        }
    }
    let s = &fwd.inv_std;
    for c in 0..f {
        r_mu[c] = r_mu[c] * inv;
        q[c] = q[c] * inv;
        // R s = -s^2 mean(zhat R z).
        tan.r_inv_std[c] = -(s[c] * s[c]) * q[c];
    }
    let r_zhat = flat_mut(&mut tan.r_normalised);
    for r in 0..rows {
        let o = r * f;
        for c in 0..f {
            let zh = zhat[o + c];
            let rzh = s[c] * (r_z[o + c] - r_mu[c] - zh * q[c]);
            r_zhat[o + c] = rzh;
            let ry = v_gamma[c] * zh + gamma[c] * rzh + v_beta[c];
            tan.r_out[o + c] = if y[o + c] > A::ZERO { ry } else { A::ZERO };
        }
    }
}

/// The R-backward of ReLU and batch norm: `r_g_conv` and the parameters'
/// gradients' R versions, from `r_g_out`, along `v_gamma`.
pub(super) fn bn_r_backward<A: Element>(
    (fwd, bwd): (&BlockForward<A>, &BlockBackward<A>),
    tan: &mut BlockTangent<A>,
    gamma: &[A],
    v_gamma: &[A],
    f: usize,
) {
    let rows = fwd.conv.nrows();
    let inv = A::one() / A::from(rows).unwrap_or(A::one());
    tan.r_g_gamma.fill(A::ZERO);
    tan.r_g_beta.fill(A::ZERO);
    let (r_m1, r_m2) = (
        &mut tan.r_mean_g_normalised,
        &mut tan.r_mean_g_normalised_normalised,
    );
    r_m1.fill(A::ZERO);
    r_m2.fill(A::ZERO);
    let (zhat, r_zhat, y) = (
        flat(&fwd.normalised),
        flat(&tan.r_normalised),
        flat(&fwd.pre_relu),
    );
    let (g_y, g_zhat, u) = (
        flat(&bwd.g_pre_relu),
        flat(&bwd.g_normalised),
        flat(&bwd.centred),
    );
    // r_g_conv first holds R g_normalised.
    let r_g_z = flat_mut(&mut tan.r_g_conv);
    for r in 0..rows {
        let o = r * f;
        for c in 0..f {
            let r_gy = if y[o + c] > A::ZERO {
                tan.r_g_out[o + c]
            } else {
                A::ZERO
            };
            let (zh, rzh, gy) = (zhat[o + c], r_zhat[o + c], g_y[o + c]);
            tan.r_g_gamma[c] = tan.r_g_gamma[c] + r_gy * zh + gy * rzh;
            tan.r_g_beta[c] = tan.r_g_beta[c] + r_gy;
            let r_gzh = v_gamma[c] * gy + gamma[c] * r_gy;
            r_g_z[o + c] = r_gzh;
            r_m1[c] = r_m1[c] + r_gzh;
            r_m2[c] = r_m2[c] + r_gzh * zh + g_zhat[o + c] * rzh;
        }
    }
    for c in 0..f {
        r_m1[c] = r_m1[c] * inv;
        r_m2[c] = r_m2[c] * inv;
    }
    let (s, m2) = (&fwd.inv_std, &bwd.mean_g_normalised_normalised);
    for r in 0..rows {
        let o = r * f;
        for c in 0..f {
            let r_u = r_g_z[o + c] - r_m1[c] - r_zhat[o + c] * m2[c] - zhat[o + c] * r_m2[c];
            r_g_z[o + c] = tan.r_inv_std[c] * u[o + c] + s[c] * r_u;
        }
    }
}
