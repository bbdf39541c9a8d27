"""Segment the lesion in a dermatoscopic photo and measure it, so the app can
show how a lesion changed between visits (area, colour variation, asymmetry).

A classical segmentation (Otsu threshold on a smoothed darkness map, largest
component near the centre) is enough for the change indicators; it is not a
diagnostic measurement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from PIL import Image

WORK_SIZE = 256
# Least difference in mean darkness (0-255) between the lesion and the skin around it.
# Below it Otsu has only split noise or a uniform image (HAM10000 lesions differ by 25+).
MIN_SEPARATION = 10.0


@dataclass
class LesionMeasures:
    area_fraction: float
    colour_variation: float
    asymmetry: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def segment(photo: Image.Image) -> np.ndarray:
    """Boolean lesion mask at the photo's size."""
    rgb = np.asarray(photo.convert("RGB"))
    h, w = rgb.shape[:2]
    scale = WORK_SIZE / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    # Lesions are darker and less blue-white than skin: use darkness of the blue channel
    # mixed with overall darkness, after removing hair-like thin structures.
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    darkness = 255 - cv2.addWeighted(grey, 0.5, small[:, :, 2], 0.5, 0)
    darkness = cv2.morphologyEx(darkness, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    darkness = cv2.GaussianBlur(darkness, (7, 7), 0)
    _, mask = cv2.threshold(darkness, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    inside = mask > 0
    if inside.all() or not inside.any() or darkness[inside].mean() - darkness[~inside].mean() < MIN_SEPARATION:
        return np.zeros((h, w), dtype=bool)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros((h, w), dtype=bool)
    hh, ww = labels.shape
    centre = labels[hh // 4: hh - hh // 4, ww // 4: ww - ww // 4]
    in_centre = np.bincount(centre.ravel(), minlength=n)[1:].astype(np.float64)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    best = 1 + int(np.argmax(in_centre * 1000.0 + areas))
    filled = (labels == best).astype(np.uint8) * 255
    contours, _ = cv2.findContours(filled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(filled, contours, -1, 255, thickness=cv2.FILLED)
    return cv2.resize(filled, (w, h), interpolation=cv2.INTER_NEAREST) > 0


def asymmetry(mask: np.ndarray) -> float:
    """Mean non-overlap of the mask with its mirror images about its two principal axes (0 = symmetric)."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 10:
        return 0.0
    pts = np.stack([xs - xs.mean(), ys - ys.mean()], axis=1)
    _, vecs = np.linalg.eigh(np.cov(pts.T))
    rotated = pts @ vecs
    grid = np.round(rotated).astype(np.int64)
    occupied = {tuple(p) for p in grid}
    scores = []
    for axis in (0, 1):
        mirrored = grid.copy()
        mirrored[:, axis] = -mirrored[:, axis]
        overlap = sum(tuple(p) in occupied for p in mirrored)
        scores.append(1.0 - overlap / len(grid))
    return float(np.mean(scores))


def measure(photo: Image.Image, mask: np.ndarray | None = None) -> LesionMeasures:
    """Area (share of the frame), colour variation (mean Lab std inside) and asymmetry."""
    mask = segment(photo) if mask is None else mask
    if not mask.any():
        return LesionMeasures(0.0, 0.0, 0.0)
    lab = cv2.cvtColor(np.asarray(photo.convert("RGB")), cv2.COLOR_RGB2LAB).astype(np.float32)
    colour = float(lab[mask].std(axis=0).mean())
    return LesionMeasures(float(mask.mean()), colour, asymmetry(mask))


def changes(measures: list[LesionMeasures]) -> list[dict[str, float]]:
    """Each visit's measures with its area relative to the first visit."""
    if not measures:
        return []
    first = measures[0].area_fraction or float("nan")
    return [{**m.as_dict(), "area_vs_first": m.area_fraction / first if first == first else float("nan")}
            for m in measures]
