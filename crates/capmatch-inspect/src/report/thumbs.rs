//! Thumbnails: small JPEG files under `DIR/thumbs/`, named by content hash and written once
//! (a re-run, or another image with the same bytes, reuses the file).

use std::path::Path;

use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_core::preprocess::{resize_rgb, Resample};
use rayon::prelude::*;

use crate::source::Image;

/// Longest side of a thumbnail, in pixels (twice the displayed size, for sharp screens).
pub const SIZE: u32 = 240;
const QUALITY: f32 = 80.0;
/// The folder, relative to the report.
pub const DIR: &str = "thumbs";

/// The thumbnail's path relative to the report folder.
pub fn relative_path(image: &Image) -> String {
    format!("{DIR}/{}.jpg", &image.hash[..image.hash.len().min(24)])
}

/// Writes the thumbnails of `images` that do not exist yet, in parallel. Returns, per
/// image, whether its thumbnail exists afterwards (a file that is gone or no longer
/// decodes has none, and the report shows a placeholder instead).
pub fn write_all(report_dir: &Path, images: &[&Image]) -> Vec<bool> {
    let _ = std::fs::create_dir_all(report_dir.join(DIR));
    let results: Vec<Result<(), String>> = images
        .par_iter()
        .map(|image| {
            let path = report_dir.join(relative_path(image));
            if path.is_file() {
                return Ok(());
            }
            write_one(image, &path).map_err(|why| format!("{}: {why}", image.path))
        })
        .collect();
    // One line for all the failures (a gallery whose files moved would print thousands).
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first) = failed.first() {
        tracing::warn!("{} listed images have no thumbnail (the first: {first})", failed.len());
    }
    results.iter().map(Result::is_ok).collect()
}

fn write_one(image: &Image, path: &Path) -> Result<(), String> {
    let limits = DecodeLimits::default();
    let decoded = decode_file(Path::new(&image.path), &limits).map_err(|e| e.to_string())?;
    let (w, h) = decoded.dimensions();
    let scale = (SIZE as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
    let small = resize_rgb(&decoded, tw, th, Resample::Bicubic).map_err(|e| e.to_string())?;
    // Written under a temporary name and renamed, so that an interrupted run never leaves a
    // half-written thumbnail that the next run would take as done.
    let tmp = path.with_extension("jpg.tmp");
    let jpeg = encode_jpeg(&small, QUALITY).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, jpeg).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// JPEG bytes by libjpeg-turbo (the `mozjpeg` crate the decoder already links; the `image`
/// crate is built without its JPEG codec). libjpeg reports errors by unwinding, caught here.
pub fn encode_jpeg(img: &image::RgbImage, quality: f32) -> std::io::Result<Vec<u8>> {
    std::panic::catch_unwind(|| {
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        c.set_size(img.width() as usize, img.height() as usize);
        c.set_quality(quality);
        let mut started = c.start_compress(Vec::new())?;
        started.write_scanlines(img.as_raw())?;
        started.finish()
    })
    .unwrap_or_else(|_| Err(std::io::Error::other("the JPEG encoder failed")))
}
