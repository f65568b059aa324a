//! Index files: a gallery indexed with the tiny fixture models, then one of its files (the
//! SQLite catalog or a file of the vector index beside it) replaced by the input, opened as
//! `capmatch search` and `capmatch info --check` open it, and searched. A truncated or
//! foreign file must give an error, never a panic or a wrong-sized read.
//!
//! Input layout: one byte naming the file (the seed index's files in name order, modulo
//! their count), then its bytes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use capmatch_engine::{Engine, IndexOptions, Mode, ModelConfig, Models, NoObserver, Query, QueryModels, SearchRequest};

use crate::{repo_root, Target};

/// The seed gallery, built on first use and kept for the process.
struct Seed {
    dir: tempfile::TempDir,
    /// Files of the gallery relative to `dir`, in name order (`index.db` first).
    files: Vec<PathBuf>,
}

#[derive(Default)]
pub struct IndexFiles {
    seed: OnceLock<Seed>,
}

const DB: &str = "index.db";

impl IndexFiles {
    fn seed(&self) -> anyhow::Result<&Seed> {
        if let Some(s) = self.seed.get() {
            return Ok(s);
        }
        let dir = tempfile::tempdir()?;
        let config = ModelConfig {
            clip: repo_root().join("fixtures/clip/tiny-quickgelu-p32").display().to_string(),
            captioner: repo_root().join("fixtures/blip/tiny-a").display().to_string(),
            ..ModelConfig::default()
        };
        {
            let engine = Engine::open_writer(&dir.path().join(DB), Arc::new(Models::new(&config)?), false, &|_| {})?;
            engine.index_folders(&IndexOptions::new(vec![repo_root().join("fixtures/images/real")]), &NoObserver)?;
        }
        let mut files = Vec::new();
        collect_files(dir.path(), dir.path(), &mut files)?;
        files.retain(|f| !f.to_string_lossy().ends_with(".lock"));
        files.sort_by_key(|f| (f != Path::new(DB), f.clone()));
        Ok(self.seed.get_or_init(|| Seed { dir, files }))
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

impl Target for IndexFiles {
    fn name(&self) -> &'static str {
        "index"
    }

    fn seeds(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let seed = self.seed()?;
        let mut seeds = Vec::new();
        for (i, rel) in seed.files.iter().enumerate() {
            let mut input = vec![i as u8];
            input.extend(std::fs::read(seed.dir.path().join(rel))?);
            seeds.push(input);
        }
        // A foreign SQLite file and garbage in the catalog's place.
        let foreign = tempfile::tempdir()?;
        let path = foreign.path().join("other.db");
        rusqlite::Connection::open(&path)?.execute_batch("CREATE TABLE files (id INTEGER, path TEXT); INSERT INTO files VALUES (1, 'x.png');")?;
        let mut input = vec![0u8];
        input.extend(std::fs::read(&path)?);
        seeds.push(input);
        seeds.push([&[0u8][..], b"not a database at all"].concat());
        Ok(seeds)
    }

    fn run(&self, input: &[u8]) -> anyhow::Result<()> {
        let Some((&which, body)) = input.split_first() else { anyhow::bail!("empty input") };
        let seed = self.seed()?;
        let tmp = tempfile::tempdir()?;
        for rel in &seed.files {
            let to = tmp.path().join(rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(seed.dir.path().join(rel), &to)?;
        }
        std::fs::write(tmp.path().join(&seed.files[which as usize % seed.files.len()]), body)?;
        let engine = Engine::open_reader(&tmp.path().join(DB), QueryModels::default())?;
        let info = engine.info()?;
        let _ = engine.check(false)?;
        let dim = info.vectors.dim.unwrap_or(0).max(1);
        let query: Vec<f32> = (0..dim).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        for mode in [Mode::Caption, Mode::Image, Mode::Fused] {
            engine.search(&SearchRequest::new(Query::Vector(query.clone()), mode, 5))?;
        }
        if let Some(id) = engine.ids()?.first() {
            engine.search(&SearchRequest::new(Query::ImageId(id.0), Mode::Caption, 5))?;
        }
        Ok(())
    }
}
