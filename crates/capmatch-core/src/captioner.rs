//! Captioning gallery images: a checkpoint directory in, one caption per image out.
//!
//! [`Captioner::load`] reads the checkpoint's `config.json`, picks the architecture
//! ([`CaptionArch`], from `architectures` / `model_type`), the tokenizer (`tokenizer.json`)
//! and the image processor (`preprocessor_config.json`, or the `image_processor` entry of a
//! transformers-5 `processor_config.json`). [`Captioner::caption`] preprocesses, batches,
//! runs the model and `capmatch_models::generation::generate`, and decodes.
//!
//! BLIP (`BlipForConditionalGeneration`) reproduces transformers 5.23:
//! `processor(images, text=prompt)` then `model.generate(**inputs, **options)` and
//! `processor.decode(ids, skip_special_tokens=True)`. The prompt is tokenized with special
//! tokens and `generate` turns `[CLS] … [SEP]` into `[DEC] …`; the decoder stops at `[SEP]`
//! (`text_config.sep_token_id`) and pads with `text_config.pad_token_id`. Note that
//! `BlipForConditionalGeneration.generate` delegates to `text_decoder.generate`, whose
//! generation config is built from `text_config` only — a checkpoint's
//! `generation_config.json` does not reach it — so the defaults are transformers' global
//! ones: greedy, at most 20 new tokens (capped at `max_position_embeddings`), no minimum.
//!
//! BLIP-2 (`Blip2ForConditionalGeneration`, OPT or Flan-T5) reproduces `Blip2Processor` +
//! `generate` the same way: image tokens + the tokenized prompt (none: `[image] * n +
//! [bos]`), the checkpoint's `generation_config.json` as defaults (see
//! `capmatch_models::blip2`).
//!
//! [`Caption::token_ids`] is the sequence transformers returns for the image (prompt
//! included, starting with `[DEC]`, ending with `[SEP]` unless the length limit was hit),
//! without the batch padding. [`Caption::text`] is the decoded text with the decoded prompt
//! removed from its start.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use capmatch_models::blip::{BlipConfig, BlipForConditionalGeneration};
use capmatch_models::blip2::{Blip2Config, Blip2ForConditionalGeneration};
use capmatch_models::generation::{self, GenerationConfig, TokenIds};
use capmatch_models::Loader;
use image::RgbImage;
use tokenizers::Tokenizer;

use crate::preprocess::ImageProcessor;
use crate::LoadOptions;

/// How to caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionOptions {
    /// Text the caption continues ("a picture of" by convention); empty for unconditional.
    pub prompt: String,
    /// `None`: the model's default (20 new tokens for BLIP).
    pub max_new_tokens: Option<usize>,
    /// `None`: no minimum.
    pub min_new_tokens: Option<usize>,
    /// `None` or `Some(1)`: greedy; more: beam search.
    pub num_beams: Option<usize>,
}

impl Default for CaptionOptions {
    fn default() -> Self {
        Self { prompt: DEFAULT_PROMPT.to_string(), max_new_tokens: None, min_new_tokens: None, num_beams: None }
    }
}

impl CaptionOptions {
    /// Refuses settings no caption can be made with, before any image is decoded or model
    /// loaded: an empty longest caption, a shortest caption longer than the longest (which
    /// transformers only warns about, then cuts at the longest), no beam.
    pub fn check(&self) -> Result<(), String> {
        if self.max_new_tokens == Some(0) {
            return Err("captions of at most 0 new tokens would be empty".into());
        }
        if let (Some(min), Some(max)) = (self.min_new_tokens, self.max_new_tokens) {
            if min > max {
                return Err(format!("the shortest caption ({min} new tokens) is longer than the longest ({max})"));
            }
        }
        if self.num_beams == Some(0) {
            return Err("beam search needs at least 1 beam".into());
        }
        Ok(())
    }
}

/// The conventional BLIP captioning prompt.
pub const DEFAULT_PROMPT: &str = "a picture of";

/// One image's caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption {
    /// Decoded caption without the prompt.
    pub text: String,
    /// Token ids as transformers' `generate` returns them (prompt included, unpadded).
    pub token_ids: Vec<u32>,
}

/// The captioning architectures capmatch knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptionArch {
    /// `BlipForConditionalGeneration` (`model_type` "blip").
    Blip,
    /// `Blip2ForConditionalGeneration` with OPT (`model_type` "blip-2", text `model_type` "opt").
    Blip2Opt,
    /// `Blip2ForConditionalGeneration` with Flan-T5 (text `model_type` "t5").
    Blip2T5,
}

impl CaptionArch {
    /// Picks the architecture from a parsed `config.json`.
    pub fn from_config(config: &serde_json::Value) -> anyhow::Result<Self> {
        let archs: Vec<&str> = config
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let model_type = config.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
        for arch in &archs {
            let found = match *arch {
                "BlipForConditionalGeneration" => Some(Self::Blip),
                "Blip2ForConditionalGeneration" => Some(blip2_arch(config)),
                _ => None,
            };
            if let Some(found) = found {
                return Ok(found);
            }
        }
        if archs.is_empty() && model_type == "blip" {
            return Ok(Self::Blip);
        }
        if archs.is_empty() && model_type == "blip-2" {
            return Ok(blip2_arch(config));
        }
        bail!(
            "unsupported captioning checkpoint: architectures {archs:?}, model_type {model_type:?} \
             (supported: BlipForConditionalGeneration, Blip2ForConditionalGeneration)"
        )
    }
}

impl CaptionArch {
    /// Reads the architecture of a checkpoint directory from its `config.json`.
    pub fn of_checkpoint(dir: &Path) -> anyhow::Result<Self> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", config_path.display()))?;
        Self::from_config(&config).with_context(|| format!("in {}", config_path.display()))
    }

    /// The precision the weights are held in unless the user asks otherwise: BLIP-2's
    /// billions of parameters are kept in bf16 (half the memory: blip2-opt-2.7b fits well
    /// under 24 GiB), BLIP is small enough for f32.
    pub fn default_dtype(self) -> DType {
        match self {
            Self::Blip => DType::F32,
            Self::Blip2Opt | Self::Blip2T5 => DType::BF16,
        }
    }

    /// The prompt the captions continue unless the user gives one: BLIP's conventional
    /// "a picture of"; none for BLIP-2, which the paper runs unconditionally.
    pub fn default_prompt(self) -> &'static str {
        match self {
            Self::Blip => DEFAULT_PROMPT,
            Self::Blip2Opt | Self::Blip2T5 => "",
        }
    }
}

/// The loaded network, one variant per [`CaptionArch`] (one per captioner: size is moot).
#[allow(clippy::large_enum_variant)]
enum CaptionModel {
    Blip(BlipForConditionalGeneration),
    /// The model and its generation defaults (text config + generation_config.json).
    Blip2(Box<Blip2ForConditionalGeneration>, GenerationConfig),
}

/// BLIP-2's language model decides the variant (transformers' default text config is OPT).
fn blip2_arch(config: &serde_json::Value) -> CaptionArch {
    match config.pointer("/text_config/model_type").and_then(|m| m.as_str()) {
        Some("t5") => CaptionArch::Blip2T5,
        _ => CaptionArch::Blip2Opt,
    }
}

/// A captioning checkpoint, ready to caption images.
pub struct Captioner {
    model: CaptionModel,
    tokenizer: Tokenizer,
    processor: ImageProcessor,
    device: Device,
    dir: PathBuf,
    /// Images per forward pass in [`Captioner::caption`].
    pub batch_size: usize,
}

impl Captioner {
    /// Loads a checkpoint directory on the CPU with the fused kernels, weights converted to
    /// `dtype`.
    pub fn load(dir: &Path, dtype: DType) -> anyhow::Result<Self> {
        Self::load_with(dir, &LoadOptions::new(dtype))
    }

    /// Loads a checkpoint directory with the given dtype, device and kernels.
    pub fn load_with(dir: &Path, options: &LoadOptions) -> anyhow::Result<Self> {
        let LoadOptions { dtype, ref device, kernels } = *options;
        let config_path = dir.join("config.json");
        let config_text =
            std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
        let config: serde_json::Value =
            serde_json::from_str(&config_text).with_context(|| format!("{} is not JSON", config_path.display()))?;
        let arch = CaptionArch::from_config(&config).with_context(|| format!("in {}", config_path.display()))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", tokenizer_path.display()))?;
        let processor = load_image_processor(dir)?;
        let vb = Loader::new(crate::checkpoint::load_weights(dir, dtype, device)?, kernels);
        let model = match arch {
            CaptionArch::Blip => {
                let cfg = BlipConfig::from_json(&config_text)
                    .with_context(|| format!("{} is not a BLIP config", config_path.display()))?;
                CaptionModel::Blip(
                    BlipForConditionalGeneration::load(&cfg, vb)
                        .with_context(|| format!("cannot load BLIP weights from {}", dir.display()))?,
                )
            }
            CaptionArch::Blip2Opt | CaptionArch::Blip2T5 => {
                let cfg = Blip2Config::from_json(&config_text)
                    .with_context(|| format!("{} is not a BLIP-2 config", config_path.display()))?;
                let model = Blip2ForConditionalGeneration::load(vb, &cfg)
                    .with_context(|| format!("cannot load BLIP-2 weights from {}", dir.display()))?;
                // transformers: the checkpoint's generation_config.json is the model's default.
                let mut defaults = model.default_generation_config();
                let gen_path = dir.join("generation_config.json");
                if gen_path.is_file() {
                    let file = GenerationConfig::from_json(&std::fs::read_to_string(&gen_path)?)
                        .with_context(|| format!("{} is not a generation config", gen_path.display()))?;
                    defaults = defaults.merged_with(&file);
                }
                CaptionModel::Blip2(Box::new(model), defaults)
            }
        };
        Ok(Self { model, tokenizer, processor, device: device.clone(), dir: dir.to_path_buf(), batch_size: 8 })
    }

    pub fn arch(&self) -> CaptionArch {
        match &self.model {
            CaptionModel::Blip(_) => CaptionArch::Blip,
            CaptionModel::Blip2(m, _) if m.config.text_config.is_encoder_decoder() => CaptionArch::Blip2T5,
            CaptionModel::Blip2(..) => CaptionArch::Blip2Opt,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn image_processor(&self) -> &ImageProcessor {
        &self.processor
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The BLIP model, when that is what was loaded.
    pub fn blip(&self) -> Option<&BlipForConditionalGeneration> {
        match &self.model {
            CaptionModel::Blip(m) => Some(m),
            CaptionModel::Blip2(..) => None,
        }
    }

    /// The BLIP-2 model, when that is what was loaded.
    pub fn blip2(&self) -> Option<&Blip2ForConditionalGeneration> {
        match &self.model {
            CaptionModel::Blip2(m, _) => Some(m),
            CaptionModel::Blip(_) => None,
        }
    }

    /// Captions `images`, `batch_size` at a time. With the fused kernels an image gets the
    /// same tokens whatever batch it is in (the vision towers and decoders compute each image
    /// and each sequence on its own, and beam search stops each image's search when it would
    /// stop alone).
    pub fn caption(&self, images: &[RgbImage], options: &CaptionOptions) -> anyhow::Result<Vec<Caption>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch_size.max(1)) {
            let pixels = self.processor.batch(chunk, &self.device)?;
            out.extend(self.caption_pixels(&pixels, options)?);
        }
        Ok(out)
    }

    /// Captions a batch of preprocessed images (`pixel_values`, `(n, 3, H, W)`), all at once.
    pub fn caption_pixels(&self, pixel_values: &Tensor, options: &CaptionOptions) -> anyhow::Result<Vec<Caption>> {
        let n = pixel_values.dim(0)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        match &self.model {
            CaptionModel::Blip(model) => {
                let prompt_ids = if options.prompt.is_empty() {
                    None
                } else {
                    let enc = self.tokenizer.encode(options.prompt.as_str(), true).map_err(anyhow::Error::msg)?;
                    Some(enc.get_ids().to_vec())
                };
                let prompt = model.decoder_prompt(prompt_ids.as_deref())?;
                let text = model.config().text_config.clone();
                let base = GenerationConfig {
                    bos_token_id: text.bos_token_id,
                    eos_token_id: text.sep_token_id.map(TokenIds::One),
                    pad_token_id: text.pad_token_id,
                    ..Default::default()
                };
                let params = base
                    .merged_with(&overrides(options))
                    .resolve(prompt.len(), Some(text.max_position_embeddings))?;
                let mut decoder = model.caption_decoder(pixel_values)?;
                let prompts = vec![prompt.clone(); n];
                let seqs = generation::generate(&mut decoder, &prompts, &params, &self.device)?;
                let prompt_text = self.decode(&prompt)?;
                seqs.into_iter().map(|ids| self.finish(ids, &prompt_text)).collect()
            }
            CaptionModel::Blip2(model, defaults) => {
                // Blip2Processor: image tokens + tokenizer(prompt); without a prompt,
                // generate's `[image] * n + [bos]` (see `Blip2ForConditionalGeneration::input_ids`).
                let decoder_only = !model.config.text_config.is_encoder_decoder();
                let text_ids = if options.prompt.is_empty() {
                    None
                } else {
                    let enc = self.tokenizer.encode(options.prompt.as_str(), true).map_err(anyhow::Error::msg)?;
                    let mut ids = enc.get_ids().to_vec();
                    // OPT's tokenizer always starts with BOS, also when tokenizer.json lacks that post-processor.
                    if let (true, Some(bos)) = (decoder_only, model.config.text_config.bos_token_id()) {
                        if ids.first() != Some(&bos) {
                            ids.insert(0, bos);
                        }
                    }
                    Some(ids)
                };
                let config = defaults.merged_with(&overrides(options));
                let seqs = model.generate(pixel_values, text_ids.as_deref(), &config)?;
                // OPT's output repeats the prompt; T5's starts from the decoder start token.
                let prompt_text = match &text_ids {
                    Some(ids) if decoder_only => self.decode(ids)?,
                    _ => String::new(),
                };
                seqs.into_iter().map(|ids| self.finish(ids, &prompt_text)).collect()
            }
        }
    }

    /// `tokenizer.decode(ids, skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.tokenizer.decode(ids, true).map_err(anyhow::Error::msg)
    }

    fn finish(&self, token_ids: Vec<u32>, prompt_text: &str) -> anyhow::Result<Caption> {
        let decoded = self.decode(&token_ids)?;
        let text = decoded.strip_prefix(prompt_text).unwrap_or(&decoded).trim().to_string();
        Ok(Caption { text, token_ids })
    }
}

fn overrides(options: &CaptionOptions) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: options.max_new_tokens,
        min_new_tokens: options.min_new_tokens,
        num_beams: options.num_beams,
        ..Default::default()
    }
}

/// `preprocessor_config.json`, else the `image_processor` of `processor_config.json`.
fn load_image_processor(dir: &Path) -> anyhow::Result<ImageProcessor> {
    let pre = dir.join("preprocessor_config.json");
    if pre.is_file() {
        return Ok(ImageProcessor::from_file(&pre)?);
    }
    let proc = dir.join("processor_config.json");
    if proc.is_file() {
        let text = std::fs::read_to_string(&proc)?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        if let Some(ip) = value.get("image_processor") {
            return Ok(ImageProcessor::from_config(ip)?);
        }
    }
    bail!("{} has neither preprocessor_config.json nor processor_config.json with an image_processor", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_no_caption_can_be_made_with_are_refused() {
        let with = |max, min, beams| CaptionOptions { max_new_tokens: max, min_new_tokens: min, num_beams: beams, ..Default::default() };
        assert_eq!(with(None, None, None).check(), Ok(()));
        assert_eq!(with(Some(12), Some(12), Some(3)).check(), Ok(()));
        assert_eq!(with(None, Some(40), None).check(), Ok(()));
        assert!(with(Some(0), None, None).check().unwrap_err().contains("at most 0 new tokens"));
        assert_eq!(
            with(Some(3), Some(5), None).check().unwrap_err(),
            "the shortest caption (5 new tokens) is longer than the longest (3)"
        );
        assert!(with(None, None, Some(0)).check().unwrap_err().contains("at least 1 beam"));
    }

    #[test]
    fn architecture_comes_from_config() {
        let v = serde_json::json!({"architectures": ["BlipForConditionalGeneration"], "model_type": "blip"});
        assert_eq!(CaptionArch::from_config(&v).unwrap(), CaptionArch::Blip);
        let v = serde_json::json!({"model_type": "blip"});
        assert_eq!(CaptionArch::from_config(&v).unwrap(), CaptionArch::Blip);
        let v = serde_json::json!({"architectures": ["Blip2ForConditionalGeneration"], "text_config": {"model_type": "t5"}});
        assert_eq!(CaptionArch::from_config(&v).unwrap(), CaptionArch::Blip2T5);
        let v = serde_json::json!({"model_type": "blip-2"});
        assert_eq!(CaptionArch::from_config(&v).unwrap(), CaptionArch::Blip2Opt);
        let v = serde_json::json!({"architectures": ["BlipForQuestionAnswering"], "model_type": "blip"});
        let err = CaptionArch::from_config(&v).unwrap_err().to_string();
        assert!(err.contains("BlipForQuestionAnswering") && err.contains("supported"), "{err}");
    }
}
