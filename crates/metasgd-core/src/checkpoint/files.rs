//! The optimizer's checkpoint as bytes and files: the public entry points
//! around the one mapping of `state.rs`.

use std::path::Path;

use metasgd_kernels::Element;
use ndarray::ArrayViewD;

use super::state::{NamedTensors, TENSOR_PREFIX};
use super::{at_path, write_atomically};
use crate::{Error, MetaSGD, Result};

impl<A: Element> MetaSGD<A> {
    /// The state as the bytes of a checkpoint file (see [`MetaSGD::save_state`]).
    ///
    /// # Panics
    /// If the header would exceed safetensors' 100 MB limit, which takes
    /// more than a million slots; [`MetaSGD::save_state`] reports it as an
    /// error instead.
    pub fn state_bytes(&self) -> Vec<u8> {
        match self.state_bytes_with(&[], &[]) {
            Ok(bytes) => bytes,
            Err(e) => panic!("cannot encode the optimizer state: {e}"),
        }
    }

    /// An optimizer from the bytes of a checkpoint ([`MetaSGD::state_bytes`],
    /// [`MetaSGD::save_state`], or another tool writing the same layout).
    ///
    /// The checksums are verified first, then every field: corrupt,
    /// malformed or truncated bytes, another dtype than `A`, missing or
    /// extra tensors, counters out of their bounds and versions from the
    /// future are [`Error::InvalidCheckpoint`] errors naming the field. A
    /// file with caller tensors is refused here: use
    /// [`MetaSGD::from_state_bytes_with`].
    pub fn from_state_bytes(bytes: &[u8]) -> Result<Self> {
        let loaded = Self::from_state_bytes_with(bytes, &[])?;
        if let Some((name, _)) = loaded.tensors.first() {
            return Err(Error::invalid_checkpoint(
                format!("{TENSOR_PREFIX}{name}"),
                "the file also holds the caller's tensors: load it with load_state_with_tensors",
            ));
        }
        Ok(loaded.optimizer)
    }

    /// Writes the state to `path` atomically: the bytes go to a temporary
    /// file in the same directory, which is synced and then renamed over
    /// `path` (and the directory synced). A process killed at any moment
    /// leaves either the previous file or the new one, never a torn one.
    ///
    /// The file is safetensors with a CRC32C of its header and of every
    /// tensor (the layout is in the README); [`MetaSGD::load_state`]
    /// verifies them before it decodes anything.
    ///
    /// ```
    /// use metasgd_core::{MetaSGD, Optimizer};
    /// use ndarray::array;
    ///
    /// let dir = std::env::temp_dir().join(format!("metasgd-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("opt.safetensors");
    ///
    /// let mut opt = MetaSGD::new(0.01_f32);
    /// let mut params = array![1.0_f32, 2.0];
    /// opt.step_inplace(params.view_mut(), array![0.5, -0.5].view())?;
    /// opt.save_state(&path)?;
    ///
    /// let loaded = MetaSGD::<f32>::load_state(&path)?;
    /// assert_eq!(loaded.get_step_count(), 1);
    /// assert_eq!(loaded.per_param_lrs(), opt.per_param_lrs());
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_state_with_tensors(path, &[])
    }

    /// Reads a checkpoint written by [`MetaSGD::save_state`]. See
    /// [`MetaSGD::from_state_bytes`] for what is checked; failures to read
    /// the file are [`Error::Io`].
    pub fn load_state(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io_at(path, &e))?;
        Self::from_state_bytes(&bytes).map_err(|e| at_path(path, e))
    }

    /// Saves the optimizer and the caller's tensors (the model's
    /// parameters, anything else of type `A`) in one atomic write, so that
    /// a crash can never leave a model of one step beside an optimizer of
    /// another. Names are 1 to 256 bytes, no control characters, each once.
    ///
    /// ```
    /// use metasgd_core::{MetaSGD, Optimizer};
    /// use ndarray::array;
    ///
    /// let dir = std::env::temp_dir().join(format!("metasgd-doc-t-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("run.safetensors");
    ///
    /// let mut opt = MetaSGD::new(0.01_f32);
    /// let mut w = array![[1.0_f32, 2.0], [3.0, 4.0]];
    /// opt.step_inplace(w.view_mut(), array![[0.5, -0.5], [0.1, 0.0]].view())?;
    /// opt.save_state_with_tensors(&path, &[("w", w.view().into_dyn())])?;
    ///
    /// let (opt2, tensors) = MetaSGD::<f32>::load_state_with_tensors(&path)?;
    /// assert_eq!(opt2.get_step_count(), 1);
    /// assert_eq!(tensors[0].0, "w");
    /// assert_eq!(tensors[0].1, w.into_dyn());
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_state_with_tensors(
        &self,
        path: impl AsRef<Path>,
        tensors: &[(&str, ArrayViewD<'_, A>)],
    ) -> Result<()> {
        let bytes = self.state_bytes_with(&[], tensors)?;
        write_atomically(path.as_ref(), &bytes)
    }

    /// Loads what [`MetaSGD::save_state_with_tensors`] wrote: the optimizer
    /// and the caller's tensors in the order they were saved (none for a
    /// file written by [`MetaSGD::save_state`]).
    pub fn load_state_with_tensors(path: impl AsRef<Path>) -> Result<(Self, NamedTensors<A>)> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io_at(path, &e))?;
        let loaded = Self::from_state_bytes_with(&bytes, &[]).map_err(|e| at_path(path, e))?;
        Ok((loaded.optimizer, loaded.tensors))
    }
}
