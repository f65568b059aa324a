//! The console table and `BENCHMARKS.md`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::prepare::Paths;
use crate::stats::{median, throughput_ratio_if_different};
use crate::{proc, CaseResult, Compared, IndexResult, Settings, Side, Workload};

pub const MARKER: &str = "<!-- end of generated section: text below this line is kept when capmatch-bench rewrites the file -->";

pub struct Report {
    pub machine: Vec<(String, String)>,
    pub versions: Vec<(String, String)>,
    pub command: String,
    pub settings: String,
    pub cases: Vec<CaseResult>,
    pub index: Option<IndexResult>,
    pub started_utc: String,
}

fn lscpu_field(text: &str, name: &str) -> Option<String> {
    text.lines().find(|l| l.starts_with(name)).map(|l| l[name.len()..].trim().to_string())
}

impl Report {
    pub fn new(paths: &Paths, settings: &Settings, command: String) -> Self {
        let lscpu = proc::capture("lscpu", &[]).unwrap_or_default();
        let mut machine = Vec::new();
        let model = lscpu_field(&lscpu, "Model name:").unwrap_or_else(|| "?".into());
        let family = lscpu_field(&lscpu, "CPU family:").map(|f| format!(" (family {f})")).unwrap_or_default();
        machine.push(("CPU".into(), format!("{model}{family}")));
        machine.push(("CPUs".into(), lscpu_field(&lscpu, "CPU(s):").unwrap_or_else(|| "?".into())));
        if let Some(t) = lscpu_field(&lscpu, "Thread(s) per core:") {
            machine.push(("threads per core".into(), t));
        }
        let flags = lscpu_field(&lscpu, "Flags:").unwrap_or_default();
        let simd: Vec<&str> = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]
            .into_iter()
            .filter(|f| flags.split_whitespace().any(|x| x == *f))
            .collect();
        machine.push(("SIMD".into(), simd.join(", ")));
        if let Ok(mem) = std::fs::read_to_string("/proc/meminfo") {
            if let Some(kb) = mem.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()) {
                machine.push(("memory".into(), format!("{:.0} GiB", kb / 1024.0 / 1024.0)));
            }
        }
        machine.push(("kernel".into(), proc::capture("uname", &["-sr"]).unwrap_or_default()));
        machine.push(("threads used (both sides)".into(), settings.threads.to_string()));

        let repo = paths.repo.to_str().unwrap_or(".");
        let head = proc::capture("git", &["-C", repo, "rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into());
        let dirty = proc::capture("git", &["-C", repo, "status", "--porcelain", "--untracked-files=no", "--", "crates", "Cargo.toml", "Cargo.lock"])
            .map(|s| s.lines().count())
            .unwrap_or(0);
        let capmatch = if dirty == 0 { head } else { format!("{head} + uncommitted changes in {dirty} tracked files (shared working tree)") };
        let mut versions = vec![
            ("capmatch".into(), capmatch),
            ("rustc".into(), proc::capture("rustc", &["-V"]).unwrap_or_else(|| "?".into())),
        ];
        let lock = std::fs::read_to_string(paths.repo.join("Cargo.lock")).unwrap_or_default();
        for krate in ["candle-core", "gemm"] {
            if let Some(v) = lock_version(&lock, krate) {
                versions.push((krate.into(), v));
            }
        }
        let py = std::process::Command::new(&paths.python)
            .arg(paths.reference_script())
            .arg("versions")
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
        if let Some(py) = py {
            for k in ["python", "torch", "transformers", "onnxruntime", "faiss", "numpy"] {
                versions.push((k.into(), py[k].as_str().unwrap_or("?").to_string()));
            }
        }
        let settings_text = format!(
            "{} warm-up call per side, then {}–{} timed rounds per side (more while under {:.0} s per case), each round ≈ {:.1} s of repeated calls{}",
            1,
            settings.min_rounds,
            settings.max_rounds,
            settings.budget_secs,
            settings.round_secs,
            if settings.quick { "; **--quick: smoke test, the numbers mean nothing**" } else { "" }
        );
        let started_utc = proc::capture("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
        Report { machine, versions, command, settings: settings_text, cases: Vec::new(), index: None, started_utc }
    }

    pub fn summary_table(&self) -> String {
        let mut t = String::new();
        t.push_str("| workload | case | capmatch | reference | speed ratio | target | | outputs |\n");
        t.push_str("|---|---|---:|---:|---:|---:|---|---|\n");
        for r in &self.cases {
            let ours = r.ours.as_ref().map(|s| rate(r, s)).unwrap_or_else(|| "—".into());
            if r.refs.is_empty() {
                let _ = writeln!(t, "| {} | {} | {ours} | — | — | | error | |", r.case.workload.name(), r.case.label);
            }
            for (i, c) in r.refs.iter().enumerate() {
                let refv = c.side.as_ref().map(|s| rate(r, s)).unwrap_or_else(|| "—".into());
                let ratio = ratio_text(r, c);
                // The target is about the first reference; the others are shown for context.
                let target = if i == 0 { r.case.target.map(|t| t.text()).unwrap_or_default() } else { "—".into() };
                let met = if i > 0 {
                    ""
                } else if c.not_comparable.is_some() {
                    "not comparable"
                } else if c.agreement.as_ref().is_some_and(|a| a.disagrees()) {
                    "❌ outputs differ"
                } else {
                    match r.met() {
                        Some(true) => "✅",
                        Some(false) => "❌",
                        None if !r.errors.is_empty() => "error",
                        None => "",
                    }
                };
                let outputs = c.agreement.as_ref().map(|a| a.text.replace('|', "\\|")).unwrap_or_else(|| "—".into());
                let _ = writeln!(
                    t,
                    "| {} | {} | {ours} | {} {refv} | {ratio} | {target} | {met} | {outputs} |",
                    r.case.workload.name(),
                    r.case.label,
                    c.reference.name()
                );
            }
        }
        if let Some(ix) = &self.index {
            let (_, marginal) = index_rates(ix);
            let model_only = ix.model_only.as_ref().map(|s| 1.0 / s.median_per_item());
            let ratio = match (marginal, model_only) {
                (Some(m), Some(mo)) => format!("{:.2}× of model-only", m / mo),
                _ => "—".into(),
            };
            let met = match (marginal, model_only) {
                (Some(m), Some(mo)) if m / mo >= 0.85 => "✅",
                (Some(_), Some(_)) => "❌",
                _ => "",
            };
            let outputs = match (ix.same_captions, ix.new_tokens) {
                (Some((same, all)), Some((lo, mean, hi))) => {
                    format!("captions identical to the index's {same}/{all}; {mean:.1} generated tokens per caption ({lo}–{hi})")
                }
                _ => "—".into(),
            };
            let _ = writeln!(
                t,
                "| index | {} real files, batch 8, f32, ViT-B/32 + BLIP base, captioner defaults | {} | model-only {} | {ratio} | ≥ 0.85× | {met} | {outputs} |",
                ix.images_big,
                marginal.map(|m| format!("{m:.2} images/s")).unwrap_or_else(|| ix.error.clone().map(|_| "error".into()).unwrap_or("—".into())),
                model_only.map(|m| format!("{m:.2} images/s")).unwrap_or_else(|| "—".into()),
            );
        }
        t
    }

    pub fn write(&self, out: &Path, elapsed: f64, finished: bool) -> Result<()> {
        let kept = std::fs::read_to_string(out)
            .ok()
            .and_then(|old| old.find(MARKER).map(|i| old[i + MARKER.len()..].to_string()))
            .unwrap_or_else(|| "\n".into());
        let mut md = String::new();
        md.push_str("# Benchmarks\n\n");
        md.push_str(
            "Speed of capmatch against what a user would otherwise run: transformers on PyTorch (CPU, same \
             threads, same shapes, same inputs) for the models, and faiss `IndexFlatIP` for exact search. \
             Generated by `capmatch-bench` (crate `crates/capmatch-bench`, reference side \
             `tools/reference/bench_reference.py`); do not edit the generated section by hand.\n\n",
        );
        let _ = writeln!(md, "Reproduce with:\n\n```sh\n{}\n```\n", self.command);
        let status = if finished { "complete" } else { "**partial (run still going or interrupted)**" };
        let _ = writeln!(md, "Run started {}, took {:.0} s; {status}.\n", self.started_utc, elapsed);
        md.push_str("| machine | |\n|---|---|\n");
        for (k, v) in &self.machine {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        md.push_str("\n| versions | |\n|---|---|\n");
        for (k, v) in &self.versions {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        md.push_str("\n## Summary\n\n");
        md.push_str(
            "Throughput (or search latency) is the median over timed rounds. **Speed ratio = reference time ÷ \
             capmatch time**, the median over interleaved pairs of rounds (ours, ref, ours, ref, …): \
             above 1 capmatch is faster. The two throughput columns are each side's own median, so their \
             quotient can differ a little from the ratio; where it differs by more than 3 % it is shown in \
             brackets beside the ratio (the machine's speed drifted during the case: the paired ratio is the \
             one to trust, as each pair ran under the same conditions). Targets from issue 5: ≥ 1.3× PyTorch at \
             the same dtype for the CLIP towers and BLIP, ≤ faiss latency for search (ratio ≥ 1), `capmatch \
             index` within 15 % of the model-only throughput; from issue 6: BLIP-2 captioning faster than \
             transformers at the same dtype (> 1.0×). ONNX Runtime rows have no target: a second reference for \
             the CLIP towers in f32. † = the sides did not fit in memory together, so they ran one after the \
             other and the ratio is that of the medians (no interleaved pairs; see the notes); such a row is \
             *not comparable* when either side used under 90 % of its threads' CPU. **Outputs**: the two sides' \
             outputs on the timed inputs (issue 17): f32 embeddings need cosine ≥ 0.9999 on every item and bf16 \
             ≥ 0.999, f32 token ids must be identical, search results identical (ids and order); a row whose \
             outputs differ is not met whatever its speed. bf16 captions report the share of generated tokens \
             that agree up to each caption's first difference.\n\n",
        );
        md.push_str(&self.summary_table());
        md.push_str("\n## Details\n\n");
        md.push_str(
            "Load = the 1-minute load average when the case started (it includes the previous case's \
             workers, so a machine otherwise quiet reads about 1–2 on 2 cores; PyTorch's OpenMP threads suffer far more than ours from other processes competing for the \
             cores, so rows with a high load overstate the speed ratio). \
             CPU = CPU time of the worker during its rounds ÷ wall time (2.0 = both cores busy). \
             Idle-side CPU = the largest share of a round the *other* (waiting) workers spent on the CPU \
             together; near 0 means the interleaving did not make the sides compete. One line per reference: \
             rows with two references (PyTorch and ONNX Runtime) share our side's rounds. Peak RSS from `wait4` on each \
             worker process (model load included; it also counts the pages of the memory-mapped checkpoint \
             while they are read, so it can exceed the steady footprint by the file's size).\n\n",
        );
        md.push_str("| workload | case | reference | load | calls/round | rounds | capmatch per item (median, min–max) | reference per item | CPU ours / ref | idle-side CPU | peak RSS ours / ref | notes |\n");
        md.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in &self.cases {
            for c in &r.refs {
                md.push_str(&details_row(r, c));
            }
        }
        if let Some(ix) = &self.index {
            md.push_str("\n## `capmatch index` end to end\n\n");
            md.push_str(&index_section(ix));
        }
        md.push_str("\n## Method\n\n");
        let _ = writeln!(md, "- Rounds: {}.", self.settings);
        md.push_str(
            "- Each side is a long-lived worker process (ours: `capmatch-bench worker …`; reference: \
             `bench_reference.py … --serve`) that loads the model and warms up before any timed round; the two \
             load one after the other and are then driven alternately, so both see the same machine state. \
             Where all would need more memory than is available (estimated from the checkpoint's weights in the \
             case's dtype against `MemAvailable`; BLIP-2 OPT-2.7b's weights alone are 15.5 GB a side in f32), each side is \
             loaded, timed and ended before the other starts instead (rows marked †), after `sync` and dropping the page \
             cache (`/proc/sys/vm/drop_caches`, as root); the notes give the memory available before each side loaded, \
             its RSS during the rounds and its CPU use.\n\
             - Outputs: each worker writes what its warm-up call produced (the inputs every timed call gets: the \
             same images, captions, or the first queries of the search) and the harness compares them; search rows \
             compare the top 10 of up to 64 queries. For the batched search rows our side is capmatch-eval's blockwise \
             scorer, which ranks given items rather than returning a top k: its results are checked by giving it \
             `Gallery::search`'s top 10 of each checked query as the only relevant items, which it must rank exactly in \
             the first 10 places, and `Gallery::search`'s ids are compared with faiss's.\n\
             - ONNX Runtime: the CLIP towers exported from the same checkpoints (`bench_reference.py export-onnx`: \
             TorchScript exporter, opset 17, f32, projected features), run by `onnxruntime.InferenceSession` on the CPU \
             provider with its default graph optimisations (`ORT_ENABLE_ALL`) and `intra_op_num_threads` = the \
             threads used, inputs from the same transformers processor in NumPy. f32 only: its CPU provider has no \
             bf16 matrix products.\n\
             - Models: full-size checkpoints with random weights of the real shapes (`bench-models/`, made by \
             `tools/reference/make_random_checkpoint.py`). Random weights cost the same arithmetic as trained ones; \
             BLIP and BLIP-2 are forced to exactly 20 new tokens (min = max new tokens) so both sides decode the same length. \
             BLIP continues the prompt \"a picture of\"; BLIP-2 (blip2-opt-2.7b shapes: EVA ViT-g, Q-Former, OPT-2.7b; \
             made in bf16, loaded in the case's dtype by both sides) captions with no prompt, both sides' default.\n\
             - Images: real images (tuxpaint stamps) turned once into RGB PNGs at the model's input size \
             (224 for CLIP and BLIP-2, 384 for BLIP), so both sides' preprocessing is a cheap rescale + normalise and the \
             time is the model's; both sides go through their public API (capmatch-core `ClipEmbedder` / `Captioner`; \
             transformers `AutoProcessor` (`Blip2Processor` for BLIP-2) + `get_image_features` / `generate`), \
             L2-normalised outputs.\n\
             - Reference dtype: the model is loaded with `dtype=torch.bfloat16` for bf16 (as a user would), \
             inputs cast to the model dtype, under `torch.inference_mode()`.\n\
             - Text: 32 captions that the CLIP tokenizer turns into exactly 20 tokens (start/end included).\n\
             - Search: L2-normalised random 512-d float32 vectors in a `.npy` file both sides read, 1024 query \
             vectors, top 10. capmatch uses `capmatch_store::ExactIndex` (memory-mapped, opened as `capmatch search` \
             opens it) in caption mode with each vector as the entry's caption and image embedding (the index holds \
             both matrices, which its memory figure includes). One query per call (the interactive case): \
             `ExactIndex::search`, parallel over the gallery; faiss `IndexFlatIP.search` with one query, which faiss \
             runs on **one thread** (it parallelises over queries), so these rows are our two threads against its \
             one. 64 and 1024 queries per call (eval, inspect): `ExactIndex::search_many`, which scores the batch \
             against the gallery together; faiss uses every thread (BLAS products). Both return the top 10; the \
             first 64 queries' results are compared.\n\
             - `capmatch index`: the real binary on folders of real PNG files (alpha, odd sizes), fresh database \
             each time; peak RSS from `wait4`. The big folder starts with the small folder's files, so the \
             per-extra-image rate ((big − small) images ÷ (big − small) wall time) is that of the big folder's \
             other files, with start-up left out. Model-only = the same files' model work timed alone by \
             `capmatch-bench worker index-models`, done as the indexer does it: decoded beforehand, batches of 8, \
             captioned with the captioner's defaults (BLIP: prompt \"a picture of\", greedy, up to 20 new tokens, \
             stopping at [SEP]: `capmatch index`'s defaults), captions and images embedded, f32. Its \
             captions are compared with those the index stored: identical captions mean the same generated tokens on \
             both sides, whose count is reported.\n",
        );
        md.push('\n');
        md.push_str(MARKER);
        md.push_str(&kept);
        std::fs::write(out, md)?;
        Ok(())
    }
}

fn lock_version(lock: &str, name: &str) -> Option<String> {
    let needle = format!("name = \"{name}\"\nversion = \"");
    let i = lock.find(&needle)? + needle.len();
    Some(lock[i..].split('"').next()?.to_string())
}

fn ms(secs: f64) -> String {
    if secs >= 1.0 {
        format!("{secs:.2} s")
    } else if secs >= 0.01 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{:.3} ms", secs * 1e3)
    }
}

fn mib(kb: u64) -> String {
    format!("{:.0} MiB", kb as f64 / 1024.0)
}

/// Throughput (items/s) or, for search, latency.
fn rate(r: &CaseResult, s: &Side) -> String {
    let per = s.median_per_item();
    match r.case.workload {
        Workload::Search => format!("{} /query", ms(per)),
        _ => format!("{:.2} {}/s", 1.0 / per, r.case.unit),
    }
}

fn index_rates(ix: &IndexResult) -> (Option<f64>, Option<f64>) {
    if ix.error.is_some() || ix.wall_big <= 0.0 {
        return (None, None);
    }
    let end_to_end = ix.images_big as f64 / ix.wall_big;
    let extra = ix.wall_big - ix.wall_small;
    let marginal = (extra > 0.0).then(|| (ix.images_big - ix.images_small) as f64 / extra);
    (Some(end_to_end), marginal)
}

/// The ratio column: the paired ratio, † for sides run one after the other, and the ratio the
/// throughput columns imply when it differs (see [`throughput_ratio_if_different`]).
fn ratio_text(r: &CaseResult, c: &Compared) -> String {
    let Some(x) = c.ratio else { return "—".into() };
    let sequential = if r.case.sequential.is_some() { " †" } else { "" };
    let differs = match (&r.ours, &c.side, &r.case.sequential) {
        (Some(o), Some(s), None) => throughput_ratio_if_different(&o.per_item, &s.per_item),
        _ => None,
    };
    match differs {
        Some(t) => format!("{x:.2}×{sequential} (throughputs: {t:.2}×)"),
        None => format!("{x:.2}×{sequential}"),
    }
}

fn details_row(r: &CaseResult, c: &Compared) -> String {
    let per = |s: &Option<Side>| {
        s.as_ref()
            .map(|s| {
                let min = s.per_item.iter().cloned().fold(f64::INFINITY, f64::min);
                let max = s.per_item.iter().cloned().fold(0.0, f64::max);
                format!("{} ({}–{})", ms(s.median_per_item()), ms(min), ms(max))
            })
            .unwrap_or_else(|| "—".into())
    };
    let cpu = |s: &Option<Side>| s.as_ref().map(|s| format!("{:.2}", median(&s.cpu_util))).unwrap_or_else(|| "—".into());
    // Sides run one after the other have no waiting side to measure.
    let idle = match r.case.sequential {
        Some(_) => "—".to_string(),
        None => {
            let max = [&r.ours, &c.side].iter().filter_map(|s| s.as_ref()).flat_map(|s| s.idle_other_cpu.iter().cloned()).fold(0.0f64, f64::max);
            format!("{max:.2}")
        }
    };
    let rss = |s: &Option<Side>| s.as_ref().map(|s| mib(s.peak_rss_kb)).unwrap_or_else(|| "—".into());
    let rounds = r.ours.as_ref().map(|s| s.per_item.len()).unwrap_or(0).max(c.side.as_ref().map(|s| s.per_item.len()).unwrap_or(0));
    let mut notes: Vec<String> = Vec::new();
    if r.case.workload == Workload::Search {
        for (name, s) in [("capmatch", &r.ours), ("faiss", &c.side)] {
            if let Some(s) = s {
                let before = s.ready["rss_before_load_kb"].as_u64().unwrap_or(0);
                let after = s.ready["rss_after_build_kb"].as_u64().unwrap_or(0);
                notes.push(format!("{name} index memory {}", mib(after.saturating_sub(before))));
            }
        }
        if let Some(check) = r.ours.as_ref().and_then(|s| s.ready["scorer_agrees_with_gallery"].as_str()) {
            notes.push(format!("batched scorer ranks Gallery::search's top 10 first for {check} checked queries"));
        }
    }
    if let Some(why) = &r.case.sequential {
        notes.push(why.clone());
        for (name, s) in [("capmatch", &r.ours), (c.reference.name(), &c.side)] {
            if let Some(s) = s {
                let dropped = match s.page_cache_dropped {
                    Some(true) => "page cache dropped",
                    Some(false) => "page cache NOT dropped (not permitted)",
                    None => "",
                };
                let available = s.mem_available_kb.map(|kb| format!("{:.1} GiB available", kb as f64 / 1048576.0)).unwrap_or_default();
                notes.push(format!("{name}: {dropped}, {available} before loading, RSS in rounds {}", mib(s.round_rss_kb)));
            }
        }
    }
    if let Some(why) = &c.not_comparable {
        notes.push(format!("**{why}**"));
    }
    if matches!(r.case.workload, Workload::BlipCaption | Workload::Blip2Caption) {
        if let Some(n) = r.ours.as_ref().and_then(|s| s.ready["token_ids_len"].as_u64()) {
            notes.push(format!("capmatch ids per caption {n}"));
        }
        if let Some(shape) = c.side.as_ref().map(|s| s.ready["output_shape"].clone()).filter(|v| !v.is_null()) {
            notes.push(format!("reference output ids {shape}"));
        }
    }
    if r.case.workload == Workload::ClipText {
        if let Some(t) = c.side.as_ref().map(|s| s.ready["token_lengths"].clone()).filter(|v| !v.is_null()) {
            notes.push(format!("token lengths {t}"));
        }
    }
    for e in &r.errors {
        notes.push(format!("error: {}", e.lines().next().unwrap_or("").replace('|', "\\|")));
    }
    format!(
        "| {} | {} | {} | {} | {} | {rounds} | {} | {} | {} / {} | {idle} | {} / {} | {} |\n",
        r.case.workload.name(),
        r.case.label,
        c.reference.name(),
        r.load.map(|l| format!("{l:.2}")).unwrap_or_default(),
        r.calls_per_round,
        per(&r.ours),
        per(&c.side),
        cpu(&r.ours),
        cpu(&c.side),
        rss(&r.ours),
        rss(&c.side),
        notes.join("; ")
    )
}

fn index_section(ix: &IndexResult) -> String {
    let mut s = String::new();
    if ix.wall_big <= 0.0 {
        if let Some(e) = &ix.error {
            let _ = writeln!(s, "Failed: `{}`\n", e.lines().next().unwrap_or(""));
            let _ = writeln!(s, "```\n{e}\n```");
            return s;
        }
    }
    let (end_to_end, marginal) = index_rates(ix);
    let model_only = ix.model_only.as_ref().map(|s| 1.0 / s.median_per_item());
    let extra = ix.images_big - ix.images_small;
    let _ = writeln!(s, "Command (each folder, fresh database): `{}`\n", ix.command);
    s.push_str("| | value |\n|---|---:|\n");
    let _ = writeln!(s, "| {} files: wall time | {:.1} s |", ix.images_small, ix.wall_small);
    let _ = writeln!(s, "| {} files (the {} above first): wall time | {:.1} s |", ix.images_big, ix.images_small, ix.wall_big);
    if let Some(e) = end_to_end {
        let _ = writeln!(s, "| end to end, {} files (start-up included) | {e:.2} images/s |", ix.images_big);
    }
    if let Some(m) = marginal {
        let _ = writeln!(s, "| per extra image ({extra} files, start-up excluded) | {m:.2} images/s |");
    }
    if let (Some(mo), Some(side)) = (model_only, &ix.model_only) {
        let _ = writeln!(s, "| model-only, the same {extra} files ({} rounds, CPU {:.2}) | {mo:.2} images/s |", side.per_item.len(), median(&side.cpu_util));
        if let Some(m) = marginal {
            let _ = writeln!(s, "| index ÷ model-only (target ≥ 0.85) | {:.2} |", m / mo);
        }
    }
    if let Some((lo, mean, hi)) = ix.new_tokens {
        let _ = writeln!(s, "| generated tokens per caption (model-only run) | {mean:.1} ({lo}–{hi}) |");
    }
    if let Some((same, all)) = ix.same_captions {
        let _ = writeln!(s, "| captions identical to those the index stored | {same}/{all} |");
    }
    let _ = writeln!(s, "| peak RSS ({} files) | {} |", ix.images_big, mib(ix.peak_rss_kb));
    if let Some(info) = ix.info.as_deref().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()) {
        let skipped = info["skipped"].as_array().map(Vec::len).unwrap_or(0);
        let _ = writeln!(s, "\n`capmatch info` after the big run: {} images indexed, {skipped} skipped.", info["images"]);
    }
    if let Some(e) = &ix.error {
        let _ = writeln!(s, "\nError: `{}`", e.lines().next().unwrap_or(""));
    }
    s
}

pub fn print_case(r: &CaseResult) {
    let ours = r.ours.as_ref().map(|s| rate(r, s)).unwrap_or_else(|| "—".into());
    for c in &r.refs {
        let refv = c.side.as_ref().map(|s| rate(r, s)).unwrap_or_else(|| "—".into());
        let outputs = c.agreement.as_ref().map(|a| a.text.as_str()).unwrap_or("—");
        eprintln!("[bench]   capmatch {ours} | {} {refv} | speed ratio {} | outputs: {outputs}", c.reference.name(), ratio_text(r, c));
    }
    for e in &r.errors {
        eprintln!("[bench]   error: {e}");
    }
}

pub fn print_index(ix: &IndexResult) {
    eprint!("{}", index_section(ix));
}

/// Writes `section` (which starts with `begin` and ends with `end`) into the file `out` in
/// place of the text between those markers, or appends it when they are absent.
pub fn replace_section(out: &std::path::Path, section: &str, begin: &str, end: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let updated = match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if b < e => format!("{}{section}{}", &text[..b], &text[e + end.len()..]),
        _ => format!("{text}\n{section}\n"),
    };
    std::fs::write(out, updated)
}

#[cfg(test)]
mod tests {
    use super::replace_section;

    #[test]
    fn a_section_replaces_its_old_self_or_is_appended() {
        let out = std::env::temp_dir().join(format!("capmatch-bench-section-{}.md", std::process::id()));
        std::fs::write(&out, "# Top\n<!-- a -->\nold\n<!-- b -->\n# Tail\n").unwrap();
        replace_section(&out, "<!-- a -->\nnew\n<!-- b -->", "<!-- a -->", "<!-- b -->").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "# Top\n<!-- a -->\nnew\n<!-- b -->\n# Tail\n");
        replace_section(&out, "<!-- c -->\nmore\n<!-- d -->", "<!-- c -->", "<!-- d -->").unwrap();
        assert!(std::fs::read_to_string(&out).unwrap().ends_with("# Tail\n\n<!-- c -->\nmore\n<!-- d -->\n"));
        std::fs::remove_file(&out).unwrap();
    }
}
