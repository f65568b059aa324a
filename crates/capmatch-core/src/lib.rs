//! capmatch-core: everything between files on disk and the models.
//!
//! - [`image_io`]: decoding any image file into RGB, robustly (EXIF orientation, CMYK,
//!   16-bit, palette, alpha composited over white, decompression-bomb limits).
//! - [`preprocess`]: `CLIPImageProcessor` / `BlipImageProcessor` semantics, read from the
//!   checkpoint's `preprocessor_config.json`.
//! - [`hub`] and [`checkpoint`]: where model files come from (a local directory or the
//!   Hugging Face cache) and how their weights are memory-mapped.
//! - [`embedder`] and [`captioner`]: the two jobs capmatch asks of models.

pub mod captioner;
pub mod checkpoint;
pub mod embedder;
pub mod hub;
pub mod image_io;
pub mod preprocess;

pub use candle_core::{DType, Device};
pub use image::RgbImage;
