#!/usr/bin/env python3
"""BLIP captioning parity fixtures (BlipForConditionalGeneration), written under fixtures/blip/<name>/.

Each fixture is a tiny random-weight checkpoint in the Hugging Face layout (config.json,
model.safetensors in bf16, tokenizer built from the real bert-base-uncased vocabulary as
BlipProcessor expects it, preprocessor_config.json, generation_config.json) plus:

- images/*.png: RGB images of exactly image_size (no resampling needed);
- reference.safetensors: `pixel_values/<image>` and `vision/<image>` (vision last_hidden_state,
  1 x tokens x hidden) in float32, for the no-resample images and the real images of
  fixtures/images/real (alpha composited over white exactly as capmatch-core's
  `image_io::to_rgb_over_white`);
- reference.json: the generation cases: options, images (in batch order), and for each
  image the token ids transformers returns (prompt included, unpadded: what `generate`
  returns for that image alone) + `decoded` (skip_special_tokens) and `caption` (prompt
  stripped).

The reference model is the saved checkpoint loaded back in float32 (so the bf16 weights
seen by capmatch's f32 loader are identical). Run via make_fixtures.py (`blip`), or
`python3 tools/reference/blip_fixtures.py`.
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "blip"
REAL = ROOT / "fixtures" / "images" / "real"
# `../shared/vocab` beside the project's checkout.
VOCAB = ROOT.parent / "shared" / "vocab" / "bert-base-uncased-vocab.txt"

PROMPT = "a picture of"
SEP = 102


def make_tokenizer():
    """bert-base-uncased + [DEC] (bos, 30522) + [ENC] (30523), as Salesforce/blip-image-captioning-* ship it."""
    from transformers import BertTokenizer
    from transformers.models.bert.tokenization_bert import load_vocab

    tok = BertTokenizer(vocab=dict(load_vocab(str(VOCAB))), do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    assert tok.convert_tokens_to_ids("[DEC]") == 30522 and tok.convert_tokens_to_ids("[ENC]") == 30523, tok
    assert len(tok) == 30524
    return tok


def make_processor(image_size):
    from transformers import BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    ip = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=ip, tokenizer=make_tokenizer())


def save_processor(processor, d):
    """processor.save_pretrained + the hub layout of Salesforce/blip-image-captioning-*:
    preprocessor_config.json, special_tokens_map.json and vocab.txt next to tokenizer.json
    (transformers 5 no longer writes them)."""
    d = Path(d)
    processor.save_pretrained(d)
    processor.image_processor.to_json_file(d / "preprocessor_config.json")
    special = {"bos_token": "[DEC]", "cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]",
               "sep_token": "[SEP]", "unk_token": "[UNK]", "additional_special_tokens": ["[ENC]"]}
    (d / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    if not (d / "vocab.txt").exists():
        shutil.copy(VOCAB, d / "vocab.txt")


def rgb_over_white(im: Image.Image) -> Image.Image:
    """capmatch-core image_io::to_rgb_over_white: (c*a + 255*(255-a) + 127) // 255 per channel."""
    if "A" not in im.getbands() and im.mode != "P":
        return im.convert("RGB")
    a = np.asarray(im.convert("RGBA"), dtype=np.uint32)
    alpha = a[..., 3:4]
    out = (a[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return Image.fromarray(out.astype(np.uint8), "RGB")


def randomize(model, seed, std=0.15):
    """Replace the (nearly degenerate: vision initializer_range is 1e-10) init by lively random weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name or "layer_norm" in name and name.endswith("weight") or "post_layernorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def build_checkpoint(dir_, vision, text, seed, sep_bias=0.0, dtype=torch.bfloat16):
    from transformers import BlipConfig, BlipForConditionalGeneration

    torch.manual_seed(0 if seed is None else seed)
    cfg = BlipConfig(text_config=text, vision_config=vision)
    model = BlipForConditionalGeneration(cfg).eval()
    if dtype is not None and seed is not None:
        randomize(model, seed)
        with torch.no_grad():
            model.text_decoder.cls.predictions.bias[SEP] += sep_bias
    if dtype is not None:
        model = model.to(dtype)
    dir_.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dir_)
    return cfg


def trim(row, prompt_len):
    """The sequence transformers returns for one item alone: cut after the first generated EOS."""
    row = [int(t) for t in row]
    for i in range(prompt_len, len(row)):
        if row[i] == SEP:
            return row[: i + 1]
    return row


def prompt_ids(processor, prompt, n):
    if prompt:
        ids = processor.tokenizer([prompt] * n, return_tensors="pt").input_ids
    else:
        ids = None
    return ids


def run_case(model, processor, pixel_values, case):
    kw = {k: case[k] for k in ("max_new_tokens", "min_new_tokens", "num_beams") if case.get(k) is not None}
    n = pixel_values.shape[0]
    ids = prompt_ids(processor, case["prompt"], n)
    with torch.no_grad():
        out = model.generate(pixel_values=pixel_values, input_ids=None if ids is None else ids.clone(), **kw)
    prompt_len = 1 if ids is None else ids.shape[1] - 1  # generate swaps [CLS] for [DEC] and drops the final [SEP]
    rows = [trim(r, prompt_len) for r in out]
    # Each batched row must equal the sequence generated for that image alone.
    for i in range(n):
        single_ids = None if ids is None else ids[i : i + 1].clone()
        with torch.no_grad():
            single = model.generate(pixel_values=pixel_values[i : i + 1], input_ids=single_ids, **kw)
        assert [int(t) for t in single[0]] == rows[i], (case, i, single[0].tolist(), rows[i])
    decoded = processor.batch_decode(rows, skip_special_tokens=True)
    prompt_text = processor.decode(processor.tokenizer(case["prompt"], add_special_tokens=False).input_ids) if case["prompt"] else ""
    captions = []
    for d in decoded:
        assert d.startswith(prompt_text), (d, prompt_text)
        captions.append(d[len(prompt_text):].strip())
    return rows, decoded, captions


CASES = [
    {"name": "greedy_prompt_default", "prompt": PROMPT},
    {"name": "greedy_uncond_max8", "prompt": "", "max_new_tokens": 8},
    {"name": "greedy_prompt_min5_max12", "prompt": PROMPT, "min_new_tokens": 5, "max_new_tokens": 12},
    {"name": "beam3_prompt_max10", "prompt": PROMPT, "num_beams": 3, "max_new_tokens": 10},
    {"name": "beam3_uncond_default", "prompt": "", "num_beams": 3},
    {"name": "beam3_prompt_min4_max9", "prompt": PROMPT, "num_beams": 3, "min_new_tokens": 4, "max_new_tokens": 9},
    {"name": "beam2_other_prompt_max6", "prompt": "A Photo of the", "num_beams": 2, "max_new_tokens": 6},
    {"name": "beam4_uncond_min2_max7", "prompt": "", "num_beams": 4, "min_new_tokens": 2, "max_new_tokens": 7},
]

FIXTURES = {
    # 4 heads, 2+2 layers, 32x32 images (patch 8): plain random weights.
    "tiny-a": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
        text=dict(hidden_size=16, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=40),
        seed=1234,
        sep_bias=0.0,
    ),
    # 3/2 heads, 3+3 layers, 48x48 images (patch 16); LM head biased toward [SEP] so EOS is generated.
    "tiny-b-eos": dict(
        vision=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=3, image_size=48, patch_size=16),
        text=dict(hidden_size=12, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=32),
        seed=777,
        sep_bias=2.0,  # greedy with "a picture of" stops after 1 or 2 new tokens, depending on the image
    ),
}


def noise_images(n, size, seed):
    rng = np.random.default_rng(seed)
    ims = []
    for i in range(n):
        base = rng.integers(0, 256, size=(1, 1, 3))
        grad = np.linspace(0, 255, size)[None, :, None] * (i + 1) / n
        noise = rng.integers(-60, 60, size=(size, size, 3))
        ims.append(Image.fromarray(np.clip(base + grad + noise, 0, 255).astype(np.uint8), "RGB"))
    return ims


def make_fixture(name, spec):
    from transformers import BlipForConditionalGeneration

    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    size = spec["vision"]["image_size"]
    processor = make_processor(size)
    own = noise_images(3, size, spec["seed"])
    real = {p.stem: rgb_over_white(Image.open(p)) for p in sorted(REAL.glob("*.png"))}

    sep_bias = spec["sep_bias"]
    if sep_bias is None:
        # Pick the smallest [SEP] bias with which greedy captioning stops early on some, not all, images.
        for sep_bias in np.arange(1.0, 12.0, 0.25):
            build_checkpoint(d, spec["vision"], spec["text"], spec["seed"], float(sep_bias))
            model = BlipForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
            pv = processor(images=own + list(real.values()), return_tensors="pt").pixel_values
            rows, _, _ = run_case(model, processor, pv, CASES[0])
            lens = [len(r) for r in rows]
            stopped = sum(n < max(lens) for n in lens)
            if len(rows) // 2 <= stopped <= len(rows) - 1 and len(set(lens)) >= 3:
                break
        else:
            raise SystemExit(f"{name}: no [SEP] bias makes greedy stop on some images")
        print(f"{name}: sep bias {sep_bias}, greedy lengths {lens}")
        sep_bias = float(sep_bias)
    build_checkpoint(d, spec["vision"], spec["text"], spec["seed"], sep_bias)
    save_processor(processor, d)
    model = BlipForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()

    (d / "images").mkdir()
    names = []
    for i, im in enumerate(own):
        im.save(d / "images" / f"noise{i}.png")
        names.append(f"noise{i}")
    # The committed PNGs are what the Rust side decodes: re-read them.
    own = [Image.open(d / "images" / f"{n}.png").convert("RGB") for n in names]
    images = dict(zip(names, own))
    images.update(real)

    tensors = {}
    all_pv = processor(images=list(images.values()), return_tensors="pt").pixel_values
    with torch.no_grad():
        vis = model.vision_model(pixel_values=all_pv).last_hidden_state
    for i, n in enumerate(images):
        tensors[f"pixel_values/{n}"] = all_pv[i : i + 1].contiguous()
        tensors[f"vision/{n}"] = vis[i : i + 1].contiguous()
    save_file(tensors, str(d / "reference.safetensors"))

    cases = []
    for case in CASES:
        # The no-resample images in one batch, the real images in another.
        for group, group_names in (("own", names), ("real", list(real))):
            pv = torch.stack([all_pv[list(images).index(n)] for n in group_names])
            rows, decoded, captions = run_case(model, processor, pv, case)
            cases.append(
                {
                    **case,
                    "name": f"{case['name']}/{group}",
                    "images": group_names,
                    "token_ids": rows,
                    "decoded": decoded,
                    "captions": captions,
                }
            )
    eos_count = sum(r[-1] == SEP for c in cases for r in c["token_ids"])
    print(f"{name}: {len(cases)} cases, {eos_count} sequences end with [SEP]")
    ref = {
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__,
        "sep_bias": sep_bias,
        "images": {n: ("images/" + n + ".png" if n in names else "../../images/real/" + n + ".png") for n in images},
        "no_resample_images": names,
        "cases": cases,
    }
    (d / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")


BLIP_SHAPES = {
    # Salesforce/blip-image-captioning-base and -large (config.json values)
    "blip-image-captioning-base": dict(
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=384, patch_size=16),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512),
    ),
    "blip-image-captioning-large": dict(
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=384, patch_size=16),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512),
    ),
}


def make_full_size(out_dir, arch):
    """A random-weight checkpoint with the real shapes of Salesforce/<arch> (float32, as on the hub)."""
    arch = arch.split("/")[-1]
    if arch not in BLIP_SHAPES:
        raise SystemExit(f"unknown BLIP arch {arch!r}: one of {sorted(BLIP_SHAPES)}")
    spec = BLIP_SHAPES[arch]
    out_dir = Path(out_dir)
    build_checkpoint(out_dir, spec["vision"], spec["text"], seed=None, dtype=None)
    save_processor(make_processor(spec["vision"]["image_size"]), out_dir)
    return out_dir


FULL_SIZE_IMAGES = ["fixtures/images/real/photo_lemon.png", "fixtures/images/real/cartoon_lemon.png"]
FULL_SIZE_CASES = [
    {"name": "greedy_prompt_20", "prompt": PROMPT, "max_new_tokens": 20},
    {"name": "beam3_prompt_20", "prompt": PROMPT, "num_beams": 3, "max_new_tokens": 20},
]


def write_full_size_reference(out_dir):
    """capmatch_reference.json + capmatch_reference.safetensors beside a full-size checkpoint:
    transformers' f32 vision output (last_hidden_state) and generated token ids for two real
    images, greedy and beam 3, for crates/capmatch-core/tests/blip_parity.rs
    (`full_size_checkpoint_captions_an_image`, ignored by default)."""
    from transformers import BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    out_dir = Path(out_dir)
    model = BlipForConditionalGeneration.from_pretrained(out_dir, dtype=torch.float32).eval()
    processor = BlipProcessor(image_processor=BlipImageProcessorPil.from_pretrained(out_dir), tokenizer=make_tokenizer())
    images = [rgb_over_white(Image.open(ROOT / p)) for p in FULL_SIZE_IMAGES]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixel_values).last_hidden_state
    cases = []
    for case in FULL_SIZE_CASES:
        rows, _, captions = run_case(model, processor, pixel_values, case)
        cases.append(dict(case, token_ids=rows, captions=captions))
    save_file({f"vision/{i}": vision[i].contiguous() for i in range(len(images))}, str(out_dir / "capmatch_reference.safetensors"))
    ref = {"images": FULL_SIZE_IMAGES, "cases": cases}
    (out_dir / "capmatch_reference.json").write_text(json.dumps(ref, indent=1) + "\n")


def main():
    only = sys.argv[1:] if __name__ == "__main__" else []
    for name, spec in FIXTURES.items():
        if not only or name in only:
            make_fixture(name, spec)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1].startswith("blip-"):
        make_full_size(sys.argv[2], sys.argv[1])
    else:
        main()
