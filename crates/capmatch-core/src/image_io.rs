//! Decoding image files into 8-bit RGB, the one pixel format the preprocessors take.
//!
//! Deliberate choice: images with an alpha channel are composited over white, which is what
//! a person sees in a viewer (transformers' `convert_rgb` drops alpha instead, which turns
//! transparent regions black or into garbage colours).
//!
//! What is decoded, recognised from the content (never the extension):
//! - JPEG (baseline/progressive, greyscale, CMYK and YCCK) with libjpeg-turbo's decoder set
//!   up as Pillow sets it up, so the pixels are Pillow's exactly (see [`jpeg`]); optionally
//!   at a reduced DCT scale for images far larger than the model input ([`ReducedScale`]);
//! - PNG (1–16 bit, grey, palette, `tRNS`, alpha), WebP (lossy, lossless, alpha), GIF (first
//!   frame), BMP, TIFF;
//! - SVG, rendered with resvg at its intrinsic size (the longer side capped at
//!   [`SVG_MAX_SIDE`], the area at [`DecodeLimits::max_pixels`]); text elements are not
//!   rendered (no fonts are loaded) and neither are raster images embedded in the SVG.
//!
//! EXIF orientation (1–8) is applied as Pillow's `ImageOps.exif_transpose` does, for every
//! format that carries EXIF (JPEG, PNG `eXIf`, WebP, TIFF).
//!
//! 16-bit samples are reduced to 8 bits by rounding (`v / 257`); Pillow truncates (`v >> 8`),
//! so the two can differ by one level on 16-bit files.
//!
//! Robustness: no input makes these functions panic or abort the process. Dimensions are
//! checked against [`DecodeLimits::max_pixels`] before any pixel is decoded, the decoder's
//! allocations are capped by [`DecodeLimits::max_alloc_bytes`] (`image::Limits`, and an
//! estimate of libjpeg's buffers), files larger than [`DecodeLimits::max_file_bytes`] are not
//! read, libjpeg's fatal errors come back as [`DecodeError::Corrupt`], and a panic inside a
//! third-party decoder is caught and reported as [`DecodeError::DecoderPanic`]. Every error
//! displays as one short line meant for a warning and for the index database.
//!
//! API (stable; other crates build on it): [`decode_file`], [`decode_bytes`], their
//! [`DecodeOptions`] forms [`decode_file_with`] and [`decode_bytes_with`], [`DecodeLimits`],
//! [`ReducedScale`], [`DecodeError`], [`to_rgb_over_white`], [`is_image_path`],
//! [`SUPPORTED_EXTENSIONS`].

mod jpeg;

use std::cell::Cell;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, RgbImage, RgbaImage};

pub use jpeg::ReducedScale;

/// File extensions (lower case, no dot) the indexer treats as images.
pub const SUPPORTED_EXTENSIONS: &[&str] =
    &["jpg", "jpeg", "jpe", "jfif", "png", "apng", "webp", "gif", "bmp", "dib", "tif", "tiff", "svg"];

/// The longest side, in pixels, an SVG is rasterised at (larger drawings are scaled down).
pub const SVG_MAX_SIDE: u32 = 4096;

/// Whether `path` has one of the [`SUPPORTED_EXTENSIONS`] (case-insensitive).
///
/// This only decides which files the indexer tries; decoding itself looks at the content.
pub fn is_image_path(path: impl AsRef<Path>) -> bool {
    path.as_ref()
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|ext| SUPPORTED_EXTENSIONS.iter().any(|s| s.eq_ignore_ascii_case(ext)))
}

/// Limits that protect the process from hostile or absurd files.
///
/// Build it with `DecodeLimits { max_pixels, ..Default::default() }` or
/// [`DecodeLimits::with_max_pixels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest decoded width × height accepted (decompression-bomb guard), checked from the
    /// header before decoding.
    pub max_pixels: u64,
    /// Most memory a decoder may allocate for one image (`image::Limits::max_alloc`),
    /// including the decoded pixel buffer.
    pub max_alloc_bytes: u64,
    /// Largest file [`decode_file`] reads into memory.
    pub max_file_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // Pillow warns above 89.5 Mpx and refuses above twice that; we refuse at ~179 Mpx too.
        // 2 GiB holds such an image even as 16-bit RGBA (179 Mpx × 8 bytes ≈ 1.43 GB).
        Self { max_pixels: 178_956_970, max_alloc_bytes: 2 << 30, max_file_bytes: 1 << 30 }
    }
}

impl DecodeLimits {
    /// The default limits with another pixel limit.
    pub fn with_max_pixels(max_pixels: u64) -> Self {
        Self { max_pixels, ..Self::default() }
    }
}

/// Everything [`decode_file_with`] and [`decode_bytes_with`] take besides the input.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DecodeOptions {
    pub limits: DecodeLimits,
    /// `None` (the default): full resolution, pixels identical to Pillow's. `Some`: a JPEG
    /// far larger than the model input is decoded at 1/2, 1/4 or 1/8 scale (faster, and
    /// close to but not identical to a full decode once resized; see [`ReducedScale`]).
    pub reduced_scale: Option<ReducedScale>,
}

impl DecodeOptions {
    /// Full-resolution decoding with these limits.
    pub fn with_limits(limits: DecodeLimits) -> Self {
        Self { limits, reduced_scale: None }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is {kind}, not a file", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("empty file")]
    Empty,
    #[error("file of {bytes} bytes exceeds the limit of {max_bytes} bytes")]
    FileTooLarge { bytes: u64, max_bytes: u64 },
    #[error("not a supported image format")]
    UnknownFormat,
    #[error("{0} images are not supported")]
    UnsupportedFormat(String),
    #[error("image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")]
    TooLarge { width: u32, height: u32, max_pixels: u64 },
    #[error("decoding needs more than the limit of {max_alloc_bytes} bytes of memory")]
    AllocLimit { max_alloc_bytes: u64 },
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
    #[error("decoder crashed: {0}")]
    DecoderPanic(String),
}

/// Reads and decodes one file at full resolution. Directories, FIFOs and other non-files are
/// refused without being opened for reading, so nothing here can block.
pub fn decode_file(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    decode_file_with(path, &DecodeOptions::with_limits(*limits))
}

/// [`decode_file`] with options (reduced-scale JPEG decoding).
pub fn decode_file_with(path: &Path, options: &DecodeOptions) -> Result<RgbImage, DecodeError> {
    let limits = &options.limits;
    let io = |source| DecodeError::Io { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(DecodeError::NotAFile { path: path.to_path_buf(), kind: "a directory" });
    }
    if !kind.is_file() {
        return Err(DecodeError::NotAFile { path: path.to_path_buf(), kind: "a special file" });
    }
    if meta.len() == 0 {
        return Err(DecodeError::Empty);
    }
    if meta.len() > limits.max_file_bytes {
        return Err(DecodeError::FileTooLarge { bytes: meta.len(), max_bytes: limits.max_file_bytes });
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take` guards against a file that grows between `metadata` and the read.
    file.take(limits.max_file_bytes + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(DecodeError::FileTooLarge { bytes: bytes.len() as u64, max_bytes: limits.max_file_bytes });
    }
    decode_bytes_with(&bytes, options)
}

/// Decodes an encoded image held in memory, at full resolution.
pub fn decode_bytes(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    decode_bytes_with(bytes, &DecodeOptions::with_limits(*limits))
}

/// [`decode_bytes`] with options (reduced-scale JPEG decoding).
pub fn decode_bytes_with(bytes: &[u8], options: &DecodeOptions) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    catch_decoder_panic(|| decode_inner(bytes, options))
}

/// Runs `f`, turning a panic inside it into [`DecodeError::DecoderPanic`] (the last line of
/// defence around third-party decoders). The panic message is not printed by the default
/// panic hook while `f` runs on this thread; panics elsewhere are reported as usual.
pub fn catch_decoder_panic<T>(f: impl FnOnce() -> Result<T, DecodeError>) -> Result<T, DecodeError> {
    install_quiet_panic_hook();
    QUIET_PANICS.with(|depth| depth.set(depth.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET_PANICS.with(|depth| depth.set(depth.get() - 1));
    result.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(DecodeError::DecoderPanic(one_line(&message)))
    })
}

thread_local! {
    static QUIET_PANICS: Cell<u32> = const { Cell::new(0) };
}

fn install_quiet_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let quiet = QUIET_PANICS.try_with(|depth| depth.get() > 0).unwrap_or(false);
            if !quiet {
                previous(info);
            }
        }));
    });
}

/// Drops alpha by compositing over white; everything else is converted to 8-bit RGB.
pub fn to_rgb_over_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    rgba_over_white(&rgba)
}

fn rgba_over_white(rgba: &RgbaImage) -> RgbImage {
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

/// The formats the `image` crate decodes here (its features enabled in the workspace).
fn image_crate_decodes(format: ImageFormat) -> bool {
    matches!(format, ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif | ImageFormat::Bmp | ImageFormat::Tiff)
}

fn decode_inner(bytes: &[u8], options: &DecodeOptions) -> Result<RgbImage, DecodeError> {
    let limits = &options.limits;
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => jpeg::decode(bytes, options),
        Ok(format) if image_crate_decodes(format) => decode_raster(bytes, format, limits),
        Ok(format) => Err(DecodeError::UnsupportedFormat(format_name(format))),
        Err(_) if looks_like_svg(bytes) => render_svg(bytes, limits),
        Err(_) => Err(DecodeError::UnknownFormat),
    }
}

fn format_name(format: ImageFormat) -> String {
    format.extensions_str().first().map(|e| e.to_ascii_uppercase()).unwrap_or_else(|| format!("{format:?}"))
}

fn decode_raster(bytes: &[u8], format: ImageFormat, limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(image_limits);
    // Parses the header only; no pixel data is decoded yet.
    let mut decoder = reader.into_decoder().map_err(|e| image_error(e, limits))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt(format!("image has a size of {width}x{height}")));
    }
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(DecodeError::TooLarge { width, height, max_pixels: limits.max_pixels });
    }
    // The decoded buffer plus its 8-bit RGB conversion must fit the allocation limit.
    let needed = decoder.total_bytes().saturating_add(width as u64 * height as u64 * 3);
    if needed > limits.max_alloc_bytes {
        return Err(DecodeError::AllocLimit { max_alloc_bytes: limits.max_alloc_bytes });
    }
    // A broken EXIF block must not cost the image: no orientation then, like Pillow.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(e, limits))?;
    image.apply_orientation(orientation);
    Ok(to_rgb_over_white(image))
}

fn image_error(error: ImageError, limits: &DecodeLimits) -> DecodeError {
    match error {
        ImageError::Limits(_) => DecodeError::AllocLimit { max_alloc_bytes: limits.max_alloc_bytes },
        ImageError::Unsupported(e) => DecodeError::Corrupt(one_line(&format!("unsupported variant: {e}"))),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Corrupt("file ends before the image data does".into())
        }
        other => DecodeError::Corrupt(one_line(&other.to_string())),
    }
}

/// An XML document whose root is `<svg>` (optionally behind a BOM, an XML declaration,
/// comments or a doctype).
fn looks_like_svg(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(64 * 1024)];
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = head.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(head.len());
    let head = &head[start..];
    let starts = |p: &[u8]| head.len() >= p.len() && head[..p.len()].eq_ignore_ascii_case(p);
    if !(starts(b"<?xml") || starts(b"<svg") || starts(b"<!--") || starts(b"<!doctype")) {
        return false;
    }
    head.windows(4).any(|w| w == b"<svg")
}

fn render_svg(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    use resvg::{tiny_skia, usvg};
    // Default options: no resources directory (nothing is read from disk), no fonts.
    let options = usvg::Options::default();
    let tree = usvg::Tree::from_data(bytes, &options)
        .map_err(|e| DecodeError::Corrupt(one_line(&format!("invalid SVG: {e}"))))?;
    let size = tree.size();
    let (w, h) = (size.width() as f64, size.height() as f64);
    if !(w.is_finite() && h.is_finite() && w > 0.0 && h > 0.0) {
        return Err(DecodeError::Corrupt("SVG has no usable size".into()));
    }
    let mut scale = (SVG_MAX_SIDE as f64 / w.max(h)).min(1.0);
    let area = w * h * scale * scale;
    if area > limits.max_pixels as f64 {
        scale *= (limits.max_pixels as f64 / area).sqrt();
    }
    let pw = ((w * scale).round() as u32).max(1);
    let ph = ((h * scale).round() as u32).max(1);
    if pw as u64 * ph as u64 > limits.max_pixels.max(1) || pw as u64 * ph as u64 * 7 > limits.max_alloc_bytes {
        return Err(DecodeError::TooLarge { width: pw, height: ph, max_pixels: limits.max_pixels });
    }
    let mut pixmap = tiny_skia::Pixmap::new(pw, ph)
        .ok_or_else(|| DecodeError::Corrupt(format!("cannot rasterise SVG at {pw}x{ph}")))?;
    let transform = tiny_skia::Transform::from_scale((pw as f64 / w) as f32, (ph as f64 / h) as f32);
    resvg::render(&tree, transform, &mut pixmap.as_mut());
    let mut rgba = RgbaImage::new(pw, ph);
    for (src, dst) in pixmap.pixels().iter().zip(rgba.pixels_mut()) {
        let c = src.demultiply();
        *dst = image::Rgba([c.red(), c.green(), c.blue(), c.alpha()]);
    }
    Ok(rgba_over_white(&rgba))
}

/// The first line of an error message, bounded, so it fits a warning line.
fn one_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or("").trim();
    if line.chars().count() > 200 {
        let cut: String = line.chars().take(200).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_list_is_case_insensitive() {
        assert!(is_image_path("a/b/photo.JPG"));
        assert!(is_image_path("x.TiFf"));
        assert!(is_image_path("drawing.svg"));
        assert!(!is_image_path("notes.txt"));
        assert!(!is_image_path("jpg"));
        assert!(!is_image_path("archive.png.gz"));
    }

    #[test]
    fn svg_sniffing() {
        assert!(looks_like_svg(b"\xEF\xBB\xBF  <?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>"));
        assert!(looks_like_svg(b"<svg width=\"1\" height=\"1\"/>"));
        assert!(!looks_like_svg(b"<?xml version=\"1.0\"?><html/>"));
        assert!(!looks_like_svg(b"hello <svg"));
    }

    #[test]
    fn one_line_keeps_only_the_first_line() {
        assert_eq!(one_line("  first \nsecond"), "first");
        assert_eq!(one_line(&"x".repeat(500)).chars().count(), 201);
    }
}
