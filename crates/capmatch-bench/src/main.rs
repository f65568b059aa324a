//! `capmatch-bench`: the speed harness.
//!
//! ```text
//! cargo run --release -p capmatch-bench -- --out BENCHMARKS.md
//! cargo run --release -p capmatch-bench -- --quick --only clip-image,search
//! cargo run --release -p capmatch-bench -- ann --sizes 100k,1M --out BENCHMARKS.md
//! ```
//!
//! For every workload it runs our code and the references (transformers/PyTorch on the CPU,
//! ONNX Runtime for the CLIP towers in f32, or faiss) as long-lived worker processes loaded
//! side by side, and times them **in turn** (ours, ref, ours, ref, ...) so that all see the
//! same machine noise; the speed ratio is the median over those pairs of (reference time ÷
//! our time): above 1 we are faster. Every worker also writes what its first call produced,
//! and a row only counts when the two sides' outputs agree (`agreement`). When the workers
//! would not fit in memory together (BLIP-2 in f32), the sides run one after the other
//! instead, each from a dropped page cache, and the ratio is that of the medians.
//! `capmatch index` is run as the real binary on folders of real image files; its peak memory
//! comes from `wait4`, and the model work it does is timed alone for comparison. See
//! `BENCHMARKS.md` for the method and the last numbers.

mod agreement;
mod ann;
mod inspect;
mod milvus;
mod models;
mod npy;
mod prepare;
mod proc;
mod report;
mod run;
mod search;
mod stats;
mod worker;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

use agreement::Agreement;
use prepare::{Arch, Paths};
use stats::median;

#[derive(Parser, Debug)]
#[command(name = "capmatch-bench", about = "Speed harness: capmatch vs transformers/PyTorch and faiss")]
struct Cli {
    #[command(subcommand)]
    worker: Option<WorkerCmd>,
    /// Write the report (Markdown) here, e.g. BENCHMARKS.md. Text below the marker line
    /// `<!-- end of generated section -->` of an existing file is kept.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Comma-separated workloads: clip-image, clip-text, blip-caption, blip2-caption, index, search.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Workload>,
    /// Comma-separated architectures (b32, l14, blip-base, blip-large, blip2-opt); default: all.
    #[arg(long, value_delimiter = ',')]
    archs: Vec<String>,
    /// Comma-separated dtypes for the model workloads (f32, bf16); default: both.
    #[arg(long, value_delimiter = ',')]
    dtypes: Vec<String>,
    /// Smoke test: few small cases, one short round each. Its numbers mean nothing.
    #[arg(long)]
    quick: bool,
    /// Threads for both sides (RAYON_NUM_THREADS / CANDLE_NUM_THREADS for ours,
    /// torch.set_num_threads and OpenMP for the reference). Default: all CPUs.
    #[arg(long)]
    threads: Option<usize>,
    /// Where checkpoints, inputs, vectors and logs live (gitignored).
    #[arg(long, default_value = "bench-models")]
    models_dir: PathBuf,
    /// Folder of real images (default: bench-models/real-images, fetched with
    /// ../shared/data/fetch-real-images.sh, relative to the project, when missing).
    #[arg(long)]
    images: Option<PathBuf>,
    #[arg(long, default_value = "python3")]
    python: String,
    /// The `capmatch` binary for the index workload (default: build it with cargo).
    #[arg(long)]
    capmatch_bin: Option<PathBuf>,
    /// Timed rounds per side and case: at least this many ...
    #[arg(long)]
    min_rounds: Option<usize>,
    /// ... and at most this many, while the case is under its time budget.
    #[arg(long)]
    max_rounds: Option<usize>,
    /// Seconds of timed rounds per case after which no more rounds start (past --min-rounds).
    #[arg(long)]
    budget_secs: Option<f64>,
    /// A round repeats the call until it lasts about this long (cheap cases get several calls).
    #[arg(long)]
    round_secs: Option<f64>,
    /// Extra environment for our side only (workers and `capmatch index`), KEY=VALUE,
    /// repeatable: for trying tuning knobs (e.g. CANDLE_NUM_THREADS=1) with the same
    /// interleaved method. Shown in the report's command line.
    #[arg(long = "ours-env", value_name = "KEY=VALUE")]
    ours_env: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum WorkerCmd {
    /// (internal) our side of one workload, driven over stdin/stdout by the harness.
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// `capmatch inspect` at 10k, 30k and 100k images against faiss computing the same
    /// neighbour graphs; rewrites its own section of --out (see src/inspect.rs).
    Inspect(inspect::InspectArgs),
    /// The approximate index against faiss HNSW: build, size, memory, recall, latency.
    Ann(ann::AnnArgs),
    /// (internal) our side of `ann`.
    #[command(hide = true)]
    AnnWorker(ann::AnnWorkerArgs),
    /// The Milvus store against the exact store and faiss; sharded indexing into it.
    Milvus(milvus::MilvusArgs),
    /// (internal) one side of `milvus`.
    #[command(hide = true)]
    MilvusWorker(milvus::MilvusWorkerArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    ClipImage,
    ClipText,
    BlipCaption,
    Blip2Caption,
    Index,
    Search,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::ClipImage => "clip-image",
            Workload::ClipText => "clip-text",
            Workload::BlipCaption => "blip-caption",
            Workload::Blip2Caption => "blip2-caption",
            Workload::Index => "index",
            Workload::Search => "search",
        }
    }
}

/// What a row is compared against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// transformers on PyTorch (`bench_reference.py`, default backend).
    PyTorch,
    /// ONNX Runtime's CPU provider on the CLIP towers exported from the same checkpoint.
    OnnxRuntime,
    /// faiss `IndexFlatIP`.
    Faiss,
}

impl Reference {
    pub fn name(self) -> &'static str {
        match self {
            Reference::PyTorch => "PyTorch",
            Reference::OnnxRuntime => "ONNX Runtime",
            Reference::Faiss => "faiss IndexFlatIP",
        }
    }

    /// For file names.
    pub fn slug(self) -> &'static str {
        match self {
            Reference::PyTorch => "torch",
            Reference::OnnxRuntime => "ort",
            Reference::Faiss => "faiss",
        }
    }

    /// Flags the reference script needs beyond the case's own.
    fn args(self, case: &Case) -> Vec<String> {
        match (self, &case.onnx) {
            (Reference::OnnxRuntime, Some(model)) => {
                vec!["--backend".into(), "onnxruntime".into(), "--onnx".into(), model.display().to_string()]
            }
            _ => Vec::new(),
        }
    }
}

/// One row: our worker and each reference's get the same flags.
#[derive(Clone, Debug)]
pub struct Case {
    pub workload: Workload,
    pub arch: Option<Arch>,
    pub dtype: String,
    pub batch: usize,
    pub beams: usize,
    pub label: String,
    pub args: Vec<String>,
    /// Items are images, captions or queries.
    pub unit: &'static str,
    /// Speed ratio against the first reference that an issue asks for, if any.
    pub target: Option<Target>,
    /// Why the sides run one after the other instead of interleaved, when they must.
    pub sequential: Option<String>,
    /// The first one is the one the target is about.
    pub references: Vec<Reference>,
    /// Generated tokens compared between the sides (captioning).
    pub new_tokens: usize,
    /// Search: queries per call.
    pub queries_per_call: usize,
    /// The exported ONNX model for the ONNX Runtime reference.
    pub onnx: Option<PathBuf>,
}

/// A speed ratio an issue asks for.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub ratio: f64,
    /// "faster than" (> ratio) rather than "at least" (≥ ratio).
    pub strictly_above: bool,
    /// The issue that sets it, shown next to it when it is not the one the report's text names.
    pub issue: Option<u32>,
}

impl Target {
    pub const fn at_least(ratio: f64) -> Self {
        Target { ratio, strictly_above: false, issue: None }
    }

    pub fn met(&self, ratio: f64) -> bool {
        if self.strictly_above {
            ratio > self.ratio
        } else {
            ratio >= self.ratio
        }
    }

    pub fn text(&self) -> String {
        let op = if self.strictly_above { ">" } else { "≥" };
        let issue = self.issue.map(|i| format!(" (issue {i})")).unwrap_or_default();
        format!("{op} {:.1}×{issue}", self.ratio)
    }
}

/// One worker's measurements.
#[derive(Clone, Debug, Default)]
pub struct Side {
    /// Seconds per item of each round.
    pub per_item: Vec<f64>,
    pub cpu_util: Vec<f64>,
    /// CPU the *other* workers burnt while this one was timed, as a share of the round.
    pub idle_other_cpu: Vec<f64>,
    pub peak_rss_kb: u64,
    /// Largest resident set the worker reported after a round (steady state, load excluded).
    pub round_rss_kb: u64,
    pub ready: Value,
    /// Where the worker wrote its first call's outputs.
    pub outputs: Option<PathBuf>,
    /// Sides run alone: memory available before the worker loaded, and whether the page
    /// cache was dropped first.
    pub mem_available_kb: Option<u64>,
    pub page_cache_dropped: Option<bool>,
}

impl Side {
    pub fn median_per_item(&self) -> f64 {
        median(&self.per_item)
    }

    pub fn record(&mut self, round: &proc::Round) {
        self.per_item.push(round.secs / round.items.max(1.0));
        self.cpu_util.extend(round.cpu_util);
        self.round_rss_kb = self.round_rss_kb.max(round.rss_kb.unwrap_or(0));
    }
}

/// One reference of a row: its measurements, the speed ratio against ours, and whether the
/// two sides' outputs agree.
#[derive(Clone, Debug)]
pub struct Compared {
    pub reference: Reference,
    pub side: Option<Side>,
    /// Reference time ÷ our time: the median over pairs of rounds, or the ratio of the
    /// medians for sides run one after the other.
    pub ratio: Option<f64>,
    pub agreement: Option<Agreement>,
    /// Why the ratio does not count although both sides ran (memory pressure).
    pub not_comparable: Option<String>,
}

impl Compared {
    pub fn new(reference: Reference) -> Self {
        Compared { reference, side: None, ratio: None, agreement: None, not_comparable: None }
    }
}

#[derive(Clone, Debug)]
pub struct CaseResult {
    pub case: Case,
    pub ours: Option<Side>,
    pub refs: Vec<Compared>,
    pub calls_per_round: usize,
    pub errors: Vec<String>,
    /// 1-minute load average when the case started (before its workers were spawned).
    pub load: Option<f64>,
}

impl CaseResult {
    /// Whether the row meets its target: the ratio against the first reference is there and
    /// comparable, the outputs agree, and the ratio reaches the target. None without a target.
    pub fn met(&self) -> Option<bool> {
        let target = self.case.target?;
        let first = self.refs.first()?;
        let ratio = first.ratio?;
        Some(first.not_comparable.is_none() && !first.agreement.as_ref().is_some_and(Agreement::disagrees) && target.met(ratio))
    }
}

/// The 1-minute load average.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

#[derive(Clone, Debug, Default)]
pub struct IndexResult {
    pub images_small: usize,
    pub images_big: usize,
    pub wall_small: f64,
    pub wall_big: f64,
    pub peak_rss_kb: u64,
    pub command: String,
    pub info: Option<String>,
    pub error: Option<String>,
    /// The model work of the images the big run adds, timed alone (same batch, same
    /// captioner defaults): images/s.
    pub model_only: Option<Side>,
    /// Generated tokens per caption (min, mean, max) in the model-only run.
    pub new_tokens: Option<(usize, f64, usize)>,
    /// Captions of the model-only run equal to the index's for the same files, of all.
    pub same_captions: Option<(usize, usize)>,
}

pub struct Settings {
    pub threads: usize,
    pub ours_env: Vec<(String, String)>,
    pub min_rounds: usize,
    pub max_rounds: usize,
    pub budget_secs: f64,
    pub round_secs: f64,
    pub quick: bool,
}

fn main() {
    let mut cli = Cli::parse();
    let result = match cli.worker.take() {
        Some(WorkerCmd::Worker(args)) => {
            if let Err(e) = worker::run(args) {
                worker::emit(&serde_json::json!({"event": "error", "message": format!("{e:#}")}));
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        Some(WorkerCmd::Inspect(args)) => inspect::run(args, &repo_root()),
        Some(WorkerCmd::Ann(args)) => ann::run(args, &repo_root()),
        Some(WorkerCmd::AnnWorker(args)) => ann::worker(args),
        Some(WorkerCmd::Milvus(args)) => milvus::run(args, &repo_root()),
        Some(WorkerCmd::MilvusWorker(args)) => milvus::worker(args),
        None => harness(cli),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn repo_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is crates/capmatch-bench; the harness runs from anywhere.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn harness(cli: Cli) -> Result<()> {
    let repo = repo_root();
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let quick = cli.quick;
    let ours_env = cli
        .ours_env
        .iter()
        .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).with_context(|| format!("--ours-env {kv}: expected KEY=VALUE")))
        .collect::<Result<Vec<_>>>()?;
    let settings = Settings {
        threads,
        ours_env,
        min_rounds: cli.min_rounds.unwrap_or(if quick { 1 } else { 3 }),
        max_rounds: cli.max_rounds.unwrap_or(if quick { 1 } else { 7 }),
        budget_secs: cli.budget_secs.unwrap_or(if quick { 0.0 } else { 12.0 }),
        round_secs: cli.round_secs.unwrap_or(if quick { 0.1 } else { 1.0 }),
        quick,
    };
    let root = if cli.models_dir.is_absolute() { cli.models_dir.clone() } else { repo.join(&cli.models_dir) };
    std::fs::create_dir_all(root.join("logs"))?;
    let paths = Paths { root, python: cli.python.clone(), repo: repo.clone() };

    let workloads: Vec<Workload> = if cli.only.is_empty() {
        vec![Workload::ClipImage, Workload::ClipText, Workload::BlipCaption, Workload::Blip2Caption, Workload::Index, Workload::Search]
    } else {
        cli.only.clone()
    };
    let archs: Vec<Arch> = if cli.archs.is_empty() {
        if quick && workloads.contains(&Workload::Blip2Caption) {
            // BLIP-2 has no smaller size: asked for by name, it runs even in a smoke test.
            vec![Arch::ClipB32, Arch::BlipBase, Arch::Blip2Opt]
        } else if quick {
            vec![Arch::ClipB32, Arch::BlipBase]
        } else {
            Arch::ALL.to_vec()
        }
    } else {
        cli.archs.iter().map(|a| Arch::parse(a).with_context(|| format!("unknown arch {a}"))).collect::<Result<_>>()?
    };
    let dtypes: Vec<String> = if cli.dtypes.is_empty() { vec!["f32".into(), "bf16".into()] } else { cli.dtypes.clone() };

    let command = {
        let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
        format!("cargo run --release -p capmatch-bench -- {}", args.join(" ")).trim_end().to_string()
    };
    let started = Instant::now();
    let mut report = report::Report::new(&paths, &settings, command.clone());
    eprintln!("[bench] {command}\n[bench] {} threads; models in {}", threads, paths.root.display());

    let images_src = find_images(&cli, &paths)?;
    let needs_images =
        workloads.iter().any(|w| matches!(w, Workload::ClipImage | Workload::BlipCaption | Workload::Blip2Caption | Workload::Index));
    let real = if needs_images { prepare::real_images(&images_src, 128)? } else { Vec::new() };

    let plan = plan(&workloads, &archs, &dtypes, quick);
    for mut case in plan {
        if case.workload == Workload::Index {
            continue;
        }
        let result = match prepare_case(&paths, &mut case, &real) {
            Ok(()) => run::run_case(&paths, &settings, case),
            Err(e) => CaseResult { case, ours: None, refs: Vec::new(), calls_per_round: 0, errors: vec![format!("{e:#}")], load: loadavg() },
        };
        report::print_case(&result);
        report.cases.push(result);
        if let Some(out) = &cli.out {
            report.write(out, started.elapsed().as_secs_f64(), false)?;
        }
    }
    if workloads.contains(&Workload::Index) {
        let result = run_index(&cli, &paths, &settings, &real).unwrap_or_else(|e| IndexResult { error: Some(format!("{e:#}")), ..Default::default() });
        report::print_index(&result);
        report.index = Some(result);
    }
    let table = report.summary_table();
    println!("\n{table}");
    if let Some(out) = &cli.out {
        report.write(out, started.elapsed().as_secs_f64(), true)?;
        eprintln!("[bench] wrote {} ({:.0} s)", out.display(), started.elapsed().as_secs_f64());
    }
    Ok(())
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn find_images(cli: &Cli, paths: &Paths) -> Result<PathBuf> {
    if let Some(dir) = &cli.images {
        return Ok(dir.clone());
    }
    let fetched = paths.root.join("real-images");
    if fetched.join("tuxpaint").is_dir() {
        return Ok(fetched.join("tuxpaint"));
    }
    // `../shared` beside the project's checkout.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fetch-real-images.sh");
    eprintln!("[bench] fetching real images with {} ...", script.display());
    let status = Command::new("bash").arg(&script).arg(&fetched).status()?;
    if !status.success() {
        bail!("{} failed; pass --images DIR", script.display());
    }
    Ok(fetched.join("tuxpaint"))
}

/// The cases to run. The full plan is sized to finish in about half an hour on 2 cores.
fn plan(workloads: &[Workload], archs: &[Arch], dtypes: &[String], quick: bool) -> Vec<Case> {
    let mut cases = Vec::new();
    let base = |workload, arch: Option<Arch>, dtype: &str, batch, beams, label: String, unit, target| Case {
        workload,
        arch,
        dtype: dtype.to_string(),
        batch,
        beams,
        label,
        args: Vec::new(),
        unit,
        target,
        sequential: None,
        // ONNX Runtime beside PyTorch for the CLIP towers in f32 (its CPU provider has no
        // bf16 matrix products); faiss for search.
        references: match (workload, dtype) {
            (Workload::Search, _) => vec![Reference::Faiss],
            (Workload::ClipImage | Workload::ClipText, "f32") => vec![Reference::PyTorch, Reference::OnnxRuntime],
            _ => vec![Reference::PyTorch],
        },
        new_tokens: 20,
        queries_per_call: 1,
        onnx: None,
    };
    for &w in workloads {
        match w {
            Workload::ClipImage => {
                for &arch in archs.iter().filter(|a| matches!(a, Arch::ClipB32 | Arch::ClipL14)) {
                    let batches: &[usize] = match (quick, arch) {
                        (true, _) => &[1, 8],
                        (false, Arch::ClipB32) => &[1, 8, 32],
                        // ViT-L/14 is ~18× the work of B/32: batch 32 would take minutes a round.
                        _ => &[1, 8],
                    };
                    for dtype in dtypes {
                        for &b in batches {
                            let label = format!("{} · {dtype} · batch {b}", arch.short());
                            cases.push(base(w, Some(arch), dtype, b, 1, label, "images", Some(Target::at_least(1.3))));
                        }
                    }
                }
            }
            Workload::ClipText => {
                for &arch in archs.iter().filter(|a| matches!(a, Arch::ClipB32 | Arch::ClipL14)) {
                    for dtype in dtypes {
                        let label = format!("{} · {dtype} · 32 × 20 tokens", arch.short());
                        cases.push(base(w, Some(arch), dtype, 32, 1, label, "captions", Some(Target::at_least(1.3))));
                    }
                }
            }
            Workload::BlipCaption => {
                for &arch in archs.iter().filter(|a| matches!(a, Arch::BlipBase | Arch::BlipLarge)) {
                    // (dtype, batch, beams). BLIP's vision tower at 384 px is ~25× the work of
                    // CLIP B/32 per image, so batches stay small to fit the run in half an hour:
                    // base at batch 4, large (~4× base) at batch 1 and beam search in f32 only.
                    let mut runs: Vec<(String, usize, usize)> = Vec::new();
                    for dtype in dtypes {
                        match (quick, arch) {
                            (true, _) => runs.extend([(dtype.clone(), 1, 1), (dtype.clone(), 1, 3)]),
                            (false, Arch::BlipBase) => runs.extend([(dtype.clone(), 4, 1), (dtype.clone(), 4, 3)]),
                            (false, _) => {
                                runs.push((dtype.clone(), 1, 1));
                                if dtype == "f32" {
                                    runs.push((dtype.clone(), 1, 3));
                                }
                            }
                        }
                    }
                    for (dtype, b, beams) in runs {
                        let search = if beams == 1 { "greedy".to_string() } else { format!("beam {beams}") };
                        let label = format!("{} · {dtype} · batch {b} · {search} · 20 new tokens", arch.short());
                        cases.push(base(w, Some(arch), &dtype, b, beams, label, "images", Some(Target::at_least(1.3))));
                    }
                }
            }
            Workload::Blip2Caption => {
                // Greedy, the unconditional caption the paper uses (empty prompt). Batch 1
                // in every dtype (issue 6); batch 8 in bf16 (issue 15: decoding reads the
                // 5 GB of OPT weights once per step for the whole batch). One f32 call is
                // ~4 G parameters × 20+ steps: no room for beam search or f32 batches.
                for &arch in archs.iter().filter(|a| matches!(a, Arch::Blip2Opt)) {
                    for dtype in dtypes {
                        let label = format!("{} · {dtype} · batch 1 · greedy · 20 new tokens", arch.short());
                        let target = Target { ratio: 1.0, strictly_above: true, issue: Some(6) };
                        cases.push(base(w, Some(arch), dtype, 1, 1, label, "images", Some(target)));
                        if dtype == "bf16" && !quick {
                            let label = format!("{} · {dtype} · batch 8 · greedy · 20 new tokens", arch.short());
                            let target = Target { ratio: 1.3, strictly_above: false, issue: Some(15) };
                            cases.push(base(w, Some(arch), dtype, 8, 1, label, "images", Some(target)));
                        }
                    }
                }
            }
            Workload::Search => {
                let sizes: &[usize] = if quick { &[10_000] } else { &[10_000, 100_000, 1_000_000] };
                // One query per call is what an interactive user of faiss gets: faiss splits a
                // search over its queries, so it runs on one thread. Batches (eval, inspect)
                // let it use every thread; ours then go through the batched scorer.
                for &n in sizes {
                    for per_call in [1, 64, 1024] {
                        let calls = if per_call == 1 {
                            "1 query/call (faiss: 1 thread)".to_string()
                        } else {
                            format!("{per_call} queries/call")
                        };
                        let label = format!("{} × 512-d · top 10 · {calls}", human(n));
                        let mut c = base(w, None, "f32", n, 1, label, "queries", Some(Target::at_least(1.0)));
                        c.queries_per_call = per_call;
                        cases.push(c);
                    }
                }
            }
            Workload::Index => cases.push(base(w, None, "f32", 8, 1, "index".into(), "images", None)),
        }
    }
    cases
}

pub fn human(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Makes the case's inputs and fills in the worker flags.
fn prepare_case(paths: &Paths, case: &mut Case, real: &[PathBuf]) -> Result<()> {
    let s = |x: &dyn ToString| x.to_string();
    let mut args: Vec<String> = vec![case.workload.name().to_string()];
    match case.workload {
        Workload::ClipImage | Workload::BlipCaption | Workload::Blip2Caption | Workload::ClipText => {
            let arch = case.arch.expect("model case");
            let model = prepare::ensure_checkpoint(paths, arch)?;
            case.sequential = sides_do_not_fit(&model, &case.dtype, 1 + case.references.len());
            args.extend(["--model".into(), s(&model.display()), "--dtype".into(), case.dtype.clone()]);
            args.extend(["--batch".into(), s(&case.batch)]);
            match case.workload {
                Workload::ClipText => {
                    let captions = prepare::ensure_captions(paths, arch, 20, case.batch)?;
                    args.extend(["--captions".into(), s(&captions.display())]);
                }
                _ => {
                    let images = prepare::ensure_sized_inputs(paths, real, arch.input_size(), 32)?;
                    args.extend(["--images".into(), s(&images.display())]);
                }
            }
            if case.references.contains(&Reference::OnnxRuntime) {
                let tower = if case.workload == Workload::ClipText { "text" } else { "image" };
                case.onnx = Some(prepare::ensure_onnx(paths, arch, tower)?);
            }
            if matches!(case.workload, Workload::BlipCaption | Workload::Blip2Caption) {
                args.extend(["--beams".into(), s(&case.beams), "--new-tokens".into(), s(&case.new_tokens)]);
                // Each architecture's own default: BLIP continues "a picture of", BLIP-2
                // captions unconditionally (as capmatch does by default and the paper did).
                let prompt = if case.workload == Workload::BlipCaption { "a picture of" } else { "" };
                args.extend(["--prompt".into(), prompt.into()]);
            }
        }
        Workload::Search => {
            let gallery = prepare::ensure_vectors(paths, "gallery", case.batch, 512, 0)?;
            let queries = prepare::ensure_vectors(paths, "queries", 1024, 512, 1)?;
            args.extend(["--gallery".into(), s(&gallery.display()), "--queries".into(), s(&queries.display())]);
            args.extend(["--k".into(), "10".into(), "--queries-per-round".into(), "10".into()]);
            args.extend(["--queries-per-call".into(), s(&case.queries_per_call)]);
        }
        Workload::Index => unreachable!("index is not a paired case"),
    }
    case.args = args;
    Ok(())
}

/// Why the workers of a model case cannot be loaded side by side, when they cannot: each
/// holds the weights in the case's dtype, and together they would need more memory than is
/// available now (the case would then measure swapping, or end in the OOM killer).
fn sides_do_not_fit(model: &Path, dtype: &str, workers: usize) -> Option<String> {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let weights = prepare::weights_bytes(model, dtype)? as f64;
    // Per side: the weights, plus a margin for activations, KV cache and allocator slack,
    // plus the runtime (Python and torch's libraries on the reference side).
    let per_side = weights * 1.1 + GIB;
    let available = proc::mem_available_kb()? as f64 * 1024.0;
    (workers as f64 * per_side > available).then(|| {
        format!(
            "sides run one after the other, each from a dropped page cache (together they do not fit in RAM: ≈ {workers} × {:.1} GiB needed, {:.1} GiB available); speed ratio = ratio of medians",
            per_side / GIB,
            available / GIB
        )
    })
}

/// `capmatch index` end to end on folders of real files: a small folder and a big one that
/// starts with the small one's files, each into a fresh database, so that images/s can be
/// given both overall and per extra image (which leaves out the fixed start-up: process
/// start, model loading). The model work of those extra images is then timed alone, done as
/// the indexer does it (same batch, same captioner defaults), and its captions are checked
/// against the index's: same captions, so the same generated tokens on both sides.
fn run_index(cli: &Cli, paths: &Paths, settings: &Settings, real: &[PathBuf]) -> Result<IndexResult> {
    let bin = match &cli.capmatch_bin {
        Some(b) => b.clone(),
        None => build_capmatch()?,
    };
    let (small, big) = if settings.quick { (2, 6) } else { (8, 40) };
    const BATCH: usize = 8;
    let clip = prepare::ensure_checkpoint(paths, Arch::ClipB32)?;
    let captioner = prepare::ensure_checkpoint(paths, Arch::BlipBase)?;
    let mut out = IndexResult { images_small: small, images_big: big, ..Default::default() };
    let scratch = paths.root.join("index-db");
    std::fs::create_dir_all(&scratch)?;
    let (small_dir, big_dir) = prepare::ensure_index_folders(paths, real, small, big)?;
    let big_db = scratch.join("big.db");
    for (n, name, folder) in [(small, "small", &small_dir), (big, "big", &big_dir)] {
        let db = scratch.join(format!("{name}.db"));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        let mut cmd = Command::new(&bin);
        cmd.arg("index")
            .arg(folder)
            .arg("--db")
            .arg(&db)
            .arg("--clip")
            .arg(&clip)
            .arg("--captioner")
            .arg(&captioner)
            .arg("--batch")
            .arg(BATCH.to_string())
            .arg("--dtype")
            .arg("f32")
            .env("RAYON_NUM_THREADS", settings.threads.to_string())
            .env("CANDLE_NUM_THREADS", settings.threads.to_string())
            .envs(settings.ours_env.iter().map(|(k, v)| (k, v)));
        // Paths relative to the repository: the report names no directory of this machine.
        let rel = |p: &Path| p.strip_prefix(&paths.repo).unwrap_or(p).display().to_string();
        out.command = format!(
            "capmatch index {} --db {} --clip {} --captioner {} --batch {BATCH} --dtype f32",
            rel(folder),
            rel(&db),
            rel(&clip),
            rel(&captioner)
        );
        eprintln!("[bench] index · {n} real images ...");
        let log = paths.logs().join(format!("index-{name}.log"));
        let exit = proc::run_measured(cmd, &log)?;
        if !exit.success {
            bail!("capmatch index exited with {}; last lines of {}:\n{}", exit.code, log.display(), proc::log_tail(&log, 10));
        }
        if name == "small" {
            out.wall_small = exit.wall_secs;
        } else {
            out.wall_big = exit.wall_secs;
            out.peak_rss_kb = exit.max_rss_kb;
            out.info = proc::capture(bin.to_str().unwrap_or("capmatch"), &["info", "--db", db.to_str().unwrap_or(""), "--json"]);
        }
    }
    // The images the big run adds, in the order the indexer takes them (sorted paths).
    let extra: Vec<PathBuf> = prepare::image_files(&big_dir)?.into_iter().skip(small).collect();
    if let Err(e) = index_model_only(paths, settings, &clip, &captioner, BATCH, &extra, &big_db, &mut out) {
        out.error = Some(format!("model-only run: {e:#}"));
    }
    Ok(out)
}

/// Times the model work of `files` alone (see [`run_index`]) and compares its captions with
/// those the index stored in `db`.
#[allow(clippy::too_many_arguments)]
fn index_model_only(
    paths: &Paths,
    settings: &Settings,
    clip: &Path,
    captioner: &Path,
    batch: usize,
    files: &[PathBuf],
    db: &Path,
    out: &mut IndexResult,
) -> Result<()> {
    let outputs = paths.logs().join("index-model-only.json");
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["worker", "index-models", "--batch", &batch.to_string(), "--warmup", "0", "--serve"])
        .arg("--model")
        .arg(clip)
        .arg("--captioner")
        .arg(captioner)
        .arg("--outputs")
        .arg(&outputs)
        .arg("--files")
        .args(files)
        .env("RAYON_NUM_THREADS", settings.threads.to_string())
        .env("CANDLE_NUM_THREADS", settings.threads.to_string())
        .envs(settings.ours_env.iter().map(|(k, v)| (k, v)));
    eprintln!("[bench] index · model work of the {} extra images alone ...", files.len());
    let (mut worker, ready) = proc::Worker::spawn("capmatch (model only)", cmd, &paths.logs().join("index-model-only.log"))?;
    let mut side = Side { ready, ..Default::default() };
    run::solo_rounds(&mut worker, 1, settings, &mut side)?;
    side.peak_rss_kb = worker.finish()?;
    let prompt_ids = side.ready["prompt_ids"].as_u64().unwrap_or(0) as usize;
    out.model_only = Some(side);
    let agreement::Outputs::Captions(captions) = agreement::Outputs::read(&outputs)? else {
        bail!("{}: expected captions", outputs.display());
    };
    let new: Vec<usize> = captions.iter().map(|c| c.token_ids.len().saturating_sub(prompt_ids)).collect();
    if !new.is_empty() {
        let mean = new.iter().sum::<usize>() as f64 / new.len() as f64;
        out.new_tokens = Some((*new.iter().min().unwrap(), mean, *new.iter().max().unwrap()));
    }
    use capmatch_store::Catalog;
    let catalog = capmatch_store::SqliteCatalog::open_read_only(db)?;
    let ids: Vec<capmatch_store::ImageId> = catalog.ids()?.into_iter().map(|(id, _)| id).collect();
    let stored: std::collections::HashMap<String, String> = catalog
        .entries(&ids)?
        .into_iter()
        .flatten()
        .map(|e| {
            let name = Path::new(&e.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (name, e.captions.first().cloned().unwrap_or_default())
        })
        .collect();
    let same = files
        .iter()
        .zip(&captions)
        .filter(|(f, c)| f.file_name().is_some_and(|n| stored.get(n.to_string_lossy().as_ref()) == Some(&c.text)))
        .count();
    out.same_captions = Some((same, files.len()));
    Ok(())
}

/// Where a sub-benchmark keeps its data and which Python runs its reference side.
#[derive(clap::Args, Debug, Clone)]
pub struct ReferenceArgs {
    /// Where checkpoints, galleries, vectors and logs live (gitignored).
    #[arg(long, default_value = "bench-models")]
    pub models_dir: PathBuf,
    #[arg(long, default_value = "python3")]
    pub python: String,
}

impl ReferenceArgs {
    /// `models_dir`, relative to the project's root unless absolute.
    pub fn models_root(&self, repo: &Path) -> PathBuf {
        if self.models_dir.is_absolute() { self.models_dir.clone() } else { repo.join(&self.models_dir) }
    }
}

/// Builds the real `capmatch` binary next to this one (same profile and target dir).
pub(crate) fn build_capmatch() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no exe dir")?.to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = dir.file_name().and_then(|n| n.to_str()) == Some("release");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root()).args(["build", "-p", "capmatch", "--bin", "capmatch"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!("[bench] building the capmatch binary ...");
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p capmatch failed");
    }
    let bin = dir.join("capmatch");
    if !bin.is_file() {
        bail!("{} not found after the build", bin.display());
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blip2_plan_is_greedy_batch_1_per_dtype_and_batch_8_in_bf16() {
        let dtypes = vec!["f32".to_string(), "bf16".to_string()];
        let cases = plan(&[Workload::Blip2Caption], &Arch::ALL, &dtypes, false);
        let shapes: Vec<(usize, &str)> = cases.iter().map(|c| (c.batch, c.dtype.as_str())).collect();
        assert_eq!(shapes, [(1, "f32"), (1, "bf16"), (8, "bf16")]);
        for case in &cases {
            assert_eq!((case.arch, case.beams), (Some(Arch::Blip2Opt), 1));
            let target = case.target.expect("issues 6 and 15 set targets");
            if case.batch == 1 {
                assert_eq!(target.text(), "> 1.0× (issue 6)");
                assert!(!target.met(1.0) && target.met(1.01));
            } else {
                assert_eq!(target.text(), "≥ 1.3× (issue 15)");
                assert!(target.met(1.3) && !target.met(1.29));
            }
        }
        // A smoke test keeps batch 1 only.
        assert!(plan(&[Workload::Blip2Caption], &Arch::ALL, &dtypes, true).iter().all(|c| c.batch == 1));
        // BLIP's workload does not pick up the BLIP-2 checkpoint, nor the other way round.
        assert!(plan(&[Workload::BlipCaption], &[Arch::Blip2Opt], &dtypes, false).is_empty());
        assert!(plan(&[Workload::Blip2Caption], &[Arch::BlipBase], &dtypes, false).is_empty());
    }

    #[test]
    fn search_rows_keep_one_query_and_add_batches() {
        let cases = plan(&[Workload::Search], &Arch::ALL, &["f32".to_string()], false);
        let shapes: Vec<(usize, usize)> = cases.iter().map(|c| (c.batch, c.queries_per_call)).collect();
        assert_eq!(shapes.len(), 9);
        for n in [10_000, 100_000, 1_000_000] {
            for q in [1, 64, 1024] {
                assert!(shapes.contains(&(n, q)), "{n} × {q}");
            }
        }
        for c in &cases {
            assert_eq!(c.references, [Reference::Faiss]);
            // The one-query rows say that faiss runs them on one thread.
            assert_eq!(c.queries_per_call == 1, c.label.contains("faiss: 1 thread"), "{}", c.label);
        }
    }

    #[test]
    fn onnx_runtime_is_a_second_reference_for_the_clip_towers_in_f32() {
        let dtypes = vec!["f32".to_string(), "bf16".to_string()];
        for case in plan(&[Workload::ClipImage, Workload::ClipText, Workload::BlipCaption], &Arch::ALL, &dtypes, false) {
            let clip_f32 = matches!(case.workload, Workload::ClipImage | Workload::ClipText) && case.dtype == "f32";
            let want: &[Reference] = if clip_f32 { &[Reference::PyTorch, Reference::OnnxRuntime] } else { &[Reference::PyTorch] };
            assert_eq!(case.references, want, "{}", case.label);
        }
    }

    /// A row counts only with comparable sides and agreeing outputs.
    #[test]
    fn a_fast_row_with_different_outputs_or_starved_sides_is_not_met() {
        let case = plan(&[Workload::ClipImage], &[Arch::ClipB32], &["f32".to_string()], false).remove(0);
        let mut r = CaseResult { case, ours: None, refs: vec![Compared::new(Reference::PyTorch)], calls_per_round: 1, errors: Vec::new(), load: None };
        r.refs[0].ratio = Some(2.0);
        assert_eq!(r.met(), Some(true));
        r.refs[0].agreement = Some(Agreement { text: "min cosine 0.99".into(), ok: Some(false) });
        assert_eq!(r.met(), Some(false));
        r.refs[0].agreement = Some(Agreement { text: "bf16 tokens 80 %".into(), ok: None });
        assert_eq!(r.met(), Some(true));
        r.refs[0].not_comparable = Some("reference used 1.6 CPUs".into());
        assert_eq!(r.met(), Some(false));
        r.refs[0].not_comparable = None;
        r.refs[0].ratio = Some(1.2);
        assert_eq!(r.met(), Some(false));
    }

    #[test]
    fn existing_targets_read_as_before() {
        let t = Target::at_least(1.3);
        assert_eq!(t.text(), "≥ 1.3×");
        assert!(t.met(1.3) && !t.met(1.29));
    }
}
