"""What the PDF report, the FHIR bundle and the CSV export share: a photo's status and why it was
rejected, how a photo is embedded, and how a date is written."""

from __future__ import annotations

import datetime
import io
from typing import Any

from PIL import Image

JPEG_QUALITY = 90


def photo_status(prediction: Any, i: int) -> str:
    """"answered", "inconclusive" or "out_of_distribution" for photo i of a Prediction."""
    status = getattr(prediction, "status", None)
    if callable(status):
        return str(status(i))
    return "inconclusive" if prediction.is_inconclusive(prediction.photos[i]) else "answered"


def rejection(prediction: Any, i: int) -> str | None:
    """Why photo i got no diagnosis (out of distribution), or None."""
    rejected = getattr(prediction, "rejected", None)
    return rejected(i) if callable(rejected) else None


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
