//! BLIP-2 (`Blip2ForConditionalGeneration`, transformers 5.23) in candle: the EVA ViT-g
//! vision tower, the Q-Former, the language projection and either language model —
//! OPT (decoder-only, Salesforce/blip2-opt-*) or Flan-T5 (encoder-decoder,
//! Salesforce/blip2-flan-t5-*) — each with a KV cache.
//!
//! Tensor names are the checkpoint's own (`vision_model.*`, `query_tokens`, `qformer.*`,
//! `language_projection.*`, `language_model.*`). As in transformers the Q-Former and the
//! query tokens always run in `f32` (`_keep_in_fp32_modules`), whatever the dtype of the
//! rest of the model.
//!
//! # Prompting (transformers 5.23)
//!
//! The processor prepends `num_query_tokens` copies of the image token
//! (`config.image_token_index`) to the tokenized text; the model embeds the ids and
//! scatters the projected Q-Former outputs into the image-token positions
//! ([`Blip2ForConditionalGeneration::input_ids`], [`Blip2ForConditionalGeneration::embed`]).
//! Without text, `generate` uses `[image] * n + [bos]`. For OPT the whole sequence is
//! the decoder prompt; for T5 it is the encoder input and the decoder starts from
//! `decoder_start_token_id`. See [`decode`] for the generation glue.

pub mod decode;
pub mod opt;
pub mod qformer;
pub mod t5;
pub mod vision;

use candle_core::{DType, Module, Result, Tensor};
use crate::layers::{Lin, Loader};
use serde::Deserialize;

pub use opt::{OptConfig, OptForCausalLM};
pub use qformer::{Blip2QFormerConfig, Blip2QFormerModel};
pub use t5::{T5Config, T5ForConditionalGeneration};
pub use vision::{Blip2VisionConfig, Blip2VisionModel};

/// A token id or a list of them (`eos_token_id` may be either in a config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIdOrList {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIdOrList {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(t) => vec![*t],
            Self::Many(v) => v.clone(),
        }
    }
}

/// The language model's configuration, selected by its `model_type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "model_type")]
pub enum Blip2TextConfig {
    #[serde(rename = "opt")]
    Opt(OptConfig),
    #[serde(rename = "t5")]
    T5(T5Config),
}

impl Default for Blip2TextConfig {
    /// transformers' default `text_config` is an `OPTConfig()`.
    fn default() -> Self {
        Self::Opt(OptConfig::default())
    }
}

impl Blip2TextConfig {
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Opt(c) => c.hidden_size,
            Self::T5(c) => c.d_model,
        }
    }
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Opt(c) => c.vocab_size,
            Self::T5(c) => c.vocab_size,
        }
    }
    pub fn is_encoder_decoder(&self) -> bool {
        matches!(self, Self::T5(_))
    }
    pub fn bos_token_id(&self) -> Option<u32> {
        match self {
            Self::Opt(c) => c.bos_token_id,
            Self::T5(c) => c.bos_token_id,
        }
    }
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match self {
            Self::Opt(c) => c.eos_token_id.as_ref().map(|e| e.to_vec()).unwrap_or_default(),
            Self::T5(c) => c.eos_token_id.as_ref().map(|e| e.to_vec()).unwrap_or_default(),
        }
    }
    pub fn pad_token_id(&self) -> Option<u32> {
        match self {
            Self::Opt(c) => c.pad_token_id,
            Self::T5(c) => c.pad_token_id,
        }
    }
    /// The decoder's position limit (OPT's learned positions; T5 has none).
    pub fn max_position_embeddings(&self) -> Option<usize> {
        match self {
            Self::Opt(c) => Some(c.max_position_embeddings),
            Self::T5(_) => None,
        }
    }
}

/// `Blip2Config` (config.json of a BLIP-2 checkpoint). Missing fields take transformers'
/// defaults (those of Salesforce/blip2-opt-2.7b).
#[derive(Debug, Clone, Deserialize)]
pub struct Blip2Config {
    #[serde(default)]
    pub vision_config: Blip2VisionConfig,
    #[serde(default)]
    pub qformer_config: Blip2QFormerConfig,
    #[serde(default)]
    pub text_config: Blip2TextConfig,
    #[serde(default = "default_num_query_tokens")]
    pub num_query_tokens: usize,
    /// The `<image>` placeholder id (`image_token_id` is an alias in transformers).
    #[serde(default, alias = "image_token_id")]
    pub image_token_index: Option<u32>,
}

fn default_num_query_tokens() -> usize {
    32
}

impl Blip2Config {
    /// Parses config.json and applies `Blip2Config.__post_init__` (the Q-Former's
    /// cross-attention width is the vision tower's).
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        let mut config: Self = serde_json::from_str(text)?;
        config.qformer_config.encoder_hidden_size = config.vision_config.hidden_size;
        Ok(config)
    }
}

/// The language model behind the projection.
pub enum Blip2LanguageModel {
    Opt(OptForCausalLM),
    T5(T5ForConditionalGeneration),
}

/// `Blip2ForConditionalGeneration`.
pub struct Blip2ForConditionalGeneration {
    pub config: Blip2Config,
    pub vision_model: Blip2VisionModel,
    /// `(1, num_query_tokens, qformer_hidden)`, f32.
    pub query_tokens: Tensor,
    pub qformer: Blip2QFormerModel,
    pub language_projection: Lin,
    pub language_model: Blip2LanguageModel,
    dtype: DType,
}

impl Blip2ForConditionalGeneration {
    /// Loads every weight from `vb` (the checkpoint root). The vision tower and language
    /// model take `vb`'s dtype; the Q-Former and the query tokens are loaded in `f32`.
    /// `vb`: a `VarBuilder` (the fused CPU kernels on the CPU) or a [`Loader`] that says which
    /// kernels to use.
    pub fn load<'a>(vb: impl Into<Loader<'a>>, config: &Blip2Config) -> Result<Self> {
        let vb = vb.into();
        let mut config = config.clone();
        config.qformer_config.encoder_hidden_size = config.vision_config.hidden_size;
        let dtype = vb.compute_dtype();
        let vision_model = Blip2VisionModel::load(vb.pp("vision_model"), &config.vision_config)?;
        let vb32 = vb.set_dtype(DType::F32);
        let query_tokens =
            vb32.get((1, config.num_query_tokens, config.qformer_config.hidden_size), "query_tokens")?;
        let qformer = Blip2QFormerModel::load(vb32.pp("qformer"), &config.qformer_config)?;
        let language_projection = Lin::load(
            config.qformer_config.hidden_size,
            config.text_config.hidden_size(),
            true,
            vb.pp("language_projection"),
        )?;
        let language_model = match &config.text_config {
            Blip2TextConfig::Opt(c) => Blip2LanguageModel::Opt(OptForCausalLM::load(vb.pp("language_model"), c)?),
            Blip2TextConfig::T5(c) => {
                Blip2LanguageModel::T5(T5ForConditionalGeneration::load(vb.pp("language_model"), c)?)
            }
        };
        Ok(Self { config, vision_model, query_tokens, qformer, language_projection, language_model, dtype })
    }

    /// The dtype activations come out in: the weights' dtype, except bf16/f16 weights on
    /// the CPU, which compute in f32 (see [`crate::layers`]).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Vision tower `last_hidden_state` (post-layernormed), `(batch, 1 + patches, vision_hidden)`.
    pub fn vision_forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.vision_model.forward(&pixel_values.to_dtype(self.dtype)?)
    }

    /// Q-Former `last_hidden_state` for the query tokens over `image_embeds`, in `f32`,
    /// `(batch, num_query_tokens, qformer_hidden)`.
    pub fn qformer_forward(&self, image_embeds: &Tensor) -> Result<Tensor> {
        let b = image_embeds.dim(0)?;
        let queries = self.query_tokens.broadcast_as((b, self.query_tokens.dim(1)?, self.query_tokens.dim(2)?))?;
        self.qformer.forward(&queries.contiguous()?, &image_embeds.to_dtype(DType::F32)?)
    }

    /// `get_image_features(...).pooler_output`: the projected query outputs that replace the
    /// image tokens, `(batch, num_query_tokens, text_hidden)` in the model dtype.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let image_embeds = self.vision_forward(pixel_values)?;
        let query_output = self.qformer_forward(&image_embeds)?.to_dtype(self.dtype)?;
        self.language_projection.forward(&query_output)
    }

    fn image_token(&self) -> Result<u32> {
        self.config.image_token_index.ok_or_else(|| {
            candle_core::Error::Msg("config.json has no image_token_index: re-save the checkpoint with transformers >= 4.47".into())
        })
    }

    /// The `input_ids` BLIP-2 generates from: `num_query_tokens` image tokens followed by
    /// `text_ids` (the tokenizer's output for the prompt, special tokens included), or,
    /// without text, by the language model's BOS (`generate` without `input_ids`). A T5
    /// config has no BOS; there the processor's empty-prompt encoding is used
    /// (`tokenizer("")` = `[</s>]`, i.e. EOS).
    pub fn input_ids(&self, text_ids: Option<&[u32]>) -> Result<Vec<u32>> {
        let mut ids = vec![self.image_token()?; self.config.num_query_tokens];
        match text_ids {
            Some(t) => ids.extend_from_slice(t),
            None => {
                let tc = &self.config.text_config;
                match tc.bos_token_id().or_else(|| tc.eos_token_ids().first().copied()) {
                    Some(b) => ids.push(b),
                    None => candle_core::bail!("the text config has neither bos_token_id nor eos_token_id"),
                }
            }
        }
        Ok(ids)
    }

    /// Token embeddings of `input_ids` (`(rows, len)` u32) with the image-token positions of
    /// row `r` replaced, in order, by `features[r]` (transformers' `masked_scatter`).
    pub fn embed(&self, input_ids: &Tensor, features: &Tensor) -> Result<Tensor> {
        let embeds = match &self.language_model {
            Blip2LanguageModel::Opt(m) => m.embed_tokens(input_ids)?,
            Blip2LanguageModel::T5(m) => m.embed_tokens(input_ids)?,
        };
        scatter_image_features(&embeds, input_ids, features, self.image_token()?)
    }
}

/// Replaces, in each row of `embeds` `(rows, len, hidden)`, the positions where
/// `input_ids == image_token` by the rows of `features` `(rows, n, hidden)`, in order.
pub fn scatter_image_features(embeds: &Tensor, input_ids: &Tensor, features: &Tensor, image_token: u32) -> Result<Tensor> {
    let (rows, len, _) = embeds.dims3()?;
    let n = features.dim(1)?;
    let ids = input_ids.to_vec2::<u32>()?;
    let features = features.to_dtype(embeds.dtype())?;
    let mut out = Vec::with_capacity(rows);
    for (r, row_ids) in ids.iter().enumerate() {
        // Row r's sources: [features[r] (n rows); embeds[r] (len rows)], gathered by index.
        let mut next = 0u32;
        let mut index = Vec::with_capacity(len);
        for (pos, &t) in row_ids.iter().enumerate() {
            if t == image_token {
                if next as usize >= n {
                    candle_core::bail!("row {r} has more than {n} image tokens");
                }
                index.push(next);
                next += 1;
            } else {
                index.push((n + pos) as u32);
            }
        }
        if (next as usize) != n && next != 0 {
            candle_core::bail!("row {r} has {next} image tokens, the image gives {n} query embeddings");
        }
        let source = Tensor::cat(&[features.get(r)?, embeds.get(r)?], 0)?;
        let index = Tensor::from_vec(index, len, embeds.device())?;
        out.push(source.index_select(&index, 0)?);
    }
    Tensor::stack(&out, 0)
}

/// Additive causal mask `(1, 1, q_len, past + q_len)`: query `i` (absolute `past + i`)
/// sees keys `0..=past + i`.
pub(crate) fn causal_mask(q_len: usize, past: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let k_len = past + q_len;
    let mask: Vec<f32> = (0..q_len)
        .flat_map(|i| (0..k_len).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (1, 1, q_len, k_len), device)?.to_dtype(dtype)
}

/// `softmax(q kᵀ * scale + bias) v` over `(b, heads, q, d)` tensors.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut scores = q.matmul(&k.t()?)?;
    if scale != 1.0 {
        scores = (scores * scale)?;
    }
    if let Some(bias) = bias {
        scores = scores.broadcast_add(bias)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(v)
}

/// `(b, t, heads*d)` → `(b, heads, t, d)`.
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, hd) = x.dims3()?;
    x.reshape((b, t, heads, hd / heads))?.transpose(1, 2)?.contiguous()
}

/// `(b, heads, t, d)` → `(b, t, heads*d)`.
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))
}
