#!/usr/bin/env python3
"""Where PyTorch's f32 CLIP image tower spends its time on this CPU, and whether a setting a
user could reasonably apply changes it (issue 17, item 2).

    python3 tools/reference/profile_torch_clip.py bench-models/clip-vit-base-patch32 [--batch 8] [--threads 2]

Prints (1) the torch.profiler table of one batch, self CPU time by operator, with the share
spent in matrix products (addmm, mm, bmm, linear, the SDPA kernels) and outside them, and
(2) the median time per image of the same batch under each setting below, interleaved
(every setting once per round, several rounds) so that they see the same machine:

    default        CLIPModel(dtype=float32), SDPA attention, torch.inference_mode()
    eager-attn     attn_implementation="eager" (explicit matmul + softmax)
    mkldnn-off     torch.backends.mkldnn.enabled = False
    channels-last  pixel values in channels_last (only the patch convolution can use it)
    jit-freeze     torch.jit.trace + torch.jit.freeze (oneDNN fusions of linear + GELU etc.)
    compile        torch.compile(model.get_image_features) (Inductor, C++ codegen; skipped if it fails)

Outputs are compared with the default's (cosine) so that a faster setting that computes
something else shows up. Images: the harness's pre-sized inputs when present, else the
fixtures' real images.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from PIL import Image
    from transformers import AutoProcessor, CLIPModel

    torch.set_num_threads(args.threads)
    repo = Path(__file__).resolve().parents[2]
    folder = repo / "bench-models/inputs/rgb224"
    if not folder.is_dir():
        folder = repo / "fixtures/images/real"
    files = sorted(f for f in folder.iterdir() if f.suffix == ".png")
    images = [Image.open(files[i % len(files)]).convert("RGB") for i in range(args.batch)]
    processor = AutoProcessor.from_pretrained(args.model)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]

    def features(out):
        return out.pooler_output if hasattr(out, "pooler_output") else out

    sdpa = CLIPModel.from_pretrained(args.model, dtype=torch.float32).eval()
    eager = CLIPModel.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()

    def run(model, px):
        with torch.inference_mode():
            return features(model.get_image_features(pixel_values=px))

    # --- 1. The profile of the default.
    for _ in range(2):
        run(sdpa, pixels)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            run(sdpa, pixels)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gemm_ops = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::baddbmm", "mkldnn", "aten::convolution", "aten::mkldnn_convolution")
    in_gemm = sum(e.self_cpu_time_total for e in events if e.key.startswith(gemm_ops))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    print(f"self CPU time in products (incl. SDPA kernel, patch conv): {100 * in_gemm / total:.1f} %; outside: {100 * (total - in_gemm) / total:.1f} %")

    # --- 2. Settings, interleaved.
    reference = run(sdpa, pixels).float()
    settings = {
        "default": lambda: run(sdpa, pixels),
        "eager-attn": lambda: run(eager, pixels),
        "channels-last": lambda: run(sdpa, pixels.contiguous(memory_format=torch.channels_last)),
    }

    def mkldnn_off():
        torch.backends.mkldnn.enabled = False
        try:
            return run(sdpa, pixels)
        finally:
            torch.backends.mkldnn.enabled = True

    settings["mkldnn-off"] = mkldnn_off

    class Tower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, px):
            return features(self.m.get_image_features(pixel_values=px))

    try:
        with torch.inference_mode():
            frozen = torch.jit.freeze(torch.jit.trace(Tower(eager).eval(), pixels, check_trace=False))
            for _ in range(3):
                frozen(pixels)
        settings["jit-freeze"] = lambda: frozen(pixels)
    except Exception as e:  # noqa: BLE001 - a setting that does not work here is reported
        print(f"jit-freeze: {type(e).__name__}: {str(e)[:200]}")
    if not args.no_compile:
        try:
            compiled = torch.compile(Tower(sdpa))
            with torch.inference_mode():
                t = time.perf_counter()
                compiled(pixels)
                print(f"compile: first call {time.perf_counter() - t:.1f} s")
            settings["compile"] = lambda: run_compiled(compiled, pixels)
        except Exception as e:  # noqa: BLE001
            print(f"compile: {type(e).__name__}: {str(e)[:300]}")

    def run_compiled(f, px):
        with torch.inference_mode():
            return f(px)

    times = {k: [] for k in settings}
    agree = {}
    for k, f in settings.items():
        out = f().float()
        agree[k] = torch.nn.functional.cosine_similarity(out, reference, dim=-1).min().item()
    for _ in range(args.rounds):
        for k, f in settings.items():
            t = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t) / args.batch)
    base = statistics.median(times["default"])
    print(f"\nViT f32, batch {args.batch}, {args.threads} threads, torch {torch.__version__}, median of {args.rounds} interleaved rounds")
    print(f"{'setting':14} {'ms/image':>9} {'vs default':>11} {'min cosine':>11}")
    for k in settings:
        m = statistics.median(times[k])
        print(f"{k:14} {1e3 * m:9.1f} {base / m:10.2f}× {agree[k]:11.6f}")


if __name__ == "__main__":
    sys.exit(main())
