//! BLIP-2 parity with transformers 5.23 on the tiny random checkpoints of
//! fixtures/blip2/{opt,t5} (written by tools/reference/blip2_fixtures.py): vision tower,
//! Q-Former, projection and language-model logits (with and without KV cache) within
//! tolerance, and identical token ids for greedy and beam search, with and without a
//! prompt, in f32.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use capmatch_models::blip2::{Blip2Config, Blip2ForConditionalGeneration, Blip2LanguageModel};
use capmatch_models::generation::GenerationConfig;
use capmatch_models::{Kernels, Loader};
use serde::Deserialize;

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/blip2").join(arch)
}

/// The checkpoint's weight files: a single model.safetensors or the shards of the index.
fn weight_files(dir: &Path) -> Vec<PathBuf> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return vec![single];
    }
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
    let mut files: Vec<String> =
        index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap().to_string()).collect();
    files.sort();
    files.dedup();
    files.into_iter().map(|f| dir.join(f)).collect()
}

fn load(arch: &str, dtype: DType) -> Blip2ForConditionalGeneration {
    load_on(arch, dtype, Kernels::Fused)
}

/// The model on the fused CPU kernels, or on candle ops (the code a GPU runs).
fn load_on(arch: &str, dtype: DType, kernels: Kernels) -> Blip2ForConditionalGeneration {
    let dir = fixture(arch);
    let config = Blip2Config::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let files = weight_files(&dir);
    if arch == "opt" {
        assert!(files.len() > 1, "the OPT fixture exercises a sharded checkpoint");
    }
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, &Device::Cpu) }.unwrap();
    Blip2ForConditionalGeneration::load(Loader::new(vb, kernels), &config).unwrap()
}

fn reference(arch: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(arch).join("reference.safetensors"), &Device::Cpu).unwrap()
}

#[derive(Deserialize)]
struct Reference {
    image_token_index: u32,
    num_query_tokens: usize,
    eos_token_id: u32,
    prompt_ids: Vec<u32>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    image: String,
    image_index: usize,
    prompt: Option<String>,
    kwargs: GenerationConfig,
    input_ids: Option<Vec<u32>>,
    output_ids: Vec<u32>,
}

fn cases(arch: &str) -> Reference {
    serde_json::from_str(&std::fs::read_to_string(fixture(arch).join("reference.json")).unwrap()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let d = max_abs_diff(got, want);
    let tol = if what.contains("logits") {
        // Logits are tens in magnitude: 1e-4 relative to the largest.
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
        tol * scale
    } else {
        tol
    };
    assert!(d <= tol, "{what}: max |diff| = {d} > {tol}");
    // The reference is not trivially flat (a constant output would match a broken model).
    let spread = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (lo, hi) = spread.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    assert!(hi - lo > 0.5, "{what}: reference spread {lo}..{hi} too small to be meaningful");
}

fn check_towers(arch: &str, kernels: Kernels) {
    let model = load_on(arch, DType::F32, kernels);
    let r = reference(arch);
    let pixels = &r["pixel_values"];
    let vision = model.vision_forward(pixels).unwrap();
    assert_close("vision last_hidden_state", &vision, &r["vision_last_hidden_state"], 1e-4);
    let qformer = model.qformer_forward(&vision).unwrap();
    assert_close("qformer last_hidden_state", &qformer, &r["qformer_last_hidden_state"], 1e-4);
    let projected = model.image_features(pixels).unwrap();
    assert_close("language_projection", &projected, &r["language_projection"], 1e-4);
}

#[test]
fn opt_vision_qformer_projection_match_transformers() {
    check_towers("opt", Kernels::Fused);
}

#[test]
fn t5_vision_qformer_projection_match_transformers() {
    check_towers("t5", Kernels::Fused);
}

/// The candle path (what a GPU runs) on the CPU, to the same bounds.
#[test]
fn vision_qformer_projection_match_transformers_on_candle_ops() {
    check_towers("opt", Kernels::Candle);
    check_towers("t5", Kernels::Candle);
}

#[test]
fn opt_logits_match_with_and_without_cache() {
    let model = load("opt", DType::F32);
    let r = reference("opt");
    let Blip2LanguageModel::Opt(lm) = &model.language_model else { panic!("OPT fixture") };
    let features = model.image_features(&r["pixel_values"].i(0..1).unwrap()).unwrap();
    let ids = r["lm_input_ids_prompt"].to_dtype(DType::U32).unwrap().unsqueeze(0).unwrap();
    let want = &r["lm_logits_prompt"];

    // Whole sequence at once.
    let embeds = model.embed(&ids, &features).unwrap();
    let mut cache = lm.new_cache();
    let full = lm.forward_embeds(&embeds, &mut cache).unwrap().squeeze(0).unwrap();
    assert_close("OPT logits (no cache)", &full, want, 1e-4);
    assert_eq!(cache.seq_len(), ids.dim(1).unwrap());

    // Prefix, then one token at a time through the KV cache.
    let len = ids.dim(1).unwrap();
    let split = model.config.num_query_tokens + 1;
    let mut cache = lm.new_cache();
    let mut rows = vec![lm.forward_embeds(&embeds.narrow(1, 0, split).unwrap(), &mut cache).unwrap()];
    for t in split..len {
        rows.push(lm.forward_embeds(&embeds.narrow(1, t, 1).unwrap(), &mut cache).unwrap());
    }
    let stepped = Tensor::cat(&rows, 1).unwrap().squeeze(0).unwrap();
    assert_close("OPT logits (KV cache)", &stepped, want, 1e-4);
}

#[test]
fn t5_encoder_and_logits_match_with_and_without_cache() {
    let model = load("t5", DType::F32);
    let r = reference("t5");
    let Blip2LanguageModel::T5(lm) = &model.language_model else { panic!("T5 fixture") };
    let features = model.image_features(&r["pixel_values"].i(0..1).unwrap()).unwrap();
    let ids = r["lm_input_ids_prompt"].to_dtype(DType::U32).unwrap().unsqueeze(0).unwrap();
    let embeds = model.embed(&ids, &features).unwrap();
    let encoded = lm.encode(&embeds).unwrap();
    assert_close("T5 encoder", &encoded.squeeze(0).unwrap(), &r["t5_encoder_last_hidden_state"], 1e-4);

    let dec = r["lm_decoder_input_ids"].to_dtype(DType::U32).unwrap().unsqueeze(0).unwrap();
    let want = &r["lm_logits_prompt"];
    let mut cache = lm.new_cache();
    let full = lm.decode(&dec, &encoded, &mut cache).unwrap().squeeze(0).unwrap();
    assert_close("T5 logits (no cache)", &full, want, 1e-4);

    let mut cache = lm.new_cache();
    let rows: Vec<Tensor> = (0..dec.dim(1).unwrap())
        .map(|t| lm.decode(&dec.narrow(1, t, 1).unwrap(), &encoded, &mut cache).unwrap())
        .collect();
    let stepped = Tensor::cat(&rows, 1).unwrap().squeeze(0).unwrap();
    assert_close("T5 logits (KV cache)", &stepped, want, 1e-4);
}

fn check_generation(arch: &str) {
    let model = load(arch, DType::F32);
    let r = reference(arch);
    let reference = cases(arch);
    assert_eq!(model.config.image_token_index, Some(reference.image_token_index));
    assert_eq!(model.config.num_query_tokens, reference.num_query_tokens);
    let file = std::fs::read_to_string(fixture(arch).join("generation_config.json")).unwrap();
    let defaults = model.default_generation_config().merged_with(&GenerationConfig::from_json(&file).unwrap());

    let (mut stopped, mut greedy, mut beam, mut prompted) = (0, 0, 0, 0);
    for case in &reference.cases {
        let what = format!("{arch} {} on {}", case.name, case.image);
        // The processor's text ids: everything after the image tokens.
        let text_ids: Option<Vec<u32>> = match (&case.prompt, &case.input_ids) {
            (Some(_), Some(ids)) => Some(ids[reference.num_query_tokens..].to_vec()),
            _ => None,
        };
        if case.prompt.is_some() {
            assert_eq!(text_ids.as_deref().unwrap(), &reference.prompt_ids[..], "{what}: prompt ids");
        }
        let input_ids = model.input_ids(text_ids.as_deref()).unwrap();
        if let Some(want) = &case.input_ids {
            assert_eq!(&input_ids, want, "{what}: input_ids");
        }
        let config = defaults.merged_with(&case.kwargs);
        let pixels = r["pixel_values"].i(case.image_index..case.image_index + 1).unwrap();
        let got = model.generate(&pixels, text_ids.as_deref(), &config).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0], case.output_ids, "{what}: token ids");

        stopped += usize::from(case.output_ids.last() == Some(&reference.eos_token_id));
        if config.num_beams.unwrap_or(1) > 1 {
            beam += 1;
        } else {
            greedy += 1;
        }
        prompted += usize::from(case.prompt.is_some());
    }
    let n = reference.cases.len();
    assert!(stopped > 0 && stopped < n, "{arch}: {stopped}/{n} cases end on EOS: both endings must be exercised");
    assert!(greedy > 0 && beam > 0 && prompted > 0 && prompted < n);
}

#[test]
fn opt_greedy_and_beam_search_token_ids_match_transformers() {
    check_generation("opt");
}

#[test]
fn t5_greedy_and_beam_search_token_ids_match_transformers() {
    check_generation("t5");
}

#[test]
fn batched_generation_equals_one_image_at_a_time() {
    let model = load("opt", DType::F32);
    let r = reference("opt");
    let reference = cases("opt");
    let file = std::fs::read_to_string(fixture("opt").join("generation_config.json")).unwrap();
    let config = model.default_generation_config().merged_with(&GenerationConfig::from_json(&file).unwrap());
    let got = model.generate(&r["pixel_values"], None, &config).unwrap();
    for (i, seq) in got.iter().enumerate() {
        let case = reference.cases.iter().find(|c| c.name == "greedy_default_config" && c.image_index == i).unwrap();
        assert_eq!(seq, &case.output_ids, "image {i}");
    }
}

#[test]
fn bf16_weights_compute_like_the_f32_reference() {
    let r = reference("opt");
    let model = load("opt", DType::BF16);
    // bf16 storage; on the CPU activations stay f32 between the products.
    assert_eq!(model.dtype(), DType::F32);
    assert_eq!(model.query_tokens.dtype(), DType::F32, "query tokens stay f32 like transformers");
    let features = model.image_features(&r["pixel_values"]).unwrap();
    // The fixture's weights are bf16 values, so bf16 storage loses nothing; with AVX512_BF16
    // the products round their inputs to bf16 (8 bits of mantissa), as PyTorch's bf16 does.
    let tol = if capmatch_models::ops::cpu_has_bf16_matmul() { 2e-2 } else { 1e-4 };
    assert_close("bf16-stored projection", &features, &r["language_projection"], tol);
    let file = std::fs::read_to_string(fixture("opt").join("generation_config.json")).unwrap();
    let config = model.default_generation_config().merged_with(&GenerationConfig::from_json(&file).unwrap());
    let out = model.generate(&r["pixel_values"].i(0..1).unwrap(), None, &config).unwrap();
    let reference = cases("opt");
    let case = reference.cases.iter().find(|c| c.name == "greedy_default_config" && c.image_index == 0).unwrap();
    assert_eq!(out[0], case.output_ids, "bf16 weights: same tokens as the f32 reference");
}

/// Peak resident memory of this process, in GiB (Linux).
fn peak_rss_gib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / (1024.0 * 1024.0)
}

/// A full-size checkpoint (`make_random_checkpoint.py blip2-opt-2.7b DIR`), bf16, memory-mapped:
///
///     CAPMATCH_BLIP2_FULL=DIR cargo test --release -p capmatch-models --test blip2_parity -- --ignored --nocapture
#[test]
#[ignore = "needs a full-size checkpoint in CAPMATCH_BLIP2_FULL (~8 GB)"]
fn full_size_bf16_checkpoint_captions_within_memory() {
    let dir = PathBuf::from(std::env::var("CAPMATCH_BLIP2_FULL").expect("CAPMATCH_BLIP2_FULL"));
    let config = Blip2Config::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let start = std::time::Instant::now();
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weight_files(&dir), DType::BF16, &Device::Cpu) }.unwrap();
    let model = Blip2ForConditionalGeneration::load(vb, &config).unwrap();
    eprintln!("loaded in {:.1?}, peak RSS {:.2} GiB", start.elapsed(), peak_rss_gib());
    let size = config.vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (1, 3, size, size), &Device::Cpu).unwrap();
    let start = std::time::Instant::now();
    let features = model.image_features(&pixels).unwrap();
    eprintln!("vision + Q-Former + projection: {:.1?}", start.elapsed());
    let Blip2LanguageModel::Opt(lm) = &model.language_model else { panic!("an OPT checkpoint") };
    let ids = Tensor::new(model.input_ids(None).unwrap(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut cache = lm.new_cache();
    let start = std::time::Instant::now();
    lm.forward_embeds_last(&model.embed(&ids, &features).unwrap(), &mut cache).unwrap();
    eprintln!("OPT prefill ({} tokens): {:.1?}", ids.dim(1).unwrap(), start.elapsed());
    let start = std::time::Instant::now();
    lm.forward_embeds_last(&lm.embed_tokens(&Tensor::new(&[[2u32]], &Device::Cpu).unwrap()).unwrap(), &mut cache).unwrap();
    eprintln!("OPT step with cache: {:.1?}", start.elapsed());
    let gen = GenerationConfig { max_new_tokens: Some(5), ..model.default_generation_config() };
    let start = std::time::Instant::now();
    let out = model.generate(&pixels, None, &gen).unwrap();
    eprintln!(
        "greedy, 5 new tokens: {:.1?}, {} ids, peak RSS {:.2} GiB",
        start.elapsed(),
        out[0].len(),
        peak_rss_gib()
    );
    let prompt = config.num_query_tokens + 1;
    assert!(out[0].len() > prompt && out[0].len() <= prompt + 5, "{} ids", out[0].len());
    assert!(peak_rss_gib() < 16.0, "peak RSS {:.2} GiB", peak_rss_gib());
}
