//! capmatch-models: the neural networks, written in candle, one file per model, and the CPU
//! kernels they run on.
//!
//! Each model reads its own Hugging Face `config.json` (the structs here deserialize it
//! directly) and loads weights through a [`Loader`] (a `candle_nn::VarBuilder`, whose tensor
//! names are the checkpoint's own, and the [`Kernels`] to run on). Nothing here knows about
//! files, images or tokenizers: that is `capmatch-core`'s job.
//!
//! The models import the kernels of [`ops`]; the kernels know nothing of the models (the
//! loaders that know checkpoint tensor names live in the model files).

// Unsafe code is for the kernels' intrinsics and their disjoint parallel writes only
// (`ops::x86`, `ops::tile`), each use with its SAFETY comment.
#![deny(unsafe_code)]

pub mod activation;
pub mod blip;
pub mod blip2;
pub mod clip;
pub mod generation;
pub mod layers;
pub mod ops;

pub use activation::HiddenAct;
pub use layers::{Kernels, Loader};

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
