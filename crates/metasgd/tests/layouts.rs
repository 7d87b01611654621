//! Every layout gives the bits of the contiguous result; bytes outside a view stay as they were.

mod common;

use common::*;
use metasgd::Element;
use metasgd::ndarray::{Array, ArrayView, ArrayViewMut, Axis, Dimension, IxDyn, ShapeBuilder, s};
use metasgd::{Backend, MetaSGD, Optimizer};

const SHAPE: [usize; 2] = [5, 7];

fn opt<A: Element>(backend: Backend) -> MetaSGD<A> {
    MetaSGD::new(A::from(0.05).unwrap())
        .with_alpha_lr(A::from(0.3).unwrap())
        .with_backend(backend)
}

/// Two in-place steps; returns logical theta bits and alpha bits.
fn two_steps<A: Element, D: Dimension>(
    backend: Backend,
    mut p: ArrayViewMut<'_, A, D>,
    g: ArrayView<'_, A, D>,
) -> (Vec<u64>, Vec<u64>)
where
    MetaSGD<A>: Optimizer<A, D>,
{
    let mut o = opt::<A>(backend);
    o.step_inplace(p.view_mut(), g.view()).unwrap();
    o.step_inplace(p.view_mut(), g.view()).unwrap();
    (bits(p.iter()), bits(o.get_per_param_lr().unwrap().iter()))
}

fn logical<A: Element>(seed: u64) -> Array<A, IxDyn> {
    Array::from_shape_vec(IxDyn(&SHAPE), filled::<A>(35, seed)).unwrap()
}

fn check_layouts<A: Element>()
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let (t, g) = (logical::<A>(11), logical::<A>(12));
    for backend in available_backends() {
        let mut c = t.clone();
        let want = two_steps(backend, c.view_mut(), g.view());

        // Fortran order, for params and gradients alike.
        let mut pf = Array::zeros(IxDyn(&SHAPE).f());
        pf.assign(&t);
        let mut gf = Array::zeros(IxDyn(&SHAPE).f());
        gf.assign(&g);
        assert_eq!(
            two_steps(backend, pf.view_mut(), gf.view()),
            want,
            "{backend:?} F order"
        );

        // Fortran params with C gradients (strides differ).
        let mut pf2 = pf.clone();
        pf2.assign(&t);
        assert_eq!(
            two_steps(backend, pf2.view_mut(), g.view()),
            want,
            "{backend:?} F/C mix"
        );

        // Transposed views of a [7, 5] buffer.
        let mut tt = t.t().to_owned();
        let gt = g.t().to_owned();
        assert_eq!(
            two_steps(
                backend,
                tt.view_mut().reversed_axes(),
                gt.view().reversed_axes()
            ),
            want,
            "{backend:?} transposed"
        );

        // Negative strides on both axes.
        let mut pn = t.slice(s![..;-1, ..;-1]).to_owned();
        let gn = g.slice(s![..;-1, ..;-1]).to_owned();
        let got = two_steps(
            backend,
            pn.slice_mut(s![..;-1, ..;-1]).into_dyn(),
            gn.slice(s![..;-1, ..;-1]).into_dyn(),
        );
        assert_eq!(got, want, "{backend:?} negative strides");

        // Strided views inside NaN-filled parents.
        let mut parent = Array::from_elem(IxDyn(&[12, 17]), A::nan());
        let mut gparent = Array::from_elem(IxDyn(&[10, 23]), A::nan());
        parent.slice_mut(s![1..11;2, 2..16;2]).assign(&t);
        gparent.slice_mut(s![..;2, 3..;3]).assign(&g);
        let before = bits(parent.iter());
        let got = two_steps(
            backend,
            parent.slice_mut(s![1..11;2, 2..16;2]).into_dyn(),
            gparent.slice(s![..;2, 3..;3]).into_dyn(),
        );
        assert_eq!(got, want, "{backend:?} strided");
        let after = bits(parent.iter());
        let inside: Vec<bool> = (0..12)
            .flat_map(|i| {
                (0..17).map(move |j| i % 2 == 1 && i < 11 && j % 2 == 0 && (2..16).contains(&j))
            })
            .collect();
        for ((b, a), ins) in before.iter().zip(&after).zip(&inside) {
            if !ins {
                assert_eq!(a, b, "{backend:?}: a byte outside the view changed");
            }
        }

        // Column ranges of wider NaN-filled matrices: rows are contiguous,
        // the views are not.
        let mut wide_p = Array::from_elem(IxDyn(&[7, 19]), A::nan());
        let mut wide_g = Array::from_elem(IxDyn(&[5, 12]), A::nan());
        wide_p.slice_mut(s![1..6, 4..11]).assign(&t);
        wide_g.slice_mut(s![.., 5..]).assign(&g);
        let before = bits(wide_p.iter());
        let got = two_steps(
            backend,
            wide_p.slice_mut(s![1..6, 4..11]).into_dyn(),
            wide_g.slice(s![.., 5..]).into_dyn(),
        );
        assert_eq!(got, want, "{backend:?} row-contiguous columns");
        for (i, (a, b)) in bits(wide_p.iter()).iter().zip(&before).enumerate() {
            let (r, c) = (i / 19, i % 19);
            if !((1..6).contains(&r) && (4..11).contains(&c)) {
                assert_eq!(a, b, "{backend:?}: a byte outside the column view changed");
            }
        }

        // A contiguous but permuted 3-D layout, against its own C-order twin.
        let t3 = Array::from_shape_vec(IxDyn(&[3, 4, 5]), filled::<A>(60, 21)).unwrap();
        let g3 = Array::from_shape_vec(IxDyn(&[3, 4, 5]), filled::<A>(60, 22)).unwrap();
        let mut c3 = t3.clone();
        let want3 = two_steps(backend, c3.view_mut(), g3.view());
        let mut perm = t3.view().permuted_axes(vec![2, 0, 1]).to_owned();
        let gperm = g3.view().permuted_axes(vec![2, 0, 1]).to_owned();
        let got = two_steps(
            backend,
            perm.view_mut().permuted_axes(vec![1, 2, 0]),
            gperm.view().permuted_axes(vec![1, 2, 0]),
        );
        assert_eq!(got, want3, "{backend:?} permuted");
    }
}

#[test]
fn f32_layouts() {
    check_layouts::<f32>();
}

#[test]
fn f64_layouts() {
    check_layouts::<f64>();
}

#[test]
fn zero_dimensional_and_empty() {
    for backend in available_backends() {
        let mut p = metasgd::ndarray::arr0(2.0_f32);
        let g = metasgd::ndarray::arr0(0.5_f32);
        let (tb, ab) = two_steps(backend, p.view_mut(), g.view());
        let mut v = metasgd::ndarray::arr1(&[2.0_f32]);
        assert_eq!(
            (tb, ab),
            two_steps(
                backend,
                v.view_mut(),
                metasgd::ndarray::arr1(&[0.5_f32]).view()
            )
        );

        let mut o = opt::<f64>(backend);
        let e = Array::<f64, _>::zeros((0, 3));
        let out = o.step(&e, &e).unwrap();
        assert_eq!(out.shape(), &[0, 3]);
        assert_eq!(o.get_per_param_lr().unwrap().shape(), &[0, 3]);
        assert_eq!(o.get_step_count(), 1);
    }
}

#[test]
fn allocating_step_keeps_layout_and_bits() {
    let (t, g) = (logical::<f32>(31), logical::<f32>(32));
    for backend in available_backends() {
        let mut o = opt::<f32>(backend);
        let want = o.step(&t, &g).unwrap();
        let want_alpha = bits(o.get_per_param_lr().unwrap().iter());

        let mut pf = Array::zeros(IxDyn(&SHAPE).f());
        pf.assign(&t);
        let mut gf = Array::zeros(IxDyn(&SHAPE).f());
        gf.assign(&g);
        let mut of = opt::<f32>(backend);
        let got = of.step(&pf, &gf).unwrap();
        assert_eq!(bits(got.iter()), bits(want.iter()), "{backend:?}");
        assert!(got.t().is_standard_layout(), "output keeps Fortran order");
        assert_eq!(bits(of.get_per_param_lr().unwrap().iter()), want_alpha);
        assert_eq!(bits(pf.iter()), bits(t.iter()), "the input is untouched");

        // An owned array holding some columns of a wider one (rows contiguous).
        let mut wide = Array::from_elem(IxDyn(&[5, 16]), f32::NAN);
        wide.slice_mut(s![.., 3..10]).assign(&t);
        let cols = wide.slice_move(s![.., 3..10]).into_dyn();
        assert!(cols.as_slice_memory_order().is_none());
        let mut oc = opt::<f32>(backend);
        let got = oc.step(&cols, &g).unwrap();
        assert_eq!(bits(got.iter()), bits(want.iter()), "{backend:?} columns");
        assert_eq!(bits(oc.get_per_param_lr().unwrap().iter()), want_alpha);

        // Negative strides on an owned array.
        let mut pn = t.clone();
        pn.invert_axis(Axis(1));
        pn.assign(&t);
        let mut on = opt::<f32>(backend);
        assert_eq!(
            bits(on.step(&pn, &g).unwrap().iter()),
            bits(want.iter()),
            "{backend:?}"
        );
    }
}

#[test]
fn a_slot_may_change_layout_between_steps() {
    let (t, g) = (logical::<f64>(41), logical::<f64>(42));
    let mut c = t.clone();
    let want = two_steps(Backend::Auto, c.view_mut(), g.view());
    // Step 1 in Fortran order (alpha is created in Fortran order), step 2 in C order.
    let mut o = opt::<f64>(Backend::Auto);
    let mut pf = Array::zeros(IxDyn(&SHAPE).f());
    pf.assign(&t);
    let mut gf = Array::zeros(IxDyn(&SHAPE).f());
    gf.assign(&g);
    o.step_inplace(pf.view_mut(), gf.view()).unwrap();
    let mut pc = pf.as_standard_layout().into_owned();
    o.step_inplace(pc.view_mut(), g.view()).unwrap();
    assert_eq!(
        (bits(pc.iter()), bits(o.get_per_param_lr().unwrap().iter())),
        want
    );
}
