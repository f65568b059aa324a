//! What the indexer asks of models, and how a set of models is identified.
//!
//! The indexer never sees candle: it drives a [`GalleryModels`], which the CLI implements
//! with the real BLIP captioner and CLIP embedder, and tests implement with deterministic
//! fakes. That keeps the storage/incremental/crash logic testable in milliseconds.

use capmatch_core::RgbImage;
use serde::{Deserialize, Serialize};

/// Everything that determines the vectors and captions stored in an index.
///
/// Two runs may share a database only if their identities are equal: a caption embedding
/// from one CLIP is meaningless next to an image embedding from another, and captions
/// produced with another prompt or captioner would silently change what search matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// CLIP model: hub id or local path, as given.
    pub clip: String,
    /// Hash of the CLIP checkpoint's configuration (detects a different model behind the
    /// same name, e.g. a re-exported local directory).
    pub clip_config: String,
    /// Captioner model: hub id or local path, as given.
    pub captioner: String,
    /// Hash of the captioner checkpoint's configuration.
    pub captioner_config: String,
    /// Prompt the captions continue.
    pub prompt: String,
}

impl std::fmt::Display for ModelIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CLIP {} (config {}), captioner {} (config {}), prompt {:?}",
            self.clip,
            short(&self.clip_config),
            self.captioner,
            short(&self.captioner_config),
            self.prompt
        )
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// The models that turn gallery images into captions and vectors.
///
/// Every method takes a whole batch; implementations are expected to run it as one model
/// batch. All returned vectors must have the same dimension and be L2-normalised (the
/// indexer re-normalises defensively and rejects non-finite or zero vectors).
pub trait GalleryModels {
    /// Which models these are; recorded in the index and compared on every later run.
    fn identity(&self) -> ModelIdentity;
    /// One or more captions per image (`result.len() == images.len()`, each non-empty).
    fn caption(&mut self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<String>>>;
    /// CLIP text-tower embeddings, one per text.
    fn embed_texts(&mut self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>>;
    /// CLIP vision-tower embeddings, one per image.
    fn embed_images(&mut self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<f32>>>;
}

impl<T: GalleryModels + ?Sized> GalleryModels for Box<T> {
    fn identity(&self) -> ModelIdentity {
        (**self).identity()
    }
    fn caption(&mut self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<String>>> {
        (**self).caption(images)
    }
    fn embed_texts(&mut self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        (**self).embed_texts(texts)
    }
    fn embed_images(&mut self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<f32>>> {
        (**self).embed_images(images)
    }
}
