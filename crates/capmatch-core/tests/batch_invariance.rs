//! Batch invariance: the same text or image gives bit-identical vectors, and the same image
//! identical captions, whatever batch it is in (alone, first, last, next to shorter and
//! longer texts), in f32 and bf16, on every fixture (CLIP, BLIP, BLIP-2 OPT and T5). This is
//! what makes `capmatch index --batch 1` and `--batch 16` write the same vector tables.
//! Run with `cargo test --release -p capmatch-core --test batch_invariance`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use capmatch_core::captioner::{CaptionOptions, Captioner};
use capmatch_core::embedder::ClipEmbedder;
use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_models::generation::StepDecoder;
use image::RgbImage;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn fixtures(family: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo_root().join("fixtures").join(family))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no {family} fixtures");
    dirs
}

fn images() -> Vec<RgbImage> {
    let dir = repo_root().join("fixtures/images/real");
    ["photo_lemon.png", "cartoon_apple.png", "photo_grapes.png", "cartoon_lemon.png"]
        .iter()
        .map(|name| decode_file(&dir.join(name), &DecodeLimits::default()).unwrap())
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn tensor_bits(t: &Tensor) -> Vec<u32> {
    bits(&t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
}

/// The batches `item` is put in: alone, then first and last among `others`.
fn placements<T: Clone>(item: &T, others: &[T]) -> Vec<(Vec<T>, usize)> {
    let mut out = vec![(vec![item.clone()], 0)];
    let mut first = vec![item.clone()];
    first.extend_from_slice(others);
    out.push((first, 0));
    let mut last = others.to_vec();
    last.push(item.clone());
    out.push((last, others.len()));
    out
}

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

#[test]
fn a_text_has_the_same_vector_in_any_batch() {
    // Shorter and longer neighbours, so the batch is padded to another length than the text.
    let texts = ["a photo of a cat", "a", "a drawing of a lemon cut in half on a wooden table, seen from above", "fruit"];
    for dir in fixtures("clip") {
        for dtype in DTYPES {
            let embedder = ClipEmbedder::load(&dir, dtype).unwrap();
            for (i, text) in texts.iter().enumerate() {
                let others: Vec<&str> = texts.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, t)| *t).collect();
                let alone = bits(&embedder.embed_texts(&[text]).unwrap()[0]);
                for (batch, at) in placements(text, &others) {
                    let got = bits(&embedder.embed_texts(&batch).unwrap()[at]);
                    assert_eq!(got, alone, "{} {dtype:?}: {text:?} at {at} of {batch:?}", dir.display());
                }
            }
        }
    }
}

#[test]
fn an_image_has_the_same_vector_in_any_batch() {
    let images = images();
    for dir in fixtures("clip") {
        for dtype in DTYPES {
            let embedder = ClipEmbedder::load(&dir, dtype).unwrap();
            for (i, image) in images.iter().enumerate() {
                let others: Vec<RgbImage> = images.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, m)| m.clone()).collect();
                let alone = bits(&embedder.embed_images(std::slice::from_ref(image)).unwrap()[0]);
                for (batch, at) in placements(image, &others) {
                    let got = bits(&embedder.embed_images(&batch).unwrap()[at]);
                    assert_eq!(got, alone, "{} {dtype:?}: image {i} at {at} of {}", dir.display(), batch.len());
                }
            }
        }
    }
}

/// Captions, the image features they come from and the first decoding step's logits of
/// one image alone and in batches, greedy and with beams.
fn check_captioner(dir: &Path, dtype: DType) {
    let captioner = Captioner::load(dir, dtype).unwrap();
    let images = images();
    let pixels = |batch: &[RgbImage]| captioner.image_processor().batch(batch, &Device::Cpu).unwrap();
    let row = |t: &Tensor, at: usize| t.get(at).unwrap();
    let what = |at: usize, n: usize| format!("{} {dtype:?}: image at {at} of {n}", dir.display());
    for (i, image) in images.iter().enumerate().take(2) {
        let others: Vec<RgbImage> = images.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, m)| m.clone()).collect();
        let alone = pixels(std::slice::from_ref(image));
        for (batch, at) in placements(image, &others) {
            let px = pixels(&batch);
            // What the decoder attends to, then the logits of its first step.
            let (features, logits) = match (captioner.blip(), captioner.blip2()) {
                (Some(blip), _) => {
                    let bos = blip.config().text_config.bos_token_id.unwrap();
                    let first = |px: &Tensor| {
                        let n = px.dim(0).unwrap();
                        let tokens = Tensor::from_vec(vec![bos; n], (n, 1), &Device::Cpu).unwrap();
                        blip.caption_decoder(px).unwrap().forward(&tokens).unwrap()
                    };
                    ((row(&blip.image_embeds(&px).unwrap(), at), blip.image_embeds(&alone).unwrap().get(0).unwrap()), (row(&first(&px), at), first(&alone).get(0).unwrap()))
                }
                (None, Some(blip2)) => {
                    let ids = blip2.input_ids(None).unwrap();
                    let first = |px: &Tensor| {
                        let features = blip2.image_features(px).unwrap();
                        let n = px.dim(0).unwrap();
                        let mut decoder = blip2.decoder(&features, &vec![ids.clone(); n]).unwrap();
                        let prompt = blip2.generation_prompt(&ids, &Default::default());
                        let flat: Vec<u32> = (0..n).flat_map(|_| prompt.iter().copied()).collect();
                        decoder.forward(&Tensor::from_vec(flat, (n, prompt.len()), &Device::Cpu).unwrap()).unwrap()
                    };
                    let features = (row(&blip2.image_features(&px).unwrap(), at), blip2.image_features(&alone).unwrap().get(0).unwrap());
                    (features, (row(&first(&px), at), first(&alone).get(0).unwrap()))
                }
                _ => unreachable!("a captioner is BLIP or BLIP-2"),
            };
            assert_eq!(tensor_bits(&features.0), tensor_bits(&features.1), "{}: image features", what(at, batch.len()));
            assert_eq!(tensor_bits(&logits.0), tensor_bits(&logits.1), "{}: first-step logits", what(at, batch.len()));
            for num_beams in [None, Some(3)] {
                let options = CaptionOptions { num_beams, max_new_tokens: Some(8), ..CaptionOptions::default() };
                let options = CaptionOptions { prompt: captioner.arch().default_prompt().into(), ..options };
                let single = captioner.caption(std::slice::from_ref(image), &options).unwrap();
                let batched = captioner.caption(&batch, &options).unwrap();
                assert_eq!(batched[at], single[0], "{}: caption with {num_beams:?} beams", what(at, batch.len()));
            }
        }
    }
}

#[test]
fn blip_captions_an_image_the_same_in_any_batch() {
    for dir in fixtures("blip") {
        for dtype in DTYPES {
            check_captioner(&dir, dtype);
        }
    }
}

#[test]
fn blip2_captions_an_image_the_same_in_any_batch() {
    for dir in fixtures("blip2") {
        for dtype in DTYPES {
            check_captioner(&dir, dtype);
        }
    }
}
