//! CLIP parity against transformers: every fixture under fixtures/clip/ (written by
//! tools/reference/clip_fixtures.py) holds a tiny random-weight `CLIPModel` checkpoint, the
//! real CLIP tokenizer and the reference outputs of transformers (f32) for a set of texts and
//! images. Run with `cargo test --release -p capmatch-core --test clip_parity`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use capmatch_core::embedder::ClipEmbedder;
use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_core::preprocess::ImageProcessor;
use capmatch_core::{Kernels, LoadOptions};
use image::RgbImage;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn fixture_dirs() -> Vec<PathBuf> {
    let root = repo_root().join("fixtures/clip");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file() && p.join("reference.safetensors").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 2, "expected at least two CLIP fixtures in {}", root.display());
    dirs
}

struct Fixture {
    dir: PathBuf,
    texts: Vec<String>,
    /// (name, kind, decoded image)
    images: Vec<(String, String, RgbImage)>,
    tensors: HashMap<String, Tensor>,
}

impl Fixture {
    fn load(dir: &Path) -> Self {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let texts = meta["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
        let images = meta["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|im| {
                let rel = im["path"].as_str().unwrap();
                let path = if im["repo_relative"].as_bool().unwrap() { repo_root().join(rel) } else { dir.join(rel) };
                let img = decode_file(&path, &DecodeLimits::default()).unwrap();
                (im["name"].as_str().unwrap().to_owned(), im["kind"].as_str().unwrap().to_owned(), img)
            })
            .collect();
        let tensors = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
        Self { dir: dir.to_path_buf(), texts, images, tensors }
    }

    fn t(&self, key: &str) -> &Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("{}: no tensor {key}", self.dir.display()))
    }

    fn vec(&self, key: &str) -> Vec<f32> {
        self.t(key).to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    fn ids(&self, key: &str) -> Vec<Vec<u32>> {
        self.t(key).to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap().into_iter()
            .map(|r| r.into_iter().map(|x| x as u32).collect())
            .collect()
    }

    fn name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn token_ids_are_identical() {
    for dir in fixture_dirs() {
        let fx = Fixture::load(&dir);
        let emb = ClipEmbedder::load(&dir, DType::F32).unwrap();
        let mut saw_truncation = false;
        for (i, text) in fx.texts.iter().enumerate() {
            let want = &fx.ids(&format!("text.{i}.input_ids"))[0];
            let got = emb.tokenize(text).unwrap();
            assert_eq!(&got, want, "{}: text {i} {text:?}", fx.name());
            saw_truncation |= got.len() == emb.max_text_len();
        }
        assert!(saw_truncation, "{}: no text reached the context length", fx.name());
        // The real CLIP vocabulary: well-known ids.
        assert_eq!(emb.tokenize("a photo of a cat").unwrap(), vec![49406, 320, 1125, 539, 320, 2368, 49407]);

        let texts: Vec<&str> = fx.texts.iter().map(String::as_str).collect();
        let (ids, mask) = emb.encode_batch(&texts).unwrap();
        let to_rows = |t: Tensor| -> Vec<Vec<u32>> { t.to_vec2::<u32>().unwrap() };
        assert_eq!(to_rows(ids), fx.ids("text_batch.input_ids"), "{}: padded batch ids", fx.name());
        assert_eq!(to_rows(mask), fx.ids("text_batch.attention_mask"), "{}: attention mask", fx.name());
    }
}

/// The f32 model on `kernels` (the fused CPU kernels, or candle ops as a GPU runs them).
fn load_f32(dir: &Path, kernels: Kernels) -> ClipEmbedder {
    ClipEmbedder::load_with(dir, &LoadOptions::new(DType::F32).with_kernels(kernels)).unwrap()
}

#[test]
fn f32_text_embeddings_match_transformers() {
    check_f32_text_embeddings(Kernels::Fused);
}

/// The candle path (what a GPU runs) on the CPU, to the same bounds.
#[test]
fn f32_text_embeddings_match_transformers_on_candle_ops() {
    check_f32_text_embeddings(Kernels::Candle);
}

fn check_f32_text_embeddings(kernels: Kernels) {
    for dir in fixture_dirs() {
        let fx = Fixture::load(&dir);
        let emb = load_f32(&dir, kernels);
        let texts: Vec<&str> = fx.texts.iter().map(String::as_str).collect();
        // All together (padded batch) and one by one must both match.
        let batch = emb.embed_texts(&texts).unwrap();
        let reference_batch = fx.vec("text_batch.embeds");
        let dim = emb.dim();
        for (i, text) in texts.iter().enumerate() {
            let want = fx.vec(&format!("text.{i}.embeds"));
            assert_eq!(want.len(), dim);
            let single = &emb.embed_texts(&[text]).unwrap()[0];
            for (label, got) in [("batch", &batch[i]), ("single", single)] {
                let d = max_abs_diff(got, &want);
                let c = cosine(got, &want);
                assert!(d <= 1e-4 && c >= 0.99999, "{} {kernels} text {i} ({label}): max abs {d:e}, cosine {c}", fx.name());
            }
            assert!(max_abs_diff(&batch[i], &reference_batch[i * dim..(i + 1) * dim]) <= 1e-4);
            let norm: f32 = batch[i].iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
    }
}

#[test]
fn pixels_match_on_images_that_need_no_resampling() {
    for dir in fixture_dirs() {
        let fx = Fixture::load(&dir);
        let proc = ImageProcessor::from_file(&dir.join("preprocessor_config.json")).unwrap();
        let mut n = 0;
        for (name, kind, img) in &fx.images {
            if kind != "exact" {
                continue;
            }
            let got = proc.preprocess(img).unwrap();
            let want = fx.vec(&format!("image.{name}.pixel_values"));
            let d = max_abs_diff(&got, &want);
            assert!(d <= 1e-4, "{} {name}: pixel max abs diff {d:e}", fx.name());
            n += 1;
        }
        assert!(n >= 2, "{}: too few exact-size images", fx.name());
    }
}

#[test]
fn resampling_matches_pillow() {
    // Pillow's antialiased bicubic vs fast_image_resize's CatmullRom convolution on U8.
    let mut worst = 0u8;
    let mut mismatched = 0usize;
    let mut total = 0usize;
    for dir in fixture_dirs() {
        let fx = Fixture::load(&dir);
        let proc = ImageProcessor::from_file(&dir.join("preprocessor_config.json")).unwrap();
        for (name, kind, img) in &fx.images {
            if kind != "resampled" {
                continue;
            }
            let want = fx.t(&format!("image.{name}.resized_u8")); // (3, H, W)
            let (_, h, w) = want.dims3().unwrap();
            let want: Vec<u8> = want.permute((1, 2, 0)).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let got = proc.resize_image(img).unwrap();
            assert_eq!((got.height() as usize, got.width() as usize), (h, w), "{} {name}: resized size", fx.name());
            for (a, b) in got.as_raw().iter().zip(&want) {
                let d = a.abs_diff(*b);
                worst = worst.max(d);
                mismatched += (d != 0) as usize;
            }
            total += want.len();
            // The full pixel tensor: identical 8-bit input -> float-exact output.
            let px = proc.preprocess(img).unwrap();
            let d = max_abs_diff(&px, &fx.vec(&format!("image.{name}.pixel_values")));
            assert!(d <= 1e-4, "{} {name}: pixel max abs diff {d:e}", fx.name());
        }
    }
    eprintln!("resampling vs Pillow: {mismatched} of {total} channel values differ, worst by {worst}");
    assert_eq!(worst, 0, "{mismatched} of {total} resampled values differ from Pillow (worst by {worst})");
}

#[test]
fn f32_image_embeddings_match_transformers() {
    check_f32_image_embeddings(Kernels::Fused);
}

/// The candle path (what a GPU runs) on the CPU, to the same bounds.
#[test]
fn f32_image_embeddings_match_transformers_on_candle_ops() {
    check_f32_image_embeddings(Kernels::Candle);
}

fn check_f32_image_embeddings(kernels: Kernels) {
    for dir in fixture_dirs() {
        let fx = Fixture::load(&dir);
        let emb = load_f32(&dir, kernels);
        for (name, kind, img) in &fx.images {
            let want = fx.vec(&format!("image.{name}.embeds"));
            let got = &emb.embed_images(std::slice::from_ref(img)).unwrap()[0];
            let d = max_abs_diff(got, &want);
            let c = cosine(got, &want);
            // Resampled images: the brief asks cosine >= 0.999; resizing is bit-identical to
            // Pillow, so they are held to the same bound as the others.
            assert!(c >= 0.999, "{} {kernels} {name} ({kind}): cosine {c}", fx.name());
            assert!(d <= 1e-4 && c >= 0.99999, "{} {kernels} {name} ({kind}): max abs {d:e}, cosine {c}", fx.name());
        }
        // A batch of all images gives the same as one by one.
        let imgs: Vec<RgbImage> = fx.images.iter().map(|(_, _, i)| i.clone()).collect();
        let batch = emb.embed_images(&imgs).unwrap();
        for ((name, _, _), got) in fx.images.iter().zip(&batch) {
            let want = fx.vec(&format!("image.{name}.embeds"));
            assert!(cosine(got, &want) >= 0.999, "{} {name}: batched", fx.name());
        }
    }
}

#[test]
fn half_precision_embeddings_stay_close() {
    for dir in fixture_dirs() {
        let fx = Fixture::load(&dir);
        let texts: Vec<&str> = fx.texts.iter().map(String::as_str).collect();
        let imgs: Vec<RgbImage> = fx.images.iter().map(|(_, _, i)| i.clone()).collect();
        for dtype in [DType::BF16, DType::F16] {
            let emb = ClipEmbedder::load(&dir, dtype).unwrap();
            let mut worst = 1f64;
            for (i, got) in emb.embed_texts(&texts).unwrap().iter().enumerate() {
                let c = cosine(got, &fx.vec(&format!("text.{i}.embeds")));
                worst = worst.min(c);
                assert!(c >= 0.999, "{} {dtype:?} text {i}: cosine {c}", fx.name());
            }
            for ((name, _, _), got) in fx.images.iter().zip(emb.embed_images(&imgs).unwrap()) {
                let c = cosine(&got, &fx.vec(&format!("image.{name}.embeds")));
                worst = worst.min(c);
                assert!(c >= 0.999, "{} {dtype:?} image {name}: cosine {c}", fx.name());
            }
            eprintln!("{} {dtype:?}: worst cosine vs f32 reference {worst:.6}", fx.name());
        }
    }
}

#[test]
fn embedder_reports_its_geometry() {
    for dir in fixture_dirs() {
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let emb = ClipEmbedder::load(&dir, DType::F32).unwrap();
        assert_eq!(emb.dim() as u64, cfg["projection_dim"].as_u64().unwrap());
        assert!(emb.embed_texts(&[]).unwrap().is_empty());
        assert!(emb.embed_images(&[]).unwrap().is_empty());
        let (ids, _) = emb.encode_batch(&["a"]).unwrap();
        assert_eq!(ids.dims(), &[1, 3]);
    }
}

/// Each tower is built when it is first used, so a process that only embeds texts never
/// reads the vision weights (issue 15: a text-only server's memory); the vectors are the
/// same as when both towers are built first.
#[test]
fn towers_are_built_on_first_use() {
    for dir in fixture_dirs() {
        let fx = Fixture::load(&dir);
        let texts: Vec<&str> = fx.texts.iter().map(String::as_str).collect();
        let imgs: Vec<RgbImage> = fx.images.iter().map(|(_, _, i)| i.clone()).collect();

        let text_only = ClipEmbedder::load(&dir, DType::F32).unwrap();
        assert_eq!(text_only.towers_built(), (false, false), "{}: nothing is built at load", fx.name());
        let text_vectors = text_only.embed_texts(&texts).unwrap();
        assert_eq!(text_only.towers_built(), (true, false), "{}: texts build the text tower only", fx.name());

        let image_only = ClipEmbedder::load(&dir, DType::F32).unwrap();
        let image_vectors = image_only.embed_images(&imgs).unwrap();
        assert_eq!(image_only.towers_built(), (false, true), "{}: images build the vision tower only", fx.name());

        let both = ClipEmbedder::load(&dir, DType::F32).unwrap();
        both.load_both_towers().unwrap();
        assert_eq!(both.towers_built(), (true, true));
        assert_eq!(both.embed_texts(&texts).unwrap(), text_vectors, "{}: text vectors", fx.name());
        assert_eq!(both.embed_images(&imgs).unwrap(), image_vectors, "{}: image vectors", fx.name());
    }
}

/// A checkpoint without one of the towers is refused at load, not at its first use.
#[test]
fn a_checkpoint_without_a_tower_is_refused_at_load() {
    let dir = &fixture_dirs()[0];
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json" || e == "txt") {
            std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    // The weights without the vision tower's projection.
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let kept: HashMap<String, Tensor> = weights.into_iter().filter(|(name, _)| name != "visual_projection.weight").collect();
    candle_core::safetensors::save(&kept, tmp.path().join("model.safetensors")).unwrap();
    let err = ClipEmbedder::load(tmp.path(), DType::F32).unwrap_err().to_string();
    assert!(err.contains("visual_projection.weight"), "{err}");
}

/// A full-size random checkpoint (not committed):
///   python3 tools/reference/make_random_checkpoint.py clip-vit-base-patch32 /tmp/clip-b32
///   CAPMATCH_CLIP_FULL_DIR=/tmp/clip-b32 cargo test --release -p capmatch-core --test clip_parity -- --ignored
#[test]
#[ignore = "needs CAPMATCH_CLIP_FULL_DIR (a checkpoint made by make_random_checkpoint.py)"]
fn full_size_checkpoint() {
    let dir = PathBuf::from(std::env::var("CAPMATCH_CLIP_FULL_DIR").expect("set CAPMATCH_CLIP_FULL_DIR"));
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("capmatch_reference.json")).unwrap()).unwrap();
    let rows = |key: &str| -> Vec<Vec<f32>> {
        reference[key].as_array().unwrap().iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect()
    };
    let texts: Vec<String> = reference["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().into()).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let images: Vec<RgbImage> = reference["images"].as_array().unwrap().iter()
        .map(|p| decode_file(&repo_root().join(p.as_str().unwrap()), &DecodeLimits::default()).unwrap())
        .collect();
    for dtype in [DType::F32, DType::BF16] {
        let t0 = std::time::Instant::now();
        let emb = ClipEmbedder::load(&dir, dtype).unwrap();
        let load = t0.elapsed();
        let t0 = std::time::Instant::now();
        let got_i = emb.embed_images(&images).unwrap();
        let t_img = t0.elapsed();
        let t0 = std::time::Instant::now();
        let got_t = emb.embed_texts(&texts).unwrap();
        let t_txt = t0.elapsed();
        eprintln!("{dtype:?}: load {load:?}, {} images {t_img:?}, {} texts {t_txt:?}", images.len(), texts.len());
        // The fixtures' bounds (issue 17): bf16 against the f32 reference, as there.
        let (min_cos, max_abs) = if dtype == DType::F32 { (0.99999, 1e-4) } else { (0.999, 1.0) };
        let (mut worst_cos, mut worst_abs) = (f64::INFINITY, 0.0f32);
        for (got, want) in got_i.iter().zip(rows("image_embeds")).chain(got_t.iter().zip(rows("text_embeds"))) {
            assert_eq!(got.len(), emb.dim());
            let (c, d) = (cosine(got, &want), max_abs_diff(got, &want));
            eprintln!("  cosine {c:.7}, max abs {d:.2e}");
            (worst_cos, worst_abs) = (worst_cos.min(c), worst_abs.max(d));
            assert!(c >= min_cos && d <= max_abs, "{dtype:?}: cosine {c}, max abs {d:e}");
        }
        // One line for tools/reference/full_size_parity.py to collect.
        eprintln!("PARITY {} {dtype:?} min cosine {worst_cos:.7} (need >= {min_cos}), max abs {worst_abs:.2e}", dir.display());
    }
}

#[test]
fn blip_image_processor_form_matches_transformers() {
    // BlipImageProcessor semantics: {height, width} (here 40x56, not square), no crop.
    let mut checked = 0;
    for dir in fixture_dirs() {
        let fx = Fixture::load(&dir);
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let proc = ImageProcessor::from_config(&meta["blip_processor"]).unwrap();
        assert_eq!(proc.center_crop, None);
        let imgs: Vec<RgbImage> = fx.images.iter().map(|(_, _, i)| i.clone()).collect();
        let batch = proc.batch(&imgs, &Device::Cpu).unwrap();
        assert_eq!(batch.dims(), &[imgs.len(), 3, 40, 56]);
        for (k, (name, _, _)) in fx.images.iter().enumerate() {
            let got: Vec<f32> = batch.get(k).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let d = max_abs_diff(&got, &fx.vec(&format!("blip_image.{name}.pixel_values")));
            assert!(d <= 1e-4, "{} {name}: BLIP-form pixel max abs diff {d:e}", fx.name());
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn resize_is_bit_identical_to_pillow_for_random_sizes_and_filters() {
    use capmatch_core::preprocess::{resize_rgb, Resample};
    let path = repo_root().join("fixtures/clip/resample.safetensors");
    let t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut cases = 0;
    let mut orders = (0, 0);
    while let Some(src) = t.get(&format!("case{cases}.src")) {
        let out = &t[&format!("case{cases}.out")];
        let code = t[&format!("case{cases}.resample")].to_vec1::<i64>().unwrap()[0];
        let (ih, iw, _) = src.dims3().unwrap();
        let (oh, ow, _) = out.dims3().unwrap();
        let img = RgbImage::from_raw(iw as u32, ih as u32, src.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap();
        let got = resize_rgb(&img, ow as u32, oh as u32, Resample::from_pil(code as u64).unwrap()).unwrap();
        let want: Vec<u8> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got.as_raw(), &want, "case {cases}: {iw}x{ih} -> {ow}x{oh}, resample {code}");
        // Both of Pillow's pass orders occur among the cases.
        let (dy, dx) = (ih as i64 - oh as i64, iw as i64 - ow as i64);
        if dy > 0 && dy > 2 * dx && dx != 0 { orders.1 += 1 } else if dx != 0 && dy != 0 { orders.0 += 1 }
        cases += 1;
    }
    assert!(cases >= 20 && orders.0 > 0 && orders.1 > 0, "{cases} cases, pass orders {orders:?}");
}
