//! Checkpoint directories: the tiny fixture CLIP with one of its files replaced by the
//! input: `config.json`, the safetensors file (headers that lie about offsets, sizes,
//! dtypes and shapes; truncated data), `preprocessor_config.json`, or a sharded
//! `model.safetensors.index.json` (shards missing, named twice, outside the folder). A
//! loaded model also embeds a text and an image, where shapes that disagree with the
//! config would show.
//!
//! Input layout: one byte naming the file ([`FILES`], modulo their count), then its bytes.

use std::path::Path;

use capmatch_core::embedder::ClipEmbedder;
use capmatch_core::{DType, RgbImage};
use serde_json::Value;

use crate::mutate::{Rng, INTERESTING_U32};
use crate::{repo_root, Target};

pub struct Checkpoint;

/// The files an input may replace; the last is a sharded index that replaces the single
/// weights file.
const FILES: [&str; 4] = ["config.json", "model.safetensors", "preprocessor_config.json", "model.safetensors.index.json"];
const SHARD: &str = "model-00001-of-00001.safetensors";

fn fixture() -> std::path::PathBuf {
    repo_root().join("fixtures/clip/tiny-quickgelu-p32")
}

fn with_kind(kind: usize, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![kind as u8];
    v.extend_from_slice(bytes);
    v
}

impl Target for Checkpoint {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn seeds(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let dir = fixture();
        let mut seeds = Vec::new();
        for (kind, name) in FILES.iter().enumerate().take(3) {
            seeds.push(with_kind(kind, &std::fs::read(dir.join(name))?));
        }
        // A sharded index naming every tensor of the fixture in one shard.
        let header = safetensors_header(&std::fs::read(dir.join("model.safetensors"))?)?;
        let names: serde_json::Map<String, Value> = header
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, _)| (k.clone(), Value::from(SHARD)))
            .collect();
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": names});
        seeds.push(with_kind(3, serde_json::to_string_pretty(&index)?.as_bytes()));
        Ok(seeds)
    }

    fn mutate_structured(&self, input: &mut Vec<u8>, rng: &mut Rng) -> bool {
        let Some((&kind, body)) = input.split_first() else { return false };
        let mutated = match FILES[kind as usize % FILES.len()] {
            "model.safetensors" => lie_in_safetensors_header(body, rng),
            _ => serde_json::from_slice::<Value>(body).ok().map(|mut v| {
                mutate_json_leaf(&mut v, rng);
                serde_json::to_vec(&v).unwrap_or_default()
            }),
        };
        match mutated {
            Some(bytes) => {
                *input = with_kind(kind as usize, &bytes);
                true
            }
            None => false,
        }
    }

    fn run(&self, input: &[u8]) -> anyhow::Result<()> {
        let Some((&kind, body)) = input.split_first() else { anyhow::bail!("empty input") };
        let replaced = FILES[kind as usize % FILES.len()];
        let tmp = tempfile::tempdir()?;
        for entry in std::fs::read_dir(fixture())? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default();
            let sharded = replaced == "model.safetensors.index.json";
            if name == replaced || (sharded && name == "model.safetensors") {
                continue;
            }
            link(&path, &tmp.path().join(name))?;
        }
        if replaced == "model.safetensors.index.json" {
            link(&fixture().join("model.safetensors"), &tmp.path().join(SHARD))?;
        }
        std::fs::write(tmp.path().join(replaced), body)?;
        let clip = ClipEmbedder::load(tmp.path(), DType::F32)?;
        let texts = clip.embed_texts(&["a drawing of a cat"])?;
        let images = clip.embed_images(&[RgbImage::from_pixel(40, 30, image_rgb())])?;
        anyhow::ensure!(
            texts.iter().chain(&images).all(|v| v.len() == clip.dim()),
            "vectors of the wrong dimension"
        );
        Ok(())
    }
}

fn image_rgb() -> image::Rgb<u8> {
    image::Rgb([200, 120, 40])
}

fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(std::fs::canonicalize(from)?, to)
}

/// The JSON header of a safetensors file.
fn safetensors_header(bytes: &[u8]) -> anyhow::Result<Value> {
    anyhow::ensure!(bytes.len() >= 8, "shorter than a header length");
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    anyhow::ensure!(bytes.len() >= 8 + n, "header past the end");
    Ok(serde_json::from_slice(&bytes[8..8 + n])?)
}

/// One tensor's entry rewritten to lie: offsets past the data or overlapping, a shape that
/// disagrees with the byte count or the config, another dtype. The data is kept.
fn lie_in_safetensors_header(bytes: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut header = safetensors_header(bytes).ok()?;
    let n = u64::from_le_bytes(bytes[..8].try_into().ok()?) as usize;
    let data = &bytes[8 + n..];
    let tensors = header.as_object_mut()?;
    let names: Vec<String> = tensors.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let entry = tensors.get_mut(&names[rng.below(names.len().max(1))])?.as_object_mut()?;
    match rng.below(5) {
        0 => {
            let end = data.len() as u64 + [0, 1, 4096, u32::MAX as u64][rng.below(4)];
            entry.insert("data_offsets".into(), serde_json::json!([0, end]));
        }
        1 => {
            let start = INTERESTING_U32[rng.below(INTERESTING_U32.len())] as u64;
            entry.insert("data_offsets".into(), serde_json::json!([start, 8]));
        }
        2 => {
            let dims = [Value::from(0), Value::from(1), Value::from(3), Value::from(u32::MAX), Value::from(1u64 << 40), Value::from(1u64 << 62)];
            let shape: Vec<Value> = (0..1 + rng.below(4)).map(|_| dims[rng.below(dims.len())].clone()).collect();
            entry.insert("shape".into(), Value::from(shape));
        }
        3 => {
            let dtypes = ["F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "X9"];
            entry.insert("dtype".into(), Value::from(dtypes[rng.below(dtypes.len())]));
        }
        _ => {
            entry.remove(["shape", "dtype", "data_offsets"][rng.below(3)]);
        }
    }
    let text = serde_json::to_vec(&header).ok()?;
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(data);
    Some(out)
}

/// A random number, string or list somewhere in the document set to an edge value.
fn mutate_json_leaf(v: &mut Value, rng: &mut Rng) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            let i = rng.below(map.len());
            let key = map.keys().nth(i).cloned().unwrap_or_default();
            if let Some(child) = map.get_mut(&key) {
                if rng.chance(3) || !(child.is_object() || child.is_array()) {
                    *child = edge_value(rng);
                } else {
                    mutate_json_leaf(child, rng);
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.below(items.len());
            mutate_json_leaf(&mut items[i], rng);
        }
        other => *other = edge_value(rng),
    }
}

fn edge_value(rng: &mut Rng) -> Value {
    let values = [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!(1),
        serde_json::json!(3),
        serde_json::json!(u32::MAX),
        serde_json::json!(1u64 << 40),
        serde_json::json!(1e308),
        serde_json::json!(-0.0),
        serde_json::json!(0.5),
        serde_json::json!(null),
        serde_json::json!("gelu"),
        serde_json::json!("../../../etc/passwd"),
        serde_json::json!("model-00002-of-00002.safetensors"),
        serde_json::json!([]),
        serde_json::json!({}),
        serde_json::json!(true),
    ];
    values[rng.below(values.len())].clone()
}
