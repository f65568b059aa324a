//! `capmatch search`: rank the gallery against a query image or text.
//!
//! The query is embedded with the CLIP model recorded in the index (never another one).

use anyhow::bail;
use capmatch_engine::{Engine, Hit, Mode, Query, QueryModels, SearchRequest};

use crate::commands::models::device;
use crate::{SearchArgs, SearchMode};

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
fn mode(args: &SearchArgs) -> anyhow::Result<Mode> {
    if !(0.0..=1.0).contains(&args.weight) {
        bail!("--weight must be between 0 and 1, not {}", args.weight);
    }
    let text = args.text.is_some();
    Ok(match args.mode {
        None if text => Mode::Text,
        None | Some(SearchMode::Caption) => Mode::Caption,
        Some(SearchMode::Image) if text => Mode::Text,
        Some(SearchMode::Image) => Mode::Image,
        Some(SearchMode::Fused) => Mode::Fused,
        Some(SearchMode::Text) if text => Mode::Text,
        Some(SearchMode::Text) => bail!("--mode text needs a --text query"),
        Some(SearchMode::CaptionText) => Mode::CaptionText,
    })
}

pub fn run(args: SearchArgs) -> anyhow::Result<()> {
    let mode = mode(&args)?;
    // Read the query image first: a bad path fails before anything is opened or loaded.
    let query = match (&args.image, &args.text) {
        (Some(path), _) => Query::Image(
            capmatch_core::image_io::decode_file(path, &Default::default())
                .map_err(|e| anyhow::anyhow!("cannot read the query image {}: {e}", path.display()))?,
        ),
        (None, Some(text)) => Query::Text(text.clone()),
        (None, None) => bail!("give a query image or --text"),
    };
    let models = QueryModels { clip: args.clip.clone(), dtype: Some(args.dtype.engine()), device: Some(device(&args.device)?) };
    let engine = Engine::open_reader_in(&args.db, &args.store.store()?, models)?;
    if engine.is_empty()? {
        bail!("the index {} holds no image (run `capmatch index` first)", args.db.display());
    }
    if args.k == 0 {
        return print_hits(&[], args.json);
    }
    let mut request = SearchRequest::new(query, mode, args.k);
    request.weight = args.weight;
    request.domain = args.domain.clone();
    request.exact = args.exact;
    let response = engine.search(&request)?;
    if response.hits.is_empty() {
        if let Some(d) = &args.domain {
            bail!("no image of domain {d:?} in {}", args.db.display());
        }
    }
    print_hits(&response.hits, args.json)
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
