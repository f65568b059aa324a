#!/usr/bin/env python3
"""Full-size parity: random-weight checkpoints with the real shapes, transformers' outputs on
real images beside them, and the ignored full-size parity tests run against them with the
fixtures' bounds (f32 cosine >= 0.99999 and token ids identical, bf16 cosine >= 0.999).
Run by hand (needs torch + transformers; cargo builds the tests in release):

    python3 tools/reference/full_size_parity.py                      # CLIP B/32, L/14, BLIP base
    python3 tools/reference/full_size_parity.py --archs clip-vit-base-patch32
    python3 tools/reference/full_size_parity.py --archs blip-image-captioning-large

Checkpoints go to --models-dir (default bench-models/, shared with capmatch-bench; made once
by make_random_checkpoint.py). The summary (one line per model and dtype, from the tests'
`PARITY` lines) is printed and written to <models-dir>/full-size-parity.md, for
BENCHMARKS.md. BLIP-2 OPT-2.7b is left to its own ignored test (memory, see below).
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

# arch -> (test crate, test target, test name, environment variable naming the checkpoint)
TESTS = {
    "clip-vit-base-patch32": ("capmatch-core", "clip_parity", "full_size_checkpoint", "CAPMATCH_CLIP_FULL_DIR"),
    "clip-vit-large-patch14": ("capmatch-core", "clip_parity", "full_size_checkpoint", "CAPMATCH_CLIP_FULL_DIR"),
    "blip-image-captioning-base": ("capmatch-core", "blip_parity", "full_size_checkpoint_captions_an_image", "CAPMATCH_BLIP_FULL"),
    "blip-image-captioning-large": ("capmatch-core", "blip_parity", "full_size_checkpoint_captions_an_image", "CAPMATCH_BLIP_FULL"),
}


def ensure_checkpoint(models, arch):
    out = models / arch
    if not (out / "config.json").is_file():
        partial = models / f".{arch}.partial"
        subprocess.run([sys.executable, str(HERE / "make_random_checkpoint.py"), arch, str(partial)], check=True)
        partial.rename(out)
    return out


def ensure_reference(out, arch):
    """CLIP's make_full_size writes its reference; BLIP's is written here."""
    if (out / "capmatch_reference.json").is_file():
        return
    if arch.startswith("clip-"):
        import clip_fixtures

        clip_fixtures.write_full_size_reference(out)
    else:
        import blip_fixtures

        blip_fixtures.write_full_size_reference(out)


def run_test(arch, checkpoint):
    crate, target, name, var = TESTS[arch]
    cmd = ["cargo", "test", "--release", "-p", crate, "--test", target, "--", "--ignored", "--exact", name, "--nocapture"]
    print(f"$ {var}={checkpoint} {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, **{var: str(checkpoint)}), capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-4000:])
    lines = [line.split(" ", 2)[2] for line in proc.stderr.splitlines() if line.startswith("PARITY ")]
    return proc.returncode == 0, lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="clip-vit-base-patch32,clip-vit-large-patch14,blip-image-captioning-base")
    p.add_argument("--models-dir", default=str(ROOT / "bench-models"))
    args = p.parse_args()
    models = Path(args.models_dir)
    models.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch in args.archs.split(","):
        checkpoint = ensure_checkpoint(models, arch)
        ensure_reference(checkpoint, arch)
        ok, lines = run_test(arch, checkpoint)
        rows.append(f"| {arch} | {'passed' if ok else '**FAILED**'} | {'<br>'.join(lines) or '—'} |")
    table = "| checkpoint (random weights, real shapes) | test | results |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    (models / "full-size-parity.md").write_text(table)
    print("\n" + table)
    return 0 if all("passed" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
