//! Weights of a Hugging Face checkpoint directory, memory-mapped into a candle `VarBuilder`.
//!
//! Accepted layouts, in the order transformers prefers them:
//! `model.safetensors`, sharded `model.safetensors.index.json` + shards, and the legacy
//! PyTorch pickle `pytorch_model.bin` (older hub repositories ship only that).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("no weights in {dir}: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin")]
    NoWeights { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid safetensors index: {source}")]
    BadIndex { path: PathBuf, source: serde_json::Error },
    #[error("cannot load weights from {path}: {source}")]
    Candle { path: PathBuf, source: candle_core::Error },
}

/// The weight files of a checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightFiles {
    SafeTensors(Vec<PathBuf>),
    PyTorch(PathBuf),
}

impl WeightFiles {
    pub fn find(dir: &Path) -> Result<Self, CheckpointError> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Ok(Self::SafeTensors(vec![single]));
        }
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            return Ok(Self::SafeTensors(shards_of(&index)?));
        }
        let bin = dir.join("pytorch_model.bin");
        if bin.is_file() {
            return Ok(Self::PyTorch(bin));
        }
        Err(CheckpointError::NoWeights { dir: dir.to_path_buf() })
    }

    /// A `VarBuilder` over these files; every tensor is converted to `dtype` when taken.
    #[allow(unsafe_code)]
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>, CheckpointError> {
        match self {
            Self::SafeTensors(files) => {
                // SAFETY: the files are memory-mapped read-only; like every mmap-based loader
                // (transformers included) we assume nobody truncates them while we run.
                let mmap = unsafe { MmapedSafetensors::multi(files) }
                    .map_err(|source| CheckpointError::Candle { path: files[0].clone(), source })?;
                Ok(VarBuilder::from_backend(Box::new(ReleasingMmap(mmap)), dtype, device.clone()))
            }
            Self::PyTorch(path) => VarBuilder::from_pth(path, dtype, device)
                .map_err(|source| CheckpointError::Candle { path: path.clone(), source }),
        }
    }
}

/// Memory-mapped safetensors that hand each tensor's pages back once the tensor has been
/// copied out (`madvise(MADV_DONTNEED)`; they stay in the page cache). The models convert or
/// pack every weight at load, so without this a bf16 BLIP-2 peaked at twice its size in
/// resident memory (the mapped file plus the packed copy) until the mapping was dropped.
struct ReleasingMmap(MmapedSafetensors);

impl ReleasingMmap {
    fn load(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.0.load(name, device)?;
        if device.is_cpu() {
            release_pages(self.0.get(name)?.data());
        }
        tensor.to_dtype(dtype)
    }
}

impl SimpleBackend for ReleasingMmap {
    fn get(&self, shape: Shape, name: &str, _: candle_nn::Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dtype, device)?;
        if tensor.shape() != &shape {
            candle_core::bail!("shape mismatch for {name}: the checkpoint has {:?}, the model expects {:?}", tensor.shape(), shape);
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.get(name).is_ok()
    }
}

/// Drops this process's mapping of the whole pages inside `bytes` (a read-only file
/// mapping: a later read faults them back in from the file).
#[allow(unsafe_code)]
fn release_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let start = (bytes.as_ptr() as usize).next_multiple_of(page);
        let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
        if end > start {
            // SAFETY: [start, end) lies inside the read-only mapping `bytes` belongs to, and
            // nothing holds a reference into it past this call but re-faultable reads.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

/// The distinct shard files named by a `model.safetensors.index.json`.
fn shards_of(index: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index)
        .map_err(|source| CheckpointError::Io { path: index.to_path_buf(), source })?;
    let parsed: Index = serde_json::from_str(&text)
        .map_err(|source| CheckpointError::BadIndex { path: index.to_path_buf(), source })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let names: BTreeSet<String> = parsed.weight_map.into_values().collect();
    Ok(names.into_iter().map(|name| dir.join(name)).collect())
}

/// Loads a checkpoint's weights: shorthand for [`WeightFiles::find`] + [`WeightFiles::var_builder`].
pub fn load_weights(dir: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>, CheckpointError> {
    WeightFiles::find(dir)?.var_builder(dtype, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_index_lists_each_shard_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"metadata":{},"weight_map":{"a":"model-00002-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let found = WeightFiles::find(dir.path()).unwrap();
        assert_eq!(
            found,
            WeightFiles::SafeTensors(vec![
                dir.path().join("model-00001-of-00002.safetensors"),
                dir.path().join("model-00002-of-00002.safetensors"),
            ])
        );
    }

    #[test]
    fn empty_directory_names_the_expected_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = WeightFiles::find(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model.safetensors") && err.contains("pytorch_model.bin"), "{err}");
    }
}
