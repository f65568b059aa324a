//! Our model workloads (CLIP towers, BLIP captioning) through capmatch-core's public API.
//! Wired up as the model crates land.

use anyhow::{bail, Result};
use serde_json::Value;

use crate::worker::WorkerArgs;

type RoundFn = Box<dyn FnMut() -> Result<usize>>;

pub fn clip_image(_args: &WorkerArgs) -> Result<(Value, RoundFn)> {
    bail!("capmatch-core has no ClipEmbedder yet")
}

pub fn clip_text(_args: &WorkerArgs) -> Result<(Value, RoundFn)> {
    bail!("capmatch-core has no ClipEmbedder yet")
}

pub fn blip_caption(_args: &WorkerArgs) -> Result<(Value, RoundFn)> {
    bail!("capmatch-core has no Captioner yet")
}
