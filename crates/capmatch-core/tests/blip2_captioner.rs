//! `Captioner` on the BLIP-2 fixtures (fixtures/blip2/{opt,t5}, written by
//! tools/reference/blip2_fixtures.py): architecture picked from config.json, the
//! checkpoint's tokenizer, processor and generation config, and the token ids and
//! decoded text that transformers 5.23 produced, from reference pixels and from the PNGs.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use capmatch_core::captioner::{CaptionArch, CaptionOptions, Captioner};
use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_core::{Kernels, LoadOptions};
use serde::Deserialize;

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/blip2").join(arch)
}

#[derive(Deserialize)]
struct Reference {
    images: Vec<String>,
    prompt: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    image_index: usize,
    prompt: Option<String>,
    kwargs: Kwargs,
    output_ids: Vec<u32>,
    text: String,
}

#[derive(Deserialize)]
struct Kwargs {
    max_new_tokens: Option<usize>,
    min_new_tokens: Option<usize>,
    num_beams: Option<usize>,
    length_penalty: Option<f64>,
}

fn reference(arch: &str) -> Reference {
    serde_json::from_str(&std::fs::read_to_string(fixture(arch).join("reference.json")).unwrap()).unwrap()
}

fn pixels(arch: &str) -> Tensor {
    let r = candle_core::safetensors::load(fixture(arch).join("reference.safetensors"), &Device::Cpu).unwrap();
    r["pixel_values"].clone()
}

fn options(case: &Case) -> CaptionOptions {
    CaptionOptions {
        prompt: case.prompt.clone().unwrap_or_default(),
        max_new_tokens: case.kwargs.max_new_tokens,
        min_new_tokens: case.kwargs.min_new_tokens,
        num_beams: case.kwargs.num_beams,
    }
}

/// Every case the captioner's options can express (all but the length-penalty one).
fn check(arch: &str, want_arch: CaptionArch, dtype: DType) {
    check_on(arch, want_arch, dtype, Kernels::Fused)
}

fn check_on(arch: &str, want_arch: CaptionArch, dtype: DType, kernels: Kernels) {
    let captioner = Captioner::load_with(&fixture(arch), &LoadOptions::new(dtype).with_kernels(kernels)).unwrap();
    assert_eq!(captioner.arch(), want_arch);
    assert!(captioner.blip2().is_some() && captioner.blip().is_none());
    let reference = reference(arch);
    let pixels = pixels(arch);
    let mut checked = 0;
    for case in reference.cases.iter().filter(|c| c.kwargs.length_penalty.is_none()) {
        let what = format!("{arch} {kernels} {} on {}", case.name, reference.images[case.image_index]);
        let px = pixels.i(case.image_index..case.image_index + 1).unwrap();
        let got = captioner.caption_pixels(&px, &options(case)).unwrap();
        assert_eq!(got[0].token_ids, case.output_ids, "{what}: token ids");
        // transformers' text is batch_decode(skip_special_tokens=True).strip(), prompt included
        // for OPT; Caption::text drops the prompt.
        let want_text = match (&case.prompt, arch) {
            (Some(p), "opt") => case.text.strip_prefix(p.as_str()).unwrap().trim().to_string(),
            _ => case.text.clone(),
        };
        assert_eq!(got[0].text, want_text, "{what}: text");
        checked += 1;
    }
    assert!(checked >= 15, "{checked} cases");
    assert_eq!(reference.prompt, "a photo of");
}

#[test]
fn opt_captions_match_transformers() {
    check("opt", CaptionArch::Blip2Opt, DType::F32);
}

#[test]
fn t5_captions_match_transformers() {
    check("t5", CaptionArch::Blip2T5, DType::F32);
}

/// The candle path (what a GPU runs) on the CPU: the same tokens.
#[test]
fn opt_and_t5_captions_match_transformers_on_candle_ops() {
    check_on("opt", CaptionArch::Blip2Opt, DType::F32, Kernels::Candle);
    check_on("t5", CaptionArch::Blip2T5, DType::F32, Kernels::Candle);
}

#[test]
fn opt_captions_match_transformers_with_bf16_weights() {
    check("opt", CaptionArch::Blip2Opt, DType::BF16);
}

#[test]
fn png_to_caption_end_to_end() {
    for arch in ["opt", "t5"] {
        let captioner = Captioner::load(&fixture(arch), DType::F32).unwrap();
        let reference = reference(arch);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/images/real");
        let images: Vec<_> = reference
            .images
            .iter()
            .map(|name| decode_file(&root.join(name), &DecodeLimits::default()).unwrap())
            .collect();
        // The image processor reproduces transformers' pixels.
        let px = captioner.image_processor().batch(&images, &Device::Cpu).unwrap();
        let diff = (px - pixels(arch)).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{arch}: pixel values differ by {diff}");
        let cases: Vec<&Case> =
            reference.cases.iter().filter(|c| c.name == "greedy_prompt").collect();
        let got = captioner.caption(&images, &options(cases[0])).unwrap();
        for (case, caption) in cases.iter().zip(&got) {
            assert_eq!(caption.token_ids, case.output_ids, "{arch} image {}", case.image_index);
        }
    }
}
