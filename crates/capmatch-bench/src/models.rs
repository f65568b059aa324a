//! Our model workloads (CLIP towers, BLIP and BLIP-2 captioning) through capmatch-core's public API,
//! the calls `capmatch embed` / `capmatch index` make.

use anyhow::{bail, Context, Result};
use capmatch_core::captioner::{CaptionOptions, Captioner};
use capmatch_core::embedder::ClipEmbedder;
use capmatch_core::DType;
use serde_json::{json, Value};

use crate::worker::{load_images, WorkerArgs};

type RoundFn = Box<dyn FnMut() -> Result<usize>>;

pub fn dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("unknown dtype {other}"),
    })
}

pub fn clip_image(args: &WorkerArgs) -> Result<(Value, RoundFn)> {
    let model = args.model.as_deref().context("--model")?;
    let embedder = ClipEmbedder::load(model, dtype(&args.dtype)?)?;
    let images = load_images(args.images.as_deref().context("--images")?, args.batch)?;
    let info = json!({"batch": images.len(), "image_size": [images[0].width(), images[0].height()]});
    let round: RoundFn = Box::new(move || {
        let out = embedder.embed_images(&images)?;
        if out.len() != images.len() {
            bail!("{} embeddings for {} images", out.len(), images.len());
        }
        std::hint::black_box(out);
        Ok(images.len())
    });
    Ok((info, round))
}

pub fn clip_text(args: &WorkerArgs) -> Result<(Value, RoundFn)> {
    let model = args.model.as_deref().context("--model")?;
    let embedder = ClipEmbedder::load(model, dtype(&args.dtype)?)?;
    let path = args.captions.as_deref().context("--captions")?;
    let captions: Vec<String> = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut lengths: Vec<usize> = captions.iter().map(|c| embedder.tokenize(c).map(|t| t.len())).collect::<Result<_>>()?;
    lengths.sort_unstable();
    lengths.dedup();
    let info = json!({"batch": captions.len(), "token_lengths": lengths});
    let round: RoundFn = Box::new(move || {
        let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
        let out = embedder.embed_texts(&texts)?;
        if out.len() != texts.len() {
            bail!("{} embeddings for {} texts", out.len(), texts.len());
        }
        std::hint::black_box(out);
        Ok(texts.len())
    });
    Ok((info, round))
}

/// BLIP or BLIP-2 captioning (whichever the checkpoint is), exactly `--new-tokens` new tokens
/// (min = max), greedy or beam search; one call captions one batch of `--batch` images.
pub fn caption(args: &WorkerArgs) -> Result<(Value, RoundFn)> {
    let model = args.model.as_deref().context("--model")?;
    let mut captioner = Captioner::load(model, dtype(&args.dtype)?)?;
    captioner.batch_size = args.batch.max(1);
    let images = load_images(args.images.as_deref().context("--images")?, args.batch)?;
    let options = CaptionOptions {
        prompt: args.prompt.clone(),
        max_new_tokens: Some(args.new_tokens),
        min_new_tokens: Some(args.new_tokens),
        num_beams: Some(args.beams),
    };
    let first = captioner.caption(&images[..1], &options)?;
    let info = json!({
        "batch": images.len(),
        "beams": args.beams,
        "new_tokens": args.new_tokens,
        "image_size": [images[0].width(), images[0].height()],
        "token_ids_len": first.first().map(|c| c.token_ids.len()),
    });
    let round: RoundFn = Box::new(move || {
        let out = captioner.caption(&images, &options)?;
        if out.len() != images.len() {
            bail!("{} captions for {} images", out.len(), images.len());
        }
        std::hint::black_box(out);
        Ok(images.len())
    });
    Ok((info, round))
}
