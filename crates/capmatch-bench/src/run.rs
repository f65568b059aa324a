//! Driving one case's workers: ours and its references loaded one after the other, then
//! timed in turn (ours, ref, [second ref,] ours, ref, ...) so that each round of ours has a
//! partner round of each reference under the same machine state; or, where the workers do
//! not fit in memory together, each side loaded, timed and ended alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Result;
use serde_json::Value;

use crate::agreement::{self, Outputs};
use crate::prepare::Paths;
use crate::stats::{median, paired_ratio, ratio_of_medians};
use crate::{loadavg, proc, Case, CaseResult, Compared, Reference, Settings, Side};

/// A worker to spawn: who it is, its command and where its log and outputs go.
struct Spec {
    who: Who,
    command: Command,
    log: PathBuf,
    outputs: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Ours,
    Ref(usize),
}

pub fn run_case(paths: &Paths, settings: &Settings, case: Case) -> CaseResult {
    let refs = case.references.iter().map(|&r| Compared::new(r)).collect();
    let mut result = CaseResult { case: case.clone(), ours: None, refs, calls_per_round: 1, errors: Vec::new(), load: loadavg() };
    eprintln!("[bench] {} · {} ...", case.workload.name(), case.label);
    let specs = match specs(paths, settings, &case) {
        Ok(s) => s,
        Err(e) => {
            result.errors.push(format!("ours: {e:#}"));
            return result;
        }
    };
    if let Some(why) = &case.sequential {
        eprintln!("[bench]   {why}");
        run_sequential(settings, specs, &mut result);
    } else {
        run_interleaved(settings, specs, &mut result);
    }
    compare_outputs(&mut result);
    result
}

fn name(who: Who, case: &Case) -> String {
    match who {
        Who::Ours => "capmatch".into(),
        Who::Ref(i) => case.references[i].name().into(),
    }
}

fn specs(paths: &Paths, settings: &Settings, case: &Case) -> Result<Vec<Spec>> {
    let logs = paths.logs();
    let mut out = vec![Spec {
        who: Who::Ours,
        command: ours_command(settings, case)?,
        log: logs.join(log_name(case, "ours", "log")),
        outputs: logs.join(log_name(case, "ours", "json")),
    }];
    for (i, &r) in case.references.iter().enumerate() {
        out.push(Spec {
            who: Who::Ref(i),
            command: reference_command(paths, settings, case, r),
            log: logs.join(log_name(case, r.slug(), "log")),
            outputs: logs.join(log_name(case, r.slug(), "json")),
        });
    }
    for s in &out {
        let _ = std::fs::remove_file(&s.outputs);
    }
    Ok(out)
}

pub fn log_name(case: &Case, side: &str, ext: &str) -> String {
    let slug: String = case
        .label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    format!("{}-{slug}-{side}.{ext}", case.workload.name())
}

pub fn ours_command(settings: &Settings, case: &Case) -> Result<Command> {
    // /proc/self/exe, not the path: the workers run the very build the harness was started
    // from even when cargo replaces target/release/capmatch-bench during a run (the target
    // dir is shared with other builds; the old path then names a deleted file).
    let exe = Path::new("/proc/self/exe");
    let mut cmd = Command::new(if exe.exists() { exe.to_path_buf() } else { std::env::current_exe()? });
    cmd.arg("worker").args(&case.args).arg("--threads").arg(settings.threads.to_string()).arg("--serve");
    cmd.env("RAYON_NUM_THREADS", settings.threads.to_string()).env("CANDLE_NUM_THREADS", settings.threads.to_string());
    cmd.envs(settings.ours_env.iter().map(|(k, v)| (k, v)));
    Ok(cmd)
}

fn reference_command(paths: &Paths, settings: &Settings, case: &Case, reference: Reference) -> Command {
    let mut cmd = Command::new(&paths.python);
    cmd.arg(paths.reference_script()).args(&case.args).args(reference.args(case)).arg("--threads").arg(settings.threads.to_string()).arg("--serve");
    let t = settings.threads.to_string();
    cmd.env("OMP_NUM_THREADS", &t)
        .env("MKL_NUM_THREADS", &t)
        .env("TOKENIZERS_PARALLELISM", "false")
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error");
    cmd
}

/// Spawns a worker, asking it to write its first call's outputs.
fn spawn(case: &Case, mut spec: Spec) -> Result<(Who, proc::Worker, Value, PathBuf)> {
    spec.command.arg("--outputs").arg(&spec.outputs);
    let (worker, ready) = proc::Worker::spawn(&name(spec.who, case), spec.command, &spec.log)?;
    Ok((spec.who, worker, ready, spec.outputs))
}

fn side_mut(result: &mut CaseResult, who: Who) -> &mut Option<Side> {
    match who {
        Who::Ours => &mut result.ours,
        Who::Ref(i) => &mut result.refs[i].side,
    }
}

fn error(result: &mut CaseResult, who: Who, e: anyhow::Error) {
    let name = name(who, &result.case);
    result.errors.push(format!("{name}: {e:#}"));
}

/// Loads every worker (one after the other, so that loading never overlaps a timed round),
/// then times them in turn. A worker that fails to load is left out; the others still run.
fn run_interleaved(settings: &Settings, specs: Vec<Spec>, result: &mut CaseResult) {
    let case = result.case.clone();
    let mut workers = Vec::new();
    for spec in specs {
        let who = spec.who;
        match spawn(&case, spec) {
            Ok((who, worker, ready, outputs)) => workers.push((who, worker, Side { ready, outputs: Some(outputs), ..Default::default() })),
            Err(e) => error(result, who, e),
        }
    }
    let calls = calls_per_round(settings, workers.iter().map(|(_, _, s)| &s.ready));
    result.calls_per_round = calls;
    let pids: Vec<u32> = workers.iter().map(|(_, w, _)| w.pid()).collect();
    let start = Instant::now();
    'rounds: for i in 0..settings.max_rounds.max(settings.min_rounds) {
        if i >= settings.min_rounds && start.elapsed().as_secs_f64() > settings.budget_secs {
            break;
        }
        for (j, (who, worker, side)) in workers.iter_mut().enumerate() {
            let others: Vec<u32> = pids.iter().enumerate().filter(|(o, _)| *o != j).map(|(_, p)| *p).collect();
            let others_cpu = |pids: &[u32]| pids.iter().map(|p| proc::cpu_secs(*p)).sum::<Option<f64>>();
            let before = others_cpu(&others);
            match worker.round(calls) {
                Ok(round) => {
                    if let (Some(a), Some(b)) = (before, others_cpu(&others)) {
                        side.idle_other_cpu.push((b - a) / round.secs.max(1e-9));
                    }
                    side.record(&round);
                }
                Err(e) => {
                    error(result, *who, e);
                    break 'rounds;
                }
            }
        }
    }
    for (who, worker, mut side) in workers {
        side.peak_rss_kb = worker.finish().unwrap_or_else(|e| {
            error(result, who, e);
            0
        });
        *side_mut(result, who) = (!side.per_item.is_empty()).then_some(side);
    }
    let ours = result.ours.as_ref().map(|s| s.per_item.clone()).unwrap_or_default();
    for r in &mut result.refs {
        r.ratio = r.side.as_ref().and_then(|s| paired_ratio(&ours, &s.per_item));
    }
}

/// The sides one after the other, each loaded, warmed up, timed and ended before the next
/// starts, for cases whose workers do not fit in memory together. Each side starts from a
/// dropped page cache where the kernel allows it (root), so neither inherits the other's
/// file pages; the speed ratio is then the ratio of the medians (no pairs of rounds under
/// the same machine state), and a side whose CPU use fell below 90 % of its threads (memory
/// pressure, swapping of mapped files) makes the row not comparable.
fn run_sequential(settings: &Settings, specs: Vec<Spec>, result: &mut CaseResult) {
    let case = result.case.clone();
    for spec in specs {
        let who = spec.who;
        let dropped = proc::drop_page_cache();
        let available = proc::mem_available_kb();
        let (who, mut worker, ready, outputs) = match spawn(&case, spec) {
            Ok(x) => x,
            Err(e) => {
                error(result, who, e);
                continue;
            }
        };
        let calls = calls_per_round(settings, [&ready]);
        result.calls_per_round = result.calls_per_round.max(calls);
        let mut side = Side { ready, outputs: Some(outputs), mem_available_kb: available, page_cache_dropped: Some(dropped), ..Default::default() };
        if let Err(e) = solo_rounds(&mut worker, calls, settings, &mut side) {
            error(result, who, e);
        }
        // Waits for the exit, so that its memory is back before the next side loads.
        side.peak_rss_kb = worker.finish().unwrap_or_else(|e| {
            error(result, who, e);
            0
        });
        *side_mut(result, who) = (!side.per_item.is_empty()).then_some(side);
    }
    let ours = result.ours.clone();
    let floor = 0.9 * settings.threads as f64;
    let low_cpu = |name: &str, s: &Side| {
        let cpu = median(&s.cpu_util);
        (cpu < floor).then(|| format!("{name} used {cpu:.2} CPUs of {} (under {floor:.1}): not comparable", settings.threads))
    };
    for r in &mut result.refs {
        if let (Some(o), Some(s)) = (&ours, &r.side) {
            r.ratio = ratio_of_medians(&o.per_item, &s.per_item);
            r.not_comparable = low_cpu("capmatch", o).or_else(|| low_cpu(r.reference.name(), s));
        }
    }
}

/// Times one worker on its own: `min_rounds` rounds, then more up to `max_rounds` while the
/// case is under its time budget (the same rule as the interleaved rounds).
pub fn solo_rounds(worker: &mut proc::Worker, calls: usize, settings: &Settings, side: &mut Side) -> Result<()> {
    let start = Instant::now();
    for i in 0..settings.max_rounds.max(settings.min_rounds) {
        if i >= settings.min_rounds && start.elapsed().as_secs_f64() > settings.budget_secs {
            break;
        }
        side.record(&worker.round(calls)?);
    }
    Ok(())
}

/// Calls per round so that a round lasts about `round_secs` on the slowest worker, judged
/// from the warm-up (one call each).
pub fn calls_per_round<'a>(settings: &Settings, ready: impl IntoIterator<Item = &'a Value>) -> usize {
    let slow = ready.into_iter().map(|v| v["warmup_secs"].as_f64().unwrap_or(0.0)).fold(0.0, f64::max);
    if slow <= 0.0 {
        return 1;
    }
    ((settings.round_secs / slow).ceil() as usize).clamp(1, 64)
}

/// Compares each reference's outputs with ours (see [`agreement`]).
fn compare_outputs(result: &mut CaseResult) {
    let Some(ours) = result.ours.as_ref().and_then(|s| s.outputs.as_deref()).map(Outputs::read) else { return };
    let ours = match ours {
        Ok(o) => o,
        Err(e) => {
            result.errors.push(format!("capmatch outputs: {e:#}"));
            return;
        }
    };
    let (dtype, new_tokens) = (result.case.dtype.clone(), result.case.new_tokens);
    for r in &mut result.refs {
        let Some(path) = r.side.as_ref().and_then(|s| s.outputs.clone()) else { continue };
        r.agreement = Some(match Outputs::read(&path) {
            Ok(theirs) => agreement::compare(&ours, &theirs, &dtype, new_tokens),
            Err(e) => agreement::Agreement { text: format!("no outputs: {e:#}"), ok: Some(false) },
        });
    }
}
