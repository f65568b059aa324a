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
