"""A heatmap and how it is drawn over its photo: torch-free, so the app's pages and the reports that
show heatmaps load neither torch nor pytorch-grad-cam (explain/cam.py computes them)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image


@dataclass
class Heatmap:
    """A CAM in [0, 1] at the model's input resolution, for one target class."""

    cam: np.ndarray
    target: str
    method: str

    def resized(self, size: tuple[int, int]) -> np.ndarray:
        """The CAM at (width, height), bilinear."""
        img = Image.fromarray((self.cam * 255).astype(np.uint8)).resize(size, Image.BILINEAR)
        return np.asarray(img, dtype=np.float32) / 255.0

    def overlay(self, photo: Image.Image, opacity: float = 0.5) -> Image.Image:
        """The photo with the heatmap blended on top (opacity 0 = photo only)."""
        rgb = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
        # Blend here rather than with show_cam_on_image, which divides the result by its
        # maximum and so brightens the photo (a dark photo about 2x, even at opacity 0).
        heat = cv2.applyColorMap(np.uint8(255 * self.resized(photo.size)), cv2.COLORMAP_JET)
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        alpha = float(np.clip(opacity, 0.0, 1.0))
        blended = (1.0 - alpha) * rgb + alpha * heat
        return Image.fromarray(np.round(255.0 * blended).astype(np.uint8))

    def peak(self) -> tuple[float, float]:
        """(x, y) of the hottest point, as fractions of width and height."""
        y, x = np.unravel_index(int(np.argmax(self.cam)), self.cam.shape)
        return (x + 0.5) / self.cam.shape[1], (y + 0.5) / self.cam.shape[0]
