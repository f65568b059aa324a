#!/usr/bin/env python3
"""The reference side of the speed harness (`capmatch-bench`): the same workloads run the
way a user without capmatch would run them, in transformers/PyTorch (CPU) and faiss.

One workload per invocation. The process loads what it needs, warms up, prints one JSON
line `{"event": "ready", ...}` and then either

* `--serve`: reads stdin; for every line `run N` it times one round of N calls of the
  workload and prints `{"event": "round", "secs": S, "items": N}`; it exits at end of input. The
  harness drives our worker and this one alternately (ours, ref, ours, ref, ...) so that
  both see the same machine noise;
* `--rounds N` (default): times N rounds itself and prints a summary line
  `{"event": "summary", "median_secs": ..., "items_per_sec": ...}`.

Workloads:

    clip-image   --model DIR --dtype f32|bf16 --batch B --images DIR [--backend torch|onnxruntime --onnx FILE]
    clip-text    --model DIR --dtype f32|bf16 --captions FILE.json [--backend torch|onnxruntime --onnx FILE]
    blip-caption --model DIR --dtype f32|bf16 --batch B --beams K --new-tokens T --images DIR
                 [--prompt TEXT]
    blip2-caption  the same flags, Blip2ForConditionalGeneration + Blip2Processor
                 (`--prompt ""`: unconditional captioning, BLIP-2's default)
    search       --gallery FILE.npy --queries FILE.npy --k 10 [--queries-per-call Q]

`--outputs FILE` writes the outputs of the first call (embeddings, token ids, or the top k
of the first queries) as JSON `{"kind": ..., "rows": [...]}` for the harness to compare with
capmatch's on the same inputs.

`--backend onnxruntime` runs the CLIP towers with ONNX Runtime (CPU execution provider,
default graph optimisations, `intra_op_num_threads` = `--threads`) on a model exported by
`export-onnx` from the same checkpoint, with the same transformers processor in NumPy:
what a user of Immich or fastembed runs.

Utilities used by the harness to make shared inputs:

    captions     --model DIR --tokens 20 --count 32 --out FILE.json
                 captions that the checkpoint's tokenizer turns into exactly T tokens
                 (start and end tokens included)
    make-vectors --n N --dim D --seed S --out FILE.npy
                 L2-normalised random float32 vectors, C order
    flat-latency --gallery FILE.npy --queries FILE.npy --truth FILE.npy --count N
                 faiss IndexFlatIP for `capmatch-bench milvus`: the first N queries timed
                 one at a time, recall@10 against the truth; one JSON line
    ann-hnsw     --gallery FILE.npy --queries FILE.npy --truth FILE.npy --m 32
                 --ef-construction E --recall R [--out FILE.index]
                 faiss IndexHNSWFlat (inner product) for `capmatch-bench ann`: builds it,
                 takes the smallest efSearch whose recall@10 against the truth (row
                 numbers, int64) reaches R, times single queries there; one JSON line
    export-onnx  --model DIR --tower image|text --out FILE.onnx
                 a CLIP tower (features after the projection) exported with torch.onnx
                 (TorchScript exporter, opset 17, dynamic batch and sequence), f32

Threads: `--threads T` sets `torch.set_num_threads(T)` and faiss' OpenMP threads.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def status_kb(*names):
    """Fields of /proc/self/status in KiB, in the order asked (0 for a missing one)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in names:
                fields[name] = int(rest.split()[0])
    return [fields.get(name, 0) for name in names]


def rss_kb():
    """(VmRSS, VmHWM) of this process in KiB."""
    rss, hwm = status_kb("VmRSS", "VmHWM")
    return rss, hwm


def rss_split_kb():
    """(RssAnon, RssFile + RssShmem) of this process in KiB: own pages, mapped files."""
    anon, mapped, shmem = status_kb("RssAnon", "RssFile", "RssShmem")
    return anon, mapped + shmem


def write_outputs(path, kind, rows):
    Path(path).write_text(json.dumps({"kind": kind, "rows": rows}))


def set_threads(n):
    if n:
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    if n:
        torch.set_num_threads(n)
    return torch


def torch_dtype(name):
    import torch

    return {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[name]


def load_images(folder, count):
    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        sys.exit(f"no images in {folder}")
    images = []
    for i in range(count):
        with Image.open(files[i % len(files)]) as im:
            images.append(im.convert("RGB"))
    return images


# ----------------------------------------------------------------------------------------
# Workloads: each returns (ready_info, round_fn); round_fn() runs one round and returns the
# number of items (images, captions, queries) it processed.


def features(out):
    """`get_*_features` returns a tensor (transformers 4) or an output with `pooler_output` (5)."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


def clip_image(args):
    if args.backend == "onnxruntime":
        return clip_onnx(args, "image")
    torch = set_threads(args.threads)
    from transformers import AutoProcessor, CLIPModel

    dtype = torch_dtype(args.dtype)
    model = CLIPModel.from_pretrained(args.model, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    images = load_images(args.images, args.batch)

    def round_fn(keep=False):
        with torch.inference_mode():
            inputs = processor(images=images, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(dtype)
            feats = features(model.get_image_features(pixel_values=pixel_values))
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        assert feats.shape[0] == len(images)
        if keep:
            write_outputs(keep, "embeddings", feats.tolist())
        return len(images)

    return {"batch": len(images), "pixel_values": list(processor(images=images[:1], return_tensors="pt")["pixel_values"].shape)}, round_fn


def clip_text(args):
    if args.backend == "onnxruntime":
        return clip_onnx(args, "text")
    torch = set_threads(args.threads)
    from transformers import AutoProcessor, CLIPModel

    dtype = torch_dtype(args.dtype)
    model = CLIPModel.from_pretrained(args.model, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    captions = json.loads(Path(args.captions).read_text())
    lengths = {len(ids) for ids in processor.tokenizer(captions)["input_ids"]}

    def round_fn(keep=False):
        with torch.inference_mode():
            inputs = processor(text=captions, padding=True, return_tensors="pt")
            feats = features(model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]))
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        assert feats.shape[0] == len(captions)
        if keep:
            write_outputs(keep, "embeddings", feats.tolist())
        return len(captions)

    return {"batch": len(captions), "token_lengths": sorted(lengths)}, round_fn


def onnx_session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def clip_onnx(args, tower):
    """A CLIP tower in ONNX Runtime, inputs from the same transformers processor (NumPy)."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoProcessor

    if args.dtype != "f32":
        sys.exit("onnxruntime rows are f32 only (its CPU provider has no bf16 MatMul/Gemm kernels)")
    session = onnx_session(args.onnx, args.threads)
    processor = AutoProcessor.from_pretrained(args.model)
    if tower == "image":
        items = load_images(args.images, args.batch)

        def feeds():
            return {"pixel_values": processor(images=items, return_tensors="np")["pixel_values"].astype(np.float32)}

    else:
        items = json.loads(Path(args.captions).read_text())

        def feeds():
            inputs = processor(text=items, padding=True, return_tensors="np")
            return {"input_ids": inputs["input_ids"].astype(np.int64), "attention_mask": inputs["attention_mask"].astype(np.int64)}

    def round_fn(keep=False):
        (feats,) = session.run(None, feeds())
        feats = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
        assert feats.shape[0] == len(items)
        if keep:
            write_outputs(keep, "embeddings", feats.tolist())
        return len(items)

    return {"batch": len(items), "onnxruntime": ort.__version__, "providers": session.get_providers()}, round_fn


def blip_caption(args):
    set_threads(args.threads)  # before transformers imports torch
    from transformers import AutoProcessor, BlipForConditionalGeneration

    return caption(args, BlipForConditionalGeneration, AutoProcessor)


def blip2_caption(args):
    set_threads(args.threads)
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    return caption(args, Blip2ForConditionalGeneration, Blip2Processor)


def caption(args, model_class, processor_class):
    """`generate` with exactly `--new-tokens` new tokens (min = max). Without a prompt the
    processor gives pixel values only and `generate` starts from the model's own start tokens
    (BLIP: BOS; BLIP-2 OPT: the query-token placeholders + BOS)."""
    import torch

    dtype = torch_dtype(args.dtype)
    model = model_class.from_pretrained(args.model, dtype=dtype).eval()
    processor = processor_class.from_pretrained(args.model)
    images = load_images(args.images, args.batch)
    prompts = [args.prompt] * len(images) if args.prompt else None
    info = {"batch": len(images), "beams": args.beams, "new_tokens": args.new_tokens}

    def round_fn(keep=False):
        with torch.inference_mode():
            inputs = processor(images=images, text=prompts, return_tensors="pt")
            kwargs = {"pixel_values": inputs["pixel_values"].to(dtype)}
            if prompts:
                kwargs["input_ids"] = inputs["input_ids"]
                kwargs["attention_mask"] = inputs["attention_mask"]
            out = model.generate(
                **kwargs,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                num_beams=args.beams,
                do_sample=False,
            )
            processor.batch_decode(out, skip_special_tokens=True)
        info["output_shape"] = list(out.shape)
        if keep:
            write_outputs(keep, "tokens", out.tolist())
        return len(images)

    return info, round_fn


def search(args):
    import numpy as np

    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rss_before, _ = rss_kb()
    gallery = np.load(args.gallery, mmap_mode="r")
    n, dim = gallery.shape
    index = faiss.IndexFlatIP(dim)
    # Add in chunks so the load does not hold a second full copy of the gallery.
    for start in range(0, n, 65536):
        index.add(np.ascontiguousarray(gallery[start : start + 65536], dtype=np.float32))
    del gallery
    queries = np.load(args.queries).astype(np.float32)
    rss_after, _ = rss_kb()
    state = {"next": 0}
    per_call = max(args.queries_per_call, 1)
    # The queries whose results the harness compares (as capmatch-bench's worker does).
    checked = min(64, len(queries), args.queries_per_round if per_call == 1 else per_call)

    def single(keep=False):
        # One query per call, the interactive case. faiss parallelises a search over its
        # queries, so one query runs on one thread whatever omp_set_num_threads says.
        for _ in range(args.queries_per_round):
            i = state["next"] % len(queries)
            state["next"] += 1
            index.search(queries[i : i + 1], args.k)
        if keep:
            ids = [index.search(queries[i : i + 1], args.k)[1][0].tolist() for i in range(checked)]
            write_outputs(keep, "topk", ids)
        return args.queries_per_round

    def batched(keep=False):
        start = (state["next"] * per_call) % len(queries)
        state["next"] += 1
        rows = np.take(queries, range(start, start + per_call), axis=0, mode="wrap")
        _, ids = index.search(rows, args.k)
        if keep:
            write_outputs(keep, "topk", index.search(queries[:checked], args.k)[1].tolist())
        return per_call

    round_fn = single if per_call == 1 else batched

    info = {
        "n": n,
        "dim": dim,
        "k": args.k,
        "queries_per_call": per_call,
        "faiss": faiss.__version__,
        "rss_before_load_kb": rss_before,
        "rss_after_build_kb": rss_after,
    }
    return info, round_fn


# ----------------------------------------------------------------------------------------
# Utilities


WORDS = (
    "a photo of the small red dog sitting on green grass next to an old blue house while "
    "two children play with a yellow ball under the tall tree in a quiet park near the "
    "river on a warm sunny day and some people walk by with their black cat and white bird"
).split()


def captions(args):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    out = []
    for i in range(args.count):
        words = []
        j = i
        while True:
            words.append(WORDS[j % len(WORDS)])
            j += 1
            n = len(tokenizer(" ".join(words))["input_ids"])
            if n >= args.tokens:
                break
        if n != args.tokens:
            sys.exit(f"could not build a caption of exactly {args.tokens} tokens")
        out.append(" ".join(words))
    Path(args.out).write_text(json.dumps(out, indent=1))
    emit({"event": "captions", "count": len(out), "tokens": args.tokens})


def make_vectors(args):
    import numpy as np

    rng = np.random.default_rng(args.seed)
    out = np.lib.format.open_memmap(args.out, mode="w+", dtype=np.float32, shape=(args.n, args.dim))
    for start in range(0, args.n, 65536):
        block = rng.standard_normal((min(65536, args.n - start), args.dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    out.flush()
    del out
    emit({"event": "vectors", "n": args.n, "dim": args.dim, "path": args.out})


def ann_hnsw(args):
    import numpy as np

    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    gallery = np.load(args.gallery, mmap_mode="r")
    n, dim = gallery.shape
    queries = np.load(args.queries).astype(np.float32)
    truth = np.load(args.truth)
    k = truth.shape[1]
    index = faiss.IndexHNSWFlat(dim, args.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = args.ef_construction
    t = time.perf_counter()
    for start in range(0, n, 65536):
        index.add(np.ascontiguousarray(gallery[start : start + 65536], dtype=np.float32))
    build_secs = time.perf_counter() - t
    del gallery
    size = 0
    if args.out:
        faiss.write_index(index, args.out)
        size = os.path.getsize(args.out)
    # One query at a time, on one thread, like the interactive case on our side.
    faiss.omp_set_num_threads(1)

    def run(ef):
        index.hnsw.efSearch = ef
        found, times = [], []
        for i in range(len(queries)):
            t = time.perf_counter()
            _, ids = index.search(queries[i : i + 1], k)
            times.append(time.perf_counter() - t)
            found.append(ids[0])
        r1 = sum(int(f[0] == w[0]) for f, w in zip(found, truth)) / len(queries)
        r10 = sum(len(set(f.tolist()) & set(w.tolist())) for f, w in zip(found, truth)) / (k * len(queries))
        times.sort()
        pick = lambda p: times[round((len(times) - 1) * p)] * 1e3  # noqa: E731
        return {"ef_search": ef, "recall_at_1": r1, "recall_at_10": r10, "p50_ms": pick(0.5), "p99_ms": pick(0.99)}

    curve = []
    for ef in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024):
        point = run(ef)
        curve.append(point)
        if point["recall_at_10"] >= args.recall:
            break
    best = curve[-1]
    rss, hwm = rss_kb()
    anon, mapped = rss_split_kb()
    emit({"event": "ann", "faiss": faiss.__version__, "n": n, "m": args.m, "ef_construction": args.ef_construction,
          "build_secs": build_secs, "bytes": size, "rss_kb": rss, "hwm_kb": hwm, "anon_kb": anon, "file_kb": mapped,
          **best, "curve": curve})


def export_onnx(args):
    """Exports one CLIP tower (projected features, not normalised) with the TorchScript
    exporter. Eager attention for the export only: the same arithmetic as SDPA, and a graph
    that ONNX Runtime's optimiser knows how to fuse."""
    import torch
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()

    class Tower(torch.nn.Module):
        def __init__(self, model, tower):
            super().__init__()
            self.model, self.tower = model, tower

        def forward(self, *inputs):
            if self.tower == "image":
                return features(self.model.get_image_features(pixel_values=inputs[0]))
            return features(self.model.get_text_features(input_ids=inputs[0], attention_mask=inputs[1]))

    if args.tower == "image":
        size = model.config.vision_config.image_size
        dummy = (torch.zeros(2, 3, size, size),)
        names, axes = ["pixel_values"], {"pixel_values": {0: "batch"}}
    else:
        ids = torch.ones(2, 7, dtype=torch.int64)
        dummy = (ids, torch.ones_like(ids))
        names = ["input_ids", "attention_mask"]
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    axes["embeds"] = {0: "batch"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(
            Tower(model, args.tower), dummy, str(out), input_names=names, output_names=["embeds"],
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )
    emit({"event": "exported", "tower": args.tower, "path": str(out)})


# ----------------------------------------------------------------------------------------


WORKLOADS = {
    "clip-image": clip_image,
    "clip-text": clip_text,
    "blip-caption": blip_caption,
    "blip2-caption": blip2_caption,
    "search": search,
}
def flat_latency(args):
    """Exact search (IndexFlatIP), one query at a time, for the Milvus store's figures."""
    import numpy as np

    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    gallery = np.load(args.gallery, mmap_mode="r")
    queries = np.load(args.queries).astype(np.float32)[: args.count]
    truth = np.load(args.truth)
    n, dim = gallery.shape
    index = faiss.IndexFlatIP(dim)
    t = time.perf_counter()
    for start in range(0, n, 65536):
        index.add(np.ascontiguousarray(gallery[start : start + 65536], dtype=np.float32))
    build_secs = time.perf_counter() - t
    del gallery
    k = truth.shape[1]
    for i in range(min(5, len(queries))):
        index.search(queries[i : i + 1], k)
    times, found = [], 0
    for i in range(len(queries)):
        t = time.perf_counter()
        _, ids = index.search(queries[i : i + 1], k)
        times.append(time.perf_counter() - t)
        found += len(set(ids[0].tolist()) & set(truth[i].tolist()))
    times.sort()
    pick = lambda p: times[round((len(times) - 1) * p)] * 1e3  # noqa: E731
    rss, hwm = rss_kb()
    emit({"event": "flat", "faiss": faiss.__version__, "n": n, "build_secs": build_secs, "p50_ms": pick(0.5),
          "p99_ms": pick(0.99), "recall_at_10": found / (k * len(queries)), "rss_kb": rss, "hwm_kb": hwm})


UTILITIES = {"captions": captions, "make-vectors": make_vectors, "ann-hnsw": ann_hnsw, "export-onnx": export_onnx,
             "flat-latency": flat_latency}


def versions():
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "faiss", "numpy", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            out[name] = None
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=sorted(WORKLOADS) + sorted(UTILITIES) + ["versions"])
    p.add_argument("--model")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--images")
    p.add_argument("--captions")
    p.add_argument("--beams", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=20)
    p.add_argument("--prompt", default="a picture of")
    p.add_argument("--gallery")
    p.add_argument("--queries")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries-per-round", type=int, default=20)
    p.add_argument("--queries-per-call", type=int, default=1)
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--onnx", help="the exported tower for --backend onnxruntime")
    p.add_argument("--tower", choices=["image", "text"])
    p.add_argument("--outputs", help="write the first call's outputs here (JSON)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--serve", action="store_true")
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    p.add_argument("--truth")
    p.add_argument("--m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument("--recall", type=float, default=0.98)
    args = p.parse_args()

    if args.workload == "versions":
        emit({"event": "versions", **versions()})
        return
    if args.workload in UTILITIES:
        UTILITIES[args.workload](args)
        return

    t0 = time.perf_counter()
    info, round_fn = WORKLOADS[args.workload](args)
    load_secs = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(max(args.warmup, 1 if args.outputs else 0)):
        round_fn(keep=args.outputs if i == 0 else False)
    warmup_secs = time.perf_counter() - t0
    threads = None
    if args.workload != "search" and args.backend == "torch":
        import torch

        threads = torch.get_num_threads()
    emit({"event": "ready", "load_secs": load_secs, "warmup_secs": warmup_secs, "threads": threads, **info})

    def timed():
        t = time.perf_counter()
        items = round_fn()
        return time.perf_counter() - t, items

    if args.serve:
        for line in sys.stdin:
            words = line.split()
            cmd = words[0] if words else ""
            if cmd == "run":
                calls = int(words[1]) if len(words) > 1 else 1
                t = time.perf_counter()
                items = sum(round_fn() for _ in range(max(calls, 1)))
                secs = time.perf_counter() - t
                rss, hwm = rss_kb()
                emit({"event": "round", "secs": secs, "items": items, "rss_kb": rss, "hwm_kb": hwm})
            elif cmd == "quit":
                break
            elif cmd:
                emit({"event": "error", "message": f"unknown command {cmd!r}"})
        return
    times = []
    items = 0
    for _ in range(args.rounds):
        secs, items = timed()
        times.append(secs)
    med = statistics.median(times)
    rss, hwm = rss_kb()
    emit({"event": "summary", "rounds": times, "median_secs": med, "items": items, "items_per_sec": items / med, "rss_kb": rss, "hwm_kb": hwm})


if __name__ == "__main__":
    main()
