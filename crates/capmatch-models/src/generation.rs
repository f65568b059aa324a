//! Autoregressive decoding — greedy search and beam search — reproducing transformers'
//! `GenerationMixin.generate` (v5.23) token for token, for any model that implements
//! [`StepDecoder`].
//!
//! # The model side: [`StepDecoder`]
//!
//! Generation owns the token sequences; the model owns everything else (image / encoder
//! states, KV caches). A decoder holds `rows` live sequences. Generation calls:
//!
//! 1. [`StepDecoder::reorder`] with `[0,0,0,1,1,1,…]` once before the first forward when
//!    `num_beams > 1` (transformers' `_expand_inputs_for_generation`: every batch item is
//!    repeated `num_beams` times, beams of one item adjacent);
//! 2. [`StepDecoder::forward`] with the whole prompt (`rows × prompt_len` token ids, the
//!    `input_ids` given to `generate`) — the prefill;
//! 3. then, once per step, [`StepDecoder::forward`] with one new token per row
//!    (`rows × 1`); in beam search it is preceded by [`StepDecoder::reorder`] with the
//!    flat index (`item * num_beams + beam`) of the row each new row continues — the
//!    model reorders its self-attention cache with it (transformers' `reorder_cache`).
//!
//! `forward` returns the logits of the last position of every row, `(rows, vocab)`; they
//! are converted to `f32` here, as transformers does (`logits[:, -1].to(float32)`).
//! A decoder-only model with a visual prefix (BLIP-2 + OPT) consumes the prefix inside
//! its first `forward`; an encoder-decoder (Flan-T5) gets `[decoder_start_token_id]` as
//! the prompt. Either way the prompt ids are what the returned sequences start with and
//! what the length limits and logits processors count, exactly as in transformers.
//!
//! # The configuration: [`GenerationConfig`] → [`GenerationParams`]
//!
//! [`GenerationConfig`] deserializes a `generation_config.json` (unknown keys ignored)
//! and can be overridden field by field. [`GenerationConfig::resolve`] applies
//! transformers' `_prepare_generated_length` for a prompt length: `max_new_tokens`
//! wins over `max_length`; when neither is set the default is 20 *new* tokens, capped
//! at `max_position_embeddings`; `min_new_tokens` sets `min_length = min_new_tokens +
//! prompt_len`.
//!
//! Logits processors that run (in transformers' order), when their setting is active:
//! `repetition_penalty`, `no_repeat_ngram_size`, `min_length`, `min_new_tokens`,
//! `forced_eos_token_id`. Sampling, constraints, bad words, etc. are refused by
//! [`GenerationConfig::resolve`] instead of being silently ignored.
//!
//! # Outputs
//!
//! [`generate`] returns one sequence per batch item (prompt included), each exactly what
//! transformers returns for that item when generated alone: greedy sequences end at their
//! first EOS (or at `max_length`); beam search returns the best finished hypothesis.
//! (In a batch transformers pads the shorter rows — with `pad_token_id` in greedy search
//! and, because `pad_token_id or eos` treats pad id 0 as unset, with EOS in beam search;
//! we return the rows unpadded.)
//!
//! Beam search follows the vectorised implementation of `_beam_search` (top `2 ×
//! num_beams` candidates per item over `log_softmax` scores accumulated in `f32`,
//! finished candidates kept only among the top `num_beams`, `length_penalty` applied as
//! `score / generated_len^length_penalty`, the `early_stopping` heuristics, `-1e9`
//! masking). Each item's search stops when transformers' loop condition would stop it were
//! it generated alone; its rows then idle (they are fed their last token, and nothing reads
//! their logits) until the whole batch is done. transformers instead keeps a batch's stopped
//! items in its loop until every item stops; that can change an item's result only in
//! corner cases (an item with no finished hypothesis whose every candidate is an EOS), and
//! stopping per item makes an item's result independent of the batch it is in, as the
//! captioner promises.

pub use crate::TokenIds;
use candle_core::{DType, Result, Tensor};
use serde::Deserialize;

/// A model that can be driven by [`generate`]. See the module documentation for the
/// calling protocol.
pub trait StepDecoder {
    /// Feeds `tokens` (`u32`, shape `(rows, n)`): the prompt on the first call, then one
    /// token per row. Returns the next-token logits of every row, shape `(rows, vocab)`.
    fn forward(&mut self, tokens: &Tensor) -> Result<Tensor>;

    /// Reorders (and possibly duplicates) the rows of the decoder's state: new row `i`
    /// continues old row `rows[i]`. `rows.len()` may differ from the current row count
    /// (expansion to `batch × num_beams` before the first forward).
    fn reorder(&mut self, rows: &[u32]) -> Result<()>;
}

/// `early_stopping` as in transformers: `true`, `false`, or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    True,
    #[default]
    False,
    Never,
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::B(true) => Ok(Self::True),
            Raw::B(false) => Ok(Self::False),
            Raw::S(s) if s == "never" => Ok(Self::Never),
            Raw::S(s) => Err(serde::de::Error::custom(format!("early_stopping must be true, false or \"never\", got {s:?}"))),
        }
    }
}

/// The subset of transformers' `GenerationConfig` that capmatch's captioners use. Every
/// field is optional: `None` means "transformers' global default".
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub max_length: Option<usize>,
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    #[serde(default)]
    pub min_length: Option<usize>,
    #[serde(default)]
    pub min_new_tokens: Option<usize>,
    #[serde(default)]
    pub num_beams: Option<usize>,
    #[serde(default)]
    pub length_penalty: Option<f64>,
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub no_repeat_ngram_size: Option<usize>,
    #[serde(default)]
    pub forced_eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub num_return_sequences: Option<usize>,
    #[serde(default)]
    pub do_sample: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
}

/// Fully resolved generation parameters for one prompt length (absolute lengths count
/// the prompt, as transformers' `max_length` / `min_length` do).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub prompt_len: usize,
    pub max_length: usize,
    pub min_length: usize,
    pub min_new_tokens: usize,
    pub num_beams: usize,
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
    pub repetition_penalty: f64,
    pub no_repeat_ngram_size: usize,
    pub forced_eos_token_id: Vec<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl GenerationConfig {
    /// Reads a `generation_config.json`.
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    /// Fields set in `overrides` replace ours (transformers: `generate(**kwargs)` over
    /// `model.generation_config`).
    pub fn merged_with(&self, overrides: &GenerationConfig) -> GenerationConfig {
        macro_rules! pick {
            ($($f:ident),*) => { GenerationConfig { $($f: overrides.$f.clone().or_else(|| self.$f.clone()),)* } };
        }
        pick!(
            max_length, max_new_tokens, min_length, min_new_tokens, num_beams, length_penalty, early_stopping,
            repetition_penalty, no_repeat_ngram_size, forced_eos_token_id, num_return_sequences, do_sample,
            bos_token_id, eos_token_id, pad_token_id, decoder_start_token_id
        )
    }

    /// transformers' `_prepare_generated_length` + `_validate_generated_length` for a prompt
    /// of `prompt_len` tokens. `max_position_embeddings` caps the default length (pass the
    /// decoder config's value, `None` where the model has none).
    pub fn resolve(&self, prompt_len: usize, max_position_embeddings: Option<usize>) -> Result<GenerationParams> {
        if self.do_sample == Some(true) {
            candle_core::bail!("do_sample=true is not supported: capmatch decodes deterministically (greedy or beam search)");
        }
        if self.num_return_sequences.unwrap_or(1) != 1 {
            candle_core::bail!("num_return_sequences other than 1 is not supported");
        }
        let max_length = match (self.max_new_tokens, self.max_length) {
            (Some(n), _) => n + prompt_len,
            (None, Some(m)) => m,
            (None, None) => {
                let m = 20 + prompt_len;
                max_position_embeddings.map_or(m, |p| m.min(p))
            }
        };
        if prompt_len >= max_length {
            candle_core::bail!(
                "input length is {prompt_len}, but max_length is {max_length}: increase max_length or set max_new_tokens"
            );
        }
        let min_length = match self.min_new_tokens {
            Some(n) => n + prompt_len,
            None => self.min_length.unwrap_or(0),
        };
        let num_beams = self.num_beams.unwrap_or(1);
        if num_beams == 0 {
            candle_core::bail!("num_beams must be at least 1");
        }
        Ok(GenerationParams {
            prompt_len,
            max_length,
            min_length,
            min_new_tokens: self.min_new_tokens.unwrap_or(0),
            num_beams,
            length_penalty: self.length_penalty.unwrap_or(1.0),
            early_stopping: self.early_stopping.unwrap_or_default(),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            no_repeat_ngram_size: self.no_repeat_ngram_size.unwrap_or(0),
            forced_eos_token_id: self.forced_eos_token_id.as_ref().map(|t| t.to_vec()).unwrap_or_default(),
            eos_token_ids: self.eos_token_id.as_ref().map(|t| t.to_vec()).unwrap_or_default(),
            pad_token_id: self.pad_token_id,
        })
    }
}

/// Applies the active logits processors, in transformers' order, to the scores of one row
/// whose tokens so far are `ids`.
fn process_scores(p: &GenerationParams, ids: &[u32], scores: &mut [f32]) {
    let cur_len = ids.len();
    if p.repetition_penalty != 1.0 {
        // RepetitionPenaltyLogitsProcessor: gather, penalise, scatter (repeated ids get the same value).
        let penalty = p.repetition_penalty as f32;
        let mut seen = std::collections::HashSet::new();
        let updates: Vec<(usize, f32)> = ids
            .iter()
            .filter(|&&t| (t as usize) < scores.len() && seen.insert(t))
            .map(|&t| {
                let s = scores[t as usize];
                (t as usize, if s < 0.0 { s * penalty } else { s / penalty })
            })
            .collect();
        for (t, s) in updates {
            scores[t] = s;
        }
    }
    let n = p.no_repeat_ngram_size;
    if n > 0 && cur_len + 1 >= n {
        // NoRepeatNGramLogitsProcessor: ban every token that would complete an n-gram already seen.
        let prefix = &ids[cur_len + 1 - n..];
        for start in 0..=(cur_len.saturating_sub(n)) {
            if cur_len < n {
                break;
            }
            if &ids[start..start + n - 1] == prefix {
                let t = ids[start + n - 1] as usize;
                if t < scores.len() {
                    scores[t] = f32::NEG_INFINITY;
                }
            }
        }
    }
    let ban_eos = (p.min_length > 0 && cur_len < p.min_length)
        || (p.min_new_tokens > 0 && cur_len - p.prompt_len < p.min_new_tokens);
    if ban_eos {
        for &e in &p.eos_token_ids {
            if (e as usize) < scores.len() {
                scores[e as usize] = f32::NEG_INFINITY;
            }
        }
    }
    if !p.forced_eos_token_id.is_empty() && cur_len == p.max_length - 1 {
        for (i, s) in scores.iter_mut().enumerate() {
            *s = if p.forced_eos_token_id.contains(&(i as u32)) { 0.0 } else { f32::NEG_INFINITY };
        }
    }
}

/// Row-major `(rows, vocab)` `f32` logits from a decoder output.
fn logits_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    logits.to_dtype(DType::F32)?.to_vec2::<f32>()
}

/// First index of the maximum (torch.argmax on CPU returns the first maximal index).
fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || (v[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax` of one row in `f32` (max-shifted; the log-sum-exp accumulated in `f64`
/// and rounded once, which is within an ulp of PyTorch's vectorised `f32` kernel).
fn log_softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = v.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = sum.ln() as f32;
    v.iter().map(|&x| (x - max) - lse).collect()
}

/// Indices of the `k` largest values, largest first; ties keep the lower index first.
fn topk(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    let cmp = |a: &usize, b: &usize| v[*b].partial_cmp(&v[*a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

fn tokens_tensor(rows: &[Vec<u32>], device: &candle_core::Device) -> Result<Tensor> {
    let n = rows.first().map_or(0, |r| r.len());
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), n), device)
}

/// Generates from `prompts` (one row of `input_ids` per batch item, all the same length:
/// transformers' `generate(input_ids=…)` without padding) with `decoder`, whose tensors
/// live on `device`. Greedy search when `params.num_beams == 1`, beam search otherwise.
/// Returns one sequence per prompt, prompt included (see the module documentation).
pub fn generate<D: StepDecoder + ?Sized>(
    decoder: &mut D,
    prompts: &[Vec<u32>],
    params: &GenerationParams,
    device: &candle_core::Device,
) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if prompts.iter().any(|p| p.len() != params.prompt_len) {
        candle_core::bail!("every prompt must have the {} tokens the parameters were resolved for", params.prompt_len);
    }
    if params.num_beams == 1 {
        greedy(decoder, prompts, params, device)
    } else {
        beam_search(decoder, prompts, params, device)
    }
}

fn greedy<D: StepDecoder + ?Sized>(
    decoder: &mut D,
    prompts: &[Vec<u32>],
    p: &GenerationParams,
    device: &candle_core::Device,
) -> Result<Vec<Vec<u32>>> {
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    let mut finished = vec![false; seqs.len()];
    let has_eos = !p.eos_token_ids.is_empty();
    // transformers sets pad_token_id to the first EOS when only EOS is given.
    let pad = p.pad_token_id.or(p.eos_token_ids.first().copied());
    let mut input = tokens_tensor(&seqs, device)?;
    loop {
        let logits = logits_rows(&decoder.forward(&input)?)?;
        let mut next = Vec::with_capacity(seqs.len());
        for (row, mut scores) in logits.into_iter().enumerate() {
            process_scores(p, &seqs[row], &mut scores);
            let t = if finished[row] { pad.unwrap_or(0) } else { argmax(&scores) };
            next.push(t);
        }
        for (row, &t) in next.iter().enumerate() {
            seqs[row].push(t);
            if !finished[row] && has_eos && p.eos_token_ids.contains(&t) {
                finished[row] = true;
            }
        }
        let cur_len = seqs[0].len();
        if cur_len >= p.max_length || finished.iter().all(|&f| f) {
            break;
        }
        input = Tensor::from_vec(next, (seqs.len(), 1), device)?;
    }
    // Unpad: each row ends at its first generated EOS.
    for s in seqs.iter_mut() {
        if let Some(pos) = s[p.prompt_len..].iter().position(|t| p.eos_token_ids.contains(t)) {
            s.truncate(p.prompt_len + pos + 1);
        }
    }
    Ok(seqs)
}

fn beam_search<D: StepDecoder + ?Sized>(
    decoder: &mut D,
    prompts: &[Vec<u32>],
    p: &GenerationParams,
    device: &candle_core::Device,
) -> Result<Vec<Vec<u32>>> {
    const NEG: f32 = -1.0e9;
    let batch = prompts.len();
    let nb = p.num_beams;
    let prompt_len = p.prompt_len;
    let k = 2.max(1 + p.eos_token_ids.len()) * nb;
    let lp = p.length_penalty;

    // running[b][j]: tokens; running_scores; running_gen[b][j]: generated length (= beam_indices != -1 count)
    let mut running: Vec<Vec<Vec<u32>>> = prompts.iter().map(|pr| vec![pr.clone(); nb]).collect();
    let mut running_scores: Vec<Vec<f32>> = (0..batch).map(|_| (0..nb).map(|j| if j == 0 { 0.0 } else { NEG }).collect()).collect();
    // finished hypotheses: (tokens, score, is_finished)
    let mut fin: Vec<Vec<(Vec<u32>, f32, bool)>> =
        prompts.iter().map(|pr| vec![(pr.clone(), NEG, false); nb]).collect();
    let mut unsatisfied = vec![true; batch];
    // Items whose search has stopped (as it would have alone).
    let mut stopped = vec![false; batch];

    let expand: Vec<u32> = (0..batch * nb).map(|r| (r / nb) as u32).collect();
    decoder.reorder(&expand)?;
    let flat: Vec<Vec<u32>> = running.iter().flat_map(|b| b.iter().cloned()).collect();
    let mut input = tokens_tensor(&flat, device)?;
    let mut cur_len = prompt_len;
    loop {
        let logits = logits_rows(&decoder.forward(&input)?)?;
        let mut all_hit = vec![true; batch];
        let mut reorder_rows = Vec::with_capacity(batch * nb);
        let mut next_tokens = Vec::with_capacity(batch * nb);
        let mut new_running = Vec::with_capacity(batch);
        let mut new_running_scores = Vec::with_capacity(batch);
        for b in 0..batch {
            if stopped[b] {
                // Idle rows: each continues itself with its last token.
                for (j, seq) in running[b].iter().enumerate() {
                    reorder_rows.push((b * nb + j) as u32);
                    next_tokens.push(*seq.last().expect("a prompt token"));
                }
                new_running.push(std::mem::take(&mut running[b]));
                new_running_scores.push(std::mem::take(&mut running_scores[b]));
                continue;
            }
            // b. accumulated log-probs over num_beams × vocab
            let mut acc: Vec<f32> = Vec::new();
            let mut vocab = 0;
            for j in 0..nb {
                let row = &logits[b * nb + j];
                vocab = row.len();
                let mut lps = log_softmax(row);
                process_scores(p, &running[b][j], &mut lps);
                let s = running_scores[b][j];
                acc.extend(lps.iter().map(|&x| x + s));
            }
            // c. top-K continuations
            let top = topk(&acc, k);
            let cand: Vec<(usize, u32, f32)> = top.iter().map(|&i| (i / vocab, (i % vocab) as u32, acc[i])).collect();
            // d. stopping criteria on the candidates (length cur_len + 1)
            let hits: Vec<bool> = cand
                .iter()
                .map(|&(_, t, _)| cur_len + 1 >= p.max_length || p.eos_token_ids.contains(&t))
                .collect();
            all_hit[b] = hits.iter().all(|&h| h);
            // e. running beams for the next iteration
            let masked: Vec<f32> = cand.iter().zip(&hits).map(|(&(_, _, s), &h)| if h { s + NEG } else { s }).collect();
            let keep = topk(&masked, nb);
            let mut rb = Vec::with_capacity(nb);
            let mut rs = Vec::with_capacity(nb);
            for &c in &keep {
                let (beam, tok, _) = cand[c];
                let mut seq = running[b][beam].clone();
                seq.push(tok);
                rb.push(seq);
                rs.push(masked[c]);
                reorder_rows.push((b * nb + beam) as u32);
                next_tokens.push(tok);
            }
            // f. update finished hypotheses
            let denom = ((cur_len + 1 - prompt_len) as f64).powf(lp) as f32;
            let full = p.early_stopping == EarlyStopping::True && fin[b].iter().all(|h| h.2);
            let mut merged: Vec<(Vec<u32>, f32, bool)> = fin[b].clone();
            for (c, &(beam, tok, s)) in cand.iter().enumerate() {
                let just_finished = hits[c] && c < nb;
                let mut score = s / denom;
                if full {
                    score += NEG;
                }
                if !unsatisfied[b] {
                    score += NEG;
                }
                if !just_finished {
                    score += NEG;
                }
                let mut seq = running[b][beam].clone();
                seq.push(tok);
                merged.push((seq, score, just_finished));
            }
            let scores: Vec<f32> = merged.iter().map(|h| h.1).collect();
            let best = topk(&scores, nb);
            fin[b] = best.iter().map(|&i| merged[i].clone()).collect();
            new_running.push(rb);
            new_running_scores.push(rs);
        }
        running = new_running;
        running_scores = new_running_scores;
        cur_len += 1;
        // early-stop heuristic
        for b in (0..batch).filter(|&b| !stopped[b]) {
            let best_len = if p.early_stopping == EarlyStopping::Never && lp > 0.0 {
                p.max_length - prompt_len
            } else {
                cur_len - prompt_len
            };
            let best_possible = running_scores[b][0] / (best_len as f64).powf(lp) as f32;
            let min_fin = fin[b].iter().map(|h| h.1).fold(f32::INFINITY, f32::min);
            let any = fin[b].iter().any(|h| best_possible > if h.2 { min_fin } else { NEG });
            unsatisfied[b] &= any;
        }
        // transformers' loop condition, for each item as if it were alone.
        for b in 0..batch {
            if stopped[b] {
                continue;
            }
            let all_finished = fin[b].iter().all(|h| h.2);
            let exists_open = !(all_finished && p.early_stopping == EarlyStopping::True);
            stopped[b] = !(unsatisfied[b] && exists_open && !all_hit[b]);
        }
        if stopped.iter().all(|&s| s) {
            break;
        }
        decoder.reorder(&reorder_rows)?;
        input = Tensor::from_vec(next_tokens, (batch * nb, 1), device)?;
    }
    Ok(fin.into_iter().map(|mut f| f.swap_remove(0).0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A toy decoder whose logits depend only on the last token: a fixed transition table.
    struct Table {
        table: Vec<Vec<f32>>,
        last: Vec<u32>,
    }

    impl StepDecoder for Table {
        fn forward(&mut self, tokens: &Tensor) -> Result<Tensor> {
            let rows = tokens.to_vec2::<u32>()?;
            self.last = rows.iter().map(|r| *r.last().unwrap()).collect();
            let v: Vec<f32> = self.last.iter().flat_map(|&t| self.table[t as usize].clone()).collect();
            Tensor::from_vec(v, (rows.len(), self.table[0].len()), &Device::Cpu)
        }
        fn reorder(&mut self, _rows: &[u32]) -> Result<()> {
            Ok(())
        }
    }

    fn toy() -> Table {
        // vocab 4: 0 = pad, 1 = bos, 2 = eos, 3 = word
        Table {
            table: vec![
                vec![0.0, 0.0, 0.0, 0.0],
                vec![-5.0, -5.0, 1.0, 2.0],
                vec![0.0, 0.0, 0.0, 0.0],
                vec![-5.0, -5.0, 3.0, 1.0],
            ],
            last: vec![],
        }
    }

    fn params(cfg: GenerationConfig) -> GenerationParams {
        let base = GenerationConfig { eos_token_id: Some(TokenIds::One(2)), pad_token_id: Some(0), ..Default::default() };
        base.merged_with(&cfg).resolve(1, None).unwrap()
    }

    #[test]
    fn default_max_length_is_twenty_new_tokens_capped_by_positions() {
        let c = GenerationConfig::default();
        assert_eq!(c.resolve(4, None).unwrap().max_length, 24);
        assert_eq!(c.resolve(4, Some(10)).unwrap().max_length, 10);
        let c = GenerationConfig { max_length: Some(7), min_new_tokens: Some(2), ..Default::default() };
        let r = c.resolve(4, None).unwrap();
        assert_eq!((r.max_length, r.min_length), (7, 6));
        assert!(GenerationConfig { max_new_tokens: Some(3), max_length: Some(2), ..Default::default() }
            .resolve(4, None)
            .is_ok_and(|r| r.max_length == 7));
        assert!(GenerationConfig { max_length: Some(4), ..Default::default() }.resolve(4, None).is_err());
    }

    #[test]
    fn greedy_stops_at_eos_and_respects_min_new_tokens() {
        let mut d = toy();
        let out = generate(&mut d, &[vec![1]], &params(Default::default()), &Device::Cpu).unwrap();
        assert_eq!(out, vec![vec![1, 3, 2]]);
        let p = params(GenerationConfig { min_new_tokens: Some(3), max_new_tokens: Some(5), ..Default::default() });
        let out = generate(&mut d, &[vec![1]], &p, &Device::Cpu).unwrap();
        assert_eq!(out, vec![vec![1, 3, 3, 3, 2]]);
    }

    #[test]
    fn beam_search_prefers_the_better_finished_hypothesis() {
        // From bos: eos has log-prob ln(e/(e+e^2+2e^-5)) ≈ -1.31, word ≈ -0.31; after word, eos ≈ -0.13.
        // Finished "eos" scores -1.31/1; "word eos" scores (-0.31-0.13)/2 ≈ -0.22, so it wins.
        let mut d = toy();
        let p = params(GenerationConfig { num_beams: Some(2), ..Default::default() });
        let out = generate(&mut d, &[vec![1], vec![1]], &p, &Device::Cpu).unwrap();
        assert_eq!(out, vec![vec![1, 3, 2], vec![1, 3, 2]]);
    }

    #[test]
    fn no_repeat_ngram_bans_completions() {
        let p = params(GenerationConfig { no_repeat_ngram_size: Some(2), ..Default::default() });
        let mut s = vec![0.0f32; 4];
        process_scores(&p, &[1, 3, 1], &mut s);
        assert_eq!(s[3], f32::NEG_INFINITY);
        assert_eq!(s[2], 0.0);
    }

    #[test]
    fn early_stopping_accepts_bool_and_never() {
        let c: GenerationConfig = serde_json::from_str(r#"{"early_stopping":"never","eos_token_id":[1,2],"foo":3}"#).unwrap();
        assert_eq!(c.early_stopping, Some(EarlyStopping::Never));
        assert_eq!(c.eos_token_id.unwrap().to_vec(), vec![1, 2]);
        let c: GenerationConfig = serde_json::from_str(r#"{"early_stopping":true}"#).unwrap();
        assert_eq!(c.early_stopping, Some(EarlyStopping::True));
    }
}
