"""Training's views of a photo and the framings evaluation measures.

(The inference input itself is built by `engine.preprocess` from the card's data config.)
Training crops, zooms, rotates and recolours so that the model holds up on photos framed
differently from HAM10000 (tighter, zoomed, other cameras).

Training augments whole batches of preloaded uint8 photos on the training device
(`augment_batch`), so a GPU is never starved by per-photo CPU transforms.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from skin_model.constants import IMAGE_SIZE, MEAN, STD
from skin_model.data.preprocess import colour_gains


def centre_crop(img: Image.Image, fraction: float) -> Image.Image:
    """The central square covering `fraction` of the shorter side: a tighter, zoomed-in framing."""
    w, h = img.size
    side = max(1, int(round(min(w, h) * fraction)))
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


# How users frame a lesion, besides HAM10000's own framing: evaluation and the trust fit measure all three.
VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "full": lambda img: img,
    "centre_crop": lambda img: centre_crop(img, 1.0),
    "zoom_0.6": lambda img: centre_crop(img, 0.6),
}


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _uniform(n: int, low: float, high: float, device: torch.device, gen: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=gen) * (high - low) + low


def augment_batch(photos: torch.Tensor, size: int | tuple[int, int] = IMAGE_SIZE,
                  generator: torch.Generator | None = None,
                  scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (0.75, 4 / 3),
                  jitter: float = 0.25, hue: float = 0.03, blur_p: float = 0.2,
                  colour_constancy: str | None = None) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> normalised (N, 3, height, width) training views (`size`: a square's
    side or (height, width)).

    Per photo: a random crop covering `scale` of the frame (zoomed, off-centre, as
    users frame lesions), any rotation, flips, brightness/contrast/saturation/hue
    jitter and an occasional blur. The whole frame maps to the input the same way
    as at inference, so a crop of scale 1 without rotation is the inference view;
    rotations turn the view as it is shown to the network (no shear on a non-square input).
    With `colour_constancy` (the card's) each photo is first colour-normalised by the gains of its whole
    frame, as inference normalises the photo it is given; the colour jitter then varies what is left.
    """
    height, width = (size, size) if isinstance(size, int) else size
    aspect = height / width
    n, device = photos.shape[0], photos.device
    x = photos.float() / 255.0
    if colour_constancy:
        gains = torch.from_numpy(colour_gains(photos.cpu().numpy())).to(device, torch.float32)
        x = (x * gains[:, :, None, None]).clamp_(0, 1)
    area = _uniform(n, *scale, device, generator)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), device, generator)
    half_w = torch.sqrt(area * log_r.exp()).clamp(max=1.0)
    half_h = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
    cx = _uniform(n, -1, 1, device, generator) * (1 - half_w)
    cy = _uniform(n, -1, 1, device, generator) * (1 - half_h)
    angle = _uniform(n, 0, 2 * math.pi, device, generator) * (torch.rand(n, device=device, generator=generator) < 0.5)
    flip_x = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([half_w * cos * flip_x, -half_h * sin * flip_y * aspect, cx], 1),
        torch.stack([half_w * sin * flip_x / aspect, half_h * cos * flip_y, cy], 1),
    ], 1)
    if x.shape[-1] > 2 * width or x.shape[-2] > 2 * height:
        x = F.interpolate(x, size=(2 * height, 2 * width), mode="bilinear", antialias=True, align_corners=False)
    grid = F.affine_grid(theta, [n, 3, height, width], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def factor() -> torch.Tensor:
        return _uniform(n, 1 - jitter, 1 + jitter, device, generator).view(n, 1, 1, 1)

    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = x * factor()
    x = (x - grey.mean((2, 3), keepdim=True)) * factor() + grey.mean((2, 3), keepdim=True)
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey) * factor() + grey
    if hue:
        x = _rotate_hue(x, _uniform(n, -hue, hue, device, generator) * 2 * math.pi)
    x = x.clamp(0, 1)
    if blur_p:
        chosen = torch.rand(n, device=device, generator=generator) < blur_p
        if chosen.any():
            sigma = float(_uniform(1, 0.1, 1.5, device, generator))
            from torchvision.transforms.v2.functional import (
                gaussian_blur,  # training only: torchvision is slow to import
            )

            x[chosen] = gaussian_blur(x[chosen], [5, 5], [sigma, sigma])
    return _normalise(x)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `angle` radians in YIQ space (batched, differentiable, cheap)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device, dtype=x.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                       torch.stack([zero, sin, cos], 1)], 1)
    m = from_yiq @ rot @ to_yiq
    return torch.einsum("nij,njhw->nihw", m, x)
