//! What the metasgd examples share, in one place: the meta-learning method
//! names ([`Method`]), the Fashion-MNIST start-up (flags, the checked IDX
//! reader, batch order, curves and summary lines: [`fashion_mnist`]), a CSV
//! of curves several runs share ([`curves`]) and
//! the line charts every example draws ([`plot`]). Used only by the
//! workspace's examples (and the data readers' fuzz target); not published.

pub mod curves;
pub mod fashion_mnist;
mod method;
pub mod plot;

pub use method::Method;
