"""skin_model.io.images.load_image: every supported mode to upright RGB, clear errors for the rest."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skin_model.constants import MIN_SIDE
from skin_model.io.images import ImageError, load_image


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_rgb_jpeg_round_trip(lesion_photo) -> None:
    photo = lesion_photo()
    out = load_image(jpeg_bytes(photo, quality=95))
    assert out.mode == "RGB" and out.size == photo.size
    # JPEG is lossy, but the picture must be the same one
    diff = np.abs(np.asarray(out, dtype=int) - np.asarray(photo, dtype=int))
    assert diff.mean() < 6


def test_rgba_png_is_flattened_on_white() -> None:
    arr = np.zeros((32, 40, 4), dtype=np.uint8)
    arr[..., 0] = 200  # red
    arr[:, :20, 3] = 255  # left half opaque, right half fully transparent
    out = load_image(_png(Image.fromarray(arr, mode="RGBA")))
    assert out.mode == "RGB" and out.size == (40, 32)
    px = np.asarray(out)
    assert tuple(px[5, 5]) == (200, 0, 0)
    assert tuple(px[5, 35]) == (255, 255, 255)


def test_palette_png() -> None:
    img = Image.new("P", (30, 20))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
    img.paste(1, (0, 0, 15, 20))
    out = load_image(_png(img))
    assert out.mode == "RGB" and out.size == (30, 20)
    assert tuple(np.asarray(out)[10, 5]) == (10, 200, 30)
    assert tuple(np.asarray(out)[10, 25]) == (0, 0, 0)


def test_palette_png_with_transparency() -> None:
    img = Image.new("P", (30, 20), 0)
    img.putpalette([9, 9, 9, 10, 200, 30] + [0] * (254 * 3))
    img.paste(1, (0, 0, 15, 20))
    img.info["transparency"] = 0
    out = load_image(_png(img))
    assert tuple(np.asarray(out)[10, 5]) == (10, 200, 30)
    assert tuple(np.asarray(out)[10, 25]) == (255, 255, 255)


def test_greyscale() -> None:
    arr = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (24, 1))
    out = load_image(_png(Image.fromarray(arr, mode="L")))
    px = np.asarray(out)
    assert out.mode == "RGB" and out.size == (40, 24)
    assert np.array_equal(px[..., 0], arr) and np.array_equal(px[..., 1], arr) and np.array_equal(px[..., 2], arr)


def test_16_bit_png_is_stretched_to_8_bit() -> None:
    arr = np.tile(np.linspace(1000, 50000, 48).astype(np.uint16), (32, 1))
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    data = _png(img)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = load_image(data)
    px = np.asarray(out)
    assert out.mode == "RGB" and out.size == (48, 32)
    # the full 16-bit range maps onto 0..255, keeping the gradient's order
    assert px[..., 0].min() == 0 and px[..., 0].max() == 255
    assert np.all(np.diff(px[0, :, 0].astype(int)) >= 0)


def test_cmyk_jpeg() -> None:
    img = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # pure red in CMYK
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "CMYK"
    out = load_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (40, 30)
    r, g, b = np.asarray(out)[15, 20].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied(lesion_photo) -> None:
    photo = lesion_photo(size=(80, 40), centre=(0.2, 0.5), radii=(0.1, 0.3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    assert Image.open(io.BytesIO(buf.getvalue())).size == (80, 40)
    out = load_image(buf.getvalue())
    assert out.size == (40, 80)
    # the lesion, left of centre in the stored pixels, is above centre once upright
    dark = np.asarray(out.convert("L")) < 120
    ys, _ = np.nonzero(dark)
    assert ys.mean() < 40


def test_accepts_bytes_bytearray_paths_file_objects_and_images(tmp_path: Path, lesion_photo) -> None:
    photo = lesion_photo(size=(60, 50))
    data = jpeg_bytes(photo)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    sources = [data, bytearray(data), str(path), path, io.BytesIO(data), photo]
    with open(path, "rb") as fh:
        outputs = [load_image(s) for s in sources] + [load_image(fh)]
    for out in outputs:
        assert out.mode == "RGB" and out.size == (60, 50)
    decoded = np.asarray(outputs[0])
    for out in outputs[1:5] + outputs[6:]:
        assert np.array_equal(np.asarray(out), decoded)


def test_file_object_is_read_from_the_start(lesion_photo) -> None:
    stream = io.BytesIO(jpeg_bytes(lesion_photo(size=(40, 30))))
    stream.read()  # e.g. an upload already consumed once
    assert load_image(stream).size == (40, 30)


def _error_for(source, tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_bytes(source)
    with pytest.raises(ImageError) as info:
        load_image(path)
    return str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    msg = _error_for(b"", tmp_path, "empty.jpg")
    assert "empty.jpg" in msg and "empty" in msg.replace("empty.jpg", "")


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))
    data = jpeg_bytes(noisy)
    msg = _error_for(data[: len(data) // 2], tmp_path, "cut.jpg")
    assert msg.startswith("cut.jpg:") and "truncated" in msg


def test_text_file_named_jpg(tmp_path: Path) -> None:
    msg = _error_for(b"this is a note, not a photo\n" * 10, tmp_path, "notes.jpg")
    assert msg.startswith("notes.jpg:") and "not a readable image" in msg


@pytest.mark.parametrize("size", [(1, 1), (MIN_SIDE - 1, 100), (100, MIN_SIDE - 1)])
def test_too_small(tmp_path: Path, size: tuple[int, int]) -> None:
    msg = _error_for(_png(Image.new("RGB", size, (120, 80, 60))), tmp_path, "tiny.png")
    assert msg.startswith("tiny.png:") and "too small" in msg and f"{size[0]}x{size[1]}" in msg


def test_smallest_allowed_size_is_accepted() -> None:
    assert load_image(_png(Image.new("RGB", (MIN_SIDE, MIN_SIDE)))).size == (MIN_SIDE, MIN_SIDE)


def test_too_many_pixels_refused_before_decoding(tmp_path: Path) -> None:
    msg = _error_for(_png(Image.new("1", (8000, 8000))), tmp_path, "huge.png")
    assert msg.startswith("huge.png:") and "too large" in msg and "8000x8000" in msg


def test_missing_file_and_name_override(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="missing.jpg: file not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="^upload.png: the file is empty"):
        load_image(b"", name="upload.png")


def test_unsupported_input_type() -> None:
    with pytest.raises(ImageError, match="unsupported input type"):
        load_image(12345)  # type: ignore[arg-type]
