//! Image bytes of every format capmatch accepts (JPEG, PNG, WebP, GIF, BMP, TIFF, SVG),
//! decoded and preprocessed as the indexer and an upload do.

use capmatch_core::image_io::{decode_bytes, DecodeLimits};
use capmatch_core::preprocess::ImageProcessor;

use crate::{read_dir_files, repo_root, Target};

pub struct ImageBytes;

/// The limits of the run: the defaults with fewer pixels, so a mutated header that asks
/// for a huge (valid) image is refused quickly rather than decoded for seconds; the
/// decoders' own limits are the product's.
fn limits() -> DecodeLimits {
    DecodeLimits::with_max_pixels(16 << 20)
}

impl Target for ImageBytes {
    fn name(&self) -> &'static str {
        "image"
    }

    fn seeds(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let root = repo_root().join("fixtures/images");
        let mut seeds: Vec<Vec<u8>> = read_dir_files(&root.join("formats"))?
            .into_iter()
            // `.rgb` files are the expected pixels of the tests, not inputs.
            .filter(|(p, _)| p.extension().is_some_and(|e| e != "rgb"))
            .map(|(_, bytes)| bytes)
            .collect();
        seeds.extend(
            read_dir_files(&root.join("real"))?
                .into_iter()
                .filter(|(p, _)| p.extension().is_some_and(|e| e == "png"))
                .map(|(_, b)| b),
        );
        Ok(seeds)
    }

    fn run(&self, input: &[u8]) -> anyhow::Result<()> {
        let image = decode_bytes(input, &limits())?;
        for processor in [ImageProcessor::clip_default(), ImageProcessor::blip_default()] {
            let pixels = processor.preprocess(&image)?;
            anyhow::ensure!(pixels.iter().all(|v| v.is_finite()), "non-finite pixel values");
        }
        Ok(())
    }
}
