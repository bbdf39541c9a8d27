"""Decode and validate user photos.

Everything a user uploads goes through :func:`load_image`; it either returns an
upright RGB image or raises :class:`ImageError` with a message fit to show.
Nothing is written to disk.
"""

from __future__ import annotations

import datetime
import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import MAX_PIXELS, MIN_SIDE

ImageSource = str | os.PathLike | bytes | bytearray | BinaryIO | Image.Image


class ImageError(ValueError):
    """A file that cannot be analysed; the message says why, for the user."""


def _read_bytes(source: ImageSource) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path.name}: file not found")
        return path.read_bytes()
    if hasattr(source, "read"):
        if hasattr(source, "seek"):
            source.seek(0)
        return source.read()
    raise ImageError(f"unsupported input type {type(source).__name__}")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten any mode (alpha, palette, 16-bit, CMYK) to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).astype("uint8"), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Return the photo as an upright RGB PIL image, or raise ImageError."""
    label = name or (Path(source).name if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, Image.Image):
        img = source
    else:
        data = _read_bytes(source)
        if not data:
            raise ImageError(f"{label}: the file is empty")
        if data[128:132] == b"DICM":  # DICOM (dermoscopy from a PACS): decoded by pydicom
            from .dicom import decode

            return _checked_size(decode(data, label), label).convert("RGB")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{label}: the image is too large ({width}x{height} pixels; "
                        f"at most {MAX_PIXELS // 1_000_000} megapixels)"
                    )
                img.seek(0)
                img.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{label}: the image declares an unreasonably large size") from None
        except UnidentifiedImageError:
            raise ImageError(f"{label}: not a readable image (unknown or unsupported format)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"{label}: the image is damaged or truncated ({exc})") from None
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # a broken EXIF block must not lose an otherwise fine photo
        pass
    return _to_rgb(_checked_size(img, label))


def _checked_size(img: Image.Image, label: str) -> Image.Image:
    if min(img.size) < MIN_SIDE:
        raise ImageError(
            f"{label}: the image is too small ({img.size[0]}x{img.size[1]} pixels; "
            f"each side needs at least {MIN_SIDE})"
        )
    return img


def photo_date(source: ImageSource) -> datetime.date | None:
    """The date the photo was taken (EXIF DateTimeOriginal, else DateTime; for DICOM the
    acquisition or content date), if recorded."""
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            data = _read_bytes(source)
            if data[128:132] == b"DICM":
                from .dicom import dicom_date

                return dicom_date(data)
            img = Image.open(io.BytesIO(data))
        exif = img.getexif()
        raw = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
        if not raw:
            return None
        return datetime.datetime.strptime(str(raw).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S").date()
    except Exception:  # dates are a convenience: a missing or odd tag just means "unknown"
        return None
