//! Times the CLIP towers on a checkpoint directory (random inputs; weights as stored):
//! `cargo run --release -p capmatch-models --example clip_speed -- DIR [f32|bf16|f16] [reps] [image|text|both] [batch] [fused|candle]`.
//! Prints the median ms/image (batch 8 unless given) and ms/caption (batch 32 × 20 tokens), on
//! the fused CPU kernels unless `candle` is given.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use capmatch_models::clip::{ClipConfig, ClipModel};
use capmatch_models::{Kernels, Loader};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("checkpoint dir"));
    let dtype = match args.get(2).map(String::as_str).unwrap_or("f32") {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => DType::F32,
    };
    let reps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let which = args.get(4).map(String::as_str).unwrap_or("both");
    let batch: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(8);
    let kernels: Kernels = args.get(6).map_or(Ok(Kernels::Fused), |s| s.parse()).expect("kernels");
    let dev = Device::Cpu;
    let cfg = ClipConfig::from_json_str(&std::fs::read_to_string(dir.join("config.json"))?).unwrap();
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], dtype, &dev)? };
    let model = ClipModel::new(Loader::new(vb, kernels), &cfg)?;

    let s = cfg.vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, s, s), &dev)?.to_dtype(dtype)?;
    let ids: Vec<u32> = (0..32 * 20).map(|i| if i % 20 == 19 { 49407 } else { 320 + (i as u32 * 7919) % 40000 }).collect();
    let ids = Tensor::from_vec(ids, (32, 20), &dev)?;
    let mask = Tensor::ones((32, 20), DType::U32, &dev)?;

    if which != "text" {
        model.get_image_features(&pixels)?; // warm-up
        let t: Vec<f64> = (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                model.get_image_features(&pixels).unwrap();
                t0.elapsed().as_secs_f64() * 1e3 / batch as f64
            })
            .collect();
        println!("{dtype:?} image: {:.1} ms/image (median of {reps}, batch {batch}; min {:.1})", median(t.clone()), t.iter().cloned().fold(f64::MAX, f64::min));
    }
    if which != "image" {
        model.get_text_features(&ids, Some(&mask))?;
        let t: Vec<f64> = (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                model.get_text_features(&ids, Some(&mask)).unwrap();
                t0.elapsed().as_secs_f64() * 1e3 / 32.0
            })
            .collect();
        println!("{dtype:?} text: {:.2} ms/caption (median of {reps}, batch 32x20; min {:.2})", median(t.clone()), t.iter().cloned().fold(f64::MAX, f64::min));
    }
    Ok(())
}
