//! A gallery of N synthetic images for the server's load benchmark
//! (`tools/bench/serve_load.sh`): random unit vectors and made-up captions written straight
//! through the store's APIs, bound to real model checkpoints, so that `capmatch serve` opens
//! it as any gallery (and an index job can add real images to it).
//!
//! ```text
//! cargo run --release -p capmatch-server --example synthetic_gallery -- \
//!     --db bench.db --images 100000 --clip DIR --captioner DIR
//! ```
//!
//! The files it names (`/synthetic/...`) do not exist: searches work, thumbnails answer 404.

use std::path::PathBuf;

use anyhow::Context;
use capmatch_engine::store::exact::Access;
use capmatch_engine::store::{Catalog, CatalogBatch, ContentRecord, ExactIndex, FileRecord, SqliteCatalog, VectorIndex, VectorRecord};
use capmatch_engine::{GalleryModels, ModelConfig, Models};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The catalog file to create (it must not exist).
    #[arg(long)]
    db: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    images: usize,
    /// The CLIP checkpoint the gallery claims (its projection size is the dimension).
    #[arg(long)]
    clip: String,
    #[arg(long)]
    captioner: String,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

const DOMAINS: [&str; 6] = ["art", "clipart", "product", "real_world", "sketch", "painting"];
const STYLES: [&str; 6] = ["a painting of", "a drawing of", "a product photo of", "a photo of", "a sketch of", "an illustration of"];
const THINGS: [&str; 16] = [
    "a lemon", "a bicycle", "a red chair", "two cats", "a laptop", "a mug on a table", "a pair of shoes", "an old clock",
    "a bunch of grapes", "a guitar", "a backpack", "a desk lamp", "a flower pot", "a pineapple", "a teapot", "a sailing boat",
];

/// splitmix64: a few lines of well-known generator, enough for benchmark data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    /// A random direction (normal coordinates, by Box–Muller), normalised.
    fn unit(&mut self, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim)
            .map(|_| (-2.0 * self.uniform().ln()).sqrt() * (std::f32::consts::TAU * self.uniform()).cos())
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(!args.db.exists(), "{} exists already", args.db.display());
    let models = Models::new(&ModelConfig { clip: args.clip.clone(), captioner: args.captioner.clone(), ..ModelConfig::default() })?;
    let identity = models.identity();
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(models.clip_checkpoint().dir.join("config.json"))?)?;
    let dim = config["projection_dim"].as_u64().context("no projection_dim in the CLIP config")? as usize;

    let mut catalog = SqliteCatalog::open(&args.db)?;
    catalog.bind_models(&identity)?;
    let mut index = ExactIndex::open(&ExactIndex::dir_for(&args.db), Access::ReadWrite, Some(&identity.vector_fingerprint()))?;
    let mut rng = Rng(args.seed);
    let chunk = 8192;
    for start in (0..args.images).step_by(chunk) {
        let end = (start + chunk).min(args.images);
        let paths: Vec<String> = (start..end).map(|i| format!("/synthetic/{}/{i:07}.jpg", DOMAINS[i % DOMAINS.len()])).collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let ids = catalog.allocate_ids(&refs)?;
        let mut batch = CatalogBatch::default();
        let mut vectors = Vec::with_capacity(paths.len());
        for ((i, path), id) in (start..end).zip(&paths).zip(ids) {
            let domain = DOMAINS[i % DOMAINS.len()].to_string();
            let hash = blake3::hash(path.as_bytes()).to_hex().to_string();
            let caption = format!("{} {}", STYLES[(rng.next() % 6) as usize], THINGS[(rng.next() % 16) as usize]);
            batch.contents.push(ContentRecord { hash: hash.clone(), width: 640, height: 480, captions: vec![caption] });
            batch.files.push(FileRecord { id, path: path.clone(), hash, size: 50_000, mtime_ns: 0, domain: domain.clone(), checked_at_ns: 0 });
            vectors.push(VectorRecord { id, domain, image: rng.unit(dim), captions: rng.unit(dim) });
        }
        index.upsert(&vectors)?;
        batch.dim = Some(dim);
        batch.vector_generation = Some(index.generation());
        catalog.apply(&batch)?;
        eprint!("\r{end}/{} images", args.images);
    }
    eprintln!("\nwrote {} ({} images, dimension {dim})", args.db.display(), args.images);
    Ok(())
}
