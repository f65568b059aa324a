//! Our model workloads (CLIP towers, BLIP and BLIP-2 captioning) through capmatch-core's public API,
//! the calls `capmatch embed` / `capmatch index` make.

use anyhow::{bail, Context, Result};
use capmatch_core::captioner::{CaptionOptions, Captioner};
use capmatch_core::embedder::ClipEmbedder;
use capmatch_core::DType;
use serde_json::{json, Value};

use crate::agreement::{CaptionOutput, Outputs};
use crate::worker::{load_images, Call, CallFn, WorkerArgs};

pub fn dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("unknown dtype {other}"),
    })
}

pub fn clip_image(args: &WorkerArgs) -> Result<(Value, CallFn)> {
    let model = args.model.as_deref().context("--model")?;
    let embedder = ClipEmbedder::load(model, dtype(&args.dtype)?)?;
    let images = load_images(args.images.as_deref().context("--images")?, args.batch)?;
    let info = json!({"batch": images.len(), "image_size": [images[0].width(), images[0].height()]});
    let round: CallFn = Box::new(move || {
        let out = embedder.embed_images(&images)?;
        if out.len() != images.len() {
            bail!("{} embeddings for {} images", out.len(), images.len());
        }
        Ok(Call { items: images.len(), outputs: Outputs::Embeddings(out) })
    });
    Ok((info, round))
}

pub fn clip_text(args: &WorkerArgs) -> Result<(Value, CallFn)> {
    let model = args.model.as_deref().context("--model")?;
    let embedder = ClipEmbedder::load(model, dtype(&args.dtype)?)?;
    let path = args.captions.as_deref().context("--captions")?;
    let captions: Vec<String> = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut lengths: Vec<usize> = captions.iter().map(|c| embedder.tokenize(c).map(|t| t.len())).collect::<Result<_>>()?;
    lengths.sort_unstable();
    lengths.dedup();
    let info = json!({"batch": captions.len(), "token_lengths": lengths});
    let round: CallFn = Box::new(move || {
        let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
        let out = embedder.embed_texts(&texts)?;
        if out.len() != texts.len() {
            bail!("{} embeddings for {} texts", out.len(), texts.len());
        }
        Ok(Call { items: texts.len(), outputs: Outputs::Embeddings(out) })
    });
    Ok((info, round))
}

/// BLIP or BLIP-2 captioning (whichever the checkpoint is), exactly `--new-tokens` new tokens
/// (min = max), greedy or beam search; one call captions one batch of `--batch` images.
pub fn caption(args: &WorkerArgs) -> Result<(Value, CallFn)> {
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
    let round: CallFn = Box::new(move || {
        let out = captioner.caption(&images, &options)?;
        if out.len() != images.len() {
            bail!("{} captions for {} images", out.len(), images.len());
        }
        Ok(Call { items: images.len(), outputs: Outputs::Tokens(out.into_iter().map(|c| c.token_ids).collect()) })
    });
    Ok((info, round))
}

/// The model work of `capmatch index` on the images it adds beyond its small folder, done
/// the way the indexer does it: batches of `--batch` images, each captioned with the
/// captioner's defaults (BLIP: prompt "a picture of", greedy, stop at [SEP] or after 20
/// tokens, the defaults of `capmatch index`), its captions embedded, its images
/// embedded; f32. The files are decoded once before timing (decoding is the indexer's
/// overhead, not model work). Outputs: the captions and their token ids, so that the harness
/// can count the generated tokens and check the captions against the index's.
pub fn index_models(args: &WorkerArgs) -> Result<(Value, CallFn)> {
    use capmatch_core::image_io::{decode_file, DecodeLimits};

    let clip = ClipEmbedder::load(args.model.as_deref().context("--model (CLIP)")?, DType::F32)?;
    let mut captioner = Captioner::load(args.captioner.as_deref().context("--captioner")?, DType::F32)?;
    let batch = args.batch.max(1);
    captioner.batch_size = batch;
    let files = args.files.clone();
    if files.is_empty() {
        bail!("--files: the images to index");
    }
    let images = files.iter().map(|f| decode_file(f, &DecodeLimits::default()).with_context(|| f.display().to_string())).collect::<Result<Vec<_>, _>>()?;
    let options = CaptionOptions::default();
    // Warm the models up on one batch here: a call is the whole folder (tens of seconds).
    captioner.caption(&images[..batch.min(images.len())], &options)?;
    // The decoder starts from [DEC] and the prompt's ids: the tokenizer's encoding of the
    // prompt with [CLS] … [SEP], less one.
    let prompt_ids = captioner.tokenizer().encode(options.prompt.as_str(), true).map_err(anyhow::Error::msg)?.len() - 1;
    let info = json!({"batch": batch, "images": images.len(), "prompt": options.prompt, "prompt_ids": prompt_ids});
    let round: CallFn = Box::new(move || {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(batch) {
            let captions = captioner.caption(chunk, &options)?;
            let texts: Vec<&str> = captions.iter().map(|c| c.text.as_str()).collect();
            std::hint::black_box(clip.embed_texts(&texts)?);
            std::hint::black_box(clip.embed_images(chunk)?);
            out.extend(captions.into_iter().map(|c| CaptionOutput { text: c.text, token_ids: c.token_ids }));
        }
        Ok(Call { items: images.len(), outputs: Outputs::Captions(out) })
    });
    Ok((info, round))
}
