//! Whether the two sides of a row computed the same thing: each worker writes the outputs of
//! its warm-up call (the inputs every timed call gets) to a JSON file, and the harness
//! compares them. A speed ratio only counts when the outputs agree (issue 17): f32
//! embeddings within cosine 0.9999, bf16 within 0.999; f32 token ids identical; search
//! results identical. bf16 captions are not required to match token for token (rounding
//! each product's inputs to bf16 moves the logits, and one different token changes the rest
//! of a greedy caption): their agreement is reported as a rate.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What a worker produced on the timed inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "rows", rename_all = "lowercase")]
pub enum Outputs {
    /// One L2-normalised embedding per image or caption.
    Embeddings(Vec<Vec<f32>>),
    /// Token ids per caption, as `generate` returns them (prompt included).
    Tokens(Vec<Vec<u32>>),
    /// Gallery positions of the best `k` per query, best first.
    Topk(Vec<Vec<u32>>),
    /// Captions with their token ids (the index's model work; not compared with a reference).
    Captions(Vec<CaptionOutput>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
}

impl Outputs {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string(self)?).with_context(|| format!("writing {}", path.display()))
    }
}

/// Least cosine similarity between two sides' embeddings for the row to count.
pub fn min_cosine(dtype: &str) -> f64 {
    if dtype == "f32" {
        0.9999
    } else {
        0.999
    }
}

/// The comparison of one row's outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    /// For the report, e.g. "min cosine 0.999998 over 32".
    pub text: String,
    /// Whether the row may count; None where only a rate is reported (bf16 tokens).
    pub ok: Option<bool>,
}

impl Agreement {
    /// Whether the outputs stand in the way of counting the row as met.
    pub fn disagrees(&self) -> bool {
        self.ok == Some(false)
    }
}

/// Compares our outputs with the reference's. `new_tokens`: the generated part of each
/// caption that is compared (the prompt and start tokens are the same by construction, and
/// the two sides may count the placeholder tokens of BLIP-2 differently).
pub fn compare(ours: &Outputs, reference: &Outputs, dtype: &str, new_tokens: usize) -> Agreement {
    match (ours, reference) {
        (Outputs::Embeddings(a), Outputs::Embeddings(b)) => embeddings(a, b, dtype),
        (Outputs::Tokens(a), Outputs::Tokens(b)) => tokens(a, b, dtype, new_tokens),
        (Outputs::Topk(a), Outputs::Topk(b)) => topk(a, b),
        _ => Agreement { text: "outputs of different kinds".into(), ok: Some(false) },
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na * nb)
}

fn embeddings(a: &[Vec<f32>], b: &[Vec<f32>], dtype: &str) -> Agreement {
    if a.len() != b.len() || a.is_empty() || a.iter().zip(b).any(|(x, y)| x.len() != y.len()) {
        return Agreement { text: format!("{} vs {} embeddings of different shapes", a.len(), b.len()), ok: Some(false) };
    }
    let min = a.iter().zip(b).map(|(x, y)| cosine(x, y)).fold(f64::INFINITY, f64::min);
    let need = min_cosine(dtype);
    Agreement { text: format!("min cosine {min:.6} over {} (need ≥ {need})", a.len()), ok: Some(min >= need) }
}

/// The last `n` ids of `ids` (all of them when shorter).
fn generated(ids: &[u32], n: usize) -> &[u32] {
    &ids[ids.len().saturating_sub(n)..]
}

fn tokens(a: &[Vec<u32>], b: &[Vec<u32>], dtype: &str, new_tokens: usize) -> Agreement {
    if a.len() != b.len() || a.is_empty() {
        return Agreement { text: format!("{} vs {} captions", a.len(), b.len()), ok: Some(false) };
    }
    let mut identical = 0;
    let (mut agreeing, mut total) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (generated(x, new_tokens), generated(y, new_tokens));
        identical += (x == y) as usize;
        // Greedy and beam search feed each token back: after the first difference the two
        // captions continue from different text, so only the common prefix agrees.
        agreeing += x.iter().zip(y).take_while(|(p, q)| p == q).count();
        total += x.len().max(y.len());
    }
    let rate = agreeing as f64 / total.max(1) as f64;
    let counts = format!("{identical}/{} captions identical", a.len());
    if dtype == "f32" {
        let ok = identical == a.len();
        let text = if ok { format!("token ids identical ({counts})") } else { format!("token ids differ: {counts}, {:.0} % of tokens before the first difference", rate * 100.0) };
        Agreement { text, ok: Some(ok) }
    } else {
        Agreement { text: format!("{:.0} % of tokens agree up to the first difference; {counts}", rate * 100.0), ok: None }
    }
}

fn topk(a: &[Vec<u32>], b: &[Vec<u32>]) -> Agreement {
    if a.len() != b.len() || a.is_empty() {
        return Agreement { text: format!("{} vs {} queries", a.len(), b.len()), ok: Some(false) };
    }
    let k = b.iter().map(Vec::len).max().unwrap_or(0);
    let identical = a.iter().zip(b).filter(|(x, y)| x == y).count();
    Agreement { text: format!("top {k} identical for {identical}/{} queries", a.len()), ok: Some(identical == a.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_need_the_dtype_s_cosine() {
        let a = vec![vec![1.0f32, 0.0], vec![0.0, 1.0]];
        // cos = 1 / sqrt(1 + 0.02²) ≈ 0.99980: enough for bf16, not for f32.
        let b = vec![vec![1.0f32, 0.02], vec![0.0, 1.0]];
        assert_eq!(compare(&Outputs::Embeddings(a.clone()), &Outputs::Embeddings(b.clone()), "bf16", 0).ok, Some(true));
        assert_eq!(compare(&Outputs::Embeddings(a.clone()), &Outputs::Embeddings(b), "f32", 0).ok, Some(false));
        assert_eq!(compare(&Outputs::Embeddings(a.clone()), &Outputs::Embeddings(a[..1].to_vec()), "f32", 0).ok, Some(false));
    }

    #[test]
    fn f32_tokens_must_be_identical_and_bf16_report_a_rate() {
        // Same prompt, generated parts [5 6 7 8] vs [5 6 9 8]: two tokens before the first
        // difference (the matching 8 after it does not count).
        let ours = Outputs::Tokens(vec![vec![1, 2, 5, 6, 7, 8], vec![1, 2, 3, 3, 3, 3]]);
        let theirs = Outputs::Tokens(vec![vec![1, 2, 5, 6, 9, 8], vec![1, 2, 3, 3, 3, 3]]);
        let f32 = compare(&ours, &theirs, "f32", 4);
        assert_eq!(f32.ok, Some(false), "{}", f32.text);
        assert!(f32.text.contains("1/2 captions identical") && f32.text.contains("75 %"), "{}", f32.text);
        let bf16 = compare(&ours, &theirs, "bf16", 4);
        assert_eq!(bf16.ok, None);
        assert!(!bf16.disagrees());
        assert!(bf16.text.starts_with("75 % of tokens"), "{}", bf16.text);
        assert_eq!(compare(&ours, &ours, "f32", 4).ok, Some(true));
        // The placeholder tokens before the generated part may differ in count (BLIP-2).
        let longer = Outputs::Tokens(vec![vec![0, 0, 1, 2, 5, 6, 7, 8], vec![0, 0, 1, 2, 3, 3, 3, 3]]);
        assert_eq!(compare(&ours, &longer, "f32", 4).ok, Some(true));
    }

    #[test]
    fn search_results_must_match_in_order() {
        let a = Outputs::Topk(vec![vec![3, 1, 2], vec![4, 5, 6]]);
        assert_eq!(compare(&a, &a, "f32", 0).ok, Some(true));
        let swapped = Outputs::Topk(vec![vec![1, 3, 2], vec![4, 5, 6]]);
        let got = compare(&a, &swapped, "f32", 0);
        assert_eq!(got.ok, Some(false));
        assert_eq!(got.text, "top 3 identical for 1/2 queries");
        assert!(compare(&a, &Outputs::Tokens(vec![vec![1]]), "f32", 0).disagrees());
    }

    #[test]
    fn outputs_round_trip_through_the_file_format_python_writes() {
        let v: Outputs = serde_json::from_str(r#"{"kind": "tokens", "rows": [[1, 2], [3]]}"#).unwrap();
        assert_eq!(v, Outputs::Tokens(vec![vec![1, 2], vec![3]]));
        let text = serde_json::to_string(&Outputs::Topk(vec![vec![7]])).unwrap();
        assert_eq!(text, r#"{"kind":"topk","rows":[[7]]}"#);
    }
}
