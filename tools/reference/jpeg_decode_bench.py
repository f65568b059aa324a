#!/usr/bin/env python3
"""JPEG decode time per megapixel: capmatch's decoder (libjpeg-turbo through the mozjpeg
crate), the `image` crate's (zune-jpeg, capmatch's decoder before) and Pillow, measured in one
interleaved run, plus decode + CLIP preprocessing at full and at reduced scale. Also checks
that capmatch's pixels are Pillow's on every file.

Run by hand (needs Pillow + numpy), after building the example:

    cargo build --release -p capmatch-core --example jpeg_decode
    python3 tools/reference/jpeg_decode_bench.py [--rounds 3] [--inner 3] FILE_OR_DIR...

Each round runs the example over every file (`--inner` decodes per decoder and file,
interleaved decoder by decoder), then Pillow over every file the same number of times; the
figure per file and decoder is the median of all its samples, in thread CPU time (what a
decode costs, little disturbed by other processes on a shared machine; everything here runs on
one thread) and in wall time. Pillow's preprocessing
("pillow+clip") is what transformers' CLIPImageProcessor does with the PIL backend: a bicubic
resize of the shortest edge to 224, a centre crop, rescale and normalise in numpy.
Prints a Markdown table for BENCHMARKS.md.
"""
import argparse
import io
import json
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, features

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "target" / "release" / "examples" / "jpeg_decode"
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def pillow_decode(data):
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def pillow_clip(data):
    im = pillow_decode(data)
    w, h = im.size
    short, long = min(w, h), max(w, h)
    new_long = int(224 * long / short)
    im = im.resize((224, new_long) if w <= h else (new_long, 224), Image.Resampling.BICUBIC)
    a = np.asarray(im)
    top, left = (a.shape[0] - 224) // 2, (a.shape[1] - 224) // 2
    a = a[top:top + 224, left:left + 224].astype(np.float64) * (1 / 255)
    return ((a.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)


def describe(path):
    im = Image.open(path)
    sampling = {((1, 1),) * 3: "4:4:4", ((2, 1), (1, 1), (1, 1)): "4:2:2", ((2, 2), (1, 1), (1, 1)): "4:2:0"}
    layers = tuple((h, v) for _, h, v, _ in im.layer)
    kind = "grey" if im.mode == "L" else im.mode if im.mode == "CMYK" else sampling.get(layers, str(layers))
    return im.size, kind + (", progressive" if im.info.get("progressive") else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inner", type=int, default=3)
    args = ap.parse_args()
    files = []
    for p in map(Path, args.paths):
        files += sorted(p.glob("*.jp*g")) if p.is_dir() else [p]
    data = {f: f.read_bytes() for f in files}

    # Exactness: capmatch's full-resolution pixels against Pillow's.
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(EXAMPLE), "--dump", tmp, *map(str, files)], check=True)
        differing = []
        for f in files:
            ref = np.asarray(pillow_decode(data[f]))
            got = np.fromfile(Path(tmp) / f"{f.name}.rgb", np.uint8)
            if got.size != ref.size or np.any(got.reshape(ref.shape) != ref):
                differing.append(f.name)

    samples = defaultdict(list)  # (file name, decoder) -> thread CPU ms
    walls = defaultdict(list)  # (file name, decoder) -> wall ms
    for _ in range(args.rounds):
        out = subprocess.run([str(EXAMPLE), "--rounds", str(args.inner), *map(str, files)],
                             check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            row = json.loads(line)
            samples[(row["file"], row["decoder"])] += row["cpu_ms"]
            walls[(row["file"], row["decoder"])] += row["ms"]
        for f in files:
            for _ in range(args.inner):
                for decoder, fn in (("pillow", pillow_decode), ("pillow+clip", pillow_clip)):
                    t, c = time.perf_counter(), time.thread_time()
                    fn(data[f])
                    samples[(f.name, decoder)].append((time.thread_time() - c) * 1e3)
                    walls[(f.name, decoder)].append((time.perf_counter() - t) * 1e3)

    decoders = ["capmatch", "image-zune", "pillow", "capmatch+clip", "pillow+clip", "capmatch-reduced+clip"]
    print(f"Pillow {Image.__version__ if hasattr(Image, '__version__') else ''} with libjpeg-turbo "
          f"{features.version_feature('libjpeg_turbo')}; {args.rounds} rounds x {args.inner} decodes; "
          f"capmatch pixels identical to Pillow's on {len(files) - len(differing)} of {len(files)} files"
          + (f" (differ: {', '.join(differing)})" if differing else ""))
    print()
    print("Thread CPU ms (wall ms):")
    print()
    print("| file | size | kind | " + " | ".join(f"{d}" for d in decoders) + " |")
    print("|---|---|---|" + "---|" * len(decoders))
    per_mp = defaultdict(list)
    for f in files:
        (w, h), kind = describe(f)
        mp = w * h / 1e6
        cells = []
        for d in decoders:
            ms = statistics.median(samples[(f.name, d)])
            per_mp[d].append(ms / mp)
            cells.append(f"{ms:.1f} ({statistics.median(walls[(f.name, d)]):.0f})")
        print(f"| {f.name} | {w}x{h} ({mp:.1f} MP) | {kind} | " + " | ".join(cells) + " |")
    print()
    print("| median over files, CPU ms per megapixel | " + " | ".join(decoders) + " |")
    print("|---|" + "---|" * len(decoders))
    print("| | " + " | ".join(f"{statistics.median(per_mp[d]):.2f}" for d in decoders) + " |")


if __name__ == "__main__":
    main()
