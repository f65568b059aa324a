#!/usr/bin/env python3
"""Write a random-weight checkpoint with a real architecture's shapes, configs, tokenizer and
preprocessor config, so that benchmarks and smoke tests need no download.

    python3 tools/reference/make_random_checkpoint.py ARCH OUT_DIR
    python3 tools/reference/make_random_checkpoint.py --list

ARCHS maps each architecture name to `fn(out_dir)`; families register theirs below
(CLIP: tools/reference/clip_fixtures.py `make_full_size`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import blip2_fixtures  # noqa: E402
import blip_fixtures  # noqa: E402
import clip_fixtures  # noqa: E402

ARCHS = {
    "clip-vit-base-patch32": lambda out: clip_fixtures.make_full_size(out, "clip-vit-base-patch32"),
    "clip-vit-large-patch14": lambda out: clip_fixtures.make_full_size(out, "clip-vit-large-patch14"),
    "blip2-opt-2.7b": lambda out: blip2_fixtures.make_full_size(out, "blip2-opt-2.7b"),
    "blip-image-captioning-base": lambda out: blip_fixtures.make_full_size(out, "blip-image-captioning-base"),
    "blip-image-captioning-large": lambda out: blip_fixtures.make_full_size(out, "blip-image-captioning-large"),
    # BLIP / BLIP-2 architectures: add "name": lambda out: <family>_fixtures.make_full_size(out, "name").
}


def main(argv):
    if argv[:1] == ["--list"] or len(argv) != 2:
        print("usage: make_random_checkpoint.py ARCH OUT_DIR\narchitectures: " + ", ".join(sorted(ARCHS)))
        return 0 if argv[:1] == ["--list"] else 2
    arch, out = argv
    if arch not in ARCHS:
        print(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}", file=sys.stderr)
        return 2
    ARCHS[arch](Path(out))
    print(f"wrote {arch} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
