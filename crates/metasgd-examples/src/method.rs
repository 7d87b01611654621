//! The meta-learning methods the examples compare.

use metasgd_meta::{MetaLearner, Order};
use ndarray::ArrayD;

/// Meta-SGD, MAML or first-order MAML, as the examples' `--method` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Method {
    /// Meta-SGD (Li et al. 2017): the initialisation and a rate per parameter.
    #[value(name = "meta-sgd")]
    MetaSgd,
    /// MAML: the initialisation, one fixed inner rate.
    Maml,
    /// First-order MAML.
    #[value(name = "fomaml")]
    FoMaml,
}

impl Method {
    /// The name on the command line and in outputs.
    pub fn name(self) -> &'static str {
        match self {
            Method::MetaSgd => "meta-sgd",
            Method::Maml => "maml",
            Method::FoMaml => "fomaml",
        }
    }

    /// A learner of this method from `init`: Meta-SGD's rates start at
    /// `alpha_init`, MAML's fixed rate is `maml_lr`.
    pub fn learner(
        self,
        init: Vec<ArrayD<f32>>,
        alpha_init: f32,
        maml_lr: f32,
    ) -> MetaLearner<f32> {
        match self {
            Method::MetaSgd => MetaLearner::meta_sgd(init, alpha_init),
            Method::Maml => MetaLearner::maml(init, maml_lr),
            Method::FoMaml => MetaLearner::maml(init, maml_lr).with_order(Order::First),
        }
    }
}
