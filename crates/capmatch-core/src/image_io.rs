//! Decoding image files into 8-bit RGB, the one pixel format the preprocessors take.
//!
//! Deliberate choice: images with an alpha channel are composited over white, which is what
//! a person sees in a viewer (transformers' `convert_rgb` drops alpha instead, which turns
//! transparent regions black or into garbage colours).
//!
//! API (stable; other crates build on it): [`decode_file`], [`decode_bytes`], [`DecodeLimits`],
//! [`DecodeError`]. The implementation is being hardened (EXIF orientation, CMYK, bombs).

use std::path::{Path, PathBuf};

use image::{DynamicImage, RgbImage};

/// Limits that protect the process from hostile or absurd files.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest decoded width × height accepted (decompression-bomb guard).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // Pillow warns above 89.5 Mpx and refuses above twice that; we refuse at ~179 Mpx too.
        Self { max_pixels: 178_956_970 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("empty file")]
    Empty,
    #[error("not a supported image format")]
    UnknownFormat,
    #[error("image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")]
    TooLarge { width: u32, height: u32, max_pixels: u64 },
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
}

pub fn decode_file(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    let bytes = std::fs::read(path).map_err(|source| DecodeError::Io { path: path.to_path_buf(), source })?;
    decode_bytes(&bytes, limits)
}

pub fn decode_bytes(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(DecodeError::UnknownFormat);
    }
    let (width, height) = reader.into_dimensions().map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(DecodeError::TooLarge { width, height, max_pixels: limits.max_pixels });
    }
    let image = image::load_from_memory(bytes).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    Ok(to_rgb_over_white(image))
}

/// Drops alpha by compositing over white; everything else is converted to 8-bit RGB.
pub fn to_rgb_over_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (src, dst) in rgba.pixels().zip(out.pixels_mut()) {
        let a = src[3] as u32;
        for c in 0..3 {
            // Rounded integer blend over 255: c*a/255 + 255*(255-a)/255.
            dst[c] = ((src[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}
