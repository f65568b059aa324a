//! JPEG decoding figures on a set of files: `cargo run --release -p capmatch-core --example
//! jpeg_decode -- [--rounds N] [--dump DIR] [--errors] FILE...`
//!
//! - default: times, per file, in interleaved rounds (each round runs every decoder once):
//!   capmatch's decoder (libjpeg-turbo), the `image` crate's (zune-jpeg, capmatch's decoder
//!   before), and capmatch's decode + CLIP preprocessing at full and at reduced scale
//!   ([`ReducedScale`] for a 224 shortest edge). One JSON object per file and decoder on
//!   stdout, times in milliseconds (every round's figure, the caller takes the median): wall
//!   time and this thread's CPU time (which other processes on a shared machine disturb less);
//!   `tools/reference/jpeg_decode_bench.py` runs this interleaved with Pillow.
//! - `--dump DIR`: writes each full-resolution decode as raw RGB to `DIR/<file name>.rgb`
//!   (the bench script compares them with Pillow's pixels).
//! - `--errors`: how far reduced-scale decoding moves the model input, per file and margin:
//!   the 8-bit image after resize + crop (what the model's pixel tensor is made of) for
//!   CLIP (shortest edge 224, crop 224), CLIP at 336, and BLIP (384 x 384), compared with the
//!   full-resolution decode put through the same preprocessing.
//!
//! Prints figures; asserts nothing.

use std::path::PathBuf;
use std::time::Instant;

use capmatch_core::image_io::{decode_bytes, decode_bytes_with, DecodeLimits, DecodeOptions, ReducedScale};
use capmatch_core::preprocess::{ImageProcessor, ResizeTarget};
use capmatch_core::RgbImage;
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let mut rounds = 5;
    let mut dump: Option<PathBuf> = None;
    let mut errors = false;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => rounds = args.next().expect("--rounds N").parse()?,
            "--dump" => dump = Some(args.next().expect("--dump DIR").into()),
            "--errors" => errors = true,
            _ => files.push(PathBuf::from(arg)),
        }
    }
    for path in &files {
        let bytes = std::fs::read(path)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if let Some(dir) = &dump {
            let image = decode_bytes(&bytes, &DecodeLimits::default())?;
            std::fs::write(dir.join(format!("{name}.rgb")), image.as_raw())?;
        } else if errors {
            reduced_scale_errors(&name, &bytes)?;
        } else {
            time_decoders(&name, &bytes, rounds)?;
        }
    }
    Ok(())
}

fn time_decoders(name: &str, bytes: &[u8], rounds: usize) -> anyhow::Result<()> {
    let clip = ImageProcessor::clip_default();
    let reduced = DecodeOptions {
        reduced_scale: Some(ReducedScale::for_target(ResizeTarget::ShortestEdge(224))),
        ..Default::default()
    };
    let full = DecodeOptions::default();
    let (width, height) = decode_bytes(bytes, &DecodeLimits::default())?.dimensions();
    let decoders: [(&str, &dyn Fn() -> anyhow::Result<()>); 4] = [
        ("capmatch", &|| {
            decode_bytes_with(bytes, &full)?;
            Ok(())
        }),
        ("image-zune", &|| {
            std::hint::black_box(image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg)?.to_rgb8());
            Ok(())
        }),
        ("capmatch+clip", &|| {
            clip.preprocess(&decode_bytes_with(bytes, &full)?)?;
            Ok(())
        }),
        ("capmatch-reduced+clip", &|| {
            clip.preprocess(&decode_bytes_with(bytes, &reduced)?)?;
            Ok(())
        }),
    ];
    let mut times = vec![(Vec::new(), Vec::new()); decoders.len()];
    for _ in 0..rounds {
        for ((_, decode), (wall, cpu)) in decoders.iter().zip(&mut times) {
            let (t, c) = (Instant::now(), thread_cpu_ms());
            decode()?;
            wall.push(t.elapsed().as_secs_f64() * 1e3);
            cpu.push(thread_cpu_ms() - c);
        }
    }
    for ((decoder, _), (ms, cpu_ms)) in decoders.iter().zip(times) {
        println!(
            "{}",
            json!({"file": name, "width": width, "height": height, "decoder": decoder, "ms": ms, "cpu_ms": cpu_ms})
        );
    }
    Ok(())
}

/// CPU time this thread has used, in milliseconds.
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write to; the clock id is a constant libc knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

fn reduced_scale_errors(name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let full = decode_bytes(bytes, &DecodeLimits::default())?;
    let processors = [
        ("clip224", ImageProcessor::clip_default()),
        ("clip336", {
            let mut p = ImageProcessor::clip_default();
            p.resize = Some(ResizeTarget::ShortestEdge(336));
            p.center_crop = Some((336, 336));
            p
        }),
        ("blip384", ImageProcessor::blip_default()),
    ];
    for (label, processor) in &processors {
        let target = processor.resize.expect("these processors resize");
        let reference = model_pixels(processor, &full)?;
        // Margins that pick the same scale share one measurement.
        let mut measured: Vec<((u32, u32), serde_json::Value)> = Vec::new();
        for margin in [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0] {
            let options =
                DecodeOptions { reduced_scale: Some(ReducedScale { target, margin }), ..Default::default() };
            let reduced = decode_bytes_with(bytes, &options)?;
            if reduced.dimensions() == full.dimensions() {
                break; // full scale from here on: identical by construction
            }
            let figures = match measured.iter().find(|(size, _)| *size == reduced.dimensions()) {
                Some((_, figures)) => figures.clone(),
                None => {
                    let (max, mean, over) = compare(&model_pixels(processor, &reduced)?, &reference);
                    let figures = json!({"max": max, "mean": mean, "share_over_2": over});
                    measured.push((reduced.dimensions(), figures.clone()));
                    figures
                }
            };
            println!(
                "{}",
                json!({"file": name, "width": full.width(), "height": full.height(), "processor": label,
                       "margin": margin, "scale": format!("1/{}", full.width() / reduced.width()),
                       "decoded": [reduced.width(), reduced.height()], "figures": figures})
            );
        }
    }
    Ok(())
}

/// The 8-bit image the model's pixel tensor is computed from (resized, then centre-cropped):
/// the preprocessing without its rescale and normalisation, which are the same affine map of
/// each 8-bit value whatever the decoder.
fn model_pixels(processor: &ImageProcessor, image: &RgbImage) -> anyhow::Result<Vec<u8>> {
    let eight_bit = ImageProcessor { rescale_factor: None, normalize: None, ..processor.clone() };
    Ok(eight_bit.preprocess(image)?.into_iter().map(|v| v as u8).collect())
}

/// `(max abs difference, mean abs difference, share of values more than 2 levels apart)`.
fn compare(a: &[u8], b: &[u8]) -> (u8, f64, f64) {
    let mut max = 0;
    let mut sum = 0u64;
    let mut over = 0usize;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        sum += d as u64;
        over += (d > 2) as usize;
    }
    (max, sum as f64 / a.len() as f64, over as f64 / a.len() as f64)
}
