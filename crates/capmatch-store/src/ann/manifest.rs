//! The approximate index's commit record, `manifest.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::graph::{GraphFile, GraphParams};
use crate::error::{Result, StoreError};

pub(crate) const MANIFEST: &str = "manifest.json";
const FORMAT: &str = "capmatch-ann";
const VERSION: u32 = 1;

/// What a tuning run measured (`capmatch ann tune`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    /// The recall@k asked for.
    pub target_recall: f64,
    /// k of the recall.
    pub k: usize,
    /// The search breadth chosen: the smallest measured whose [`Tuning::recall_floor`]
    /// reached the target, else the largest measured.
    pub breadth: usize,
    /// Recall@k at that breadth in caption mode and in image mode.
    pub caption_recall: f64,
    pub image_recall: f64,
    /// The lower end of the 95% confidence interval of the lower of the two recalls (Wilson
    /// score, each of the sample's `k` results a trial): what the target is checked against,
    /// so that the target still holds for queries outside the sample.
    pub recall_floor: f64,
    /// Gallery images used as queries, and images in the gallery then.
    pub sample: usize,
    pub images: u64,
    /// When, in seconds since the Unix epoch.
    pub measured_at: u64,
}

impl Tuning {
    /// The lower of the two recalls.
    pub fn recall(&self) -> f64 {
        self.caption_recall.min(self.image_recall)
    }

    pub fn reached(&self) -> bool {
        self.recall_floor >= self.target_recall
    }
}

/// The commit record of the approximate index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AnnManifest {
    pub format: String,
    pub version: u32,
    /// The library and version that wrote the graphs.
    pub library: String,
    pub dim: usize,
    /// The models' vector fingerprint of the exact index the graphs were built from.
    pub fingerprint: Option<String>,
    /// The exact index's file generation (its row numbering) the keys refer to.
    pub exact_file_generation: u64,
    /// The exact index's generation when the graphs were last saved.
    pub exact_generation: u64,
    /// Rows of the exact index the graphs cover: rows `0..rows` (those live then) are in
    /// them, later rows are not.
    pub rows: u64,
    /// Numbers the graph files; each save writes files under the next one.
    pub sequence: u64,
    pub params: GraphParams,
    pub quantization: String,
    /// efSearch.
    pub breadth: usize,
    pub tuning: Option<Tuning>,
    /// When the graphs were built (seconds since the Unix epoch); merges keep it.
    pub built_at: u64,
    pub images: GraphFile,
    pub captions: GraphFile,
}

impl AnnManifest {
    pub(crate) fn library() -> String {
        format!("usearch {}", usearch::version())
    }

    pub(crate) fn new_format() -> (String, u32) {
        (FORMAT.into(), VERSION)
    }

    /// Reads `dir`'s manifest: `None` when there is none.
    pub(crate) fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let m: Self = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::corrupt(&path, format!("not an approximate-index manifest: {e}")))?;
        if m.format != FORMAT {
            return Err(StoreError::corrupt(&path, format!("format {:?}, expected {FORMAT:?}", m.format)));
        }
        if m.version != VERSION {
            return Err(StoreError::corrupt(&path, format!("format version {} (this capmatch reads {VERSION})", m.version)));
        }
        Ok(Some(m))
    }

    /// Replaces `dir`'s manifest atomically.
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        crate::durable::replace_file(dir, MANIFEST, &serde_json::to_vec_pretty(self).expect("manifest serialises"))
    }
}
