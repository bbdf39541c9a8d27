"""Pixel values a decoder or a generator hands over that are not 8-bit yet."""

from __future__ import annotations

import numpy as np


def stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Values stretched from their min to their max onto 0-255 (rounded): how 16-bit, 32-bit and
    float images (TIFF, DICOM, generated test images) are shown. NaN and infinities count as the
    smallest finite value; a constant image becomes 0."""
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, float(arr[finite].min()) if finite.any() else 0.0)
    lo, hi = float(arr.min()), float(arr.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.round((arr - lo) * scale).astype(np.uint8)
