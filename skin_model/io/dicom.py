"""Read dermoscopy stored as DICOM (VL Photographic / VL Microscopic Image Storage and
any other object holding a 2D image) with pydicom.

:func:`images.load_image` hands every file that carries the "DICM" marker at
byte 128 to :func:`decode`, so DICOM is accepted wherever a photo is. Supported:
RGB, YBR_FULL and YBR_FULL_422 (converted to RGB), MONOCHROME1/2 (8 to 16 bits,
stretched to 8 bits), one or several frames (the first one is analysed, and the
image's ``info["note"]`` says so), native (uncompressed) pixel data and any
compressed transfer syntax that pydicom can decode here (RLE always; JPEG with
Pillow). Anything else raises :class:`images.ImageError` with a message fit to
show.
"""

from __future__ import annotations

import datetime
import io
import warnings
from typing import Any

import numpy as np
from PIL import Image

from skin_model.constants import MAX_PIXELS
from skin_model.io.errors import ImageError
from skin_model.io.pixels import stretch_to_uint8

DICOM_MAGIC = b"DICM"
MAGIC_OFFSET = 128
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
VL_MICROSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.2"
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Tags tried in order for the date the photo was taken.
DATE_TAGS = ("AcquisitionDateTime", "AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate")


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file (128-byte preamble, then "DICM")."""
    return data[MAGIC_OFFSET:MAGIC_OFFSET + 4] == DICOM_MAGIC


def _error(message: str) -> ImageError:
    return ImageError(message)


def _read(data: bytes, label: str, stop_before_pixels: bool = False) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise _error(f"{label}: not a valid DICOM file ({exc})") from None
    except Exception as exc:  # truncated headers raise EOFError, OSError, ValueError, struct.error...
        raise _error(f"{label}: the DICOM file is damaged or truncated ({type(exc).__name__}: {exc})") from None


def _to_uint8(arr: np.ndarray, bits_stored: int) -> np.ndarray:
    """8-bit data as is; deeper data stretched from its min to its max (as 16-bit photos are)."""
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    if bits_stored <= 8 and arr.min() >= 0 and arr.max() <= 255:
        return arr.astype(np.uint8)
    return stretch_to_uint8(arr)


def decode(data: bytes, label: str = "image") -> Image.Image:
    """The first frame of a DICOM image as a PIL image (RGB or L), or raise ImageError.

    ``image.info["dicom"]`` holds the SOP class, photometric interpretation and
    frame count; ``image.info["note"]`` is set when only the first of several
    frames is used.
    """
    try:
        return _decode(data, label)
    except ImageError:
        raise
    except Exception as exc:  # odd element values (text where numbers belong, ...) must not escape as crashes
        raise _error(f"{label}: the DICOM file cannot be read ({type(exc).__name__}: {exc})") from None


def _decode(data: bytes, label: str) -> Image.Image:
    from pydicom.pixels import as_pixel_options, convert_color_space, get_decoder

    ds = _read(data, label)
    if "PixelData" not in ds:
        kind = "float pixel data" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) \
            else "no pixel data (or it is truncated)"
        raise _error(f"{label}: the DICOM file holds {kind}, so there is no photo to analyse")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        raise _error(f"{label}: the DICOM file does not say how its pixels are encoded (no transfer syntax)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in COLOUR + MONOCHROME:
        raise _error(
            f"{label}: DICOM photometric interpretation {photometric or '(missing)'} is not supported "
            f"(use RGB, YBR_FULL, YBR_FULL_422 or MONOCHROME2)"
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > MAX_PIXELS:
        raise _error(
            f"{label}: the image is too large ({cols}x{rows} pixels; at most {MAX_PIXELS // 1_000_000} megapixels)"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise _error(f"{label}: DICOM transfer syntax {syntax.name} ({syntax}) is not supported") from None
    try:
        arr, changes = decoder.as_array(ds, index=0, raw=True, **as_pixel_options(ds))
    except Exception as exc:  # missing plugin (RuntimeError), bad sizes (ValueError), truncated data...
        if syntax.is_compressed and isinstance(exc, RuntimeError):
            raise _error(
                f"{label}: the DICOM pixels are compressed as {syntax.name}, which cannot be decoded here "
                f"(install a pydicom decoder such as pylibjpeg, or export uncompressed)"
            ) from None
        raise _error(f"{label}: the DICOM pixel data cannot be read ({exc})") from None
    photometric = str(changes.get("photometric_interpretation", photometric)).upper()
    arr = np.asarray(arr)
    colour = photometric in COLOUR
    if arr.ndim != (3 if colour else 2) or (colour and arr.shape[-1] != 3):
        raise _error(f"{label}: the DICOM image is not a 2D picture (pixel array shape {arr.shape})")
    if photometric.startswith("YBR"):
        arr = convert_color_space(arr, photometric, "RGB")
    arr = _to_uint8(arr, int(ds.get("BitsStored", 8) or 8))
    if photometric == "MONOCHROME1":  # 0 is white
        arr = 255 - arr
    img = Image.fromarray(np.ascontiguousarray(arr), mode="RGB" if colour else "L")
    img.info["dicom"] = {"sop_class": str(ds.get("SOPClassUID", "")), "photometric": photometric,
                         "frames": frames, "transfer_syntax": str(syntax)}
    if frames > 1:
        img.info["note"] = f"{label}: the DICOM file holds {frames} frames; only the first one is analysed"
    return img


def _parse_date(value: Any) -> datetime.date | None:
    text = str(value or "").strip()
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def dicom_date(data: bytes) -> datetime.date | None:
    """The acquisition (else content, series, study) date of a DICOM file, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd values just mean "no date"
            ds = _read(bytes(data), "image", stop_before_pixels=True)
            values = [ds.get(tag) for tag in DATE_TAGS]
    except Exception:
        return None
    for value in values:
        found = _parse_date(value)
        if found is not None:
            return found
    return None
