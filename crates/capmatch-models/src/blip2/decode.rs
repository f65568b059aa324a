//! BLIP-2 generation: [`Blip2Decoder`] drives either language model through
//! [`crate::generation::StepDecoder`], so greedy and beam search are the shared,
//! transformers-exact implementations of [`crate::generation`].
//!
//! What `Blip2ForConditionalGeneration.generate` does, reproduced:
//! - OPT: the prompt given to generation is the whole `input_ids` (image tokens, BOS,
//!   text); the first forward embeds it and scatters the image features into the image
//!   positions; returned sequences start with those `input_ids`.
//! - T5: the encoder runs once on the embedded, scattered `input_ids`; generation starts
//!   from `[decoder_start_token_id]`, which the returned sequences start with.

use candle_core::{Result, Tensor};

use super::opt::OptCache;
use super::t5::T5Cache;
use super::{Blip2ForConditionalGeneration, Blip2LanguageModel, Blip2TextConfig};
use crate::generation::{GenerationConfig, StepDecoder, TokenIds};

enum State {
    Opt { features: Tensor, cache: OptCache },
    T5 { encoder_states: Tensor, cache: T5Cache },
}

/// One generation's model state: image features or encoder states and the caches, one row
/// per live sequence.
pub struct Blip2Decoder<'a> {
    model: &'a Blip2ForConditionalGeneration,
    state: State,
}

impl Blip2ForConditionalGeneration {
    /// A decoder for a batch: `features` from [`Self::image_features`] `(batch, n, hidden)`
    /// and each item's `input_ids` (from [`Self::input_ids`], all the same length).
    pub fn decoder(&self, features: &Tensor, input_ids: &[Vec<u32>]) -> Result<Blip2Decoder<'_>> {
        let state = match &self.language_model {
            Blip2LanguageModel::Opt(m) => State::Opt { features: features.clone(), cache: m.new_cache() },
            Blip2LanguageModel::T5(m) => {
                let len = input_ids.first().map_or(0, |r| r.len());
                let flat: Vec<u32> = input_ids.iter().flatten().copied().collect();
                let ids = Tensor::from_vec(flat, (input_ids.len(), len), features.device())?;
                let embeds = self.embed(&ids, features)?;
                State::T5 { encoder_states: m.encode(&embeds)?, cache: m.new_cache() }
            }
        };
        Ok(Blip2Decoder { model: self, state })
    }

    /// The token ids generation starts from for one item: its `input_ids` for OPT,
    /// `[decoder_start_token_id]` for T5.
    pub fn generation_prompt(&self, input_ids: &[u32], config: &GenerationConfig) -> Vec<u32> {
        match &self.config.text_config {
            Blip2TextConfig::Opt(_) => input_ids.to_vec(),
            Blip2TextConfig::T5(c) => vec![config.decoder_start_token_id.unwrap_or_else(|| c.decoder_start_token_id())],
        }
    }

    /// The generation defaults the language model's config implies (its special tokens);
    /// a checkpoint's `generation_config.json` is meant to be merged over this.
    pub fn default_generation_config(&self) -> GenerationConfig {
        let tc = &self.config.text_config;
        let eos = tc.eos_token_ids();
        GenerationConfig {
            bos_token_id: tc.bos_token_id(),
            eos_token_id: match eos.len() {
                0 => None,
                1 => Some(TokenIds::One(eos[0])),
                _ => Some(TokenIds::Many(eos)),
            },
            pad_token_id: tc.pad_token_id(),
            decoder_start_token_id: match tc {
                Blip2TextConfig::T5(c) => Some(c.decoder_start_token_id()),
                Blip2TextConfig::Opt(_) => None,
            },
            ..Default::default()
        }
    }

    /// `generate` for a batch of preprocessed images `(batch, 3, H, W)`, each with the same
    /// optional prompt (`text_ids`: the tokenizer's ids, special tokens included). Returns
    /// one sequence per image, exactly as transformers returns it (OPT: `input_ids` +
    /// new tokens; T5: decoder start + new tokens).
    pub fn generate(
        &self,
        pixel_values: &Tensor,
        text_ids: Option<&[u32]>,
        config: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        let batch = pixel_values.dim(0)?;
        let features = self.image_features(pixel_values)?;
        let input_ids = self.input_ids(text_ids)?;
        let rows = vec![input_ids.clone(); batch];
        let prompt = self.generation_prompt(&input_ids, config);
        let params = config.resolve(prompt.len(), self.config.text_config.max_position_embeddings())?;
        let mut decoder = self.decoder(&features, &rows)?;
        crate::generation::generate(&mut decoder, &vec![prompt; batch], &params, pixel_values.device())
    }

    /// The generated part of a sequence returned by [`Self::generate`].
    pub fn new_tokens<'s>(&self, sequence: &'s [u32], text_ids: Option<&[u32]>, config: &GenerationConfig) -> Result<&'s [u32]> {
        let input_ids = self.input_ids(text_ids)?;
        let n = self.generation_prompt(&input_ids, config).len();
        Ok(&sequence[n.min(sequence.len())..])
    }
}

impl StepDecoder for Blip2Decoder<'_> {
    fn forward(&mut self, tokens: &Tensor) -> Result<Tensor> {
        match (&mut self.state, &self.model.language_model) {
            (State::Opt { features, cache }, Blip2LanguageModel::Opt(m)) => {
                let embeds = if cache.seq_len() == 0 {
                    self.model.embed(tokens, features)?
                } else {
                    m.embed_tokens(tokens)?
                };
                m.forward_embeds_last(&embeds, cache)
            }
            (State::T5 { encoder_states, cache }, Blip2LanguageModel::T5(m)) => {
                let h = m.decoder_hidden_states(tokens, encoder_states, cache)?;
                let len = h.dim(1)?;
                m.logits(&h.narrow(1, len - 1, 1)?)?.squeeze(1)
            }
            _ => unreachable!("decoder state matches the language model"),
        }
    }

    fn reorder(&mut self, rows: &[u32]) -> Result<()> {
        match &mut self.state {
            State::Opt { features, cache } => {
                let index = Tensor::new(rows, features.device())?;
                *features = features.index_select(&index, 0)?;
                cache.reorder(&index)
            }
            State::T5 { encoder_states, cache } => {
                let index = Tensor::new(rows, encoder_states.device())?;
                *encoder_states = encoder_states.index_select(&index, 0)?;
                cache.reorder(&index)
            }
        }
    }
}
