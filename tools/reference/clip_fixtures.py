#!/usr/bin/env python3
"""CLIP parity fixtures: tiny random-weight `CLIPModel` checkpoints in the Hugging Face layout,
with the REAL CLIP BPE tokenizer (from ../shared/vocab) and transformers' reference outputs.

    python3 tools/reference/make_fixtures.py clip

writes fixtures/clip/<name>/ for every entry of TINY:
    config.json, model.safetensors (bf16), tokenizer.json, vocab.json, merges.txt,
    tokenizer_config.json, special_tokens_map.json, preprocessor_config.json,
    images/*.png            RGB images whose size needs no resampling,
    reference.json          the texts and images, in the order of the tensors below,
    reference.safetensors   f32 reference outputs of transformers (model loaded in float32):
        text.{i}.input_ids  (1, L) int64    tokenizer(text, truncation=True)
        text.{i}.embeds     (P,)   float32  get_text_features / norm
        image.{name}.pixel_values (3, H, W) CLIPImageProcessorPil output
        image.{name}.embeds (P,)            get_image_features / norm
        text_batch.input_ids / text_batch.attention_mask / text_batch.embeds:
                            all texts together, padding=True (checks batch padding)

Real images (fixtures/images/real, RGBA) are composited over white exactly as
crates/capmatch-core/src/image_io.rs `to_rgb_over_white` does before preprocessing.

`make_full_size(out_dir, arch)` writes a random checkpoint with the real shapes and configs of
openai/clip-vit-base-patch32 or openai/clip-vit-large-patch14 (for benchmarks; not committed).
"""
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import BlipImageProcessorPil, CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "clip"
REAL_IMAGES = ROOT / "fixtures" / "images" / "real"
# `../shared/vocab` beside the project's checkout.
BPE_GZ = ROOT.parent / "shared" / "vocab" / "clip-bpe_simple_vocab_16e6.txt.gz"

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

TEXTS = [
    "a photo of a cat",
    "A cartoon drawing of a LEMON!",
    "Café crème, naïve façade — “quotes”, emoji 🍋🍇 and 日本語 text... isn't it?",
    "  multiple   spaces\tand\nnewlines  ",
    "",
    # Longer than any context: truncated to max_position_embeddings (specials included).
    " ".join(f"word{i} and fruit number {i}" for i in range(40)),
]

# Two tiny configurations that differ in everything that matters.
TINY = {
    # quick_gelu (the default, so config.json omits it), patch 32, legacy eos_token_id == 2.
    "tiny-quickgelu-p32": dict(
        seed=1234,
        minimal_config=True,  # config.json without the fields equal to transformers' defaults
        text=dict(hidden_size=16, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=96, patch_size=32),
        projection_dim=24,
        processor=dict(size={"shortest_edge": 96}, crop_size={"height": 96, "width": 96}),
    ),
    # gelu (erf), patch 16, another image size, more layers, other heads, layer_norm_eps 1e-6,
    # a short text context (40) so that truncation differs from 77, eos_token_id 49407.
    "tiny-gelu-p16": dict(
        seed=5678,
        text=dict(hidden_size=20, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=40, hidden_act="gelu", layer_norm_eps=1e-6),
        vision=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=3,
                    image_size=64, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-6),
        projection_dim=16,
        processor=dict(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
    ),
}


# ----------------------------------------------------------------------------- tokenizer


def bytes_to_unicode():
    """OpenAI's simple_tokenizer / GPT-2 byte -> printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab_and_merges():
    """The vocabulary exactly as OpenAI's simple_tokenizer.SimpleTokenizer builds it (49408)."""
    lines = gzip.open(BPE_GZ).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for merge in merges:
        vocab.append("".join(merge))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408, len(vocab)
    assert len(set(vocab)) == len(vocab)
    return {tok: i for i, tok in enumerate(vocab)}, [" ".join(m) for m in merges]


def save_tokenizer(out_dir: Path, model_max_length: int):
    vocab, merges = clip_vocab_and_merges()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=model_max_length)
    tok.save_pretrained(out_dir)
    # Compact JSON (same content as transformers writes, without indentation: ~40% smaller).
    tj = out_dir / "tokenizer.json"
    tj.write_text(json.dumps(json.loads(tj.read_text()), ensure_ascii=False, separators=(",", ":")))
    # transformers 5 no longer writes this file; older readers (and the brief) expect it.
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    if not (out_dir / "special_tokens_map.json").exists():
        (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    # Reload from what is on disk (tokenizer.json) and check the well-known ids.
    tok = CLIPTokenizer.from_pretrained(out_dir)
    ids = tok("a photo of a cat")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407], ids
    return tok


# ----------------------------------------------------------------------------- model


def randomize_(model: CLIPModel, seed: int):
    """Every parameter random (layer norms and biases too, so that each one is exercised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("logit_scale"):
                continue
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim >= 2 and "embedding" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan_in**0.5))
            else:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def minimize_config(path: Path):
    """Drops every field equal to transformers' default, as older hub configs (and
    `to_diff_dict`) do, so that the Rust serde defaults are exercised end to end."""
    from transformers import CLIPTextConfig, CLIPVisionConfig

    cfg = json.loads(path.read_text())
    for key, cls in (("text_config", CLIPTextConfig), ("vision_config", CLIPVisionConfig)):
        defaults = cls().to_dict()
        cfg[key] = {k: v for k, v in cfg[key].items() if k not in defaults or defaults[k] != v or k == "model_type"}
    top = CLIPConfig().to_dict()
    for k in ("initializer_factor", "logit_scale_init_value"):
        if cfg.get(k) == top.get(k):
            cfg.pop(k)
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def composite_over_white(path: Path) -> Image.Image:
    """Same arithmetic as image_io.rs `to_rgb_over_white`: (c*a + 255*(255-a) + 127) // 255."""
    im = Image.open(path)
    if im.mode not in ("RGBA", "LA", "PA") and not (im.mode == "P" and "transparency" in im.info):
        return im.convert("RGB")
    rgba = np.asarray(im.convert("RGBA")).astype(np.uint32)
    a = rgba[..., 3:4]
    rgb = (rgba[..., :3] * a + 255 * (255 - a) + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def exact_images(seed: int, crop: int, shortest: int):
    """RGB images that need no resampling: crop x crop, and shortest x (2 * shortest - 8)."""
    rng = np.random.default_rng(seed)
    out = {}
    # Smooth-ish content plus noise so that the vision tower sees structure.
    yy, xx = np.mgrid[0:crop, 0:crop]
    base = np.stack([xx * 255 // crop, yy * 255 // crop, (xx + yy) * 127 // crop], -1)
    noise = rng.integers(0, 64, size=base.shape)
    out["exact_square"] = np.clip(base + noise, 0, 255).astype(np.uint8)
    out["exact_noise"] = rng.integers(0, 256, size=(crop, crop, 3)).astype(np.uint8)
    assert shortest == crop
    # Landscape, short side == shortest_edge: no resampling, then a center crop of the width.
    out["exact_wide"] = rng.integers(0, 256, size=(shortest, 2 * shortest - 8, 3)).astype(np.uint8)
    return {k: Image.fromarray(v, "RGB") for k, v in out.items()}


def build_tiny(name: str, spec: dict):
    out = OUT / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(spec["seed"])
    np.random.seed(spec["seed"])

    config = CLIPConfig(text_config=dict(spec["text"]), vision_config=dict(spec["vision"]),
                        projection_dim=spec["projection_dim"])
    model = CLIPModel(config).eval()
    randomize_(model, spec["seed"])
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        (out / extra).unlink(missing_ok=True)

    if spec.get("minimal_config"):
        minimize_config(out / "config.json")

    tok = save_tokenizer(out, spec["text"]["max_position_embeddings"])
    proc = CLIPImageProcessorPil(image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, **spec["processor"])
    proc.save_pretrained(out)

    # Reference: everything reloaded from disk, model in float32.
    model = CLIPModel.from_pretrained(out, dtype=torch.float32).eval()
    tok = CLIPTokenizer.from_pretrained(out)
    proc = CLIPImageProcessorPil.from_pretrained(out)

    tensors = {}
    meta = {"model": name, "texts": TEXTS, "images": []}
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            enc = tok(text, truncation=True, return_tensors="pt")
            emb = model.get_text_features(**enc)
            emb = emb.pooler_output if hasattr(emb, "pooler_output") else emb
            emb = emb / emb.norm(dim=-1, keepdim=True)
            tensors[f"text.{i}.input_ids"] = enc["input_ids"].to(torch.int64)
            tensors[f"text.{i}.embeds"] = emb[0].float()
        enc = tok(TEXTS, truncation=True, padding=True, return_tensors="pt")
        emb = model.get_text_features(**enc)
        emb = emb.pooler_output if hasattr(emb, "pooler_output") else emb
        tensors["text_batch.input_ids"] = enc["input_ids"].to(torch.int64)
        tensors["text_batch.attention_mask"] = enc["attention_mask"].to(torch.int64)
        tensors["text_batch.embeds"] = (emb / emb.norm(dim=-1, keepdim=True)).float()

        crop = spec["processor"]["crop_size"]["height"]
        images = {}
        (out / "images").mkdir()
        for key, im in exact_images(spec["seed"], crop, spec["processor"]["size"]["shortest_edge"]).items():
            rel = f"images/{key}.png"
            im.save(out / rel)
            images[key] = (rel, "exact", Image.open(out / rel).convert("RGB"))
        for path in sorted(REAL_IMAGES.glob("*.png")):
            rel = str(path.relative_to(ROOT))
            images[path.stem] = (rel, "resampled", composite_over_white(path))
        for key, (rel, kind, im) in images.items():
            px = proc(images=im, return_tensors="pt")["pixel_values"]
            emb = model.get_image_features(pixel_values=px)
            emb = emb.pooler_output if hasattr(emb, "pooler_output") else emb
            emb = emb / emb.norm(dim=-1, keepdim=True)
            tensors[f"image.{key}.pixel_values"] = px[0].float().contiguous()
            tensors[f"image.{key}.embeds"] = emb[0].float()
            # The 8-bit image after Pillow's resize (before crop): checks resampling exactly.
            if kind == "resampled":
                resized = proc.resize(np.moveaxis(np.asarray(im), -1, 0), size=proc_size(proc), resample=proc.resample)
                tensors[f"image.{key}.resized_u8"] = torch.from_numpy(np.ascontiguousarray(resized)).to(torch.uint8)
            meta["images"].append({"name": key, "path": rel, "kind": kind,
                                   "repo_relative": kind == "resampled"})

        # The BlipImageProcessor form of the same preprocessing code: {height, width} (not
        # square), no crop, on the real images (shared with the BLIP engineer's processor).
        blip = BlipImageProcessorPil(size={"height": 40, "width": 56})
        blip_dict = blip.to_dict()
        meta["blip_processor"] = json.loads(blip.to_json_string())
        for key, (rel, kind, im) in images.items():
            px = blip(images=im, return_tensors="pt")["pixel_values"]
            tensors[f"blip_image.{key}.pixel_values"] = px[0].float().contiguous()
        assert blip_dict["image_processor_type"] == "BlipImageProcessor"

    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out.relative_to(ROOT)}: {size / 1e6:.2f} MB")


def proc_size(proc):
    from transformers.image_utils import SizeDict

    return proc.size if isinstance(proc.size, SizeDict) else SizeDict(**proc.size)


# ----------------------------------------------------------------------------- full size

# The real config values of the hub checkpoints (config.json written in full).
FULL_SIZE = {
    "clip-vit-base-patch32": dict(
        projection_dim=512,
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                  max_position_embeddings=77, projection_dim=512),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=224, patch_size=32, projection_dim=512),
    ),
    "clip-vit-large-patch14": dict(
        projection_dim=768,
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  max_position_embeddings=77, projection_dim=768),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=224, patch_size=14, projection_dim=768),
    ),
}


def make_full_size(out_dir, arch, dtype=torch.float32, seed=0):
    """Random-weight checkpoint with the real shapes, config, tokenizer and preprocessor."""
    spec = FULL_SIZE[arch]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    common = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0, initializer_range=0.02,
                  initializer_factor=1.0, dropout=0.0)
    text = dict(common, vocab_size=49408, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                model_type="clip_text_model", **spec["text"])
    vision = dict(common, num_channels=3, model_type="clip_vision_model", **spec["vision"])
    config = CLIPConfig(text_config=dict(text), vision_config=dict(vision), projection_dim=spec["projection_dim"])
    model = CLIPModel(config).eval().to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    full = {
        "architectures": ["CLIPModel"],
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": spec["projection_dim"],
        "text_config": text,
        "vision_config": vision,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    (out / "config.json").write_text(json.dumps(full, indent=2) + "\n")
    save_tokenizer(out, 77)
    # The hub's (legacy) preprocessor_config.json of both checkpoints, verbatim in meaning.
    pre = {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD, "resample": 3, "size": 224,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    write_full_size_reference(out)
    return out


def write_full_size_reference(out: Path):
    """capmatch_reference.json: transformers' f32 embeddings of two texts and two real images,
    so that a full-size run can be checked (crates/capmatch-core/tests/clip_parity.rs,
    `full_size_checkpoint`, ignored by default)."""
    model = CLIPModel.from_pretrained(out, dtype=torch.float32).eval()
    tok = CLIPTokenizer.from_pretrained(out)
    proc = CLIPImageProcessorPil.from_pretrained(out)
    texts = ["a photo of a lemon", "a cartoon of grapes on a white background"]
    images = ["fixtures/images/real/cartoon_lemon.png", "fixtures/images/real/photo_grapes.png"]
    with torch.no_grad():
        t = model.get_text_features(**tok(texts, padding=True, truncation=True, return_tensors="pt"))
        t = getattr(t, "pooler_output", t)
        px = proc(images=[composite_over_white(ROOT / p) for p in images], return_tensors="pt")["pixel_values"]
        i = model.get_image_features(pixel_values=px)
        i = getattr(i, "pooler_output", i)
    ref = {
        "texts": texts,
        "images": images,
        "text_embeds": (t / t.norm(dim=-1, keepdim=True)).tolist(),
        "image_embeds": (i / i.norm(dim=-1, keepdim=True)).tolist(),
    }
    (out / "capmatch_reference.json").write_text(json.dumps(ref) + "\n")


ARCHS = {arch: (lambda out_dir, arch=arch: make_full_size(out_dir, arch)) for arch in FULL_SIZE}  # arch -> fn(out_dir)


def build_resample_cases(n=40, seed=99):
    """fixtures/clip/resample.safetensors: Pillow's resize of random-noise images between random
    sizes (up- and downscales, both pass orders), every convolution filter; checks
    preprocess.rs `resize_rgb` bit for bit."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(n):
        iw, ih, ow, oh = (int(v) for v in rng.integers(3, 48, 4))
        resample = 3 if i < n // 2 else int(rng.choice([1, 2, 3, 4, 5]))
        src = rng.integers(0, 256, size=(ih, iw, 3)).astype(np.uint8)
        out = np.asarray(Image.fromarray(src, "RGB").resize((ow, oh), resample=resample))
        tensors[f"case{i}.src"] = torch.from_numpy(src.copy())
        tensors[f"case{i}.out"] = torch.from_numpy(out.copy())
        tensors[f"case{i}.resample"] = torch.tensor([resample], dtype=torch.int64)
    save_file(tensors, OUT / "resample.safetensors")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    build_resample_cases()
    for name, spec in TINY.items():
        build_tiny(name, spec)


if __name__ == "__main__":
    main()
