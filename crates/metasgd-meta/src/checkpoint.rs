//! Meta-training checkpoints: a [`MetaLearner`]'s whole state in one
//! checksummed, atomically written file, so a long run that dies resumes
//! bitwise where it was.
//!
//! Layout (`metasgd_core::checkpoint`'s container, `format` =
//! `metasgd-meta`, readable by any safetensors reader):
//!
//! | entry | where | what |
//! |---|---|---|
//! | `theta.{j}`, `alpha.{j}` | tensors of `A` | the initialisation and the rates |
//! | `m_theta.{j}`, `v_theta.{j}` | tensors of `A` | Adam's moments for `theta` (Adam only) |
//! | `m_alpha.{j}`, `v_alpha.{j}` | tensors of `A` | Adam's moments for `alpha` (Adam and Meta-SGD only) |
//! | `outer_lr`; `beta1`, `beta2`, `eps` (Adam only) | 0-d tensors of `A` | the outer optimizer's settings, exact bits |
//! | `inner_steps`, `step` | 0-d `U64` | `1..=MAX_INNER_STEPS`; `< 2^32 - 1` |
//! | `tensor.{name}` | tensors of `A` | the caller's tensors |
//! | `counter.{name}` | 1-d `U64` | the caller's counters (only when there are some) |
//! | `dtype`, `method`, `order`, `outer`, `params`, `tensors`, `counters` | `__metadata__` | `f32`/`f64`; `meta-sgd`/`maml`; `first`/`second`; `adam`/`sgd`; the tensor count; the caller's tensor and counter names (JSON) |

use std::collections::BTreeSet;
use std::path::Path;

use metasgd_core::checkpoint::{NamedTensors, Reader, Writer, at_path, write_atomically};
use metasgd_core::{Error, MAX_INNER_STEPS, Result};
use metasgd_kernels::Element;
use ndarray::{ArrayD, ArrayViewD};

use crate::{MetaLearner, Order, Outer};

const FORMAT: &str = "metasgd-meta";

/// What a meta-training program keeps in the learner's checkpoint besides
/// the learner, written in the same atomic file: its own tensors (a best
/// model, an RNG's words) and integer counters (evaluation iterations,
/// elapsed milliseconds), exact and with no sentinel values.
#[derive(Clone, Debug, PartialEq)]
pub struct Extras<A> {
    /// Named tensors of the learner's element type, in order.
    pub tensors: NamedTensors<A>,
    /// Named arrays of counters, in order.
    pub counters: Vec<(String, Vec<u64>)>,
}

impl<A> Default for Extras<A> {
    fn default() -> Self {
        Self {
            tensors: Vec::new(),
            counters: Vec::new(),
        }
    }
}

impl<A: Clone> Extras<A> {
    /// Extras of copies of `tensors` and no counters.
    pub fn from_tensors(tensors: &[(&str, ArrayViewD<'_, A>)]) -> Self {
        Self {
            tensors: tensors
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_owned()))
                .collect(),
            counters: Vec::new(),
        }
    }
}

impl<A> Extras<A> {
    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&ArrayD<A>> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The counters called `name`.
    pub fn counter(&self, name: &str) -> Option<&[u64]> {
        self.counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.as_slice())
    }
}
const TENSOR_PREFIX: &str = "tensor.";
const GROUPS: [&str; 6] = ["theta", "alpha", "m_theta", "v_theta", "m_alpha", "v_alpha"];

impl<A: Element> MetaLearner<A> {
    /// Writes the whole meta-training state (initialisation, rates, Adam's
    /// moments and step, every setting) to `path`, atomically and with
    /// checksums (see `metasgd_core::checkpoint`). A run resumed with
    /// [`MetaLearner::load_state`] is bitwise equal to an uninterrupted one.
    ///
    /// ```
    /// use metasgd_meta::{MetaLearner, Mlp, Sinusoid};
    /// use rand::SeedableRng;
    ///
    /// let net = Mlp::new(&[1, 8, 1]);
    /// let mut learner = MetaLearner::meta_sgd(net.init::<f64>(0), 0.01);
    /// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    /// let batch: Vec<_> = (0..2).map(|_| Sinusoid::default().sample::<f64, _>(&mut rng, 5, 5)).collect();
    /// learner.meta_step(&net, &batch)?;
    ///
    /// let path = std::env::temp_dir().join(format!("meta-doc-{}.safetensors", std::process::id()));
    /// learner.save_state(&path)?;
    /// let resumed = MetaLearner::<f64>::load_state(&path)?;
    /// assert_eq!(resumed.meta_steps(), 1);
    /// assert_eq!(resumed.params(), learner.params());
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_state_with_tensors(path, &[])
    }

    /// Loads what [`MetaLearner::save_state`] wrote, checksums first.
    pub fn load_state(path: impl AsRef<Path>) -> Result<Self> {
        let (learner, tensors) = Self::load_state_with_tensors(path)?;
        match tensors.first() {
            Some((name, _)) => Err(Error::invalid_checkpoint(
                format!("{TENSOR_PREFIX}{name}"),
                "the file also holds the caller's tensors: load it with load_state_with_tensors",
            )),
            None => Ok(learner),
        }
    }

    /// [`MetaLearner::save_state`] with the caller's tensors (an
    /// experiment's own state: an RNG's words, a best model) in the same
    /// atomic write.
    pub fn save_state_with_tensors(
        &self,
        path: impl AsRef<Path>,
        tensors: &[(&str, ArrayViewD<'_, A>)],
    ) -> Result<()> {
        self.save_state_with(path, &Extras::from_tensors(tensors))
    }

    /// Loads what [`MetaLearner::save_state_with_tensors`] wrote (a file
    /// with counters is refused: load it with [`MetaLearner::load_state_with`]).
    pub fn load_state_with_tensors(path: impl AsRef<Path>) -> Result<(Self, NamedTensors<A>)> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io_at(path, &e))?;
        Self::from_state_bytes_with(&bytes).map_err(|e| at_path(path, e))
    }

    /// [`MetaLearner::save_state`] with the caller's [`Extras`] (tensors and
    /// counters) in the same atomic write.
    pub fn save_state_with(&self, path: impl AsRef<Path>, extras: &Extras<A>) -> Result<()> {
        write_atomically(path.as_ref(), &self.state_bytes_with_extras(extras)?)
    }

    /// Loads what [`MetaLearner::save_state_with`] (or any of the savers)
    /// wrote, checksums first.
    pub fn load_state_with(path: impl AsRef<Path>) -> Result<(Self, Extras<A>)> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io_at(path, &e))?;
        Self::from_state_bytes_with_extras(&bytes).map_err(|e| at_path(path, e))
    }

    /// The checkpoint's bytes with the caller's tensors.
    pub fn state_bytes_with(&self, tensors: &[(&str, ArrayViewD<'_, A>)]) -> Result<Vec<u8>> {
        self.state_bytes_with_extras(&Extras::from_tensors(tensors))
    }

    /// The checkpoint's bytes (see the module docs for the layout).
    pub fn state_bytes_with_extras(&self, extras: &Extras<A>) -> Result<Vec<u8>> {
        let mut w = Writer::new(FORMAT);
        w.metadata("dtype", A::NAME)?;
        w.metadata("method", if self.learn_alpha { "meta-sgd" } else { "maml" })?;
        w.metadata(
            "order",
            match self.order {
                Order::First => "first",
                Order::Second => "second",
            },
        )?;
        w.metadata("params", self.theta.len().to_string())?;
        match self.outer {
            Outer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                w.metadata("outer", "adam")?;
                for (name, v) in [
                    ("outer_lr", lr),
                    ("beta1", beta1),
                    ("beta2", beta2),
                    ("eps", eps),
                ] {
                    w.float(name, v)?;
                }
            }
            Outer::Sgd { lr } => {
                w.metadata("outer", "sgd")?;
                w.float("outer_lr", lr)?;
            }
        }
        w.count("inner_steps", self.inner_steps as u64)?;
        w.count("step", u64::from(self.step))?;
        for (group, arrays) in GROUPS.iter().zip(self.groups()) {
            for (j, a) in arrays.iter().enumerate() {
                w.floats(&format!("{group}.{j}"), a.view())?;
            }
        }
        let tensors: Vec<(&str, ArrayViewD<'_, A>)> = extras
            .tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.view()))
            .collect();
        w.caller_tensors(&tensors)?;
        let counters: Vec<(&str, &[u64])> = extras
            .counters
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice()))
            .collect();
        w.caller_counters(&counters)?;
        w.to_bytes()
    }

    fn groups(&self) -> [&Vec<ArrayD<A>>; 6] {
        [
            &self.theta,
            &self.alpha,
            &self.m_theta,
            &self.v_theta,
            &self.m_alpha,
            &self.v_alpha,
        ]
    }

    /// A learner from a checkpoint's bytes, and the caller's tensors (a file
    /// with counters is refused: read it with
    /// [`MetaLearner::from_state_bytes_with_extras`]).
    pub fn from_state_bytes_with(bytes: &[u8]) -> Result<(Self, NamedTensors<A>)> {
        let (learner, extras) = Self::from_state_bytes_with_extras(bytes)?;
        match extras.counters.first() {
            Some((name, _)) => Err(Error::invalid_checkpoint(
                format!("counter.{name}"),
                "the file also holds the caller's counters: load it with load_state_with",
            )),
            None => Ok((learner, extras.tensors)),
        }
    }

    /// A learner from a checkpoint's bytes, and the caller's [`Extras`]:
    /// checksums first, then every field, before anything is built.
    pub fn from_state_bytes_with_extras(bytes: &[u8]) -> Result<(Self, Extras<A>)> {
        let r = Reader::open(bytes, FORMAT, false)?;
        r.only_metadata(&["dtype", "method", "order", "outer", "params"])?;
        let dtype = r.metadata("dtype")?;
        if dtype != A::NAME {
            return Err(Error::invalid_checkpoint(
                "__metadata__.dtype",
                format!(
                    "the checkpoint holds {dtype}, this learner is MetaLearner<{}>",
                    A::NAME
                ),
            ));
        }
        let learn_alpha = match r.metadata("method")? {
            "meta-sgd" => true,
            "maml" => false,
            other => {
                return Err(Error::invalid_checkpoint(
                    "__metadata__.method",
                    format!("unknown method {other:?} (meta-sgd, maml)"),
                ));
            }
        };
        let order = match r.metadata("order")? {
            "first" => Order::First,
            "second" => Order::Second,
            other => {
                return Err(Error::invalid_checkpoint(
                    "__metadata__.order",
                    format!("unknown order {other:?} (first, second)"),
                ));
            }
        };
        let adam = match r.metadata("outer")? {
            "adam" => true,
            "sgd" => false,
            other => {
                return Err(Error::invalid_checkpoint(
                    "__metadata__.outer",
                    format!("unknown outer optimizer {other:?} (adam, sgd)"),
                ));
            }
        };
        let params_text = r.metadata("params")?;
        let params: usize = params_text
            .parse()
            .ok()
            .filter(|&n: &usize| n <= r.len())
            .ok_or_else(|| {
                Error::invalid_checkpoint(
                    "__metadata__.params",
                    format!("{params_text:?} is not a count of the file's tensors"),
                )
            })?;
        // theta, alpha, then the moments the optimizer keeps.
        let present: Vec<bool> = GROUPS
            .iter()
            .map(|g| match *g {
                "theta" | "alpha" => true,
                "m_theta" | "v_theta" => adam,
                _ => adam && learn_alpha,
            })
            .collect();
        let mut expected: BTreeSet<String> =
            ["outer_lr", "inner_steps", "step"].map(String::from).into();
        if adam {
            expected.extend(["beta1", "beta2", "eps"].map(String::from));
        }
        for (group, _) in GROUPS.iter().zip(&present).filter(|(_, p)| **p) {
            expected.extend((0..params).map(|j| format!("{group}.{j}")));
        }
        let caller = r.caller_names(&mut expected)?;
        let counter_names = r.caller_counter_names(&mut expected)?;
        r.only_tensors(&expected)?;
        let inner_steps = r.count("inner_steps")?;
        if !(1..=MAX_INNER_STEPS as u64).contains(&inner_steps) {
            return Err(Error::invalid_checkpoint(
                "inner_steps",
                format!("{inner_steps} is outside [1, {MAX_INNER_STEPS}]"),
            ));
        }
        let step = r.count("step")?;
        let step = u32::try_from(step)
            .ok()
            .filter(|&s| s < u32::MAX)
            .ok_or_else(|| {
                Error::invalid_checkpoint("step", format!("{step} is not below 2^32 - 1"))
            })?;
        let mut arrays: Vec<Vec<ArrayD<A>>> = Vec::with_capacity(6);
        for (group, &p) in GROUPS.iter().zip(&present) {
            arrays.push(if p {
                (0..params)
                    .map(|j| r.floats(&format!("{group}.{j}")))
                    .collect::<Result<_>>()?
            } else {
                Vec::new()
            });
        }
        for (j, theta) in arrays[0].iter().enumerate() {
            let shape = theta.shape();
            for (group, arrays) in GROUPS.iter().zip(&arrays).skip(1) {
                if let Some(a) = arrays.get(j)
                    && a.shape() != shape
                {
                    return Err(Error::invalid_checkpoint(
                        format!("{group}.{j}"),
                        format!("shape {:?}, theta.{j} has {shape:?}", a.shape()),
                    ));
                }
            }
        }
        let mut it = arrays.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let learner = MetaLearner {
            theta: next(),
            alpha: next(),
            m_theta: next(),
            v_theta: next(),
            m_alpha: next(),
            v_alpha: next(),
            learn_alpha,
            inner_steps: inner_steps as usize,
            order,
            outer: if adam {
                Outer::Adam {
                    lr: r.float("outer_lr")?,
                    beta1: r.float("beta1")?,
                    beta2: r.float("beta2")?,
                    eps: r.float("eps")?,
                }
            } else {
                Outer::Sgd {
                    lr: r.float("outer_lr")?,
                }
            },
            step,
            buffers: Default::default(),
        };
        let extras = Extras {
            tensors: r.caller_tensors(caller)?,
            counters: r.caller_counters(counter_names)?,
        };
        Ok((learner, extras))
    }
}
