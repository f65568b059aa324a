#!/usr/bin/env python3
"""The reference side of the `capmatch inspect` benchmark: the same neighbour graphs with faiss.

Run by `capmatch-bench inspect` (see BENCHMARKS.md), or by hand:

    python3 tools/reference/inspect_graph_reference.py make --n 10000 --dim 512 --seed 1 --out DIR
    python3 tools/reference/inspect_graph_reference.py graph --dir DIR --k 10 --threads 2

`make` writes clustered random vectors, `DIR/images.npy` and `DIR/captions.npy` (one caption
per image, as BLIP gives): images drawn around n / 20 random centres, each caption near its
image's centre, all L2-normalised float32.

`graph` computes what capmatch's inspection computes first: for every image, its k nearest
other images in image space (its image vector against every image vector) and in caption
space (its image vector against every caption vector), with faiss `IndexFlatIP` (exact,
BLAS). It searches k + 1 and drops the image itself. It prints one JSON line with the
seconds spent (loading excluded) and writes the neighbour ids to `DIR/faiss-image.npy` and
`DIR/faiss-caption.npy` (int64, n x k) for the harness to compare with capmatch's graph.
Needs `pip install faiss-cpu numpy`.
"""

import argparse
import json
import os
import sys
import time

import numpy as np


def make(args):
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((max(1, args.n // 20), args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, len(centres), args.n)

    def around(spread):
        v = centres[which] + spread * rng.standard_normal((args.n, args.dim)).astype(np.float32) / np.sqrt(args.dim)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "images.npy"), around(0.6))
    np.save(os.path.join(args.out, "captions.npy"), around(0.9))


def without_self(ids, k):
    """Rows of k + 1 neighbours without the query itself (or without the last one)."""
    out = np.empty((ids.shape[0], k), dtype=np.int64)
    for i, row in enumerate(ids):
        kept = row[row != i]
        out[i] = kept[:k]
    return out


def graph(args):
    import faiss

    faiss.omp_set_num_threads(args.threads)
    images = np.load(os.path.join(args.dir, "images.npy"))
    captions = np.load(os.path.join(args.dir, "captions.npy"))
    seconds = {}
    for name, base in (("image", images), ("caption", captions)):
        start = time.perf_counter()
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        _, ids = index.search(images, args.k + 1)
        ids = without_self(ids, args.k)
        seconds[name] = time.perf_counter() - start
        np.save(os.path.join(args.dir, f"faiss-{name}.npy"), ids)
    print(json.dumps({"n": int(images.shape[0]), "k": args.k, "seconds": seconds, "faiss": faiss.__version__}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--n", type=int, required=True)
    m.add_argument("--dim", type=int, default=512)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--out", required=True)
    g = sub.add_parser("graph")
    g.add_argument("--dir", required=True)
    g.add_argument("--k", type=int, default=10)
    g.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    {"make": make, "graph": graph}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
