//! From command-line flags to the engine's model configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use capmatch_core::device::DeviceSpec;
use capmatch_core::embedder::ClipEmbedder;
use capmatch_core::hub::ModelKind;
use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_core::{Device, RgbImage};
use capmatch_engine::models::{captioner_settings, load_captioner, load_clip, Checkpoint};
use capmatch_engine::{Engine, ModelConfig, Models};

use crate::{DeviceArg, Dtype, GalleryModelArgs};

/// The device a `--device` flag names, opened (an error says when this build lacks it).
pub fn device(arg: &DeviceArg) -> anyhow::Result<Device> {
    let spec: DeviceSpec = arg.device.parse()?;
    Ok(spec.device()?)
}

/// The models of the gallery flags (`index`, `eval`).
pub fn gallery_models(args: &GalleryModelArgs) -> anyhow::Result<Arc<Models>> {
    let config = ModelConfig {
        clip: args.clip.clip.clone(),
        captioner: args.captioner.captioner.clone(),
        dtype: args.dtype.map(Dtype::engine),
        prompt: args.prompt.clone(),
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: args.min_new_tokens,
        device: device(&args.device)?,
    };
    Ok(Arc::new(Models::new(&config)?))
}

/// Opens the gallery at `db` for writing, telling the user if another process holds it.
pub fn open_writer(db: &Path, store: &capmatch_engine::VectorStore, shard: capmatch_engine::Shard, models: Arc<Models>) -> anyhow::Result<Engine> {
    let engine = Engine::open_writer_in(db, store, shard, models, true, &|db| {
        eprintln!("waiting for another capmatch process that is writing to {} ...", db.display());
    })
    .with_context(|| format!("cannot open the index {} (vectors: {store})", db.display()))?;
    Ok(engine)
}

pub fn load_clip_arg(spec: &str, dtype: Dtype, device: &Device) -> anyhow::Result<ClipEmbedder> {
    let checkpoint = Checkpoint::resolve(spec, ModelKind::Clip)?;
    Ok(load_clip(&checkpoint.dir, dtype.engine(), device)?)
}

/// A captioner and the prompt to use with it: the user's choices where given, else the
/// architecture's defaults.
pub fn load_captioner_arg(
    spec: &str,
    dtype: Option<Dtype>,
    prompt: Option<&str>,
    device: &Device,
) -> anyhow::Result<(capmatch_core::captioner::Captioner, String)> {
    let checkpoint = Checkpoint::resolve(spec, ModelKind::Captioner)?;
    let (dtype, prompt) = captioner_settings(&checkpoint, dtype.map(Dtype::engine), prompt)?;
    Ok((load_captioner(&checkpoint.dir, dtype, device)?, prompt))
}

/// Decodes every image up front, so that a bad file fails the command before any model
/// is loaded; the error names the file.
pub fn decode_all(paths: &[PathBuf]) -> anyhow::Result<Vec<RgbImage>> {
    let limits = DecodeLimits::default();
    paths
        .iter()
        .map(|path| decode_file(path, &limits).with_context(|| format!("cannot read image {}", path.display())))
        .collect()
}
