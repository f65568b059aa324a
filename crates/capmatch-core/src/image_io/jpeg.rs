//! JPEG decoding with libjpeg-turbo's decoder, set up the way Pillow sets it up, so that the
//! pixels are the ones `PIL.Image.open(f).convert("RGB")` returns.
//!
//! The decoder is the libjpeg-turbo derivative that the `mozjpeg` crate builds from source
//! (its decoder is libjpeg-turbo's; mozjpeg only changes the encoder). Pillow's choices
//! (`JpegImagePlugin.py`, `JpegDecode.c`), followed here:
//! - the colour mode comes from the number of components: 1 → greyscale, 3 → RGB (libjpeg
//!   converts from YCbCr, or not, as the JFIF/Adobe markers say), 4 → CMYK (libjpeg turns
//!   Adobe YCCK into CMYK); anything else is refused;
//! - libjpeg's defaults: the accurate integer IDCT (`JDCT_ISLOW`) and fancy (triangular)
//!   chroma upsampling;
//! - 4-component data is always taken as Adobe's inverted CMYK (Pillow's raw mode `CMYK;I`),
//!   then converted to RGB with Pillow's `cmyk2rgb` arithmetic;
//! - a file whose data ends before the last row is decoded is an error ("image file is
//!   truncated"); libjpeg itself only warns and pads with grey, so the end of the input is
//!   watched here. Bytes after the end-of-image marker are ignored.
//!
//! One deliberate difference: a file without its end-of-image marker is refused even when
//! every row could be decoded (Pillow decodes it when the last entropy-coded bits happen to
//! suffice), so that a cut file is always a skip with its reason, however lucky the cut.
//!
//! libjpeg reports fatal errors through a callback that must not return; the `mozjpeg` crate
//! makes it unwind (`resume_unwind`, no panic hook) through the C code, which is built with
//! unwind tables for that. [`decode`] catches it and returns [`DecodeError::Corrupt`], so no
//! input panics or aborts (the workspace must keep `panic = "unwind"`).

use std::cell::Cell;
use std::io::{self, BufRead, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use image::RgbImage;
use mozjpeg::{ColorSpace, DctMethod, Decompress, Marker};

use super::{one_line, DecodeError, DecodeOptions};
use crate::preprocess::ResizeTarget;

/// Decodes a JPEG held in memory into 8-bit RGB, EXIF orientation applied.
pub(super) fn decode(bytes: &[u8], options: &DecodeOptions) -> Result<RgbImage, DecodeError> {
    let input_ended = Cell::new(false);
    let result = catch_unwind(AssertUnwindSafe(|| decode_unguarded(bytes, options, &input_ended)));
    match result {
        Ok(decoded) => decoded,
        // A libjpeg error after the input ran out is the truncation, not its symptom.
        Err(_) if input_ended.get() => Err(truncated()),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown libjpeg error".to_string());
            let message = message.strip_prefix("libjpeg fatal error: ").unwrap_or(&message);
            Err(DecodeError::Corrupt(one_line(&format!("JPEG: {message}"))))
        }
    }
}

fn truncated() -> DecodeError {
    DecodeError::Corrupt("JPEG file is truncated (its data ends before the image does)".into())
}

fn decode_unguarded(bytes: &[u8], options: &DecodeOptions, input_ended: &Cell<bool>) -> Result<RgbImage, DecodeError> {
    let limits = &options.limits;
    let source = WatchedInput { rest: bytes, ended: input_ended };
    let mut decoder = Decompress::builder()
        .with_markers(&[Marker::APP(1)])
        .from_reader(source)
        .map_err(|e| if input_ended.get() { truncated() } else { DecodeError::Corrupt(one_line(&format!("JPEG: {e}"))) })?;

    // The header is read: check the size before libjpeg allocates anything for the pixels.
    let (width, height) = (decoder.width() as u32, decoder.height() as u32);
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt(format!("image has a size of {width}x{height}")));
    }
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(DecodeError::TooLarge { width, height, max_pixels: limits.max_pixels });
    }
    let out_space = match decoder.components().len() {
        1 => ColorSpace::JCS_GRAYSCALE,
        3 => ColorSpace::JCS_RGB,
        4 => ColorSpace::JCS_CMYK,
        n => return Err(DecodeError::Corrupt(format!("JPEG with {n} components (Pillow reads 1, 3 or 4)"))),
    };
    let orientation = exif_orientation(&decoder);
    let scale = match &options.reduced_scale {
        Some(reduced) => reduced.numerator_for(width, height, orientation),
        None => 8,
    };
    let (out_w, out_h) = (scaled(width, scale), scaled(height, scale));
    // libjpeg keeps the whole coefficient array of a progressive file (2 bytes per sample);
    // counted for every file, since the header alone does not say which kind this is here.
    let coefficients: u64 = decoder
        .components()
        .iter()
        .map(|c| c.width_in_blocks as u64 * c.height_in_blocks as u64 * 64 * 2)
        .sum();
    let needed = coefficients.saturating_add(out_w as u64 * out_h as u64 * 3);
    if needed > limits.max_alloc_bytes {
        return Err(DecodeError::AllocLimit { max_alloc_bytes: limits.max_alloc_bytes });
    }

    // Pillow's settings (they are libjpeg's defaults; set so that they stay so).
    decoder.dct_method(DctMethod::IntegerSlow);
    decoder.do_fancy_upsampling(true);
    if scale != 8 {
        decoder.scale(scale);
    }
    let mut started = decoder.to_colorspace(out_space).map_err(|e| DecodeError::Corrupt(one_line(&format!("JPEG: {e}"))))?;
    // A progressive file is read whole by now.
    if input_ended.get() {
        return Err(truncated());
    }
    let (w, h) = (started.width(), started.height());
    if (w as u32, h as u32) != (out_w, out_h) {
        return Err(DecodeError::Corrupt(format!("JPEG decodes to {w}x{h}, expected {out_w}x{out_h}")));
    }
    let read_error = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => truncated(),
        _ => DecodeError::Corrupt(one_line(&format!("JPEG: {e}"))),
    };
    let mut rgb = vec![0u8; w * h * 3];
    match out_space {
        ColorSpace::JCS_RGB => {
            started.read_scanlines_into(&mut rgb[..]).map_err(read_error)?;
        }
        ColorSpace::JCS_GRAYSCALE => {
            let mut row = vec![0u8; w];
            for out in rgb.chunks_exact_mut(w * 3) {
                started.read_scanlines_into(&mut row[..]).map_err(read_error)?;
                for (px, &v) in out.chunks_exact_mut(3).zip(&row) {
                    px.fill(v);
                }
            }
        }
        _ => {
            let mut row = vec![0u8; w * 4];
            for out in rgb.chunks_exact_mut(w * 3) {
                started.read_scanlines_into(&mut row[..]).map_err(read_error)?;
                inverted_cmyk_to_rgb(&row, out);
            }
        }
    }
    // Pillow stops with "image file is truncated" when the decoder asks for more data than
    // the file has before the last row; libjpeg would have padded the rest with grey.
    if input_ended.get() {
        return Err(truncated());
    }
    // Reads up to the end-of-image marker, which must be there (see the module doc).
    started.finish().map_err(|e| DecodeError::Corrupt(one_line(&format!("JPEG: {e}"))))?;
    if input_ended.get() {
        return Err(DecodeError::Corrupt("JPEG file is truncated (no end-of-image marker)".into()));
    }

    let rgb = RgbImage::from_raw(w as u32, h as u32, rgb)
        .ok_or_else(|| DecodeError::Corrupt("decoded JPEG buffer has the wrong length".into()))?;
    let mut image = image::DynamicImage::ImageRgb8(rgb);
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// `size * numerator / 8`, rounded up, as libjpeg sizes a scaled output (`jdiv_round_up`).
fn scaled(size: u32, numerator: u8) -> u32 {
    (size as u64 * numerator as u64).div_ceil(8) as u32
}

/// The orientation in the first `Exif` APP1 segment, as Pillow's `exif_transpose` reads it;
/// no orientation when there is none or the block is broken.
fn exif_orientation<R>(decoder: &Decompress<R>) -> Orientation {
    decoder
        .markers()
        .find_map(|m| m.data.strip_prefix(b"Exif\0\0"))
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms)
}

/// Pillow's `CMYK;I` unpacking (every channel inverted: Adobe's convention, which Pillow
/// assumes for all 4-component JPEGs) followed by its `cmyk2rgb`:
/// `out = clip(nk - nk * c / 255)` with `nk = 255 - k` and Pillow's rounded `MULDIV255`.
fn inverted_cmyk_to_rgb(cmyk: &[u8], rgb: &mut [u8]) {
    fn muldiv255(a: u32, b: u32) -> u32 {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    }
    for (src, dst) in cmyk.chunks_exact(4).zip(rgb.chunks_exact_mut(3)) {
        let [c, m, y, k] = [0, 1, 2, 3].map(|i| 255 - src[i] as u32);
        let nk = 255 - k;
        for (out, ink) in dst.iter_mut().zip([c, m, y]) {
            *out = (nk - muldiv255(ink, nk)) as u8;
        }
    }
}

/// The input as libjpeg's source manager sees it; remembers whether libjpeg asked for bytes
/// past the end (where it would otherwise insert a fake end-of-image marker and go on).
struct WatchedInput<'a> {
    rest: &'a [u8],
    ended: &'a Cell<bool>,
}

impl Read for WatchedInput<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.fill_buf()?.len().min(buf.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for WatchedInput<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.rest.is_empty() {
            self.ended.set(true);
        }
        Ok(self.rest)
    }

    fn consume(&mut self, amount: usize) {
        self.rest = &self.rest[amount.min(self.rest.len())..];
    }
}

/// Reduced-scale decoding for images far larger than the model input: libjpeg's DCT scaling
/// (1/2, 1/4, 1/8) skips most of the inverse transform and of the upsampling.
///
/// The pixels differ from a full decode followed by the same resize (a DCT-domain reduction
/// is not Pillow's antialiased bicubic), so this is off unless asked for; see the README
/// ("Images") for the rule and the measured effect on the model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReducedScale {
    /// The resize the decoded image goes through next (the preprocessor's `size`).
    pub target: ResizeTarget,
    /// How many times the pixels the resize needs must be left on each resized side: a
    /// scale is used only if the reduced image is at least `margin` times larger than
    /// `target` there.
    pub margin: f64,
}

impl ReducedScale {
    /// The margin chosen from measurements on real photos (README, "Images"): with it, the
    /// 8-bit model input stayed within 16 levels of the full decode's at worst, 0.52 levels
    /// on average for the worst image, 0.15 for the median one.
    pub const DEFAULT_MARGIN: f64 = 3.0;

    /// Reduced scale for images that will be resized to `target`, with [`Self::DEFAULT_MARGIN`].
    pub fn for_target(target: ResizeTarget) -> Self {
        Self { target, margin: Self::DEFAULT_MARGIN }
    }

    /// libjpeg's `scale_num` over a denominator of 8 (8 = full size) for an image stored as
    /// `width` x `height` and shown with `orientation`: the smallest of 1, 2, 4 that keeps
    /// the margin and divides both sides exactly, else 8.
    ///
    /// Exact division keeps the geometry of the full image: each reduced pixel covers whole
    /// source pixels, so the resize samples the same places, and a shortest-edge resize gets
    /// the same output size (hence the same centre crop). A partial edge block would shift
    /// the whole grid, and a crop one pixel off moves every pixel of the model input.
    pub fn numerator_for(&self, width: u32, height: u32, orientation: Orientation) -> u8 {
        let swaps = matches!(
            orientation,
            Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
        );
        let (width, height) = if swaps { (height, width) } else { (width, height) };
        let enough = |needed: u32, have: u32| have as f64 >= self.margin * needed as f64;
        [1u8, 2, 4]
            .into_iter()
            .find(|&n| {
                let divisor = 8 / n as u32;
                if width % divisor != 0 || height % divisor != 0 {
                    return false;
                }
                let (w, h) = (width / divisor, height / divisor);
                match self.target {
                    ResizeTarget::ShortestEdge(s) => enough(s, w.min(h)),
                    ResizeTarget::Exact { height: th, width: tw } => enough(tw, w) && enough(th, h),
                }
            })
            .unwrap_or(8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_is_pillows() {
        // Stored (libjpeg) values are inverted inks: 255 = no ink.
        let mut out = [0u8; 3];
        inverted_cmyk_to_rgb(&[255, 255, 255, 255], &mut out);
        assert_eq!(out, [255, 255, 255]); // no ink at all: white
        inverted_cmyk_to_rgb(&[0, 0, 0, 0], &mut out);
        assert_eq!(out, [0, 0, 0]); // all inks: black
        // c = 255 - 55 = 200, k = 255 - 235 = 20: nk = 235, 235 - (200*235 + 128 ...)/255.
        inverted_cmyk_to_rgb(&[55, 255, 155, 235], &mut out);
        let muldiv = |a: u32, b: u32| ((a * b + 128) + ((a * b + 128) >> 8)) >> 8;
        assert_eq!(out, [(235 - muldiv(200, 235)) as u8, 235, (235 - muldiv(100, 235)) as u8]);
    }

    #[test]
    fn scaled_sizes_round_up_like_libjpeg() {
        assert_eq!(scaled(4000, 1), 500);
        assert_eq!(scaled(4001, 1), 501);
        assert_eq!(scaled(4001, 4), 2001);
        assert_eq!(scaled(7, 8), 7);
    }

    #[test]
    fn reduced_scale_keeps_the_margin_on_the_resized_sides() {
        let clip = ReducedScale { target: ResizeTarget::ShortestEdge(224), margin: 2.0 };
        let none = Orientation::NoTransforms;
        // 4000x3000: 1/8 leaves 375 < 448 on the short side, 1/4 leaves 750.
        assert_eq!(clip.numerator_for(4000, 3000, none), 2);
        assert_eq!(clip.numerator_for(8000, 6000, none), 1);
        assert_eq!(clip.numerator_for(1600, 1200, none), 4);
        assert_eq!(clip.numerator_for(800, 600, none), 8);
        // A panorama: only the short side matters for shortest-edge resizing.
        assert_eq!(clip.numerator_for(20000, 880, none), 8);
        // Sides that 8 does not divide fall back to 1/4, or 1/2, or full size.
        assert_eq!(clip.numerator_for(8000, 6004, none), 2);
        assert_eq!(clip.numerator_for(8000, 6002, none), 4);
        assert_eq!(clip.numerator_for(8000, 6001, none), 8);
        // An exact target needs the margin on both sides, after EXIF rotation.
        let wide = ReducedScale { target: ResizeTarget::Exact { height: 100, width: 400 }, margin: 2.0 };
        assert_eq!(wide.numerator_for(6400, 1600, none), 1);
        assert_eq!(wide.numerator_for(1600, 6400, Orientation::Rotate90), 1);
        assert_eq!(wide.numerator_for(1600, 6400, none), 4); // the width needs 1/2
        assert_eq!(wide.numerator_for(1000, 6400, none), 8);
    }
}
