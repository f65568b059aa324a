//! Read-only memory maps of the column files.
//!
//! Mapping a file is `unsafe` because another process could truncate it under the map
//! (the next access would fault). capmatch never does: a writer only appends past the
//! committed length, truncates nothing below it (see `ExactIndex::open`), and compaction
//! writes new files instead of rewriting old ones. Maps are taken up to the committed
//! length only.

use std::fs::File;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};

use crate::error::{Result, StoreError};

/// A read-only view of the first `len` bytes of a file (empty without a file).
pub(crate) struct Mapped {
    map: Option<Mmap>,
}

impl Mapped {
    pub(crate) fn empty() -> Self {
        Self { map: None }
    }

    pub(crate) fn open(path: &Path, len: usize) -> Result<Self> {
        if len == 0 {
            return Ok(Self::empty());
        }
        let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
        let actual = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
        if actual < len as u64 {
            return Err(StoreError::corrupt(path, format!("{actual} bytes where the manifest commits {len}")));
        }
        #[allow(unsafe_code)]
        // SAFETY: see the module documentation: capmatch never shrinks a committed file,
        // and the map covers only committed bytes.
        let map = unsafe { MmapOptions::new().len(len).map(&file) }.map_err(|e| StoreError::io(path, e))?;
        Ok(Self { map: Some(map) })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub(crate) fn f32s(&self) -> &[f32] {
        match &self.map {
            Some(map) => bytemuck::cast_slice(map),
            None => &[],
        }
    }

    pub(crate) fn u32s(&self) -> &[u32] {
        match &self.map {
            Some(map) => bytemuck::cast_slice(map),
            None => &[],
        }
    }

    pub(crate) fn u64s(&self) -> &[u64] {
        match &self.map {
            Some(map) => bytemuck::cast_slice(map),
            None => &[],
        }
    }
}
