"""Out-of-distribution rejection: say "this is not a dermatoscopic photo" instead of
forcing one of the seven diagnoses.

Three checks, each scored as a ratio to its threshold (above 1 = reject):
- image quality (blank or uniform, heavily blurred, over- or under-exposed), measured
  on the photo itself, thresholds at the edge of what validation photos (also
  zoomed and cropped) show;
- feature distance: the Mahalanobis distance of the encoder's features to the
  nearest class mean (shared, shrunk covariance; Lee et al. 2018), threshold at a
  high quantile of validation photos;
- texture distance: the Mahalanobis distance of the middle block's texture statistics
  (each channel's mean and standard deviation over the image, taken from the same forward)
  to those of training photos. Final features are tuned to tell seven diagnoses apart and
  lose what makes a photo dermatoscopic; the middle of the network still sees skin, light and
  texture. (Measured on the shipped weights: final features alone refused 90% of 93 ordinary
  photos and their crops, this statistic alone all of them, each at 1% of validation photos.)

Reference statistics are fitted on training photos in every framing users send (full, centre
crop, zoom); thresholds are the highest of the framings' quantiles on validation photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

if TYPE_CHECKING:  # the serving engine gets the distances from its graph and never loads torch
    import torch

QUALITY_SIZE = 128
REASONS = {
    "features": "does not look like a dermatoscopic photo of a skin lesion",
    "blank": "is blank or nearly uniform",
    "blur": "is too blurred",
    "dark": "is under-exposed (too dark)",
    "bright": "is over-exposed (too bright)",
}


def quality(photo: Image.Image) -> dict[str, float]:
    """Contrast, sharpness and brightness of the photo at a fixed working size."""
    grey = photo.convert("L").resize((QUALITY_SIZE, QUALITY_SIZE), Image.BILINEAR)
    arr = np.asarray(grey, dtype=np.float32)
    lap = np.asarray(grey.filter(ImageFilter.Kernel((3, 3), [0, 1, 0, 1, -4, 1, 0, 1, 0], 1, 128)),
                     dtype=np.float32) - 128.0
    # PIL copies the one-pixel border unfiltered (there it holds brightness - 128, not a
    # Laplacian), which would make bright or dark images look sharp: leave it out.
    lap = lap[1:-1, 1:-1]
    return {"contrast": float(arr.std()), "sharpness": float(lap.var()), "brightness": float(arr.mean())}


def texture(activations: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) activations -> (N, 2C): each channel's mean and standard deviation over the image."""
    import torch

    a = activations.detach().float()
    return torch.cat([a.mean((2, 3)), a.flatten(2).std(2)], 1)


@dataclass(frozen=True)
class Reference:
    """What real photos look like, as fitted on training photos: class means and shared precision of
    the final features; mean and precision of the texture statistics (all zeros when not fitted)."""

    means: torch.Tensor
    precision: torch.Tensor
    texture_mean: torch.Tensor
    texture_precision: torch.Tensor


@dataclass
class OODVerdict:
    score: float
    reason: str | None

    @property
    def rejected(self) -> bool:
        return self.reason is not None

    @property
    def message(self) -> str | None:
        return None if self.reason is None else f"This image {REASONS[self.reason]}; no diagnosis is given."


def fit_gaussian(feats: np.ndarray, labels: np.ndarray, n_classes: int, shrinkage: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the precision of the shared, shrunk covariance."""
    feats = feats.astype(np.float64)
    means = np.stack([feats[labels == c].mean(0) if (labels == c).any() else feats.mean(0) for c in range(n_classes)])
    centred = feats - means[labels]
    cov = centred.T @ centred / max(1, len(feats) - 1)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    return means.astype(np.float32), np.linalg.inv(cov).astype(np.float32)


def mahalanobis(feats: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared distance of each feature row to the nearest class mean, divided by the dimension.

    Only the first features (the main encoder's, as many as the means have) are used."""
    import torch

    feats = feats[:, :means.shape[1]]
    diff = feats[:, None, :].float() - means[None].float()
    d = torch.einsum("ncd,de,nce->nc", diff, precision.float(), diff)
    return d.min(1).values / feats.shape[1]


def _highest_quantile(distances: np.ndarray | list[np.ndarray], quantile: float) -> float:
    parts = distances if isinstance(distances, list) else [distances]
    return float(max(np.quantile(d, quantile) for d in parts))


def fit_thresholds(quality_rows: list[dict[str, float]], distances: np.ndarray | list[np.ndarray],
                   feature_quantile: float = 0.999, quality_quantile: float = 0.995, margin: float = 0.8,
                   texture_distances: np.ndarray | list[np.ndarray] | None = None,
                   texture_quantile: float = 0.995) -> dict[str, float]:
    """Thresholds from validation photos: beyond what nearly all real photos show.

    `distances` (and `texture_distances`) may be one array per framing (full, centre crop, zoom):
    a threshold is then the highest of their quantiles, so that no framing of real photos is
    refused more often than one minus its quantile (a pooled quantile let zoomed photos be
    refused 5% of the time).

    The quantiles were chosen on validation alone, fitting on half its lesions and counting on the
    other half: at 0.995 (features) and 0.99 (texture) zoomed real photos were refused 2.0% of the
    time out of sample (the target is at most 2%), at 0.999 and 0.995 1.3% (full frames 0.65%),
    with every outlier of the evaluation set still refused; texture at 0.998 let an ordinary photo
    through."""
    q = {k: np.array([r[k] for r in quality_rows]) for k in ("contrast", "sharpness", "brightness")}
    lo = 1 - quality_quantile
    texture_threshold = ({"texture_distance": _highest_quantile(texture_distances, texture_quantile)}
                         if texture_distances is not None else {})
    return {
        **texture_threshold,
        "feature_distance": _highest_quantile(distances, feature_quantile),
        "min_contrast": float(np.quantile(q["contrast"], lo) * margin),
        "min_sharpness": float(np.quantile(q["sharpness"], lo) * margin),
        "min_brightness": float(np.quantile(q["brightness"], lo) * margin),
        "max_brightness": float(min(254.0, np.quantile(q["brightness"], quality_quantile) + (1 - margin) * 255 * 0.5)),
    }


# Root causes first: a badly exposed photo also loses contrast and detail, and a uniform
# image has no detail at all, so those checks trip along with the cause.
QUALITY_ORDER = ("dark", "bright", "blank", "blur")


def verdict(q: dict[str, float], distance: float, t: dict[str, float],
            texture_distance: float | None = None) -> OODVerdict:
    """Combine the checks; the score is the largest ratio to a threshold (> 1 rejects).

    The reason is "features" when the feature or texture check is the strongest; otherwise the
    first quality check that trips, in QUALITY_ORDER. (The largest quality ratio is
    no guide: their units differ, and a uniform image makes several of them huge.) The texture
    check runs when its threshold was fitted (cards from before it have none)."""
    features = distance / t["feature_distance"]
    if texture_distance is not None and t.get("texture_distance"):
        features = max(features, texture_distance / t["texture_distance"])
    ratios = {
        "blank": t["min_contrast"] / max(q["contrast"], 1e-6),
        "blur": t["min_sharpness"] / max(q["sharpness"], 1e-6),
        "dark": t["min_brightness"] / max(q["brightness"], 1e-6),
        "bright": (255 - t["max_brightness"]) / max(255 - q["brightness"], 1e-6),
        "features": features,
    }
    score = max(ratios.values())
    if score <= 1.0:
        return OODVerdict(score=float(score), reason=None)
    if ratios["features"] >= max(ratios[k] for k in QUALITY_ORDER):
        return OODVerdict(score=float(score), reason="features")
    return OODVerdict(score=float(score), reason=next(k for k in QUALITY_ORDER if ratios[k] > 1.0))


def check(qualities: Sequence[dict[str, float]], feature_distance: Sequence[float] | np.ndarray,
          thresholds: dict[str, float], texture_distance: Sequence[float] | np.ndarray | None = None,
          ) -> list[OODVerdict | None]:
    """The verdict of each photo from its image quality (`quality`), its features' distance and its
    texture statistics' distance (`mahalanobis`, as the served graph computes them); None for every
    photo when no thresholds were fitted."""
    if not thresholds:
        return [None] * len(qualities)
    textures: Sequence[float | None] = [None] * len(qualities)
    if texture_distance is not None and thresholds.get("texture_distance"):  # cards from before the texture check
        textures = [float(d) for d in texture_distance]
    return [verdict(q, float(d), thresholds, td) for q, d, td in zip(qualities, feature_distance, textures)]
