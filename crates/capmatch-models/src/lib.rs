//! capmatch-models: the neural networks, written in candle, one file per model.
//!
//! Each model reads its own Hugging Face `config.json` (the structs here deserialize it
//! directly) and loads weights through a `candle_nn::VarBuilder` whose tensor names are
//! the checkpoint's own. Nothing here knows about files, images or tokenizers: that is
//! `capmatch-core`'s job.

pub mod blip;
pub mod blip2;
pub mod clip;
pub mod ops;
pub mod generation;
pub mod layers;

/// A token-id field of a checkpoint's config (`eos_token_id`, `forced_eos_token_id`…):
/// one id, or since transformers 5 possibly a list of ids.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn contains(&self, id: u32) -> bool {
        match self {
            Self::One(x) => *x == id,
            Self::Many(v) => v.contains(&id),
        }
    }

    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(t) => vec![*t],
            Self::Many(v) => v.clone(),
        }
    }
}
