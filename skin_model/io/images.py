"""Decode and validate user photos.

Everything a user uploads goes through :func:`load_image`; it either returns an
upright RGB image or raises :class:`ImageError` with a one-line message fit to
show (it starts with the file's name). No other exception comes out of it, and
nothing is written to disk.

What is accepted, and what is refused:

* Formats: JPEG (and MPO, the multi-picture JPEG of some cameras), PNG (and
  APNG), WebP, BMP, TIFF, GIF, HEIC/HEIF (phones; via pillow-heif) and DICOM
  (see :mod:`skin_model.io.dicom`). Only these decoders ever see the bytes: text,
  HTML, SVG, PDF, zip archives, EPS and every other format Pillow might know are
  refused as "not a readable image" before any decoder runs.
* Size: the size a file *declares* is checked before a single pixel is decoded,
  so a decompression bomb (a few hundred bytes claiming 100000x100000 pixels)
  costs a header parse. More than ``MAX_PIXELS`` pixels is refused as too large;
  files over ``MAX_FILE_BYTES`` are refused before they are read.
* Shape: each side needs at least ``MIN_SIDE`` pixels (1x1 and 5000x10 are
  refused as *too small*), and the longer side may be at most ``MAX_ASPECT``
  times the shorter (e.g. 2000x100 is refused as an *extreme aspect ratio*:
  squeezed into the model's square input it no longer shows a lesion).
* Damaged files (empty, truncated, corrupt) are refused with the decoder's
  reason; any decoder failure at all becomes an ImageError.
* Several frames (animated GIF, WebP or PNG, multi-page TIFF, MPO): the first
  frame is analysed and ``image.info["note"]`` says so.
* Orientation: the EXIF orientation tag is applied, so the image is upright as
  the camera meant it.
* Colours: alpha is flattened onto white; palette, greyscale, CMYK, YCbCr and
  LAB become RGB; 16-bit, 32-bit and float images are stretched from their
  minimum to their maximum onto 8 bits.
* Metadata (EXIF with its GPS position, XMP, comments, ICC) is not carried over
  into the returned image, so it cannot travel further by accident.

:func:`load_image` touches no global state (no warning filters, no change to
``PIL.Image.MAX_IMAGE_PIXELS``), so it is safe to call from many threads.

Uploads arrive as (file name, bytes): :func:`decode_uploads` turns a batch of them into
:class:`Photo` objects (at most ``MAX_SIDE`` pixels a side, with a sha256 digest and the
date taken) and, for every file that cannot be analysed, a (name, message) pair, so one
broken file never takes the others down. :data:`ACCEPTED_SUFFIXES` is the one list of
suffixes that uploads and the CLI's folders accept.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from skin_model.constants import MAX_PIXELS, MIN_SIDE
from skin_model.io.errors import ImageError
from skin_model.io.pixels import stretch_to_uint8

try:  # HEIC/HEIF photos from phones
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - pillow-heif is a dependency, but decoding others must not need it
    HEIF_SUPPORTED = False

ImageSource = str | os.PathLike | bytes | bytearray | BinaryIO | Image.Image

# Pillow format ids that may decode user files (JPEG covers MPO); nothing else is ever tried.
FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF") + (("HEIF",) if HEIF_SUPPORTED else ())
# How people call those formats: the prompt, the uploader's suffixes and the decoders all come from FORMATS.
_DISPLAY: dict[str, str] = {"WEBP": "WebP", "HEIF": "HEIC"}
FORMAT_NAMES = ", ".join(_DISPLAY.get(f, f) for f in FORMATS) + " or DICOM"
MAX_ASPECT: float = 10.0  # longer side / shorter side
MAX_FILE_BYTES: int = 512 * 1024 * 1024
_MAX_DETAIL = 160  # characters of a decoder's own message kept in ours


def _printable(label: str) -> str:
    """A file name fit for a one-line message: control characters (newlines, escapes) become "?"."""
    return "".join(c if c.isprintable() else "?" for c in label)


def _detail(exc: BaseException) -> str:
    """A decoder's message, on one short line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def _read_bytes(source: ImageSource, label: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            path = Path(source)
            if not path.exists():
                raise ImageError(f"{label}: file not found")
            if not path.is_file():
                raise ImageError(f"{label}: not a regular file")
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ImageError(f"{label}: the file is too large (over {MAX_FILE_BYTES // 2**20} MB)")
            data = path.read_bytes()
        except ImageError:
            raise
        except (OSError, ValueError) as exc:  # permissions, a NUL in the name, a vanished file...
            raise ImageError(f"{label}: the file cannot be read ({_detail(exc)})") from None
    elif hasattr(source, "read"):
        try:
            if hasattr(source, "seek"):
                source.seek(0)
            data = source.read(MAX_FILE_BYTES + 1)
        except Exception as exc:  # a closed or unreadable stream
            raise ImageError(f"{label}: the file cannot be read ({_detail(exc)})") from None
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageError(f"{label}: the file was opened as text; open it in binary mode")
        data = bytes(data)
    else:
        raise ImageError(f"unsupported input type {type(source).__name__}")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{label}: the file is too large (over {MAX_FILE_BYTES // 2**20} MB)")
    return data


def _stretch(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float greyscale image stretched from its min to its max onto 8 bits."""
    return Image.fromarray(stretch_to_uint8(np.asarray(img)))  # 2-D uint8: mode L


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten any mode (alpha, palette, 16-bit, CMYK, ...) to 8-bit RGB."""
    if img.mode.startswith(("I", "F")):  # I, I;16, I;16B, I;16L, ..., F
        img = _stretch(img)
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (img.mode == "P" and "transparency" in img.info):
        if img.mode == "La":
            img = img.convert("LA")
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def _check_size(size: tuple[int, int], label: str) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{label}: the image is too large ({width}x{height} pixels; at most {MAX_PIXELS // 1_000_000} megapixels)"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"{label}: the image is too small ({width}x{height} pixels; each side needs at least {MIN_SIDE})"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(
            f"{label}: the image has an extreme aspect ratio ({width}x{height} pixels; "
            f"the longer side may be at most {MAX_ASPECT:g} times the shorter): crop it to the lesion"
        )


def _checked_size(img: Image.Image, label: str) -> Image.Image:
    _check_size(img.size, label)
    return img


def _decode(data: bytes, label: str) -> Image.Image:
    """Open (header only), check the declared size, then decode the first frame."""
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not a readable image (unknown or unsupported format; use {FORMAT_NAMES})") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{label}: the image declares an unreasonably large size "
                         f"(at most {MAX_PIXELS // 1_000_000} megapixels)") from None
    except MemoryError:
        raise ImageError(f"{label}: the image is too large to decode") from None
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageError(f"{label}: the image is damaged or truncated ({_detail(exc)})") from None
    _check_size(img.size, label)  # the declared size, before any pixel is decoded
    try:
        animated = bool(getattr(img, "is_animated", False))
    except Exception:  # a broken later frame: the first one may still be fine
        animated = True
    note = f"{label}: the file holds several frames; only the first one is analysed" if animated else None
    try:
        if animated:
            img.seek(0)
        img.load()
        _check_size(img.size, label)  # a decoded frame may differ from what the header said
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"{label}: the image is too large to decode") from None
    except Exception as exc:
        raise ImageError(f"{label}: the image is damaged or truncated ({_detail(exc)})") from None
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not lose an otherwise fine photo
        orientation = 1
    if orientation not in (None, 1):
        try:
            img = ImageOps.exif_transpose(img) or img
        except Exception:
            pass
    try:
        rgb = _to_rgb(img)
    except MemoryError:
        raise ImageError(f"{label}: the image is too large to decode") from None
    except Exception as exc:
        raise ImageError(f"{label}: colour mode {img.mode} cannot be converted to RGB ({_detail(exc)})") from None
    rgb.info = {"note": note} if note else {}  # no EXIF (GPS), XMP or comments beyond this point
    return rgb


def load_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Return the photo as an upright RGB PIL image, or raise ImageError."""
    label = _printable(str(name or (Path(source).name if isinstance(source, (str, os.PathLike)) else "image")))
    if isinstance(source, Image.Image):
        try:
            img = source
            try:
                if img.getexif().get(0x0112, 1) not in (None, 1):
                    img = ImageOps.exif_transpose(img) or img
            except Exception:
                pass
            return _to_rgb(_checked_size(img, label))
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(f"{label}: the image cannot be used ({_detail(exc)})") from None
    data = _read_bytes(source, label)
    if not data:
        raise ImageError(f"{label}: the file is empty")
    if data[128:132] == b"DICM":  # DICOM (dermoscopy from a PACS): decoded by pydicom
        from skin_model.io.dicom import decode

        try:
            return _checked_size(decode(data, label), label).convert("RGB")
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(f"{label}: the DICOM file cannot be read ({_detail(exc)})") from None
    return _decode(data, label)


def photo_date(source: ImageSource) -> datetime.date | None:
    """The date the photo was taken (EXIF DateTimeOriginal, else DateTime; for DICOM the
    acquisition or content date), if recorded."""
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            data = _read_bytes(source, "image")
            if data[128:132] == b"DICM":
                from skin_model.io.dicom import dicom_date

                return dicom_date(data)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
        exif = img.getexif()
        raw = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
        if not raw:
            return None
        return datetime.datetime.strptime(str(raw).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S").date()
    except Exception:  # dates are a convenience: a missing or odd tag just means "unknown"
        return None


# ---------------------------------------------------------------- uploads: decoded in memory, never written

# File suffixes of each Pillow decoder in FORMATS (a decoder without an entry here is a KeyError at import).
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg"), "PNG": (".png",), "WEBP": (".webp",), "BMP": (".bmp",), "TIFF": (".tif", ".tiff"),
    "GIF": (".gif",), "HEIF": (".heic", ".heif"),
}
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
ACCEPTED_SUFFIXES: tuple[str, ...] = tuple(s for f in FORMATS for s in _SUFFIXES[f]) + DICOM_SUFFIXES

# The longest side a decoded photo keeps. The model sees far fewer pixels; heatmap overlays and
# reports of a 60-megapixel upload would otherwise cost gigabytes.
MAX_SIDE = 1024


@dataclass
class Photo:
    """One decoded upload, in memory only. `digest` (sha256 of the uploaded bytes) identifies
    it for caches and duplicate checks; `date` is when it was taken, if the file says, or as the
    user entered it, and then `date_entered` is True: such a date is marked wherever it is shown."""

    name: str
    image: Image.Image
    digest: str
    date: datetime.date | None = None
    date_entered: bool = False


def _photo(name: str, data: bytes, digest: str) -> Photo:
    image = load_image(data, name=name)
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    return Photo(name=name, image=image, digest=digest, date=photo_date(data))


def decode_upload(name: str, data: bytes) -> Photo:
    """Decode one upload, at most MAX_SIDE pixels a side; raises ImageError with a message for the user."""
    return _photo(name, data, hashlib.sha256(data).hexdigest())


def decode_uploads(files: Iterable[tuple[str, bytes]]) -> tuple[list[Photo], list[tuple[str, str]]]:
    """Decode every (name, bytes) upload, in order: the photos, and a (name, message) error for
    each file left out. A file that fails in any way is reported, never raised, so the other
    files are still analysed; the same bytes uploaded twice are kept once (not a second visit)."""
    photos: list[Photo] = []
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, data in files:
        label = _printable(name)
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            errors.append((name, f"{label}: the same photo was uploaded twice; it is analysed once"))
            continue
        try:
            photo = _photo(name, data, digest)
        except ImageError as exc:
            errors.append((name, str(exc)))
            continue
        except Exception:  # a decoder bug or exhausted memory must not take the other files down
            errors.append((name, f"{label}: this file could not be read as an image"))
            continue
        seen.add(digest)
        photos.append(photo)
    return photos, errors
