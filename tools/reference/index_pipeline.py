#!/usr/bin/env python3
"""What `capmatch index` does, written the way a user without capmatch would write it with
transformers: the reference of issue 15's end-to-end row (`tools/bench/index_e2e.sh`).

For every batch of `--batch` image files (sorted paths, as the indexer takes them):

* decode with Pillow (`Image.open(f).convert("RGB")`);
* caption with BLIP: `BlipProcessor(images, text=prompt)`, `generate` with exactly
  `--new-tokens` new tokens (min = max), `batch_decode(skip_special_tokens=True)`, the prompt
  stripped as capmatch strips it;
* embed the captions with CLIP's text tower (`get_text_features`) and the images with its
  vision tower (`get_image_features`), both L2-normalised.

The vectors and captions are kept in memory and written to `--out` (JSON) at the end; no
index, no database: what it leaves out (hashing files, SQLite, the vector store) is work our
side does and this one does not.

    python3 tools/reference/index_pipeline.py --folder DIR --clip DIR --captioner DIR \
        --dtype bf16 --batch 8 --new-tokens 12 --threads 2 [--out FILE.json]

Prints one JSON line: images, load seconds, pipeline seconds (first decode to last vector),
wall seconds (start of the process's imports to the end), images/s of the pipeline and end
to end.
"""
import argparse
import json
import os
import sys
import time

STARTED = time.perf_counter()

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def features(out):
    """`get_*_features` returns a tensor (transformers 4) or an output with `pooler_output` (5)."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", required=True)
    p.add_argument("--clip", required=True)
    p.add_argument("--captioner", required=True)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="bf16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=12)
    p.add_argument("--prompt", default="a picture of")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args()

    if args.threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipProcessor, CLIPModel, CLIPProcessor

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    files = []
    for root, _, names in os.walk(args.folder):
        files.extend(os.path.join(root, n) for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
    files.sort()
    if not files:
        sys.exit(f"no image files in {args.folder}")

    load_started = time.perf_counter()
    blip_processor = BlipProcessor.from_pretrained(args.captioner)
    blip = BlipForConditionalGeneration.from_pretrained(args.captioner, torch_dtype=dtype).eval()
    clip_processor = CLIPProcessor.from_pretrained(args.clip)
    clip = CLIPModel.from_pretrained(args.clip, torch_dtype=dtype).eval()
    load_secs = time.perf_counter() - load_started

    rows = []
    pipeline_started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(files), args.batch):
            paths = files[start : start + args.batch]
            images = []
            for path in paths:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
            inputs = blip_processor(images=images, text=[args.prompt] * len(images), return_tensors="pt")
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            ids = blip.generate(**inputs, min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens)
            captions = []
            for text in blip_processor.batch_decode(ids, skip_special_tokens=True):
                text = text.strip()
                captions.append(text[len(args.prompt) :].strip() if text.startswith(args.prompt) else text)
            text_inputs = clip_processor(text=captions, padding=True, return_tensors="pt")
            text_vectors = features(clip.get_text_features(**text_inputs)).float()
            image_inputs = clip_processor(images=images, return_tensors="pt")
            image_vectors = features(clip.get_image_features(pixel_values=image_inputs["pixel_values"].to(dtype))).float()
            text_vectors = torch.nn.functional.normalize(text_vectors, dim=-1)
            image_vectors = torch.nn.functional.normalize(image_vectors, dim=-1)
            for i, path in enumerate(paths):
                rows.append({"path": path, "caption": captions[i], "caption_vector": text_vectors[i].tolist(), "image_vector": image_vectors[i].tolist()})
    pipeline_secs = time.perf_counter() - pipeline_started
    wall_secs = time.perf_counter() - STARTED

    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f)
    print(
        json.dumps(
            {
                "images": len(files),
                "dtype": args.dtype,
                "batch": args.batch,
                "new_tokens": args.new_tokens,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "load_secs": load_secs,
                "pipeline_secs": pipeline_secs,
                "wall_secs": wall_secs,
                "pipeline_images_per_sec": len(files) / pipeline_secs,
                "wall_images_per_sec": len(files) / wall_secs,
            }
        )
    )


if __name__ == "__main__":
    main()
