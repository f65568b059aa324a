//! Child processes: the line-oriented JSON worker protocol shared by our worker
//! (`capmatch-bench worker ...`) and the reference (`tools/reference/bench_reference.py`),
//! CPU time and peak RSS from `/proc`, exit status from `wait4`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// How a child ended: exit code (or signal) and its peak resident set size.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub success: bool,
    pub code: i32,
    pub max_rss_kb: u64,
    pub wall_secs: f64,
}

/// Waits for `pid` with `wait4`, which hands back the child's own rusage (ru_maxrss is the
/// peak RSS in KiB on Linux), unlike `getrusage(RUSAGE_CHILDREN)` which mixes all children.
pub fn wait4(pid: u32) -> Result<(i32, bool, u64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: a valid pointer to status and usage; pid is our own child.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return Err(err).context("wait4");
    }
    let (code, success) = if libc::WIFEXITED(status) {
        (libc::WEXITSTATUS(status), libc::WEXITSTATUS(status) == 0)
    } else if libc::WIFSIGNALED(status) {
        (128 + libc::WTERMSIG(status), false)
    } else {
        (-1, false)
    };
    Ok((code, success, usage.ru_maxrss.max(0) as u64))
}

/// Runs a command to completion (stdout and stderr to `log`), returning its exit and peak RSS.
pub fn run_measured(mut cmd: Command, log: &Path) -> Result<Exit> {
    let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file);
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let pid = child.id();
    // ru_maxrss is not the child's own peak: Linux carries the high-water mark of the
    // address space the child was spawned from (this harness's, which holds whole vector
    // sets) across exec. The peak of the child's own address space is `VmHWM`, read while
    // it runs (monotonic, so a sample every few milliseconds misses only what the last
    // moments before exit add).
    let running = AtomicBool::new(true);
    let (exit, peak) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut peak = 0;
            while running.load(Ordering::Acquire) {
                peak = peak.max(vm_hwm_kb(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        let exit = wait4(pid).map(|e| (e, start.elapsed().as_secs_f64()));
        running.store(false, Ordering::Release);
        (exit, watcher.join().unwrap_or(0))
    });
    let ((code, success, _), wall_secs) = exit?;
    // The child is reaped: dropping the handle neither waits nor kills.
    drop(child);
    Ok(Exit { success, code, max_rss_kb: peak, wall_secs })
}

/// The peak resident set size of a live process's own address space, in KiB.
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user + system) a live process has used so far.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' field 0 is the state (field 3 of proc(5)); utime and stime are 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

/// A worker process speaking the harness protocol: one JSON object per stdout line;
/// `run N` on stdin times one round of N calls.
pub struct Worker {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    log: std::path::PathBuf,
}

/// One timed round as the worker reported it, plus what the harness saw from outside.
#[derive(Debug, Clone)]
pub struct Round {
    pub secs: f64,
    pub items: f64,
    /// CPU seconds of the worker during the round divided by its wall time.
    pub cpu_util: Option<f64>,
    /// The worker's resident set at the end of the round, as it reported it.
    pub rss_kb: Option<u64>,
}

impl Worker {
    /// Spawns the worker and waits for its `ready` line (model loaded, warm-up done).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<(Self, Value)> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log_file);
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut worker = Worker { name: name.to_string(), child, stdin, stdout, log: log.to_path_buf() };
        let ready = worker.read_event()?;
        if ready.get("event").and_then(Value::as_str) != Some("ready") {
            bail!("{}: expected a ready line, got {ready}", worker.name);
        }
        Ok((worker, ready))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn read_event(&mut self) -> Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line)?;
            if n == 0 {
                let tail = log_tail(&self.log, 15);
                bail!("{} exited before answering; last lines of {}:\n{tail}", self.name, self.log.display());
            }
            // Libraries sometimes print to stdout: only our JSON objects count.
            if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                if v.get("event").is_some() {
                    if v["event"] == "error" {
                        bail!("{}", v["message"].as_str().unwrap_or("error"));
                    }
                    return Ok(v);
                }
            }
        }
    }

    /// Times one round of `calls` calls of the workload.
    pub fn round(&mut self, calls: usize) -> Result<Round> {
        let cpu0 = cpu_secs(self.pid());
        let stdin = self.stdin.as_mut().context("worker stdin closed")?;
        writeln!(stdin, "run {calls}")?;
        stdin.flush()?;
        let v = self.read_event()?;
        let cpu1 = cpu_secs(self.pid());
        let secs = v["secs"].as_f64().context("round without secs")?;
        let items = v["items"].as_f64().context("round without items")?;
        let cpu_util = match (cpu0, cpu1) {
            // The CPU window also covers the pipe round trip; negligible next to a round.
            (Some(a), Some(b)) if secs > 0.0 => Some((b - a) / secs),
            _ => None,
        };
        Ok(Round { secs, items, cpu_util, rss_kb: v["rss_kb"].as_u64() })
    }

    /// Closes stdin, waits for the exit and returns the peak RSS (KiB) from `wait4`.
    pub fn finish(mut self) -> Result<u64> {
        drop(self.stdin.take());
        let (_code, success, max_rss) = wait4(self.child.id())?;
        if !success {
            bail!("{} failed at exit; see {}", self.name, self.log.display());
        }
        Ok(max_rss)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Only reached with the child still running on error paths: end it by its pid.
        if self.stdin.is_some() {
            drop(self.stdin.take());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Output of a short helper command, trimmed; None when it cannot run.
pub fn capture(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// MemAvailable from /proc/meminfo in KiB: what can be allocated now without swapping
/// (free memory plus the page cache that can be dropped).
pub fn mem_available_kb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// Writes back dirty pages and drops the page cache (`/proc/sys/vm/drop_caches`), so that a
/// worker loads its model from disk into free memory rather than competing with the file
/// pages of the one before it. Needs root; false where it is not allowed.
pub fn drop_page_cache() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}
