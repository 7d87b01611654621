//! [`ModuleMetaSGD`]'s records: burn's [`OptimizerRecord`] in the layout
//! burn's `ModuleOptimizer` writes for [`MetaSGD`](crate::MetaSGD)
//! (burnpack: tensors `{id}.rates` and `{id}.prev` carrying the parameter
//! id, scalars `{id}.lr`, `{id}.steps`, `{id}.skipped` and `{id}.__rank`,
//! the parameter's path as metadata), so either optimizer loads what the
//! other saved. Each state read is checked by [`MetaSGDState`]'s own reader.

use std::collections::{BTreeMap, HashMap};

use burn::module::ParamId;
use burn::optim::{OptimizerRecord, RecordState, StateSource};
use burn::tensor::{Device, TensorData};

use super::{ModuleMetaSGD, Slot};
use crate::{Error, LR, Lent, MetaSGDState, PREV, RATES, SKIPPED, STEPS};

/// The scalar under which burn's `ModuleOptimizer` records a state's rank.
const RANK: &str = "__rank";

/// `Some($body)` with the const `$d` set to `$rank` (0 to 8, the ranks
/// burn's optimizer states have), `None` for any other rank.
macro_rules! with_rank {
    ($rank:expr, $d:ident => $body:block) => {
        match $rank {
            0 => {
                const $d: usize = 0;
                Some($body)
            }
            1 => {
                const $d: usize = 1;
                Some($body)
            }
            2 => {
                const $d: usize = 2;
                Some($body)
            }
            3 => {
                const $d: usize = 3;
                Some($body)
            }
            4 => {
                const $d: usize = 4;
                Some($body)
            }
            5 => {
                const $d: usize = 5;
                Some($body)
            }
            6 => {
                const $d: usize = 6;
                Some($body)
            }
            7 => {
                const $d: usize = 7;
                Some($body)
            }
            8 => {
                const $d: usize = 8;
                Some($body)
            }
            _ => None,
        }
    };
}

impl ModuleMetaSGD {
    /// The state of every parameter as burn's [`OptimizerRecord`], in the
    /// layout [`ModuleOptimizer`](burn::optim::ModuleOptimizer) writes for
    /// [`MetaSGD`](crate::MetaSGD): either can load what the other saved.
    pub fn to_record(&self) -> Result<OptimizerRecord, Error> {
        let mut tensors = Vec::new();
        let mut scalars: Vec<(String, burn_pack::Scalar)> = Vec::new();
        let mut paths = Vec::new();
        for (id, slot) in &self.slots {
            let prefix = id.val().to_string();
            let mut push = |leaf: &str, lent: &Lent| {
                let (bytes, shape, dtype) = lent.to_data().into_parts();
                let name = format!("{prefix}.{leaf}");
                tensors.push(burn_pack::Tensor::new(
                    name,
                    dtype,
                    shape,
                    Some(id.val()),
                    bytes,
                ));
            };
            push(RATES, &slot.rates);
            if let Some(p) = &slot.prev {
                push(PREV, p);
            }
            scalars.push((format!("{prefix}.{LR}"), slot.lr.into()));
            scalars.push((format!("{prefix}.{STEPS}"), slot.steps.into()));
            scalars.push((format!("{prefix}.{SKIPPED}"), slot.skipped.into()));
            scalars.push((format!("{prefix}.{RANK}"), slot.dims.len().into()));
            paths.push((prefix, slot.path.clone()));
        }
        let mut writer = burn_pack::Writer::new(tensors);
        for (key, value) in &scalars {
            writer = writer.with_scalar(key, *value);
        }
        for (key, value) in &paths {
            writer = writer.with_metadata(key, value);
        }
        let bytes = writer.into_bytes().map_err(Error::record)?;
        OptimizerRecord::from_bytes(bytes).map_err(Error::record)
    }

    /// Replaces every parameter's state with those of `record` (written by
    /// [`Self::to_record`] or by a [`ModuleOptimizer`](burn::optim::ModuleOptimizer)
    /// over [`MetaSGD`](crate::MetaSGD)). Each state is checked as the per-tensor state is
    /// ([`MetaSGDState`]): a broken one is kept and its steps are refused
    /// with the reason, never silently restarted. A record that cannot be
    /// read at all is an error and changes nothing.
    pub fn load_record(mut self, record: OptimizerRecord) -> Result<Self, Error> {
        let bytes = record.into_bytes().map_err(Error::record)?;
        let reader = burn_pack::Reader::from_bytes(bytes).map_err(Error::record)?;
        let paths = reader.metadata().clone();
        let scalars = reader.scalars().clone();
        let suffix = format!(".{RANK}");
        let mut ranks: BTreeMap<u64, usize> = scalars
            .iter()
            .filter_map(|(name, value)| {
                let id = name.strip_suffix(&suffix)?.parse().ok()?;
                Some((id, usize::try_from(*value).ok()?))
            })
            .collect();
        let mut source = StateSource::new(scalars);
        for t in reader.into_tensors().map_err(Error::record)? {
            let (name, dtype, shape, id, bytes) = t.into_parts().map_err(Error::record)?;
            let id =
                id.ok_or_else(|| Error::record(format!("tensor {name} names no parameter")))?;
            ranks.entry(id).or_insert(shape.len());
            source.insert_tensor(name, TensorData::from_bytes(bytes, shape, dtype));
        }
        let device = Device::default();
        let mut slots = HashMap::with_capacity(ranks.len());
        for (id, rank) in ranks {
            let prefix = id.to_string();
            let path = paths.get(&prefix).cloned().unwrap_or_default();
            let slot = with_rank!(rank, D => {
                MetaSGDState::<D>::state_unflatten(&prefix, &mut source, &device)
                    .map(|s| Slot::from_state(s, path))
            })
            .ok_or_else(|| Error::record(format!("parameter {id}: rank {rank} (at most 8)")))?;
            if let Some(slot) = slot {
                slots.insert(ParamId::from(id), slot);
            }
        }
        self.slots = slots;
        Ok(self)
    }

    /// [`Self::to_record`] saved to a burnpack file at `path`.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<(), Error> {
        self.to_record()?.save(path).map_err(Error::record)
    }

    /// [`Self::load_record`] of the burnpack file at `path`.
    pub fn load(self, path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        self.load_record(OptimizerRecord::load(path).map_err(Error::record)?)
    }
}

impl Slot {
    /// A state read from a record (path: the parameter's, as recorded).
    fn from_state<const D: usize>(s: MetaSGDState<D>, path: String) -> Self {
        Self {
            dims: s.rates.dims().to_vec(),
            dtype: s.rates.dtype(),
            rates: Lent::new(s.rates),
            prev: s.prev.map(Lent::new),
            lr: s.lr,
            steps: s.steps,
            skipped: s.skipped,
            path,
            problem: s.problem,
        }
    }
}
