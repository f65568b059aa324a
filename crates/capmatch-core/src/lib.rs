//! capmatch-core: everything between files on disk and the models.
//!
//! - [`image_io`]: decoding any image file into RGB, robustly (EXIF orientation, CMYK,
//!   16-bit, palette, alpha composited over white, decompression-bomb limits).
//! - [`preprocess`]: `CLIPImageProcessor` / `BlipImageProcessor` semantics, read from the
//!   checkpoint's `preprocessor_config.json`.
//! - [`hub`] and [`checkpoint`]: where model files come from (a local directory or the
//!   Hugging Face cache) and how their weights are memory-mapped.
//! - [`embedder`] and [`captioner`]: the two jobs capmatch asks of models, loaded with
//!   [`LoadOptions`] (dtype, [`device`], [`Kernels`]).

// The only unsafe code maps checkpoint files and hands their pages back (`checkpoint`).
#![deny(unsafe_code)]

pub mod captioner;
pub mod checkpoint;
pub mod device;
pub mod embedder;
pub mod hub;
pub mod image_io;
mod load_options;
pub mod preprocess;

pub use candle_core::{DType, Device};
pub use capmatch_models::Kernels;
pub use image::RgbImage;
pub use load_options::LoadOptions;

// A server or the engine shares one embedder and one captioner between threads.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<embedder::ClipEmbedder>();
    shareable::<captioner::Captioner>();
};
