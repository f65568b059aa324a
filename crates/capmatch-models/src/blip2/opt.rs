//! `OPTForCausalLM` (BLIP-2's decoder-only language model) with a KV cache.
//!
//! Positions are OPT's learned embeddings with their offset of 2; without padding the
//! position of token `i` is `i` (transformers derives it from the attention mask).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::LayerNorm;
use serde::Deserialize;

use crate::activation::HiddenAct;
use crate::layers::{get_compute, Emb, Lin, Loader};
use super::{attention, causal_mask, merge_heads, split_heads, TokenIdOrList};

/// `OPTConfig`; defaults are transformers'.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OptConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub ffn_dim: usize,
    pub max_position_embeddings: usize,
    pub do_layer_norm_before: bool,
    #[serde(rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    pub word_embed_proj_dim: Option<usize>,
    pub num_attention_heads: usize,
    pub activation_function: HiddenAct,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<TokenIdOrList>,
    pub enable_bias: bool,
    pub layer_norm_elementwise_affine: bool,
    pub tie_word_embeddings: bool,
}

impl Default for OptConfig {
    fn default() -> Self {
        Self {
            vocab_size: 50272,
            hidden_size: 768,
            num_hidden_layers: 12,
            ffn_dim: 3072,
            max_position_embeddings: 2048,
            do_layer_norm_before: true,
            remove_final_layer_norm: false,
            word_embed_proj_dim: None,
            num_attention_heads: 12,
            activation_function: HiddenAct::Relu,
            pad_token_id: Some(1),
            bos_token_id: Some(2),
            eos_token_id: Some(TokenIdOrList::One(2)),
            enable_bias: true,
            layer_norm_elementwise_affine: true,
            tie_word_embeddings: true,
        }
    }
}

impl OptConfig {
    pub fn word_embed_proj_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }
}

fn linear(i: usize, o: usize, bias: bool, vb: Loader) -> Result<Lin> {
    Lin::load(i, o, bias, vb)
}

fn layer_norm(d: usize, affine: bool, vb: Loader) -> Result<LayerNorm> {
    if affine {
        crate::layers::layer_norm(d, 1e-5, vb)
    } else {
        let dtype = vb.compute_dtype();
        let w = Tensor::ones(d, dtype, vb.device())?;
        let b = Tensor::zeros(d, dtype, vb.device())?;
        Ok(LayerNorm::new(w, b, 1e-5))
    }
}

/// Per-layer `(key, value)` of shape `(rows, heads, seen, head_dim)`.
#[derive(Clone, Default)]
pub struct OptCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl OptCache {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers] }
    }

    /// Tokens already seen.
    pub fn seq_len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    /// New row `i` continues old row `rows[i]` (beam reordering / expansion).
    pub fn reorder(&mut self, rows: &Tensor) -> Result<()> {
        for layer in self.layers.iter_mut().flatten() {
            *layer = (layer.0.index_select(rows, 0)?, layer.1.index_select(rows, 0)?);
        }
        Ok(())
    }
}

struct OptAttention {
    q_proj: Lin,
    k_proj: Lin,
    v_proj: Lin,
    out_proj: Lin,
    heads: usize,
    scaling: f64,
}

impl OptAttention {
    fn load(vb: Loader, c: &OptConfig) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            q_proj: linear(d, d, c.enable_bias, vb.pp("q_proj"))?,
            k_proj: linear(d, d, c.enable_bias, vb.pp("k_proj"))?,
            v_proj: linear(d, d, c.enable_bias, vb.pp("v_proj"))?,
            out_proj: linear(d, d, c.enable_bias, vb.pp("out_proj"))?,
            heads: c.num_attention_heads,
            scaling: ((d / c.num_attention_heads) as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, cache: &mut Option<(Tensor, Tensor)>) -> Result<Tensor> {
        // OPT scales the query projection, then attends with scale 1.
        let q = split_heads(&(self.q_proj.forward(x)? * self.scaling)?, self.heads)?;
        let mut k = split_heads(&self.k_proj.forward(x)?, self.heads)?;
        let mut v = split_heads(&self.v_proj.forward(x)?, self.heads)?;
        if let Some((pk, pv)) = cache.as_ref() {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        *cache = Some((k.clone(), v.clone()));
        let out = attention(&q, &k, &v, 1.0, mask)?;
        self.out_proj.forward(&merge_heads(&out)?)
    }
}

struct OptLayer {
    self_attn: OptAttention,
    self_attn_layer_norm: LayerNorm,
    fc1: Lin,
    fc2: Lin,
    final_layer_norm: LayerNorm,
    pre_norm: bool,
    act: HiddenAct,
}

impl OptLayer {
    fn load(vb: Loader, c: &OptConfig) -> Result<Self> {
        let d = c.hidden_size;
        let affine = c.layer_norm_elementwise_affine;
        Ok(Self {
            self_attn: OptAttention::load(vb.pp("self_attn"), c)?,
            self_attn_layer_norm: layer_norm(d, affine, vb.pp("self_attn_layer_norm"))?,
            fc1: linear(d, c.ffn_dim, c.enable_bias, vb.pp("fc1"))?,
            fc2: linear(c.ffn_dim, d, c.enable_bias, vb.pp("fc2"))?,
            final_layer_norm: layer_norm(d, affine, vb.pp("final_layer_norm"))?,
            pre_norm: c.do_layer_norm_before,
            act: c.activation_function,
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, cache: &mut Option<(Tensor, Tensor)>) -> Result<Tensor> {
        let h = if self.pre_norm { self.self_attn_layer_norm.forward(x)? } else { x.clone() };
        let mut h = (self.self_attn.forward(&h, mask, cache)? + x)?;
        if !self.pre_norm {
            h = self.self_attn_layer_norm.forward(&h)?;
        }
        let residual = h.clone();
        let m = if self.pre_norm { self.final_layer_norm.forward(&h)? } else { h };
        let m = self.fc2.forward(&self.act.forward(&self.fc1.forward(&m)?)?)?;
        let mut h = (residual + m)?;
        if !self.pre_norm {
            h = self.final_layer_norm.forward(&h)?;
        }
        Ok(h)
    }
}

/// `OPTForCausalLM`.
pub struct OptForCausalLM {
    embed_tokens: Emb,
    embed_positions: Tensor,
    project_in: Option<Lin>,
    project_out: Option<Lin>,
    layers: Vec<OptLayer>,
    final_layer_norm: Option<LayerNorm>,
    lm_head: Lin,
    pub config: OptConfig,
}

impl OptForCausalLM {
    /// `vb` at the `OPTForCausalLM` root (BLIP-2: `language_model`).
    pub fn load<'a>(vb: impl Into<Loader<'a>>, c: &OptConfig) -> Result<Self> {
        let vb = vb.into();
        let dvb = vb.pp("model.decoder");
        let wdim = c.word_embed_proj_dim();
        let embed_tokens = Emb::load(c.vocab_size, wdim, dvb.pp("embed_tokens"))?;
        // Tied to the input embeddings unless the checkpoint carries its own head (one copy
        // of the matrix serves both).
        let (embed_tokens, lm_head) = if vb.contains_tensor("lm_head.weight") {
            (embed_tokens, Lin::load(wdim, c.vocab_size, false, vb.pp("lm_head"))?)
        } else {
            embed_tokens.tie_head(None, vb.kernels())?
        };
        let embed_positions = get_compute(&dvb, (c.max_position_embeddings + 2, c.hidden_size), "embed_positions.weight")?;
        let (project_in, project_out) = if wdim != c.hidden_size {
            (
                Some(Lin::load(wdim, c.hidden_size, false, dvb.pp("project_in"))?),
                Some(Lin::load(c.hidden_size, wdim, false, dvb.pp("project_out"))?),
            )
        } else {
            (None, None)
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| OptLayer::load(dvb.pp(format!("layers.{i}")), c))
            .collect::<Result<_>>()?;
        let final_layer_norm = if c.do_layer_norm_before && !c.remove_final_layer_norm {
            Some(layer_norm(c.hidden_size, c.layer_norm_elementwise_affine, dvb.pp("final_layer_norm"))?)
        } else {
            None
        };
        Ok(Self {
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers,
            final_layer_norm,
            lm_head,
            config: c.clone(),
        })
    }

    pub fn new_cache(&self) -> OptCache {
        OptCache::new(self.layers.len())
    }

    /// Token embeddings (`word_embed_proj_dim` wide) of `(rows, len)` ids.
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    /// Logits `(rows, len, vocab)` for `inputs_embeds` `(rows, len, word_embed_proj_dim)`
    /// following the `cache.seq_len()` tokens already in `cache` (which is extended).
    pub fn forward_embeds(&self, inputs_embeds: &Tensor, cache: &mut OptCache) -> Result<Tensor> {
        let h = self.hidden_states(inputs_embeds, cache)?;
        self.logits(&h)
    }

    /// The next-token logits `(rows, vocab)` of the last position only (what generation needs).
    pub fn forward_embeds_last(&self, inputs_embeds: &Tensor, cache: &mut OptCache) -> Result<Tensor> {
        let h = self.hidden_states(inputs_embeds, cache)?;
        let len = h.dim(1)?;
        self.logits(&h.narrow(1, len - 1, 1)?)?.squeeze(1)
    }

    /// The LM head over final hidden states.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(h)
    }

    /// Final hidden states (after `final_layer_norm` / `project_out`), extending `cache`.
    pub fn hidden_states(&self, inputs_embeds: &Tensor, cache: &mut OptCache) -> Result<Tensor> {
        let (_, len, _) = inputs_embeds.dims3()?;
        let past = cache.seq_len();
        if past + len > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence of {} tokens exceeds OPT's {} positions",
                past + len,
                self.config.max_position_embeddings
            );
        }
        let positions = self.embed_positions.narrow(0, past + 2, len)?;
        let mut h = match &self.project_in {
            Some(p) => p.forward(inputs_embeds)?,
            None => inputs_embeds.clone(),
        };
        h = h.broadcast_add(&positions.unsqueeze(0)?)?;
        let mask = if len > 1 { Some(causal_mask(len, past, h.dtype(), h.device())?) } else { None };
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            h = layer.forward(&h, mask.as_ref(), layer_cache)?;
        }
        if let Some(n) = &self.final_layer_norm {
            h = n.forward(&h)?;
        }
        if let Some(p) = &self.project_out {
            h = p.forward(&h)?;
        }
        Ok(h)
    }

    /// Logits for token ids (no image prefix).
    pub fn forward(&self, ids: &Tensor, cache: &mut OptCache) -> Result<Tensor> {
        self.forward_embeds(&self.embed_tokens(ids)?, cache)
    }

    /// The dtype activations and logits come out in.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.compute_dtype()
    }
}
