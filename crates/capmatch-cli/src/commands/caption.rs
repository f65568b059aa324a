//! `capmatch caption`: BLIP / BLIP-2 captions of images, in input order.

use capmatch_core::captioner::CaptionOptions;
use serde::Serialize;

use super::embed::truncate;
use super::models::{decode_all, device, load_captioner_arg};
use crate::CaptionArgs;

/// Images go through the captioner in slices of this size, bounding memory.
const BATCH: usize = 8;

#[derive(Serialize)]
struct Captioned {
    image: String,
    caption: String,
}

pub fn run(args: CaptionArgs) -> anyhow::Result<()> {
    let settings = CaptionOptions {
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: args.min_new_tokens,
        num_beams: args.beams,
        ..CaptionOptions::default()
    };
    settings.check().map_err(anyhow::Error::msg)?;
    let images = decode_all(&args.images)?;
    let (model, prompt) =
        load_captioner_arg(&args.captioner.captioner, args.dtype, args.prompt.as_deref(), &device(&args.device)?)?;
    let options = CaptionOptions { prompt, ..settings };

    let mut rows = Vec::with_capacity(images.len());
    for (paths, batch) in args.images.chunks(BATCH).zip(images.chunks(BATCH)) {
        for (path, caption) in paths.iter().zip(model.caption(batch, &options)?) {
            rows.push(Captioned { image: path.display().to_string(), caption: caption.text });
        }
    }

    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        let width = rows.iter().map(|r| r.image.chars().count()).max().unwrap_or(5).clamp(5, 60);
        println!("{:<width$}  caption", "image");
        for row in &rows {
            println!("{:<width$}  {}", truncate(&row.image, width), row.caption);
        }
    }
    Ok(())
}
