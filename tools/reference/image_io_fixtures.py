#!/usr/bin/env python3
"""Sample files in every decoded format, and Pillow's decode of each, for
crates/capmatch-core/tests/image_io.rs.

Run by hand (needs Pillow + numpy); the tests only read what this writes:

    python3 tools/reference/image_io_fixtures.py

Writes fixtures/images/formats/<name>.<ext> (the encoded sample), <name>.rgb (the reference:
raw 8-bit RGB, row-major) and manifest.json (size, reference file and tolerance per sample).

The reference is capmatch's decoding contract expressed with Pillow:
  1. Image.open (format from content), first frame;
  2. ImageOps.exif_transpose;
  3. images with alpha (RGBA/LA/PA, or a `transparency` entry: palette tRNS, grey/RGB colour
     key, GIF transparent index) -> convert("RGBA") and composite over white with the
     rounded integer blend of image_io::to_rgb_over_white:
         out = (c * a + 255 * (255 - a) + 127) // 255
     everything else -> convert("RGB");
  4. 16-bit greyscale ("I;16"): Pillow's convert() clips values above 255 to white, so the
     reference reduces the exact 16-bit samples Pillow read by rounding, v / 257 (capmatch's
     documented choice). 16-bit RGB PNGs are written with samples k * 257, where Pillow's
     truncation (v >> 8) and the rounding agree exactly.

Every sample must match exactly, JPEG included (capmatch decodes JPEG with libjpeg-turbo set
up as Pillow sets it up); only lossy WebP carries a tolerance (libwebp vs the `image` crate's
decoder). The JPEG samples cover baseline and progressive, 4:4:4 / 4:2:2 / 4:2:0, greyscale,
CMYK and YCCK (Adobe), restart markers, optimised Huffman tables, odd sizes, extreme
qualities, a real photo and EXIF orientations 1-8. Pillow cannot write YCCK, so that sample is
assembled from two Pillow-encoded JPEGs (see `ycck_jpeg`). The `jpeg_photo_*` samples are made
from fixtures/images/real/photo_lemon.png (a Tux Paint stamp, GPL-2.0-or-later; see
fixtures/images/real/LICENSE.md), shrunk to 61x45.
"""
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, features

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "images" / "formats"

W, H = 24, 16  # not square, so a wrong orientation also gets the size wrong

# Tolerances: (max abs difference per channel, mean abs difference).
EXACT = (0, 0.0)
WEBP_LOSSY_TOL = (12, 1.5)


def base_rgb():
    """Four quadrants of very different colours plus a gentle gradient: any flip or rotation
    moves a quadrant onto another colour, far beyond the JPEG tolerance."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), np.uint8)
    top, left = y < H // 2, x < W // 2
    quad = [(230, 40, 40), (40, 200, 60), (40, 60, 220), (240, 220, 50)]
    for i, (t, l) in enumerate([(True, True), (True, False), (False, True), (False, False)]):
        m = (top == t) & (left == l)
        img[m] = quad[i]
    img = img.astype(np.int16) + (x[..., None] + y[..., None]).astype(np.int16) // 4
    return np.clip(img, 0, 255).astype(np.uint8)


def base_alpha():
    y, x = np.mgrid[0:H, 0:W]
    a = (x * 255 // (W - 1)).astype(np.uint8)
    a[y < 3] = 0
    a[y > H - 3] = 255
    return a


def reference(path):
    im = Image.open(path)
    im.seek(0)
    im.load()
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L"):
        v = np.array(im).astype(np.uint32)
        g = ((v * 2 + 257) // 514).astype(np.uint8)  # round(v / 257)
        return np.stack([g, g, g], axis=-1)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        a = np.array(im.convert("RGBA")).astype(np.uint32)
        rgb, al = a[..., :3], a[..., 3:4]
        return ((rgb * al + 255 * (255 - al) + 127) // 255).astype(np.uint8)
    return np.array(im.convert("RGB"))


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png16(path, arr, color_type):
    """A 16-bit PNG by hand (Pillow cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))
    data = b"\x89PNG\r\n\x1a\n"
    data += png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
    data += png_chunk(b"IDAT", zlib.compress(raw, 9))
    data += png_chunk(b"IEND", b"")
    path.write_bytes(data)


def segments(jpeg):
    """Splits a JPEG written by Pillow into (marker, payload) pairs; the entropy-coded data
    of each scan is the payload of a pseudo-marker 0x00 after its SOS."""
    out, pos = [], 2
    assert jpeg[:2] == b"\xff\xd8"
    while pos < len(jpeg):
        assert jpeg[pos] == 0xFF, pos
        marker = jpeg[pos + 1]
        if marker == 0xD9:
            break
        length = struct.unpack(">H", jpeg[pos + 2:pos + 4])[0]
        out.append((marker, jpeg[pos + 4:pos + 2 + length]))
        pos += 2 + length
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not RSTn/stuffing
            end = pos
            while not (jpeg[end] == 0xFF and jpeg[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
            out.append((0x00, jpeg[pos:end]))
            pos = end
    return out


def ycck_jpeg(cmyk):
    """A baseline Adobe YCCK JPEG (APP14 transform 2) of a CMYK image, which Pillow reads but
    cannot write: one 4-component frame with two scans, the Y/Cb/Cr scan of a 4:4:4 Pillow
    JPEG of the inverted C, M, Y planes (libjpeg's YCCK is YCbCr of 255 - C, 255 - M, 255 - Y)
    and the K scan of a greyscale Pillow JPEG; same quality, so both use the standard luma
    tables for K."""
    c, m, y, k = (np.array(p) for p in cmyk.split())
    stored = [255 - c, 255 - m, 255 - y, 255 - k]  # what libjpeg hands out: Adobe's inverted inks
    buf = io.BytesIO()
    Image.fromarray(np.stack([255 - v for v in stored[:3]], axis=-1)).save(buf, "JPEG", quality=90, subsampling=0)
    colour = segments(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(stored[3]).save(buf, "JPEG", quality=90)
    grey = segments(buf.getvalue())

    def seg(marker, payload):
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload

    first = lambda segs, marker: next(p for m, p in segs if m == marker)  # noqa: E731
    sof = first(colour, 0xC0)
    assert sof[5] == 3 and all(sof[6 + 3 * i + 1] == 0x11 for i in range(3)), "want 4:4:4"
    sof4 = sof[:5] + b"\x04" + sof[6:] + bytes([4, 0x11, 0])  # K: 1x1, quantisation table 0
    adobe = b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 2)
    out = b"\xff\xd8" + seg(0xEE, adobe)
    out += b"".join(seg(m, p) for m, p in colour if m in (0xDB, 0xC4))
    out += seg(0xC0, sof4)
    scan_colour = [i for i, (m, _) in enumerate(colour) if m == 0xDA][0]
    out += seg(0xDA, colour[scan_colour][1]) + colour[scan_colour + 1][1]
    scan_grey = [i for i, (m, _) in enumerate(grey) if m == 0xDA][0]
    sos = grey[scan_grey][1]
    assert sos[0] == 1, "greyscale scan has one component"
    out += seg(0xDA, b"\x01\x04\x00" + sos[3:]) + grey[scan_grey + 1][1]  # component 4, tables 0/0
    return out + b"\xff\xd9"


def exif_with_orientation(n):
    exif = Image.Exif()
    exif[0x0112] = n
    return exif.tobytes()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        if not old.name.startswith("."):  # keep .gitattributes
            old.unlink()
    rgb = Image.fromarray(base_rgb())
    alpha = base_alpha()
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(alpha))
    grey = rgb.convert("L")
    samples = []  # (name, ext, tolerance)

    def add(name, ext, tol, writer):
        writer(OUT / f"{name}.{ext}")
        samples.append((name, ext, tol))

    # JPEG (Pillow's default subsampling is 4:2:0)
    add("jpeg_rgb", "jpg", EXACT, lambda p: rgb.save(p, quality=92))
    add("jpeg_progressive", "jpg", EXACT, lambda p: rgb.save(p, quality=92, progressive=True))
    add("jpeg_grey", "jpg", EXACT, lambda p: grey.save(p, quality=92))
    add("jpeg_cmyk", "jpg", EXACT, lambda p: rgb.convert("CMYK").save(p, quality=95))
    for n in range(1, 9):
        add(f"jpeg_orientation_{n}", "jpg", EXACT, lambda p, n=n: rgb.save(p, quality=92, exif=exif_with_orientation(n)))
    photo = Image.open(ROOT / "fixtures" / "images" / "real" / "photo_lemon.png").convert("RGB")
    photo = photo.resize((61, 45), Image.Resampling.LANCZOS)  # odd size: partial MCUs on both edges
    for name, sub in (("444", "4:4:4"), ("422", "4:2:2"), ("420", "4:2:0")):
        add(f"jpeg_photo_{name}", "jpg", EXACT, lambda p, sub=sub: photo.save(p, quality=90, subsampling=sub))
        add(f"jpeg_photo_{name}_progressive", "jpg", EXACT,
            lambda p, sub=sub: photo.save(p, quality=90, subsampling=sub, progressive=True))
    add("jpeg_photo_optimized", "jpg", EXACT, lambda p: photo.save(p, quality=85, optimize=True))
    add("jpeg_photo_q100", "jpg", EXACT, lambda p: photo.save(p, quality=100, subsampling="4:4:4"))
    add("jpeg_photo_q5", "jpg", EXACT, lambda p: photo.save(p, quality=5))
    add("jpeg_photo_restart_blocks", "jpg", EXACT, lambda p: photo.save(p, quality=90, restart_marker_blocks=3))
    add("jpeg_photo_restart_rows", "jpg", EXACT,
        lambda p: photo.save(p, quality=90, restart_marker_rows=1, progressive=True))
    add("jpeg_photo_grey_progressive", "jpg", EXACT, lambda p: photo.convert("L").save(p, quality=90, progressive=True))
    add("jpeg_photo_cmyk_progressive", "jpg", EXACT, lambda p: photo.convert("CMYK").save(p, quality=90, progressive=True))
    add("jpeg_ycck", "jpg", EXACT, lambda p: p.write_bytes(ycck_jpeg(rgb.convert("CMYK"))))
    add("jpeg_photo_ycck", "jpg", EXACT, lambda p: p.write_bytes(ycck_jpeg(photo.convert("CMYK"))))
    for size in ((1, 1), (7, 3), (17, 9)):
        tiny = photo.resize(size, Image.Resampling.BOX)
        add(f"jpeg_{size[0]}x{size[1]}", "jpg", EXACT, lambda p, tiny=tiny: tiny.save(p, quality=90))
    # PNG
    add("png_rgb", "png", EXACT, lambda p: rgb.save(p))
    add("png_rgba", "png", EXACT, lambda p: rgba.save(p))
    add("png_grey", "png", EXACT, lambda p: grey.save(p))
    add("png_grey_alpha", "png", EXACT, lambda p: Image.merge("LA", (grey, Image.fromarray(alpha))).save(p))
    add("png_bilevel", "png", EXACT, lambda p: grey.point(lambda v: 255 if v > 120 else 0).convert("1").save(p))
    pal = rgb.quantize(colors=16)
    add("png_palette", "png", EXACT, lambda p: pal.save(p))
    trns = bytes([0, 128] + [255] * 14)  # index 0 transparent, index 1 half, the rest opaque
    add("png_palette_trns", "png", EXACT, lambda p: pal.save(p, transparency=trns))
    key = tuple(int(v) for v in np.array(rgb)[0, 0])
    add("png_rgb_colour_key", "png", EXACT, lambda p: rgb.save(p, transparency=key))
    rng = np.random.default_rng(7)
    k = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint32)
    add("png_rgb16", "png", EXACT, lambda p: write_png16(p, (k * 257).astype(np.uint16), 2))
    g16 = rng.integers(0, 65536, size=(H, W), dtype=np.uint32)
    g16[0, :4] = [0, 128, 129, 65535]  # rounding edges: 128/257 -> 0, 129/257 -> 1
    add("png_grey16", "png", EXACT, lambda p: write_png16(p, g16.astype(np.uint16), 0))
    for n in (3, 6, 8):
        add(f"png_orientation_{n}", "png", EXACT, lambda p, n=n: rgb.save(p, exif=exif_with_orientation(n)))
    # WebP
    add("webp_lossless", "webp", EXACT, lambda p: rgb.save(p, lossless=True))
    add("webp_lossless_alpha", "webp", EXACT, lambda p: rgba.save(p, lossless=True, exact=True))
    add("webp_lossy", "webp", WEBP_LOSSY_TOL, lambda p: rgb.save(p, quality=95))
    add("webp_lossy_alpha", "webp", WEBP_LOSSY_TOL, lambda p: rgba.save(p, quality=95, alpha_quality=100))
    add("webp_orientation_6", "webp", EXACT, lambda p: rgb.save(p, lossless=True, exif=exif_with_orientation(6)))
    # GIF: two frames; the first has a transparent index; only the first is decoded.
    def gif(p):
        f1 = rgb.quantize(colors=32)
        f2 = Image.fromarray(255 - base_rgb()).quantize(colors=32)
        f1.save(p, save_all=True, append_images=[f2], transparency=0, duration=100, loop=0, disposal=2)
    add("gif_animated", "gif", EXACT, gif)
    # BMP
    add("bmp_rgb", "bmp", EXACT, lambda p: rgb.save(p))
    add("bmp_palette", "bmp", EXACT, lambda p: pal.save(p))
    add("bmp_grey", "bmp", EXACT, lambda p: grey.save(p))
    # TIFF
    add("tiff_rgb_lzw", "tif", EXACT, lambda p: rgb.save(p, compression="tiff_lzw"))
    add("tiff_rgba_deflate", "tiff", EXACT, lambda p: rgba.save(p, compression="tiff_adobe_deflate"))
    add("tiff_grey_packbits", "tif", EXACT, lambda p: grey.save(p, compression="packbits"))
    add("tiff_orientation_6", "tif", EXACT, lambda p: rgb.save(p, tiffinfo={0x0112: 6}))

    manifest = []
    for name, ext, (max_abs, mean_abs) in samples:
        path = OUT / f"{name}.{ext}"
        ref = reference(path)
        assert ref.dtype == np.uint8 and ref.ndim == 3 and ref.shape[2] == 3, (name, ref.shape)
        (OUT / f"{name}.rgb").write_bytes(np.ascontiguousarray(ref).tobytes())
        fmt = Image.open(path).format
        manifest.append({
            "file": path.name,
            "format": fmt,
            "width": int(ref.shape[1]),
            "height": int(ref.shape[0]),
            "reference": f"{name}.rgb",
            "max_abs_diff": max_abs,
            "mean_abs_diff": mean_abs,
        })
    (OUT / "manifest.json").write_text(json.dumps({
        "generator": "tools/reference/image_io_fixtures.py",
        "pillow": Image.__version__ if hasattr(Image, "__version__") else __import__("PIL").__version__,
        "libjpeg_turbo": features.version_feature("libjpeg_turbo"),
        "samples": manifest,
    }, indent=1) + "\n")
    print(f"wrote {len(manifest)} samples to {OUT}")


if __name__ == "__main__":
    main()
