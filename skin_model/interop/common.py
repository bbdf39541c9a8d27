"""What the PDF report, the FHIR bundle, the CSV export and the app share: how a photo is embedded,
and how a date (or a visit without one) is written."""

from __future__ import annotations

import datetime
import io
from typing import Any

from PIL import Image

JPEG_QUALITY = 90


def jpeg(photo: Image.Image, max_side: int) -> tuple[bytes, tuple[int, int]]:
    """The photo as JPEG bytes, at most `max_side` pixels a side, and its size once shrunk."""
    img = photo.convert("RGB")
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), img.size


def iso_date(value: Any) -> str | None:
    """A date (or the date of a datetime) as YYYY-MM-DD; None for anything else."""
    if isinstance(value, datetime.datetime):
        return value.date().isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    return None


ENTERED_MARK = "(entered)"  # after a date the user typed in: the photo's file did not hold it


def date_label(value: Any, entered: bool = False) -> str | None:
    """A photo's date as charts and tables show it, marked when the user entered it rather than the file
    recording it (a reader must never take a typed-in date for the camera's); None without a date."""
    when = iso_date(value)
    if when is None:
        return None
    return f"{when} {ENTERED_MARK}" if entered else when


def visit_label(i: int, value: Any, entered: bool = False) -> str:
    """How visit i (from 0) is named: its date (see `date_label`), else its place in the order, "visit 3".
    A photo without a date never gets a made-up one."""
    return date_label(value, entered) or f"visit {i + 1}"
