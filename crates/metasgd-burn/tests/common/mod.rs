//! What the burn adapter's tests share: a small module of three parameters
//! (ranks 1 to 3), deterministic values and gradients, flat views.

#![allow(dead_code)] // each test file uses part of it

use burn::module::{Module, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor, TensorData};

#[derive(Module, Debug)]
pub(crate) struct Net {
    pub(crate) w: Param<Tensor<2>>,
    pub(crate) b: Param<Tensor<1>>,
    pub(crate) s: Param<Tensor<3>>,
}

/// Deterministic values in [-2, 2) (the kernels' test data).
pub(crate) fn values(n: usize, seed: u64) -> Vec<f64> {
    metasgd_kernels::testdata::values(n, seed, 0)
}

pub(crate) fn tensor<const D: usize>(shape: [usize; D], seed: u64, dtype: DType) -> Tensor<D> {
    let n = shape.iter().product();
    let data = TensorData::new(values(n, seed), shape).convert_dtype(dtype);
    Tensor::from_data(data, (&Device::flex(), dtype))
}

/// Parameters on the autodiff device (as `ModuleOptimizer` requires), the
/// gradients on the inner (Flex) one, as `backward` returns them.
pub(crate) fn net(dtype: DType) -> Net {
    Net {
        w: Param::from_tensor(Tensor::from_inner(tensor([7, 5], 1, dtype))),
        b: Param::from_tensor(Tensor::from_inner(tensor([5], 2, dtype))),
        s: Param::from_tensor(Tensor::from_inner(tensor([2, 3, 4], 3, dtype))),
    }
}

pub(crate) fn ids(net: &Net) -> [ParamId; 3] {
    [net.w.id, net.b.id, net.s.id]
}

pub(crate) fn grads(net: &Net, seed: u64, dtype: DType) -> GradientsParams {
    let mut g = GradientsParams::new();
    g.register(net.w.id, tensor([7, 5], 10 + seed, dtype));
    g.register(net.b.id, tensor([5], 20 + seed, dtype));
    g.register(net.s.id, tensor([2, 3, 4], 30 + seed, dtype));
    g
}

pub(crate) fn flat<A: burn::tensor::Element, const D: usize>(t: Tensor<D>) -> Vec<A> {
    t.into_data().try_to_vec::<A>().unwrap()
}

pub(crate) fn params<A: burn::tensor::Element + Copy>(net: &Net) -> Vec<Vec<A>> {
    vec![flat(net.w.val()), flat(net.b.val()), flat(net.s.val())]
}

pub(crate) fn bits<A: metasgd_kernels::Element>(v: &[Vec<A>]) -> Vec<Vec<u64>> {
    v.iter()
        .map(|a| a.iter().map(|x| x.to_f64().unwrap().to_bits()).collect())
        .collect()
}
