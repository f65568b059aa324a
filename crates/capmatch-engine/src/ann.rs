//! The approximate index's upkeep: building it, tuning its recall, and its status.
//!
//! Searches use it by themselves once it is built (see `capmatch_store::ann`); these are the
//! operations a user runs on it (`capmatch ann build`, `capmatch ann tune`, `capmatch index
//! --ann`).

pub use capmatch_store::ann::{GraphParams, TuneOptions, TunePoint, TuneReport, Tuning, DEFAULT_BREADTH, OVERSAMPLE};
pub use capmatch_store::{AnnState, AnnStatus};

use crate::error::Result;
use crate::Engine;

impl Engine {
    /// Builds the approximate index from every image of the gallery, replacing any previous
    /// one. Needs a writer.
    pub fn build_ann(&self, params: GraphParams) -> Result<AnnStatus> {
        self.require_writer()?;
        self.storage.build_ann(params)
    }

    /// Builds the approximate index unless a usable one exists (`capmatch index --ann`; the
    /// indexing run itself has merged its new images into an existing one). Returns the
    /// status and whether it built.
    pub fn ensure_ann(&self, params: GraphParams) -> Result<(AnnStatus, bool)> {
        self.require_writer()?;
        let status = self.ann_status()?;
        if status.state == AnnState::Fresh {
            return Ok((status, false));
        }
        Ok((self.storage.build_ann(params)?, true))
    }

    /// Measures recall@k of the approximate index against exact search on a sample of the
    /// gallery's own images and sets the search breadth that reaches the target; the
    /// measurement is recorded (see [`Tuning`]). Needs a writer.
    pub fn tune_ann(&self, options: &TuneOptions) -> Result<TuneReport> {
        self.require_writer()?;
        self.storage.tune_ann(options)
    }

    pub fn ann_status(&self) -> Result<AnnStatus> {
        self.storage.follow_writer()?;
        Ok(self.storage.index().ann_status())
    }
}
