//! Inputs the workloads share, made once under `bench-models/` and reused:
//! random-weight checkpoints of the real shapes, pre-sized input images, captions of an exact
//! token length, gallery vectors, and folders of real image files for `capmatch index`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use image::imageops::FilterType;
use image::{Rgb, RgbImage};

/// A model architecture the harness benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    ClipB32,
    ClipL14,
    BlipBase,
    BlipLarge,
    Blip2Opt,
}

impl Arch {
    pub const ALL: [Arch; 5] = [Arch::ClipB32, Arch::ClipL14, Arch::BlipBase, Arch::BlipLarge, Arch::Blip2Opt];

    /// The name `make_random_checkpoint.py` knows, and the folder under `bench-models/`.
    pub fn id(self) -> &'static str {
        match self {
            Arch::ClipB32 => "clip-vit-base-patch32",
            Arch::ClipL14 => "clip-vit-large-patch14",
            Arch::BlipBase => "blip-image-captioning-base",
            Arch::BlipLarge => "blip-image-captioning-large",
            Arch::Blip2Opt => "blip2-opt-2.7b",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Arch::ClipB32 => "ViT-B/32",
            Arch::ClipL14 => "ViT-L/14",
            Arch::BlipBase => "BLIP base",
            Arch::BlipLarge => "BLIP large",
            Arch::Blip2Opt => "BLIP-2 OPT-2.7b",
        }
    }

    /// Side of the square input the model's processor produces.
    pub fn input_size(self) -> u32 {
        match self {
            Arch::ClipB32 | Arch::ClipL14 | Arch::Blip2Opt => 224,
            Arch::BlipBase | Arch::BlipLarge => 384,
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        let s = s.to_ascii_lowercase();
        Arch::ALL.into_iter().find(|a| {
            a.id() == s
                || a.short().to_ascii_lowercase().replace(' ', "-") == s
                || match a {
                    Arch::ClipB32 => s == "b32" || s == "vit-b-32",
                    Arch::ClipL14 => s == "l14" || s == "vit-l-14",
                    Arch::BlipBase => s == "blip-base",
                    Arch::BlipLarge => s == "blip-large",
                    Arch::Blip2Opt => s == "blip2-opt" || s == "blip2",
                }
        })
    }
}

pub struct Paths {
    pub root: PathBuf,
    pub python: String,
    pub repo: PathBuf,
}

impl Paths {
    pub fn checkpoint(&self, arch: Arch) -> PathBuf {
        self.root.join(arch.id())
    }
    pub fn reference_script(&self) -> PathBuf {
        self.repo.join("tools/reference/bench_reference.py")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
}

/// Makes a full-size random-weight checkpoint of `arch` unless one is there already.
/// Written to a scratch folder first and renamed, so an interrupted run leaves no half model.
pub fn ensure_checkpoint(paths: &Paths, arch: Arch) -> Result<PathBuf> {
    let dir = paths.checkpoint(arch);
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    let script = paths.repo.join("tools/reference/make_random_checkpoint.py");
    if !script.is_file() {
        bail!("{} is missing: cannot make the {} checkpoint", script.display(), arch.id());
    }
    let scratch = paths.root.join(format!(".{}.partial", arch.id()));
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!("[bench] making a random-weight {} checkpoint in {} ...", arch.id(), dir.display());
    let status = Command::new(&paths.python)
        .arg(&script)
        .arg(arch.id())
        .arg(&scratch)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() || !scratch.join("config.json").is_file() {
        bail!("{} {} failed ({status})", script.display(), arch.id());
    }
    std::fs::rename(&scratch, &dir)?;
    Ok(dir)
}

/// The real image files (PNG/JPEG) under `src`, sorted, keeping those at least `min_side`
/// pixels on their short side.
pub fn real_images(src: &Path, min_side: u32) -> Result<Vec<PathBuf>> {
    let png_or_jpeg = |path: &Path| {
        matches!(path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(), Some("png" | "jpg" | "jpeg"))
    };
    let out: Vec<PathBuf> = files_under(src, png_or_jpeg)?
        .into_iter()
        .filter(|path| image::image_dimensions(path).is_ok_and(|(w, h)| w.min(h) >= min_side))
        .collect();
    if out.is_empty() {
        bail!("no PNG/JPEG images of at least {min_side} px under {}", src.display());
    }
    Ok(out)
}

/// The files under `dir` (recursively) that `keep` accepts, sorted by path.
fn files_under(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if keep(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Picks `count` files spread evenly over `files`.
fn spread(files: &[PathBuf], count: usize) -> Vec<PathBuf> {
    (0..count).map(|i| files[(i * files.len() / count.max(1)) % files.len()].clone()).collect()
}

/// `count` real images as RGB PNGs already at `size`×`size` (alpha over white, centre
/// square, Lanczos), so that both sides' preprocessing is the same cheap rescale+normalise
/// and the timings are about the models.
pub fn ensure_sized_inputs(paths: &Paths, src: &[PathBuf], size: u32, count: usize) -> Result<PathBuf> {
    let dir = paths.root.join("inputs").join(format!("rgb{size}"));
    let done = dir.join(format!(".done-{count}"));
    if done.is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    for (i, path) in spread(src, count).iter().enumerate() {
        let rgba = image::open(path).with_context(|| format!("decoding {}", path.display()))?.to_rgba8();
        let (w, h) = rgba.dimensions();
        let mut rgb = RgbImage::new(w, h);
        for (x, y, p) in rgba.enumerate_pixels() {
            let a = p[3] as f32 / 255.0;
            let blend = |c: u8| (c as f32 * a + 255.0 * (1.0 - a)).round() as u8;
            rgb.put_pixel(x, y, Rgb([blend(p[0]), blend(p[1]), blend(p[2])]));
        }
        let side = w.min(h);
        let crop = image::imageops::crop_imm(&rgb, (w - side) / 2, (h - side) / 2, side, side).to_image();
        let sized = image::imageops::resize(&crop, size, size, FilterType::Lanczos3);
        sized.save(dir.join(format!("{i:03}.png")))?;
    }
    std::fs::write(done, "")?;
    Ok(dir)
}

/// Folders of real image files, copied unchanged, for `capmatch index`: `big` files, and
/// the first `small` of them (the big run's extra images are then exactly the rest).
pub fn ensure_index_folders(paths: &Paths, src: &[PathBuf], small: usize, big: usize) -> Result<(PathBuf, PathBuf)> {
    let files = spread(src, big);
    let small_dir = fill_folder(&paths.root.join("index-images").join(format!("real-{small}-of-{big}")), &files[..small.min(big)])?;
    let big_dir = fill_folder(&paths.root.join("index-images").join(format!("real-{big}")), &files)?;
    Ok((small_dir, big_dir))
}

/// `dir/photos/0000.png`, ... copies of `files`, unless a finished copy is there.
fn fill_folder(dir: &Path, files: &[PathBuf]) -> Result<PathBuf> {
    if dir.join(".done").is_file() {
        return Ok(dir.to_path_buf());
    }
    let _ = std::fs::remove_dir_all(dir);
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos)?;
    for (i, path) in files.iter().enumerate() {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("png");
        std::fs::copy(path, photos.join(format!("{i:04}.{ext}")))?;
    }
    std::fs::write(dir.join(".done"), "")?;
    Ok(dir.to_path_buf())
}

/// The image files under `dir`, sorted by path (the order `capmatch index` takes them in).
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    files_under(dir, |p| capmatch_core::image_io::is_image_path(p))
}

/// A CLIP tower of `arch`'s checkpoint exported to ONNX (f32) for the ONNX Runtime
/// reference, made once.
pub fn ensure_onnx(paths: &Paths, arch: Arch, tower: &str) -> Result<PathBuf> {
    let file = paths.root.join("onnx").join(format!("{}-{tower}.onnx", arch.id()));
    if !file.is_file() {
        let tmp = file.with_extension("partial.onnx");
        let model = paths.checkpoint(arch);
        python_utility(paths, &["export-onnx", "--model", model.to_str().unwrap(), "--tower", tower, "--out", tmp.to_str().unwrap()])?;
        std::fs::rename(tmp, &file)?;
    }
    Ok(file)
}

fn python_utility(paths: &Paths, args: &[&str]) -> Result<()> {
    let status = Command::new(&paths.python)
        .arg(paths.reference_script())
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {} {}", paths.reference_script().display(), args.join(" ")))?;
    if !status.success() {
        bail!("bench_reference.py {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `count` captions that the checkpoint's tokenizer turns into exactly `tokens` tokens.
pub fn ensure_captions(paths: &Paths, arch: Arch, tokens: usize, count: usize) -> Result<PathBuf> {
    let file = paths.root.join("inputs").join(format!("captions-{}-{tokens}x{count}.json", arch.id()));
    if !file.is_file() {
        std::fs::create_dir_all(file.parent().unwrap())?;
        let model = paths.checkpoint(arch);
        python_utility(
            paths,
            &[
                "captions",
                "--model",
                model.to_str().unwrap(),
                "--tokens",
                &tokens.to_string(),
                "--count",
                &count.to_string(),
                "--out",
                file.to_str().unwrap(),
            ],
        )?;
    }
    Ok(file)
}

/// L2-normalised random float32 vectors in a `.npy` file both sides read.
pub fn ensure_vectors(paths: &Paths, name: &str, n: usize, dim: usize, seed: u64) -> Result<PathBuf> {
    let file = paths.root.join("vectors").join(format!("{name}-{n}x{dim}-seed{seed}.npy"));
    if !file.is_file() {
        std::fs::create_dir_all(file.parent().unwrap())?;
        let tmp = file.with_extension("partial.npy");
        python_utility(
            paths,
            &[
                "make-vectors",
                "--n",
                &n.to_string(),
                "--dim",
                &dim.to_string(),
                "--seed",
                &seed.to_string(),
                "--out",
                tmp.to_str().unwrap(),
            ],
        )?;
        std::fs::rename(tmp, &file)?;
    }
    Ok(file)
}

/// Bytes the checkpoint's weights take once loaded in `dtype`: the size of its safetensors
/// files, rescaled from the dtype they are stored in (config.json `dtype` or `torch_dtype`,
/// float32 when absent) to `dtype`. None without safetensors files.
pub fn weights_bytes(dir: &Path, dtype: &str) -> Option<u64> {
    let stored: u64 = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("safetensors"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .sum();
    if stored == 0 {
        return None;
    }
    let config: serde_json::Value = std::fs::read_to_string(dir.join("config.json")).ok().and_then(|t| serde_json::from_str(&t).ok())?;
    let stored_dtype = config["dtype"].as_str().or(config["torch_dtype"].as_str()).unwrap_or("float32");
    let width = |name: &str| match name {
        "bfloat16" | "float16" | "bf16" | "f16" => 2,
        _ => 4,
    };
    Some(stored / width(stored_dtype) * width(dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blip2_arch_names() {
        for name in ["blip2-opt", "blip2", "blip2-opt-2.7b", "BLIP-2-OPT-2.7b"] {
            assert_eq!(Arch::parse(name), Some(Arch::Blip2Opt), "{name}");
        }
        assert_eq!(Arch::Blip2Opt.input_size(), 224);
    }

    #[test]
    fn weights_bytes_rescales_from_the_stored_dtype() {
        let dir = std::env::temp_dir().join(format!("capmatch-bench-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model-00001-of-00002.safetensors"), vec![0u8; 600]).unwrap();
        std::fs::write(dir.join("model-00002-of-00002.safetensors"), vec![0u8; 400]).unwrap();
        std::fs::write(dir.join("model.safetensors.index.json"), "{}").unwrap();
        std::fs::write(dir.join("config.json"), r#"{"dtype": "bfloat16"}"#).unwrap();
        assert_eq!(weights_bytes(&dir, "bf16"), Some(1000));
        assert_eq!(weights_bytes(&dir, "f32"), Some(2000));
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        assert_eq!(weights_bytes(&dir, "bf16"), Some(500));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
