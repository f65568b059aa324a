//! `T5ForConditionalGeneration` (BLIP-2's Flan-T5 language model): RMS layer norms,
//! unscaled attention with bucketed relative position biases (computed by the first
//! layer of each stack and shared), ReLU or gated-GELU feed-forward, a self-attention KV
//! cache and a cross-attention cache computed once from the encoder states.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::Embedding;
use serde::Deserialize;

use crate::activation::HiddenAct;
use crate::layers::{get_compute, Emb, Lin, Loader};
use super::{attention, causal_mask, merge_heads, split_heads, TokenIdOrList};

/// `T5Config`; defaults are transformers'.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
    /// In transformers 5 only decides `scale_decoder_outputs` (T5 v1.0 scales the decoder
    /// output by `d_model^-0.5`; v1.1 / Flan, saved with `false`, do not).
    pub tie_word_embeddings: Option<bool>,
    /// Written by transformers >= 5; wins over `tie_word_embeddings`.
    pub scale_decoder_outputs: Option<bool>,
    pub pad_token_id: Option<u32>,
    pub eos_token_id: Option<TokenIdOrList>,
    pub bos_token_id: Option<u32>,
    pub decoder_start_token_id: Option<u32>,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_decoder_layers: None,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            tie_word_embeddings: None,
            scale_decoder_outputs: None,
            pad_token_id: Some(0),
            eos_token_id: Some(TokenIdOrList::One(1)),
            bos_token_id: None,
            decoder_start_token_id: None,
        }
    }
}

impl T5Config {
    pub fn num_decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }
    /// `(is_gated, activation name)` from `feed_forward_proj` ("relu", "gated-gelu", ...).
    pub fn feed_forward(&self) -> (bool, String) {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let gated = parts.len() > 1 && parts[0] == "gated";
        let act = if self.feed_forward_proj == "gated-gelu" { "gelu_new" } else { parts[parts.len() - 1] };
        (gated, act.to_string())
    }
    pub fn scale_decoder_outputs(&self) -> bool {
        self.scale_decoder_outputs.unwrap_or(self.tie_word_embeddings != Some(false))
    }
    /// The decoder's first token (T5 uses the pad token).
    pub fn decoder_start_token_id(&self) -> u32 {
        self.decoder_start_token_id.or(self.pad_token_id).unwrap_or(0)
    }
}

/// T5's RMS norm: `weight * x / sqrt(mean(x²) + eps)`, the statistics in `f32`.
struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    fn load(vb: Loader, d: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: get_compute(&vb, d, "weight")?, eps })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let var = x32.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let normed = x32.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dtype)?;
        normed.broadcast_mul(&self.weight)
    }
}

/// `relative_position = memory - query` → bucket, as `T5Attention._relative_position_bucket`
/// (the logarithmic part in `f32`, truncated, like PyTorch).
pub fn relative_position_bucket(relative_position: i64, bidirectional: bool, num_buckets: usize, max_distance: usize) -> u32 {
    let mut buckets = num_buckets as i64;
    let mut ret = 0i64;
    let n = if bidirectional {
        buckets /= 2;
        if relative_position > 0 {
            ret += buckets;
        }
        relative_position.abs()
    } else {
        (-relative_position).max(0)
    };
    let max_exact = buckets / 2;
    if n < max_exact {
        return (ret + n) as u32;
    }
    let ratio = (n as f32 / max_exact as f32).ln();
    let scale = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let large = max_exact + (ratio / scale * (buckets - max_exact) as f32) as i64;
    (ret + large.min(buckets - 1)) as u32
}

struct T5Attention {
    q: Lin,
    k: Lin,
    v: Lin,
    o: Lin,
    relative_attention_bias: Option<Embedding>,
    heads: usize,
    num_buckets: usize,
    max_distance: usize,
    bidirectional: bool,
}

impl T5Attention {
    fn load(vb: Loader, c: &T5Config, has_bias: bool, is_decoder: bool) -> Result<Self> {
        let inner = c.num_heads * c.d_kv;
        let relative_attention_bias = if has_bias {
            let table = get_compute(&vb, (c.relative_attention_num_buckets, c.num_heads), "relative_attention_bias.weight")?;
            Some(Embedding::new(table, c.num_heads))
        } else {
            None
        };
        Ok(Self {
            q: Lin::load(c.d_model, inner, false, vb.pp("q"))?,
            k: Lin::load(c.d_model, inner, false, vb.pp("k"))?,
            v: Lin::load(c.d_model, inner, false, vb.pp("v"))?,
            o: Lin::load(inner, c.d_model, false, vb.pp("o"))?,
            relative_attention_bias,
            heads: c.num_heads,
            num_buckets: c.relative_attention_num_buckets,
            max_distance: c.relative_attention_max_distance,
            bidirectional: !is_decoder,
        })
    }

    /// `(1, heads, q_len, k_len)` for queries at `past..past + q_len`.
    fn compute_bias(&self, q_len: usize, k_len: usize, past: usize, device: &Device) -> Result<Tensor> {
        let emb = self.relative_attention_bias.as_ref().expect("layer 0 has the relative attention bias");
        let buckets: Vec<u32> = (0..q_len)
            .flat_map(|i| {
                (0..k_len).map(move |j| {
                    relative_position_bucket(
                        j as i64 - (i + past) as i64,
                        self.bidirectional,
                        self.num_buckets,
                        self.max_distance,
                    )
                })
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, (q_len, k_len), device)?;
        emb.forward(&buckets)?.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()
    }

    fn project_kv(&self, states: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((split_heads(&self.k.forward(states)?, self.heads)?, split_heads(&self.v.forward(states)?, self.heads)?))
    }

    /// Attention of `x` over `kv` (already projected), adding `bias` (position bias + mask).
    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let q = split_heads(&self.q.forward(x)?, self.heads)?;
        let out = attention(&q, k, v, 1.0, bias)?;
        self.o.forward(&merge_heads(&out)?)
    }
}

struct T5FeedForward {
    wi: Option<Lin>,
    wi_0: Option<Lin>,
    wi_1: Option<Lin>,
    wo: Lin,
    act: HiddenAct,
    layer_norm: T5LayerNorm,
}

impl T5FeedForward {
    fn load(vb: Loader, c: &T5Config) -> Result<Self> {
        let (gated, act) = c.feed_forward();
        let act = HiddenAct::parse(&act)?;
        let d = vb.pp("DenseReluDense");
        let (wi, wi_0, wi_1) = if gated {
            (
                None,
                Some(Lin::load(c.d_model, c.d_ff, false, d.pp("wi_0"))?),
                Some(Lin::load(c.d_model, c.d_ff, false, d.pp("wi_1"))?),
            )
        } else {
            (Some(Lin::load(c.d_model, c.d_ff, false, d.pp("wi"))?), None, None)
        };
        Ok(Self {
            wi,
            wi_0,
            wi_1,
            wo: Lin::load(c.d_ff, c.d_model, false, d.pp("wo"))?,
            act,
            layer_norm: T5LayerNorm::load(vb.pp("layer_norm"), c.d_model, c.layer_norm_epsilon)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.layer_norm.forward(x)?;
        let h = match (&self.wi, &self.wi_0, &self.wi_1) {
            (Some(wi), _, _) => self.act.forward(&wi.forward(&h)?)?,
            (None, Some(w0), Some(w1)) => (self.act.forward(&w0.forward(&h)?)? * w1.forward(&h)?)?,
            _ => unreachable!(),
        };
        x + self.wo.forward(&h)?
    }
}

struct EncoderBlock {
    attn: T5Attention,
    attn_norm: T5LayerNorm,
    ff: T5FeedForward,
}

struct DecoderBlock {
    self_attn: T5Attention,
    self_norm: T5LayerNorm,
    cross_attn: T5Attention,
    cross_norm: T5LayerNorm,
    ff: T5FeedForward,
}

/// Decoder caches: self-attention `(k, v)` growing per step, cross-attention `(k, v)` of
/// the encoder states (computed on the first step).
#[derive(Clone, Default)]
pub struct T5Cache {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<Option<(Tensor, Tensor)>>,
}

impl T5Cache {
    pub fn new(num_layers: usize) -> Self {
        Self { self_kv: vec![None; num_layers], cross_kv: vec![None; num_layers] }
    }
    pub fn seq_len(&self) -> usize {
        self.self_kv.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }
    /// New row `i` continues old row `rows[i]`.
    pub fn reorder(&mut self, rows: &Tensor) -> Result<()> {
        for layer in self.self_kv.iter_mut().chain(self.cross_kv.iter_mut()).flatten() {
            *layer = (layer.0.index_select(rows, 0)?, layer.1.index_select(rows, 0)?);
        }
        Ok(())
    }
}

/// `T5ForConditionalGeneration`.
pub struct T5ForConditionalGeneration {
    shared: Emb,
    encoder: Vec<EncoderBlock>,
    encoder_final_norm: T5LayerNorm,
    decoder: Vec<DecoderBlock>,
    decoder_final_norm: T5LayerNorm,
    lm_head: Lin,
    pub config: T5Config,
}

impl T5ForConditionalGeneration {
    /// `vb` at the `T5ForConditionalGeneration` root (BLIP-2: `language_model`).
    pub fn load<'a>(vb: impl Into<Loader<'a>>, c: &T5Config) -> Result<Self> {
        let vb = vb.into();
        let shared = Emb::load(c.vocab_size, c.d_model, vb.pp("shared"))?;
        let eps = c.layer_norm_epsilon;
        let encoder = (0..c.num_layers)
            .map(|i| {
                let b = vb.pp(format!("encoder.block.{i}.layer"));
                Ok(EncoderBlock {
                    attn: T5Attention::load(b.pp("0.SelfAttention"), c, i == 0, false)?,
                    attn_norm: T5LayerNorm::load(b.pp("0.layer_norm"), c.d_model, eps)?,
                    ff: T5FeedForward::load(b.pp("1"), c)?,
                })
            })
            .collect::<Result<_>>()?;
        let decoder = (0..c.num_decoder_layers())
            .map(|i| {
                let b = vb.pp(format!("decoder.block.{i}.layer"));
                Ok(DecoderBlock {
                    self_attn: T5Attention::load(b.pp("0.SelfAttention"), c, i == 0, true)?,
                    self_norm: T5LayerNorm::load(b.pp("0.layer_norm"), c.d_model, eps)?,
                    cross_attn: T5Attention::load(b.pp("1.EncDecAttention"), c, false, true)?,
                    cross_norm: T5LayerNorm::load(b.pp("1.layer_norm"), c.d_model, eps)?,
                    ff: T5FeedForward::load(b.pp("2"), c)?,
                })
            })
            .collect::<Result<_>>()?;
        // A checkpoint with its own head (Flan-T5) keeps it; otherwise the head is `shared`.
        let (shared, lm_head) = if vb.contains_tensor("lm_head.weight") {
            (shared, Lin::load(c.d_model, c.vocab_size, false, vb.pp("lm_head"))?)
        } else {
            shared.tie_head(None, vb.kernels())?
        };
        Ok(Self {
            shared,
            encoder,
            encoder_final_norm: T5LayerNorm::load(vb.pp("encoder.final_layer_norm"), c.d_model, eps)?,
            decoder,
            decoder_final_norm: T5LayerNorm::load(vb.pp("decoder.final_layer_norm"), c.d_model, eps)?,
            lm_head,
            config: c.clone(),
        })
    }

    pub fn new_cache(&self) -> T5Cache {
        T5Cache::new(self.decoder.len())
    }

    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.shared.forward(ids)
    }

    /// Encoder `last_hidden_state` for `inputs_embeds` `(rows, len, d_model)` (no padding).
    pub fn encode(&self, inputs_embeds: &Tensor) -> Result<Tensor> {
        let len = inputs_embeds.dim(1)?;
        let mut h = inputs_embeds.clone();
        let mut bias: Option<Tensor> = None;
        for block in &self.encoder {
            if bias.is_none() {
                bias = Some(block.attn.compute_bias(len, len, 0, h.device())?.to_dtype(h.dtype())?);
            }
            let x = block.attn_norm.forward(&h)?;
            let (k, v) = block.attn.project_kv(&x)?;
            h = (&h + block.attn.attend(&x, &k, &v, bias.as_ref())?)?;
            h = block.ff.forward(&h)?;
        }
        self.encoder_final_norm.forward(&h)
    }

    /// Decoder logits `(rows, len, vocab)` for `decoder_ids` `(rows, len)` following the
    /// tokens in `cache`, attending to `encoder_states` (used when `cache` has no
    /// cross-attention keys yet).
    pub fn decode(&self, decoder_ids: &Tensor, encoder_states: &Tensor, cache: &mut T5Cache) -> Result<Tensor> {
        let h = self.decoder_hidden_states(decoder_ids, encoder_states, cache)?;
        self.logits(&h)
    }

    /// The LM head (with T5 v1.0's output scaling where the config asks for it).
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let h = if self.config.scale_decoder_outputs() { (h * (self.config.d_model as f64).powf(-0.5))? } else { h.clone() };
        self.lm_head.forward(&h)
    }

    /// Final decoder hidden states, extending `cache`.
    pub fn decoder_hidden_states(&self, decoder_ids: &Tensor, encoder_states: &Tensor, cache: &mut T5Cache) -> Result<Tensor> {
        let len = decoder_ids.dim(1)?;
        let past = cache.seq_len();
        let mut h = self.shared.forward(decoder_ids)?;
        let dtype = h.dtype();
        let mut bias: Option<Tensor> = None;
        for (i, block) in self.decoder.iter().enumerate() {
            if bias.is_none() {
                let b = block.self_attn.compute_bias(len, past + len, past, h.device())?.to_dtype(dtype)?;
                let b = if len > 1 { b.broadcast_add(&causal_mask(len, past, dtype, h.device())?)? } else { b };
                bias = Some(b);
            }
            // Self-attention with the cache.
            let x = block.self_norm.forward(&h)?;
            let (mut k, mut v) = block.self_attn.project_kv(&x)?;
            if let Some((pk, pv)) = cache.self_kv[i].as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            cache.self_kv[i] = Some((k.clone(), v.clone()));
            h = (&h + block.self_attn.attend(&x, &k, &v, bias.as_ref())?)?;
            // Cross-attention (no position bias, no mask: every encoder position is valid).
            let x = block.cross_norm.forward(&h)?;
            if cache.cross_kv[i].is_none() {
                cache.cross_kv[i] = Some(block.cross_attn.project_kv(encoder_states)?);
            }
            let (ck, cv) = cache.cross_kv[i].as_ref().unwrap();
            h = (&h + block.cross_attn.attend(&x, ck, cv, None)?)?;
            h = block.ff.forward(&h)?;
        }
        self.decoder_final_norm.forward(&h)
    }

    /// The dtype activations and logits come out in.
    pub fn dtype(&self) -> DType {
        self.shared.compute_dtype()
    }
}
