//! The squared L2 norm of a gradient in one fixed order, so that gradient
//! clipping gives the same bits on every instruction set and thread count.
//!
//! The order (`docs/semantics.md`): a tensor is cut into blocks of
//! [`NORM_BLOCK`] elements from its start (the last may be shorter). In a
//! block, element `i` is squared and added to lane `i % 8` of eight partial
//! sums that start at zero (`lane = lane + x * x`, two roundings); the block
//! sum is `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`. The tensor's
//! sum adds the block sums from the first, starting at zero. A list of
//! tensors adds the tensors' sums in list order, starting at zero. The SIMD
//! loop keeps the eight lanes in registers (one pack of eight `f32`, two of
//! four `f64`); the parallel kernel computes whole blocks on the pool and adds
//! their sums in order on the caller's thread.

use crate::simd::pack::Pack;
use crate::simd::{Isa, WithPacks};
use crate::{Element, Kernel};

/// Elements per block of the norm's fixed order.
pub const NORM_BLOCK: usize = 4096;

/// The scalar reference: one block's sum in the fixed order.
pub fn block_sum_reference<A: Element>(block: &[A]) -> A {
    let mut lanes = [A::ZERO; 8];
    for (i, &x) in block.iter().enumerate() {
        lanes[i % 8] = lanes[i % 8] + x * x;
    }
    combine(&lanes)
}

#[inline(always)]
fn combine<A: Element>(l: &[A; 8]) -> A {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// One block's sum on packs: `8 / LANES` accumulators of `LANES` lanes.
struct BlockSum<'a, A> {
    block: &'a [A],
    out: &'a mut A,
}

impl<A: Element> WithPacks<A> for BlockSum<'_, A> {
    #[inline(always)]
    fn packs<P: Pack<A>>(self, tok: P::Token) {
        let n = P::LANES;
        let mut lanes = [A::ZERO; 8];
        let body = self.block.len() - self.block.len() % 8;
        if n == 8 || n == 4 {
            let zero = P::splat(tok, A::ZERO);
            let (mut a0, mut a1) = (zero, zero);
            for c in self.block[..body].chunks_exact(8) {
                let x0 = P::load(tok, c);
                a0 = a0.add(x0.mul(x0));
                if n == 4 {
                    let x1 = P::load(tok, &c[4..]);
                    a1 = a1.add(x1.mul(x1));
                }
            }
            a0.store(&mut lanes[..n]);
            if n == 4 {
                a1.store(&mut lanes[4..]);
            }
        } else {
            for (i, &x) in self.block[..body].iter().enumerate() {
                lanes[i % 8] = lanes[i % 8] + x * x;
            }
        }
        for (i, &x) in self.block[body..].iter().enumerate() {
            lanes[i] = lanes[i] + x * x;
        }
        *self.out = combine(&lanes);
    }

    fn scalars(self) {
        *self.out = block_sum_reference(self.block);
    }
}

/// The squared L2 norm of `x` (one tensor, elements in logical order) in
/// the fixed order, on `kernel`: the same bits on every kernel, instruction
/// set and thread count.
pub fn squared_norm<A: Element>(kernel: Kernel, x: &[A]) -> A {
    squared_norm_on(Isa::detect(), kernel, x)
}

/// [`squared_norm`] on the portable SIMD path whatever the CPU has (feature
/// `testing`).
#[cfg(feature = "testing")]
pub fn squared_norm_portable<A: Element>(kernel: Kernel, x: &[A]) -> A {
    squared_norm_on(Isa::portable(), kernel, x)
}

fn squared_norm_on<A: Element>(isa: Isa, kernel: Kernel, x: &[A]) -> A {
    let block = |b: &[A]| match kernel {
        Kernel::Scalar => block_sum_reference(b),
        _ => {
            let mut out = A::ZERO;
            isa.dispatch(BlockSum {
                block: b,
                out: &mut out,
            });
            out
        }
    };
    let blocks = x.chunks(NORM_BLOCK);
    if kernel == Kernel::Parallel && x.len() >= crate::PAR_THRESHOLD {
        let sums = crate::par::map_blocks(x, NORM_BLOCK, block);
        return sums.into_iter().fold(A::ZERO, |s, b| s + b);
    }
    blocks.fold(A::ZERO, |s, b| s + block(b))
}
