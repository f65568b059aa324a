#!/usr/bin/env python3
"""BLIP-2 parity fixtures: tiny random-weight `Blip2ForConditionalGeneration` checkpoints in
the Hugging Face layout (one OPT, one Flan-T5), real-format tokenizers trained here, and the
reference outputs of transformers.

    python3 tools/reference/make_fixtures.py blip2

writes fixtures/blip2/{opt,t5}/ (checkpoint + tokenizer + processor) and, in each,
reference.safetensors (tensors) and reference.json (generation cases).

`make_full_size(out_dir, arch)` writes a random checkpoint with the real blip2-opt-2.7b
shapes (bf16, ~8 GB) for memory/speed checks; it is never written into the repository.
"""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessor,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "blip2"
IMAGES = ["photo_lemon.png", "cartoon_apple.png", "photo_grapes.png"]
PROMPT = "a photo of"
EOS_SOURCE = {"opt": 323, "t5": 171}

CORPUS = [
    "a photo of a lemon on a wooden table",
    "a cartoon drawing of a red apple",
    "a bunch of green grapes in a bowl",
    "a photo of a pineapple on the beach",
    "a painting of a yellow lemon next to a knife",
    "two cats sleeping on a couch",
    "a dog running through the grass",
    "a sketch of a bowl of fruit",
    "an illustration of purple grapes hanging from a vine",
    "a close up photo of a sliced lemon",
    "a clipart image of an apple with a leaf",
    "a man riding a bicycle down the street",
    "a woman holding an umbrella in the rain",
    "a plate of food with rice and vegetables",
    "a red apple and a green apple side by side",
    "a black and white photo of a city at night",
    "a watercolor painting of a pineapple",
    "the fruit is sitting on a white background",
    "question: what fruit is this? answer: a lemon",
    "question: what color is the apple? answer: red",
    "a small bird sitting on a branch",
    "a train traveling down the tracks near a station",
    "a kitchen with a stove and a refrigerator",
    "a bowl of soup with a spoon",
    "a group of people standing around a table",
    "an airplane flying in the blue sky",
    "a boat floating on the water at sunset",
    "a pizza with cheese and tomatoes",
    "a teddy bear sitting on a bed",
    "a clock on the side of a building",
]


# ---------------------------------------------------------------- tokenizers


def train_opt_tokenizer(vocab_size=400):
    """OPT's tokenizer layout (GPT-2 byte-level BPE, `</s>` as BOS prepended by the post-processor)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    bos = tok.token_to_id("</s>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", bos)]),
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    return fast


def train_t5_tokenizer(vocab_size=250):
    """T5's tokenizer layout (SentencePiece Unigram, Metaspace, `</s>` appended)."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence(
        [normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    return fast


# ---------------------------------------------------------------- configs


def tiny_config(arch, tokenizer):
    image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    vocab = len(tokenizer)
    vocab = vocab + (8 - vocab % 8) % 8  # padded, like the hub checkpoints (50272 > 50266)
    vision = dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        image_size=56, patch_size=14, layer_norm_eps=1e-6, qkv_bias=True,
    )
    qformer = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        cross_attention_frequency=2, max_position_embeddings=64, vocab_size=64,
    )
    if arch == "opt":
        nl = tokenizer.convert_tokens_to_ids("\u010a")  # byte-level "\n", OPT-BLIP-2's EOS (50118)
        text = dict(
            model_type="opt", vocab_size=vocab, hidden_size=40, num_hidden_layers=2, ffn_dim=80,
            num_attention_heads=4, max_position_embeddings=96, word_embed_proj_dim=40,
            do_layer_norm_before=True, bos_token_id=2, eos_token_id=nl, pad_token_id=1,
            activation_function="relu",
        )
    else:
        text = dict(
            model_type="t5", vocab_size=vocab, d_model=40, d_kv=10, d_ff=72, num_layers=2,
            num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
            relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
            layer_norm_epsilon=1e-6,
        )
    return Blip2Config(
        vision_config=vision, qformer_config=qformer, text_config=text,
        num_query_tokens=6, image_token_index=image_token_index,
    )


def randomize(model, gen):
    """Every parameter random (the default init is almost zero for the vision tower)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "relative_attention_bias" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif "embed" in name or "shared" in name or "query_tokens" in name or "lm_head" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else p.shape[0]
                if p.dim() == 4:
                    fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
                if name.startswith("language_model.") and p.dim() == 2:
                    p.mul_(3.0)  # layers outweigh the tied embedding: captions that do not just repeat


def save_checkpoint(model, out, shard):
    model = model.to(torch.bfloat16)
    if shard:
        model.save_pretrained(out, max_shard_size="60KB")
    else:
        model.save_pretrained(out)
    assert (out / ("model.safetensors.index.json" if shard else "model.safetensors")).exists()


# ---------------------------------------------------------------- reference


def load_images():
    return [Image.open(ROOT / "fixtures" / "images" / "real" / name) for name in IMAGES]


def eos_bias(model, source_token, factor=1.1):
    """Makes EOS win wherever `source_token` (a token the random model emits mid-caption) would:
    its output row becomes that token's row, slightly longer, so some captions stop early."""
    eos = model.config.text_config.eos_token_id
    head = model.language_model.get_output_embeddings().weight
    with torch.no_grad():
        head[eos] = head[source_token] * factor


def generation_cases(model, processor, arch):
    images = load_images()
    cases = []
    specs = [
        dict(name="greedy", prompt=None, kwargs=dict(max_new_tokens=12)),
        dict(name="greedy_default_config", prompt=None, kwargs=dict()),
        dict(name="beam3", prompt=None, kwargs=dict(max_new_tokens=12, num_beams=3)),
        dict(name="greedy_prompt", prompt=PROMPT, kwargs=dict(max_new_tokens=10)),
        dict(name="beam3_prompt", prompt=PROMPT, kwargs=dict(max_new_tokens=10, num_beams=3)),
        dict(name="beam4_len", prompt=None, kwargs=dict(max_new_tokens=9, num_beams=4, length_penalty=0.5)),
        dict(name="greedy_min", prompt=None, kwargs=dict(max_new_tokens=12, min_new_tokens=8)),
    ]
    for spec in specs:
        for i, image in enumerate(images):
            if spec["prompt"] is None and arch == "opt":
                inputs = processor(images=image, return_tensors="pt")
            elif spec["prompt"] is None:
                # T5's config has no BOS, so BLIP-2's own "no input_ids" path cannot run
                # (start_tokens = [image] * n + [None]); an empty prompt is the way to caption.
                inputs = processor(images=image, text="", return_tensors="pt")
            else:
                inputs = processor(images=image, text=spec["prompt"], return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=False, **spec["kwargs"])
            ids = out[0].tolist()
            case = dict(
                name=spec["name"], image=IMAGES[i], image_index=i, prompt=spec["prompt"],
                kwargs=spec["kwargs"],
                input_ids=inputs["input_ids"][0].tolist() if "input_ids" in inputs else None,
                output_ids=ids,
                text=processor.batch_decode(out, skip_special_tokens=True)[0].strip(),
            )
            cases.append(case)
    return cases


def build(arch, shard):
    out = OUT / arch
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    gen = torch.Generator().manual_seed(1234 if arch == "opt" else 4321)
    torch.manual_seed(0)

    tokenizer = train_opt_tokenizer() if arch == "opt" else train_t5_tokenizer()
    image_processor = BlipImageProcessor(size={"height": 56, "width": 56})
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=6)
    config = tiny_config(arch, processor.tokenizer)
    model = Blip2ForConditionalGeneration(config).eval()
    randomize(model, gen)
    # EOS (OPT: "\n" like blip2-opt; T5: </s>) made likely, so that some captions stop early
    # and others run to max_new_tokens.
    eos_bias(model, EOS_SOURCE[arch])

    if arch == "opt":
        model.generation_config = GenerationConfig(bos_token_id=2, eos_token_id=config.text_config.eos_token_id, pad_token_id=1)
    else:
        model.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    save_checkpoint(model, out, shard)
    processor.save_pretrained(out)
    # Hub BLIP-2 repositories also carry the image processor's own preprocessor_config.json.
    processor.image_processor.save_pretrained(out)

    # The reference runs the checkpoint as loaded back from disk, in float32.
    model = Blip2ForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    processor = Blip2Processor.from_pretrained(out)
    images = load_images()
    inputs = processor(images=images, return_tensors="pt")
    pixel_values = inputs["pixel_values"]
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixel_values).last_hidden_state
        qformer = model.qformer(
            query_embeds=model.query_tokens.expand(pixel_values.shape[0], -1, -1),
            encoder_hidden_states=vision,
            encoder_attention_mask=torch.ones(vision.shape[:-1], dtype=torch.long),
        ).last_hidden_state
        projected = model.language_projection(qformer)

        # Language-model logits for the no-prompt input of image 0, and of image 0 with the prompt.
        tensors = dict(
            pixel_values=pixel_values.contiguous(),
            vision_last_hidden_state=vision.contiguous(),
            qformer_last_hidden_state=qformer.contiguous(),
            language_projection=projected.contiguous(),
        )
        n = config.num_query_tokens
        img = config.image_token_index
        prompt_ids = processor.tokenizer(PROMPT)["input_ids"]
        if arch == "opt":
            ids = torch.tensor([[img] * n + prompt_ids])
            embeds = model.get_input_embeddings()(ids)
            embeds[0, :n] = projected[0]
            logits = model.language_model(inputs_embeds=embeds).logits
            tensors["lm_logits_prompt"] = logits[0].contiguous()
            tensors["lm_input_ids_prompt"] = ids[0].to(torch.int64)
        else:
            ids = torch.tensor([[img] * n + prompt_ids])
            embeds = model.get_input_embeddings()(ids)
            embeds[0, :n] = projected[0]
            dec = torch.tensor([[0] + prompt_ids[:3]])
            logits = model.language_model(inputs_embeds=embeds, decoder_input_ids=dec).logits
            enc = model.language_model.get_encoder()(inputs_embeds=embeds).last_hidden_state
            tensors["lm_logits_prompt"] = logits[0].contiguous()
            tensors["lm_input_ids_prompt"] = ids[0].to(torch.int64)
            tensors["lm_decoder_input_ids"] = dec[0].to(torch.int64)
            tensors["t5_encoder_last_hidden_state"] = enc[0].contiguous()
    save_file(tensors, str(out / "reference.safetensors"))

    cases = generation_cases(model, processor, arch)
    eos = config.text_config.eos_token_id
    stopped = [c for c in cases if c["output_ids"][-1] == eos]
    assert stopped, f"{arch}: no case ends with EOS; adjust the EOS bias"
    assert len(stopped) < len(cases), f"{arch}: every case ends with EOS; adjust the EOS bias"
    (out / "reference.json").write_text(
        json.dumps(
            dict(
                arch=arch,
                images=IMAGES,
                prompt=PROMPT,
                prompt_ids=prompt_ids,
                image_token_index=img,
                num_query_tokens=n,
                eos_token_id=eos,
                cases=cases,
            ),
            indent=1,
        )
        + "\n"
    )
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{out}: {size / 1e6:.2f} MB, {len(stopped)}/{len(cases)} cases stop on EOS")
    for c in cases:
        print(f"  {c['name']:<22} {c['image']:<18} {c['output_ids'][-14:]} {c['text']!r}")


def make_full_size(out_dir, arch="blip2-opt-2.7b"):
    """A random checkpoint with the shapes of Salesforce/blip2-opt-2.7b, bf16, sharded (~7.7 GB)."""
    assert arch == "blip2-opt-2.7b", arch
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The small trained tokenizer stands in for OPT's 50k BPE: the config's image token must
    # be the id it gives "<image>", or a prompted run would find no image positions.
    tokenizer = train_opt_tokenizer()
    config = Blip2Config(
        vision_config=dict(),
        qformer_config=dict(),
        text_config=dict(
            model_type="opt", vocab_size=50272, hidden_size=2560, num_hidden_layers=32, ffn_dim=10240,
            num_attention_heads=32, max_position_embeddings=2048, word_embed_proj_dim=2560,
            do_layer_norm_before=True, bos_token_id=2, eos_token_id=50118, pad_token_id=1,
        ),
        num_query_tokens=32,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = Blip2ForConditionalGeneration(config)
        model = model.to_empty(device="cpu")
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.02, generator=gen)
                elif "norm" in name and name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()
        model.generation_config = GenerationConfig(bos_token_id=2, eos_token_id=50118, pad_token_id=1)
        model.save_pretrained(out, max_shard_size="2GB")
    finally:
        torch.set_default_dtype(torch.float32)
    processor = Blip2Processor(BlipImageProcessor(size={"height": 224, "width": 224}), tokenizer, num_query_tokens=32)
    processor.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    return out


def main():
    build("opt", shard=True)
    build("t5", shard=False)


if __name__ == "__main__":
    main()
