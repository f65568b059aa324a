//! `Blip2QFormerModel` on the learned query tokens alone (the captioning path): BERT-style
//! post-LN layers whose queries cross-attend to the image every
//! `cross_attention_frequency` layers (layer `i` when `i % frequency == 0`) and go through
//! the query feed-forward (`intermediate_query` / `output_query`).

use candle_core::{Module, Result, Tensor};
use candle_nn::LayerNorm;
use serde::Deserialize;

use crate::activation::HiddenAct;
use crate::layers::{layer_norm, Lin, Loader};
use super::{attention, merge_heads, split_heads};

/// `Blip2QFormerConfig`; defaults are transformers'.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Blip2QFormerConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: HiddenAct,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub cross_attention_frequency: usize,
    /// Width of the image states; `Blip2Config` sets it to the vision tower's hidden size.
    pub encoder_hidden_size: usize,
    pub use_qformer_text_input: bool,
}

impl Default for Blip2QFormerConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: HiddenAct::Gelu,
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            cross_attention_frequency: 2,
            encoder_hidden_size: 1408,
            use_qformer_text_input: false,
        }
    }
}

/// `Blip2QFormerAttention`: multi-head attention + `output` (dense, residual, LayerNorm).
struct QFormerAttention {
    query: Lin,
    key: Lin,
    value: Lin,
    dense: Lin,
    layer_norm: LayerNorm,
    heads: usize,
    scale: f64,
}

impl QFormerAttention {
    fn load(vb: Loader, c: &Blip2QFormerConfig, kv_size: usize) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            query: Lin::load(h, h, true, vb.pp("attention.query"))?,
            key: Lin::load(kv_size, h, true, vb.pp("attention.key"))?,
            value: Lin::load(kv_size, h, true, vb.pp("attention.value"))?,
            dense: Lin::load(h, h, true, vb.pp("output.dense"))?,
            layer_norm: layer_norm(h, c.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: c.num_attention_heads,
            scale: ((h / c.num_attention_heads) as f64).powf(-0.5),
        })
    }

    /// `states` attends to `context` (itself for self-attention); no mask (every position valid).
    fn forward(&self, states: &Tensor, context: &Tensor) -> Result<Tensor> {
        let q = split_heads(&self.query.forward(states)?, self.heads)?;
        let k = split_heads(&self.key.forward(context)?, self.heads)?;
        let v = split_heads(&self.value.forward(context)?, self.heads)?;
        let out = merge_heads(&attention(&q, &k, &v, self.scale, None)?)?;
        self.layer_norm.forward(&(self.dense.forward(&out)? + states)?)
    }
}

struct QFormerLayer {
    attention: QFormerAttention,
    crossattention: Option<QFormerAttention>,
    intermediate_query: Lin,
    output_query: Lin,
    output_query_norm: LayerNorm,
    act: HiddenAct,
}

impl QFormerLayer {
    fn load(vb: Loader, c: &Blip2QFormerConfig, index: usize) -> Result<Self> {
        let h = c.hidden_size;
        let crossattention = if c.cross_attention_frequency > 0 && index.is_multiple_of(c.cross_attention_frequency) {
            Some(QFormerAttention::load(vb.pp("crossattention"), c, c.encoder_hidden_size)?)
        } else {
            None
        };
        Ok(Self {
            attention: QFormerAttention::load(vb.pp("attention"), c, h)?,
            crossattention,
            intermediate_query: Lin::load(h, c.intermediate_size, true, vb.pp("intermediate_query.dense"))?,
            output_query: Lin::load(c.intermediate_size, h, true, vb.pp("output_query.dense"))?,
            output_query_norm: layer_norm(h, c.layer_norm_eps, vb.pp("output_query.LayerNorm"))?,
            act: c.hidden_act,
        })
    }

    fn forward(&self, h: &Tensor, image: &Tensor) -> Result<Tensor> {
        let mut h = self.attention.forward(h, h)?;
        if let Some(cross) = &self.crossattention {
            h = cross.forward(&h, image)?;
        }
        let inter = self.act.forward(&self.intermediate_query.forward(&h)?)?;
        self.output_query_norm.forward(&(self.output_query.forward(&inter)? + h)?)
    }
}

/// `Blip2QFormerModel` (query path only).
pub struct Blip2QFormerModel {
    layernorm: LayerNorm,
    layers: Vec<QFormerLayer>,
}

impl Blip2QFormerModel {
    /// `vb` at `qformer`, in the Q-Former's dtype (f32 in BLIP-2).
    pub fn load<'a>(vb: impl Into<Loader<'a>>, c: &Blip2QFormerConfig) -> Result<Self> {
        let vb = vb.into();
        let layers = (0..c.num_hidden_layers)
            .map(|i| QFormerLayer::load(vb.pp(format!("encoder.layer.{i}")), c, i))
            .collect::<Result<_>>()?;
        Ok(Self { layernorm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("layernorm"))?, layers })
    }

    /// `last_hidden_state` of the queries `(batch, n, hidden)` over `image_embeds`
    /// `(batch, patches, encoder_hidden)`; both in the Q-Former's dtype.
    pub fn forward(&self, query_embeds: &Tensor, image_embeds: &Tensor) -> Result<Tensor> {
        let mut h = self.layernorm.forward(query_embeds)?;
        for layer in &self.layers {
            h = layer.forward(&h, image_embeds)?;
        }
        Ok(h)
    }
}
