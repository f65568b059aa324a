//! Deterministic fake models and gallery helpers shared by the integration tests.
#![allow(dead_code)]


use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use capmatch_engine::{GalleryModels, ModelIdentity};
use image::RgbImage;

pub const DIM: usize = 8;

/// Fake captioner + CLIP: captions name the dominant colour, image embeddings are pixel
/// statistics, text embeddings are derived from the text's hash. Counts every call (clones
/// share the counters, so a test keeps its copy while the engine holds another).
#[derive(Clone)]
pub struct FakeModels {
    pub name: String,
    pub prompt: String,
    /// Also caption every image with its size (two captions per image).
    pub two_captions: bool,
    /// `embed_images` fails from this call on (1-based).
    pub fail_from_call: Option<usize>,
    /// `embed_images` fails on any batch containing an image of this width.
    pub poison_width: Option<u32>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    caption_calls: AtomicUsize,
    text_calls: AtomicUsize,
    texts_seen: AtomicUsize,
    image_calls: AtomicUsize,
    images_seen: AtomicUsize,
}

impl FakeModels {
    pub fn new() -> Self {
        Self {
            name: "fake-clip".into(),
            prompt: "a picture of".into(),
            two_captions: false,
            fail_from_call: None,
            poison_width: None,
            counts: Arc::default(),
        }
    }
    pub fn caption_calls(&self) -> usize {
        self.counts.caption_calls.load(Ordering::SeqCst)
    }
    pub fn text_calls(&self) -> usize {
        self.counts.text_calls.load(Ordering::SeqCst)
    }
    pub fn texts_seen(&self) -> usize {
        self.counts.texts_seen.load(Ordering::SeqCst)
    }
    pub fn image_calls(&self) -> usize {
        self.counts.image_calls.load(Ordering::SeqCst)
    }
    pub fn images_seen(&self) -> usize {
        self.counts.images_seen.load(Ordering::SeqCst)
    }
    pub fn model_calls(&self) -> usize {
        self.caption_calls() + self.text_calls() + self.image_calls()
    }
}

pub fn colour_name(image: &RgbImage) -> &'static str {
    let (r, g, b) = mean_rgb(image);
    let names = [
        ((255.0, 255.0, 255.0), "white"),
        ((0.0, 0.0, 0.0), "black"),
        ((255.0, 0.0, 0.0), "red"),
        ((0.0, 255.0, 0.0), "green"),
        ((0.0, 0.0, 255.0), "blue"),
        ((255.0, 255.0, 0.0), "yellow"),
        ((128.0, 0.0, 128.0), "purple"),
        ((128.0, 128.0, 128.0), "grey"),
    ];
    names
        .iter()
        .min_by(|x, y| {
            let d = |c: &(f64, f64, f64)| (c.0 - r).powi(2) + (c.1 - g).powi(2) + (c.2 - b).powi(2);
            d(&x.0).total_cmp(&d(&y.0))
        })
        .unwrap()
        .1
}

pub fn mean_rgb(image: &RgbImage) -> (f64, f64, f64) {
    let n = (image.width() * image.height()) as f64;
    let mut s = (0.0, 0.0, 0.0);
    for p in image.pixels() {
        s.0 += p[0] as f64;
        s.1 += p[1] as f64;
        s.2 += p[2] as f64;
    }
    (s.0 / n, s.1 / n, s.2 / n)
}

pub fn fake_image_embedding(image: &RgbImage) -> Vec<f32> {
    let (r, g, b) = mean_rgb(image);
    let v = [r / 255.0, g / 255.0, b / 255.0, 0.3, image.width() as f64 / 1000.0, image.height() as f64 / 1000.0, 0.1, 0.2];
    normalise(v.iter().map(|x| *x as f32).collect())
}

pub fn fake_text_embedding(text: &str) -> Vec<f32> {
    let h = blake3::hash(text.as_bytes());
    normalise(h.as_bytes()[..DIM].iter().map(|b| *b as f32 / 255.0 + 0.01).collect())
}

pub fn normalise(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

pub fn fake_captions(image: &RgbImage, two: bool) -> Vec<String> {
    let mut c = vec![format!("a picture of something {}", colour_name(image))];
    if two {
        c.push(format!("a picture of size {}x{}", image.width(), image.height()));
    }
    c
}

impl GalleryModels for FakeModels {
    fn identity(&self) -> ModelIdentity {
        ModelIdentity {
            clip: self.name.clone(),
            clip_config: "c0ffee".into(),
            captioner: "fake-blip".into(),
            captioner_config: "beef".into(),
            prompt: self.prompt.clone(),
        }
    }
    fn caption(&self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<String>>> {
        self.counts.caption_calls.fetch_add(1, Ordering::SeqCst);
        Ok(images.iter().map(|i| fake_captions(i, self.two_captions)).collect())
    }
    fn embed_texts(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.counts.text_calls.fetch_add(1, Ordering::SeqCst);
        self.counts.texts_seen.fetch_add(texts.len(), Ordering::SeqCst);
        Ok(texts.iter().map(|t| fake_text_embedding(t)).collect())
    }
    fn embed_images(&self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<f32>>> {
        let call = self.counts.image_calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_from_call.is_some_and(|n| call >= n) {
            anyhow::bail!("simulated model failure");
        }
        if let Some(w) = self.poison_width {
            if images.iter().any(|i| i.width() == w) {
                anyhow::bail!("simulated poison image");
            }
        }
        self.counts.images_seen.fetch_add(images.len(), Ordering::SeqCst);
        Ok(images.iter().map(fake_image_embedding).collect())
    }
}

pub fn real_images_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/images/real")
}

/// Copies the six real fixture PNGs into `dir`; returns their new paths, sorted.
pub fn copy_real_images(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(real_images_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "png") {
            let dest = dir.join(p.file_name().unwrap());
            std::fs::copy(&p, &dest).unwrap();
            out.push(dest);
        }
    }
    out.sort();
    assert_eq!(out.len(), 6, "expected six real fixture images");
    out
}

/// A solid-colour PNG.
pub fn write_solid_png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    RgbImage::from_pixel(w, h, image::Rgb(rgb)).save(path).unwrap();
}

/// Opens `db` for writing with `models` (a clone sharing its counters).
pub fn writer(db: &Path, models: &FakeModels) -> capmatch_engine::Result<capmatch_engine::Engine> {
    capmatch_engine::Engine::open_writer(db, Arc::new(models.clone()), false, &|_| {})
}

/// Opens `db` for searching.
pub fn reader(db: &Path) -> capmatch_engine::Engine {
    capmatch_engine::Engine::open_reader(db, capmatch_engine::QueryModels::default()).unwrap()
}

/// Every indexed file with its vectors, in path order.
pub fn gallery_of(db: &Path) -> Vec<(capmatch_engine::store::ImageEntry, capmatch_engine::store::VectorRecord)> {
    let engine = reader(db);
    let ids: Vec<_> = engine.ids().unwrap().into_iter().map(|(id, _)| id).collect();
    let mut out: Vec<_> = engine
        .entries(&ids)
        .unwrap()
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let v = engine.vectors(e.id).unwrap();
            (e, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    out
}

pub fn summary_of(db: &Path) -> capmatch_engine::CatalogSummary {
    reader(db).summary().unwrap()
}
