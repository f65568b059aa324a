//! From command-line flags to models: `--clip` / `--captioner` name either a local
//! checkpoint directory or a hub id, resolved through the Hugging Face cache by
//! `capmatch_core::hub`. Also the real [`GalleryModels`] the indexer drives.

use std::path::{Path, PathBuf};

use anyhow::Context;
use capmatch_core::captioner::{CaptionArch, CaptionOptions, Captioner};
use capmatch_core::embedder::ClipEmbedder;
use capmatch_core::hub::{self, ModelKind, ResolvedModel};
use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_core::RgbImage;
use capmatch_index::{GalleryModels, ModelIdentity};

use crate::{CaptionerArg, ClipArg, Dtype, GalleryModelArgs};

/// A checkpoint found on disk (or in the cache), not loaded yet, with its config hash.
pub struct Checkpoint {
    pub spec: String,
    pub dir: PathBuf,
    pub config_hash: String,
}

impl Checkpoint {
    pub fn resolve(spec: &str, kind: ModelKind) -> anyhow::Result<Self> {
        let ResolvedModel { dir, commit, .. } = hub::resolve_model(spec, kind)?;
        let config_hash = hub::config_fingerprint(&dir)?;
        // A local directory is recorded by its absolute path, so that an index built with
        // `--clip ./models/clip` is searched from any working directory and matches the same
        // checkpoint named another way. Hub ids stay as the user wrote them.
        let spec = match commit {
            Some(_) => spec.to_string(),
            None => std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone()).display().to_string(),
        };
        Ok(Self { spec, dir, config_hash })
    }
}

pub fn load_clip(arg: &ClipArg, dtype: Dtype) -> anyhow::Result<ClipEmbedder> {
    let checkpoint = Checkpoint::resolve(&arg.clip, ModelKind::Clip)?;
    load_clip_from(&checkpoint.dir, dtype)
}

/// A captioner and the prompt to use with it: the user's choices where given, else the
/// architecture's defaults (see [`CaptionerDefaults`]).
pub fn load_captioner(arg: &CaptionerArg, dtype: Option<Dtype>, prompt: Option<&str>) -> anyhow::Result<(Captioner, String)> {
    let checkpoint = Checkpoint::resolve(&arg.captioner, ModelKind::Captioner)?;
    let settings = CaptionerDefaults::of(&checkpoint)?.apply(dtype, prompt);
    Ok((load_captioner_from(&checkpoint.dir, settings.0)?, settings.1))
}

/// What a captioner runs with unless told otherwise: BLIP in f32 with "a picture of",
/// BLIP-2 in bf16 with no prompt (its weights are billions of parameters).
pub struct CaptionerDefaults {
    arch: CaptionArch,
}

impl CaptionerDefaults {
    pub fn of(checkpoint: &Checkpoint) -> anyhow::Result<Self> {
        Ok(Self { arch: CaptionArch::of_checkpoint(&checkpoint.dir)? })
    }

    /// The dtype and prompt to use, given what the user asked for.
    pub fn apply(&self, dtype: Option<Dtype>, prompt: Option<&str>) -> (Dtype, String) {
        let default_dtype = match self.arch.default_dtype() {
            capmatch_core::DType::BF16 => Dtype::Bf16,
            capmatch_core::DType::F16 => Dtype::F16,
            _ => Dtype::F32,
        };
        (dtype.unwrap_or(default_dtype), prompt.unwrap_or(self.arch.default_prompt()).to_string())
    }
}

fn load_clip_from(dir: &Path, dtype: Dtype) -> anyhow::Result<ClipEmbedder> {
    ClipEmbedder::load(dir, dtype.candle()).with_context(|| format!("cannot load the CLIP model in {}", dir.display()))
}

fn load_captioner_from(dir: &Path, dtype: Dtype) -> anyhow::Result<Captioner> {
    Captioner::load(dir, dtype.candle()).with_context(|| format!("cannot load the captioner in {}", dir.display()))
}

/// Decodes every image up front, so that a bad file fails the command before any model
/// is loaded; the error names the file.
pub fn decode_all(paths: &[PathBuf]) -> anyhow::Result<Vec<RgbImage>> {
    let limits = DecodeLimits::default();
    paths
        .iter()
        .map(|path| decode_file(path, &limits).with_context(|| format!("cannot read image {}", path.display())))
        .collect()
}

/// The real models behind the indexer: BLIP/BLIP-2 captions, CLIP text and image towers.
///
/// The checkpoints are resolved (and their identity known) at once, but loaded only when
/// the first batch needs them: re-running `index` on an indexed folder does no model work,
/// not even loading.
pub struct LazyGalleryModels {
    clip: Checkpoint,
    captioner: Checkpoint,
    clip_dtype: Dtype,
    captioner_dtype: Dtype,
    options: CaptionOptions,
    loaded: Option<(ClipEmbedder, Captioner)>,
}

impl LazyGalleryModels {
    /// `dtype` and `prompt` default as for `capmatch caption` (CLIP runs in f32 by default).
    pub fn new(args: &GalleryModelArgs) -> anyhow::Result<Self> {
        let clip = Checkpoint::resolve(&args.clip.clip, ModelKind::Clip)?;
        let captioner = Checkpoint::resolve(&args.captioner.captioner, ModelKind::Captioner)?;
        let dtype = args.dtype;
        let (captioner_dtype, prompt) = CaptionerDefaults::of(&captioner)?.apply(dtype, args.prompt.as_deref());
        Ok(Self {
            clip,
            captioner,
            clip_dtype: dtype.unwrap_or(Dtype::F32),
            captioner_dtype,
            options: CaptionOptions { prompt, ..CaptionOptions::default() },
            loaded: None,
        })
    }

    fn models(&mut self) -> anyhow::Result<&(ClipEmbedder, Captioner)> {
        if self.loaded.is_none() {
            tracing::info!("loading {} and {}", self.clip.spec, self.captioner.spec);
            let clip = load_clip_from(&self.clip.dir, self.clip_dtype)?;
            let captioner = load_captioner_from(&self.captioner.dir, self.captioner_dtype)?;
            self.loaded = Some((clip, captioner));
        }
        Ok(self.loaded.as_ref().expect("just loaded"))
    }
}

impl GalleryModels for LazyGalleryModels {
    fn identity(&self) -> ModelIdentity {
        ModelIdentity {
            clip: self.clip.spec.clone(),
            clip_config: self.clip.config_hash.clone(),
            captioner: self.captioner.spec.clone(),
            captioner_config: self.captioner.config_hash.clone(),
            prompt: self.options.prompt.clone(),
        }
    }

    fn caption(&mut self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<String>>> {
        let options = self.options.clone();
        let (_, captioner) = self.models()?;
        Ok(captioner.caption(images, &options)?.into_iter().map(|caption| vec![caption.text]).collect())
    }

    fn embed_texts(&mut self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.models()?.0.embed_texts(texts)
    }

    fn embed_images(&mut self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.models()?.0.embed_images(images)
    }
}
