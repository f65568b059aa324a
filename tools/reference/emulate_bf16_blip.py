#!/usr/bin/env python3
"""How far greedy BLIP captions may move when the products run in bf16: what the bound of
crates/capmatch-core/tests/blip_parity.rs `bf16_runs_and_stays_close` rests on.

    python3 tools/reference/emulate_bf16_blip.py

Runs transformers on every fixture under fixtures/blip/ with each linear layer's inputs
rounded to bf16 (nearest even) and accumulated in f32, everything else in f32: capmatch's
bf16 arithmetic on CPUs with AVX512_BF16 (the fixtures' weights are stored in bf16 already),
emulated on any CPU. Prints how many greedy captions equal the f32 reference and how many
generated tokens agree up to each caption's first difference. `--f32` runs without the
rounding (must reproduce the reference exactly: a check of this script).
"""
import itertools
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BlipForConditionalGeneration

ROOT = Path(__file__).resolve().parents[2]
SEP = 102


def main(argv):
    linear = torch.nn.functional.linear

    def bf16_linear(x, w, b=None):
        return linear(x.bfloat16().float(), w.bfloat16().float(), b)

    emulated = linear if "--f32" in argv else bf16_linear
    same = total = agreeing = generated = 0
    for d in sorted((ROOT / "fixtures/blip").iterdir()):
        if not (d / "reference.json").is_file():
            continue
        ref = json.loads((d / "reference.json").read_text())
        tensors = load_file(str(d / "reference.safetensors"))
        model = BlipForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(d)
        for case in ref["cases"]:
            if case.get("num_beams"):
                continue
            pixels = torch.cat([tensors[f"pixel_values/{n}"].reshape(1, *tensors[f"pixel_values/{n}"].shape[-3:]) for n in case["images"]])
            kw = {k: case[k] for k in ("max_new_tokens", "min_new_tokens") if case.get(k) is not None}
            ids = tokenizer([case["prompt"]] * len(case["images"]), return_tensors="pt").input_ids if case["prompt"] else None
            torch.nn.functional.linear = emulated
            try:
                with torch.no_grad():
                    out = model.generate(pixel_values=pixels, input_ids=ids, **kw)
            finally:
                torch.nn.functional.linear = linear
            prompt = 1 if ids is None else ids.shape[1] - 1
            for row, want in zip(out.tolist(), case["token_ids"]):
                end = next((i + 1 for i in range(prompt, len(row)) if row[i] == SEP), len(row))
                row = row[:end]
                total += 1
                same += row == want
                agreeing += sum(1 for _ in itertools.takewhile(lambda p: p[0] == p[1], zip(row[prompt:], want[prompt:])))
                generated += len(want) - prompt
    what = "f32 (check)" if "--f32" in argv else "emulated bf16 products"
    print(f"{what}: {same}/{total} greedy captions identical to the f32 reference; "
          f"{agreeing}/{generated} generated tokens agree up to the first difference")


if __name__ == "__main__":
    main(sys.argv[1:])
