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
#[inline]
fn tap(out: usize, k: usize, side_in: usize) -> Option<usize> {
    (out * 2 + k).checked_sub(1).filter(|&i| i < side_in)
}

/// The patches of the NHWC input `a`: one row per output position,
/// `(kh, kw, c)` per column, matching the weight's layout.
pub(super) fn im2col<A: Element>(a: &[A], g: &Geometry, patches: &mut Array2<A>) {
    im2col_images(a, g, 0..g.n, patches);
}

/// [`im2col`] for images `images` only (their rows of `patches`).
pub(super) fn im2col_images<A: Element>(
    a: &[A],
    g: &Geometry,
    images: std::ops::Range<usize>,
    patches: &mut Array2<A>,
) {
    let (si, so, cin) = (g.side_in, g.side_out, g.cin);
    let cols = flat_mut(patches);
    let k = cin * 9;
    for n in images {
        for oh in 0..so {
            for ow in 0..so {
                let row = &mut cols[((n * so + oh) * so + ow) * k..][..k];
                for kh in 0..3 {
                    for kw in 0..3 {
                        let dst = &mut row[(kh * 3 + kw) * cin..][..cin];
                        match (tap(oh, kh, si), tap(ow, kw, si)) {
                            (Some(ih), Some(iw)) => {
                                let base = ((n * si + ih) * si + iw) * cin;
                                // A loop, not copy_from_slice: the first
                                // block's runs are one value long, too
                                // short for a call to memmove.
                                for (d, &x) in dst.iter_mut().zip(&a[base..base + cin]) {
                                    *d = x;
                                }
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

/// `acc[j] += row[j]` for every row of the row-major `m` (`acc.len()`
/// columns), rows in order.
fn add_rows<A: Element>(m: &[A], acc: &mut [A]) {
    for row in m.chunks_exact(acc.len()) {
        for (a, &x) in acc.iter_mut().zip(row) {
            *a = *a + x;
        }
    }
}

/// Per column: the mean and `1/sqrt(var + eps)` (biased variance) of `z`.
pub(super) fn batch_stats<A: Element>(z: &Array2<A>, mean: &mut [A], inv_std: &mut [A]) {
    let rows = A::from(z.nrows()).unwrap_or(A::one());
    let eps = A::from(EPS).unwrap_or(A::ZERO);
    let (mean, inv_std) = (&mut mean[..z.ncols()], &mut inv_std[..z.ncols()]);
    mean.fill(A::ZERO);
    add_rows(flat(z), mean);
    for m in mean.iter_mut() {
        *m = *m / rows;
    }
    inv_std.fill(A::ZERO);
    for row in flat(z).chunks_exact(mean.len()) {
        for ((q, &v), &m) in inv_std.iter_mut().zip(row).zip(mean.iter()) {
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
    let (mean, inv_std) = (&blk.mean[..f], &blk.inv_std[..f]);
    let (gamma, beta) = (&gamma[..f], &beta[..f]);
    let rows = flat(&blk.conv)
        .chunks_exact(f)
        .zip(flat_mut(&mut blk.normalised).chunks_exact_mut(f))
        .zip(flat_mut(&mut blk.pre_relu).chunks_exact_mut(f))
        .zip(blk.out.chunks_exact_mut(f));
    // Per row, every channel at once (one vector loop): the same arithmetic
    // per element as the formula, so the bits do not change.
    for (((z, zh), y), a) in rows {
        let channels = z.iter().zip(zh).zip(y.iter_mut().zip(a));
        let params = mean.iter().zip(inv_std).zip(gamma.iter().zip(beta));
        for (((&z, zh), (y, a)), ((&m, &s), (&g, &b))) in channels.zip(params) {
            let v = (z - m) * s;
            let out = g * v + b;
            *zh = v;
            *y = out;
            *a = if out > A::ZERO { out } else { A::ZERO };
        }
    }
}

/// `out[j] = sum over rows of m[.., j]`, rows in order.
pub(super) fn column_sums<A: Element>(m: &Array2<A>, out: &mut [A]) {
    let out = &mut out[..m.ncols()];
    out.fill(A::ZERO);
    add_rows(flat(m), out);
}

/// The mean over each image's positions: `h[n, c]`.
pub(super) fn pool<A: Element>(a: &[A], n: usize, hw: usize, f: usize, h: &mut Array2<A>) {
    let inv = A::one() / A::from(hw).unwrap_or(A::one());
    for (image, row) in a
        .chunks_exact(hw * f)
        .zip(flat_mut(h).chunks_exact_mut(f))
        .take(n)
    {
        row.fill(A::ZERO);
        add_rows(image, row);
        for o in row.iter_mut() {
            *o = *o * inv;
        }
    }
}

/// The adjoint of [`pool`]: `g_a[n, pos, c] = g_h[n, c] / hw`.
pub(super) fn unpool<A: Element>(g_h: &Array2<A>, n: usize, hw: usize, f: usize, g_a: &mut [A]) {
    let inv = A::one() / A::from(hw).unwrap_or(A::one());
    for (row, image) in flat(g_h)
        .chunks_exact(f)
        .zip(g_a.chunks_exact_mut(hw * f))
        .take(n)
    {
        for dst in image.chunks_exact_mut(f) {
            for (o, &x) in dst.iter_mut().zip(row) {
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
    let gamma = &gamma[..f];
    let BlockBackward {
        g_out,
        g_pre_relu,
        g_normalised,
        mean_g_normalised: m1,
        mean_g_normalised_normalised: m2,
        centred,
        g_conv,
        g_gamma,
        g_beta,
        ..
    } = bwd;
    for sums in [&mut *g_beta, &mut *g_gamma, &mut *m1, &mut *m2] {
        sums.fill(A::ZERO);
    }
    let (m1, m2, g_gamma, g_beta) = (
        &mut m1[..f],
        &mut m2[..f],
        &mut g_gamma[..f],
        &mut g_beta[..f],
    );
    // Rows in order; per row every channel at once (each channel's sums
    // still add the rows in order).
    let rows_in = flat(&fwd.pre_relu)
        .chunks_exact(f)
        .zip(flat(&fwd.normalised).chunks_exact(f))
        .zip(g_out.chunks_exact(f));
    let rows_out = flat_mut(g_pre_relu)
        .chunks_exact_mut(f)
        .zip(flat_mut(g_normalised).chunks_exact_mut(f));
    for (((y, zhat), g_a), (g_y, g_zhat)) in rows_in.zip(rows_out) {
        let inputs = y.iter().zip(zhat).zip(g_a.iter().zip(gamma));
        let outputs = g_y.iter_mut().zip(g_zhat.iter_mut());
        let sums = g_beta
            .iter_mut()
            .zip(g_gamma.iter_mut())
            .zip(m1.iter_mut().zip(m2.iter_mut()));
        for ((((&y, &zh), (&ga, &g)), (gy_out, gzh_out)), ((sb, sg), (s1, s2))) in
            inputs.zip(outputs).zip(sums)
        {
            let gy = if y > A::ZERO { ga } else { A::ZERO };
            *gy_out = gy;
            *sb = *sb + gy;
            *sg = *sg + gy * zh;
            let gzh = g * gy;
            *gzh_out = gzh;
            *s1 = *s1 + gzh;
            *s2 = *s2 + gzh * zh;
        }
    }
    for (a, b) in m1.iter_mut().zip(m2.iter_mut()) {
        *a = *a * inv;
        *b = *b * inv;
    }
    let inv_std = &fwd.inv_std[..f];
    let rows = flat(g_normalised)
        .chunks_exact(f)
        .zip(flat(&fwd.normalised).chunks_exact(f))
        .zip(
            flat_mut(centred)
                .chunks_exact_mut(f)
                .zip(flat_mut(g_conv).chunks_exact_mut(f)),
        );
    for ((g_zhat, zhat), (u, g_z)) in rows {
        let per = g_zhat
            .iter()
            .zip(zhat)
            .zip(u.iter_mut().zip(g_z.iter_mut()));
        let stats = m1.iter().zip(m2.iter()).zip(inv_std);
        for (((&gzh, &zh), (u, gz)), ((&a, &b), &s)) in per.zip(stats) {
            let v = gzh - a - zh * b;
            *u = v;
            *gz = s * v;
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
    let (r_mu, q) = (&mut tan.r_mean[..f], &mut tan.mean_normalised_r_conv[..f]);
    r_mu.fill(A::ZERO);
    q.fill(A::ZERO);
    let (zhat, y, r_z) = (
        flat(&fwd.normalised),
        flat(&fwd.pre_relu),
        flat(&tan.r_conv),
    );
    for (zh, rz) in zhat.chunks_exact(f).zip(r_z.chunks_exact(f)) {
        for ((&zh, &rz), (m, q)) in zh.iter().zip(rz).zip(r_mu.iter_mut().zip(q.iter_mut())) {
            *m = *m + rz;
            *q = *q + zh * rz;
        }
    }
    let s = &fwd.inv_std[..f];
    for (((m, q), r_s), &s) in r_mu
        .iter_mut()
        .zip(q.iter_mut())
        .zip(&mut tan.r_inv_std)
        .zip(s)
    {
        *m = *m * inv;
        *q = *q * inv;
        // R s = -s^2 mean(zhat R z).
        *r_s = -(s * s) * *q;
    }
    let (gamma, v_gamma, v_beta) = (&gamma[..f], &v_gamma[..f], &v_beta[..f]);
    let rows_in = zhat
        .chunks_exact(f)
        .zip(y.chunks_exact(f))
        .zip(r_z.chunks_exact(f));
    let rows_out = flat_mut(&mut tan.r_normalised)
        .chunks_exact_mut(f)
        .zip(tan.r_out.chunks_exact_mut(f));
    for (((zhat, y), r_z), (r_zhat, r_a)) in rows_in.zip(rows_out) {
        let per = zhat
            .iter()
            .zip(y)
            .zip(r_z)
            .zip(r_zhat.iter_mut().zip(r_a.iter_mut()));
        let stats = s.iter().zip(r_mu.iter()).zip(q.iter());
        let params = gamma.iter().zip(v_gamma).zip(v_beta);
        for ((((&zh, &y), &rz), (rzh_out, ra)), (((&s, &m), &q), ((&g, &vg), &vb))) in
            per.zip(stats.zip(params))
        {
            let rzh = s * (rz - m - zh * q);
            *rzh_out = rzh;
            let ry = vg * zh + g * rzh + vb;
            *ra = if y > A::ZERO { ry } else { A::ZERO };
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
    let BlockTangent {
        r_normalised,
        r_inv_std,
        r_g_out,
        r_mean_g_normalised: r_m1,
        r_mean_g_normalised_normalised: r_m2,
        r_g_conv,
        r_g_gamma,
        r_g_beta,
        ..
    } = tan;
    for sums in [&mut *r_g_gamma, &mut *r_g_beta, &mut *r_m1, &mut *r_m2] {
        sums.fill(A::ZERO);
    }
    let (r_m1, r_m2) = (&mut r_m1[..f], &mut r_m2[..f]);
    let (r_g_gamma, r_g_beta) = (&mut r_g_gamma[..f], &mut r_g_beta[..f]);
    let (gamma, v_gamma) = (&gamma[..f], &v_gamma[..f]);
    let (zhat, r_zhat, y) = (
        flat(&fwd.normalised),
        flat(r_normalised),
        flat(&fwd.pre_relu),
    );
    let (g_y, g_zhat, u) = (
        flat(&bwd.g_pre_relu),
        flat(&bwd.g_normalised),
        flat(&bwd.centred),
    );
    // r_g_conv first holds R g_normalised.
    let rows_in = (zhat.chunks_exact(f).zip(r_zhat.chunks_exact(f)))
        .zip(y.chunks_exact(f).zip(r_g_out.chunks_exact(f)))
        .zip(g_y.chunks_exact(f).zip(g_zhat.chunks_exact(f)));
    let r_g_z = flat_mut(r_g_conv);
    for ((((zhat, r_zhat), (y, r_g_a)), (g_y, g_zhat)), r_g_z) in
        rows_in.zip(r_g_z.chunks_exact_mut(f))
    {
        let per = (zhat.iter().zip(r_zhat))
            .zip(y.iter().zip(r_g_a))
            .zip(g_y.iter().zip(g_zhat).zip(r_g_z.iter_mut()));
        let sums = (r_g_gamma.iter_mut().zip(r_g_beta.iter_mut()))
            .zip(r_m1.iter_mut().zip(r_m2.iter_mut()))
            .zip(gamma.iter().zip(v_gamma));
        for ((((&zh, &rzh), (&y, &rga)), ((&gy, &gzh), out)), (((sg, sb), (s1, s2)), (&g, &vg))) in
            per.zip(sums)
        {
            let r_gy = if y > A::ZERO { rga } else { A::ZERO };
            *sg = *sg + r_gy * zh + gy * rzh;
            *sb = *sb + r_gy;
            let r_gzh = vg * gy + g * r_gy;
            *out = r_gzh;
            *s1 = *s1 + r_gzh;
            *s2 = *s2 + r_gzh * zh + gzh * rzh;
        }
    }
    for (a, b) in r_m1.iter_mut().zip(r_m2.iter_mut()) {
        *a = *a * inv;
        *b = *b * inv;
    }
    let (s, m2) = (&fwd.inv_std[..f], &bwd.mean_g_normalised_normalised[..f]);
    let r_s = &r_inv_std[..f];
    let rows = (zhat.chunks_exact(f).zip(r_zhat.chunks_exact(f)))
        .zip(u.chunks_exact(f))
        .zip(r_g_z.chunks_exact_mut(f));
    for (((zhat, r_zhat), u), r_g_z) in rows {
        let per = zhat.iter().zip(r_zhat).zip(u.iter().zip(r_g_z.iter_mut()));
        let stats = (r_m1.iter().zip(r_m2.iter()))
            .zip(m2.iter())
            .zip(s.iter().zip(r_s));
        for (((&zh, &rzh), (&u, rgz)), (((&a, &b), &m2), (&s, &rs))) in per.zip(stats) {
            let r_u = *rgz - a - rzh * m2 - zh * b;
            *rgz = rs * u + s * r_u;
        }
    }
}
