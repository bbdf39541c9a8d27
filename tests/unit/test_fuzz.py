"""Fuzzing load_image with hypothesis: mutated JPEG, PNG and other image bytes.

Whatever the bytes, load_image returns an RGB image within the size limits or
raises ImageError; no other exception (nor a crash or a hang) may come out.
Runs are derandomized (the same cases every time) and use no example database,
so they are reproducible and leave no files behind.

2,600 cases in all: 1,000 mutated JPEGs, 1,000 mutated PNGs (half of them with
their chunk checksums repaired, so that the mutation reaches the decoder instead
of stopping at a CRC check), 600 mutated GIF, TIFF, WebP, BMP, HEIC and 16-bit
or palette PNG files.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from helpers import make_lesion_photo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from skin_model.constants import MAX_PIXELS, MIN_SIDE
from skin_model.io.images import MAX_ASPECT, ImageError, load_image

# Pillow warns about the corrupt EXIF blocks and truncated reads it survives; that is expected here.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:PIL"),
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _heic(img: Image.Image) -> bytes:
    import pillow_heif

    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, quality=80)
    return buf.getvalue()


PHOTO = make_lesion_photo(size=(48, 36), centre=(0.4, 0.5), radii=(0.25, 0.3), seed=11)
_EXIF = Image.Exif()
_EXIF[0x0112] = 6
_EXIF.get_ifd(0x8769)[0x9003] = "2021:03:04 10:30:00"
JPEG_SEEDS = [
    _encode(PHOTO, "JPEG", quality=85),
    _encode(PHOTO, "JPEG", quality=70, progressive=True, exif=_EXIF.tobytes()),
    _encode(PHOTO.convert("CMYK"), "JPEG", quality=80),
    _encode(PHOTO.convert("L"), "JPEG", quality=80),
]
PNG_SEEDS = [
    _encode(PHOTO, "PNG"),
    _encode(PHOTO.convert("RGBA"), "PNG"),
    _encode(PHOTO.quantize(16), "PNG"),
    _encode(Image.fromarray(np.asarray(PHOTO.convert("L"), dtype=np.uint16) * 250), "PNG"),
]
OTHER_SEEDS = [
    _encode(PHOTO, "GIF", save_all=True, append_images=[PHOTO.rotate(90), PHOTO.rotate(180)]),
    _encode(PHOTO, "TIFF"),
    _encode(PHOTO, "TIFF", compression="tiff_deflate"),
    _encode(Image.fromarray(np.asarray(PHOTO.convert("L"), dtype=np.uint16) * 250), "TIFF"),
    _encode(PHOTO, "WEBP", quality=80),
    _encode(PHOTO, "WEBP", lossless=True),
    _encode(PHOTO, "BMP"),
    _heic(PHOTO),
]


@st.composite
def mutated(draw, seeds: list[bytes], repair_png: bool = False) -> bytes:
    """A seed file with 1 to 6 mutations: bit flips, byte overwrites, insertions, deletions,
    truncation, duplicated slices and 'interesting' integers (sizes, lengths) written in place."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "byte", "insert", "delete", "truncate", "duplicate", "integer"]))
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate":
            chunk = data[at:at + draw(st.integers(1, 256))]
            where = draw(st.integers(0, len(data)))
            data[where:where] = chunk
        else:
            value = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 65_000, 100_000]))
            fmt = draw(st.sampled_from([">I", "<I", ">H", "<H"]))
            packed = struct.pack(fmt, value & (0xFFFF if fmt.endswith("H") else 0xFFFFFFFF))
            data[at:at + len(packed)] = packed
    if repair_png and draw(st.booleans()):
        data = bytearray(_repair_png_crcs(bytes(data)))
    return bytes(data)


def _repair_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC so the decoder sees the mutated content rather than a checksum error."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, pos = bytearray(data[:8]), 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            out += data[pos:]
            return bytes(out)
        out += data[pos:end] + struct.pack(">I", zlib.crc32(kind + data[pos + 8:end]))
        pos = end + 4
    out += data[pos:]
    return bytes(out)


def _check(data: bytes) -> None:
    try:
        img = load_image(data, name="fuzzed.bin")
    except ImageError as exc:
        message = str(exc)
        assert message.startswith("fuzzed.bin: ") and "\n" not in message, message
        return
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    w, h = img.size
    assert MIN_SIDE <= min(w, h) and w * h <= MAX_PIXELS and max(w, h) <= MAX_ASPECT * min(w, h)
    assert np.asarray(img).shape == (h, w, 3)


def test_seeds_are_valid() -> None:
    for data in JPEG_SEEDS + PNG_SEEDS + OTHER_SEEDS:
        assert load_image(data).size in ((48, 36), (36, 48))  # (the EXIF seed is stored sideways)


@FUZZ
@given(mutated(JPEG_SEEDS))
def test_fuzz_jpeg(data: bytes) -> None:
    _check(data)


@FUZZ
@given(mutated(PNG_SEEDS, repair_png=True))
def test_fuzz_png(data: bytes) -> None:
    _check(data)


@settings(FUZZ, max_examples=600)
@given(mutated(OTHER_SEEDS, repair_png=False))
def test_fuzz_other_formats(data: bytes) -> None:
    _check(data)


@pytest.mark.parametrize("cut", [0, 1, 2, 8, 16, 33, 100, 200, 500])
def test_every_seed_truncated(cut: int) -> None:
    for data in JPEG_SEEDS + PNG_SEEDS + OTHER_SEEDS:
        _check(data[:cut])
