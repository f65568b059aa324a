#!/usr/bin/env python3
"""Turns the results of tools/bench/serve_load.sh (oha's JSON, the server's /metrics and the
index job's progress after each phase) into a Markdown section, printed and written into
BENCHMARKS.md between the serve-load markers (standard library only)."""
import json
import re
import sys
import time
from pathlib import Path

START, END = "<!-- serve-load:start -->", "<!-- serve-load:end -->"


def metric(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def main(argv):
    work, clients, duration, n, cpus = Path(argv[0]), int(argv[1]), argv[2], int(argv[3]), argv[4]
    write = "--no-write" not in argv
    phases = [(f"text-c{clients}", "text", clients), (f"image-c{clients}", "image", clients), ("image-c1", "image", 1)]
    previous = "start"
    rows, rps = [], {}
    for name, kind, c in phases:
        oha = json.loads((work / f"{name}.json").read_text())
        s, lat = oha["summary"], oha["latencyPercentiles"]
        codes = oha.get("statusCodeDistribution", {})
        errors = sum(oha.get("errorDistribution", {}).values()) + sum(v for k, v in codes.items() if not k.startswith("2"))
        before, after = (work / f"{previous}.metrics.txt").read_text(), (work / f"{name}.metrics.txt").read_text()
        batches = metric(after, "capmatch_search_batch_size_count") - metric(before, "capmatch_search_batch_size_count")
        searches = metric(after, "capmatch_search_batch_size_sum") - metric(before, "capmatch_search_batch_size_sum")
        job_before = json.loads((work / f"{previous}.job.json").read_text())
        job_after = json.loads((work / f"{name}.job.json").read_text())
        indexed = job_after["done"] - job_before["done"]
        rps[name] = s["requestsPerSec"]
        rows.append(
            f"| {kind} | {c} | {sum(codes.values()) + sum(oha.get('errorDistribution', {}).values())} | {s['requestsPerSec']:.1f} | "
            f"{lat['p50'] * 1e3:.1f} | {lat['p99'] * 1e3:.1f} | {errors} | "
            f"{searches / batches if batches else 0:.1f} | {indexed} ({job_after['state']}) |"
        )
        previous = name
    gain = rps[f"image-c{clients}"] / rps["image-c1"]
    load = {when: (work / f"{when}.loadavg").read_text().split() for when in ("start", "end") if (work / f"{when}.loadavg").exists()}
    conditions = (
        f"Load average (1, 5, 15 min) at the start {' / '.join(load['start'])}, at the end {' / '.join(load['end'])} "
        "(about 2 is this benchmark itself on 2 CPUs; more means other work shared the machine)."
        if len(load) == 2 else "The machine may have been shared with other work during the run."
    )
    conditions = f"Machine: {cpu_description()}. Models in f32 (the server's default). " + conditions
    # When the measured rows began (the report may be written later, from the kept results).
    started = (work / "start.loadavg").stat().st_mtime if (work / "start.loadavg").exists() else time.time()
    section = "\n".join([
        START,
        f"### `capmatch serve` under load (run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, `tools/bench/serve_load.sh`)",
        "",
        f"{n:,} synthetic images (random vectors, full-size random-weight CLIP ViT-B/32 and BLIP base), served "
        f"with uploads on; an index job adds real images (tuxpaint stamps) with those models during the whole run. "
        f"`oha`, {duration} per row, {cpus} CPUs. Batch = mean searches per model batch (the engine's dynamic "
        f"batching); indexed = images the job committed during the row.",
        "",
        "| queries | clients | requests | req/s | p50 ms | p99 ms | errors | batch | indexed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Image-query throughput at {clients} clients: **{gain:.2f}×** that of one client.",
        "",
        conditions,
        END,
    ])
    print(section)
    if write:
        path = Path("BENCHMARKS.md")
        text = path.read_text()
        if START in text:
            text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        path.write_text(text)
        print("written into BENCHMARKS.md", file=sys.stderr)


def cpu_description():
    """The CPU model and the vector extensions the kernels can use (the figures depend on them)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "unknown CPU")
    flags = set(next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), []))
    ext = "AVX-512 + AVX512_BF16" if {"avx512f", "avx512_bf16"} <= flags else "AVX-512" if "avx512f" in flags else "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    return f"{model} ({ext})"


if __name__ == "__main__":
    main(sys.argv[1:])
