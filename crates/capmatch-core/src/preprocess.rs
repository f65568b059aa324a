//! Image preprocessing with the semantics of transformers' `CLIPImageProcessor` and
//! `BlipImageProcessor` (PIL backend), read from a checkpoint's `preprocessor_config.json`.
//!
//! The pipeline, in transformers' order:
//! 1. resize (`do_resize`): `size` is either `{"shortest_edge": s}` (CLIP: the short side
//!    becomes `s`, the long side `int(s * long / short)`, truncated) or `{"height", "width"}`
//!    (BLIP: exactly that size). Resampling is Pillow's (`resample`, 3 = bicubic, antialiased
//!    when downscaling), ported from Pillow's `Resample.c` so that the 8-bit output is
//!    bit-identical (see [`resize_rgb`]).
//! 2. center crop (`do_center_crop`, CLIP only): `top = (h - crop_h) // 2` (floor), zero
//!    padding where the image is smaller than the crop.
//! 3. rescale (`do_rescale`): `float32(u8 * rescale_factor)` (computed in f64 as numpy does).
//! 4. normalize (`do_normalize`): `(x - mean) / std` in f32.
//!
//! `do_convert_rgb` is a no-op here: inputs are already 8-bit RGB (see [`crate::image_io`],
//! which composites alpha over white).
//!
//! Defaults for fields missing from the JSON are the processor class's own (transformers
//! omits nothing when saving, but older configs do), chosen from `image_processor_type`
//! (or `feature_extractor_type`): anything naming `Blip` gets BLIP's, everything else CLIP's.

use std::path::Path;

use candle_core::{Device, Tensor};
use fast_image_resize as fr;
use image::RgbImage;
use serde_json::Value;

use crate::image_io::ReducedScale;

/// transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`, written as transformers writes them
/// (numpy turns them into these f32 values too).
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot read {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("invalid preprocessor config: {0}")]
    Config(String),
    #[error("resize failed: {0}")]
    Resize(String),
    #[error("images of different processed sizes cannot be batched: {0:?} vs {1:?}")]
    RaggedBatch((usize, usize), (usize, usize)),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Pillow's resampling filters, numbered as `PIL.Image.Resampling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Nearest = 0,
    Lanczos = 1,
    Bilinear = 2,
    Bicubic = 3,
    Box = 4,
    Hamming = 5,
}

impl Resample {
    pub fn from_pil(code: u64) -> Result<Self, PreprocessError> {
        Ok(match code {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            other => return Err(PreprocessError::Config(format!("unknown PIL resample filter {other}"))),
        })
    }
}

/// What `size` asks of the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// `{"shortest_edge": s}`: keep the aspect ratio, short side = `s`.
    ShortestEdge(u32),
    /// `{"height": h, "width": w}`: exactly this size.
    Exact { height: u32, width: u32 },
}

impl ResizeTarget {
    /// Output `(height, width)` for an input of `(height, width)`, exactly as transformers'
    /// `get_resize_output_image_size(default_to_square=False)` computes it.
    pub fn output_size(self, height: u32, width: u32) -> (u32, u32) {
        match self {
            Self::Exact { height, width } => (height, width),
            Self::ShortestEdge(s) => {
                let (short, long) = if width <= height { (width, height) } else { (height, width) };
                // Python: int(s * long / short), float division then truncation.
                let new_long = (s as f64 * long as f64 / short as f64) as u32;
                if width <= height {
                    (new_long, s)
                } else {
                    (s, new_long)
                }
            }
        }
    }
}

/// A resolved `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// `None` when `do_resize` is false.
    pub resize: Option<ResizeTarget>,
    pub resample: Resample,
    /// `(height, width)`; `None` when `do_center_crop` is false.
    pub center_crop: Option<(u32, u32)>,
    /// `None` when `do_rescale` is false.
    pub rescale_factor: Option<f64>,
    /// `(mean, std)`; `None` when `do_normalize` is false.
    pub normalize: Option<([f32; 3], [f32; 3])>,
    pub do_convert_rgb: bool,
}

/// Which transformers class's defaults fill the gaps of a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessorKind {
    Clip,
    Blip,
}

impl ImageProcessor {
    /// Reads a `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, PreprocessError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PreprocessError::Io { path: path.to_path_buf(), source })?;
        Self::from_json_str(&text)
    }

    pub fn from_json_str(text: &str) -> Result<Self, PreprocessError> {
        let value: Value = serde_json::from_str(text).map_err(|e| PreprocessError::Config(e.to_string()))?;
        Self::from_config(&value)
    }

    /// Resolves a parsed `preprocessor_config.json`; the class named in it picks the defaults.
    pub fn from_config(config: &Value) -> Result<Self, PreprocessError> {
        let class = config
            .get("image_processor_type")
            .or_else(|| config.get("feature_extractor_type"))
            .and_then(Value::as_str)
            .unwrap_or("CLIPImageProcessor");
        let kind = if class.to_ascii_lowercase().contains("blip") { ProcessorKind::Blip } else { ProcessorKind::Clip };
        Self::from_config_with_defaults(config, kind)
    }

    /// Resolves a config with the defaults of `kind`'s class, whatever the config names.
    pub fn from_config_with_defaults(config: &Value, kind: ProcessorKind) -> Result<Self, PreprocessError> {
        let obj = config
            .as_object()
            .ok_or_else(|| PreprocessError::Config("preprocessor config is not a JSON object".into()))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let flag = |k: &str, default: bool| -> Result<bool, PreprocessError> {
            match get(k) {
                None => Ok(default),
                Some(v) => v.as_bool().ok_or_else(|| PreprocessError::Config(format!("{k} must be a boolean"))),
            }
        };
        let (default_size, default_to_square, default_crop) = match kind {
            ProcessorKind::Clip => (ResizeTarget::ShortestEdge(224), false, Some((224, 224))),
            ProcessorKind::Blip => (ResizeTarget::Exact { height: 384, width: 384 }, true, None),
        };

        let resize = if flag("do_resize", true)? {
            Some(match get("size") {
                None => default_size,
                Some(v) => parse_size(v, default_to_square)?,
            })
        } else {
            None
        };
        let resample = match get("resample") {
            None => Resample::Bicubic,
            Some(v) => Resample::from_pil(
                v.as_u64().ok_or_else(|| PreprocessError::Config("resample must be an integer".into()))?,
            )?,
        };
        let center_crop = if flag("do_center_crop", default_crop.is_some())? {
            Some(match get("crop_size") {
                None => default_crop.unwrap_or((224, 224)),
                Some(v) => match parse_size(v, true)? {
                    ResizeTarget::Exact { height, width } => (height, width),
                    ResizeTarget::ShortestEdge(_) => {
                        return Err(PreprocessError::Config("crop_size needs height and width".into()))
                    }
                },
            })
        } else {
            None
        };
        let rescale_factor = if flag("do_rescale", true)? {
            Some(match get("rescale_factor") {
                None => 1.0 / 255.0,
                Some(v) => v.as_f64().ok_or_else(|| PreprocessError::Config("rescale_factor must be a number".into()))?,
            })
        } else {
            None
        };
        let normalize = if flag("do_normalize", true)? {
            let mean = match get("image_mean") {
                None => OPENAI_CLIP_MEAN,
                Some(v) => parse_triple(v, "image_mean")?,
            };
            let std = match get("image_std") {
                None => OPENAI_CLIP_STD,
                Some(v) => parse_triple(v, "image_std")?,
            };
            Some((mean, std))
        } else {
            None
        };
        let do_convert_rgb = flag("do_convert_rgb", true)?;
        Ok(Self { resize, resample, center_crop, rescale_factor, normalize, do_convert_rgb })
    }

    /// `CLIPImageProcessor()` with its defaults (openai/clip-vit-base-patch32's config).
    pub fn clip_default() -> Self {
        Self::from_config_with_defaults(&Value::Object(Default::default()), ProcessorKind::Clip)
            .expect("defaults are valid")
    }

    /// `BlipImageProcessor()` with its defaults (384x384, OpenAI CLIP mean/std).
    pub fn blip_default() -> Self {
        Self::from_config_with_defaults(&Value::Object(Default::default()), ProcessorKind::Blip)
            .expect("defaults are valid")
    }

    /// `(height, width)` of the tensor produced for an input of `width` x `height` pixels.
    pub fn output_size(&self, width: u32, height: u32) -> (usize, usize) {
        let (mut h, mut w) = (height, width);
        if let Some(target) = self.resize {
            (h, w) = target.output_size(h, w);
        }
        if let Some((ch, cw)) = self.center_crop {
            (h, w) = (ch, cw);
        }
        (h as usize, w as usize)
    }

    /// Reduced-scale JPEG decoding suited to this preprocessing (its resize target, with
    /// [`ReducedScale::DEFAULT_MARGIN`]); `None` when nothing is resized. For the query path:
    /// the pixels are close to, not identical with, a full decode (see [`ReducedScale`]).
    pub fn reduced_scale(&self) -> Option<ReducedScale> {
        self.resize.map(ReducedScale::for_target)
    }

    /// Resizes (if configured) with Pillow's semantics; the 8-bit image before the crop.
    pub fn resize_image(&self, image: &RgbImage) -> Result<RgbImage, PreprocessError> {
        let Some(target) = self.resize else { return Ok(image.clone()) };
        let (h, w) = target.output_size(image.height(), image.width());
        resize_rgb(image, w, h, self.resample)
    }

    /// The full pipeline for one image: `3 * H * W` floats, channel-major (CHW).
    pub fn preprocess(&self, image: &RgbImage) -> Result<Vec<f32>, PreprocessError> {
        let resized;
        let img = if let Some(target) = self.resize {
            let (h, w) = target.output_size(image.height(), image.width());
            if (w, h) == image.dimensions() {
                image // Pillow returns a copy for a same-size resize.
            } else {
                resized = resize_rgb(image, w, h, self.resample)?;
                &resized
            }
        } else {
            image
        };
        let (src_w, src_h) = (img.width() as i64, img.height() as i64);
        let (out_h, out_w) = match self.center_crop {
            Some((ch, cw)) => (ch as i64, cw as i64),
            None => (src_h, src_w),
        };
        // numpy's `(orig - crop) // 2` floors; a negative offset means zero padding.
        let top = (src_h - out_h).div_euclid(2);
        let left = (src_w - out_w).div_euclid(2);

        let plane = (out_h * out_w) as usize;
        let mut out = vec![0f32; 3 * plane];
        let raw = img.as_raw();
        let value = |v: u8, c: usize| -> f32 {
            let mut x = match self.rescale_factor {
                Some(f) => (v as f64 * f) as f32,
                None => v as f32,
            };
            if let Some((mean, std)) = &self.normalize {
                x = (x - mean[c]) / std[c];
            }
            x
        };
        for y in 0..out_h {
            let sy = y + top;
            for x in 0..out_w {
                let sx = x + left;
                let idx = (y * out_w + x) as usize;
                let inside = sy >= 0 && sy < src_h && sx >= 0 && sx < src_w;
                for c in 0..3 {
                    let v = if inside { raw[((sy * src_w + sx) * 3) as usize + c] } else { 0 };
                    out[c * plane + idx] = value(v, c);
                }
            }
        }
        Ok(out)
    }

    /// Preprocesses a batch into an `(N, 3, H, W)` f32 tensor on `device`.
    pub fn batch(&self, images: &[RgbImage], device: &Device) -> Result<Tensor, PreprocessError> {
        let mut data = Vec::new();
        let mut shape: Option<(usize, usize)> = None;
        for image in images {
            let hw = self.output_size(image.width(), image.height());
            match shape {
                None => shape = Some(hw),
                Some(first) if first != hw => return Err(PreprocessError::RaggedBatch(first, hw)),
                _ => {}
            }
            data.extend(self.preprocess(image)?);
        }
        let (h, w) = shape.unwrap_or_else(|| self.output_size(1, 1));
        Ok(Tensor::from_vec(data, (images.len(), 3, h, w), device)?)
    }
}

/// Pillow-equivalent resize of an 8-bit RGB image to `width` x `height`.
///
/// Convolution filters (everything but `Nearest`) are a port of Pillow's `Resample.c`:
/// coefficients from the filter scaled by the downscale factor (antialiasing), normalised,
/// turned into 22-bit fixed point; two passes (horizontal then vertical, or the reverse when
/// Pillow picks it, see [`vertical_first`]), rounded to 8 bits in between, each skipped when
/// that dimension is unchanged. The output is bit-identical to
/// `PIL.Image.resize` (checked against Pillow in tests/clip_parity.rs). fast_image_resize
/// is not used for these: it runs the vertical pass first and keeps only 15-bit
/// coefficients, which moves ~0.2% of the values by one level (and up to ~10 levels with
/// the passes swapped). `Nearest` goes through fast_image_resize.
pub fn resize_rgb(image: &RgbImage, width: u32, height: u32, resample: Resample) -> Result<RgbImage, PreprocessError> {
    if width == 0 || height == 0 || image.width() == 0 || image.height() == 0 {
        return Err(PreprocessError::Resize(format!(
            "cannot resize {}x{} to {width}x{height}",
            image.width(),
            image.height()
        )));
    }
    if image.dimensions() == (width, height) {
        return Ok(image.clone());
    }
    let Some(filter) = PilFilter::of(resample) else { return resize_nearest(image, width, height) };
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    let horizontal = |src: &[u8], h: usize| resample_horizontal(src, in_w, h, &PilCoeffs::new(in_w, out_w, filter));
    let vertical = |src: &[u8], w: usize| resample_vertical(src, w, &PilCoeffs::new(in_h, out_h, filter));
    let src = image.as_raw();
    let out = if out_w == in_w {
        vertical(src, in_w)
    } else if out_h == in_h {
        horizontal(src, in_h)
    } else if vertical_first(in_w, in_h, out_w, out_h) {
        horizontal(&vertical(src, in_w), out_h)
    } else {
        vertical(&horizontal(src, in_h), out_w)
    };
    RgbImage::from_raw(width, height, out).ok_or_else(|| PreprocessError::Resize("resized buffer has the wrong length".into()))
}

/// Pillow 13 (the PIL backend transformers uses here; older Pillows always went horizontal
/// first) runs the vertical pass first when the height shrinks by more than twice
/// what the width shrinks by (`ImagingResampleInner`); the order changes the 8-bit rounding
/// of the intermediate image, so it is followed exactly. (Checked against Pillow 13 on 298
/// random size pairs: all bit-identical.)
fn vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let dy = in_h as i64 - out_h as i64;
    let dx = in_w as i64 - out_w as i64;
    dy > 0 && dy > 2 * dx
}

fn resize_nearest(image: &RgbImage, width: u32, height: u32) -> Result<RgbImage, PreprocessError> {
    let src = fr::images::Image::from_vec_u8(image.width(), image.height(), image.as_raw().clone(), fr::PixelType::U8x3)
        .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    let mut dst = fr::images::Image::new(width, height, fr::PixelType::U8x3);
    let options = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Nearest).use_alpha(false);
    fr::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .ok_or_else(|| PreprocessError::Resize("resized buffer has the wrong length".into()))
}

/// Pillow's `PRECISION_BITS` for 8-bit images.
const PIL_PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's filters (`Resample.c`): the kernel and its support.
#[derive(Debug, Clone, Copy)]
enum PilFilter {
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl PilFilter {
    fn of(resample: Resample) -> Option<Self> {
        Some(match resample {
            Resample::Nearest => return None,
            Resample::Box => Self::Box,
            Resample::Bilinear => Self::Bilinear,
            Resample::Hamming => Self::Hamming,
            Resample::Bicubic => Self::Bicubic,
            Resample::Lanczos => Self::Lanczos,
        })
    }

    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        }
        match self {
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Self::Bicubic => {
                // Keys' cubic with a = -0.5 (Catmull-Rom), as Pillow writes it.
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-image box.
struct PilCoeffs {
    ksize: usize,
    /// Per output index: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` fixed-point weights per output index.
    weights: Vec<i32>,
}

impl PilCoeffs {
    fn new(in_size: usize, out_size: usize, filter: PilFilter) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) truncates toward zero; clamping to 0 afterwards makes that moot.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(xmax) {
                let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let row = &mut weights[xx * ksize..(xx + 1) * ksize];
            for x in 0..xmax {
                let w = if ww != 0.0 { k[x] / ww } else { k[x] };
                let scaled = w * (1i64 << PIL_PRECISION_BITS) as f64;
                row[x] = if w < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
            }
            bounds.push((xmin, xmax));
        }
        Self { ksize, bounds, weights }
    }

    fn taps(&self, out: usize) -> (usize, &[i32]) {
        let (xmin, n) = self.bounds[out];
        (xmin, &self.weights[out * self.ksize..out * self.ksize + n])
    }
}

#[inline]
fn pil_clip8(acc: i32) -> u8 {
    if acc >= (1 << PIL_PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PIL_PRECISION_BITS) as u8
    }
}

const PIL_HALF: i32 = 1 << (PIL_PRECISION_BITS - 1);

/// Rows of interleaved RGB, `in_w` wide, resampled to `coeffs.bounds.len()` columns.
fn resample_horizontal(src: &[u8], in_w: usize, in_h: usize, coeffs: &PilCoeffs) -> Vec<u8> {
    let out_w = coeffs.bounds.len();
    let mut out = vec![0u8; out_w * in_h * 3];
    for (src_row, dst_row) in src.chunks_exact(in_w * 3).zip(out.chunks_exact_mut(out_w * 3)) {
        for (xx, dst) in dst_row.chunks_exact_mut(3).enumerate() {
            let (xmin, k) = coeffs.taps(xx);
            let (mut r, mut g, mut b) = (PIL_HALF, PIL_HALF, PIL_HALF);
            for (px, &w) in src_row[xmin * 3..(xmin + k.len()) * 3].chunks_exact(3).zip(k) {
                r += px[0] as i32 * w;
                g += px[1] as i32 * w;
                b += px[2] as i32 * w;
            }
            dst[0] = pil_clip8(r);
            dst[1] = pil_clip8(g);
            dst[2] = pil_clip8(b);
        }
    }
    out
}

/// Interleaved RGB rows, `width` wide, resampled to `coeffs.bounds.len()` rows.
fn resample_vertical(src: &[u8], width: usize, coeffs: &PilCoeffs) -> Vec<u8> {
    let out_h = coeffs.bounds.len();
    let stride = width * 3;
    let mut out = vec![0u8; out_h * stride];
    let mut acc = vec![0i32; stride];
    for (yy, dst_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, k) = coeffs.taps(yy);
        acc.fill(PIL_HALF);
        for (y, &w) in k.iter().enumerate() {
            let row = &src[(ymin + y) * stride..(ymin + y + 1) * stride];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as i32 * w;
            }
        }
        for (d, &a) in dst_row.iter_mut().zip(&acc) {
            *d = pil_clip8(a);
        }
    }
    out
}

/// transformers' `get_size_dict`: an int is square (`default_to_square`) or a shortest edge;
/// a dict names `shortest_edge` or `height` + `width`; a 2-list is `[height, width]`.
fn parse_size(v: &Value, default_to_square: bool) -> Result<ResizeTarget, PreprocessError> {
    let as_u32 = |v: &Value, what: &str| -> Result<u32, PreprocessError> {
        v.as_u64()
            .filter(|&n| n > 0 && n <= u32::MAX as u64)
            .map(|n| n as u32)
            .ok_or_else(|| PreprocessError::Config(format!("{what} must be a positive integer, got {v}")))
    };
    match v {
        Value::Number(_) => {
            let s = as_u32(v, "size")?;
            Ok(if default_to_square { ResizeTarget::Exact { height: s, width: s } } else { ResizeTarget::ShortestEdge(s) })
        }
        Value::Array(items) if items.len() == 2 => {
            Ok(ResizeTarget::Exact { height: as_u32(&items[0], "height")?, width: as_u32(&items[1], "width")? })
        }
        Value::Array(items) if items.len() == 1 => parse_size(&items[0], default_to_square),
        Value::Object(map) => {
            let field = |k: &str| map.get(k).filter(|v| !v.is_null());
            if let (Some(h), Some(w)) = (field("height"), field("width")) {
                Ok(ResizeTarget::Exact { height: as_u32(h, "height")?, width: as_u32(w, "width")? })
            } else if let Some(s) = field("shortest_edge") {
                if field("longest_edge").is_some() {
                    return Err(PreprocessError::Config("size with both shortest_edge and longest_edge is not supported".into()));
                }
                Ok(ResizeTarget::ShortestEdge(as_u32(s, "shortest_edge")?))
            } else {
                Err(PreprocessError::Config(format!("unsupported size {v}")))
            }
        }
        _ => Err(PreprocessError::Config(format!("unsupported size {v}"))),
    }
}

fn parse_triple(v: &Value, what: &str) -> Result<[f32; 3], PreprocessError> {
    let bad = || PreprocessError::Config(format!("{what} must be a number or a list of 3 numbers, got {v}"));
    match v {
        Value::Number(n) => {
            let x = n.as_f64().ok_or_else(bad)? as f32;
            Ok([x; 3])
        }
        Value::Array(items) if items.len() == 3 => {
            let mut out = [0f32; 3];
            for (o, item) in out.iter_mut().zip(items) {
                *o = item.as_f64().ok_or_else(bad)? as f32;
            }
            Ok(out)
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIP_B32: &str = r#"{
      "crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
      "feature_extractor_type": "CLIPFeatureExtractor",
      "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
      "resample": 3, "size": 224
    }"#;

    const BLIP: &str = r#"{
      "do_normalize": true, "do_rescale": true, "do_resize": true,
      "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "BlipImageProcessor",
      "image_std": [0.26862954, 0.26130258, 0.27577711], "processor_class": "BlipProcessor",
      "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": 384, "width": 384}
    }"#;

    #[test]
    fn legacy_clip_config_means_shortest_edge_and_square_crop() {
        let p = ImageProcessor::from_json_str(CLIP_B32).unwrap();
        assert_eq!(p, ImageProcessor::clip_default());
        assert_eq!(p.resize, Some(ResizeTarget::ShortestEdge(224)));
        assert_eq!(p.center_crop, Some((224, 224)));
        assert_eq!(p.resample, Resample::Bicubic);
        assert_eq!(p.output_size(640, 480), (224, 224));
    }

    #[test]
    fn blip_config_resizes_to_exact_size_without_crop() {
        let p = ImageProcessor::from_json_str(BLIP).unwrap();
        assert_eq!(p, ImageProcessor::blip_default());
        assert_eq!(p.resize, Some(ResizeTarget::Exact { height: 384, width: 384 }));
        assert_eq!(p.center_crop, None);
        assert_eq!(p.output_size(640, 480), (384, 384));
        let img = RgbImage::from_pixel(500, 300, image::Rgb([255, 0, 128]));
        let t = p.batch(&[img.clone(), img], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 384, 384]);
        // A flat image stays flat through bicubic resampling.
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let plane = 384 * 384;
        let expect = |u: f32, c: usize| ((u as f64 / 255.0) as f32 - OPENAI_CLIP_MEAN[c]) / OPENAI_CLIP_STD[c];
        assert!((v[0] - expect(255.0, 0)).abs() < 1e-6);
        assert!((v[plane + 7] - expect(0.0, 1)).abs() < 1e-6);
        assert!((v[2 * plane + 1000] - expect(128.0, 2)).abs() < 1e-6);
    }

    #[test]
    fn shortest_edge_output_size_truncates_like_python() {
        let t = ResizeTarget::ShortestEdge(224);
        // int(224 * 500 / 333) = int(336.336...) = 336 ; (h, w)
        assert_eq!(t.output_size(333, 500), (224, 336));
        assert_eq!(t.output_size(500, 333), (336, 224));
        assert_eq!(t.output_size(100, 100), (224, 224));
        // int(224 * 3 / 7 ... ) cases where float rounding matters: 224*1000/3 = 74666.66 -> 74666
        assert_eq!(t.output_size(3, 1000), (224, 74666));
    }

    #[test]
    fn center_crop_floors_offsets_and_zero_pads_small_images() {
        let p = ImageProcessor {
            resize: None,
            resample: Resample::Bicubic,
            center_crop: Some((2, 4)),
            rescale_factor: None,
            normalize: None,
            do_convert_rgb: true,
        };
        // 3 wide, 5 tall: rows offset (5-2)//2 = 1; columns (3-4)//2 = -1 -> one zero column left.
        let img = RgbImage::from_fn(3, 5, |x, y| image::Rgb([(10 * y + x + 1) as u8, 0, 0]));
        let v = p.preprocess(&img).unwrap();
        assert_eq!(&v[..8], &[0.0, 11.0, 12.0, 13.0, 0.0, 21.0, 22.0, 23.0]);
    }

    #[test]
    fn same_size_image_is_not_resampled() {
        let p = ImageProcessor::clip_default();
        let img = RgbImage::from_fn(224, 224, |x, y| image::Rgb([(x * 7 + y) as u8, (y * 3) as u8, (x ^ y) as u8]));
        let v = p.preprocess(&img).unwrap();
        let plane = 224 * 224;
        let px = img.get_pixel(17, 5);
        let got = v[plane + 5 * 224 + 17];
        let want = ((px[1] as f64 / 255.0) as f32 - OPENAI_CLIP_MEAN[1]) / OPENAI_CLIP_STD[1];
        assert_eq!(got, want);
    }
}
