//! `capmatch embed`: L2-normalised CLIP embeddings of images (vision tower) or texts
//! (text tower), in input order.

use serde::Serialize;

use super::models::{decode_all, device, load_clip_arg};
use crate::EmbedArgs;

/// Images and texts go through the model in slices of this size, bounding memory.
const BATCH: usize = 16;

#[derive(Serialize)]
struct Embedded {
    input: String,
    embedding: Vec<f32>,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let images = decode_all(&args.image)?;
    let model = load_clip_arg(&args.clip.clip, args.dtype, &device(&args.device)?)?;

    let mut rows = Vec::with_capacity(images.len() + args.text.len());
    for (paths, batch) in args.image.chunks(BATCH).zip(images.chunks(BATCH)) {
        for (path, embedding) in paths.iter().zip(model.embed_images(batch)?) {
            rows.push(Embedded { input: path.display().to_string(), embedding });
        }
    }
    for texts in args.text.chunks(BATCH) {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        for (text, embedding) in texts.iter().zip(model.embed_texts(&refs)?) {
            rows.push(Embedded { input: text.clone(), embedding });
        }
    }

    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn print_table(rows: &[Embedded]) {
    let width = rows.iter().map(|r| r.input.chars().count()).max().unwrap_or(5).clamp(5, 60);
    println!("{:<width$}  {:>5}  first values", "input", "dims");
    for row in rows {
        let head: Vec<String> = row.embedding.iter().take(4).map(|v| format!("{v:+.4}")).collect();
        println!("{:<width$}  {:>5}  {} …", truncate(&row.input, width), row.embedding.len(), head.join(" "));
    }
}

/// Shortens `s` to `width` characters for the table, marking the cut.
pub fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let kept: String = s.chars().take(width.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}
