//! The models behind the engine: which checkpoints, how they run, loaded once and shared.
//!
//! The indexing job and search never see candle: they drive a [`GalleryModels`], which
//! [`Models`] implements with the real captioner (BLIP / BLIP-2) and CLIP, and tests
//! implement with deterministic fakes. Checkpoints are resolved (found on disk or in the
//! Hugging Face cache, and fingerprinted) when the engine opens, but loaded only when a
//! model is first needed, once, by whichever thread needs it first: re-indexing an
//! unchanged folder loads nothing, and a server answering text queries never loads the
//! captioner.

use std::path::PathBuf;
use std::sync::OnceLock;

use capmatch_core::captioner::{CaptionArch, CaptionOptions, Captioner};
use capmatch_core::embedder::ClipEmbedder;
use capmatch_core::hub::{self, ModelKind, ResolvedModel};
use capmatch_core::{DType, Device, LoadOptions, RgbImage};
pub use capmatch_store::ModelIdentity;

use crate::error::{EngineError, Result};

/// Numeric precision the models run in.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Dtype {
    pub fn candle(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::Bf16 => DType::BF16,
            Dtype::F16 => DType::F16,
        }
    }

    fn of_candle(dtype: DType) -> Self {
        match dtype {
            DType::BF16 => Dtype::Bf16,
            DType::F16 => Dtype::F16,
            _ => Dtype::F32,
        }
    }
}

/// The default CLIP checkpoint.
pub const DEFAULT_CLIP: &str = "openai/clip-vit-base-patch32";
/// The default captioner checkpoint.
pub const DEFAULT_CAPTIONER: &str = "Salesforce/blip-image-captioning-base";

/// Which models, and how they run.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// CLIP checkpoint: a local directory in the Hugging Face layout or a hub id.
    pub clip: String,
    /// Captioner checkpoint (BLIP or BLIP-2).
    pub captioner: String,
    /// `None`: f32 for CLIP; the captioner's architecture default (BLIP f32, BLIP-2 bf16).
    pub dtype: Option<Dtype>,
    /// Text the caption continues; `None`: the architecture's default ("a picture of" for
    /// BLIP, none for BLIP-2); `Some("")`: unconditional.
    pub prompt: Option<String>,
    /// Longest caption in new tokens; `None`: the checkpoint's generation config (BLIP: 20).
    pub max_new_tokens: Option<usize>,
    /// Shortest caption in new tokens (end of text is not chosen before); `None`: no minimum.
    /// Neither length is part of the index's identity: like `dtype` and the batch size, they
    /// are how this run captions, and images captioned by an earlier run keep their captions.
    pub min_new_tokens: Option<usize>,
    pub device: Device,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            clip: DEFAULT_CLIP.into(),
            captioner: DEFAULT_CAPTIONER.into(),
            dtype: None,
            prompt: None,
            max_new_tokens: None,
            min_new_tokens: None,
            device: Device::Cpu,
        }
    }
}

/// A checkpoint found on disk (or in the cache), not loaded yet, with its config hash.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// How the index records it: the hub id as given, or a local directory's absolute path
    /// (so that an index built with `--clip ./models/clip` is searched from any working
    /// directory).
    pub spec: String,
    pub dir: PathBuf,
    pub config_hash: String,
}

impl Checkpoint {
    pub fn resolve(spec: &str, kind: ModelKind) -> Result<Self> {
        let ResolvedModel { dir, commit, .. } = hub::resolve_model(spec, kind).map_err(EngineError::model)?;
        let config_hash = hub::config_fingerprint(&dir).map_err(EngineError::model)?;
        let spec = match commit {
            Some(_) => spec.to_string(),
            None => std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone()).display().to_string(),
        };
        Ok(Self { spec, dir, config_hash })
    }
}

/// The models that turn gallery images into captions and vectors, and queries into vectors.
///
/// Every method takes a whole batch and is called from any thread. Returned vectors must
/// all have the same dimension; the engine normalises them (and refuses zero or non-finite
/// ones). The vector of one input must not depend on the rest of its batch.
pub trait GalleryModels: Send + Sync {
    /// Which models these are; recorded in the index and compared on every later run.
    fn identity(&self) -> ModelIdentity;
    /// One or more captions per image (`result.len() == images.len()`, each non-empty).
    fn caption(&self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<String>>>;
    /// CLIP text-tower embeddings, one per text.
    fn embed_texts(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>>;
    /// CLIP vision-tower embeddings, one per image.
    fn embed_images(&self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<f32>>>;
}

/// What a captioner runs with unless told otherwise: BLIP in f32 with "a picture of",
/// BLIP-2 with bf16 weights and no prompt (its weights are billions of parameters).
pub fn captioner_settings(checkpoint: &Checkpoint, dtype: Option<Dtype>, prompt: Option<&str>) -> Result<(Dtype, String)> {
    let arch = CaptionArch::of_checkpoint(&checkpoint.dir).map_err(EngineError::model)?;
    Ok((dtype.unwrap_or(Dtype::of_candle(arch.default_dtype())), prompt.unwrap_or(arch.default_prompt()).to_string()))
}

/// Loads a CLIP checkpoint directory.
pub fn load_clip(dir: &std::path::Path, dtype: Dtype, device: &Device) -> Result<ClipEmbedder> {
    ClipEmbedder::load_with(dir, &LoadOptions::new(dtype.candle()).on(device.clone()))
        .map_err(|e| EngineError::Model(e.context(format!("cannot load the CLIP model in {}", dir.display()))))
}

/// Loads a captioner checkpoint directory.
pub fn load_captioner(dir: &std::path::Path, dtype: Dtype, device: &Device) -> Result<Captioner> {
    Captioner::load_with(dir, &LoadOptions::new(dtype.candle()).on(device.clone()))
        .map_err(|e| EngineError::Model(e.context(format!("cannot load the captioner in {}", dir.display()))))
}

/// The real models: checkpoints resolved at once, loaded on first use, shared by threads.
pub struct Models {
    clip: Checkpoint,
    /// `None` for an engine that only searches (the index says which captioner made it).
    captioner: Option<Checkpoint>,
    clip_dtype: Dtype,
    captioner_dtype: Dtype,
    options: CaptionOptions,
    device: Device,
    identity: ModelIdentity,
    loaded_clip: OnceLock<std::result::Result<ClipEmbedder, String>>,
    loaded_captioner: OnceLock<std::result::Result<Captioner, String>>,
}

impl Models {
    /// The models of `config`, for indexing (both resolved now, loaded later).
    pub fn new(config: &ModelConfig) -> Result<Self> {
        let lengths = CaptionOptions {
            max_new_tokens: config.max_new_tokens,
            min_new_tokens: config.min_new_tokens,
            ..CaptionOptions::default()
        };
        lengths.check().map_err(EngineError::InvalidRequest)?;
        let clip = Checkpoint::resolve(&config.clip, ModelKind::Clip)?;
        let captioner = Checkpoint::resolve(&config.captioner, ModelKind::Captioner)?;
        let (captioner_dtype, prompt) = captioner_settings(&captioner, config.dtype, config.prompt.as_deref())?;
        let identity = ModelIdentity {
            clip: clip.spec.clone(),
            clip_config: clip.config_hash.clone(),
            captioner: captioner.spec.clone(),
            captioner_config: captioner.config_hash.clone(),
            prompt: prompt.clone(),
        };
        Ok(Self {
            clip,
            captioner: Some(captioner),
            clip_dtype: config.dtype.unwrap_or(Dtype::F32),
            captioner_dtype,
            options: CaptionOptions { prompt, ..lengths },
            device: config.device.clone(),
            identity,
            loaded_clip: OnceLock::new(),
            loaded_captioner: OnceLock::new(),
        })
    }

    /// The models an existing index was built with, for searching it: its CLIP (found at
    /// `clip_override` if it moved, which must have the recorded config), and its captioner
    /// if it can still be found (only `caption-text` queries of new images need it).
    pub fn of_index(identity: &ModelIdentity, clip_override: Option<&str>, dtype: Option<Dtype>, device: &Device) -> Result<Self> {
        let spec = clip_override.unwrap_or(&identity.clip);
        let clip = Checkpoint::resolve(spec, ModelKind::Clip).map_err(|e| {
            EngineError::Model(anyhow::anyhow!("{e}").context(format!(
                "cannot find the CLIP model the index was built with ({spec}); pass --clip"
            )))
        })?;
        if clip.config_hash != identity.clip_config {
            return Err(EngineError::ModelMismatch(format!(
                "the CLIP model at {spec} (config {}) is not the one the index was built with ({}, config {})",
                clip.config_hash, identity.clip, identity.clip_config
            )));
        }
        let captioner = Checkpoint::resolve(&identity.captioner, ModelKind::Captioner)
            .ok()
            .filter(|c| c.config_hash == identity.captioner_config);
        let captioner_dtype = match &captioner {
            Some(c) => captioner_settings(c, dtype, Some(&identity.prompt))?.0,
            None => Dtype::F32,
        };
        Ok(Self {
            clip,
            captioner,
            clip_dtype: dtype.unwrap_or(Dtype::F32),
            captioner_dtype,
            options: CaptionOptions { prompt: identity.prompt.clone(), ..CaptionOptions::default() },
            device: device.clone(),
            identity: identity.clone(),
            loaded_clip: OnceLock::new(),
            loaded_captioner: OnceLock::new(),
        })
    }

    /// The CLIP model, loaded on first call.
    pub fn clip(&self) -> Result<&ClipEmbedder> {
        self.loaded_clip
            .get_or_init(|| {
                tracing::info!("loading {}", self.clip.spec);
                load_clip(&self.clip.dir, self.clip_dtype, &self.device).map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| EngineError::Model(anyhow::anyhow!("{e}")))
    }

    /// The captioner, loaded on first call.
    pub fn captioner(&self) -> Result<&Captioner> {
        let Some(checkpoint) = &self.captioner else {
            return Err(EngineError::Model(anyhow::anyhow!(
                "the captioner the index was built with ({}) cannot be found here",
                self.identity.captioner
            )));
        };
        self.loaded_captioner
            .get_or_init(|| {
                tracing::info!("loading {}", checkpoint.spec);
                load_captioner(&checkpoint.dir, self.captioner_dtype, &self.device).map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| EngineError::Model(anyhow::anyhow!("{e}")))
    }

    pub fn clip_checkpoint(&self) -> &Checkpoint {
        &self.clip
    }
}

impl GalleryModels for Models {
    fn identity(&self) -> ModelIdentity {
        self.identity.clone()
    }

    fn caption(&self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<String>>> {
        let captioner = self.captioner()?;
        Ok(captioner.caption(images, &self.options)?.into_iter().map(|caption| vec![caption.text]).collect())
    }

    fn embed_texts(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.clip()?.embed_texts(texts)
    }

    fn embed_images(&self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.clip()?.embed_images(images)
    }
}
