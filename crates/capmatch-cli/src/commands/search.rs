//! `capmatch search`: rank the gallery against a query image or text.
//!
//! The query is embedded with the CLIP model recorded in the index (never another one), while
//! the gallery loads on another thread.

use anyhow::{bail, Context};
use capmatch_index::{Gallery, Hit, ModelIdentity, Scoring, SqliteStore, Store};

use capmatch_core::hub::ModelKind;
use capmatch_core::image_io::{decode_file, DecodeLimits};

use crate::commands::models::{load_clip, Checkpoint};
use crate::{ClipArg, SearchArgs, SearchMode};

/// One result as `--json` prints it: exactly these keys, in this order.
#[derive(serde::Serialize)]
struct JsonHit<'a> {
    rank: usize,
    score: f32,
    path: &'a str,
    domain: &'a str,
    caption: &'a str,
}

/// How the query is compared, from the flags: an image query scores captions by default, a
/// text query scores images by default (`--mode caption` compares it with the captions).
fn scoring(args: &SearchArgs) -> anyhow::Result<Scoring> {
    if !(0.0..=1.0).contains(&args.weight) {
        bail!("--weight must be between 0 and 1, not {}", args.weight);
    }
    let text = args.text.is_some();
    Ok(match args.mode {
        None if text => Scoring::Image,
        None | Some(SearchMode::Caption) => Scoring::Caption,
        Some(SearchMode::Image) => Scoring::Image,
        Some(SearchMode::Fused) => Scoring::Fused { caption_weight: args.weight },
        Some(SearchMode::Text) if text => Scoring::Image,
        Some(SearchMode::Text) => bail!("--mode text needs a --text query"),
    })
}

pub fn run(args: SearchArgs) -> anyhow::Result<()> {
    let scoring = scoring(&args)?;
    let store = SqliteStore::open_read_only(&args.db)?;
    let identity = store.models()?.with_context(|| format!("the index {} is empty", args.db.display()))?;
    let domain = args.domain.clone();
    // Overlap: read the vectors while the model loads and embeds the query.
    let (gallery, query) = std::thread::scope(|scope| {
        let loading = scope.spawn(move || Gallery::load(&store, domain.as_deref()));
        let query = embed_query(&args, &identity);
        (loading.join().expect("gallery loading thread panicked"), query)
    });
    let gallery = gallery?;
    let query = query?;
    if gallery.is_empty() {
        match &args.domain {
            Some(d) => bail!("no image of domain {d:?} in {}", args.db.display()),
            None => bail!("the index {} holds no image", args.db.display()),
        }
    }
    let hits = gallery.search(&query, scoring, args.k, args.domain.as_deref())?;
    print_hits(&hits, args.json)
}

fn print_hits(hits: &[Hit], json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<JsonHit<'_>> = hits
            .iter()
            .map(|h| JsonHit { rank: h.rank, score: h.score, path: &h.path, domain: &h.domain, caption: &h.caption })
            .collect();
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    if hits.is_empty() {
        eprintln!("no match: the gallery (or the --domain asked for) is empty");
        return Ok(());
    }
    let domain_width = hits.iter().map(|h| h.domain.chars().count()).max().unwrap_or(0).max("domain".len());
    println!("{:>4}  {:>7}  {:<domain_width$}  path / caption", "rank", "score", "domain");
    for h in hits {
        println!("{:>4}  {:>7.4}  {:<domain_width$}  {}", h.rank, h.score, h.domain, h.path);
        println!("{:>4}  {:>7}  {:<domain_width$}  \u{21b3} {}", "", "", "", h.caption);
    }
    Ok(())
}

/// The query's CLIP embedding (vision tower for an image, text tower for a text), with the
/// CLIP the index was built with: its spec is recorded in the index (`--clip` overrides the
/// location, e.g. when the index was built from another directory), and its config hash
/// must match the recorded one.
fn embed_query(args: &SearchArgs, identity: &ModelIdentity) -> anyhow::Result<Vec<f32>> {
    // Read the query image first: a bad path should fail before a model loads.
    let image = match &args.image {
        Some(path) => Some(
            decode_file(path, &DecodeLimits::default())
                .with_context(|| format!("cannot read the query image {}", path.display()))?,
        ),
        None => None,
    };
    let spec = args.clip.clone().unwrap_or_else(|| identity.clip.clone());
    let checkpoint = Checkpoint::resolve(&spec, ModelKind::Clip)
        .with_context(|| format!("cannot find the CLIP model the index was built with ({spec}); pass --clip"))?;
    if checkpoint.config_hash != identity.clip_config {
        bail!(
            "the CLIP model at {spec} (config {}) is not the one the index was built with ({}, config {})",
            checkpoint.config_hash,
            identity.clip,
            identity.clip_config
        );
    }
    let clip = load_clip(&ClipArg { clip: checkpoint.dir.display().to_string() }, args.dtype)?;
    let mut vectors = match (&image, &args.text) {
        (Some(image), _) => clip.embed_images(std::slice::from_ref(image))?,
        (None, Some(text)) => clip.embed_texts(&[text.as_str()])?,
        (None, None) => bail!("give a query image or --text"),
    };
    vectors.pop().context("the CLIP model returned no embedding")
}
