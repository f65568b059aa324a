//! CLIP embeddings of images and texts, from a Hugging Face checkpoint directory.
//!
//! [`ClipEmbedder::load`] reads `config.json`, `tokenizer.json` (the `tokenizers` crate),
//! `preprocessor_config.json` and the weights ([`crate::checkpoint::load_weights`]). Both
//! `embed_*` methods return projected, L2-normalised embeddings as `f32`, whatever dtype the
//! towers run in — what `get_*_features(...) / norm` gives in transformers.
//!
//! Each tower is built from the checkpoint the first time it is used, not at load: a process
//! that only embeds texts (a text-search server, `capmatch search --text`) never reads the
//! vision weights, and one that only embeds images never reads the text weights. The
//! checkpoint stays memory-mapped in between (address space, not memory: the pages of a
//! tensor are handed back once it is copied out, see [`crate::checkpoint`]).
//!
//! Texts are tokenized as `tokenizer(texts, truncation=True, padding=True)` does: truncated to
//! the model's context (`max_position_embeddings`, or the tokenizer's `model_max_length` when
//! smaller; the end-of-text token is kept), padded with the tokenizer's pad token, with an
//! attention mask.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use capmatch_models::clip::{l2_normalize, ClipConfig, ClipTextTower, ClipVisionTower};
use capmatch_models::Loader;
use image::RgbImage;
use tokenizers::{Tokenizer, TruncationParams};

use crate::checkpoint::load_weights;
use crate::preprocess::ImageProcessor;
use crate::LoadOptions;

/// Images (or texts) run through the towers at once; larger inputs are split.
const MAX_BATCH: usize = 32;

pub struct ClipEmbedder {
    /// The checkpoint, kept mapped to build each tower on its first use.
    weights: Loader<'static>,
    text: LazyTower<ClipTextTower>,
    vision: LazyTower<ClipVisionTower>,
    config: ClipConfig,
    tokenizer: Tokenizer,
    processor: ImageProcessor,
    device: Device,
    dtype: DType,
    max_len: usize,
    pad_id: u32,
    dir: PathBuf,
}

impl std::fmt::Debug for ClipEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipEmbedder")
            .field("dir", &self.dir)
            .field("dtype", &self.dtype)
            .field("dim", &self.dim())
            .field("max_len", &self.max_len)
            .field("towers_built", &self.towers_built())
            .finish()
    }
}

impl ClipEmbedder {
    /// Loads a checkpoint directory on the CPU with the fused kernels; the weights are held
    /// in `dtype` (F32, BF16 or F16).
    pub fn load(dir: &Path, dtype: DType) -> Result<Self> {
        Self::load_with(dir, &LoadOptions::new(dtype))
    }

    /// Loads a checkpoint directory with the given dtype, device and kernels.
    pub fn load_with(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let LoadOptions { dtype, ref device, kernels } = *options;
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            bail!("unsupported dtype {dtype:?} for CLIP (use f32, bf16 or f16)");
        }
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
        let config = ClipConfig::from_json_str(&text).with_context(|| format!("parsing {}", config_path.display()))?;

        let processor = ImageProcessor::from_file(&dir.join("preprocessor_config.json"))?;
        let (tokenizer, max_len, pad_id) = load_tokenizer(dir, config.text_config.max_position_embeddings)?;

        let weights = Loader::new(load_weights(dir, dtype, device)?, kernels);
        // What a tower needs is checked now, so that a checkpoint without one is refused at
        // load and not at its first use.
        for name in ["text_projection.weight", "visual_projection.weight"] {
            if !weights.contains_tensor(name) {
                bail!("{} is not a CLIP checkpoint: it has no tensor {name}", dir.display());
            }
        }
        Ok(Self {
            weights,
            text: LazyTower::default(),
            vision: LazyTower::default(),
            config,
            tokenizer,
            processor,
            device: device.clone(),
            dtype,
            max_len,
            pad_id,
            dir: dir.to_path_buf(),
        })
    }

    /// The text tower, built on first use.
    fn text_tower(&self) -> Result<&ClipTextTower> {
        self.text.get_or_build(|| {
            ClipTextTower::new(self.weights.clone(), &self.config)
                .with_context(|| format!("building CLIP's text tower from {}", self.dir.display()))
        })
    }

    /// The vision tower, built on first use.
    fn vision_tower(&self) -> Result<&ClipVisionTower> {
        self.vision.get_or_build(|| {
            ClipVisionTower::new(self.weights.clone(), &self.config)
                .with_context(|| format!("building CLIP's vision tower from {}", self.dir.display()))
        })
    }

    /// Builds both towers now (what a process that will embed both wants at start, so that
    /// a broken checkpoint fails before any work, and the first request is not slow).
    pub fn load_both_towers(&self) -> Result<()> {
        self.text_tower()?;
        self.vision_tower()?;
        Ok(())
    }

    /// Which towers have been built so far: `(text, vision)`.
    pub fn towers_built(&self) -> (bool, bool) {
        (self.text.is_built(), self.vision.is_built())
    }

    /// Length of the embeddings (`projection_dim`).
    pub fn dim(&self) -> usize {
        self.config.projection_dim
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Longest token sequence the text tower takes (specials included).
    pub fn max_text_len(&self) -> usize {
        self.max_len
    }

    /// The ids `embed_texts` feeds the model for one text (truncated, unpadded).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Pixel tensor (N, 3, H, W) f32 of images, as the image processor makes it.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<Tensor> {
        Ok(self.processor.batch(images, &self.device)?)
    }

    /// L2-normalised image embeddings, one `dim()`-long vector per image. With the fused
    /// kernels an image's vector is the same bits whatever other images it is embedded with.
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let tower = self.vision_tower()?;
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(MAX_BATCH) {
            let pixels = self.pixel_values(chunk)?;
            let features = tower.get_image_features(&pixels)?;
            out.extend(normalized_rows(&features)?);
        }
        Ok(out)
    }

    /// L2-normalised text embeddings, one `dim()`-long vector per text. With the fused
    /// kernels a text's vector is the same bits whatever other texts (of whatever lengths)
    /// it is embedded with.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let tower = self.text_tower()?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(MAX_BATCH) {
            let (ids, mask) = self.encode_batch(chunk)?;
            let features = tower.get_text_features(&ids, Some(&mask))?;
            out.extend(normalized_rows(&features)?);
        }
        Ok(out)
    }

    /// `(input_ids, attention_mask)`, both (B, L) u32, padded to the longest text.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        let seqs: Vec<Vec<u32>> = texts.iter().map(|t| self.tokenize(t)).collect::<Result<_>>()?;
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(seqs.len() * len);
        let mut mask = Vec::with_capacity(seqs.len() * len);
        for s in &seqs {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(self.pad_id, len - s.len()));
            mask.extend(std::iter::repeat_n(1u32, s.len()));
            mask.extend(std::iter::repeat_n(0u32, len - s.len()));
        }
        let shape = (seqs.len(), len);
        Ok((Tensor::from_vec(ids, shape, &self.device)?, Tensor::from_vec(mask, shape, &self.device)?))
    }
}

/// (B, D) features of any dtype -> B rows of f32, each of unit L2 norm.
/// A tower built once, by the first caller that needs it (later callers wait for it).
struct LazyTower<T> {
    tower: OnceLock<T>,
    building: Mutex<()>,
}

impl<T> Default for LazyTower<T> {
    fn default() -> Self {
        Self { tower: OnceLock::new(), building: Mutex::new(()) }
    }
}

impl<T> LazyTower<T> {
    fn get_or_build(&self, build: impl FnOnce() -> Result<T>) -> Result<&T> {
        if let Some(tower) = self.tower.get() {
            return Ok(tower);
        }
        let _building = self.building.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tower) = self.tower.get() {
            return Ok(tower);
        }
        let tower = build()?;
        Ok(self.tower.get_or_init(|| tower))
    }

    fn is_built(&self) -> bool {
        self.tower.get().is_some()
    }
}

fn normalized_rows(features: &Tensor) -> Result<Vec<Vec<f32>>> {
    let f = l2_normalize(&features.to_dtype(DType::F32)?)?;
    Ok(f.to_vec2::<f32>()?)
}

/// `tokenizer.json` with truncation to the model's context; returns (tokenizer, max_len, pad_id).
fn load_tokenizer(dir: &Path, max_position_embeddings: usize) -> Result<(Tokenizer, usize, u32)> {
    let path = dir.join("tokenizer.json");
    let mut tokenizer =
        Tokenizer::from_file(&path).map_err(|e| anyhow::anyhow!("loading {}: {e}", path.display()))?;

    // tokenizer_config.json: model_max_length and pad_token, when present.
    let tc: serde_json::Value = match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("parsing {}/tokenizer_config.json", dir.display()))?,
        Err(_) => serde_json::Value::Null,
    };
    let mut max_len = max_position_embeddings;
    if let Some(m) = tc.get("model_max_length").and_then(serde_json::Value::as_f64) {
        // transformers writes a huge sentinel (1e30) when there is no limit.
        if m >= 1.0 && m < max_len as f64 {
            max_len = m as usize;
        }
    }
    let pad_token = match tc.get("pad_token") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).map(str::to_owned),
        _ => None,
    }
    .unwrap_or_else(|| "<|endoftext|>".to_owned());
    let pad_id = tokenizer
        .token_to_id(&pad_token)
        .with_context(|| format!("pad token {pad_token:?} is not in {}", path.display()))?;

    tokenizer
        .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
        .map_err(|e| anyhow::anyhow!("setting truncation: {e}"))?;
    tokenizer.with_padding(None);
    Ok((tokenizer, max_len, pad_id))
}
