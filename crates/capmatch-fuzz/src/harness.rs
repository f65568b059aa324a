//! The fuzzing loop: pick a corpus entry, mutate it, run it, keep what is new, save what
//! crashes.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mutate::{havoc, Rng};
use crate::Target;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub duration: Duration,
    pub seed: u64,
    /// Where findings and the input being run (`current`) are written.
    pub findings: PathBuf,
    /// An input running longer than this is a hang: it is saved and the process exits.
    pub hang_after: Duration,
    /// Address-space limit of the process (a runaway allocation then aborts instead of
    /// swapping the machine); `None` leaves it.
    pub max_memory_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    pub target: String,
    pub seconds: f64,
    pub executions: u64,
    pub corpus: usize,
    /// Distinct errors seen (each a clear refusal).
    pub distinct_errors: usize,
    /// Inputs that panicked, saved under `findings`.
    pub crashes: Vec<PathBuf>,
}

impl RunSummary {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target,
            "seconds": (self.seconds * 10.0).round() / 10.0,
            "executions": self.executions,
            "corpus": self.corpus,
            "distinct_errors": self.distinct_errors,
            "crashes": self.crashes.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        })
    }
}

/// Limits the address space of this process (`RLIMIT_AS`).
pub fn limit_memory(bytes: u64) -> std::io::Result<()> {
    let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
    // SAFETY: setrlimit reads the struct we pass; no memory is shared.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// An error's kind for corpus feedback: its words, without numbers, paths and quoted
/// values (a temporary folder's name or an offset must not make every error new), first 80
/// chars.
fn error_class(e: &anyhow::Error) -> u64 {
    let text: String = format!("{e:#}")
        .split_whitespace()
        .filter(|w| !w.contains(['/', '"', '\'', '`']) && !w.chars().any(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(80)
        .collect();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn file_name_of(input: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Fuzzes `target` for `options.duration`.
pub fn run_for(target: &dyn Target, options: &RunOptions) -> anyhow::Result<RunSummary> {
    std::fs::create_dir_all(&options.findings)?;
    let mut corpus = target.seeds()?;
    anyhow::ensure!(!corpus.is_empty(), "target {} has no seeds", target.name());
    // Seeds first, so that the first executions load whatever the target caches (models, a
    // seed index) before the limits tighten.
    let mut errors = HashSet::new();
    for seed in &corpus {
        if let Ok(Err(e)) = catch_unwind(AssertUnwindSafe(|| target.run(seed))) {
            errors.insert(error_class(&e));
        }
    }
    if let Some(bytes) = options.max_memory_bytes {
        limit_memory(bytes)?;
    }
    let current = options.findings.join(format!("current-{}", target.name()));
    let started_ms = Arc::new(AtomicU64::new(0));
    spawn_watchdog(started_ms.clone(), current.clone(), options.findings.clone(), options.hang_after);
    // Panics are findings, reported once each below, not printed per input.
    std::panic::set_hook(Box::new(|_| {}));

    let clock = Instant::now();
    let mut rng = Rng::new(options.seed);
    let mut summary = RunSummary { target: target.name().into(), ..Default::default() };
    while clock.elapsed() < options.duration {
        let base = rng.below(corpus.len());
        let mut input = corpus[base].clone();
        if !(rng.chance(2) && target.mutate_structured(&mut input, &mut rng)) {
            let other = corpus[rng.below(corpus.len())].clone();
            havoc(&mut input, &other, &mut rng);
        }
        std::fs::write(&current, &input)?;
        started_ms.store(clock.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        let outcome = catch_unwind(AssertUnwindSafe(|| target.run(&input)));
        started_ms.store(0, Ordering::SeqCst);
        summary.executions += 1;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if errors.insert(error_class(&e)) && input.len() <= 4 << 20 {
                    corpus.push(input);
                }
            }
            Err(_) => {
                let path = options.findings.join(format!("crash-{}-{}", target.name(), file_name_of(&input)));
                std::fs::write(&path, &input)?;
                eprintln!("[fuzz] {}: an input panicked; saved as {}", target.name(), path.display());
                summary.crashes.push(path);
            }
        }
    }
    let _ = std::panic::take_hook();
    let _ = std::fs::remove_file(&current);
    summary.seconds = clock.elapsed().as_secs_f64();
    summary.corpus = corpus.len();
    summary.distinct_errors = errors.len();
    Ok(summary)
}

/// Saves the running input as a hang and exits when one input runs past `after`.
fn spawn_watchdog(started_ms: Arc<AtomicU64>, current: PathBuf, findings: PathBuf, after: Duration) {
    let clock = Instant::now();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(250));
        let started = started_ms.load(Ordering::SeqCst);
        if started == 0 {
            continue;
        }
        let running = (clock.elapsed().as_millis() as u64).saturating_sub(started - 1);
        if running > after.as_millis() as u64 {
            let saved = save_as(&current, &findings, "hang");
            eprintln!("[fuzz] an input ran for more than {after:?}; saved as {}", saved.display());
            std::process::exit(3);
        }
    });
}

fn save_as(current: &Path, findings: &Path, kind: &str) -> PathBuf {
    let bytes = std::fs::read(current).unwrap_or_default();
    let path = findings.join(format!("{kind}-{}", file_name_of(&bytes)));
    let _ = std::fs::write(&path, &bytes);
    path
}
